//! What each engine event does to the home's stores, in order, and the answer the engine gets
//! once it is durable.
//!
//! - `Store`: each message's `msg_recv` entry is made durable in the audit log, then the
//!   messages and the new `delivered_upto` are written in one transaction; only then
//!   `stored()` (which makes the ACK due). Consecutive `Store` events share the transaction.
//! - `Acked`: the outbox rows become `delivered` in one transaction, then `ack_committed()`.
//! - `PersistHandshake`: the contact's handshake timestamps, then `persisted()`.
//! - `Renumber`: outbox rows move to their new seqs (bodies re-sealed: the seq is their AAD)
//!   with `acked_upto`/`next_seq`, in one transaction; a `msg_sent` entry for each new seq is
//!   durable; then `renumbered()`.
//! - `PeerLost`: the rows the peer lost go back to pending, then `resend()` with their bodies.

use super::LineTask;
use crate::atrest::{self, Direction};
use crate::node::{Node, NodeError, NodeEvent, open_content, unix_now};
use crate::store::{self, ContactRow};
use liaison_audit::entry::{Event as AuditEvent, KeyEventKind};
use liaison_proto::conn::{Event, Incoming};
use liaison_proto::keys::PeerKeys;
use liaison_proto::mailbox_ring::PeerMailboxKeys;
use liaison_wire::card::{Card, MailboxKeyPub};
use liaison_wire::frame::{MessageContent, msg_digest};
use std::sync::Arc;
use zeroize::Zeroizing;

/// Opens one of our stored (sealed) outbox bodies.
pub(super) fn open_sent(
    node: &Node,
    contact: &str,
    seq: u64,
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, NodeError> {
    let aad = atrest::body_aad(contact, Direction::Sent, seq);
    Ok(atrest::open_body(node.data_key(), &aad, sealed)?)
}

/// The contact's keys as the engine needs them (the pairing secret opened).
pub(super) fn peer_keys(node: &Node, row: &ContactRow) -> Result<PeerKeys, NodeError> {
    let pairing = match &row.pairing {
        Some(sealed) => {
            let aad = pairing_aad(&row.name);
            let p = atrest::open_body(node.data_key(), &aad, sealed)?;
            let arr: [u8; 32] = p
                .as_slice()
                .try_into()
                .map_err(|_| NodeError::Other("stored pairing secret is damaged".into()))?;
            Some(Zeroizing::new(arr))
        }
        None => None,
    };
    Ok(PeerKeys {
        identity: row.identity,
        noise: row.noise,
        pairing,
    })
}

/// The first-contact mailbox key of the contact's pinned card.
pub(super) fn card_mailbox(row: &ContactRow) -> Option<MailboxKeyPub> {
    Card::from_bytes(&row.card).ok().map(|c| c.body.mailbox)
}

/// The contact's newest in-band mailbox key, as stored.
pub(super) fn peer_mailbox(row: &ContactRow) -> PeerMailboxKeys {
    row.peer_mbox
        .as_deref()
        .and_then(|b| PeerMailboxKeys::from_bytes(b, &row.identity).ok())
        .unwrap_or_default()
}

/// `msg_digest` of a stored received message (what our `ACK` names), from its sealed body.
pub fn received_digest(
    node: &Node,
    contact: &str,
    seq: u64,
    sealed: &[u8],
) -> Result<[u8; 16], NodeError> {
    let aad = atrest::body_aad(contact, Direction::Received, seq);
    let plain = atrest::open_body(node.data_key(), &aad, sealed)?;
    Ok(msg_digest(&plain))
}

/// The `msg_sent` commitment of an outbox message, from its sealed body (`None` if the body
/// does not decode: the line drops such a row anyway).
pub fn sent_commitment(
    node: &Node,
    contact: &str,
    seq: u64,
    sealed: &[u8],
) -> Result<Option<[u8; 32]>, NodeError> {
    let plain = open_sent(node, contact, seq, sealed)?;
    Ok(MessageContent::decode(&plain)
        .ok()
        .map(|c| liaison_audit::commitment(&c.salt, &c.body)))
}

/// Records the last authentic traffic (at most every few seconds, off the line's path).
pub(super) fn touch(node: &Node, name: &str) {
    let db = node.db().clone();
    let name = name.to_string();
    node.inner.tracker.spawn(async move {
        let _ = db.write(move |c| store::touch(c, &name, unix_now())).await;
    });
}

/// Copies key events the CLI recorded for this contact (pinning, verification, pairing,
/// replay reset) into the line's audit log, once each. Only this process signs the log.
pub(super) async fn import_key_events(
    node: &Node,
    name: &str,
    identity: [u8; 32],
) -> Result<(), NodeError> {
    let n = name.to_string();
    let events = node
        .db()
        .write(move |c| {
            let key = format!("audit_key_events:{n}");
            let upto = store::meta_get(c, &key)?
                .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                .map(i64::from_le_bytes)
                .unwrap_or(0);
            let rows = store::key_events_after(c, &n, upto)?;
            if let Some(last) = rows.last() {
                store::meta_set(c, &key, &last.0.to_le_bytes())?;
            }
            Ok(rows)
        })
        .await?;
    for (_, kind, _) in events {
        let k = match kind.as_str() {
            store::key_event::PINNED => KeyEventKind::PeerPinned,
            store::key_event::REPINNED => KeyEventKind::ContactRepinned,
            store::key_event::VERIFIED => KeyEventKind::SafetyNumberVerified,
            store::key_event::PAIRED => KeyEventKind::PairingSecretSet,
            store::key_event::REPLAY_RESET => KeyEventKind::ReplayReset,
            _ => continue,
        };
        node.inner.audit.append(
            name,
            AuditEvent::KeyEvent {
                kind: k,
                key_hash: identity,
            },
        );
    }
    Ok(())
}

/// Applies a batch of engine events in order.
pub(super) async fn apply(t: &mut LineTask, batch: Vec<Event>) -> Result<(), NodeError> {
    let mut it = batch.into_iter().peekable();
    while let Some(ev) = it.next() {
        match ev {
            Event::Store {
                mut messages,
                mut delivered_upto,
            } => {
                // consecutive stores share one transaction
                while let Some(Event::Store { .. }) = it.peek() {
                    if let Some(Event::Store {
                        messages: more,
                        delivered_upto: d,
                    }) = it.next()
                    {
                        messages.extend(more);
                        delivered_upto = delivered_upto.max(d);
                    }
                }
                store_received(t, messages, delivered_upto).await?;
            }
            other => apply_one(t, other).await?,
        }
    }
    Ok(())
}

async fn apply_one(t: &mut LineTask, ev: Event) -> Result<(), NodeError> {
    let name = t.name.clone();
    match ev {
        Event::PersistHandshake {
            token,
            sent_ts,
            accepted_ts,
        } => {
            t.node
                .db()
                .write(move |c| {
                    store::set_hs_sent_ts(c, &name, &sent_ts.0)?;
                    store::set_hs_accepted_ts(c, &name, &accepted_ts.0)
                })
                .await?;
            t.conn.persisted(token);
        }
        Event::Store { .. } => {}
        Event::Deliver { seq } => {
            let content = match t.contents.remove(&seq) {
                Some(c) => c,
                None => {
                    // stored earlier (ahead, before a restart): read it back
                    let n2 = name.clone();
                    let row = t
                        .node
                        .db()
                        .write(move |c| store::inbox_get(c, &n2, seq))
                        .await?;
                    match row {
                        Some(r) => open_content(
                            t.node.data_key(),
                            &name,
                            Direction::Received,
                            seq,
                            &r.body,
                        )?,
                        None => return Ok(()),
                    }
                }
            };
            t.node
                .emit(super::calls::message_event(&name, seq, &content));
        }
        Event::Acked { upto } => {
            let n2 = name.clone();
            let changed = t
                .node
                .db()
                .write(move |c| store::outbox_acked(c, &n2, upto, unix_now()))
                .await?;
            t.conn.ack_committed(super::now(), upto);
            for seq in changed {
                t.node.emit(NodeEvent::Delivered {
                    to: name.clone(),
                    id: format!("{name}:{seq}"),
                    seq,
                });
            }
        }
        Event::Queued { seqs } => {
            let n2 = name.clone();
            let changed = t
                .node
                .db()
                .write(move |c| {
                    let mut changed = Vec::new();
                    for s in seqs {
                        if store::outbox_status(c, &n2, s)?.as_deref()
                            == Some(store::status::PENDING)
                            && store::outbox_set_status(
                                c,
                                &n2,
                                s,
                                store::status::QUEUED,
                                unix_now(),
                            )?
                        {
                            changed.push(s);
                        }
                    }
                    Ok(changed)
                })
                .await?;
            for seq in changed {
                t.node.emit(NodeEvent::Queued {
                    to: name.clone(),
                    id: format!("{name}:{seq}"),
                    seq,
                });
            }
        }
        Event::NotHeld { seqs, code } => {
            let reason = liaison_wire::hop::err::name(code).to_string();
            tracing::warn!(contact = %name, "relay refused an envelope: {reason}");
            t.node.emit(NodeEvent::NotHeld {
                to: name,
                seqs,
                reason,
            });
        }
        Event::PeerMailboxKeys(bytes) => {
            t.node
                .db()
                .write(move |c| store::set_peer_mbox(c, &name, &bytes))
                .await?;
        }
        Event::Audit(rec) => {
            if let Some(e) = super::calls::audit_event(rec) {
                t.node.inner.audit.append(&name, e);
            }
        }
        Event::AuditMessage(bytes) => t.node.inner.audit.message(&name, &bytes),
        Event::LineUp => {
            t.node.inner.audit.session_up(&name);
            t.node.emit(NodeEvent::LineUp { contact: name });
        }
        Event::Unreachable => t.node.emit(NodeEvent::Unreachable { contact: name }),
        Event::Anomaly(a) => t.calls.anomaly(&t.node, &name, a),
        Event::Renumber {
            token,
            peer_holds,
            moves,
        } => renumber(t, token, peer_holds, moves).await?,
        Event::PeerLost {
            peer_holds,
            acked_upto,
        } => peer_lost(t, peer_holds, acked_upto).await?,
        Event::SealedToCardKey => t.calls.sealed_to_card_key(&t.node, &name),
        Event::EnvelopeSealed(env) => {
            t.node
                .db()
                .write(move |c| store::envelope_keep(c, &name, &env))
                .await?;
        }
        Event::EnvelopesDropped(ids) => {
            t.node
                .db()
                .write(move |c| store::envelope_forget(c, &name, &ids))
                .await?;
        }
        Event::PathStalled { path } => t.path_stalled(path),
        Event::LineDown | Event::PeerAway => {}
        other => tracing::debug!(contact = %name, "engine event not handled: {other:?}"),
    }
    Ok(())
}

async fn store_received(
    t: &mut LineTask,
    items: Vec<Incoming>,
    delivered_upto: u64,
) -> Result<(), NodeError> {
    let seqs: Vec<u64> = items.iter().map(|m| m.seq).collect();
    // the commitments are durable in the audit log before the messages are stored and acked
    for m in &items {
        t.node.inner.audit.append(
            &t.name,
            AuditEvent::MsgReceived {
                seq: m.seq,
                commitment: liaison_audit::commitment(&m.content.salt, &m.content.body),
                ciphertext_hash: m.ct_hash,
            },
        );
    }
    // no ACK for what the audit log does not hold: the line stops, the peer sends again
    if let Err(e) = t.node.inner.audit.persist(&t.name).await {
        t.node.emit(NodeEvent::Anomaly {
            contact: t.name.clone(),
            kind: format!("the audit log cannot record received messages ({e}): line stopped"),
        });
        return Err(NodeError::Audit(e));
    }
    let mut rows = Vec::with_capacity(items.len());
    for m in items {
        let aad = atrest::body_aad(&t.name, Direction::Received, m.seq);
        // the reassembled bytes are the encoding just decoded: seal them as they are
        let body = atrest::seal_body(t.node.data_key(), &aad, &m.encoded)?;
        rows.push(store::Received { seq: m.seq, body });
        t.contents.insert(m.seq, m.content);
    }
    let name = t.name.clone();
    t.node
        .db()
        .write(move |c| store::inbox_store(c, &name, &rows, delivered_upto, unix_now()))
        .await?;
    t.conn.stored(super::now(), &seqs);
    Ok(())
}

/// Our store was rolled back: move the pending rows to their new seqs (see the engine).
async fn renumber(
    t: &mut LineTask,
    token: u64,
    peer_holds: u64,
    moves: Vec<(u64, u64)>,
) -> Result<(), NodeError> {
    let name = t.name.clone();
    let key = t.node.data_key().clone();
    let mv = moves.clone();
    let contents: Vec<(u64, MessageContent)> = t
        .node
        .db()
        .write(move |c| {
            let mut out = Vec::with_capacity(mv.len());
            let mut resealed = Vec::with_capacity(mv.len());
            for &(old, new) in &mv {
                let Some(body) = store::outbox_body(c, &name, old)? else {
                    continue;
                };
                let plain =
                    atrest::open_body(&key, &atrest::body_aad(&name, Direction::Sent, old), &body)
                        .map_err(|e| store::DbError::Invalid(e.to_string()))?;
                let sealed =
                    atrest::seal_body(&key, &atrest::body_aad(&name, Direction::Sent, new), &plain)
                        .map_err(|e| store::DbError::Invalid(e.to_string()))?;
                if let Ok(content) = MessageContent::decode(&plain) {
                    out.push((new, content));
                }
                resealed.push((old, new, sealed));
            }
            store::outbox_renumber(c, &name, &resealed, peer_holds)?;
            Ok(out)
        })
        .await?;
    for (seq, c) in &contents {
        t.node.inner.audit.append(
            &t.name,
            AuditEvent::MsgSent {
                seq: *seq,
                commitment: liaison_audit::commitment(&c.salt, &c.body),
                ciphertext_hash: [0; 32],
            },
        );
    }
    // not sent under their new seqs before they are logged: the next line logs them first
    if let Err(e) = t.node.inner.audit.persist(&t.name).await {
        t.node.emit(NodeEvent::Anomaly {
            contact: t.name.clone(),
            kind: format!("the audit log cannot record renumbered messages ({e}): line stopped"),
        });
        return Err(NodeError::Audit(e));
    }
    tracing::warn!(contact = %t.name, peer_holds, "sequence rollback: {} pending message(s) renumbered", moves.len());
    t.node.emit(NodeEvent::Renumbered {
        contact: t.name.clone(),
        peer_holds,
        moves: moves.iter().map(|&(o, n)| [o, n]).collect(),
    });
    t.conn.renumbered(super::now(), token);
    Ok(())
}

/// The peer lost messages it had acknowledged: they go back to pending and out again.
async fn peer_lost(t: &mut LineTask, peer_holds: u64, acked_upto: u64) -> Result<(), NodeError> {
    let name = t.name.clone();
    let rows = t
        .node
        .db()
        .write(move |c| store::outbox_reopen(c, &name, peer_holds, acked_upto, unix_now()))
        .await?;
    let mut msgs = Vec::with_capacity(rows.len());
    for r in rows {
        let plain = open_sent(&t.node, &t.name, r.seq, &r.body)?;
        msgs.push((r.seq, Arc::from(plain.as_slice())));
    }
    tracing::warn!(contact = %t.name, peer_holds, acked_upto, "the peer lost messages it had acknowledged; sending them again");
    t.node.emit(NodeEvent::PeerLost {
        contact: t.name.clone(),
        from: peer_holds.saturating_add(1),
        to: acked_upto,
    });
    t.conn.resend(super::now(), peer_holds, msgs);
    Ok(())
}

/// AAD for a sealed pairing secret.
pub fn pairing_aad(contact: &str) -> Vec<u8> {
    let mut a = b"liaison/1 pairing".to_vec();
    a.extend_from_slice(&(contact.len() as u32).to_le_bytes());
    a.extend_from_slice(contact.as_bytes());
    a
}
