//! `liaison-bench`: what the direct line costs next to raw QUIC, in one process and one run.
//!
//! ```text
//! cargo run --release -p liaison-bench -- --json      # one JSON object on stdout
//! cargo run --release -p liaison-bench                # a readable table
//! cargo run --release -p liaison-bench -- --quick     # smaller sizes, a smoke run (< 1 min)
//! ```
//! Figures (see `docs/performance.md` for what each means and how it is measured):
//! - raw quinn bulk MiB/s `R` and the direct line's bulk MiB/s on the same pinned-TLS hop, and
//!   their ratio;
//! - the one-core in-memory Noise encrypt+decrypt MiB/s `N` (snow's default resolver, and its
//!   `RingResolver` for comparison) and the crypto-cost bound on the ratio, `2N / (2N + R)`;
//! - 256-byte round trips (p50/p99) for raw quinn and the line (transport only);
//! - durable delivery through two real nodes: submit → stored by the peer → receipt latency
//!   (p50/p99), messages per second on one line with group commit, and MiB/s of 16 MiB files.
//!
//! With `--relay` it also measures the relay path (`relay_path.rs`: the same Noise line through
//! a real in-process relay, bulk MiB/s interleaved with raw quinn's runs and round trips in
//! the same blocks, against the relay path's bound `2N / (4N + R)`), sealed envelopes
//! (`envelopes.rs`: seal + open in memory, `store = 1` posts through the relay's durable
//! queue), durable delivery between two real nodes that meet at a relay (`durable.rs`) and
//! relay capacity (`relay.rs`: idle subscribed nodes one relay holds and its memory); with
//! `--audit` the audit log (`audit.rs`: appends per second with checkpoints,
//! checking a 1,000,000-entry bundle). Both are off by default.
//!
//! Everything async runs on one tokio multi-thread runtime with 2 workers; every wait is
//! bounded, so a broken build fails with an error instead of hanging.
//!
//! Run it on an otherwise idle machine: the JSON says how much CPU other processes took
//! during each section (`cpu_cores_used`, `*_cpu_cores`), and the bulk figures also come as
//! CPU milliseconds per MiB, which other load disturbs much less than MiB/s.

mod audit;
mod cpu;
mod durable;
mod envelopes;
mod line;
mod noise;
mod oneshot;
mod raw;
mod relay;
mod relay_path;
mod setup;
mod stats;

use anyhow::Result;
use clap::Parser;
use serde_json::{Map, Value, json};
use stats::{median, percentile, round};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Unix seconds now.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unix milliseconds now.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

const MIB: u64 = 1024 * 1024;

#[derive(Debug, Parser)]
#[command(
    name = "liaison-bench",
    about = "Raw quinn vs the direct line, Noise cost, round trips and durable delivery"
)]
struct Args {
    /// Print one JSON object with every figure instead of a table.
    #[arg(long)]
    json: bool,
    /// Smaller sizes for a fast smoke run (under a minute).
    #[arg(long)]
    quick: bool,
    /// Bytes moved per bulk run (after a warm-up of an eighth of it, at most 128 MiB).
    #[arg(long, value_name = "N")]
    bytes: Option<u64>,
    /// Bulk runs per data path (the median is reported).
    #[arg(long, value_name = "N")]
    runs: Option<usize>,
    /// Only these sections (comma-separated: noise, bulk, rtt, durable, and with --relay
    /// envelope, envelope:live, capacity). `bulk:PATH` picks bulk data paths: raw, rawwc,
    /// line, node, relay, and the variants in docs/performance.md.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    only: Vec<String>,
    /// Also measure the relay path (bulk and round trips through an in-process relay, beside
    /// raw quinn's runs), sealed envelopes, and relay capacity (a relay child process holding
    /// idle subscribed nodes).
    #[arg(long)]
    relay: bool,
    /// Nodes the relay capacity test connects (default 10,000; 1,000 with --quick; 0 skips
    /// the capacity test).
    #[arg(long, value_name = "N")]
    relay_nodes: Option<usize>,
    /// Also measure the audit log (appends with checkpoints, checking a large bundle).
    #[arg(long)]
    audit: bool,
    /// Also time cold one-shot commands through the real `liaison` binary (`send` against
    /// `inbox`, the unlock alone); needs `cargo build --release` first or `LIAISON_BIN`.
    #[arg(long)]
    oneshot: bool,
    /// QUIC congestion controller of every hop in the run, raw quinn's included: bbr (the
    /// node's and relay's default) or cubic (quinn's default).
    #[arg(long, value_name = "CC", default_value = "bbr")]
    cc: liaison_hop::Congestion,
}

/// The congestion controller chosen with `--cc`.
static CONGESTION: std::sync::OnceLock<liaison_hop::Congestion> = std::sync::OnceLock::new();

/// The QUIC limits of the bench's hops: quinn's defaults as the node has them, with the
/// congestion controller of `--cc`.
pub(crate) fn hop_limits() -> liaison_hop::HopLimits {
    liaison_hop::HopLimits {
        congestion: CONGESTION.get().copied().unwrap_or_default(),
        ..liaison_hop::HopLimits::default()
    }
}

/// Sizes of one run.
#[derive(Debug)]
struct Plan {
    bulk_bytes: u64,
    warmup_bytes: u64,
    runs: usize,
    noise_secs: f64,
    noise_runs: usize,
    rtt_warmup: usize,
    rtt_rounds: usize,
    lat_warmup: usize,
    lat_msgs: usize,
    tput_msgs: usize,
    msg_size: usize,
    files: (usize, usize),
    envelopes_small: usize,
    envelopes_full: usize,
}

impl Plan {
    fn new(a: &Args) -> Plan {
        let (bulk, runs, noise_secs, rtt, lat, tput) = if a.quick {
            (128 * MIB, 1, 0.3, 500, 50, 3_000)
        } else {
            (1024 * MIB, 5, 1.0, 2_000, 500, 20_000)
        };
        let bulk_bytes = a.bytes.unwrap_or(bulk).max(MIB);
        Plan {
            bulk_bytes,
            warmup_bytes: (bulk_bytes / 8).min(128 * MIB),
            runs: a.runs.unwrap_or(runs).max(1),
            noise_secs,
            noise_runs: if a.quick { 1 } else { 3 },
            rtt_warmup: rtt / 10,
            rtt_rounds: rtt,
            lat_warmup: lat / 10,
            lat_msgs: lat,
            tput_msgs: tput,
            msg_size: 100,
            files: if a.quick {
                (1, 4 << 20)
            } else {
                (4, liaison_wire::consts::MAX_MESSAGE_BODY)
            },
            // under the relay's default inbox quotas (4,096 envelopes, 64 MiB) even if the
            // recipient acknowledged none
            envelopes_small: if a.quick { 1_000 } else { 3_000 },
            envelopes_full: if a.quick { 200 } else { 600 },
        }
    }
}

fn wants(a: &Args, section: &str) -> bool {
    a.only.is_empty()
        || a.only
            .iter()
            .any(|s| s == section || s.split(':').next() == Some(section))
}

/// The relay-path sections: with `--relay` when `--only` is not given, else when named.
fn wants_relay(a: &Args, section: &str) -> bool {
    if a.only.is_empty() {
        a.relay
    } else {
        a.relay && wants(a, section)
    }
}

fn put(out: &mut Map<String, Value>, key: &str, v: impl Into<Value>) {
    out.insert(key.to_string(), v.into());
}

fn err(out: &mut Map<String, Value>, section: &str, e: &anyhow::Error) {
    let errors = out
        .entry("errors")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(m) = errors.as_object_mut() {
        m.insert(section.to_string(), json!(format!("{e:#}")));
    }
    eprintln!("liaison-bench: {section} failed: {e:#}");
}

/// Records the CPU use during `section`: ours, other processes' and idle, in cores' worth.
fn interference(out: &mut Map<String, Value>, section: &str, probe: Option<cpu::CpuProbe>) {
    let Some(u) = probe.and_then(|p| p.usage()) else {
        return;
    };
    let m = out
        .entry("cpu_cores_used")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(m) = m.as_object_mut() {
        m.insert(
            section.to_string(),
            json!({
                "bench": round(u.own, 2),
                "other_processes": round(u.others, 2),
                "idle": round(u.idle, 2),
            }),
        );
    }
}

fn progress(json: bool, msg: &str) {
    if json {
        eprintln!("liaison-bench: {msg}");
    } else {
        println!("... {msg}");
    }
}

/// The 1-minute load average (other work on the machine skews every figure).
fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn machine() -> Value {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    json!({
        "cores": cores,
        "cpu": cpu,
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "optimized_build": !cfg!(debug_assertions),
        "tokio_workers": 2,
        "loadavg_1m_at_start": loadavg(),
    })
}

/// Noise cost on this (main) thread, before the runtime exists: one core, nothing else busy.
fn noise_section(plan: &Plan, out: &mut Map<String, Value>) -> Result<()> {
    let dur = Duration::from_secs_f64(plan.noise_secs);
    let (n, runs) = noise::snow_mib_s(noise::Resolver::Default, dur, plan.noise_runs)?;
    put(out, "noise_chachapoly_mib_s", round(n, 1));
    put(out, "noise_chachapoly_runs_mib_s", runs_json(&runs));
    let (nr, runs) = noise::snow_mib_s(noise::Resolver::Ring, dur, plan.noise_runs)?;
    put(out, "noise_ring_mib_s", round(nr, 1));
    put(out, "noise_ring_runs_mib_s", runs_json(&runs));
    let api = noise::session_api_mib_s(dur)?;
    put(out, "noise_session_api_mib_s", round(api, 1));
    Ok(())
}

fn runs_json(v: &[f64]) -> Value {
    json!(v.iter().map(|x| round(*x, 1)).collect::<Vec<_>>())
}

/// Records one data path's bulk runs under `key`: the median MiB/s (the headline figure),
/// every run, and the median CPU cost and CPU shares.
fn put_bulk(out: &mut Map<String, Value>, key: &str, runs: &[cpu::Measured]) -> Option<f64> {
    if runs.is_empty() {
        return None;
    }
    let mib: Vec<f64> = runs.iter().map(|m| m.mib_s).collect();
    let med = |f: fn(&cpu::Measured) -> Option<f64>| {
        let v: Vec<f64> = runs.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| median(&v))
    };
    let m = median(&mib);
    put(out, &format!("{key}_mib_s"), round(m, 1));
    put(out, &format!("{key}_runs_mib_s"), runs_json(&mib));
    if let Some(c) = med(|m| m.cpu_ms_per_mib) {
        put(out, &format!("{key}_cpu_ms_per_mib"), round(c, 3));
    }
    put(
        out,
        &format!("{key}_cpu_cores"),
        json!({
            "bench": med(|m| m.own_cores).map(|x| round(x, 2)),
            "other_processes": med(|m| m.other_cores).map(|x| round(x, 2)),
            "idle": med(|m| m.idle_cores).map(|x| round(x, 2)),
            "workers_running": med(|m| m.workers.map(|w| w.0)).map(|x| round(x, 2)),
            "workers_waiting_for_cpu": med(|m| m.workers.map(|w| w.1)).map(|x| round(x, 2)),
            "workers_parked": med(|m| m.workers.map(|w| w.2)).map(|x| round(x, 2)),
        }),
    );
    Some(m)
}

/// Bulk runs, interleaved (raw, line, node path, raw write_chunk, raw, ...) so drift hits
/// them alike; the median of each path is its figure. `--only bulk:raw,bulk:line,...` picks
/// paths, and names the variants compared in docs/performance.md.
async fn bulk_section(plan: &Plan, args: &Args, out: &mut Map<String, Value>) -> Result<()> {
    let pick = |p: &str| {
        let any = args.only.iter().any(|s| s.starts_with("bulk:"));
        !any || args.only.iter().any(|s| s == &format!("bulk:{p}"))
    };
    let mut raw = Vec::new();
    let mut raw_wc = Vec::new();
    let mut direct = Vec::new();
    let mut node = Vec::new();
    let mut extra: std::collections::BTreeMap<&str, Vec<cpu::Measured>> = Default::default();
    let mut raw_yield = Vec::new();
    let mut relay = Vec::new();
    let mut relay_extra: std::collections::BTreeMap<&str, Vec<cpu::Measured>> = Default::default();
    let mut relay_dropped = (0u64, 0u64);
    let mut relay_failed: Vec<String> = Vec::new();
    let mut relay_extra_failed: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    let any_bulk_filter = args.only.iter().any(|s| s.starts_with("bulk:"));
    let relay_on = if any_bulk_filter {
        pick("relay")
    } else {
        args.relay
    };
    for run in 0..plan.runs {
        progress(args.json, &format!("bulk run {} of {}", run + 1, plan.runs));
        let (w, b) = (plan.warmup_bytes, plan.bulk_bytes);
        if pick("raw") {
            raw.push(raw::bulk(w, b, raw::RawMode::Copying).await?);
        }
        if pick("line") {
            direct.push(line::bulk(w, b, line::Path::Direct).await?);
        }
        if pick("node") {
            node.push(line::bulk(w, b, line::Path::Node(line::NodeOpts::TODAY)).await?);
        }
        if relay_on {
            // a failed run (the relay disconnected the receiver) is recorded, not fatal
            match relay_path::bulk(w, b, relay_path::RelayTuning::BEST).await {
                Ok((m, d)) => {
                    relay_dropped = (relay_dropped.0 + d.0, relay_dropped.1 + d.1);
                    relay.push(m);
                }
                Err(e) => relay_failed.push(format!("{e:#}")),
            }
        }
        for (name, tuning) in relay_path::VARIANTS {
            if args.only.iter().any(|s| s == &format!("bulk:{name}")) {
                match relay_path::bulk(w, b, *tuning).await {
                    Ok((m, _)) => relay_extra.entry(name).or_default().push(m),
                    Err(e) => relay_extra_failed
                        .entry(name)
                        .or_default()
                        .push(format!("{e:#}")),
                }
            }
        }
        for (name, tuning) in line::VARIANTS {
            if args.only.iter().any(|s| s == &format!("bulk:{name}")) {
                let m = line::bulk(w, b, line::Path::Tuned(*tuning)).await?;
                extra.entry(name).or_default().push(m);
            }
        }
        for (name, opts) in [
            ("node_write_chunk", line::NodeOpts::WRITE_CHUNK),
            ("node_write_chunk_owned_reads", line::NodeOpts::BOTH),
        ] {
            if args.only.iter().any(|s| s == &format!("bulk:{name}")) {
                let m = line::bulk(w, b, line::Path::Node(opts)).await?;
                extra.entry(name).or_default().push(m);
            }
        }
        if args.only.iter().any(|s| s == "bulk:rawyield") {
            raw_yield.push(raw::bulk(w, b, raw::RawMode::CopyingYield).await?);
        }
        if pick("rawwc") {
            raw_wc.push(raw::bulk(w, b, raw::RawMode::WriteChunk).await?);
        }
    }
    let r = put_bulk(out, "raw_quinn_bulk", &raw);
    put_bulk(out, "raw_quinn_write_chunk_bulk", &raw_wc);
    put_bulk(out, "raw_quinn_yield_bulk", &raw_yield);
    let l = put_bulk(out, "line_bulk", &direct);
    let ln = put_bulk(out, "line_bulk_node_path", &node);
    for (name, runs) in &extra {
        put_bulk(out, &format!("line_bulk_{name}"), runs);
    }
    if let (Some(r), Some(l)) = (r, l) {
        put(out, "line_raw_ratio", round(l / r, 3));
    }
    if let (Some(r), Some(ln)) = (r, ln) {
        put(out, "line_node_path_raw_ratio", round(ln / r, 3));
    }
    let rl = put_bulk(out, "relay_bulk", &relay);
    for (name, runs) in &relay_extra {
        put_bulk(out, &format!("relay_bulk_{name}"), runs);
    }
    for (name, errors) in &relay_extra_failed {
        put(
            out,
            &format!("relay_bulk_{name}_failed_runs"),
            json!(errors),
        );
    }
    if !relay_failed.is_empty() {
        put(out, "relay_bulk_failed_runs", json!(relay_failed));
    }
    if !relay.is_empty() {
        put(
            out,
            "relay_bulk_window_frames",
            relay_path::RelayTuning::BEST.window,
        );
        put(
            out,
            "relay_bulk_dropped_frames",
            json!({ "slow_client": relay_dropped.0, "overload": relay_dropped.1 }),
        );
    }
    if let (Some(r), Some(rl)) = (r, rl) {
        put(out, "relay_raw_ratio", round(rl / r, 3));
    }
    Ok(())
}

/// Round trips on one raw hop and one line (and through a relay, with `--relay`), in
/// alternating blocks (so drift hits all alike), after a warm-up of each; percentiles over
/// all samples.
async fn rtt_section(plan: &Plan, with_relay: bool, out: &mut Map<String, Value>) -> Result<()> {
    const BLOCKS: usize = 4;
    let mut raw_p = raw::RawPinger::new().await?;
    let mut line_p = line::LinePinger::new().await?;
    let mut relay_p = match with_relay {
        true => Some(relay_path::RelayPinger::new().await?),
        false => None,
    };
    let result = async {
        raw_p.block(plan.rtt_warmup).await?;
        line_p.block(plan.rtt_warmup).await?;
        if let Some(p) = relay_p.as_mut() {
            p.block(plan.rtt_warmup).await?;
        }
        let per = plan.rtt_rounds.div_ceil(BLOCKS);
        let mut raw = Vec::with_capacity(plan.rtt_rounds);
        let mut line = Vec::with_capacity(plan.rtt_rounds);
        let mut relay = Vec::with_capacity(plan.rtt_rounds);
        for _ in 0..BLOCKS {
            raw.extend(raw_p.block(per).await?);
            line.extend(line_p.block(per).await?);
            if let Some(p) = relay_p.as_mut() {
                relay.extend(p.block(per).await?);
            }
        }
        anyhow::Ok((raw, line, relay))
    }
    .await;
    raw_p.close().await;
    line_p.close().await;
    if let Some(p) = relay_p {
        p.close().await;
    }
    let (raw, line, relay) = result?;
    if !relay.is_empty() {
        let (p50, p99) = (percentile(&relay, 50.0), percentile(&relay, 99.0));
        put(out, "relay_rtt_p50_us", round(p50, 1));
        put(out, "relay_rtt_p99_us", round(p99, 1));
        put(
            out,
            "relay_rtt_p50_over_raw_us",
            round(p50 - percentile(&raw, 50.0), 1),
        );
        put(
            out,
            "relay_rtt_p50_over_line_us",
            round(p50 - percentile(&line, 50.0), 1),
        );
    }
    let (r50, r99) = (percentile(&raw, 50.0), percentile(&raw, 99.0));
    let (l50, l99) = (percentile(&line, 50.0), percentile(&line, 99.0));
    put(out, "raw_rtt_p50_us", round(r50, 1));
    put(out, "raw_rtt_p99_us", round(r99, 1));
    put(out, "line_rtt_p50_us", round(l50, 1));
    put(out, "line_rtt_p99_us", round(l99, 1));
    put(out, "line_rtt_p50_over_raw_us", round(l50 - r50, 1));
    Ok(())
}

/// `durable:files` runs the file part alone (for profiling).
async fn durable_section(plan: &Plan, args: &Args, out: &mut Map<String, Value>) -> Result<()> {
    let pair = durable::Pair::start().await?;
    let files_only = args.only.iter().any(|s| s == "durable:files");
    let result = async {
        if files_only {
            let (count, size) = plan.files;
            let file_mib_s = durable::files(&pair, count, size, None).await?;
            put(out, "durable_file_mib_s", round(file_mib_s, 1));
            return anyhow::Ok(());
        }
        let lat = durable::latency(&pair, plan.lat_warmup, plan.lat_msgs, plan.msg_size).await?;
        put(
            out,
            "durable_latency_p50_ms",
            round(percentile(&lat, 50.0), 2),
        );
        put(
            out,
            "durable_latency_p99_ms",
            round(percentile(&lat, 99.0), 2),
        );
        let (rate, secs) = durable::throughput(&pair, plan.tput_msgs, plan.msg_size).await?;
        put(out, "durable_msgs_per_s", round(rate, 0));
        put(out, "durable_throughput_seconds", round(secs, 2));
        let (count, size) = plan.files;
        let file_mib_s = durable::files(&pair, count, size, None).await?;
        put(out, "durable_file_mib_s", round(file_mib_s, 1));
        put(
            out,
            "durable_peer_delivered_upto",
            durable::bob_delivered_upto(&pair).await,
        );
        anyhow::Ok(())
    }
    .await;
    pair.shutdown().await;
    result
}

/// Durable delivery between two real nodes that meet at a relay (no direct address): the
/// same latency, throughput and file tests as [`durable_section`], through an in-process
/// relay. Records what the relay dropped (slow clients) beside the figures.
async fn relay_durable_section(plan: &Plan, out: &mut Map<String, Value>) -> Result<()> {
    let relay = relay_path::InProcRelay::start().await?;
    let pair = match durable::Pair::start_via(&relay).await {
        Ok(p) => p,
        Err(e) => {
            relay.stop().await;
            return Err(e);
        }
    };
    let mut m = Map::new();
    let result = async {
        let lat = durable::latency(&pair, plan.lat_warmup, plan.lat_msgs, plan.msg_size).await?;
        m.insert(
            "latency_p50_ms".into(),
            json!(round(percentile(&lat, 50.0), 2)),
        );
        m.insert(
            "latency_p99_ms".into(),
            json!(round(percentile(&lat, 99.0), 2)),
        );
        let (rate, secs) = durable::throughput(&pair, plan.tput_msgs, plan.msg_size).await?;
        m.insert("msgs_per_s".into(), json!(round(rate, 0)));
        m.insert("throughput_seconds".into(), json!(round(secs, 2)));
        let (count, size) = plan.files;
        let t = Instant::now();
        // bounded at 30 s: through today's relay and node it does not finish (see
        // docs/performance.md)
        match durable::files(&pair, count, size, Some(Duration::from_secs(30))).await {
            Ok(mib) => {
                m.insert("file_mib_s".into(), json!(round(mib, 1)));
            }
            Err(e) => {
                m.insert("file_error".into(), json!(format!("{e:#}")));
                m.insert(
                    "file_gave_up_after_s".into(),
                    json!(round(t.elapsed().as_secs_f64(), 1)),
                );
            }
        }
        m.insert(
            "peer_delivered_upto".into(),
            json!(durable::bob_delivered_upto(&pair).await),
        );
        anyhow::Ok(())
    }
    .await;
    let (slow, over) = relay.dropped();
    let connections = relay
        .handle
        .metrics()
        .connections_total
        .load(std::sync::atomic::Ordering::Relaxed);
    pair.shutdown().await;
    relay.stop().await;
    m.insert("relay_dropped_slow_client".into(), json!(slow));
    m.insert("relay_dropped_overload".into(), json!(over));
    m.insert("relay_connections_made".into(), json!(connections));
    put(out, "relay_durable", Value::Object(m));
    result
}

fn aims(out: &mut Map<String, Value>) {
    let get = |k: &str| out.get(k).and_then(Value::as_f64);
    let mut derived = Vec::new();
    if let (Some(n), Some(r)) = (get("noise_chachapoly_mib_s"), get("raw_quinn_bulk_mib_s")) {
        let b = noise::bound(n, r);
        derived.push(("crypto_bound_ratio", round(b, 3)));
        if let Some(ratio) = get("line_raw_ratio") {
            derived.push(("line_vs_bound", round(ratio / b, 3)));
        }
        if let Some(ratio) = get("line_node_path_raw_ratio") {
            derived.push(("line_node_path_vs_bound", round(ratio / b, 3)));
        }
    }
    // the same comparison in CPU cost, robust to other processes taking CPU: the model says a
    // line MiB costs a raw MiB plus 1/N s of Noise
    if let (Some(n), Some(rc)) = (
        get("noise_chachapoly_mib_s"),
        get("raw_quinn_bulk_cpu_ms_per_mib"),
    ) {
        let model = rc + 1e3 / n;
        derived.push(("line_cpu_model_ms_per_mib", round(model, 3)));
        if let Some(lc) = get("line_bulk_cpu_ms_per_mib") {
            derived.push(("line_vs_bound_cpu", round(model / lc, 3)));
        }
        if let Some(lc) = get("line_bulk_node_path_cpu_ms_per_mib") {
            derived.push(("line_node_path_vs_bound_cpu", round(model / lc, 3)));
        }
    }
    if let (Some(n), Some(r)) = (get("noise_ring_mib_s"), get("raw_quinn_bulk_mib_s")) {
        derived.push(("crypto_bound_ratio_ring", round(noise::bound(n, r), 3)));
    }
    // the stricter baseline: raw quinn without the application's copy into quinn (the line
    // hands quinn its sealed frames the same way)
    if let (Some(n), Some(r), Some(l)) = (
        get("noise_chachapoly_mib_s"),
        get("raw_quinn_write_chunk_bulk_mib_s"),
        get("line_bulk_mib_s"),
    ) {
        let b = noise::bound(n, r);
        derived.push(("line_write_chunk_raw_ratio", round(l / r, 3)));
        derived.push(("crypto_bound_ratio_write_chunk_raw", round(b, 3)));
        derived.push(("line_vs_bound_write_chunk_raw", round(l / r / b, 3)));
    }
    // the relay path: two QUIC hops plus Noise on the same two cores
    if let (Some(n), Some(r)) = (get("noise_chachapoly_mib_s"), get("raw_quinn_bulk_mib_s")) {
        let b = noise::relay_bound(n, r);
        derived.push(("relay_crypto_bound_ratio", round(b, 3)));
        if let Some(ratio) = get("relay_raw_ratio") {
            derived.push(("relay_vs_bound", round(ratio / b, 3)));
        }
        if let Some(rr) = get("relay_bulk_relayraw_mib_s") {
            // opaque blobs: the bound without Noise is 1/2
            derived.push(("relay_raw_blobs_raw_ratio", round(rr / r, 3)));
            derived.push(("relay_raw_blobs_vs_bound", round(rr / r / 0.5, 3)));
        }
    }
    if let (Some(n), Some(rc)) = (
        get("noise_chachapoly_mib_s"),
        get("raw_quinn_bulk_cpu_ms_per_mib"),
    ) {
        let model = 2.0 * rc + 1e3 / n;
        derived.push(("relay_cpu_model_ms_per_mib", round(model, 3)));
        if let Some(c) = get("relay_bulk_cpu_ms_per_mib") {
            derived.push(("relay_vs_bound_cpu", round(model / c, 3)));
        }
    }
    for (k, v) in derived {
        put(out, k, v);
    }
    let get = |k: &str| out.get(k).and_then(Value::as_f64);
    let mut met = Map::new();
    if let Some(v) = get("line_vs_bound") {
        met.insert("line_vs_bound_ge_0_95".into(), json!(v >= 0.95));
    }
    if let Some(d) = get("line_rtt_p50_over_raw_us") {
        met.insert("rtt_p50_within_30_us".into(), json!(d <= 30.0));
    }
    if let Some(m) = get("durable_msgs_per_s") {
        met.insert("durable_ge_5000_msgs_per_s".into(), json!(m >= 5000.0));
    }
    if let Some(v) = get("relay_vs_bound") {
        met.insert("relay_vs_bound_ge_0_9".into(), json!(v >= 0.9));
    }
    if let Some(c) = out.get("relay").and_then(Value::as_object) {
        let held = c.get("all_stayed_connected").and_then(Value::as_bool);
        let within = c.get("within_512_mib").and_then(Value::as_bool);
        let nodes = c.get("nodes").and_then(Value::as_u64);
        if let (Some(h), Some(w), Some(n)) = (held, within, nodes) {
            met.insert(
                "relay_10000_nodes_within_512_mib".into(),
                json!(n >= 10_000 && h && w),
            );
        }
    }
    if let Some(s) = out
        .get("audit")
        .and_then(|a| a.get("audit_check_1m_entries_s"))
        .and_then(Value::as_f64)
    {
        met.insert("audit_check_1m_within_5_s".into(), json!(s <= 5.0));
    }
    put(out, "aims_met", Value::Object(met));
}

fn table(out: &Map<String, Value>) {
    let rows: &[(&str, &str, &str)] = &[
        ("raw_quinn_bulk_mib_s", "raw quinn bulk (R)", "MiB/s"),
        (
            "raw_quinn_write_chunk_bulk_mib_s",
            "raw quinn bulk, write_chunk",
            "MiB/s",
        ),
        ("line_bulk_mib_s", "line bulk", "MiB/s"),
        ("line_raw_ratio", "line / raw", ""),
        (
            "line_bulk_node_path_mib_s",
            "line bulk, node's data path",
            "MiB/s",
        ),
        ("line_node_path_raw_ratio", "node path / raw", ""),
        (
            "noise_chachapoly_mib_s",
            "Noise enc+dec, 1 core (N)",
            "MiB/s",
        ),
        ("crypto_bound_ratio", "crypto-cost bound 2N/(2N+R)", ""),
        ("line_vs_bound", "line ratio / bound (aim >= 0.95)", ""),
        ("line_node_path_vs_bound", "node path ratio / bound", ""),
        (
            "line_vs_bound_write_chunk_raw",
            "line ratio / bound, write_chunk raw as R",
            "",
        ),
        ("line_vs_bound_cpu", "line CPU cost model / measured", ""),
        ("noise_ring_mib_s", "Noise enc+dec, ring resolver", "MiB/s"),
        ("crypto_bound_ratio_ring", "bound with ring", ""),
        (
            "noise_session_api_mib_s",
            "Noise via Line::seal/handle_blob",
            "MiB/s",
        ),
        ("raw_rtt_p50_us", "raw quinn 256 B RTT p50", "us"),
        ("raw_rtt_p99_us", "raw quinn 256 B RTT p99", "us"),
        ("line_rtt_p50_us", "line 256 B RTT p50", "us"),
        ("line_rtt_p99_us", "line 256 B RTT p99", "us"),
        (
            "line_rtt_p50_over_raw_us",
            "line - raw RTT p50 (aim <= 30)",
            "us",
        ),
        ("durable_latency_p50_ms", "durable send->receipt p50", "ms"),
        ("durable_latency_p99_ms", "durable send->receipt p99", "ms"),
        (
            "durable_msgs_per_s",
            "durable msgs/s, one line (aim >= 5000)",
            "msg/s",
        ),
        (
            "durable_file_mib_s",
            "durable large files through nodes",
            "MiB/s",
        ),
        ("relay_bulk_mib_s", "relay path bulk", "MiB/s"),
        ("relay_raw_ratio", "relay path / raw", ""),
        ("relay_crypto_bound_ratio", "relay path bound 2N/(4N+R)", ""),
        ("relay_vs_bound", "relay ratio / bound (aim >= 0.9)", ""),
        ("relay_vs_bound_cpu", "relay CPU cost model / measured", ""),
        ("relay_rtt_p50_us", "relay path 256 B RTT p50", "us"),
        ("relay_rtt_p99_us", "relay path 256 B RTT p99", "us"),
    ];
    println!();
    for (k, label, unit) in rows {
        if let Some(v) = out.get(*k) {
            println!("{label:<44} {:>12} {unit}", v.to_string());
        }
    }
    for k in [
        "relay_durable",
        "envelope_in_memory",
        "envelope_relay_store",
        "relay",
        "audit",
    ] {
        if let Some(v) = out.get(k) {
            println!("{k}: {v}");
        }
    }
    if let Some(c) = out.get("cpu_cores_used") {
        println!("\nCPU (cores' worth) per section, ours / other processes / idle: {c}");
    }
    if let Some(m) = out.get("aims_met") {
        println!("aims met: {m}");
    }
    if let Some(e) = out.get("errors") {
        println!("errors: {e}");
    }
}

fn main() -> std::process::ExitCode {
    // the relay capacity test re-executes this binary as its relay
    if let Some(code) = relay::child_main() {
        return std::process::ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let args = Args::parse();
    let _ = CONGESTION.set(args.cc);
    let plan = Plan::new(&args);
    let started = Instant::now();
    let mut out = Map::new();
    put(&mut out, "machine", machine());
    put(
        &mut out,
        "sizes",
        json!({
            "bulk_bytes_per_run": plan.bulk_bytes,
            "bulk_warmup_bytes": plan.warmup_bytes,
            "bulk_runs_per_path": plan.runs,
            "bulk_figure": "median of the runs; receiver-side time after the warm-up",
            "raw_chunk_bytes": raw::CHUNK,
            "line_plaintext_bytes": liaison_wire::consts::MAX_PLAINTEXT,
            "noise_message_plaintext_bytes": liaison_wire::consts::MAX_PLAINTEXT,
            "noise_seconds_per_run": plan.noise_secs,
            "noise_runs": plan.noise_runs,
            "rtt_message_bytes": raw::RTT_LEN,
            "rtt_warmup": plan.rtt_warmup,
            "rtt_rounds": plan.rtt_rounds,
            "durable_latency_messages": plan.lat_msgs,
            "durable_latency_warmup": plan.lat_warmup,
            "durable_throughput_messages": plan.tput_msgs,
            "durable_batch": durable::BATCH,
            "durable_message_body_bytes": plan.msg_size,
            "durable_files": plan.files.0,
            "durable_file_bytes": plan.files.1,
        }),
    );
    put(&mut out, "quick", args.quick);
    put(
        &mut out,
        "congestion_controller",
        format!("{:?}", args.cc).to_lowercase(),
    );

    if wants(&args, "noise") {
        progress(args.json, "Noise cost (one core)");
        let probe = cpu::CpuProbe::start();
        if let Err(e) = noise_section(&plan, &mut out) {
            err(&mut out, "noise", &e);
        }
        interference(&mut out, "noise", probe);
    }
    if wants_relay(&args, "envelope") {
        progress(args.json, "sealed envelopes in memory (one core)");
        let probe = cpu::CpuProbe::start();
        let dur = Duration::from_secs_f64(plan.noise_secs);
        match envelopes::in_memory(dur, plan.noise_runs) {
            Ok(v) => put(&mut out, "envelope_in_memory", v),
            Err(e) => err(&mut out, "envelope_in_memory", &e),
        }
        interference(&mut out, "envelope_in_memory", probe);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("liaison-bench: cannot start tokio: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        if wants(&args, "bulk") {
            let probe = cpu::CpuProbe::start();
            if let Err(e) = bulk_section(&plan, &args, &mut out).await {
                err(&mut out, "bulk", &e);
            }
            interference(&mut out, "bulk", probe);
        }
        if wants(&args, "rtt") {
            progress(args.json, "round trips");
            let probe = cpu::CpuProbe::start();
            if let Err(e) = rtt_section(&plan, args.relay, &mut out).await {
                err(&mut out, "rtt", &e);
            }
            interference(&mut out, "rtt", probe);
        }
        if wants(&args, "durable") {
            progress(args.json, "durable delivery (two nodes, SQLite)");
            let probe = cpu::CpuProbe::start();
            if let Err(e) = durable_section(&plan, &args, &mut out).await {
                err(&mut out, "durable", &e);
            }
            interference(&mut out, "durable", probe);
        }
        if wants(&args, "durable") && wants_relay(&args, "durable") {
            progress(
                args.json,
                "durable delivery through a relay (two nodes, SQLite)",
            );
            let probe = cpu::CpuProbe::start();
            if let Err(e) = relay_durable_section(&plan, &mut out).await {
                err(&mut out, "relay_durable", &e);
            }
            interference(&mut out, "relay_durable", probe);
        }
        if wants_relay(&args, "envelope") {
            progress(args.json, "sealed envelopes through the relay (store = 1)");
            let probe = cpu::CpuProbe::start();
            let mut m = Map::new();
            for (size, count) in [
                (envelopes::Size::Small, plan.envelopes_small),
                (envelopes::Size::Full, plan.envelopes_full),
            ] {
                match envelopes::through_relay(size, count, false).await {
                    Ok(v) => {
                        m.insert(size.name().to_string(), v);
                    }
                    Err(e) => err(&mut out, &format!("envelope_relay_{}", size.name()), &e),
                }
                // the recipient subscribed all along: shown on request, as evidence
                if args.only.iter().any(|s| s == "envelope:live") {
                    let v = envelopes::through_relay(size, count, true)
                        .await
                        .unwrap_or_else(|e| json!({ "error": format!("{e:#}") }));
                    m.insert(format!("{}_live_recipient", size.name()), v);
                }
            }
            put(&mut out, "envelope_relay_store", Value::Object(m));
            interference(&mut out, "envelope_relay", probe);
        }
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    let nodes = args
        .relay_nodes
        .unwrap_or(if args.quick { 1_000 } else { 10_000 });
    if args.relay && nodes > 0 && wants(&args, "capacity") {
        progress(args.json, &format!("relay capacity ({nodes} idle nodes)"));
        let probe = cpu::CpuProbe::start();
        put(&mut out, "relay", relay::capacity(nodes));
        interference(&mut out, "relay", probe);
    }
    if args.audit {
        progress(args.json, "audit log");
        let probe = cpu::CpuProbe::start();
        put(&mut out, "audit", audit::run());
        interference(&mut out, "audit", probe);
    }
    if args.oneshot {
        progress(args.json, "cold one-shot send through the liaison binary");
        let probe = cpu::CpuProbe::start();
        match oneshot::run_section(if args.quick { 3 } else { 9 }) {
            Ok(v) => put(&mut out, "oneshot", v),
            Err(e) => err(&mut out, "oneshot", &e),
        }
        interference(&mut out, "oneshot", probe);
    }
    aims(&mut out);
    if let Some(m) = out.get_mut("machine").and_then(Value::as_object_mut) {
        m.insert("loadavg_1m_at_end".into(), json!(loadavg()));
    }
    put(
        &mut out,
        "elapsed_seconds",
        round(started.elapsed().as_secs_f64(), 1),
    );
    let failed = out.contains_key("errors");
    if args.json {
        println!("{}", Value::Object(out));
    } else {
        table(&out);
    }
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
