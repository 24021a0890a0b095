//! What can go wrong in a line's audit driver, and which anomaly each peer fault is logged as.

use crate::codec::DecodeError;
use crate::entry::AnomalyKind;
use crate::log::LogError;
use crate::receipt::ReceiptError;
use crate::store::StoreError;
use crate::witness::WitnessError;

/// Errors of a line's audit driver.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// A peer message that does not decode.
    #[error("malformed audit message from the peer: {0}")]
    Malformed(#[from] DecodeError),
    /// The peer's checkpoint offer was refused.
    #[error("refused the peer's checkpoint: {0}")]
    Witness(#[from] WitnessError),
    /// A cosignature or resync from the peer was refused, or a local log error.
    #[error("{0}")]
    Log(#[from] LogError),
    /// A receipt from the peer does not verify.
    #[error("refused the peer's receipt: {0}")]
    Receipt(#[from] ReceiptError),
    /// A receipt for a message this node did not send (or with another commitment).
    #[error("the peer's receipt for seq {seq} matches no message this node sent")]
    ReceiptMismatch {
        /// Seq named.
        seq: u64,
    },
    /// A receipt under a checkpoint this node never cosigned.
    #[error("the peer's receipt is under checkpoint {size}, which this node has not cosigned")]
    ReceiptUnwitnessed {
        /// Checkpoint size.
        size: u64,
    },
    /// A message that needs the peer's audit keys before they are known.
    #[error("the peer's audit keys are not known yet")]
    PeerKeysUnknown,
    /// Local storage failed.
    #[error("audit store: {0}")]
    Store(#[from] StoreError),
}

impl LineError {
    /// True if the peer (or the path to it) misbehaved, false for a local failure.
    pub fn is_peer_fault(&self) -> bool {
        !matches!(self, LineError::Store(_))
            && !matches!(
                self,
                LineError::Log(
                    LogError::StoreInconsistent(_)
                        | LogError::Keys(_)
                        | LogError::Checkpoint(_)
                        | LogError::Proof(_)
                        | LogError::BatchOutOfOrder
                )
            )
    }
}

/// The anomaly a refused peer message is logged as (`None`: a local failure).
pub(super) fn anomaly_for(e: &LineError) -> Option<AnomalyKind> {
    Some(match e {
        LineError::Malformed(_) => AnomalyKind::MalformedFrame,
        LineError::Witness(w) => w.anomaly_kind(),
        LineError::Log(LogError::PeerStateInconsistent { .. }) => AnomalyKind::PeerStateMismatch,
        LineError::Log(
            LogError::PeerKeys(_)
            | LogError::UnknownCheckpoint { .. }
            | LogError::BadCosignature { .. },
        ) => AnomalyKind::BadCosignature,
        LineError::Receipt(_)
        | LineError::ReceiptMismatch { .. }
        | LineError::ReceiptUnwitnessed { .. }
        | LineError::PeerKeysUnknown => AnomalyKind::BadReceipt,
        _ => return None,
    })
}
