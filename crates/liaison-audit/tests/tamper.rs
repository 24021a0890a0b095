//! One test per tamper class: each must fail with its own precise reason, while the honest
//! bundles (whole or partial) verify.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{Party, T0, leaves, pump, rebuild, send};
use liaison_audit::bundle::{Bundle, BundleCheckpoint};
use liaison_audit::check::{CheckError, check, check_bytes};
use liaison_audit::checkpoint::{Checkpoint, SignedCheckpoint};
use liaison_audit::entry::Event;
use liaison_audit::keys::{LocalKeys, generate_signing_key};
use liaison_audit::line::{Line, LineStorage};
use liaison_audit::mem::MemoryLine;
use liaison_audit::merkle::leaf_hash;

struct World {
    pa: Party,
    pb: Party,
    a: MemoryLine,
    b: MemoryLine,
    now: u64,
}

/// A and B exchange 3 rounds of messages both ways, witnessing each other.
fn world() -> World {
    world_of(3, 4)
}

fn world_of(rounds: usize, per_round: usize) -> World {
    let (pa, pb) = (Party::new(), Party::new());
    let mut a = MemoryLine::in_memory(pa.keys(), pb.vk());
    let mut b = MemoryLine::in_memory(pb.keys(), pa.vk());
    let mut now = T0;
    let mut seq = 0;
    for _ in 0..rounds {
        for _ in 0..per_round {
            seq += 1;
            send(&mut a, &mut b, seq, &format!("a{seq}"), now);
            send(&mut b, &mut a, seq, &format!("b{seq}"), now);
            now += 10;
        }
        pump(&mut a, &mut b, now);
        now += 100;
    }
    World { pa, pb, a, b, now }
}

impl World {
    fn bundles(&self) -> (Bundle, Bundle) {
        (
            self.a.bundle(self.now).unwrap(),
            self.b.bundle(self.now).unwrap(),
        )
    }
}

/// Delivers every message, ignoring refusals (for scenarios with a misbehaving side).
fn pump_lenient<S1: LineStorage, S2: LineStorage>(a: &mut Line<S1>, b: &mut Line<S2>, now: u64) {
    let mut to_b: Vec<Vec<u8>> = a.commit(now).unwrap().into_iter().collect();
    let mut to_a: Vec<Vec<u8>> = b.commit(now).unwrap().into_iter().collect();
    for _ in 0..16 {
        if to_a.is_empty() && to_b.is_empty() {
            common::release_held_back(a, b, now, &mut to_a, &mut to_b);
        }
        let mut next_a = Vec::new();
        let mut next_b = Vec::new();
        for m in to_b.drain(..) {
            next_a.extend(b.handle_message(&m, now).unwrap_or_default());
        }
        for m in to_a.drain(..) {
            next_b.extend(a.handle_message(&m, now).unwrap_or_default());
        }
        to_a = next_a;
        to_b = next_b;
    }
}

fn index_of(b: &Bundle, pred: impl Fn(&Event) -> bool) -> usize {
    (0..b.entry_count())
        .find(|i| pred(&b.entry(*i).unwrap().unwrap().event))
        .unwrap() as usize
}

#[test]
fn honest_bundles_verify_whole_and_partial() {
    let w = world();
    let (ba, bb) = w.bundles();
    check(&[ba.clone(), bb.clone()]).unwrap();
    // Partial bundles (`--entries A..B`) prove their range against every checkpoint.
    let n = ba.entry_count();
    for (s, e) in [(0, n / 2), (n / 3, 2 * n / 3), (n / 2, n), (5, 6)] {
        let part = w.a.bundle_range(s, e, w.now).unwrap();
        let part = Bundle::decode(&part.encode()).unwrap();
        let r = check(std::slice::from_ref(&part)).unwrap();
        assert!(!r.bundles[0].complete);
        let r = check(&[part, bb.clone()]).unwrap();
        assert!(r.cross.unwrap().messages_skipped_partial);
    }
}

#[test]
fn edited_entry_is_pinned_to_its_index() {
    let w = world();
    let (ba, bb) = w.bundles();
    let k = index_of(&ba, |e| matches!(e, Event::MsgSent { seq: 5, .. }));
    let mut l = leaves(&ba);
    l[k][60] ^= 0x01; // inside the commitment
    let edited = rebuild(&ba, &l);
    assert_eq!(
        check(std::slice::from_ref(&edited)).unwrap_err(),
        CheckError::EditedEntry {
            bundle: 0,
            first: k as u64,
            last: k as u64
        }
    );
    // Same reason when checked against the peer's bundle.
    assert!(
        matches!(check(&[edited, bb]).unwrap_err(), CheckError::EditedEntry { first, .. } if first == k as u64)
    );

    // Editing the `prev` link of an entry pins that entry.
    let mut l = leaves(&ba);
    l[k][20] ^= 0x01;
    assert_eq!(
        check(&[rebuild(&ba, &l)]).unwrap_err(),
        CheckError::EditedEntry {
            bundle: 0,
            first: k as u64,
            last: k as u64
        }
    );
}

#[test]
fn edited_entries_that_keep_the_chain_are_caught_by_the_signed_root() {
    let w = world();
    let (ba, _) = w.bundles();
    let k = index_of(&ba, |e| matches!(e, Event::MsgSent { seq: 2, .. }));
    let mut l = leaves(&ba);
    l[k][60] ^= 0x01;
    // Re-chain everything after it, as a careful forger would.
    for i in k + 1..l.len() {
        let h = leaf_hash(&l[i - 1]);
        l[i][10..42].copy_from_slice(&h);
    }
    match check(&[rebuild(&ba, &l)]).unwrap_err() {
        CheckError::EditedEntry {
            bundle: 0,
            first,
            last,
        } => {
            assert!(
                first <= k as u64 && (k as u64) <= last && first < last,
                "{first}..={last}"
            );
        }
        e => panic!("{e}"),
    }
}

#[test]
fn reordered_entries() {
    let w = world();
    let (ba, _) = w.bundles();
    let mut l = leaves(&ba);
    l.swap(7, 8);
    assert_eq!(
        check(&[rebuild(&ba, &l)]).unwrap_err(),
        CheckError::Reordered {
            bundle: 0,
            position: 7,
            found: 8
        }
    );
}

#[test]
fn deleted_entries() {
    let w = world();
    let (ba, _) = w.bundles();
    let mut l = leaves(&ba);
    l.remove(7);
    l.remove(7);
    let mut b = rebuild(&ba, &l);
    b.meta.covered_size -= 2;
    assert_eq!(
        check(&[b]).unwrap_err(),
        CheckError::MissingEntries {
            bundle: 0,
            position: 7,
            found: 9
        }
    );
}

#[test]
fn malformed_bundles() {
    let w = world();
    let (ba, _) = w.bundles();
    let bytes = ba.encode();
    for cut in [0, 5, 9, 100, bytes.len() / 2, bytes.len() - 1] {
        assert!(
            matches!(
                check_bytes(&[&bytes[..cut]]),
                Err(CheckError::Malformed { bundle: 0, .. })
            ),
            "cut {cut}"
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        check_bytes(&[&longer]),
        Err(CheckError::Malformed { .. })
    ));
    let mut magic = bytes.clone();
    magic[0] = b'X';
    assert!(matches!(
        check_bytes(&[&magic]),
        Err(CheckError::Malformed { .. })
    ));
    assert!(matches!(
        check_bytes(&[b"garbage"]),
        Err(CheckError::Malformed { .. })
    ));
    assert_eq!(check_bytes(&[]).unwrap_err(), CheckError::NoBundles);
}

#[test]
fn no_single_bit_flip_goes_unnoticed() {
    // A tiny bundle (one checkpoint, one cosignature, a few entries) keeps this exhaustive
    // loop fast in debug builds; the field-by-field test below covers the other sections.
    let (pa, pb) = (Party::new(), Party::new());
    let mut a = MemoryLine::in_memory(pa.keys(), pb.vk());
    let mut b = MemoryLine::in_memory(pb.keys(), pa.vk());
    let c = liaison_audit::commitment(&[1; 32], b"x");
    a.append(
        Event::MsgSent {
            seq: 1,
            commitment: c,
            ciphertext_hash: [2; 32],
        },
        T0,
    );
    a.append(Event::MsgAcked { seq: 1 }, T0 + 1);
    let offer = a.commit(T0 + 2).unwrap().unwrap();
    let cosig = b.handle_message(&offer, T0 + 3).unwrap();
    a.handle_message(&cosig[0], T0 + 4).unwrap();
    a.commit(T0 + 5).unwrap();
    let bytes = a.bundle(T0 + 6).unwrap().encode();
    let r = check_bytes(&[&bytes]).unwrap();
    assert_eq!(r.bundles[0].unsigned_tail, 0);
    assert_eq!(r.bundles[0].cosigned_by_peer, 2);
    // exported_ms (information only, unsigned) sits after magic, version, binding, peer
    // identity, flag and peer binding.
    let exported = 8 + 1 + 160 + 32 + 1 + 160;
    for i in 0..bytes.len() {
        if (exported..exported + 8).contains(&i) {
            continue;
        }
        let bit = 1u8 << (i % 8);
        let mut t = bytes.clone();
        t[i] ^= bit;
        assert!(
            check_bytes(&[&t]).is_err(),
            "flip {bit:#x} at byte {i} of {} went unnoticed",
            bytes.len()
        );
    }
}

#[test]
fn every_field_of_every_section_is_authenticated() {
    let mut w = world_of(2, 1);
    w.a.close(w.now).unwrap(); // sign the tail too: an unsigned tail is not protected
    let (ba, _) = w.bundles();
    let must_fail = |b: Bundle, what: &str| {
        let b = Bundle::decode(&b.encode()).ok();
        if let Some(b) = b {
            assert!(check(&[b]).is_err(), "{what} went unnoticed");
        }
    };
    for i in 0..ba.meta.checkpoints.len() {
        let mut b = ba.clone();
        b.meta.checkpoints[i].checkpoint.checkpoint.size += 1;
        must_fail(b, "checkpoint size");
        let mut b = ba.clone();
        b.meta.checkpoints[i].checkpoint.key_id ^= 1;
        must_fail(b, "checkpoint key id");
        let mut b = ba.clone();
        b.meta.checkpoints[i]
            .checkpoint
            .checkpoint
            .extensions
            .push("x".into());
        must_fail(b, "checkpoint extension");
    }
    for i in 0..ba.meta.cosignatures.len() {
        let mut b = ba.clone();
        b.meta.cosignatures[i].size += 1;
        must_fail(b, "cosignature size");
        let mut b = ba.clone();
        b.meta.cosignatures[i].cosignature.timestamp ^= 1;
        must_fail(b, "cosignature time");
    }
    for i in 0..ba.meta.witnessed.len() {
        let mut b = ba.clone();
        b.meta.witnessed[i].from_size += 1;
        must_fail(b, "witnessed from_size");
        let mut b = ba.clone();
        b.meta.witnessed[i].cosignature.timestamp ^= 1;
        must_fail(b, "witnessed cosignature time");
        let mut b = ba.clone();
        b.meta.witnessed[i].checkpoint.checkpoint.root[3] ^= 1;
        must_fail(b, "witnessed root");
        for j in 0..ba.meta.witnessed[i].proof.len() {
            let mut b = ba.clone();
            b.meta.witnessed[i].proof[j][31] ^= 1;
            must_fail(b, "witnessed proof");
        }
    }
    for i in 0..ba.meta.receipts.len() {
        let mut b = ba.clone();
        b.meta.receipts[i].leaf_index += 1;
        must_fail(b, "receipt index");
        for k in [0, 1, 5, 20, 45, 55, 80, 110] {
            let mut b = ba.clone();
            b.meta.receipts[i].leaf[k] ^= 1;
            must_fail(b, "receipt leaf");
        }
    }
    let mut b = ba.clone();
    b.meta.peer = None;
    must_fail(b, "peer binding dropped");
    let mut b = ba.clone();
    b.meta.start = 1;
    must_fail(b, "start");
    // One flip per leaf field, for every leaf.
    let l = leaves(&ba);
    for (i, leaf) in l.iter().enumerate() {
        for k in [1usize, 9, 10, 42, 50, leaf.len() - 1] {
            let mut t = l.clone();
            t[i][k] ^= 0x10;
            must_fail(rebuild(&ba, &t), &format!("leaf {i} byte {k}"));
        }
    }
}

#[test]
fn altered_signatures_cosignatures_and_receipts() {
    let w = world();
    let (ba, _) = w.bundles();
    let mut b = ba.clone();
    b.meta.checkpoints[1].checkpoint.checkpoint.root[0] ^= 1;
    assert!(matches!(
        check(&[b]).unwrap_err(),
        CheckError::BadSignature { bundle: 0, .. }
    ));
    let mut b = ba.clone();
    b.meta.cosignatures[0].cosignature.timestamp += 1;
    let size = b.meta.cosignatures[0].size;
    assert_eq!(
        check(&[b]).unwrap_err(),
        CheckError::BadCosignature { bundle: 0, size }
    );
    let mut b = ba.clone();
    b.meta.receipts[0].proof[0][0] ^= 1;
    assert!(matches!(
        check(&[b]).unwrap_err(),
        CheckError::BadReceipt { bundle: 0, .. }
    ));
    let mut b = ba.clone();
    b.meta.witnessed[1].proof[0][0] ^= 1;
    assert!(matches!(
        check(&[b]).unwrap_err(),
        CheckError::BadWitnessRecord { bundle: 0, .. }
    ));
}

#[test]
fn truncated_bundle_alone() {
    let w = world();
    let (ba, _) = w.bundles();
    let mut l = leaves(&ba);
    l.truncate(l.len() - 3);
    let mut b = rebuild(&ba, &l);
    b.meta.covered_size = l.len() as u64;
    let latest = ba.meta.checkpoints.last().unwrap().checkpoint.size();
    assert_eq!(
        check(&[b]).unwrap_err(),
        CheckError::Truncated {
            bundle: 0,
            held_size: latest,
            bundle_size: l.len() as u64
        }
    );
}

#[test]
fn yesterdays_export_against_todays_is_truncated() {
    let mut w = world();
    let (yesterday, _) = w.bundles();
    check(std::slice::from_ref(&yesterday)).unwrap();
    // A day of traffic later.
    let mut now = w.now + 86_400_000;
    for seq in 100..104 {
        send(&mut w.a, &mut w.b, seq, "more", now);
        now += 10;
    }
    pump(&mut w.a, &mut w.b, now);
    w.now = now + 100;
    let (_, today) = w.bundles();
    match check(&[yesterday.clone(), today]).unwrap_err() {
        CheckError::Truncated {
            bundle: 0,
            held_size,
            bundle_size,
        } => {
            assert_eq!(bundle_size, yesterday.meta.covered_size);
            assert!(held_size > bundle_size);
        }
        e => panic!("{e}"),
    }
}

#[test]
fn forked_log_against_the_peers_bundle() {
    let w = world();
    let (_, bb) = w.bundles();
    // A rewrites history with its own (real) keys: a different but self-consistent log.
    let mut twin = MemoryLine::in_memory(w.pa.keys(), w.pb.vk());
    for s in 0..200 {
        twin.append(Event::MsgAcked { seq: s }, T0 + s);
    }
    twin.commit(T0 + 500).unwrap();
    let tb = twin.bundle(T0 + 600).unwrap();
    check(std::slice::from_ref(&tb)).unwrap();
    match check(&[tb, bb]).unwrap_err() {
        CheckError::Fork {
            bundle: 0,
            owner,
            a,
            b,
        } => {
            assert_eq!(owner, hex::encode(&w.pa.vk().as_bytes()[..8]));
            assert!(a.contains("liaison/1/audit/") && b.contains("liaison/1/audit/") && a != b);
        }
        e => panic!("{e}"),
    }
}

#[test]
fn replayed_checkpoints_in_a_bundle() {
    let w = world();
    let (ba, _) = w.bundles();
    let mut b = ba.clone();
    let first = b.meta.checkpoints[0].clone();
    let last = b.meta.checkpoints.last().unwrap().checkpoint.size();
    b.meta.checkpoints.push(first.clone());
    assert_eq!(
        check(&[b]).unwrap_err(),
        CheckError::ReplayedCheckpoint {
            bundle: 0,
            size: first.checkpoint.size(),
            after: last
        }
    );
    let mut b = ba.clone();
    let w0 = b.meta.witnessed[0].clone();
    b.meta.witnessed.push(w0);
    assert!(matches!(
        check(&[b]).unwrap_err(),
        CheckError::ReplayedCheckpoint { bundle: 0, .. }
    ));
}

#[test]
fn foreign_checkpoint_in_a_bundle() {
    let w = world();
    let (ba, _) = w.bundles();
    let pc = Party::new();
    let mut other_line = MemoryLine::in_memory(w.pa.keys(), pc.vk());
    for s in 0..100 {
        other_line.append(Event::MsgAcked { seq: s }, T0);
    }
    other_line.commit(T0).unwrap();
    let foreign = other_line.storage().checkpoints()[0].clone();
    let mut b = ba.clone();
    b.meta.checkpoints.push(BundleCheckpoint {
        checkpoint: foreign.clone(),
        proof: Vec::new(),
    });
    match check(&[b]).unwrap_err() {
        CheckError::ForeignCheckpoint {
            bundle: 0, found, ..
        } => assert_eq!(found, foreign.checkpoint.origin),
        e => panic!("{e}"),
    }
}

#[test]
fn wrong_keys() {
    let w = world();
    let (ba, bb) = w.bundles();
    // Binding altered: log and witness keys swapped.
    let mut b = ba.clone();
    std::mem::swap(&mut b.meta.local.log_key, &mut b.meta.local.witness_key);
    assert!(matches!(
        check(&[b]).unwrap_err(),
        CheckError::WrongKey { bundle: 0, .. }
    ));
    // A checkpoint signed by another key under this log's origin.
    let mut b = ba.clone();
    let intruder = generate_signing_key().unwrap();
    let cp = b.meta.checkpoints[0].checkpoint.checkpoint.clone();
    b.meta.checkpoints[0].checkpoint = SignedCheckpoint::sign(cp, &intruder).unwrap();
    assert!(matches!(
        check(&[b]).unwrap_err(),
        CheckError::WrongKey { bundle: 0, .. }
    ));
    // A re-keys (new audit keys, validly bound to its identity) and re-logs everything.
    let mut rekeyed = MemoryLine::in_memory(LocalKeys::generate(&w.pa.id).unwrap(), w.pb.vk());
    for l in leaves(&ba) {
        let e = liaison_audit::Entry::from_leaf(&l).unwrap();
        if !matches!(
            e.event,
            Event::PeerCheckpointCosigned { .. } | Event::KeyEvent { .. }
        ) {
            rekeyed.append(e.event, e.time_ms);
        }
    }
    rekeyed.commit(w.now).unwrap();
    let rb = rekeyed.bundle(w.now).unwrap();
    check(std::slice::from_ref(&rb)).unwrap();
    assert!(matches!(
        check(&[rb, bb]).unwrap_err(),
        CheckError::WrongKey { bundle: 0, .. }
    ));
}

#[test]
fn acknowledged_message_without_receipt() {
    let mut w = world();
    // B acknowledges seq 50 without logging it.
    let c = liaison_audit::commitment(&[5; 32], b"hidden");
    w.a.append(
        Event::MsgSent {
            seq: 50,
            commitment: c,
            ciphertext_hash: [0; 32],
        },
        w.now,
    );
    w.a.append(Event::MsgAcked { seq: 50 }, w.now + 5);
    pump(&mut w.a, &mut w.b, w.now + 10);
    w.now += 100;
    let (ba, bb) = w.bundles();
    check(std::slice::from_ref(&ba)).unwrap();
    check(std::slice::from_ref(&bb)).unwrap();
    assert_eq!(
        check(&[ba, bb]).unwrap_err(),
        CheckError::MissingReceipt {
            sender: 0,
            receiver: 1,
            seq: 50
        }
    );
}

#[test]
fn receipt_without_a_send() {
    let mut w = world();
    let c = liaison_audit::commitment(&[6; 32], b"never sent");
    w.b.append(
        Event::MsgReceived {
            seq: 60,
            commitment: c,
            ciphertext_hash: [0; 32],
        },
        w.now,
    );
    pump_lenient(&mut w.a, &mut w.b, w.now + 10);
    w.now += 100;
    let (ba, bb) = w.bundles();
    assert_eq!(
        check(&[ba, bb]).unwrap_err(),
        CheckError::UnmatchedReceipt {
            receiver: 1,
            sender: 0,
            seq: 60
        }
    );
}

#[test]
fn messages_in_flight_at_export_are_not_false_alarms() {
    let mut w = world();
    // B received a message A logged later than its export; nobody cosigned it yet.
    let (ba, _) = w.bundles();
    let now = w.now;
    send(&mut w.a, &mut w.b, 70, "late", now);
    w.b.commit(now + 1).unwrap();
    let bb = w.b.bundle(now + 2).unwrap();
    let r = check(&[ba, bb]).unwrap();
    assert!(r.cross.unwrap().received_beyond_horizon >= 1);
}

#[test]
fn bundles_of_different_lines() {
    let w = world();
    let (ba, _) = w.bundles();
    let pc = Party::new();
    let mut c = MemoryLine::in_memory(pc.keys(), w.pa.vk());
    c.append(Event::MsgAcked { seq: 1 }, T0);
    c.commit(T0).unwrap();
    assert_eq!(
        check(&[ba, c.bundle(T0).unwrap()]).unwrap_err(),
        CheckError::DifferentLines
    );
}

#[test]
fn tampered_partial_bundle() {
    let w = world();
    let n = w.a.storage().leaves().len() as u64;
    let part = w.a.bundle_range(n / 3, 2 * n / 3, w.now).unwrap();
    let mut l = leaves(&part);
    let k = l.len() / 2;
    l[k][55] ^= 1;
    match check(&[rebuild(&part, &l)]).unwrap_err() {
        CheckError::EditedEntry { first, last, .. } => {
            assert!(first <= n / 3 + k as u64 && n / 3 + k as u64 <= last);
        }
        e => panic!("{e}"),
    }
    // A forged prefix is caught too.
    let mut b = part.clone();
    b.meta.prefix[0][0] ^= 1;
    assert!(check(&[b]).is_err());
}

#[test]
fn checkpoint_beyond_covered_size_is_truncation_even_if_resigned() {
    // A signs a checkpoint past its bundle: the bundle is shorter than its own signed state.
    let w = world();
    let (ba, _) = w.bundles();
    let mut b = ba.clone();
    let last = b.meta.checkpoints.last().unwrap().checkpoint.clone();
    let cp = Checkpoint::new(
        last.checkpoint.origin.clone(),
        b.meta.covered_size + 5,
        [7; 32],
    );
    let extra = SignedCheckpoint::sign(cp, &w.pa.log_key()).unwrap();
    b.meta.checkpoints.push(BundleCheckpoint {
        checkpoint: extra,
        proof: Vec::new(),
    });
    assert!(matches!(
        check(&[b]).unwrap_err(),
        CheckError::Truncated { bundle: 0, .. }
    ));
}

#[test]
fn a_cumulative_ack_covers_every_earlier_message() {
    let mut w = world();
    let (c13, c14) = (
        liaison_audit::commitment(&[13; 32], b"m13"),
        liaison_audit::commitment(&[14; 32], b"m14"),
    );
    w.a.append(
        Event::MsgSent {
            seq: 13,
            commitment: c13,
            ciphertext_hash: [0; 32],
        },
        w.now,
    );
    w.a.append(
        Event::MsgSent {
            seq: 14,
            commitment: c14,
            ciphertext_hash: [0; 32],
        },
        w.now,
    );
    // B logs only 14, then acknowledges everything up to 14.
    w.b.append(
        Event::MsgReceived {
            seq: 14,
            commitment: c14,
            ciphertext_hash: [0; 32],
        },
        w.now + 1,
    );
    w.a.append(Event::MsgAcked { seq: 14 }, w.now + 2);
    pump(&mut w.a, &mut w.b, w.now + 10);
    w.now += 100;
    let (ba, bb) = w.bundles();
    assert_eq!(
        check(&[ba, bb]).unwrap_err(),
        CheckError::MissingReceipt {
            sender: 0,
            receiver: 1,
            seq: 13
        }
    );
}
