//! One task per line: the I/O shell around the sans-IO line engine
//! ([`liaison_proto::conn::Conn`]). It moves bytes between the engine and the hops, runs the
//! store and the audit log for the engine's events, and reports to users; it makes no protocol
//! decision.
//!
//! - `mod.rs` (this file): the inputs and the select loop;
//! - `hops`: dialing the contact's address with backoff, relay registration;
//! - `persist`: what each engine event does to the store (and in which order);
//! - `calls`: the engine's audit records and anomalies into the audit log and user events.
//!
//! The engine enforces the order of effects (store before ACK, handshake timestamps durable
//! before the handshake message, delivered only after the commit); this shell answers each
//! event once its transaction has committed. Frames go out through `try_reserve()` on the
//! chosen hop's bounded queue, so inbound traffic (and its acks) keeps flowing under
//! backpressure.

mod calls;
mod hops;
mod persist;

use crate::node::{LineStatus, Node, NodeError, NodeEvent, unix_ms};
use crate::relay_client::RelayClient;
use crate::store::{ContactRow, OutboxRow};
use liaison_proto::conn::{Conn, ConnConfig, Event, Now, PathId, PathKind};
use liaison_wire::consts::ENVELOPE_ID_LEN;
use liaison_wire::frame::MessageContent;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

pub use calls::{audit_anomaly, audit_event, message_event};
pub use persist::{pairing_aad, received_digest, sent_commitment};

/// Inputs of a line task.
#[derive(Debug)]
pub enum LineInput {
    /// Stop the line: the audit log could not record something the line would act on.
    Stop,
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
        /// The relay's hop id.
        hop: u64,
        /// Error code.
        code: u16,
        /// `SHA-256(blob)[..16]` of the post.
        reference: [u8; ENVELOPE_ID_LEN],
    },
    /// A relay durably stored one of our envelopes.
    EnvelopeStored {
        /// The relay's hop id.
        hop: u64,
        /// Its id.
        reference: [u8; ENVELOPE_ID_LEN],
    },
    /// A hop to the peer is up (or its relay subscribed again); frames for it go to `tx`.
    HopUp {
        /// Hop id.
        hop: u64,
        /// The hop writer's queue (encoded hop frames).
        tx: mpsc::Sender<Vec<u8>>,
        /// What it is.
        kind: PathKind,
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
        /// Which dial (one given up since is ignored).
        generation: u64,
        /// Error text, if it failed.
        error: Option<String>,
        /// The peer refused our key.
        refused: bool,
    },
    /// Audit messages (checkpoint offers, cosignatures, receipts) to send to the peer.
    AuditOut(Vec<Vec<u8>>),
    /// The contact's stored row changed (pairing secret, keys, address, relay, live-only):
    /// apply it now; answer once applied.
    ContactChanged(Box<ContactRow>, Option<oneshot::Sender<()>>),
    /// Report status.
    Status(oneshot::Sender<LineStatus>),
    /// The node is stopping: tell the peer (`CLOSE(bye)` on the live session), detach every
    /// hop, and answer once the goodbye is queued.
    Bye(oneshot::Sender<()>),
}

struct HopLink {
    id: u64,
    tx: mpsc::Sender<Vec<u8>>,
    kind: PathKind,
}

/// How long a goodbye may wait for room on a busy hop.
const BYE_GRACE: Duration = Duration::from_millis(200);
/// Most inputs handled before the engine's events are processed (stores batch across them).
const MAX_BATCH: usize = 256;

/// The current time for the engine.
pub(crate) fn now() -> Now {
    Now {
        at: Instant::now(),
        unix_ms: unix_ms(),
    }
}

/// A line's durable state beside its contact row, as the node loads it.
pub(crate) struct StoredLine {
    /// Our unacknowledged messages.
    pub(crate) unacked: Vec<OutboxRow>,
    /// The peer's messages stored above `delivered_upto`, with their digests.
    pub(crate) stored_ahead: Vec<(u64, [u8; 16])>,
    /// The digest of the stored message `delivered_upto`.
    pub(crate) delivered_digest: [u8; 16],
    /// Envelopes sealed earlier and still needed.
    pub(crate) posted: Vec<liaison_proto::conn::SealedEnvelope>,
}

pub(crate) struct LineTask {
    node: Node,
    name: String,
    conn: Conn,
    hops: Vec<HopLink>,
    tx_self: mpsc::Sender<LineInput>,
    rx: mpsc::Receiver<LineInput>,
    dial: hops::Dialer,
    relays: hops::Registrations,
    /// Contents of messages stored but not yet shown (delivery is in seq order).
    contents: HashMap<u64, MessageContent>,
    calls: calls::Reporter,
    last_touch: Option<Instant>,
    /// A path whose queue was full: wait for room on it.
    blocked: Option<PathId>,
    /// When to look for a new own mailbox key to advertise (keys are made daily).
    mbox_check_at: Instant,
    row: ContactRow,
}

/// How often a line looks for a new mailbox key of ours to advertise.
const MAILBOX_CHECK_EVERY: Duration = Duration::from_secs(3600);

impl LineTask {
    pub(crate) fn new(
        node: Node,
        row: ContactRow,
        stored: StoredLine,
        tx_self: mpsc::Sender<LineInput>,
        rx: mpsc::Receiver<LineInput>,
    ) -> Result<Self, NodeError> {
        let StoredLine {
            unacked,
            stored_ahead,
            delivered_digest,
            posted,
        } = stored;
        let mut msgs = Vec::with_capacity(unacked.len());
        for o in unacked {
            let plain = persist::open_sent(&node, &row.name, o.seq, &o.body)?;
            msgs.push((o.seq, Arc::from(plain.as_slice())));
        }
        let cfg = ConnConfig {
            local: node.identity().local_keys(),
            signing: node.identity().signing_key().clone(),
            peer: persist::peer_keys(&node, &row)?,
            card_mailbox: persist::card_mailbox(&row),
            peer_mailbox: persist::peer_mailbox(&row),
            own_mailbox: node.current_mailbox_key(),
            live_only: row.live_only,
            hs_sent_ts: liaison_proto::handshake::Tai64N(row.hs_sent_ts),
            hs_accepted_ts: liaison_proto::handshake::Tai64N(row.hs_accepted_ts),
            next_seq: row.next_seq,
            acked_upto: row.acked_upto,
            unacked: msgs,
            delivered_upto: row.delivered_upto,
            delivered_digest,
            stored_ahead,
            posted,
        };
        Ok(LineTask {
            dial: hops::Dialer::new(row.addr.clone()),
            relays: hops::Registrations::new(row.relay.clone()),
            calls: calls::Reporter::default(),
            name: row.name.clone(),
            conn: Conn::new(cfg),
            node,
            hops: Vec::new(),
            tx_self,
            rx,
            contents: HashMap::new(),
            last_touch: None,
            blocked: None,
            mbox_check_at: Instant::now() + MAILBOX_CHECK_EVERY,
            row,
        })
    }

    pub(crate) async fn run(mut self) {
        let token = self.node.shutdown_token();
        if let Err(e) = persist::import_key_events(&self.node, &self.name, self.row.identity).await
        {
            tracing::warn!(contact = %self.name, "cannot log key events: {e}");
        }
        let stored_relay = self.row.relay.clone();
        for rc in self.node.relays_for(stored_relay.as_deref()) {
            self.register(rc).await;
        }
        let mut failed = false;
        loop {
            if self.dial.due(&self.conn, self.has_direct()) {
                self.start_dial();
            }
            if self.flush().await.is_err() {
                failed = true;
                break;
            }
            let deadline = [
                self.conn.poll_timeout(),
                self.dial.deadline(&self.conn, self.has_direct()),
                self.relays.deadline(),
                Some(self.mbox_check_at),
            ]
            .into_iter()
            .flatten()
            .min();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                    None => std::future::pending().await,
                }
            };
            let blocked = self
                .blocked
                .and_then(|p| self.hops.iter().find(|h| h.id == p))
                .map(|h| (h.id, h.tx.clone()));
            let room = async move {
                match blocked {
                    Some((id, tx)) => (id, tx.reserve_owned().await.ok()),
                    None => std::future::pending().await,
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
                (id, permit) = room => {
                    self.blocked = None;
                    match permit {
                        Some(permit) => {
                            let n = now();
                            if self.conn.next_transmit_path(n) == Some(id)
                                && let Some(t) = self.conn.poll_transmit(n)
                            {
                                self.write(t, Some(permit));
                            }
                        }
                        None => self.hop_gone(id),
                    }
                }
                _ = sleep => {
                    let n = now();
                    self.conn.handle_timeout(n);
                    if n.at >= self.mbox_check_at {
                        self.mbox_check_at = n.at + MAILBOX_CHECK_EVERY;
                        if let Some(k) = self.node.current_mailbox_key() {
                            self.conn.set_own_mailbox_key(k);
                        }
                    }
                    if self.relays.refresh_due() {
                        // inbox ids roll over daily: subscribe the current window again
                        for rc in self.relays.take() {
                            self.register(rc).await;
                        }
                    }
                }
            }
        }
        if failed {
            self.conn.fail();
        } else {
            self.conn.close(now());
        }
        // the last audit records (the call's end); the node flushes the log after every line
        let _ = self.flush_events().await;
        tracing::debug!(contact = %self.name, "line task stopped");
    }

    fn has_direct(&self) -> bool {
        self.conn.has_direct_path()
    }

    /// The engine found the path we send on silent: get a fresh one.
    fn path_stalled(&mut self, path: PathId) {
        let Some(kind) = self.hops.iter().find(|h| h.id == path).map(|h| h.kind) else {
            return;
        };
        tracing::info!(contact = %self.name, "path {path} ({kind:?}) is silent: replacing it");
        match kind {
            PathKind::Direct => self.dial.replace_stalled(),
            PathKind::Relay { .. } => self.relays.probe(path),
        }
    }

    /// Handles one input and whatever else is already queued (stores batch across them).
    async fn handle_inputs(&mut self, first: LineInput) -> Result<(), NodeError> {
        let mut next = Some(first);
        let mut n = 0;
        while let Some(input) = next.take() {
            n += 1;
            self.handle_input(input).await?;
            if n >= MAX_BATCH {
                break;
            }
            next = self.rx.try_recv().ok();
        }
        Ok(())
    }

    async fn handle_input(&mut self, input: LineInput) -> Result<(), NodeError> {
        let n = now();
        match input {
            LineInput::Blob { hop, data } => {
                self.touch(n.at);
                self.conn.handle_blob(n, hop, &data);
            }
            LineInput::RelayDeliver {
                hop,
                envelope_id,
                blob,
            } => {
                self.touch(n.at);
                let ring = self
                    .node
                    .inner
                    .mailbox
                    .lock()
                    .map_err(|_| NodeError::Other("mailbox ring poisoned".into()))?;
                self.conn
                    .handle_relay_deliver(n, hop, envelope_id, &blob, |id| ring.find(id));
            }
            LineInput::RelayError {
                hop,
                code,
                reference,
            } => self.conn.relay_error(n, hop, code, reference),
            LineInput::EnvelopeStored { hop, reference } => {
                self.conn.relay_stored(n, hop, reference)
            }
            LineInput::HopUp { hop, tx, kind } => {
                tracing::debug!(contact = %self.name, "hop {hop} attached ({kind:?})");
                match self.hops.iter_mut().find(|h| h.id == hop) {
                    Some(h) => h.tx = tx,
                    None => self.hops.push(HopLink { id: hop, tx, kind }),
                }
                self.conn.path_up(n, hop, kind);
                if kind == PathKind::Direct && self.dial.replacing() {
                    // the fresh hop replaces the stalled ones
                    self.dial.replaced();
                    let old: Vec<u64> = self
                        .hops
                        .iter()
                        .filter(|h| h.kind == PathKind::Direct && h.id != hop)
                        .map(|h| h.id)
                        .collect();
                    for id in old {
                        self.hop_gone(id);
                    }
                }
            }
            LineInput::HopDown { hop } => {
                tracing::debug!(contact = %self.name, "hop {hop} detached");
                self.hop_gone(hop);
            }
            LineInput::Submitted { seq, encoded } => self.conn.submit(n, seq, encoded),
            LineInput::Connect { addr, relay } => {
                self.dial.want(addr);
                if let Some(rc) = relay {
                    self.register(rc).await;
                }
                self.conn.connect(n);
            }
            LineInput::DialDone {
                generation,
                error,
                refused,
            } => {
                if !self.dial.is_current(generation) {
                    tracing::debug!(contact = %self.name, "an abandoned dial ended");
                    return Ok(());
                }
                if let Some(error) = self.dial.done(error) {
                    tracing::info!(contact = %self.name, "cannot connect: {error}");
                    self.node.emit(NodeEvent::DialFailed {
                        contact: self.name.clone(),
                        error,
                        refused,
                        relay: None,
                    });
                }
            }
            LineInput::AuditOut(msgs) => self.conn.queue_audit(msgs),
            LineInput::Stop => {
                tracing::warn!(contact = %self.name, "line stopped: the audit log failed");
                return Err(NodeError::Audit("line stopped".into()));
            }
            LineInput::ContactChanged(row, done) => {
                self.contact_changed(*row).await?;
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
            LineInput::Bye(done) => {
                self.say_bye().await;
                let _ = done.send(());
            }
            LineInput::Status(reply) => {
                let s = self.conn.status(n);
                let _ = reply.send(LineStatus {
                    up: s.up,
                    hops: s.paths,
                    unacked: s.unacked,
                    delivered_upto: s.delivered_upto,
                    acked_upto: s.acked_upto,
                });
            }
        }
        Ok(())
    }

    /// Processes the engine's events (answering each once its effect is durable), then writes
    /// what is due while the hops have room.
    async fn flush(&mut self) -> Result<(), NodeError> {
        loop {
            self.flush_events().await?;
            let n = now();
            let Some(path) = self.conn.next_transmit_path(n) else {
                return Ok(());
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
            match tx.try_reserve_owned() {
                Ok(permit) => {
                    if let Some(t) = self.conn.poll_transmit(n) {
                        self.write(t, Some(permit));
                    }
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.blocked = Some(path);
                    // what is queued for other paths still goes out when this one has room
                    self.flush_events().await?;
                    return Ok(());
                }
                Err(mpsc::error::TrySendError::Closed(_)) => self.hop_gone(path),
            }
        }
    }

    async fn flush_events(&mut self) -> Result<(), NodeError> {
        loop {
            let mut batch: Vec<Event> = Vec::new();
            while let Some(ev) = self.conn.poll_event() {
                batch.push(ev);
            }
            if batch.is_empty() {
                return Ok(());
            }
            persist::apply(self, batch).await?;
        }
    }

    fn write(
        &mut self,
        t: liaison_proto::conn::Transmit,
        permit: Option<mpsc::OwnedPermit<Vec<u8>>>,
    ) {
        if !t.frame.is_empty() {
            match permit {
                Some(p) => {
                    p.send(t.frame);
                }
                None => {
                    if let Some(h) = self.hops.iter().find(|h| h.id == t.path) {
                        let _ = h.tx.try_send(t.frame);
                    }
                }
            }
        }
        if t.close_after {
            // dropping our side of a direct hop closes it once the writer drains
            self.hops.retain(|h| h.id != t.path);
        }
    }

    fn hop_gone(&mut self, hop: u64) {
        self.hops.retain(|h| h.id != hop);
        if self.blocked == Some(hop) {
            self.blocked = None;
        }
        self.conn.path_down(now(), hop);
    }

    fn touch(&mut self, now: Instant) {
        if self
            .last_touch
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(10))
        {
            return;
        }
        self.last_touch = Some(now);
        persist::touch(&self.node, &self.name);
    }
}
