//! The node's side of a relay: one task per pinned relay it uses, shared by every line that
//! meets its contact there.
//!
//! Lines register their contact's inbox ids (derived per pair, direction and day; see
//! `liaison_proto::inbox`): the ids they receive on are SUBSCRIBEd, the id they send to tells
//! which line a POST's answer belongs to. The task connects with this node's own hop key for
//! this relay (never the card's), reconnects with backoff, subscribes again after every
//! reconnect, and hands each line a relay "hop": blobs it sends become `POST(dst, store, blob)`
//! frames on the shared connection. `DELIVER`s go to the line owning the inbox; `ERR` and
//! `ACK` answers go to the line that posted (by `SHA-256(blob)[..16]`).

use crate::line::LineInput;
use crate::node::Node;
use crate::store::RelayRow;
use liaison_hop::HopKey;
use liaison_proto::conn::PathKind;
use liaison_wire::consts::{ENVELOPE_ID_LEN, INBOX_ID_LEN, MAX_SUBSCRIBE_INBOXES};
use liaison_wire::hop::{HopFrame, InboxId, err as hop_err};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// A connection attempt (to a relay, or a direct dial) not done within this long is joined by a
/// fresh one (see `liaison_hop::connect_racing`), at most [`RACE_MAX`] in all: a connection
/// attempt through an outage backs off, so the hop is back about a round trip after the path
/// is, whenever that is within the 12 s the attempts cover.
pub(crate) const RACE_EVERY: Duration = Duration::from_secs(1);
pub(crate) const RACE_MAX: usize = 12;

/// Posts whose answer we route back, at most this many remembered.
const PENDING_CAP: usize = 8192;
/// Live posts smaller than this are remembered (handshakes, acks, small messages), so that a
/// `NO_SUBSCRIBER` reaches their line; bulk DATA is not hashed.
const REMEMBER_LIVE_BELOW: usize = 4096;
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A line's registration at a relay.
#[derive(Debug)]
pub struct Registration {
    pub(crate) contact: String,
    pub(crate) line: mpsc::Sender<LineInput>,
    pub(crate) recv: Vec<InboxId>,
    pub(crate) send: InboxId,
}

#[derive(Debug)]
pub(crate) enum RelayCmd {
    Register(Registration),
    /// A line finds the connection `hop` silent: check it now (an echo through the relay),
    /// and replace it with a fresh one if the echo does not come back.
    Probe {
        hop: u64,
    },
}

/// A relay connection in use is checked by an echo through the relay (a live `POST` to an
/// inbox of its own, which the relay forwards back) once nothing arrived for this long.
const PROBE_AFTER: Duration = Duration::from_secs(1);
/// An echo not back within this long means the connection is stalled (a QUIC connection
/// through a cut backs its probes off exponentially): it is replaced with a fresh one. Long
/// enough for a few QUIC retransmissions on a lossy path (a false alarm costs a reconnect).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Echoes are sent only while the connection carried line traffic this recently, so an idle
/// relay connection costs nothing but QUIC's keep-alive.
const PROBE_WHILE_USED: Duration = Duration::from_secs(30);

/// The liveness check of one relay connection (see [`PROBE_AFTER`]).
struct Liveness {
    echo: InboxId,
    start: std::time::Instant,
    /// Milliseconds since `start` of the last line frame written (set by the writer task).
    last_write: Arc<std::sync::atomic::AtomicU64>,
    last_rx: std::time::Instant,
    last_line_rx: std::time::Instant,
    probe: Option<std::time::Instant>,
    forced: bool,
}

impl Liveness {
    fn new() -> Liveness {
        let now = std::time::Instant::now();
        Liveness {
            echo: liaison_proto::keys::random_bytes().unwrap_or([0x5a; INBOX_ID_LEN]),
            start: now,
            last_write: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            last_rx: now,
            last_line_rx: now,
            probe: None,
            forced: false,
        }
    }

    fn in_use(&self, now: std::time::Instant) -> bool {
        let wrote = self.start
            + Duration::from_millis(self.last_write.load(std::sync::atomic::Ordering::Relaxed));
        now.saturating_duration_since(wrote.max(self.last_line_rx)) <= PROBE_WHILE_USED
    }

    /// What the periodic check decides: `Some(true)` replace the connection, `Some(false)`
    /// send an echo, `None` nothing.
    fn check(&mut self, now: std::time::Instant) -> Option<bool> {
        if let Some(sent) = self.probe {
            return (now.saturating_duration_since(sent) >= PROBE_TIMEOUT).then_some(true);
        }
        let quiet = now.saturating_duration_since(self.last_rx) >= PROBE_AFTER;
        if self.forced || (quiet && self.in_use(now)) {
            self.forced = false;
            self.probe = Some(now);
            return Some(false);
        }
        None
    }

    /// An echo: a live `POST` to our own inbox, sized like a keepalive DATA blob.
    fn echo_frame(&self) -> Vec<u8> {
        let mut blob = vec![liaison_wire::consts::BLOB_DATA];
        blob.extend(
            liaison_proto::keys::random_bytes::<
                { liaison_wire::consts::DATA_HEADER_LEN - 1 + 64 + 16 },
            >()
            .unwrap_or([0; liaison_wire::consts::DATA_HEADER_LEN - 1 + 64 + 16]),
        );
        HopFrame::Post {
            dst: self.echo,
            store: false,
            blob: &blob,
        }
        .to_vec()
    }
}

/// Handle to a relay client task.
#[derive(Debug, Clone)]
pub struct RelayClient {
    tx: mpsc::Sender<RelayCmd>,
    state: tokio::sync::watch::Receiver<RelayState>,
}

/// What a relay client has achieved: connected, and how many contacts' inboxes it subscribed
/// on the current connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayState {
    /// The relay accepted us (READY) on the current connection.
    pub connected: bool,
    /// Contacts whose inbox ids were SUBSCRIBEd on it.
    pub subscribed: usize,
}

impl RelayClient {
    /// True if both handles drive the same relay client.
    pub(crate) fn same_as(&self, other: &RelayClient) -> bool {
        self.tx.same_channel(&other.tx)
    }

    /// A line found connection `hop` silent: check it at once, and replace it with a fresh
    /// one if the check fails. A new QUIC connection starts without the probe backoff a long
    /// cut leaves behind.
    pub(crate) fn probe(&self, hop: u64) {
        let _ = self.tx.try_send(RelayCmd::Probe { hop });
    }

    pub(crate) async fn register(&self, r: Registration) -> bool {
        self.tx.send(RelayCmd::Register(r)).await.is_ok()
    }

    /// Waits until the relay is connected with at least `contacts` contacts subscribed, or
    /// `limit` passes; returns the state reached.
    pub async fn wait_subscribed(&self, contacts: usize, limit: Duration) -> RelayState {
        let mut rx = self.state.clone();
        let fut = rx.wait_for(|s| s.connected && s.subscribed >= contacts);
        match tokio::time::timeout(limit, fut).await {
            Ok(Ok(s)) => *s,
            _ => *self.state.borrow(),
        }
    }
}

#[derive(Default)]
struct Pending {
    map: HashMap<[u8; ENVELOPE_ID_LEN], String>,
    order: VecDeque<[u8; ENVELOPE_ID_LEN]>,
}

impl Pending {
    fn insert(&mut self, id: [u8; ENVELOPE_ID_LEN], contact: String) {
        if self.map.insert(id, contact).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > PENDING_CAP {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }
    fn take(&mut self, id: &[u8; ENVELOPE_ID_LEN]) -> Option<String> {
        self.map.remove(id)
    }
}

#[derive(Default)]
struct Routes {
    by_send: HashMap<InboxId, String>,
    send_order: VecDeque<(String, InboxId)>,
    pending: Pending,
}

/// Send inbox ids remembered per contact (today's and the previous ones).
const SEND_IDS_KEPT: usize = 3;

struct Reg {
    line: mpsc::Sender<LineInput>,
    recv: Vec<InboxId>,
    send: InboxId,
}

/// Starts the client task for `row`.
pub(crate) fn start(node: Node, row: RelayRow, key: HopKey) -> RelayClient {
    let (tx, rx) = mpsc::channel(256);
    let (stx, srx) = tokio::sync::watch::channel(RelayState::default());
    let tracker = node.inner.tracker.clone();
    tracker.spawn(run(node, row, key, rx, stx));
    RelayClient { tx, state: srx }
}

fn subscribe_frames(ids: &[InboxId]) -> Vec<Vec<u8>> {
    ids.chunks(MAX_SUBSCRIBE_INBOXES)
        .map(|c| {
            let flat: Vec<u8> = c.iter().flat_map(|i| i.iter().copied()).collect();
            HopFrame::Subscribe(&flat).to_vec()
        })
        .collect()
}

async fn run(
    node: Node,
    row: RelayRow,
    key: HopKey,
    mut cmds: mpsc::Receiver<RelayCmd>,
    state: tokio::sync::watch::Sender<RelayState>,
) {
    let token = node.shutdown_token();
    let name = row.name.clone();
    let spki = liaison_hop::ed25519_spki(&row.relay_key);
    let relay_id: [u8; 32] = Sha256::digest(row.relay_key).into();
    let mut regs: HashMap<String, Reg> = HashMap::new();
    let routes = Arc::new(Mutex::new(Routes::default()));
    let mut backoff = BACKOFF_MIN;
    loop {
        // connect (taking registrations meanwhile)
        let hop = loop {
            let target = match crate::node::resolve(&row.addr).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::info!(relay = %name, "cannot resolve: {e}");
                    if !wait_or_register(&token, &mut cmds, &mut regs, &routes, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            let endpoint = match node.client_endpoint_for(target) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(relay = %name, "no endpoint: {e}");
                    return;
                }
            };
            let limits = node.inner.limits.clone();
            let attempt = liaison_hop::connect_racing(
                &endpoint, target, &key, &spki, &limits, RACE_EVERY, RACE_MAX,
            );
            let r = tokio::select! {
                _ = token.cancelled() => return,
                r = attempt => r,
            };
            match r {
                Ok(h) => break h,
                Err(e) => {
                    tracing::info!(relay = %name, "cannot connect: {e}");
                    let (error, refused) = match key_refusal(&e) {
                        Some(Refusal::OurKey) => (
                            format!(
                                "relay {name} ({}) refused this node's hop key: its operator \
                                 must add {} (see `liaison relay list`) to the relay's allow list",
                                row.addr,
                                hex::encode(liaison_hop::spki_hash(&key.spki()))
                            ),
                            true,
                        ),
                        Some(Refusal::TheirKey) => (
                            format!(
                                "relay {name} ({}) presented a key other than the one pinned \
                                 from its card: check the card (`liaison relay add {name} CARD \
                                 --replace`)",
                                row.addr
                            ),
                            true,
                        ),
                        None => (format!("relay {name} ({}): {e}", row.addr), false),
                    };
                    if refused {
                        // users see it as a DialFailed event (one clear line from send/call)
                        tracing::info!(relay = %name, "{error}");
                    }
                    // lines that asked for this relay while we were connecting hear it too
                    while let Ok(cmd) = cmds.try_recv() {
                        if let RelayCmd::Register(r) = cmd {
                            add_reg(&mut regs, &routes, r);
                        }
                    }
                    // Reported as an event, not as a `DialDone` to the lines: that input is
                    // the state of a line's own direct dial (in flight, backoff), which a
                    // relay's failure must not reset.
                    for contact in regs.keys() {
                        node.emit(crate::node::NodeEvent::DialFailed {
                            contact: contact.clone(),
                            error: error.clone(),
                            refused,
                            relay: Some(name.clone()),
                        });
                    }
                    if !wait_or_register(&token, &mut cmds, &mut regs, &routes, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        };
        backoff = BACKOFF_MIN;
        let hop_id = node.next_hop_id();
        tracing::debug!(relay = %name, "connected (hop {hop_id})");
        let liaison_hop::Hop {
            conn,
            mut reader,
            mut writer,
        } = hop;
        let (wtx, mut wrx) = mpsc::channel::<Vec<u8>>(256);
        let wroutes = routes.clone();
        let wtoken = token.clone();
        let mut live = Liveness::new();
        let last_write = live.last_write.clone();
        let live_start = live.start;
        let mut writer_task = node.inner.tracker.spawn(async move {
            loop {
                let frame = tokio::select! {
                    _ = wtoken.cancelled() => {
                        // the lines' goodbyes still reach the relay before the connection closes
                        writer.drain_and_finish(&mut wrx, crate::node::CLOSE_GRACE).await;
                        break;
                    }
                    f = wrx.recv() => match f { Some(f) => f, None => break },
                };
                if remember_post(&wroutes, &frame) {
                    last_write.store(
                        live_start.elapsed().as_millis() as u64,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                }
                if writer.send_encoded(&frame).await.is_err() {
                    break;
                }
            }
            writer.finish();
        });
        // subscribe everything and give each line its relay hop
        let mut all: Vec<InboxId> = regs.values().flat_map(|r| r.recv.iter().copied()).collect();
        all.push(live.echo);
        for f in subscribe_frames(&all) {
            let _ = wtx.send(f).await;
        }
        state.send_replace(RelayState {
            connected: true,
            subscribed: regs.len(),
        });
        for reg in regs.values() {
            let _ = reg
                .line
                .send(LineInput::HopUp {
                    hop: hop_id,
                    tx: wtx.clone(),
                    kind: PathKind::Relay { relay: relay_id },
                })
                .await;
        }
        // serve until the connection ends
        let mut replaced = false;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    match live.check(std::time::Instant::now()) {
                        Some(true) => {
                            tracing::info!(relay = %name, "no echo through the relay in {PROBE_TIMEOUT:?}: replacing the connection");
                            replaced = true;
                            conn.close(quinn::VarInt::from_u32(crate::node::close_code::BYE), b"");
                            break;
                        }
                        Some(false) => {
                            let _ = wtx.try_send(live.echo_frame());
                        }
                        None => {}
                    }
                }
                _ = token.cancelled() => {
                    let _ = tokio::time::timeout(crate::node::CLOSE_GRACE, &mut writer_task).await;
                    conn.close(quinn::VarInt::from_u32(crate::node::close_code::SHUTDOWN), b"");
                    return;
                }
                c = cmds.recv() => {
                    let r = match c {
                        Some(RelayCmd::Register(r)) => r,
                        Some(RelayCmd::Probe { hop }) => {
                            if hop == hop_id && live.probe.is_none() {
                                live.forced = true;
                            }
                            continue;
                        }
                        None => return,
                    };
                    for f in subscribe_frames(&r.recv) {
                        let _ = wtx.send(f).await;
                    }
                    let _ = r.line.send(LineInput::HopUp {
                        hop: hop_id,
                        tx: wtx.clone(),
                        kind: PathKind::Relay { relay: relay_id },
                    }).await;
                    add_reg(&mut regs, &routes, r);
                    state.send_replace(RelayState {
                        connected: true,
                        subscribed: regs.len(),
                    });
                }
                f = reader.next() => {
                    live.last_rx = std::time::Instant::now();
                    match f {
                        Ok(Some(HopFrame::Deliver { inbox, .. })) if inbox == live.echo => {
                            // our echo came back: the connection works both ways
                            live.probe = None;
                        }
                        Ok(Some(frame)) => {
                            if matches!(frame, HopFrame::Deliver { .. }) {
                                live.last_line_rx = live.last_rx;
                            }
                            if !route(&name, frame, &regs, &routes, hop_id).await {
                                conn.close(quinn::VarInt::from_u32(crate::node::close_code::MISBEHAVING), b"");
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::info!(relay = %name, "connection lost: {e}");
                            break;
                        }
                    }
                }
            }
        }
        drop(wtx);
        writer_task.abort();
        state.send_replace(RelayState {
            connected: false,
            subscribed: 0,
        });
        for reg in regs.values() {
            let _ = reg.line.send(LineInput::HopDown { hop: hop_id }).await;
        }
        if replaced {
            backoff = BACKOFF_MIN;
            continue;
        }
        if !wait_or_register(&token, &mut cmds, &mut regs, &routes, backoff).await {
            return;
        }
    }
}

fn add_reg(regs: &mut HashMap<String, Reg>, routes: &Arc<Mutex<Routes>>, r: Registration) {
    if let Ok(mut rt) = routes.lock() {
        // ids roll over daily: answers to posts made under the previous ones still route
        if rt.by_send.insert(r.send, r.contact.clone()).is_none() {
            rt.send_order.push_back((r.contact.clone(), r.send));
            let mine = rt
                .send_order
                .iter()
                .filter(|(c, _)| *c == r.contact)
                .count();
            if mine > SEND_IDS_KEPT
                && let Some(pos) = rt.send_order.iter().position(|(c, _)| *c == r.contact)
                && let Some((_, old)) = rt.send_order.remove(pos)
            {
                rt.by_send.remove(&old);
            }
        }
    }
    let entry = regs.entry(r.contact).or_insert(Reg {
        line: r.line.clone(),
        recv: Vec::new(),
        send: r.send,
    });
    entry.line = r.line;
    entry.send = r.send;
    for id in r.recv {
        if !entry.recv.contains(&id) {
            entry.recv.push(id);
        }
    }
    // keep the newest window only (ids of days long past are useless)
    let keep = 2 * (liaison_wire::consts::INBOX_PAST_EPOCHS as usize + 2);
    if entry.recv.len() > keep {
        let drop = entry.recv.len() - keep;
        entry.recv.drain(..drop);
    }
}

/// Who refused whose key in a failed TLS handshake with a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The relay closed the handshake: our hop key is not on its allow list.
    OurKey,
    /// We closed it: the relay's certificate is not the key pinned from its card.
    TheirKey,
}

fn key_refusal(e: &liaison_hop::HopError) -> Option<Refusal> {
    use liaison_hop::HopError;
    if !e.is_tls_refusal() {
        return None;
    }
    let conn = match e {
        HopError::Connection(c)
        | HopError::Read(quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(c)))
        | HopError::Write(quinn::WriteError::ConnectionLost(c)) => c,
        _ => return None,
    };
    match conn {
        // the peer sent the CONNECTION_CLOSE carrying the TLS alert
        quinn::ConnectionError::ConnectionClosed(_) => Some(Refusal::OurKey),
        // our own TLS stack aborted: the server's certificate failed our pin
        quinn::ConnectionError::TransportError(_) => Some(Refusal::TheirKey),
        _ => None,
    }
}

/// Waits `delay` while taking registrations; false if the node is shutting down.
async fn wait_or_register(
    token: &tokio_util::sync::CancellationToken,
    cmds: &mut mpsc::Receiver<RelayCmd>,
    regs: &mut HashMap<String, Reg>,
    routes: &Arc<Mutex<Routes>>,
    delay: Duration,
) -> bool {
    let sleep = tokio::time::sleep(delay);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            _ = token.cancelled() => return false,
            _ = &mut sleep => return true,
            c = cmds.recv() => match c {
                Some(RelayCmd::Register(r)) => add_reg(regs, routes, r),
                // not connected: nothing to check
                Some(RelayCmd::Probe { .. }) => {}
                None => return false,
            }
        }
    }
}

/// Remembers which contact a POST belongs to, so the relay's answer reaches its line; true
/// for a line's POST.
fn remember_post(routes: &Arc<Mutex<Routes>>, frame: &[u8]) -> bool {
    let Some(Ok(HopFrame::Post { dst, store, blob })) = frame.get(4..).map(HopFrame::parse) else {
        return false;
    };
    let Ok(mut rt) = routes.lock() else {
        return true;
    };
    let Some(contact) = rt.by_send.get(&dst).cloned() else {
        // not a line's post (our own echo)
        return false;
    };
    if store || blob.len() < REMEMBER_LIVE_BELOW {
        rt.pending
            .insert(liaison_wire::hop::envelope_id(blob), contact);
    }
    true
}

/// Routes one frame from the relay; false on a protocol violation.
async fn route(
    relay: &str,
    frame: HopFrame<'_>,
    regs: &HashMap<String, Reg>,
    routes: &Arc<Mutex<Routes>>,
    hop_id: u64,
) -> bool {
    match frame {
        HopFrame::Deliver {
            inbox,
            envelope_id,
            blob,
        } => {
            let owner = regs.iter().find(|(_, r)| r.recv.contains(&inbox));
            match owner {
                Some((_, reg)) => {
                    let stored = envelope_id != [0u8; ENVELOPE_ID_LEN];
                    let _ = reg
                        .line
                        .send(LineInput::RelayDeliver {
                            hop: hop_id,
                            envelope_id: stored.then_some(envelope_id),
                            blob: blob.to_vec(),
                        })
                        .await;
                }
                None => tracing::debug!(relay, "delivery for an inbox we no longer watch"),
            }
            true
        }
        HopFrame::Err { code, reference } => {
            let contact = routes
                .lock()
                .ok()
                .and_then(|mut r| r.pending.take(&reference));
            if code == hop_err::MALFORMED {
                tracing::warn!(relay, "the relay says we sent a malformed frame");
            }
            if let Some(reg) = contact.as_ref().and_then(|c| regs.get(c)) {
                let _ = reg
                    .line
                    .send(LineInput::RelayError {
                        hop: hop_id,
                        code,
                        reference,
                    })
                    .await;
            } else if code != hop_err::NO_SUBSCRIBER {
                tracing::info!(relay, "relay error: {}", hop_err::name(code));
            }
            true
        }
        HopFrame::Ack { envelope_id } => {
            let contact = routes
                .lock()
                .ok()
                .and_then(|mut r| r.pending.take(&envelope_id));
            if let Some(reg) = contact.as_ref().and_then(|c| regs.get(c)) {
                let _ = reg
                    .line
                    .send(LineInput::EnvelopeStored {
                        hop: hop_id,
                        reference: envelope_id,
                    })
                    .await;
            }
            true
        }
        other => {
            tracing::warn!(relay, "unexpected frame from the relay: {other:?}");
            false
        }
    }
}
