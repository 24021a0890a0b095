//! The relay server: admission, handshakes, the accept loop, expiry, metrics and shutdown.
//!
//! Order of defences for a new connection, cheapest first:
//! 1. QUIC Retry for every unvalidated address ([`liaison_hop::accept_validated`]): a spoofed
//!    source never gets state;
//! 2. admission ([`crate::admission`]): total connections, connections and new-connection
//!    rate per IPv4 address or IPv6 /64, refused before any TLS work;
//! 3. mutual TLS with a client certificate whose key the allow list accepts (checked again
//!    after the handshake, so a reload is never raced);
//! 4. `HELLO` within `hello_timeout`, then `READY`; only then does the client get an actor.

use crate::RelayError;
use crate::admission::{Admission, Refusal, Slot};
use crate::allow::{AllowList, is_ed25519_spki};
use crate::client::{now_ms, serve_client};
use crate::config::RelayConfig;
use crate::metrics::{Metrics, Rejected, serve_metrics};
use crate::registry::Registry;
use crate::store::{Store, StoreHandle, StoreThread};
use liaison_hop::{HopKey, accept_stream, accept_validated, peer_spki, spki_hash};
use liaison_wire::consts::PROTOCOL_VERSION;
use liaison_wire::hop::{HopFrame, err};
use quinn::{Endpoint, VarInt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Replay pages fetched at once across all clients.
const CONCURRENT_REPLAYS: usize = 64;
/// Connection attempts waiting for the accept loop at most (quinn's own queue).
const MAX_INCOMING: usize = 4096;
/// Bytes buffered per waiting connection attempt, and in all.
const INCOMING_BUFFER: u64 = 64 * 1024;
const INCOMING_BUFFER_TOTAL: u64 = 32 << 20;
/// How long the endpoint may take to send its last close frames.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// What every task of a relay shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: RelayConfig,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) registry: Registry,
    pub(crate) store: StoreHandle,
    pub(crate) allow: Arc<AllowList>,
    pub(crate) admission: Arc<Admission>,
    pub(crate) out_budget: Arc<Semaphore>,
    pub(crate) replay_limit: Semaphore,
    pub(crate) next_id: AtomicU64,
}

/// An opened relay (store open and locked, allow list loaded, metrics socket bound), ready
/// to [`Relay::run`] on an endpoint.
#[derive(Debug)]
pub struct Relay {
    shared: Arc<Shared>,
    store: StoreThread,
    metrics_listener: Option<std::net::TcpListener>,
}

/// Control of a running relay, for the binary (SIGHUP) and for tests.
#[derive(Debug, Clone)]
pub struct RelayHandle {
    shared: Arc<Shared>,
}

/// The result of an allow-list reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct AllowReload {
    /// Entries now in force (`None`: no list, everyone with a valid key is allowed).
    pub entries: Option<usize>,
    /// Connected clients whose key is no longer allowed, now disconnected.
    pub disconnected: usize,
}

impl RelayHandle {
    /// Re-reads the allow list (call on SIGHUP) and disconnects clients no longer allowed.
    /// On error the previous list stays in force.
    pub fn reload_allow_list(&self) -> Result<AllowReload, RelayError> {
        let entries = self.shared.allow.reload()?;
        let mut disconnected = 0;
        for c in self.shared.registry.clients() {
            if !self.shared.allow.allows_hash(&c.key_hash) {
                c.disconnect(err::NOT_ALLOWED, "not allowed");
                self.shared.metrics.reject(Rejected::NotAllowed);
                disconnected += 1;
            }
        }
        Ok(AllowReload {
            entries,
            disconnected,
        })
    }

    /// The relay's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The Prometheus text exposition.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.render()
    }

    /// Resolves once the queue store has carried out every command queued before (posts,
    /// acknowledgements); for tests and tools.
    pub async fn store_barrier(&self) {
        let _ = self.shared.store.barrier().await;
    }

    /// Clients connected now (after `READY`).
    pub fn clients(&self) -> usize {
        self.shared.registry.len()
    }
}

fn refusal_metric(r: Refusal) -> Rejected {
    match r {
        Refusal::TooManyConnections => Rejected::TooManyConnections,
        Refusal::TooManyFromAddress => Rejected::TooManyFromAddress,
        Refusal::RateLimited => Rejected::RateLimited,
    }
}

struct HandshakeGauge(Arc<Metrics>);

impl HandshakeGauge {
    fn new(m: &Arc<Metrics>) -> Self {
        m.handshakes.fetch_add(1, Relaxed);
        HandshakeGauge(Arc::clone(m))
    }
}

impl Drop for HandshakeGauge {
    fn drop(&mut self) {
        self.0.handshakes.fetch_sub(1, Relaxed);
    }
}

impl Relay {
    /// Opens the store (taking its lock), loads the allow list and binds the metrics socket.
    pub fn open(config: RelayConfig) -> Result<Self, RelayError> {
        config.validate()?;
        let metrics = Metrics::new();
        let store = Store::open(
            &config.store_dir,
            config.quotas.clone(),
            Arc::clone(&metrics),
        )?
        .spawn()?;
        let allow = Arc::new(AllowList::open(config.allow_file.as_deref())?);
        let metrics_listener = match config.metrics_addr {
            None => None,
            Some(addr) => {
                let l = std::net::TcpListener::bind(addr)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .map_err(|e| RelayError::Metrics(format!("cannot bind {addr}: {e}")))?;
                Some(l)
            }
        };
        let shared = Arc::new(Shared {
            registry: Registry::new(
                Arc::clone(&metrics),
                config.max_subscriptions_per_client,
                config.max_subscribers_per_inbox,
            ),
            admission: Admission::new(
                config.max_connections,
                config.max_connections_per_ip,
                config.handshakes_per_ip_per_sec,
                config.handshake_burst,
            ),
            out_budget: Arc::new(Semaphore::new(config.total_queue_bytes)),
            replay_limit: Semaphore::new(CONCURRENT_REPLAYS),
            store: store.handle(),
            allow,
            metrics,
            next_id: AtomicU64::new(1),
            config,
        });
        Ok(Relay {
            shared,
            store,
            metrics_listener,
        })
    }

    /// A handle to reload the allow list and read counters.
    pub fn handle(&self) -> RelayHandle {
        RelayHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Where the metrics endpoint listens, if configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The QUIC server configuration for the relay's key: client certificates checked
    /// against the allow list, the relay's transport limits, bounded pending handshakes.
    pub fn server_config(&self, key: &HopKey) -> Result<quinn::ServerConfig, RelayError> {
        let pins: Arc<dyn liaison_hop::ClientPins> = self.shared.allow.clone();
        let mut cfg = liaison_hop::server_config(key, pins, &self.shared.config.hop)?;
        cfg.max_incoming(MAX_INCOMING)
            .incoming_buffer_size(INCOMING_BUFFER)
            .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL);
        Ok(cfg)
    }

    /// Binds the relay's UDP endpoint at `config.bind` with [`Relay::server_config`]. Its
    /// stateless-reset key is derived from the relay's key, so after a crash and restart on
    /// the same port clients' stale connections are reset at once instead of timing out.
    pub fn bind(&self, key: &HopKey) -> Result<Endpoint, RelayError> {
        Ok(liaison_hop::server_endpoint_keyed(
            self.shared.config.bind,
            self.server_config(key)?,
            key,
        )?)
    }

    /// Serves clients on `endpoint` until `shutdown`, then drains: stops accepting, lets
    /// in-flight posts commit and be acknowledged, closes connections with `SHUTTING_DOWN`,
    /// and closes the store (the queue is kept).
    pub async fn run(
        self,
        endpoint: Endpoint,
        shutdown: CancellationToken,
    ) -> Result<(), RelayError> {
        let Relay {
            shared,
            store,
            metrics_listener,
        } = self;
        let aux_stop = CancellationToken::new();
        let mut aux = JoinSet::new();
        aux.spawn(expiry_loop(Arc::clone(&shared), aux_stop.clone()));
        if let Some(l) = metrics_listener {
            let l = tokio::net::TcpListener::from_std(l)
                .map_err(|e| RelayError::Metrics(e.to_string()))?;
            aux.spawn(serve_metrics(
                l,
                Arc::clone(&shared.metrics),
                aux_stop.clone(),
            ));
        }

        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                incoming = accept_validated(&endpoint) => {
                    let Some(incoming) = incoming else { break };
                    let ip = incoming.remote_address().ip();
                    match shared.admission.admit(ip, Instant::now()) {
                        Err(r) => {
                            shared.metrics.reject(refusal_metric(r));
                            incoming.refuse();
                        }
                        Ok(slot) => match incoming.accept() {
                            Ok(connecting) => {
                                conns.spawn(handle_connection(
                                    connecting,
                                    slot,
                                    Arc::clone(&shared),
                                    shutdown.clone(),
                                ));
                            }
                            Err(_) => shared.metrics.reject(Rejected::HandshakeFailed),
                        },
                    }
                }
            }
        }

        tracing::info!("relay stopping: draining {} connections", conns.len());
        endpoint.set_server_config(None);
        let grace = shared.config.drain_timeout * 2 + shared.config.hop.hello_timeout;
        if tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            conns.shutdown().await;
        }
        aux_stop.cancel();
        while aux.join_next().await.is_some() {}
        store.close().await;
        endpoint.close(VarInt::from(err::SHUTTING_DOWN), b"shutting down");
        let _ = tokio::time::timeout(CLOSE_WAIT, endpoint.wait_idle()).await;
        tracing::info!("relay stopped; queue kept");
        Ok(())
    }
}

async fn handle_connection(
    connecting: quinn::Connecting,
    slot: Slot,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let _slot = slot;
    let gauge = HandshakeGauge::new(&shared.metrics);
    let hop = &shared.config.hop;
    let conn = tokio::select! {
        _ = shutdown.cancelled() => return,
        c = tokio::time::timeout(hop.hello_timeout, connecting) => match c {
            Ok(Ok(c)) => c,
            _ => {
                shared.metrics.reject(Rejected::HandshakeFailed);
                return;
            }
        },
    };
    let key_hash = match peer_spki(&conn) {
        Some(spki) if is_ed25519_spki(&spki) && shared.allow.allows(&spki) => spki_hash(&spki),
        _ => {
            shared.metrics.reject(Rejected::NotAllowed);
            conn.close(VarInt::from(err::NOT_ALLOWED), b"not allowed");
            return;
        }
    };
    let stream = tokio::select! {
        _ = shutdown.cancelled() => {
            conn.close(VarInt::from(err::SHUTTING_DOWN), b"shutting down");
            return;
        }
        s = accept_stream(&conn, hop) => s,
    };
    let (reader, mut writer) = match stream {
        Ok(rw) => rw,
        Err(e) => {
            tracing::debug!("hello failed: {e}");
            shared.metrics.reject(Rejected::HandshakeFailed);
            conn.close(VarInt::from(err::MALFORMED), b"expected HELLO");
            return;
        }
    };
    let ready = HopFrame::Ready {
        version: PROTOCOL_VERSION,
    };
    if writer.send(&ready).await.is_err() {
        return;
    }
    drop(gauge);
    serve_client(conn, reader, writer, key_hash, shared, shutdown).await;
}

use liaison_hop::ClientPins as _;

async fn expiry_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(shared.config.expiry_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ttl_ms = i64::try_from(shared.config.ttl.as_millis()).unwrap_or(i64::MAX);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let cutoff = now_ms().saturating_sub(ttl_ms);
                match shared.store.expire(cutoff).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!("expired {n} envelopes"),
                    Err(_) => return,
                }
            }
        }
    }
}
