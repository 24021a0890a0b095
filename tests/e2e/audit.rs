//! Audit logs through the real binary: honest logs verify on both sides and agree; tampered,
//! truncated, foreign and malformed bundles exit 3 with the reason; a crash between append and
//! checkpoint recovers without looking like truncation.

use crate::harness::*;
use std::time::Duration;

fn call(from: &Node, to: &str, lines: &[&str]) {
    let out = from.run_stdin(&["call", to, "--timeout", "60"], &(lines.join("\n") + "\n"));
    assert_ok(&out, "call");
}

fn export(n: &Node, dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    let out = n.run(&["audit", "export", "--out", p.to_str().expect("utf8")]);
    assert_ok(&out, "audit export");
    p
}

fn check(n: &Node, bundles: &[&std::path::Path]) -> std::process::Output {
    let mut args = vec!["audit", "check"];
    let s: Vec<String> = bundles.iter().map(|b| b.display().to_string()).collect();
    args.extend(s.iter().map(String::as_str));
    n.run(&args)
}

/// Both sides exchange, stop, and their logs cross-check.
#[test]
fn honest_logs_verify_and_agree_then_tampering_is_caught() {
    let (alice, bob, mut l) = pair_with_listener("alice", "bob");
    call(&alice, "bob", &["first", "second", "third"]);
    assert_eq!(l.messages(3, Duration::from_secs(30)).len(), 3);
    let tmp = tempfile::tempdir().expect("tmp");
    // alice's export now, before the next exchange ("yesterday's")
    let alice_old = export(&alice, tmp.path(), "alice-old.bundle");
    call(&alice, "bob", &["fourth", "fifth"]);
    assert_eq!(l.messages(2, Duration::from_secs(30)).len(), 2);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(l.terminate(), Some(0));

    for n in [&alice, &bob] {
        let out = n.run(&["audit", "verify", "--json"]);
        assert_ok(&out, "audit verify");
        assert_eq!(json(&out)["ok"], true);
    }
    let shown = json(&alice.run(&["audit", "show", "--json"]));
    let sent = shown
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["event"] == "msg_sent")
        .count();
    assert_eq!(sent, 5, "one msg_sent per message");
    // each call is offered, started and ended under one call id, in that order; the caller
    // hangs up, and the listener hears its goodbye
    for (node, direction, end) in [
        (&alice, "outgoing", "normal"),
        (&bob, "incoming", "peer_closed"),
    ] {
        let shown = json(&node.run(&["audit", "show", "--json"]));
        let entries = shown.as_array().expect("entries");
        let calls: Vec<&serde_json::Value> = entries
            .iter()
            .filter(|e| e["event"].as_str().is_some_and(|k| k.starts_with("call_")))
            .collect();
        let kinds: Vec<&str> = calls.iter().filter_map(|e| e["event"].as_str()).collect();
        assert_eq!(
            kinds,
            [
                "call_offered",
                "call_started",
                "call_ended",
                "call_offered",
                "call_started",
                "call_ended"
            ],
            "{calls:?}"
        );
        for c in calls.chunks(3) {
            assert!(c.iter().all(|e| e["call"] == c[0]["call"]), "{c:?}");
            assert_eq!(c[0]["direction"], direction, "{c:?}");
            assert_eq!(c[1]["direction"], direction, "{c:?}");
        }
        assert_ne!(calls[0]["call"], calls[3]["call"], "two calls, two ids");
        assert!(
            calls.iter().skip(2).step_by(3).all(|e| e["reason"] == end),
            "{calls:?}"
        );
    }
    // the receiver logs the hash of the ciphertext that carried each message
    let shown = json(&bob.run(&["audit", "show", "--json"]));
    let recv: Vec<&serde_json::Value> = shown
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["event"] == "msg_recv")
        .collect();
    assert_eq!(recv.len(), 5);
    let zero = "0".repeat(64);
    assert!(
        recv.iter().all(|e| e["ciphertext_hash"]
            .as_str()
            .is_some_and(|h| h.len() == 64 && h != zero)),
        "{recv:?}"
    );
    assert!(
        shown
            .as_array()
            .expect("entries")
            .iter()
            .all(|e| !e.to_string().contains("fourth")),
        "no plaintext in the log"
    );

    let alice_new = export(&alice, tmp.path(), "alice.bundle");
    let bob_new = export(&bob, tmp.path(), "bob.bundle");
    let out = check(&alice, &[&alice_new, &bob_new]);
    assert_ok(&out, "cross-check of honest bundles");
    let out = alice.run(&[
        "audit",
        "check",
        alice_new.to_str().expect("utf8"),
        bob_new.to_str().expect("utf8"),
        "--json",
    ]);
    let r = json(&out);
    assert!(
        r["report"]["cross"]["acked_messages_matched"]
            .as_u64()
            .unwrap_or(0)
            >= 3,
        "{r}"
    );

    // yesterday's export of alice against bob's of today: truncated
    let out = check(&alice, &[&alice_old, &bob_new]);
    assert_code(&out, 3, "truncated bundle");
    assert!(stderr(&out).contains("truncated"), "{}", stderr(&out));

    // an edited entry (the last bytes of a bundle are its last entry)
    let mut bytes = std::fs::read(&alice_new).expect("read");
    let n = bytes.len();
    bytes[n - 3] ^= 0x01;
    let edited = tmp.path().join("edited.bundle");
    std::fs::write(&edited, &bytes).expect("write");
    let out = check(&alice, &[&edited]);
    assert_code(&out, 3, "edited entry");
    assert!(
        stderr(&out).contains("verification failed"),
        "{}",
        stderr(&out)
    );

    // garbage and a truncated file are malformed
    let garbage = tmp.path().join("garbage.bundle");
    std::fs::write(&garbage, b"not a bundle at all").expect("write");
    let out = check(&alice, &[&garbage]);
    assert_code(&out, 3, "malformed bundle");
    let cut = tmp.path().join("cut.bundle");
    let full = std::fs::read(&bob_new).expect("read");
    std::fs::write(&cut, &full[..full.len() / 2]).expect("write");
    assert_code(&check(&alice, &[&cut]), 3, "cut bundle");

    // a bundle of another line is refused as not belonging to this one
    let carol = Node::new("carol");
    carol.pin(&alice, None);
    let lc = carol.listen("127.0.0.1:0");
    alice.pin(&carol, Some(&lc.addr));
    call(&alice, "carol", &["hi carol"]);
    drop(lc);
    let carol_b = export(&carol, tmp.path(), "carol.bundle");
    let out = check(&alice, &[&carol_b, &bob_new]);
    assert_code(&out, 3, "bundles of two different lines");

    // a revealed message checks against its commitment; a changed text does not
    let opening = tmp.path().join("open.json");
    let out = alice.run(&[
        "audit",
        "reveal",
        "bob:4",
        "--sent",
        "--out",
        opening.to_str().expect("utf8"),
    ]);
    assert_ok(&out, "reveal");
    let args = |o: &std::path::Path| {
        vec![
            "audit".to_string(),
            "check".to_string(),
            alice_new.display().to_string(),
            bob_new.display().to_string(),
            "--opening".to_string(),
            o.display().to_string(),
        ]
    };
    let a: Vec<String> = args(&opening);
    let out = alice.run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_ok(&out, "opening checks");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&opening).expect("read")).expect("json");
    // claim seq 4 said something else
    v["body_base64"] = serde_json::json!("bm90IHdoYXQgd2FzIHNlbnQ="); // "not what was sent"
    let lie = tmp.path().join("lie.json");
    std::fs::write(&lie, v.to_string()).expect("write");
    let a: Vec<String> = args(&lie);
    let out = alice.run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_code(&out, 3, "an altered opening");
}

/// A listener killed right after storing messages (entries durable, checkpoint not yet
/// signed) comes back with a log that verifies and is not seen as truncated.
#[test]
fn crash_between_append_and_checkpoint_recovers() {
    let (alice, bob, mut l) = pair_with_listener("alice", "bob");
    let port = l.addr.rsplit(':').next().expect("port").to_string();
    call(&alice, "bob", &["before the crash"]);
    assert_eq!(l.messages(1, Duration::from_secs(30)).len(), 1);
    // more messages, and SIGKILL as soon as the last one is shown
    let mut c = alice.spawn_stdin(&["call", "bob", "--timeout", "60"]);
    c.write_lines(&["one".into(), "two".into(), "three".into()]);
    assert_eq!(l.messages(3, Duration::from_secs(30)).len(), 3);
    l.kill9();
    // bob's log verifies right after the crash (entries stored, not all signed yet)
    assert_ok(&bob.run(&["audit", "verify"]), "verify after the crash");
    let mut l2 = bob.listen(&format!("127.0.0.1:{port}"));
    let out = c.finish(Duration::from_secs(90));
    assert_ok(&out, "call across the crash");
    call(&alice, "bob", &["after the restart"]);
    assert_eq!(l2.messages(1, Duration::from_secs(30)).len(), 1);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(l2.terminate(), Some(0));
    for n in [&alice, &bob] {
        assert_ok(&n.run(&["audit", "verify"]), "verify");
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let a = export(&alice, tmp.path(), "a.bundle");
    let b = export(&bob, tmp.path(), "b.bundle");
    let out = check(&alice, &[&a, &b]);
    assert_ok(&out, "cross-check after a crash");
}

/// `audit show --json` of a node, read-only (works while its process runs).
fn entries(n: &Node) -> Vec<serde_json::Value> {
    let out = n.run(&["audit", "show", "--json"]);
    assert_ok(&out, "audit show");
    json(&out).as_array().expect("entries").clone()
}

/// How many entries of each kind, for failure messages.
fn kinds(entries: &[serde_json::Value]) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for e in entries {
        *m.entry(e["event"].as_str().unwrap_or("?").to_string())
            .or_insert(0) += 1;
    }
    m
}

/// Idle is cheap (design §10): a call held open without traffic for 60 s adds at most 6
/// entries to each side's audit log (the two logs used to cosign each other's records of
/// cosigning: 488 entries a minute on each side).
/// Receipts still flow and both logs still verify and cross-check afterwards.
#[test]
fn an_idle_call_adds_at_most_six_entries_a_minute() {
    let (alice, bob, mut l) = pair_with_listener("alice", "bob");
    let mut c = alice.spawn_stdin(&["call", "bob", "--timeout", "60"]);
    c.write_lines(&["hello".into(), "anyone there?".into()]);
    assert_eq!(l.messages(2, Duration::from_secs(30)).len(), 2);
    // let the acknowledgements, offers, cosignatures and receipts of the exchange settle
    std::thread::sleep(Duration::from_secs(3));
    let (a0, b0) = (entries(&alice), entries(&bob));
    std::thread::sleep(Duration::from_secs(60));
    let (a1, b1) = (entries(&alice), entries(&bob));
    let added: Vec<(&str, usize, _)> = [("alice", &a0, &a1), ("bob", &b0, &b1)]
        .into_iter()
        .map(|(who, before, after)| {
            let new = after.get(before.len()..).unwrap_or_default();
            eprintln!(
                "{who}: {} audit entries added during 60 s of idle call",
                new.len()
            );
            (who, new.len(), kinds(new))
        })
        .collect();
    for (who, n, kinds) in &added {
        assert!(
            *n <= 6,
            "{who}'s log grew by {n} entries in 60 s of idle call: {kinds:?}"
        );
    }
    // the call is still up and ends normally
    let out = c.finish(Duration::from_secs(90));
    assert_ok(&out, "idle call");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(l.terminate(), Some(0));
    for n in [&alice, &bob] {
        assert_ok(&n.run(&["audit", "verify"]), "verify after an idle call");
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let a = export(&alice, tmp.path(), "a.bundle");
    let b = export(&bob, tmp.path(), "b.bundle");
    let out = alice.run(&[
        "audit",
        "check",
        a.to_str().expect("utf8"),
        b.to_str().expect("utf8"),
        "--json",
    ]);
    assert_ok(&out, "cross-check after an idle call");
    let r = json(&out);
    assert_eq!(r["report"]["cross"]["acked_messages_matched"], 2, "{r}");
    let alice_report = r["report"]["bundles"]
        .as_array()
        .expect("bundles")
        .iter()
        .find(|x| x["messages_sent"] == 2)
        .expect("alice's bundle")
        .clone();
    assert_eq!(alice_report["receipts"], 2, "receipts reached alice: {r}");
    assert_eq!(alice_report["acked_without_receipt"], 0, "{r}");
}
