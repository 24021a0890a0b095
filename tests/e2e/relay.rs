//! Lines through a real relay (`liaison relay serve` as a child process): live delivery,
//! sealed envelopes for a peer who is away, a relay crash in the middle of a call, no plaintext
//! at the relay, garbage datagrams, the allow list and queue quotas.

use crate::harness::*;
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

fn texts(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix} {i:04}")).collect()
}

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

#[test]
fn messages_through_the_relay_both_ways() {
    let relay = RelayProc::start(&[]);
    let (alice, bob) = pair_at_relay(&relay, "alice", "bob");
    let mut lb = bob.listen_relays(&["r1"]);
    relay.wait_subscriptions(10);

    // a one-shot send meets bob at the relay and gets his end-to-end receipt
    let out = alice.run(&["send", "bob", "hello via relay", "--relay", "r1", "--json"]);
    assert_ok(&out, "send via relay");
    assert_eq!(json(&out)["status"], "delivered", "{}", stderr(&out));
    assert_eq!(json(&out)["id"], "bob:1");

    // a piped call: every line arrives once, in order, and the call exits 0
    let msgs = texts("relayed", 40);
    let out = alice.run_stdin(
        &["call", "bob", "--relay", "r1", "--timeout", "30"],
        &(msgs.join("\n") + "\n"),
    );
    assert_ok(&out, "call via relay");
    let mut want = vec!["hello via relay".to_string()];
    want.extend(msgs);
    let got = lb.messages(want.len(), Duration::from_secs(30));
    assert_exact_in_order(&got, &want, "alice");
    assert!(
        lb.messages(1, Duration::from_secs(1)).is_empty(),
        "a repeat"
    );

    // the other way: alice listens at the relay too, bob sends through his running listen
    // (first the subscriptions of alice's finished call must be gone, or the count below
    // could be reached before her listener subscribed); each relay connection holds its
    // contacts' 10 inbox ids and one echo id of its own
    relay.wait_subscriptions_exactly(11);
    let mut la = alice.listen_relays(&["r1"]);
    relay.wait_subscriptions(22);
    let out = bob.run(&["send", "alice", "and back", "--relay", "r1", "--json"]);
    assert_ok(&out, "send back through the control socket");
    assert_eq!(json(&out)["status"], "delivered");
    let got = la.messages(1, Duration::from_secs(20));
    assert_exact_in_order(&got, &["and back".to_string()], "bob");
    assert!(alice.outbox_rows().is_empty());
    assert!(bob.outbox_rows().is_empty());
    // nothing is left at the relay: live blobs are never stored
    assert_eq!(relay.queued().0, 0);
    assert_eq!(la.terminate(), Some(0));
    assert_eq!(lb.terminate(), Some(0));

    // both logs record the relay connection and its loss, and bob's log holds alice's calls,
    // each ended by her goodbye, which crossed the relay
    for n in [&alice, &bob] {
        let shown = json(&n.run(&["audit", "show", "--json"]));
        let entries = shown.as_array().expect("entries");
        let relay_kinds: Vec<&str> = entries
            .iter()
            .filter(|e| e["event"] == "relay_event")
            .filter_map(|e| e["kind"].as_str())
            .collect();
        assert!(relay_kinds.contains(&"connected"), "{relay_kinds:?}");
        assert!(relay_kinds.contains(&"disconnected"), "{relay_kinds:?}");
    }
    let shown = json(&bob.run(&["audit", "show", "--json"]));
    let ends: Vec<&str> = shown
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["event"] == "call_ended")
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(
        ends.iter().filter(|r| **r == "peer_closed").count() >= 2,
        "{ends:?}"
    );
}

#[test]
fn five_messages_queued_for_an_absent_peer_arrive_exactly_once() {
    let relay = RelayProc::start(&[]);
    let (alice, bob) = pair_at_relay(&relay, "alice", "bob");
    let msgs = texts("while you were away", 5);
    for (i, m) in msgs.iter().enumerate() {
        let out = alice.run(&["send", "bob", m, "--relay", "r1", "--json"]);
        assert_ok(&out, "send to an absent peer");
        let v = json(&out);
        assert_eq!(v["status"], "queued", "{}", stderr(&out));
        assert_eq!(v["id"], format!("bob:{}", i + 1));
        assert!(
            stderr(&out).contains("away"),
            "says bob is away: {}",
            stderr(&out)
        );
    }
    let ob = alice.outbox_rows();
    assert_eq!(ob.len(), 5);
    assert!(
        ob.iter()
            .enumerate()
            .all(|(i, (s, st, t))| *s == i as u64 + 1 && st == "queued" && *t == msgs[i]),
        "{ob:?}"
    );
    // the relay holds them (sealed, durably)
    let (n, _) = relay.queued();
    assert!(n >= 1, "nothing held at the relay");

    // bob comes back: all five, in order, once
    let mut lb = bob.listen_relays(&["r1"]);
    let got = lb.messages(5, Duration::from_secs(30));
    assert_exact_in_order(&got, &msgs, "alice");
    assert!(
        lb.messages(1, Duration::from_secs(2)).is_empty(),
        "a repeat"
    );
    let stored = bob.inbox_rows();
    assert_eq!(
        stored,
        msgs.iter()
            .enumerate()
            .map(|(i, t)| (i as u64 + 1, t.clone()))
            .collect::<Vec<_>>()
    );
    // bob's ack is sealed for alice; the envelopes that carried the messages are deleted
    assert!(
        eventually(Duration::from_secs(10), || relay.queued().0 == 1),
        "the relay should hold only bob's ack envelope for alice, holds {:?}",
        relay.queued()
    );
    // alice still counts them as queued (a relay's ACK is not a receipt) ...
    assert!(alice.outbox_rows().iter().all(|(_, st, _)| st == "queued"));
    // ... until she hears bob's ack. bob leaves first, so only his sealed ack envelope can
    // tell her: she comes to the relay and her outbox empties
    assert_eq!(lb.terminate(), Some(0));
    let la = alice.listen_relays(&["r1"]);
    assert!(
        eventually(Duration::from_secs(20), || alice.outbox_rows().is_empty()),
        "alice's outbox still holds {:?}",
        alice.outbox_rows()
    );
    assert!(
        eventually(Duration::from_secs(10), || relay.queued().0 == 0),
        "the relay still holds {:?}",
        relay.queued()
    );
    assert_eq!(la.terminate(), Some(0));
    // a later listen by bob shows nothing again
    let mut lb = bob.listen_relays(&["r1"]);
    assert!(lb.messages(1, Duration::from_secs(2)).is_empty());
    assert_eq!(bob.inbox_rows().len(), 5);
}

#[test]
fn relay_killed_mid_call_loses_and_doubles_nothing() {
    let mut relay = RelayProc::start(&[]);
    let (alice, bob) = pair_at_relay(&relay, "alice", "bob");
    let mut lb = bob.listen_relays(&["r1"]);
    relay.wait_subscriptions(10);
    let msgs = texts("through a crash", 300);
    let mut call = alice.spawn_stdin(&["call", "bob", "--relay", "r1", "--timeout", "60"]);
    call.write_lines(&msgs[..150]);
    let first = lb.messages(30, Duration::from_secs(60));
    assert_eq!(first.len(), 30, "the call started");
    relay.kill9();
    std::thread::sleep(Duration::from_millis(300));
    relay.restart();
    call.write_lines(&msgs[150..]);
    let out = call.finish(Duration::from_secs(120));
    assert_ok(&out, "call across a relay crash");
    // the second half really went through the restarted relay
    assert!(
        relay.metric("liaison_relay_forwarded_total").unwrap_or(0) > 0,
        "nothing forwarded after the restart"
    );
    // bob's running listener showed every message exactly once, in order
    let rest = lb.messages(300 - first.len(), Duration::from_secs(20));
    let mut shown = first;
    shown.extend(rest);
    assert_exact_in_order(&shown, &msgs, "alice");
    assert!(
        lb.messages(1, Duration::from_secs(2)).is_empty(),
        "a repeat"
    );
    let stored = bob.inbox_rows();
    assert_eq!(stored.len(), 300);
    assert!(
        stored
            .iter()
            .enumerate()
            .all(|(i, (s, t))| *s == i as u64 + 1 && *t == msgs[i])
    );
    assert!(alice.outbox_rows().is_empty());
    assert_eq!(lb.terminate(), Some(0));
    assert_eq!(
        relay.terminate(),
        Some(0),
        "the restarted relay drains and exits 0"
    );
    // a relay that goes and comes back within a minute does not grow the log: bob's log
    // records his first connection and one loss, not every reconnection
    let shown = json(&bob.run(&["audit", "show", "--json"]));
    let relay_kinds: Vec<&str> = shown
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["event"] == "relay_event")
        .filter_map(|e| e["kind"].as_str())
        .filter(|k| *k == "connected" || *k == "disconnected")
        .collect();
    assert_eq!(
        relay_kinds,
        ["connected", "disconnected"],
        "{relay_kinds:?}"
    );
}

#[test]
fn no_plaintext_reaches_the_relay_store_or_its_output() {
    const MARKER: &str = "PLAINTEXT-MARKER-4b1d9e";
    // debug logging at the relay: not even its most verbose log may carry plaintext
    let mut relay = RelayProc::start_with_env(&[], &[("RUST_LOG", "debug")]);
    let (alice, bob) = pair_at_relay(&relay, "alice", "bob");
    // queued: sealed envelopes held while bob is away
    for i in 0..2 {
        let out = alice.run(&[
            "send",
            "bob",
            &format!("{MARKER} queued {i}"),
            "--relay",
            "r1",
            "--json",
        ]);
        assert_ok(&out, "queued send");
        assert_eq!(json(&out)["status"], "queued");
    }
    assert!(relay.queued().0 >= 1, "envelopes are held");
    assert!(
        files_containing(&[&relay.home, &relay.store, &relay.logs], MARKER.as_bytes()).is_empty()
    );
    // live: bob back, then a send and a call with the marker
    let mut lb = bob.listen_relays(&["r1"]);
    assert_eq!(lb.messages(2, Duration::from_secs(30)).len(), 2);
    relay.wait_subscriptions(10);
    let out = alice.run(&["send", "bob", &format!("{MARKER} live"), "--relay", "r1"]);
    assert_ok(&out, "live send");
    let lines: Vec<String> = (0..10).map(|i| format!("{MARKER} call {i}")).collect();
    let out = alice.run_stdin(
        &["call", "bob", "--relay", "r1", "--timeout", "30"],
        &(lines.join("\n") + "\n"),
    );
    assert_ok(&out, "call");
    let got = lb.messages(11, Duration::from_secs(30));
    assert_eq!(got.len(), 11);
    assert!(
        got.iter()
            .all(|m| { m["text"].as_str().is_some_and(|t| t.starts_with(MARKER)) })
    );
    // bob's reply to alice's absent node is sealed at the relay too
    assert_eq!(lb.terminate(), Some(0));
    let out = bob.run(&[
        "send",
        "alice",
        &format!("{MARKER} reply"),
        "--relay",
        "r1",
        "--json",
    ]);
    assert_ok(&out, "reply queued for alice");
    assert_eq!(json(&out)["status"], "queued");
    assert_eq!(relay.terminate(), Some(0));
    let hits = files_containing(&[&relay.home, &relay.store, &relay.logs], MARKER.as_bytes());
    assert!(hits.is_empty(), "plaintext marker found in {hits:?}");
    // the nodes' homes keep bodies encrypted at rest as well
    let hits = files_containing(&[&alice.home, &bob.home], MARKER.as_bytes());
    assert!(hits.is_empty(), "plaintext marker found in {hits:?}");
    // and the relay's logs did log (so the check above looked at something)
    assert!(relay.stderr_text().len() > 100, "{}", relay.stderr_text());
}

/// xorshift64*: deterministic garbage without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let r = self.next().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

#[test]
fn twenty_thousand_random_datagrams_do_not_take_the_relay_down() {
    let mut relay = RelayProc::start(&[]);
    let (alice, bob) = pair_at_relay(&relay, "alice", "bob");
    // carol will open a new line through the relay after the flood
    let carol = Node::new("carol");
    carol.relay_add("r1", &relay.card);
    carol.pin_via_relay(&bob, "r1");
    bob.pin_via_relay(&carol, "r1");
    let mut lb = bob.listen_relays(&["r1"]);
    relay.wait_subscriptions(20);
    let out = alice.run(&["send", "bob", "before the flood", "--relay", "r1", "--json"]);
    assert_eq!(json(&out)["status"], "delivered", "{}", stderr(&out));

    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let target: std::net::SocketAddr = relay.addr.parse().expect("relay addr");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut buf = vec![0u8; 1500];
    let started = Instant::now();
    for i in 0..20_000u32 {
        let len = 1 + (rng.next() % 1400) as usize;
        let d = &mut buf[..len];
        rng.fill(d);
        // a third look like QUIC v1 long headers (Initial, 0-RTT, Handshake, Retry) and a
        // third like short headers, so they get past the first byte of parsing
        match i % 3 {
            0 if len >= 5 => {
                d[0] = 0xc0 | (d[0] & 0x3f);
                d[1..5].copy_from_slice(&1u32.to_be_bytes());
            }
            1 => d[0] = 0x40 | (d[0] & 0x3f),
            _ => {}
        }
        let _ = sock.send_to(d, target);
        if i % 200 == 199 {
            // let the relay's socket buffer drain now and then, so most are really read
            std::thread::sleep(Duration::from_millis(3));
        }
    }
    eprintln!("20,000 datagrams sent in {:?}", started.elapsed());
    assert!(relay.alive(), "the relay died: {}", relay.stderr_text());

    // the live line still works, and a new line through the relay too
    let out = alice.run(&["send", "bob", "after the flood", "--relay", "r1", "--json"]);
    assert_ok(&out, "send after the flood");
    assert_eq!(json(&out)["status"], "delivered");
    let got = lb.messages(2, Duration::from_secs(20));
    assert_exact_in_order(
        &got,
        &["before the flood".into(), "after the flood".into()],
        "alice",
    );
    let out = carol.run(&["send", "bob", "new line", "--relay", "r1", "--json"]);
    assert_ok(&out, "a new line after the flood");
    assert_eq!(json(&out)["status"], "delivered");
    assert_exact_in_order(
        &lb.messages(1, Duration::from_secs(20)),
        &["new line".into()],
        "carol",
    );
    assert!(relay.alive());
    assert_eq!(lb.terminate(), Some(0));
    assert_eq!(relay.terminate(), Some(0));
}

#[test]
fn hop_key_not_on_the_allow_list_is_refused_until_listed() {
    // the nodes make their hop keys for the relay when they pin its card, so the relay starts
    // with an empty list; the operator then writes the hashes and sends SIGHUP
    let dir = tempfile::tempdir().expect("tempdir");
    let allow = dir.path().join("allow");
    std::fs::write(&allow, "# nobody yet\n").expect("allow file");
    let allow_s = allow.to_str().expect("utf8 path").to_string();
    let relay = RelayProc::start(&["--allow", &allow_s]);
    let alice = Node::new("alice");
    let bob = Node::new("bob");
    let _alice_hash = alice.relay_add("r1", &relay.card);
    let bob_hash = bob.relay_add("r1", &relay.card);
    alice.pin_via_relay(&bob, "r1");
    bob.pin_via_relay(&alice, "r1");
    // `relay list --json` reports the same hash `relay add` printed
    let list = json(&alice.run(&["relay", "list", "--json"]));
    let alice_hash = list[0]["hop_key_hash"].as_str().expect("hash").to_string();
    assert_eq!(alice_hash, _alice_hash);
    assert_eq!(alice_hash.len(), 64);

    std::fs::write(&allow, format!("# bob\n{bob_hash}   # bob's laptop\n")).expect("allow");
    relay.signal(Signal::SIGHUP);
    assert!(
        relay.wait_stderr("allow list reloaded", Duration::from_secs(10)),
        "{}",
        relay.stderr_text()
    );
    let mut lb = bob.listen_relays(&["r1"]);
    relay.wait_subscriptions(10);

    // alice is not listed: refused at the TLS handshake, a clear error, exit 3 (her key was
    // refused), the message stays pending in her outbox
    let t0 = Instant::now();
    let out = alice.run(&[
        "send",
        "bob",
        "let me in",
        "--relay",
        "r1",
        "--json",
        "--timeout",
        "20",
    ]);
    let took = t0.elapsed();
    assert_code(&out, 3, "send with a hop key not on the allow list");
    assert_eq!(json(&out)["status"], "pending");
    let err = stderr(&out);
    assert!(
        err.contains("refused this node's hop key") && err.contains(&alice_hash),
        "says what failed and what to do: {err}"
    );
    assert!(
        took < Duration::from_secs(15),
        "refused at once, took {took:?}"
    );
    eprintln!("refused in {took:?}: {err}");
    let ob = alice.outbox_rows();
    assert_eq!(ob.len(), 1);
    assert_eq!(ob[0].1, "pending");
    assert!(lb.messages(1, Duration::from_secs(1)).is_empty());

    // the operator adds her hash and sends SIGHUP: now the line works, nothing lost
    let before = relay.stderr_text().matches("allow list reloaded").count();
    std::fs::write(
        &allow,
        format!("# bob\n{bob_hash}\n# alice\n{alice_hash}\n"),
    )
    .expect("allow");
    relay.signal(Signal::SIGHUP);
    assert!(
        eventually(Duration::from_secs(10), || {
            relay.stderr_text().matches("allow list reloaded").count() > before
        }),
        "{}",
        relay.stderr_text()
    );
    let out = alice.run(&["send", "bob", "thanks", "--relay", "r1", "--json"]);
    assert_ok(&out, "send once allowed");
    assert_eq!(json(&out)["status"], "delivered");
    let got = lb.messages(2, Duration::from_secs(20));
    assert_exact_in_order(&got, &["let me in".into(), "thanks".into()], "alice");
    assert!(alice.outbox_rows().is_empty());

    // a list that does not parse is refused whole; the old one stays in force
    std::fs::write(&allow, "not a hash\n").expect("allow");
    relay.signal(Signal::SIGHUP);
    assert!(
        relay.wait_stderr("NOT reloaded", Duration::from_secs(10)),
        "{}",
        relay.stderr_text()
    );
    let out = alice.run(&["send", "bob", "still in", "--relay", "r1", "--json"]);
    assert_eq!(json(&out)["status"], "delivered", "{}", stderr(&out));
}

#[test]
fn queue_quota_refuses_clearly_and_the_store_stays_bounded() {
    // 10,000 bytes per inbox: three 3,257-byte envelopes (one short message each, beside the
    // sender's current mailbox key that every envelope carries) fit, the fourth does not
    let relay = RelayProc::start(&["--max-queue-bytes", "10000"]);
    let (alice, bob) = pair_at_relay(&relay, "alice", "bob");
    let msgs = texts("over quota", 6);
    let mut statuses = Vec::new();
    for m in &msgs {
        let out = alice.run(&[
            "send",
            "bob",
            m,
            "--relay",
            "r1",
            "--json",
            "--timeout",
            "3",
        ]);
        let st = json(&out)["status"].as_str().unwrap_or("").to_string();
        match st.as_str() {
            "queued" => assert_code(&out, 0, "queued"),
            "pending" => {
                assert_code(&out, 4, "refused by the quota: not delivered");
                let err = stderr(&out);
                assert!(
                    err.contains("quota"),
                    "says the relay's quota refused: {err}"
                );
                assert!(err.contains("outbox"), "says where the message is: {err}");
            }
            other => panic!("unexpected status {other:?}: {}", stderr(&out)),
        }
        statuses.push(st);
        let (n, bytes) = relay.queued();
        assert!(
            bytes <= 10_000,
            "the queue grew past its limit: {n} / {bytes} bytes"
        );
    }
    assert_eq!(
        statuses,
        [
            "queued", "queued", "queued", "pending", "pending", "pending"
        ],
        "three fit"
    );
    let (n, bytes) = relay.queued();
    assert_eq!(n, 3, "{bytes} bytes");
    let ob = alice.outbox_rows();
    let st: Vec<&str> = ob.iter().map(|(_, s, _)| s.as_str()).collect();
    assert_eq!(
        st,
        [
            "queued", "queued", "queued", "pending", "pending", "pending"
        ]
    );

    // nothing is lost: bob comes back and gets the three held; alice's next send on a live
    // line carries the three refused ones, in order
    let mut lb = bob.listen_relays(&["r1"]);
    let got = lb.messages(3, Duration::from_secs(30));
    assert_exact_in_order(&got, &msgs[..3], "alice");
    relay.wait_subscriptions(10);
    let out = alice.run(&["send", "bob", "and now", "--relay", "r1", "--json"]);
    assert_ok(&out, "send once bob is back");
    assert_eq!(json(&out)["status"], "delivered");
    let mut all = got;
    all.extend(lb.messages(4, Duration::from_secs(20)));
    let mut want = msgs.clone();
    want.push("and now".into());
    assert_exact_in_order(&all, &want, "alice");
    assert!(alice.outbox_rows().is_empty());
}

#[test]
fn reply_to_a_peer_who_just_left_is_queued_at_the_relay() {
    let relay = RelayProc::start(&[]);
    let (alice, bob) = pair_at_relay(&relay, "alice", "bob");
    let mut lb = bob.listen_relays(&["r1"]);
    relay.wait_subscriptions(10);
    let out = alice.run(&["send", "bob", "bye for now", "--relay", "r1", "--json"]);
    assert_eq!(json(&out)["status"], "delivered", "{}", stderr(&out));
    assert_eq!(lb.messages(1, Duration::from_secs(20)).len(), 1);
    // alice's process is gone; bob's node still holds the session it made with her and
    // answers through his running listen: the relay says NO_SUBSCRIBER, so the reply must be
    // sealed and held for her (queued), not retried into the void until the session expires
    let t0 = Instant::now();
    let out = bob.run(&[
        "send",
        "alice",
        "see you",
        "--relay",
        "r1",
        "--json",
        "--timeout",
        "20",
    ]);
    assert_ok(&out, "reply to a peer who left");
    assert_eq!(json(&out)["status"], "queued", "{}", stderr(&out));
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
    // and it reaches her when she is back
    let mut la = alice.listen_relays(&["r1"]);
    assert_exact_in_order(
        &la.messages(1, Duration::from_secs(20)),
        &["see you".into()],
        "bob",
    );
}

/// Bulk through the relay: large files between two real nodes arrive intact. A relay that
/// dropped a subscriber whose queue filled (instead of slowing the poster) failed this.
#[test]
fn large_files_through_the_relay_arrive_intact() {
    let relay = RelayProc::start(&[]);
    let (alice, bob) = pair_at_relay(&relay, "alice", "bob");
    let mut lb = bob.listen_relays(&["r1"]);
    relay.wait_subscriptions(10);
    let tmp = tempfile::tempdir().expect("tmp");
    let mut sent = Vec::new();
    for i in 0..3u32 {
        let path = tmp.path().join(format!("file{i}.bin"));
        let body: Vec<u8> = (0..6 * 1024 * 1024u32)
            .map(|j| (j.wrapping_mul(2_654_435_761) >> (8 + i)) as u8)
            .collect();
        std::fs::write(&path, &body).expect("write");
        let out = alice.run(&[
            "send",
            "bob",
            "--file",
            path.to_str().expect("utf8"),
            "--relay",
            "r1",
            "--json",
            "--timeout",
            "60",
        ]);
        assert_ok(&out, "send a 6 MiB file via the relay");
        assert_eq!(json(&out)["status"], "delivered", "{}", stderr(&out));
        sent.push(body);
    }
    let got = lb.messages(3, Duration::from_secs(60));
    assert_eq!(got.len(), 3);
    for (i, (m, body)) in got.iter().zip(&sent).enumerate() {
        let id = m["id"].as_str().expect("id").to_string();
        let out_path = tmp.path().join(format!("got{i}.bin"));
        let out = bob.run(&[
            "inbox",
            "--save",
            &id,
            "--out",
            out_path.to_str().expect("utf8"),
        ]);
        assert_ok(&out, "save");
        assert!(
            std::fs::read(&out_path).expect("read") == *body,
            "file {i} altered"
        );
    }
    assert_eq!(
        relay.metric("liaison_relay_dropped_total{reason=\"slow_client\"}"),
        Some(0),
        "the relay dropped bob as a slow subscriber"
    );
}

/// Issue 9, defect 11 (in part): the same relay card could be pinned twice under two names.
/// The second name is refused (exit 3, one line naming the first), and nothing changes.
#[test]
fn one_relay_cannot_be_pinned_under_two_names() {
    let relay = RelayProc::start(&[]);
    let alice = Node::new("alice");
    alice.relay_add("r1", &relay.card);
    let keys_before = std::fs::read(alice.home.join("keys")).expect("keys");
    let out = alice.run(&["relay", "add", "again", &relay.card]);
    assert_code(&out, 3, "the same relay under a second name");
    assert!(
        stderr(&out).contains("already pinned as r1"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    let list = json(&alice.run(&["relay", "list", "--json"]));
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(
        std::fs::read(alice.home.join("keys")).expect("keys"),
        keys_before,
        "no hop key was made for the refused name"
    );
    // replacing the card under its own name still works
    let out = alice.run(&["relay", "add", "r1", &relay.card, "--replace"]);
    assert_ok(&out, "replace under the same name");
}
