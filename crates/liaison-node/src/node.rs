//! The node: one process per home, one task per line, hops attached to lines.
//!
//! ```text
//!   accept loop ──(pinned TLS, HELLO/READY)──► hop reader ──Blob──► line task (one per contact)
//!   dial (line task asks) ──────────────────► hop writer ◄─frames──┘   │
//!   CLI / control socket ──submit/connect──► line task               ▼
//!                                                        Db writer thread (group commit)
//! ```
//! Everything runs under one `CancellationToken` and one `TaskTracker`; [`Node::shutdown`]
//! cancels, waits for every task, and closes QUIC gracefully. Nothing acknowledged is lost:
//! acks are sent only after the store committed.

use crate::atrest::{self, DataKey, Direction};
use crate::audit::{Audit, AuditKeys};
use crate::line::{self, LineInput};
use crate::relay_client::{self, RelayClient};
use crate::secrets::NodeSecrets;
use crate::store::{self, Db, DbError};
use liaison_hop::admission::{Admission, Refusal, Slot};
use liaison_hop::{ClientPins, HopKey, HopLimits};
use liaison_proto::identity::Identity;
use liaison_proto::mailbox_ring::MailboxRing;
use liaison_wire::consts::PROTOCOL_VERSION;
use liaison_wire::frame::MessageContent;
use liaison_wire::hop::{HopFrame, err as hop_err};
use quinn::{Endpoint, VarInt};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// QUIC close codes a node uses (coarse on purpose).
pub mod close_code {
    /// Normal close.
    pub const BYE: u32 = 0;
    /// The peer sent a malformed hop frame.
    pub const MALFORMED: u32 = 1;
    /// The peer broke the protocol.
    pub const MISBEHAVING: u32 = 2;
    /// Not a pinned contact.
    pub const REFUSED: u32 = 3;
    /// Shutting down.
    pub const SHUTDOWN: u32 = 4;
}

/// Something users see happen, in order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum NodeEvent {
    /// A message from a contact, delivered in order.
    Message {
        /// Contact name.
        from: String,
        /// `CONTACT:SEQ`.
        id: String,
        /// The contact's seq.
        seq: u64,
        /// Text, for text messages.
        #[serde(skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        /// File name, for files.
        #[serde(skip_serializing_if = "Option::is_none")]
        file: Option<String>,
        /// Body size in bytes.
        size: usize,
        /// Sender's clock when written, unix ms.
        sent_at_ms: u64,
    },
    /// The peer acknowledged one of our messages end to end.
    Delivered {
        /// Contact name.
        to: String,
        /// `CONTACT:SEQ`.
        id: String,
        /// Our seq.
        seq: u64,
    },
    /// A relay durably holds a sealed envelope with this message (not yet a receipt).
    Queued {
        /// Contact name.
        to: String,
        /// `CONTACT:SEQ`.
        id: String,
        /// Our seq.
        seq: u64,
    },
    /// A session with the contact is up.
    LineUp {
        /// Contact name.
        contact: String,
    },
    /// Handshakes went unanswered: the peer is away.
    Unreachable {
        /// Contact name.
        contact: String,
    },
    /// A connection attempt failed.
    DialFailed {
        /// Contact name.
        contact: String,
        /// What went wrong.
        error: String,
        /// True if the peer refused our key (not pinned there).
        refused: bool,
        /// The relay that failed or refused us, when it was a relay.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        relay: Option<String>,
    },
    /// A relay refused to hold messages sealed for an absent peer (quota, size): they stay
    /// pending in the outbox.
    NotHeld {
        /// Contact name.
        to: String,
        /// Our seqs the relay refused.
        seqs: Vec<u64>,
        /// Why, in words.
        reason: String,
    },
    /// Something wrong arrived on a line (logged; shown to the user).
    Anomaly {
        /// Contact name.
        contact: String,
        /// Kind.
        kind: String,
    },
    /// This home's store was rolled back (restored from a backup): the contact holds other
    /// messages of ours under seqs up to `peer_holds`, so our pending messages got new seqs
    /// (`[old, new]` pairs). Nothing was reported delivered that the contact lacks.
    Renumbered {
        /// Contact name.
        contact: String,
        /// The contact's receive high-water mark.
        peer_holds: u64,
        /// `[old seq, new seq]`.
        moves: Vec<[u64; 2]>,
    },
    /// The contact's node lost messages it had acknowledged (its store was rolled back):
    /// ours `from..=to` are pending again and sent again.
    PeerLost {
        /// Contact name.
        contact: String,
        /// First seq sent again.
        from: u64,
        /// Last seq sent again.
        to: u64,
    },
    /// Something the user should know about a line (one line of text).
    Notice {
        /// Contact name.
        contact: String,
        /// What happened.
        message: String,
    },
}

/// A node-level failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Storage.
    #[error(transparent)]
    Db(#[from] DbError),
    /// No such contact.
    #[error("no contact named {0}: pin one with `liaison contact add`")]
    UnknownContact(String),
    /// A message that cannot be sent as given.
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// Sockets, TLS configuration.
    #[error("{0}")]
    Hop(#[from] liaison_hop::HopError),
    /// At-rest encryption.
    #[error(transparent)]
    AtRest(#[from] atrest::AtRestError),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The audit log could not record what a message needs before it leaves or is
    /// acknowledged; the line is stopped until it can.
    #[error("the audit log failed: {0}")]
    Audit(String),
    /// Messages were stored in the outbox but the audit log could not record them: they
    /// stay pending and leave once a line to the contact starts with a working audit log.
    #[error(
        "the audit log failed ({reason}): {} stored but not sent; it leaves once the audit \
         log records it (fix the cause, then restart the node)",
        .seqs.iter().map(|s| format!("{contact}:{s}")).collect::<Vec<_>>().join(", ")
    )]
    Unlogged {
        /// The contact.
        contact: String,
        /// The stored messages' seqs.
        seqs: Vec<u64>,
        /// Why the audit log failed.
        reason: String,
    },
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// What a line is doing (for `status`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct LineStatus {
    /// A session can send.
    pub up: bool,
    /// Hops attached.
    pub hops: usize,
    /// Our messages not yet acknowledged.
    pub unacked: usize,
    /// We stored the peer's messages up to here.
    pub delivered_upto: u64,
    /// The peer acknowledged ours up to here.
    pub acked_upto: u64,
}

/// Node tunables.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// QUIC limits of hops.
    pub hop_limits: HopLimits,
    /// Admission limits of the listener.
    pub admission: NodeAdmission,
}

/// Admission limits of a listening node ([`liaison_hop::admission`], as a relay has): every
/// connection attempt from a validated address (after QUIC Retry) is checked here before any
/// TLS work or task is spent on it, and refused with QUIC `CONNECTION_REFUSED` when it does
/// not fit. A slot is held for the connection's life, handshake included.
///
/// A node has few contacts, each with a hop or two at a time and a dial that races at most
/// 12 attempts (one a second): the defaults are far above what they need, and far below
/// what a flood of handshakes from one address would take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeAdmission {
    /// Connections at once, handshakes included.
    pub max_connections: usize,
    /// Connections at once from one IPv4 address or IPv6 /64.
    pub max_per_address: usize,
    /// Sustained new connections per second from one address.
    pub per_address_rate: u32,
    /// New connections from one address at once above the sustained rate.
    pub per_address_burst: u32,
}

impl Default for NodeAdmission {
    fn default() -> Self {
        NodeAdmission {
            max_connections: 256,
            max_per_address: 32,
            per_address_rate: 4,
            per_address_burst: 32,
        }
    }
}

/// The set of client SPKIs the listener accepts: pinned contacts' direct hop keys.
#[derive(Debug, Default)]
pub(crate) struct PinSet {
    spkis: RwLock<HashSet<Vec<u8>>>,
}

impl ClientPins for PinSet {
    fn allows(&self, spki: &[u8]) -> bool {
        self.spkis.read().map(|s| s.contains(spki)).unwrap_or(false)
    }
}

pub(crate) struct Inner {
    pub(crate) db: Db,
    pub(crate) db_path: PathBuf,
    pub(crate) identity: Identity,
    pub(crate) data_key: DataKey,
    pub(crate) hop_key: HopKey,
    pub(crate) limits: HopLimits,
    pub(crate) events: broadcast::Sender<NodeEvent>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tracker: TaskTracker,
    lines: Mutex<HashMap<String, mpsc::Sender<LineInput>>>,
    /// Held while a line starts (its audit log is opened and repaired first).
    line_open: tokio::sync::Mutex<()>,
    pub(crate) relay_seeds: Vec<(String, liaison_proto::keys::Secret32)>,
    relays: Mutex<HashMap<String, RelayClient>>,
    pub(crate) mailbox: Mutex<MailboxRing>,
    /// The mailbox key lines advertise: the ring's current key once it is durable (a key is
    /// never advertised before it is stored, or a crash would lose what it opens).
    advertised: Mutex<Option<liaison_wire::card::MailboxKeyPub>>,
    pub(crate) audit: Audit,
    server: Mutex<Option<Endpoint>>,
    client: Mutex<Option<Endpoint>>,
    pins: Arc<PinSet>,
    admission: Arc<Admission>,
    next_hop: AtomicU64,
}

/// A running node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.inner.identity.name())
            .finish_non_exhaustive()
    }
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unix milliseconds now.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Node {
    /// Starts a node on an open store. The caller holds the home lock for the node's life.
    pub fn start(
        db: Db,
        db_path: PathBuf,
        secrets: NodeSecrets,
        options: NodeOptions,
    ) -> Result<Node, NodeError> {
        let hop_key = HopKey::from_seed(secrets.identity.hop_seed());
        let (events, _) = broadcast::channel(8192);
        let ring = load_mailbox_ring(&db_path, &secrets)?;
        let audit = Audit::start(
            db_path.clone(),
            AuditKeys {
                identity: secrets.identity.signing_key().clone(),
                log: secrets.audit_log.clone(),
                witness: secrets.audit_witness.clone(),
            },
            events.clone(),
        )
        .map_err(|e| NodeError::Other(format!("cannot start the audit log: {e}")))?;
        let node = Node {
            inner: Arc::new(Inner {
                db,
                db_path,
                identity: secrets.identity,
                data_key: secrets.data_key,
                hop_key,
                limits: options.hop_limits,
                events,
                shutdown: CancellationToken::new(),
                tracker: TaskTracker::new(),
                lines: Mutex::new(HashMap::new()),
                line_open: tokio::sync::Mutex::new(()),
                relay_seeds: secrets.relays,
                relays: Mutex::new(HashMap::new()),
                mailbox: Mutex::new(ring),
                advertised: Mutex::new(None),
                audit,
                server: Mutex::new(None),
                client: Mutex::new(None),
                pins: Arc::new(PinSet::default()),
                admission: Admission::new(
                    options.admission.max_connections,
                    options.admission.max_per_address,
                    options.admission.per_address_rate,
                    options.admission.per_address_burst,
                ),
                next_hop: AtomicU64::new(1),
            }),
        };
        // the first rotation is done before any line starts, so lines advertise a fresh key
        if let Some(bytes) = node.rotate_mailbox_ring() {
            match atrest::seal_body(&node.inner.data_key, MAILBOX_RING_AAD, &bytes) {
                Ok(sealed) => {
                    if let Err(e) = node
                        .inner
                        .db
                        .write_blocking(move |c| store::meta_set(c, MAILBOX_RING_KEY, &sealed))
                    {
                        tracing::warn!("cannot store mailbox keys: {e}");
                    } else {
                        node.advertise_current_key();
                    }
                }
                Err(e) => tracing::warn!("cannot seal mailbox keys: {e}"),
            }
        } else {
            node.advertise_current_key();
        }
        node.start_mailbox_rotation();
        node.watch_contacts();
        Ok(node)
    }

    /// Contacts pinned or changed by other commands while we run take effect within seconds
    /// (at once when the command tells a running listener through its control socket).
    fn watch_contacts(&self) {
        let node = self.clone();
        self.inner.tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = node.inner.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(CONTACT_POLL) => {
                        if let Err(e) = node.refresh_contacts().await {
                            tracing::warn!("cannot refresh contacts: {e}");
                        }
                    }
                }
            }
        });
    }

    /// Rotates and prunes the mailbox ring; the storage form when it changed.
    fn rotate_mailbox_ring(&self) -> Option<zeroize::Zeroizing<Vec<u8>>> {
        let now = unix_now();
        let mut ring = self.inner.mailbox.lock().ok()?;
        let rotated = ring
            .rotate(self.inner.identity.signing_key(), now)
            .map(|k| k.is_some())
            .unwrap_or(false);
        let pruned = !ring.prune(now).is_empty();
        if rotated || pruned {
            ring.to_bytes().ok()
        } else {
            None
        }
    }

    /// The ring's current key becomes the one lines advertise (call once it is durable).
    fn advertise_current_key(&self) {
        let key = self
            .inner
            .mailbox
            .lock()
            .ok()
            .map(|r| r.current_for_peers(unix_now()).clone());
        if let (Some(k), Ok(mut a)) = (key, self.inner.advertised.lock()) {
            *a = Some(k);
        }
    }

    /// Keeps the mailbox ring fresh: a new key daily, expired ones erased, persisted sealed
    /// before the new key is advertised.
    fn start_mailbox_rotation(&self) {
        let node = self.clone();
        self.inner.tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = node.inner.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
                }
                if node.rotate_mailbox_ring().is_some() {
                    match node.save_mailbox_ring().await {
                        Ok(()) => node.advertise_current_key(),
                        Err(e) => tracing::warn!("cannot store mailbox keys: {e}"),
                    }
                }
            }
        });
    }

    async fn save_mailbox_ring(&self) -> Result<(), NodeError> {
        let bytes = {
            let ring = self
                .inner
                .mailbox
                .lock()
                .map_err(|_| NodeError::Other("mailbox ring poisoned".into()))?;
            ring.to_bytes()
                .map_err(|e| NodeError::Other(format!("mailbox ring: {e}")))?
        };
        let sealed = atrest::seal_body(&self.inner.data_key, MAILBOX_RING_AAD, &bytes)?;
        self.inner
            .db
            .write(move |c| store::meta_set(c, MAILBOX_RING_KEY, &sealed))
            .await?;
        Ok(())
    }

    /// Every open line's audit status (for `liaison status`).
    pub async fn audit_status(&self) -> HashMap<String, liaison_audit::LineStatus> {
        self.inner.audit.status().await
    }

    /// Our mailbox key to advertise to peers now (message 2 payloads, MBOX_KEY frames).
    pub fn current_mailbox_key(&self) -> Option<liaison_wire::card::MailboxKeyPub> {
        let advertised = self.inner.advertised.lock().ok().and_then(|a| a.clone());
        advertised.or_else(|| {
            // nothing durable beyond the card's key yet
            self.inner
                .mailbox
                .lock()
                .ok()
                .map(|r| r.card_key().public().clone())
        })
    }

    /// Starts (once) the client of pinned relay `name`, and the lines of every contact that
    /// meets there (contacts naming this relay, or naming none). Waits up to `wait` for the
    /// relay to accept us and for those contacts' inboxes to be subscribed; returns whether
    /// that happened (if not, the client keeps trying in the background).
    pub async fn use_relay(&self, name: &str, wait: Duration) -> Result<bool, NodeError> {
        let client = self.relay_client(name).await?;
        let n = name.to_string();
        let contacts = self.inner.db.write(store::contacts).await?;
        let mut count = 0;
        for c in contacts {
            if c.relay.as_deref().is_none_or(|r| r == n) {
                self.line(&c.name).await?;
                count += 1;
            }
        }
        let st = client.wait_subscribed(count, wait).await;
        Ok(st.connected && st.subscribed >= count)
    }

    /// The client of pinned relay `name`, started if needed.
    pub(crate) async fn relay_client(&self, name: &str) -> Result<RelayClient, NodeError> {
        if let Some(c) = self
            .inner
            .relays
            .lock()
            .ok()
            .and_then(|m| m.get(name).cloned())
        {
            return Ok(c);
        }
        let n = name.to_string();
        let row = self
            .inner
            .db
            .write(move |c| store::relay(c, &n))
            .await?
            .ok_or_else(|| {
                NodeError::Other(format!(
                    "no relay named {name}: pin it with `liaison relay add {name} CARD`"
                ))
            })?;
        let seed = self
            .inner
            .relay_seeds
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.clone())
            .ok_or_else(|| {
                NodeError::Other(format!(
                    "this node has no hop key for relay {name}: run `liaison relay add {name} CARD --replace`"
                ))
            })?;
        let mut map = self
            .inner
            .relays
            .lock()
            .map_err(|_| NodeError::Other("relay table poisoned".into()))?;
        if let Some(c) = map.get(name) {
            return Ok(c.clone());
        }
        let client = relay_client::start(self.clone(), row, HopKey::from_seed(&seed));
        map.insert(name.to_string(), client.clone());
        Ok(client)
    }

    /// The running relay clients a contact meets at: the one it names, or every running one
    /// when it names none.
    pub(crate) fn relays_for(&self, contact_relay: Option<&str>) -> Vec<RelayClient> {
        let Ok(map) = self.inner.relays.lock() else {
            return Vec::new();
        };
        match contact_relay {
            Some(r) => map.get(r).cloned().into_iter().collect(),
            None => map.values().cloned().collect(),
        }
    }

    /// This node's identity.
    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// The store.
    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// The data key (to open stored bodies).
    pub fn data_key(&self) -> &DataKey {
        &self.inner.data_key
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.inner.events.subscribe()
    }

    /// Cancelled when the node shuts down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Accepts direct calls on `addr`; returns the bound address.
    pub async fn listen(&self, addr: SocketAddr) -> Result<SocketAddr, NodeError> {
        self.refresh_pins().await?;
        let cfg = liaison_hop::server_config(
            &self.inner.hop_key,
            self.inner.pins.clone(),
            &self.inner.limits,
        )?;
        let endpoint = liaison_hop::server_endpoint_keyed(addr, cfg, &self.inner.hop_key)?;
        let bound = endpoint
            .local_addr()
            .map_err(|e| NodeError::Other(format!("cannot read the bound address: {e}")))?;
        if let Ok(mut s) = self.inner.server.lock() {
            *s = Some(endpoint.clone());
        }
        let node = self.clone();
        self.inner
            .tracker
            .spawn(async move { node.accept_loop(endpoint).await });
        Ok(bound)
    }

    /// Re-reads the contacts: the listener's pinned keys, and every running line whose
    /// contact changed (`contact pair`, `contact set`, `contact add --replace`, `contact
    /// remove` by another command) gets the new row at once.
    async fn refresh_contacts(&self) -> Result<(), NodeError> {
        let rows = self.refresh_pins().await?;
        let lines: Vec<(String, mpsc::Sender<LineInput>)> = self
            .inner
            .lines
            .lock()
            .map(|l| l.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        for (name, tx) in lines {
            match rows.iter().find(|r| r.name == name) {
                Some(row) => {
                    let _ = tx
                        .send(LineInput::ContactChanged(Box::new(row.clone()), None))
                        .await;
                }
                None => self.stop_line(&name).await,
            }
        }
        Ok(())
    }

    /// Applies a change of contact `name` made by another command to its running line now,
    /// and returns once it is applied (the control socket's `contact_changed`).
    pub async fn contact_changed(&self, name: &str) -> Result<(), NodeError> {
        let n = name.to_string();
        let row = self.inner.db.write(move |c| store::contact(c, &n)).await?;
        self.refresh_pins().await?;
        let tx = self
            .inner
            .lines
            .lock()
            .ok()
            .and_then(|l| l.get(name).cloned());
        let Some(tx) = tx else {
            return Ok(());
        };
        match row {
            Some(row) => {
                let (done, wait) = oneshot::channel();
                if tx
                    .send(LineInput::ContactChanged(Box::new(row), Some(done)))
                    .await
                    .is_ok()
                {
                    let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
                }
            }
            None => self.stop_line(name).await,
        }
        Ok(())
    }

    /// A contact was removed: its line says goodbye and stops.
    async fn stop_line(&self, name: &str) {
        let tx = self
            .inner
            .lines
            .lock()
            .ok()
            .and_then(|mut l| l.remove(name));
        if let Some(tx) = tx {
            let (done, wait) = oneshot::channel();
            if tx.send(LineInput::Bye(done)).await.is_ok() {
                let _ = tokio::time::timeout(CLOSE_GRACE, wait).await;
            }
        }
    }

    async fn refresh_pins(&self) -> Result<Vec<store::ContactRow>, NodeError> {
        let path = self.inner.db_path.clone();
        let rows = tokio::task::spawn_blocking(move || {
            let conn = store::open_read_only(&path)?;
            store::contacts(&conn)
        })
        .await
        .map_err(|e| NodeError::Other(e.to_string()))??;
        let set: HashSet<Vec<u8>> = rows
            .iter()
            .map(|c| liaison_hop::ed25519_spki(&c.hop).to_vec())
            .collect();
        if let Ok(mut s) = self.inner.pins.spkis.write() {
            *s = set;
        }
        Ok(rows)
    }

    /// Starts line tasks for every contact with unacknowledged messages, so they are
    /// delivered as contacts become reachable.
    pub async fn resume_pending(&self) -> Result<usize, NodeError> {
        let names: Vec<String> = self
            .inner
            .db
            .write(|c| {
                let mut st = c.prepare(
                    "SELECT DISTINCT contact FROM outbox WHERE status IN ('pending', 'queued')",
                )?;
                let rows = st.query_map([], |r| r.get::<_, String>(0))?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await?;
        for n in &names {
            self.line(n).await?;
        }
        Ok(names.len())
    }

    /// The line task for `contact`, started if needed.
    pub(crate) async fn line(&self, contact: &str) -> Result<mpsc::Sender<LineInput>, NodeError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(NodeError::ShuttingDown);
        }
        if let Some(tx) = self.running_line(contact) {
            return Ok(tx);
        }
        // one line starts at a time: its audit log is opened (and repaired) before it runs
        let _opening = self.inner.line_open.lock().await;
        if let Some(tx) = self.running_line(contact) {
            return Ok(tx);
        }
        let name = contact.to_string();
        let row = self
            .inner
            .db
            .write(move |c| store::contact(c, &name))
            .await?
            .ok_or_else(|| NodeError::UnknownContact(contact.to_string()))?;
        let (unacked, posted) = {
            let name = contact.to_string();
            self.inner
                .db
                .write(move |c| {
                    Ok((
                        store::outbox_unacked(c, &name)?,
                        store::envelopes(c, &name)?,
                    ))
                })
                .await?
        };
        let (delivered_digest, ahead) = {
            let name = contact.to_string();
            let d = row.delivered_upto;
            let rows = self
                .inner
                .db
                .write(move |c| {
                    let mut rows = Vec::new();
                    if let Some(r) = store::inbox_get(c, &name, d)? {
                        rows.push(r);
                    }
                    for s in store::inbox_ahead(c, &name, d)? {
                        if let Some(r) = store::inbox_get(c, &name, s)? {
                            rows.push(r);
                        }
                    }
                    Ok(rows)
                })
                .await?;
            // what our ACKs name: the digest of each stored message at and above the mark
            let mut digest = [0u8; 16];
            let mut ahead = Vec::new();
            for r in rows {
                let dg = line::received_digest(self, contact, r.seq, &r.body)?;
                if r.seq == d {
                    digest = dg;
                } else {
                    ahead.push((r.seq, dg));
                }
            }
            (digest, ahead)
        };
        let mut sent = Vec::with_capacity(unacked.len());
        for r in &unacked {
            if let Some(c) = line::sent_commitment(self, contact, r.seq, &r.body)? {
                sent.push((r.seq, c));
            }
        }
        let (tx, rx) = mpsc::channel(1024);
        // opened before anything of this line is appended (the audit queue is in order), and
        // every unacknowledged message has its msg_sent entry before the line may send it
        self.inner
            .audit
            .open(contact, row.identity, tx.clone(), sent)
            .await
            .map_err(NodeError::Audit)?;
        let mut lines = self
            .inner
            .lines
            .lock()
            .map_err(|_| NodeError::Other("line table poisoned".into()))?;
        let stored = line::StoredLine {
            unacked,
            stored_ahead: ahead,
            delivered_digest,
            posted,
        };
        let task = line::LineTask::new(self.clone(), row, stored, tx.clone(), rx)?;
        self.inner.tracker.spawn(task.run());
        lines.insert(contact.to_string(), tx.clone());
        Ok(tx)
    }

    fn running_line(&self, contact: &str) -> Option<mpsc::Sender<LineInput>> {
        let lines = self.inner.lines.lock().ok()?;
        lines.get(contact).filter(|tx| !tx.is_closed()).cloned()
    }

    /// Writes messages to the outbox (one transaction), logs them (`msg_sent`, durable) and
    /// hands them to the line. If the audit log cannot record them they stay in the outbox,
    /// the line stops (so nothing leaves or is acknowledged unlogged) and the error says so;
    /// they are logged and sent when a line to the contact next starts (see `Audit::open`).
    pub async fn submit(
        &self,
        contact: &str,
        contents: Vec<MessageContent>,
    ) -> Result<Vec<u64>, NodeError> {
        let mut encoded = Vec::with_capacity(contents.len());
        for c in &contents {
            encoded.push(Arc::<[u8]>::from(
                c.encode()
                    .map_err(|e| NodeError::InvalidMessage(e.to_string()))?,
            ));
        }
        let line = self.line(contact).await?;
        let key = self.inner.data_key.clone();
        let name = contact.to_string();
        let enc = encoded.clone();
        let now = unix_now();
        let seqs = self
            .inner
            .db
            .write(move |c| {
                let mut seqs = Vec::with_capacity(enc.len());
                for e in &enc {
                    // the seq is fixed inside the transaction; seal with it as AAD
                    let next: i64 = c.query_row(
                        "SELECT next_seq FROM contacts WHERE name = ?1",
                        [&name],
                        |r| r.get(0),
                    )?;
                    let aad = atrest::body_aad(&name, Direction::Sent, store::u(next));
                    let sealed = atrest::seal_body(&key, &aad, e)
                        .map_err(|e| DbError::Invalid(e.to_string()))?;
                    seqs.push(store::outbox_push(c, &name, now, &sealed)?);
                }
                Ok(seqs)
            })
            .await?;
        // each message's commitment is durable in the audit log before the message leaves
        for (seq, c) in seqs.iter().zip(&contents) {
            self.inner.audit.append(
                contact,
                liaison_audit::entry::Event::MsgSent {
                    seq: *seq,
                    commitment: liaison_audit::commitment(&c.salt, &c.body),
                    ciphertext_hash: [0; 32],
                },
            );
        }
        if let Err(e) = self.inner.audit.persist(contact).await {
            tracing::error!(contact, "the audit log could not record sent messages: {e}");
            let _ = line.try_send(LineInput::Stop);
            return Err(NodeError::Unlogged {
                contact: contact.to_string(),
                seqs,
                reason: e,
            });
        }
        for (seq, e) in seqs.iter().zip(encoded) {
            line.send(LineInput::Submitted {
                seq: *seq,
                encoded: e,
            })
            .await
            .map_err(|_| NodeError::ShuttingDown)?;
        }
        Ok(seqs)
    }

    /// Brings the line to `contact` up, dialing `addr` (or the stored address).
    pub async fn connect(&self, contact: &str, addr: Option<String>) -> Result<(), NodeError> {
        self.connect_via(contact, addr, None).await
    }

    /// Brings the line to `contact` up: dials `addr` (or the stored address) and/or meets the
    /// contact at relay `relay` (or the relay stored with the contact, if this node runs it).
    pub async fn connect_via(
        &self,
        contact: &str,
        addr: Option<String>,
        relay: Option<String>,
    ) -> Result<(), NodeError> {
        let line = self.line(contact).await?;
        let relay = match relay {
            Some(r) => Some(self.relay_client(&r).await?),
            None => None,
        };
        line.send(LineInput::Connect { addr, relay })
            .await
            .map_err(|_| NodeError::ShuttingDown)
    }

    /// The state of one line (default if it has no task).
    pub async fn line_status(&self, contact: &str) -> LineStatus {
        let tx = self
            .inner
            .lines
            .lock()
            .ok()
            .and_then(|l| l.get(contact).cloned());
        let Some(tx) = tx else {
            return LineStatus::default();
        };
        let (otx, orx) = oneshot::channel();
        if tx.send(LineInput::Status(otx)).await.is_err() {
            return LineStatus::default();
        }
        orx.await.unwrap_or_default()
    }

    pub(crate) fn emit(&self, ev: NodeEvent) {
        let _ = self.inner.events.send(ev);
    }

    pub(crate) fn next_hop_id(&self) -> u64 {
        self.inner.next_hop.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn client_endpoint_for(&self, peer: SocketAddr) -> Result<Endpoint, NodeError> {
        if let Ok(s) = self.inner.server.lock()
            && let Some(ep) = s.as_ref()
            && ep
                .local_addr()
                .map(|a| a.is_ipv4() == peer.is_ipv4())
                .unwrap_or(false)
        {
            return Ok(ep.clone());
        }
        let mut c = self
            .inner
            .client
            .lock()
            .map_err(|_| NodeError::Other("endpoint poisoned".into()))?;
        if let Some(ep) = c.as_ref()
            && ep
                .local_addr()
                .map(|a| a.is_ipv4() == peer.is_ipv4())
                .unwrap_or(false)
        {
            return Ok(ep.clone());
        }
        let ep = liaison_hop::client_endpoint(peer)?;
        *c = Some(ep.clone());
        Ok(ep)
    }

    /// Dials a contact's direct hop; on success attaches it to `line`.
    pub(crate) async fn dial(
        &self,
        hop_pub: [u8; 32],
        addr: &str,
        line: mpsc::Sender<LineInput>,
    ) -> Result<(), liaison_hop::HopError> {
        let target = resolve(addr).await?;
        let endpoint = self
            .client_endpoint_for(target)
            .map_err(|e| liaison_hop::HopError::Local(e.to_string()))?;
        let spki = liaison_hop::ed25519_spki(&hop_pub);
        // a fresh attempt joins every second while none succeeded: an attempt begun during a
        // cut backs its retransmissions off, a new one probes at once
        let hop = liaison_hop::connect_racing(
            &endpoint,
            target,
            &self.inner.hop_key,
            &spki,
            &self.inner.limits,
            crate::relay_client::RACE_EVERY,
            crate::relay_client::RACE_MAX,
        )
        .await?;
        self.attach(hop.conn, hop.reader, hop.writer, line, None)
            .await;
        Ok(())
    }

    /// Starts the reader and writer tasks of a hop and hands it to the line; returns once the
    /// line has it (so a dial reports success only after the hop is attached). An accepted
    /// hop's admission `slot` is held until the hop ends.
    async fn attach(
        &self,
        conn: quinn::Connection,
        mut reader: liaison_hop::HopReader,
        mut writer: liaison_hop::HopWriter,
        line: mpsc::Sender<LineInput>,
        slot: Option<Slot>,
    ) {
        let id = self.next_hop_id();
        let (wtx, mut wrx) = mpsc::channel::<Vec<u8>>(64);
        let token = self.inner.shutdown.clone();
        let (written_tx, written) = oneshot::channel::<()>();
        self.inner.tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => {
                        // at shutdown, what is queued (the goodbye) still goes out and is
                        // acknowledged before the connection closes
                        writer.drain_and_finish(&mut wrx, CLOSE_GRACE).await;
                        break;
                    }
                    f = wrx.recv() => match f {
                        Some(frame) => {
                            if let Err(e) = writer.send_encoded(&frame).await {
                                tracing::debug!("hop {id} write failed: {e}");
                                writer.finish();
                                break;
                            }
                        }
                        None => {
                            // the line let the hop go: end the stream cleanly, and keep the
                            // connection until the peer has it all (a shutdown waits for this)
                            writer.drain_and_finish(&mut wrx, CLOSE_GRACE).await;
                            break;
                        }
                    }
                }
            }
            let _ = written_tx.send(());
        });
        let token = self.inner.shutdown.clone();
        let line2 = line.clone();
        self.inner.tracker.spawn(async move {
            let _slot = slot;
            let reason = loop {
                let next = tokio::select! {
                    _ = token.cancelled() => {
                        let _ = tokio::time::timeout(CLOSE_GRACE, written).await;
                        break close_code::SHUTDOWN;
                    }
                    n = reader.next() => n,
                };
                match next {
                    Ok(Some(HopFrame::Blob(b))) => {
                        if line2
                            .send(LineInput::Blob {
                                hop: id,
                                data: b.to_vec(),
                            })
                            .await
                            .is_err()
                        {
                            break close_code::SHUTDOWN;
                        }
                    }
                    Ok(Some(HopFrame::Err { code, .. })) => {
                        tracing::info!("hop {id}: peer reports {}", hop_err::name(code));
                        break close_code::BYE;
                    }
                    Ok(Some(_)) => {
                        tracing::warn!("hop {id}: unexpected frame on a direct line");
                        break close_code::MISBEHAVING;
                    }
                    Ok(None) => break close_code::BYE,
                    Err(liaison_hop::HopError::Malformed(e)) => {
                        tracing::warn!("hop {id}: malformed frame: {e}");
                        break close_code::MALFORMED;
                    }
                    Err(e) => {
                        tracing::debug!("hop {id} ended: {e}");
                        break close_code::BYE;
                    }
                }
            };
            conn.close(VarInt::from_u32(reason), b"");
            let _ = line2.send(LineInput::HopDown { hop: id }).await;
        });
        let _ = line
            .send(LineInput::HopUp {
                hop: id,
                tx: wtx,
                kind: liaison_proto::conn::PathKind::Direct,
            })
            .await;
    }

    async fn accept_loop(self, endpoint: Endpoint) {
        let mut refusals = RefusalLog::default();
        loop {
            let incoming = tokio::select! {
                _ = self.inner.shutdown.cancelled() => break,
                i = liaison_hop::accept_validated(&endpoint) => i,
            };
            let Some(incoming) = incoming else { break };
            // admission first: a refused attempt costs one close packet, no TLS, no task
            let now = Instant::now();
            let slot = match self
                .inner
                .admission
                .admit(incoming.remote_address().ip(), now)
            {
                Ok(slot) => slot,
                Err(r) => {
                    incoming.refuse();
                    refusals.note(r, now);
                    continue;
                }
            };
            let node = self.clone();
            self.inner.tracker.spawn(async move {
                if let Err(e) = node.accept_one(incoming, slot).await {
                    tracing::info!("incoming connection refused: {e}");
                }
            });
        }
    }

    async fn accept_one(&self, incoming: quinn::Incoming, slot: Slot) -> Result<(), NodeError> {
        let connecting = incoming.accept().map_err(liaison_hop::HopError::from)?;
        let conn = tokio::time::timeout(self.inner.limits.hello_timeout, connecting)
            .await
            .map_err(|_| NodeError::Other("handshake timed out".into()))?
            .map_err(liaison_hop::HopError::from)?;
        let spki = liaison_hop::peer_spki(&conn)
            .ok_or_else(|| NodeError::Other("no client certificate".into()))?;
        let hop_pub: Option<[u8; 32]> = spki
            .get(liaison_hop::tls::ED25519_SPKI_PREFIX.len()..)
            .and_then(|k| k.try_into().ok());
        let contact = match hop_pub {
            Some(h) => {
                self.inner
                    .db
                    .write(move |c| store::contact_by_hop(c, &h))
                    .await?
            }
            None => None,
        };
        let Some(contact) = contact else {
            conn.close(VarInt::from_u32(close_code::REFUSED), b"");
            return Err(NodeError::Other("caller is not a pinned contact".into()));
        };
        let (reader, mut writer) = liaison_hop::accept_stream(&conn, &self.inner.limits).await?;
        let line = self.line(&contact.name).await?;
        writer
            .send(&HopFrame::Ready {
                version: PROTOCOL_VERSION,
            })
            .await?;
        self.attach(conn, reader, writer, line, Some(slot)).await;
        Ok(())
    }

    /// Stops everything: no new work, tasks drained, QUIC closed. Nothing acknowledged is
    /// lost because acks follow commits.
    pub async fn shutdown(&self) {
        // first the goodbyes: each live session's peer hears CLOSE(bye) before the hops go
        let lines: Vec<mpsc::Sender<LineInput>> = self
            .inner
            .lines
            .lock()
            .map(|l| l.values().cloned().collect())
            .unwrap_or_default();
        let byes = async {
            let mut waits = Vec::with_capacity(lines.len());
            for tx in lines {
                let (done, wait) = oneshot::channel();
                if tx.send(LineInput::Bye(done)).await.is_ok() {
                    waits.push(wait);
                }
            }
            // the line tasks say goodbye concurrently; wait for all of them
            for w in waits {
                let _ = w.await;
            }
        };
        let _ = tokio::time::timeout(CLOSE_GRACE * 2, byes).await;
        self.inner.shutdown.cancel();
        self.inner.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.inner.tracker.wait()).await;
        self.inner.audit.stop().await;
        let eps: Vec<Endpoint> = [&self.inner.server, &self.inner.client]
            .iter()
            .filter_map(|m| m.lock().ok().and_then(|mut g| g.take()))
            .collect();
        for ep in eps {
            ep.close(VarInt::from_u32(close_code::SHUTDOWN), b"");
            let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
        }
    }

    /// Opens a stored body.
    pub fn open_body(
        &self,
        contact: &str,
        dir: Direction,
        seq: u64,
        sealed: &[u8],
    ) -> Result<MessageContent, NodeError> {
        open_content(&self.inner.data_key, contact, dir, seq, sealed)
    }
}

/// How often at most the listener reports, at info level, the connection attempts it refused
/// at admission (each one is logged at debug level).
const REFUSAL_REPORT_EVERY: Duration = Duration::from_secs(60);

/// Refusals at admission, counted so a flood yields one line a minute rather than one per
/// attempt.
#[derive(Debug, Default)]
struct RefusalLog {
    unreported: u64,
    last_report: Option<Instant>,
}

impl RefusalLog {
    fn note(&mut self, r: Refusal, now: Instant) {
        tracing::debug!("incoming connection refused at admission: {}", r.label());
        self.unreported += 1;
        let due = self
            .last_report
            .is_none_or(|t| now.saturating_duration_since(t) >= REFUSAL_REPORT_EVERY);
        if due {
            tracing::info!(
                "refused {} incoming connection attempt(s) over the admission limits \
                 (too many connections, or too many or too fast from one address)",
                self.unreported
            );
            self.unreported = 0;
            self.last_report = Some(now);
        }
    }
}

/// How long shutdown waits for goodbyes to be queued, and then for a hop's queued frames to
/// be acknowledged by the peer, before closing the connection anyway.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// How often a listening node re-reads its contacts (pins, and changes for running lines);
/// commands that change a contact also tell a running listener at once.
const CONTACT_POLL: Duration = Duration::from_secs(2);

const MAILBOX_RING_KEY: &str = "mailbox_ring";
const MAILBOX_RING_AAD: &[u8] = b"liaison/1 mailbox-ring";

fn load_mailbox_ring(
    db_path: &std::path::Path,
    secrets: &NodeSecrets,
) -> Result<MailboxRing, NodeError> {
    let conn = store::open_read_only(db_path)?;
    match store::meta_get(&conn, MAILBOX_RING_KEY)? {
        Some(sealed) => {
            let plain = atrest::open_body(&secrets.data_key, MAILBOX_RING_AAD, &sealed)?;
            MailboxRing::from_bytes(&plain, &secrets.identity.identity_public())
                .map_err(|e| NodeError::Other(format!("stored mailbox keys are damaged: {e}")))
        }
        None => Ok(MailboxRing::new(
            secrets.identity.mailbox().clone(),
            unix_now(),
        )),
    }
}

/// Opens and decodes a stored message body.
pub fn open_content(
    key: &DataKey,
    contact: &str,
    dir: Direction,
    seq: u64,
    sealed: &[u8],
) -> Result<MessageContent, NodeError> {
    let aad = atrest::body_aad(contact, dir, seq);
    let plain = atrest::open_body(key, &aad, sealed)?;
    MessageContent::decode(&plain).map_err(|e| NodeError::Other(format!("stored message: {e}")))
}

/// Resolves `HOST:PORT` to one socket address.
pub async fn resolve(addr: &str) -> Result<SocketAddr, liaison_hop::HopError> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    let mut it = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| liaison_hop::HopError::Local(format!("cannot resolve {addr}: {e}")))?;
    it.next()
        .ok_or_else(|| liaison_hop::HopError::Local(format!("{addr} has no address")))
}
