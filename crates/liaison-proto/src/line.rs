//! One contact's sessions: handshakes, indices, confirmation, selection, simultaneous
//! initiation, handshake replay protection and the WireGuard timers. Sans-IO.
//!
//! Rules (design §3.2):
//! - At most [`MAX_SESSIONS_PER_CONTACT`] sessions; send on the newest *confirmed* one, receive
//!   on any by index. The initiator sends a keepalive right after message 2; the responder
//!   treats its session as confirmed at the first authentic DATA and never sends on it before.
//! - Simultaneous message 1s: the side whose Noise static key is smaller (bytewise) keeps its
//!   own handshake and ignores the peer's; the other abandons its own and answers.
//! - At most [`MAX_HS_INIT_PER_SEC`] message 1s per second are even looked at.
//! - Message 1 carries `ts = max(now, last_sent + 1ns)`; the responder accepts it only if newer
//!   than the last it accepted. The driver must persist `PersistSentTs` / `PersistAcceptedTs`
//!   events **before** transmitting the blob that follows them.
//! - Rekey: the initiator of the current session starts a fresh handshake once it is
//!   [`REKEY_AFTER_TIME`] old (or after [`REKEY_AFTER_MESSAGES`]); the responder only when its
//!   session nears [`REJECT_AFTER_TIME`]. Handshakes are retried every [`REKEY_TIMEOUT`] and
//!   abandoned after [`REKEY_ATTEMPT_TIME`] (`Unreachable`). Never snow's in-place rekey.

use crate::handshake::{self, HandshakeError, Initiation, Tai64N};
use crate::keys::{LocalKeys, PeerKeys, random_bytes};
use crate::session::{Session, SessionError};
use liaison_wire::blob::Blob;
use liaison_wire::consts::*;
use liaison_wire::frame::FrameWriter;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Something the driver must do or know, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineEvent {
    /// Persist this as the last handshake timestamp sent to the peer, before the next Transmit
    /// (our message 1, whose session will have local index `.1`).
    PersistSentTs(Tai64N, u32),
    /// Persist this as the last handshake timestamp accepted from the peer, before the next
    /// Transmit (our message 2, for the session with local index `.1`).
    PersistAcceptedTs(Tai64N, u32),
    /// Put this blob on a hop to the peer.
    Transmit(Vec<u8>),
    /// A session became usable for sending. `fresh` when no session was usable before: resend
    /// everything unacknowledged.
    Ready {
        /// No sendable session existed before this one.
        fresh: bool,
    },
    /// Handshakes went unanswered for [`REKEY_ATTEMPT_TIME`]: the peer is away.
    Unreachable,
    /// The peer (or someone on the path) sent something wrong. For logs and the audit log.
    Anomaly(Anomaly),
}

/// Kinds of misbehaviour seen on a line, from the session layer ([`Line`]) and the line
/// engine (`crate::conn`): one typed enum from detection to the audit log and the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Anomaly {
    /// A blob that does not parse.
    Malformed,
    /// A handshake message that did not authenticate (wrong key, tampering).
    BadHandshake,
    /// A message 1 whose timestamp is not newer than the last accepted.
    ReplayedHandshake,
    /// More message 1s than the rate limit allows.
    HandshakeFlood,
    /// DATA for an index we do not have (old session, replay, or forgery).
    UnknownIndex,
    /// DATA that failed to authenticate.
    BadData,
    /// DATA with a nonce already seen.
    ReplayedData,
    /// A DATA for an expired session.
    ExpiredData,
    /// Authenticated inner frames that do not parse (the peer's software is broken).
    MalformedFrames,
    /// Message fragments that break the fragmentation rules.
    BadFragment,
    /// A complete message whose content does not decode.
    BadMessage,
    /// A mailbox key the peer did not sign, or that does not decode.
    BadMailboxKey,
    /// An envelope that does not open.
    BadEnvelope,
    /// An `ACK` for a seq this node never sent (beyond the highest assigned), or naming one of
    /// our messages by the wrong digest when no rollback explains it.
    UnexpectedAck,
    /// The peer holds other messages under seqs this node reused: this node's store was
    /// rolled back (restored from a backup); pending messages were renumbered.
    SeqRollback,
    /// The peer no longer holds messages it acknowledged (its store was rolled back); they are
    /// sent again.
    PeerLostMessages,
}

impl Anomaly {
    /// A short stable name.
    pub fn name(self) -> &'static str {
        match self {
            Anomaly::Malformed => "malformed",
            Anomaly::BadHandshake => "bad-handshake",
            Anomaly::ReplayedHandshake => "replayed-handshake",
            Anomaly::HandshakeFlood => "handshake-flood",
            Anomaly::UnknownIndex => "unknown-index",
            Anomaly::BadData => "bad-data",
            Anomaly::ReplayedData => "replayed-data",
            Anomaly::ExpiredData => "expired-data",
            Anomaly::MalformedFrames => "malformed-frames",
            Anomaly::BadFragment => "bad-fragment",
            Anomaly::BadMessage => "bad-message",
            Anomaly::BadMailboxKey => "bad-mailbox-key",
            Anomaly::BadEnvelope => "bad-envelope",
            Anomaly::UnexpectedAck => "unexpected-ack",
            Anomaly::SeqRollback => "seq-rollback",
            Anomaly::PeerLostMessages => "peer-lost-messages",
        }
    }
}

/// What a received blob produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Nothing for the caller beyond queued events.
    Nothing,
    /// `plaintext` holds inner frames (from DATA or a message 2 payload).
    Plaintext,
}

/// No session can send yet; a handshake is under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no session ready; handshaking")]
pub struct NotReady;

/// The sessions with one contact.
pub struct Line {
    local: LocalKeys,
    peer: PeerKeys,
    keep_own_on_collision: bool,
    sessions: Vec<Session>,
    initiation: Option<Initiation>,
    attempt_started: Option<Instant>,
    want: bool,
    last_sent_ts: Tai64N,
    last_accepted_ts: Tai64N,
    hs_window_start: Option<Instant>,
    hs_window_count: u32,
    events: VecDeque<LineEvent>,
    start_frames: Vec<u8>,
    awaiting_reply_since: Option<Instant>,
}

/// WireGuard's rule: data sent and nothing authentic received for this long means the peer
/// lost its session (e.g. it restarted): start a fresh handshake.
pub const NO_REPLY_REHANDSHAKE: Duration =
    Duration::from_secs(KEEPALIVE_TIMEOUT.as_secs() + REKEY_TIMEOUT.as_secs());

impl std::fmt::Debug for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Line")
            .field("peer", &self.peer)
            .field("sessions", &self.sessions)
            .field("initiation", &self.initiation)
            .field("want", &self.want)
            .finish_non_exhaustive()
    }
}

impl Line {
    /// A line with no session yet. The timestamps come from the store.
    pub fn new(
        local: LocalKeys,
        peer: PeerKeys,
        last_sent_ts: Tai64N,
        last_accepted_ts: Tai64N,
    ) -> Self {
        let keep_own_on_collision = local.noise.public() < peer.noise;
        Line {
            local,
            peer,
            keep_own_on_collision,
            sessions: Vec::new(),
            initiation: None,
            attempt_started: None,
            want: false,
            last_sent_ts,
            last_accepted_ts,
            hs_window_start: None,
            hs_window_count: 0,
            events: VecDeque::new(),
            start_frames: Vec::new(),
            awaiting_reply_since: None,
        }
    }

    /// Inner frames every new session starts with (our receive high-water mark and current
    /// mailbox key): the payload of every message 2 we send, and the plaintext of the
    /// confirming keepalive we send after every message 2 we receive. At most
    /// [`MAX_HS_RESP_PAYLOAD`] bytes (longer is replaced by an empty payload).
    pub fn set_start_frames(&mut self, frames: Vec<u8>) {
        self.start_frames = if frames.len() <= MAX_HS_RESP_PAYLOAD {
            frames
        } else {
            Vec::new()
        };
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<LineEvent> {
        self.events.pop_front()
    }

    /// True if a confirmed, unexpired session can send now.
    pub fn is_ready(&self, now: Instant) -> bool {
        self.sender_pos(now).is_some()
    }

    /// True while a handshake of ours is waiting for its answer.
    pub fn is_handshaking(&self) -> bool {
        self.initiation.is_some()
    }

    /// Number of sessions held.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The handshake hash of the session we send on, if any.
    pub fn current_handshake_hash(&self, now: Instant) -> Option<[u8; 32]> {
        self.sender_pos(now)
            .and_then(|i| self.sessions.get(i))
            .map(|s| *s.handshake_hash())
    }

    fn sender_pos(&self, now: Instant) -> Option<usize> {
        self.sessions.iter().position(|s| s.can_send(now))
    }

    /// We want a session (there is something to send, or the user asked to call).
    pub fn connect(&mut self, now: Instant, wall: Tai64N) {
        self.want = true;
        if self.sender_pos(now).is_none() && self.initiation.is_none() {
            self.start_handshake(now, wall);
        }
    }

    /// Starts a fresh handshake even if a session works, unless one is under way. Drivers call
    /// this when a new hop comes up: the peer may have restarted and lost its sessions.
    pub fn rehandshake(&mut self, now: Instant, wall: Tai64N) {
        self.want = true;
        if self.initiation.is_none() {
            self.start_handshake(now, wall);
        }
    }

    /// Starts one handshake if no session can send and none is under way, without asking
    /// for a session: unanswered, it is not retried (a freshly started engine confirms the
    /// line this way when a path comes up).
    pub fn probe(&mut self, now: Instant, wall: Tai64N) {
        if self.initiation.is_none() && self.sender_pos(now).is_none() {
            self.start_handshake(now, wall);
        }
    }

    /// The peer ended the session whose local index is `receiver_idx` (an authenticated
    /// `CLOSE(bye)` arrived on it): the peer has wiped its keys, so drop that session and every
    /// older one. A newer session (a later call of the peer's) is kept, so a delayed `CLOSE`
    /// cannot end it. Returns true if no usable session remains.
    pub fn peer_closed(&mut self, now: Instant, receiver_idx: u32) -> bool {
        if let Some(pos) = self
            .sessions
            .iter()
            .position(|s| s.local_idx() == receiver_idx)
        {
            self.sessions.truncate(pos);
        }
        if self.sessions.is_empty() {
            self.awaiting_reply_since = None;
        }
        !self.is_ready(now)
    }

    /// Nothing more to send: stop retrying handshakes once the current one ends.
    pub fn stand_down(&mut self) {
        self.want = false;
    }

    /// The last handshake timestamp sent (to persist, or to carry into a new `Line`).
    pub fn last_sent_ts(&self) -> Tai64N {
        self.last_sent_ts
    }

    /// The last handshake timestamp accepted from the peer.
    pub fn last_accepted_ts(&self) -> Tai64N {
        self.last_accepted_ts
    }

    /// The user reset the handshake replay state (`contact reset-replay`, after a clock
    /// disaster on the peer's side): accept message 1s newer than `ts` again.
    pub fn reset_accepted_ts(&mut self, ts: Tai64N) {
        self.last_accepted_ts = ts;
    }

    /// The local index of the session we send on, if any.
    pub fn current_local_idx(&self, now: Instant) -> Option<u32> {
        self.sender_pos(now)
            .and_then(|i| self.sessions.get(i))
            .map(Session::local_idx)
    }

    fn new_index(&self) -> u32 {
        loop {
            let idx = random_bytes::<4>()
                .map(u32::from_le_bytes)
                .unwrap_or_else(|_| {
                    // the OS generator failing is not recoverable here; any fresh value works
                    // for an index (it is not secret), so fall back to a counter-based one
                    self.sessions.len() as u32 ^ 0x5a5a_0000
                });
            let taken = self.sessions.iter().any(|s| s.local_idx() == idx)
                || self
                    .initiation
                    .as_ref()
                    .is_some_and(|i| i.sender_idx() == idx);
            if !taken {
                return idx;
            }
        }
    }

    fn start_handshake(&mut self, now: Instant, wall: Tai64N) {
        let ts = Tai64N::next_after(wall, self.last_sent_ts);
        let idx = self.new_index();
        match handshake::initiate(&self.local, &self.peer, idx, ts, now) {
            Ok((init, blob)) => {
                self.last_sent_ts = ts;
                self.initiation = Some(init);
                if self.attempt_started.is_none() {
                    self.attempt_started = Some(now);
                }
                self.events.push_back(LineEvent::PersistSentTs(ts, idx));
                self.events.push_back(LineEvent::Transmit(blob));
            }
            Err(e) => {
                tracing::warn!("cannot start a handshake: {e}");
                self.initiation = None;
            }
        }
    }

    fn add_session(&mut self, s: Session, now: Instant) {
        let was_ready = self.is_ready(now);
        self.sessions.insert(0, s);
        self.sessions.truncate(MAX_SESSIONS_PER_CONTACT);
        if !was_ready && self.is_ready(now) {
            self.events.push_back(LineEvent::Ready { fresh: true });
        }
    }

    fn maybe_rekey(&mut self, now: Instant, wall: Tai64N, pos: usize) {
        if self.initiation.is_some() {
            return;
        }
        let Some(s) = self.sessions.get(pos) else {
            return;
        };
        let due = if s.is_initiator() {
            s.age(now) >= REKEY_AFTER_TIME || s.sent_count() >= REKEY_AFTER_MESSAGES
        } else {
            s.age(now) >= REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
        };
        // a newer session (e.g. the peer's rekey, still unconfirmed) makes ours moot
        let newer_pending = pos > 0;
        if due && !newer_pending {
            self.start_handshake(now, wall);
        }
    }

    /// Encrypts one plaintext on the current session and appends the DATA blob to `out`.
    /// Without a usable session it starts a handshake and returns [`NotReady`].
    /// `expects_reply` marks plaintexts the peer must answer (messages, which it acks): if no
    /// authentic blob comes back within [`NO_REPLY_REHANDSHAKE`], a fresh handshake starts.
    pub fn seal(
        &mut self,
        now: Instant,
        wall: Tai64N,
        plaintext: &[u8],
        expects_reply: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), NotReady> {
        self.want = true;
        let Some(pos) = self.sender_pos(now) else {
            if self.initiation.is_none() {
                self.start_handshake(now, wall);
            }
            return Err(NotReady);
        };
        let sealed = match self.sessions.get_mut(pos) {
            Some(s) => s.seal_into(now, plaintext, out),
            None => Err(SessionError::Expired),
        };
        match sealed {
            Ok(()) => {
                if expects_reply && self.awaiting_reply_since.is_none() {
                    self.awaiting_reply_since = Some(now);
                }
                self.maybe_rekey(now, wall, pos);
                Ok(())
            }
            Err(e) => {
                tracing::debug!("seal failed: {e}");
                Err(NotReady)
            }
        }
    }

    /// Handles one blob from the peer. When it returns [`Received::Plaintext`], `plaintext`
    /// holds inner frames.
    pub fn handle_blob(&mut self, now: Instant, blob: &[u8], plaintext: &mut Vec<u8>) -> Received {
        let parsed = match Blob::parse(blob) {
            Ok(b) => b,
            Err(_) => {
                self.events
                    .push_back(LineEvent::Anomaly(Anomaly::Malformed));
                return Received::Nothing;
            }
        };
        match parsed {
            Blob::HsInit { sender_idx, msg1 } => {
                self.on_init(now, sender_idx, msg1);
                Received::Nothing
            }
            Blob::HsResp {
                sender_idx,
                receiver_idx,
                ct,
                msg2,
            } => self.on_resp(now, sender_idx, receiver_idx, ct, msg2, plaintext),
            Blob::Data {
                receiver_idx,
                nonce,
                ciphertext,
            } => self.on_data(now, receiver_idx, nonce, ciphertext, plaintext),
            Blob::Envelope { .. } => {
                // envelopes are opened by the mailbox layer, not by live sessions
                self.events
                    .push_back(LineEvent::Anomaly(Anomaly::Malformed));
                Received::Nothing
            }
        }
    }

    fn rate_ok(&mut self, now: Instant) -> bool {
        match self.hs_window_start {
            Some(start) if now.saturating_duration_since(start) < Duration::from_secs(1) => {
                self.hs_window_count += 1;
            }
            _ => {
                self.hs_window_start = Some(now);
                self.hs_window_count = 1;
            }
        }
        self.hs_window_count <= MAX_HS_INIT_PER_SEC
    }

    fn on_init(&mut self, now: Instant, sender_idx: u32, msg1: &[u8]) {
        if !self.rate_ok(now) {
            self.events
                .push_back(LineEvent::Anomaly(Anomaly::HandshakeFlood));
            return;
        }
        let incoming = match handshake::read_init(&self.local, &self.peer, sender_idx, msg1) {
            Ok(i) => i,
            Err(_) => {
                self.events
                    .push_back(LineEvent::Anomaly(Anomaly::BadHandshake));
                return;
            }
        };
        if incoming.ts() <= self.last_accepted_ts {
            self.events
                .push_back(LineEvent::Anomaly(Anomaly::ReplayedHandshake));
            return;
        }
        if self.initiation.is_some() && self.keep_own_on_collision {
            // simultaneous initiation: our handshake wins; the peer answers ours
            return;
        }
        let ts = incoming.ts();
        let my_idx = self.new_index();
        match incoming.reply(my_idx, &self.start_frames, now) {
            Ok((session, blob)) => {
                self.last_accepted_ts = ts;
                // answering abandons our own simultaneous handshake, if any
                self.initiation = None;
                self.events
                    .push_back(LineEvent::PersistAcceptedTs(self.last_accepted_ts, my_idx));
                self.events.push_back(LineEvent::Transmit(blob));
                self.add_session(session, now);
            }
            Err(e) => tracing::warn!("cannot answer a handshake: {e}"),
        }
    }

    fn on_resp(
        &mut self,
        now: Instant,
        sender_idx: u32,
        receiver_idx: u32,
        ct: &[u8],
        msg2: &[u8],
        plaintext: &mut Vec<u8>,
    ) -> Received {
        let Some(init) = self
            .initiation
            .as_mut()
            .filter(|i| i.sender_idx() == receiver_idx)
        else {
            // an answer to a handshake we abandoned, or a replay
            self.events
                .push_back(LineEvent::Anomaly(Anomaly::UnknownIndex));
            return Received::Nothing;
        };
        if init.failed_responses() >= MAX_REFUSED_RESPONSES {
            // someone keeps answering with forgeries: stop spending an ML-KEM decapsulation on
            // each; the retry timer starts a fresh initiation (with a fresh index)
            self.events
                .push_back(LineEvent::Anomaly(Anomaly::BadHandshake));
            return Received::Nothing;
        }
        match init.finish(sender_idx, receiver_idx, ct, msg2, now) {
            Ok((mut session, payload)) => {
                self.initiation = None;
                self.awaiting_reply_since = None;
                // key confirmation for the responder, carrying our session-start frames
                let mut ka = Vec::with_capacity(
                    DATA_HEADER_LEN + self.start_frames.len() + 64 + NOISE_TAG_LEN,
                );
                // (the start frames are a padded plaintext already; none: an empty keepalive)
                let keepalive = if self.start_frames.is_empty() {
                    FrameWriter::default().finish()
                } else {
                    self.start_frames.clone()
                };
                if session.seal_into(now, &keepalive, &mut ka).is_ok() {
                    self.events.push_back(LineEvent::Transmit(ka));
                }
                self.attempt_started = None;
                self.add_session(session, now);
                if payload.is_empty() {
                    Received::Nothing
                } else {
                    plaintext.clear();
                    plaintext.extend_from_slice(&payload);
                    Received::Plaintext
                }
            }
            Err(e) => {
                // keep waiting: a forged or damaged answer must not cancel our handshake (the
                // initiation is intact); the retry timer starts a new one if nothing better comes
                if !matches!(
                    e,
                    HandshakeError::Decrypt
                        | HandshakeError::InvalidKem
                        | HandshakeError::Malformed
                ) {
                    tracing::warn!("handshake failed: {e}");
                }
                self.events
                    .push_back(LineEvent::Anomaly(Anomaly::BadHandshake));
                Received::Nothing
            }
        }
    }

    fn on_data(
        &mut self,
        now: Instant,
        receiver_idx: u32,
        nonce: u64,
        ciphertext: &[u8],
        plaintext: &mut Vec<u8>,
    ) -> Received {
        let was_ready = self.is_ready(now);
        let Some(session) = self
            .sessions
            .iter_mut()
            .find(|s| s.local_idx() == receiver_idx)
        else {
            self.events
                .push_back(LineEvent::Anomaly(Anomaly::UnknownIndex));
            return Received::Nothing;
        };
        let newly_confirmed = !session.is_confirmed();
        match session.open_into(now, nonce, ciphertext, plaintext) {
            Ok(()) => {
                self.awaiting_reply_since = None;
                if newly_confirmed {
                    // the responder's session is now the newest confirmed one
                    self.events
                        .push_back(LineEvent::Ready { fresh: !was_ready });
                }
                Received::Plaintext
            }
            Err(e) => {
                let a = match e {
                    SessionError::Replay => Anomaly::ReplayedData,
                    SessionError::Expired => Anomaly::ExpiredData,
                    _ => Anomaly::BadData,
                };
                self.events.push_back(LineEvent::Anomaly(a));
                Received::Nothing
            }
        }
    }

    /// When [`Line::handle_timeout`] should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut consider = |x: Instant| t = Some(t.map_or(x, |y| y.min(x)));
        if let Some(i) = &self.initiation {
            consider(i.sent_at() + REKEY_TIMEOUT);
        }
        for s in &self.sessions {
            consider(s.created() + REJECT_AFTER_TIME);
        }
        if let Some(since) = self.awaiting_reply_since
            && self.initiation.is_none()
        {
            consider(since + NO_REPLY_REHANDSHAKE);
        }
        t
    }

    /// Retries or abandons handshakes and drops expired sessions.
    pub fn handle_timeout(&mut self, now: Instant, wall: Tai64N) {
        self.sessions.retain(|s| s.can_receive(now));
        if self.initiation.is_none()
            && self
                .awaiting_reply_since
                .is_some_and(|t| now.saturating_duration_since(t) >= NO_REPLY_REHANDSHAKE)
        {
            // the peer stopped answering on this session: it may have lost it
            self.awaiting_reply_since = Some(now);
            self.start_handshake(now, wall);
            return;
        }
        let overdue = self
            .initiation
            .as_ref()
            .is_some_and(|i| now.saturating_duration_since(i.sent_at()) >= REKEY_TIMEOUT);
        if overdue {
            self.initiation = None;
            let gave_up = self
                .attempt_started
                .is_some_and(|s| now.saturating_duration_since(s) >= REKEY_ATTEMPT_TIME);
            if gave_up || !self.want {
                self.attempt_started = None;
                if gave_up && !self.is_ready(now) {
                    // (a rekey that keeps failing while the session still delivers is not
                    // "unreachable": the session's expiry ends it)
                    self.want = false;
                    self.events.push_back(LineEvent::Unreachable);
                }
            } else {
                // no answer (the first handshake, or a rekey while the old session still
                // works): try again with a fresh message 1
                self.start_handshake(now, wall);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::keys::NoiseSecret;

    fn keys(seed: u8) -> (LocalKeys, PeerKeys) {
        let noise = NoiseSecret::from_bytes([seed; 32]);
        let peer = PeerKeys {
            identity: [seed.wrapping_add(100); 32],
            noise: noise.public(),
            pairing: None,
        };
        (
            LocalKeys {
                identity: [seed.wrapping_add(100); 32],
                noise,
            },
            peer,
        )
    }

    fn transmitted(line: &mut Line) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(ev) = line.poll_event() {
            if let LineEvent::Transmit(b) = ev {
                out.push(b);
            }
        }
        out
    }

    /// A relay sees `sender_idx` and can answer a message 1 with forgeries at once. They are
    /// refused, and the pending handshake stays: the genuine message 2 still completes it.
    #[test]
    fn a_forged_answer_leaves_the_handshake_pending() {
        let now = Instant::now();
        let ts = Tai64N::from_unix(1_800_000_000, 0);
        let ((la, pa), (lb, pb)) = (keys(1), keys(2));
        let mut a = Line::new(la, pb, Tai64N::default(), Tai64N::default());
        let mut b = Line::new(lb, pa, Tai64N::default(), Tai64N::default());
        a.connect(now, ts);
        let init = transmitted(&mut a).pop().unwrap();
        let idx = u32::from_le_bytes(init[1..5].try_into().unwrap());
        let mut forged = vec![BLOB_HS_RESP];
        forged.extend_from_slice(&9u32.to_le_bytes());
        forged.extend_from_slice(&idx.to_le_bytes());
        forged.extend_from_slice(&[0x55; MLKEM_CT_LEN]);
        forged.extend_from_slice(&[0x66; HS_MSG2_MIN_LEN + 32]);
        let mut pt = Vec::new();
        for _ in 0..3 {
            assert_eq!(a.handle_blob(now, &forged, &mut pt), Received::Nothing);
        }
        assert!(
            a.is_handshaking(),
            "the forgeries must not cancel the handshake"
        );
        b.handle_blob(now, &init, &mut pt);
        let resp = transmitted(&mut b).pop().unwrap();
        a.handle_blob(now, &resp, &mut pt);
        assert!(a.is_ready(now), "the genuine answer completes it");
    }
}
