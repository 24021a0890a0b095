//! Admission control before any per-connection state: total and per-address connection
//! limits and a per-address token bucket for new connections. Relays and listening nodes
//! check every validated [`quinn::Incoming`] here before they spawn anything for it, and
//! refuse it (`Incoming::refuse`, QUIC `CONNECTION_REFUSED`) when it does not fit.
//!
//! Addresses are grouped as an IPv4 address or an IPv6 /64 (one host usually owns a whole
//! /64). Only addresses that passed QUIC Retry reach this point, so spoofed sources cannot
//! fill the table; the table is bounded anyway and idle entries are swept.
//! A [`Slot`] is held for the life of a connection and gives its place back when dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// Why a new connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The server holds its maximum number of connections.
    TooManyConnections,
    /// This address holds its maximum number of connections.
    TooManyFromAddress,
    /// This address opens connections too fast.
    RateLimited,
}

impl Refusal {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::TooManyConnections => "too_many_connections",
            Refusal::TooManyFromAddress => "too_many_from_address",
            Refusal::RateLimited => "rate_limited",
        }
    }
}

/// Most address entries kept at once.
const MAX_ENTRIES: usize = 1 << 17;

#[derive(Debug)]
struct Entry {
    conns: usize,
    tokens: f64,
    last: Instant,
}

#[derive(Debug)]
struct Inner {
    total: usize,
    by_addr: HashMap<IpAddr, Entry>,
    last_sweep: Instant,
}

/// Connection admission shared by the accept loop and the connections.
#[derive(Debug)]
pub struct Admission {
    inner: Mutex<Inner>,
    max_total: usize,
    max_per_addr: usize,
    rate: f64,
    burst: f64,
}

/// A connection's place, given back on drop.
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Admission>,
    key: IpAddr,
}

/// The address group: the IPv4 address, or the IPv6 /64.
pub fn addr_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            for b in o.iter_mut().skip(8) {
                *b = 0;
            }
            IpAddr::V6(o.into())
        }
    }
}

impl Admission {
    /// Limits: total connections, per address, sustained new connections per second per
    /// address and the burst above it.
    pub fn new(max_total: usize, max_per_addr: usize, rate: u32, burst: u32) -> Arc<Self> {
        Arc::new(Admission {
            inner: Mutex::new(Inner {
                total: 0,
                by_addr: HashMap::new(),
                last_sweep: Instant::now(),
            }),
            max_total,
            max_per_addr,
            rate: f64::from(rate),
            burst: f64::from(burst),
        })
    }

    /// Admits a new connection from `ip` at `now`, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Slot, Refusal> {
        let key = addr_key(ip);
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if now.saturating_duration_since(g.last_sweep).as_secs() >= 10 {
            let burst = self.burst;
            let rate = self.rate;
            g.by_addr.retain(|_, e| {
                let refill = now.saturating_duration_since(e.last).as_secs_f64() * rate;
                e.conns > 0 || e.tokens + refill < burst
            });
            g.last_sweep = now;
        }
        if g.total >= self.max_total {
            return Err(Refusal::TooManyConnections);
        }
        if !g.by_addr.contains_key(&key) && g.by_addr.len() >= MAX_ENTRIES {
            return Err(Refusal::TooManyConnections);
        }
        let e = g.by_addr.entry(key).or_insert(Entry {
            conns: 0,
            tokens: self.burst,
            last: now,
        });
        let refill = now.saturating_duration_since(e.last).as_secs_f64() * self.rate;
        e.tokens = (e.tokens + refill).min(self.burst);
        e.last = now;
        if e.conns >= self.max_per_addr {
            return Err(Refusal::TooManyFromAddress);
        }
        if e.tokens < 1.0 {
            return Err(Refusal::RateLimited);
        }
        e.tokens -= 1.0;
        e.conns += 1;
        g.total += 1;
        Ok(Slot {
            admission: Arc::clone(self),
            key,
        })
    }

    /// Connections currently admitted.
    pub fn total(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self
            .admission
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        g.total = g.total.saturating_sub(1);
        if let Some(e) = g.by_addr.get_mut(&self.key) {
            e.conns = e.conns.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use std::time::Duration;

    #[test]
    fn per_address_total_and_rate() {
        let a = Admission::new(5, 2, 1, 3);
        let t0 = Instant::now();
        let ip1: IpAddr = "10.0.0.1".parse().unwrap();
        let ip2: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = a.admit(ip1, t0).unwrap();
        let s2 = a.admit(ip1, t0).unwrap();
        assert_eq!(a.admit(ip1, t0).unwrap_err(), Refusal::TooManyFromAddress);
        drop(s1);
        // third token of the burst
        let s3 = a.admit(ip1, t0).unwrap();
        drop((s2, s3));
        assert_eq!(a.admit(ip1, t0).unwrap_err(), Refusal::RateLimited);
        let s4 = a.admit(ip1, t0 + Duration::from_millis(1100)).unwrap();
        assert_eq!(a.total(), 1);
        let others: Vec<_> = (0..4)
            .map(|i| a.admit(format!("10.0.1.{i}").parse().unwrap(), t0).unwrap())
            .collect();
        assert_eq!(a.admit(ip2, t0).unwrap_err(), Refusal::TooManyConnections);
        drop(others);
        drop(s4);
        assert_eq!(a.total(), 0);
    }

    #[test]
    fn ipv6_grouped_by_64() {
        assert_eq!(
            addr_key("2001:db8:1:2:aaaa::1".parse().unwrap()),
            addr_key("2001:db8:1:2:bbbb::9".parse().unwrap())
        );
        assert_ne!(
            addr_key("2001:db8:1:2::1".parse().unwrap()),
            addr_key("2001:db8:1:3::1".parse().unwrap())
        );
        assert_eq!(
            addr_key("::ffff:10.1.2.3".parse().unwrap()),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
        let a = Admission::new(10, 1, 100, 100);
        let t = Instant::now();
        let _s = a.admit("2001:db8::1".parse().unwrap(), t).unwrap();
        assert!(a.admit("2001:db8::2".parse().unwrap(), t).is_err());
    }
}
