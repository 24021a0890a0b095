//! Relay configuration: addresses, paths and every limit, with safe defaults.
//!
//! Every limit bounds one resource (disk, memory, CPU or sockets) and says what happens when
//! it is reached; `docs/relay.md` lists them for operators. [`RelayConfig::validate`] refuses
//! combinations that cannot work (a per-client queue smaller than one frame, zero limits...).

use crate::RelayError;
use liaison_hop::HopLimits;
use liaison_wire::consts::{MAX_BLOB_LEN, MAX_HOP_FRAME_LEN, MAX_SUBSCRIBE_INBOXES};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default time a stored envelope is kept: 7 days.
pub const DEFAULT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Limits of the durable queue. A post over any of them is refused with `ERR QUOTA` (or
/// `ERR TOO_LARGE` when one blob could never fit), and nothing is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Quotas {
    /// Bytes of blobs held for one destination inbox.
    pub inbox_bytes: u64,
    /// Envelopes held for one destination inbox.
    pub inbox_envelopes: u64,
    /// Bytes of blobs held that one hop key posted (counted while this process runs).
    pub poster_bytes: u64,
    /// Envelopes held that one hop key posted (counted while this process runs).
    pub poster_envelopes: u64,
    /// Bytes of blobs held that clients from one IPv4 address or IPv6 /64 posted, whatever
    /// hop keys they used (counted while this process runs). Hop keys cost nothing to make,
    /// so on an open relay this, not the per-poster quota, is what one client can hold.
    pub address_bytes: u64,
    /// Envelopes held that clients from one IPv4 address or IPv6 /64 posted (counted while
    /// this process runs).
    pub address_envelopes: u64,
    /// Bytes of blobs held in all.
    pub total_bytes: u64,
    /// Envelopes held in all.
    pub total_envelopes: u64,
    /// Largest blob the relay stores (`store = 1`), bytes.
    pub max_blob_bytes: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            inbox_bytes: 64 << 20,
            inbox_envelopes: 4096,
            poster_bytes: 256 << 20,
            poster_envelopes: 16_384,
            address_bytes: 256 << 20,
            address_envelopes: 16_384,
            total_bytes: 1 << 30,
            total_envelopes: 262_144,
            max_blob_bytes: MAX_BLOB_LEN,
        }
    }
}

/// Everything a relay needs. Build with [`RelayConfig::new`] and change fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RelayConfig {
    /// The relay's home: its hop key (see [`crate::RelayHome`]).
    pub home: PathBuf,
    /// UDP address to bind.
    pub bind: SocketAddr,
    /// Public `HOST:PORT` put in the card; `None` = the bound address (refused when that is
    /// unspecified, `0.0.0.0` or `::`).
    pub public_addr: Option<String>,
    /// Directory of the queue database (`queue.sqlite3`); default `HOME/relay-store`.
    pub store_dir: PathBuf,
    /// File of allowed hop keys (one SPKI SHA-256 in hex per line); `None` = any client with
    /// a valid Ed25519 certificate.
    pub allow_file: Option<PathBuf>,
    /// TCP address of the Prometheus text endpoint; `None` = no metrics endpoint.
    pub metrics_addr: Option<SocketAddr>,
    /// Stored envelopes older than this are deleted.
    pub ttl: Duration,
    /// How often expired envelopes are swept.
    pub expiry_interval: Duration,
    /// Queue quotas.
    pub quotas: Quotas,
    /// Most connections at once (handshakes included); over it new ones are refused.
    pub max_connections: usize,
    /// Most connections at once from one IPv4 address or IPv6 /64.
    pub max_connections_per_ip: usize,
    /// Sustained new connections per second from one IPv4 address or IPv6 /64.
    pub handshakes_per_ip_per_sec: u32,
    /// Burst of new connections from one address above the sustained rate.
    pub handshake_burst: u32,
    /// Most inbox ids one connection is subscribed to; the least recently subscribed ones
    /// are dropped to make room.
    pub max_subscriptions_per_client: usize,
    /// Most live subscribers of one inbox; the oldest is dropped to make room.
    pub max_subscribers_per_inbox: usize,
    /// Bytes of frames waiting to be sent to one client; a live frame that does not fit
    /// disconnects the client (it is too slow).
    pub client_queue_bytes: usize,
    /// Bytes of frames waiting to be sent to all clients together.
    pub total_queue_bytes: usize,
    /// `store = 1` posts of one client waiting for their commit; the client's stream is not
    /// read further until one completes.
    pub max_inflight_posts: usize,
    /// A client that accepts no data for this long is disconnected.
    pub write_timeout: Duration,
    /// A frame whose length has arrived must be complete within this long.
    pub frame_timeout: Duration,
    /// On shutdown, how long in-flight work and flushing may take before connections close.
    pub drain_timeout: Duration,
    /// QUIC limits of the relay's endpoint (windows, idle timeout, handshake time).
    pub hop: HopLimits,
}

/// The relay's QUIC limits: smaller windows than a direct line (they bound memory per
/// connection), no server keep-alive (clients keep their hops alive), a 60 s idle timeout.
pub fn relay_hop_limits() -> HopLimits {
    HopLimits {
        idle_timeout: Duration::from_secs(60),
        keep_alive: None,
        stream_window: 512 * 1024,
        connection_window: 1024 * 1024,
        max_bidi_streams: 1,
        hello_timeout: Duration::from_secs(10),
        congestion: liaison_hop::Congestion::default(),
    }
}

impl RelayConfig {
    /// Defaults for a relay whose home is `home`, bound to `bind`.
    pub fn new(home: impl Into<PathBuf>, bind: SocketAddr) -> Self {
        let home = home.into();
        RelayConfig {
            store_dir: home.join("relay-store"),
            home,
            bind,
            public_addr: None,
            allow_file: None,
            metrics_addr: None,
            ttl: DEFAULT_TTL,
            expiry_interval: Duration::from_secs(60),
            quotas: Quotas::default(),
            max_connections: 16_384,
            max_connections_per_ip: 64,
            handshakes_per_ip_per_sec: 10,
            handshake_burst: 40,
            max_subscriptions_per_client: 4096,
            max_subscribers_per_inbox: 4,
            client_queue_bytes: 512 * 1024,
            total_queue_bytes: 256 << 20,
            max_inflight_posts: 64,
            write_timeout: Duration::from_secs(30),
            frame_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
            hop: relay_hop_limits(),
        }
    }

    /// Sets the store directory.
    pub fn with_store_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.store_dir = dir.as_ref().to_path_buf();
        self
    }

    /// Refuses configurations that cannot work.
    pub fn validate(&self) -> Result<(), RelayError> {
        let bad = |m: &str| Err(RelayError::Config(m.to_string()));
        let frame = MAX_HOP_FRAME_LEN + 4;
        if self.ttl.is_zero() {
            return bad("ttl must be positive");
        }
        if self.expiry_interval.is_zero() {
            return bad("expiry interval must be positive");
        }
        if self.client_queue_bytes < frame {
            return bad(&format!(
                "per-client queue must hold at least one frame ({frame} bytes)"
            ));
        }
        if self.total_queue_bytes < self.client_queue_bytes {
            return bad("total queue bytes must be at least the per-client queue bytes");
        }
        if self.client_queue_bytes > u32::MAX as usize || self.total_queue_bytes > (usize::MAX >> 4)
        {
            return bad("queue bytes too large");
        }
        if self.max_connections == 0 || self.max_connections_per_ip == 0 {
            return bad("connection limits must be positive");
        }
        if self.handshakes_per_ip_per_sec == 0 || self.handshake_burst == 0 {
            return bad("handshake rate and burst must be positive");
        }
        if self.max_subscriptions_per_client < MAX_SUBSCRIBE_INBOXES {
            return bad(&format!(
                "max subscriptions per client must be at least {MAX_SUBSCRIBE_INBOXES} (one SUBSCRIBE)"
            ));
        }
        if self.max_subscribers_per_inbox == 0 || self.max_inflight_posts == 0 {
            return bad("subscriber and in-flight limits must be positive");
        }
        let q = &self.quotas;
        if q.inbox_bytes == 0
            || q.inbox_envelopes == 0
            || q.poster_bytes == 0
            || q.poster_envelopes == 0
            || q.address_bytes == 0
            || q.address_envelopes == 0
            || q.total_bytes == 0
            || q.total_envelopes == 0
            || q.max_blob_bytes == 0
        {
            return bad("quotas must be positive");
        }
        if q.max_blob_bytes > MAX_BLOB_LEN {
            return bad(&format!("max blob bytes is at most {MAX_BLOB_LEN}"));
        }
        for (name, d) in [
            ("write timeout", self.write_timeout),
            ("frame timeout", self.frame_timeout),
            ("hello timeout", self.hop.hello_timeout),
            ("idle timeout", self.hop.idle_timeout),
        ] {
            if d.is_zero() {
                return bad(&format!("{name} must be positive"));
            }
        }
        Ok(())
    }
}

/// Parses durations like `7d`, `12h`, `30m`, `45s`, `250ms` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, RelayError> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| RelayError::Config(format!("bad duration {text:?}: use e.g. 7d, 12h, 90s")))?;
    let secs = |m: u64| {
        n.checked_mul(m)
            .map(Duration::from_secs)
            .ok_or_else(|| RelayError::Config(format!("duration {text:?} is too long")))
    };
    match unit {
        "" | "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        "ms" => Ok(Duration::from_millis(n)),
        _ => Err(RelayError::Config(format!(
            "bad duration unit in {text:?}: use ms, s, m, h or d"
        ))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn defaults_validate() {
        let c = RelayConfig::new("/tmp/x", "127.0.0.1:0".parse().unwrap());
        c.validate().unwrap();
        assert_eq!(c.ttl, Duration::from_secs(604_800));
        assert_eq!(c.store_dir, PathBuf::from("/tmp/x/relay-store"));
        let mut bad = c.clone();
        bad.client_queue_bytes = 1000;
        assert!(bad.validate().is_err());
        let mut bad = c.clone();
        bad.quotas.max_blob_bytes = MAX_BLOB_LEN + 1;
        assert!(bad.validate().is_err());
        let mut bad = c;
        bad.ttl = Duration::ZERO;
        assert!(bad.validate().is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("3w").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }
}
