//! Issue 9, processes a user can trust: the listener (or the peer) that a script's `send`s and
//! `call`s go through is killed with SIGKILL while they run. No command exits silently, each
//! says what became of every message it was given, a script that resends only what was not
//! stored makes no duplicate, and both audit logs still cross-check.

use crate::harness::*;
use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Starts `liaison ARGS…` on `node`'s home with a writable stdin, under a 2 GiB address-space
/// limit (the commands under test here; the harness bounds the time).
fn spawn_bounded(node: &Node, args: &[&str]) -> Running {
    let mut c = node.cmd_memory_bounded(args);
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn liaison");
    let stdin = child.stdin.take();
    Running { child, stdin }
}

/// One run of `liaison send`.
struct Attempt {
    text: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} exit {:?}, stdout {:?}, stderr {:?}",
            self.text, self.code, self.stdout, self.stderr
        )
    }
}

/// The messages the script sends.
const MESSAGES: usize = 30;

/// When alice's listener is killed: during the first send of messages 1, 3, 5, … 29, 0 to
/// 14 ms after it started. A send through a live line takes 10–35 ms here, so the kills land
/// from "before the listener read the request" to "after bob acknowledged it".
fn kill_delay(i: usize) -> Option<u64> {
    (i % 2 == 1).then_some(i as u64 / 2)
}

/// Checks what a finished send printed and returns the id it reported stored, if any.
fn judge(a: &Attempt) -> Option<String> {
    let err_lines: Vec<&str> = a.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let v: serde_json::Value = serde_json::from_str(a.stdout.trim())
        .unwrap_or_else(|e| panic!("send printed no JSON document ({e}): {a:?}"));
    match a.code {
        Some(0) => {
            assert!(
                v["status"] == "delivered" || v["status"] == "queued",
                "exit 0 reports delivered or queued: {a:?}"
            );
            Some(v["id"].as_str().expect("id").to_string())
        }
        Some(4) => {
            assert_eq!(v["status"], "pending", "{a:?}");
            let id = v["id"].as_str().expect("id").to_string();
            assert_eq!(err_lines.len(), 1, "exit 4 prints one line: {a:?}");
            assert!(
                err_lines[0].contains(&id) && err_lines[0].contains("pending"),
                "the line names the message and its state: {a:?}"
            );
            Some(id)
        }
        Some(1) => {
            assert_eq!(err_lines.len(), 1, "exit 1 prints one line: {a:?}");
            assert!(
                err_lines[0].contains("not stored"),
                "the line says the message was not stored: {a:?}"
            );
            assert_eq!(v["exit"], 1, "{a:?}");
            None
        }
        other => panic!("send exited {other:?}: {a:?}"),
    }
}

/// The acceptance check: 30 sends from alice to bob through alice's listener, which is
/// killed with SIGKILL 15 times and restarted at once; the script resends what a send
/// reported not stored (exit 1). Before the fix, a send whose listener was killed after
/// storing the message but before saying so reported it "not stored", and the resend made a
/// duplicate (4 of 5 such sends in one run).
#[test]
fn thirty_sends_through_a_listener_killed_fifteen_times() {
    let started = Instant::now();
    let alice = Node::new("alice");
    let bob = Node::new("bob");
    bob.pin(&alice, None);
    let mut lb = bob.listen("127.0.0.1:0");
    alice.pin(&bob, Some(&lb.addr));
    let mut la = Some(alice.listen("127.0.0.1:0"));

    let mut attempts: Vec<Attempt> = Vec::new();
    // id reported stored -> text
    let mut stored: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..MESSAGES {
        let text = format!("message {i:02}");
        for tries in 1.. {
            assert!(
                tries <= 5,
                "{text:?} was not stored in 5 sends: {attempts:#?}"
            );
            let kill = kill_delay(i).filter(|_| tries == 1);
            let t0 = Instant::now();
            let send = spawn_bounded(&alice, &["send", "bob", &text, "--json", "--timeout", "30"]);
            let out = match kill {
                None => send.finish(Duration::from_secs(60)),
                Some(delay) => {
                    std::thread::sleep(Duration::from_millis(delay));
                    la.take().expect("alice's listener").kill9();
                    // a supervising script restarts it at once, beside the running send
                    std::thread::scope(|s| {
                        let restart = s.spawn(|| alice.listen("127.0.0.1:0"));
                        let out = send.finish(Duration::from_secs(60));
                        la = Some(restart.join().expect("restart alice's listener"));
                        out
                    })
                }
            };
            let a = Attempt {
                text: text.clone(),
                code: out.status.code(),
                stdout: stdout(&out),
                stderr: stderr(&out),
            };
            if kill.is_some() || a.code != Some(0) {
                eprintln!(
                    "{text}, send {tries}, listener killed after {kill:?} ms: exit {:?} after \
                     {:?}: {}",
                    a.code,
                    t0.elapsed(),
                    a.stderr.trim()
                );
            }
            let id = judge(&a);
            attempts.push(a);
            if let Some(id) = id {
                assert!(
                    stored.insert(id.clone(), text.clone()).is_none(),
                    "{id} reported stored twice: {attempts:#?}"
                );
                break;
            }
            // exit 1: not stored, and the script sends it again
        }
    }
    let codes: BTreeMap<Option<i32>, usize> = attempts.iter().fold(BTreeMap::new(), |mut m, a| {
        *m.entry(a.code).or_insert(0) += 1;
        m
    });
    eprintln!(
        "{} sends for {MESSAGES} messages, by exit code: {codes:?}",
        attempts.len()
    );
    assert_eq!(stored.len(), MESSAGES, "{attempts:#?}");

    // with alice's listener back, everything stored reaches bob, once, under the id reported
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut inbox = bob.inbox_rows();
    while inbox.len() < MESSAGES && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        inbox = bob.inbox_rows();
    }
    let mut by_text: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (seq, t) in &inbox {
        by_text.entry(t.as_str()).or_default().push(*seq);
    }
    let twice: Vec<_> = by_text.iter().filter(|(_, s)| s.len() > 1).collect();
    assert!(twice.is_empty(), "bob holds duplicates: {twice:?}");
    for (id, text) in &stored {
        let seq: u64 = id
            .strip_prefix("bob:")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{id} is not an id of bob's"));
        assert_eq!(
            by_text.get(text.as_str()),
            Some(&vec![seq]),
            "{id} ({text:?}) is in bob's inbox under its id: {inbox:?}"
        );
    }
    assert_eq!(inbox.len(), MESSAGES, "{inbox:?}");
    // and bob's listener showed each once
    let shown = lb.messages(MESSAGES + 1, Duration::from_secs(3));
    let mut seqs: Vec<u64> = shown.iter().filter_map(|m| m["seq"].as_u64()).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), shown.len(), "bob's listener showed a repeat");
    // alice holds each message once, every one delivered
    let deadline = Instant::now() + Duration::from_secs(30);
    while !alice.outbox_rows().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(alice.outbox_rows(), Vec::new(), "alice's outbox drains");
    let hist = json(&alice.run(&["history", "bob", "--json"]));
    let sent: Vec<&str> = hist
        .as_array()
        .expect("history")
        .iter()
        .filter(|e| e["direction"] == "sent")
        .filter_map(|e| e["text"].as_str())
        .collect();
    assert_eq!(
        sent.len(),
        MESSAGES,
        "alice stored each message once: {sent:?}"
    );

    // receipts and cosignatures settle, both stop cleanly, and the logs cross-check
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(la.take().expect("alice's listener").terminate(), Some(0));
    assert_eq!(lb.terminate(), Some(0));
    for n in [&alice, &bob] {
        let out = n.run(&["audit", "verify"]);
        assert_ok(&out, &format!("{}'s audit verify", n.name));
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let bundles: Vec<String> = [&alice, &bob]
        .iter()
        .map(|n| {
            let p = tmp.path().join(format!("{}.bundle", n.name));
            let p = p.to_str().expect("utf-8").to_string();
            assert_ok(&n.run(&["audit", "export", "--out", &p]), "audit export");
            p
        })
        .collect();
    let out = alice.run(&["audit", "check", &bundles[0], &bundles[1], "--json"]);
    assert_ok(&out, "audit check of both bundles");
    eprintln!("done in {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(600));
}

/// A free loopback port (bound and released; nothing listens there afterwards).
fn free_port() -> String {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr").to_string()
}

/// Waits (bounded) until `node` holds exactly `n` undelivered messages.
fn wait_pending(node: &Node, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.outbox_rows().len() != n {
        assert!(Instant::now() < deadline, "{:?}", node.outbox_rows());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `message_state` objects a `call --json` printed, as (line, id, status).
fn states(out: &str) -> Vec<(u64, String, String)> {
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "message_state")
        .map(|v| {
            (
                v["line"].as_u64().expect("line"),
                v["id"].as_str().unwrap_or("").to_string(),
                v["status"].as_str().expect("status").to_string(),
            )
        })
        .collect()
}

/// Issue 9, defect 3 for `call`: a listener killed during a call through it made the call exit
/// 1 with "see history", whatever had become of the lines typed. The call now reports every
/// line it was given with its state and id (from the store), and one line saying what failed.
#[test]
fn a_call_whose_listener_is_killed_reports_every_line() {
    let alice = Node::new("alice");
    let bob = Node::new("bob");
    let b_bind = free_port();
    alice.pin(&bob, Some(&b_bind));
    bob.pin(&alice, None);
    let mut lb = bob.listen(&b_bind);
    let la = alice.listen("127.0.0.1:0");
    let mut call = spawn_bounded(&alice, &["call", "bob", "--json", "--timeout", "60"]);
    call.write_lines(&["one".into(), "two".into(), "three".into()]);
    assert_eq!(lb.messages(3, Duration::from_secs(30)).len(), 3);
    wait_pending(&alice, 0);
    // bob goes away: the next two lines stay pending in alice's outbox
    lb.kill9();
    call.write_lines(&["four".into(), "five".into()]);
    wait_pending(&alice, 2);
    // the input ends; the call waits for bob's receipts in alice's listener, which is killed
    drop(call.stdin.take());
    std::thread::sleep(Duration::from_millis(500));
    la.kill9();
    let out = call.finish(Duration::from_secs(60));
    let (so, se) = (stdout(&out), stderr(&out));
    assert_code(
        &out,
        4,
        "a call whose listener was killed, two lines pending",
    );
    let want: Vec<(u64, String, String)> = [
        (1, "bob:1", "delivered"),
        (2, "bob:2", "delivered"),
        (3, "bob:3", "delivered"),
        (4, "bob:4", "pending"),
        (5, "bob:5", "pending"),
    ]
    .iter()
    .map(|(l, i, s)| (*l, i.to_string(), s.to_string()))
    .collect();
    assert_eq!(states(&so), want, "stdout: {so}\nstderr: {se}");
    let last = se.lines().last().unwrap_or_default();
    assert!(
        last.contains("stopped during this call") && last.contains("2 pending"),
        "the last line says what failed: {se}"
    );
    // the next listeners deliver the two pending lines, once
    let mut lb = bob.listen(&b_bind);
    let la = alice.listen("127.0.0.1:0");
    let got = lb.messages(2, Duration::from_secs(45));
    let texts: Vec<&str> = got.iter().filter_map(|m| m["text"].as_str()).collect();
    assert_eq!(texts, ["four", "five"]);
    assert!(lb.messages(1, Duration::from_secs(2)).is_empty(), "once");
    drop(la);
    assert_eq!(lb.terminate(), Some(0));
}

/// Issue 9, defect 3 for `call` holding the home: when the peer dies during the call, the call
/// exits 4 naming each line's state and id, not only how many were acknowledged.
#[test]
fn a_call_whose_peer_dies_reports_every_line() {
    let alice = Node::new("alice");
    let bob = Node::new("bob");
    let b_bind = free_port();
    alice.pin(&bob, Some(&b_bind));
    bob.pin(&alice, None);
    let mut lb = bob.listen(&b_bind);
    let mut call = spawn_bounded(&alice, &["call", "bob", "--timeout", "3"]);
    call.write_lines(&["one".into(), "two".into()]);
    assert_eq!(lb.messages(2, Duration::from_secs(30)).len(), 2);
    // alice has bob's receipts; then bob goes away
    wait_pending(&alice, 0);
    lb.kill9();
    call.write_lines(&["three".into(), "four".into()]);
    let out = call.finish(Duration::from_secs(60));
    let (so, se) = (stdout(&out), stderr(&out));
    assert_code(&out, 4, "a call whose peer died");
    let lines: Vec<&str> = so.lines().collect();
    assert_eq!(
        lines,
        [
            "delivered bob:1 (line 1)",
            "delivered bob:2 (line 2)",
            "pending bob:3 (line 3)",
            "pending bob:4 (line 4)",
        ],
        "stderr: {se}"
    );
    let last = se.lines().last().unwrap_or_default();
    assert!(
        last.contains("2 acknowledged") && last.contains("2 pending"),
        "{se}"
    );
}

/// A call interrupted (SIGINT) while lines are pending exited 0 and said nothing of them; it
/// now ends as at the end of its input, without waiting: each line's state, exit 4.
#[test]
fn an_interrupted_call_reports_every_line() {
    let alice = Node::new("alice");
    let bob = Node::new("bob");
    // bob is away: nothing listens where alice calls him
    alice.pin(&bob, Some(&free_port()));
    let mut call = spawn_bounded(&alice, &["call", "bob", "--timeout", "60"]);
    call.write_lines(&["one".into(), "two".into()]);
    wait_pending(&alice, 2);
    let pid = nix::unistd::Pid::from_raw(call.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let out = call.finish(Duration::from_secs(30));
    let (so, se) = (stdout(&out), stderr(&out));
    assert_code(&out, 4, "an interrupted call with two lines pending");
    assert_eq!(
        so.lines().collect::<Vec<_>>(),
        ["pending bob:1 (line 1)", "pending bob:2 (line 2)"],
        "stderr: {se}"
    );
    let last = se.lines().last().unwrap_or_default();
    assert!(last.contains("2 pending"), "{se}");
}
