//! Liaison relay: a bounded, expiring store-and-forward buffer of opaque blobs between nodes
//! that cannot reach each other directly.
//!
//! # Design overview
//! A relay is a QUIC server ([`liaison_hop`]: pinned mutual TLS with self-signed Ed25519
//! certificates, TLS 1.3 only, no 0-RTT, Retry for unvalidated addresses). Each node uses its
//! own per-relay hop key; an operator may restrict which keys are served ([`allow`], reloaded
//! on demand). After `HELLO`/`READY` a client speaks the relay's hop frames
//! ([`liaison_wire::hop`]):
//!
//! - `SUBSCRIBE(inbox…)` adds inbox ids to the connection's subscriptions (bounded, least
//!   recently subscribed dropped first) and replays the envelopes stored for them;
//! - `POST(dst, store = 0, blob)` forwards `DELIVER(dst, zeros, blob)` to the live subscribers
//!   of `dst`, or answers `ERR NO_SUBSCRIBER` with `ref = SHA-256(blob)[..16]`;
//! - `POST(dst, store = 1, blob)` commits the blob durably under
//!   `envelope_id = SHA-256(blob)[..16]` (a re-post is not stored twice), then answers
//!   `ACK(envelope_id)` and delivers `DELIVER(dst, envelope_id, blob)` to live subscribers;
//! - `ACK(envelope_id)` from a subscriber deletes that envelope from the inboxes it
//!   subscribed to;
//! - anything else is `ERR MALFORMED` and the connection is closed.
//!
//! The relay never parses blobs and links no session-key code (it depends on `liaison-wire`
//! and `liaison-hop` only): it cannot read, forge or undetectably reorder what it carries.
//!
//! # Structure
//! - [`server`]: admission, handshakes, accept loop, expiry, drain on shutdown;
//! - `client`: the per-client actor (reader, writer, committer, replay);
//! - [`store`]: SQLite queue on its own thread with group commit, quotas and expiry;
//! - [`registry`], [`outbound`], [`admission`]: bounded tables and queues;
//! - [`metrics`]: aggregate counters and a Prometheus text endpoint;
//! - [`card`], [`home`], [`config`], [`allow`]: the relay's identity and settings.
//!
//! Every task is owned (a `JoinSet` or a join handle awaited on teardown) and every queue is
//! bounded; [`Relay::run`] returns only after connections are drained and the store closed.

pub mod allow;
pub mod card;
mod client;
pub mod config;
pub mod home;
pub mod metrics;
pub mod outbound;
pub mod registry;
pub mod request;
pub mod server;
pub mod store;

/// Connection admission (in `liaison-hop`, shared with listening nodes).
pub use liaison_hop::admission;

pub use card::{RelayCardError, verify_relay_card};
pub use config::{Quotas, RelayConfig, parse_duration, relay_hop_limits};
pub use home::RelayHome;
pub use liaison_wire::relay_card::RelayCard;
pub use server::{AllowReload, Relay, RelayHandle};

use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;

/// A relay failure. Everything here is local (configuration, files, sockets); what peers do
/// wrong is answered on the wire and counted in [`metrics`], never returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The configuration cannot work.
    #[error("invalid relay configuration: {0}")]
    Config(String),
    /// The relay's home or key file.
    #[error("relay home: {0}")]
    Home(String),
    /// The queue database.
    #[error("relay queue: {0}")]
    Store(String),
    /// The allow list file.
    #[error("allow list: {0}")]
    AllowList(String),
    /// The metrics endpoint.
    #[error("metrics endpoint: {0}")]
    Metrics(String),
    /// QUIC/TLS setup.
    #[error(transparent)]
    Hop(#[from] liaison_hop::HopError),
    /// The relay card.
    #[error(transparent)]
    Card(#[from] RelayCardError),
}

/// What [`serve`] reports once the relay listens.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReadyInfo {
    /// The bound UDP address (print as `listening on ADDR`).
    pub addr: SocketAddr,
    /// The relay's signed card.
    pub card: RelayCard,
    /// The card's `liaison-relay:` line.
    pub card_text: String,
    /// Where the metrics endpoint listens, if configured.
    pub metrics_addr: Option<SocketAddr>,
    /// Control of the running relay (call `reload_allow_list` on SIGHUP).
    pub handle: RelayHandle,
}

/// Checks the public address before binding: an explicit one must be `HOST:PORT` and not an
/// unspecified IP or port 0; without one, the bind address must be a specific IP.
pub fn check_public_addr(bind: SocketAddr, public: Option<&str>) -> Result<(), RelayError> {
    match public {
        Some(p) => {
            liaison_wire::relay_card::check_relay_addr(p)
                .map_err(|e| RelayError::Config(format!("public address {p:?}: {e}")))?;
            if let Ok(sa) = p.parse::<SocketAddr>()
                && sa.ip().is_unspecified()
            {
                return Err(RelayError::Config(format!(
                    "public address {p} is unspecified: give the address nodes dial"
                )));
            }
            Ok(())
        }
        None if bind.ip().is_unspecified() => Err(RelayError::Config(format!(
            "bound to the unspecified address {}: give --public-addr HOST:PORT, the address \
             nodes dial",
            bind.ip()
        ))),
        None => Ok(()),
    }
}

/// Runs a relay on an endpoint built by the caller. The endpoint should use
/// [`Relay::server_config`]; if it does not, the allow list is still enforced right after
/// the TLS handshake. Returns after a drained shutdown.
pub async fn run(
    endpoint: quinn::Endpoint,
    config: RelayConfig,
    shutdown: CancellationToken,
) -> Result<(), RelayError> {
    Relay::open(config)?.run(endpoint, shutdown).await
}

/// Opens the home (creating the key on first start) and the store, binds the UDP endpoint
/// and the metrics socket, calls `on_ready`, then serves until `shutdown` and drains.
///
/// ```no_run
/// # async fn f(cfg: liaison_relay::RelayConfig) -> Result<(), liaison_relay::RelayError> {
/// let shutdown = tokio_util::sync::CancellationToken::new();
/// liaison_relay::serve(cfg, shutdown.clone(), |ready| {
///     eprintln!("listening on {}", ready.addr);
///     println!("{}", ready.card_text);
///     // keep ready.handle to call reload_allow_list() on SIGHUP; cancel `shutdown` on SIGTERM
/// })
/// .await
/// # }
/// ```
pub async fn serve(
    config: RelayConfig,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(ReadyInfo),
) -> Result<(), RelayError> {
    config.validate()?;
    check_public_addr(config.bind, config.public_addr.as_deref())?;
    let home = RelayHome::open(&config.home)?;
    let public = config.public_addr.clone();
    let relay = Relay::open(config)?;
    let endpoint = relay.bind(home.key())?;
    let addr = endpoint
        .local_addr()
        .map_err(|e| RelayError::Config(format!("bound socket: {e}")))?;
    let public = public.unwrap_or_else(|| addr.to_string());
    let card = home.card(&public)?;
    let card_text = card.to_text().map_err(RelayCardError::from)?;
    on_ready(ReadyInfo {
        addr,
        card,
        card_text,
        metrics_addr: relay.metrics_addr(),
        handle: relay.handle(),
    });
    relay.run(endpoint, shutdown).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn public_address_rules() {
        let any: SocketAddr = "0.0.0.0:4433".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:4433".parse().unwrap();
        assert!(check_public_addr(any, None).is_err());
        assert!(check_public_addr("[::]:1".parse().unwrap(), None).is_err());
        assert!(check_public_addr(lo, None).is_ok());
        assert!(check_public_addr(any, Some("relay.example.org:4433")).is_ok());
        assert!(check_public_addr(any, Some("0.0.0.0:4433")).is_err());
        assert!(check_public_addr(any, Some("[::]:4433")).is_err());
        assert!(check_public_addr(any, Some("relay.example.org")).is_err());
        assert!(check_public_addr(any, Some("1.2.3.4:0")).is_err());
    }
}
