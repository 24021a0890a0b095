//! The relay path: the direct line's Noise session carried through a real relay instead of a
//! direct hop, on the same two cores, in the same process as raw quinn.
//!
//! A real [`liaison_relay::Relay`] runs in this process (same tokio runtime, default
//! [`RelayConfig`], so [`liaison_relay::relay_hop_limits`]), on 127.0.0.1 with a queue store
//! in a temporary directory. Two hop clients, the sender and the receiver, each connect with
//! their own hop key and the nodes' default `HopLimits`, and `SUBSCRIBE` to their receiving
//! inbox ids for one contact (`[e − 8, e + 1]`, derived with `liaison_proto::inbox` as nodes
//! derive them). The KKpsk2 + ML-KEM-768 handshake goes through the relay as `POST(store = 0)`
//! → `DELIVER` frames, and so does every DATA blob afterwards:
//!
//! * **Sender** (one task, as the line's engineered path): build the same full-fragment `MSG`
//!   plaintext as the line bench, seal it with `Line::seal` straight after a `POST` header
//!   (`dst`, `store = 0`), hand the `Vec` to quinn with `write_chunk`, yield.
//! * **Receiver** (one task): `HopReader::next` → `DELIVER` → credit → `Line::handle_blob`
//!   straight from the reader's buffer, parse the frames, yield. The credit is a sealed
//!   `ACK` frame (frames read so far) posted back to the sender's inbox as soon as a frame
//!   is read, every [`RelayTuning::credit_every`] frames.
//! * **Window.** A relay does not carry back-pressure from a receiver to the sender
//!   (`docs/relay.md`: a client too slow to read is disconnected). It reads the sender's
//!   `POST`s as fast as QUIC brings them and queues each `DELIVER` for the receiver with a
//!   non-blocking push; its read loop does not yield, so the receiver's writer task (woken
//!   into the same worker's LIFO slot) may not run before several buffered frames have been
//!   read; and the receiver's queue holds `client_queue_bytes` = 512 KiB, which is seven full
//!   `DELIVER` frames (65,585 bytes each). An eighth disconnects the receiver, and the
//!   sender's next `POST` is answered `NO_SUBSCRIBER`. So the sender keeps at most
//!   [`RelayTuning::window`] = 7 frames beyond what the receiver has read (credits reach it
//!   through a small reader task): then nothing the relay holds for the receiver can exceed
//!   its queue. Larger windows (16, 32 frames) and no window were measured to get the
//!   receiver disconnected in a share of runs (`docs/performance.md`); the
//!   `relaynowindow`, `relaywin16`, `relaywin32`, `relayslowrx` (the receiver pauses
//!   100 ms after each 16 MiB message, as a node storing a large message does) and
//!   `relayslowrxnowindow` variants show it.
//!
//! The bound: a MiB through the relay crosses two QUIC hops (the sender's and the
//! receiver's), each costing what a raw quinn MiB costs (`2/R` core-seconds), plus the Noise
//! encrypt and decrypt (`1/N`). Two cores then move `2 / (4/R + 1/N)` MiB/s, so the ratio to
//! raw quinn is at most **`2N / (4N + R)`**.
//!
//! Round trips: a 256-byte plaintext (one `MSG` frame, as the line's round trip) sealed into a
//! `POST`, delivered, opened, sealed back by the receiver to the sender's inbox, delivered and
//! opened: two relay traversals per round trip.

use crate::cpu::Measured;
use crate::line::{FRAGS_PER_MSG, Meter, bulk_plaintext, bulk_source, frames_for, open_blob};
use crate::raw::{RTT_LEN, bulk_timeout};
use crate::setup::{SETUP_TIMEOUT, Side, line_pair_with_inboxes, wall};
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use liaison_hop::{HopKey, HopReader};
use liaison_proto::line::{Line, LineEvent, Received};
use liaison_relay::metrics::Dropped;
use liaison_relay::{Relay, RelayConfig, RelayHandle, RelayHome};
use liaison_wire::consts::{DATA_HEADER_LEN, INBOX_ID_LEN, MAX_PLAINTEXT, NOISE_TAG_LEN};
use liaison_wire::frame::{Frame, FrameWriter, Frames};
use liaison_wire::hop::{HopFrame, InboxId, err, ty};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Bytes before the blob in a `POST` frame: `len (4) || type (1) || dst (16) || store (1)`.
pub const POST_HEADER_LEN: usize = 4 + 1 + INBOX_ID_LEN + 1;
/// Blob bytes of a full DATA blob (and of the opaque blobs of the `relayraw` variant).
const BULK_BLOB_LEN: usize = DATA_HEADER_LEN + MAX_PLAINTEXT + NOISE_TAG_LEN;

/// Appends a `POST` header for a blob of `blob_len` bytes; the caller appends the blob.
pub fn write_post_header(out: &mut Vec<u8>, dst: &InboxId, store: bool, blob_len: usize) {
    out.extend_from_slice(&((1 + INBOX_ID_LEN + 1 + blob_len) as u32).to_le_bytes());
    out.push(ty::POST);
    out.extend_from_slice(dst);
    out.push(u8::from(store));
}

/// Rewrites the length prefix of an encoded hop frame to its actual length.
fn patch_len(frame: &mut [u8]) {
    let len = (frame.len().saturating_sub(4)) as u32;
    if let Some(p) = frame.get_mut(..4) {
        p.copy_from_slice(&len.to_le_bytes());
    }
}

/// Seals `pt` on `line` into a new `POST(dst, store = 0)` frame.
fn seal_post(line: &mut Line, dst: &InboxId, pt: &[u8], expects_reply: bool) -> Result<Vec<u8>> {
    let blob_len = DATA_HEADER_LEN + pt.len() + NOISE_TAG_LEN;
    let mut frame = Vec::with_capacity(POST_HEADER_LEN + blob_len);
    write_post_header(&mut frame, dst, false, blob_len);
    if line
        .seal(Instant::now(), wall(), pt, expects_reply, &mut frame)
        .is_err()
    {
        bail!("no session to seal on");
    }
    patch_len(&mut frame);
    Ok(frame)
}

/// A relay running in this process, on 127.0.0.1, with a temporary store and home.
#[derive(Debug)]
pub struct InProcRelay {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its hop key's SPKI, pinned by the clients.
    pub spki: [u8; liaison_hop::tls::ED25519_SPKI_LEN],
    /// Its hop public key.
    pub key: [u8; 32],
    /// Its card (`liaison-relay:` line), as nodes pin it.
    pub card_text: String,
    /// Its counters.
    pub handle: RelayHandle,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), liaison_relay::RelayError>>,
    _dir: tempfile::TempDir,
}

impl InProcRelay {
    /// Opens a relay with the default configuration and serves it on this runtime, as
    /// `liaison_relay::serve` does (home with its key and card, store, endpoint).
    pub async fn start() -> Result<InProcRelay> {
        let dir = tempfile::tempdir()?;
        let mut config = RelayConfig::new(dir.path().join("home"), ([127, 0, 0, 1], 0).into());
        config.hop.congestion = crate::hop_limits().congestion;
        let home = RelayHome::open(&config.home)?;
        let relay = Relay::open(config)?;
        let key = home.key();
        let endpoint = relay.bind(key)?;
        let addr = endpoint.local_addr()?;
        let card_text = home
            .card(&addr.to_string())?
            .to_text()
            .map_err(|e| anyhow::anyhow!("relay card: {e}"))?;
        let handle = relay.handle();
        let stop = CancellationToken::new();
        let task = tokio::spawn(relay.run(endpoint, stop.clone()));
        Ok(InProcRelay {
            addr,
            spki: key.spki(),
            key: key.public(),
            card_text,
            handle,
            stop,
            task,
            _dir: dir,
        })
    }

    /// Waits (bounded) until the relay holds at least `n` inbox subscriptions.
    pub async fn wait_subscriptions(&self, n: u64) -> Result<()> {
        let deadline = Instant::now() + SETUP_TIMEOUT;
        while self.handle.metrics().subscriptions.load(Relaxed) < n {
            if Instant::now() > deadline {
                bail!("the relay did not take the subscriptions in time");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    /// Frames the relay dropped for clients it then disconnected (slow client, overload).
    pub fn dropped(&self) -> (u64, u64) {
        let m = self.handle.metrics();
        (m.dropped(Dropped::SlowClient), m.dropped(Dropped::Overload))
    }

    /// Drains and stops the relay (bounded); true if it stopped cleanly.
    pub async fn stop(self) -> bool {
        self.stop.cancel();
        matches!(
            tokio::time::timeout(Duration::from_secs(40), self.task).await,
            Ok(Ok(Ok(())))
        )
    }
}

/// A node's connection to the relay: its own fresh hop key and endpoint, the nodes' default
/// `HopLimits`, subscribed to `recv`.
pub async fn relay_client(
    relay: &InProcRelay,
    recv: &[InboxId],
) -> Result<(Side, quinn::Endpoint)> {
    let key = HopKey::generate()?;
    let ep = liaison_hop::client_endpoint(relay.addr)?;
    let hop = tokio::time::timeout(
        SETUP_TIMEOUT,
        liaison_hop::connect(&ep, relay.addr, &key, &relay.spki, &crate::hop_limits()),
    )
    .await
    .context("relay connect timed out")??;
    let mut side = Side {
        conn: hop.conn,
        reader: hop.reader,
        writer: hop.writer,
    };
    let ids: Vec<u8> = recv.iter().flat_map(|i| i.iter().copied()).collect();
    side.writer.send(&HopFrame::Subscribe(&ids)).await?;
    Ok((side, ep))
}

/// Two nodes' connections to one relay, subscribed, with a `Line` pair not yet handshaken.
#[derive(Debug)]
pub struct RelayPair {
    /// The relay.
    pub relay: InProcRelay,
    /// The sender's (initiator's) connection.
    pub a: Side,
    /// The receiver's (responder's) connection.
    pub b: Side,
    /// Where the sender posts: `inbox(a → b, e)`.
    pub a_to_b: InboxId,
    /// Where the receiver posts: `inbox(b → a, e)`.
    pub b_to_a: InboxId,
    eps: Vec<quinn::Endpoint>,
}

impl RelayPair {
    /// A fresh relay, two connected and subscribed clients, and their `Line`s.
    pub async fn new() -> Result<(RelayPair, Line, Line)> {
        let ((la, ka), (lb, kb)) = line_pair_with_inboxes()?;
        let now = crate::unix_now();
        let relay = InProcRelay::start().await?;
        let a_recv = ka.recv_inboxes(now);
        let b_recv = kb.recv_inboxes(now);
        let a_to_b = ka.send_inbox(now);
        let b_to_a = kb.send_inbox(now);
        if !b_recv.contains(&a_to_b) || !a_recv.contains(&b_to_a) {
            bail!("inbox ids do not match between the two sides");
        }
        let (a, ea) = relay_client(&relay, &a_recv).await?;
        let (b, eb) = relay_client(&relay, &b_recv).await?;
        relay
            .wait_subscriptions((a_recv.len() + b_recv.len()) as u64)
            .await?;
        Ok((
            RelayPair {
                relay,
                a,
                b,
                a_to_b,
                b_to_a,
                eps: vec![ea, eb],
            },
            la,
            lb,
        ))
    }

    /// The client endpoints, to close once done.
    fn endpoints(&self) -> Vec<quinn::Endpoint> {
        self.eps.clone()
    }
}

/// Closes client connections and endpoints, then drains and stops the relay.
async fn shutdown(relay: InProcRelay, conns: &[quinn::Connection], eps: Vec<quinn::Endpoint>) {
    for c in conns {
        c.close(0u32.into(), b"done");
    }
    for ep in eps {
        ep.close(0u32.into(), b"bench done");
        let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
    }
    relay.stop().await;
}

/// Appends every `Transmit` the line queued as `POST(dst, store = 0)` frames; drops the rest.
fn drain_posts(line: &mut Line, dst: &InboxId, out: &mut Vec<u8>) {
    while let Some(ev) = line.poll_event() {
        if let LineEvent::Transmit(blob) = ev {
            write_post_header(out, dst, false, blob.len());
            out.extend_from_slice(&blob);
        }
    }
}

/// Reads one `DELIVER` and hands its blob to `line`.
async fn recv_deliver(
    reader: &mut HopReader,
    line: &mut Line,
    pt: &mut Vec<u8>,
) -> Result<Received> {
    let frame = tokio::time::timeout(SETUP_TIMEOUT, reader.next())
        .await
        .context("handshake through the relay timed out")??;
    match frame {
        Some(HopFrame::Deliver { blob, .. }) => Ok(line.handle_blob(Instant::now(), blob, pt)),
        Some(HopFrame::Err { code, .. }) => bail!("the relay answered {}", err::name(code)),
        other => bail!("unexpected hop frame during the handshake: {other:?}"),
    }
}

/// The KKpsk2 + ML-KEM-768 handshake through the relay: `a` initiates, `b` responds, `a`'s
/// keepalive confirms `b`.
pub async fn handshake_via(pair: &mut RelayPair, a: &mut Line, b: &mut Line) -> Result<()> {
    let mut pt = Vec::new();
    let mut out = Vec::new();
    a.connect(Instant::now(), wall());
    drain_posts(a, &pair.a_to_b, &mut out);
    pair.a.writer.send_encoded(&out).await?;
    recv_deliver(&mut pair.b.reader, b, &mut pt).await?;
    out.clear();
    drain_posts(b, &pair.b_to_a, &mut out);
    pair.b.writer.send_encoded(&out).await?;
    recv_deliver(&mut pair.a.reader, a, &mut pt).await?;
    out.clear();
    drain_posts(a, &pair.a_to_b, &mut out);
    pair.a.writer.send_encoded(&out).await?;
    recv_deliver(&mut pair.b.reader, b, &mut pt).await?;
    while b.poll_event().is_some() {}
    while a.poll_event().is_some() {}
    let now = Instant::now();
    if !a.is_ready(now) || !b.is_ready(now) {
        bail!("the handshake through the relay did not produce two ready sessions");
    }
    Ok(())
}

/// Shape of the relay data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayTuning {
    /// Frames the sender may send beyond the receiver's last credit (0: no window, no
    /// credits).
    pub window: u64,
    /// The receiver posts a credit every this many frames.
    pub credit_every: u64,
    /// The receiver credits a frame as soon as it has read it (before opening it): the
    /// window bounds what is in the relay and the network, not the receiver's own work.
    pub credit_on_receipt: bool,
    /// Sealed DATA blobs of a real session (false: opaque blobs of the same size, no Noise;
    /// the sender reuses one buffer, so this measures the relay's forwarding alone).
    pub noise: bool,
    /// The receiver stops reading for this long after every 16 MiB message (256 frames), as
    /// a node does while it stores a completed large message (0: never).
    pub rx_pause_ms: u64,
}

impl RelayTuning {
    /// The engineered path: at most 7 frames (459 KB) beyond the receiver's reads, credited
    /// one by one as they are read. Seven full `DELIVER` frames (65,585 bytes each) are what
    /// the relay's per-client queue (`client_queue_bytes`, 512 KiB) holds; an eighth
    /// disconnects the receiver (see the module documentation).
    pub const BEST: RelayTuning = RelayTuning {
        window: 7,
        credit_every: 1,
        credit_on_receipt: true,
        noise: true,
        rx_pause_ms: 0,
    };
}

/// Named variants for `--only bulk:NAME` (the comparison in `docs/performance.md`).
pub const VARIANTS: &[(&str, RelayTuning)] = &[
    (
        "relaynowindow",
        RelayTuning {
            window: 0,
            credit_every: 0,
            credit_on_receipt: true,
            noise: true,
            rx_pause_ms: 0,
        },
    ),
    (
        "relaylatecredit",
        RelayTuning {
            window: 7,
            credit_every: 1,
            credit_on_receipt: false,
            noise: true,
            rx_pause_ms: 0,
        },
    ),
    (
        "relaywin7c2",
        RelayTuning {
            window: 7,
            credit_every: 2,
            credit_on_receipt: true,
            noise: true,
            rx_pause_ms: 0,
        },
    ),
    (
        "relaywin4",
        RelayTuning {
            window: 4,
            credit_every: 1,
            credit_on_receipt: true,
            noise: true,
            rx_pause_ms: 0,
        },
    ),
    (
        "relaywin16",
        RelayTuning {
            window: 16,
            credit_every: 4,
            credit_on_receipt: true,
            noise: true,
            rx_pause_ms: 0,
        },
    ),
    (
        "relaywin32",
        RelayTuning {
            window: 32,
            credit_every: 8,
            credit_on_receipt: true,
            noise: true,
            rx_pause_ms: 0,
        },
    ),
    (
        "relayraw",
        RelayTuning {
            window: 7,
            credit_every: 1,
            credit_on_receipt: true,
            noise: false,
            rx_pause_ms: 0,
        },
    ),
    (
        "relayslowrx",
        RelayTuning {
            window: 7,
            credit_every: 1,
            credit_on_receipt: true,
            noise: true,
            rx_pause_ms: 100,
        },
    ),
    (
        "relayslowrxnowindow",
        RelayTuning {
            window: 0,
            credit_every: 0,
            credit_on_receipt: true,
            noise: true,
            rx_pause_ms: 100,
        },
    ),
];

/// The sealed `POST` of bulk frame `i` (the line bench's frame `i`).
fn bulk_post(line: &mut Line, src: &[u8], i: u64, dst: &InboxId) -> Result<Bytes> {
    let seq = 1 + i / u64::from(FRAGS_PER_MSG);
    let idx = (i % u64::from(FRAGS_PER_MSG)) as u32;
    let pt = bulk_plaintext(src, seq, idx);
    Ok(Bytes::from(seal_post(line, dst, &pt, true)?))
}

/// A credit: frames received so far, as a sealed `ACK` frame (or 8 raw bytes without Noise).
fn credit_post(line: &mut Line, t: RelayTuning, got: u64, dst: &InboxId) -> Result<Bytes> {
    if !t.noise {
        let mut frame = Vec::with_capacity(POST_HEADER_LEN + 8);
        write_post_header(&mut frame, dst, false, 8);
        frame.extend_from_slice(&got.to_le_bytes());
        return Ok(Bytes::from(frame));
    }
    let mut w = FrameWriter::default();
    w.ack(got, &[0; 16]);
    let pt = w.finish();
    Ok(Bytes::from(seal_post(line, dst, &pt, false)?))
}

/// Reads a credit's value.
fn credit_value(line: &mut Line, t: RelayTuning, blob: &[u8], pt: &mut Vec<u8>) -> Result<u64> {
    if !t.noise {
        let b: [u8; 8] = blob.try_into().context("a raw credit is 8 bytes")?;
        return Ok(u64::from_le_bytes(b));
    }
    if line.handle_blob(Instant::now(), blob, pt) != Received::Plaintext {
        bail!("a credit did not open: {:?}", line.poll_event());
    }
    for f in Frames::new(pt) {
        if let Frame::Ack { delivered_upto, .. } = f? {
            return Ok(delivered_upto);
        }
    }
    bail!("a credit without an ACK frame")
}

/// Reads the sender's connection: credits go to the sender task, an `ERR` ends the run.
fn spawn_credit_reader(
    mut reader: HopReader,
    tx: mpsc::Sender<Vec<u8>>,
) -> tokio::task::JoinHandle<Result<()>> {
    tokio::spawn(async move {
        loop {
            match reader.next().await {
                Ok(Some(HopFrame::Deliver { blob, .. })) => {
                    if tx.send(blob.to_vec()).await.is_err() {
                        return Ok(());
                    }
                }
                Ok(Some(HopFrame::Err { code, .. })) => {
                    bail!("the relay answered the sender: {}", err::name(code))
                }
                Ok(Some(other)) => bail!("unexpected hop frame {other:?}"),
                Ok(None) => return Ok(()),
                // the connection closes at the end of every run
                Err(e) => return Err(e.into()),
            }
        }
    })
}

/// One bulk run through a fresh relay and session: `warmup` plaintext bytes untimed, then
/// `bytes` timed at the receiver (plaintext bytes, 65,519 per frame, as the line bench).
/// Also returns the frames the relay dropped (slow client, overload).
pub async fn bulk(warmup: u64, bytes: u64, t: RelayTuning) -> Result<(Measured, (u64, u64))> {
    let (mut pair, mut la, mut lb) = RelayPair::new().await?;
    handshake_via(&mut pair, &mut la, &mut lb).await?;
    let eps = pair.endpoints();
    let warm_frames = frames_for(warmup);
    let frames = warm_frames + frames_for(bytes);
    let total = frames * MAX_PLAINTEXT as u64;
    let limit = bulk_timeout(total);
    let RelayPair {
        relay,
        a,
        b,
        a_to_b,
        b_to_a,
        ..
    } = pair;
    let conns = [a.conn.clone(), b.conn.clone()];
    let Side {
        reader: a_reader,
        writer: a_writer,
        ..
    } = a;
    let (ctx, mut crx) = mpsc::channel::<Vec<u8>>(64);
    let credit_reader = spawn_credit_reader(a_reader, ctx);
    let sender = tokio::spawn(async move {
        let mut w = a_writer;
        let src = bulk_source();
        let raw = (!t.noise).then(|| {
            let mut f = Vec::with_capacity(POST_HEADER_LEN + BULK_BLOB_LEN);
            write_post_header(&mut f, &a_to_b, false, BULK_BLOB_LEN);
            f.resize(POST_HEADER_LEN + BULK_BLOB_LEN, 0x5a);
            Bytes::from(f)
        });
        let mut acked = 0u64;
        let mut pt = Vec::with_capacity(256);
        for i in 0..frames {
            if t.window > 0 {
                while let Ok(c) = crx.try_recv() {
                    acked = acked.max(credit_value(&mut la, t, &c, &mut pt)?);
                }
                while i >= acked + t.window {
                    let c = crx
                        .recv()
                        .await
                        .context("no more credits (the sender's connection ended)")?;
                    acked = acked.max(credit_value(&mut la, t, &c, &mut pt)?);
                }
            }
            let frame = match &raw {
                Some(f) => f.clone(),
                None => bulk_post(&mut la, &src, i, &a_to_b)?,
            };
            w.stream().write_chunk(frame).await?;
            tokio::task::yield_now().await;
        }
        anyhow::Ok(w)
    });
    let receiver = tokio::spawn(async move {
        let mut side = b;
        let mut pt = Vec::with_capacity(MAX_PLAINTEXT + NOISE_TAG_LEN);
        let mut meter = Meter::new(warm_frames * MAX_PLAINTEXT as u64, total);
        let mut got = 0u64;
        loop {
            let Side { reader, writer, .. } = &mut side;
            let n = match reader.next().await? {
                Some(HopFrame::Deliver { blob, .. }) => {
                    got += 1;
                    let due = t.credit_every > 0 && got.is_multiple_of(t.credit_every);
                    if due && t.credit_on_receipt {
                        // the frame has left the relay: credit it before opening
                        let c = credit_post(&mut lb, t, got, &b_to_a)?;
                        writer.stream().write_chunk(c).await?;
                    }
                    if t.noise {
                        open_blob(&mut lb, blob, &mut pt)?.0
                    } else if blob.len() == BULK_BLOB_LEN {
                        MAX_PLAINTEXT
                    } else {
                        bail!("an opaque blob of {} bytes", blob.len());
                    }
                }
                other => bail!("unexpected hop frame {other:?}"),
            };
            if meter.add(n) {
                return Ok((meter.finish()?, side));
            }
            if t.rx_pause_ms > 0 && got.is_multiple_of(u64::from(FRAGS_PER_MSG)) {
                tokio::time::sleep(Duration::from_millis(t.rx_pause_ms)).await;
            }
            if t.credit_every > 0 && got.is_multiple_of(t.credit_every) && !t.credit_on_receipt {
                let c = credit_post(&mut lb, t, got, &b_to_a)?;
                side.writer.stream().write_chunk(c).await?;
            }
            tokio::task::yield_now().await;
        }
    });
    let result = async {
        let r = tokio::time::timeout(limit, receiver)
            .await
            .context("relay bulk receiver timed out")?;
        let (m, _side) = match r? {
            Ok(x) => x,
            Err(e) => {
                let (slow, over) = relay.dropped();
                return Err(e.context(format!(
                    "the receiver failed (relay dropped {slow} frames for slow clients, \
                     {over} for overload)"
                )));
            }
        };
        tokio::time::timeout(limit, sender)
            .await
            .context("relay bulk sender timed out")???;
        anyhow::Ok(m)
    }
    .await;
    let dropped = relay.dropped();
    shutdown(relay, &conns, eps).await;
    let reader_end = tokio::time::timeout(Duration::from_secs(5), credit_reader).await;
    let m = match result {
        Ok(m) => m,
        Err(e) => {
            // the sender's reader may know why (an ERR from the relay)
            if let Ok(Ok(Err(why))) = reader_end {
                return Err(e.context(format!("{why:#}")));
            }
            return Err(e);
        }
    };
    Ok((m, dropped))
}

/// Round trips through the relay: a [`RTT_LEN`]-byte plaintext (one `MSG` frame) sealed into
/// a `POST` to the receiver's inbox, opened there, sealed back to the sender's inbox, opened.
#[derive(Debug)]
pub struct RelayPinger {
    a: Side,
    b_conn: quinn::Connection,
    line: Line,
    pt: Vec<u8>,
    seq: u64,
    dst: InboxId,
    echo: tokio::task::JoinHandle<Result<()>>,
    relay: InProcRelay,
    eps: Vec<quinn::Endpoint>,
}

impl RelayPinger {
    /// A fresh relay, two clients, a session, and an echoing (open, seal) receiver.
    pub async fn new() -> Result<RelayPinger> {
        let (mut pair, mut la, mut lb) = RelayPair::new().await?;
        handshake_via(&mut pair, &mut la, &mut lb).await?;
        let eps = pair.endpoints();
        let RelayPair {
            relay,
            a,
            b,
            a_to_b,
            b_to_a,
            ..
        } = pair;
        let b_conn = b.conn.clone();
        let echo = tokio::spawn(async move {
            let mut side = b;
            let mut pt = Vec::with_capacity(RTT_LEN + NOISE_TAG_LEN);
            loop {
                match side.reader.next().await {
                    Ok(Some(HopFrame::Deliver { blob, .. })) => {
                        open_blob(&mut lb, blob, &mut pt)?;
                    }
                    _ => return Ok(()),
                }
                let frame = seal_post(&mut lb, &b_to_a, &pt, true)?;
                side.writer.stream().write_chunk(Bytes::from(frame)).await?;
            }
        });
        Ok(RelayPinger {
            a,
            b_conn,
            line: la,
            pt: Vec::with_capacity(RTT_LEN + NOISE_TAG_LEN),
            seq: 0,
            dst: a_to_b,
            echo,
            relay,
            eps,
        })
    }

    /// `n` round trips; samples in µs. Each includes building, sealing and opening at both
    /// ends and two passes through the relay.
    pub async fn block(&mut self, n: usize) -> Result<Vec<f64>> {
        let bound = Duration::from_secs(10 + n as u64 / 100);
        let RelayPinger {
            a,
            line,
            pt,
            seq,
            dst,
            ..
        } = self;
        tokio::time::timeout(bound, async {
            let body = [0x42u8; 200];
            let mut samples = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                *seq += 1;
                let mut fw = FrameWriter::default();
                fw.msg(*seq, 0, 1, &body);
                let msg = fw.finish();
                let frame = seal_post(line, dst, &msg, true)?;
                a.writer.stream().write_chunk(Bytes::from(frame)).await?;
                match a.reader.next().await? {
                    Some(HopFrame::Deliver { blob, .. }) => {
                        open_blob(line, blob, pt)?;
                    }
                    other => bail!("unexpected hop frame {other:?}"),
                }
                samples.push(t.elapsed().as_secs_f64() * 1e6);
            }
            anyhow::Ok(samples)
        })
        .await
        .context("relay round trips timed out")?
    }

    /// Closes everything (bounded).
    pub async fn close(self) {
        let conns = [self.a.conn.clone(), self.b_conn.clone()];
        for c in &conns {
            c.close(0u32.into(), b"done");
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.echo).await;
        shutdown(self.relay, &conns, self.eps).await;
    }
}
