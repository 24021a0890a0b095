//! Issue 9, defect 5: damaged storage was used without a word. Through the real binary: a
//! write-ahead log with garbage in it, an emptied store, another home's store and a damaged
//! audit log are each refused by every command that writes, with one line saying what is
//! wrong and how to recover; read-only commands still show what can be read; `repair
//! --accept-loss` brings a store with a damaged log back.

use crate::harness::*;
use std::path::Path;
use std::time::{Duration, Instant};

fn names(n: &Node) -> Vec<String> {
    let out = n.run(&["contact", "list", "--json"]);
    assert_ok(&out, "contact list");
    json(&out)
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect()
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn page_size(wal: &[u8]) -> usize {
    be32(wal, 8) as usize
}

/// Indexes of the frames of the current log (salts as in the header) that close a
/// transaction, by the SQLite file format (a frame header's second word is non-zero).
fn commit_frames(wal: &[u8]) -> Vec<usize> {
    let frame = 24 + page_size(wal);
    let salts = (be32(wal, 16), be32(wal, 20));
    (0..(wal.len() - 32) / frame)
        .take_while(|i| {
            (
                be32(wal, 32 + i * frame + 8),
                be32(wal, 32 + i * frame + 12),
            ) == salts
        })
        .filter(|i| be32(wal, 32 + i * frame + 4) != 0)
        .collect()
}

fn wal(home: &Path) -> std::path::PathBuf {
    home.join("node.db-wal")
}

/// The refusal every writing command gives for a damaged store: exit 1, one line, the
/// recovery hint.
fn assert_refused(out: &std::process::Output, what: &str, needle: &str) {
    assert_code(out, 1, what);
    let err = stderr(out);
    assert!(
        err.contains("damaged") || err.contains("not this home's own"),
        "{what}: {err}"
    );
    assert!(err.contains(needle), "{what}: {err}");
    assert!(err.contains("backup"), "{what}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "{what}: {err}");
}

/// A listener killed with SIGKILL leaves the store's write-ahead log behind, holding a
/// contact added while it ran. Garbage written into an early frame of the log made SQLite drop
/// every later commit without an error: the contact was silently gone. Now `listen`, `send`
/// and `contact add` refuse the store, `contact list` warns and shows what is intact, `repair`
/// without `--accept-loss` changes nothing, and with it the store opens again and keeps the
/// commits before the damage.
#[test]
fn garbage_in_the_write_ahead_log_is_refused_and_repair_keeps_what_is_intact() {
    let alice = Node::new("alice");
    let bob = Node::new("bob");
    let carol = Node::new("carol");
    alice.pin(&bob, None);
    let l = alice.listen("127.0.0.1:0");
    alice.pin(&carol, None);
    assert_eq!(names(&alice), ["bob", "carol"]);
    l.kill9();
    let mut w = std::fs::read(wal(&alice.home)).expect("the killed node's log is left");
    // garbage in the page of the frame that closes the second-to-last transaction
    let c = commit_frames(&w);
    assert!(c.len() >= 2, "a log with transactions: {c:?}");
    let frame = 24 + page_size(&w);
    let at = 32 + c[c.len() - 2] * frame + 24 + 100;
    w[at..at + 64].copy_from_slice(&[0x5a; 64]);
    std::fs::write(wal(&alice.home), &w).expect("write");
    let damaged = w.clone();

    for args in [
        &["listen", "--bind", "127.0.0.1:0"][..],
        &["send", "bob", "into a damaged home", "--timeout", "2"][..],
        &["contact", "remove", "bob"][..],
    ] {
        let out = alice.run(args);
        assert_refused(&out, &format!("{args:?}"), "repair --accept-loss");
    }
    assert_eq!(
        std::fs::read(wal(&alice.home)).expect("log"),
        damaged,
        "nothing touched the damaged log"
    );
    // read-only: a warning line, then what can be read
    let out = alice.run(&["contact", "list", "--json"]);
    assert_ok(&out, "contact list on a damaged store");
    assert!(stderr(&out).contains("warning") && stderr(&out).contains("damaged"));
    let out = alice.run(&["repair"]);
    assert_code(&out, 1, "repair without --accept-loss");
    assert!(
        stderr(&out).contains("Nothing was changed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(wal(&alice.home)).expect("log"), damaged);

    let out = alice.run(&["repair", "--accept-loss", "--json"]);
    assert_ok(&out, "repair --accept-loss");
    let r = json(&out);
    assert_eq!(r["state"], "repaired", "{r}");
    let kept = r["damaged_log_kept"].as_str().expect("path of the copy");
    assert_eq!(std::fs::read(kept).expect("the copy"), damaged);
    let out = alice.run(&["repair"]);
    assert_ok(&out, "intact after the repair");
    assert!(stdout(&out).contains("intact"));
    // the store opens again; what was committed before the damage is still there
    assert!(
        names(&alice).contains(&"bob".to_string()),
        "the commits before the damage are kept"
    );
    let l = alice.listen("127.0.0.1:0");
    assert_eq!(l.terminate(), Some(0));
}

/// An emptied `node.db` opened as a new, empty store (every contact and receipt forgotten).
/// It is refused now; so is a store copied in from another home.
#[test]
fn an_emptied_or_foreign_store_is_refused() {
    let alice = Node::new("alice");
    let bob = Node::new("bob");
    alice.pin(&bob, None);
    let db = alice.home.join("node.db");
    let saved = std::fs::read(&db).expect("read");
    let saved_wal = std::fs::read(wal(&alice.home)).ok();

    std::fs::write(&db, b"").expect("empty it");
    for args in [
        &["listen", "--bind", "127.0.0.1:0"][..],
        &["send", "bob", "hello", "--timeout", "2"][..],
    ] {
        let out = alice.run(args);
        assert_refused(
            &out,
            &format!("emptied: {args:?}"),
            "not an SQLite database",
        );
    }
    assert_eq!(
        std::fs::metadata(&db).expect("db").len(),
        0,
        "left as found"
    );

    // bob's store in alice's home: a valid store, but not hers
    let _ = std::fs::remove_file(alice.home.join("node.db-shm"));
    let _ = std::fs::remove_file(alice.home.join("node.db-wal"));
    std::fs::copy(bob.home.join("node.db"), &db).expect("copy");
    if bob.home.join("node.db-wal").exists() {
        std::fs::copy(bob.home.join("node.db-wal"), alice.home.join("node.db-wal")).expect("copy");
    }
    let out = alice.run(&["listen", "--bind", "127.0.0.1:0"]);
    assert_refused(&out, "foreign store", "another home");

    // her own store back: everything works again
    std::fs::write(&db, saved).expect("restore");
    let _ = std::fs::remove_file(alice.home.join("node.db-shm"));
    let _ = std::fs::remove_file(wal(&alice.home));
    if let Some(w) = saved_wal {
        std::fs::write(wal(&alice.home), w).expect("restore the log");
    }
    assert_eq!(names(&alice), ["bob"]);
    let l = alice.listen("127.0.0.1:0");
    assert_eq!(l.terminate(), Some(0));
}

/// Acceptance: with the audit log damaged, `send` fails with a clear error and nothing leaves
/// the node (before, a broken audit log only logged a warning and the message went anyway).
#[test]
fn with_the_audit_log_damaged_send_fails_and_nothing_leaves() {
    let (alice, _bob, mut l) = pair_with_listener("alice", "bob");
    let out = alice.run(&["send", "bob", "first", "--json"]);
    assert_ok(&out, "send");
    assert_eq!(l.messages(1, Duration::from_secs(30)).len(), 1);

    // an entry of alice's log altered: the log no longer matches its own signed checkpoint
    {
        let c = rusqlite::Connection::open(alice.home.join("node.db")).expect("open");
        let n = c
            .execute(
                "UPDATE audit_entries SET leaf = zeroblob(length(leaf)) WHERE idx = 0",
                [],
            )
            .expect("alter");
        assert_eq!(n, 1);
    }
    let before = alice.outbox_rows().len();
    let started = Instant::now();
    let out = alice.run(&["send", "bob", "must not leave", "--timeout", "5"]);
    assert_code(&out, 1, "send with a damaged audit log");
    let err = stderr(&out);
    assert!(err.contains("audit log"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "fails at once, not after a timeout"
    );
    assert!(
        l.messages(1, Duration::from_secs(3)).is_empty(),
        "nothing left the node"
    );
    assert_eq!(alice.outbox_rows().len(), before, "nothing was stored");
    assert_eq!(l.terminate(), Some(0));
}
