//! Aggregate counters and their Prometheus text exposition, over a minimal HTTP/1.0 responder.
//!
//! Only totals are kept: nothing here names an inbox, a key, an address or a person. The
//! responder answers `GET /metrics` (anything else: 404), reads at most 4 KiB of request
//! within 5 s, serves at most 16 requests at once and closes after each answer.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Why something was refused, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejected {
    /// The relay was at its connection limit.
    TooManyConnections,
    /// One address had too many connections.
    TooManyFromAddress,
    /// One address opened connections too fast.
    RateLimited,
    /// The QUIC/TLS handshake or `HELLO` failed (includes keys refused by the allow list).
    HandshakeFailed,
    /// A connected key was removed from the allow list.
    NotAllowed,
    /// A client sent a malformed or unexpected frame.
    Malformed,
    /// A post exceeded a queue quota.
    Quota,
    /// A blob was too large to store.
    TooLarge,
    /// A `store = 0` post found no live subscriber.
    NoSubscriber,
    /// The store failed.
    Internal,
}

const REJECTED: [Rejected; 10] = [
    Rejected::TooManyConnections,
    Rejected::TooManyFromAddress,
    Rejected::RateLimited,
    Rejected::HandshakeFailed,
    Rejected::NotAllowed,
    Rejected::Malformed,
    Rejected::Quota,
    Rejected::TooLarge,
    Rejected::NoSubscriber,
    Rejected::Internal,
];

impl Rejected {
    fn index(self) -> usize {
        self as usize
    }

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Rejected::TooManyConnections => "too_many_connections",
            Rejected::TooManyFromAddress => "too_many_from_address",
            Rejected::RateLimited => "rate_limited",
            Rejected::HandshakeFailed => "handshake_failed",
            Rejected::NotAllowed => "not_allowed",
            Rejected::Malformed => "malformed",
            Rejected::Quota => "quota",
            Rejected::TooLarge => "too_large",
            Rejected::NoSubscriber => "no_subscriber",
            Rejected::Internal => "internal",
        }
    }
}

/// Why a frame for a client was dropped (the client is disconnected each time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dropped {
    /// The client's own queue was full: it reads too slowly.
    SlowClient,
    /// The relay's total queue was full.
    Overload,
}

/// The relay's counters. Gauges are current values, `_total` ones only grow.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Connections currently ready (after `READY`).
    pub connections: AtomicU64,
    /// Connections made ready since start.
    pub connections_total: AtomicU64,
    /// Handshakes in progress.
    pub handshakes: AtomicU64,
    /// Inbox subscriptions currently held.
    pub subscriptions: AtomicU64,
    /// Envelopes in the durable queue.
    pub queued_envelopes: AtomicU64,
    /// Blob bytes in the durable queue.
    pub queued_bytes: AtomicU64,
    /// Bytes of frames waiting to be sent to clients.
    pub outbound_bytes: AtomicU64,
    /// `store = 0` blobs forwarded to a live subscriber.
    pub forwarded_total: AtomicU64,
    /// Envelopes newly stored.
    pub stored_total: AtomicU64,
    /// Re-posts of an envelope already stored (acknowledged, not stored again).
    pub duplicates_total: AtomicU64,
    /// Stored envelopes sent to a subscriber (live or on subscribe).
    pub delivered_total: AtomicU64,
    /// Envelopes deleted because a subscriber acknowledged them.
    pub acked_total: AtomicU64,
    /// Envelopes deleted because they outlived the ttl.
    pub expired_total: AtomicU64,
    /// Store transactions committed.
    pub commits_total: AtomicU64,
    /// Write operations in those transactions (posts and deletions).
    pub committed_ops_total: AtomicU64,
    dropped: [AtomicU64; 2],
    rejected: [AtomicU64; REJECTED.len()],
}

impl Metrics {
    /// New, all zero.
    pub fn new() -> Arc<Self> {
        Arc::new(Metrics::default())
    }

    /// Counts a refusal.
    pub fn reject(&self, why: Rejected) {
        if let Some(c) = self.rejected.get(why.index()) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// Refusals of one kind so far.
    pub fn rejected(&self, why: Rejected) -> u64 {
        self.rejected
            .get(why.index())
            .map_or(0, |c| c.load(Relaxed))
    }

    /// Counts a dropped frame.
    pub fn drop_frame(&self, why: Dropped) {
        if let Some(c) = self.dropped.get(why as usize) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// Dropped frames of one kind so far.
    pub fn dropped(&self, why: Dropped) -> u64 {
        self.dropped
            .get(why as usize)
            .map_or(0, |c| c.load(Relaxed))
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let mut one = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            );
        };
        let g = |a: &AtomicU64| a.load(Relaxed);
        one(
            "liaison_relay_connections",
            "gauge",
            "Connections currently ready.",
            g(&self.connections),
        );
        one(
            "liaison_relay_connections_total",
            "counter",
            "Connections made ready since start.",
            g(&self.connections_total),
        );
        one(
            "liaison_relay_handshakes",
            "gauge",
            "Handshakes in progress.",
            g(&self.handshakes),
        );
        one(
            "liaison_relay_subscriptions",
            "gauge",
            "Inbox subscriptions currently held.",
            g(&self.subscriptions),
        );
        one(
            "liaison_relay_queued_envelopes",
            "gauge",
            "Envelopes held in the durable queue.",
            g(&self.queued_envelopes),
        );
        one(
            "liaison_relay_queued_bytes",
            "gauge",
            "Blob bytes held in the durable queue.",
            g(&self.queued_bytes),
        );
        one(
            "liaison_relay_outbound_bytes",
            "gauge",
            "Bytes of frames waiting to be sent to clients.",
            g(&self.outbound_bytes),
        );
        one(
            "liaison_relay_forwarded_total",
            "counter",
            "Live (store=0) blobs forwarded to a subscriber.",
            g(&self.forwarded_total),
        );
        one(
            "liaison_relay_stored_total",
            "counter",
            "Envelopes newly stored.",
            g(&self.stored_total),
        );
        one(
            "liaison_relay_duplicates_total",
            "counter",
            "Re-posts of an envelope already stored.",
            g(&self.duplicates_total),
        );
        one(
            "liaison_relay_delivered_total",
            "counter",
            "Stored envelopes sent to a subscriber.",
            g(&self.delivered_total),
        );
        one(
            "liaison_relay_acked_total",
            "counter",
            "Envelopes deleted on a subscriber's ACK.",
            g(&self.acked_total),
        );
        one(
            "liaison_relay_expired_total",
            "counter",
            "Envelopes deleted after the ttl.",
            g(&self.expired_total),
        );
        one(
            "liaison_relay_store_commits_total",
            "counter",
            "Queue transactions committed.",
            g(&self.commits_total),
        );
        one(
            "liaison_relay_store_committed_ops_total",
            "counter",
            "Writes (posts, deletions) in committed transactions.",
            g(&self.committed_ops_total),
        );
        let _ = write!(
            out,
            "# HELP liaison_relay_dropped_total Frames dropped for a client, which was then disconnected.\n\
             # TYPE liaison_relay_dropped_total counter\n\
             liaison_relay_dropped_total{{reason=\"slow_client\"}} {}\n\
             liaison_relay_dropped_total{{reason=\"overload\"}} {}\n",
            self.dropped(Dropped::SlowClient),
            self.dropped(Dropped::Overload)
        );
        let _ = write!(
            out,
            "# HELP liaison_relay_rejected_total Connections, frames and posts refused, by reason.\n\
             # TYPE liaison_relay_rejected_total counter\n"
        );
        for r in REJECTED {
            let _ = writeln!(
                out,
                "liaison_relay_rejected_total{{reason=\"{}\"}} {}",
                r.label(),
                self.rejected(r)
            );
        }
        out
    }
}

/// Longest request read, bytes.
const MAX_REQUEST: usize = 4096;
/// Most requests served at once.
const MAX_CONCURRENT: usize = 16;
/// Time to read a request and write the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The answer to one raw request: status line, content type and body.
pub fn respond(request: &[u8], metrics: &Metrics) -> Vec<u8> {
    let line_end = request
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(request.len());
    let line = request.get(..line_end).unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let (status, ctype, body) = if method == b"GET" && (target == b"/metrics") {
        (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        )
    } else if method == b"GET" {
        ("404 Not Found", "text/plain", "not found\n".to_string())
    } else {
        (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".to_string(),
        )
    };
    let mut out = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

async fn serve_one(mut sock: tokio::net::TcpStream, metrics: Arc<Metrics>) {
    let work = async {
        let mut buf = vec![0u8; MAX_REQUEST];
        let mut n = 0;
        while let Some(free) = buf.get_mut(n..) {
            if free.is_empty() {
                break;
            }
            let got = sock.read(free).await?;
            if got == 0 {
                break;
            }
            n += got;
            let seen = buf.get(..n).unwrap_or_default();
            if seen.windows(4).any(|w| w == b"\r\n\r\n") || seen.windows(2).any(|w| w == b"\n\n") {
                break;
            }
        }
        let answer = respond(buf.get(..n).unwrap_or_default(), &metrics);
        sock.write_all(&answer).await?;
        sock.shutdown().await
    };
    if let Ok(Err(e)) = tokio::time::timeout(REQUEST_TIMEOUT, work).await {
        tracing::debug!("metrics request: {e}");
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONCURRENT));
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((sock, _)) = accepted else { continue };
                let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
                    drop(sock);
                    continue;
                };
                let m = Arc::clone(&metrics);
                tasks.spawn(async move {
                    serve_one(sock, m).await;
                    drop(permit);
                });
            }
        }
    }
    tasks.shutdown().await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn exposition_and_routing() {
        let m = Metrics::new();
        m.stored_total.fetch_add(3, Relaxed);
        m.reject(Rejected::Quota);
        m.drop_frame(Dropped::SlowClient);
        let text = m.render();
        assert!(text.contains("liaison_relay_stored_total 3\n"));
        assert!(text.contains("liaison_relay_rejected_total{reason=\"quota\"} 1\n"));
        assert!(text.contains("liaison_relay_dropped_total{reason=\"slow_client\"} 1\n"));
        // every sample line is `name{labels} value` with a TYPE line for its family
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            value.parse::<u64>().unwrap();
            let family = name.split('{').next().unwrap();
            assert!(text.contains(&format!("# TYPE {family} ")), "{family}");
        }
        let ok = respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &m);
        assert!(ok.starts_with(b"HTTP/1.0 200 OK\r\n"));
        assert!(respond(b"GET / HTTP/1.0\r\n\r\n", &m).starts_with(b"HTTP/1.0 404"));
        assert!(respond(b"POST /metrics HTTP/1.0\r\n\r\n", &m).starts_with(b"HTTP/1.0 405"));
        assert!(respond(b"", &m).starts_with(b"HTTP/1.0 405"));
    }

    #[tokio::test]
    async fn serves_over_tcp() {
        let m = Metrics::new();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve_metrics(l, m, stop.clone()));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        assert!(body.contains("liaison_relay_connections 0"));
        // an endless request is cut at the size limit and still answered
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&[b'A'; 10_000]).await.ok();
        let mut body = Vec::new();
        let _ = s.read_to_end(&mut body).await;
        assert!(body.starts_with(b"HTTP/1.0 405") || body.is_empty());
        stop.cancel();
        task.await.unwrap();
    }
}
