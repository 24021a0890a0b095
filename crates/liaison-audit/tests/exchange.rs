//! Two in-memory lines witnessing each other through the inner-line messages: the honest
//! exchange verifies; the witness refuses replayed, foreign, forked and wrongly keyed offers;
//! resync, receipts and anomaly aggregation work.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{Party, T0, pump, send};
use liaison_audit::check::check;
use liaison_audit::entry::{AnomalyKind, Event, KeyEventKind, verify_opening};
use liaison_audit::keys::LocalKeys;
use liaison_audit::line::{COSIGN_INTERVAL_MS, LineError};
use liaison_audit::mem::MemoryLine;
use liaison_audit::wire::AuditMessage;
use liaison_audit::witness::WitnessError;

fn lines(a: &Party, b: &Party) -> (MemoryLine, MemoryLine) {
    (
        MemoryLine::in_memory(a.keys(), b.vk()),
        MemoryLine::in_memory(b.keys(), a.vk()),
    )
}

fn anomalies(line: &MemoryLine, kind: AnomalyKind) -> usize {
    line.storage()
        .leaves()
        .iter()
        .chain(line.log().pending_entries().iter().map(|p| &p.leaf))
        .filter_map(|l| liaison_audit::Entry::from_leaf(l).ok())
        .filter(|e| matches!(e.event, Event::Anomaly { kind: k, .. } if k == kind))
        .count()
}

#[test]
fn honest_exchange_verifies_alone_and_together() {
    let (pa, pb) = (Party::new(), Party::new());
    let (mut a, mut b) = lines(&pa, &pb);
    let mut now = T0;
    a.append(
        Event::KeyEvent {
            kind: KeyEventKind::PeerPinned,
            key_hash: [1; 32],
        },
        now,
    );
    for round in 0..6u64 {
        for k in 0..3u64 {
            let seq = round * 3 + k + 1;
            send(&mut a, &mut b, seq, &format!("a->b {seq}"), now);
            send(&mut b, &mut a, seq, &format!("b->a {seq}"), now);
            now += 10;
        }
        pump(&mut a, &mut b, now);
        now += 100;
    }
    pump(&mut a, &mut b, now);

    // Receipts for every message each side sent (all were received, logged and cosigned).
    assert_eq!(a.storage().receipts().len(), 18);
    assert_eq!(b.storage().receipts().len(), 18);

    let ba = a.bundle(now).unwrap();
    let bb = b.bundle(now).unwrap();
    // Round trip through the byte format.
    let ba = liaison_audit::Bundle::decode(&ba.encode()).unwrap();
    let bb = liaison_audit::Bundle::decode(&bb.encode()).unwrap();

    let ra = check(std::slice::from_ref(&ba)).unwrap();
    assert!(ra.bundles[0].complete);
    assert_eq!(ra.bundles[0].messages_sent, 18);
    assert_eq!(ra.bundles[0].receipts, 18);
    assert_eq!(ra.bundles[0].acked_without_receipt, 0);
    assert!(ra.bundles[0].cosigned_by_peer > 0);
    check(std::slice::from_ref(&bb)).unwrap();

    let r = check(&[ba.clone(), bb.clone()]).unwrap();
    let cross = r.cross.unwrap();
    assert_eq!(cross.acked_messages_matched, 36);
    assert_eq!(cross.received_messages_matched, 36);
    assert!(cross.held_checkpoints_checked > 0);
    // Order does not matter.
    check(&[bb, ba]).unwrap();
}

#[test]
fn an_opened_message_matches_its_commitment() {
    let (pa, pb) = (Party::new(), Party::new());
    let (mut a, mut b) = lines(&pa, &pb);
    let salt = send(&mut a, &mut b, 1, "the contract is signed", T0);
    pump(&mut a, &mut b, T0 + 100);
    let bundle = b.bundle(T0 + 200).unwrap();
    let entry = (0..bundle.entry_count())
        .map(|i| bundle.entry(i).unwrap().unwrap())
        .find(|e| matches!(e.event, Event::MsgReceived { .. }))
        .unwrap();
    let opened = verify_opening(&entry, &salt, b"the contract is signed").unwrap();
    assert_eq!((opened.seq, opened.sent), (1, false));
    assert!(verify_opening(&entry, &salt, b"the contract is not signed").is_err());
    // Through the checker: the bundle is verified first.
    let (o, _) = liaison_audit::check_opening(
        std::slice::from_ref(&bundle),
        0,
        entry.index,
        &salt,
        b"the contract is signed",
    )
    .unwrap();
    assert_eq!(o.index, entry.index);
    let e = liaison_audit::check_opening(&[bundle], 0, entry.index, &salt, b"forged").unwrap_err();
    assert!(
        matches!(e, liaison_audit::CheckError::Opening { bundle: 0, .. }),
        "{e}"
    );
}

#[test]
fn witness_refuses_a_replayed_checkpoint() {
    let (pa, pb) = (Party::new(), Party::new());
    let (mut a, mut b) = lines(&pa, &pb);
    a.append(Event::MsgAcked { seq: 0 }, T0);
    let old_offer = a.commit(T0).unwrap().unwrap();
    b.handle_message(&old_offer, T0).unwrap();
    a.append(Event::MsgAcked { seq: 1 }, T0 + 1);
    // B logged nothing since its last cosignature: the next one is due an interval later.
    pump(&mut a, &mut b, T0 + COSIGN_INTERVAL_MS);
    let before = b.witness().size();
    assert!(before > 1);
    let err = b
        .handle_message(&old_offer, T0 + COSIGN_INTERVAL_MS + 100)
        .unwrap_err();
    assert!(
        matches!(err, LineError::Witness(WitnessError::Replayed { offered: 1, held }) if held == before),
        "{err}"
    );
    assert_eq!(b.witness().size(), before, "state unchanged");
    assert_eq!(anomalies(&b, AnomalyKind::StaleCheckpointOffer), 1);
}

#[test]
fn witness_refuses_a_checkpoint_from_another_line() {
    let (pa, pb, pc) = (Party::new(), Party::new(), Party::new());
    let (mut a, mut b) = lines(&pa, &pb);
    let mut a_with_c = MemoryLine::in_memory(pa.keys(), pc.vk());
    a_with_c.append(Event::MsgAcked { seq: 1 }, T0);
    let foreign = a_with_c.commit(T0).unwrap().unwrap();
    let err = b.handle_message(&foreign, T0).unwrap_err();
    assert!(
        matches!(
            err,
            LineError::Witness(WitnessError::ForeignCheckpoint { .. })
        ),
        "{err}"
    );
    assert_eq!(b.witness().size(), 0);
    // The honest line still works afterwards.
    a.append(Event::MsgAcked { seq: 1 }, T0);
    pump(&mut a, &mut b, T0 + 1);
    assert!(b.witness().size() > 0);
}

#[test]
fn witness_detects_a_fork_and_keeps_both_checkpoints() {
    let (pa, pb) = (Party::new(), Party::new());
    let (mut a, mut b) = lines(&pa, &pb);
    // A forked twin signing with the same log key.
    let mut twin = MemoryLine::in_memory(pa.keys(), pb.vk());
    for s in 0..4 {
        a.append(Event::MsgAcked { seq: s }, T0 + s);
        twin.append(Event::MsgAcked { seq: 100 + s }, T0 + s);
    }
    pump(&mut a, &mut b, T0 + 10);
    let held = b.witness().size();
    // Same size, different root.
    let fork_offer = twin.commit(T0 + 10).unwrap().unwrap();
    let err = b.handle_message(&fork_offer, T0 + 20).unwrap_err();
    let LineError::Witness(WitnessError::Fork {
        held: h,
        offered: o,
    }) = &err
    else {
        panic!("{err}")
    };
    assert_eq!(h.size(), o.size());
    assert_ne!(h.root(), o.root());
    assert!(err.to_string().contains("forked"));
    assert_eq!(b.witness().size(), held);
    assert_eq!(b.storage().evidence().len(), 1);
    assert_eq!(anomalies(&b, AnomalyKind::PeerEquivocation), 1);
    // B's bundle now carries the proof of A's fork.
    let bb = b.bundle(T0 + 30).unwrap();
    let e = check(&[bb]).unwrap_err();
    assert!(
        matches!(e, liaison_audit::CheckError::Fork { bundle: 0, .. }),
        "{e}"
    );

    // A larger forked checkpoint (no valid consistency proof) is refused too.
    twin.append(Event::MsgAcked { seq: 200 }, T0 + 40);
    let msg = twin.commit(T0 + 40).unwrap().unwrap();
    let AuditMessage::Offer(mut offer) = AuditMessage::decode(&msg).unwrap() else {
        panic!()
    };
    offer.from_size = held;
    offer.proof = twin
        .log()
        .tree()
        .consistency_proof(held, offer.checkpoint.size())
        .unwrap();
    let err = b
        .handle_message(&AuditMessage::Offer(offer).encode(), T0 + 50)
        .unwrap_err();
    assert!(
        matches!(err, LineError::Witness(WitnessError::Fork { .. })),
        "{err}"
    );
}

/// Offers the rate bound holds back are still verified on arrival: a smaller one is covered by
/// the larger one waiting, and two roots for one size are a fork, caught and stored at once.
#[test]
fn held_back_offers_keep_the_largest_and_catch_a_fork() {
    let (pa, pb) = (Party::new(), Party::new());
    let (mut a, mut b) = lines(&pa, &pb);
    let mut twin = MemoryLine::in_memory(pa.keys(), pb.vk());
    for l in [&mut a, &mut twin] {
        l.append(Event::MsgAcked { seq: 1 }, T0);
    }
    let first = a.commit(T0).unwrap().unwrap();
    assert_eq!(
        twin.commit(T0).unwrap().unwrap(),
        first,
        "same entries, same checkpoint"
    );
    let cosig = b.handle_message(&first, T0).unwrap();
    a.handle_message(&cosig[0], T0).unwrap();
    twin.handle_message(&cosig[0], T0).unwrap();
    let records = b.log().len();

    // B logs nothing of its own: A's next two checkpoints within the interval are held back.
    a.append(Event::MsgAcked { seq: 2 }, T0 + 10);
    let two = a.commit(T0 + 10).unwrap().unwrap();
    assert!(b.handle_message(&two, T0 + 10).unwrap().is_empty());
    a.append(Event::MsgAcked { seq: 3 }, T0 + 20);
    let three = a.commit(T0 + 20).unwrap().unwrap();
    assert!(b.handle_message(&three, T0 + 20).unwrap().is_empty());
    // The smaller one again: covered by the one waiting.
    assert!(b.handle_message(&two, T0 + 30).unwrap().is_empty());
    // The twin signs another root of that size on the same prefix: a fork of held-back offers.
    twin.append(Event::MsgAcked { seq: 20 }, T0 + 10);
    twin.append(Event::MsgAcked { seq: 30 }, T0 + 20);
    let forked = twin.commit(T0 + 40).unwrap().unwrap();
    let err = b.handle_message(&forked, T0 + 40).unwrap_err();
    assert!(
        matches!(err, LineError::Witness(WitnessError::Fork { .. })),
        "{err}"
    );
    assert_eq!(b.storage().evidence().len(), 1);
    assert_eq!(b.witness().size(), 1, "nothing cosigned meanwhile");
    assert_eq!(b.log().len(), records + 1, "only the anomaly was logged");

    // The anomaly is an entry of B's own: the largest honest offer is cosigned at once.
    let cosig = b.handle_timeout(T0 + 41).unwrap();
    assert_eq!(cosig.len(), 1);
    let largest = a.status().checkpoint;
    assert_eq!(b.witness().size(), largest);
    a.handle_message(&cosig[0], T0 + 42).unwrap();
    assert_eq!(a.status().cosigned_by_peer, largest);
    let e = check(&[b.bundle(T0 + 50).unwrap()]).unwrap_err();
    assert!(
        matches!(e, liaison_audit::CheckError::Fork { bundle: 0, .. }),
        "{e}"
    );
}

#[test]
fn witness_refuses_wrong_and_changed_keys() {
    let (pa, pb, pm) = (Party::new(), Party::new(), Party::new());
    let (mut a, mut b) = lines(&pa, &pb);
    // Mallory's keys, claiming to be A's line.
    let mut mallory = MemoryLine::in_memory(pm.keys(), pb.vk());
    mallory.append(Event::MsgAcked { seq: 1 }, T0);
    let offer = mallory.commit(T0).unwrap().unwrap();
    let err = b.handle_message(&offer, T0).unwrap_err();
    assert!(
        matches!(err, LineError::Witness(WitnessError::WrongKey(_))),
        "{err}"
    );

    // A binding signed by A's identity but the checkpoint signed by another log key.
    a.append(Event::MsgAcked { seq: 1 }, T0);
    let msg = a.commit(T0).unwrap().unwrap();
    let AuditMessage::Offer(mut o) = AuditMessage::decode(&msg).unwrap() else {
        panic!()
    };
    let other = LocalKeys::generate(&pa.id).unwrap();
    o.binding = other.binding().clone();
    let err = b
        .handle_message(&AuditMessage::Offer(o).encode(), T0)
        .unwrap_err();
    assert!(
        matches!(err, LineError::Witness(WitnessError::WrongKey(_))),
        "{err}"
    );

    // After B has seen A's keys, a new (validly bound) set is refused.
    pump(&mut a, &mut b, T0 + 10);
    let mut rekeyed = MemoryLine::in_memory(LocalKeys::generate(&pa.id).unwrap(), pb.vk());
    rekeyed.append(Event::MsgAcked { seq: 1 }, T0);
    let offer = rekeyed.commit(T0 + 20).unwrap().unwrap();
    let err = b.handle_message(&offer, T0 + 20).unwrap_err();
    assert!(
        matches!(err, LineError::Witness(WitnessError::WrongKey(ref s)) if s.contains("changed")),
        "{err}"
    );
}

#[test]
fn owner_refuses_bad_cosignatures() {
    let (pa, pb) = (Party::new(), Party::new());
    let (mut a, mut b) = lines(&pa, &pb);
    a.append(Event::MsgAcked { seq: 1 }, T0);
    let offer = a.commit(T0).unwrap().unwrap();
    let reply = b.handle_message(&offer, T0).unwrap().remove(0);
    let AuditMessage::Cosignature(mut c) = AuditMessage::decode(&reply).unwrap() else {
        panic!()
    };
    let good = c.clone();
    c.cosignature.timestamp += 1;
    let err = a
        .handle_message(&AuditMessage::Cosignature(c.clone()).encode(), T0)
        .unwrap_err();
    assert!(
        matches!(
            err,
            LineError::Log(liaison_audit::log::LogError::BadCosignature { .. })
        ),
        "{err}"
    );
    c = good.clone();
    c.size = 7;
    let err = a
        .handle_message(&AuditMessage::Cosignature(c).encode(), T0)
        .unwrap_err();
    assert!(
        matches!(
            err,
            LineError::Log(liaison_audit::log::LogError::UnknownCheckpoint { size: 7 })
        ),
        "{err}"
    );
    assert_eq!(a.status().cosigned_by_peer, 0, "nothing accepted");
    a.handle_message(&AuditMessage::Cosignature(good).encode(), T0)
        .unwrap();
    assert_eq!(a.status().cosigned_by_peer, 1);
    // Garbage is a malformed message, logged as an anomaly.
    assert!(matches!(
        a.handle_message(b"\x01\x07junk", T0),
        Err(LineError::Malformed(_))
    ));
    assert_eq!(anomalies(&a, AnomalyKind::MalformedFrame), 1);
    assert_eq!(
        anomalies(&a, AnomalyKind::BadCosignature),
        1,
        "two bad cosignatures, one minute, one entry"
    );
}

#[test]
fn lost_cosignature_is_recovered_by_resync() {
    let (pa, pb) = (Party::new(), Party::new());
    let (mut a, mut b) = lines(&pa, &pb);
    a.append(Event::MsgAcked { seq: 1 }, T0);
    let offer = a.commit(T0).unwrap().unwrap();
    let _lost_reply = b.handle_message(&offer, T0).unwrap();
    a.append(Event::MsgAcked { seq: 2 }, T0 + 1);
    // A still believes B holds nothing: its offer carries no proof.
    let offer = a.commit(T0 + 1).unwrap().unwrap();
    let AuditMessage::Offer(o) = AuditMessage::decode(&offer).unwrap() else {
        panic!()
    };
    assert_eq!(o.from_size, 0);
    let reply = b.handle_message(&offer, T0 + 2).unwrap();
    assert!(matches!(
        AuditMessage::decode(&reply[0]).unwrap(),
        AuditMessage::Resync(_)
    ));
    let reoffer = a.handle_message(&reply[0], T0 + 3).unwrap();
    let AuditMessage::Offer(o) = AuditMessage::decode(&reoffer[0]).unwrap() else {
        panic!()
    };
    assert_eq!(o.from_size, 1);
    // B logged nothing since its last cosignature: the offer is held back for an interval.
    assert!(b.handle_message(&reoffer[0], T0 + 4).unwrap().is_empty());
    assert!(b.handle_timeout(T0 + 5).unwrap().is_empty());
    let due = b.poll_timeout().unwrap();
    assert_eq!(due, T0 + COSIGN_INTERVAL_MS);
    let cosig = b.handle_timeout(due).unwrap();
    assert_eq!(b.poll_timeout(), None);
    a.handle_message(&cosig[0], due + 1).unwrap();
    assert_eq!(a.status().cosigned_by_peer, 2);
}

#[test]
fn receipts_for_unsent_messages_or_with_bad_proofs_are_refused() {
    let (pa, pb) = (Party::new(), Party::new());
    let (mut a, mut b) = lines(&pa, &pb);
    // B logs receiving seq 9, which A never sent.
    b.append(
        Event::MsgReceived {
            seq: 9,
            commitment: [9; 32],
            ciphertext_hash: [0; 32],
        },
        T0,
    );
    let offer = b.commit(T0).unwrap().unwrap();
    let cosig = a.handle_message(&offer, T0).unwrap();
    let receipts = b.handle_message(&cosig[0], T0).unwrap();
    assert_eq!(receipts.len(), 1);
    let err = a.handle_message(&receipts[0], T0).unwrap_err();
    assert!(
        matches!(err, LineError::ReceiptMismatch { seq: 9 }),
        "{err}"
    );

    // A tampered inclusion proof.
    let AuditMessage::Receipt(mut r) = AuditMessage::decode(&receipts[0]).unwrap() else {
        panic!()
    };
    r.leaf[60] ^= 1;
    let err = a
        .handle_message(&AuditMessage::Receipt(r).encode(), T0)
        .unwrap_err();
    assert!(matches!(err, LineError::Receipt(_)), "{err}");
    assert!(a.storage().receipts().is_empty());
    assert_eq!(anomalies(&a, AnomalyKind::BadReceipt), 1);
}

#[test]
fn a_replaying_relay_cannot_grow_the_log() {
    let (pa, pb) = (Party::new(), Party::new());
    let (mut a, _b) = lines(&pa, &pb);
    for i in 0..100_000u64 {
        a.note_anomaly(AnomalyKind::ReplayedFrame, T0 + i * 3); // 300 s of replays
    }
    a.close(T0 + 300_000).unwrap();
    let n = a.storage().leaves().len();
    // At most two entries (first + summary) per minute: 6 minutes touched.
    assert!(n <= 12, "{n} entries");
    let total: u64 = a
        .storage()
        .leaves()
        .iter()
        .map(
            |l| match liaison_audit::Entry::from_leaf(l).unwrap().event {
                Event::AnomalySummary { count, .. } => u64::from(count),
                _ => 0,
            },
        )
        .sum();
    assert!(total >= 99_990, "summaries count the replays: {total}");
}
