//! liaison-audit: audit logs of a line that neither side can rewrite.
//!
//! # Design overview
//!
//! Each node keeps, per line, an append-only **RFC 9162 Merkle log** of what happened on it:
//! calls offered, started and ended; messages sent, acknowledged and received (as a salted
//! commitment, never the plaintext); key and relay events; anomalies, aggregated per minute;
//! and the peer checkpoints it cosigned. Leaves are hand-encoded fixed layouts ([`entry`]), each
//! carrying its own index and its predecessor's leaf hash.
//!
//! At every group commit (≤ 100 ms) the node stores the new entries in one SQLite transaction
//! and **only then** signs a **C2SP checkpoint** ([`checkpoint`], a [`note`] signed by the
//! node's *log key*). Checkpoints are only ever signed over a prefix of one append-only tree,
//! so no two of them are inconsistent. Records of cosignatures never call for a checkpoint of
//! their own (the next one covers them), and cosigning is rate-bounded per peer, so an idle
//! line costs no entries and a peer cannot grow our log by offering checkpoints
//! ([`line`](mod@line) says why).
//!
//! The **peer witnesses** the log over the live line ([`wire`]): the owner offers each new
//! checkpoint with an RFC 9162 consistency proof from the last one the peer cosigned; the peer's
//! [`witness`] checks key binding, origin (this line, this key), signature and consistency,
//! persists its new state in the same transaction, and returns a **C2SP cosignature**
//! ([`cosig`]) made with its separate *witness key*. The owner verifies it before storing it.
//! The receiver of a message returns a **receipt** ([`receipt`]): its `msg_recv` leaf with an
//! inclusion proof to a checkpoint the sender cosigned. Both audit keys are bound to the
//! identity key by a signed statement ([`keys`]).
//!
//! `liaison audit export` writes a self-contained [`bundle`]; the offline [checker](mod@check) verifies
//! one bundle, or both sides' bundles of a line against each other: edits, reordering,
//! truncation below a checkpoint the other side holds, forks, replayed or foreign checkpoints,
//! wrong keys, and acknowledged messages without the matching receipt on the other side.
//!
//! Layers: [`merkle`] (sans-IO tree and proofs), [`entry`], [`note`], [`checkpoint`],
//! [`cosig`], [`keys`], [`wire`], [`receipt`], [`log`] (the owner's sans-IO state machine),
//! [`witness`] (the peer's), [`line`](mod@line) (both over a storage trait), [`mem`] (in-memory storage
//! for tests and benches), [`store`] (SQLite), [`bundle`], [`check`](mod@check). Time is always passed
//! in (`now_ms`, Unix milliseconds); nothing here reads a clock or touches the network.
//!
//! What a bundle reveals, and what the checker can and cannot prove, is in `docs/audit.md`.

pub mod bundle;
pub mod check;
pub mod checkpoint;
mod codec;
pub mod cosig;
pub mod entry;
pub mod keys;
pub mod line;
pub mod log;
pub mod mem;
pub mod merkle;
pub mod note;
pub mod receipt;
pub mod store;
pub mod wire;
pub mod witness;

/// A SHA-256 output.
pub type Hash = [u8; 32];

pub use bundle::{Bundle, BundleReadError};
pub use check::{CheckError, CheckReport, check, check_bytes, check_opening};
pub use codec::DecodeError;
pub use entry::{AnomalyKind, Entry, Event, commitment, verify_opening};
pub use keys::{KeyBinding, LocalKeys, channel_id};
pub use line::{Line, LineError, LineStatus};
pub use mem::MemoryLine;
pub use store::{AuditReader, LineAudit, StoreError, VerifyError};
pub use wire::AuditMessage;
