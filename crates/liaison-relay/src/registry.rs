//! Who is connected and which inboxes each connection subscribed to.
//!
//! `SUBSCRIBE` adds inbox ids to the connection's set (re-subscribing an id refreshes it).
//! A set holds at most `max_subscriptions_per_client` ids; when full, the least recently
//! (re)subscribed ids make room, so a node that re-sends its current window of inbox ids
//! (every day and on every reconnect) keeps exactly what it needs. An inbox has at most
//! `max_subscribers_per_inbox` live subscribers; a new one displaces the oldest (usually a
//! stale connection of the same node). Subscriptions end with the connection.

use crate::metrics::Metrics;
use crate::outbound::OutQueue;
use liaison_wire::hop::InboxId;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};

/// A connected client as others see it.
#[derive(Debug)]
pub struct ClientHandle {
    /// Process-local number (never a key or an address).
    pub id: u64,
    /// SHA-256 of the client's SPKI (for allow-list reloads).
    pub key_hash: [u8; 32],
    /// Its connection.
    pub conn: quinn::Connection,
    /// Its outbound queue.
    pub out: OutQueue,
}

impl ClientHandle {
    /// Closes the connection at once with a hop error code as the QUIC application code.
    pub fn disconnect(&self, code: u16, reason: &'static str) {
        self.conn
            .close(quinn::VarInt::from(code), reason.as_bytes());
        self.out.clear();
    }
}

/// A connection's inbox ids in subscription order.
#[derive(Debug, Default)]
struct SubSet {
    by_id: HashMap<InboxId, u64>,
    by_age: BTreeMap<u64, InboxId>,
    next: u64,
}

impl SubSet {
    /// Adds or refreshes `id`; true if it is new.
    fn touch(&mut self, id: InboxId) -> bool {
        let age = self.next;
        self.next += 1;
        match self.by_id.insert(id, age) {
            Some(old) => {
                self.by_age.remove(&old);
                self.by_age.insert(age, id);
                false
            }
            None => {
                self.by_age.insert(age, id);
                true
            }
        }
    }

    fn remove(&mut self, id: &InboxId) -> bool {
        match self.by_id.remove(id) {
            Some(age) => {
                self.by_age.remove(&age);
                true
            }
            None => false,
        }
    }

    fn pop_oldest(&mut self) -> Option<InboxId> {
        let (_, id) = self.by_age.pop_first()?;
        self.by_id.remove(&id);
        Some(id)
    }

    fn len(&self) -> usize {
        self.by_id.len()
    }
}

#[derive(Debug)]
struct Entry {
    handle: Arc<ClientHandle>,
    subs: SubSet,
}

#[derive(Debug, Default)]
struct Inner {
    inboxes: HashMap<InboxId, Vec<Arc<ClientHandle>>>,
    clients: HashMap<u64, Entry>,
    subscriptions: u64,
}

/// The relay's table of clients and subscriptions.
#[derive(Debug)]
pub struct Registry {
    inner: Mutex<Inner>,
    metrics: Arc<Metrics>,
    max_per_client: usize,
    max_per_inbox: usize,
}

impl Inner {
    fn unlink(&mut self, inbox: &InboxId, client: u64) {
        if let Some(v) = self.inboxes.get_mut(inbox) {
            let before = v.len();
            v.retain(|c| c.id != client);
            if v.len() < before {
                self.subscriptions = self.subscriptions.saturating_sub(1);
            }
            if v.is_empty() {
                self.inboxes.remove(inbox);
            }
        }
    }
}

impl Registry {
    /// An empty registry with these bounds.
    pub fn new(metrics: Arc<Metrics>, max_per_client: usize, max_per_inbox: usize) -> Self {
        Registry {
            inner: Mutex::new(Inner::default()),
            metrics,
            max_per_client,
            max_per_inbox,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a connected client.
    pub fn add(&self, handle: Arc<ClientHandle>) {
        self.lock().clients.insert(
            handle.id,
            Entry {
                handle,
                subs: SubSet::default(),
            },
        );
    }

    /// Forgets a client and all its subscriptions.
    pub fn remove(&self, client: u64) {
        let mut g = self.lock();
        if let Some(mut e) = g.clients.remove(&client) {
            while let Some(id) = e.subs.pop_oldest() {
                g.unlink(&id, client);
            }
        }
        self.metrics.subscriptions.store(g.subscriptions, Relaxed);
    }

    /// Subscribes `client` to `ids` (added or refreshed). Returns how many were new.
    pub fn subscribe(&self, client: u64, ids: impl IntoIterator<Item = InboxId>) -> usize {
        let mut g = self.lock();
        let mut new = 0;
        for id in ids {
            let Some(entry) = g.clients.get_mut(&client) else {
                return new;
            };
            if !entry.subs.touch(id) {
                continue;
            }
            new += 1;
            let handle = Arc::clone(&entry.handle);
            let evicted = if entry.subs.len() > self.max_per_client {
                entry.subs.pop_oldest()
            } else {
                None
            };
            if let Some(old) = evicted {
                g.unlink(&old, client);
            }
            let subs = g.inboxes.entry(id).or_default();
            subs.push(handle);
            let displaced = if subs.len() > self.max_per_inbox {
                Some(subs.remove(0))
            } else {
                None
            };
            g.subscriptions += 1;
            if let Some(d) = displaced {
                g.subscriptions = g.subscriptions.saturating_sub(1);
                if let Some(e) = g.clients.get_mut(&d.id) {
                    e.subs.remove(&id);
                }
            }
        }
        self.metrics.subscriptions.store(g.subscriptions, Relaxed);
        new
    }

    /// The live subscribers of `inbox`.
    pub fn subscribers(&self, inbox: &InboxId) -> Vec<Arc<ClientHandle>> {
        self.lock().inboxes.get(inbox).cloned().unwrap_or_default()
    }

    /// True if `client` is subscribed to `inbox`.
    pub fn is_subscribed(&self, client: u64, inbox: &InboxId) -> bool {
        self.lock()
            .clients
            .get(&client)
            .is_some_and(|e| e.subs.by_id.contains_key(inbox))
    }

    /// Every connected client.
    pub fn clients(&self) -> Vec<Arc<ClientHandle>> {
        self.lock()
            .clients
            .values()
            .map(|e| Arc::clone(&e.handle))
            .collect()
    }

    /// Number of connected clients.
    pub fn len(&self) -> usize {
        self.lock().clients.len()
    }

    /// True when nobody is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn lru_subset() {
        let mut s = SubSet::default();
        assert!(s.touch([1; 16]));
        assert!(s.touch([2; 16]));
        assert!(!s.touch([1; 16]));
        assert_eq!(s.pop_oldest(), Some([2; 16]));
        assert_eq!(s.pop_oldest(), Some([1; 16]));
        assert_eq!(s.pop_oldest(), None);
        assert!(s.touch([3; 16]));
        assert!(s.remove(&[3; 16]));
        assert_eq!(s.len(), 0);
    }
}
