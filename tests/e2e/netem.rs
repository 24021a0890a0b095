//! A user-space impairing UDP forwarder for the end-to-end tests (kernel `tc netem` is not
//! available here): it listens on `127.0.0.1:0` and forwards to a target, NAT-style (one
//! upstream socket per client address, so several clients work side by side), and impairs each
//! direction on its own: loss, duplication, reordering (a datagram held back by a random extra
//! delay), a fixed delay, and a blackhole ("cut") switched on and off by the test or scheduled
//! in advance. A cut drops everything in both directions, datagrams already in flight included,
//! as a pulled cable would.
//!
//! Decisions come from a seeded xorshift64* per flow and direction, so a run with the same seed
//! and the same arrival order makes the same decisions. Memory is bounded (flows, datagrams and
//! bytes in the delay line); every blocking call has a timeout; dropping the forwarder stops
//! and joins its threads and closes its sockets.
//!
//! Threads: one reads the listening socket (client → target), one per flow reads its upstream
//! socket (target → client), and one sends what the delay line holds when it comes due.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often a blocked socket read or an idle delay line looks at the stop flag.
const POLL: Duration = Duration::from_millis(20);
/// Largest datagram handled (UDP's maximum payload).
const MAX_DATAGRAM: usize = 65_535;

/// The impairments of one direction. Percentages are of datagrams arriving in that direction.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Impair {
    /// Datagrams dropped, %.
    pub loss_pct: f64,
    /// Datagrams (among those not lost) sent twice, %.
    pub dup_pct: f64,
    /// Datagrams (each copy on its own) held back by a random extra delay, %.
    pub reorder_pct: f64,
    /// A held-back datagram waits a uniformly random extra time in `(0, reorder_extra]`.
    pub reorder_extra: Duration,
    /// Fixed one-way delay.
    pub delay: Duration,
}

impl Impair {
    /// No impairment at all.
    pub fn none() -> Impair {
        Impair::default()
    }
    pub fn loss(mut self, pct: f64) -> Impair {
        self.loss_pct = pct;
        self
    }
    pub fn dup(mut self, pct: f64) -> Impair {
        self.dup_pct = pct;
        self
    }
    pub fn reorder(mut self, pct: f64, extra: Duration) -> Impair {
        self.reorder_pct = pct;
        self.reorder_extra = extra;
        self
    }
    pub fn delay(mut self, d: Duration) -> Impair {
        self.delay = d;
        self
    }
}

/// The forwarder's configuration.
#[derive(Debug, Clone)]
pub struct NetemConfig {
    /// Client → target.
    pub up: Impair,
    /// Target → client.
    pub down: Impair,
    /// Seed of the decisions.
    pub seed: u64,
    /// Most client addresses served at once; datagrams of further clients are dropped.
    pub max_flows: usize,
    /// Most datagrams waiting in the delay line; further ones are dropped (`overflow`).
    pub max_queued: usize,
    /// Most bytes waiting in the delay line.
    pub max_queued_bytes: usize,
}

impl NetemConfig {
    /// The same impairments both ways.
    pub fn symmetric(both: Impair, seed: u64) -> NetemConfig {
        NetemConfig {
            up: both,
            down: both,
            seed,
            max_flows: 32,
            max_queued: 16_384,
            max_queued_bytes: 32 << 20,
        }
    }
}

/// What happened to the datagrams of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirStats {
    /// Datagrams that arrived at the forwarder.
    pub received: u64,
    /// Datagrams sent on (duplicates included).
    pub passed: u64,
    /// Dropped by the loss impairment.
    pub lost: u64,
    /// Datagrams sent twice.
    pub duplicated: u64,
    /// Copies held back by an extra delay.
    pub reordered: u64,
    /// Dropped by a cut (at arrival, or in flight when it began).
    pub blackholed: u64,
    /// Dropped because the delay line was full, the client table was full, no target was
    /// set, or the send failed.
    pub overflow: u64,
}

impl DirStats {
    /// Everything dropped, for whatever reason.
    pub fn dropped(&self) -> u64 {
        self.lost + self.blackholed + self.overflow
    }
}

/// Both directions' counters and the flows seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub up: DirStats,
    pub down: DirStats,
    /// Client addresses given an upstream socket.
    pub flows: u64,
}

#[derive(Debug, Default)]
struct DirCounters {
    received: AtomicU64,
    passed: AtomicU64,
    lost: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
    blackholed: AtomicU64,
    overflow: AtomicU64,
}

impl DirCounters {
    fn snapshot(&self) -> DirStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DirStats {
            received: g(&self.received),
            passed: g(&self.passed),
            lost: g(&self.lost),
            duplicated: g(&self.duplicated),
            reordered: g(&self.reordered),
            blackholed: g(&self.blackholed),
            overflow: g(&self.overflow),
        }
    }
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Up,
    Down,
}

/// xorshift64*, seeded through splitmix64 (never zero).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Rng(if z == 0 { 1 } else { z })
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// True with probability `pct` %.
    pub fn chance(&mut self, pct: f64) -> bool {
        pct > 0.0 && self.unit() * 100.0 < pct
    }
}

/// Cuts: one switched by hand, and scheduled windows.
#[derive(Debug, Default)]
struct Cuts {
    manual_since: Option<Instant>,
    windows: Vec<(Instant, Instant)>,
    manual_ends: Vec<Instant>,
}

impl Cuts {
    fn active(&self, now: Instant) -> bool {
        self.manual_since.is_some() || self.windows.iter().any(|&(s, e)| s <= now && now < e)
    }
    fn ended(&self, now: Instant) -> Vec<Instant> {
        let mut v: Vec<Instant> = self
            .windows
            .iter()
            .filter(|&&(_, e)| e <= now)
            .map(|&(_, e)| e)
            .chain(self.manual_ends.iter().copied())
            .collect();
        v.sort();
        v
    }
}

/// A datagram in the delay line.
struct Item {
    due: Instant,
    seq: u64,
    dir: Dir,
    sock: Arc<UdpSocket>,
    to: SocketAddr,
    data: Vec<u8>,
}

impl PartialEq for Item {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Item {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(o.due, o.seq))
    }
}

#[derive(Default)]
struct DelayLine {
    heap: BinaryHeap<Reverse<Item>>,
    bytes: usize,
    seq: u64,
}

struct Shared {
    cfg: NetemConfig,
    stop: AtomicBool,
    target: Mutex<Option<SocketAddr>>,
    cuts: Mutex<Cuts>,
    up: DirCounters,
    down: DirCounters,
    flows: AtomicU64,
    line: Mutex<DelayLine>,
    wake: Condvar,
}

impl Shared {
    fn counters(&self, dir: Dir) -> &DirCounters {
        match dir {
            Dir::Up => &self.up,
            Dir::Down => &self.down,
        }
    }

    fn cut_active(&self, now: Instant) -> bool {
        self.cuts.lock().map(|c| c.active(now)).unwrap_or(false)
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Applies `dir`'s impairments to a datagram that just arrived and queues what survives.
    fn admit(&self, rng: &mut Rng, dir: Dir, data: &[u8], sock: &Arc<UdpSocket>, to: SocketAddr) {
        let now = Instant::now();
        let c = self.counters(dir);
        let imp = match dir {
            Dir::Up => self.cfg.up,
            Dir::Down => self.cfg.down,
        };
        bump(&c.received);
        if self.cut_active(now) {
            bump(&c.blackholed);
            return;
        }
        if rng.chance(imp.loss_pct) {
            bump(&c.lost);
            return;
        }
        let copies = if rng.chance(imp.dup_pct) {
            bump(&c.duplicated);
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut due = now + imp.delay;
            if rng.chance(imp.reorder_pct) {
                bump(&c.reordered);
                // strictly positive, so the copy really falls behind its successors
                let extra = imp
                    .reorder_extra
                    .mul_f64(rng.unit())
                    .max(Duration::from_micros(1));
                due += extra;
            }
            self.enqueue(due, dir, sock.clone(), to, data.to_vec());
        }
    }

    fn enqueue(&self, due: Instant, dir: Dir, sock: Arc<UdpSocket>, to: SocketAddr, data: Vec<u8>) {
        let Ok(mut line) = self.line.lock() else {
            return;
        };
        if line.heap.len() >= self.cfg.max_queued
            || line.bytes + data.len() > self.cfg.max_queued_bytes
        {
            bump(&self.counters(dir).overflow);
            return;
        }
        line.seq += 1;
        line.bytes += data.len();
        let seq = line.seq;
        line.heap.push(Reverse(Item {
            due,
            seq,
            dir,
            sock,
            to,
            data,
        }));
        drop(line);
        self.wake.notify_one();
    }
}

/// A running forwarder. Dropping it stops and joins its threads and closes its sockets.
pub struct Netem {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Netem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netem")
            .field("addr", &self.addr)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Netem {
    /// Listens on `127.0.0.1:0` and forwards to `target`.
    pub fn start(target: SocketAddr, cfg: NetemConfig) -> Netem {
        let n = Netem::start_untargeted(cfg);
        n.set_target(target);
        n
    }

    /// Listens on `127.0.0.1:0` without a target yet (datagrams are dropped as `overflow`
    /// until [`Netem::set_target`]): for a server that must learn the forwarder's address
    /// before it starts, like a relay's `--public-addr`.
    pub fn start_untargeted(cfg: NetemConfig) -> Netem {
        let front = UdpSocket::bind("127.0.0.1:0").expect("bind the forwarder");
        front.set_read_timeout(Some(POLL)).expect("read timeout");
        let addr = front.local_addr().expect("forwarder address");
        let front = Arc::new(front);
        let shared = Arc::new(Shared {
            cfg,
            stop: AtomicBool::new(false),
            target: Mutex::new(None),
            cuts: Mutex::new(Cuts::default()),
            up: DirCounters::default(),
            down: DirCounters::default(),
            flows: AtomicU64::new(0),
            line: Mutex::new(DelayLine::default()),
            wake: Condvar::new(),
        });
        let s1 = shared.clone();
        let f1 = front.clone();
        let listener = std::thread::Builder::new()
            .name("netem-front".into())
            .spawn(move || front_loop(s1, f1))
            .expect("spawn netem-front");
        let s2 = shared.clone();
        let sender = std::thread::Builder::new()
            .name("netem-delay".into())
            .spawn(move || delay_loop(s2))
            .expect("spawn netem-delay");
        Netem {
            addr,
            shared,
            threads: vec![listener, sender],
        }
    }

    /// Where clients send (`127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets (or changes) the target; new datagrams go there.
    pub fn set_target(&self, target: SocketAddr) {
        *self.shared.target.lock().expect("target") = Some(target);
    }

    /// Starts a cut now, until [`Netem::restore`].
    pub fn cut(&self) {
        let mut c = self.shared.cuts.lock().expect("cuts");
        if c.manual_since.is_none() {
            c.manual_since = Some(Instant::now());
        }
    }

    /// Ends the cut started by [`Netem::cut`]; returns when it ended.
    pub fn restore(&self) -> Instant {
        let now = Instant::now();
        let mut c = self.shared.cuts.lock().expect("cuts");
        if c.manual_since.take().is_some() {
            c.manual_ends.push(now);
        }
        now
    }

    /// Schedules a cut starting `after` from now and lasting `length`; returns (start, end).
    pub fn schedule_cut(&self, after: Duration, length: Duration) -> (Instant, Instant) {
        let start = Instant::now() + after;
        let end = start + length;
        self.shared
            .cuts
            .lock()
            .expect("cuts")
            .windows
            .push((start, end));
        (start, end)
    }

    /// True while a cut is on.
    pub fn cut_active(&self) -> bool {
        self.shared.cut_active(Instant::now())
    }

    /// When each cut that is over ended, in order.
    pub fn cut_ends(&self) -> Vec<Instant> {
        self.shared.cuts.lock().expect("cuts").ended(Instant::now())
    }

    /// When the last cut that is over ended.
    pub fn last_cut_end(&self) -> Option<Instant> {
        self.cut_ends().last().copied()
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        Stats {
            up: self.shared.up.snapshot(),
            down: self.shared.down.snapshot(),
            flows: self.shared.flows.load(Ordering::Relaxed),
        }
    }

    /// Datagrams waiting in the delay line.
    pub fn queued(&self) -> usize {
        self.shared.line.lock().map(|l| l.heap.len()).unwrap_or(0)
    }
}

impl Drop for Netem {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // the delay line holds clones of the sockets: let them go
        if let Ok(mut l) = self.shared.line.lock() {
            l.heap.clear();
            l.bytes = 0;
        }
    }
}

fn seed_for(seed: u64, flow: u64, dir: Dir) -> u64 {
    seed ^ flow.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ if dir == Dir::Down { 0xd0d0 } else { 0 }
}

struct Flow {
    upstream: Arc<UdpSocket>,
    rng: Rng,
}

/// Reads the listening socket: client → target.
fn front_loop(shared: Arc<Shared>, front: Arc<UdpSocket>) {
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut readers: Vec<JoinHandle<()>> = Vec::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    while !shared.stopping() {
        let (n, from) = match front.recv_from(&mut buf) {
            Ok(x) => x,
            Err(_) => continue, // timeout (or a transient error): look at the stop flag
        };
        let target = shared.target.lock().ok().and_then(|t| *t);
        let Some(target) = target else {
            bump(&shared.up.received);
            bump(&shared.up.overflow);
            continue;
        };
        if !flows.contains_key(&from) {
            if flows.len() >= shared.cfg.max_flows {
                bump(&shared.up.received);
                bump(&shared.up.overflow);
                continue;
            }
            let Ok(sock) = UdpSocket::bind("127.0.0.1:0") else {
                bump(&shared.up.received);
                bump(&shared.up.overflow);
                continue;
            };
            let _ = sock.set_read_timeout(Some(POLL));
            let upstream = Arc::new(sock);
            let index = shared.flows.fetch_add(1, Ordering::Relaxed);
            let (s, u, f) = (shared.clone(), upstream.clone(), front.clone());
            let rng = Rng::new(seed_for(shared.cfg.seed, index, Dir::Down));
            match std::thread::Builder::new()
                .name(format!("netem-flow-{index}"))
                .spawn(move || upstream_loop(s, u, f, from, rng))
            {
                Ok(h) => readers.push(h),
                Err(_) => {
                    bump(&shared.up.received);
                    bump(&shared.up.overflow);
                    continue;
                }
            }
            let rng = Rng::new(seed_for(shared.cfg.seed, index, Dir::Up));
            flows.insert(from, Flow { upstream, rng });
        }
        if let Some(flow) = flows.get_mut(&from) {
            let data = buf.get(..n).unwrap_or(&[]);
            shared.admit(&mut flow.rng, Dir::Up, data, &flow.upstream, target);
        }
    }
    for r in readers {
        let _ = r.join();
    }
}

/// Reads one flow's upstream socket: target → that client.
fn upstream_loop(
    shared: Arc<Shared>,
    upstream: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    mut rng: Rng,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    while !shared.stopping() {
        let Ok((n, from)) = upstream.recv_from(&mut buf) else {
            continue;
        };
        let target = shared.target.lock().ok().and_then(|t| *t);
        if target != Some(from) {
            continue; // only the target may answer through this flow
        }
        let data = buf.get(..n).unwrap_or(&[]);
        shared.admit(&mut rng, Dir::Down, data, &front, client);
    }
}

/// Sends what the delay line holds as it comes due (unless a cut began meanwhile).
fn delay_loop(shared: Arc<Shared>) {
    let mut due_now: Vec<Item> = Vec::new();
    while !shared.stopping() {
        {
            let Ok(mut line) = shared.line.lock() else {
                return;
            };
            let now = Instant::now();
            while line.heap.peek().is_some_and(|Reverse(it)| it.due <= now) {
                if let Some(Reverse(it)) = line.heap.pop() {
                    line.bytes -= it.data.len();
                    due_now.push(it);
                }
            }
            if due_now.is_empty() {
                let wait = line
                    .heap
                    .peek()
                    .map(|Reverse(it)| it.due.saturating_duration_since(now))
                    .unwrap_or(POLL)
                    .min(POLL);
                let _ = shared.wake.wait_timeout(line, wait);
                continue;
            }
        }
        let cut = shared.cut_active(Instant::now());
        for it in due_now.drain(..) {
            let c = shared.counters(it.dir);
            if cut {
                bump(&c.blackholed);
            } else if it.sock.send_to(&it.data, it.to).is_ok() {
                bump(&c.passed);
            } else {
                bump(&c.overflow);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The forwarder's own tests: a UDP echo server behind it.

/// A UDP echo server on `127.0.0.1:0`, stopped and joined on drop.
struct Echo {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    fn start() -> Echo {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind echo");
        sock.set_read_timeout(Some(POLL)).expect("timeout");
        let addr = sock.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        Echo {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A client socket whose replies are collected by a thread as (id, time received).
struct Client {
    sock: UdpSocket,
    stop: Arc<AtomicBool>,
    got: Arc<Mutex<Vec<(u32, Instant)>>>,
    thread: Option<JoinHandle<()>>,
}

impl Client {
    fn new() -> Client {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind client");
        let rx = sock.try_clone().expect("clone");
        rx.set_read_timeout(Some(POLL)).expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let got = Arc::new(Mutex::new(Vec::new()));
        let (s, g) = (stop.clone(), got.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !s.load(Ordering::Relaxed) {
                if let Ok(n) = rx.recv(&mut buf)
                    && n >= 4
                {
                    let id = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
                    g.lock().unwrap().push((id, Instant::now()));
                }
            }
        });
        Client {
            sock,
            stop,
            got,
            thread: Some(thread),
        }
    }

    /// Sends datagram `id` (padded to 32 bytes) to `to`; returns a time just before it was
    /// sent (so a round trip measured from it is never shorter than the real one).
    fn send(&self, to: SocketAddr, id: u32) -> Instant {
        let mut d = [0u8; 32];
        d[..4].copy_from_slice(&id.to_le_bytes());
        let at = Instant::now();
        self.sock.send_to(&d, to).expect("send");
        at
    }

    /// Sends ids `0..n`, paced so that no socket buffer overflows; returns the send times.
    fn send_paced(&self, to: SocketAddr, ids: std::ops::Range<u32>) -> Vec<Instant> {
        let mut at = Vec::new();
        for id in ids {
            at.push(self.send(to, id));
            // about 1,000 a second: no socket buffer overflows even on a busy machine
            if id % 2 == 1 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        at
    }

    fn got(&self) -> Vec<(u32, Instant)> {
        self.got.lock().unwrap().clone()
    }

    fn ids(&self) -> Vec<u32> {
        self.got().into_iter().map(|(i, _)| i).collect()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits (bounded) until the forwarder's delay line is empty and the replies settled.
fn settle(n: &Netem) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while n.queued() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
}

fn within(what: &str, got: u64, want: f64, tol: f64) {
    assert!(
        (got as f64 - want).abs() <= tol,
        "{what}: {got}, wanted {want} ± {tol}"
    );
}

#[test]
fn netem_loss_duplication_and_delay_behave_as_configured() {
    let echo = Echo::start();
    let delay = Duration::from_millis(40);
    let cfg = NetemConfig {
        up: Impair::none().loss(20.0).dup(5.0).delay(delay),
        down: Impair::none().delay(delay),
        ..NetemConfig::symmetric(Impair::none(), 7)
    };
    let n = Netem::start(echo.addr, cfg);
    let c = Client::new();
    const N: u32 = 1000;
    let sent_at = c.send_paced(n.addr(), 0..N);
    settle(&n);
    let st = n.stats();
    let got = c.got();
    // what the counters say holds exactly
    assert_eq!(st.up.received, u64::from(N), "{st:?}");
    assert_eq!(st.up.passed, st.up.received - st.up.lost + st.up.duplicated);
    assert_eq!(st.up.blackholed + st.up.overflow + st.up.reordered, 0);
    assert_eq!(
        st.down.received, st.up.passed,
        "the echo answers every copy"
    );
    assert_eq!(st.down.passed, st.down.received, "the way back is clean");
    assert_eq!(st.down.dropped() + st.down.duplicated, 0);
    assert_eq!(st.flows, 1);
    // and the rates are the configured ones (±5 standard deviations)
    within(
        "lost",
        st.up.lost,
        0.2 * f64::from(N),
        5.0 * (f64::from(N) * 0.2 * 0.8).sqrt(),
    );
    let kept = (N as u64 - st.up.lost) as f64;
    within(
        "duplicated",
        st.up.duplicated,
        0.05 * kept,
        5.0 * (kept * 0.05 * 0.95).sqrt(),
    );
    // what passed came back (duplicates too; loopback itself may drop a few under load)
    assert!(got.len() as u64 <= st.down.passed);
    assert!(
        got.len() as u64 * 100 >= st.down.passed * 99,
        "{} replies",
        got.len()
    );
    let mut ids: Vec<u32> = got.iter().map(|g| g.0).collect();
    ids.sort();
    ids.dedup();
    assert!(ids.len() as u64 <= N as u64 - st.up.lost);
    // the delay is applied each way: no reply comes back sooner than twice the delay
    let rtts: Vec<Duration> = got
        .iter()
        .map(|&(id, t)| t.duration_since(sent_at[id as usize]))
        .collect();
    let min = rtts.iter().min().copied().unwrap();
    let mut sorted = rtts.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    assert!(min >= 2 * delay, "a reply after {min:?}");
    assert!(
        median < 2 * delay + Duration::from_millis(150),
        "median {median:?}"
    );
    eprintln!("netem: {st:?}; rtt min {min:?} median {median:?}");
}

#[test]
fn netem_reorders_without_losing_and_is_reproducible_by_seed() {
    let echo = Echo::start();
    // reordering only: every datagram arrives once, some out of order
    let cfg = NetemConfig {
        up: Impair::none().reorder(20.0, Duration::from_millis(30)),
        down: Impair::none(),
        ..NetemConfig::symmetric(Impair::none(), 11)
    };
    let n = Netem::start(echo.addr, cfg);
    let c = Client::new();
    c.send_paced(n.addr(), 0..1000);
    settle(&n);
    let ids = c.ids();
    let st = n.stats();
    assert_eq!(st.up.passed, 1000, "{st:?}");
    assert_eq!(st.up.dropped() + st.up.duplicated, 0, "{st:?}");
    assert!(ids.len() >= 990, "{} of 1000 came back; {st:?}", ids.len());
    let inversions = ids.windows(2).filter(|w| w[0] > w[1]).count();
    assert!(inversions > 20, "only {inversions} inversions; {st:?}");
    within(
        "reordered",
        st.up.reordered,
        200.0,
        5.0 * (1000.0f64 * 0.2 * 0.8).sqrt(),
    );
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len(), "a datagram came back twice");
    assert!(sorted.iter().all(|&i| i < 1000));
    drop(n);

    // the same seed drops the same datagrams; another seed others
    let run = |seed: u64| {
        let cfg = NetemConfig {
            up: Impair::none().loss(30.0).dup(10.0),
            down: Impair::none().loss(10.0),
            ..NetemConfig::symmetric(Impair::none(), seed)
        };
        let n = Netem::start(echo.addr, cfg);
        let c = Client::new();
        c.send_paced(n.addr(), 0..600);
        settle(&n);
        let mut ids = c.ids();
        ids.sort();
        (ids, n.stats())
    };
    let (a, sa) = run(42);
    let (b, sb) = run(42);
    let (d, _) = run(43);
    assert_eq!(a, b, "same seed, different outcome: {sa:?} vs {sb:?}");
    assert_eq!(sa, sb);
    assert_ne!(a, d, "another seed, same outcome");
}

#[test]
fn netem_cuts_serve_several_clients_and_stop_cleanly() {
    let echo = Echo::start();
    let delay = Duration::from_millis(20);
    let n = Netem::start(
        echo.addr,
        NetemConfig::symmetric(Impair::none().delay(delay), 3),
    );
    let (a, b) = (Client::new(), Client::new());
    // two clients, NAT-style: each gets its own replies
    for id in 0..50 {
        a.send(n.addr(), id);
        b.send(n.addr(), 1000 + id);
    }
    settle(&n);
    let (ia, ib) = (a.ids(), b.ids());
    assert_eq!(ia, (0..50).collect::<Vec<_>>());
    assert_eq!(ib, (1000..1050).collect::<Vec<_>>());
    assert_eq!(n.stats().flows, 2);

    // a cut by hand: nothing passes, either way; then it comes back at once
    n.cut();
    assert!(n.cut_active());
    let before = n.stats();
    for id in 100..150 {
        a.send(n.addr(), id);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(a.ids().len(), 50, "replies crossed a cut");
    assert_eq!(n.stats().up.blackholed - before.up.blackholed, 50);
    let end = n.restore();
    assert!(!n.cut_active());
    assert_eq!(n.last_cut_end(), Some(end));
    a.send(n.addr(), 200);
    settle(&n);
    assert_eq!(a.ids().last(), Some(&200));

    // a scheduled cut: datagrams sent during it (or in flight when it began) are dropped,
    // those sent after it end come back after the usual delay
    let (start, end) = n.schedule_cut(Duration::from_millis(300), Duration::from_millis(400));
    let c = Client::new();
    let mut sent = Vec::new();
    let t0 = Instant::now();
    let mut id = 0;
    while t0.elapsed() < Duration::from_millis(1000) {
        let before = c.send(n.addr(), id);
        sent.push((id, before, Instant::now()));
        id += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    settle(&n);
    let ends = n.cut_ends();
    assert_eq!(ends.len(), 2, "the manual cut and the scheduled one");
    assert_eq!(ends[1], end);
    let got = c.got();
    let back: std::collections::HashSet<u32> = got.iter().map(|g| g.0).collect();
    // a datagram passes unless one of its four crossings (arrival and departure, each way)
    // falls in the cut; the margin absorbs thread scheduling on a busy machine
    let m = Duration::from_millis(25);
    let (mut before_cut, mut in_cut, mut after_cut) = (0, 0, 0);
    for &(id, before, after) in &sent {
        if after + 2 * delay + m < start || before > end + m {
            assert!(back.contains(&id), "datagram {id} lost outside the cut");
            if before < start {
                before_cut += 1;
            } else {
                after_cut += 1;
            }
        } else if before >= start + m && after + m < end {
            assert!(!back.contains(&id), "datagram {id} crossed the cut");
            in_cut += 1;
        }
    }
    assert!(before_cut > 10 && in_cut > 10 && after_cut > 10);
    let first_after = got
        .iter()
        .filter(|g| g.1 > end)
        .map(|g| g.1)
        .min()
        .expect("replies after the cut");
    assert!(
        first_after.duration_since(end) < 2 * delay + Duration::from_millis(150),
        "the first reply came {:?} after the cut",
        first_after.duration_since(end)
    );

    // dropping it joins its threads and frees its port
    let addr = n.addr();
    let t = Instant::now();
    drop(n);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "drop took {:?}",
        t.elapsed()
    );
    UdpSocket::bind(addr).expect("the forwarder's port is free again");
}
