//! The receiving half of the engine: blobs and envelopes in, frames handled, messages out for
//! storage, and the checks that keep sequence numbers honest.
//!
//! Envelopes and the relay: an envelope's relay id is released for deletion only once every
//! message fragment it carried belongs to a message that is durably stored — not when it was
//! merely buffered in memory (an incomplete message), and never when a fragment was dropped
//! (beyond `MAX_SEQ_AHEAD` or the reassembly cap): the relay keeps it and delivers it again.
//!
//! `ACK`s name the message they acknowledge by its digest. For an `ACK(n, d)`:
//! - `n` not above what is already acknowledged: nothing (old news);
//! - `n` beyond the highest seq this node ever assigned, or `d` not the digest of our message
//!   `n`: the peer holds *other* messages under our seqs, so our store was rolled back
//!   (restored from a backup). Nothing is marked delivered; every unacknowledged message up
//!   to `n` gets a new seq above both `n` and our highest ([`Event::Renumber`]), those above
//!   `n` keep theirs (the peer expects `n + 1` next) — unless `n` is absurdly far ahead
//!   ([`super::MAX_ROLLBACK_GAP`]), which is refused as `UnexpectedAck`;
//! - otherwise the messages up to `n` are delivered ([`Event::Acked`]).
//!
//! The receiving side of the same: a whole message arriving under a seq we hold with other
//! content is a sender reusing seqs. Unless told, it would take the message for delivered
//! once our cumulative `ACK` passes that seq; so `ACK(seq, digest of ours)` goes ahead of our
//! next `ACK`s (`Conn::check_reuse`), which the sender reads as above.
//!
//! And the first `ACK` on each live session is checked against our `acked_upto` when that
//! session's handshake began: lower means the peer lost messages it had acknowledged (its
//! store was rolled back), which are sent again ([`Event::PeerLost`]).

use super::{Anomaly, Conn, Event, Incoming, Now, PathId, PathKind, STALL_AFTER};
use crate::envelope;
use crate::line::Received;
use crate::mailbox_key::MailboxSecret;
use crate::mailbox_ring::PeerKeyOutcome;
use liaison_wire::card::MailboxKeyPub;
use liaison_wire::consts::*;
use liaison_wire::frame::{Frame, Frames, MessageContent, close_reason};
use liaison_wire::hop::EnvelopeId;
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Least time between two `ACK` envelopes sent for envelopes that held only duplicates.
const DUP_ACK_EVERY: Duration = Duration::from_secs(1);

/// An envelope whose relay id is released once what it carried is durable.
#[derive(Debug)]
pub(super) struct Held {
    path: PathId,
    id: EnvelopeId,
    /// Seqs that must be durably stored first.
    needs: Vec<u64>,
}

/// Where an authenticated plaintext came from.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// A live session (DATA or a message 2 payload) on `path`; `session` is our local index.
    Live { path: PathId, session: Option<u32> },
    /// A sealed envelope.
    Envelope,
}

/// What the frames of one plaintext require of the envelope that carried them.
#[derive(Debug, Default)]
struct EnvelopeNeeds {
    needs: Vec<u64>,
    /// A fragment was dropped: the relay must keep this envelope.
    keep: bool,
}

/// Our local session index named by a blob from the peer (DATA: its receiver index; HS_RESP:
/// the index of the initiation it answers).
fn session_of(blob: &[u8]) -> Option<u32> {
    let idx = match *blob.first()? {
        BLOB_DATA => blob.get(1..5)?,
        BLOB_HS_RESP => blob.get(5..9)?,
        _ => return None,
    };
    Some(u32::from_le_bytes(idx.try_into().ok()?))
}

impl Conn {
    /// A blob from the peer on a direct path, or forwarded live by a relay.
    pub fn handle_blob(&mut self, now: Now, path: PathId, blob: &[u8]) {
        let mut pt = std::mem::take(&mut self.pt);
        if self.line.handle_blob(now.at, blob, &mut pt) == Received::Plaintext {
            self.heard(now);
            let src = Source::Live {
                path,
                session: session_of(blob),
            };
            self.on_plaintext(now, src, blob, &pt);
        }
        self.pt = pt;
        self.drive(now);
    }

    /// A relay delivered a blob for one of our inboxes: an envelope it stored (with its relay
    /// id), or a live blob. `find` looks up our retained mailbox secrets by key id.
    pub fn handle_relay_deliver<'k>(
        &mut self,
        now: Now,
        path: PathId,
        envelope_id: Option<EnvelopeId>,
        blob: &[u8],
        find: impl FnOnce(&[u8; MAILBOX_KEY_ID_LEN]) -> Option<&'k MailboxSecret>,
    ) {
        if blob.first() != Some(&BLOB_ENVELOPE) {
            if let Some(id) = envelope_id {
                // a stored blob that is not an envelope: not ours to keep
                self.queue_relay_delete(path, id);
            }
            self.handle_blob(now, path, blob);
            return;
        }
        match envelope::open(&self.local, &self.peer, find, blob) {
            Ok(env) => {
                self.last_heard = Some(now.at);
                if let Some(PathKind::Relay { relay }) =
                    self.paths.iter().find(|p| p.id == path).map(|p| p.kind)
                {
                    self.events
                        .push_back(Event::Audit(super::AuditRecord::Relay {
                            kind: super::RelayRecord::EnvelopeReceived,
                            relay,
                        }));
                }
                let needs = self.on_plaintext(now, Source::Envelope, blob, env.frames());
                if self.env_ack_at.is_some()
                    && needs.needs.is_empty()
                    && !self.line.is_ready(now.at)
                    && self
                        .last_dup_ack
                        .is_none_or(|t| now.at.saturating_duration_since(t) >= DUP_ACK_EVERY)
                {
                    // only duplicates (nothing of it waits for the store, whose answer sends
                    // the ACK): the sender missed our ACK, or reuses seqs; answer now
                    self.last_dup_ack = Some(now.at);
                    self.env_ack_at = None;
                    self.send_ack_envelope(now);
                }
                if let Some(id) = envelope_id {
                    if needs.keep {
                        // the relay keeps it and delivers it again
                    } else if needs.needs.is_empty() {
                        self.queue_relay_delete(path, id);
                    } else {
                        self.held.push_back(Held {
                            path,
                            id,
                            needs: needs.needs,
                        });
                        while self.held.len() > super::MAX_HELD_ENVELOPES {
                            self.held.pop_front();
                        }
                    }
                }
            }
            Err(e) => {
                tracing::debug!("envelope refused: {e}");
                self.events.push_back(Event::Anomaly(Anomaly::BadEnvelope));
                if let Some(id) = envelope_id {
                    // it can never be opened: useless to keep
                    self.queue_relay_delete(path, id);
                }
            }
        }
        self.drive(now);
    }

    /// The messages of the last [`Event::Store`]s with these seqs are durable: deliver them
    /// in order, acknowledge them, and let relays delete the envelopes that carried them.
    pub fn stored(&mut self, now: Now, seqs: &[u64]) {
        let mut via_envelope = false;
        for &s in seqs {
            via_envelope |= self.storing_via_envelope.remove(&s);
            for d in self.receiver.mark_stored(s) {
                self.events.push_back(Event::Deliver { seq: d });
            }
        }
        if !seqs.is_empty() {
            self.ack_due = true;
            self.start_frames_dirty = true;
        }
        let receiver = &self.receiver;
        let mut release = Vec::new();
        self.held.retain(|h| {
            let durable = h.needs.iter().all(|s| receiver.is_stored(*s));
            if durable {
                release.push((h.path, h.id));
            }
            !durable
        });
        for (path, id) in release {
            self.queue_relay_delete(path, id);
        }
        if via_envelope && !self.line.is_ready(now.at) {
            // no live session to carry the ACK: it goes sealed, one per batch of envelopes
            self.sealed_ack_soon(now);
        }
        self.drive(now);
    }

    fn sealed_ack_soon(&mut self, now: Now) {
        self.env_ack_at
            .get_or_insert(now.at + super::ENVELOPE_ACK_DELAY);
    }

    /// Something authentic arrived from the peer.
    fn heard(&mut self, now: Now) {
        self.peer_away = false;
        self.away_at = None;
        self.heard_live = Some(now.at);
        let stalled = self
            .last_heard
            .is_none_or(|t| now.at.saturating_duration_since(t) >= STALL_AFTER);
        self.last_heard = Some(now.at);
        if self.waiting_since.is_some() {
            self.waiting_since = Some(now.at);
        }
        self.stall_reported = None;
        self.stall_after = super::STALL_AFTER;
        self.stalls = 0;
        if stalled && self.sender.unacked_count() > 0 {
            // the path was silent while messages waited: it is back, send them now instead of
            // waiting out a backed-off retransmission timer
            self.sender.kick(now.at);
        }
    }

    /// Handles the frames of one authenticated plaintext; `ct` is the blob that carried it.
    fn on_plaintext(&mut self, now: Now, src: Source, ct: &[u8], pt: &[u8]) -> EnvelopeNeeds {
        let mut needs = EnvelopeNeeds::default();
        let mut ct_hash: Option<[u8; 32]> = None;
        let via_envelope = matches!(src, Source::Envelope);
        for frame in Frames::new(pt) {
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    // authenticated but malformed: the peer's software is broken
                    tracing::warn!("malformed frames from the peer: {e}");
                    self.events
                        .push_back(Event::Anomaly(Anomaly::MalformedFrames));
                    if let Source::Live { path, .. } = src {
                        self.close_path(now, path, close_reason::MALFORMED);
                    }
                    needs.keep = false;
                    return needs;
                }
            };
            match frame {
                Frame::Msg {
                    seq,
                    frag_index,
                    frag_count,
                    chunk,
                } => {
                    if !via_envelope {
                        self.ack_due = true;
                    }
                    use crate::delivery::FragmentOutcome as F;
                    match self
                        .receiver
                        .on_fragment(seq, frag_index, frag_count, chunk)
                    {
                        Ok(F::Complete { seq, encoded }) => {
                            match MessageContent::decode(&encoded) {
                                Ok(content) => {
                                    let h =
                                        *ct_hash.get_or_insert_with(|| Sha256::digest(ct).into());
                                    if via_envelope {
                                        self.storing_via_envelope.insert(seq);
                                    }
                                    needs.needs.push(seq);
                                    self.to_store.push(Incoming {
                                        seq,
                                        content,
                                        encoded,
                                        ct_hash: h,
                                        via_envelope,
                                    });
                                }
                                Err(e) => {
                                    tracing::warn!(seq, "undecodable message: {e}");
                                    self.receiver.abandon(seq);
                                    self.events.push_back(Event::Anomaly(Anomaly::BadMessage));
                                }
                            }
                        }
                        Ok(F::Duplicate) => {
                            if self.receiver.is_storing(seq) {
                                needs.needs.push(seq);
                            }
                            if frag_count == 1 {
                                self.check_reuse(seq, chunk);
                            }
                            if via_envelope && !self.line.is_ready(now.at) {
                                // re-acknowledge: the sender may have missed our ACK
                                self.sealed_ack_soon(now);
                            }
                        }
                        Ok(F::Incomplete) => needs.needs.push(seq),
                        Ok(F::Dropped) => needs.keep = true,
                        Err(_) => {
                            self.events.push_back(Event::Anomaly(Anomaly::BadFragment));
                            if let Source::Live { path, .. } = src {
                                self.close_path(now, path, close_reason::MISBEHAVING);
                            }
                            return needs;
                        }
                    }
                }
                Frame::Ack {
                    delivered_upto,
                    digest,
                } => self.on_ack(src, delivered_upto, digest),
                Frame::MboxKey(bytes) => match MailboxKeyPub::decode(bytes) {
                    Ok(k) => self.on_peer_mailbox_key(now, &k),
                    Err(_) => self
                        .events
                        .push_back(Event::Anomaly(Anomaly::BadMailboxKey)),
                },
                Frame::Close { reason } => {
                    tracing::info!("peer closed the session (reason {reason})");
                    // only a live session's goodbye ends it (an envelope has no session)
                    if reason == close_reason::BYE
                        && let Source::Live {
                            session: Some(idx), ..
                        } = src
                        && ct.first() == Some(&BLOB_DATA)
                        && self.line.peer_closed(now.at, idx)
                    {
                        // the next message starts a fresh handshake (and finds the peer away,
                        // or back)
                        self.calls.ending(super::CallEnd::PeerClosed);
                    }
                }
                Frame::Audit(bytes) => self.events.push_back(Event::AuditMessage(bytes.to_vec())),
                Frame::Card(_) => {
                    tracing::debug!("ignoring a CARD frame (this version does not rotate keys)");
                }
            }
        }
        needs
    }

    /// A whole message arrived again under `seq`, which we hold: if ours is another message,
    /// the sender reuses seqs (its store was rolled back) and will take this one for
    /// delivered once our `ACK` passes `seq`. Tell it first: `ACK(seq, digest of ours)` goes
    /// ahead of our next `ACK`s, and the sender moves its message to a new seq.
    fn check_reuse(&mut self, seq: u64, encoded: &[u8]) {
        if seq > self.receiver.delivered_upto() {
            return;
        }
        let Some(held) = self.receiver.held_digest(seq) else {
            return;
        };
        if held == liaison_wire::frame::msg_digest(encoded) {
            return;
        }
        if self.reused.is_none_or(|(s, _)| seq > s) {
            self.reused = Some((seq, held));
        }
        self.reused_acks = super::REUSED_ACKS;
        // (through an envelope, the caller makes a sealed ACK due)
        self.ack_due = true;
    }

    fn on_peer_mailbox_key(&mut self, now: Now, key: &MailboxKeyPub) {
        match self
            .peer_mbox
            .accept_peer_key(key, &self.peer.identity, now.unix_secs())
        {
            Ok(PeerKeyOutcome::Accepted) => {
                self.events
                    .push_back(Event::Audit(super::AuditRecord::PeerMailboxKey {
                        key_id: key.key_id,
                    }));
                if let Ok(bytes) = self.peer_mbox.to_bytes() {
                    self.events.push_back(Event::PeerMailboxKeys(bytes));
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("mailbox key refused: {e}");
                self.events
                    .push_back(Event::Anomaly(Anomaly::BadMailboxKey));
            }
        }
    }

    /// `ACK(upto, digest)` from the peer (module documentation).
    fn on_ack(&mut self, src: Source, upto: u64, digest: [u8; MSG_DIGEST_LEN]) {
        if let Source::Live {
            session: Some(idx), ..
        } = src
            && let Some(snap) = self.snapshots.iter_mut().find(|s| s.local_idx == idx)
            && !snap.checked
        {
            snap.checked = true;
            if upto < snap.acked {
                // everything acknowledged so far, including what came in since the handshake
                // began: the peer lost it all
                let acked_upto = snap.acked.max(self.sender.acked_upto()).max(self.acking);
                self.events
                    .push_back(Event::Anomaly(Anomaly::PeerLostMessages));
                self.events.push_back(Event::PeerLost {
                    peer_holds: upto,
                    acked_upto,
                });
                return;
            }
        }
        let known = self.sender.acked_upto().max(self.acking);
        if upto <= known {
            return;
        }
        let highest = self.next_seq.saturating_sub(1);
        if upto > highest {
            if upto - highest <= super::MAX_ROLLBACK_GAP {
                self.rollback(upto);
            } else {
                self.events
                    .push_back(Event::Anomaly(Anomaly::UnexpectedAck));
            }
            return;
        }
        match self.sender.digest(upto) {
            Some(d) if d == digest => {
                self.acking = upto;
                self.events.push_back(Event::Acked { upto });
            }
            Some(_) => self.rollback(upto),
            None => self
                .events
                .push_back(Event::Anomaly(Anomaly::UnexpectedAck)),
        }
    }

    /// Our store was rolled back: the peer holds other messages under our seqs up to
    /// `peer_holds`. Every unacknowledged message moves above both that and our highest seq.
    fn rollback(&mut self, peer_holds: u64) {
        if self.hold_sends.is_some() {
            // a renumbering is being committed; the peer's next ACK is judged after it
            return;
        }
        let msgs = self.sender.take_unacked(peer_holds);
        let base = peer_holds.max(self.next_seq.saturating_sub(1));
        let mut moves = Vec::with_capacity(msgs.len());
        let mut next = base;
        for (old, encoded) in msgs {
            next = next.saturating_add(1);
            moves.push((old, next));
            self.sender.push(next, encoded);
        }
        self.next_seq = next.saturating_add(1);
        self.acking = self.acking.max(peer_holds);
        // envelopes carry the old seqs: the peer takes them as duplicates
        self.drop_posted(|_, _| true, true);
        self.enveloped.clear();
        let token = self.next_token;
        self.next_token += 1;
        self.hold_sends = Some(token);
        self.events.push_back(Event::Anomaly(Anomaly::SeqRollback));
        self.events.push_back(Event::Renumber {
            token,
            peer_holds,
            moves,
        });
    }

    /// Hands completed messages to the shell for storage.
    pub(super) fn flush_store(&mut self) {
        if self.to_store.is_empty() {
            return;
        }
        let messages = std::mem::take(&mut self.to_store);
        self.events.push_back(Event::Store {
            messages,
            delivered_upto: self.receiver.delivered_upto_if_stored(),
        });
    }
}
