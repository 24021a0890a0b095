//! Sealed mailbox envelopes (design §3.4, protocol §12): what sealing and opening cost, and
//! how many envelopes a relay's durable queue takes per second.
//!
//! * **In memory, one core** ([`in_memory`]): alice seals to bob's current mailbox key with
//!   `liaison_proto::envelope::seal` and bob opens with `envelope::open`, finding the key in
//!   his `MailboxRing` (a card key plus one fresh key from `rotate`, as a node holds them).
//!   Every key is real: Ed25519 identities, X25519 Noise statics, an ML-KEM-768 mailbox key
//!   verified with `verify_mailbox_key`. Each envelope pays a fresh ephemeral X25519 key, an
//!   ML-KEM-768 encapsulation, three DH, HKDF, ChaChaPoly over the frames and an Ed25519
//!   signature to seal; decapsulation, three DH, ChaChaPoly and `verify_strict` to open. Two
//!   sizes: **small**, one `MSG` frame with a 100-byte chunk (frames padded to 128 bytes,
//!   1,337-byte blob), and **full**, one `MSG` frame with a full fragment (65,423 bytes of
//!   frames, the 66,632-byte maximum blob).
//! * **Through a relay, `store = 1`** ([`through_relay`]): a real relay in this process (as in
//!   `relay_path.rs`, default configuration, SQLite WAL with `synchronous=FULL` in a temporary
//!   directory on this machine's disk). Alice's client posts envelopes sealed beforehand with
//!   `POST(inbox(a → b), store = 1)` as fast as the relay takes them (it reads at most
//!   `max_inflight_posts` = 64 uncommitted posts per client); the relay group-commits them and
//!   answers `ACK(envelope_id)`. Bob's client is subscribed: each envelope is `DELIVER`ed to
//!   him live after its commit, he opens it (`envelope::open`, checking the id) and sends the
//!   relay `ACK(envelope_id)`, which deletes it (in a later group commit). The figure is
//!   envelopes per second acknowledged to alice by the relay, after a warm-up of a tenth;
//!   bob's rate of opened envelopes is reported beside it.

use crate::relay_path::{InProcRelay, POST_HEADER_LEN, relay_client, write_post_header};
use crate::setup::Side;
use crate::stats::{median, round};
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use ed25519_dalek::SigningKey;
use liaison_audit::keys::generate_signing_key;
use liaison_proto::envelope::{envelope_frame_writer, open, seal};
use liaison_proto::inbox::InboxKeys;
use liaison_proto::keys::{LocalKeys, NoiseSecret, PeerKeys};
use liaison_proto::mailbox_key::{MailboxSecret, verify_mailbox_key};
use liaison_proto::mailbox_ring::MailboxRing;
use liaison_wire::card::MailboxKeyPub;
use liaison_wire::consts::MAX_FRAGMENT;
use liaison_wire::hop::{HopFrame, err};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// Chunk bytes of the small envelope's one `MSG` frame.
pub const SMALL_CHUNK: usize = 100;

/// Alice (sender) and bob (recipient) with every key a node holds.
struct Parties {
    a_local: LocalKeys,
    a_sign: SigningKey,
    /// Bob as alice pinned him.
    a_peer: PeerKeys,
    b_local: LocalKeys,
    /// Alice as bob pinned her.
    b_peer: PeerKeys,
    b_ring: MailboxRing,
    /// Bob's current mailbox key (his fresh key), verified by alice.
    mailbox: MailboxKeyPub,
    a_inbox: InboxKeys,
    b_inbox: InboxKeys,
}

fn parties() -> Result<Parties> {
    let a_sign = generate_signing_key()?;
    let b_sign = generate_signing_key()?;
    let a_noise = NoiseSecret::generate()?;
    let b_noise = NoiseSecret::generate()?;
    let a_id = a_sign.verifying_key().to_bytes();
    let b_id = b_sign.verifying_key().to_bytes();
    let now = crate::unix_now();
    let card = MailboxSecret::generate(&b_sign, now + 365 * 86_400)?;
    let mut b_ring = MailboxRing::new(card, now);
    b_ring
        .rotate(&b_sign, now)?
        .context("the ring made no fresh key")?;
    let mailbox = b_ring.current_for_peers(now).clone();
    verify_mailbox_key(&mailbox, &b_id)?;
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
    Ok(Parties {
        a_local,
        a_sign,
        a_peer,
        b_local,
        b_peer,
        b_ring,
        mailbox,
        a_inbox,
        b_inbox,
    })
}

/// Envelope sizes measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// One `MSG` frame with a 100-byte chunk.
    Small,
    /// One `MSG` frame with a full fragment: the largest envelope.
    Full,
}

impl Size {
    /// Both, in report order.
    pub const ALL: [Size; 2] = [Size::Small, Size::Full];

    /// The JSON name.
    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Full => "full",
        }
    }

    /// The frames sealed (padded to an envelope bucket), for message `seq`.
    fn frames(self, seq: u64) -> Vec<u8> {
        let mut w = envelope_frame_writer();
        match self {
            Size::Small => {
                w.msg(seq, 0, 1, &[0x42; SMALL_CHUNK]);
            }
            Size::Full => {
                let chunk: Vec<u8> = (0..MAX_FRAGMENT).map(|i| (i % 251) as u8).collect();
                w.msg(seq, 0, crate::line::FRAGS_PER_MSG, &chunk);
            }
        }
        w.finish()
    }
}

impl Parties {
    fn seal(&self, frames: &[u8]) -> Result<Vec<u8>> {
        Ok(seal(
            &self.a_local,
            &self.a_sign,
            &self.a_peer,
            &self.mailbox,
            frames,
        )?)
    }

    /// Opens as bob; returns the frames' length and the envelope id.
    fn open(&self, blob: &[u8]) -> Result<(usize, [u8; 16])> {
        let opened = open(&self.b_local, &self.b_peer, |id| self.b_ring.find(id), blob)?;
        Ok((opened.frames().len(), *opened.envelope_id()))
    }
}

/// One timed run: seal then open envelopes of `size` for about `dur`; returns (envelopes,
/// seconds sealing, seconds opening).
fn run_once(p: &Parties, size: Size, dur: Duration) -> Result<(u64, f64, f64)> {
    let frames = size.frames(1);
    let mut n = 0u64;
    let (mut seal_s, mut open_s) = (0.0, 0.0);
    let t0 = Instant::now();
    while t0.elapsed() < dur {
        let t = Instant::now();
        let blob = p.seal(&frames)?;
        let t1 = Instant::now();
        let (len, _) = p.open(&blob)?;
        let t2 = Instant::now();
        if len != frames.len() {
            bail!("opened {len} bytes of frames, sealed {}", frames.len());
        }
        seal_s += (t1 - t).as_secs_f64();
        open_s += (t2 - t1).as_secs_f64();
        n += 1;
    }
    Ok((n, seal_s, open_s))
}

/// Seal and open rates on this thread (one core), for both sizes: the median of `runs` runs
/// of about `dur` each, after a warm-up of a fifth of that.
pub fn in_memory(dur: Duration, runs: usize) -> Result<Value> {
    let p = parties()?;
    let mut out = serde_json::Map::new();
    for size in Size::ALL {
        let frames_len = size.frames(1).len();
        let blob_len = p.seal(&size.frames(1))?.len();
        run_once(&p, size, dur / 5)?;
        let mut per_s = Vec::new();
        let mut seal_us = Vec::new();
        let mut open_us = Vec::new();
        for _ in 0..runs.max(1) {
            let (n, s, o) = run_once(&p, size, dur)?;
            let n = n.max(1) as f64;
            per_s.push(n / (s + o));
            seal_us.push(s / n * 1e6);
            open_us.push(o / n * 1e6);
        }
        let rate = median(&per_s);
        let mib = rate * frames_len as f64 / (1024.0 * 1024.0);
        out.insert(
            size.name().to_string(),
            json!({
                "frames_bytes": frames_len,
                "blob_bytes": blob_len,
                "seal_open_per_s": round(rate, 0),
                "seal_open_runs_per_s": per_s.iter().map(|x| round(*x, 0)).collect::<Vec<_>>(),
                "seal_open_mib_s": round(mib, 1),
                "seal_us": round(median(&seal_us), 1),
                "open_us": round(median(&open_us), 1),
            }),
        );
    }
    // two pieces of the cost that open and seal repeat (see docs/performance.md)
    let secret = p
        .b_ring
        .find(&p.mailbox.key_id)
        .context("bob's current key is in his ring")?;
    let reps = 200;
    let t = Instant::now();
    for _ in 0..reps {
        std::hint::black_box(p.a_local.noise.dh(&p.mailbox.x25519));
    }
    out.insert(
        "x25519_dh_us".into(),
        json!(round(t.elapsed().as_secs_f64() / reps as f64 * 1e6, 1)),
    );
    let t = Instant::now();
    for _ in 0..reps {
        std::hint::black_box(secret.decapsulation_key());
    }
    out.insert(
        "mailbox_decapsulation_key_from_seed_us".into(),
        json!(round(t.elapsed().as_secs_f64() / reps as f64 * 1e6, 1)),
    );
    out.insert(
        "measured".into(),
        json!(
            "one core (main thread, before the runtime); alice seals to bob's fresh mailbox \
             key, bob opens with his MailboxRing; MiB/s counts the padded frames"
        ),
    );
    Ok(Value::Object(out))
}

/// Bob: opens `count` delivered envelopes (checking each id) and acknowledges each to the
/// relay; returns his side, the seconds after the first `warm` and the seconds in all (from
/// the task's start).
fn spawn_bob(
    mut side: Side,
    p: Arc<Parties>,
    count: usize,
    warm: usize,
) -> tokio::task::JoinHandle<Result<(Side, f64, f64)>> {
    tokio::spawn(async move {
        let t0 = Instant::now();
        let mut opened = 0usize;
        let mut start = (warm == 0).then(Instant::now);
        while opened < count {
            let id = match side.reader.next().await? {
                Some(HopFrame::Deliver {
                    envelope_id, blob, ..
                }) => {
                    let (_, id) = p.open(blob)?;
                    if id != envelope_id {
                        bail!("a delivered envelope id does not match its blob");
                    }
                    id
                }
                other => bail!("unexpected hop frame for bob {other:?}"),
            };
            side.writer.send(&HopFrame::Ack { envelope_id: id }).await?;
            opened += 1;
            if opened == warm {
                start = Some(Instant::now());
            }
        }
        let after_warm = start.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0);
        Ok((side, after_warm, t0.elapsed().as_secs_f64()))
    })
}

/// Posts `count` envelopes of `size` (sealed beforehand) with `store = 1` through a fresh
/// relay, counting the relay's `ACK`s (the first tenth is a warm-up). Then the recipient
/// connects, subscribes, and opens and acknowledges every envelope the relay replays to him,
/// until the queue is empty: the recipient was away, as envelopes are for.
///
/// With `live`, the recipient is connected and subscribed from the start instead, so every
/// envelope is delivered to him right after its commit (the relay's live fan-out).
pub async fn through_relay(size: Size, count: usize, live: bool) -> Result<Value> {
    let p = Arc::new(parties()?);
    let warm = count / 10;
    let seal_t = Instant::now();
    let now = crate::unix_now();
    let dst = p.a_inbox.send_inbox(now);
    let mut frames = Vec::with_capacity(count);
    for i in 0..count {
        let blob = p.seal(&size.frames(i as u64 + 1))?;
        let mut f = Vec::with_capacity(POST_HEADER_LEN + blob.len());
        write_post_header(&mut f, &dst, true, blob.len());
        f.extend_from_slice(&blob);
        frames.push(Bytes::from(f));
    }
    let seal_s = seal_t.elapsed().as_secs_f64();
    let blob_len = frames
        .first()
        .map(|f| f.len() - POST_HEADER_LEN)
        .unwrap_or(0);

    let relay = InProcRelay::start().await?;
    let a_recv = p.a_inbox.recv_inboxes(now);
    let b_recv = p.b_inbox.recv_inboxes(now);
    let (a, ea) = relay_client(&relay, &a_recv).await?;
    relay.wait_subscriptions(a_recv.len() as u64).await?;
    let mut conns = vec![a.conn.clone()];
    let mut eps = vec![ea];
    let mut bob = None;
    if live {
        let (b, eb) = relay_client(&relay, &b_recv).await?;
        relay
            .wait_subscriptions((a_recv.len() + b_recv.len()) as u64)
            .await?;
        conns.push(b.conn.clone());
        eps.push(eb);
        bob = Some(spawn_bob(b, Arc::clone(&p), count, warm));
    }
    let limit = Duration::from_secs(60 + count as u64 / 50);
    let m0 = snapshot(&relay);

    let Side {
        reader: mut a_reader,
        writer: mut a_writer,
        ..
    } = a;
    let writer = tokio::spawn(async move {
        for f in frames {
            a_writer.stream().write_chunk(f).await?;
            tokio::task::yield_now().await;
        }
        anyhow::Ok(a_writer)
    });
    let alice = async {
        let mut acked = 0usize;
        let mut start = None;
        while acked < count {
            match a_reader.next().await? {
                Some(HopFrame::Ack { .. }) => acked += 1,
                Some(HopFrame::Err { code, .. }) => {
                    bail!("the relay refused envelope {acked}: {}", err::name(code))
                }
                other => bail!("unexpected hop frame for alice {other:?}"),
            }
            if acked == warm {
                start = Some(Instant::now());
            }
        }
        anyhow::Ok(start.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0))
    };
    let mut report = serde_json::Map::new();
    let result = async {
        let acked_s = tokio::time::timeout(limit, alice)
            .await
            .context("the relay's ACKs timed out")??;
        tokio::time::timeout(limit, writer)
            .await
            .context("alice's writer timed out")???;
        relay.handle.store_barrier().await;
        let m1 = snapshot(&relay);
        let timed = (count - warm) as f64;
        let per_s = timed / acked_s.max(1e-9);
        let frames_len = size.frames(1).len();
        report.insert("acked_per_s".into(), json!(round(per_s, 0)));
        report.insert(
            "acked_mib_s".into(),
            json!(round(per_s * frames_len as f64 / (1024.0 * 1024.0), 2)),
        );
        report.insert("store_commits".into(), json!(m1.0 - m0.0));
        report.insert(
            "store_ops_per_commit".into(),
            json!(round((m1.1 - m0.1) as f64 / (m1.0 - m0.0).max(1) as f64, 1)),
        );
        report.insert("stored".into(), json!(m1.2 - m0.2));
        let bob = match bob.take() {
            Some(b) => b,
            None => {
                report.insert("queued_while_away".into(), json!(m1.4));
                let t = Instant::now();
                let (b, eb) = relay_client(&relay, &b_recv).await?;
                conns.push(b.conn.clone());
                eps.push(eb);
                let bob = spawn_bob(b, Arc::clone(&p), count, 0);
                let (_b, _, _) = tokio::time::timeout(limit, bob)
                    .await
                    .context("bob timed out")???;
                let opened_s = t.elapsed().as_secs_f64();
                wait_empty(&relay, limit).await?;
                let emptied_s = t.elapsed().as_secs_f64();
                report.insert(
                    "drained_opened_per_s".into(),
                    json!(round(count as f64 / opened_s.max(1e-9), 0)),
                );
                report.insert("drain_seconds".into(), json!(round(opened_s, 3)));
                report.insert("queue_empty_seconds".into(), json!(round(emptied_s, 3)));
                return anyhow::Ok(());
            }
        };
        let (_b, after_warm, _) = tokio::time::timeout(limit, bob)
            .await
            .context("bob timed out")???;
        report.insert(
            "opened_by_recipient_per_s".into(),
            json!(round(timed / after_warm.max(1e-9), 0)),
        );
        wait_empty(&relay, limit).await?;
        anyhow::Ok(())
    }
    .await;
    let m2 = snapshot(&relay);
    for c in &conns {
        c.close(0u32.into(), b"done");
    }
    for ep in eps {
        ep.close(0u32.into(), b"bench done");
        let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
    }
    let (slow, over) = relay.dropped();
    relay.stop().await;
    result.with_context(|| {
        format!(
            "{} envelopes, recipient {}: the relay dropped {slow} frames for slow clients",
            size.name(),
            if live { "live" } else { "away" }
        )
    })?;
    report.insert("envelopes".into(), json!(count));
    report.insert("warmup".into(), json!(warm));
    report.insert("blob_bytes".into(), json!(blob_len));
    report.insert(
        "recipient".into(),
        json!(if live { "live" } else { "away, then drains" }),
    );
    report.insert("deleted_by_recipient_ack".into(), json!(m2.3 - m0.3));
    report.insert("left_in_queue".into(), json!(m2.4));
    report.insert("dropped_slow_client".into(), json!(slow));
    report.insert("dropped_overload".into(), json!(over));
    report.insert("sealed_beforehand_s".into(), json!(round(seal_s, 2)));
    Ok(Value::Object(report))
}

/// Waits (bounded) until the recipient's acknowledgements have deleted everything.
async fn wait_empty(relay: &InProcRelay, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        relay.handle.store_barrier().await;
        if relay.handle.metrics().queued_envelopes.load(Relaxed) == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the queue did not empty after the recipient's acknowledgements");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// (commits, committed ops, stored, acked, queued envelopes).
fn snapshot(relay: &InProcRelay) -> (u64, u64, u64, u64, u64) {
    let m = relay.handle.metrics();
    (
        m.commits_total.load(Relaxed),
        m.committed_ops_total.load(Relaxed),
        m.stored_total.load(Relaxed),
        m.acked_total.load(Relaxed),
        m.queued_envelopes.load(Relaxed),
    )
}
