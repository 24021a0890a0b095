//! Durable delivery through two real in-process nodes (`liaison_node::node::Node`) in temporary
//! homes, pinned to each other, one listening on 127.0.0.1: `Node::submit` writes the outbox
//! (SQLite WAL, `synchronous=FULL`, group commit), the line task seals and sends, the peer
//! stores the message and its `delivered_upto` in one committed transaction, acks, and the
//! sender commits the ack and emits `NodeEvent::Delivered`. Every step the real `call` takes,
//! with the same stores.

use crate::relay_path::InProcRelay;
use anyhow::{Context, Result, anyhow, bail};
use liaison_hop::HopKey;
use liaison_node::node::{Node, NodeEvent, NodeOptions};
use liaison_node::secrets::NodeSecrets;
use liaison_node::store::{self, NewContact, RelayRow};
use liaison_proto::identity::Identity;
use liaison_proto::keys::{random_bytes, random_secret};
use liaison_wire::frame::{MSG_KIND_FILE, MSG_KIND_TEXT, MessageContent};
use std::time::{Duration, Instant};
use tokio::sync::broadcast::{self, error::RecvError};

/// Messages per `submit` in the throughput test: what a piped `liaison call` batches.
pub const BATCH: usize = 512;

struct TestNode {
    node: Node,
    _dir: tempfile::TempDir,
    card: Vec<u8>,
    id: [u8; 32],
    noise: [u8; 32],
    hop: [u8; 32],
}

/// Name under which the nodes pin the bench's relay.
const RELAY_NAME: &str = "r1";

/// A node in a temporary home; with `relay`, it pins that relay (as `liaison relay add` does:
/// a hop key of its own for it, and the relay's card).
async fn make(name: &str, relay: Option<&InProcRelay>) -> Result<TestNode> {
    let dir = tempfile::tempdir()?;
    let identity = Identity::generate(name, crate::unix_now())?;
    let card = identity.card()?.to_bytes();
    let (id, noise, hop) = (
        identity.identity_public(),
        identity.noise_public(),
        identity.hop_public(),
    );
    let mut secrets = NodeSecrets::new(identity)?;
    let mut row = None;
    if let Some(r) = relay {
        let seed = random_secret::<32>()?;
        row = Some(RelayRow {
            name: RELAY_NAME.into(),
            card: r.card_text.clone(),
            relay_key: r.key,
            addr: r.addr.to_string(),
            our_key: HopKey::from_seed(&seed).public(),
            added: crate::unix_now(),
        });
        secrets.relays.push((RELAY_NAME.into(), seed));
    }
    let path = dir.path().join("node.db");
    let db = store::create(&path)?;
    let node = Node::start(
        db,
        path,
        secrets,
        NodeOptions {
            hop_limits: crate::hop_limits(),
            ..NodeOptions::default()
        },
    )?;
    if let Some(row) = row {
        node.db()
            .write(move |conn| store::add_relay(conn, &row, false))
            .await?;
    }
    Ok(TestNode {
        node,
        _dir: dir,
        card,
        id,
        noise,
        hop,
    })
}

async fn pin(
    a: &TestNode,
    name: &str,
    b: &TestNode,
    addr: Option<String>,
    relay: Option<&str>,
) -> Result<()> {
    let c = NewContact {
        name: name.into(),
        card: b.card.clone(),
        identity: b.id,
        noise: b.noise,
        hop: b.hop,
        addr,
        relay: relay.map(str::to_string),
    };
    let now = crate::unix_now();
    a.node
        .db()
        .write(move |conn| store::add_contact(conn, &c, now, false))
        .await?;
    Ok(())
}

fn text(len: usize, i: usize) -> Result<MessageContent> {
    let mut body = format!("message {i} ").into_bytes();
    body.resize(len, b'.');
    Ok(MessageContent {
        kind: MSG_KIND_TEXT,
        sent_at_ms: crate::unix_ms(),
        salt: random_bytes::<32>()?,
        name: None,
        body,
    })
}

/// Two nodes with a line up between them (alice dials bob).
pub struct Pair {
    alice: TestNode,
    bob: TestNode,
}

impl Pair {
    /// Starts both nodes, pins them to each other, brings the line up.
    pub async fn start() -> Result<Pair> {
        let alice = make("alice", None).await?;
        let bob = make("bob", None).await?;
        // bob pins alice before listening, so his listener accepts her at once
        pin(&bob, "alice", &alice, None, None).await?;
        let addr = bob.node.listen(([127, 0, 0, 1], 0).into()).await?;
        pin(&alice, "bob", &bob, Some(addr.to_string()), None).await?;
        let mut rx = alice.node.subscribe();
        alice.node.connect("bob", None).await?;
        Self::line_up(alice, bob, &mut rx).await
    }

    /// Starts both nodes with no address for each other, both pinning `relay` and meeting
    /// there (`Node::use_relay`, as `liaison listen --relay` does), and brings the line up
    /// through it: every blob between them is a `POST`/`DELIVER` through the relay.
    pub async fn start_via(relay: &InProcRelay) -> Result<Pair> {
        let alice = make("alice", Some(relay)).await?;
        let bob = make("bob", Some(relay)).await?;
        pin(&bob, "alice", &alice, None, Some(RELAY_NAME)).await?;
        pin(&alice, "bob", &bob, None, Some(RELAY_NAME)).await?;
        for n in [&bob, &alice] {
            if !n
                .node
                .use_relay(RELAY_NAME, Duration::from_secs(20))
                .await?
            {
                bail!("a node did not subscribe at the relay in 20 s");
            }
        }
        let mut rx = alice.node.subscribe();
        alice
            .node
            .connect_via("bob", None, Some(RELAY_NAME.into()))
            .await?;
        Self::line_up(alice, bob, &mut rx).await
    }

    async fn line_up(
        alice: TestNode,
        bob: TestNode,
        rx: &mut broadcast::Receiver<NodeEvent>,
    ) -> Result<Pair> {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match rx.recv().await {
                    Ok(NodeEvent::LineUp { .. }) => return Ok(()),
                    Ok(NodeEvent::DialFailed { error, .. }) => bail!("dial failed: {error}"),
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => bail!("node closed"),
                }
            }
        })
        .await
        .context("the line did not come up in 20 s")??;
        Ok(Pair { alice, bob })
    }

    /// Shuts both nodes down (each bounded inside `Node::shutdown`).
    pub async fn shutdown(self) {
        self.alice.node.shutdown().await;
        self.bob.node.shutdown().await;
    }
}

/// Waits until `seq` is acknowledged: a `Delivered` event for it, or (if the event stream
/// lagged) the line's `acked_upto`. Bounded by `deadline`.
async fn wait_delivered(
    node: &Node,
    rx: &mut broadcast::Receiver<NodeEvent>,
    seq: u64,
    seen: &mut u64,
    deadline: Instant,
) -> Result<()> {
    while *seen < seq {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("seq {seq} not delivered in time (acked up to {seen})");
        }
        match tokio::time::timeout(left, rx.recv()).await {
            Err(_) => bail!("seq {seq} not delivered in time (acked up to {seen})"),
            Ok(Ok(NodeEvent::Delivered { seq: s, .. })) => *seen = (*seen).max(s),
            Ok(Ok(_)) => {}
            Ok(Err(RecvError::Lagged(_))) => {
                *seen = (*seen).max(node.line_status("bob").await.acked_upto);
            }
            Ok(Err(RecvError::Closed)) => bail!("node closed"),
        }
    }
    Ok(())
}

/// Latency of one message at a time, submit → `Delivered`, in ms (after `warmup` messages).
pub async fn latency(pair: &Pair, warmup: usize, n: usize, size: usize) -> Result<Vec<f64>> {
    let alice = &pair.alice.node;
    let mut rx = alice.subscribe();
    let mut seen = alice.line_status("bob").await.acked_upto;
    let mut samples = Vec::with_capacity(n);
    // the whole test is bounded too, not only each message
    let end = Instant::now() + Duration::from_secs(60) + Duration::from_millis(50) * n as u32;
    for i in 0..warmup + n {
        let t = Instant::now();
        let seqs = tokio::time::timeout(
            end.saturating_duration_since(t),
            alice.submit("bob", vec![text(size, i)?]),
        )
        .await
        .context("latency test ran out of time")??;
        let seq = *seqs
            .first()
            .ok_or_else(|| anyhow!("submit returned no seq"))?;
        let deadline = (Instant::now() + Duration::from_secs(30)).min(end);
        wait_delivered(alice, &mut rx, seq, &mut seen, deadline).await?;
        if i >= warmup {
            samples.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(samples)
}

/// Throughput: `total` messages of `size` bytes submitted in batches of [`BATCH`] (each batch
/// one `submit`, awaited, as a piped `call` does) while receipts stream back; messages per
/// second from the first submit to the last `Delivered`. Also returns the seconds taken.
pub async fn throughput(pair: &Pair, total: usize, size: usize) -> Result<(f64, f64)> {
    let alice = pair.alice.node.clone();
    let mut rx = alice.subscribe();
    let mut seen = alice.line_status("bob").await.acked_upto;
    let mut batches = Vec::new();
    let mut i = 0;
    while i < total {
        let n = BATCH.min(total - i);
        let mut b = Vec::with_capacity(n);
        for k in i..i + n {
            b.push(text(size, k)?);
        }
        batches.push(b);
        i += n;
    }
    let bound = Duration::from_secs(60 + total as u64 / 200);
    let deadline = Instant::now() + bound;
    let t0 = Instant::now();
    let submitter = {
        let alice = alice.clone();
        tokio::spawn(async move {
            let mut last = 0;
            for b in batches {
                let seqs = alice.submit("bob", b).await?;
                last = seqs.last().copied().unwrap_or(last);
            }
            anyhow::Ok(last)
        })
    };
    let last = tokio::time::timeout(bound, submitter)
        .await
        .context("submitting timed out")???;
    wait_delivered(&alice, &mut rx, last, &mut seen, deadline).await?;
    let secs = t0.elapsed().as_secs_f64();
    Ok((total as f64 / secs, secs))
}

/// Large files through the node: `count` files of `size` bytes, one `submit` each (as
/// `liaison send FILE` does), MiB of file body per second from the first submit to the last
/// `Delivered`. This is the whole durable path for bulk data: at-rest sealing of the body at
/// both ends, fragmentation into full 65,519-byte plaintexts, reassembly, SQLite.
/// Bounded by `limit` (default: 60 s plus 1 s per MiB).
pub async fn files(pair: &Pair, count: usize, size: usize, limit: Option<Duration>) -> Result<f64> {
    let alice = pair.alice.node.clone();
    let mut rx = alice.subscribe();
    let mut seen = alice.line_status("bob").await.acked_upto;
    let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let limit =
        limit.unwrap_or_else(|| Duration::from_secs(60 + (count * size) as u64 / (1 << 20)));
    let deadline = Instant::now() + limit;
    let t0 = Instant::now();
    let mut last = 0;
    for i in 0..count {
        let c = MessageContent {
            kind: MSG_KIND_FILE,
            sent_at_ms: crate::unix_ms(),
            salt: random_bytes::<32>()?,
            name: Some(format!("bench-{i}.bin")),
            body: body.clone(),
        };
        let seqs = tokio::time::timeout(Duration::from_secs(30), alice.submit("bob", vec![c]))
            .await
            .context("submitting a file timed out")??;
        last = seqs.last().copied().unwrap_or(last);
    }
    wait_delivered(&alice, &mut rx, last, &mut seen, deadline).await?;
    Ok(crate::stats::mib_s((count * size) as u64, t0.elapsed()))
}

/// The bob side's stored count, to check nothing was lost (read-only query).
pub async fn bob_delivered_upto(pair: &Pair) -> u64 {
    pair.bob.node.line_status("alice").await.delivered_upto
}
