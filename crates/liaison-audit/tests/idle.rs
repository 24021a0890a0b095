//! Idle is cheap (design §10): two lines driven the way the node drives them — group commit
//! every 100 ms while something was logged, every audit message answered — settle once the
//! traffic stops, and nothing a checkpoint or cosignature produces calls for a new checkpoint.
//! A hostile peer that offers endless distinct checkpoints cannot grow our log beyond the
//! cosigning bound.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{Party, T0, send};
use liaison_audit::check::check;
use liaison_audit::entry::{Event, KeyEventKind};
use liaison_audit::line::COSIGN_INTERVAL_MS;
use liaison_audit::mem::MemoryLine;

/// Group-commit period of the node.
const TICK_MS: u64 = 100;

/// One side as the node's audit thread drives it.
struct Side {
    line: MemoryLine,
    /// Something was logged or handled since the last commit (the node's `dirty`).
    dirty: bool,
    inbox: Vec<Vec<u8>>,
}

impl Side {
    fn new(line: MemoryLine) -> Self {
        Self {
            line,
            dirty: false,
            inbox: Vec::new(),
        }
    }

    fn entries(&self) -> u64 {
        self.line.log().len()
    }
}

/// Delivers every message in flight (replies included, within the tick), as the line does.
/// Returns how many messages were delivered.
fn deliver(a: &mut Side, b: &mut Side, now: u64) -> usize {
    let mut n = 0;
    for _ in 0..32 {
        if a.inbox.is_empty() && b.inbox.is_empty() {
            return n;
        }
        for m in std::mem::take(&mut a.inbox) {
            n += 1;
            a.dirty = true;
            b.inbox.extend(a.line.handle_message(&m, now).unwrap());
        }
        for m in std::mem::take(&mut b.inbox) {
            n += 1;
            b.dirty = true;
            a.inbox.extend(b.line.handle_message(&m, now).unwrap());
        }
    }
    panic!("audit messages did not settle within one tick");
}

/// One audit-thread tick on both sides at `now`: deferred cosignatures that came due, then
/// the group commit of each dirty side, then delivery. Returns the messages delivered.
fn tick(a: &mut Side, b: &mut Side, now: u64) -> usize {
    tick_one(a, b, now);
    tick_one(b, a, now);
    deliver(a, b, now)
}

fn tick_one(me: &mut Side, other: &mut Side, now: u64) {
    other.inbox.extend(me.line.handle_timeout(now).unwrap());
    if me.dirty {
        me.dirty = false;
        other.inbox.extend(me.line.commit(now).unwrap());
    }
}

fn pair() -> (Side, Side) {
    let (pa, pb) = (Party::new(), Party::new());
    (
        Side::new(MemoryLine::in_memory(pa.keys(), pb.vk())),
        Side::new(MemoryLine::in_memory(pb.keys(), pa.vk())),
    )
}

fn kind_counts(line: &MemoryLine, from: u64) -> Vec<String> {
    line.storage()
        .leaves()
        .iter()
        .skip(from as usize)
        .map(|l| {
            let e = liaison_audit::Entry::from_leaf(l).unwrap();
            format!("{:?}", e.event)
                .split([' ', '{'])
                .next()
                .unwrap()
                .to_string()
        })
        .collect()
}

fn is_cosign_record(leaf: &[u8]) -> bool {
    matches!(
        liaison_audit::Entry::from_leaf(leaf).unwrap().event,
        Event::PeerCheckpointCosigned { .. }
    )
}

#[test]
fn an_idle_line_settles_and_its_logs_stop_growing() {
    let (mut a, mut b) = pair();
    let mut now = T0;
    for s in [&mut a, &mut b] {
        s.line.append(
            Event::KeyEvent {
                kind: KeyEventKind::PeerPinned,
                key_hash: [1; 32],
            },
            now,
        );
        s.dirty = true;
    }
    // Two messages each way, a tick apart, as a short conversation.
    for seq in 1..=2 {
        send(&mut a.line, &mut b.line, seq, "hello", now);
        send(&mut b.line, &mut a.line, seq, "hi", now);
        a.dirty = true;
        b.dirty = true;
        tick(&mut a, &mut b, now);
        now += TICK_MS;
    }
    // The exchange settles within a few rounds (a deferred cosignature waits at most
    // COSIGN_INTERVAL_MS): then nothing is sent and nothing is logged any more.
    let settle_by = now + COSIGN_INTERVAL_MS + 5 * TICK_MS;
    let mut last_traffic = now;
    while now <= settle_by + 10 * TICK_MS {
        if tick(&mut a, &mut b, now) > 0 {
            last_traffic = now;
        }
        now += TICK_MS;
    }
    assert!(
        last_traffic <= settle_by,
        "still exchanging audit messages {} ms after the last message",
        last_traffic - T0
    );
    // A minute of idle line: not one entry, not one message.
    let (a0, b0) = (a.entries(), b.entries());
    let mut delivered = 0;
    for _ in 0..600 {
        delivered += tick(&mut a, &mut b, now);
        now += TICK_MS;
    }
    assert_eq!(
        (a.entries() - a0, b.entries() - b0, delivered),
        (0, 0, 0),
        "an idle minute added entries {:?} / {:?}",
        kind_counts(&a.line, a0),
        kind_counts(&b.line, b0)
    );
    assert!(a0 <= 20 && b0 <= 20, "{a0} and {b0} entries for 4 messages");

    // Everything real was checkpointed and cosigned by the peer; what follows the last
    // checkpoint is only records of cosignatures; every message has its receipt.
    for (s, peer) in [(&a, &b), (&b, &a)] {
        let st = s.line.status();
        assert_eq!(st.durable, st.size);
        assert_eq!(st.cosigned_by_peer, st.checkpoint, "{st:?}");
        assert_eq!(peer.line.status().peer_size_witnessed, st.checkpoint);
        let tail = &s.line.storage().leaves()[st.checkpoint as usize..];
        assert!(tail.iter().all(|l| is_cosign_record(l)));
        assert_eq!(s.line.storage().receipts().len(), 2);
    }
    let r = check(&[a.line.bundle(now).unwrap(), b.line.bundle(now).unwrap()]).unwrap();
    let cross = r.cross.unwrap();
    assert_eq!(cross.acked_messages_matched, 4);
    assert_eq!(cross.received_messages_matched, 4);
    assert_eq!(r.bundles[0].acked_without_receipt, 0);
    assert_eq!(r.bundles[1].acked_without_receipt, 0);

    // The records of cosignatures are not lost: the next real entry's checkpoint covers them.
    let before = (a.entries(), b.entries());
    send(&mut a.line, &mut b.line, 3, "still there?", now);
    a.dirty = true;
    b.dirty = true;
    for _ in 0..(COSIGN_INTERVAL_MS / TICK_MS + 5) {
        tick(&mut a, &mut b, now);
        now += TICK_MS;
    }
    for (s, before) in [(&a, before.0), (&b, before.1)] {
        let st = s.line.status();
        assert!(st.checkpoint > before, "{before} entries before, {st:?}");
        assert_eq!(st.cosigned_by_peer, st.checkpoint, "{st:?}");
    }
    check(&[a.line.bundle(now).unwrap(), b.line.bundle(now).unwrap()]).unwrap();
}

/// A peer that logs an entry and offers a new checkpoint every 10 ms, for a minute, while this
/// side logs nothing itself: our log grows by at most one record per cosigning interval, our
/// checkpoints not at all, and the peer's last checkpoint is still cosigned at the end.
#[test]
fn a_peer_offering_endless_checkpoints_cannot_grow_our_log() {
    let (mut a, mut mallory) = pair();
    let mut now = T0;
    a.line.append(Event::MsgAcked { seq: 0 }, now);
    mallory.line.append(Event::MsgAcked { seq: 0 }, now);
    a.dirty = true;
    mallory.dirty = true;
    // Let the first exchange settle (each side's checkpoint of the peer's audit keys too).
    for _ in 0..(2 * COSIGN_INTERVAL_MS / TICK_MS) {
        tick(&mut a, &mut mallory, now);
        now += TICK_MS;
    }
    let a0 = a.entries();
    let cps0 = a.line.storage().checkpoints().len();
    const FLOOD_MS: u64 = 60_000;
    let mut offers = 0u64;
    let start = now;
    while now < start + FLOOD_MS {
        mallory.line.append(Event::MsgAcked { seq: offers }, now);
        // Mallory commits every 10 ms, never mind the group-commit period.
        a.inbox.extend(mallory.line.commit(now).unwrap());
        offers += 1;
        deliver(&mut a, &mut mallory, now);
        if now.is_multiple_of(TICK_MS) {
            // A's own audit thread ticks, as usual.
            mallory.inbox.extend(a.line.handle_timeout(now).unwrap());
            if a.dirty {
                a.dirty = false;
                mallory.inbox.extend(a.line.commit(now).unwrap());
            }
            deliver(&mut a, &mut mallory, now);
        }
        now += 10;
    }
    assert_eq!(offers, 6_000);
    // The flood stops; A keeps ticking.
    for _ in 0..(2 * COSIGN_INTERVAL_MS / TICK_MS) {
        tick(&mut a, &mut mallory, now);
        now += TICK_MS;
    }
    let added = a.entries() - a0;
    let bound = FLOOD_MS / COSIGN_INTERVAL_MS + 3;
    assert!(
        added <= bound,
        "6,000 offers in 60 s added {added} entries (bound {bound})"
    );
    assert_eq!(
        a.line.storage().checkpoints().len(),
        cps0,
        "records of cosignatures made checkpoints"
    );
    // Still a witness: Mallory's latest checkpoint is cosigned.
    let ms = mallory.line.status();
    assert_eq!(ms.cosigned_by_peer, ms.checkpoint, "{ms:?}");
    assert_eq!(a.line.status().peer_size_witnessed, ms.checkpoint);
}
