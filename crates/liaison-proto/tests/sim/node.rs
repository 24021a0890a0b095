//! A simulated node: its durable state (the store model), what lives only in memory while it
//! runs (the engine, the audit log's memory half, store answers not yet given), and the
//! records the checks need (what its user submitted and saw).

use ed25519_dalek::{SigningKey, VerifyingKey};
use liaison_audit::MemoryLine;
use liaison_audit::mem::MemoryStorage;
use liaison_proto::conn::{Conn, ConnConfig, Incoming, SealedEnvelope};
use liaison_proto::handshake::Tai64N;
use liaison_proto::identity::Identity;
use liaison_proto::keys::PeerKeys;
use liaison_proto::mailbox_ring::{MailboxRing, PeerMailboxKeys};
use liaison_wire::card::MailboxKeyPub;
use liaison_wire::frame::msg_digest;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// Virtual milliseconds since the start of the run.
pub type T = u64;

/// An outbox row's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Queued,
    Delivered,
}

#[derive(Debug, Clone)]
pub struct OutRow {
    pub body: Arc<[u8]>,
    pub msg: u64,
    pub status: Status,
}

/// Everything a node's home holds on disk. `Clone` is a backup.
#[derive(Debug, Clone)]
pub struct Durable {
    pub outbox: BTreeMap<u64, OutRow>,
    pub next_seq: u64,
    pub acked_upto: u64,
    pub inbox: BTreeMap<u64, Vec<u8>>,
    pub delivered_upto: u64,
    pub hs_sent: Tai64N,
    pub hs_accepted: Tai64N,
    pub peer_mbox: Option<Vec<u8>>,
    pub ring: MailboxRing,
    /// Sealed envelopes kept for posting again (the shell's `outbox_envelope` table).
    pub envelopes: BTreeMap<[u8; 16], SealedEnvelope>,
    /// The audit log's storage; current only while the node is down (a running node's is
    /// inside its `MemoryLine`).
    pub audit: MemoryStorage,
}

/// A store operation waiting for its transaction to commit; the engine gets its answer then.
#[derive(Debug)]
pub enum DiskOp {
    Persist {
        token: u64,
        sent: Tai64N,
        accepted: Tai64N,
    },
    Store {
        messages: Vec<Incoming>,
        delivered_upto: u64,
    },
    Acked {
        upto: u64,
    },
    Queued {
        seqs: Vec<u64>,
    },
    PeerMbox(Vec<u8>),
    EnvelopeKeep(SealedEnvelope),
    EnvelopeForget(Vec<[u8; 16]>),
    Renumber {
        token: u64,
        peer_holds: u64,
        moves: Vec<(u64, u64)>,
    },
    PeerLost {
        peer_holds: u64,
        acked_upto: u64,
    },
}

impl DiskOp {
    pub fn name(&self) -> &'static str {
        match self {
            DiskOp::Persist { .. } => "persist-hs",
            DiskOp::Store { .. } => "store",
            DiskOp::Acked { .. } => "acked",
            DiskOp::Queued { .. } => "queued",
            DiskOp::PeerMbox(_) => "peer-mbox",
            DiskOp::EnvelopeKeep(_) => "envelope-keep",
            DiskOp::EnvelopeForget(_) => "envelope-forget",
            DiskOp::Renumber { .. } => "renumber",
            DiskOp::PeerLost { .. } => "peer-lost",
        }
    }
}

/// What exists only while the node runs.
pub struct Live {
    pub conn: Conn,
    pub audit: MemoryLine,
    /// Store transactions in flight, in commit order, with the time each commits.
    pub disk: VecDeque<(T, DiskOp)>,
    pub disk_busy_until: T,
    pub audit_dirty: bool,
    pub commit_scheduled: bool,
    pub timer_at: Option<T>,
    pub tick_at: Option<T>,
    /// Hop id → the connection it is.
    pub paths: BTreeMap<u64, Hop>,
    pub relay_path: Option<u64>,
    pub direct_path: Option<u64>,
    pub want_call: bool,
    pub audit_len: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    Direct { conn: u64 },
    Relay { conn: u64 },
}

/// A message this node's user wrote (and the store accepted).
#[derive(Debug, Clone)]
pub struct Sent {
    pub encoded: Arc<[u8]>,
}

pub struct Node {
    pub name: &'static str,
    pub id: Identity,
    pub audit_seeds: ([u8; 32], [u8; 32]),
    pub peer_keys: PeerKeys,
    pub peer_card_mbox: MailboxKeyPub,
    pub peer_identity: VerifyingKey,
    pub durable: Durable,
    pub live: Option<Live>,
    /// Incarnation: events of an earlier life are stale.
    pub life: u64,
    pub clock_skew_ms: i64,
    pub backups: Vec<Durable>,
    /// Restored from a backup at least once in this run.
    pub restored: bool,
    pub restart_pending: bool,
    // ---- records for the checks (outside the node: what its user did and saw)
    /// Every message the store accepted, by message id.
    pub sent: BTreeMap<u64, Sent>,
    /// Message ids in the order they were written.
    pub sent_order: Vec<u64>,
    pub next_msg: u64,
    /// Highest seq shown to the user (Deliver), per the current store's history.
    pub last_shown: u64,
    /// Every (seq, digest) this node's store ever held (for runs with restores).
    pub ever_held: BTreeMap<u64, BTreeSet<[u8; 16]>>,
    /// Messages that a `Renumber` moved to a new seq.
    pub renumbered: BTreeSet<u64>,
    /// Message ids the user was shown (Deliver), with how often.
    pub shown: BTreeMap<u64, u32>,
    pub crashes: u32,
    /// The durable handshake timestamps when the last message 1 / message 2 left.
    pub last_init_ts: Tai64N,
    pub last_resp_ts: Tai64N,
    pub handshakes: u64,
    pub envelopes_posted: u64,
    /// Audit entries added per virtual hour.
    pub audit_growth: BTreeMap<u64, u64>,
}

impl Node {
    pub fn new(
        name: &'static str,
        id: Identity,
        ring: MailboxRing,
        audit_seeds: ([u8; 32], [u8; 32]),
        peer: &Identity,
        pairing: Option<[u8; 32]>,
    ) -> Self {
        let peer_identity = match VerifyingKey::from_bytes(&peer.identity_public()) {
            Ok(k) => k,
            Err(e) => panic!("peer identity: {e}"),
        };
        let card = match peer.card() {
            Ok(c) => c,
            Err(e) => panic!("card: {e}"),
        };
        let audit = MemoryStorage::default();
        Node {
            name,
            peer_keys: PeerKeys {
                identity: peer.identity_public(),
                noise: peer.noise_public(),
                pairing: pairing.map(zeroize::Zeroizing::new),
            },
            peer_card_mbox: card.body.mailbox.clone(),
            peer_identity,
            id,
            audit_seeds,
            durable: Durable {
                outbox: BTreeMap::new(),
                next_seq: 1,
                acked_upto: 0,
                inbox: BTreeMap::new(),
                delivered_upto: 0,
                hs_sent: Tai64N::default(),
                hs_accepted: Tai64N::default(),
                peer_mbox: None,
                ring,
                envelopes: BTreeMap::new(),
                audit,
            },
            live: None,
            life: 0,
            clock_skew_ms: 0,
            backups: Vec::new(),
            restored: false,
            restart_pending: false,
            sent: BTreeMap::new(),
            sent_order: Vec::new(),
            next_msg: 0,
            last_shown: 0,
            ever_held: BTreeMap::new(),
            shown: BTreeMap::new(),
            renumbered: BTreeSet::new(),
            crashes: 0,
            last_init_ts: Tai64N::default(),
            last_resp_ts: Tai64N::default(),
            handshakes: 0,
            envelopes_posted: 0,
            audit_growth: BTreeMap::new(),
        }
    }

    pub fn audit_keys(&self) -> liaison_audit::LocalKeys {
        match liaison_audit::LocalKeys::from_identity(
            self.id.signing_key(),
            SigningKey::from_bytes(&self.audit_seeds.0),
            SigningKey::from_bytes(&self.audit_seeds.1),
        ) {
            Ok(k) => k,
            Err(e) => panic!("audit keys: {e}"),
        }
    }

    /// The durable state as it is now (a running node's audit storage included).
    pub fn durable_now(&self) -> Durable {
        let mut d = self.durable.clone();
        if let Some(l) = &self.live {
            d.audit = l.audit.storage().clone();
        }
        d
    }

    /// The engine's configuration from the store, as a node shell builds it at start.
    pub fn config(&self, unix_secs: u64) -> ConnConfig {
        let d = &self.durable;
        let peer_mailbox = d
            .peer_mbox
            .as_deref()
            .and_then(|b| PeerMailboxKeys::from_bytes(b, &self.peer_keys.identity).ok())
            .unwrap_or_default();
        let unacked = d
            .outbox
            .iter()
            .filter(|(s, r)| **s > d.acked_upto && r.status != Status::Delivered)
            .map(|(s, r)| (*s, r.body.clone()))
            .collect();
        let delivered_digest = d
            .inbox
            .get(&d.delivered_upto)
            .map_or([0; 16], |e| msg_digest(e));
        let stored_ahead = d
            .inbox
            .range(d.delivered_upto.saturating_add(1)..)
            .map(|(s, e)| (*s, msg_digest(e)))
            .collect();
        ConnConfig {
            local: self.id.local_keys(),
            signing: self.id.signing_key().clone(),
            peer: self.peer_keys.clone(),
            card_mailbox: Some(self.peer_card_mbox.clone()),
            peer_mailbox,
            own_mailbox: Some(d.ring.current_for_peers(unix_secs).clone()),
            live_only: false,
            hs_sent_ts: d.hs_sent,
            hs_accepted_ts: d.hs_accepted,
            next_seq: d.next_seq,
            acked_upto: d.acked_upto,
            unacked,
            delivered_upto: d.delivered_upto,
            delivered_digest,
            stored_ahead,
            posted: d.envelopes.values().cloned().collect(),
        }
    }
}
