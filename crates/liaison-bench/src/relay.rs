//! Relay capacity: how many subscribed idle nodes one relay holds, and its resident memory.
//!
//! The relay runs in a **child process** (this same binary re-executed with
//! [`CHILD_ENV`] set; `main` must call [`child_main`] first), so its `/proc/PID/status`
//! `VmRSS` counts the relay alone and not the thousands of client connections this process
//! opens. Each node has its own hop key, connects over QUIC to 127.0.0.1 (the child lifts
//! the per-address limits, which would otherwise refuse one address opening thousands of
//! connections) and subscribes to 10 inbox ids, like a node with one contact. After all are
//! connected the nodes stay idle through more than one keep-alive period; then the report
//! says how many are still connected (by the clients' view and by the relay's metrics), a
//! round trip through a sample of them, and the relay's memory growth per node.

use liaison_hop::{Hop, HopKey, HopLimits};
use liaison_relay::RelayConfig;
use liaison_wire::hop::{HopFrame, err};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Set (to a private directory) in the child relay process's environment.
pub const CHILD_ENV: &str = "LIAISON_BENCH_RELAY_CHILD";
/// Inbox ids each node subscribes to: `[e-8, e+1]` for one contact.
const INBOXES_PER_NODE: usize = 10;
/// Client endpoints (UDP sockets) the nodes are spread over.
const CLIENT_ENDPOINTS: usize = 16;
/// Handshakes in flight at once.
const CONNECT_CONCURRENCY: usize = 64;
/// Idle time after all nodes are up: longer than the 10 s keep-alive period.
const HOLD: Duration = Duration::from_secs(15);
/// Nodes probed with a round trip after the hold.
const PROBES: usize = 100;

/// If this process is the bench's child relay, runs it to the end and returns the exit
/// code; otherwise `None`. Call it first thing in `main`.
pub fn child_main() -> Option<i32> {
    let dir = std::env::var_os(CHILD_ENV)?;
    let code = match run_child(std::path::Path::new(&dir)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bench relay child: {e}");
            1
        }
    };
    Some(code)
}

fn run_child(dir: &std::path::Path) -> Result<(), String> {
    let nodes: usize = std::env::var("LIAISON_BENCH_RELAY_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let mut config = RelayConfig::new(dir.join("home"), ([127, 0, 0, 1], 0).into());
    config.metrics_addr = Some(([127, 0, 0, 1], 0).into());
    // everything comes from 127.0.0.1: lift the per-address limits for this run only
    config.max_connections = nodes + 1000;
    config.max_connections_per_ip = nodes + 1000;
    config.handshakes_per_ip_per_sec = 1_000_000;
    config.handshake_burst = 1_000_000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let stop = CancellationToken::new();
        let stopper = stop.clone();
        // the parent closes our stdin to stop us
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            stopper.cancel();
        });
        liaison_relay::serve(config, stop, |ready| {
            println!(
                "READY {} {} {}",
                ready.addr,
                hex::encode(ready.card.hop_key),
                ready
                    .metrics_addr
                    .map(|a| a.to_string())
                    .unwrap_or_default()
            );
            let _ = std::io::stdout().flush();
        })
        .await
        .map_err(|e| e.to_string())
    })
}

/// Resident and peak memory of a process, KiB, from `/proc/PID/status`.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The child relay, stopped (stdin closed, then killed by pid if it lingers) on drop.
struct ChildRelay {
    child: Child,
    _dir: tempfile::TempDir,
}

impl ChildRelay {
    fn stop(&mut self) -> bool {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for ChildRelay {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct Started {
    relay: ChildRelay,
    addr: SocketAddr,
    spki: [u8; 44],
    metrics: SocketAddr,
}

fn start_child(nodes: usize) -> Result<Started, String> {
    if std::env::var_os(CHILD_ENV).is_some() {
        return Err("the bench's main does not call relay::child_main() first".into());
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .env(CHILD_ENV, dir.path())
        .env("LIAISON_BENCH_RELAY_NODES", nodes.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start the relay child: {e}"))?;
    let stdout = child.stdout.take().ok_or("no child stdout")?;
    let mut relay = ChildRelay { child, _dir: dir };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("READY ") {
                let _ = tx.send(rest.to_string());
            }
        }
    });
    let line = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(l) => l,
        Err(_) => {
            relay.stop();
            return Err("the relay child did not start in 30 s".into());
        }
    };
    let mut parts = line.split(' ');
    let parse_err = || format!("bad READY line {line:?}");
    let addr = parts
        .next()
        .and_then(|a| a.parse().ok())
        .ok_or_else(parse_err)?;
    let key: [u8; 32] = parts
        .next()
        .and_then(|k| hex::decode(k).ok())
        .and_then(|k| k.try_into().ok())
        .ok_or_else(parse_err)?;
    let metrics = parts
        .next()
        .and_then(|a| a.parse().ok())
        .ok_or_else(parse_err)?;
    Ok(Started {
        relay,
        addr,
        spki: liaison_hop::ed25519_spki(&key),
        metrics,
    })
}

/// One sample of the relay's metrics endpoint.
async fn scrape(addr: SocketAddr) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let work = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        Some(out)
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .ok()
        .flatten()
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
}

fn random16() -> [u8; 16] {
    let mut b = [0u8; 16];
    let _ = getrandom::fill(&mut b);
    b
}

async fn connect_node(
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    spki: [u8; 44],
    limits: HopLimits,
) -> Result<Hop, String> {
    let key = HopKey::generate().map_err(|e| e.to_string())?;
    // like a node, try again once after a failed dial (loopback drops UDP under a burst of
    // thousands of handshakes on two cores)
    let mut hop = match liaison_hop::connect(&endpoint, addr, &key, &spki, &limits).await {
        Ok(h) => h,
        Err(_) => liaison_hop::connect(&endpoint, addr, &key, &spki, &limits)
            .await
            .map_err(|e| e.to_string())?,
    };
    let ids: Vec<u8> = (0..INBOXES_PER_NODE).flat_map(|_| random16()).collect();
    hop.writer
        .send(&HopFrame::Subscribe(&ids))
        .await
        .map_err(|e| e.to_string())?;
    Ok(hop)
}

/// A round trip: a live post to an inbox nobody holds must come back `NO_SUBSCRIBER`.
async fn probe(hop: &mut Hop) -> bool {
    let dst = random16();
    if hop
        .writer
        .send(&HopFrame::Post {
            dst,
            store: false,
            blob: b"probe",
        })
        .await
        .is_err()
    {
        return false;
    }
    matches!(
        tokio::time::timeout(Duration::from_secs(10), hop.reader.next()).await,
        Ok(Ok(Some(HopFrame::Err {
            code: err::NO_SUBSCRIBER,
            ..
        })))
    )
}

async fn run_clients(nodes: usize, s: &Started) -> Value {
    let limits = HopLimits {
        stream_window: 64 * 1024,
        connection_window: 128 * 1024,
        hello_timeout: Duration::from_secs(20),
        ..crate::hop_limits()
    };
    let mut endpoints = Vec::new();
    for _ in 0..CLIENT_ENDPOINTS {
        match liaison_hop::client_endpoint(s.addr) {
            Ok(e) => endpoints.push(e),
            Err(e) => return json!({ "error": e.to_string() }),
        }
    }
    let (rss_before, _) = memory_kib(s.relay.child.id());
    let started = Instant::now();
    let limit = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut set = JoinSet::new();
    for i in 0..nodes {
        let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
            break;
        };
        let Some(ep) = endpoints.get(i % CLIENT_ENDPOINTS).cloned() else {
            break;
        };
        let (addr, spki, limits) = (s.addr, s.spki, limits.clone());
        set.spawn(async move {
            let r = connect_node(ep, addr, spki, limits).await;
            drop(permit);
            r
        });
    }
    let mut hops = Vec::with_capacity(nodes);
    let mut failures = 0usize;
    let mut first_error = None;
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(h)) => hops.push(h),
            Ok(Err(e)) => {
                failures += 1;
                first_error.get_or_insert(e);
            }
            Err(e) => {
                failures += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(HOLD).await;
    let still = hops
        .iter()
        .filter(|h| h.conn.close_reason().is_none())
        .count();
    let (rss_after, hwm) = memory_kib(s.relay.child.id());
    let text = scrape(s.metrics).await.unwrap_or_default();
    let relay_connections = metric(&text, "liaison_relay_connections");
    let relay_subscriptions = metric(&text, "liaison_relay_subscriptions");
    let step = (hops.len() / PROBES).max(1);
    let mut probed = 0;
    let mut answered = 0;
    for h in hops.iter_mut().step_by(step).take(PROBES) {
        probed += 1;
        if probe(h).await {
            answered += 1;
        }
    }
    let growth_kib = rss_after.saturating_sub(rss_before);
    let per_node = if hops.is_empty() {
        0
    } else {
        growth_kib * 1024 / hops.len() as u64
    };
    for h in &hops {
        h.conn.close(0u32.into(), b"bench done");
    }
    for e in &endpoints {
        let _ = tokio::time::timeout(Duration::from_secs(5), e.wait_idle()).await;
    }
    json!({
        "nodes": nodes,
        "inboxes_per_node": INBOXES_PER_NODE,
        "connected": hops.len(),
        "connect_failures": failures,
        "first_error": first_error,
        "connect_seconds": connect_secs,
        "hold_seconds": HOLD.as_secs(),
        "still_connected_after_hold": still,
        "relay_connections_metric": relay_connections,
        "relay_subscriptions_metric": relay_subscriptions,
        "probes": probed,
        "probes_answered": answered,
        "relay_rss_before_kib": rss_before,
        "relay_rss_after_kib": rss_after,
        "relay_rss_peak_kib": hwm,
        "relay_rss_growth_kib": growth_kib,
        "relay_bytes_per_node": per_node,
        "all_stayed_connected": still == nodes && relay_connections == Some(nodes as u64),
        "within_512_mib": rss_after <= 512 * 1024,
        "measured": "relay in a child process; VmRSS from /proc/PID/status",
    })
}

/// Starts a relay in a child process, connects `nodes` subscribed idle nodes, holds them
/// idle, and reports the relay's memory and whether all stayed connected. Blocking: it
/// builds its own tokio runtime.
pub fn capacity(nodes: usize) -> Value {
    let mut s = match start_child(nodes) {
        Ok(s) => s,
        Err(e) => return json!({ "error": e }),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return json!({ "error": e.to_string() }),
    };
    let mut report = rt.block_on(run_clients(nodes, &s));
    drop(rt);
    let clean = s.relay.stop();
    if let Some(obj) = report.as_object_mut() {
        obj.insert("relay_stopped_cleanly".into(), json!(clean));
    }
    report
}
