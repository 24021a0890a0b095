//! The simulated world: virtual time, two nodes with their shells and stores, a direct link and
//! a relay (honest or hostile), the users, and the faults. One seed drives every decision.
//!
//! Time is event-driven: the queue holds every future event and time jumps to the next one,
//! so an idle line (no engine timer, no user, no fault) costs nothing however long it lasts.
//!
//! The shell here does what a node shell does with each of the engine's events (store in one
//! transaction, then answer; audit entries; group commit of the audit log every 100 ms; AUDIT
//! messages over the line), with store answers arriving after a disk delay, in order.

use crate::node::{DiskOp, Durable, Hop, Live, Node, OutRow, Sent, Status, T};
use crate::rng::Rng;
use crate::scenario::{DAY, HOUR, Hostile, MINUTE, SECOND, Scenario};
use crate::trace::Trace;
use liaison_audit::MemoryLine;
use liaison_audit::entry::{Event as AuditEvent, KeyEventKind};
use liaison_node::line::{audit_anomaly, audit_event};
use liaison_proto::conn::{Anomaly, Conn, Event, Now, PathKind, Transmit};
use liaison_proto::envelope;
use liaison_proto::identity::Identity;
use liaison_proto::mailbox_ring::MailboxRing;
use liaison_wire::consts::*;
use liaison_wire::frame::{Frame, Frames, MSG_KIND_TEXT, MessageContent, msg_digest};
use liaison_wire::hop::{EnvelopeId, HopFrame, InboxId, envelope_id, err as hop_err};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Unix time at the start of every run, milliseconds.
pub const T0_UNIX_MS: u64 = 1_800_000_000_000;
/// The simulated relay's id (SHA-256 of its key, as the shell names it).
const RELAY_ID: [u8; 32] = [0x5e; 32];
/// A QUIC hop with nothing getting through for this long is declared dead.
const HOP_IDLE: T = 30 * SECOND;
/// The audit log's group-commit period.
const COMMIT_EVERY: T = 100;
/// How long the world stays healed (no faults, everyone reachable) before the final checks.
pub const HEAL_FOR: T = 2 * HOUR;
/// After the healing period: the audit logs' last exchange.
const FINAL_FOR: T = 5 * MINUTE;
/// Most events in one run (a runaway engine is a failure, not a hang).
const MAX_EVENTS: u64 = 3_000_000;
/// Most replays and injections of a hostile relay in one run.
const MAX_HOSTILE_ACTS: u32 = 2000;
/// Most outputs (events and transmits) the engine may produce after one input.
const MAX_PUMP: usize = 20_000;

/// The node shell of `liaison-node` marks a line's audit log dirty after every AUDIT message
/// it handles, and the simulated shell does the same. With the old audit crate a cosignature's
/// `peer_checkpoint_cosigned` entry called for a new checkpoint, which the peer cosigned, and
/// so on: the logs of a line that was up grew a few entries a second. The audit log now makes
/// a checkpoint only for entries other than cosignature records, and bounds cosignatures per
/// peer (`liaison_audit::line`); `audit_cosign_loop` checks the bound with this policy.
pub const COMMIT_AFTER_AUDIT_MESSAGES: bool = true;

/// Most audit entries a node may add in one idle hour (no user action, no fault, no
/// reconnection in it or in the 10 minutes before): an idle line must not grow its log. The
/// routine entries are the daily `mailbox_key_created` and the summary that closes an
/// anomaly window of an earlier, busy minute (written at the next commit, however late).
pub const IDLE_ENTRIES_PER_HOUR: u64 = 2;

#[derive(Debug)]
enum RelayMsg {
    Deliver {
        id: Option<EnvelopeId>,
        blob: Vec<u8>,
    },
    Stored {
        id: EnvelopeId,
    },
    Error {
        code: u16,
        reference: EnvelopeId,
    },
}

#[derive(Debug)]
enum Ev {
    Timer {
        n: usize,
        life: u64,
    },
    Disk {
        n: usize,
        life: u64,
    },
    AuditCommit {
        n: usize,
        life: u64,
    },
    Tick {
        n: usize,
        life: u64,
    },
    Submit {
        n: usize,
    },
    Call {
        n: usize,
    },
    CallEnd {
        n: usize,
        life: u64,
    },
    Hangup {
        n: usize,
    },
    Restart {
        n: usize,
    },
    DirectArrive {
        to: usize,
        conn: u64,
        blob: Vec<u8>,
    },
    DirectConnect,
    DirectIdle {
        conn: u64,
        cut: u64,
    },
    DirectDownNotice {
        n: usize,
        path: u64,
    },
    RelayIn {
        from: usize,
        conn: u64,
        frame: Vec<u8>,
    },
    RelayOut {
        to: usize,
        conn: u64,
        msg: RelayMsg,
    },
    RelayConnect {
        n: usize,
    },
    RelayIdle {
        n: usize,
        conn: u64,
        cut: u64,
    },
    RelayForget {
        n: usize,
        conn: u64,
    },
    RelayDownNotice {
        n: usize,
        path: u64,
    },
    RelayBack,
    Crash {
        n: usize,
    },
    DirectCut,
    DirectHeal {
        cut: u64,
    },
    RelayCut {
        n: usize,
    },
    RelayHeal {
        n: usize,
        cut: u64,
    },
    RelayRestart,
    ClockJump {
        n: usize,
    },
    ClockFix {
        n: usize,
        delta: i64,
    },
    Snapshot {
        n: usize,
    },
    Restore {
        n: usize,
    },
    HostileAct,
    Heal,
    Final,
    End,
}

#[derive(Debug, Default)]
struct Direct {
    conn: Option<u64>,
    cut: Option<u64>,
    next: u64,
}

#[derive(Debug)]
struct StoredEnv {
    inbox: InboxId,
    id: EnvelopeId,
    blob: Arc<[u8]>,
    expires: T,
}

#[derive(Debug)]
struct RelayConn {
    conn: u64,
    subs: Vec<InboxId>,
}

#[derive(Debug, Default)]
struct Relay {
    up: bool,
    conns: [Option<RelayConn>; 2],
    cut: [Option<u64>; 2],
    /// While a node's relay connection is cut (and not yet dead), its frames wait for the
    /// cut to end: a QUIC connection that survives a blip delivers everything, in order.
    cut_until: [T; 2],
    last_in: [T; 2],
    /// Stored envelopes in arrival order (never ordered by their random ids).
    store: BTreeMap<u64, StoredEnv>,
    index: BTreeMap<(InboxId, EnvelopeId), u64>,
    next_order: u64,
    next_conn: u64,
    last_out: [T; 2],
    seen_live: VecDeque<(usize, Vec<u8>)>,
    seen_env: VecDeque<(usize, EnvelopeId, Arc<[u8]>)>,
}

/// Counts for the report.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub events: u64,
    pub handshakes: u64,
    pub envelopes: u64,
    pub messages: u64,
    pub crashes: u32,
    pub restores: u32,
    pub audit_entries: u64,
    pub audit_msgs: u64,
    pub commits: u64,
    pub idle_hours: u64,
    pub idle_entries: u64,
    pub max_idle_hour: u64,
    pub anomalies: BTreeMap<&'static str, u64>,
    pub audit_refusals: BTreeMap<String, u64>,
}

pub struct World {
    pub sc: Scenario,
    rng: Rng,
    base: Instant,
    pub t: T,
    q: BTreeMap<(T, u64), Ev>,
    qseq: u64,
    pub nodes: [Node; 2],
    direct: Direct,
    relay: Relay,
    next_path: u64,
    pub heal_at: T,
    pub healing: bool,
    hostile: Option<Hostile>,
    loss: f64,
    dup: f64,
    reorder: f64,
    restores_left: u32,
    /// Messages left in the current burst, and the mean pause between bursts.
    burst_left: [u32; 2],
    pause: T,
    /// Virtual hours with user actions or faults (not idle).
    busy_hours: BTreeSet<u64>,
    pub trace: Trace,
    pub stats: Stats,
    pub violations: Vec<String>,
    timer_spin: (T, u32),
    next_cut: u64,
    hostile_acts: u32,
    /// See [`COMMIT_AFTER_AUDIT_MESSAGES`].
    pub commit_after_audit_messages: bool,
    final_state: Option<[Durable; 2]>,
    /// Messages each engine still held unacknowledged when the healing period ended.
    pub final_unacked: [usize; 2],
    pub done: bool,
}

fn hour_of(t: T) -> u64 {
    t / HOUR
}

/// The message id a message's salt carries (the simulator writes it there).
pub fn msg_id_of(salt: &[u8; 32]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&salt[..8]);
    u64::from_le_bytes(b)
}

impl World {
    pub fn new(seed: u64, chaos: T) -> Self {
        let mut rng = Rng::new(seed);
        let mut sc = Scenario::draw(&mut rng);
        if std::env::var("LIAISON_SIM_MIX").is_ok_and(|m| m == "mailbox") {
            sc.mailbox_heavy(&mut rng);
        }
        Self::with(rng, sc, chaos)
    }

    /// A world with this scenario (`rng` drives everything else).
    pub fn with(mut rng: Rng, sc: Scenario, chaos: T) -> Self {
        let unix = T0_UNIX_MS / 1000;
        // Keys come from the OS, but the one decision they make (who keeps its handshake
        // when both start one at once: the smaller Noise static) follows the seed.
        let alice_smaller = rng.chance(0.5);
        let mut pair = None;
        for _ in 0..64 {
            let a = Identity::generate("alice", unix).unwrap_or_else(|e| panic!("identity: {e}"));
            let b = Identity::generate("bob", unix).unwrap_or_else(|e| panic!("identity: {e}"));
            if (a.noise_public() < b.noise_public()) == alice_smaller {
                pair = Some((a, b));
                break;
            }
        }
        let (ida, idb) = pair.unwrap_or_else(|| panic!("64 coin flips all failed"));
        let ring_a = MailboxRing::new(ida.mailbox().clone(), unix);
        let ring_b = MailboxRing::new(idb.mailbox().clone(), unix);
        let mut seeds = [[0u8; 32]; 4];
        for s in &mut seeds {
            rng.bytes(s);
        }
        let pairing = sc.pairing.then(|| {
            let mut p = [0u8; 32];
            rng.bytes(&mut p);
            p
        });
        let a = Node::new("alice", ida, ring_a, (seeds[0], seeds[1]), &idb, pairing);
        let b = Node::new("bob", idb, ring_b, (seeds[2], seeds[3]), &a.id, pairing);
        let hostile = sc.hostile.clone();
        let restores_left = sc.restores;
        let (loss, dup, reorder) = (sc.loss, sc.dup, sc.reorder);
        let mut w = World {
            sc,
            rng,
            base: Instant::now(),
            t: 0,
            q: BTreeMap::new(),
            qseq: 0,
            nodes: [a, b],
            direct: Direct::default(),
            relay: Relay {
                up: true,
                ..Relay::default()
            },
            next_path: 1,
            heal_at: chaos,
            healing: false,
            hostile,
            loss,
            dup,
            reorder,
            restores_left,
            burst_left: [0; 2],
            pause: 0,
            busy_hours: BTreeSet::new(),
            trace: Trace::default(),
            stats: Stats::default(),
            violations: Vec::new(),
            timer_spin: (0, 0),
            next_cut: 1,
            hostile_acts: 0,
            commit_after_audit_messages: COMMIT_AFTER_AUDIT_MESSAGES,
            final_state: None,
            final_unacked: [0; 2],
            done: false,
        };
        w.pause = (chaos / u64::from(w.sc.msgs_per_node.max(1)) * 4).max(MINUTE);
        w.schedule_initial();
        w
    }

    // ---------------------------------------------------------------------------------
    // the event queue

    fn at(&mut self, t: T, ev: Ev) {
        self.qseq += 1;
        self.q.insert((t.max(self.t), self.qseq), ev);
    }

    fn after(&mut self, d: T, ev: Ev) {
        self.at(self.t.saturating_add(d), ev);
    }

    /// Exponentially distributed delay with this mean (at least 1 ms).
    fn exp(&mut self, mean: T) -> T {
        let u = ((self.rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        ((-u.ln() * mean as f64) as T).clamp(1, 30 * DAY)
    }

    fn chaos(&self) -> bool {
        !self.healing && self.t < self.heal_at
    }

    fn busy(&mut self) {
        self.busy_hours.insert(hour_of(self.t));
        self.busy_hours.insert(hour_of(self.t + 10 * MINUTE));
    }

    fn fail(&mut self, what: String) {
        if self.violations.len() < 8 {
            self.violations.push(format!("t={} {what}", self.t));
        }
    }

    fn schedule_initial(&mut self) {
        for n in 0..2 {
            let d = self.rng.range(0, 50);
            self.at(d, Ev::Restart { n });
            let first = self.rng.range(SECOND, 2 * MINUTE);
            self.burst_left[n] = self.rng.range(0, 7) as u32;
            self.at(first, Ev::Submit { n });
            let c = self.exp(self.sc.call_every);
            self.at(c, Ev::Call { n });
            if self.sc.hangup_every > 0 {
                let h = self.exp(self.sc.hangup_every);
                self.at(h, Ev::Hangup { n });
            }
            if self.sc.crash_every > 0 {
                let c = self.exp(self.sc.crash_every);
                self.at(c, Ev::Crash { n });
            }
            if self.sc.relay && self.sc.relay_cut_every > 0 {
                let c = self.exp(self.sc.relay_cut_every);
                self.at(c, Ev::RelayCut { n });
            }
            if self.sc.clock_jump_every > 0 {
                let c = self.exp(self.sc.clock_jump_every);
                self.at(c, Ev::ClockJump { n });
            }
            if self.sc.snapshot_every > 0 {
                let s = self.exp(self.sc.snapshot_every);
                self.at(s, Ev::Snapshot { n });
            }
        }
        if self.sc.restores > 0 {
            // one node is restored (if both lost the same messages, nobody holds them any
            // more and the receiver waits for them for ever)
            let n = self.rng.range(0, 1) as usize;
            for _ in 0..self.sc.restores {
                let r = self
                    .rng
                    .range(HOUR, self.heal_at.saturating_sub(HOUR).max(HOUR));
                self.at(r, Ev::Restore { n });
            }
        }
        if self.sc.direct && self.sc.direct_cut_every > 0 {
            let c = self.exp(self.sc.direct_cut_every);
            self.at(c, Ev::DirectCut);
        }
        if self.sc.relay && self.sc.relay_restart_every > 0 {
            let c = self.exp(self.sc.relay_restart_every);
            self.at(c, Ev::RelayRestart);
        }
        if let Some(h) = &self.hostile {
            let every = h.act_every_ms;
            let c = self.exp(every);
            self.at(c, Ev::HostileAct);
        }
        self.at(self.heal_at, Ev::Heal);
        self.at(self.heal_at + HEAL_FOR, Ev::Final);
        self.at(self.heal_at + HEAL_FOR + FINAL_FOR, Ev::End);
    }

    // ---------------------------------------------------------------------------------
    // running

    /// Runs to the end; false if an invariant broke on the way.
    pub fn run(&mut self) -> bool {
        while let Some(((t, _), ev)) = self.q.pop_first() {
            self.t = t;
            self.stats.events += 1;
            if self.stats.events > MAX_EVENTS {
                self.fail(format!("runaway: more than {MAX_EVENTS} events"));
                return false;
            }
            self.dispatch(ev);
            if !self.violations.is_empty() {
                return false;
            }
            if self.done {
                return true;
            }
        }
        true
    }

    /// Runs the events up to virtual time `until`; false if an invariant broke.
    pub fn run_until(&mut self, until: T) -> bool {
        while let Some(entry) = self.q.first_entry() {
            if entry.key().0 > until {
                break;
            }
            let ((t, _), ev) = entry.remove_entry();
            self.t = t;
            self.stats.events += 1;
            if self.stats.events > MAX_EVENTS {
                self.fail(format!("runaway: more than {MAX_EVENTS} events"));
                return false;
            }
            self.dispatch(ev);
            if !self.violations.is_empty() {
                return false;
            }
        }
        self.t = self.t.max(until);
        true
    }

    /// Entries in both audit logs (pending ones included).
    pub fn audit_entries(&self) -> u64 {
        self.nodes
            .iter()
            .filter_map(|n| n.live.as_ref())
            .map(|l| l.audit.log().len())
            .sum()
    }

    pub fn now(&self, n: usize) -> Now {
        let wall = (T0_UNIX_MS + self.t) as i64 + self.nodes[n].clock_skew_ms;
        Now {
            at: self.base + Duration::from_millis(self.t),
            unix_ms: wall.max(0) as u64,
        }
    }

    fn to_t(&self, i: Instant) -> T {
        let d = i.saturating_duration_since(self.base);
        let ms = d.as_millis() as u64;
        if Duration::from_millis(ms) < d {
            ms + 1
        } else {
            ms
        }
    }

    fn alive(&self, n: usize, life: u64) -> bool {
        self.nodes[n].live.is_some() && self.nodes[n].life == life
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Timer { n, life } => {
                if !self.alive(n, life) {
                    return;
                }
                let t = self.t;
                let Some(live) = self.nodes[n].live.as_mut() else {
                    return;
                };
                if live.timer_at != Some(t) {
                    return;
                }
                live.timer_at = None;
                if self.timer_spin.0 == t {
                    self.timer_spin.1 += 1;
                    if self.timer_spin.1 > 200 {
                        self.fail(format!("{}: the engine's timer spins", self.nodes[n].name));
                        return;
                    }
                } else {
                    self.timer_spin = (t, 0);
                }
                let now = self.now(n);
                if let Some(l) = self.nodes[n].live.as_mut() {
                    l.conn.handle_timeout(now);
                }
                self.pump(n);
            }
            Ev::Disk { n, life } => {
                if self.alive(n, life) {
                    self.disk_done(n);
                }
            }
            Ev::AuditCommit { n, life } => {
                if self.alive(n, life) {
                    self.audit_commit(n);
                }
            }
            Ev::Tick { n, life } => {
                if self.alive(n, life) {
                    self.tick(n);
                }
            }
            Ev::Submit { n } => self.user_submit(n),
            Ev::Call { n } => {
                if self.chaos() {
                    self.busy();
                    let c = self.exp(self.sc.call_every);
                    self.after(c, Ev::Call { n });
                    // the call (`liaison call`, which wants the line up for its whole life)
                    // ends, and the node's listener carries on
                    if self.nodes[n].live.is_some() {
                        let life = self.nodes[n].life;
                        let d = self.rng.log_range(MINUTE, 2 * HOUR);
                        self.after(d, Ev::CallEnd { n, life });
                    }
                }
                self.user_call(n);
            }
            Ev::CallEnd { n, life } => {
                if self.chaos() && self.alive(n, life) {
                    self.busy();
                    self.trace.add(self.t, n as u8, "call-end", 0, 0);
                    self.stop(n, true);
                    let d = self.rng.range(100, 2 * SECOND);
                    self.nodes[n].restart_pending = true;
                    self.after(d, Ev::Restart { n });
                }
            }
            Ev::Hangup { n } => {
                if !self.chaos() {
                    return;
                }
                self.busy();
                let h = self.exp(self.sc.hangup_every);
                self.after(h, Ev::Hangup { n });
                if self.nodes[n].live.is_some() {
                    self.trace.add(self.t, n as u8, "hangup", 0, 0);
                    self.stop(n, true);
                    let d = self.rng.log_range(self.sc.off_len.0, self.sc.off_len.1);
                    self.nodes[n].restart_pending = true;
                    self.after(d, Ev::Restart { n });
                }
            }
            Ev::Restart { n } => {
                self.busy();
                if self.nodes[n].live.is_none() {
                    self.nodes[n].restart_pending = false;
                    self.start(n);
                }
            }
            Ev::DirectArrive { to, conn, blob } => self.direct_arrive(to, conn, blob),
            Ev::DirectConnect => self.direct_connect(),
            Ev::DirectIdle { conn, cut } => {
                if self.direct.conn == Some(conn) && self.direct.cut == Some(cut) {
                    self.kill_direct(HOP_IDLE / 10);
                }
            }
            Ev::DirectDownNotice { n, path } => {
                let now = self.now(n);
                if let Some(l) = self.nodes[n].live.as_mut()
                    && l.paths.remove(&path).is_some()
                {
                    if l.direct_path == Some(path) {
                        l.direct_path = None;
                    }
                    l.conn.path_down(now, path);
                    self.trace.add(self.t, n as u8, "direct-down", path, 0);
                    self.pump(n);
                }
            }
            Ev::RelayIn { from, conn, frame } => self.relay_in(from, conn, frame),
            Ev::RelayOut { to, conn, msg } => self.relay_out(to, conn, msg),
            Ev::RelayConnect { n } => self.relay_connect(n),
            Ev::RelayIdle { n, conn, cut } => {
                if self.relay.cut[n] == Some(cut)
                    && self.relay.conns[n].as_ref().is_some_and(|c| c.conn == conn)
                {
                    self.relay_kill(n, 0, 0);
                }
            }
            Ev::RelayForget { n, conn } => {
                if self.relay.conns[n].as_ref().is_some_and(|c| c.conn == conn) {
                    self.relay.conns[n] = None;
                }
            }
            Ev::RelayDownNotice { n, path } => {
                let now = self.now(n);
                if let Some(l) = self.nodes[n].live.as_mut()
                    && l.paths.remove(&path).is_some()
                {
                    if l.relay_path == Some(path) {
                        l.relay_path = None;
                    }
                    l.conn.path_down(now, path);
                    self.trace.add(self.t, n as u8, "relay-down", path, 0);
                    self.pump(n);
                }
            }
            Ev::RelayBack => {
                if !self.relay.up {
                    self.relay.up = true;
                    self.trace.add(self.t, 2, "relay-back", 0, 0);
                    for n in 0..2 {
                        let d = self.rng.range(10, 3 * SECOND);
                        self.after(d, Ev::RelayConnect { n });
                    }
                }
            }
            Ev::Crash { n } => {
                if !self.chaos() {
                    return;
                }
                self.busy();
                let c = self.exp(self.sc.crash_every);
                self.after(c, Ev::Crash { n });
                if self.nodes[n].live.is_some() && self.nodes[n].crashes < self.sc.max_crashes {
                    self.crash(n, "random");
                }
            }
            Ev::DirectCut => {
                if !self.chaos() {
                    return;
                }
                self.busy();
                let c = self.exp(self.sc.direct_cut_every);
                self.after(c, Ev::DirectCut);
                let cut = self.next_cut;
                self.next_cut += 1;
                self.direct.cut = Some(cut);
                let len = self.rng.log_range(self.sc.cut_len.0, self.sc.cut_len.1);
                self.trace.add(self.t, 2, "direct-cut", len, 0);
                if let Some(conn) = self.direct.conn {
                    self.after(HOP_IDLE, Ev::DirectIdle { conn, cut });
                }
                self.after(len, Ev::DirectHeal { cut });
            }
            Ev::DirectHeal { cut } => {
                if self.direct.cut == Some(cut) {
                    self.busy();
                    self.direct.cut = None;
                    self.trace.add(self.t, 2, "direct-heal", 0, 0);
                    if self.direct.conn.is_none() {
                        let d = self.rng.range(10, 2 * SECOND);
                        self.after(d, Ev::DirectConnect);
                    }
                }
            }
            Ev::RelayCut { n } => {
                if !self.chaos() {
                    return;
                }
                self.busy();
                let c = self.exp(self.sc.relay_cut_every);
                self.after(c, Ev::RelayCut { n });
                let cut = self.next_cut;
                self.next_cut += 1;
                self.relay.cut[n] = Some(cut);
                let len = self.rng.log_range(self.sc.cut_len.0, self.sc.cut_len.1);
                self.relay.cut_until[n] = self.t + len;
                self.trace.add(self.t, n as u8, "relay-cut", len, 0);
                if let Some(c) = &self.relay.conns[n] {
                    let conn = c.conn;
                    self.after(HOP_IDLE, Ev::RelayIdle { n, conn, cut });
                }
                self.after(len, Ev::RelayHeal { n, cut });
            }
            Ev::RelayHeal { n, cut } => {
                if self.relay.cut[n] == Some(cut) {
                    self.busy();
                    self.relay.cut[n] = None;
                    self.trace.add(self.t, n as u8, "relay-heal", 0, 0);
                    let d = self.rng.range(10, 2 * SECOND);
                    self.after(d, Ev::RelayConnect { n });
                }
            }
            Ev::RelayRestart => {
                if !self.chaos() {
                    return;
                }
                self.busy();
                let c = self.exp(self.sc.relay_restart_every);
                self.after(c, Ev::RelayRestart);
                let lose = self.rng.chance(self.sc.relay_store_loss);
                self.relay_restart(lose);
                let d = self.rng.log_range(SECOND, 20 * MINUTE);
                self.after(d, Ev::RelayBack);
            }
            Ev::ClockJump { n } => {
                if !self.chaos() {
                    return;
                }
                self.busy();
                let c = self.exp(self.sc.clock_jump_every);
                self.after(c, Ev::ClockJump { n });
                let mag = self.rng.log_range(SECOND, self.sc.clock_jump_max) as i64;
                let delta = if self.rng.chance(0.5) { mag } else { -mag };
                self.set_skew(n, self.nodes[n].clock_skew_ms + delta);
                self.trace.add(
                    self.t,
                    n as u8,
                    "clock-jump",
                    mag as u64,
                    (delta < 0) as u64,
                );
                let fix = self.rng.log_range(MINUTE, DAY);
                self.after(fix, Ev::ClockFix { n, delta: -delta });
            }
            Ev::ClockFix { n, delta } => {
                if self.chaos() {
                    self.busy();
                    self.set_skew(n, self.nodes[n].clock_skew_ms + delta);
                    self.trace.add(self.t, n as u8, "clock-fix", 0, 0);
                }
            }
            Ev::Snapshot { n } => {
                if !self.chaos() {
                    return;
                }
                let s = self.exp(self.sc.snapshot_every);
                self.after(s, Ev::Snapshot { n });
                let d = self.nodes[n].durable_now();
                let b = &mut self.nodes[n].backups;
                if b.len() >= 4 {
                    b.remove(0);
                }
                b.push(d);
                self.trace.add(self.t, n as u8, "snapshot", 0, 0);
            }
            Ev::Restore { n } => {
                if !self.chaos() || self.restores_left == 0 || self.nodes[n].backups.is_empty() {
                    return;
                }
                self.busy();
                self.restores_left -= 1;
                self.restore(n);
            }
            Ev::HostileAct => {
                if !self.chaos() {
                    return;
                }
                if let Some(h) = &self.hostile
                    && self.hostile_acts < MAX_HOSTILE_ACTS
                {
                    self.hostile_acts += 1;
                    let every = h.act_every_ms;
                    let c = self.exp(every);
                    self.after(c, Ev::HostileAct);
                    self.busy();
                    self.hostile_act();
                }
            }
            Ev::Heal => self.heal(),
            Ev::Final => self.final_exchange(),
            Ev::End => self.done = true,
        }
    }

    // ---------------------------------------------------------------------------------
    // node life

    fn set_skew(&mut self, n: usize, skew: i64) {
        self.nodes[n].clock_skew_ms = skew;
        if let Some(l) = self.nodes[n].live.as_mut() {
            l.tick_at = None;
        }
        if self.nodes[n].live.is_some() {
            let life = self.nodes[n].life;
            self.after(0, Ev::Tick { n, life });
        }
    }

    fn start(&mut self, n: usize) {
        let now = self.now(n);
        let node = &mut self.nodes[n];
        node.life += 1;
        let storage = std::mem::take(&mut node.durable.audit);
        let (audit, offer) =
            match MemoryLine::reopen(node.audit_keys(), node.peer_identity, storage, now.unix_ms) {
                Ok(x) => x,
                Err(e) => {
                    let msg = format!("{}: the audit log does not reopen: {e}", node.name);
                    self.fail(msg);
                    return;
                }
            };
        let mut conn = Conn::new(node.config(now.unix_secs()));
        if let Some(o) = offer {
            conn.queue_audit(vec![o]);
        }
        let audit_len = audit.log().len();
        node.live = Some(Live {
            conn,
            audit,
            disk: VecDeque::new(),
            disk_busy_until: 0,
            audit_dirty: false,
            commit_scheduled: false,
            timer_at: None,
            tick_at: None,
            paths: BTreeMap::new(),
            relay_path: None,
            direct_path: None,
            want_call: false,
            audit_len,
        });
        node.last_shown = node.last_shown.max(node.durable.delivered_upto);
        let life = node.life;
        self.trace.add(self.t, n as u8, "start", life, 0);
        self.after(0, Ev::Tick { n, life });
        let d = self.rng.range(5, 500);
        self.after(d, Ev::RelayConnect { n });
        let d = self.rng.range(5, 2000);
        self.after(d, Ev::DirectConnect);
        self.pump(n);
    }

    /// The process dies: everything in memory goes, store answers not yet given are lost.
    fn crash(&mut self, n: usize, why: &'static str) {
        let Some(live) = self.nodes[n].live.take() else {
            return;
        };
        self.trace
            .add(self.t, n as u8, "crash", live.disk.len() as u64, 0);
        let _ = why;
        self.nodes[n].durable.audit = live.audit.storage().clone();
        self.nodes[n].crashes += 1;
        self.stats.crashes += 1;
        self.nodes[n].life += 1;
        self.teardown(n, &live, false);
        drop(live);
        if !self.nodes[n].restart_pending {
            self.nodes[n].restart_pending = true;
            let d = self
                .rng
                .log_range(self.sc.restart_delay.0, self.sc.restart_delay.1);
            self.after(d, Ev::Restart { n });
        }
    }

    /// The connections of a node that stopped: the peer and the relay notice (at once for a
    /// clean exit, after an idle timeout or a reset for a crash).
    fn teardown(&mut self, n: usize, live: &Live, clean: bool) {
        if let Some(path) = live.direct_path
            && let Some(Hop::Direct { conn }) = live.paths.get(&path)
            && self.direct.conn == Some(*conn)
        {
            let notice = if clean {
                self.rng.range(1, 100)
            } else {
                self.rng.range(10, HOP_IDLE)
            };
            self.direct.conn = None;
            let p = 1 - n;
            if let Some(pl) = &self.nodes[p].live
                && let Some(pp) = pl.direct_path
            {
                self.after(notice, Ev::DirectDownNotice { n: p, path: pp });
            }
        }
        if let Some(c) = &self.relay.conns[n] {
            let conn = c.conn;
            let notice = if clean {
                self.rng.range(1, 100)
            } else {
                self.rng.range(10, HOP_IDLE)
            };
            self.after(notice, Ev::RelayForget { n, conn });
        }
    }

    /// A clean stop (the user ended the call): `close`, write what is due, let the store
    /// finish, commit the audit log, then exit.
    fn stop(&mut self, n: usize, clean: bool) {
        let now = self.now(n);
        if let Some(l) = self.nodes[n].live.as_mut() {
            l.conn.close(now);
        }
        self.pump(n);
        for _ in 0..10_000 {
            let has = self.nodes[n]
                .live
                .as_ref()
                .is_some_and(|l| !l.disk.is_empty());
            if !has {
                break;
            }
            self.disk_apply_front(n);
        }
        if let Some(l) = self.nodes[n].live.as_mut() {
            match l.audit.close(now.unix_ms) {
                Ok(_) => {}
                Err(e) => {
                    let msg = format!("{}: audit close: {e}", self.nodes[n].name);
                    self.fail(msg);
                }
            }
        }
        self.account(n);
        let Some(live) = self.nodes[n].live.take() else {
            return;
        };
        self.nodes[n].durable.audit = live.audit.storage().clone();
        self.nodes[n].life += 1;
        self.teardown(n, &live, clean);
    }

    fn restore(&mut self, n: usize) {
        if self.nodes[n].live.is_some() {
            self.crash(n, "restore");
        }
        let i = self.rng.range(0, self.nodes[n].backups.len() as u64 - 1) as usize;
        let Some(b) = self.nodes[n].backups.get(i).cloned() else {
            return;
        };
        self.trace
            .add(self.t, n as u8, "restore", b.next_seq, b.delivered_upto);
        self.stats.restores += 1;
        let node = &mut self.nodes[n];
        node.durable = b;
        node.restored = true;
        node.last_shown = node.durable.delivered_upto;
        node.last_init_ts = node.durable.hs_sent;
        node.last_resp_ts = node.durable.hs_accepted;
        node.backups.truncate(i + 1);
    }

    // ---------------------------------------------------------------------------------
    // the shell

    /// Takes every output of the engine after an input, then arms its timer.
    fn pump(&mut self, n: usize) {
        for _ in 0..MAX_PUMP {
            let now = self.now(n);
            let Some(live) = self.nodes[n].live.as_mut() else {
                return;
            };
            if let Some(ev) = live.conn.poll_event() {
                self.on_event(n, now, ev);
                continue;
            }
            if let Some(tx) = live.conn.poll_transmit(now) {
                self.route(n, tx);
                continue;
            }
            self.rearm(n);
            self.account(n);
            return;
        }
        let name = self.nodes[n].name;
        self.fail(format!("{name}: the engine does not settle after an input"));
    }

    fn rearm(&mut self, n: usize) {
        let Some(live) = self.nodes[n].live.as_ref() else {
            return;
        };
        let want = live.conn.poll_timeout().map(|i| self.to_t(i).max(self.t));
        if want != live.timer_at {
            let life = self.nodes[n].life;
            if let Some(l) = self.nodes[n].live.as_mut() {
                l.timer_at = want;
            }
            if let Some(w) = want {
                self.at(w, Ev::Timer { n, life });
            }
        }
    }

    /// Audit growth per hour, and a group commit within 100 ms of a new entry.
    fn account(&mut self, n: usize) {
        let t = self.t;
        let life = self.nodes[n].life;
        let Some(live) = self.nodes[n].live.as_mut() else {
            return;
        };
        let len = live.audit.log().len();
        if len > live.audit_len {
            let d = len - live.audit_len;
            *self.nodes[n].audit_growth.entry(hour_of(t)).or_default() += d;
            self.stats.audit_entries += d;
        }
        let Some(live) = self.nodes[n].live.as_mut() else {
            return;
        };
        live.audit_len = len;
        // a cosignature the audit log holds back (rate-bounded per peer) is released at its
        // timer, which the node's audit thread runs at every 100 ms tick
        let held = live.audit.poll_timeout().is_some();
        if (live.audit_dirty || held) && !live.commit_scheduled {
            live.commit_scheduled = true;
            self.at(t + COMMIT_EVERY, Ev::AuditCommit { n, life });
        }
    }

    fn audit_append(&mut self, n: usize, now: Now, ev: AuditEvent) {
        if let Some(l) = self.nodes[n].live.as_mut() {
            l.audit.append(ev, now.unix_ms);
            l.audit_dirty = true;
        }
    }

    fn audit_commit(&mut self, n: usize) {
        let now = self.now(n);
        let Some(l) = self.nodes[n].live.as_mut() else {
            return;
        };
        l.commit_scheduled = false;
        match l.audit.handle_timeout(now.unix_ms) {
            Ok(replies) if !replies.is_empty() => l.conn.queue_audit(replies),
            Ok(_) => {}
            Err(e) => {
                let msg = format!("{}: audit timer: {e}", self.nodes[n].name);
                self.fail(msg);
                return;
            }
        }
        if !l.audit_dirty {
            self.pump(n);
            return;
        }
        if self.chaos()
            && self.nodes[n].crashes < self.sc.max_crashes
            && self.rng.chance(self.sc.crash_at_persist)
        {
            self.busy();
            if self.rng.chance(0.5) {
                self.crash(n, "before-audit-commit");
                return;
            }
            if let Some(l) = self.nodes[n].live.as_mut() {
                let _ = l.audit.commit(now.unix_ms);
            }
            self.crash(n, "after-audit-commit");
            return;
        }
        let Some(l) = self.nodes[n].live.as_mut() else {
            return;
        };
        l.audit_dirty = false;
        self.stats.commits += 1;
        match l.audit.commit(now.unix_ms) {
            // while no session is up the offer would wait in the engine behind newer ones
            // (the peer cosigns each, or refuses the older as stale): the latest is offered
            // when the line comes up (`Event::LineUp`)
            Ok(Some(offer)) if l.conn.status(now).up => l.conn.queue_audit(vec![offer]),
            Ok(_) => {}
            Err(e) => {
                let msg = format!("{}: audit commit: {e}", self.nodes[n].name);
                self.fail(msg);
            }
        }
        self.pump(n);
    }

    fn push_disk(&mut self, n: usize, op: DiskOp) {
        let delay = self.rng.range(self.sc.disk_delay.0, self.sc.disk_delay.1);
        let t = self.t;
        let life = self.nodes[n].life;
        let Some(l) = self.nodes[n].live.as_mut() else {
            return;
        };
        let done = l.disk_busy_until.max(t) + delay;
        l.disk_busy_until = done;
        l.disk.push_back((done, op));
        if l.disk.len() == 1 {
            self.at(done, Ev::Disk { n, life });
        }
    }

    /// The store transaction at the head commits (or the node dies at that point).
    fn disk_done(&mut self, n: usize) {
        let t = self.t;
        let Some(l) = self.nodes[n].live.as_ref() else {
            return;
        };
        if l.disk.front().is_none_or(|(done, _)| *done > t) {
            return;
        }
        if self.chaos()
            && self.nodes[n].crashes < self.sc.max_crashes
            && self.rng.chance(self.sc.crash_at_persist)
        {
            self.busy();
            if self.rng.chance(0.5) {
                // dies before the transaction commits
                self.crash(n, "before-commit");
                return;
            }
            // commits, then dies before the engine hears of it
            let op = self.nodes[n]
                .live
                .as_mut()
                .and_then(|l| l.disk.pop_front())
                .map(|(_, op)| op);
            if let Some(op) = op {
                self.trace.add(t, n as u8, "commit-then-crash", 0, 0);
                self.apply(n, op, false);
            }
            self.crash(n, "after-commit");
            return;
        }
        self.disk_apply_front(n);
        let life = self.nodes[n].life;
        if let Some(next) = self.nodes[n].live.as_ref().and_then(|l| l.disk.front()) {
            let at = next.0;
            self.at(at, Ev::Disk { n, life });
        }
    }

    fn disk_apply_front(&mut self, n: usize) {
        let op = self.nodes[n]
            .live
            .as_mut()
            .and_then(|l| l.disk.pop_front())
            .map(|(_, op)| op);
        if let Some(op) = op {
            self.apply(n, op, true);
            self.pump(n);
        }
    }

    /// Commits one store transaction and (if `answer`) tells the engine.
    fn apply(&mut self, n: usize, op: DiskOp, answer: bool) {
        let now = self.now(n);
        let p = 1 - n;
        self.trace.add(self.t, n as u8, op.name(), 0, 0);
        match op {
            DiskOp::Persist {
                token,
                sent,
                accepted,
            } => {
                let d = &mut self.nodes[n].durable;
                d.hs_sent = sent;
                d.hs_accepted = accepted;
                if answer && let Some(l) = self.nodes[n].live.as_mut() {
                    l.conn.persisted(token);
                }
            }
            DiskOp::Store {
                messages,
                delivered_upto,
            } => {
                let restores = self.nodes[n].restored || self.nodes[p].restored;
                let mut seqs = Vec::with_capacity(messages.len());
                for m in &messages {
                    // what the peer's user wrote, byte for byte, under this seq
                    let id = msg_id_of(&m.content.salt);
                    let genuine = self.nodes[p]
                        .sent
                        .get(&id)
                        .is_some_and(|s| s.encoded[..] == m.encoded[..]);
                    if !genuine {
                        let name = self.nodes[n].name;
                        self.fail(format!(
                            "{name}: stores seq {} whose content the peer never wrote",
                            m.seq
                        ));
                    }
                    if let Some(old) = self.nodes[n].durable.inbox.get(&m.seq)
                        && old[..] != m.encoded[..]
                        && !restores
                    {
                        let name = self.nodes[n].name;
                        self.fail(format!(
                            "{name}: stores seq {} again with other content",
                            m.seq
                        ));
                    }
                    if let Some(l) = self.nodes[n].live.as_mut() {
                        l.audit.append(
                            AuditEvent::MsgReceived {
                                seq: m.seq,
                                commitment: liaison_audit::commitment(
                                    &m.content.salt,
                                    &m.content.body,
                                ),
                                ciphertext_hash: m.ct_hash,
                            },
                            now.unix_ms,
                        );
                        l.audit_dirty = true;
                    }
                    seqs.push(m.seq);
                }
                if let Some(l) = self.nodes[n].live.as_mut()
                    && let Err(e) = l.audit.persist(now.unix_ms)
                {
                    let msg = format!("audit persist: {e}");
                    self.fail(msg);
                }
                let node = &mut self.nodes[n];
                for m in messages {
                    node.ever_held
                        .entry(m.seq)
                        .or_default()
                        .insert(msg_digest(&m.encoded));
                    node.durable.inbox.entry(m.seq).or_insert(m.encoded);
                }
                let old = node.durable.delivered_upto;
                node.durable.delivered_upto = old.max(delivered_upto);
                for s in old + 1..=node.durable.delivered_upto {
                    if !node.durable.inbox.contains_key(&s) {
                        let name = node.name;
                        self.fail(format!(
                            "{name}: Store says delivered_upto={delivered_upto} but seq {s} is not stored"
                        ));
                        break;
                    }
                }
                self.stats.messages += seqs.len() as u64;
                if answer && let Some(l) = self.nodes[n].live.as_mut() {
                    l.conn.stored(now, &seqs);
                }
            }
            DiskOp::Acked { upto } => {
                let d = &mut self.nodes[n].durable;
                for (_, r) in d.outbox.range_mut(..=upto) {
                    r.status = Status::Delivered;
                }
                d.acked_upto = d.acked_upto.max(upto);
                if answer && let Some(l) = self.nodes[n].live.as_mut() {
                    l.conn.ack_committed(now, upto);
                }
            }
            DiskOp::Queued { seqs } => {
                let d = &mut self.nodes[n].durable;
                for s in seqs {
                    if let Some(r) = d.outbox.get_mut(&s)
                        && r.status == Status::Pending
                    {
                        r.status = Status::Queued;
                    }
                }
            }
            DiskOp::PeerMbox(bytes) => self.nodes[n].durable.peer_mbox = Some(bytes),
            DiskOp::EnvelopeKeep(env) => {
                self.nodes[n].durable.envelopes.insert(env.id, env);
            }
            DiskOp::EnvelopeForget(ids) => {
                for id in ids {
                    self.nodes[n].durable.envelopes.remove(&id);
                }
            }
            DiskOp::Renumber {
                token,
                peer_holds,
                moves,
            } => {
                let node = &mut self.nodes[n];
                let mut sent = Vec::new();
                let mut rows = Vec::new();
                for (old, _) in &moves {
                    rows.push(node.durable.outbox.remove(old));
                }
                for ((_, new), row) in moves.iter().zip(rows) {
                    if let Some(mut r) = row {
                        node.renumbered.insert(r.msg);
                        r.status = Status::Pending;
                        if let Some(s) = node.sent.get(&r.msg)
                            && let Ok(c) = MessageContent::decode(&s.encoded)
                        {
                            sent.push((*new, liaison_audit::commitment(&c.salt, &c.body)));
                        }
                        node.durable.outbox.insert(*new, r);
                    }
                    node.durable.next_seq = node.durable.next_seq.max(new + 1);
                }
                node.durable.acked_upto = node.durable.acked_upto.max(peer_holds);
                node.durable.next_seq = node.durable.next_seq.max(peer_holds + 1);
                if let Some(l) = node.live.as_mut() {
                    for (seq, commitment) in sent {
                        l.audit.append(
                            AuditEvent::MsgSent {
                                seq,
                                commitment,
                                ciphertext_hash: [0; 32],
                            },
                            now.unix_ms,
                        );
                    }
                    l.audit_dirty = true;
                    let _ = l.audit.persist(now.unix_ms);
                    if answer {
                        l.conn.renumbered(now, token);
                    }
                }
            }
            DiskOp::PeerLost {
                peer_holds,
                acked_upto,
            } => {
                let d = &mut self.nodes[n].durable;
                let mut again = Vec::new();
                for (s, r) in d
                    .outbox
                    .range_mut(peer_holds + 1..=acked_upto.max(peer_holds))
                {
                    r.status = Status::Pending;
                    again.push((*s, r.body.clone()));
                }
                d.acked_upto = d.acked_upto.min(peer_holds);
                if answer && let Some(l) = self.nodes[n].live.as_mut() {
                    l.conn.resend(now, peer_holds, again);
                }
            }
        }
    }

    fn on_event(&mut self, n: usize, now: Now, ev: Event) {
        let p = 1 - n;
        match ev {
            Event::PersistHandshake {
                token,
                sent_ts,
                accepted_ts,
            } => self.push_disk(
                n,
                DiskOp::Persist {
                    token,
                    sent: sent_ts,
                    accepted: accepted_ts,
                },
            ),
            Event::Store {
                messages,
                delivered_upto,
            } => {
                self.trace.add(
                    self.t,
                    n as u8,
                    "ev-store",
                    messages.first().map_or(0, |m| m.seq),
                    messages.len() as u64,
                );
                self.push_disk(
                    n,
                    DiskOp::Store {
                        messages,
                        delivered_upto,
                    },
                );
            }
            Event::Deliver { seq } => {
                let node = &mut self.nodes[n];
                let name = node.name;
                let Some(enc) = node.durable.inbox.get(&seq) else {
                    self.fail(format!("{name}: Deliver {seq}, which is not stored"));
                    return;
                };
                let id = MessageContent::decode(enc).map_or(u64::MAX, |c| msg_id_of(&c.salt));
                if seq <= node.last_shown {
                    let last = node.last_shown;
                    self.fail(format!(
                        "{name}: Deliver {seq} again (or out of order; shown up to {last})"
                    ));
                    return;
                }
                node.last_shown = seq;
                *node.shown.entry(id).or_default() += 1;
                self.trace.add(self.t, n as u8, "deliver", seq, 0);
            }
            Event::Acked { upto } => {
                self.trace.add(self.t, n as u8, "ev-acked", upto, 0);
                self.check_acked(n, upto);
                self.push_disk(n, DiskOp::Acked { upto });
            }
            Event::Queued { seqs } => self.push_disk(n, DiskOp::Queued { seqs }),
            Event::NotHeld { .. } => {
                *self.stats.anomalies.entry("not-held").or_default() += 1;
            }
            Event::PeerMailboxKeys(bytes) => self.push_disk(n, DiskOp::PeerMbox(bytes)),
            Event::EnvelopeSealed(env) => self.push_disk(n, DiskOp::EnvelopeKeep(env)),
            Event::EnvelopesDropped(ids) => self.push_disk(n, DiskOp::EnvelopeForget(ids)),
            Event::Audit(rec) => {
                if let Some(e) = audit_event(rec) {
                    self.audit_append(n, now, e);
                }
            }
            Event::AuditMessage(bytes) => {
                self.stats.audit_msgs += 1;
                let Some(l) = self.nodes[n].live.as_mut() else {
                    return;
                };
                match l.audit.handle_message(&bytes, now.unix_ms) {
                    Ok(replies) => l.conn.queue_audit(replies),
                    Err(e) => {
                        let mut k = format!("{e}");
                        k.truncate(48);
                        *self.stats.audit_refusals.entry(k).or_default() += 1;
                        if matches!(
                            e,
                            liaison_audit::LineError::Witness(
                                liaison_audit::witness::WitnessError::Fork { .. }
                            )
                        ) && !self.nodes[p].restored
                        {
                            let name = self.nodes[n].name;
                            self.fail(format!(
                                "{name}: the peer's audit log forked without a restore: {e}"
                            ));
                        }
                    }
                }
                if self.commit_after_audit_messages
                    && let Some(l) = self.nodes[n].live.as_mut()
                {
                    l.audit_dirty = true;
                }
            }
            Event::LineUp => {
                self.trace.add(self.t, n as u8, "line-up", 0, 0);
                if let Some(l) = self.nodes[n].live.as_mut() {
                    match l.audit.current_offer() {
                        Ok(Some(o)) => l.conn.queue_audit(vec![o]),
                        Ok(None) => {}
                        Err(e) => {
                            let msg = format!("audit offer: {e}");
                            self.fail(msg);
                        }
                    }
                }
            }
            Event::LineDown => self.trace.add(self.t, n as u8, "line-down", 0, 0),
            Event::Unreachable => self.trace.add(self.t, n as u8, "unreachable", 0, 0),
            Event::PeerAway => self.trace.add(self.t, n as u8, "peer-away", 0, 0),
            Event::Anomaly(a) => {
                *self.stats.anomalies.entry(a.name()).or_default() += 1;
                self.trace.add(self.t, n as u8, a.name(), 0, 0);
                if let Some(k) = audit_anomaly(a)
                    && let Some(l) = self.nodes[n].live.as_mut()
                {
                    l.audit.note_anomaly(k, now.unix_ms);
                    l.audit_dirty = true;
                }
                self.check_anomaly(n, a);
            }
            Event::Renumber {
                token,
                peer_holds,
                moves,
            } => {
                self.trace.add(
                    self.t,
                    n as u8,
                    "ev-renumber",
                    peer_holds,
                    moves.len() as u64,
                );
                if !self.nodes[n].restored {
                    let name = self.nodes[n].name;
                    self.fail(format!(
                        "{name}: renumbers its messages (peer holds {peer_holds}) but its store was never rolled back"
                    ));
                }
                self.push_disk(
                    n,
                    DiskOp::Renumber {
                        token,
                        peer_holds,
                        moves,
                    },
                );
            }
            Event::PeerLost {
                peer_holds,
                acked_upto,
            } => {
                self.trace
                    .add(self.t, n as u8, "ev-peer-lost", peer_holds, acked_upto);
                if !self.nodes[p].restored {
                    let name = self.nodes[n].name;
                    self.fail(format!(
                        "{name}: thinks the peer lost messages ({peer_holds} < {acked_upto}) but its store was never rolled back"
                    ));
                }
                self.push_disk(
                    n,
                    DiskOp::PeerLost {
                        peer_holds,
                        acked_upto,
                    },
                );
            }
            Event::SealedToCardKey => {
                *self
                    .stats
                    .anomalies
                    .entry("sealed-to-card-key")
                    .or_default() += 1;
            }
            _ => {}
        }
    }

    /// Nothing is reported delivered that the peer's store does not hold with this content.
    fn check_acked(&mut self, n: usize, upto: u64) {
        let p = 1 - n;
        let next = self.nodes[n].durable.next_seq;
        if upto >= next {
            let name = self.nodes[n].name;
            self.fail(format!(
                "{name}: Acked {upto}, beyond the highest seq it assigned ({})",
                next - 1
            ));
            return;
        }
        let peer_restored = self.nodes[p].restored;
        // every row this marks delivered
        let rows: Vec<(u64, Arc<[u8]>)> = self.nodes[n]
            .durable
            .outbox
            .range(..=upto)
            .filter(|(_, r)| r.status != Status::Delivered)
            .map(|(s, r)| (*s, r.body.clone()))
            .collect();
        for (seq, body) in rows {
            let ok = if peer_restored {
                self.nodes[p]
                    .ever_held
                    .get(&seq)
                    .is_some_and(|d| d.contains(&msg_digest(&body)))
            } else {
                self.nodes[p]
                    .durable
                    .inbox
                    .get(&seq)
                    .is_some_and(|e| e[..] == body[..])
            };
            if !ok {
                let name = self.nodes[n].name;
                self.fail(format!(
                    "{name}: Acked {upto} but the peer's store does not hold our seq {seq} with its content"
                ));
                return;
            }
        }
    }

    /// A handshake message leaves only once its timestamp is durable: every message 1 is a
    /// new initiation whose timestamp was persisted first, every message 2 answers a newly
    /// accepted timestamp that was persisted first.
    fn check_hs_durable(&mut self, n: usize, kind: u8) {
        let node = &mut self.nodes[n];
        let init = kind == BLOB_HS_INIT;
        let (durable, last) = if init {
            (node.durable.hs_sent, node.last_init_ts)
        } else {
            (node.durable.hs_accepted, node.last_resp_ts)
        };
        if init {
            node.last_init_ts = durable;
        } else {
            node.last_resp_ts = durable;
        }
        if durable <= last {
            let name = node.name;
            let what = if init { "message 1" } else { "message 2" };
            self.fail(format!(
                "{name}: sends a handshake {what} whose timestamp is not durable (durable {durable:?}, at the last one {last:?})"
            ));
        }
    }

    /// Anomalies that only a fault can explain.
    fn check_anomaly(&mut self, n: usize, a: Anomaly) {
        let restores = self.nodes[0].restored || self.nodes[1].restored;
        let hostile = self.hostile.is_some() || self.sc.hostile.is_some();
        let bad = match a {
            Anomaly::SeqRollback | Anomaly::PeerLostMessages | Anomaly::UnexpectedAck => !restores,
            Anomaly::MalformedFrames | Anomaly::BadFragment | Anomaly::BadMessage => true,
            Anomaly::BadMailboxKey => !hostile,
            Anomaly::BadEnvelope => !hostile && !restores && self.sc.clock_jump_every == 0,
            _ => false,
        };
        if bad {
            let name = self.nodes[n].name;
            self.fail(format!(
                "{name}: anomaly {} without a fault that explains it",
                a.name()
            ));
        }
    }

    /// Routes one hop frame the engine wrote.
    fn route(&mut self, n: usize, tx: Transmit) {
        let Some(live) = self.nodes[n].live.as_mut() else {
            return;
        };
        let Some(hop) = live.paths.get(&tx.path).copied() else {
            return;
        };
        if tx.close_after {
            live.paths.remove(&tx.path);
            if live.direct_path == Some(tx.path) {
                live.direct_path = None;
            }
        }
        let parsed = tx
            .frame
            .get(4..)
            .and_then(|f| HopFrame::parse(f).ok())
            .map(|f| match f {
                HopFrame::Blob(b) => (b.first().copied(), false),
                HopFrame::Post { blob, store, .. } => (blob.first().copied(), store),
                _ => (None, false),
            });
        if let Some((Some(kind), store)) = parsed {
            if kind == BLOB_HS_INIT || kind == BLOB_HS_RESP {
                self.check_hs_durable(n, kind);
            }
            if kind == BLOB_HS_INIT {
                self.nodes[n].handshakes += 1;
                self.stats.handshakes += 1;
                self.trace.add(self.t, n as u8, "hs-init", store as u64, 0);
            }
            if store {
                self.nodes[n].envelopes_posted += 1;
                self.stats.envelopes += 1;
            }
        }
        match hop {
            Hop::Direct { conn } => {
                if let Some(HopFrame::Blob(b)) =
                    tx.frame.get(4..).and_then(|f| HopFrame::parse(f).ok())
                {
                    let blob = b.to_vec();
                    self.send_direct(n, conn, blob);
                }
                if tx.close_after && self.direct.conn == Some(conn) {
                    self.trace.add(self.t, n as u8, "direct-closed", 0, 0);
                    let d = self.rng.range(1, 200);
                    self.kill_direct(d);
                }
            }
            Hop::Relay { conn } => {
                let lat = self.link_latency();
                let mut at = (self.t + lat).max(self.relay.last_in[n]);
                if self.relay.cut[n].is_some() {
                    at = at.max(self.relay.cut_until[n] + lat);
                }
                self.relay.last_in[n] = at;
                self.at(
                    at,
                    Ev::RelayIn {
                        from: n,
                        conn,
                        frame: tx.frame,
                    },
                );
            }
        }
    }

    fn link_latency(&mut self) -> T {
        self.rng.range(self.sc.latency_ms.0, self.sc.latency_ms.1) / 2
    }

    // ---------------------------------------------------------------------------------
    // users

    fn user_submit(&mut self, n: usize) {
        if !self.chaos() {
            return;
        }
        self.busy();
        // the next one: within a busy period, or after an idle one
        let gap = if self.burst_left[n] > 0 {
            self.burst_left[n] -= 1;
            self.rng.log_range(self.sc.busy_gap.0, self.sc.busy_gap.1)
        } else {
            // a pause, then a burst of up to 8 messages: on average the messages spread
            // over the whole run
            self.burst_left[n] = self.rng.range(0, 7) as u32;
            self.exp(self.pause)
        };
        if (self.nodes[n].sent.len() as u32) < self.sc.msgs_per_node {
            self.after(gap, Ev::Submit { n });
        }
        if self.nodes[n].live.is_none() {
            return;
        }
        let now = self.now(n);
        let size = match self.rng.range(0, 99) {
            0..=59 => self.rng.range(0, 64),
            60..=89 => self.rng.range(64, 2000),
            90..=97 => self.rng.range(2000, 20_000),
            _ => self.rng.range(60_000, 3 * MAX_FRAGMENT as u64),
        } as usize;
        let node = &mut self.nodes[n];
        let id = ((n as u64) << 40) | node.next_msg;
        node.next_msg += 1;
        let mut salt = [0u8; 32];
        salt[..8].copy_from_slice(&id.to_le_bytes());
        self.rng.bytes(&mut salt[8..]);
        let fill = b'a' + (self.rng.range(0, 25) as u8);
        let content = MessageContent {
            kind: MSG_KIND_TEXT,
            sent_at_ms: now.unix_ms,
            salt,
            name: None,
            body: vec![fill; size],
        };
        let encoded: Arc<[u8]> = match content.encode() {
            Ok(e) => Arc::from(e),
            Err(e) => panic!("encode: {e}"),
        };
        if self.chaos()
            && self.nodes[n].crashes < self.sc.max_crashes
            && self.rng.chance(self.sc.crash_at_persist)
        {
            if self.rng.chance(0.5) {
                // dies before the outbox row commits: the user saw an error
                self.crash(n, "before-submit");
                return;
            }
            self.write_outbox(n, now, id, &content, encoded);
            self.crash(n, "after-submit");
            return;
        }
        let seq = self.write_outbox(n, now, id, &content, encoded.clone());
        self.trace.add(self.t, n as u8, "submit", seq, size as u64);
        if let Some(l) = self.nodes[n].live.as_mut() {
            l.conn.submit(now, seq, encoded);
        }
        self.pump(n);
    }

    /// The outbox row and its `msg_sent` entry, in one transaction.
    fn write_outbox(
        &mut self,
        n: usize,
        now: Now,
        id: u64,
        content: &MessageContent,
        encoded: Arc<[u8]>,
    ) -> u64 {
        let node = &mut self.nodes[n];
        let seq = node.durable.next_seq;
        node.durable.next_seq += 1;
        node.durable.outbox.insert(
            seq,
            OutRow {
                body: encoded.clone(),
                msg: id,
                status: Status::Pending,
            },
        );
        node.sent.insert(id, Sent { encoded });
        node.sent_order.push(id);
        if let Some(l) = node.live.as_mut() {
            l.audit.append(
                AuditEvent::MsgSent {
                    seq,
                    commitment: liaison_audit::commitment(&content.salt, &content.body),
                    ciphertext_hash: [0; 32],
                },
                now.unix_ms,
            );
            l.audit_dirty = true;
            if let Err(e) = l.audit.persist(now.unix_ms) {
                panic!("audit persist: {e}");
            }
        }
        seq
    }

    fn user_call(&mut self, n: usize) {
        let now = self.now(n);
        if let Some(l) = self.nodes[n].live.as_mut() {
            l.want_call = true;
            l.conn.connect(now);
            self.trace.add(self.t, n as u8, "call", 0, 0);
            self.pump(n);
        }
    }

    /// Daily shell work: mailbox key rotation and pruning, and subscribing the new day's
    /// inbox.
    fn tick(&mut self, n: usize) {
        let now = self.now(n);
        let unix = now.unix_secs();
        let node = &mut self.nodes[n];
        node.durable.ring.prune(unix);
        let fresh = match node.durable.ring.rotate(node.id.signing_key(), unix) {
            Ok(k) => k,
            Err(e) => panic!("ring: {e}"),
        };
        if let Some(k) = fresh {
            let mut key_hash = [0; 32];
            key_hash[..MAILBOX_KEY_ID_LEN].copy_from_slice(&k.key_id);
            if let Some(l) = node.live.as_mut() {
                l.conn.set_own_mailbox_key(k);
            }
            self.audit_append(
                n,
                now,
                AuditEvent::KeyEvent {
                    kind: KeyEventKind::MailboxKeyCreated,
                    key_hash,
                },
            );
        }
        self.resubscribe(n);
        // next: the ring's next deadline or the next inbox epoch, whichever is first
        let node = &self.nodes[n];
        let next_unix = node
            .durable
            .ring
            .next_deadline()
            .min((unix / INBOX_EPOCH_SECS + 1) * INBOX_EPOCH_SECS)
            .max(unix + 1);
        let wait = (next_unix * 1000).saturating_sub(now.unix_ms).max(SECOND);
        let life = node.life;
        if let Some(l) = self.nodes[n].live.as_mut() {
            l.tick_at = Some(self.t + wait);
        }
        self.after(wait, Ev::Tick { n, life });
        self.pump(n);
    }

    // ---------------------------------------------------------------------------------
    // the direct link

    fn direct_connect(&mut self) {
        if !self.sc.direct
            || self.direct.conn.is_some()
            || self.direct.cut.is_some()
            || self.nodes.iter().any(|n| n.live.is_none())
        {
            return;
        }
        self.busy();
        self.direct.next += 1;
        let conn = self.direct.next;
        self.direct.conn = Some(conn);
        self.trace.add(self.t, 2, "direct-up", conn, 0);
        for n in 0..2 {
            let path = self.next_path;
            self.next_path += 1;
            let now = self.now(n);
            if let Some(l) = self.nodes[n].live.as_mut() {
                if let Some(old) = l.direct_path.take() {
                    l.paths.remove(&old);
                    l.conn.path_down(now, old);
                }
                l.paths.insert(path, Hop::Direct { conn });
                l.direct_path = Some(path);
                l.conn.path_up(now, path, PathKind::Direct);
            }
        }
        self.pump(0);
        self.pump(1);
    }

    /// The direct connection dies; each side notices after `notice` ms.
    fn kill_direct(&mut self, notice: T) {
        if self.direct.conn.take().is_none() {
            return;
        }
        for n in 0..2 {
            if let Some(path) = self.nodes[n].live.as_ref().and_then(|l| l.direct_path) {
                self.after(notice, Ev::DirectDownNotice { n, path });
            }
        }
        let d = notice + self.rng.range(100, 3 * SECOND);
        self.after(d, Ev::DirectConnect);
    }

    fn send_direct(&mut self, from: usize, conn: u64, blob: Vec<u8>) {
        if self.direct.conn != Some(conn) || self.direct.cut.is_some() {
            return;
        }
        if self.rng.chance(self.loss) {
            return;
        }
        if self.rng.chance(self.dup) {
            let d = self.link_latency() * 2 + self.rng.range(0, 300);
            let copy = blob.clone();
            self.after(
                d,
                Ev::DirectArrive {
                    to: 1 - from,
                    conn,
                    blob: copy,
                },
            );
        }
        let mut d = self.link_latency() * 2;
        if self.rng.chance(self.reorder) {
            d += self.rng.range(1, 500);
        }
        self.after(
            d,
            Ev::DirectArrive {
                to: 1 - from,
                conn,
                blob,
            },
        );
    }

    fn direct_arrive(&mut self, to: usize, conn: u64, blob: Vec<u8>) {
        if self.direct.conn != Some(conn) || self.direct.cut.is_some() {
            return;
        }
        let now = self.now(to);
        let Some(l) = self.nodes[to].live.as_mut() else {
            return;
        };
        let Some(path) = l.direct_path else {
            return;
        };
        if l.paths.get(&path) != Some(&Hop::Direct { conn }) {
            return;
        }
        l.conn.handle_blob(now, path, &blob);
        self.pump(to);
    }

    // ---------------------------------------------------------------------------------
    // the relay

    fn relay_connect(&mut self, n: usize) {
        if !self.sc.relay
            || !self.relay.up
            || self.relay.cut[n].is_some()
            || self.nodes[n].live.is_none()
        {
            return;
        }
        if let Some(l) = self.nodes[n].live.as_ref()
            && let Some(p) = l.relay_path
            && let Some(Hop::Relay { conn }) = l.paths.get(&p)
            && self.relay.conns[n]
                .as_ref()
                .is_some_and(|c| c.conn == *conn)
        {
            return; // connected already
        }
        self.busy();
        self.relay.next_conn += 1;
        let conn = self.relay.next_conn;
        let now = self.now(n);
        let path = self.next_path;
        self.next_path += 1;
        let Some(l) = self.nodes[n].live.as_mut() else {
            return;
        };
        let subs = l.conn.recv_inboxes(now).unwrap_or_default();
        if let Some(old) = l.relay_path.take() {
            l.paths.remove(&old);
            l.conn.path_down(now, old);
        }
        l.paths.insert(path, Hop::Relay { conn });
        l.relay_path = Some(path);
        self.relay.conns[n] = Some(RelayConn {
            conn,
            subs: subs.clone(),
        });
        self.trace.add(self.t, n as u8, "relay-up", conn, 0);
        if let Some(l) = self.nodes[n].live.as_mut() {
            l.conn
                .path_up(now, path, PathKind::Relay { relay: RELAY_ID });
        }
        self.pump(n);
        self.push_stored(n, &subs);
    }

    /// The relay delivers what it holds for these inboxes to node `n`.
    fn push_stored(&mut self, n: usize, inboxes: &[InboxId]) {
        self.relay_expire();
        let Some(c) = &self.relay.conns[n] else {
            return;
        };
        let conn = c.conn;
        let due: Vec<(EnvelopeId, Arc<[u8]>)> = self
            .relay
            .store
            .values()
            .filter(|e| inboxes.contains(&e.inbox))
            .map(|e| (e.id, e.blob.clone()))
            .collect();
        for (id, blob) in due {
            self.relay_send(
                n,
                conn,
                RelayMsg::Deliver {
                    id: Some(id),
                    blob: blob.to_vec(),
                },
            );
        }
    }

    fn resubscribe(&mut self, n: usize) {
        let now = self.now(n);
        let Some(l) = self.nodes[n].live.as_ref() else {
            return;
        };
        let Some(p) = l.relay_path else {
            return;
        };
        let Some(Hop::Relay { conn }) = l.paths.get(&p).copied() else {
            return;
        };
        let subs = l.conn.recv_inboxes(now).unwrap_or_default();
        let Some(c) = self.relay.conns[n].as_mut() else {
            return;
        };
        if c.conn != conn {
            return;
        }
        let new: Vec<InboxId> = subs
            .iter()
            .filter(|s| !c.subs.contains(s))
            .copied()
            .collect();
        c.subs = subs;
        if !new.is_empty() {
            self.push_stored(n, &new);
        }
    }

    fn relay_expire(&mut self) {
        let t = self.t;
        while let Some((&k, e)) = self.relay.store.first_key_value() {
            if e.expires > t {
                break;
            }
            let key = (e.inbox, e.id);
            self.relay.store.remove(&k);
            self.relay.index.remove(&key);
        }
    }

    /// The relay drops node `n`'s connection (the node notices after `notice` ms and
    /// reconnects `reconnect` ms later, if it can).
    fn relay_kill(&mut self, n: usize, notice: T, reconnect: T) {
        if self.relay.conns[n].take().is_none() {
            return;
        }
        if let Some(path) = self.nodes[n].live.as_ref().and_then(|l| l.relay_path) {
            self.after(notice, Ev::RelayDownNotice { n, path });
        }
        let d = notice + reconnect + self.rng.range(100, 3 * SECOND);
        self.after(d, Ev::RelayConnect { n });
    }

    fn relay_restart(&mut self, lose_store: bool) {
        self.trace
            .add(self.t, 2, "relay-restart", lose_store as u64, 0);
        self.relay.up = false;
        for n in 0..2 {
            let notice = self.rng.range(1, 2 * SECOND);
            if self.relay.conns[n].take().is_some()
                && let Some(path) = self.nodes[n].live.as_ref().and_then(|l| l.relay_path)
            {
                self.after(notice, Ev::RelayDownNotice { n, path });
            }
        }
        if lose_store {
            self.relay.store.clear();
            self.relay.index.clear();
        }
    }

    fn relay_send(&mut self, to: usize, conn: u64, msg: RelayMsg) {
        let lat = self.link_latency();
        let mut at = (self.t + lat).max(self.relay.last_out[to]);
        if self.relay.cut[to].is_some() {
            at = at.max(self.relay.cut_until[to] + lat);
        }
        let reorder = self.hostile.as_ref().map_or(0.0, |h| h.reorder);
        if self.rng.chance(reorder) {
            let ms = self.hostile.as_ref().map_or(0, |h| h.reorder_ms);
            at = self.t + lat + self.rng.range(1, ms);
        } else {
            self.relay.last_out[to] = at;
        }
        self.at(at, Ev::RelayOut { to, conn, msg });
    }

    fn subscriber(&self, inbox: &InboxId) -> Option<(usize, u64)> {
        (0..2).find_map(|n| {
            self.relay.conns[n]
                .as_ref()
                .filter(|c| c.subs.contains(inbox))
                .map(|c| (n, c.conn))
        })
    }

    fn relay_in(&mut self, from: usize, conn: u64, frame: Vec<u8>) {
        if !self.relay.up
            || self.relay.conns[from]
                .as_ref()
                .is_none_or(|c| c.conn != conn)
        {
            return;
        }
        let Some(hf) = frame.get(4..).and_then(|f| HopFrame::parse(f).ok()) else {
            return;
        };
        self.relay_expire();
        let h = self.hostile.clone();
        match hf {
            HopFrame::Post {
                dst,
                store: false,
                blob,
            } => {
                if h.as_ref().is_some_and(|h| self.rng.chance(h.drop)) {
                    return;
                }
                let sub = self.subscriber(&dst).filter(|(to, _)| *to != from);
                let lie = h.as_ref().is_some_and(|h| self.rng.chance(h.lie_absent));
                if let Some(hh) = &h {
                    if self.relay.seen_live.len() >= 32 {
                        self.relay.seen_live.pop_front();
                    }
                    self.relay.seen_live.push_back((1 - from, blob.to_vec()));
                    if blob.first() == Some(&BLOB_HS_INIT) && self.rng.chance(hh.forge_resp) {
                        self.forge_resp(from, conn, blob);
                    }
                }
                match sub {
                    Some((to, tc)) if !lie => self.relay_send(
                        to,
                        tc,
                        RelayMsg::Deliver {
                            id: None,
                            blob: blob.to_vec(),
                        },
                    ),
                    _ => self.relay_send(
                        from,
                        conn,
                        RelayMsg::Error {
                            code: hop_err::NO_SUBSCRIBER,
                            reference: envelope_id(blob),
                        },
                    ),
                }
            }
            HopFrame::Post {
                dst,
                store: true,
                blob,
            } => {
                let id = envelope_id(blob);
                if let Some(hh) = &h {
                    if self.rng.chance(hh.drop) {
                        return;
                    }
                    if self.rng.chance(hh.lie_stored) {
                        self.relay_send(from, conn, RelayMsg::Stored { id });
                        return;
                    }
                }
                if self.relay.index.contains_key(&(dst, id)) {
                    self.relay_send(from, conn, RelayMsg::Stored { id });
                    return;
                }
                if let Some(q) = self.sc.relay_quota
                    && self.relay.store.values().filter(|e| e.inbox == dst).count() >= q
                {
                    self.relay_send(
                        from,
                        conn,
                        RelayMsg::Error {
                            code: hop_err::QUOTA,
                            reference: id,
                        },
                    );
                    return;
                }
                let blob: Arc<[u8]> = Arc::from(blob);
                let order = self.relay.next_order;
                self.relay.next_order += 1;
                self.relay.store.insert(
                    order,
                    StoredEnv {
                        inbox: dst,
                        id,
                        blob: blob.clone(),
                        expires: self.t + self.sc.relay_ttl,
                    },
                );
                self.relay.index.insert((dst, id), order);
                self.relay_send(from, conn, RelayMsg::Stored { id });
                if h.is_some() {
                    if self.relay.seen_env.len() >= 32 {
                        self.relay.seen_env.pop_front();
                    }
                    self.relay.seen_env.push_back((1 - from, id, blob.clone()));
                }
                if let Some((to, tc)) = self.subscriber(&dst).filter(|(to, _)| *to != from) {
                    let copies = if h.as_ref().is_some_and(|h| self.rng.chance(h.dup_deliver)) {
                        2
                    } else {
                        1
                    };
                    for _ in 0..copies {
                        self.relay_send(
                            to,
                            tc,
                            RelayMsg::Deliver {
                                id: Some(id),
                                blob: blob.to_vec(),
                            },
                        );
                    }
                }
            }
            HopFrame::Ack { envelope_id: id } => {
                let subs = self.relay.conns[from]
                    .as_ref()
                    .map(|c| c.subs.clone())
                    .unwrap_or_default();
                for inbox in subs {
                    if let Some(order) = self.relay.index.remove(&(inbox, id))
                        && let Some(e) = self.relay.store.remove(&order)
                    {
                        self.check_envelope_durable(from, &e.blob);
                    }
                }
            }
            _ => {}
        }
    }

    /// The relay may delete an envelope only once everything it carried is durably stored
    /// (the simulator opens it with the recipient's keys to see).
    fn check_envelope_durable(&mut self, n: usize, blob: &[u8]) {
        let node = &self.nodes[n];
        let local = node.id.local_keys();
        let ring = &node.durable.ring;
        let Ok(env) = envelope::open(&local, &node.peer_keys, |k| ring.find(k), blob) else {
            return; // it cannot be opened: deleting it is right
        };
        for f in Frames::new(env.frames()) {
            if let Ok(Frame::Msg { seq, .. }) = f {
                let held = node.durable.inbox.contains_key(&seq)
                    || (node.restored && node.ever_held.contains_key(&seq));
                if !held {
                    let name = node.name;
                    self.fail(format!(
                        "{name}: lets the relay delete an envelope carrying seq {seq}, which it has not stored"
                    ));
                    return;
                }
            }
        }
    }

    fn forge_resp(&mut self, to: usize, conn: u64, init: &[u8]) {
        let Some(idx) = init.get(1..5) else {
            return;
        };
        let mut f = vec![BLOB_HS_RESP];
        f.extend_from_slice(&(self.rng.next_u64() as u32).to_le_bytes());
        f.extend_from_slice(idx);
        let mut ct = vec![0u8; MLKEM_CT_LEN + HS_MSG2_MIN_LEN + self.rng.range(0, 200) as usize];
        self.rng.bytes(&mut ct);
        f.extend_from_slice(&ct);
        self.relay_send(to, conn, RelayMsg::Deliver { id: None, blob: f });
    }

    fn hostile_act(&mut self) {
        let choice = self.rng.range(0, 3);
        let mut target: Option<(usize, Vec<u8>, Option<EnvelopeId>)> = None;
        match choice {
            0 => {
                let n = self.relay.seen_live.len() as u64;
                if n > 0 {
                    let i = self.rng.range(0, n - 1) as usize;
                    if let Some((to, b)) = self.relay.seen_live.get(i) {
                        target = Some((*to, b.clone(), None));
                    }
                }
            }
            1 => {
                let n = self.relay.seen_env.len() as u64;
                if n > 0 {
                    let i = self.rng.range(0, n - 1) as usize;
                    let fresh_id = self.rng.chance(0.3);
                    let mut fid = [0u8; 16];
                    self.rng.bytes(&mut fid);
                    if let Some((to, id, b)) = self.relay.seen_env.get(i) {
                        target = Some((*to, b.to_vec(), Some(if fresh_id { fid } else { *id })));
                    }
                }
            }
            _ => {
                let len = self.rng.log_range(1, 3000) as usize;
                let mut b = vec![0u8; len];
                self.rng.bytes(&mut b);
                if let Some(first) = b.first_mut() {
                    *first = self.rng.range(0, 6) as u8;
                }
                let to = self.rng.range(0, 1) as usize;
                let mut id = [0u8; 16];
                self.rng.bytes(&mut id);
                let with_id = self.rng.chance(0.5);
                target = Some((to, b, with_id.then_some(id)));
            }
        }
        if let Some((to, blob, id)) = target
            && let Some(c) = &self.relay.conns[to]
        {
            let conn = c.conn;
            self.trace.add(
                self.t,
                to as u8,
                "hostile-replay",
                choice,
                blob.len() as u64,
            );
            self.relay_send(to, conn, RelayMsg::Deliver { id, blob });
        }
    }

    fn relay_out(&mut self, to: usize, conn: u64, msg: RelayMsg) {
        let now = self.now(to);
        let node = &mut self.nodes[to];
        let Some(l) = node.live.as_mut() else {
            return;
        };
        let Some(path) = l.relay_path else {
            return;
        };
        if l.paths.get(&path) != Some(&Hop::Relay { conn }) {
            return;
        }
        match msg {
            RelayMsg::Deliver { id, blob } => {
                let ring = &node.durable.ring;
                l.conn
                    .handle_relay_deliver(now, path, id, &blob, |k| ring.find(k));
            }
            RelayMsg::Stored { id } => l.conn.relay_stored(now, path, id),
            RelayMsg::Error { code, reference } => l.conn.relay_error(now, path, code, reference),
        }
        self.pump(to);
    }

    // ---------------------------------------------------------------------------------
    // the end

    /// No more faults: every cut heals, clocks are right, the relay is honest, every node
    /// runs, and both users open the line.
    fn heal(&mut self) {
        self.healing = true;
        self.trace.add(self.t, 2, "heal", 0, 0);
        let was_hostile = self.hostile.take().is_some();
        self.loss = 0.0;
        self.dup = 0.0;
        self.reorder = 0.0;
        self.direct.cut = None;
        self.relay.cut = [None, None];
        for n in 0..2 {
            if self.nodes[n].clock_skew_ms != 0 {
                self.set_skew(n, 0);
            }
        }
        if was_hostile && self.relay.up {
            // the hostile relay is replaced by an honest one (with the same store)
            self.relay_restart(false);
        }
        if !self.relay.up {
            self.relay.up = true;
        }
        for n in 0..2 {
            if self.nodes[n].live.is_none() {
                self.nodes[n].restart_pending = false;
                self.start(n);
            }
        }
        self.after(10, Ev::DirectConnect);
        for n in 0..2 {
            self.after(10, Ev::RelayConnect { n });
            if self.sc.heal_calls {
                self.after(SECOND, Ev::Call { n });
            }
        }
    }

    /// Both sides commit their audit logs and exchange what is left.
    fn final_exchange(&mut self) {
        self.final_state = Some([self.nodes[0].durable_now(), self.nodes[1].durable_now()]);
        for n in 0..2 {
            let now = self.now(n);
            self.final_unacked[n] = self.nodes[n]
                .live
                .as_ref()
                .map_or(0, |l| l.conn.status(now).unacked);
        }
        for n in 0..2 {
            let now = self.now(n);
            if let Some(l) = self.nodes[n].live.as_mut() {
                match l.audit.close(now.unix_ms) {
                    Ok(Some(o)) => l.conn.queue_audit(vec![o]),
                    Ok(None) => {}
                    Err(e) => {
                        let msg = format!("final audit commit: {e}");
                        self.fail(msg);
                    }
                }
            }
            self.pump(n);
            self.user_call(n);
        }
        // cosignatures and receipts come back; commit what they add, once
        for n in 0..2 {
            let life = self.nodes[n].life;
            if let Some(l) = self.nodes[n].live.as_mut() {
                l.audit_dirty = true;
            }
            self.after(MINUTE, Ev::AuditCommit { n, life });
        }
    }

    /// Idle hours and their audit growth.
    pub fn idle_growth(&mut self) -> Vec<(usize, u64, u64)> {
        let mut over = Vec::new();
        let last = hour_of(self.heal_at);
        for h in 0..last {
            if self.busy_hours.contains(&h) {
                continue;
            }
            self.stats.idle_hours += 1;
            for n in 0..2 {
                let g = self.nodes[n].audit_growth.get(&h).copied().unwrap_or(0);
                self.stats.idle_entries += g;
                self.stats.max_idle_hour = self.stats.max_idle_hour.max(g);
                if g > IDLE_ENTRIES_PER_HOUR {
                    over.push((n, h, g));
                }
            }
        }
        over
    }

    /// A node's store when the healing period ended (what the delivery checks judge: before
    /// the users' last calls for the audit exchange), else as it is now.
    pub fn durable(&self, n: usize) -> Durable {
        match &self.final_state {
            Some(f) => f[n].clone(),
            None => self.nodes[n].durable_now(),
        }
    }

    pub fn any_restore(&self) -> bool {
        self.nodes.iter().any(|n| n.restored)
    }
}
