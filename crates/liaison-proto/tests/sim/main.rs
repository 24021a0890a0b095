//! A deterministic simulator of the line engine ([`liaison_proto::conn::Conn`]) over days of
//! virtual time: two engines with store models that answer like a node shell (after a disk
//! delay), a direct link and a relay (store-and-forward, TTL, quotas, restarts, and a hostile
//! variant), crashes at every persistence point, backup restores, clock jumps, users writing
//! bursts of messages, and the audit logs of both sides. Real crypto throughout; time jumps
//! from event to event, so idle days cost nothing.
//!
//! After every run: exactly-once in-order delivery (at least once with restores), nothing
//! reported delivered that the peer does not hold, idle audit growth bounded, and the two
//! audit logs cross-checked by the offline checker (a restore must show as a fork).
//!
//! `cargo test -p liaison-proto --test sim` runs 200 seeds × 7 virtual days;
//! `LIAISON_SIM_SEEDS=N` runs N seeds (from `LIAISON_SIM_FIRST`, default 0),
//! `LIAISON_SIM_SEED=S` runs one (and prints its summary), `LIAISON_SIM_DAYS=D` changes the
//! length, `LIAISON_SIM_VERBOSE=1` prints a line per seed and `LIAISON_SIM_TRACE=1` every
//! event as it happens (for one seed). A failing seed prints its reproduction line and the
//! last events.
//!
//! Modules: `scenario` (what a seed simulates), `world` (time, network, relay, users, faults
//! and the node shell), `node` (the store model), `check` (the end-of-run invariants),
//! `trace`, `rng`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod check;
mod node;
mod rng;
mod scenario;
mod trace;
mod world;

use scenario::DAY;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use world::World;

const DEFAULT_SEEDS: u64 = 200;
const DEFAULT_DAYS: u64 = 7;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// What one seed produced.
#[derive(Debug, Clone)]
struct SeedReport {
    seed: u64,
    summary: String,
    stats: world::Stats,
    outcome: check::Outcome,
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".into()
    }
}

/// Runs one seed; `Err` carries the failure report (with its reproduction line and trace).
fn run_seed(seed: u64, days: u64) -> Result<SeedReport, String> {
    let mut w = World::new(seed, days * DAY);
    let mut outcome = check::Outcome::default();
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut v = Vec::new();
        if !w.run() {
            v.append(&mut w.violations);
            return v;
        }
        v.append(&mut check::delivery(&w, &mut outcome));
        v.append(&mut check::audit(&w, &mut outcome));
        v.append(&mut check::idle(&mut w));
        v
    }));
    let violations = match res {
        Ok(v) => v,
        Err(p) => vec![format!("panicked: {}", panic_text(p.as_ref()))],
    };
    if violations.is_empty() {
        return Ok(SeedReport {
            seed,
            summary: w.sc.summary(),
            stats: w.stats.clone(),
            outcome,
        });
    }
    let mut s = format!("seed {seed} FAILED at t={} ms ({})\n", w.t, w.sc.summary());
    for v in &violations {
        s.push_str(&format!("  - {v}\n"));
    }
    s.push_str(&format!(
        "  reproduce: LIAISON_SIM_SEED={seed} cargo test -p liaison-proto --test sim\n  last events:\n"
    ));
    s.push_str(&w.trace.render(trace::SHOW));
    Err(s)
}

/// Set to `true` only to measure the old audit crate's cosignature loop (each cosignature
/// record called for a checkpoint the peer cosigned in turn): `audit_cosign_loop` then reports
/// the growth instead of failing. With the audit log's fix it is a bound that must hold.
const AUDIT_COSIGN_LOOP_KNOWN: bool = false;

/// A quiet line with the node shell's audit policy (commit after every AUDIT message): after a
/// few messages at the start, how much do the logs grow in ten idle minutes?
#[test]
fn audit_cosign_loop() {
    let mut w = World::with(rng::Rng::new(7), scenario::Scenario::calm(), 30 * DAY);
    w.commit_after_audit_messages = true;
    assert!(w.run_until(3 * scenario::MINUTE), "{:?}", w.violations);
    let before = w.audit_entries();
    assert!(w.run_until(13 * scenario::MINUTE), "{:?}", w.violations);
    let grown = w.audit_entries() - before;
    if AUDIT_COSIGN_LOOP_KNOWN {
        eprintln!(
            "audit_cosign_loop: the logs grew by {grown} entries in 10 idle minutes (the known cosignature loop; bound {})",
            world::IDLE_ENTRIES_PER_HOUR
        );
    } else {
        assert!(
            grown <= world::IDLE_ENTRIES_PER_HOUR,
            "the logs of an idle line grew by {grown} entries in 10 minutes"
        );
    }
}

#[test]
fn simulate_seeds() {
    let days = env_u64("LIAISON_SIM_DAYS").unwrap_or(DEFAULT_DAYS).max(1);
    let seeds: Vec<u64> = match env_u64("LIAISON_SIM_SEED") {
        Some(s) => vec![s],
        None => {
            let first = env_u64("LIAISON_SIM_FIRST").unwrap_or(0);
            let n = env_u64("LIAISON_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
            (first..first.saturating_add(n)).collect()
        }
    };
    let single = seeds.len() == 1;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(seeds.len().max(1));
    let next = AtomicU64::new(0);
    let failures: Mutex<Vec<(u64, String)>> = Mutex::new(Vec::new());
    let reports: Mutex<Vec<SeedReport>> = Mutex::new(Vec::new());
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(&seed) = seeds.get(i) else {
                        break;
                    };
                    match run_seed(seed, days) {
                        Ok(r) => reports.lock().unwrap().push(r),
                        Err(f) => {
                            eprintln!("{f}");
                            failures.lock().unwrap().push((seed, f));
                        }
                    }
                }
            });
        }
    });
    let elapsed = started.elapsed();
    let reports = reports.into_inner().unwrap();
    let mut failures = failures.into_inner().unwrap();
    failures.sort_by_key(|f| f.0);
    let n = reports.len().max(1) as u64;
    let sum = |f: &dyn Fn(&SeedReport) -> u64| reports.iter().map(f).sum::<u64>();
    let max = |f: &dyn Fn(&SeedReport) -> u64| reports.iter().map(f).max().unwrap_or(0);
    eprintln!(
        "sim: {} seeds x {days} days in {:.1} s ({} failed); per seed: {} events, {} handshakes (max {}), {} envelopes, {} messages stored, {} crashes; {} restores, {} forks reported; idle hours {} with {} audit entries (max {} in one hour)",
        seeds.len(),
        elapsed.as_secs_f64(),
        failures.len(),
        sum(&|r| r.stats.events) / n,
        sum(&|r| r.stats.handshakes) / n,
        max(&|r| r.stats.handshakes),
        sum(&|r| r.stats.envelopes) / n,
        sum(&|r| r.stats.messages) / n,
        sum(&|r| r.stats.crashes as u64) / n,
        sum(&|r| r.stats.restores as u64),
        reports.iter().filter(|r| r.outcome.fork_reported).count(),
        sum(&|r| r.stats.idle_hours),
        sum(&|r| r.stats.idle_entries),
        max(&|r| r.stats.max_idle_hour),
    );
    if single || env_u64("LIAISON_SIM_VERBOSE").is_some() {
        let mut reports = reports.clone();
        reports.sort_by_key(|r| r.seed);
        for r in &reports {
            eprintln!(
                "seed {}: {} | events {} hs {} env {} msgs {} crashes {} restores {} commits {} fork {} | {:?}",
                r.seed,
                r.summary,
                r.stats.events,
                r.stats.handshakes,
                r.stats.envelopes,
                r.stats.messages,
                r.stats.crashes,
                r.stats.restores,
                r.stats.commits,
                r.outcome.fork_reported,
                r.stats.anomalies
            );
        }
    }
    if !failures.is_empty() {
        let seeds: Vec<String> = failures.iter().map(|f| f.0.to_string()).collect();
        panic!(
            "{} of {} seeds failed: {}",
            failures.len(),
            reports.len() + failures.len(),
            seeds.join(" ")
        );
    }
}
