//! One task per line: drives a contact's [`Line`] (sessions) and [`Sender`]/[`Receiver`]
//! (delivery) with real time, the store and the attached hops.
//!
//! Order of effects, which is what makes delivery exactly-once across crashes:
//! - received messages are stored (with the new `delivered_upto`) in one committed
//!   transaction **before** the ACK that covers them is sent;
//! - handshake timestamps are persisted before the handshake message that carries them;
//! - our messages are in the outbox before they are first sent, and stay there until the
//!   peer's ACK is committed as `delivered`.
//!
//! The task never blocks on a hop: frames go out through `reserve()` on the newest hop's
//! bounded queue, so inbound traffic (and its acks) keeps flowing under backpressure.

use crate::atrest::{self, Direction};
use crate::node::{LineStatus, Node, NodeError, NodeEvent, open_content, unix_now};
use crate::store::{self, ContactRow, OutboxRow};
use liaison_proto::delivery::{FragmentOutcome, Receiver, Sender};
use liaison_proto::handshake::Tai64N;
use liaison_proto::keys::PeerKeys;
use liaison_proto::line::{Line, LineEvent, Received};
use liaison_wire::frame::{Frame, FrameWriter, Frames, MSG_KIND_FILE, MessageContent};
use liaison_wire::hop::{ty as hop_ty, write_blob_header};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

/// Inputs of a line task.
#[derive(Debug)]
pub enum LineInput {
    /// A blob arrived on hop `hop`.
    Blob {
        /// Hop id.
        hop: u64,
        /// The blob.
        data: Vec<u8>,
    },
    /// A hop to the peer is up; frames for it go to `tx`.
    HopUp {
        /// Hop id.
        hop: u64,
        /// The hop writer's queue.
        tx: mpsc::Sender<Vec<u8>>,
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
    /// The user wants the line up (dial `addr` or the stored address).
    Connect {
        /// Address override.
        addr: Option<String>,
    },
    /// A dial attempt ended.
    DialDone {
        /// Error text, if it failed.
        error: Option<String>,
        /// The peer refused our key.
        refused: bool,
    },
    /// Report status.
    Status(oneshot::Sender<LineStatus>),
}

struct HopLink {
    id: u64,
    tx: mpsc::Sender<Vec<u8>>,
}

const DIAL_BACKOFF_MIN: Duration = Duration::from_secs(1);
const DIAL_BACKOFF_MAX: Duration = Duration::from_secs(60);
const ANOMALY_LOG_EVERY: Duration = Duration::from_secs(60);
const MAX_BATCH: usize = 256;

pub(crate) struct LineTask {
    node: Node,
    name: String,
    hop_pub: [u8; 32],
    line: Line,
    sender: Sender,
    receiver: Receiver,
    hops: Vec<HopLink>,
    ack_due: bool,
    tx_self: mpsc::Sender<LineInput>,
    rx: mpsc::Receiver<LineInput>,
    stored_addr: Option<String>,
    dial_addr: Option<String>,
    want_dial: bool,
    dialing: bool,
    next_dial: Option<Instant>,
    backoff: Duration,
    was_ready: bool,
    anomalies: HashMap<&'static str, (Instant, u64)>,
    last_touch: Option<Instant>,
    pt: Vec<u8>,
}

fn wall() -> Tai64N {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Tai64N::from_unix(d.as_secs(), d.subsec_nanos())
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
        let line = Line::new(
            node.identity().local_keys(),
            peer,
            Tai64N(row.hs_sent_ts),
            Tai64N(row.hs_accepted_ts),
        );
        let mut sender = Sender::new(row.acked_upto);
        for o in unacked {
            let aad = atrest::body_aad(&row.name, Direction::Sent, o.seq);
            let plain = atrest::open_body(node.data_key(), &aad, &o.body)?;
            sender.push(o.seq, Arc::from(plain.as_slice()));
        }
        let receiver = Receiver::new(row.delivered_upto, ahead);
        Ok(LineTask {
            node,
            name: row.name,
            hop_pub: row.hop,
            line,
            sender,
            receiver,
            hops: Vec::new(),
            ack_due: false,
            tx_self,
            rx,
            stored_addr: row.addr,
            dial_addr: None,
            want_dial: false,
            dialing: false,
            next_dial: None,
            backoff: DIAL_BACKOFF_MIN,
            was_ready: false,
            anomalies: HashMap::new(),
            last_touch: None,
            pt: Vec::with_capacity(65_536),
        })
    }

    fn next_deadline(&self) -> Option<Instant> {
        [
            self.line.poll_timeout(),
            self.sender.poll_timeout(),
            self.next_dial.filter(|_| self.should_dial()),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn should_dial(&self) -> bool {
        self.hops.is_empty()
            && !self.dialing
            && (self.want_dial || self.sender.unacked_count() > 0)
            && self
                .dial_addr
                .as_ref()
                .or(self.stored_addr.as_ref())
                .is_some()
    }

    fn wants_to_send(&self, now: Instant) -> bool {
        !self.hops.is_empty()
            && self.line.is_ready(now)
            && (self.ack_due || self.sender.has_pending())
    }

    pub(crate) async fn run(mut self) {
        let token = self.node.shutdown_token();
        loop {
            let now = Instant::now();
            if self.should_dial() && self.next_dial.is_none_or(|t| t <= now) {
                self.start_dial();
            }
            if !self.hops.is_empty()
                && self.sender.has_pending()
                && !self.line.is_ready(now)
                && !self.line.is_handshaking()
            {
                self.line.connect(now, wall());
                if self.process_events().await.is_err() {
                    break;
                }
            }
            let deadline = self.next_deadline();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                    None => std::future::pending().await,
                }
            };
            let send_ready = self.wants_to_send(now);
            let hop_tx = self.hops.last().map(|h| h.tx.clone());
            let reserve = async {
                match (&hop_tx, send_ready) {
                    (Some(tx), true) => tx.reserve().await.ok(),
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = token.cancelled() => break,
                input = self.rx.recv() => {
                    let Some(input) = input else { break };
                    if self.handle_inputs(input).await.is_err() {
                        break;
                    }
                }
                permit = reserve => {
                    match permit {
                        Some(permit) => {
                            if let Some(frame) = self.build_data_frame(Instant::now()) {
                                permit.send(frame);
                            }
                        }
                        None => {
                            // the hop writer is gone
                            if let Some(h) = self.hops.pop() {
                                tracing::debug!(contact = %self.name, "hop {} closed", h.id);
                            }
                        }
                    }
                }
                _ = sleep => {
                    let now = Instant::now();
                    self.line.handle_timeout(now, wall());
                    self.sender.handle_timeout(now);
                }
            }
            if self.process_events().await.is_err() {
                break;
            }
        }
        tracing::debug!(contact = %self.name, "line task stopped");
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
        let mut to_store: Vec<(u64, MessageContent)> = Vec::new();
        let mut acked_upto: Option<u64> = None;
        let mut next = Some(first);
        let mut n = 0;
        while let Some(input) = next.take() {
            n += 1;
            self.handle_input(input, &mut to_store, &mut acked_upto)?;
            if n >= MAX_BATCH {
                break;
            }
            next = self.rx.try_recv().ok();
        }
        if !to_store.is_empty() {
            self.store_received(to_store).await?;
        }
        if let Some(upto) = acked_upto {
            self.commit_acked(upto).await?;
        }
        Ok(())
    }

    fn handle_input(
        &mut self,
        input: LineInput,
        to_store: &mut Vec<(u64, MessageContent)>,
        acked_upto: &mut Option<u64>,
    ) -> Result<(), NodeError> {
        let now = Instant::now();
        match input {
            LineInput::Blob { hop, data } => {
                let mut pt = std::mem::take(&mut self.pt);
                if self.line.handle_blob(now, &data, &mut pt) == Received::Plaintext {
                    self.touch(now);
                    self.on_plaintext(now, hop, &pt, to_store, acked_upto);
                }
                self.pt = pt;
            }
            LineInput::HopUp { hop, tx } => {
                tracing::debug!(contact = %self.name, "hop {hop} attached");
                self.hops.push(HopLink { id: hop, tx });
                self.backoff = DIAL_BACKOFF_MIN;
                self.next_dial = None;
                if self.want_dial || self.sender.unacked_count() > 0 {
                    // a new hop may mean the peer restarted and lost its sessions: confirm
                    // with a fresh handshake (the current session keeps working meanwhile)
                    self.line.rehandshake(now, wall());
                }
            }
            LineInput::HopDown { hop } => {
                self.hops.retain(|h| h.id != hop);
                tracing::debug!(contact = %self.name, "hop {hop} detached");
            }
            LineInput::Submitted { seq, encoded } => {
                self.sender.push(seq, encoded);
                if !self.hops.is_empty() && !self.line.is_ready(now) {
                    self.line.connect(now, wall());
                }
            }
            LineInput::Connect { addr } => {
                if addr.is_some() {
                    self.dial_addr = addr;
                }
                self.want_dial = true;
                self.next_dial = None;
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
                    });
                }
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

    fn on_plaintext(
        &mut self,
        now: Instant,
        hop: u64,
        pt: &[u8],
        to_store: &mut Vec<(u64, MessageContent)>,
        acked_upto: &mut Option<u64>,
    ) {
        for frame in Frames::new(pt) {
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    // authenticated but malformed: the peer's software is broken
                    tracing::warn!(contact = %self.name, "malformed frames from the peer: {e}");
                    self.note_anomaly(now, "malformed-frame");
                    self.close_hop(hop, liaison_wire::frame::close_reason::MALFORMED);
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
                                Ok(c) => to_store.push((seq, c)),
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
                            self.close_hop(hop, liaison_wire::frame::close_reason::MISBEHAVING);
                            return;
                        }
                    }
                }
                Frame::Ack { delivered_upto } => {
                    if delivered_upto > self.sender.acked_upto() {
                        *acked_upto =
                            Some(acked_upto.map_or(delivered_upto, |a| a.max(delivered_upto)));
                    }
                }
                Frame::Close { reason } => {
                    tracing::info!(contact = %self.name, "peer closed the session (reason {reason})");
                }
                Frame::MboxKey(_) | Frame::Card(_) | Frame::Audit(_) => {
                    tracing::debug!(contact = %self.name, "ignoring a frame this version does not use yet");
                }
            }
        }
    }

    fn close_hop(&mut self, hop: u64, reason: u8) {
        let mut w = FrameWriter::default();
        w.raw(liaison_wire::consts::FRAME_CLOSE, &[reason]);
        let pt = w.finish();
        let mut frame = Vec::new();
        frame.extend_from_slice(&[0; 4]);
        frame.push(hop_ty::BLOB);
        if self
            .line
            .seal(Instant::now(), wall(), &pt, false, &mut frame)
            .is_ok()
        {
            patch_len(&mut frame);
            if let Some(h) = self.hops.iter().find(|h| h.id == hop) {
                let _ = h.tx.try_send(frame);
            }
        }
        // dropping our side of the hop closes it once the writer drains
        self.hops.retain(|h| h.id != hop);
    }

    fn note_anomaly(&mut self, now: Instant, kind: &'static str) {
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

    async fn store_received(&mut self, items: Vec<(u64, MessageContent)>) -> Result<(), NodeError> {
        let seqs: Vec<u64> = items.iter().map(|(s, _)| *s).collect();
        let new_upto = self.receiver.delivered_upto_with(&seqs);
        let mut rows = Vec::with_capacity(items.len());
        let mut contents: HashMap<u64, MessageContent> = HashMap::with_capacity(items.len());
        for (seq, c) in items {
            let aad = atrest::body_aad(&self.name, Direction::Received, seq);
            let plain = c
                .encode()
                .map_err(|e| NodeError::InvalidMessage(e.to_string()))?;
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
                    let name = self.name.clone();
                    self.node
                        .db()
                        .write(move |c| store::set_hs_sent_ts(c, &name, &ts.0))
                        .await?;
                }
                LineEvent::PersistAcceptedTs(ts) => {
                    let name = self.name.clone();
                    self.node
                        .db()
                        .write(move |c| store::set_hs_accepted_ts(c, &name, &ts.0))
                        .await?;
                }
                LineEvent::Transmit(blob) => {
                    let mut frame = Vec::with_capacity(blob.len() + 5);
                    write_blob_header(&mut frame, blob.len());
                    frame.extend_from_slice(&blob);
                    if let Some(h) = self.hops.last()
                        && h.tx.try_send(frame).is_err()
                    {
                        tracing::debug!(contact = %self.name, "hop queue full; handshake blob dropped");
                    }
                }
                LineEvent::Ready { fresh } => {
                    if fresh {
                        self.sender.rewind();
                    }
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
            self.node.emit(NodeEvent::LineUp {
                contact: self.name.clone(),
            });
        }
        self.was_ready = ready;
        Ok(())
    }

    fn build_data_frame(&mut self, now: Instant) -> Option<Vec<u8>> {
        let mut w = FrameWriter::default();
        let with_ack = self.ack_due && w.ack(self.receiver.delivered_upto());
        let n = self.sender.fill(now, &mut w);
        if n == 0 && !with_ack {
            return None;
        }
        let pt = w.finish();
        let mut frame =
            Vec::with_capacity(5 + liaison_wire::consts::DATA_HEADER_LEN + pt.len() + 16);
        frame.extend_from_slice(&[0; 4]);
        frame.push(hop_ty::BLOB);
        match self.line.seal(now, wall(), &pt, n > 0, &mut frame) {
            Ok(()) => {
                if with_ack {
                    self.ack_due = false;
                }
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
