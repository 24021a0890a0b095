//! The SQLite store: exchange between two stores, export and `audit verify`, crash recovery
//! between append and checkpoint, witness state across restarts, tampered stores.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::{Path, PathBuf};

use common::{Party, T0, pump, send};
use liaison_audit::bundle::Bundle;
use liaison_audit::check::{CheckError, check};
use liaison_audit::entry::Event;
use liaison_audit::keys::{LocalKeys, channel_id};
use liaison_audit::line::LineError;
use liaison_audit::mem::MemoryLine;
use liaison_audit::store::{AuditReader, LineAudit, StoreError, VerifyError};
use liaison_audit::witness::WitnessError;

fn db(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.sqlite"))
}

fn open(path: &Path, me: &Party, peer: &Party, now: u64) -> (LineAudit, Option<Vec<u8>>) {
    LineAudit::open(path, me.keys(), peer.vk(), now).unwrap()
}

fn export(path: &Path, me: &Party, peer: &Party, now: u64) -> Bundle {
    let r = AuditReader::open(path).unwrap();
    let ch = channel_id(&me.vk(), &peer.vk());
    let file = path.with_extension(format!("{now}.bundle"));
    r.export(&ch, std::fs::File::create(&file).unwrap(), None, now)
        .unwrap();
    Bundle::read_file(&file).unwrap()
}

#[test]
fn two_stores_exchange_export_verify_and_cross_check() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (Party::new(), Party::new());
    let (pa_db, pb_db) = (db(dir.path(), "a"), db(dir.path(), "b"));
    let (mut a, _) = open(&pa_db, &pa, &pb, T0);
    let (mut b, _) = open(&pb_db, &pb, &pa, T0);
    let mut now = T0;
    for seq in 1..=20 {
        send(&mut a, &mut b, seq, "hello", now);
        send(&mut b, &mut a, seq, "hi", now);
        if seq % 5 == 0 {
            pump(&mut a, &mut b, now);
        }
        now += 50;
    }
    pump(&mut a, &mut b, now);

    // `audit verify` on each home, while the writers are open.
    let ra = AuditReader::open(&pa_db).unwrap();
    let reports = ra.verify_all(now).unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].bundles[0].messages_sent, 20);
    let lines = ra.lines().unwrap();
    assert_eq!(lines[0].peer_identity, hex::encode(pb.vk().as_bytes()));
    assert!(lines[0].cosigned_by_peer > 0 && lines[0].peer_size_witnessed > 0);

    // `audit show --json`.
    let shown = ra.show(None, Some(0..5)).unwrap();
    assert_eq!(shown.len(), 5);
    let json = serde_json::to_value(&shown).unwrap();
    assert_eq!(json[0]["event"], "msg_sent");
    assert_eq!(json[0]["index"], 0);

    // `audit export` and `audit check A B`.
    let ba = export(&pa_db, &pa, &pb, now);
    let bb = export(&pb_db, &pb, &pa, now);
    let r = check(&[ba, bb.clone()]).unwrap();
    assert_eq!(r.cross.unwrap().acked_messages_matched, 40);

    // `--entries A..B`.
    let ch = channel_id(&pa.vk(), &pb.vk());
    let part = ra.bundle(&ch, Some(10..30), now).unwrap();
    assert_eq!((part.meta.start, part.entry_count()), (10, 20));
    check(&[part, bb]).unwrap();
}

#[test]
fn crash_between_append_and_checkpoint_recovers_without_looking_like_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (Party::new(), Party::new());
    let pa_db = db(dir.path(), "a");
    let mut b = MemoryLine::in_memory(pb.keys(), pa.vk());
    let now = {
        let (mut a, _) = open(&pa_db, &pa, &pb, T0);
        for seq in 1..=5 {
            send(&mut a, &mut b, seq, "before", T0 + seq * 10);
        }
        pump(&mut a, &mut b, T0 + 100);
        let cosigned = a.status().cosigned_by_peer;
        assert!(cosigned > 0);
        // More events; stored durably, then the process dies before signing.
        for seq in 6..=8 {
            send(&mut a, &mut b, seq, "during", T0 + 200 + seq);
        }
        a.persist(T0 + 300).unwrap();
        assert_eq!(a.status().checkpoint, cosigned);
        // And some that never reached the disk.
        a.append(Event::MsgAcked { seq: 99 }, T0 + 301);
        drop(a);
        T0 + 1000
    };
    // Restart: the stored tail is signed at once, consistent with what B cosigned.
    let (mut a, offer) = open(&pa_db, &pa, &pb, now);
    let offer = offer.expect("recovery checkpoint");
    assert_eq!(a.status().checkpoint, a.status().durable);
    let reply = b.handle_message(&offer, now).unwrap();
    a.handle_message(&reply[0], now).unwrap();
    assert_eq!(a.status().cosigned_by_peer, a.status().checkpoint);
    // The lost entry is simply not there; the log goes on.
    send(&mut a, &mut b, 9, "after", now + 10);
    pump(&mut a, &mut b, now + 100);

    let ba = export(&pa_db, &pa, &pb, now + 200);
    let bb = b.bundle(now + 200).unwrap();
    check(std::slice::from_ref(&ba)).unwrap();
    let r = check(&[ba, bb]).unwrap();
    assert!(r.cross.unwrap().held_checkpoints_checked > 0);
}

#[test]
fn witness_state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (Party::new(), Party::new());
    let pb_db = db(dir.path(), "b");
    let mut a = MemoryLine::in_memory(pa.keys(), pb.vk());
    let mut twin = MemoryLine::in_memory(pa.keys(), pb.vk());
    a.append(Event::MsgAcked { seq: 1 }, T0);
    twin.append(Event::MsgAcked { seq: 2 }, T0);
    let old = a.commit(T0).unwrap().unwrap();
    let forked = twin.commit(T0).unwrap().unwrap();
    {
        let (mut b, _) = open(&pb_db, &pb, &pa, T0);
        b.handle_message(&old, T0).unwrap();
        a.append(Event::MsgAcked { seq: 3 }, T0 + 1);
        pump(&mut a, &mut b, T0 + 2);
    }
    let held = a.status().cosigned_by_peer;
    assert!(held >= 2);
    let (mut b, _) = open(&pb_db, &pb, &pa, T0 + 10);
    assert_eq!(b.witness().size(), held);
    let e = b.handle_message(&old, T0 + 11).unwrap_err();
    assert!(
        matches!(e, LineError::Witness(WitnessError::Replayed { offered: 1, held: h }) if h == held),
        "{e}"
    );
    let e = b.handle_message(&forked, T0 + 12).unwrap_err();
    assert!(
        matches!(e, LineError::Witness(WitnessError::Fork { .. })),
        "{e}"
    );
    b.commit(T0 + 13).unwrap();
    drop(b);
    let r = AuditReader::open(&pb_db).unwrap();
    assert_eq!(r.lines().unwrap()[0].evidence, 1);
    // B's own bundle now proves A's fork (same size, two roots).
    let bb = export(&pb_db, &pb, &pa, T0 + 20);
    assert!(matches!(check(&[bb]).unwrap_err(), CheckError::Fork { .. }));
}

#[test]
fn tampered_store_fails_verify_and_refuses_to_sign() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (Party::new(), Party::new());
    let pa_db = db(dir.path(), "a");
    let mut b = MemoryLine::in_memory(pb.keys(), pa.vk());
    {
        let (mut a, _) = open(&pa_db, &pa, &pb, T0);
        for seq in 1..=6 {
            send(&mut a, &mut b, seq, "x", T0 + seq);
        }
        pump(&mut a, &mut b, T0 + 100);
    }
    // Someone edits entry 3 in the database.
    let conn = rusqlite::Connection::open(&pa_db).unwrap();
    let leaf: Vec<u8> = conn
        .query_row("SELECT leaf FROM audit_entries WHERE idx = 3", [], |r| {
            r.get(0)
        })
        .unwrap();
    let mut edited = leaf.clone();
    edited[55] ^= 1; // inside the payload
    conn.execute("UPDATE audit_entries SET leaf = ?1 WHERE idx = 3", [edited])
        .unwrap();
    drop(conn);

    let r = AuditReader::open(&pa_db).unwrap();
    let ch = channel_id(&pa.vk(), &pb.vk());
    match r.verify(&ch, T0 + 200).unwrap_err() {
        VerifyError::Check(CheckError::EditedEntry {
            first: 3, last: 3, ..
        }) => {}
        e => panic!("{e}"),
    }
    let e = LineAudit::open(&pa_db, pa.keys(), pb.vk(), T0 + 300).unwrap_err();
    assert!(
        matches!(
            e,
            LineError::Store(StoreError::Corrupt(_)) | LineError::Log(_)
        ),
        "{e}"
    );

    // A garbled leaf length is a failed verification too, not an I/O error.
    let conn = rusqlite::Connection::open(&pa_db).unwrap();
    conn.execute("UPDATE audit_entries SET leaf = x'0102' WHERE idx = 4", [])
        .unwrap();
    drop(conn);
    assert!(matches!(
        r.verify(&ch, T0 + 400).unwrap_err(),
        VerifyError::Check(CheckError::Malformed { .. })
    ));
}

#[test]
fn reopening_with_other_keys_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (Party::new(), Party::new());
    let pa_db = db(dir.path(), "a");
    let (mut a, _) = open(&pa_db, &pa, &pb, T0);
    a.append(Event::MsgAcked { seq: 1 }, T0);
    a.commit(T0).unwrap();
    drop(a);
    let e = LineAudit::open(&pa_db, LocalKeys::generate(&pa.id).unwrap(), pb.vk(), T0).unwrap_err();
    assert!(
        matches!(e, LineError::Store(StoreError::KeyMismatch(_))),
        "{e}"
    );
    // Another line in the same home is independent.
    let pc = Party::new();
    let (c, _) = open(&pa_db, &pa, &pc, T0);
    assert_eq!(c.status().size, 0);
    assert_eq!(AuditReader::open(&pa_db).unwrap().lines().unwrap().len(), 2);
}

#[test]
fn pragmas_are_wal_and_full_sync() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (Party::new(), Party::new());
    let pa_db = db(dir.path(), "a");
    let _a = open(&pa_db, &pa, &pb, T0);
    let conn = rusqlite::Connection::open(&pa_db).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

/// A home that kept its audit log in a file of its own gets it moved into the node's
/// database: the same log (it verifies and reopens), the old file gone; a second log is
/// refused, and a move interrupted before the old file was deleted is finished.
#[test]
fn a_separate_audit_database_is_merged_into_the_home_database() {
    use liaison_audit::store::merge_legacy;
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (Party::new(), Party::new());
    let legacy = dir.path().join("audit.db");
    let peer_db = db(dir.path(), "b");
    let mut now = T0;
    {
        let (mut a, _) = open(&legacy, &pa, &pb, now);
        let (mut b, _) = open(&peer_db, &pb, &pa, now);
        for seq in 1..=5 {
            send(&mut a, &mut b, seq, "hello", now);
            now += 50;
        }
        pump(&mut a, &mut b, now);
    }
    let before = export(&legacy, &pa, &pb, now);

    let home_db = dir.path().join("node.db");
    let conn = rusqlite::Connection::open(&home_db).unwrap();
    conn.execute_batch("CREATE TABLE contacts (name TEXT PRIMARY KEY)")
        .unwrap();
    assert!(merge_legacy(&conn, &legacy).unwrap(), "moved");
    assert!(!legacy.exists(), "the old file is deleted");
    assert!(
        !merge_legacy(&conn, &legacy).unwrap(),
        "nothing left to move"
    );
    let after = export(&home_db, &pa, &pb, now);
    assert_eq!(after, before, "the same log");
    let r = AuditReader::open(&home_db)
        .unwrap()
        .verify_all(now)
        .unwrap();
    assert_eq!(r[0].bundles[0].messages_sent, 5);
    // and the writer reopens it where it was
    let (a, _) = open(&home_db, &pa, &pb, now);
    assert_eq!(a.log().len(), r[0].bundles[0].entries);
    drop(a);

    // a stop between the move and the delete: the leftover is deleted on the next open
    std::fs::copy(&peer_db, &legacy).unwrap();
    assert!(!merge_legacy(&conn, &legacy).unwrap());
    assert!(!legacy.exists(), "the leftover is deleted");

    // a second home database with a log of its own: both logs stay, the user chooses
    let other = dir.path().join("other.db");
    drop(open(&other, &pa, &pb, now));
    let c2 = rusqlite::Connection::open(&other).unwrap();
    std::fs::copy(&peer_db, &legacy).unwrap();
    match merge_legacy(&c2, &legacy) {
        Err(StoreError::Corrupt(m)) => assert!(m.contains("both"), "{m}"),
        other => panic!("two logs must be refused, got {other:?}"),
    }
    assert!(legacy.exists(), "nothing is deleted when refused");
}
