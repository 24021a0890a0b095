//! The sans-IO witness: checks the peer's checkpoint offers before cosigning them.
//!
//! An offer is cosigned only if
//!
//! 1. its key binding verifies, names the pinned peer identity, and equals the binding seen
//!    before (audit keys cannot change under a running line);
//! 2. the checkpoint is for this line (`origin = liaison/1/audit/<channel>/<log key>`: another
//!    channel is a *foreign* checkpoint) and verifies under the bound log key;
//! 3. it is not older than what was already cosigned (an older one is a *replay*, or a *fork* if
//!    it contradicts a checkpoint cosigned at that size);
//! 4. a same-size offer has the same root (else a *fork*), and a larger one comes with a valid
//!    RFC 9162 consistency proof from the last cosigned checkpoint (a proof of the right shape
//!    that does not lead to both roots is a *fork*: two checkpoints of one key that cannot
//!    share a history; a proof of the wrong shape is refused as malformed). If the proof
//!    starts at another size the witness answers [`Resync`] with the size it holds.
//!
//! The decision ([`WitnessOutcome`]) is pure; the driver persists the new state (and the fork
//! evidence on failure) in one transaction, then calls [`Witness::apply`] and only then sends
//! the cosignature.

use std::collections::BTreeMap;

use ed25519_dalek::VerifyingKey;

use crate::Hash;
use crate::checkpoint::{CheckpointError, SignedCheckpoint};
use crate::cosig::Cosignature;
use crate::entry::AnomalyKind;
use crate::keys::{KeyBinding, LocalKeys};
use crate::merkle::{ProofError, verify_consistency};
use crate::wire::{CheckpointOffer, CosignatureMsg, Resync};

/// Why an offer was refused.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WitnessError {
    /// The binding does not verify, is for another identity, or differs from the known one.
    #[error("wrong key: {0}")]
    WrongKey(String),
    /// The checkpoint belongs to another line.
    #[error("foreign checkpoint: origin {found}, expected {expected}")]
    ForeignCheckpoint {
        /// Origin found.
        found: String,
        /// Origin expected.
        expected: String,
    },
    /// The checkpoint signature does not verify.
    #[error("checkpoint signature does not verify")]
    BadSignature,
    /// The consistency proof has the wrong shape (empty, too short or too long).
    #[error("malformed consistency proof: {0}")]
    BadProof(ProofError),
    /// A checkpoint of size 0 (nothing to witness).
    #[error("empty checkpoint offered")]
    EmptyCheckpoint,
    /// Older than the checkpoint already cosigned.
    #[error("replayed checkpoint: size {offered} offered, {held} already cosigned")]
    Replayed {
        /// Offered size.
        offered: u64,
        /// Cosigned size.
        held: u64,
    },
    /// Two checkpoints signed by the peer's log key that cannot share a history.
    #[error(
        "the peer's log forked: it signed\n{}and\n{}which cannot share a history",
        held.to_note(),
        offered.to_note()
    )]
    Fork {
        /// The checkpoint cosigned before.
        held: Box<SignedCheckpoint>,
        /// The offered one.
        offered: Box<SignedCheckpoint>,
    },
}

impl WitnessError {
    /// The anomaly this refusal is logged as.
    pub fn anomaly_kind(&self) -> AnomalyKind {
        match self {
            WitnessError::Replayed { .. } => AnomalyKind::StaleCheckpointOffer,
            WitnessError::Fork { .. } => AnomalyKind::PeerEquivocation,
            _ => AnomalyKind::BadCheckpointOffer,
        }
    }
}

/// A verified offer, ready to be persisted and answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessAccept {
    /// The peer's binding.
    pub binding: KeyBinding,
    /// The cosigned checkpoint.
    pub checkpoint: SignedCheckpoint,
    /// Size the consistency proof started from (0 for the first).
    pub from_size: u64,
    /// The proof.
    pub proof: Vec<Hash>,
    /// Our cosignature.
    pub cosignature: Cosignature,
    /// False when re-cosigning the checkpoint already held (nothing new to store).
    pub is_new: bool,
    /// Size cosigned before this one (0 for none): the state this decision was based on.
    pub prior_size: u64,
    /// The reply.
    pub reply: CosignatureMsg,
}

/// What to do with an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum WitnessOutcome {
    /// Persist, apply, send `reply`.
    Cosign(WitnessAccept),
    /// Send back the state held.
    Resync(Resync),
}

/// Witness state for the peer's log on one line.
#[derive(Debug, Clone)]
pub struct Witness {
    channel: Hash,
    peer_identity: VerifyingKey,
    latest: Option<SignedCheckpoint>,
    history: BTreeMap<u64, Hash>,
}

impl Witness {
    /// State for the line `channel` with the pinned `peer_identity`; `latest` is the last
    /// cosigned checkpoint and `history` every cosigned (size, root).
    pub fn new(
        channel: Hash,
        peer_identity: VerifyingKey,
        latest: Option<SignedCheckpoint>,
        history: impl IntoIterator<Item = (u64, Hash)>,
    ) -> Self {
        let mut history: BTreeMap<u64, Hash> = history.into_iter().collect();
        if let Some(l) = &latest {
            history.insert(l.size(), *l.root());
        }
        Self {
            channel,
            peer_identity,
            latest,
            history,
        }
    }

    /// The last cosigned checkpoint.
    pub fn latest(&self) -> Option<&SignedCheckpoint> {
        self.latest.as_ref()
    }

    /// Size of the last cosigned checkpoint (0 for none).
    pub fn size(&self) -> u64 {
        self.latest.as_ref().map_or(0, SignedCheckpoint::size)
    }

    /// Root cosigned at `size`, if any.
    pub fn root_at(&self, size: u64) -> Option<Hash> {
        self.history.get(&size).copied()
    }

    /// Decides on an offer. `known_peer` is the peer binding seen before (if any); `lookup`
    /// returns a previously cosigned checkpoint by size (for fork evidence about older sizes).
    pub fn check_offer(
        &self,
        offer: &CheckpointOffer,
        known_peer: Option<&KeyBinding>,
        local: &LocalKeys,
        now_ms: u64,
        lookup: &dyn Fn(u64) -> Option<SignedCheckpoint>,
    ) -> Result<WitnessOutcome, WitnessError> {
        let b = &offer.binding;
        b.verify()
            .map_err(|e| WitnessError::WrongKey(e.to_string()))?;
        if b.identity != self.peer_identity {
            return Err(WitnessError::WrongKey(
                "binding is for another identity".into(),
            ));
        }
        if known_peer.is_some_and(|k| k != b) {
            return Err(WitnessError::WrongKey(
                "the peer's audit keys changed".into(),
            ));
        }
        let cp = &offer.checkpoint;
        cp.verify(&self.channel, &b.log_key).map_err(|e| match e {
            CheckpointError::ForeignOrigin { found, expected } => {
                WitnessError::ForeignCheckpoint { found, expected }
            }
            CheckpointError::WrongKey => {
                WitnessError::WrongKey("checkpoint not signed by the bound log key".into())
            }
            _ => WitnessError::BadSignature,
        })?;
        if cp.size() == 0 {
            return Err(WitnessError::EmptyCheckpoint);
        }
        let fork = |held: SignedCheckpoint| WitnessError::Fork {
            held: Box::new(held),
            offered: Box::new(cp.clone()),
        };
        let prior_size = self.size();
        let mut is_new = true;
        if let Some(l) = &self.latest {
            if cp.size() < l.size() {
                if let Some(root) = self.history.get(&cp.size())
                    && root != cp.root()
                {
                    return Err(fork(lookup(cp.size()).unwrap_or_else(|| l.clone())));
                }
                return Err(WitnessError::Replayed {
                    offered: cp.size(),
                    held: l.size(),
                });
            }
            if cp.size() == l.size() {
                if cp.root() != l.root() {
                    return Err(fork(l.clone()));
                }
                is_new = false;
            } else {
                if offer.from_size != l.size() {
                    return Ok(WitnessOutcome::Resync(Resync {
                        size: l.size(),
                        root: *l.root(),
                    }));
                }
                match verify_consistency(l.size(), cp.size(), &offer.proof, l.root(), cp.root()) {
                    Ok(()) => {}
                    Err(ProofError::RootMismatch) => return Err(fork(l.clone())),
                    Err(e) => return Err(WitnessError::BadProof(e)),
                }
            }
        }
        let timestamp = now_ms / 1000;
        let cosignature = Cosignature::sign(local.witness_signer(), &cp.checkpoint, timestamp)
            .map_err(|_| WitnessError::BadSignature)?;
        Ok(WitnessOutcome::Cosign(WitnessAccept {
            binding: b.clone(),
            checkpoint: cp.clone(),
            from_size: if self.latest.is_some() {
                offer.from_size
            } else {
                0
            },
            proof: if self.latest.is_some() {
                offer.proof.clone()
            } else {
                Vec::new()
            },
            cosignature,
            is_new,
            prior_size,
            reply: CosignatureMsg {
                binding: local.binding().clone(),
                size: cp.size(),
                root: *cp.root(),
                cosignature,
            },
        }))
    }

    /// Applies a persisted decision.
    pub fn apply(&mut self, accept: &WitnessAccept) {
        if accept.checkpoint.size() >= self.size() {
            self.history
                .insert(accept.checkpoint.size(), *accept.checkpoint.root());
            self.latest = Some(accept.checkpoint.clone());
        }
    }
}
