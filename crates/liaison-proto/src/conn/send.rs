//! The sending half of the engine: the transmit queue, DATA plaintexts (ACK, MBOX_KEY, AUDIT
//! and MSG fragments, in that order), and sealed envelopes for a peer who is away.
//!
//! Envelopes: every unacknowledged message not yet sealed is sealed to the peer's mailbox key
//! and posted (`store = 1`) on every relay path. The engine keeps each envelope it posted
//! until the messages it carries are acknowledged end to end, and posts it again on every
//! (re)subscription ([`Conn::path_up`] of a relay): the relay dedupes by envelope id, and a
//! relay that lost its store, dropped the envelope at its TTL, or is new to the contact gets
//! it again. One whose mailbox key has expired (a fresher key is known) is re-sealed instead.
//!
//! Mailbox keys (forward secrecy of envelopes): every envelope carries our current mailbox key
//! in an `MBOX_KEY` frame and our `ACK`; we seal to the peer's newest in-band key while the
//! peer still retains it (`not_after` + [`MAILBOX_KEY_RETAIN_SECS`], less a day of margin),
//! and fall back to the card's key — which lives as long as the peer's identity — only when no
//! in-band key is usable (first contact), saying so ([`Event::SealedToCardKey`]).

use super::{Conn, Event, Now, PathId, PathKind, PathState};
use crate::envelope;
use liaison_wire::card::MailboxKeyPub;
use liaison_wire::consts::*;
use liaison_wire::frame::{FrameWriter, fragment, fragment_count};
use liaison_wire::hop::{BlobFrame, EnvelopeId, HopFrame, InboxId, Route, envelope_id};
use std::collections::BTreeSet;
use std::sync::Arc;

/// Most envelopes sealed per round (one round per trigger: a relay's answer, a new message, a
/// timer); the rest follows as the relay stores these.
const MAX_ENVELOPES_PER_ROUND: usize = 64;

/// A hop frame waiting for room on its path.
#[derive(Debug)]
pub(super) struct Queued {
    pub(super) path: PathId,
    pub(super) frame: Vec<u8>,
    /// Leaves only once persistence token `gate` is confirmed (0: at once).
    pub(super) gate: u64,
    pub(super) close_after: bool,
    /// A handshake message (dropped when the contact's keys change).
    pub(super) handshake: bool,
}

/// An envelope this node sealed, kept (and persisted by the shell, so a restarted node posts
/// the same bytes again) until what it carries is acknowledged end to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedEnvelope {
    /// Its relay id, `SHA-256(blob)[..16]`.
    pub id: EnvelopeId,
    /// The `ENVELOPE` blob.
    pub blob: Arc<[u8]>,
    /// Seqs with a fragment in it.
    pub seqs: Vec<u64>,
    /// Seqs whose last fragment is in it (queued once a relay stores it).
    pub completes: Vec<u64>,
    /// `not_after` of the mailbox key it is sealed to.
    pub key_not_after: u64,
    /// It is sealed to the peer's card key.
    pub card_key: bool,
}

#[derive(Debug)]
pub(super) struct Posted {
    pub(super) env: SealedEnvelope,
    /// Relays that reported it stored.
    stored_at: BTreeSet<[u8; 32]>,
}

impl Posted {
    pub(super) fn new(env: SealedEnvelope) -> Self {
        Posted {
            env,
            stored_at: BTreeSet::new(),
        }
    }
}

impl Conn {
    /// Queues a session blob (handshake or keepalive) from the [`crate::line::Line`] on the
    /// path we send on; handshake messages wait for their timestamp to be durable.
    pub(super) fn queue_session_blob(&mut self, now: Now, blob: Vec<u8>) {
        let Some(path) = self.send_path() else {
            // no path: the handshake is retried when one comes up
            return;
        };
        let Some(route) = self.route(now, path.kind, false) else {
            return;
        };
        let handshake = blob.first() != Some(&BLOB_DATA);
        self.queue.push_back(Queued {
            path: path.id,
            frame: BlobFrame::with_blob(route, &blob),
            gate: if handshake { self.persist_gate() } else { 0 },
            close_after: false,
            handshake,
        });
    }

    /// The hop frame route for a path (`None`: no inbox for this peer).
    pub(super) fn route(&self, now: Now, kind: PathKind, store: bool) -> Option<Route> {
        match kind {
            PathKind::Direct => Some(Route::Direct),
            PathKind::Relay { .. } => Some(Route::Relay {
                dst: self.send_inbox(now)?,
                store,
            }),
        }
    }

    /// True if a DATA plaintext is due and a session can carry it.
    pub(super) fn data_wanted(&self, now: Now) -> bool {
        !self.paths.is_empty()
            && !self.said_bye
            && self.line.is_ready(now.at)
            && (self.ack_due
                || (self.sender.has_pending() && self.hold_sends.is_none())
                || self.mbox_due
                || !self.audit_out.is_empty())
    }

    /// One DATA blob for `path`: what is due, as much as fits.
    pub(super) fn build_data(&mut self, now: Now, path: PathState) -> Option<Vec<u8>> {
        let route = self.route(now, path.kind, false)?;
        if self.last_data_path.is_some_and(|p| p != path.id) {
            // a new path: what went on the old one may be lost with it
            self.sender.rewind();
        }
        self.last_data_path = Some(path.id);
        let mut w = FrameWriter::default();
        let with_reused =
            self.ack_due && self.reused_acks > 0 && self.reused.is_some_and(|(s, d)| w.ack(s, &d));
        let with_ack = self.ack_due
            && w.ack(
                self.receiver.delivered_upto(),
                self.receiver.delivered_digest(),
            );
        let mut with_mbox = false;
        if self.mbox_due
            && let Some(bytes) = self.own_mbox.as_ref().and_then(|k| k.encode().ok())
        {
            with_mbox = w.raw(FRAME_MBOX_KEY, &bytes);
        }
        let mut audit_sent = 0;
        while let Some(m) = self.audit_out.get(audit_sent) {
            if !w.raw(FRAME_AUDIT, m) {
                break;
            }
            audit_sent += 1;
        }
        let n = if self.hold_sends.is_none() {
            self.sender.fill(now.at, &mut w)
        } else {
            0
        };
        if n > 0 && self.waiting_since.is_none() {
            self.waiting_since = Some(now.at);
        }
        if n == 0 && !with_ack && !with_mbox && audit_sent == 0 {
            self.mbox_due = false;
            return None;
        }
        let pt = w.finish();
        let mut f = BlobFrame::new(route, DATA_HEADER_LEN + pt.len() + NOISE_TAG_LEN);
        match self.line.seal(now.at, now.tai64n(), &pt, n > 0, f.buf()) {
            Ok(()) => {
                if with_ack {
                    self.ack_due = false;
                }
                if with_reused {
                    self.reused_acks = self.reused_acks.saturating_sub(1);
                }
                if with_mbox {
                    self.mbox_due = false;
                }
                self.audit_out.drain(..audit_sent);
                Some(f.finish())
            }
            Err(_) => {
                // nothing went out: send it all again once a session is ready
                self.sender.rewind();
                None
            }
        }
    }

    /// A hop frame carrying `CLOSE(reason)` alone, sealed on the current session.
    pub(super) fn close_frame(&mut self, now: Now, kind: PathKind, reason: u8) -> Option<Vec<u8>> {
        let route = self.route(now, kind, false)?;
        let mut w = FrameWriter::default();
        w.raw(FRAME_CLOSE, &[reason]);
        let pt = w.finish();
        let mut f = BlobFrame::new(route, DATA_HEADER_LEN + pt.len() + NOISE_TAG_LEN);
        self.line
            .seal(now.at, now.tai64n(), &pt, false, f.buf())
            .ok()?;
        Some(f.finish())
    }

    /// Closes a misbehaving direct path: `CLOSE(reason)` on it, then it is detached.
    pub(super) fn close_path(&mut self, now: Now, path: PathId, reason: u8) {
        let Some(p) = self.paths.iter_mut().find(|p| p.id == path) else {
            return;
        };
        if p.kind != PathKind::Direct || p.closing {
            return;
        }
        p.closing = true;
        let kind = p.kind;
        self.queue.retain(|q| q.path != path);
        // no session to seal it on: an empty frame still tells the shell to detach the hop
        let frame = self.close_frame(now, kind, reason).unwrap_or_default();
        self.queue.push_back(Queued {
            path,
            frame,
            gate: 0,
            close_after: true,
            handshake: false,
        });
    }

    /// Relay paths that are up.
    fn relay_paths(&self) -> Vec<PathState> {
        self.paths
            .iter()
            .filter(|p| matches!(p.kind, PathKind::Relay { .. }) && !p.closing)
            .copied()
            .collect()
    }

    /// The key to seal to (module documentation): the peer's newest in-band key while it
    /// retains it, else its card's; `true` for the card's.
    fn mailbox_for_sealing(&self, now: Now) -> Option<(MailboxKeyPub, bool)> {
        let unix = now.unix_secs();
        if let Some(k) = self.peer_mbox.newest() {
            let usable_until = k
                .not_after
                .saturating_add(MAILBOX_KEY_RETAIN_SECS)
                .saturating_sub(MAILBOX_KEY_ROTATE_SECS);
            if unix <= usable_until {
                return Some((k.clone(), false));
            }
        }
        self.card_mbox.clone().map(|k| (k, true))
    }

    /// A writer for one envelope, starting with our `ACK` and current mailbox key.
    /// While a reused seq is being reported (`Conn::check_reuse`), the `ACK` is that report
    /// (an envelope has room for one `ACK` beside a full fragment).
    fn envelope_writer(&self) -> FrameWriter {
        let mut w = envelope::envelope_frame_writer();
        if let Some((seq, digest)) = self.reused.filter(|_| self.reused_acks > 0) {
            w.ack(seq, &digest);
        } else if self.receiver.delivered_upto() > 0 {
            w.ack(
                self.receiver.delivered_upto(),
                self.receiver.delivered_digest(),
            );
        }
        if let Some(bytes) = self.own_mbox.as_ref().and_then(|k| k.encode().ok()) {
            w.raw(FRAME_MBOX_KEY, &bytes);
        }
        w
    }

    /// Seals every unacknowledged message not yet in an envelope and posts the envelopes on
    /// every relay path.
    pub(super) fn seal_pending(&mut self, now: Now) {
        if self.live_only || self.hold_sends.is_some() || self.said_bye {
            return;
        }
        let relays = self.relay_paths();
        if relays.is_empty() {
            return;
        }
        let Some(dst) = self.send_inbox(now) else {
            return;
        };
        let Some((mailbox, card)) = self.mailbox_for_sealing(now) else {
            return;
        };
        let todo: Vec<u64> = self
            .sender
            .unacked_seqs()
            .filter(|s| !self.enveloped.contains(s))
            .collect();
        if todo.is_empty() {
            return;
        }
        let mut envelopes = 0;
        let mut w = self.envelope_writer();
        let mut in_w: Vec<u64> = Vec::new();
        let mut done_in_w: Vec<u64> = Vec::new();
        for seq in todo {
            let Some(encoded) = self.sender.message(seq).cloned() else {
                continue;
            };
            let count = fragment_count(encoded.len());
            for idx in 0..count {
                let chunk = fragment(&encoded, idx);
                if !w.msg(seq, idx, count, chunk) {
                    // full: seal what we have and start another envelope
                    let full = std::mem::replace(&mut w, self.envelope_writer());
                    if !self.post_envelope(
                        full,
                        std::mem::take(&mut in_w),
                        std::mem::take(&mut done_in_w),
                        (&mailbox, card),
                        &relays,
                        dst,
                    ) {
                        return;
                    }
                    envelopes += 1;
                    if envelopes >= MAX_ENVELOPES_PER_ROUND {
                        return;
                    }
                    if !w.msg(seq, idx, count, chunk) {
                        return;
                    }
                }
                if in_w.last() != Some(&seq) {
                    in_w.push(seq);
                }
            }
            done_in_w.push(seq);
        }
        if !in_w.is_empty() {
            self.post_envelope(w, in_w, done_in_w, (&mailbox, card), &relays, dst);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn post_envelope(
        &mut self,
        w: FrameWriter,
        seqs: Vec<u64>,
        completes: Vec<u64>,
        (mailbox, card): (&MailboxKeyPub, bool),
        relays: &[PathState],
        dst: InboxId,
    ) -> bool {
        let frames = w.finish();
        let blob = match envelope::seal(&self.local, &self.signing, &self.peer, mailbox, &frames) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("cannot seal an envelope: {e}");
                return false;
            }
        };
        if card {
            self.events.push_back(Event::SealedToCardKey);
        }
        let id = envelope_id(&blob);
        let blob: Arc<[u8]> = Arc::from(blob);
        for p in relays {
            self.queue_post(p.id, dst, &blob);
        }
        self.enveloped.extend(completes.iter().copied());
        let env = SealedEnvelope {
            id,
            blob,
            seqs,
            completes,
            key_not_after: mailbox.not_after,
            card_key: card,
        };
        self.events.push_back(Event::EnvelopeSealed(env.clone()));
        self.posted.insert(id, Posted::new(env));
        true
    }

    fn queue_post(&mut self, path: PathId, dst: InboxId, blob: &[u8]) {
        self.queue.push_back(Queued {
            path,
            frame: BlobFrame::with_blob(Route::Relay { dst, store: true }, blob),
            gate: 0,
            close_after: false,
            handshake: false,
        });
    }

    /// A relay (re)subscribed: post every envelope not yet acknowledged end to end again
    /// (re-sealing those whose mailbox key is past `not_after` when a fresher one is known).
    pub(super) fn repost(&mut self, now: Now, path: PathId) {
        if self.live_only {
            return;
        }
        let Some(dst) = self.send_inbox(now) else {
            return;
        };
        let unix = now.unix_secs();
        let better = self.mailbox_for_sealing(now);
        let acked = self.sender.acked_upto().max(self.acking);
        let mut stale: Vec<EnvelopeId> = Vec::new();
        let mut again: Vec<(u64, Arc<[u8]>)> = Vec::new();
        for (id, p) in &self.posted {
            if p.env.seqs.iter().all(|s| *s <= acked) {
                // acknowledged (the commit is under way)
                continue;
            }
            let expired = unix > p.env.key_not_after;
            let fresher = better
                .as_ref()
                .is_some_and(|(k, card)| !card && k.not_after > p.env.key_not_after);
            if fresher && (expired || p.env.card_key) {
                stale.push(*id);
            } else {
                again.push((p.env.seqs.first().copied().unwrap_or(0), p.env.blob.clone()));
            }
        }
        self.drop_posted(|id, _| stale.contains(id), true);
        // in the order they were sealed (the seqs' order), not that of the random ids
        again.sort_by_key(|a| a.0);
        for (_, blob) in again {
            self.queue_post(path, dst, &blob);
        }
    }

    /// With no live session, our `ACK` reaches the peer sealed in an envelope (one per
    /// batch of stored envelope messages).
    pub(super) fn send_ack_envelope(&mut self, now: Now) {
        if self.live_only || self.receiver.delivered_upto() == 0 {
            return;
        }
        let relays = self.relay_paths();
        let (Some(dst), Some((mailbox, card))) =
            (self.send_inbox(now), self.mailbox_for_sealing(now))
        else {
            return;
        };
        if relays.is_empty() {
            return;
        }
        let mut w = self.envelope_writer();
        if self.reused_acks > 0 {
            // the report, then our real high-water mark (room enough without messages)
            w.ack(
                self.receiver.delivered_upto(),
                self.receiver.delivered_digest(),
            );
            self.reused_acks = self.reused_acks.saturating_sub(1);
        }
        let frames = w.finish();
        match envelope::seal(&self.local, &self.signing, &self.peer, &mailbox, &frames) {
            Ok(blob) => {
                if card {
                    self.events.push_back(Event::SealedToCardKey);
                }
                for p in &relays {
                    self.queue_post(p.id, dst, &blob);
                }
            }
            Err(e) => tracing::warn!("cannot seal an acknowledgement: {e}"),
        }
    }

    /// A relay durably stored one of our envelopes.
    pub fn relay_stored(&mut self, now: Now, path: PathId, id: EnvelopeId) {
        let relay = match self.paths.iter().find(|p| p.id == path).map(|p| p.kind) {
            Some(PathKind::Relay { relay }) => relay,
            _ => [0; 32],
        };
        let acked = self.sender.acked_upto();
        if let Some(p) = self.posted.get_mut(&id) {
            let first = p.stored_at.is_empty();
            if p.stored_at.insert(relay) {
                self.events
                    .push_back(Event::Audit(super::AuditRecord::Relay {
                        kind: super::RelayRecord::EnvelopeQueued,
                        relay,
                    }));
            }
            if first {
                let seqs: Vec<u64> = p
                    .env
                    .completes
                    .iter()
                    .copied()
                    .filter(|s| *s > acked)
                    .collect();
                if !seqs.is_empty() {
                    self.events.push_back(Event::Queued { seqs });
                }
            }
        }
        if self.peer_away {
            // the next round, if this one stopped at the per-round limit
            self.seal_pending(now);
        }
        self.drive(now);
    }

    /// A relay refused one of our posts (`reference` is its envelope id), or told us that
    /// nobody is subscribed to the peer's inbox.
    pub fn relay_error(&mut self, now: Now, path: PathId, code: u16, reference: EnvelopeId) {
        let kind = self.paths.iter().find(|p| p.id == path).map(|p| p.kind);
        if code == liaison_wire::hop::err::NO_SUBSCRIBER {
            // the peer is not at the relay: whatever our session says, it is away
            if !self.peer_away
                && self.away_at.is_none()
                && let Some(PathKind::Relay { relay }) = kind
            {
                self.events
                    .push_back(Event::Audit(super::AuditRecord::Relay {
                        kind: super::RelayRecord::NoSubscriber,
                        relay,
                    }));
            }
            self.relay_attempt_since = None;
            let recently = self
                .heard_live
                .is_some_and(|t| now.at.saturating_duration_since(t) < super::AWAY_AFTER);
            if self.peer_away || !recently {
                self.set_away(now);
            } else if self.away_at.is_none() {
                // most likely re-subscribing after the same outage as ours: a moment more
                self.away_at = Some(now.at + super::RESUBSCRIBE_GRACE);
            }
        } else if let Some(p) = self.posted.get(&reference) {
            if p.stored_at.is_empty() {
                let seqs = p.env.completes.clone();
                self.drop_posted(|id, _| *id == reference, true);
                self.events.push_back(Event::NotHeld { seqs, code });
            }
        } else {
            tracing::debug!("relay error {code} for a post we do not track");
        }
        self.drive(now);
    }

    /// Forgets the posted envelopes `which` selects (telling the shell to forget them too);
    /// with `reseal`, their messages are sealed again when next due.
    pub(super) fn drop_posted(
        &mut self,
        mut which: impl FnMut(&EnvelopeId, &SealedEnvelope) -> bool,
        reseal: bool,
    ) {
        let ids: Vec<EnvelopeId> = self
            .posted
            .iter()
            .filter(|(id, p)| which(id, &p.env))
            .map(|(id, _)| *id)
            .collect();
        if ids.is_empty() {
            return;
        }
        for id in &ids {
            if let Some(p) = self.posted.remove(id)
                && reseal
            {
                for s in &p.env.completes {
                    self.enveloped.remove(s);
                }
            }
        }
        self.events.push_back(Event::EnvelopesDropped(ids));
    }

    /// Tells the relay on `path` it may delete envelope `id` (its content is durable).
    pub(super) fn queue_relay_delete(&mut self, path: PathId, id: EnvelopeId) {
        if !self.paths.iter().any(|p| p.id == path && !p.closing) {
            // the relay delivers it again at the next subscription; it is deleted then
            return;
        }
        self.queue.push_back(Queued {
            path,
            frame: HopFrame::Ack { envelope_id: id }.to_vec(),
            gate: 0,
            close_after: false,
            handshake: false,
        });
    }
}
