//! The sans-IO per-line log: entries in, durable batches and signed checkpoints out.
//!
//! Life of an entry:
//!
//! 1. [`AuditLog::append`] (or [`AuditLog::note_anomaly`]) encodes the event into a leaf,
//!    chains it to the previous leaf and adds it to the in-memory tree, *pending*;
//! 2. at each group commit (≤ 100 ms apart) the driver takes the pending entries with
//!    [`AuditLog::begin_commit`], makes them durable (one SQLite transaction) and hands the
//!    batch back with [`AuditLog::confirm_durable`];
//! 3. only then [`AuditLog::prepare_checkpoint`] signs a checkpoint, and only for the durable
//!    size; once stored, [`AuditLog::checkpoint_persisted`] records it.
//!
//! Hence *durable before signed*, and since the tree is append-only and every checkpoint is
//! signed over a prefix of it, *no two signed checkpoints are inconsistent*.
//!
//! **Only entries that [call for a checkpoint](Event::calls_for_checkpoint) make one.** A
//! `peer_checkpoint_cosigned` entry is the product of witnessing: if it called for a checkpoint
//! of its own, the peer would cosign that checkpoint, log *its* record, sign a checkpoint for
//! it, and the two logs would feed each other several entries a second on an idle line. Such
//! records are durable at once (in the witness transaction) and are signed by the next
//! checkpoint that something else calls for, which covers the whole durable prefix: they are
//! never left out, only not hurried.
//!
//! On restart [`AuditLog::restore`] rebuilds the tree from the stored leaves and refuses to
//! continue if they do not reproduce the last signed checkpoint; entries stored after it (a
//! crash between commit and signature) are simply signed by the next checkpoint. Leaf hashes
//! do not tell records of cosignatures from other entries, so a restored log treats its whole
//! unsigned tail as calling for a checkpoint: it is signed once, whatever it holds.
//!
//! Anomalies are aggregated per (kind, minute): the first occurrence appends an `anomaly` entry
//! at once; further occurrences in that minute only count, and when the minute is over (seen at
//! the next `note_anomaly`, `begin_commit` or [`AuditLog::close`]) one `anomaly_summary` entry
//! records the total if it exceeds 1. At most two entries per kind per minute, whatever a
//! replaying relay does.

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::VerifyingKey;

use crate::Hash;
use crate::checkpoint::{Checkpoint, SignedCheckpoint};
use crate::cosig::{CosigError, Cosignature};
use crate::entry::{ANOMALY_WINDOW_MS, AnomalyKind, Entry, Event};
use crate::keys::{KeyBinding, LocalKeys, channel_id, log_origin};
use crate::merkle::{MerkleTree, leaf_hash};
use crate::receipt::Receipt;
use crate::wire::{CheckpointOffer, CosignatureMsg, Resync};

mod error;
pub use error::LogError;

/// An entry appended but not yet durable, with its leaf bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEntry {
    /// The entry.
    pub entry: Entry,
    /// Its leaf bytes.
    pub leaf: Vec<u8>,
}

/// Entries taken for one group commit; hand back with [`AuditLog::confirm_durable`] once they
/// are durable, or [`AuditLog::abort_commit`] if storing failed.
#[derive(Debug)]
#[must_use = "a commit batch must be confirmed or aborted"]
pub struct CommitBatch {
    start: u64,
    entries: Vec<PendingEntry>,
}

impl CommitBatch {
    /// The entries to store, in index order.
    pub fn entries(&self) -> &[PendingEntry] {
        &self.entries
    }

    /// True if there is nothing to store.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Index of the first entry.
    pub fn start(&self) -> u64 {
        self.start
    }
}

/// A cosignature of one of this log's checkpoints, verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedCosignature {
    /// Cosigned size.
    pub size: u64,
    /// Cosigned root.
    pub root: Hash,
    /// The cosignature.
    pub cosignature: Cosignature,
    /// The peer's binding (its witness key verified the cosignature).
    pub binding: KeyBinding,
}

#[derive(Debug, Clone, Copy)]
struct AnomalyWindow {
    minute: u64,
    count: u32,
}

/// What [`AuditLog::restore`] needs from storage.
#[derive(Debug, Default)]
pub struct RestoredLog {
    /// Every stored leaf hash, in index order (all durable).
    pub leaf_hashes: Vec<Hash>,
    /// The last checkpoint this log signed, if any.
    pub last_signed: Option<SignedCheckpoint>,
    /// Sizes of all checkpoints this log signed.
    pub signed_sizes: Vec<u64>,
    /// Largest own checkpoint the peer cosigned: size and root.
    pub cosigned: Option<(u64, Hash)>,
}

/// One line's audit log (the owner's side).
#[derive(Debug)]
pub struct AuditLog {
    keys: LocalKeys,
    peer_identity: VerifyingKey,
    channel: Hash,
    origin: String,
    tree: MerkleTree,
    durable: u64,
    pending: Vec<PendingEntry>,
    last_signed: Option<SignedCheckpoint>,
    signed_sizes: BTreeSet<u64>,
    /// End (index + 1) of the last durable entry that calls for a checkpoint.
    durable_calls_upto: u64,
    /// End (index + 1) of the last appended entry (pending or durable) that calls for a
    /// checkpoint.
    appended_calls_upto: u64,
    /// Largest size the peer is known to hold (cosigned, or announced by `Resync`).
    peer_holds: Option<(u64, Hash)>,
    anomalies: BTreeMap<AnomalyKind, AnomalyWindow>,
}

impl AuditLog {
    /// An empty log for the line between `keys`' identity and `peer_identity`.
    pub fn new(keys: LocalKeys, peer_identity: VerifyingKey) -> Self {
        let channel = channel_id(keys.identity(), &peer_identity);
        let origin = log_origin(&channel, &keys.binding().log_key);
        Self {
            keys,
            peer_identity,
            channel,
            origin,
            tree: MerkleTree::new(),
            durable: 0,
            pending: Vec::new(),
            last_signed: None,
            signed_sizes: BTreeSet::new(),
            durable_calls_upto: 0,
            appended_calls_upto: 0,
            peer_holds: None,
            anomalies: BTreeMap::new(),
        }
    }

    /// Rebuilds a log from durable storage, checking that the stored leaves reproduce the last
    /// signed checkpoint (signature, origin and root).
    pub fn restore(
        keys: LocalKeys,
        peer_identity: VerifyingKey,
        stored: RestoredLog,
    ) -> Result<Self, LogError> {
        let mut log = Self::new(keys, peer_identity);
        log.tree = MerkleTree::from_leaf_hashes(stored.leaf_hashes);
        log.durable = log.tree.len();
        // Leaf hashes do not tell records of cosignatures from other entries: whatever is
        // stored after the last checkpoint is signed once (module documentation).
        log.durable_calls_upto = log.durable;
        log.appended_calls_upto = log.durable;
        if let Some(cp) = &stored.last_signed {
            cp.verify(&log.channel, &log.keys.binding().log_key)
                .map_err(|e| LogError::StoreInconsistent(format!("last checkpoint: {e}")))?;
            if cp.size() > log.durable {
                return Err(LogError::StoreInconsistent(format!(
                    "{} entries stored but checkpoint {} signed",
                    log.durable,
                    cp.size()
                )));
            }
            if log.tree.root_at(cp.size())? != *cp.root() {
                return Err(LogError::StoreInconsistent(format!(
                    "stored entries do not hash to the root of checkpoint {}",
                    cp.size()
                )));
            }
        }
        let max_size = stored
            .last_signed
            .as_ref()
            .map_or(0, SignedCheckpoint::size);
        if stored.signed_sizes.iter().any(|s| *s > max_size) {
            return Err(LogError::StoreInconsistent(
                "checkpoint sizes beyond the last one".into(),
            ));
        }
        log.signed_sizes = stored.signed_sizes.into_iter().collect();
        if let Some(cp) = &stored.last_signed {
            log.signed_sizes.insert(cp.size());
        }
        log.last_signed = stored.last_signed;
        if let Some((size, root)) = stored.cosigned {
            if size <= log.durable && log.tree.root_at(size)? == root {
                log.peer_holds = Some((size, root));
            } else {
                return Err(LogError::StoreInconsistent(format!(
                    "cosigned checkpoint {size} does not match the stored entries"
                )));
            }
        }
        Ok(log)
    }

    /// The keys.
    pub fn keys(&self) -> &LocalKeys {
        &self.keys
    }

    /// The line's channel id.
    pub fn channel(&self) -> &Hash {
        &self.channel
    }

    /// This log's origin (and log key name).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The peer's identity key.
    pub fn peer_identity(&self) -> &VerifyingKey {
        &self.peer_identity
    }

    /// Number of entries, pending ones included.
    pub fn len(&self) -> u64 {
        self.tree.len()
    }

    /// True if nothing was ever appended.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// Number of durable entries.
    pub fn durable_size(&self) -> u64 {
        self.durable
    }

    /// The last signed checkpoint.
    pub fn last_signed(&self) -> Option<&SignedCheckpoint> {
        self.last_signed.as_ref()
    }

    /// Largest size of this log the peer holds (cosigned or announced), with its root.
    pub fn peer_holds(&self) -> Option<(u64, Hash)> {
        self.peer_holds
    }

    /// Entries appended but not yet durable.
    pub fn pending_entries(&self) -> &[PendingEntry] {
        &self.pending
    }

    /// The in-memory tree (all entries, pending included).
    pub fn tree(&self) -> &MerkleTree {
        &self.tree
    }

    /// True if some durable entry that [calls for a
    /// checkpoint](Event::calls_for_checkpoint) is not covered by a signed one. Durable
    /// records of cosignatures alone do not (they wait for the next checkpoint).
    pub fn needs_checkpoint(&self) -> bool {
        self.durable_calls_upto > self.last_signed_size()
    }

    fn last_signed_size(&self) -> u64 {
        self.last_signed.as_ref().map_or(0, SignedCheckpoint::size)
    }

    /// End (index + 1) of the last appended entry, pending ones included, that calls for a
    /// checkpoint (0 if none since the log was opened empty; the durable size after a
    /// restore).
    pub fn calls_for_checkpoint_upto(&self) -> u64 {
        self.appended_calls_upto
    }

    /// Appends an event at `now_ms`; returns its index.
    pub fn append(&mut self, event: Event, now_ms: u64) -> u64 {
        let index = self.tree.len();
        let prev = match index.checked_sub(1) {
            Some(i) => self.tree.leaf(i).unwrap_or([0; 32]),
            None => [0; 32],
        };
        let entry = Entry {
            index,
            prev,
            time_ms: now_ms,
            event,
        };
        if entry.event.calls_for_checkpoint() {
            self.appended_calls_upto = index + 1;
        }
        let leaf = entry.to_leaf();
        self.tree.push(leaf_hash(&leaf));
        self.pending.push(PendingEntry { entry, leaf });
        index
    }

    /// Records one anomaly; appends an entry only for the first of its kind in this minute.
    /// Returns the index of the entry appended, if any.
    pub fn note_anomaly(&mut self, kind: AnomalyKind, now_ms: u64) -> Option<u64> {
        let minute = now_ms / ANOMALY_WINDOW_MS;
        self.close_anomaly_windows(now_ms, false);
        if let Some(w) = self.anomalies.get_mut(&kind) {
            w.count = w.count.saturating_add(1);
            return None;
        }
        self.anomalies
            .insert(kind, AnomalyWindow { minute, count: 1 });
        Some(self.append(
            Event::Anomaly {
                kind,
                minute,
                count: 1,
            },
            now_ms,
        ))
    }

    /// Closes anomaly windows of past minutes (all of them if `all`), appending a summary for
    /// each that counted more than one.
    fn close_anomaly_windows(&mut self, now_ms: u64, all: bool) {
        let minute = now_ms / ANOMALY_WINDOW_MS;
        let closing: Vec<(AnomalyKind, AnomalyWindow)> = self
            .anomalies
            .iter()
            .filter(|(_, w)| all || w.minute < minute)
            .map(|(k, w)| (*k, *w))
            .collect();
        for (kind, w) in closing {
            self.anomalies.remove(&kind);
            if w.count > 1 {
                self.append(
                    Event::AnomalySummary {
                        kind,
                        minute: w.minute,
                        count: w.count,
                    },
                    now_ms,
                );
            }
        }
    }

    /// Closes every anomaly window (before shutdown); the caller then commits.
    pub fn close(&mut self, now_ms: u64) {
        self.close_anomaly_windows(now_ms, true);
    }

    /// Drops pending entries from index `len` on (after a failed transaction that appended
    /// them); durable entries are never dropped. Anomaly windows closed meanwhile stay closed.
    pub fn rollback_pending(&mut self, len: u64) {
        let len = len.max(self.durable);
        if len >= self.tree.len() {
            return;
        }
        self.tree.truncate(len);
        let keep = usize::try_from(len - self.durable).unwrap_or(usize::MAX);
        self.pending.truncate(keep);
        self.appended_calls_upto = self
            .pending
            .iter()
            .rev()
            .find(|p| p.entry.event.calls_for_checkpoint())
            .map_or(self.durable_calls_upto, |p| p.entry.index + 1);
    }

    /// Takes the pending entries for a group commit (closing finished anomaly minutes first).
    pub fn begin_commit(&mut self, now_ms: u64) -> CommitBatch {
        self.close_anomaly_windows(now_ms, false);
        let start = self.durable;
        CommitBatch {
            start,
            entries: std::mem::take(&mut self.pending),
        }
    }

    /// Puts a batch back after storing it failed.
    pub fn abort_commit(&mut self, batch: CommitBatch) {
        let mut entries = batch.entries;
        entries.append(&mut self.pending);
        self.pending = entries;
    }

    /// Records that the batch is durable.
    pub fn confirm_durable(&mut self, batch: CommitBatch) -> Result<(), LogError> {
        if batch.start != self.durable {
            self.abort_commit(batch);
            return Err(LogError::BatchOutOfOrder);
        }
        if let Some(p) = batch
            .entries
            .iter()
            .rev()
            .find(|p| p.entry.event.calls_for_checkpoint())
        {
            self.durable_calls_upto = p.entry.index + 1;
        }
        self.durable += batch.entries.len() as u64;
        Ok(())
    }

    /// Signs a checkpoint for the durable size if [`AuditLog::needs_checkpoint`]: it covers
    /// every durable entry, records of cosignatures included. The log's state changes only in
    /// [`AuditLog::checkpoint_persisted`], once the checkpoint is stored.
    pub fn prepare_checkpoint(&self) -> Result<Option<SignedCheckpoint>, LogError> {
        if !self.needs_checkpoint() {
            return Ok(None);
        }
        self.sign_durable()
    }

    /// Like [`AuditLog::prepare_checkpoint`], but signs any unsigned durable entries, records
    /// of cosignatures too (before shutdown, so the log is left wholly signed).
    pub fn prepare_final_checkpoint(&self) -> Result<Option<SignedCheckpoint>, LogError> {
        if self.durable <= self.last_signed_size() {
            return Ok(None);
        }
        self.sign_durable()
    }

    fn sign_durable(&self) -> Result<Option<SignedCheckpoint>, LogError> {
        let size = self.durable;
        let root = self.tree.root_at(size)?;
        let cp = Checkpoint::new(self.origin.clone(), size, root);
        Ok(Some(SignedCheckpoint::sign(cp, self.keys.log_signer())?))
    }

    /// Records a checkpoint from [`AuditLog::prepare_checkpoint`] as stored.
    pub fn checkpoint_persisted(&mut self, cp: SignedCheckpoint) {
        let newer = self
            .last_signed
            .as_ref()
            .is_none_or(|l| cp.size() > l.size());
        self.signed_sizes.insert(cp.size());
        if newer {
            self.last_signed = Some(cp);
        }
    }

    /// The offer for the latest checkpoint, with a proof from what the peer holds.
    pub fn offer(&self) -> Result<Option<CheckpointOffer>, LogError> {
        let from = self.peer_holds.map_or(0, |(s, _)| s);
        match &self.last_signed {
            Some(cp) if cp.size() > from => Ok(Some(self.offer_from(cp, from)?)),
            _ => Ok(None),
        }
    }

    fn offer_from(
        &self,
        cp: &SignedCheckpoint,
        from_size: u64,
    ) -> Result<CheckpointOffer, LogError> {
        let proof = if from_size == 0 || from_size == cp.size() {
            Vec::new()
        } else {
            self.tree.consistency_proof(from_size, cp.size())?
        };
        Ok(CheckpointOffer {
            binding: self.keys.binding().clone(),
            checkpoint: cp.clone(),
            from_size,
            proof,
        })
    }

    fn check_peer_binding(
        &self,
        b: &KeyBinding,
        known: Option<&KeyBinding>,
    ) -> Result<(), LogError> {
        b.verify().map_err(|e| LogError::PeerKeys(e.to_string()))?;
        if b.identity != self.peer_identity {
            return Err(LogError::PeerKeys("binding is for another identity".into()));
        }
        if known.is_some_and(|k| k != b) {
            return Err(LogError::PeerKeys("the peer's audit keys changed".into()));
        }
        Ok(())
    }

    /// Verifies a cosignature of one of this log's checkpoints (verify before accept). Nothing
    /// changes until [`AuditLog::cosignature_persisted`].
    pub fn check_cosignature(
        &self,
        msg: &CosignatureMsg,
        known_peer: Option<&KeyBinding>,
    ) -> Result<AcceptedCosignature, LogError> {
        self.check_peer_binding(&msg.binding, known_peer)?;
        if !self.signed_sizes.contains(&msg.size) {
            return Err(LogError::UnknownCheckpoint { size: msg.size });
        }
        let root = self.tree.root_at(msg.size)?;
        if root != msg.root {
            return Err(LogError::BadCosignature {
                size: msg.size,
                reason: "root is not this log's".into(),
            });
        }
        let cp = Checkpoint::new(self.origin.clone(), msg.size, root);
        msg.cosignature
            .verify(&msg.binding.witness_key, &cp)
            .map_err(|e: CosigError| LogError::BadCosignature {
                size: msg.size,
                reason: e.to_string(),
            })?;
        Ok(AcceptedCosignature {
            size: msg.size,
            root,
            cosignature: msg.cosignature,
            binding: msg.binding.clone(),
        })
    }

    /// Records a stored cosignature.
    pub fn cosignature_persisted(&mut self, acc: &AcceptedCosignature) {
        if self.peer_holds.is_none_or(|(s, _)| acc.size > s) {
            self.peer_holds = Some((acc.size, acc.root));
        }
    }

    /// Handles the witness's `Resync`: if its state is a prefix this log signed, returns a new
    /// offer with a proof from there.
    pub fn handle_resync(&mut self, r: &Resync) -> Result<Option<CheckpointOffer>, LogError> {
        let ok = r.size > 0
            && r.size <= self.durable
            && self.tree.root_at(r.size).is_ok_and(|root| root == r.root);
        if !ok {
            return Err(LogError::PeerStateInconsistent { size: r.size });
        }
        self.peer_holds = Some((r.size, r.root));
        self.offer()
    }

    /// A receipt for the `msg_recv` entry at `index` (leaf bytes `leaf`) under `checkpoint`,
    /// one of this log's signed checkpoints.
    pub fn receipt(
        &self,
        index: u64,
        leaf: Vec<u8>,
        checkpoint: &SignedCheckpoint,
    ) -> Result<Receipt, LogError> {
        let proof = self.tree.inclusion_proof(index, checkpoint.size())?;
        Ok(Receipt {
            checkpoint: checkpoint.clone(),
            leaf_index: index,
            leaf,
            proof,
        })
    }
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
    use crate::keys::generate_signing_key;

    fn new_log() -> AuditLog {
        let id = generate_signing_key().unwrap();
        let peer = generate_signing_key().unwrap().verifying_key();
        AuditLog::new(LocalKeys::generate(&id).unwrap(), peer)
    }

    fn commit(log: &mut AuditLog, now: u64) -> Option<SignedCheckpoint> {
        let b = log.begin_commit(now);
        log.confirm_durable(b).unwrap();
        let cp = log.prepare_checkpoint().unwrap();
        if let Some(cp) = &cp {
            log.checkpoint_persisted(cp.clone());
        }
        cp
    }

    #[test]
    fn entries_chain_and_checkpoints_cover_only_durable_entries() {
        let mut log = new_log();
        for s in 0..5 {
            log.append(Event::MsgAcked { seq: s }, 1000 + s);
        }
        assert_eq!(log.len(), 5);
        assert_eq!(log.durable_size(), 0);
        assert!(
            log.prepare_checkpoint().unwrap().is_none(),
            "nothing durable, nothing signed"
        );
        let b = log.begin_commit(2000);
        assert_eq!(b.entries().len(), 5);
        for (i, p) in b.entries().iter().enumerate() {
            let prev = if i == 0 {
                [0; 32]
            } else {
                leaf_hash(&b.entries()[i - 1].leaf)
            };
            assert_eq!(p.entry.prev, prev);
            assert_eq!(p.entry.index, i as u64);
        }
        // Appended while the batch is being stored: not covered by this checkpoint.
        log.append(Event::MsgAcked { seq: 9 }, 2001);
        log.confirm_durable(b).unwrap();
        let cp = log.prepare_checkpoint().unwrap().unwrap();
        assert_eq!(cp.size(), 5);
        log.checkpoint_persisted(cp.clone());
        cp.verify(log.channel(), &log.keys().binding().log_key)
            .unwrap();
        assert_eq!(*cp.root(), log.tree().root_at(5).unwrap());
        assert!(log.prepare_checkpoint().unwrap().is_none());
        let cp2 = commit(&mut log, 3000).unwrap();
        assert_eq!(cp2.size(), 6);
    }

    #[test]
    fn records_of_cosignatures_alone_call_for_no_checkpoint() {
        let mut log = new_log();
        let record = |s: u64| Event::PeerCheckpointCosigned {
            size: s,
            root: [s as u8; 32],
        };
        log.append(Event::MsgAcked { seq: 1 }, 1);
        assert_eq!(commit(&mut log, 2).unwrap().size(), 1);
        // Durable records only: no checkpoint, however many.
        for s in 1..=3 {
            log.append(record(s), 10 + s);
            assert!(commit(&mut log, 20 + s).is_none());
        }
        assert_eq!(log.durable_size(), 4);
        assert!(!log.needs_checkpoint());
        // A rolled-back real entry leaves nothing that calls for one.
        let mark = log.len();
        log.append(Event::MsgAcked { seq: 2 }, 30);
        assert_eq!(log.calls_for_checkpoint_upto(), mark + 1);
        log.rollback_pending(mark);
        assert_eq!(log.calls_for_checkpoint_upto(), 1);
        assert!(commit(&mut log, 31).is_none());
        // The next real entry's checkpoint covers the records before it.
        log.append(record(4), 40);
        log.append(Event::MsgAcked { seq: 2 }, 41);
        log.append(record(5), 42);
        assert_eq!(commit(&mut log, 43).unwrap().size(), 7);
        // A final checkpoint signs a tail of records too.
        log.append(record(6), 50);
        assert!(commit(&mut log, 51).is_none());
        assert!(
            log.prepare_final_checkpoint()
                .unwrap()
                .is_some_and(|c| c.size() == 8)
        );
    }

    #[test]
    fn aborted_batches_keep_their_entries_in_order() {
        let mut log = new_log();
        log.append(Event::MsgAcked { seq: 1 }, 1);
        let b = log.begin_commit(1);
        log.append(Event::MsgAcked { seq: 2 }, 2);
        log.abort_commit(b);
        let b = log.begin_commit(3);
        let seqs: Vec<u64> = b.entries().iter().map(|p| p.entry.index).collect();
        assert_eq!(seqs, vec![0, 1]);
        log.confirm_durable(b).unwrap();
        assert_eq!(log.durable_size(), 2);
    }

    #[test]
    fn anomalies_are_bounded_per_kind_and_minute() {
        let mut log = new_log();
        let t0 = 60_000 * 1000;
        for i in 0..10_000u64 {
            log.note_anomaly(AnomalyKind::ReplayedFrame, t0 + i % 59_000);
        }
        log.note_anomaly(AnomalyKind::UndecryptableFrame, t0 + 5);
        assert_eq!(log.len(), 2, "one entry per kind so far");
        // Next minute: the summary of the first is written, a new first entry too.
        log.note_anomaly(AnomalyKind::ReplayedFrame, t0 + 60_000);
        let b = log.begin_commit(t0 + 60_001);
        let evs: Vec<Event> = b.entries().iter().map(|p| p.entry.event.clone()).collect();
        assert_eq!(
            evs,
            vec![
                Event::Anomaly {
                    kind: AnomalyKind::ReplayedFrame,
                    minute: 1000,
                    count: 1
                },
                Event::Anomaly {
                    kind: AnomalyKind::UndecryptableFrame,
                    minute: 1000,
                    count: 1
                },
                Event::AnomalySummary {
                    kind: AnomalyKind::ReplayedFrame,
                    minute: 1000,
                    count: 10_000
                },
                Event::Anomaly {
                    kind: AnomalyKind::ReplayedFrame,
                    minute: 1001,
                    count: 1
                },
            ]
        );
        log.confirm_durable(b).unwrap();
        log.close(t0 + 60_002);
        assert_eq!(log.len(), 4, "single occurrences need no summary");
    }

    #[test]
    fn restore_refuses_a_store_that_lost_signed_entries() {
        let id = generate_signing_key().unwrap();
        let peer = generate_signing_key().unwrap().verifying_key();
        let seed = generate_signing_key().unwrap().to_bytes();
        let wseed = generate_signing_key().unwrap().to_bytes();
        let mk = || {
            LocalKeys::from_identity(
                &id,
                ed25519_dalek::SigningKey::from_bytes(&seed),
                ed25519_dalek::SigningKey::from_bytes(&wseed),
            )
            .unwrap()
        };
        let mut log = AuditLog::new(mk(), peer);
        let mut leaves = Vec::new();
        for s in 0..4 {
            log.append(Event::MsgAcked { seq: s }, s);
        }
        let b = log.begin_commit(10);
        leaves.extend(b.entries().iter().map(|p| leaf_hash(&p.leaf)));
        log.confirm_durable(b).unwrap();
        let cp = log.prepare_checkpoint().unwrap().unwrap();
        // Restores with all leaves, and with extra unsigned leaves (crash before signing).
        let restored = AuditLog::restore(
            mk(),
            peer,
            RestoredLog {
                leaf_hashes: leaves.clone(),
                last_signed: Some(cp.clone()),
                signed_sizes: vec![4],
                cosigned: None,
            },
        )
        .unwrap();
        assert!(!restored.needs_checkpoint());
        let mut more = leaves.clone();
        more.push([1; 32]);
        let r = AuditLog::restore(
            mk(),
            peer,
            RestoredLog {
                leaf_hashes: more,
                last_signed: Some(cp.clone()),
                signed_sizes: vec![4],
                cosigned: None,
            },
        )
        .unwrap();
        assert!(r.needs_checkpoint());
        // Lost one signed entry, or altered one: refused.
        let short = leaves[..3].to_vec();
        assert!(matches!(
            AuditLog::restore(
                mk(),
                peer,
                RestoredLog {
                    leaf_hashes: short,
                    last_signed: Some(cp.clone()),
                    signed_sizes: vec![4],
                    cosigned: None
                }
            ),
            Err(LogError::StoreInconsistent(_))
        ));
        let mut altered = leaves.clone();
        altered[1] = [9; 32];
        assert!(matches!(
            AuditLog::restore(
                mk(),
                peer,
                RestoredLog {
                    leaf_hashes: altered,
                    last_signed: Some(cp),
                    signed_sizes: vec![4],
                    cosigned: None
                }
            ),
            Err(LogError::StoreInconsistent(_))
        ));
    }
}
