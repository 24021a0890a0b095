//! Audit events and their hand-encoded leaf bytes.
//!
//! Every leaf is a fixed-layout byte string (all integers big-endian, no padding, no
//! self-describing encoding, so two implementations cannot disagree on it):
//!
//! | offset | length | field                                                          |
//! |-------:|-------:|----------------------------------------------------------------|
//! | 0      | 1      | leaf format version, `0x01`                                    |
//! | 1      | 1      | event kind (table below)                                       |
//! | 2      | 8      | `index`: the entry's own position in the log (u64)             |
//! | 10     | 32     | `prev`: leaf hash of entry `index − 1` (32 zero bytes for 0)   |
//! | 42     | 8      | `time_ms`: Unix time in milliseconds, as passed in by the node |
//! | 50     | n      | kind-specific payload, fixed length per kind                   |
//!
//! | kind   | event                      | payload (n bytes)                                          |
//! |--------|----------------------------|------------------------------------------------------------|
//! | `0x01` | `call_offered`             | call id u64, direction u8 (0 outgoing, 1 incoming) — 9     |
//! | `0x02` | `call_started`             | call id u64, direction u8 — 9                              |
//! | `0x03` | `call_ended`               | call id u64, reason u8 — 9                                 |
//! | `0x10` | `msg_sent`                 | seq u64, commitment 32, ciphertext hash 32 — 72            |
//! | `0x11` | `msg_acked`                | seq u64 (cumulative: every seq ≤ it is acknowledged) — 8   |
//! | `0x12` | `msg_recv`                 | seq u64, commitment 32, ciphertext hash 32 — 72            |
//! | `0x20` | `key_event`                | kind u8, key hash 32 — 33                                  |
//! | `0x30` | `relay_event`              | kind u8, relay id 32 — 33                                  |
//! | `0x40` | `anomaly`                  | kind u8, minute u64, count u32 (always 1) — 13             |
//! | `0x41` | `anomaly_summary`          | kind u8, minute u64, count u32 (total that minute) — 13    |
//! | `0x50` | `peer_checkpoint_cosigned` | tree size u64, root hash 32 — 40                           |
//!
//! `index` makes reordering visible, `prev` chains the leaves so that an edit is pinned to one
//! entry (the Merkle root alone only says "something in this range changed").
//!
//! Messages are logged as a salted commitment, never as plaintext:
//! `commitment = SHA-256("liaison/1 msg-commit" || salt (32) || body)`; the sender draws the
//! salt and carries it inside the encrypted payload, so both logs hold the same commitment and a
//! party can later *open* one entry by revealing text and salt ([`verify_opening`]). Messages are
//! matched across the two logs on (direction, seq, commitment): a `msg_sent` in A's log pairs
//! with a `msg_recv` in B's log with the same seq (A's per-line send sequence) and commitment.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::Hash;

/// Leaf format version.
pub const LEAF_VERSION: u8 = 0x01;
/// Bytes before the payload.
pub const LEAF_HEADER_LEN: usize = 50;
/// Longest leaf (a message entry).
pub const MAX_LEAF_LEN: usize = LEAF_HEADER_LEN + 72;
/// Shortest leaf (a `msg_acked` entry).
pub const MIN_LEAF_LEN: usize = LEAF_HEADER_LEN + 8;
/// Domain separator of message commitments.
pub const COMMITMENT_DOMAIN: &[u8] = b"liaison/1 msg-commit";
/// Milliseconds per anomaly aggregation window.
pub const ANOMALY_WINDOW_MS: u64 = 60_000;

/// Why leaf bytes were refused.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// Shorter than the header.
    #[error("leaf too short ({0} bytes)")]
    TooShort(usize),
    /// Unknown leaf format version.
    #[error("unknown leaf version {0:#04x}")]
    Version(u8),
    /// Unknown event kind.
    #[error("unknown event kind {0:#04x}")]
    Kind(u8),
    /// Payload length does not match the kind.
    #[error("leaf of kind {kind:#04x} has {len} bytes, expected {expected}")]
    Length {
        /// Event kind.
        kind: u8,
        /// Bytes found.
        len: usize,
        /// Bytes expected.
        expected: usize,
    },
    /// A field has a value outside its enumeration.
    #[error("invalid value {value} for {field}")]
    Field {
        /// Field name.
        field: &'static str,
        /// Value found.
        value: u8,
    },
}

macro_rules! code_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $c:expr),+ $(,)? }) => {
        $(#[$m])*
        #[non_exhaustive]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vm])* $v),+ }
        impl $name {
            /// The byte stored in the leaf.
            pub fn code(self) -> u8 { match self { $(Self::$v => $c),+ } }
            /// The variant for a stored byte.
            pub fn from_code(c: u8) -> Option<Self> { match c { $($c => Some(Self::$v),)+ _ => None } }
        }
    };
}

code_enum!(
    /// Which side started a call.
    Direction {
        /// This node.
        Outgoing = 0,
        /// The peer.
        Incoming = 1,
    }
);

code_enum!(
    /// Why a call ended.
    CallEndReason {
        /// Hung up normally.
        Normal = 0,
        /// Timed out.
        Timeout = 1,
        /// Failed.
        Error = 2,
        /// The peer closed it.
        PeerClosed = 3,
        /// The user cancelled it.
        Cancelled = 4,
    }
);

code_enum!(
    /// Key events of the line.
    KeyEventKind {
        /// The peer's identity was pinned (key hash: its identity key).
        PeerPinned = 1,
        /// The peer sent a rotated card (key hash: SHA-256 of the new card).
        PeerCardRotated = 2,
        /// This node rotated its card.
        OwnCardRotated = 3,
        /// This node made a mailbox key (key hash: key id padded with zeros).
        MailboxKeyCreated = 4,
        /// The peer announced a mailbox key.
        PeerMailboxKey = 5,
        /// The contact was re-pinned with a new identity.
        ContactRepinned = 6,
        /// Handshake replay state was reset by the user.
        ReplayReset = 7,
        /// The safety number was confirmed.
        SafetyNumberVerified = 8,
        /// A pairing secret was entered.
        PairingSecretSet = 9,
        /// The peer's audit keys were first seen (key hash: SHA-256 of their binding).
        PeerAuditKeys = 10,
    }
);

code_enum!(
    /// Relay events of the line.
    RelayEventKind {
        /// Connected to the relay.
        Connected = 1,
        /// Lost the relay.
        Disconnected = 2,
        /// A sealed envelope was durably queued at the relay.
        EnvelopeQueued = 3,
        /// A sealed envelope arrived through the relay.
        EnvelopeReceived = 4,
        /// The relay reported the peer absent.
        NoSubscriber = 5,
    }
);

code_enum!(
    /// Kinds of anomaly, aggregated per minute.
    AnomalyKind {
        /// A replayed data frame was dropped.
        ReplayedFrame = 1,
        /// A frame failed to decrypt.
        UndecryptableFrame = 2,
        /// A malformed frame was dropped.
        MalformedFrame = 3,
        /// A replayed handshake message was refused.
        ReplayedHandshake = 4,
        /// Handshakes above the rate limit were dropped.
        HandshakeRateLimited = 5,
        /// The peer signed two checkpoints that cannot share a history (evidence stored).
        PeerEquivocation = 6,
        /// The peer offered a checkpoint that failed verification.
        BadCheckpointOffer = 7,
        /// The peer offered an older checkpoint than one already cosigned.
        StaleCheckpointOffer = 8,
        /// A cosignature from the peer failed verification.
        BadCosignature = 9,
        /// A receipt from the peer failed verification.
        BadReceipt = 10,
        /// The peer acknowledged a seq that was never sent.
        UnexpectedAck = 11,
        /// The peer claims to hold a checkpoint of this log that the log cannot reproduce.
        PeerStateMismatch = 12,
        /// The peer holds other messages under seqs this node reused: this node's store was
        /// rolled back (restored from a backup); its pending messages were renumbered.
        SeqRollback = 13,
        /// The peer no longer holds messages it acknowledged (its store was rolled back); they
        /// were sent again.
        PeerLostMessages = 14,
    }
);

/// Serializes a 32-byte hash as lowercase hex.
pub(crate) fn hex32<S: serde::Serializer>(h: &Hash, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(h))
}

/// One audit event.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A call was offered.
    CallOffered {
        /// Node-chosen call id.
        call: u64,
        /// Who offered it.
        direction: Direction,
    },
    /// A call was established.
    CallStarted {
        /// Call id.
        call: u64,
        /// Who offered it.
        direction: Direction,
    },
    /// A call ended.
    CallEnded {
        /// Call id.
        call: u64,
        /// Why.
        reason: CallEndReason,
    },
    /// This node sent message `seq` (logged before it leaves).
    MsgSent {
        /// Per-line send sequence.
        seq: u64,
        /// Salted commitment to the plaintext.
        #[serde(serialize_with = "hex32")]
        commitment: Hash,
        /// SHA-256 of the first ciphertext carrying it (information only).
        #[serde(serialize_with = "hex32")]
        ciphertext_hash: Hash,
    },
    /// The peer acknowledged every message of this node up to and including `seq` (cumulative,
    /// like the protocol's `ACK(delivered_upto)`; logged when `delivered_upto` advances).
    MsgAcked {
        /// The new `delivered_upto`.
        seq: u64,
    },
    /// This node received the peer's message `seq` (logged before it is acknowledged).
    #[serde(rename = "msg_recv")]
    MsgReceived {
        /// The peer's send sequence.
        seq: u64,
        /// Salted commitment to the plaintext.
        #[serde(serialize_with = "hex32")]
        commitment: Hash,
        /// SHA-256 of the ciphertext that carried it (information only).
        #[serde(serialize_with = "hex32")]
        ciphertext_hash: Hash,
    },
    /// A key event.
    KeyEvent {
        /// What happened.
        kind: KeyEventKind,
        /// Hash identifying the key concerned.
        #[serde(serialize_with = "hex32")]
        key_hash: Hash,
    },
    /// A relay event.
    RelayEvent {
        /// What happened.
        kind: RelayEventKind,
        /// Relay identifier (SHA-256 of its pinned key).
        #[serde(serialize_with = "hex32")]
        relay: Hash,
    },
    /// The first anomaly of this kind in this minute (`count` is 1).
    Anomaly {
        /// Kind.
        kind: AnomalyKind,
        /// `time_ms / 60000` of the window.
        minute: u64,
        /// Always 1.
        count: u32,
    },
    /// Total anomalies of this kind in a past minute, written once the minute is over if more
    /// than the first one occurred.
    AnomalySummary {
        /// Kind.
        kind: AnomalyKind,
        /// Window.
        minute: u64,
        /// Total in the window, the first one included.
        count: u32,
    },
    /// This node cosigned the peer's checkpoint of this size and root.
    PeerCheckpointCosigned {
        /// Peer tree size.
        size: u64,
        /// Peer root hash.
        #[serde(serialize_with = "hex32")]
        root: Hash,
    },
}

impl Event {
    /// False for the one event that witnessing itself produces (`peer_checkpoint_cosigned`):
    /// such an entry is signed by the next checkpoint made for another reason, and never
    /// calls for one itself, or two logs witnessing each other would cosign each other's
    /// records of cosigning for ever (design §10, "idle is cheap").
    pub fn calls_for_checkpoint(&self) -> bool {
        !matches!(self, Event::PeerCheckpointCosigned { .. })
    }

    /// The kind byte.
    pub fn kind_code(&self) -> u8 {
        match self {
            Event::CallOffered { .. } => 0x01,
            Event::CallStarted { .. } => 0x02,
            Event::CallEnded { .. } => 0x03,
            Event::MsgSent { .. } => 0x10,
            Event::MsgAcked { .. } => 0x11,
            Event::MsgReceived { .. } => 0x12,
            Event::KeyEvent { .. } => 0x20,
            Event::RelayEvent { .. } => 0x30,
            Event::Anomaly { .. } => 0x40,
            Event::AnomalySummary { .. } => 0x41,
            Event::PeerCheckpointCosigned { .. } => 0x50,
        }
    }

    fn payload_len(kind: u8) -> Option<usize> {
        Some(match kind {
            0x01..=0x03 => 9,
            0x10 | 0x12 => 72,
            0x11 => 8,
            0x20 | 0x30 => 33,
            0x40 | 0x41 => 13,
            0x50 => 40,
            _ => return None,
        })
    }

    fn write_payload(&self, out: &mut Vec<u8>) {
        match self {
            Event::CallOffered { call, direction } | Event::CallStarted { call, direction } => {
                out.extend_from_slice(&call.to_be_bytes());
                out.push(direction.code());
            }
            Event::CallEnded { call, reason } => {
                out.extend_from_slice(&call.to_be_bytes());
                out.push(reason.code());
            }
            Event::MsgSent {
                seq,
                commitment,
                ciphertext_hash,
            }
            | Event::MsgReceived {
                seq,
                commitment,
                ciphertext_hash,
            } => {
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(commitment);
                out.extend_from_slice(ciphertext_hash);
            }
            Event::MsgAcked { seq } => out.extend_from_slice(&seq.to_be_bytes()),
            Event::KeyEvent { kind, key_hash } => {
                out.push(kind.code());
                out.extend_from_slice(key_hash);
            }
            Event::RelayEvent { kind, relay } => {
                out.push(kind.code());
                out.extend_from_slice(relay);
            }
            Event::Anomaly {
                kind,
                minute,
                count,
            }
            | Event::AnomalySummary {
                kind,
                minute,
                count,
            } => {
                out.push(kind.code());
                out.extend_from_slice(&minute.to_be_bytes());
                out.extend_from_slice(&count.to_be_bytes());
            }
            Event::PeerCheckpointCosigned { size, root } => {
                out.extend_from_slice(&size.to_be_bytes());
                out.extend_from_slice(root);
            }
        }
    }

    fn read_payload(kind: u8, p: &mut Cursor<'_>) -> Result<Self, EntryError> {
        Ok(match kind {
            0x01 | 0x02 => {
                let call = p.u64();
                let d = p.u8();
                let direction = Direction::from_code(d).ok_or(EntryError::Field {
                    field: "direction",
                    value: d,
                })?;
                if kind == 0x01 {
                    Event::CallOffered { call, direction }
                } else {
                    Event::CallStarted { call, direction }
                }
            }
            0x03 => {
                let call = p.u64();
                let r = p.u8();
                let reason = CallEndReason::from_code(r).ok_or(EntryError::Field {
                    field: "reason",
                    value: r,
                })?;
                Event::CallEnded { call, reason }
            }
            0x10 | 0x12 => {
                let seq = p.u64();
                let commitment = p.hash();
                let ciphertext_hash = p.hash();
                if kind == 0x10 {
                    Event::MsgSent {
                        seq,
                        commitment,
                        ciphertext_hash,
                    }
                } else {
                    Event::MsgReceived {
                        seq,
                        commitment,
                        ciphertext_hash,
                    }
                }
            }
            0x11 => Event::MsgAcked { seq: p.u64() },
            0x20 => {
                let k = p.u8();
                let kind = KeyEventKind::from_code(k).ok_or(EntryError::Field {
                    field: "key event kind",
                    value: k,
                })?;
                Event::KeyEvent {
                    kind,
                    key_hash: p.hash(),
                }
            }
            0x30 => {
                let k = p.u8();
                let kind = RelayEventKind::from_code(k).ok_or(EntryError::Field {
                    field: "relay event kind",
                    value: k,
                })?;
                Event::RelayEvent {
                    kind,
                    relay: p.hash(),
                }
            }
            0x40 | 0x41 => {
                let k = p.u8();
                let akind = AnomalyKind::from_code(k).ok_or(EntryError::Field {
                    field: "anomaly kind",
                    value: k,
                })?;
                let minute = p.u64();
                let count = p.u32();
                if kind == 0x40 {
                    if count != 1 {
                        return Err(EntryError::Field {
                            field: "anomaly count",
                            value: u8::try_from(count).unwrap_or(u8::MAX),
                        });
                    }
                    Event::Anomaly {
                        kind: akind,
                        minute,
                        count,
                    }
                } else {
                    Event::AnomalySummary {
                        kind: akind,
                        minute,
                        count,
                    }
                }
            }
            0x50 => Event::PeerCheckpointCosigned {
                size: p.u64(),
                root: p.hash(),
            },
            other => return Err(EntryError::Kind(other)),
        })
    }
}

/// A fixed-length reader over a slice whose length was checked beforehand; reads past the end
/// yield zeros instead of panicking (they cannot happen after the length check).
struct Cursor<'a> {
    rest: &'a [u8],
}

impl Cursor<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some((head, tail)) = self.rest.split_first_chunk::<N>() {
            out = *head;
            self.rest = tail;
        }
        out
    }
    fn u8(&mut self) -> u8 {
        u8::from_be_bytes(self.take::<1>())
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take::<4>())
    }
    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.take::<8>())
    }
    fn hash(&mut self) -> Hash {
        self.take::<32>()
    }
}

/// One log entry: its position, the previous leaf's hash, time, event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Position in the log.
    pub index: u64,
    /// Leaf hash of the previous entry (zeros for the first).
    #[serde(serialize_with = "hex32")]
    pub prev: Hash,
    /// Unix milliseconds.
    pub time_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

impl Entry {
    /// The leaf bytes.
    pub fn to_leaf(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_LEAF_LEN);
        out.push(LEAF_VERSION);
        out.push(self.event.kind_code());
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.prev);
        out.extend_from_slice(&self.time_ms.to_be_bytes());
        self.event.write_payload(&mut out);
        out
    }

    /// Parses leaf bytes, refusing any length or value not in the tables above.
    pub fn from_leaf(leaf: &[u8]) -> Result<Self, EntryError> {
        let (&version, rest) = leaf.split_first().ok_or(EntryError::TooShort(leaf.len()))?;
        if version != LEAF_VERSION {
            return Err(EntryError::Version(version));
        }
        let (&kind, _) = rest.split_first().ok_or(EntryError::TooShort(leaf.len()))?;
        let expected = LEAF_HEADER_LEN + Event::payload_len(kind).ok_or(EntryError::Kind(kind))?;
        if leaf.len() != expected {
            return Err(EntryError::Length {
                kind,
                len: leaf.len(),
                expected,
            });
        }
        let mut c = Cursor { rest: leaf };
        let _version = c.u8();
        let _kind = c.u8();
        let index = c.u64();
        let prev = c.hash();
        let time_ms = c.u64();
        let event = Event::read_payload(kind, &mut c)?;
        Ok(Self {
            index,
            prev,
            time_ms,
            event,
        })
    }
}

/// Fast read of the `index` field of leaf bytes whose length was already validated.
pub(crate) fn leaf_index_field(leaf: &[u8]) -> Option<u64> {
    let b = leaf.get(2..10)?;
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

/// `SHA-256("liaison/1 msg-commit" || salt || body)`.
pub fn commitment(salt: &[u8; 32], body: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(COMMITMENT_DOMAIN);
    h.update(salt);
    h.update(body);
    h.finalize().into()
}

/// A fresh random 32-byte commitment salt (the sender's side).
pub fn new_salt() -> Result<[u8; 32], getrandom::Error> {
    let mut s = [0u8; 32];
    getrandom::fill(&mut s)?;
    Ok(s)
}

/// SHA-256 of a ciphertext, for the information-only field of message entries.
pub fn ciphertext_hash(ciphertext: &[u8]) -> Hash {
    Sha256::digest(ciphertext).into()
}

/// Why an opened message does not match an entry.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The entry is not a `msg_sent` or `msg_recv`.
    #[error("entry {index} is not a message entry")]
    NotAMessage {
        /// Entry index.
        index: u64,
    },
    /// Text and salt do not hash to the entry's commitment.
    #[error("the revealed text and salt do not match the commitment of entry {index} (seq {seq})")]
    Mismatch {
        /// Entry index.
        index: u64,
        /// Message seq.
        seq: u64,
    },
}

/// What a successful opening proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OpenedMessage {
    /// Entry index.
    pub index: u64,
    /// True for `msg_sent`, false for `msg_recv`.
    pub sent: bool,
    /// Message seq.
    pub seq: u64,
}

/// Checks a revealed message (`body` and `salt`) against a message entry's commitment.
pub fn verify_opening(
    entry: &Entry,
    salt: &[u8; 32],
    body: &[u8],
) -> Result<OpenedMessage, OpenError> {
    let (sent, seq, c) = match &entry.event {
        Event::MsgSent {
            seq, commitment, ..
        } => (true, *seq, commitment),
        Event::MsgReceived {
            seq, commitment, ..
        } => (false, *seq, commitment),
        _ => return Err(OpenError::NotAMessage { index: entry.index }),
    };
    if commitment(salt, body) != *c {
        return Err(OpenError::Mismatch {
            index: entry.index,
            seq,
        });
    }
    Ok(OpenedMessage {
        index: entry.index,
        sent,
        seq,
    })
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]

    use super::*;
    use proptest::prelude::*;

    pub(crate) fn all_events() -> Vec<Event> {
        vec![
            Event::CallOffered {
                call: 1,
                direction: Direction::Outgoing,
            },
            Event::CallStarted {
                call: 1,
                direction: Direction::Incoming,
            },
            Event::CallEnded {
                call: 1,
                reason: CallEndReason::PeerClosed,
            },
            Event::MsgSent {
                seq: 7,
                commitment: [1; 32],
                ciphertext_hash: [2; 32],
            },
            Event::MsgAcked { seq: 7 },
            Event::MsgReceived {
                seq: 9,
                commitment: [3; 32],
                ciphertext_hash: [4; 32],
            },
            Event::KeyEvent {
                kind: KeyEventKind::SafetyNumberVerified,
                key_hash: [5; 32],
            },
            Event::RelayEvent {
                kind: RelayEventKind::EnvelopeQueued,
                relay: [6; 32],
            },
            Event::Anomaly {
                kind: AnomalyKind::ReplayedFrame,
                minute: 28_000_000,
                count: 1,
            },
            Event::AnomalySummary {
                kind: AnomalyKind::ReplayedFrame,
                minute: 28_000_000,
                count: 99,
            },
            Event::PeerCheckpointCosigned {
                size: 42,
                root: [7; 32],
            },
        ]
    }

    #[test]
    fn golden_msg_sent_leaf() {
        let e = Entry {
            index: 0x0102,
            prev: [0xaa; 32],
            time_ms: 1_700_000_000_000,
            event: Event::MsgSent {
                seq: 5,
                commitment: [0x11; 32],
                ciphertext_hash: [0x22; 32],
            },
        };
        let expected = format!(
            "01{}{}{}{}{}{}{}",
            "10",
            "0000000000000102",
            "aa".repeat(32),
            "0000018bcfe56800",
            "0000000000000005",
            "11".repeat(32),
            "22".repeat(32)
        );
        assert_eq!(hex::encode(e.to_leaf()), expected);
        assert_eq!(e.to_leaf().len(), MAX_LEAF_LEN);
    }

    #[test]
    fn golden_anomaly_leaf() {
        let e = Entry {
            index: 3,
            prev: [0; 32],
            time_ms: 60_000,
            event: Event::AnomalySummary {
                kind: AnomalyKind::UndecryptableFrame,
                minute: 1,
                count: 300,
            },
        };
        assert_eq!(
            hex::encode(e.to_leaf()),
            format!(
                "0141{}{}{}{}",
                "0000000000000003",
                "00".repeat(32),
                "000000000000ea60",
                "0200000000000000010000012c"
            )
        );
    }

    #[test]
    fn every_kind_round_trips_at_its_fixed_length() {
        for (i, ev) in all_events().into_iter().enumerate() {
            let e = Entry {
                index: i as u64,
                prev: [i as u8; 32],
                time_ms: 1000 + i as u64,
                event: ev,
            };
            let leaf = e.to_leaf();
            assert_eq!(
                leaf.len(),
                LEAF_HEADER_LEN + Event::payload_len(leaf[1]).unwrap()
            );
            assert_eq!(Entry::from_leaf(&leaf).unwrap(), e);
            assert_eq!(leaf_index_field(&leaf), Some(i as u64));
            assert_eq!(&leaf[10..42], &[i as u8; 32]);
            // One byte more or less is refused.
            let mut longer = leaf.clone();
            longer.push(0);
            assert!(matches!(
                Entry::from_leaf(&longer),
                Err(EntryError::Length { .. })
            ));
            assert!(Entry::from_leaf(&leaf[..leaf.len() - 1]).is_err());
        }
    }

    #[test]
    fn refuses_bad_versions_kinds_and_values() {
        let e = Entry {
            index: 0,
            prev: [0; 32],
            time_ms: 0,
            event: Event::CallEnded {
                call: 1,
                reason: CallEndReason::Normal,
            },
        };
        let mut leaf = e.to_leaf();
        leaf[0] = 2;
        assert_eq!(Entry::from_leaf(&leaf), Err(EntryError::Version(2)));
        leaf[0] = 1;
        leaf[1] = 0x99;
        assert_eq!(Entry::from_leaf(&leaf), Err(EntryError::Kind(0x99)));
        leaf[1] = 0x03;
        *leaf.last_mut().unwrap() = 200;
        assert!(matches!(
            Entry::from_leaf(&leaf),
            Err(EntryError::Field { .. })
        ));
        assert_eq!(Entry::from_leaf(&[]), Err(EntryError::TooShort(0)));
    }

    #[test]
    fn commitment_is_domain_separated_and_opening_checks_it() {
        let salt = [9u8; 32];
        let c = commitment(&salt, b"hello");
        let mut m = b"liaison/1 msg-commit".to_vec();
        m.extend_from_slice(&salt);
        m.extend_from_slice(b"hello");
        assert_eq!(c, <[u8; 32]>::from(Sha256::digest(&m)));
        let e = Entry {
            index: 4,
            prev: [0; 32],
            time_ms: 0,
            event: Event::MsgReceived {
                seq: 2,
                commitment: c,
                ciphertext_hash: [0; 32],
            },
        };
        assert_eq!(
            verify_opening(&e, &salt, b"hello"),
            Ok(OpenedMessage {
                index: 4,
                sent: false,
                seq: 2
            })
        );
        assert_eq!(
            verify_opening(&e, &salt, b"hellO"),
            Err(OpenError::Mismatch { index: 4, seq: 2 })
        );
        assert_eq!(
            verify_opening(&e, &[8; 32], b"hello"),
            Err(OpenError::Mismatch { index: 4, seq: 2 })
        );
        let ack = Entry {
            event: Event::MsgAcked { seq: 2 },
            ..e
        };
        assert_eq!(
            verify_opening(&ack, &salt, b"hello"),
            Err(OpenError::NotAMessage { index: 4 })
        );
        assert_ne!(new_salt().unwrap(), new_salt().unwrap());
    }

    #[test]
    fn serializes_for_json_display() {
        let e = Entry {
            index: 1,
            prev: [0; 32],
            time_ms: 5,
            event: Event::MsgAcked { seq: 3 },
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], "msg_acked");
        assert_eq!(v["seq"], 3);
        assert_eq!(v["index"], 1);
    }

    proptest! {
        #[test]
        fn from_leaf_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(e) = Entry::from_leaf(&bytes) {
                prop_assert_eq!(e.to_leaf(), bytes);
            }
        }
    }
}
