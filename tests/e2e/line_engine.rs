//! Defects of the old node shell that the line engine fixed, through the real binary:
//! contact changes reach a running node, a relay that lost its store gets the envelopes it
//! lost posted again, and a home restored from a backup neither reports delivered what the
//! peer lacks nor loses what the peer lost (and the audit checker reports the rollback).

use crate::harness::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Polls `f` every 100 ms until it is true or `limit` passes.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `send NAME TEXT --json --timeout SECS`: (exit code, status, id, stderr).
fn send(from: &Node, to: &str, text: &str, timeout: u64) -> (Option<i32>, String, String, String) {
    let t = timeout.to_string();
    let out = from.run(&["send", to, text, "--json", "--timeout", &t]);
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap_or_else(|e| {
        panic!(
            "send printed no JSON ({e}):\nstdout: {}\nstderr: {}",
            stdout(&out),
            stderr(&out)
        )
    });
    (
        out.status.code(),
        v["status"].as_str().unwrap_or("").to_string(),
        v["id"].as_str().unwrap_or("").to_string(),
        stderr(&out),
    )
}

/// A send that must be delivered; returns its id.
fn send_delivered(from: &Node, to: &str, text: &str) -> String {
    let (code, status, id, err) = send(from, to, text, 30);
    assert_eq!(
        (code, status.as_str()),
        (Some(0), "delivered"),
        "send {text:?}: {err}"
    );
    id
}

/// Reads what a listener printed until it is quiet for `quiet` (bounded by `limit`).
fn drain(l: &mut Listener, quiet: Duration, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if l.next_json(quiet).is_none() {
            break;
        }
    }
}

/// Reads until an event satisfies `pred` (already seen ones count), bounded.
fn wait_event(
    l: &mut Listener,
    limit: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Option<serde_json::Value> {
    if let Some(v) = l.seen.iter().find(|v| pred(v)) {
        return Some(v.clone());
    }
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let v = l.next_json(left)?;
        if pred(&v) {
            return Some(v);
        }
    }
}

/// `history NAME --json`: our sent messages to NAME as seq → (status, text).
fn sent_history(n: &Node, contact: &str) -> BTreeMap<u64, (String, String)> {
    let out = n.run(&["history", contact, "--json"]);
    assert_ok(&out, "history");
    json(&out)
        .as_array()
        .expect("array")
        .iter()
        .filter(|m| m["direction"] == "sent")
        .map(|m| {
            (
                seq_of(m["id"].as_str().expect("id")),
                (
                    m["status"].as_str().unwrap_or("").to_string(),
                    m["text"].as_str().unwrap_or("").to_string(),
                ),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Contact changes reach a running node.

/// Both sides enter a pairing secret while bob's `listen` runs: the next send is delivered
/// (bob's running line handshakes with the secret at once). When alice alone changes her
/// secret, her send is refused and bob's listener shows nothing.
#[test]
fn pairing_secret_entered_while_listening_takes_effect_at_once() {
    let (alice, bob, mut lb) = pair_with_listener("alice", "bob");
    send_delivered(&alice, "bob", "before pairing");
    assert_exact_in_order(
        &lb.messages(1, Duration::from_secs(20)),
        &["before pairing".into()],
        "alice",
    );

    let out = alice.run(&["contact", "pair", "bob", "--new", "--json"]);
    assert_ok(&out, "contact pair --new");
    let secret = json(&out)["secret"].as_str().expect("secret").to_string();
    let out = bob.run(&["contact", "pair", "alice", &secret]);
    assert_ok(&out, "contact pair SECRET while listen runs");
    assert!(
        !stderr(&out).contains("did not confirm"),
        "the running listen did not take the secret: {}",
        stderr(&out)
    );
    let list = json(&bob.run(&["contact", "list", "--json"]));
    assert_eq!(list[0]["paired"], true, "{list}");

    // the next send handshakes with the secret on both sides: delivered, and shown once
    let id = send_delivered(&alice, "bob", "after pairing");
    assert_eq!(id, "bob:2");
    assert_eq!(
        shown(&lb.messages(1, Duration::from_secs(20))),
        [(2, "after pairing".to_string())]
    );
    let shown_so_far = lb.seen.len();

    // alice alone changes her secret: bob's node holds the old one, so the handshake fails
    let out = alice.run(&["contact", "pair", "bob", "--new", "--json"]);
    assert_ok(&out, "contact pair --new again");
    let t0 = Instant::now();
    let (code, status, id, err) = send(&alice, "bob", "with a secret bob lacks", 8);
    assert_ne!(
        status, "delivered",
        "delivered without the shared secret: {err}"
    );
    // the CLI contract: a failed handshake is a verification failure, said in one line
    assert_eq!(code, Some(3), "exit {code:?} ({status}): {err}");
    assert!(err.contains("pairing secret"), "says why: {err}");
    assert_eq!(id, "bob:3");
    eprintln!(
        "mismatched secret: exit {code:?}, {status}, after {:?}: {err}",
        t0.elapsed()
    );
    drain(&mut lb, Duration::from_secs(2), Duration::from_secs(5));
    let later: Vec<&serde_json::Value> = lb.seen[shown_so_far..]
        .iter()
        .filter(|v| v["event"] == "message")
        .collect();
    assert!(later.is_empty(), "bob showed {later:?}");
    assert_eq!(bob.inbox_rows().len(), 2, "bob stored a message");
    assert_eq!(
        alice.outbox_rows(),
        [(
            3,
            "pending".to_string(),
            "with a secret bob lacks".to_string()
        )]
    );
    assert_eq!(lb.terminate(), Some(0));
}

/// `contact set bob --addr NEW` on alice's home while her `listen` runs: that listen uses the
/// new address for what is pending, without another send.
#[test]
fn contact_set_addr_is_used_by_the_running_listen() {
    let alice = Node::new("alice");
    let bob = Node::new("bob");
    bob.pin(&alice, None);
    let mut lb = bob.listen("127.0.0.1:0");
    alice.pin(&bob, Some(&lb.addr));
    let la = alice.listen("127.0.0.1:0");
    let old_addr = lb.addr.clone();
    // through alice's running listen (control socket), the address given for this send
    let out = alice.run(&["send", "bob", "first", "--addr", &old_addr, "--json"]);
    assert_ok(&out, "send --addr");
    assert_eq!(json(&out)["status"], "delivered", "{}", stderr(&out));
    assert_exact_in_order(
        &lb.messages(1, Duration::from_secs(20)),
        &["first".into()],
        "alice",
    );
    // bob goes away; alice's message waits in her running node
    assert_eq!(lb.terminate(), Some(0));
    let (code, status, id, err) = send(&alice, "bob", "while you moved", 3);
    assert_eq!((code, status.as_str()), (Some(4), "pending"), "{err}");
    assert_eq!(id, "bob:2");
    // bob comes back on another port (he cannot dial alice: he has no address for her)
    let mut lb2 = bob.listen("127.0.0.1:0");
    assert_ne!(lb2.addr, old_addr, "the new listen got the old port");
    let out = alice.run(&["contact", "set", "bob", "--addr", &lb2.addr]);
    assert_ok(&out, "contact set --addr while listen runs");
    assert!(
        !stderr(&out).contains("did not confirm"),
        "the running listen did not take the change: {}",
        stderr(&out)
    );
    // at once: the dial to the old address still in flight (a dead port answers nothing; it
    // would time out after 10 s) is given up
    let t0 = Instant::now();
    let got = lb2.messages(1, Duration::from_secs(5));
    assert_eq!(
        shown(&got),
        [(2, "while you moved".to_string())],
        "the running listen did not deliver to the new address within 5 s"
    );
    eprintln!("delivered {:?} after contact set", t0.elapsed());
    assert!(
        eventually(Duration::from_secs(10), || alice.outbox_rows().is_empty()),
        "alice's outbox still holds {:?}",
        alice.outbox_rows()
    );
    assert!(
        lb2.messages(1, Duration::from_secs(2)).is_empty(),
        "a repeat"
    );
    assert_eq!(la.terminate(), Some(0));
    assert_eq!(lb2.terminate(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// No re-post after a relay loss.

/// Bob is away; carol's listen runs and her message is queued at the relay; the relay comes
/// back with an empty store (same identity, same port). Carol's running node posts the
/// envelope again; she stops 15 s later; bob comes back and gets the message exactly once.
#[test]
fn envelope_lost_by_the_relay_is_posted_again() {
    let mut relay = RelayProc::start(&[]);
    let (carol, bob) = pair_at_relay(&relay, "carol", "bob");
    let lc = carol.listen_relays(&["r1"]);
    relay.wait_subscriptions(10);
    let (code, status, id, err) = send(&carol, "bob", "held for bob", 20);
    assert_eq!((code, status.as_str()), (Some(0), "queued"), "{err}");
    assert_eq!(id, "bob:1");
    assert!(relay.queued().0 >= 1, "nothing held at the relay");

    // the relay loses its store: same home (identity, card) and port, a fresh queue
    relay.kill9();
    let lost = relay.store.clone();
    relay.store = relay.store.with_file_name("relay-queue-fresh");
    relay.restart();
    // carol's relay client notices, reconnects and subscribes again (seen within 6 s); the
    // engine posts every envelope not yet acknowledged end to end to the new subscription
    let restarted = Instant::now();
    assert!(
        eventually(Duration::from_secs(20), || relay.queued().0 >= 1),
        "carol's running node did not post the envelope again to the relay that lost it \
         (fresh store holds {:?}; the old one is at {})",
        relay.queued(),
        lost.display()
    );
    eprintln!(
        "posted again {:?} after the relay restart",
        restarted.elapsed()
    );
    // carol keeps running for (at least) 15 s after the restart, then stops
    std::thread::sleep(Duration::from_secs(15).saturating_sub(restarted.elapsed()));
    assert_eq!(lc.terminate(), Some(0));
    assert_eq!(
        carol.outbox_rows(),
        [(1, "queued".to_string(), "held for bob".to_string())]
    );

    // bob comes back: the message, once
    let mut lb = bob.listen_relays(&["r1"]);
    let got = lb.messages(1, Duration::from_secs(30));
    assert_exact_in_order(&got, &["held for bob".into()], "carol");
    assert!(
        lb.messages(1, Duration::from_secs(3)).is_empty(),
        "a repeat"
    );
    assert_eq!(bob.inbox_rows(), [(1, "held for bob".to_string())]);
    assert_eq!(lb.terminate(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// Restoring a home from a backup.

/// Copies `from` to `to` (which must not exist): directories and regular files, permissions
/// kept; sockets and other special files skipped.
fn copy_tree(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir(to).expect("create the copy");
    let mode = std::fs::metadata(from).expect("stat").permissions().mode();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode)).expect("chmod");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let ft = e.file_type().expect("file type");
        let dst = to.join(e.file_name());
        if ft.is_dir() {
            copy_tree(&e.path(), &dst);
        } else if ft.is_file() {
            std::fs::copy(e.path(), &dst).expect("copy a file");
        }
    }
}

/// Replaces `home` with a copy of `backup`.
fn restore(home: &Path, backup: &Path) {
    std::fs::remove_dir_all(home).expect("remove the home");
    copy_tree(backup, home);
}

/// Two nodes that both listen directly on fixed ports and know each other's address.
struct Pair {
    alice: Node,
    bob: Node,
    la: Option<Listener>,
    lb: Option<Listener>,
    a_bind: String,
    b_bind: String,
}

impl Pair {
    fn new() -> Pair {
        let alice = Node::new("alice");
        let bob = Node::new("bob");
        alice.pin(&bob, None);
        bob.pin(&alice, None);
        let la = alice.listen("127.0.0.1:0");
        let lb = bob.listen("127.0.0.1:0");
        // each restarts on its port, so the other's stored address stays right
        let a_bind = la.addr.clone();
        let b_bind = lb.addr.clone();
        assert_ok(
            &alice.run(&["contact", "set", "bob", "--addr", &b_bind]),
            "set",
        );
        assert_ok(
            &bob.run(&["contact", "set", "alice", "--addr", &a_bind]),
            "set",
        );
        Pair {
            alice,
            bob,
            la: Some(la),
            lb: Some(lb),
            a_bind,
            b_bind,
        }
    }
}

/// A listener's `message` events as (seq, text).
fn shown(msgs: &[serde_json::Value]) -> Vec<(u64, String)> {
    msgs.iter()
        .map(|m| {
            (
                m["seq"].as_u64().expect("seq"),
                m["text"].as_str().unwrap_or("<no text>").to_string(),
            )
        })
        .collect()
}

/// Everything a listener showed from `from`, as (seq, text).
fn shown_from(l: &Listener, from: &str) -> Vec<(u64, String)> {
    let msgs: Vec<serde_json::Value> = l
        .seen
        .iter()
        .filter(|v| v["event"] == "message" && v["from"] == from)
        .cloned()
        .collect();
    shown(&msgs)
}

/// The seqs a listener reported `delivered` to `to`.
fn delivered_seqs(l: &Listener, to: &str) -> Vec<u64> {
    l.seen
        .iter()
        .filter(|v| v["event"] == "delivered" && v["to"] == to)
        .map(|v| v["seq"].as_u64().expect("seq"))
        .collect()
}

/// Checks that everything `sender` ever reported delivered to `peer` (send outputs collected
/// in `reported`, and every sent row of its history marked delivered) is held by `receiver`
/// under that seq with that text.
fn assert_delivered_means_held(
    sender: &Node,
    peer: &str,
    receiver: &Node,
    reported: &BTreeMap<u64, String>,
) {
    let held: BTreeMap<u64, String> = receiver.inbox_rows().into_iter().collect();
    for (seq, text) in reported {
        assert_eq!(
            held.get(seq),
            Some(text),
            "{} reported {peer}:{seq} ({text:?}) delivered; {peer} holds {:?} under that seq",
            sender.name,
            held.get(seq)
        );
    }
    for (seq, (status, text)) in sent_history(sender, peer) {
        if status == "delivered" {
            assert_eq!(
                held.get(&seq),
                Some(&text),
                "{}'s history says {peer}:{seq} ({text:?}) is delivered; {peer} holds {:?}",
                sender.name,
                held.get(&seq)
            );
        }
    }
}

fn seq_of(id: &str) -> u64 {
    id.rsplit(':')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an id: {id}"))
}

/// Alice and bob exchange; alice's home is backed up (no process running); they exchange
/// more; alice's home is restored from the backup and she sends again. Nothing is ever
/// reported delivered that bob lacks, no seq is reported delivered twice, bob receives every
/// new message once, alice is told in one line that her home was restored, and bob's message
/// that the restored home lost is sent again. Then the audit logs (see
/// `audit_after_rollback`).
#[test]
fn home_restored_from_a_backup_reuses_no_seq() {
    let mut p = Pair::new();
    // every seq alice reported delivered to bob (send output), with the text sent under it
    let mut reported: BTreeMap<u64, String> = BTreeMap::new();
    let mut report = |id: &str, text: &str| {
        let seq = seq_of(id);
        if let Some(first) = reported.insert(seq, text.to_string()) {
            panic!("alice reported {id} delivered twice: first {first:?}, now {text:?}");
        }
    };
    // and every seq her listeners reported delivered
    let mut listen_delivered = Vec::new();
    for t in ["a1", "a2"] {
        report(&send_delivered(&p.alice, "bob", t), t);
    }
    send_delivered(&p.bob, "alice", "b1");
    let lb = p.lb.as_mut().expect("bob listens");
    assert_eq!(shown(&lb.messages(2, Duration::from_secs(20))).len(), 2);
    let la = p.la.as_mut().expect("alice listens");
    assert_eq!(la.messages(1, Duration::from_secs(20)).len(), 1);
    // the audit logs exchange checkpoints and cosignatures meanwhile
    std::thread::sleep(Duration::from_millis(800));

    // the backup, with no process on alice's home
    let la = p.la.take().expect("alice listens");
    listen_delivered.extend(delivered_seqs(&la, "bob"));
    assert_eq!(la.terminate(), Some(0));
    let tmp = tempfile::tempdir().expect("tmp");
    let backup = tmp.path().join("alice-backup");
    copy_tree(&p.alice.home, &backup);

    // more, after the backup
    let mut la = p.alice.listen(&p.a_bind);
    for t in ["a3", "a4"] {
        report(&send_delivered(&p.alice, "bob", t), t);
    }
    send_delivered(&p.bob, "alice", "b2");
    assert_eq!(
        shown(&la.messages(1, Duration::from_secs(20))),
        [(2, "b2".to_string())]
    );
    std::thread::sleep(Duration::from_millis(800));
    drain(&mut la, Duration::from_millis(200), Duration::from_secs(2));
    listen_delivered.extend(delivered_seqs(&la, "bob"));
    assert_eq!(la.terminate(), Some(0));
    let lb = p.lb.as_mut().expect("bob listens");
    assert_eq!(
        shown(&lb.messages(2, Duration::from_secs(20))),
        [(3, "a3".to_string()), (4, "a4".to_string())]
    );

    // alice's home goes back to the backup; she sends new messages
    restore(&p.alice.home, &backup);
    assert_eq!(p.alice.inbox_rows(), [(1, "b1".to_string())]);
    let mut la = p.alice.listen(&p.a_bind);
    let mut told = Vec::new();
    for t in ["a5 after the restore", "a6 after the restore"] {
        let (code, status, id, err) = send(&p.alice, "bob", t, 30);
        assert_eq!(
            (code, status.as_str()),
            (Some(0), "delivered"),
            "send {t:?}: {err}"
        );
        told.extend(
            err.lines()
                .filter(|l| l.contains("restored"))
                .map(str::to_string),
        );
        report(&id, t);
    }
    // bob got both new messages, after the four he had, once each
    let lb = p.lb.as_mut().expect("bob listens");
    assert_eq!(
        shown(&lb.messages(2, Duration::from_secs(20))),
        [
            (5, "a5 after the restore".to_string()),
            (6, "a6 after the restore".to_string())
        ]
    );
    // bob's b2, which the restored home lost, comes again, once
    assert!(
        wait_event(&mut la, Duration::from_secs(20), |v| v["event"]
            == "message"
            && v["text"] == "b2")
        .is_some(),
        "b2 did not come again: {:?}",
        la.seen
    );
    std::thread::sleep(Duration::from_millis(800));
    drain(&mut la, Duration::from_millis(500), Duration::from_secs(5));
    assert_eq!(shown_from(&la, "bob"), [(2, "b2".to_string())]);
    assert_eq!(
        p.alice.inbox_rows(),
        [(1, "b1".to_string()), (2, "b2".to_string())]
    );
    listen_delivered.extend(delivered_seqs(&la, "bob"));
    // nothing was reported delivered that bob lacks, and no seq twice
    assert_delivered_means_held(&p.alice, "bob", &p.bob, &reported);
    let mut sorted = listen_delivered.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        listen_delivered.len(),
        "alice's listeners reported a seq delivered twice: {listen_delivered:?}"
    );
    assert_eq!(
        sorted,
        reported.keys().copied().collect::<Vec<_>>(),
        "alice's listeners reported other seqs delivered than her sends did"
    );
    // alice is told, in one line, that her home was restored
    let renumbered: Vec<&serde_json::Value> = la
        .seen
        .iter()
        .filter(|v| v["event"] == "renumbered")
        .collect();
    assert_eq!(renumbered.len(), 1, "{:?}", la.seen);
    assert_eq!(renumbered[0]["peer_holds"], 4, "{:?}", renumbered[0]);
    assert_eq!(told.len(), 1, "{told:?}");
    eprintln!("alice was told: {}", told[0]);
    // bob's node says it sends b2 again
    let lb = p.lb.as_ref().expect("bob listens");
    assert!(
        lb.seen
            .iter()
            .any(|v| v["event"] == "peer_lost" && v["contact"] == "alice"),
        "{:?}",
        lb.seen
    );
    assert_eq!(la.terminate(), Some(0));
    assert_eq!(p.lb.take().expect("bob listens").terminate(), Some(0));
    assert!(p.alice.outbox_rows().is_empty());
    assert!(p.bob.outbox_rows().is_empty());

    audit_after_rollback(
        &p.alice,
        &p.bob,
        tmp.path(),
        &[(&p.alice, "seq_rollback"), (&p.bob, "peer_lost_messages")],
    );
}

/// The kinds of the anomaly entries in a node's audit log.
fn logged_anomalies(n: &Node) -> Vec<String> {
    let out = n.run(&["audit", "show", "--json"]);
    assert_ok(&out, "audit show");
    json(&out)
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["event"] == "anomaly")
        .filter_map(|e| e["kind"].as_str().map(str::to_string))
        .collect()
}

/// The audit logs after `restored`'s home went back to a backup while `peer` kept its own.
///
/// - Each log records the rollback: `expect` lists an anomaly each node must have logged.
/// - `audit verify` on each home: the restored home's own log is intact as far as it can
///   know, and the peer's own log is intact; the peer may hold proof that the restored
///   node's log key signed two checkpoints of one size with different roots (whether it
///   does depends on where the restored log's checkpoints fell), and then fails with that
///   fork. Either way no verify may blame anything but a fork of the restored node's log.
/// - `audit check` of both bundles: the restored log no longer contains what the peer
///   cosigned, so the checker must report a fork of the restored node's log key (exit 3),
///   not pass.
fn audit_after_rollback(restored: &Node, peer: &Node, dir: &Path, expect: &[(&Node, &str)]) {
    for (n, kind) in expect {
        let logged = logged_anomalies(n);
        assert!(
            logged.iter().any(|k| k == kind),
            "{}'s audit log does not record {kind}: {logged:?}",
            n.name
        );
    }
    // the restored node's identity, as the peer's log pinned it
    let shown = json(&peer.run(&["audit", "show", "--json"]));
    let identity = shown
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["event"] == "key_event" && e["kind"] == "peer_pinned")
        .and_then(|e| e["key_hash"].as_str())
        .expect("the peer's log pins the restored node")
        .to_string();
    let fork_of_restored = format!("fork: the log key of {}", &identity[..16]);
    for n in [restored, peer] {
        let out = n.run(&["audit", "verify"]);
        eprintln!(
            "audit verify on {}: exit {:?}: {}{}",
            n.name,
            out.status.code(),
            stdout(&out),
            stderr(&out)
        );
        match out.status.code() {
            Some(0) => assert!(stdout(&out).contains("all verified"), "{}", stdout(&out)),
            Some(3) => assert!(
                std::ptr::eq(n, peer) && stderr(&out).contains(&fork_of_restored),
                "audit verify on {} failed for another reason than a fork of {}'s log: {}",
                n.name,
                restored.name,
                stderr(&out)
            ),
            c => panic!("audit verify on {}: exit {c:?}: {}", n.name, stderr(&out)),
        }
    }
    let mut bundles = Vec::new();
    for n in [restored, peer] {
        let p = dir.join(format!("{}.bundle", n.name));
        let out = n.run(&["audit", "export", "--out", p.to_str().expect("utf8")]);
        assert_ok(&out, "audit export");
        bundles.push(p.display().to_string());
    }
    let out = restored.run(&["audit", "check", &bundles[0], &bundles[1]]);
    assert_code(
        &out,
        3,
        "audit check of a restored home's bundle with its peer's",
    );
    assert!(
        stderr(&out).contains(&fork_of_restored),
        "the checker does not name the fork of {}'s log ({fork_of_restored}): {}",
        restored.name,
        stderr(&out)
    );
    eprintln!(
        "audit check: {}",
        stderr(&out).lines().next().unwrap_or_default()
    );
}

/// Bob's home is restored from a backup: the messages of alice's that he had acknowledged and
/// lost are sent again (alice's node says so), and he receives each once, with the new one.
#[test]
fn peer_restored_from_a_backup_gets_the_lost_messages_again() {
    let mut p = Pair::new();
    let mut reported: BTreeMap<u64, String> = BTreeMap::new();
    let mut report = |id: &str, text: &str| {
        reported.insert(seq_of(id), text.to_string());
    };
    report(&send_delivered(&p.alice, "bob", "a1"), "a1");
    send_delivered(&p.bob, "alice", "b1");
    let lb = p.lb.as_mut().expect("bob listens");
    assert_eq!(lb.messages(1, Duration::from_secs(20)).len(), 1);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(p.lb.take().expect("bob listens").terminate(), Some(0));
    let tmp = tempfile::tempdir().expect("tmp");
    let backup = tmp.path().join("bob-backup");
    copy_tree(&p.bob.home, &backup);

    let mut lb = p.bob.listen(&p.b_bind);
    report(&send_delivered(&p.alice, "bob", "a2"), "a2");
    report(&send_delivered(&p.alice, "bob", "a3"), "a3");
    assert_eq!(
        shown(&lb.messages(2, Duration::from_secs(20))),
        [(2, "a2".to_string()), (3, "a3".to_string())]
    );
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(lb.terminate(), Some(0));

    // bob's home goes back to the backup: a2 and a3 are gone from it
    restore(&p.bob.home, &backup);
    assert_eq!(p.bob.inbox_rows(), [(1, "a1".to_string())]);
    let mut lb = p.bob.listen(&p.b_bind);
    report(&send_delivered(&p.alice, "bob", "a4"), "a4");
    let got = lb.messages(3, Duration::from_secs(30));
    assert_eq!(
        shown(&got),
        [
            (2, "a2".to_string()),
            (3, "a3".to_string()),
            (4, "a4".to_string())
        ],
        "the messages bob lost did not come again"
    );
    assert!(
        lb.messages(1, Duration::from_secs(2)).is_empty(),
        "a repeat"
    );
    let la = p.la.as_mut().expect("alice listens");
    let lost = wait_event(la, Duration::from_secs(10), |v| v["event"] == "peer_lost")
        .unwrap_or_else(|| panic!("alice's node did not report the loss: {:?}", la.seen));
    assert_eq!(
        (lost["from"].as_u64(), lost["to"].as_u64()),
        (Some(2), Some(3)),
        "{lost}"
    );
    assert_eq!(
        p.bob.inbox_rows(),
        [
            (1, "a1".to_string()),
            (2, "a2".to_string()),
            (3, "a3".to_string()),
            (4, "a4".to_string())
        ]
    );
    assert_delivered_means_held(&p.alice, "bob", &p.bob, &reported);
    assert!(p.alice.outbox_rows().is_empty());
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(lb.terminate(), Some(0));
    assert_eq!(p.la.take().expect("alice listens").terminate(), Some(0));

    audit_after_rollback(
        &p.bob,
        &p.alice,
        tmp.path(),
        &[(&p.alice, "peer_lost_messages")],
    );
}

/// Key events of kind `kind` in `n`'s audit log.
fn key_events(n: &Node, kind: &str) -> usize {
    let out = n.run(&["audit", "show", "--json"]);
    assert_ok(&out, "audit show");
    json(&out)
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["event"] == "key_event" && e["kind"] == kind)
        .count()
}

/// Envelope forward secrecy: two parties who meet only through a relay, never online at the
/// same time, move off the long-lived card mailbox keys, because every envelope carries the
/// sender's current mailbox key. Only the first contact is sealed to a card key, and the user
/// is told.
#[test]
fn parties_who_meet_only_through_a_relay_learn_fresh_mailbox_keys() {
    let relay = RelayProc::start(&[]);
    let (alice, bob) = pair_at_relay(&relay, "alice", "bob");
    // alice writes while bob is away: first contact, sealed to bob's card key, and she is told
    let out = alice.run(&["send", "bob", "first contact", "--relay", "r1", "--json"]);
    assert_ok(&out, "send to an absent peer");
    assert_eq!(json(&out)["status"], "queued", "{}", stderr(&out));
    assert!(
        stderr(&out).contains("card mailbox key"),
        "warns about the card key: {}",
        stderr(&out)
    );
    // bob comes back while alice is away: the envelope brings alice's fresh mailbox key
    let mut lb = bob.listen_relays(&["r1"]);
    assert_exact_in_order(
        &lb.messages(1, Duration::from_secs(30)),
        &["first contact".into()],
        "alice",
    );
    // bob answers through his running listen; alice is away: sealed to her fresh key, no
    // card-key warning
    let out = bob.run(&["send", "alice", "the answer", "--relay", "r1", "--json"]);
    assert_ok(&out, "answer to an absent peer");
    assert_eq!(json(&out)["status"], "queued", "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("card mailbox key"),
        "bob had alice's fresh key from her envelope: {}",
        stderr(&out)
    );
    assert_eq!(lb.terminate(), Some(0));
    assert_eq!(
        key_events(&bob, "peer_mailbox_key"),
        1,
        "bob learnt alice's fresh key from her envelope alone"
    );
    // alice comes back (bob away): she gets the answer, and bob's fresh key with it
    let mut la = alice.listen_relays(&["r1"]);
    assert_exact_in_order(
        &la.messages(1, Duration::from_secs(30)),
        &["the answer".into()],
        "bob",
    );
    assert_eq!(la.terminate(), Some(0));
    assert_eq!(key_events(&alice, "peer_mailbox_key"), 1);
    // and her next envelope for the absent bob is sealed to that fresh key: no warning
    let out = alice.run(&["send", "bob", "second", "--relay", "r1", "--json"]);
    assert_eq!(json(&out)["status"], "queued", "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("card mailbox key"),
        "{}",
        stderr(&out)
    );
}
