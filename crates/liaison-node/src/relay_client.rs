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

use crate::line_task::{HopKind, LineInput};
use crate::node::Node;
use crate::store::RelayRow;
use liaison_hop::HopKey;
use liaison_wire::consts::{ENVELOPE_ID_LEN, HOP_HEADER_LEN, INBOX_ID_LEN, MAX_SUBSCRIBE_INBOXES};
use liaison_wire::hop::{HopFrame, InboxId, err as hop_err, ty as hop_ty};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

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
    pending: Pending,
}

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
            let attempt = liaison_hop::connect(&endpoint, target, &key, &spki, &limits);
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
                    while let Ok(RelayCmd::Register(r)) = cmds.try_recv() {
                        add_reg(&mut regs, &routes, r);
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
                remember_post(&wroutes, &frame);
                if writer.send_encoded(&frame).await.is_err() {
                    break;
                }
            }
            writer.finish();
        });
        // subscribe everything and give each line its relay hop
        let all: Vec<InboxId> = regs.values().flat_map(|r| r.recv.iter().copied()).collect();
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
                    kind: HopKind::Relay {
                        dst: reg.send,
                        relay: relay_id,
                    },
                })
                .await;
        }
        // serve until the connection ends
        loop {
            tokio::select! {
                _ = token.cancelled() => {
                    let _ = tokio::time::timeout(crate::node::CLOSE_GRACE, &mut writer_task).await;
                    conn.close(quinn::VarInt::from_u32(crate::node::close_code::SHUTDOWN), b"");
                    return;
                }
                c = cmds.recv() => {
                    let Some(RelayCmd::Register(r)) = c else { return };
                    for f in subscribe_frames(&r.recv) {
                        let _ = wtx.send(f).await;
                    }
                    let _ = r.line.send(LineInput::HopUp {
                        hop: hop_id,
                        tx: wtx.clone(),
                        kind: HopKind::Relay { dst: r.send, relay: relay_id },
                    }).await;
                    add_reg(&mut regs, &routes, r);
                    state.send_replace(RelayState {
                        connected: true,
                        subscribed: regs.len(),
                    });
                }
                f = reader.next() => {
                    match f {
                        Ok(Some(frame)) => {
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
        if !wait_or_register(&token, &mut cmds, &mut regs, &routes, backoff).await {
            return;
        }
    }
}

fn add_reg(regs: &mut HashMap<String, Reg>, routes: &Arc<Mutex<Routes>>, r: Registration) {
    if let Ok(mut rt) = routes.lock() {
        rt.by_send.retain(|_, c| *c != r.contact);
        rt.by_send.insert(r.send, r.contact.clone());
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
                None => return false,
            }
        }
    }
}

/// Remembers which contact a POST belongs to, so the relay's answer reaches its line.
fn remember_post(routes: &Arc<Mutex<Routes>>, frame: &[u8]) {
    if frame.get(HOP_HEADER_LEN - 1) != Some(&hop_ty::POST) {
        return;
    }
    let Some(dst) = frame
        .get(HOP_HEADER_LEN..HOP_HEADER_LEN + INBOX_ID_LEN)
        .and_then(|d| <[u8; INBOX_ID_LEN]>::try_from(d).ok())
    else {
        return;
    };
    let store = frame.get(HOP_HEADER_LEN + INBOX_ID_LEN) == Some(&1);
    let Some(blob) = frame.get(HOP_HEADER_LEN + INBOX_ID_LEN + 1..) else {
        return;
    };
    if !store && blob.len() >= REMEMBER_LIVE_BELOW {
        return;
    }
    let id: [u8; ENVELOPE_ID_LEN] = {
        let h = Sha256::digest(blob);
        let mut id = [0u8; ENVELOPE_ID_LEN];
        id.copy_from_slice(h.get(..ENVELOPE_ID_LEN).unwrap_or(&[0; ENVELOPE_ID_LEN]));
        id
    };
    if let Ok(mut rt) = routes.lock()
        && let Some(contact) = rt.by_send.get(&dst).cloned()
    {
        rt.pending.insert(id, contact);
    }
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
                    .send(LineInput::RelayError { code, reference })
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
