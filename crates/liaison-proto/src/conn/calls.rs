//! A line's calls as the audit log records them: `call_offered` → `call_started` →
//! `call_ended` under one call id, and relay connections, rate-bounded.
//!
//! A call is offered when a handshake of ours starts or we answer the peer's (retries and
//! repeated message 1s belong to the same offer), starts when a session can send, and ends
//! when none can any more (or the node stops). A relay that keeps dropping and taking back
//! the connection must not grow the log without bound: a reconnection within
//! [`RELAY_EVENT_EVERY`] of the last logged one is not logged (nor is its loss).

use super::{AuditRecord, Event, Now};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Least time between two logged connections to one relay.
pub const RELAY_EVENT_EVERY: Duration = Duration::from_secs(60);

/// Which side started a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CallDirection {
    /// This node.
    #[default]
    Outgoing,
    /// The peer.
    Incoming,
}

/// Why a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallEnd {
    /// Hung up normally (this node stopped).
    Normal,
    /// The session expired or stopped answering.
    Timeout,
    /// A local failure, or the contact's keys changed under it.
    Error,
    /// The peer said goodbye.
    PeerClosed,
    /// This node stopped before the call was answered.
    Cancelled,
}

/// What happened at a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayRecord {
    /// Connected (subscribed).
    Connected,
    /// The connection was lost.
    Disconnected,
    /// A sealed envelope is durably queued there.
    EnvelopeQueued,
    /// A sealed envelope arrived through it.
    EnvelopeReceived,
    /// It reported the peer absent.
    NoSubscriber,
}

#[derive(Debug, Default)]
pub(super) struct Calls {
    was_ready: bool,
    offer_logged: bool,
    call: u64,
    direction: CallDirection,
    end_reason: Option<CallEnd>,
    relay_logged: BTreeMap<[u8; 32], (bool, Instant)>,
}

impl Calls {
    /// A handshake of ours started (`Outgoing`) or we answered one (`Incoming`).
    pub(super) fn offering(&mut self, dir: CallDirection, now: Now, ev: &mut VecDeque<Event>) {
        self.direction = dir;
        if !self.was_ready {
            self.log_offer(now, ev);
        }
    }

    fn log_offer(&mut self, now: Now, ev: &mut VecDeque<Event>) {
        if self.offer_logged {
            return;
        }
        self.offer_logged = true;
        self.call = self.call.saturating_add(1).max(now.unix_ms);
        ev.push_back(Event::Audit(AuditRecord::CallOffered {
            call: self.call,
            direction: self.direction,
        }));
    }

    /// The line is up (`ready`) or not, after an input.
    pub(super) fn transition(&mut self, ready: bool, now: Now, ev: &mut VecDeque<Event>) {
        if ready && !self.was_ready {
            // every started call was offered (a session can also come back on a rekey
            // handshake begun while the previous one was still usable)
            self.log_offer(now, ev);
            ev.push_back(Event::Audit(AuditRecord::CallStarted {
                call: self.call,
                direction: self.direction,
            }));
            ev.push_back(Event::LineUp);
        } else if !ready && self.was_ready {
            let reason = self.end_reason.take().unwrap_or(CallEnd::Timeout);
            self.end(reason, ev);
            ev.push_back(Event::LineDown);
        }
        self.was_ready = ready;
    }

    /// The call now ending ends for this reason (when known before the session goes).
    pub(super) fn ending(&mut self, reason: CallEnd) {
        self.end_reason = Some(reason);
    }

    /// Logs `call_ended` for the current call (started, or offered and never answered).
    pub(super) fn end(&mut self, reason: CallEnd, ev: &mut VecDeque<Event>) {
        if !self.offer_logged {
            return;
        }
        self.offer_logged = false;
        ev.push_back(Event::Audit(AuditRecord::CallEnded {
            call: self.call,
            reason,
        }));
    }

    pub(super) fn relay_up(&mut self, relay: [u8; 32], now: Now, ev: &mut VecDeque<Event>) {
        let log = match self.relay_logged.get(&relay) {
            Some(&(up, at)) => !up && now.at.saturating_duration_since(at) >= RELAY_EVENT_EVERY,
            None => true,
        };
        if log {
            self.relay_logged.insert(relay, (true, now.at));
            ev.push_back(Event::Audit(AuditRecord::Relay {
                kind: RelayRecord::Connected,
                relay,
            }));
        }
    }

    pub(super) fn relay_down(&mut self, relay: [u8; 32], ev: &mut VecDeque<Event>) {
        if let Some(entry) = self.relay_logged.get_mut(&relay)
            && entry.0
        {
            entry.0 = false;
            ev.push_back(Event::Audit(AuditRecord::Relay {
                kind: RelayRecord::Disconnected,
                relay,
            }));
        }
    }
}
