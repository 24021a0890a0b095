//! Receipts: the receiver's `msg_recv` leaf with an inclusion proof to one of its checkpoints
//! that the sender has cosigned.
//!
//! The receiver sends a receipt for each `msg_recv` entry once the sender's cosignature of a
//! checkpoint covering it comes back; the sender verifies it (checkpoint signed by the
//! receiver's identity-bound log key, leaf included under that checkpoint's root, the leaf is a
//! `msg_recv` of a message this node sent with the same seq and commitment, and the checkpoint is
//! one this node witnessed) and keeps it. A kept receipt is the receiver's signed admission that
//! it logged the message; the checker re-verifies receipts inside bundles.

use ed25519_dalek::VerifyingKey;
use serde::Serialize;

use crate::Hash;
use crate::checkpoint::{CheckpointError, SignedCheckpoint};
use crate::codec::{DecodeError, Put, Reader};
use crate::entry::{Entry, EntryError, Event, MAX_LEAF_LEN};
use crate::merkle::{ProofError, leaf_hash, verify_inclusion};

/// Why a receipt was refused.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// The checkpoint does not verify for the peer's log.
    #[error("receipt checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// The leaf does not decode.
    #[error("receipt leaf: {0}")]
    Leaf(#[from] EntryError),
    /// The leaf is not a `msg_recv` entry.
    #[error("receipt leaf is not a msg_recv entry")]
    NotAReceipt,
    /// The leaf's own index is not the proven index.
    #[error("receipt leaf claims index {claimed} but is proven at {proven}")]
    IndexMismatch {
        /// Index in the leaf.
        claimed: u64,
        /// Index proven.
        proven: u64,
    },
    /// The inclusion proof does not verify.
    #[error("receipt inclusion proof: {0}")]
    Inclusion(#[from] ProofError),
}

/// A receipt for one received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The receiver's signed checkpoint.
    pub checkpoint: SignedCheckpoint,
    /// Index of the `msg_recv` leaf.
    pub leaf_index: u64,
    /// The leaf bytes.
    pub leaf: Vec<u8>,
    /// Inclusion proof of the leaf in the checkpoint's tree.
    pub proof: Vec<Hash>,
}

/// What a verified receipt proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct VerifiedReceipt {
    /// The sender's seq.
    pub seq: u64,
    /// The commitment the receiver logged.
    #[serde(serialize_with = "crate::entry::hex32")]
    pub commitment: Hash,
    /// Leaf index in the receiver's log.
    pub leaf_index: u64,
    /// Size of the receiver's checkpoint.
    pub size: u64,
    /// Its root.
    #[serde(serialize_with = "crate::entry::hex32")]
    pub root: Hash,
}

impl Receipt {
    /// Verifies the receipt against the receiver's (peer's) log key for line `channel`.
    pub fn verify(
        &self,
        channel: &Hash,
        peer_log_key: &VerifyingKey,
    ) -> Result<VerifiedReceipt, ReceiptError> {
        self.checkpoint.verify(channel, peer_log_key)?;
        let entry = Entry::from_leaf(&self.leaf)?;
        let Event::MsgReceived {
            seq, commitment, ..
        } = entry.event
        else {
            return Err(ReceiptError::NotAReceipt);
        };
        if entry.index != self.leaf_index {
            return Err(ReceiptError::IndexMismatch {
                claimed: entry.index,
                proven: self.leaf_index,
            });
        }
        verify_inclusion(
            self.leaf_index,
            self.checkpoint.size(),
            &leaf_hash(&self.leaf),
            &self.proof,
            self.checkpoint.root(),
        )?;
        Ok(VerifiedReceipt {
            seq,
            commitment,
            leaf_index: self.leaf_index,
            size: self.checkpoint.size(),
            root: *self.checkpoint.root(),
        })
    }

    /// Encoding: checkpoint note (u16 length + bytes), leaf index u64, leaf (u8 length +
    /// bytes), proof (u8 count + 32-byte hashes).
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        out.put_checkpoint(&self.checkpoint);
        out.put_u64(self.leaf_index);
        let leaf = if self.leaf.len() <= MAX_LEAF_LEN {
            self.leaf.as_slice()
        } else {
            &[]
        };
        out.put_u8(leaf.len() as u8);
        out.put(leaf);
        out.put_proof(&self.proof);
    }

    pub(crate) fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let checkpoint = r.checkpoint("receipt checkpoint")?;
        let leaf_index = r.u64("receipt leaf index")?;
        let len = r.u8("receipt leaf length")?;
        if usize::from(len) > MAX_LEAF_LEN {
            return Err(DecodeError::TooLong {
                what: "receipt leaf",
                len: u64::from(len),
                max: MAX_LEAF_LEN as u64,
            });
        }
        let leaf = r.bytes(usize::from(len), "receipt leaf")?.to_vec();
        let proof = r.proof("receipt proof")?;
        Ok(Self {
            checkpoint,
            leaf_index,
            leaf,
            proof,
        })
    }
}
