//! Shared set-up: a pinned-TLS hop between two endpoints on 127.0.0.1 in this process, built
//! exactly as nodes build theirs (`liaison_hop::server_config` / `client_config` through
//! `connect` / `accept_validated` / `accept_stream`, HELLO → READY), and a pair of `Line`s
//! whose Noise session is established by a real KKpsk2 + ML-KEM-768 handshake over that hop.

use anyhow::{Context, Result, anyhow, bail};
use liaison_hop::{ClientPins, HopKey, HopReader, HopWriter};
use liaison_proto::handshake::Tai64N;
use liaison_proto::inbox::InboxKeys;
use liaison_proto::keys::{LocalKeys, NoiseSecret, PeerKeys, random_bytes};
use liaison_proto::line::{Line, LineEvent, Received};
use liaison_wire::consts::PROTOCOL_VERSION;
use liaison_wire::hop::{BlobFrame, HopFrame, Route};
use quinn::{Connection, Endpoint};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Bound on every set-up step.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(20);

/// The one client SPKI the bench server accepts.
#[derive(Debug)]
struct OnePin(Vec<u8>);

impl ClientPins for OnePin {
    fn allows(&self, spki: &[u8]) -> bool {
        self.0 == spki
    }
}

/// One side of a hop: its connection and its stream halves.
#[derive(Debug)]
pub struct Side {
    /// The QUIC connection (kept so it is closed deliberately).
    pub conn: Connection,
    /// Reads hop frames.
    pub reader: HopReader,
    /// Writes hop frames.
    pub writer: HopWriter,
}

/// A hop between a client and a server endpoint, both in this process.
#[derive(Debug)]
pub struct HopPair {
    /// The dialing side.
    pub client: Side,
    /// The listening side.
    pub server: Side,
    /// The client's endpoint.
    pub client_ep: Endpoint,
    /// The server's endpoint.
    pub server_ep: Endpoint,
}

impl HopPair {
    /// Dials a fresh hop with fresh pinned keys.
    pub async fn new() -> Result<HopPair> {
        let server_key = HopKey::generate()?;
        let client_key = HopKey::generate()?;
        let limits = crate::hop_limits();
        let pins = Arc::new(OnePin(client_key.spki().to_vec()));
        let cfg = liaison_hop::server_config(&server_key, pins, &limits)?;
        let server_ep = liaison_hop::server_endpoint(([127, 0, 0, 1], 0).into(), cfg)?;
        let addr = server_ep.local_addr()?;
        let client_ep = liaison_hop::client_endpoint(addr)?;
        let accept = async {
            let incoming = liaison_hop::accept_validated(&server_ep)
                .await
                .ok_or_else(|| anyhow!("server endpoint closed"))?;
            let conn = incoming.accept()?.await?;
            let (reader, mut writer) = liaison_hop::accept_stream(&conn, &limits).await?;
            writer
                .send(&HopFrame::Ready {
                    version: PROTOCOL_VERSION,
                })
                .await?;
            anyhow::Ok(Side {
                conn,
                reader,
                writer,
            })
        };
        let server_spki = server_key.spki();
        let dial = liaison_hop::connect(&client_ep, addr, &client_key, &server_spki, &limits);
        let (server, client) =
            tokio::time::timeout(SETUP_TIMEOUT, async { tokio::join!(accept, dial) })
                .await
                .context("hop set-up timed out")?;
        let client = client?;
        Ok(HopPair {
            client: Side {
                conn: client.conn,
                reader: client.reader,
                writer: client.writer,
            },
            server: server?,
            client_ep,
            server_ep,
        })
    }

    /// The endpoints, to close once the sides are done with.
    pub fn endpoints(&self) -> (Endpoint, Endpoint) {
        (self.client_ep.clone(), self.server_ep.clone())
    }
}

/// Closes both endpoints and waits (bounded) for them to go idle.
pub async fn close_endpoints(eps: (Endpoint, Endpoint)) {
    for ep in [eps.0, eps.1] {
        ep.close(0u32.into(), b"bench done");
        let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
    }
}

/// Wall clock as the handshake timestamp wants it.
pub fn wall() -> Tai64N {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Tai64N::from_unix(d.as_secs(), d.subsec_nanos())
}

/// Two `Line`s pinned to each other, with no session yet.
pub fn line_pair() -> Result<(Line, Line)> {
    let ((a, _), (b, _)) = line_pair_with_inboxes()?;
    Ok((a, b))
}

/// Two `Line`s pinned to each other (no session yet), each with its relay inbox ids derived as
/// nodes derive them (`liaison_proto::inbox::InboxKeys`: per pair, direction and day).
pub fn line_pair_with_inboxes() -> Result<((Line, InboxKeys), (Line, InboxKeys))> {
    let a_noise = NoiseSecret::generate()?;
    let b_noise = NoiseSecret::generate()?;
    let a_id = random_bytes::<32>()?;
    let b_id = random_bytes::<32>()?;
    let a_local = LocalKeys {
        identity: a_id,
        noise: a_noise.clone(),
    };
    let b_local = LocalKeys {
        identity: b_id,
        noise: b_noise.clone(),
    };
    let a_peer = PeerKeys {
        identity: b_id,
        noise: b_noise.public(),
        pairing: None,
    };
    let b_peer = PeerKeys {
        identity: a_id,
        noise: a_noise.public(),
        pairing: None,
    };
    let a_inbox = InboxKeys::new(&a_local, &a_peer).context("inbox keys")?;
    let b_inbox = InboxKeys::new(&b_local, &b_peer).context("inbox keys")?;
    let a = Line::new(a_local, a_peer, Tai64N::default(), Tai64N::default());
    let b = Line::new(b_local, b_peer, Tai64N::default(), Tai64N::default());
    Ok(((a, a_inbox), (b, b_inbox)))
}

/// Appends every `Transmit` the line queued to `out` as BLOB hop frames; drops the rest.
fn drain_transmits(line: &mut Line, out: &mut Vec<u8>) {
    while let Some(ev) = line.poll_event() {
        if let LineEvent::Transmit(blob) = ev {
            out.extend_from_slice(&BlobFrame::with_blob(Route::Direct, &blob));
        }
    }
}

/// Reads one BLOB frame and hands it to `line`; the plaintext (if any) lands in `pt`.
async fn recv_blob(side: &mut Side, line: &mut Line, pt: &mut Vec<u8>) -> Result<Received> {
    let frame = tokio::time::timeout(SETUP_TIMEOUT, side.reader.next())
        .await
        .context("handshake timed out")??;
    match frame {
        Some(HopFrame::Blob(b)) => Ok(line.handle_blob(Instant::now(), b, pt)),
        other => bail!("unexpected hop frame during the handshake: {other:?}"),
    }
}

/// Runs the KKpsk2 + ML-KEM-768 handshake over the hop: `client` initiates, `server`
/// responds, the initiator's keepalive confirms the responder. Both can send afterwards.
pub async fn handshake_over(
    pair: &mut HopPair,
    client: &mut Line,
    server: &mut Line,
) -> Result<()> {
    let mut pt = Vec::new();
    let mut out = Vec::new();
    client.connect(Instant::now(), wall());
    drain_transmits(client, &mut out);
    pair.client.writer.send_encoded(&out).await?;
    // message 1 → message 2
    recv_blob(&mut pair.server, server, &mut pt).await?;
    out.clear();
    drain_transmits(server, &mut out);
    pair.server.writer.send_encoded(&out).await?;
    // message 2 → keepalive
    recv_blob(&mut pair.client, client, &mut pt).await?;
    out.clear();
    drain_transmits(client, &mut out);
    pair.client.writer.send_encoded(&out).await?;
    // keepalive confirms the responder
    recv_blob(&mut pair.server, server, &mut pt).await?;
    while server.poll_event().is_some() {}
    let now = Instant::now();
    if !client.is_ready(now) || !server.is_ready(now) {
        bail!("the handshake over the hop did not produce two ready sessions");
    }
    Ok(())
}
