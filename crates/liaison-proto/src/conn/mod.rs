//! The line engine: everything one line does, sans-IO, in one object ([`Conn`]), shaped like
//! quinn-proto's `Connection` or boringtun's `Tunn`.
//!
//! A `Conn` owns the Noise sessions ([`Line`]), delivery ([`Sender`]/[`Receiver`]), the peer's
//! mailbox keys, the sealed envelopes it posted, every protocol timer, the outgoing audit
//! queue, the peer-away state and the call's life. The node shell moves bytes, runs the
//! store and logs; it makes no protocol decision. Tests, the simulator and the bench drive
//! this same object.
//!
//! ```text
//!  inputs (now passed in)                        outputs (polled)
//!  handle_blob(path, blob)          ─┐       ┌─ poll_transmit()  hop frames for a path
//!  handle_relay_deliver(path, ..)   ─┤       ├─ poll_event()     store, deliver, acked, audit…
//!  relay_stored / relay_error       ─┤ Conn  ├─ poll_timeout()   when handle_timeout is due
//!  submit / connect / close         ─┤       └─ next_transmit_path()
//!  path_up / path_down              ─┤
//!  persisted / stored / ack_committed / renumbered / resend  (the store's answers)
//!  handle_timeout                   ─┘
//! ```
//!
//! Durability is in the API, so no shell can get the order wrong:
//! - a handshake message whose timestamp must be durable first is held until
//!   [`Conn::persisted`] confirms [`Event::PersistHandshake`];
//! - received messages come out as [`Event::Store`]; the `ACK` covering them, their delivery
//!   to the user ([`Event::Deliver`]) and the relay's permission to delete the envelopes that
//!   carried them come due only after [`Conn::stored`];
//! - a peer's `ACK` comes out as [`Event::Acked`]; our messages are forgotten only after
//!   [`Conn::ack_committed`];
//! - renumbered messages ([`Event::Renumber`]) are not sent before [`Conn::renumbered`].
//!
//! The relay is never the only copy: a message stays in the sender until the peer's
//! end-to-end `ACK`; every (re)subscription at a relay ([`Conn::path_up`]) posts again every
//! envelope not yet acknowledged (relays dedupe by envelope id), re-sealing those whose
//! mailbox key has expired. Sequence numbers are never reused: `ACK`s name the acknowledged
//! message by digest, so a rolled-back sender notices and renumbers (module `recv`).

mod calls;
mod recv;
mod send;
#[cfg(test)]
mod tests;

use crate::delivery::{Receiver, Sender};
use crate::handshake::Tai64N;
use crate::inbox::InboxKeys;
use crate::keys::{LocalKeys, PeerKeys};
use crate::line::{Line, LineEvent};
use crate::mailbox_ring::PeerMailboxKeys;
use calls::Calls;
use ed25519_dalek::SigningKey;
use liaison_wire::card::MailboxKeyPub;
use liaison_wire::consts::*;
use liaison_wire::frame::MessageContent;
use liaison_wire::hop::EnvelopeId;
pub use send::SealedEnvelope;
use send::{Posted, Queued};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::line::Anomaly;
pub use calls::{CallDirection, CallEnd, RelayRecord};

/// The time of an input: a monotonic instant for timers and the wall clock for timestamps
/// (handshake TAI64N, mailbox key expiry, inbox epochs, call ids). The wall clock may jump;
/// timers never depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time.
    pub at: Instant,
    /// Wall clock, Unix milliseconds.
    pub unix_ms: u64,
}

impl Now {
    /// Unix seconds.
    pub fn unix_secs(&self) -> u64 {
        self.unix_ms / 1000
    }

    /// The wall clock as TAI64N.
    pub fn tai64n(&self) -> Tai64N {
        Tai64N::from_unix(self.unix_secs(), ((self.unix_ms % 1000) as u32) * 1_000_000)
    }
}

/// A hop to the peer, as the shell names it.
pub type PathId = u64;

/// What kind of hop a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathKind {
    /// A direct QUIC connection to the peer.
    Direct,
    /// A relay both sides use; `relay` is SHA-256 of its pinned key (names it in the log).
    Relay {
        /// The relay's id.
        relay: [u8; 32],
    },
}

/// A hop frame to write on a path.
#[derive(Debug)]
pub struct Transmit {
    /// The path.
    pub path: PathId,
    /// The encoded hop frame (length prefix included).
    pub frame: Vec<u8>,
    /// Detach the path once this frame is written (a `CLOSE` for a misbehaving direct hop; an
    /// empty `frame` means detach only).
    pub close_after: bool,
}

/// A received message, complete and authentic, to store durably.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The peer's seq.
    pub seq: u64,
    /// The decoded content.
    pub content: MessageContent,
    /// Its encoding (what to seal at rest; its digest is what `ACK` names).
    pub encoded: Vec<u8>,
    /// SHA-256 of the blob (DATA or envelope) that carried its last fragment.
    pub ct_hash: [u8; 32],
    /// It arrived in a sealed envelope (through a relay, the peer away).
    pub via_envelope: bool,
}

/// A record for the line's audit log (the shell maps it to the log's event; messages sent and
/// received are logged by the shell with the store, and anomalies come as [`Event::Anomaly`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuditRecord {
    /// A call was offered.
    CallOffered {
        /// Call id.
        call: u64,
        /// Who offered it.
        direction: CallDirection,
    },
    /// A call was established.
    CallStarted {
        /// Call id.
        call: u64,
        /// Who offered it.
        direction: CallDirection,
    },
    /// A call ended.
    CallEnded {
        /// Call id.
        call: u64,
        /// Why.
        reason: CallEnd,
    },
    /// The peer acknowledged our messages up to `upto` (logged once the commit is done).
    MsgAcked {
        /// New `acked_upto`.
        upto: u64,
    },
    /// The peer announced a mailbox key we now seal to.
    PeerMailboxKey {
        /// Its key id.
        key_id: [u8; MAILBOX_KEY_ID_LEN],
    },
    /// A relay event.
    Relay {
        /// What happened.
        kind: RelayRecord,
        /// The relay.
        relay: [u8; 32],
    },
}

/// Something the shell must do or know, in order.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// Persist these handshake timestamps (the contact's last sent and last accepted), then
    /// call [`Conn::persisted`] with `token`: the handshake message waits for it.
    PersistHandshake {
        /// Answer with this.
        token: u64,
        /// Last timestamp sent.
        sent_ts: Tai64N,
        /// Last timestamp accepted.
        accepted_ts: Tai64N,
    },
    /// Store these messages and `delivered_upto` durably in one transaction (with their
    /// `msg_recv` audit entries), then call [`Conn::stored`] with their seqs.
    Store {
        /// The messages.
        messages: Vec<Incoming>,
        /// The contact's `delivered_upto` once they are stored.
        delivered_upto: u64,
    },
    /// Show the stored message `seq` to the user (in seq order, exactly once).
    Deliver {
        /// The peer's seq.
        seq: u64,
    },
    /// The peer acknowledged our messages up to `upto`: mark them delivered durably, then call
    /// [`Conn::ack_committed`].
    Acked {
        /// Cumulative.
        upto: u64,
    },
    /// A relay durably holds envelopes carrying these messages (not yet a receipt).
    Queued {
        /// Our seqs, newly queued.
        seqs: Vec<u64>,
    },
    /// A relay refused to hold envelopes carrying these messages; they stay pending.
    NotHeld {
        /// Our seqs.
        seqs: Vec<u64>,
        /// The relay's error code (`liaison_wire::hop::err`).
        code: u16,
    },
    /// The peer's mailbox keys changed: persist this storage form.
    PeerMailboxKeys(Vec<u8>),
    /// Append to the audit log.
    Audit(AuditRecord),
    /// An `AUDIT` frame from the peer, for the audit log.
    AuditMessage(Vec<u8>),
    /// A session can send: the line is up.
    LineUp,
    /// No session can send any more.
    LineDown,
    /// Handshakes went unanswered for `REKEY_ATTEMPT_TIME`.
    Unreachable,
    /// The peer is away: unacknowledged messages go sealed through a relay.
    PeerAway,
    /// Messages wait for a receipt and nothing authentic came back for a while on `path`, the
    /// path we send on: replace it with a fresh one now (dial again, reconnect to the relay).
    /// A QUIC connection through a cut backs its probes off exponentially; a new one starts
    /// afresh, and the session carries on over it. Repeated while the stall lasts.
    PathStalled {
        /// The stalled path.
        path: PathId,
    },
    /// Something wrong arrived (for the audit log and the user).
    Anomaly(Anomaly),
    /// Our store was rolled back (restored from a backup): the peer holds other messages
    /// under our seqs up to `peer_holds`. Move each outbox row `old → new` (re-sealing its body
    /// for the new seq), set `acked_upto` to at least `peer_holds` and `next_seq` past both
    /// `peer_holds` and the last new seq (`moves` may be empty), in one transaction; then call
    /// [`Conn::renumbered`] with `token`. Also for a message submitted under a stale seq.
    Renumber {
        /// Answer with this.
        token: u64,
        /// The peer's receive high-water mark.
        peer_holds: u64,
        /// `(old seq, new seq)`, in order.
        moves: Vec<(u64, u64)>,
    },
    /// The peer lost messages it had acknowledged (`peer_holds < acked_upto`): load our
    /// messages `peer_holds + 1 ..= acked_upto` (they are `delivered` in the outbox), mark them
    /// pending again, and hand them back with [`Conn::resend`].
    PeerLost {
        /// What the peer holds now.
        peer_holds: u64,
        /// What it had acknowledged.
        acked_upto: u64,
    },
    /// An envelope was sealed and posted: persist it (a restarted node posts the same bytes
    /// again, which relays dedupe) until [`Event::EnvelopesDropped`] names it.
    EnvelopeSealed(SealedEnvelope),
    /// These sealed envelopes are no longer needed (acknowledged, refused, or re-sealed).
    EnvelopesDropped(Vec<EnvelopeId>),
    /// Messages were sealed to the peer's card mailbox key (no fresher key is known): it lives
    /// as long as the peer's identity, so these envelopes have no forward secrecy to speak of.
    SealedToCardKey,
}

/// How a `Conn` starts: keys, and the durable state of the line from the store.
#[derive(Debug)]
pub struct ConnConfig {
    /// Our keys.
    pub local: LocalKeys,
    /// Our identity signing key (signs envelopes).
    pub signing: SigningKey,
    /// The contact.
    pub peer: PeerKeys,
    /// The mailbox key of the contact's pinned card (first contact only).
    pub card_mailbox: Option<MailboxKeyPub>,
    /// The contact's newest in-band mailbox key.
    pub peer_mailbox: PeerMailboxKeys,
    /// Our mailbox key to advertise now.
    pub own_mailbox: Option<MailboxKeyPub>,
    /// Refuse the mailbox path (`contact set --live-only`).
    pub live_only: bool,
    /// Last handshake timestamp sent.
    pub hs_sent_ts: Tai64N,
    /// Last handshake timestamp accepted.
    pub hs_accepted_ts: Tai64N,
    /// The next seq the outbox will assign (every seq below it was assigned).
    pub next_seq: u64,
    /// The peer acknowledged our messages up to here.
    pub acked_upto: u64,
    /// Our unacknowledged messages: (seq, encoded content).
    pub unacked: Vec<(u64, Arc<[u8]>)>,
    /// We stored the peer's messages up to here.
    pub delivered_upto: u64,
    /// `msg_digest` of the stored message `delivered_upto` (zeros for 0).
    pub delivered_digest: [u8; MSG_DIGEST_LEN],
    /// The peer's messages stored above `delivered_upto`: (seq, digest).
    pub stored_ahead: Vec<(u64, [u8; MSG_DIGEST_LEN])>,
    /// Envelopes sealed earlier and not yet dropped ([`Event::EnvelopeSealed`]).
    pub posted: Vec<SealedEnvelope>,
}

#[derive(Debug, Clone, Copy)]
struct PathState {
    id: PathId,
    kind: PathKind,
    /// A CLOSE is queued: nothing more goes on it.
    closing: bool,
}

/// What the shell can show about a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnStatus {
    /// A session can send.
    pub up: bool,
    /// Paths attached.
    pub paths: usize,
    /// Our messages not yet acknowledged.
    pub unacked: usize,
    /// We stored the peer's messages up to here.
    pub delivered_upto: u64,
    /// The peer acknowledged ours up to here.
    pub acked_upto: u64,
    /// The peer is away (messages go sealed).
    pub peer_away: bool,
}

/// A session's receive high-water-mark reference: our `acked_upto` when the session's
/// handshake began. Every `ACK` the peer seals on that session was sealed later, so one below
/// it means the peer lost messages it had acknowledged.
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    local_idx: u32,
    acked: u64,
    checked: bool,
}

/// Most session snapshots kept (sessions per contact plus initiations in flight).
const MAX_SNAPSHOTS: usize = 8;
/// Most envelopes waiting for their content to become durable before the relay may delete
/// them; past it the oldest is forgotten (the relay keeps it and delivers it again).
const MAX_HELD_ENVELOPES: usize = 8192;
/// A peer whose `ACK` names a seq further than this beyond our highest is not taken as
/// evidence of a rollback of our store (no backup loses 2^32 messages): the ACK is refused.
const MAX_ROLLBACK_GAP: u64 = 1 << 32;
/// How many `ACK` frames report a seq the peer reused (a lost one must not let a later
/// `ACK` pass it unnoticed).
const REUSED_ACKS: u32 = 8;
/// After this long without anything authentic from the peer while messages are
/// unacknowledged, every authentic blob that arrives resets the retransmission timer.
const STALL_AFTER: Duration = Duration::from_secs(2);
/// A freshly started engine with nothing to send confirms the line (compares high-water marks
/// with the peer) this long after a path comes up, unless a session came up meanwhile.
const PROBE_DELAY: Duration = Duration::from_secs(1);
/// A relay (re)subscription gets our kept envelopes again no sooner than this: the relay
/// first replays what it holds for us, and an acknowledgement among it keeps acknowledged
/// envelopes from being posted again for nothing.
const REPOST_GRACE: Duration = Duration::from_secs(2);
/// A handshake through a relay that is neither answered nor refused (`NO_SUBSCRIBER`) for
/// this long means the peer is away (the relay says so at once when the peer is not
/// subscribed; this covers a relay that answers nothing). Three handshake retries: on a lossy
/// path a live session can take that long, and sealing what could go live costs forward
/// secrecy.
const AWAY_AFTER: Duration = Duration::from_secs(15);
/// A relay that says the peer is not subscribed (`NO_SUBSCRIBER`) while the peer was heard
/// live less than [`AWAY_AFTER`] ago is most likely seeing both ends re-subscribe after the
/// same outage: live attempts go on this long before the peer counts as away and what is
/// pending is sealed for the relay to hold.
const RESUBSCRIBE_GRACE: Duration = Duration::from_secs(3);
/// Longest silence waited for before a path counts as stalled (after replacements that
/// brought nothing back).
const STALL_MAX: Duration = Duration::from_secs(16);
/// Envelopes stored within this long share one sealed `ACK` (relays replay a backlog one
/// envelope at a time).
const ENVELOPE_ACK_DELAY: Duration = Duration::from_millis(250);

/// The line engine (module documentation).
pub struct Conn {
    local: LocalKeys,
    signing: SigningKey,
    peer: PeerKeys,
    inbox: Option<InboxKeys>,
    line: Line,
    sender: Sender,
    receiver: Receiver,
    paths: Vec<PathState>,
    queue: VecDeque<Queued>,
    events: VecDeque<Event>,
    next_token: u64,
    persisted_upto: u64,
    // receiving
    to_store: Vec<Incoming>,
    ack_due: bool,
    /// When our ACK goes sealed (no live session to carry it); one per batch.
    env_ack_at: Option<Instant>,
    storing_via_envelope: BTreeSet<u64>,
    held: VecDeque<recv::Held>,
    snapshots: VecDeque<Snapshot>,
    pt: Vec<u8>,
    last_heard: Option<Instant>,
    /// Messages are outstanding and nothing came back since this instant.
    waiting_since: Option<Instant>,
    stall_reported: Option<Instant>,
    /// How long silence must last to count as a stall: doubles with each replacement that
    /// brings nothing back, from [`STALL_AFTER`] to [`STALL_MAX`].
    stall_after: Duration,
    /// Stalls reported since anything authentic last came back.
    stalls: u32,
    /// The path the last DATA went on.
    last_data_path: Option<PathId>,
    /// A seq the peer reused for another message, with the digest of ours, reported in the
    /// next `reused_acks` `ACK`s.
    reused: Option<(u64, [u8; MSG_DIGEST_LEN])>,
    reused_acks: u32,
    last_dup_ack: Option<Instant>,
    // sending
    next_seq: u64,
    acking: u64,
    hold_sends: Option<u64>,
    card_mbox: Option<MailboxKeyPub>,
    peer_mbox: PeerMailboxKeys,
    own_mbox: Option<MailboxKeyPub>,
    live_only: bool,
    posted: BTreeMap<EnvelopeId, Posted>,
    enveloped: BTreeSet<u64>,
    /// Relay paths to post every kept envelope on again, once the peer is found away and no
    /// earlier than the instant given (see [`REPOST_GRACE`]).
    repost_when_away: BTreeMap<PathId, Instant>,
    peer_away: bool,
    /// Handshakes went unanswered for `REKEY_ATTEMPT_TIME`: no new attempt for what is
    /// pending until something new happens (a message, a path, the user's `connect`).
    gave_up: bool,
    /// When to confirm the line with one handshake of ours, if nothing did meanwhile.
    probe_at: Option<Instant>,
    /// A session came up in this engine's life: both sides compared high-water marks (a
    /// fresh engine confirms the line once, so that a store restored from a backup, here or
    /// at the peer, is noticed even when nobody has anything to send).
    confirmed: bool,
    relay_attempt_since: Option<Instant>,
    /// The peer counts as away at this instant unless heard live before it (see
    /// [`RESUBSCRIBE_GRACE`]).
    away_at: Option<Instant>,
    /// When something authentic last came live (not in an envelope) from the peer.
    heard_live: Option<Instant>,
    mbox_due: bool,
    audit_out: VecDeque<Vec<u8>>,
    start_frames_dirty: bool,
    // the call
    calls: Calls,
    want: bool,
    said_bye: bool,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("peer", &self.peer)
            .field("line", &self.line)
            .field("paths", &self.paths)
            .field("unacked", &self.sender.unacked_count())
            .field("delivered_upto", &self.receiver.delivered_upto())
            .finish_non_exhaustive()
    }
}

/// Most audit messages waiting to be sent; older ones are dropped (offers are repeated).
const MAX_AUDIT_OUT: usize = 64;

impl Conn {
    /// A line in the state the store describes; no path yet.
    pub fn new(cfg: ConnConfig) -> Self {
        let inbox = InboxKeys::new(&cfg.local, &cfg.peer);
        let line = Line::new(
            cfg.local.clone(),
            cfg.peer.clone(),
            cfg.hs_sent_ts,
            cfg.hs_accepted_ts,
        );
        let mut sender = Sender::new(cfg.acked_upto);
        let mut highest = cfg.next_seq.saturating_sub(1).max(cfg.acked_upto);
        for (seq, encoded) in cfg.unacked {
            highest = highest.max(seq);
            sender.push(seq, encoded);
        }
        let receiver = Receiver::new(cfg.delivered_upto, cfg.delivered_digest, cfg.stored_ahead);
        let mut posted = BTreeMap::new();
        let mut enveloped = BTreeSet::new();
        for env in cfg.posted {
            if env.seqs.iter().any(|s| *s > cfg.acked_upto) {
                enveloped.extend(env.completes.iter().copied());
                posted.insert(env.id, Posted::new(env));
            }
        }
        let mut conn = Conn {
            local: cfg.local,
            signing: cfg.signing,
            peer: cfg.peer,
            inbox,
            line,
            sender,
            receiver,
            paths: Vec::new(),
            queue: VecDeque::new(),
            events: VecDeque::new(),
            next_token: 1,
            persisted_upto: 0,
            to_store: Vec::new(),
            ack_due: false,
            env_ack_at: None,
            storing_via_envelope: BTreeSet::new(),
            held: VecDeque::new(),
            snapshots: VecDeque::new(),
            pt: Vec::with_capacity(MAX_PLAINTEXT),
            last_heard: None,
            waiting_since: None,
            stall_reported: None,
            stall_after: STALL_AFTER,
            stalls: 0,
            last_data_path: None,
            reused: None,
            reused_acks: 0,
            last_dup_ack: None,
            next_seq: highest.saturating_add(1),
            acking: cfg.acked_upto,
            hold_sends: None,
            card_mbox: cfg.card_mailbox,
            peer_mbox: cfg.peer_mailbox,
            own_mbox: cfg.own_mailbox,
            live_only: cfg.live_only,
            posted,
            enveloped,
            repost_when_away: BTreeMap::new(),
            peer_away: false,
            gave_up: false,
            probe_at: None,
            confirmed: false,
            relay_attempt_since: None,
            away_at: None,
            heard_live: None,
            mbox_due: false,
            audit_out: VecDeque::new(),
            start_frames_dirty: true,
            calls: Calls::default(),
            want: false,
            said_bye: false,
        };
        conn.refresh_start_frames();
        conn
    }

    // ----------------------------------------------------------------------------------
    // outputs

    /// The next event for the shell.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Conn::handle_timeout`] should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.line.poll_timeout(),
            self.sender.poll_timeout(),
            self.relay_attempt_since.map(|t| t + AWAY_AFTER),
            self.away_at,
            self.env_ack_at,
            self.probe_at,
            self.stall_deadline(),
            self.repost_when_away
                .values()
                .min()
                .copied()
                .filter(|_| self.peer_away),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Where the next [`Conn::poll_transmit`] would write, if anything is due: the shell gets
    /// room on that path's queue first, so the frame is built only when it can leave.
    pub fn next_transmit_path(&self, now: Now) -> Option<PathId> {
        if let Some(q) = self.queue.iter().find(|q| q.gate <= self.persisted_upto) {
            return Some(q.path);
        }
        if self.data_wanted(now) {
            return self.send_path().map(|p| p.id);
        }
        None
    }

    /// The next hop frame to write (see [`Conn::next_transmit_path`]).
    pub fn poll_transmit(&mut self, now: Now) -> Option<Transmit> {
        if let Some(pos) = self
            .queue
            .iter()
            .position(|q| q.gate <= self.persisted_upto)
        {
            let q = self.queue.remove(pos)?;
            if q.close_after {
                self.forget_path(q.path);
            }
            return Some(Transmit {
                path: q.path,
                frame: q.frame,
                close_after: q.close_after,
            });
        }
        if !self.data_wanted(now) {
            return None;
        }
        let path = self.send_path()?;
        let frame = self.build_data(now, path);
        // sealing may have started a handshake (the initiator's rekey): its message 1 (and the
        // request to persist its timestamp) must not wait for the next input
        self.line_events(now);
        let frame = frame?;
        Some(Transmit {
            path: path.id,
            frame,
            close_after: false,
        })
    }

    /// Where the line stands.
    pub fn status(&self, now: Now) -> ConnStatus {
        ConnStatus {
            up: self.line.is_ready(now.at),
            paths: self.paths.len(),
            unacked: self.sender.unacked_count(),
            delivered_upto: self.receiver.delivered_upto(),
            acked_upto: self.sender.acked_upto(),
            peer_away: self.peer_away,
        }
    }

    /// True while the line wants a path to the peer: the user asked for the line, messages
    /// wait for a receipt, or this engine has not yet confirmed the line since it started
    /// (the shell dials and subscribes accordingly).
    pub fn wants_path(&self) -> bool {
        !self.said_bye && (self.want || self.sender.unacked_count() > 0 || !self.confirmed)
    }

    /// True if a direct path is attached.
    pub fn has_direct_path(&self) -> bool {
        self.paths
            .iter()
            .any(|p| p.kind == PathKind::Direct && !p.closing)
    }

    /// The inbox ids to subscribe at a relay now (`None` if the keys give no inbox, e.g. a
    /// low-order static).
    pub fn recv_inboxes(&self, now: Now) -> Option<Vec<InboxId>> {
        self.inbox.as_ref().map(|i| i.recv_inboxes(now.unix_secs()))
    }

    /// The inbox we post to at a relay now.
    pub fn send_inbox(&self, now: Now) -> Option<InboxId> {
        self.inbox.as_ref().map(|i| i.send_inbox(now.unix_secs()))
    }

    // ----------------------------------------------------------------------------------
    // inputs from the user and the shell

    /// The user wants the line up (a call, a send): handshake on the paths there are.
    pub fn connect(&mut self, now: Now) {
        self.want = true;
        self.gave_up = false;
        if self.said_bye {
            return;
        }
        if !self.paths.is_empty() {
            self.line.connect(now.at, now.tai64n());
        }
        if self.line.is_ready(now.at) {
            self.events.push_back(Event::LineUp);
        }
        self.drive(now);
    }

    /// A message was written to the outbox under `seq`. A seq the peer already holds, or one
    /// below a renumbering not yet known to the outbox (after a restore), is stale: the
    /// message gets the next free seq ([`Event::Renumber`]) instead of being dropped.
    pub fn submit(&mut self, now: Now, seq: u64, encoded: Arc<[u8]>) {
        let taken = self.sender.acked_upto().max(self.acking);
        if seq <= taken || (seq < self.next_seq && self.sender.message(seq).is_none()) {
            let new = self.next_seq;
            self.next_seq = new.saturating_add(1);
            self.sender.push(new, encoded);
            let token = self.next_token;
            self.next_token += 1;
            self.hold_sends = Some(token);
            self.events.push_back(Event::Renumber {
                token,
                peer_holds: taken,
                moves: vec![(seq, new)],
            });
        } else {
            self.next_seq = self.next_seq.max(seq.saturating_add(1));
            self.sender.push(seq, encoded);
        }
        self.gave_up = false;
        if !self.paths.is_empty() && !self.line.is_ready(now.at) && !self.said_bye {
            self.line.connect(now.at, now.tai64n());
            if self.peer_away {
                self.seal_pending(now);
            }
        }
        self.drive(now);
    }

    /// A path to the peer is up: a direct hop, or a relay (re)connection with our inboxes
    /// subscribed. A new path may mean the peer restarted: confirm with a fresh handshake
    /// (the current session keeps working meanwhile). A relay also gets every envelope not
    /// yet acknowledged end to end: the relay is never the only copy.
    pub fn path_up(&mut self, now: Now, id: PathId, kind: PathKind) {
        if self.said_bye {
            return;
        }
        match self.paths.iter_mut().find(|p| p.id == id) {
            Some(p) => {
                p.kind = kind;
                p.closing = false;
            }
            None => self.paths.push(PathState {
                id,
                kind,
                closing: false,
            }),
        }
        if self.waiting_since.is_some() {
            // a new path gets its own time to bring something back
            self.waiting_since = Some(now.at);
            self.stall_reported = None;
        }
        if let PathKind::Relay { relay } = kind {
            self.calls.relay_up(relay, now, &mut self.events);
            // posted again once the peer is found away, and not before the relay had time to
            // replay what it holds for us (the peer's sealed ACK among it), so what is
            // acknowledged stays out
            self.repost_when_away.insert(id, now.at + REPOST_GRACE);
        }
        self.gave_up = false;
        if self.want || self.sender.unacked_count() > 0 {
            self.line.rehandshake(now.at, now.tai64n());
            if matches!(kind, PathKind::Relay { .. }) {
                self.relay_attempt_since = Some(now.at);
            }
        } else if !self.confirmed {
            // nothing to send, but this engine has not compared high-water marks with the
            // peer yet: one attempt per path that comes up, a moment later (the peer, who
            // brought the path up, usually handshakes first: no collision, and its log and
            // ours agree on who called)
            self.probe_at = Some(now.at + PROBE_DELAY);
        }
        self.drive(now);
    }

    /// A path went away.
    pub fn path_down(&mut self, now: Now, id: PathId) {
        self.forget_path(id);
        self.drive(now);
    }

    fn forget_path(&mut self, id: PathId) {
        let Some(pos) = self.paths.iter().position(|p| p.id == id) else {
            return;
        };
        let gone = self.paths.remove(pos);
        self.queue.retain(|q| q.path != id);
        if let PathKind::Relay { relay } = gone.kind {
            let still_there = self
                .paths
                .iter()
                .any(|p| p.kind == PathKind::Relay { relay });
            if !still_there {
                self.calls.relay_down(relay, &mut self.events);
            }
        }
    }

    /// AUDIT messages (checkpoint offers, cosignatures, receipts) to send to the peer.
    pub fn queue_audit(&mut self, msgs: Vec<Vec<u8>>) {
        for m in msgs {
            if self.audit_out.len() >= MAX_AUDIT_OUT {
                self.audit_out.pop_front();
            }
            self.audit_out.push_back(m);
        }
    }

    /// Our mailbox key to advertise changed (daily rotation).
    pub fn set_own_mailbox_key(&mut self, key: MailboxKeyPub) {
        if self.own_mbox.as_ref() != Some(&key) {
            self.own_mbox = Some(key);
            self.mbox_due = true;
            self.start_frames_dirty = true;
        }
    }

    /// The contact was changed while the line runs (`contact pair`, `contact add --replace`,
    /// `contact set --live-only`). A new pairing secret or new keys end every session made
    /// under the old ones at once (a user who paired believes the line now needs the secret);
    /// the next message handshakes afresh.
    pub fn set_peer(
        &mut self,
        now: Now,
        peer: PeerKeys,
        card_mailbox: Option<MailboxKeyPub>,
        live_only: bool,
    ) {
        self.live_only = live_only;
        self.card_mbox = card_mailbox;
        let same_keys = peer.identity == self.peer.identity
            && peer.noise == self.peer.noise
            && peer.pairing.as_deref() == self.peer.pairing.as_deref();
        if same_keys {
            return;
        }
        if peer.identity != self.peer.identity || peer.noise != self.peer.noise {
            // another key: what we knew of the old one's mailbox keys does not apply
            self.peer_mbox = PeerMailboxKeys::default();
            self.drop_posted(|_, _| true, true);
        }
        let was_up = self.line.is_ready(now.at);
        let mut line = Line::new(
            self.local.clone(),
            peer.clone(),
            self.line.last_sent_ts(),
            self.line.last_accepted_ts(),
        );
        std::mem::swap(&mut self.line, &mut line);
        self.inbox = InboxKeys::new(&self.local, &peer);
        self.peer = peer;
        self.snapshots.clear();
        self.queue.retain(|q| !q.handshake);
        self.start_frames_dirty = true;
        if was_up {
            self.calls.ending(CallEnd::Error);
        }
        self.sender.rewind();
        if self.wants_path() && !self.paths.is_empty() {
            self.line.connect(now.at, now.tai64n());
        }
        self.drive(now);
    }

    /// The user reset the handshake replay state while the line runs: message 1s newer than
    /// `accepted_ts` are accepted again.
    pub fn reset_replay(&mut self, accepted_ts: Tai64N) {
        if accepted_ts < self.line.last_accepted_ts() {
            self.line.reset_accepted_ts(accepted_ts);
        }
    }

    /// The node is stopping: `CLOSE(bye)` on the live session (so the peer drops it at once
    /// instead of sending into keys about to be wiped), then nothing more. The shell writes
    /// what [`Conn::poll_transmit`] still returns (briefly), then detaches every path.
    pub fn close(&mut self, now: Now) {
        if self.said_bye {
            return;
        }
        self.line.stand_down();
        if self.line.is_ready(now.at)
            && let Some(path) = self.send_path()
            && let Some(frame) =
                self.close_frame(now, path.kind, liaison_wire::frame::close_reason::BYE)
        {
            self.queue.push_back(Queued {
                path: path.id,
                frame,
                gate: 0,
                close_after: false,
                handshake: false,
            });
        }
        self.said_bye = true;
        let reason = if self.line.is_ready(now.at) {
            CallEnd::Normal
        } else {
            CallEnd::Cancelled
        };
        self.calls.end(reason, &mut self.events);
    }

    /// The shell failed (its store): end the call as an error. Nothing more is sent.
    pub fn fail(&mut self) {
        self.said_bye = true;
        self.queue.clear();
        self.calls.end(CallEnd::Error, &mut self.events);
    }

    // ----------------------------------------------------------------------------------
    // the store's answers

    /// The handshake timestamps of [`Event::PersistHandshake`] `token` are durable.
    pub fn persisted(&mut self, token: u64) {
        self.persisted_upto = self.persisted_upto.max(token);
    }

    /// Our outbox rows for `upto` are durably `delivered`.
    pub fn ack_committed(&mut self, now: Now, upto: u64) {
        let changed = self.sender.on_ack(now.at, upto);
        if self.sender.unacked_count() == 0 {
            self.waiting_since = None;
            self.stall_reported = None;
        }
        self.enveloped.retain(|s| *s > upto);
        self.drop_posted(|_, e| e.seqs.iter().all(|s| *s <= upto), false);
        if !changed.is_empty() {
            self.events
                .push_back(Event::Audit(AuditRecord::MsgAcked { upto }));
        }
        self.drive(now);
    }

    /// The renumbering of [`Event::Renumber`] `token` is durable: the moved messages may go.
    pub fn renumbered(&mut self, now: Now, token: u64) {
        if self.hold_sends.is_some_and(|t| t <= token) {
            self.hold_sends = None;
            self.sender.rewind();
            if self.peer_away {
                self.seal_pending(now);
            }
        }
        self.drive(now);
    }

    /// The messages [`Event::PeerLost`] asked for, marked pending again: send them again.
    pub fn resend(&mut self, now: Now, peer_holds: u64, messages: Vec<(u64, Arc<[u8]>)>) {
        self.sender.reopen(peer_holds);
        self.acking = self.acking.min(peer_holds).max(self.sender.acked_upto());
        for (seq, encoded) in messages {
            self.sender.push(seq, encoded);
        }
        self.sender.rewind();
        if self.peer_away {
            self.seal_pending(now);
        }
        self.drive(now);
    }

    /// Seals `plaintext` as-is (arbitrary inner frames) on the session we send on: what an
    /// authentic but hostile peer can send, for the engine's fuzz target only.
    #[cfg(feature = "fuzzing")]
    pub fn seal_plaintext_for_fuzzing(&mut self, now: Now, plaintext: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        self.line
            .seal(now.at, now.tai64n(), plaintext, false, &mut out)
            .ok()?;
        Some(out)
    }

    // ----------------------------------------------------------------------------------
    // timers

    /// Runs the timers that are due: handshake retries, session expiry, retransmission, and
    /// the peer-away decision for a handshake through a relay.
    pub fn handle_timeout(&mut self, now: Now) {
        if self.line.poll_timeout().is_some_and(|t| t <= now.at) {
            self.line.handle_timeout(now.at, now.tai64n());
        }
        // (re-sent copies into a path that is really dead wait behind the lost data and go
        // with it when the path is replaced; the timer's backoff keeps them few. A path that is
        // alive but loses blobs — a relay dropping some — needs them.)
        self.sender.handle_timeout(now.at);
        if self.stalled(now.at)
            && self.stall_deadline().is_some_and(|t| t <= now.at)
            && let Some(p) = self.send_path()
        {
            if self.stalls > 0 {
                // the last replacement brought nothing back: give the next one longer
                self.stall_after = (self.stall_after * 2).min(STALL_MAX);
            }
            self.stalls += 1;
            self.stall_reported = Some(now.at);
            self.events.push_back(Event::PathStalled { path: p.id });
        }
        if self.stall_deadline().is_some_and(|t| t <= now.at) && !self.stalled(now.at) {
            // due, but no session to judge the path by (a handshake is under way): the wait
            // starts again, and the handshake timers do their work
            self.waiting_since = Some(now.at);
            self.stall_reported = None;
        }
        self.repost_due(now);
        if self.probe_at.is_some_and(|t| t <= now.at) {
            self.probe_at = None;
            if !self.confirmed && !self.said_bye && !self.paths.is_empty() {
                self.line.probe(now.at, now.tai64n());
            }
        }
        if self.env_ack_at.is_some_and(|t| t <= now.at) {
            self.env_ack_at = None;
            if !self.line.is_ready(now.at) {
                self.send_ack_envelope(now);
            }
        }
        if self.away_at.is_some_and(|t| t <= now.at) {
            // the peer did not come back through the relay in its grace: it is away
            self.away_at = None;
            self.set_away(now);
        }
        if self
            .relay_attempt_since
            .is_some_and(|t| now.at.saturating_duration_since(t) >= AWAY_AFTER)
        {
            // the peer did not answer through the relay in time: it is away
            self.relay_attempt_since = None;
            if !self.line.is_ready(now.at) {
                self.set_away(now);
            }
        }
        self.drive(now);
    }

    // ----------------------------------------------------------------------------------
    // internals shared by the submodules

    /// Runs after every input: starts what is due and turns session events into the line's.
    fn drive(&mut self, now: Now) {
        if !self.paths.is_empty()
            && !self.said_bye
            && !self.gave_up
            && self.sender.has_pending()
            && !self.line.is_ready(now.at)
            && !self.line.is_handshaking()
        {
            self.line.connect(now.at, now.tai64n());
        }
        self.line_events(now);
        let ready = self.line.is_ready(now.at);
        self.calls.transition(ready, now, &mut self.events);
        self.flush_store();
        if self.start_frames_dirty {
            self.refresh_start_frames();
        }
    }

    fn line_events(&mut self, now: Now) {
        while let Some(ev) = self.line.poll_event() {
            match ev {
                LineEvent::PersistSentTs(_, idx) => {
                    self.calls
                        .offering(CallDirection::Outgoing, now, &mut self.events);
                    self.snapshot(idx);
                    self.request_persist();
                }
                LineEvent::PersistAcceptedTs(_, idx) => {
                    self.calls
                        .offering(CallDirection::Incoming, now, &mut self.events);
                    self.snapshot(idx);
                    self.request_persist();
                }
                LineEvent::Transmit(blob) => self.queue_session_blob(now, blob),
                LineEvent::Ready { fresh } => {
                    if fresh {
                        self.sender.rewind();
                    }
                    // the first DATA on a session names our high-water mark
                    self.ack_due = true;
                    self.mbox_due = true;
                    self.peer_away = false;
                    self.gave_up = false;
                    self.confirmed = true;
                    self.relay_attempt_since = None;
                }
                LineEvent::Unreachable => {
                    self.line.stand_down();
                    self.gave_up = true;
                    self.events.push_back(Event::Unreachable);
                }
                LineEvent::Anomaly(a) => self.events.push_back(Event::Anomaly(a)),
            }
        }
    }

    /// Messages wait for a receipt and nothing authentic came back for [`STALL_AFTER`].
    fn stalled(&self, now: Instant) -> bool {
        self.sender.unacked_count() > 0
            && self.line.is_ready(now)
            && self
                .waiting_since
                .is_some_and(|t| now.saturating_duration_since(t) >= self.stall_after)
    }

    fn stall_deadline(&self) -> Option<Instant> {
        if self.sender.unacked_count() == 0 || self.paths.is_empty() {
            return None;
        }
        let since = self.waiting_since?;
        Some(match self.stall_reported {
            Some(t) => t + self.stall_after,
            None => since + self.stall_after,
        })
    }

    fn request_persist(&mut self) {
        let token = self.next_token;
        self.next_token += 1;
        self.events.push_back(Event::PersistHandshake {
            token,
            sent_ts: self.line.last_sent_ts(),
            accepted_ts: self.line.last_accepted_ts(),
        });
    }

    /// The token the newest persistence request carries (a handshake blob waits for it).
    fn persist_gate(&self) -> u64 {
        self.next_token.saturating_sub(1)
    }

    fn snapshot(&mut self, local_idx: u32) {
        let acked = self.sender.acked_upto().max(self.acking);
        self.snapshots.retain(|s| s.local_idx != local_idx);
        self.snapshots.push_back(Snapshot {
            local_idx,
            acked,
            checked: false,
        });
        while self.snapshots.len() > MAX_SNAPSHOTS {
            self.snapshots.pop_front();
        }
    }

    /// The path to send on: the newest direct path, else the newest relay.
    fn send_path(&self) -> Option<PathState> {
        self.paths
            .iter()
            .rev()
            .find(|p| p.kind == PathKind::Direct && !p.closing)
            .or_else(|| self.paths.iter().rev().find(|p| !p.closing))
            .copied()
    }

    fn set_away(&mut self, now: Now) {
        self.away_at = None;
        if !self.peer_away {
            self.peer_away = true;
            self.events.push_back(Event::PeerAway);
        }
        self.repost_due(now);
        self.seal_pending(now);
    }

    /// Posts the kept envelopes again on the relay paths whose turn has come (the peer away).
    fn repost_due(&mut self, now: Now) {
        if !self.peer_away {
            return;
        }
        let due: Vec<PathId> = self
            .repost_when_away
            .iter()
            .filter(|(_, t)| **t <= now.at)
            .map(|(p, _)| *p)
            .collect();
        for p in due {
            self.repost_when_away.remove(&p);
            if self.paths.iter().any(|x| x.id == p) {
                self.repost(now, p);
            }
        }
    }

    /// Rebuilds the frames every new session starts with (see [`session_start_frames`]).
    fn refresh_start_frames(&mut self) {
        self.start_frames_dirty = false;
        self.line.set_start_frames(session_start_frames(
            self.receiver.delivered_upto(),
            self.receiver.delivered_digest(),
            self.own_mbox.as_ref(),
        ));
    }
}

use liaison_wire::hop::InboxId;

/// The frames every new session starts with: `ACK(delivered_upto, digest)` — our receive
/// high-water mark, so a peer whose store was rolled back, or that lost messages we
/// acknowledged, finds out at once — and `MBOX_KEY` with our current mailbox key, padded to a
/// plaintext bucket. They are message 2's payload and the plaintext of the initiator's
/// confirming keepalive.
pub fn session_start_frames(
    delivered_upto: u64,
    digest: &[u8; MSG_DIGEST_LEN],
    own_mailbox: Option<&MailboxKeyPub>,
) -> Vec<u8> {
    let mut w = liaison_wire::frame::FrameWriter::new(MAX_HS_RESP_PAYLOAD);
    w.ack(delivered_upto, digest);
    if let Some(bytes) = own_mailbox.and_then(|k| k.encode().ok()) {
        w.raw(FRAME_MBOX_KEY, &bytes);
    }
    w.finish()
}
