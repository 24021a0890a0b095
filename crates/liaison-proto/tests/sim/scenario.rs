//! What one seed simulates: the topology, the network's quality, which faults strike and how
//! often, and how busy the users are. Drawn from the seed, so every seed is a different world.

use crate::rng::Rng;

pub const SECOND: u64 = 1000;
pub const MINUTE: u64 = 60 * SECOND;
pub const HOUR: u64 = 60 * MINUTE;
pub const DAY: u64 = 24 * HOUR;

/// What a hostile relay does, as probabilities per opportunity.
#[derive(Debug, Clone)]
pub struct Hostile {
    /// Drop a post without an answer.
    pub drop: f64,
    /// Answer "stored" to a post it drops.
    pub lie_stored: f64,
    /// Answer `NO_SUBSCRIBER` although the peer is there.
    pub lie_absent: f64,
    /// Hold a frame for up to `reorder_ms` (reordering).
    pub reorder: f64,
    pub reorder_ms: u64,
    /// Answer a seen `HS_INIT` with a forged `HS_RESP` naming its `sender_idx`.
    pub forge_resp: f64,
    /// Deliver a stored envelope twice.
    pub dup_deliver: f64,
    /// Mean time between replays of old blobs and envelopes, and injections of garbage.
    pub act_every_ms: u64,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub direct: bool,
    pub relay: bool,
    pub pairing: bool,
    pub latency_ms: (u64, u64),
    pub loss: f64,
    pub dup: f64,
    pub reorder: f64,
    /// Mean time between cuts of the direct link / of one node's relay connection (0: none).
    pub direct_cut_every: u64,
    pub relay_cut_every: u64,
    pub cut_len: (u64, u64),
    pub relay_restart_every: u64,
    pub relay_store_loss: f64,
    pub relay_ttl: u64,
    pub relay_quota: Option<usize>,
    /// Probability that a store transaction is where the node crashes (before or after it
    /// commits).
    pub crash_at_persist: f64,
    pub crash_every: u64,
    pub max_crashes: u32,
    pub restart_delay: (u64, u64),
    pub clock_jump_every: u64,
    pub clock_jump_max: u64,
    pub snapshot_every: u64,
    pub restores: u32,
    pub hostile: Option<Hostile>,
    pub disk_delay: (u64, u64),
    pub msgs_per_node: u32,
    pub call_every: u64,
    pub hangup_every: u64,
    /// How long a node stays off after its user stopped it.
    pub off_len: (u64, u64),
    /// Both users call when the faults end (else the engines alone must bring the line back).
    pub heal_calls: bool,
    /// Pauses between two messages of a burst.
    pub busy_gap: (u64, u64),
}

impl Scenario {
    pub fn draw(rng: &mut Rng) -> Self {
        let topo = rng.range(0, 9);
        let (direct, relay) = match topo {
            0..=2 => (true, false),
            3..=5 => (false, true),
            _ => (true, true),
        };
        let rough = rng.chance(0.5);
        let faulty = |rng: &mut Rng, p: f64, lo: u64, hi: u64| {
            let every = rng.log_range(lo, hi);
            if rng.chance(p) { every } else { 0 }
        };
        let restores = if rng.chance(0.15) {
            rng.range(1, 2) as u32
        } else {
            0
        };
        let hostile = (relay && rng.chance(0.2)).then(|| Hostile {
            drop: [0.0, 0.02, 0.1][rng.range(0, 2) as usize],
            lie_stored: [0.0, 0.02][rng.range(0, 1) as usize],
            lie_absent: [0.0, 0.05, 0.2][rng.range(0, 2) as usize],
            reorder: [0.0, 0.1, 0.3][rng.range(0, 2) as usize],
            reorder_ms: rng.range(50, 3000),
            forge_resp: [0.0, 0.3, 1.0][rng.range(0, 2) as usize],
            dup_deliver: [0.0, 0.1][rng.range(0, 1) as usize],
            act_every_ms: rng.log_range(MINUTE, 2 * HOUR),
        });
        Scenario {
            direct,
            relay,
            pairing: rng.chance(0.3),
            latency_ms: if rough { (5, 300) } else { (1, 40) },
            loss: if rough {
                [0.01, 0.05, 0.2][rng.range(0, 2) as usize]
            } else {
                0.0
            },
            dup: if rough { 0.02 } else { 0.0 },
            reorder: if rough { 0.05 } else { 0.0 },
            direct_cut_every: faulty(rng, 0.6, 2 * HOUR, 2 * DAY),
            relay_cut_every: faulty(rng, 0.5, 3 * HOUR, 2 * DAY),
            cut_len: (SECOND, rng.log_range(MINUTE, 12 * HOUR)),
            relay_restart_every: faulty(rng, 0.5, 6 * HOUR, 3 * DAY),
            relay_store_loss: [0.0, 0.5, 1.0][rng.range(0, 2) as usize],
            relay_ttl: [7 * DAY, 2 * DAY, 12 * HOUR][rng.range(0, 2) as usize],
            relay_quota: rng.chance(0.2).then(|| rng.range(4, 64) as usize),
            crash_at_persist: [0.0, 0.0, 0.002, 0.01, 0.03][rng.range(0, 4) as usize],
            crash_every: faulty(rng, 0.5, 12 * HOUR, 4 * DAY),
            max_crashes: rng.range(3, 25) as u32,
            restart_delay: (10, rng.log_range(SECOND, 6 * HOUR)),
            clock_jump_every: faulty(rng, 0.3, 12 * HOUR, 4 * DAY),
            clock_jump_max: rng.log_range(SECOND, 3 * DAY),
            snapshot_every: if restores > 0 {
                rng.log_range(2 * HOUR, DAY)
            } else {
                0
            },
            restores,
            hostile,
            disk_delay: if rng.chance(0.3) { (1, 200) } else { (0, 5) },
            msgs_per_node: rng.log_range(6, 40) as u32,
            call_every: rng.log_range(12 * HOUR, 4 * DAY),
            hangup_every: faulty(rng, 0.8, 3 * HOUR, 2 * DAY),
            off_len: (30 * MINUTE, rng.log_range(2 * HOUR, DAY)),
            heal_calls: rng.chance(0.5),
            busy_gap: (200, rng.log_range(5 * SECOND, 3 * MINUTE)),
        }
    }

    /// `LIAISON_SIM_MIX=mailbox`: relay only, nodes off half the time, more messages: most of
    /// them travel sealed.
    pub fn mailbox_heavy(&mut self, rng: &mut Rng) {
        self.direct = false;
        self.relay = true;
        self.hangup_every = rng.log_range(HOUR, 6 * HOUR);
        self.off_len = (HOUR, rng.log_range(2 * HOUR, DAY));
        self.msgs_per_node = rng.range(30, 80) as u32;
    }

    /// A quiet world: a direct link, no fault, a few messages at the start.
    pub fn calm() -> Self {
        Scenario {
            direct: true,
            relay: false,
            pairing: false,
            latency_ms: (1, 20),
            loss: 0.0,
            dup: 0.0,
            reorder: 0.0,
            direct_cut_every: 0,
            relay_cut_every: 0,
            cut_len: (SECOND, SECOND),
            relay_restart_every: 0,
            relay_store_loss: 0.0,
            relay_ttl: 7 * DAY,
            relay_quota: None,
            crash_at_persist: 0.0,
            crash_every: 0,
            max_crashes: 0,
            restart_delay: (10, 10),
            clock_jump_every: 0,
            clock_jump_max: SECOND,
            snapshot_every: 0,
            restores: 0,
            hostile: None,
            disk_delay: (0, 5),
            msgs_per_node: 3,
            call_every: 30 * DAY,
            hangup_every: 0,
            off_len: (MINUTE, MINUTE),
            heal_calls: true,
            busy_gap: (200, 2 * SECOND),
        }
    }

    /// A one-line summary for reports.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        s.push_str(match (self.direct, self.relay) {
            (true, true) => "direct+relay",
            (true, false) => "direct",
            _ => "relay",
        });
        if self.loss > 0.0 {
            s.push_str(&format!(" loss={}", self.loss));
        }
        if self.direct_cut_every + self.relay_cut_every > 0 {
            s.push_str(" cuts");
        }
        if self.relay_restart_every > 0 {
            s.push_str(&format!(" relay-restarts(loss={})", self.relay_store_loss));
        }
        if self.crash_at_persist > 0.0 || self.crash_every > 0 {
            s.push_str(&format!(" crashes(p={})", self.crash_at_persist));
        }
        if self.clock_jump_every > 0 {
            s.push_str(" clock-jumps");
        }
        if self.restores > 0 {
            s.push_str(&format!(" restores={}", self.restores));
        }
        if self.hangup_every > 0 {
            s.push_str(" hangups");
        }
        if self.hostile.is_some() {
            s.push_str(" hostile-relay");
        }
        if self.relay_quota.is_some() {
            s.push_str(" quota");
        }
        if self.pairing {
            s.push_str(" pairing");
        }
        if !self.heal_calls {
            s.push_str(" heal-without-calls");
        }
        s
    }
}
