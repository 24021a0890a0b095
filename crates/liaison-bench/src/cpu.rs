//! How much CPU other processes took while a section ran, from `/proc/stat` (all CPUs) minus
//! `/proc/self/stat` (this process). Figures taken while other work competes for the two cores
//! are low, and this says by how much the machine was shared. Linux only; `None` elsewhere.

/// A snapshot of machine-wide and own CPU time, in clock ticks.
#[derive(Debug, Clone, Copy)]
pub struct CpuProbe {
    total: u64,
    busy: u64,
    idle: u64,
    own: u64,
}

/// CPU use over a section, in cores' worth (0..=available cores).
#[derive(Debug, Clone, Copy)]
pub struct CpuUse {
    /// Used by this process.
    pub own: f64,
    /// Used by other processes.
    pub others: f64,
    /// Idle.
    pub idle: f64,
}

fn machine_ticks() -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 8 {
        return None;
    }
    // user + nice + system: what processes ran (irq/softirq time, e.g. loopback packets
    // handled on our behalf, is not attributed to anyone, so it is left out)
    let total: u64 = v.iter().sum();
    let busy = v.first()? + v.get(1)? + v.get(2)?;
    let idle = v.get(3)? + v.get(4)?;
    Some((total, busy, idle))
}

fn own_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // fields after the parenthesised command name; utime and stime are fields 14 and 15
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

impl CpuProbe {
    /// Now.
    pub fn start() -> Option<CpuProbe> {
        let (total, busy, idle) = machine_ticks()?;
        Some(CpuProbe {
            total,
            busy,
            idle,
            own: own_ticks()?,
        })
    }

    /// CPU use since `start`.
    pub fn usage(&self) -> Option<CpuUse> {
        let now = CpuProbe::start()?;
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64;
        let total = now.total.checked_sub(self.total)? as f64;
        if total <= 0.0 {
            return None;
        }
        let busy = now.busy.saturating_sub(self.busy);
        let own = now.own.saturating_sub(self.own);
        let idle = now.idle.saturating_sub(self.idle);
        Some(CpuUse {
            own: own as f64 / total * cores,
            others: busy.saturating_sub(own) as f64 / total * cores,
            idle: idle as f64 / total * cores,
        })
    }
}

/// CPU time this process used so far (all threads, user + system), microsecond resolution.
pub fn process_cpu() -> Option<std::time::Duration> {
    use nix::sys::resource::{UsageWho, getrusage};
    use nix::sys::time::TimeValLike;
    let u = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    let us = u.user_time().num_microseconds() + u.system_time().num_microseconds();
    Some(std::time::Duration::from_micros(u64::try_from(us).ok()?))
}

/// Name (as `/proc` shows it, 15 bytes) of tokio's worker threads.
const WORKER_COMM: &str = "tokio-rt-worker";

/// Worker threads of the bench's runtime (`main` builds it with 2).
const WORKERS: usize = 2;

/// Summed scheduler statistics of this process's tokio worker threads: nanoseconds running,
/// nanoseconds runnable but waiting for a CPU (taken by someone else), and how many workers.
///
/// tokio's blocking-pool threads carry the same name (the relay's store joins its thread
/// with `spawn_blocking`, and such a thread lingers for 10 s), so only the [`WORKERS`]
/// oldest threads of that name count: the workers start with the runtime, before any
/// blocking thread.
fn workers_schedstat() -> Option<(u64, u64, usize)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let dir = entry.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim_end() != WORKER_COMM {
            continue;
        }
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u64>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(dir.join("schedstat")).ok()?;
        let mut f = stat.split_whitespace().map(|x| x.parse::<u64>().ok());
        found.push((tid, f.next()??, f.next()??));
    }
    found.sort_unstable();
    found.truncate(WORKERS);
    let run = found.iter().map(|w| w.1).sum();
    let wait = found.iter().map(|w| w.2).sum();
    (!found.is_empty()).then_some((run, wait, found.len()))
}

/// A timed measurement window: wall time, this process's CPU time, its workers' scheduling,
/// and the machine's.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    t0: std::time::Instant,
    cpu0: Option<std::time::Duration>,
    probe: Option<CpuProbe>,
    workers0: Option<(u64, u64, usize)>,
}

/// What a window measured for `bytes` moved.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// MiB per second of wall time.
    pub mib_s: f64,
    /// Cores' worth of CPU this process used during the window.
    pub own_cores: Option<f64>,
    /// Cores' worth other processes used.
    pub other_cores: Option<f64>,
    /// Cores' worth left idle.
    pub idle_cores: Option<f64>,
    /// CPU milliseconds this process spent per MiB moved (both ends together).
    pub cpu_ms_per_mib: Option<f64>,
    /// The tokio workers: cores' worth running, waiting for a CPU held by another process,
    /// and parked with nothing to do (a pipeline bubble on an otherwise idle machine).
    pub workers: Option<(f64, f64, f64)>,
}

impl Window {
    /// Starts now.
    pub fn start() -> Window {
        Window {
            cpu0: process_cpu(),
            probe: CpuProbe::start(),
            workers0: workers_schedstat(),
            t0: std::time::Instant::now(),
        }
    }

    /// Ends now, having moved `bytes`.
    pub fn finish(&self, bytes: u64) -> Measured {
        let wall = self.t0.elapsed();
        let cpu = match (self.cpu0, process_cpu()) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        let mib = bytes as f64 / (1024.0 * 1024.0);
        let usage = self.probe.and_then(|p| p.usage());
        let secs = wall.as_secs_f64().max(1e-9);
        let workers = match (self.workers0, workers_schedstat()) {
            (Some((r0, w0, n0)), Some((r1, w1, n1))) if n0 == n1 => {
                let run = r1.saturating_sub(r0) as f64 / 1e9 / secs;
                let wait = w1.saturating_sub(w0) as f64 / 1e9 / secs;
                Some((run, wait, (n1 as f64 - run - wait).max(0.0)))
            }
            _ => None,
        };
        Measured {
            workers,
            mib_s: crate::stats::mib_s(bytes, wall),
            own_cores: cpu.map(|c| c.as_secs_f64() / wall.as_secs_f64().max(1e-9)),
            other_cores: usage.map(|u| u.others),
            idle_cores: usage.map(|u| u.idle),
            cpu_ms_per_mib: cpu
                .filter(|_| mib > 0.0)
                .map(|c| c.as_secs_f64() * 1e3 / mib),
        }
    }
}
