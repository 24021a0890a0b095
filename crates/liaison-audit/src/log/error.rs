//! What can go wrong on the log owner's side.

use crate::checkpoint::CheckpointError;
use crate::keys::KeyError;
use crate::merkle::ProofError;

/// Errors of the log owner's side.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The peer's key binding does not verify or is not for the pinned identity.
    #[error("peer audit keys: {0}")]
    PeerKeys(String),
    /// A cosignature for a checkpoint this log never signed.
    #[error("cosignature for a checkpoint of size {size} this log never signed")]
    UnknownCheckpoint {
        /// Size named.
        size: u64,
    },
    /// The cosignature does not verify against this log's checkpoint.
    #[error("cosignature for size {size} does not verify: {reason}")]
    BadCosignature {
        /// Size.
        size: u64,
        /// Why.
        reason: String,
    },
    /// The peer claims to hold a checkpoint of this log that the log does not have.
    #[error("the peer holds a checkpoint of size {size} that this log cannot reproduce")]
    PeerStateInconsistent {
        /// Size the peer claims.
        size: u64,
    },
    /// Stored state does not reproduce the last signed checkpoint (the store lost or changed
    /// entries): continuing would sign an inconsistent checkpoint.
    #[error("stored log is inconsistent with its own signed checkpoint: {0}")]
    StoreInconsistent(String),
    /// Local key problem.
    #[error("keys: {0}")]
    Keys(#[from] KeyError),
    /// Signing failed.
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// Proof generation failed.
    #[error("proof: {0}")]
    Proof(#[from] ProofError),
    /// A commit batch was handed back out of order.
    #[error("commit batch does not continue the durable log")]
    BatchOutOfOrder,
}
