//! In-memory simulation of two nodes with virtual time: sessions ([`Line`]) plus delivery
//! ([`Sender`]/[`Receiver`]) over a network that loses, duplicates, reorders and replays blobs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use liaison_proto::delivery::{FragmentOutcome, Receiver, Sender};
use liaison_proto::handshake::Tai64N;
use liaison_proto::keys::{LocalKeys, NoiseSecret, PeerKeys};
use liaison_proto::line::{Anomaly, Line, LineEvent, Received};
use liaison_wire::consts::*;
use liaison_wire::frame::{Frame, FrameWriter, Frames};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }
}

struct Node {
    line: Line,
    sender: Sender,
    receiver: Receiver,
    delivered: Vec<(u64, Vec<u8>)>,
    ack_due: bool,
    persisted_sent: Tai64N,
    persisted_acc: Tai64N,
    pending_persist: bool,
    anomalies: Vec<Anomaly>,
    unreachable: bool,
    out: Vec<Vec<u8>>,
}

fn keys(seed: u8) -> (LocalKeys, [u8; 32]) {
    let noise = NoiseSecret::from_bytes([seed; 32]);
    let public = noise.public();
    (
        LocalKeys {
            identity: [seed.wrapping_add(100); 32],
            noise,
        },
        public,
    )
}

fn peer_of(seed: u8, pairing: Option<[u8; 32]>) -> PeerKeys {
    let (l, p) = keys(seed);
    PeerKeys {
        identity: l.identity,
        noise: p,
        pairing: pairing.map(zeroize::Zeroizing::new),
    }
}

impl Node {
    fn new(me: u8, peer: PeerKeys) -> Self {
        let (local, _) = keys(me);
        Node {
            line: Line::new(local, peer, Tai64N::default(), Tai64N::default()),
            sender: Sender::new(0),
            receiver: Receiver::new(0, []),
            delivered: Vec::new(),
            ack_due: false,
            persisted_sent: Tai64N::default(),
            persisted_acc: Tai64N::default(),
            pending_persist: false,
            anomalies: Vec::new(),
            unreachable: false,
            out: Vec::new(),
        }
    }

    fn events(&mut self) {
        while let Some(ev) = self.line.poll_event() {
            match ev {
                LineEvent::PersistSentTs(t) => {
                    assert!(t > self.persisted_sent, "sent timestamps strictly increase");
                    self.persisted_sent = t;
                    self.pending_persist = true;
                }
                LineEvent::PersistAcceptedTs(t) => {
                    assert!(t > self.persisted_acc);
                    self.persisted_acc = t;
                    self.pending_persist = true;
                }
                LineEvent::Transmit(b) => {
                    if b[0] != BLOB_DATA {
                        assert!(self.pending_persist, "handshake sent before persisting ts");
                        self.pending_persist = false;
                    }
                    self.out.push(b);
                }
                LineEvent::Ready { fresh } => {
                    if fresh {
                        self.sender.rewind();
                    }
                }
                LineEvent::Unreachable => self.unreachable = true,
                LineEvent::Anomaly(a) => self.anomalies.push(a),
            }
        }
    }

    fn pump(&mut self, now: Instant, wall: Tai64N) {
        self.events();
        if (self.sender.has_pending() || self.ack_due) && self.line.is_ready(now) {
            loop {
                let mut w = FrameWriter::default();
                if self.ack_due {
                    w.ack(self.receiver.delivered_upto());
                }
                let n = self.sender.fill(now, &mut w);
                if n == 0 && !self.ack_due {
                    break;
                }
                self.ack_due = false;
                let mut blob = Vec::new();
                if self
                    .line
                    .seal(now, wall, &w.finish(), n > 0, &mut blob)
                    .is_err()
                {
                    break;
                }
                self.out.push(blob);
                if !self.sender.has_pending() {
                    break;
                }
            }
        } else if self.sender.has_pending() {
            self.line.connect(now, wall);
        }
        self.events();
    }

    fn receive(&mut self, now: Instant, blob: &[u8]) {
        let mut pt = Vec::new();
        if self.line.handle_blob(now, blob, &mut pt) == Received::Plaintext {
            for f in Frames::new(&pt) {
                match f.unwrap() {
                    Frame::Msg {
                        seq,
                        frag_index,
                        frag_count,
                        chunk,
                    } => {
                        self.ack_due = true;
                        if let FragmentOutcome::Complete { seq, encoded } = self
                            .receiver
                            .on_fragment(seq, frag_index, frag_count, chunk)
                            .unwrap()
                        {
                            self.receiver.mark_stored(seq);
                            self.delivered.push((seq, encoded));
                        }
                    }
                    Frame::Ack { delivered_upto } => {
                        self.sender.on_ack(now, delivered_upto);
                    }
                    _ => {}
                }
            }
        }
        self.events();
    }

    fn timers(&mut self, now: Instant, wall: Tai64N) {
        if self.line.poll_timeout().is_some_and(|t| t <= now) {
            self.line.handle_timeout(now, wall);
        }
        self.sender.handle_timeout(now);
        self.events();
    }
}

struct Net {
    rng: Rng,
    loss: u64,
    dup: u64,
    reorder: u64,
    replay: u64,
    queue: BTreeMap<(Instant, u64), (usize, Vec<u8>)>,
    seen: Vec<(usize, Vec<u8>)>,
    counter: u64,
}

impl Net {
    fn new(seed: u64, loss: u64, dup: u64, reorder: u64, replay: u64) -> Self {
        Net {
            rng: Rng(seed | 1),
            loss,
            dup,
            reorder,
            replay,
            queue: BTreeMap::new(),
            seen: Vec::new(),
            counter: 0,
        }
    }

    fn send(&mut self, now: Instant, to: usize, blob: Vec<u8>) {
        if self.rng.chance(self.loss) {
            return;
        }
        let copies = if self.rng.chance(self.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = if self.rng.chance(self.reorder) {
                Duration::from_millis(5 + self.rng.next() % 200)
            } else {
                Duration::from_millis(5)
            };
            self.counter += 1;
            self.queue
                .insert((now + delay, self.counter), (to, blob.clone()));
        }
        if self.seen.len() < 500 {
            self.seen.push((to, blob));
        }
        if self.rng.chance(self.replay) && !self.seen.is_empty() {
            let i = (self.rng.next() as usize) % self.seen.len();
            let (to, b) = self.seen[i].clone();
            self.counter += 1;
            self.queue
                .insert((now + Duration::from_millis(7), self.counter), (to, b));
        }
    }
}

fn wall_of(start: Instant, now: Instant) -> Tai64N {
    let d = now - start;
    Tai64N::from_unix(1_800_000_000 + d.as_secs(), d.subsec_nanos())
}

/// Runs until both nodes delivered what the other sent, or `limit` virtual time passes.
fn run(nodes: &mut [Node; 2], net: &mut Net, start: Instant, limit: Duration) -> Instant {
    let mut now = start;
    let want = [
        nodes[1].sender.unacked_count(),
        nodes[0].sender.unacked_count(),
    ];
    let _ = want;
    while now < start + limit {
        for (i, n) in nodes.iter_mut().enumerate() {
            n.timers(now, wall_of(start, now));
            n.pump(now, wall_of(start, now));
            for b in n.out.drain(..) {
                net.send(now, 1 - i, b);
            }
        }
        let done = nodes.iter().all(|n| n.sender.unacked_count() == 0);
        if done && net.queue.is_empty() {
            break;
        }
        // advance to the next network arrival or by 10 ms
        let next = net
            .queue
            .keys()
            .next()
            .map(|k| k.0)
            .unwrap_or(now + Duration::from_millis(10));
        now = next
            .max(now + Duration::from_micros(1))
            .min(now + Duration::from_millis(10));
        let due: Vec<_> = net
            .queue
            .range(..(now, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for k in due {
            if let Some((to, b)) = net.queue.remove(&k) {
                nodes[to].receive(now, &b);
            }
        }
    }
    now
}

fn pair(pairing: Option<[u8; 32]>) -> [Node; 2] {
    [
        Node::new(1, peer_of(2, pairing)),
        Node::new(2, peer_of(1, pairing)),
    ]
}

fn push_msgs(n: &mut Node, count: usize, size: usize, tag: u8) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let body: Vec<u8> = (0..size).map(|j| (i + j) as u8 ^ tag).collect();
            n.sender.push(i as u64 + 1, Arc::from(body.clone()));
            body
        })
        .collect()
}

fn assert_exactly_once(n: &Node, sent: &[Vec<u8>]) {
    let mut d = n.delivered.clone();
    let seqs: Vec<u64> = d.iter().map(|x| x.0).collect();
    let mut dedup = seqs.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(seqs.len(), dedup.len(), "a message was delivered twice");
    d.sort_by_key(|x| x.0);
    assert_eq!(d.len(), sent.len(), "not every message arrived");
    for (i, (seq, body)) in d.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1);
        assert_eq!(body, &sent[i]);
    }
}

#[test]
fn clean_exchange_both_ways() {
    let start = Instant::now();
    let mut nodes = pair(None);
    let a = push_msgs(&mut nodes[0], 50, 300, 1);
    let b = push_msgs(&mut nodes[1], 20, 70_000, 2);
    let mut net = Net::new(7, 0, 0, 0, 0);
    run(&mut nodes, &mut net, start, Duration::from_secs(30));
    assert_exactly_once(&nodes[1], &a);
    assert_exactly_once(&nodes[0], &b);
    assert!(nodes[0].anomalies.is_empty() && nodes[1].anomalies.is_empty());
    // both started at once: simultaneous initiation resolves to sessions both can use
    assert!(nodes[0].line.is_ready(start + Duration::from_secs(1)));
}

#[test]
fn loss_duplicates_reordering_and_replays() {
    for seed in 1..6u64 {
        let start = Instant::now();
        let mut nodes = pair(Some([9; 32]));
        let a = push_msgs(&mut nodes[0], 40, 1000, 3);
        let b = push_msgs(&mut nodes[1], 5, 150_000, 4);
        let mut net = Net::new(seed * 7919, 20, 15, 30, 10);
        run(&mut nodes, &mut net, start, Duration::from_secs(600));
        assert_exactly_once(&nodes[1], &a);
        assert_exactly_once(&nodes[0], &b);
    }
}

#[test]
fn rekey_in_the_middle_of_a_stream() {
    let start = Instant::now();
    let mut nodes = pair(None);
    let mut net = Net::new(11, 0, 0, 0, 0);
    // a first batch establishes the session
    let first = push_msgs(&mut nodes[0], 10, 500, 5);
    let t = run(&mut nodes, &mut net, start, Duration::from_secs(10));
    assert_exactly_once(&nodes[1], &first);
    let hh1 = nodes[0].line.current_handshake_hash(t).unwrap();
    // keep sending over 5 virtual minutes: sessions are replaced by fresh handshakes and
    // nothing is lost or doubled across the switch
    let mut sent = first.clone();
    let mut now = t;
    for round in 0..30u64 {
        now += Duration::from_secs(10);
        let seq0 = sent.len() as u64;
        for i in 0..5u64 {
            let body = vec![(round * 5 + i) as u8; 2000];
            nodes[0].sender.push(seq0 + i + 1, Arc::from(body.clone()));
            sent.push(body);
        }
        now = run(&mut nodes, &mut net, now, Duration::from_secs(5));
    }
    assert_exactly_once(&nodes[1], &sent);
    let hh2 = nodes[0].line.current_handshake_hash(now).unwrap();
    assert_ne!(hh1, hh2, "the session was rekeyed");
    assert!(nodes[0].line.session_count() <= MAX_SESSIONS_PER_CONTACT);
    assert!(
        nodes[1]
            .anomalies
            .iter()
            .all(|a| *a == Anomaly::UnknownIndex),
        "{:?}",
        nodes[1].anomalies
    );
}

#[test]
fn wrong_static_key_gets_no_answer() {
    let start = Instant::now();
    // node 0 believes the peer's static is that of seed 3; node 1 (seed 2) pinned node 0 right
    let mut nodes = [
        Node::new(1, peer_of(3, None)),
        Node::new(2, peer_of(1, None)),
    ];
    let _ = push_msgs(&mut nodes[0], 3, 100, 6);
    let mut net = Net::new(5, 0, 0, 0, 0);
    run(&mut nodes, &mut net, start, Duration::from_secs(120));
    assert!(nodes[1].delivered.is_empty());
    assert!(nodes[1].anomalies.contains(&Anomaly::BadHandshake));
    assert!(
        nodes[0].unreachable,
        "initiator gives up after REKEY_ATTEMPT_TIME"
    );
    assert!(!nodes[0].line.is_ready(start + Duration::from_secs(120)));
    // a stranger whose key node 1 never pinned is refused the same way
    let mut stranger = [
        Node::new(4, peer_of(2, None)),
        Node::new(2, peer_of(1, None)),
    ];
    let _ = push_msgs(&mut stranger[0], 1, 10, 7);
    run(
        &mut stranger,
        &mut Net::new(3, 0, 0, 0, 0),
        start,
        Duration::from_secs(10),
    );
    assert!(stranger[1].delivered.is_empty());
    assert!(stranger[1].anomalies.contains(&Anomaly::BadHandshake));
}

#[test]
fn replayed_handshake_is_refused_after_restart() {
    let start = Instant::now();
    let mut nodes = pair(None);
    let a = push_msgs(&mut nodes[0], 2, 10, 8);
    let mut net = Net::new(13, 0, 0, 0, 0);
    let t = run(&mut nodes, &mut net, start, Duration::from_secs(5));
    assert_exactly_once(&nodes[1], &a);
    let init = net
        .seen
        .iter()
        .find(|(to, b)| *to == 1 && b[0] == BLOB_HS_INIT)
        .unwrap()
        .1
        .clone();
    // the responder restarts: sessions are gone, the accepted timestamp was persisted
    let acc = nodes[1].persisted_acc;
    let (local, _) = keys(2);
    let mut restarted = Line::new(local, peer_of(1, None), Tai64N::default(), acc);
    let mut pt = Vec::new();
    assert_eq!(restarted.handle_blob(t, &init, &mut pt), Received::Nothing);
    let evs: Vec<_> = std::iter::from_fn(|| restarted.poll_event()).collect();
    assert_eq!(evs, vec![LineEvent::Anomaly(Anomaly::ReplayedHandshake)]);
    // and with the timestamp forgotten it would have been answered: the check is what refuses
    let (local, _) = keys(2);
    let mut naive = Line::new(
        local,
        peer_of(1, None),
        Tai64N::default(),
        Tai64N::default(),
    );
    naive.handle_blob(t, &init, &mut pt);
    assert!(std::iter::from_fn(|| naive.poll_event()).any(|e| matches!(e, LineEvent::Transmit(_))));
}

#[test]
fn tampered_blobs_are_rejected_never_shown() {
    let start = Instant::now();
    let mut nodes = pair(None);
    let a = push_msgs(&mut nodes[0], 5, 100, 9);
    let mut net = Net::new(17, 0, 0, 0, 0);
    let t = run(&mut nodes, &mut net, start, Duration::from_secs(5));
    assert_exactly_once(&nodes[1], &a);
    let data = net
        .seen
        .iter()
        .find(|(to, b)| *to == 1 && b[0] == BLOB_DATA && b.len() > 100)
        .unwrap()
        .1
        .clone();
    for pos in [1usize, 6, 13, 20, data.len() - 1] {
        let mut bad = data.clone();
        bad[pos] ^= 0x40;
        let mut pt = Vec::new();
        assert_eq!(
            nodes[1].line.handle_blob(t, &bad, &mut pt),
            Received::Nothing
        );
    }
    let evs: Vec<_> = std::iter::from_fn(|| nodes[1].line.poll_event()).collect();
    assert_eq!(evs.len(), 5);
    assert!(evs.iter().all(|e| matches!(
        e,
        LineEvent::Anomaly(Anomaly::BadData | Anomaly::UnknownIndex | Anomaly::ReplayedData)
    )));
    // the untouched blob is a replay now
    let mut pt = Vec::new();
    assert_eq!(
        nodes[1].line.handle_blob(t, &data, &mut pt),
        Received::Nothing
    );
}

#[test]
fn handshake_flood_is_rate_limited() {
    let start = Instant::now();
    let (local, _) = keys(2);
    let mut responder = Line::new(
        local,
        peer_of(1, None),
        Tai64N::default(),
        Tai64N::default(),
    );
    let (ilocal, _) = keys(1);
    let mut inits = Vec::new();
    for i in 0..60u64 {
        let mut l = Line::new(
            ilocal.clone(),
            peer_of(2, None),
            Tai64N::default(),
            Tai64N::default(),
        );
        l.connect(start, Tai64N::from_unix(1_800_000_000 + i, 0));
        while let Some(e) = l.poll_event() {
            if let LineEvent::Transmit(b) = e {
                inits.push(b);
            }
        }
    }
    let mut pt = Vec::new();
    for b in &inits {
        responder.handle_blob(start, b, &mut pt);
    }
    let evs: Vec<_> = std::iter::from_fn(|| responder.poll_event()).collect();
    let answered = evs
        .iter()
        .filter(|e| matches!(e, LineEvent::Transmit(_)))
        .count();
    let flood = evs
        .iter()
        .filter(|e| **e == LineEvent::Anomaly(Anomaly::HandshakeFlood))
        .count();
    assert_eq!(answered, MAX_HS_INIT_PER_SEC as usize);
    assert_eq!(flood, 60 - MAX_HS_INIT_PER_SEC as usize);
    assert!(responder.session_count() <= MAX_SESSIONS_PER_CONTACT);
}

#[test]
fn pairing_secret_mismatch_fails_the_handshake() {
    let start = Instant::now();
    let mut nodes = [
        Node::new(1, peer_of(2, Some([1; 32]))),
        Node::new(2, peer_of(1, Some([2; 32]))),
    ];
    let _ = push_msgs(&mut nodes[0], 1, 10, 1);
    run(
        &mut nodes,
        &mut Net::new(19, 0, 0, 0, 0),
        start,
        Duration::from_secs(20),
    );
    assert!(nodes[1].delivered.is_empty());
    assert!(nodes[0].anomalies.contains(&Anomaly::BadHandshake));
}

fn close_blob(n: &mut Node, now: Instant, wall: Tai64N) -> Vec<u8> {
    let mut w = FrameWriter::default();
    assert!(w.raw(FRAME_CLOSE, &[0]));
    let mut blob = Vec::new();
    n.line
        .seal(now, wall, &w.finish(), false, &mut blob)
        .unwrap();
    blob
}

fn close_of(n: &mut Node, now: Instant, blob: &[u8]) -> Option<u32> {
    let mut pt = Vec::new();
    if n.line.handle_blob(now, blob, &mut pt) != Received::Plaintext {
        return None;
    }
    let closes = Frames::new(&pt)
        .filter(|f| matches!(f, Ok(Frame::Close { reason: 0 })))
        .count();
    assert_eq!(closes, 1);
    Some(u32::from_le_bytes(blob[1..5].try_into().unwrap()))
}

#[test]
fn peer_close_ends_its_session_but_never_a_newer_one() {
    let start = Instant::now();
    let mut nodes = pair(None);
    let mut net = Net::new(17, 0, 0, 0, 0);
    let first = push_msgs(&mut nodes[0], 3, 100, 1);
    let t = run(&mut nodes, &mut net, start, Duration::from_secs(10));
    assert_exactly_once(&nodes[1], &first);
    assert!(nodes[1].line.is_ready(t));

    // node 0 says bye on the first session, but the blob is held back (a relay may delay it)
    let old_bye = close_blob(&mut nodes[0], t, wall_of(start, t));
    // node 0 comes back with a fresh session (a new call) and sends on it
    nodes[0].line.rehandshake(t, wall_of(start, t));
    nodes[0].events();
    for b in nodes[0].out.drain(..) {
        net.send(t, 1, b);
    }
    let mut sent = first.clone();
    for i in 0..3u64 {
        let body = vec![i as u8; 50];
        nodes[0].sender.push(4 + i, Arc::from(body.clone()));
        sent.push(body);
    }
    let t = run(&mut nodes, &mut net, t, Duration::from_secs(10));
    assert_exactly_once(&nodes[1], &sent);
    let newer = nodes[1].line.current_handshake_hash(t).unwrap();

    // the delayed bye ends the old session only: the newer one keeps working
    let idx = close_of(&mut nodes[1], t, &old_bye).expect("authentic close");
    assert!(
        !nodes[1].line.peer_closed(t, idx),
        "the newer session stays"
    );
    assert_eq!(nodes[1].line.current_handshake_hash(t), Some(newer));

    // a bye on the current session ends it
    let bye = close_blob(&mut nodes[0], t, wall_of(start, t));
    let idx = close_of(&mut nodes[1], t, &bye).expect("authentic close");
    assert!(nodes[1].line.peer_closed(t, idx), "no session left");
    assert!(!nodes[1].line.is_ready(t));
    assert_eq!(nodes[1].line.session_count(), 0);

    // an unknown index closes nothing
    assert!(nodes[0].line.is_ready(t));
    assert!(!nodes[0].line.peer_closed(t, 0xdead_beef));
}
