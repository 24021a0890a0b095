//! Audit log benchmark: appends per second through the real SQLite store with group commit
//! (a signed checkpoint at least every 100 ms, each cosigned by an in-memory peer that logs an
//! entry of its own per checkpoint, as a receiving node does, so that the witness's rate bound
//! does not hold its cosignatures back), and the time to decode and check a 1,000,000-entry
//! bundle.
//!
//! Figures (`run()` returns them as one JSON object):
//! * `audit_appends_per_s_with_checkpoints`: message entries appended per second by a producer
//!   that never waits, committed in groups every 100 ms or every 8,192 entries, whichever comes
//!   first (SQLite WAL, `synchronous=FULL`), one checkpoint signed per group, offered to and
//!   cosigned by the peer, cosignature verified and stored;
//! * `audit_check_1m_entries_s`: decoding plus checking (tree, chain, 1,000 checkpoints and
//!   their cosignatures) of a 1,000,000-entry bundle; the aim is ≤ 5 s on 2 cores;
//! * supporting figures: group commit latency percentiles, checkpoints signed, bundle size,
//!   and the same 1,000,000 entries signed in 10,000 checkpoints
//!   (`audit_check_1m_entries_10k_checkpoints_s`): with sparse traffic every group commit
//!   signs a checkpoint for few entries, and signature checks (two per checkpoint, spread over
//!   the cores) then dominate.

use std::time::{Duration, Instant};

use liaison_audit::check::check;
use liaison_audit::entry::{Event, commitment};
use liaison_audit::keys::{LocalKeys, generate_signing_key};
use liaison_audit::mem::MemoryLine;
use liaison_audit::store::LineAudit;
use liaison_audit::{Bundle, Line};
use serde_json::{Value, json};

/// Wall time spent appending in the store benchmark.
const APPEND_RUN: Duration = Duration::from_secs(3);
/// Group commit interval.
const GROUP_COMMIT: Duration = Duration::from_millis(100);
/// Largest group: a commit also starts once this many entries are pending, so no group takes
/// longer to store than the interval allows.
const MAX_GROUP: u64 = 8_192;
/// Entries in the bundle-check benchmark.
const CHECK_ENTRIES: u64 = 1_000_000;
/// Entries per checkpoint in the bundle-check benchmark (1,000 checkpoints).
const CHECK_GROUP: u64 = 1_000;

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Runs the audit benchmarks.
pub fn run() -> Value {
    let mut out = serde_json::Map::new();
    match appends() {
        Ok(v) => merge(&mut out, v),
        Err(e) => {
            out.insert("audit_appends_error".into(), json!(e.to_string()));
        }
    }
    match check_1m(CHECK_GROUP, "audit_check_1m") {
        Ok(v) => merge(&mut out, v),
        Err(e) => {
            out.insert("audit_check_error".into(), json!(e.to_string()));
        }
    }
    match check_1m(CHECK_GROUP / 10, "audit_check_1m_10k_checkpoints") {
        Ok(v) => merge(&mut out, v),
        Err(e) => {
            out.insert("audit_check_error".into(), json!(e.to_string()));
        }
    }
    Value::Object(out)
}

fn merge(out: &mut serde_json::Map<String, Value>, v: Value) {
    if let Value::Object(m) = v {
        out.extend(m);
    }
}

fn now_ms(t0: Instant, base: u64) -> u64 {
    base + t0.elapsed().as_millis() as u64
}

fn message(seq: u64) -> Event {
    Event::MsgSent {
        seq,
        commitment: commitment(&[7; 32], &seq.to_be_bytes()),
        ciphertext_hash: [9; 32],
    }
}

/// The peer logs an entry of its own for each checkpoint it is offered, as a receiving node
/// does (its `msg_recv` entries): it then cosigns every checkpoint at once, as in a
/// conversation, instead of at most once per `COSIGN_INTERVAL_MS` like a peer that logs
/// nothing (the witness's rate bound).
fn peer_logs<S: liaison_audit::line::LineStorage>(
    peer: &mut Line<S>,
    seq: u64,
    now: u64,
) -> BenchResult<()> {
    peer.append(Event::MsgAcked { seq }, now);
    peer.persist(now)?;
    Ok(())
}

/// Delivers messages both ways until quiet.
fn exchange<S1, S2>(
    a: &mut Line<S1>,
    b: &mut Line<S2>,
    first: Option<Vec<u8>>,
    now: u64,
) -> BenchResult<()>
where
    S1: liaison_audit::line::LineStorage,
    S2: liaison_audit::line::LineStorage,
{
    let mut to_b: Vec<Vec<u8>> = first.into_iter().collect();
    for _ in 0..8 {
        if to_b.is_empty() {
            break;
        }
        let mut to_a = Vec::new();
        for m in to_b.drain(..) {
            to_a.extend(b.handle_message(&m, now)?);
        }
        for m in to_a {
            to_b.extend(a.handle_message(&m, now)?);
        }
    }
    Ok(())
}

fn appends() -> BenchResult<Value> {
    let dir = tempfile::tempdir()?;
    let (ida, idb) = (generate_signing_key()?, generate_signing_key()?);
    let base = 1_700_000_000_000;
    let (mut a, _) = LineAudit::open(
        &dir.path().join("audit.sqlite"),
        LocalKeys::generate(&ida)?,
        idb.verifying_key(),
        base,
    )?;
    let mut peer = MemoryLine::in_memory(LocalKeys::generate(&idb)?, ida.verifying_key());

    let t0 = Instant::now();
    let mut last_commit = Instant::now();
    let mut latencies = Vec::new();
    let mut appended = 0u64;
    let mut pending = 0u64;
    while t0.elapsed() < APPEND_RUN {
        for _ in 0..64 {
            a.append(message(appended), now_ms(t0, base));
            appended += 1;
        }
        pending += 64;
        if last_commit.elapsed() >= GROUP_COMMIT || pending >= MAX_GROUP {
            pending = 0;
            let c = Instant::now();
            let now = now_ms(t0, base);
            let offer = a.commit(now)?;
            peer_logs(&mut peer, appended, now)?;
            exchange(&mut a, &mut peer, offer, now)?;
            latencies.push(c.elapsed().as_secs_f64() * 1000.0);
            last_commit = Instant::now();
        }
    }
    let c = Instant::now();
    let now = now_ms(t0, base);
    let offer = a.commit(now)?;
    peer_logs(&mut peer, appended, now)?;
    exchange(&mut a, &mut peer, offer, now)?;
    latencies.push(c.elapsed().as_secs_f64() * 1000.0);
    let elapsed = t0.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let status = a.status();
    Ok(json!({
        "audit_appends_per_s_with_checkpoints": (appended as f64 / elapsed).round(),
        "audit_appends_total": appended,
        "audit_checkpoints_signed": latencies.len(),
        "audit_checkpoints_cosigned_by_peer": status.cosigned_by_peer == status.checkpoint,
        "audit_group_commit_ms_p50": pct(0.5),
        "audit_group_commit_ms_p99": pct(0.99),
    }))
}

fn check_1m(group: u64, prefix: &str) -> BenchResult<Value> {
    let (ida, idb) = (generate_signing_key()?, generate_signing_key()?);
    let mut a = MemoryLine::in_memory(LocalKeys::generate(&ida)?, idb.verifying_key());
    let mut b = MemoryLine::in_memory(LocalKeys::generate(&idb)?, ida.verifying_key());
    let mut now = 1_700_000_000_000u64;
    let build = Instant::now();
    for seq in 0..CHECK_ENTRIES {
        let event = if seq % 4 == 3 {
            Event::MsgAcked { seq: seq - 1 }
        } else {
            message(seq)
        };
        a.append(event, now);
        if (seq + 1) % group == 0 {
            now += 100;
            let offer = a.commit(now)?;
            peer_logs(&mut b, seq, now)?;
            exchange(&mut a, &mut b, offer, now)?;
        }
    }
    let offer = a.commit(now)?;
    peer_logs(&mut b, CHECK_ENTRIES, now)?;
    exchange(&mut a, &mut b, offer, now)?;
    let bytes = a.bundle(now)?.encode();
    let build_s = build.elapsed().as_secs_f64();

    let t = Instant::now();
    let bundle = Bundle::decode(&bytes)?;
    let decode_s = t.elapsed().as_secs_f64();
    let report = check(std::slice::from_ref(&bundle))?;
    let total_s = t.elapsed().as_secs_f64();
    let r = report.bundles.first().ok_or("no report")?;
    if r.entries < CHECK_ENTRIES {
        return Err(format!("bundle has {} entries", r.entries).into());
    }
    let mut out = serde_json::Map::new();
    if group == CHECK_GROUP {
        out.insert("audit_check_1m_entries_s".into(), json!(total_s));
        out.insert(format!("{prefix}_decode_s"), json!(decode_s));
        out.insert(format!("{prefix}_bundle_bytes"), json!(bytes.len()));
    } else {
        out.insert(
            "audit_check_1m_entries_10k_checkpoints_s".into(),
            json!(total_s),
        );
    }
    out.insert(format!("{prefix}_checkpoints"), json!(r.checkpoints));
    out.insert(format!("{prefix}_build_s"), json!(build_s));
    Ok(Value::Object(out))
}
