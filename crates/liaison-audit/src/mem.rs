//! In-memory [`LineStorage`]: the same driver as the SQLite store, without durability.
//!
//! For tests, benchmarks, simulations and fuzz seeds: two [`MemoryLine`]s exchanging
//! [`crate::wire`] messages behave exactly like two nodes, and [`MemoryLine::bundle`] exports
//! what the SQLite store would.

use std::collections::{BTreeMap, HashMap};

use ed25519_dalek::VerifyingKey;

use crate::Hash;
use crate::bundle::{
    Bundle, BundleCosignature, BundleMeta, Evidence, WitnessedCheckpoint, range_parts,
};
use crate::checkpoint::SignedCheckpoint;
use crate::codec::DecodeError;
use crate::entry::Event;
use crate::keys::{LocalKeys, channel_id};
use crate::line::{Line, LineError, LineStorage};
use crate::log::{AcceptedCosignature, AuditLog, PendingEntry, RestoredLog};
use crate::merkle::{MerkleTree, leaf_hash};
use crate::receipt::Receipt;
use crate::store::StoreError;
use crate::witness::{Witness, WitnessAccept};

/// Everything a line stores, in memory.
#[derive(Debug, Default, Clone)]
pub struct MemoryStorage {
    leaves: Vec<Vec<u8>>,
    checkpoints: Vec<SignedCheckpoint>,
    cosignatures: BTreeMap<u64, crate::cosig::Cosignature>,
    peer_binding: Option<crate::keys::KeyBinding>,
    witnessed: Vec<WitnessedCheckpoint>,
    evidence: Vec<Evidence>,
    receipts: BTreeMap<u64, Receipt>,
    sent: HashMap<u64, Hash>,
    received: BTreeMap<u64, Vec<u8>>,
    receipted_upto: u64,
}

impl MemoryStorage {
    /// The stored leaves.
    pub fn leaves(&self) -> &[Vec<u8>] {
        &self.leaves
    }

    /// The stored own checkpoints, oldest first.
    pub fn checkpoints(&self) -> &[SignedCheckpoint] {
        &self.checkpoints
    }

    /// Receipts held, by seq.
    pub fn receipts(&self) -> &BTreeMap<u64, Receipt> {
        &self.receipts
    }

    /// Fork evidence held.
    pub fn evidence(&self) -> &[Evidence] {
        &self.evidence
    }

    fn add_entries(&mut self, entries: &[PendingEntry]) {
        for p in entries {
            match &p.entry.event {
                Event::MsgSent {
                    seq, commitment, ..
                } => {
                    self.sent.entry(*seq).or_insert(*commitment);
                }
                Event::MsgReceived { .. } => {
                    self.received.insert(p.entry.index, p.leaf.clone());
                }
                _ => {}
            }
            self.leaves.push(p.leaf.clone());
        }
    }
}

impl LineStorage for MemoryStorage {
    fn store_entries(&mut self, entries: &[PendingEntry]) -> Result<(), StoreError> {
        self.add_entries(entries);
        Ok(())
    }

    fn store_checkpoint(&mut self, cp: &SignedCheckpoint, _now_ms: u64) -> Result<(), StoreError> {
        self.checkpoints.push(cp.clone());
        Ok(())
    }

    fn store_witness(
        &mut self,
        accept: &WitnessAccept,
        entries: &[PendingEntry],
    ) -> Result<(), StoreError> {
        let current = self.witnessed.last().map_or(0, |w| w.checkpoint.size());
        if current != accept.prior_size {
            return Err(StoreError::Conflict(format!(
                "witness state is {current}, decision was based on {}",
                accept.prior_size
            )));
        }
        self.witnessed.push(WitnessedCheckpoint {
            checkpoint: accept.checkpoint.clone(),
            from_size: accept.from_size,
            proof: accept.proof.clone(),
            cosignature: accept.cosignature,
        });
        if self.peer_binding.is_none() {
            self.peer_binding = Some(accept.binding.clone());
        }
        self.add_entries(entries);
        Ok(())
    }

    fn store_cosignature(&mut self, acc: &AcceptedCosignature) -> Result<(), StoreError> {
        self.cosignatures.insert(acc.size, acc.cosignature);
        if self.peer_binding.is_none() {
            self.peer_binding = Some(acc.binding.clone());
        }
        Ok(())
    }

    fn store_receipt(&mut self, seq: u64, receipt: &Receipt) -> Result<(), StoreError> {
        self.receipts.insert(seq, receipt.clone());
        Ok(())
    }

    fn store_evidence(
        &mut self,
        held: &SignedCheckpoint,
        offered: &SignedCheckpoint,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.evidence.push(Evidence {
            held: held.clone(),
            offered: offered.clone(),
            detected_ms: now_ms,
        });
        Ok(())
    }

    fn set_receipted_upto(&mut self, size: u64) -> Result<(), StoreError> {
        self.receipted_upto = size;
        Ok(())
    }

    fn witnessed(&self, size: u64) -> Result<Option<SignedCheckpoint>, StoreError> {
        Ok(self
            .witnessed
            .iter()
            .find(|w| w.checkpoint.size() == size)
            .map(|w| w.checkpoint.clone()))
    }

    fn own_checkpoint(&self, size: u64) -> Result<Option<SignedCheckpoint>, StoreError> {
        Ok(self.checkpoints.iter().find(|c| c.size() == size).cloned())
    }

    fn sent_commitment(&self, seq: u64) -> Result<Option<Hash>, StoreError> {
        Ok(self.sent.get(&seq).copied())
    }

    fn received_in(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        Ok(self
            .received
            .range(from..to)
            .map(|(i, l)| (*i, l.clone()))
            .collect())
    }
}

/// A line driven over [`MemoryStorage`].
pub type MemoryLine = Line<MemoryStorage>;

impl Line<MemoryStorage> {
    /// A fresh in-memory line between `keys`' identity and `peer_identity`.
    pub fn in_memory(keys: LocalKeys, peer_identity: VerifyingKey) -> Self {
        let channel = channel_id(keys.identity(), &peer_identity);
        let log = AuditLog::new(keys, peer_identity);
        let witness = Witness::new(channel, peer_identity, None, []);
        Line::from_parts(log, witness, None, 0, MemoryStorage::default())
    }

    /// Reopens a line over storage that outlived its process (a simulated restart, or a
    /// storage put back from a snapshot), the way the SQLite store's `Line::open` does: the
    /// log and the witness are rebuilt from what is stored (entries that were only pending are
    /// gone), and a recovery checkpoint is signed for entries stored after the last one.
    /// Returns the line and, if such a checkpoint was signed, the offer to send.
    pub fn reopen(
        keys: LocalKeys,
        peer_identity: VerifyingKey,
        storage: MemoryStorage,
        now_ms: u64,
    ) -> Result<(Self, Option<Vec<u8>>), LineError> {
        let channel = channel_id(keys.identity(), &peer_identity);
        let mut checkpoints = storage.checkpoints.clone();
        checkpoints.sort_by_key(SignedCheckpoint::size);
        let cosigned = match storage.cosignatures.keys().next_back() {
            Some(&size) => {
                let cp = checkpoints
                    .iter()
                    .find(|c| c.size() == size)
                    .ok_or_else(|| {
                        StoreError::Corrupt(format!("cosignature for unknown checkpoint {size}"))
                    })?;
                Some((size, *cp.root()))
            }
            None => None,
        };
        let log = AuditLog::restore(
            keys,
            peer_identity,
            RestoredLog {
                leaf_hashes: storage.leaves.iter().map(|l| leaf_hash(l)).collect(),
                last_signed: checkpoints.last().cloned(),
                signed_sizes: checkpoints.iter().map(SignedCheckpoint::size).collect(),
                cosigned,
            },
        )?;
        let witness = Witness::new(
            channel,
            peer_identity,
            storage.witnessed.last().map(|w| w.checkpoint.clone()),
            storage
                .witnessed
                .iter()
                .map(|w| (w.checkpoint.size(), *w.checkpoint.root())),
        );
        let peer_binding = storage.peer_binding.clone();
        let receipted_upto = storage.receipted_upto;
        let mut line = Line::from_parts(log, witness, peer_binding, receipted_upto, storage);
        let offer = if line.log().needs_checkpoint() {
            line.commit(now_ms)?
        } else {
            None
        };
        Ok((line, offer))
    }

    /// Exports everything stored as a bundle.
    pub fn bundle(&self, now_ms: u64) -> Result<Bundle, DecodeError> {
        let n = self.storage().leaves.len() as u64;
        self.bundle_range(0, n, now_ms)
    }

    /// Exports entries `[start, end)` with the proofs that tie them to the checkpoints.
    pub fn bundle_range(&self, start: u64, end: u64, now_ms: u64) -> Result<Bundle, DecodeError> {
        let st = self.storage();
        let end = end.min(st.leaves.len() as u64);
        let tree = MerkleTree::from_leaf_hashes(st.leaves.iter().map(|l| leaf_hash(l)));
        let parts = range_parts(&tree, &st.checkpoints, start.min(end), end)
            .map_err(|e| DecodeError::invalid("range", e))?;
        let meta = BundleMeta {
            local: self.log().keys().binding().clone(),
            peer_identity: *self.peer_identity(),
            peer: st.peer_binding.clone(),
            exported_ms: now_ms,
            start: start.min(end),
            covered_size: parts.covered_size,
            prefix: parts.prefix,
            suffix: parts.suffix,
            checkpoints: parts.checkpoints,
            cosignatures: st
                .cosignatures
                .iter()
                .map(|(size, c)| BundleCosignature {
                    size: *size,
                    cosignature: *c,
                })
                .collect(),
            witnessed: st.witnessed.clone(),
            evidence: st.evidence.clone(),
            receipts: st.receipts.values().cloned().collect(),
        };
        let lo = usize::try_from(start.min(end)).unwrap_or(usize::MAX);
        let hi = usize::try_from(end).unwrap_or(usize::MAX);
        Bundle::from_parts(
            meta,
            st.leaves
                .get(lo..hi)
                .unwrap_or_default()
                .iter()
                .map(Vec::as_slice),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::keys::generate_signing_key;

    #[test]
    fn a_reopened_line_carries_on_from_what_was_stored() {
        let (ia, ib) = (
            generate_signing_key().unwrap(),
            generate_signing_key().unwrap(),
        );
        let (log, wit) = (
            generate_signing_key().unwrap(),
            generate_signing_key().unwrap(),
        );
        let keys = || LocalKeys::from_identity(&ia, log.clone(), wit.clone()).unwrap();
        let mut a = MemoryLine::in_memory(keys(), ib.verifying_key());
        let mut b = MemoryLine::in_memory(LocalKeys::generate(&ib).unwrap(), ia.verifying_key());
        a.append(Event::MsgAcked { seq: 1 }, 1);
        let offer = a.commit(2).unwrap().unwrap();
        for m in b.handle_message(&offer, 3).unwrap() {
            a.handle_message(&m, 4).unwrap();
        }
        let cosigned = a.status().cosigned_by_peer;
        assert!(cosigned > 0);
        a.append(Event::MsgAcked { seq: 2 }, 5);
        a.persist(6).unwrap();
        a.append(Event::MsgAcked { seq: 3 }, 7); // only pending: lost with the process
        let durable = a.log().durable_size();
        // (a second after the last cosignature: bob cosigns at most once a second per peer when
        // his own log has nothing new)
        let (mut a, recovery) =
            MemoryLine::reopen(keys(), ib.verifying_key(), a.storage().clone(), 2_000).unwrap();
        assert_eq!(a.log().len(), durable);
        assert_eq!(a.status().cosigned_by_peer, cosigned);
        let recovery = recovery.expect("a checkpoint for the entries stored after the last one");
        for m in b.handle_message(&recovery, 2_001).unwrap() {
            a.handle_message(&m, 2_002).unwrap();
        }
        assert_eq!(a.status().cosigned_by_peer, durable);
        let (ba, bb) = (a.bundle(2_003).unwrap(), b.bundle(2_003).unwrap());
        crate::check(&[ba, bb]).unwrap();
    }
}
