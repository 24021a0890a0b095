//! The engine's audit records and anomalies, into the audit log and user events.
//!
//! The engine decides what happened (calls offered, started and ended; relay events; peer
//! mailbox keys; anomalies as one typed enum); this maps each to the audit log's event and
//! reports anomalies to the user and the events table at most once per kind per minute (the
//! audit log aggregates them per minute itself).

use crate::node::{Node, NodeEvent, unix_now};
use crate::store;
use liaison_audit::entry::{
    AnomalyKind, CallEndReason, Direction, Event as AuditEvent, KeyEventKind, RelayEventKind,
};
use liaison_proto::conn::{Anomaly, AuditRecord, CallDirection, CallEnd, RelayRecord};
use liaison_wire::frame::{MSG_KIND_FILE, MessageContent};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const ANOMALY_REPORT_EVERY: Duration = Duration::from_secs(60);
const CARD_KEY_WARNING_EVERY: Duration = Duration::from_secs(3600);

/// The audit log's event for an engine record.
pub fn audit_event(rec: AuditRecord) -> Option<AuditEvent> {
    let dir = |d: CallDirection| match d {
        CallDirection::Outgoing => Direction::Outgoing,
        CallDirection::Incoming => Direction::Incoming,
    };
    Some(match rec {
        AuditRecord::CallOffered { call, direction } => AuditEvent::CallOffered {
            call,
            direction: dir(direction),
        },
        AuditRecord::CallStarted { call, direction } => AuditEvent::CallStarted {
            call,
            direction: dir(direction),
        },
        AuditRecord::CallEnded { call, reason } => AuditEvent::CallEnded {
            call,
            reason: match reason {
                CallEnd::Normal => CallEndReason::Normal,
                CallEnd::Timeout => CallEndReason::Timeout,
                CallEnd::Error => CallEndReason::Error,
                CallEnd::PeerClosed => CallEndReason::PeerClosed,
                CallEnd::Cancelled => CallEndReason::Cancelled,
            },
        },
        AuditRecord::MsgAcked { upto } => AuditEvent::MsgAcked { seq: upto },
        AuditRecord::PeerMailboxKey { key_id } => {
            let mut key_hash = [0u8; 32];
            if let Some(d) = key_hash.get_mut(..key_id.len()) {
                d.copy_from_slice(&key_id);
            }
            AuditEvent::KeyEvent {
                kind: KeyEventKind::PeerMailboxKey,
                key_hash,
            }
        }
        AuditRecord::Relay { kind, relay } => AuditEvent::RelayEvent {
            kind: match kind {
                RelayRecord::Connected => RelayEventKind::Connected,
                RelayRecord::Disconnected => RelayEventKind::Disconnected,
                RelayRecord::EnvelopeQueued => RelayEventKind::EnvelopeQueued,
                RelayRecord::EnvelopeReceived => RelayEventKind::EnvelopeReceived,
                RelayRecord::NoSubscriber => RelayEventKind::NoSubscriber,
            },
            relay,
        },
        // a record this version does not log yet
        _ => return None,
    })
}

/// The audit log's kind for an engine anomaly (`None`: not logged — an index we no longer
/// have, or an expired session, is normal after a restart or a rekey).
pub fn audit_anomaly(a: Anomaly) -> Option<AnomalyKind> {
    Some(match a {
        Anomaly::ReplayedData => AnomalyKind::ReplayedFrame,
        Anomaly::BadData | Anomaly::BadHandshake | Anomaly::BadEnvelope => {
            AnomalyKind::UndecryptableFrame
        }
        Anomaly::Malformed
        | Anomaly::MalformedFrames
        | Anomaly::BadFragment
        | Anomaly::BadMessage
        | Anomaly::BadMailboxKey => AnomalyKind::MalformedFrame,
        Anomaly::ReplayedHandshake => AnomalyKind::ReplayedHandshake,
        Anomaly::HandshakeFlood => AnomalyKind::HandshakeRateLimited,
        Anomaly::UnexpectedAck => AnomalyKind::UnexpectedAck,
        Anomaly::SeqRollback => AnomalyKind::SeqRollback,
        Anomaly::PeerLostMessages => AnomalyKind::PeerLostMessages,
        _ => return None,
    })
}

/// Rate limits for what users see.
#[derive(Debug, Default)]
pub(super) struct Reporter {
    anomalies: HashMap<Anomaly, (Instant, u64)>,
    card_key_warned: Option<Instant>,
}

impl Reporter {
    pub(super) fn anomaly(&mut self, node: &Node, contact: &str, a: Anomaly) {
        if let Some(k) = audit_anomaly(a) {
            node.inner.audit.anomaly(contact, k);
        }
        let now = Instant::now();
        let entry = self
            .anomalies
            .entry(a)
            .or_insert((now - ANOMALY_REPORT_EVERY, 0));
        entry.1 += 1;
        if now.duration_since(entry.0) < ANOMALY_REPORT_EVERY {
            return;
        }
        let count = entry.1;
        *entry = (now, 0);
        node.emit(NodeEvent::Anomaly {
            contact: contact.to_string(),
            kind: a.name().to_string(),
        });
        let db = node.db().clone();
        let name = contact.to_string();
        let kind = a.name();
        node.inner.tracker.spawn(async move {
            let detail = format!("{kind} x{count}");
            let _ = db
                .write(move |c| store::log_event(c, unix_now(), Some(&name), "anomaly", &detail))
                .await;
        });
    }

    pub(super) fn sealed_to_card_key(&mut self, node: &Node, contact: &str) {
        let now = Instant::now();
        if self
            .card_key_warned
            .is_some_and(|t| now.duration_since(t) < CARD_KEY_WARNING_EVERY)
        {
            return;
        }
        self.card_key_warned = Some(now);
        node.emit(NodeEvent::Notice {
            contact: contact.to_string(),
            message: format!(
                "sealed to {contact}'s card mailbox key: no fresher key from {contact} yet, so \
                 these envelopes are only as safe as that long-lived key (a live call or any \
                 envelope from {contact} brings a fresh one)"
            ),
        });
    }
}

/// The event for a delivered message.
pub fn message_event(contact: &str, seq: u64, c: &MessageContent) -> NodeEvent {
    let (text, file) = if c.kind == MSG_KIND_FILE {
        (None, c.name.clone())
    } else {
        (Some(String::from_utf8_lossy(&c.body).into_owned()), None)
    };
    NodeEvent::Message {
        from: contact.to_string(),
        id: format!("{contact}:{seq}"),
        seq,
        text,
        file,
        size: c.body.len(),
        sent_at_ms: c.sent_at_ms,
    }
}
