//! A relay that lies: a stand-in written here with `liaison_hop` (pinned TLS, a relay card
//! signed like a real relay's) that speaks the relay framing correctly — HELLO→READY,
//! SUBSCRIBE, POST→DELIVER or ERR NO_SUBSCRIBER, store = 1 → ACK — but flips bytes in, drops,
//! replays, misdirects or reorders the blobs it forwards. Two real `liaison` processes talk
//! through it. Whatever it does, the receiver never shows altered text, never shows a message
//! twice, shows them in order, and every message still arrives (the ends retransmit and
//! re-handshake) or the sender reports it pending — never delivered when it was not.

use crate::harness::*;
use liaison_hop::{ClientPins, HopKey, HopLimits};
use liaison_wire::consts::PROTOCOL_VERSION;
use liaison_wire::hop::{EnvelopeId, HopFrame, InboxId, err, inboxes};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What the stand-in does to the blobs it forwards (to live subscribers, and when it replays
/// stored envelopes on SUBSCRIBE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Misbehave {
    /// Forwards every blob as posted.
    Honest,
    /// Flips one bit at a random position of every `n`th blob (the original is not sent).
    Flip(u64),
    /// Drops every `n`th blob.
    Drop(u64),
    /// Sends every other blob twice; every `n`th post also replays a random earlier blob of
    /// the same inbox and delivers the new one to every other inbox's subscribers as well.
    Replay(u64),
    /// Holds a blob until the next one for the same inbox and sends them swapped (a held blob
    /// is let go after 300 ms).
    Reorder,
    /// Stored envelopes, on every SUBSCRIBE: newest first, each as a bit-flipped copy, the
    /// original and the original again; envelopes of other inboxes misdirected to this one;
    /// and nothing is ever deleted (acknowledged envelopes are replayed forever).
    EnvelopeChaos,
}

#[derive(Debug, Default)]
struct Stats {
    forwarded: AtomicU64,
    flipped: AtomicU64,
    dropped: AtomicU64,
    replayed: AtomicU64,
    reordered: AtomicU64,
    no_subscriber: AtomicU64,
    stored: AtomicU64,
}

impl Stats {
    fn get(&self, c: &AtomicU64) -> u64 {
        let _ = self;
        c.load(Ordering::Relaxed)
    }
}

type Tx = mpsc::Sender<Vec<u8>>;

struct State {
    mode: Misbehave,
    rng: u64,
    count: u64,
    subs: HashMap<InboxId, Vec<(u64, Tx)>>,
    /// Stored envelopes, oldest first.
    stored: Vec<(InboxId, EnvelopeId, Vec<u8>)>,
    /// Blobs forwarded per inbox (for replays).
    history: HashMap<InboxId, Vec<(EnvelopeId, Vec<u8>)>>,
    held: HashMap<InboxId, (Instant, EnvelopeId, Vec<u8>)>,
    stats: Arc<Stats>,
}

impl State {
    fn rand(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn flipped(&mut self, blob: &[u8]) -> Vec<u8> {
        let mut b = blob.to_vec();
        let pos = (self.rand() % b.len() as u64) as usize;
        let bit = (self.rand() % 8) as u32;
        b[pos] ^= 1 << bit;
        self.stats.flipped.fetch_add(1, Ordering::Relaxed);
        b
    }

    /// Sends `DELIVER(inbox, id, blob)` to the live subscribers of `inbox`.
    fn deliver(&mut self, inbox: InboxId, id: EnvelopeId, blob: &[u8]) {
        let frame = HopFrame::Deliver {
            inbox,
            envelope_id: id,
            blob,
        }
        .to_vec();
        if let Some(subs) = self.subs.get_mut(&inbox) {
            subs.retain(|(_, tx)| !tx.is_closed());
            for (_, tx) in subs.iter() {
                // a full queue loses the blob, like the network would
                let _ = tx.try_send(frame.clone());
            }
        }
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
    }

    /// Forwards a blob the way this relay misbehaves.
    fn forward(&mut self, inbox: InboxId, id: EnvelopeId, blob: Vec<u8>) {
        self.count += 1;
        let n = self.count;
        match self.mode {
            Misbehave::Honest | Misbehave::EnvelopeChaos => self.deliver(inbox, id, &blob),
            Misbehave::Flip(every) => {
                if n.is_multiple_of(every) {
                    let b = self.flipped(&blob);
                    self.deliver(inbox, id, &b);
                } else {
                    self.deliver(inbox, id, &blob);
                }
            }
            Misbehave::Drop(every) => {
                if n.is_multiple_of(every) {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.deliver(inbox, id, &blob);
                }
            }
            Misbehave::Replay(every) => {
                self.deliver(inbox, id, &blob);
                if n.is_multiple_of(2) {
                    self.deliver(inbox, id, &blob);
                    self.stats.replayed.fetch_add(1, Ordering::Relaxed);
                }
                if n.is_multiple_of(every) {
                    let old = self
                        .history
                        .get(&inbox)
                        .and_then(|h| if h.is_empty() { None } else { Some(h.len()) });
                    if let Some(len) = old {
                        let i = (self.rand() % len as u64) as usize;
                        let (oid, ob) = self.history[&inbox][i].clone();
                        self.deliver(inbox, oid, &ob);
                        self.stats.replayed.fetch_add(1, Ordering::Relaxed);
                    }
                    // misdirected: the other inboxes' subscribers get it too
                    let others: Vec<InboxId> =
                        self.subs.keys().filter(|k| **k != inbox).copied().collect();
                    for o in others {
                        self.deliver(o, id, &blob);
                    }
                }
                let h = self.history.entry(inbox).or_default();
                h.push((id, blob));
                if h.len() > 200 {
                    h.remove(0);
                }
            }
            Misbehave::Reorder => match self.held.remove(&inbox) {
                Some((_, hid, held)) => {
                    self.deliver(inbox, id, &blob);
                    self.deliver(inbox, hid, &held);
                    self.stats.reordered.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    self.held.insert(inbox, (Instant::now(), id, blob));
                }
            },
        }
    }

    /// Lets go of blobs held longer than 300 ms (reorder mode).
    fn release_held(&mut self) {
        let due: Vec<InboxId> = self
            .held
            .iter()
            .filter(|(_, (t, _, _))| t.elapsed() >= Duration::from_millis(300))
            .map(|(k, _)| *k)
            .collect();
        for k in due {
            if let Some((_, id, b)) = self.held.remove(&k) {
                self.deliver(k, id, &b);
            }
        }
    }

    fn subscribe(&mut self, conn: u64, tx: &Tx, ids: Vec<InboxId>) {
        for id in &ids {
            let subs = self.subs.entry(*id).or_default();
            if !subs.iter().any(|(c, _)| *c == conn) {
                subs.push((conn, tx.clone()));
            }
        }
        let mine: Vec<(InboxId, EnvelopeId, Vec<u8>)> = self
            .stored
            .iter()
            .filter(|(i, _, _)| ids.contains(i))
            .cloned()
            .collect();
        if self.mode == Misbehave::EnvelopeChaos {
            for (inbox, id, blob) in mine.into_iter().rev() {
                let bad = self.flipped(&blob);
                self.deliver(inbox, id, &bad);
                self.deliver(inbox, id, &blob);
                self.deliver(inbox, id, &blob);
                self.stats.replayed.fetch_add(1, Ordering::Relaxed);
            }
            // envelopes meant for other inboxes, delivered as if they were for this one
            let others: Vec<(EnvelopeId, Vec<u8>)> = self
                .stored
                .iter()
                .filter(|(i, _, _)| !ids.contains(i))
                .map(|(_, id, b)| (*id, b.clone()))
                .collect();
            if let Some(first) = ids.first().copied() {
                for (id, blob) in others {
                    self.deliver(first, id, &blob);
                }
            }
        } else {
            for (inbox, id, blob) in mine {
                self.forward(inbox, id, blob);
            }
        }
    }

    fn unsubscribe_conn(&mut self, conn: u64) {
        for subs in self.subs.values_mut() {
            subs.retain(|(c, _)| *c != conn);
        }
        self.subs.retain(|_, s| !s.is_empty());
    }

    /// One frame from a node; the answer (if any) goes to `tx`.
    fn handle(&mut self, conn: u64, tx: &Tx, frame: HopFrame<'_>) {
        match frame {
            HopFrame::Subscribe(ids) => {
                let ids: Vec<InboxId> = inboxes(ids).collect();
                self.subscribe(conn, tx, ids);
            }
            HopFrame::Post {
                dst,
                store: false,
                blob,
            } => {
                let live = self
                    .subs
                    .get(&dst)
                    .is_some_and(|s| s.iter().any(|(_, t)| !t.is_closed()));
                if live {
                    self.forward(dst, [0; 16], blob.to_vec());
                } else {
                    self.stats.no_subscriber.fetch_add(1, Ordering::Relaxed);
                    let reference = liaison_proto::envelope::envelope_id(blob);
                    let _ = tx.try_send(
                        HopFrame::Err {
                            code: err::NO_SUBSCRIBER,
                            reference,
                        }
                        .to_vec(),
                    );
                }
            }
            HopFrame::Post {
                dst,
                store: true,
                blob,
            } => {
                let id = liaison_proto::envelope::envelope_id(blob);
                if !self.stored.iter().any(|(i, e, _)| *i == dst && *e == id) {
                    self.stored.push((dst, id, blob.to_vec()));
                    self.stats.stored.fetch_add(1, Ordering::Relaxed);
                }
                let _ = tx.try_send(HopFrame::Ack { envelope_id: id }.to_vec());
                self.forward(dst, id, blob.to_vec());
            }
            // the chaos relay never deletes: acknowledged envelopes are replayed forever
            HopFrame::Ack { envelope_id } if self.mode != Misbehave::EnvelopeChaos => {
                self.stored.retain(|(_, e, _)| *e != envelope_id);
            }
            _ => {}
        }
    }
}

#[derive(Debug)]
struct AnyKey;

impl ClientPins for AnyKey {
    fn allows(&self, _spki: &[u8]) -> bool {
        true
    }
}

/// The stand-in, running on its own tokio runtime inside the test process.
struct EvilRelay {
    rt: Option<tokio::runtime::Runtime>,
    card: String,
    stats: Arc<Stats>,
    state: Arc<Mutex<State>>,
}

impl EvilRelay {
    fn start(mode: Misbehave, seed: u64) -> EvilRelay {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let key = HopKey::generate().expect("hop key");
        let limits = HopLimits::default();
        let cfg = liaison_hop::server_config(&key, Arc::new(AnyKey), &limits).expect("config");
        let endpoint = {
            let _g = rt.enter();
            liaison_hop::server_endpoint("127.0.0.1:0".parse().expect("addr"), cfg).expect("bind")
        };
        let addr = endpoint.local_addr().expect("local addr");
        let card = liaison_relay::card::sign_relay_card(key.seed(), &addr.to_string(), 1)
            .expect("sign card")
            .to_text()
            .expect("card text");
        let stats = Arc::new(Stats::default());
        let state = Arc::new(Mutex::new(State {
            mode,
            rng: seed | 1,
            count: 0,
            subs: HashMap::new(),
            stored: Vec::new(),
            history: HashMap::new(),
            held: HashMap::new(),
            stats: stats.clone(),
        }));
        let st = state.clone();
        let kept = state.clone();
        rt.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                st.lock().expect("state").release_held();
            }
        });
        rt.spawn(async move {
            let next_conn = Arc::new(AtomicU64::new(1));
            while let Some(incoming) = liaison_hop::accept_validated(&endpoint).await {
                let state = state.clone();
                let limits = limits.clone();
                let conn_id = next_conn.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let Ok(connecting) = incoming.accept() else {
                        return;
                    };
                    let Ok(conn) = connecting.await else { return };
                    let Ok((mut reader, mut writer)) =
                        liaison_hop::accept_stream(&conn, &limits).await
                    else {
                        return;
                    };
                    if writer
                        .send(&HopFrame::Ready {
                            version: PROTOCOL_VERSION,
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4096);
                    let w = tokio::spawn(async move {
                        while let Some(f) = rx.recv().await {
                            if writer.send_encoded(&f).await.is_err() {
                                break;
                            }
                        }
                    });
                    while let Ok(Some(frame)) = reader.next().await {
                        state.lock().expect("state").handle(conn_id, &tx, frame);
                    }
                    state.lock().expect("state").unsubscribe_conn(conn_id);
                    drop(tx);
                    w.abort();
                    drop(conn);
                });
            }
        });
        EvilRelay {
            rt: Some(rt),
            card,
            stats,
            state: kept,
        }
    }

    /// Waits (bounded) until at least `n` inbox subscriptions are held: `listen --relay`
    /// prints `listening` before its relay connection is up.
    fn wait_subscriptions(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let have: usize = self
                .state
                .lock()
                .expect("state")
                .subs
                .values()
                .map(Vec::len)
                .sum();
            if have >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{have} subscriptions, wanted {n}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn summary(&self) -> String {
        let s = &self.stats;
        format!(
            "forwarded {}, flipped {}, dropped {}, replayed {}, reordered {}, no_subscriber {}, \
             stored {}",
            s.get(&s.forwarded),
            s.get(&s.flipped),
            s.get(&s.dropped),
            s.get(&s.replayed),
            s.get(&s.reordered),
            s.get(&s.no_subscriber),
            s.get(&s.stored)
        )
    }
}

impl Drop for EvilRelay {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// alice and bob, both pinning the stand-in as `evil` and meeting there.
fn pair_at_evil(evil: &EvilRelay) -> (Node, Node) {
    let alice = Node::new("alice");
    let bob = Node::new("bob");
    alice.relay_add("evil", &evil.card);
    bob.relay_add("evil", &evil.card);
    alice.pin_via_relay(&bob, "evil");
    bob.pin_via_relay(&alice, "evil");
    (alice, bob)
}

/// alice calls bob through a misbehaving relay, one line every 25 ms; bob's listener must show
/// exactly what she sent, in order, once. Returns the stand-in (for its counters) and the
/// anomaly kinds bob's listener reported.
fn call_through(mode: Misbehave, seed: u64, n: usize) -> (EvilRelay, Vec<String>) {
    let evil = EvilRelay::start(mode, seed);
    let (alice, bob) = pair_at_evil(&evil);
    let mut lb = bob.listen_relays(&["evil"]);
    evil.wait_subscriptions(10);
    let msgs: Vec<String> = (1..=n)
        .map(|i| format!("EVIL-{mode:?}-{i:03} the quick brown fox jumps over the lazy dog"))
        .collect();
    let mut call = alice.spawn_stdin(&["call", "bob", "--relay", "evil", "--timeout", "30"]);
    for m in &msgs {
        call.write_lines(std::slice::from_ref(m));
        std::thread::sleep(Duration::from_millis(25));
    }
    let out = call.finish(Duration::from_secs(120));
    let code = out.status.code();
    let shown = lb.messages(n, Duration::from_secs(10));
    // nothing more arrives later (no repeat, no late forgery)
    let extra = lb.messages(1, Duration::from_secs(2));
    assert!(
        extra.is_empty(),
        "{mode:?}: shown again or extra: {extra:?}"
    );
    let anomalies: Vec<String> = lb
        .seen
        .iter()
        .filter(|v| v["event"] == "anomaly")
        .filter_map(|v| v["kind"].as_str().map(String::from))
        .collect();
    eprintln!(
        "{mode:?}: call exit {code:?}; {}; bob reported anomalies {anomalies:?}",
        evil.summary()
    );
    // never altered, never twice, always in order — whatever the exit code
    let k = shown.len();
    assert_exact_in_order(&shown, &msgs[..k], "alice");
    // the call does not lie: exit 0 only if every message was acknowledged, which bob shows;
    // otherwise exit 4 and the rest stays in alice's outbox with its exact text
    match code {
        Some(0) => {
            assert_eq!(k, n, "{mode:?}: exit 0 but bob showed {k} of {n}");
            assert!(alice.outbox_rows().is_empty());
        }
        Some(4) => {
            let ob = alice.outbox_rows();
            assert!(!ob.is_empty(), "exit 4 with an empty outbox");
            for (seq, _, text) in &ob {
                assert_eq!(text, &msgs[*seq as usize - 1]);
            }
            panic!(
                "{mode:?}: not every message arrived ({k} of {n} shown; {} still in the \
                 outbox): the ends must re-send through a relay that only {mode:?}s\n{}",
                ob.len(),
                stderr(&out)
            );
        }
        other => panic!("{mode:?}: call exited {other:?}: {}", stderr(&out)),
    }
    // bob's store agrees with what he was shown: each seq once, with its text. (`inbox` lists
    // by time of storage, so a message stored ahead of a gap may come before an earlier seq.)
    let mut stored = bob.inbox_rows();
    if stored.windows(2).any(|w| w[0].0 > w[1].0) {
        eprintln!("{mode:?}: `inbox --json` lists out of seq order: {stored:?}");
    }
    stored.sort();
    assert_eq!(stored.len(), n);
    assert!(
        stored
            .iter()
            .enumerate()
            .all(|(i, (s, t))| *s == i as u64 + 1 && *t == msgs[i])
    );
    // anomalies, if any were reported, name only alice; nothing else odd was shown
    for v in &lb.seen {
        if let Some(c) = v.get("contact") {
            assert_eq!(c, "alice", "{v}");
        }
    }
    assert_eq!(lb.terminate(), Some(0));
    (evil, anomalies)
}

#[test]
fn honest_stand_in_carries_a_call() {
    // the stand-in itself speaks the relay protocol well enough for a clean call
    let (evil, anomalies) = call_through(Misbehave::Honest, 1, 20);
    assert!(evil.stats.get(&evil.stats.forwarded) >= 20);
    assert!(anomalies.is_empty(), "{anomalies:?}");
}

#[test]
fn flipped_bytes_are_rejected_never_shown() {
    let (evil, anomalies) = call_through(Misbehave::Flip(4), 0x00f1_1bed, 40);
    // bob noticed (and dropped) what was altered
    assert!(!anomalies.is_empty(), "{}", evil.summary());
    assert!(
        evil.stats.get(&evil.stats.flipped) >= 5,
        "{}",
        evil.summary()
    );
}

#[test]
fn dropped_blobs_are_sent_again() {
    let (evil, _) = call_through(Misbehave::Drop(4), 0xd0d0, 40);
    assert!(
        evil.stats.get(&evil.stats.dropped) >= 5,
        "{}",
        evil.summary()
    );
}

#[test]
fn replayed_and_misdirected_blobs_are_absorbed() {
    let (evil, anomalies) = call_through(Misbehave::Replay(3), 0x5eed, 40);
    assert!(
        anomalies.iter().any(|a| a.starts_with("replayed")),
        "{anomalies:?}"
    );
    assert!(
        evil.stats.get(&evil.stats.replayed) >= 10,
        "{}",
        evil.summary()
    );
}

#[test]
fn reordered_blobs_are_shown_in_order() {
    let (evil, _) = call_through(Misbehave::Reorder, 0x0dd, 40);
    assert!(
        evil.stats.get(&evil.stats.reordered) >= 5,
        "{}",
        evil.summary()
    );
}

#[test]
fn held_envelopes_flipped_replayed_reversed_and_misdirected_are_shown_once_in_order() {
    let evil = EvilRelay::start(Misbehave::EnvelopeChaos, 0xe57e);
    let (alice, bob) = pair_at_evil(&evil);
    // bob is away: three envelopes held by the stand-in
    let msgs: Vec<String> = (1..=3).map(|i| format!("EVIL-envelope-{i}")).collect();
    for m in &msgs {
        let out = alice.run(&["send", "bob", m, "--relay", "evil", "--json"]);
        assert_ok(&out, "send to absent bob");
        assert_eq!(json(&out)["status"], "queued", "{}", stderr(&out));
    }
    assert_eq!(evil.stats.get(&evil.stats.stored), 3, "{}", evil.summary());
    // bob comes: newest first, each flipped, then twice as sent
    let mut lb = bob.listen_relays(&["evil"]);
    let got = lb.messages(3, Duration::from_secs(20));
    assert_exact_in_order(&got, &msgs, "alice");
    assert!(
        lb.messages(1, Duration::from_secs(2)).is_empty(),
        "a repeat"
    );
    // bob comes again: everything is replayed again (the stand-in never deletes), nothing shown
    assert_eq!(lb.terminate(), Some(0));
    let mut lb = bob.listen_relays(&["evil"]);
    assert!(
        lb.messages(1, Duration::from_secs(3)).is_empty(),
        "a repeat"
    );
    assert_eq!(bob.inbox_rows().len(), 3);
    assert_eq!(lb.terminate(), Some(0));
    // alice comes: bob's ack envelope (flipped, doubled) clears her outbox; her own envelopes,
    // misdirected to her, are refused (sealed to bob's key) and never shown
    let mut la = alice.listen_relays(&["evil"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !alice.outbox_rows().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        alice.outbox_rows().is_empty(),
        "alice's outbox: {:?}; {}",
        alice.outbox_rows(),
        evil.summary()
    );
    assert!(la.messages(1, Duration::from_secs(2)).is_empty());
    assert!(la.seen.iter().all(|v| v["event"] != "message"));
    assert!(alice.inbox_rows().is_empty());
    assert_eq!(la.terminate(), Some(0));
}
