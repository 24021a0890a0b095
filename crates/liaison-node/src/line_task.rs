//! One task per line: drives a contact's [`Line`] (sessions) and [`Sender`]/[`Receiver`]
//! (delivery) with real time, the store and the attached hops — direct QUIC connections and
//! relays.
//!
//! Order of effects, which is what makes delivery exactly-once across crashes:
//! - received messages are stored (with the new `delivered_upto`) in one committed
//!   transaction **before** the ACK that covers them is sent, and before a relay is told it may
//!   delete the envelope that carried them;
//! - handshake timestamps are persisted before the handshake message that carries them;
//! - our messages are in the outbox before they are first sent, and stay there until the
//!   peer's ACK is committed as `delivered` (a relay's ACK only makes them `queued`).
//!
//! Peer away: when a relay answers `NO_SUBSCRIBER` to our handshake, or a handshake through a
//! relay does not confirm within `REKEY_TIMEOUT`, unacknowledged messages are sealed to the
//! peer's mailbox key (its newest in-band key, else its card's) and posted with `store = 1`,
//! unless the contact is `--live-only`. Envelopes we receive are opened with our mailbox ring;
//! their messages are stored like live ones, then acknowledged to the relay and, when no live
//! session exists, to the sender by an envelope carrying our ACK.
//!
//! The task never blocks on a hop: frames go out through `reserve()` on the chosen hop's
//! bounded queue, so inbound traffic (and its acks) keeps flowing under backpressure.

use crate::atrest::{self, Direction};
use crate::node::{LineStatus, Node, NodeError, NodeEvent, open_content, unix_now};
use crate::relay_client::{Registration, RelayClient};
use crate::store::{self, ContactRow, OutboxRow};
use liaison_audit::entry::{
    AnomalyKind, CallEndReason, Direction as CallDirection, Event as AuditEvent, KeyEventKind,
    RelayEventKind,
};
use liaison_proto::delivery::{FragmentOutcome, Receiver, Sender};
use liaison_proto::envelope;
use liaison_proto::handshake::Tai64N;
use liaison_proto::inbox::InboxKeys;
use liaison_proto::keys::{LocalKeys, PeerKeys};
use liaison_proto::line::{Line, LineEvent, Received};
use liaison_proto::mailbox_ring::{PeerKeyOutcome, PeerMailboxKeys};
use liaison_wire::card::{Card, MailboxKeyPub};
use liaison_wire::consts::{
    BLOB_DATA, BLOB_ENVELOPE, ENVELOPE_ID_LEN, FRAME_MBOX_KEY, MAX_HS_RESP_PAYLOAD, REKEY_TIMEOUT,
};
use liaison_wire::frame::{
    Frame, FrameWriter, Frames, MSG_KIND_FILE, MessageContent, fragment, fragment_count,
};
use liaison_wire::hop::{HopFrame, InboxId, err as hop_err, ty as hop_ty};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

/// How a hop carries our blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HopKind {
    /// A direct QUIC connection to the peer: `BLOB` frames.
    Direct,
    /// A relay: `POST(dst, store, blob)` frames to the peer's inbox `dst`.
    Relay {
        /// The inbox we post to.
        dst: InboxId,
        /// SHA-256 of the relay's pinned key (names it in the audit log).
        relay: [u8; 32],
    },
}

/// Inputs of a line task.
#[derive(Debug)]
pub enum LineInput {
    /// A blob arrived on a direct hop `hop`.
    Blob {
        /// Hop id.
        hop: u64,
        /// The blob.
        data: Vec<u8>,
    },
    /// A relay delivered a blob for one of our inboxes.
    RelayDeliver {
        /// The relay's hop id.
        hop: u64,
        /// Set when the relay stored it (an envelope to acknowledge once handled).
        envelope_id: Option<[u8; ENVELOPE_ID_LEN]>,
        /// The blob.
        blob: Vec<u8>,
    },
    /// A relay refused one of our posts.
    RelayError {
        /// Error code.
        code: u16,
        /// `SHA-256(blob)[..16]` of the post.
        reference: [u8; ENVELOPE_ID_LEN],
    },
    /// A relay durably stored one of our envelopes.
    EnvelopeStored {
        /// Its id.
        reference: [u8; ENVELOPE_ID_LEN],
    },
    /// A hop to the peer is up (or changed); frames for it go to `tx`.
    HopUp {
        /// Hop id.
        hop: u64,
        /// The hop writer's queue (encoded hop frames).
        tx: mpsc::Sender<Vec<u8>>,
        /// How to frame blobs for it.
        kind: HopKind,
    },
    /// A hop went away.
    HopDown {
        /// Hop id.
        hop: u64,
    },
    /// A message was written to the outbox.
    Submitted {
        /// Its seq.
        seq: u64,
        /// Encoded content.
        encoded: Arc<[u8]>,
    },
    /// The user wants the line up: dial `addr` (or the stored address) and/or meet at `relay`.
    Connect {
        /// Address override.
        addr: Option<String>,
        /// A relay to meet the contact at.
        relay: Option<RelayClient>,
    },
    /// A dial attempt ended.
    DialDone {
        /// Error text, if it failed.
        error: Option<String>,
        /// The peer refused our key.
        refused: bool,
    },
    /// Audit messages (checkpoint offers, cosignatures, receipts) to send to the peer.
    AuditOut(Vec<Vec<u8>>),
    /// Report status.
    Status(oneshot::Sender<LineStatus>),
    /// The node is stopping: tell the peer (`CLOSE(bye)` on the live session), detach every
    /// hop, and answer once the goodbye is queued.
    Bye(oneshot::Sender<()>),
}

struct HopLink {
    id: u64,
    tx: mpsc::Sender<Vec<u8>>,
    kind: HopKind,
}

const DIAL_BACKOFF_MIN: Duration = Duration::from_secs(1);
const DIAL_BACKOFF_MAX: Duration = Duration::from_secs(60);
const ANOMALY_LOG_EVERY: Duration = Duration::from_secs(60);
/// Least time between two logged connections to one relay.
const RELAY_EVENT_EVERY: Duration = Duration::from_secs(60);
/// How long a goodbye may wait for room on a busy hop.
const BYE_GRACE: Duration = Duration::from_millis(200);
const REGISTER_EVERY: Duration = Duration::from_secs(3600);
const MAX_BATCH: usize = 256;
const MAX_ENVELOPES_PER_ROUND: usize = 64;

pub(crate) struct LineTask {
    node: Node,
    name: String,
    hop_pub: [u8; 32],
    local: LocalKeys,
    peer: PeerKeys,
    line: Line,
    sender: Sender,
    receiver: Receiver,
    hops: Vec<HopLink>,
    ack_due: bool,
    tx_self: mpsc::Sender<LineInput>,
    rx: mpsc::Receiver<LineInput>,
    stored_addr: Option<String>,
    stored_relay: Option<String>,
    dial_addr: Option<String>,
    want_dial: bool,
    dialing: bool,
    next_dial: Option<Instant>,
    backoff: Duration,
    was_ready: bool,
    anomalies: HashMap<&'static str, (Instant, u64)>,
    last_touch: Option<Instant>,
    pt: Vec<u8>,
    // relays and envelopes
    inbox: Option<InboxKeys>,
    relays: Vec<RelayClient>,
    registered_at: Option<Instant>,
    live_only: bool,
    card_mbox: Option<MailboxKeyPub>,
    peer_mbox: PeerMailboxKeys,
    enveloped: BTreeSet<u64>,
    pending_env: HashMap<[u8; ENVELOPE_ID_LEN], Vec<u64>>,
    peer_away: bool,
    relay_attempt_since: Option<Instant>,
    mbox_due: bool,
    env_ack_due: bool,
    audit_out: std::collections::VecDeque<Vec<u8>>,
    call: u64,
    session_initiated: bool,
    /// A `call_offered` is logged for the current attempt (reset when its call ends).
    offer_logged: bool,
    /// Why the current call is ending, when known before the session goes.
    end_reason: Option<CallEndReason>,
    /// The node is stopping and the peer was told: send nothing more.
    said_bye: bool,
    /// Per relay: whether its current connection was logged, and when the last was.
    relay_logged: HashMap<[u8; 32], (bool, Instant)>,
}

/// Most audit messages waiting to be sent; older ones are dropped (offers are repeated).
const MAX_AUDIT_OUT: usize = 64;

fn audit_anomaly(name: &str) -> Option<AnomalyKind> {
    Some(match name {
        "replayed-data" => AnomalyKind::ReplayedFrame,
        "bad-data" | "bad-handshake" | "bad-envelope" => AnomalyKind::UndecryptableFrame,
        "malformed" | "malformed-frame" | "bad-fragment" | "bad-message" | "bad-mailbox-key" => {
            AnomalyKind::MalformedFrame
        }
        "replayed-handshake" => AnomalyKind::ReplayedHandshake,
        "handshake-flood" => AnomalyKind::HandshakeRateLimited,
        _ => return None,
    })
}

fn wall() -> Tai64N {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Tai64N::from_unix(d.as_secs(), d.subsec_nanos())
}

/// Starts a hop frame for `kind`; the blob is appended after it and [`patch_len`] fixes the
/// length.
fn frame_prefix(kind: HopKind, store: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(&[0; 4]);
    match kind {
        HopKind::Direct => out.push(hop_ty::BLOB),
        HopKind::Relay { dst, .. } => {
            out.push(hop_ty::POST);
            out.extend_from_slice(&dst);
            out.push(u8::from(store));
        }
    }
}

fn mbox_payload(key: Option<MailboxKeyPub>) -> Vec<u8> {
    let Some(bytes) = key.and_then(|k| k.encode().ok()) else {
        return Vec::new();
    };
    let mut w = FrameWriter::new(MAX_HS_RESP_PAYLOAD);
    if !w.raw(FRAME_MBOX_KEY, &bytes) {
        return Vec::new();
    }
    w.finish()
}

impl LineTask {
    pub(crate) fn new(
        node: Node,
        row: ContactRow,
        unacked: Vec<OutboxRow>,
        ahead: Vec<u64>,
        tx_self: mpsc::Sender<LineInput>,
        rx: mpsc::Receiver<LineInput>,
    ) -> Result<Self, NodeError> {
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
        let peer = PeerKeys {
            identity: row.identity,
            noise: row.noise,
            pairing,
        };
        let local = node.identity().local_keys();
        let mut line = Line::new(
            local.clone(),
            peer.clone(),
            Tai64N(row.hs_sent_ts),
            Tai64N(row.hs_accepted_ts),
        );
        line.set_response_payload(mbox_payload(node.current_mailbox_key()));
        let mut sender = Sender::new(row.acked_upto);
        let mut enveloped = BTreeSet::new();
        for o in unacked {
            let aad = atrest::body_aad(&row.name, Direction::Sent, o.seq);
            let plain = atrest::open_body(node.data_key(), &aad, &o.body)?;
            sender.push(o.seq, Arc::from(plain.as_slice()));
            if o.status == store::status::QUEUED {
                // a relay already holds it sealed: do not seal it again
                enveloped.insert(o.seq);
            }
        }
        let receiver = Receiver::new(row.delivered_upto, ahead);
        let card_mbox = Card::from_bytes(&row.card).ok().map(|c| c.body.mailbox);
        let peer_mbox = row
            .peer_mbox
            .as_deref()
            .and_then(|b| PeerMailboxKeys::from_bytes(b, &row.identity).ok())
            .unwrap_or_default();
        let inbox = InboxKeys::new(&local, &peer);
        Ok(LineTask {
            node,
            name: row.name,
            hop_pub: row.hop,
            local,
            peer,
            line,
            sender,
            receiver,
            hops: Vec::new(),
            ack_due: false,
            tx_self,
            rx,
            stored_addr: row.addr,
            stored_relay: row.relay,
            dial_addr: None,
            want_dial: false,
            dialing: false,
            next_dial: None,
            backoff: DIAL_BACKOFF_MIN,
            was_ready: false,
            anomalies: HashMap::new(),
            last_touch: None,
            pt: Vec::with_capacity(65_536),
            inbox,
            relays: Vec::new(),
            registered_at: None,
            live_only: row.live_only,
            card_mbox,
            peer_mbox,
            enveloped,
            pending_env: HashMap::new(),
            peer_away: false,
            relay_attempt_since: None,
            mbox_due: false,
            env_ack_due: false,
            audit_out: std::collections::VecDeque::new(),
            call: 0,
            session_initiated: false,
            offer_logged: false,
            end_reason: None,
            said_bye: false,
            relay_logged: HashMap::new(),
        })
    }

    fn next_deadline(&self) -> Option<Instant> {
        [
            self.line.poll_timeout(),
            self.sender.poll_timeout(),
            self.next_dial.filter(|_| self.should_dial()),
            self.relay_attempt_since.map(|t| t + REKEY_TIMEOUT),
            self.registered_at
                .filter(|_| !self.relays.is_empty())
                .map(|t| t + REGISTER_EVERY),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn should_dial(&self) -> bool {
        !self.hops.iter().any(|h| h.kind == HopKind::Direct)
            && !self.dialing
            && (self.want_dial || self.sender.unacked_count() > 0)
            && self
                .dial_addr
                .as_ref()
                .or(self.stored_addr.as_ref())
                .is_some()
    }

    /// The hop to send on: the newest direct hop, else the newest relay.
    fn send_hop(&self) -> Option<&HopLink> {
        self.hops
            .iter()
            .rev()
            .find(|h| h.kind == HopKind::Direct)
            .or_else(|| self.hops.last())
    }

    fn relay_hop(&self) -> Option<&HopLink> {
        self.hops
            .iter()
            .rev()
            .find(|h| matches!(h.kind, HopKind::Relay { .. }))
    }

    fn wants_to_send(&self, now: Instant) -> bool {
        !self.hops.is_empty()
            && self.line.is_ready(now)
            && (self.ack_due
                || self.sender.has_pending()
                || self.mbox_due
                || !self.audit_out.is_empty())
    }

    pub(crate) async fn run(mut self) {
        let token = self.node.shutdown_token();
        if let Err(e) = self.import_key_events().await {
            tracing::warn!(contact = %self.name, "cannot log key events: {e}");
        }
        let stored_relay = self.stored_relay.clone();
        for rc in self.node.relays_for(stored_relay.as_deref()) {
            self.register(rc).await;
        }
        let mut failed = false;
        loop {
            let now = Instant::now();
            if self.should_dial() && self.next_dial.is_none_or(|t| t <= now) {
                self.start_dial();
            }
            if !self.hops.is_empty()
                && !self.said_bye
                && self.sender.has_pending()
                && !self.line.is_ready(now)
                && !self.line.is_handshaking()
            {
                self.line.connect(now, wall());
            }
            if self.process_events().await.is_err() {
                failed = true;
                break;
            }
            let deadline = self.next_deadline();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                    None => std::future::pending().await,
                }
            };
            let send_ready = self.wants_to_send(now);
            let hop = self.send_hop().map(|h| (h.tx.clone(), h.kind, h.id));
            let hop_tx = hop.as_ref().map(|h| h.0.clone());
            let reserve = async move {
                match (hop_tx, send_ready) {
                    (Some(tx), true) => tx.reserve_owned().await.ok(),
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = token.cancelled() => break,
                input = self.rx.recv() => {
                    let Some(input) = input else { break };
                    if self.handle_inputs(input).await.is_err() {
                        failed = true;
                        break;
                    }
                }
                permit = reserve => {
                    match (permit, hop) {
                        (Some(permit), Some((_, kind, _))) => {
                            if let Some(frame) = self.build_data_frame(Instant::now(), kind) {
                                permit.send(frame);
                            }
                        }
                        (_, Some((_, _, id))) => {
                            // the hop writer is gone
                            self.hop_gone(id);
                            tracing::debug!(contact = %self.name, "hop {id} closed");
                        }
                        _ => {}
                    }
                }
                _ = sleep => {
                    let now = Instant::now();
                    self.line.handle_timeout(now, wall());
                    self.sender.handle_timeout(now);
                    if self
                        .relay_attempt_since
                        .is_some_and(|t| now.duration_since(t) >= REKEY_TIMEOUT)
                    {
                        // the peer did not answer through the relay in time: it is away
                        self.relay_attempt_since = None;
                        if !self.line.is_ready(now) {
                            self.peer_away = true;
                            self.seal_pending();
                        }
                    }
                    if self
                        .registered_at
                        .is_some_and(|t| now.duration_since(t) >= REGISTER_EVERY)
                    {
                        // inbox ids roll over daily: subscribe the current window again
                        let relays = std::mem::take(&mut self.relays);
                        for rc in relays {
                            self.register(rc).await;
                        }
                    }
                }
            }
            if self.process_events().await.is_err() {
                failed = true;
                break;
            }
        }
        // the node is stopping (its audit log is flushed after every line task ends)
        let reason = if failed {
            CallEndReason::Error
        } else if self.was_ready {
            CallEndReason::Normal
        } else {
            CallEndReason::Cancelled
        };
        self.end_call(reason);
        tracing::debug!(contact = %self.name, "line task stopped");
    }

    /// Logs `call_offered` for a new call attempt, once per attempt: retried handshakes and
    /// the peer's repeated message 1s belong to the same offer.
    fn log_offer(&mut self, direction: CallDirection) {
        if self.offer_logged {
            return;
        }
        self.offer_logged = true;
        self.call = (self.call + 1).max(crate::node::unix_ms());
        self.node.inner.audit.append(
            &self.name,
            AuditEvent::CallOffered {
                call: self.call,
                direction,
            },
        );
    }

    /// Logs `call_ended` for the current call (started, or offered and never answered).
    fn end_call(&mut self, reason: CallEndReason) {
        if !self.offer_logged {
            return;
        }
        self.offer_logged = false;
        self.node.inner.audit.append(
            &self.name,
            AuditEvent::CallEnded {
                call: self.call,
                reason,
            },
        );
    }

    /// Logs a relay connection coming up. A relay that keeps dropping and taking back the
    /// connection must not grow the log without bound: a reconnection within
    /// [`RELAY_EVENT_EVERY`] of the last logged one is not logged (nor is its loss).
    fn relay_up(&mut self, relay: [u8; 32], now: Instant) {
        let log = match self.relay_logged.get(&relay) {
            Some(&(up, at)) => !up && now.duration_since(at) >= RELAY_EVENT_EVERY,
            None => true,
        };
        if log {
            self.relay_logged.insert(relay, (true, now));
            self.node.inner.audit.append(
                &self.name,
                AuditEvent::RelayEvent {
                    kind: RelayEventKind::Connected,
                    relay,
                },
            );
        }
    }

    /// A hop is gone: forget it, and log the loss of a relay whose connection was logged.
    fn hop_gone(&mut self, hop: u64) {
        let Some(pos) = self.hops.iter().position(|h| h.id == hop) else {
            return;
        };
        let gone = self.hops.remove(pos);
        if let HopKind::Relay { relay, .. } = gone.kind {
            let still_there = self
                .hops
                .iter()
                .any(|h| matches!(h.kind, HopKind::Relay { relay: r, .. } if r == relay));
            if !still_there
                && let Some(entry) = self.relay_logged.get_mut(&relay)
                && entry.0
            {
                entry.0 = false;
                self.node.inner.audit.append(
                    &self.name,
                    AuditEvent::RelayEvent {
                        kind: RelayEventKind::Disconnected,
                        relay,
                    },
                );
            }
        }
    }

    /// The relay hop's relay id, for audit events.
    fn relay_id(&self) -> Option<[u8; 32]> {
        self.relay_hop().and_then(|h| match h.kind {
            HopKind::Relay { relay, .. } => Some(relay),
            HopKind::Direct => None,
        })
    }

    /// Copies key events the CLI recorded for this contact (pinning, verification, pairing,
    /// replay reset) into the line's audit log, once each. Only this process signs the log.
    async fn import_key_events(&mut self) -> Result<(), NodeError> {
        let name = self.name.clone();
        let identity = self.peer.identity;
        let events = self
            .node
            .db()
            .write(move |c| {
                let key = format!("audit_key_events:{name}");
                let upto = store::meta_get(c, &key)?
                    .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                    .map(i64::from_le_bytes)
                    .unwrap_or(0);
                let rows = store::key_events_after(c, &name, upto)?;
                if let Some(last) = rows.last() {
                    store::meta_set(c, &key, &last.0.to_le_bytes())?;
                }
                Ok(rows)
            })
            .await?;
        for (_, kind, detail) in events {
            let k = match kind.as_str() {
                store::key_event::PINNED => KeyEventKind::PeerPinned,
                store::key_event::REPINNED => KeyEventKind::ContactRepinned,
                store::key_event::VERIFIED => KeyEventKind::SafetyNumberVerified,
                store::key_event::PAIRED => KeyEventKind::PairingSecretSet,
                store::key_event::REPLAY_RESET => KeyEventKind::ReplayReset,
                _ => continue,
            };
            let _ = detail;
            self.node.inner.audit.append(
                &self.name,
                AuditEvent::KeyEvent {
                    kind: k,
                    key_hash: identity,
                },
            );
        }
        Ok(())
    }

    async fn register(&mut self, rc: RelayClient) {
        let Some(inbox) = &self.inbox else {
            return;
        };
        let now = unix_now();
        let reg = Registration {
            contact: self.name.clone(),
            line: self.tx_self.clone(),
            recv: inbox.recv_inboxes(now),
            send: inbox.send_inbox(now),
        };
        if rc.register(reg).await {
            self.relays.push(rc);
            self.registered_at = Some(Instant::now());
        }
    }

    fn start_dial(&mut self) {
        let Some(addr) = self.dial_addr.clone().or_else(|| self.stored_addr.clone()) else {
            return;
        };
        self.dialing = true;
        let node = self.node.clone();
        let hop_pub = self.hop_pub;
        let tx = self.tx_self.clone();
        let token = self.node.shutdown_token();
        self.node.inner.tracker.spawn(async move {
            let r = tokio::select! {
                _ = token.cancelled() => return,
                r = node.dial(hop_pub, &addr, tx.clone()) => r,
            };
            let msg = match r {
                Ok(()) => LineInput::DialDone {
                    error: None,
                    refused: false,
                },
                Err(e) => LineInput::DialDone {
                    refused: e.is_tls_refusal(),
                    error: Some(format!("{addr}: {e}")),
                },
            };
            let _ = tx.send(msg).await;
        });
    }

    /// Handles one input and whatever else is already queued (batching stores).
    async fn handle_inputs(&mut self, first: LineInput) -> Result<(), NodeError> {
        let mut batch = Batch::default();
        let mut next = Some(first);
        let mut n = 0;
        while let Some(input) = next.take() {
            n += 1;
            self.handle_input(input, &mut batch).await?;
            if n >= MAX_BATCH {
                break;
            }
            next = self.rx.try_recv().ok();
        }
        let stored_any = !batch.to_store.is_empty();
        if stored_any {
            self.store_received(std::mem::take(&mut batch.to_store))
                .await?;
        }
        if let Some(upto) = batch.acked_upto {
            self.commit_acked(upto).await?;
        }
        if let Some(key) = batch.peer_mbox {
            self.accept_peer_mbox(key).await;
        }
        // everything those envelopes carried is durable: the relay may forget them
        for (hop, id) in batch.relay_acks {
            self.send_relay_ack(hop, id);
        }
        if (stored_any && batch.via_envelope) || self.env_ack_due {
            self.env_ack_due = !self.line.is_ready(Instant::now());
            if self.env_ack_due {
                self.send_ack_envelope();
            }
        }
        Ok(())
    }

    async fn handle_input(&mut self, input: LineInput, b: &mut Batch) -> Result<(), NodeError> {
        let now = Instant::now();
        match input {
            LineInput::Blob { hop, data } => {
                let mut pt = std::mem::take(&mut self.pt);
                if self.line.handle_blob(now, &data, &mut pt) == Received::Plaintext {
                    self.touch(now);
                    self.peer_away = false;
                    self.on_plaintext(now, Some(hop), &data, &pt, b);
                }
                self.pt = pt;
            }
            LineInput::RelayDeliver {
                hop,
                envelope_id,
                blob,
            } => {
                if blob.first() == Some(&BLOB_ENVELOPE) {
                    self.on_envelope(now, hop, envelope_id, &blob, b);
                } else {
                    if let Some(id) = envelope_id {
                        // a stored blob that is not an envelope: not ours to keep
                        b.relay_acks.push((hop, id));
                    }
                    let mut pt = std::mem::take(&mut self.pt);
                    if self.line.handle_blob(now, &blob, &mut pt) == Received::Plaintext {
                        self.touch(now);
                        self.peer_away = false;
                        self.on_plaintext(now, None, &blob, &pt, b);
                    }
                    self.pt = pt;
                }
            }
            LineInput::RelayError { code, reference } => {
                if code == hop_err::NO_SUBSCRIBER {
                    // the peer is not at the relay: whatever our session says, it is away
                    if !self.peer_away
                        && let Some(relay) = self.relay_id()
                    {
                        self.node.inner.audit.append(
                            &self.name,
                            AuditEvent::RelayEvent {
                                kind: RelayEventKind::NoSubscriber,
                                relay,
                            },
                        );
                    }
                    self.peer_away = true;
                    self.seal_pending();
                } else if let Some(seqs) = self.pending_env.remove(&reference) {
                    for s in &seqs {
                        self.enveloped.remove(s);
                    }
                    tracing::warn!(contact = %self.name, "relay refused an envelope: {}", hop_err::name(code));
                    self.node.emit(NodeEvent::NotHeld {
                        to: self.name.clone(),
                        seqs,
                        reason: hop_err::name(code).to_string(),
                    });
                } else {
                    tracing::info!(contact = %self.name, "relay error: {}", hop_err::name(code));
                }
            }
            LineInput::EnvelopeStored { reference } => {
                if let Some(seqs) = self.pending_env.remove(&reference) {
                    if let Some(relay) = self.relay_id() {
                        self.node.inner.audit.append(
                            &self.name,
                            AuditEvent::RelayEvent {
                                kind: RelayEventKind::EnvelopeQueued,
                                relay,
                            },
                        );
                    }
                    self.mark_queued(seqs).await?;
                }
            }
            LineInput::HopUp { .. } if self.said_bye => {}
            LineInput::HopUp { hop, tx, kind } => {
                tracing::debug!(contact = %self.name, "hop {hop} attached ({kind:?})");
                if let Some(h) = self.hops.iter_mut().find(|h| h.id == hop) {
                    h.tx = tx;
                    h.kind = kind;
                } else {
                    self.hops.push(HopLink { id: hop, tx, kind });
                }
                match kind {
                    HopKind::Direct => {
                        self.backoff = DIAL_BACKOFF_MIN;
                        self.next_dial = None;
                    }
                    HopKind::Relay { relay, .. } => self.relay_up(relay, now),
                }
                if self.want_dial || self.sender.unacked_count() > 0 {
                    // a new hop may mean the peer restarted and lost its sessions: confirm
                    // with a fresh handshake (the current session keeps working meanwhile)
                    self.line.rehandshake(now, wall());
                    if matches!(kind, HopKind::Relay { .. }) {
                        self.relay_attempt_since = Some(now);
                    }
                }
            }
            LineInput::HopDown { hop } => {
                self.hop_gone(hop);
                tracing::debug!(contact = %self.name, "hop {hop} detached");
            }
            LineInput::Submitted { seq, encoded } => {
                self.sender.push(seq, encoded);
                if !self.hops.is_empty() && !self.line.is_ready(now) {
                    self.line.connect(now, wall());
                    if self.peer_away {
                        self.seal_pending();
                    }
                }
            }
            LineInput::Connect { addr, relay } => {
                if addr.is_some() {
                    self.dial_addr = addr;
                }
                self.want_dial = true;
                self.next_dial = None;
                if let Some(rc) = relay {
                    self.register(rc).await;
                }
                if !self.hops.is_empty() {
                    self.line.connect(now, wall());
                }
                if self.line.is_ready(now) {
                    self.node.emit(NodeEvent::LineUp {
                        contact: self.name.clone(),
                    });
                }
            }
            LineInput::DialDone { error, refused } => {
                self.dialing = false;
                if let Some(error) = error {
                    self.next_dial = Some(now + self.backoff);
                    self.backoff = (self.backoff * 2).min(DIAL_BACKOFF_MAX);
                    tracing::info!(contact = %self.name, "cannot connect: {error}");
                    self.node.emit(NodeEvent::DialFailed {
                        contact: self.name.clone(),
                        error,
                        refused,
                        relay: None,
                    });
                }
            }
            LineInput::AuditOut(msgs) => {
                for m in msgs {
                    if self.audit_out.len() >= MAX_AUDIT_OUT {
                        self.audit_out.pop_front();
                    }
                    self.audit_out.push_back(m);
                }
            }
            LineInput::Bye(done) => {
                self.say_bye(now).await;
                let _ = done.send(());
            }
            LineInput::Status(reply) => {
                let _ = reply.send(LineStatus {
                    up: self.line.is_ready(now),
                    hops: self.hops.len(),
                    unacked: self.sender.unacked_count(),
                    delivered_upto: self.receiver.delivered_upto(),
                    acked_upto: self.sender.acked_upto(),
                });
            }
        }
        Ok(())
    }

    /// Ends the call from this side: `CLOSE(bye)` on the live session, so the peer drops it at
    /// once instead of sending into a session whose keys are about to be wiped; then every
    /// hop is detached so nothing follows it.
    async fn say_bye(&mut self, now: Instant) {
        if self.said_bye {
            return;
        }
        self.said_bye = true;
        self.line.stand_down();
        if self.line.is_ready(now)
            && let Some((tx, kind)) = self.send_hop().map(|h| (h.tx.clone(), h.kind))
            && let Some(frame) = self.close_frame(now, kind, liaison_wire::frame::close_reason::BYE)
        {
            // a hop too busy to take it within the grace is left to time out
            let _ = tokio::time::timeout(BYE_GRACE, tx.send(frame)).await;
        }
        let ids: Vec<u64> = self.hops.iter().map(|h| h.id).collect();
        for id in ids {
            self.hop_gone(id);
        }
    }

    fn touch(&mut self, now: Instant) {
        if self
            .last_touch
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(10))
        {
            return;
        }
        self.last_touch = Some(now);
        let db = self.node.db().clone();
        let name = self.name.clone();
        self.node.inner.tracker.spawn(async move {
            let _ = db.write(move |c| store::touch(c, &name, unix_now())).await;
        });
    }

    fn on_envelope(
        &mut self,
        now: Instant,
        hop: u64,
        envelope_id: Option<[u8; ENVELOPE_ID_LEN]>,
        blob: &[u8],
        b: &mut Batch,
    ) {
        let opened = {
            let Ok(ring) = self.node.inner.mailbox.lock() else {
                return;
            };
            envelope::open(&self.local, &self.peer, |id| ring.find(id), blob)
        };
        match opened {
            Ok(env) => {
                self.touch(now);
                b.via_envelope = true;
                if let Some(relay) = self.relay_id() {
                    self.node.inner.audit.append(
                        &self.name,
                        AuditEvent::RelayEvent {
                            kind: RelayEventKind::EnvelopeReceived,
                            relay,
                        },
                    );
                }
                self.on_plaintext(now, None, blob, env.frames(), b);
            }
            Err(e) => {
                tracing::warn!(contact = %self.name, "envelope refused: {e}");
                self.note_anomaly(now, "bad-envelope");
            }
        }
        // acknowledged to the relay once what it carried is stored (or when it is useless)
        if let Some(id) = envelope_id {
            b.relay_acks.push((hop, id));
        }
    }

    /// Handles the frames of one authenticated plaintext; `ct` is the blob that carried it
    /// (its hash is logged with each message it completes).
    fn on_plaintext(
        &mut self,
        now: Instant,
        hop: Option<u64>,
        ct: &[u8],
        pt: &[u8],
        b: &mut Batch,
    ) {
        let mut ct_hash: Option<[u8; 32]> = None;
        for frame in Frames::new(pt) {
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    // authenticated but malformed: the peer's software is broken
                    tracing::warn!(contact = %self.name, "malformed frames from the peer: {e}");
                    self.note_anomaly(now, "malformed-frame");
                    if let Some(h) = hop {
                        self.close_hop(h, liaison_wire::frame::close_reason::MALFORMED);
                    }
                    return;
                }
            };
            match frame {
                Frame::Msg {
                    seq,
                    frag_index,
                    frag_count,
                    chunk,
                } => {
                    self.ack_due = true;
                    match self
                        .receiver
                        .on_fragment(seq, frag_index, frag_count, chunk)
                    {
                        Ok(FragmentOutcome::Complete { seq, encoded }) => {
                            match MessageContent::decode(&encoded) {
                                Ok(c) => {
                                    let h = *ct_hash.get_or_insert_with(|| {
                                        liaison_audit::entry::ciphertext_hash(ct)
                                    });
                                    b.to_store.push(Complete {
                                        seq,
                                        content: c,
                                        encoded,
                                        ct_hash: h,
                                    })
                                }
                                Err(e) => {
                                    tracing::warn!(contact = %self.name, seq, "undecodable message: {e}");
                                    self.receiver.abandon(seq);
                                    self.note_anomaly(now, "bad-message");
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(_) => {
                            self.note_anomaly(now, "bad-fragment");
                            if let Some(h) = hop {
                                self.close_hop(h, liaison_wire::frame::close_reason::MISBEHAVING);
                            }
                            return;
                        }
                    }
                }
                Frame::Ack { delivered_upto } => {
                    if delivered_upto > self.sender.acked_upto() {
                        b.acked_upto = Some(
                            b.acked_upto
                                .map_or(delivered_upto, |a| a.max(delivered_upto)),
                        );
                    }
                }
                Frame::MboxKey(bytes) => match MailboxKeyPub::decode(bytes) {
                    Ok(k) => b.peer_mbox = Some(k),
                    Err(_) => self.note_anomaly(now, "bad-mailbox-key"),
                },
                Frame::Close { reason } => {
                    tracing::info!(contact = %self.name, "peer closed the session (reason {reason})");
                    // only a live session's goodbye ends it (an envelope has no session)
                    let idx = match ct {
                        [BLOB_DATA, a, b, c, d, ..] => Some(u32::from_le_bytes([*a, *b, *c, *d])),
                        _ => None,
                    };
                    if reason == liaison_wire::frame::close_reason::BYE
                        && let Some(idx) = idx
                        && self.line.peer_closed(now, idx)
                    {
                        // the next message starts a fresh handshake (and finds the peer
                        // away, or back)
                        self.end_reason = Some(CallEndReason::PeerClosed);
                    }
                }
                Frame::Audit(bytes) => self.node.inner.audit.message(&self.name, bytes),
                Frame::Card(_) => {
                    tracing::debug!(contact = %self.name, "ignoring a frame this version does not use yet");
                }
            }
        }
    }

    async fn accept_peer_mbox(&mut self, key: MailboxKeyPub) {
        match self
            .peer_mbox
            .accept_peer_key(&key, &self.peer.identity, unix_now())
        {
            Ok(PeerKeyOutcome::Accepted) => {
                let mut key_hash = [0u8; 32];
                if let Some(d) = key_hash.get_mut(..key.key_id.len()) {
                    d.copy_from_slice(&key.key_id);
                }
                self.node.inner.audit.append(
                    &self.name,
                    AuditEvent::KeyEvent {
                        kind: KeyEventKind::PeerMailboxKey,
                        key_hash,
                    },
                );
                if let Ok(bytes) = self.peer_mbox.to_bytes() {
                    let name = self.name.clone();
                    let _ = self
                        .node
                        .db()
                        .write(move |c| store::set_peer_mbox(c, &name, &bytes))
                        .await;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(contact = %self.name, "mailbox key refused: {e}");
                self.note_anomaly(Instant::now(), "bad-mailbox-key");
            }
        }
    }

    /// A hop frame carrying `CLOSE(reason)` alone, sealed on the current session (`None`
    /// without a usable session).
    fn close_frame(&mut self, now: Instant, kind: HopKind, reason: u8) -> Option<Vec<u8>> {
        let mut w = FrameWriter::default();
        w.raw(liaison_wire::consts::FRAME_CLOSE, &[reason]);
        let pt = w.finish();
        let mut frame = Vec::new();
        frame_prefix(kind, false, &mut frame);
        self.line.seal(now, wall(), &pt, false, &mut frame).ok()?;
        patch_len(&mut frame);
        Some(frame)
    }

    fn close_hop(&mut self, hop: u64, reason: u8) {
        let Some(kind) = self.hops.iter().find(|h| h.id == hop).map(|h| h.kind) else {
            return;
        };
        if let Some(frame) = self.close_frame(Instant::now(), kind, reason)
            && let Some(h) = self.hops.iter().find(|h| h.id == hop)
        {
            let _ = h.tx.try_send(frame);
        }
        if kind == HopKind::Direct {
            // dropping our side of a direct hop closes it once the writer drains
            self.hops.retain(|h| h.id != hop);
        }
    }

    fn note_anomaly(&mut self, now: Instant, kind: &'static str) {
        if let Some(k) = audit_anomaly(kind) {
            self.node.inner.audit.anomaly(&self.name, k);
        }
        let entry = self
            .anomalies
            .entry(kind)
            .or_insert((now - ANOMALY_LOG_EVERY, 0));
        entry.1 += 1;
        if now.duration_since(entry.0) >= ANOMALY_LOG_EVERY {
            let count = entry.1;
            *entry = (now, 0);
            self.node.emit(NodeEvent::Anomaly {
                contact: self.name.clone(),
                kind: kind.to_string(),
            });
            let db = self.node.db().clone();
            let name = self.name.clone();
            self.node.inner.tracker.spawn(async move {
                let detail = format!("{kind} x{count}");
                let _ = db
                    .write(move |c| {
                        store::log_event(c, unix_now(), Some(&name), "anomaly", &detail)
                    })
                    .await;
            });
        }
    }

    /// Where sealed envelopes go: a relay hop's queue, the peer's inbox there, and the peer's
    /// mailbox key to seal to (its newest in-band key, else its card's). `None` for a
    /// `--live-only` contact or without a relay hop.
    fn envelope_target(&self) -> Option<(mpsc::Sender<Vec<u8>>, InboxId, MailboxKeyPub)> {
        if self.live_only {
            return None;
        }
        let (tx, dst) = self.relay_hop().and_then(|h| match h.kind {
            HopKind::Relay { dst, .. } => Some((h.tx.clone(), dst)),
            HopKind::Direct => None,
        })?;
        let card_key = self.card_mbox.as_ref()?;
        let mailbox = self.peer_mbox.key_for_sending(unix_now(), card_key).clone();
        Some((tx, dst, mailbox))
    }

    /// Seals every unacknowledged message not yet in an envelope to the peer's mailbox and
    /// posts the envelopes for the relay to hold.
    fn seal_pending(&mut self) {
        let Some((tx, dst, mailbox)) = self.envelope_target() else {
            return;
        };
        let todo: Vec<u64> = self
            .sender
            .unacked_seqs()
            .filter(|s| !self.enveloped.contains(s))
            .collect();
        let mut envelopes = 0;
        let mut w = envelope::envelope_frame_writer();
        let mut done_in_w: Vec<u64> = Vec::new();
        let mut wrote = false;
        if self.receiver.delivered_upto() > 0 {
            wrote = w.ack(self.receiver.delivered_upto());
        }
        for seq in todo {
            let Some(encoded) = self.sender.message(seq).cloned() else {
                continue;
            };
            let count = fragment_count(encoded.len());
            for idx in 0..count {
                let chunk = fragment(&encoded, idx);
                if !w.msg(seq, idx, count, chunk) {
                    // full: seal what we have and start another envelope
                    if !self.post_envelope(&tx, dst, &mailbox, w, std::mem::take(&mut done_in_w)) {
                        return;
                    }
                    envelopes += 1;
                    if envelopes >= MAX_ENVELOPES_PER_ROUND {
                        return;
                    }
                    w = envelope::envelope_frame_writer();
                    if !w.msg(seq, idx, count, chunk) {
                        return;
                    }
                }
                wrote = true;
            }
            self.enveloped.insert(seq);
            done_in_w.push(seq);
        }
        if wrote && !done_in_w.is_empty() {
            self.post_envelope(&tx, dst, &mailbox, w, done_in_w);
        }
    }

    fn post_envelope(
        &mut self,
        tx: &mpsc::Sender<Vec<u8>>,
        dst: InboxId,
        mailbox: &MailboxKeyPub,
        w: FrameWriter,
        seqs: Vec<u64>,
    ) -> bool {
        let frames = w.finish();
        let blob = match envelope::seal(
            &self.local,
            self.node.identity().signing_key(),
            &self.peer,
            mailbox,
            &frames,
        ) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(contact = %self.name, "cannot seal an envelope: {e}");
                for s in &seqs {
                    self.enveloped.remove(s);
                }
                return false;
            }
        };
        let id = envelope::envelope_id(&blob);
        let mut frame = Vec::with_capacity(blob.len() + 22);
        frame_prefix(
            HopKind::Relay {
                dst,
                relay: [0; 32],
            },
            true,
            &mut frame,
        );
        frame.extend_from_slice(&blob);
        patch_len(&mut frame);
        if tx.try_send(frame).is_err() {
            for s in &seqs {
                self.enveloped.remove(s);
            }
            return false;
        }
        self.pending_env.insert(id, seqs);
        true
    }

    /// With no live session, our ACK reaches the peer sealed in an envelope.
    fn send_ack_envelope(&mut self) {
        if self.receiver.delivered_upto() == 0 {
            return;
        }
        let Some((tx, dst, mailbox)) = self.envelope_target() else {
            return;
        };
        let mut w = envelope::envelope_frame_writer();
        if w.ack(self.receiver.delivered_upto()) {
            self.post_envelope(&tx, dst, &mailbox, w, Vec::new());
        }
        self.env_ack_due = false;
    }

    fn send_relay_ack(&mut self, hop: u64, id: [u8; ENVELOPE_ID_LEN]) {
        if let Some(h) = self.hops.iter().find(|h| h.id == hop) {
            let _ = h.tx.try_send(HopFrame::Ack { envelope_id: id }.to_vec());
        }
    }

    async fn mark_queued(&mut self, seqs: Vec<u64>) -> Result<(), NodeError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let name = self.name.clone();
        let s2 = seqs.clone();
        let changed = self
            .node
            .db()
            .write(move |c| {
                let mut changed = Vec::new();
                for s in s2 {
                    if store::outbox_status(c, &name, s)?.as_deref() == Some(store::status::PENDING)
                        && store::outbox_set_status(c, &name, s, store::status::QUEUED, unix_now())?
                    {
                        changed.push(s);
                    }
                }
                Ok(changed)
            })
            .await?;
        for seq in changed {
            self.node.emit(NodeEvent::Queued {
                to: self.name.clone(),
                id: format!("{}:{seq}", self.name),
                seq,
            });
        }
        Ok(())
    }

    async fn store_received(&mut self, items: Vec<Complete>) -> Result<(), NodeError> {
        let seqs: Vec<u64> = items.iter().map(|m| m.seq).collect();
        // the commitments are durable in the audit log before the messages are stored and acked
        for m in &items {
            self.node.inner.audit.append(
                &self.name,
                AuditEvent::MsgReceived {
                    seq: m.seq,
                    commitment: liaison_audit::commitment(&m.content.salt, &m.content.body),
                    ciphertext_hash: m.ct_hash,
                },
            );
        }
        if !self.node.inner.audit.persist(&self.name).await {
            tracing::warn!(contact = %self.name, "the audit log could not record received messages");
        }
        let new_upto = self.receiver.delivered_upto_with(&seqs);
        let mut rows = Vec::with_capacity(items.len());
        let mut contents: HashMap<u64, MessageContent> = HashMap::with_capacity(items.len());
        for Complete {
            seq,
            content: c,
            encoded: plain,
            ..
        } in items
        {
            let aad = atrest::body_aad(&self.name, Direction::Received, seq);
            // the reassembled bytes are the encoding just decoded: seal them as they are
            let body = atrest::seal_body(self.node.data_key(), &aad, &plain)?;
            rows.push(store::Received { seq, body });
            contents.insert(seq, c);
        }
        let name = self.name.clone();
        self.node
            .db()
            .write(move |c| store::inbox_store(c, &name, &rows, new_upto, unix_now()))
            .await?;
        let mut deliverable = Vec::new();
        for s in seqs {
            for d in self.receiver.mark_stored(s) {
                deliverable.push(d);
            }
        }
        for seq in deliverable {
            let content = match contents.remove(&seq) {
                Some(c) => c,
                None => {
                    // stored earlier out of order: read it back
                    let name = self.name.clone();
                    let row = self
                        .node
                        .db()
                        .write(move |c| store::inbox_get(c, &name, seq))
                        .await?;
                    match row {
                        Some(r) => open_content(
                            self.node.data_key(),
                            &self.name,
                            Direction::Received,
                            seq,
                            &r.body,
                        )?,
                        None => continue,
                    }
                }
            };
            self.node.emit(message_event(&self.name, seq, &content));
        }
        self.ack_due = true;
        Ok(())
    }

    async fn commit_acked(&mut self, upto: u64) -> Result<(), NodeError> {
        let name = self.name.clone();
        let changed = self
            .node
            .db()
            .write(move |c| store::outbox_acked(c, &name, upto, unix_now()))
            .await?;
        self.sender.on_ack(Instant::now(), upto);
        self.enveloped.retain(|s| *s > upto);
        if !changed.is_empty() {
            self.node
                .inner
                .audit
                .append(&self.name, AuditEvent::MsgAcked { seq: upto });
        }
        for seq in changed {
            self.node.emit(NodeEvent::Delivered {
                to: self.name.clone(),
                id: format!("{}:{seq}", self.name),
                seq,
            });
        }
        Ok(())
    }

    async fn process_events(&mut self) -> Result<(), NodeError> {
        while let Some(ev) = self.line.poll_event() {
            match ev {
                LineEvent::PersistSentTs(ts) => {
                    self.session_initiated = true;
                    if !self.was_ready {
                        self.log_offer(CallDirection::Outgoing);
                    }
                    let name = self.name.clone();
                    self.node
                        .db()
                        .write(move |c| store::set_hs_sent_ts(c, &name, &ts.0))
                        .await?;
                }
                LineEvent::PersistAcceptedTs(ts) => {
                    self.session_initiated = false;
                    if !self.was_ready {
                        self.log_offer(CallDirection::Incoming);
                    }
                    let name = self.name.clone();
                    self.node
                        .db()
                        .write(move |c| store::set_hs_accepted_ts(c, &name, &ts.0))
                        .await?;
                }
                LineEvent::Transmit(blob) => {
                    if let Some(h) = self.send_hop() {
                        let mut frame = Vec::with_capacity(blob.len() + 22);
                        frame_prefix(h.kind, false, &mut frame);
                        frame.extend_from_slice(&blob);
                        patch_len(&mut frame);
                        if h.tx.try_send(frame).is_err() {
                            tracing::debug!(contact = %self.name, "hop queue full; handshake blob dropped");
                        }
                    }
                }
                LineEvent::Ready { fresh } => {
                    if fresh {
                        self.sender.rewind();
                    }
                    self.mbox_due = true;
                    self.peer_away = false;
                    self.relay_attempt_since = None;
                }
                LineEvent::Unreachable => {
                    self.line.stand_down();
                    self.node.emit(NodeEvent::Unreachable {
                        contact: self.name.clone(),
                    });
                }
                LineEvent::Anomaly(a) => self.note_anomaly(Instant::now(), a.name()),
            }
        }
        let ready = self.line.is_ready(Instant::now());
        if ready && !self.was_ready {
            let direction = if self.session_initiated {
                CallDirection::Outgoing
            } else {
                CallDirection::Incoming
            };
            // every started call was offered (a session can also come back on a rekey
            // handshake begun while the previous one was still usable)
            self.log_offer(direction);
            self.node.inner.audit.append(
                &self.name,
                AuditEvent::CallStarted {
                    call: self.call,
                    direction,
                },
            );
            self.node.inner.audit.session_up(&self.name);
            self.node.emit(NodeEvent::LineUp {
                contact: self.name.clone(),
            });
        } else if !ready && self.was_ready {
            let reason = self.end_reason.take().unwrap_or(CallEndReason::Timeout);
            self.end_call(reason);
        }
        self.was_ready = ready;
        Ok(())
    }

    fn build_data_frame(&mut self, now: Instant, kind: HopKind) -> Option<Vec<u8>> {
        let mut w = FrameWriter::default();
        let with_ack = self.ack_due && w.ack(self.receiver.delivered_upto());
        let mut with_mbox = false;
        if self.mbox_due
            && let Some(bytes) = self
                .node
                .current_mailbox_key()
                .and_then(|k| k.encode().ok())
        {
            with_mbox = w.raw(FRAME_MBOX_KEY, &bytes);
        }
        let mut audit_sent = 0;
        while let Some(m) = self.audit_out.get(audit_sent) {
            if !w.raw(liaison_wire::consts::FRAME_AUDIT, m) {
                break;
            }
            audit_sent += 1;
        }
        let n = self.sender.fill(now, &mut w);
        if n == 0 && !with_ack && !with_mbox && audit_sent == 0 {
            self.mbox_due = false;
            return None;
        }
        let pt = w.finish();
        let mut frame =
            Vec::with_capacity(22 + liaison_wire::consts::DATA_HEADER_LEN + pt.len() + 16);
        frame_prefix(kind, false, &mut frame);
        match self.line.seal(now, wall(), &pt, n > 0, &mut frame) {
            Ok(()) => {
                if with_ack {
                    self.ack_due = false;
                }
                if with_mbox {
                    self.mbox_due = false;
                }
                self.audit_out.drain(..audit_sent);
                patch_len(&mut frame);
                Some(frame)
            }
            Err(_) => {
                // nothing went out: send it all again once a session is ready
                self.sender.rewind();
                None
            }
        }
    }
}

/// A message whose last fragment arrived, waiting to be logged, stored and acknowledged.
struct Complete {
    seq: u64,
    content: MessageContent,
    /// Its encoding (what is sealed at rest).
    encoded: Vec<u8>,
    /// SHA-256 of the blob (DATA or envelope) that carried its last fragment.
    ct_hash: [u8; 32],
}

#[derive(Default)]
struct Batch {
    to_store: Vec<Complete>,
    acked_upto: Option<u64>,
    peer_mbox: Option<MailboxKeyPub>,
    relay_acks: Vec<(u64, [u8; ENVELOPE_ID_LEN])>,
    via_envelope: bool,
}

fn patch_len(frame: &mut [u8]) {
    let len = (frame.len().saturating_sub(4)) as u32;
    if let Some(p) = frame.get_mut(..4) {
        p.copy_from_slice(&len.to_le_bytes());
    }
}

/// AAD for a sealed pairing secret.
pub fn pairing_aad(contact: &str) -> Vec<u8> {
    let mut a = b"liaison/1 pairing".to_vec();
    a.extend_from_slice(&(contact.len() as u32).to_le_bytes());
    a.extend_from_slice(contact.as_bytes());
    a
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
