//! Test harness: a relay on 127.0.0.1 with an ephemeral port and temporary home, and hop
//! clients speaking the relay framing. Every wait is bounded.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    dead_code
)]

use liaison_hop::{Hop, HopKey, HopLimits};
use liaison_relay::{ReadyInfo, RelayConfig, RelayError, RelayHandle, serve, verify_relay_card};
use liaison_wire::hop::{HopFrame, err};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Longest any single expected event may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running in-process relay.
pub struct TestRelay {
    pub addr: SocketAddr,
    pub spki: [u8; 44],
    pub ready: ReadyInfo,
    pub handle: RelayHandle,
    pub home: PathBuf,
    stop: CancellationToken,
    task: Option<JoinHandle<Result<(), RelayError>>>,
}

/// A relay config for tests in `dir` (limits as in production unless changed).
pub fn test_config(dir: &Path) -> RelayConfig {
    let mut c = RelayConfig::new(dir.join("home"), "127.0.0.1:0".parse().unwrap());
    c.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    c.drain_timeout = Duration::from_secs(3);
    c
}

impl TestRelay {
    pub async fn start(config: RelayConfig) -> TestRelay {
        let home = config.home.clone();
        let stop = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(serve(config, stop.clone(), move |r| {
            let _ = tx.send(r);
        }));
        let ready = tokio::time::timeout(WAIT, rx)
            .await
            .expect("relay ready in time")
            .expect("relay started");
        let card = verify_relay_card(&ready.card_text).expect("relay card verifies");
        assert_eq!(card.addr, ready.addr.to_string());
        TestRelay {
            addr: ready.addr,
            spki: liaison_hop::ed25519_spki(&card.hop_key),
            handle: ready.handle.clone(),
            ready,
            home,
            stop,
            task: Some(task),
        }
    }

    /// Cancels and waits for the drained end.
    pub async fn stop(mut self) {
        self.stop.cancel();
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("relay stops in time")
            .expect("relay task")
            .expect("relay ran cleanly");
    }

    /// Waits (bounded) until an unlabelled metric satisfies `ok`.
    pub async fn wait_metric(&self, name: &str, ok: impl Fn(u64) -> bool) -> u64 {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let v = metric(&self.scrape().await, name);
            if ok(v) {
                return v;
            }
            assert!(std::time::Instant::now() < deadline, "{name} stuck at {v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// GET /metrics over TCP.
    pub async fn scrape(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.ready.metrics_addr.unwrap();
        let mut s = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(WAIT, s.read_to_string(&mut out))
            .await
            .unwrap()
            .unwrap();
        assert!(out.starts_with("HTTP/1.0 200 OK"), "{out}");
        out
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The value of an unlabelled metric in a scrape.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("metric {name} missing"))
        .parse()
        .unwrap()
}

/// The value of a labelled sample, given as `name{labels}`.
pub fn metric_labelled(text: &str, sample: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{sample} ")))
        .unwrap_or_else(|| panic!("sample {sample} missing"))
        .parse()
        .unwrap()
}

/// A hop frame the tests can keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    Deliver {
        inbox: [u8; 16],
        envelope_id: [u8; 16],
        blob: Vec<u8>,
    },
    Ack([u8; 16]),
    Err(u16, [u8; 16]),
    Other(String),
    /// The stream ended or the connection closed.
    Closed(String),
}

pub fn envelope_id(blob: &[u8]) -> [u8; 16] {
    let d = Sha256::digest(blob);
    d[..16].try_into().unwrap()
}

pub fn client_limits() -> HopLimits {
    HopLimits::default()
}

/// A connected node (a hop to the relay).
pub struct Node {
    pub hop: Hop,
    pub key: HopKey,
    pub endpoint: quinn::Endpoint,
}

pub async fn try_connect_with(
    relay_addr: SocketAddr,
    relay_spki: &[u8],
    key: &HopKey,
    limits: &HopLimits,
) -> Result<Node, liaison_hop::HopError> {
    let endpoint = liaison_hop::client_endpoint(relay_addr)?;
    connect_on(endpoint, relay_addr, relay_spki, key, limits).await
}

/// Connects from the local address `from` (another loopback address is another client
/// address to the relay: `127.0.0.2:0`).
pub async fn try_connect_from(
    from: SocketAddr,
    relay_addr: SocketAddr,
    relay_spki: &[u8],
    key: &HopKey,
    limits: &HopLimits,
) -> Result<Node, liaison_hop::HopError> {
    let endpoint = quinn::Endpoint::client(from)
        .map_err(|e| liaison_hop::HopError::Local(format!("cannot bind {from}: {e}")))?;
    connect_on(endpoint, relay_addr, relay_spki, key, limits).await
}

async fn connect_on(
    endpoint: quinn::Endpoint,
    relay_addr: SocketAddr,
    relay_spki: &[u8],
    key: &HopKey,
    limits: &HopLimits,
) -> Result<Node, liaison_hop::HopError> {
    let hop = tokio::time::timeout(
        WAIT,
        liaison_hop::connect(&endpoint, relay_addr, key, relay_spki, limits),
    )
    .await
    .map_err(|_| liaison_hop::HopError::Timeout("test connect"))??;
    Ok(Node {
        hop,
        key: key.clone(),
        endpoint,
    })
}

impl Node {
    pub async fn connect(relay: &TestRelay) -> Node {
        let key = HopKey::generate().unwrap();
        Self::connect_key(relay, &key).await
    }

    pub async fn connect_key(relay: &TestRelay, key: &HopKey) -> Node {
        try_connect_with(relay.addr, &relay.spki, key, &client_limits())
            .await
            .expect("connect to relay")
    }

    pub async fn send(&mut self, f: HopFrame<'_>) {
        tokio::time::timeout(WAIT, self.hop.writer.send(&f))
            .await
            .expect("send in time")
            .expect("send");
    }

    pub async fn subscribe(&mut self, inboxes: &[[u8; 16]]) {
        let ids: Vec<u8> = inboxes.concat();
        self.send(HopFrame::Subscribe(&ids)).await;
    }

    pub async fn post(&mut self, dst: [u8; 16], store: bool, blob: &[u8]) {
        self.send(HopFrame::Post { dst, store, blob }).await;
    }

    pub async fn ack(&mut self, envelope_id: [u8; 16]) {
        self.send(HopFrame::Ack { envelope_id }).await;
    }

    /// The next frame within `WAIT`; `Closed` when the hop ends.
    pub async fn next(&mut self) -> Got {
        self.next_within(WAIT).await.expect("a frame in time")
    }

    pub async fn next_within(&mut self, d: Duration) -> Option<Got> {
        let got = tokio::time::timeout(d, self.hop.reader.next()).await.ok()?;
        Some(match got {
            Ok(Some(HopFrame::Deliver {
                inbox,
                envelope_id,
                blob,
            })) => Got::Deliver {
                inbox,
                envelope_id,
                blob: blob.to_vec(),
            },
            Ok(Some(HopFrame::Ack { envelope_id })) => Got::Ack(envelope_id),
            Ok(Some(HopFrame::Err { code, reference })) => Got::Err(code, reference),
            Ok(Some(other)) => Got::Other(format!("{other:?}")),
            Ok(None) => Got::Closed("end of stream".into()),
            Err(e) => Got::Closed(e.to_string()),
        })
    }

    /// The next `n` frames, which must all be `DELIVER`s: `(inbox, envelope_id, blob)`.
    pub async fn delivers(&mut self, n: usize) -> Vec<([u8; 16], [u8; 16], Vec<u8>)> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.next().await {
                Got::Deliver {
                    inbox,
                    envelope_id,
                    blob,
                } => out.push((inbox, envelope_id, blob)),
                other => panic!("expected DELIVER, got {other:?} after {}", out.len()),
            }
        }
        out
    }

    /// A round trip through the relay: everything this node sent before has been handled
    /// once this returns. Frames that arrive first are returned.
    pub async fn sync(&mut self) -> Vec<Got> {
        let probe: [u8; 16] = rand16();
        let blob = probe.to_vec();
        self.post(probe, false, &blob).await;
        let want = Got::Err(err::NO_SUBSCRIBER, envelope_id(&blob));
        let mut before = Vec::new();
        loop {
            let g = self.next().await;
            if g == want {
                return before;
            }
            if let Got::Closed(_) = g {
                panic!("closed during sync: {g:?} after {before:?}");
            }
            before.push(g);
        }
    }

    /// Waits (bounded) for the connection to close and checks its application close code.
    /// A close frame can be lost on a loaded loopback; the relay then answers the client's
    /// next packet with a stateless reset, which is accepted too (the connection is gone
    /// either way).
    pub async fn assert_closed_with(&self, code: u16) {
        let e = tokio::time::timeout(Duration::from_secs(40), self.hop.conn.closed())
            .await
            .expect("connection closed in time");
        match e {
            quinn::ConnectionError::ApplicationClosed(c) => {
                assert_eq!(c.error_code.into_inner(), u64::from(code), "{c:?}")
            }
            quinn::ConnectionError::Reset | quinn::ConnectionError::TimedOut => {}
            other => panic!("closed by {other:?}, expected code {code}"),
        }
    }
}

/// 16 fresh random bytes.
pub fn rand16() -> [u8; 16] {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).unwrap();
    b
}
