//! Getting the line paths: dialing the contact's direct address with backoff, registering the
//! contact's inboxes at relays (and again every hour, as inbox ids roll over daily), and
//! applying contact changes made while the node runs.
//!
//! The engine says whether the line wants a path ([`Conn::wants_path`]); the shell decides
//! only the mechanics: which address, when to retry.

use super::{LineInput, LineTask, now};
use crate::node::NodeEvent;
use crate::relay_client::{Registration, RelayClient};
use crate::store::ContactRow;
use liaison_proto::conn::Conn;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const DIAL_BACKOFF_MIN: Duration = Duration::from_secs(1);
const DIAL_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Registrations (SUBSCRIBE of the current inbox window) are renewed this often.
const REGISTER_EVERY: Duration = Duration::from_secs(3600);

/// The direct dial's state.
#[derive(Debug)]
pub(super) struct Dialer {
    stored_addr: Option<String>,
    asked_addr: Option<String>,
    dialing: bool,
    next: Option<Instant>,
    backoff: Duration,
    /// Numbers the dials: the `DialDone` of an abandoned one is ignored.
    generation: u64,
    /// Stops the dial in flight.
    cancel: Option<CancellationToken>,
    /// The direct hop went silent: dial a fresh one although one is attached.
    replace: bool,
}

impl Dialer {
    pub(super) fn new(stored_addr: Option<String>) -> Self {
        Dialer {
            stored_addr,
            asked_addr: None,
            dialing: false,
            next: None,
            backoff: DIAL_BACKOFF_MIN,
            generation: 0,
            cancel: None,
            replace: false,
        }
    }

    /// The direct hop is silent: dial a fresh one now (the old ones go once it is up).
    pub(super) fn replace_stalled(&mut self) {
        self.replace = true;
        self.next = None;
    }

    pub(super) fn replacing(&self) -> bool {
        self.replace
    }

    pub(super) fn replaced(&mut self) {
        self.replace = false;
    }

    /// True if a `DialDone` of dial `generation` is about the dial in flight.
    pub(super) fn is_current(&self, generation: u64) -> bool {
        self.dialing && generation == self.generation
    }

    /// Gives up the dial in flight (its address is no longer the one to dial): the next one
    /// may start at once instead of after the old one timed out.
    fn abandon(&mut self) {
        if self.dialing {
            if let Some(c) = self.cancel.take() {
                c.cancel();
            }
            self.dialing = false;
            self.generation += 1;
        }
    }

    fn addr(&self) -> Option<&String> {
        self.asked_addr.as_ref().or(self.stored_addr.as_ref())
    }

    fn wanted(&self, conn: &Conn, has_direct: bool) -> bool {
        (!has_direct || self.replace) && !self.dialing && conn.wants_path() && self.addr().is_some()
    }

    /// True if a dial should start now.
    pub(super) fn due(&self, conn: &Conn, has_direct: bool) -> bool {
        self.wanted(conn, has_direct) && self.next.is_none_or(|t| t <= Instant::now())
    }

    /// When the next dial is due, if one is wanted.
    pub(super) fn deadline(&self, conn: &Conn, has_direct: bool) -> Option<Instant> {
        self.next.filter(|_| self.wanted(conn, has_direct))
    }

    /// The user asked for the line (optionally at `addr`): dial at once.
    pub(super) fn want(&mut self, addr: Option<String>) {
        if let Some(a) = addr {
            if self.addr() != Some(&a) {
                self.abandon();
            }
            self.asked_addr = Some(a);
        }
        self.next = None;
    }

    /// A dial ended; on failure the next one waits (doubling), and the error is returned.
    pub(super) fn done(&mut self, error: Option<String>) -> Option<String> {
        self.dialing = false;
        self.cancel = None;
        match error {
            Some(e) => {
                self.next = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(DIAL_BACKOFF_MAX);
                Some(e)
            }
            None => {
                self.backoff = DIAL_BACKOFF_MIN;
                self.next = None;
                None
            }
        }
    }

    /// The stored address changed (`contact set --addr` while the node runs). It is the
    /// user's latest word on where the contact is: it replaces an address given to an earlier
    /// `call`/`send --addr` through this node, and a dial in flight to another address is
    /// given up.
    fn set_stored(&mut self, addr: Option<String>) {
        if addr != self.stored_addr {
            let before = self.addr().cloned();
            self.stored_addr = addr;
            self.asked_addr = None;
            if self.addr() != before.as_ref() {
                self.abandon();
            }
            self.next = None;
            self.backoff = DIAL_BACKOFF_MIN;
        }
    }
}

/// The relays this line is registered at.
#[derive(Debug)]
pub(super) struct Registrations {
    stored_relay: Option<String>,
    clients: Vec<RelayClient>,
    at: Option<Instant>,
}

impl Registrations {
    pub(super) fn new(stored_relay: Option<String>) -> Self {
        Registrations {
            stored_relay,
            clients: Vec::new(),
            at: None,
        }
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        self.at
            .filter(|_| !self.clients.is_empty())
            .map(|t| t + REGISTER_EVERY)
    }

    pub(super) fn refresh_due(&self) -> bool {
        self.deadline().is_some_and(|d| d <= Instant::now())
    }

    pub(super) fn take(&mut self) -> Vec<RelayClient> {
        std::mem::take(&mut self.clients)
    }

    /// Asks the relay client whose connection is `hop` to check it (the others ignore it).
    pub(super) fn probe(&self, hop: u64) {
        for c in &self.clients {
            c.probe(hop);
        }
    }
}

impl LineTask {
    pub(super) fn start_dial(&mut self) {
        let Some(addr) = self.dial.addr().cloned() else {
            return;
        };
        self.dial.dialing = true;
        self.dial.generation += 1;
        let generation = self.dial.generation;
        let token = self.node.shutdown_token().child_token();
        self.dial.cancel = Some(token.clone());
        let node = self.node.clone();
        let hop_pub = self.row.hop;
        let tx = self.tx_self.clone();
        self.node.inner.tracker.spawn(async move {
            let r = tokio::select! {
                _ = token.cancelled() => return,
                r = node.dial(hop_pub, &addr, tx.clone()) => r,
            };
            let msg = match r {
                Ok(()) => LineInput::DialDone {
                    generation,
                    error: None,
                    refused: false,
                },
                Err(e) => LineInput::DialDone {
                    generation,
                    refused: e.is_tls_refusal(),
                    error: Some(format!("{addr}: {e}")),
                },
            };
            let _ = tx.send(msg).await;
        });
    }

    /// Registers this contact's inboxes at relay `rc` (SUBSCRIBE; the relay client answers
    /// with a `HopUp`).
    pub(super) async fn register(&mut self, rc: RelayClient) {
        let n = now();
        let (Some(recv), Some(send)) = (self.conn.recv_inboxes(n), self.conn.send_inbox(n)) else {
            return;
        };
        let reg = Registration {
            contact: self.name.clone(),
            line: self.tx_self.clone(),
            recv,
            send,
        };
        if rc.register(reg).await {
            if !self.relays.clients.iter().any(|c| c.same_as(&rc)) {
                self.relays.clients.push(rc);
            }
            self.relays.at = Some(Instant::now());
        }
    }

    /// The contact's row changed in the store: apply it to the running line at once (a new
    /// pairing secret or new keys end the sessions made under the old ones).
    pub(super) async fn contact_changed(
        &mut self,
        row: ContactRow,
    ) -> Result<(), crate::node::NodeError> {
        if row.hs_accepted_ts == [0; 12] && self.row.hs_accepted_ts != [0; 12] {
            // `contact reset-replay` while we run (it stores zeros; the line itself only ever
            // stores a newer timestamp)
            self.conn
                .reset_replay(liaison_proto::handshake::Tai64N(row.hs_accepted_ts));
        }
        self.row.hs_accepted_ts = row.hs_accepted_ts;
        let r = &self.row;
        if row.identity == r.identity
            && row.noise == r.noise
            && row.hop == r.hop
            && row.pairing == r.pairing
            && row.addr == r.addr
            && row.relay == r.relay
            && row.live_only == r.live_only
            && row.card == r.card
        {
            return Ok(());
        }
        let peer = super::persist::peer_keys(&self.node, &row)?;
        let keys_changed = row.identity != self.row.identity || row.noise != self.row.noise;
        let pairing_changed = row.pairing != self.row.pairing;
        self.conn.set_peer(
            now(),
            peer,
            super::persist::card_mailbox(&row),
            row.live_only,
        );
        self.dial.set_stored(row.addr.clone());
        if row.relay != self.relays.stored_relay {
            self.relays.stored_relay = row.relay.clone();
            for rc in self.node.relays_for(row.relay.as_deref()) {
                self.register(rc).await;
            }
        }
        if keys_changed {
            // new inbox ids: subscribe them
            for rc in self.relays.take() {
                self.register(rc).await;
            }
        }
        if keys_changed || pairing_changed {
            tracing::info!(contact = %self.name, "contact keys or pairing secret changed: sessions under the old ones ended");
            self.node.emit(NodeEvent::Notice {
                contact: self.name.clone(),
                message: if keys_changed {
                    "the contact's keys changed: the line handshakes again with the new ones".into()
                } else {
                    "the pairing secret changed: sessions made without it were ended".into()
                },
            });
        }
        self.hop_pub_changed(&row);
        self.row = row;
        Ok(())
    }

    /// Ends the call from this side: `CLOSE(bye)` on the live session, then every hop is
    /// detached so nothing follows it.
    pub(super) async fn say_bye(&mut self) {
        self.conn.close(now());
        let _ = tokio::time::timeout(super::BYE_GRACE, async {
            loop {
                let n = now();
                let Some(path) = self.conn.next_transmit_path(n) else {
                    break;
                };
                let Some(tx) = self
                    .hops
                    .iter()
                    .find(|h| h.id == path)
                    .map(|h| h.tx.clone())
                else {
                    self.conn.path_down(n, path);
                    continue;
                };
                match tx.reserve_owned().await {
                    Ok(permit) => {
                        if let Some(t) = self.conn.poll_transmit(now()) {
                            self.write(t, Some(permit));
                        }
                    }
                    Err(_) => self.conn.path_down(now(), path),
                }
            }
        })
        .await;
        let _ = self.flush_events().await;
        let ids: Vec<u64> = self.hops.iter().map(|h| h.id).collect();
        for id in ids {
            self.hop_gone(id);
        }
    }

    fn hop_pub_changed(&mut self, row: &ContactRow) {
        if row.hop != self.row.hop {
            // a direct hop authenticated with the old key no longer belongs to this contact
            let ids: Vec<u64> = self.hops.iter().map(|h| h.id).collect();
            for id in ids {
                self.hop_gone(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_address_set_while_dialing_wins_at_once() {
        let mut d = Dialer::new(Some("old:1".into()));
        // a call or send through the running node named an address
        d.want(Some("given:2".into()));
        assert_eq!(d.addr().map(String::as_str), Some("given:2"));
        d.dialing = true;
        d.generation = 7;
        let token = CancellationToken::new();
        d.cancel = Some(token.clone());
        // `contact set --addr` meanwhile: the new address replaces the given one, the dial in
        // flight is given up and its end ignored
        d.set_stored(Some("new:3".into()));
        assert_eq!(d.addr().map(String::as_str), Some("new:3"));
        assert!(!d.dialing);
        assert!(token.is_cancelled());
        assert!(!d.is_current(7));
        assert!(d.next.is_none());
        // the same stored address again changes nothing
        d.dialing = true;
        let g = d.generation;
        d.set_stored(Some("new:3".into()));
        assert!(d.is_current(g));
        // naming the address being dialed does not restart the dial
        d.want(Some("new:3".into()));
        assert!(d.is_current(g));
        d.want(Some("other:4".into()));
        assert!(!d.is_current(g));
    }
}
