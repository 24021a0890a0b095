//! One line's audit driver: the log owner's side and the witness side over a [`LineStorage`].
//!
//! [`Line`] wires the sans-IO [`AuditLog`] and [`Witness`] to storage and to the inner-line
//! messages of [`crate::wire`]:
//!
//! * [`Line::commit`]: group commit — store pending entries (one transaction), *then* sign a
//!   checkpoint for them if one of them [calls for it](crate::Event::calls_for_checkpoint)
//!   (records of cosignatures do not), store it, and return the [`CheckpointOffer`] to send;
//! * [`Line::handle_message`]: a message from the peer in, the replies to send out;
//!   every peer message is verified before anything is accepted, and a refused one is logged as
//!   an (aggregated) anomaly before the error is returned for the user to see;
//! * witnessing: the new witness state, the witnessed checkpoint, the peer's binding and the
//!   log entry recording the cosignature are stored in **one transaction** that also checks the
//!   stored state is still the one the decision was based on; only then is the cosignature
//!   released. A fork is stored as evidence (both signed checkpoints);
//! * [`Line::handle_timeout`]: cosigns an offer the rate bound held back, once it is due.
//!
//! # Idle is cheap, and a peer cannot grow our log by offering checkpoints
//!
//! Each cosignature of a new peer checkpoint is one `peer_checkpoint_cosigned` entry in our
//! log. Two rules keep those entries from feeding on themselves or being farmed by the peer:
//!
//! 1. **A record of a cosignature never calls for a checkpoint** ([`AuditLog`]): it is durable
//!    at once and signed by the next checkpoint that another entry calls for. So on an idle
//!    line the exchange stops after the last real entry has been offered and cosigned, instead
//!    of each side cosigning the other's record of cosigning, several entries a second.
//! 2. **Cosigning is rate-bounded per peer.** A new checkpoint is cosigned at once if this log
//!    logged an entry that calls for a checkpoint since the last cosignature was logged (or
//!    none was yet, in this process); otherwise at most once per [`COSIGN_INTERVAL_MS`]. An
//!    offer that comes sooner is verified (a fork is caught and stored at once) and held back,
//!    only the largest one is kept, and it is cosigned when due ([`Line::handle_timeout`]).
//!    Records of cosignatures therefore never outnumber the other entries by more than one per
//!    interval, whatever the peer offers, and the witness table (one row per cosignature)
//!    grows no faster. During a conversation both sides log messages, acknowledgements and
//!    receipts, so cosigning is not delayed; a held-back offer waits at most one interval.
//!    Re-offers of the checkpoint already cosigned are answered at once (nothing is logged).
//!
//! Why hold back cosigning rather than only batch the records: the witness state must be
//! durable before each cosignature leaves (else a restart could cosign a fork of what was
//! cosigned), so every cosignature costs a witness row and a signature check in every later
//! `audit check`; holding back bounds those too, and keeps "one record per cosignature, in
//! the same transaction". No guarantee moves: every released cosignature is still verified
//! against the current witness state, persisted first, and never for two inconsistent
//! checkpoints. A held-back offer is memory only: after a restart the peer offers its latest
//! checkpoint again when the session comes up.
//!
//! Storage is [`crate::store::SqliteStorage`] in the node and [`crate::mem::MemoryStorage`] in
//! tests and benchmarks.

use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};

use crate::Hash;
use crate::checkpoint::SignedCheckpoint;
use crate::entry::{AnomalyKind, Event, KeyEventKind};
use crate::keys::KeyBinding;
use crate::log::{AcceptedCosignature, AuditLog, LogError, PendingEntry};
use crate::receipt::Receipt;
use crate::store::StoreError;
use crate::wire::{AuditMessage, CheckpointOffer, CosignatureMsg, Resync};
use crate::witness::{Witness, WitnessAccept, WitnessError, WitnessOutcome};

mod error;
pub use error::LineError;
use error::anomaly_for;

/// Shortest time between two cosignatures of new peer checkpoints, in milliseconds, unless this
/// log logged an entry that calls for a checkpoint in between (see the module documentation).
/// Bounds the entries a peer can add to our log by offering checkpoints to about one a second
/// while we log nothing else; a held-back offer waits at most this long.
pub const COSIGN_INTERVAL_MS: u64 = 1_000;

/// Durable storage of one line's audit state. Each method is one transaction.
pub trait LineStorage {
    /// Makes `entries` durable.
    fn store_entries(&mut self, entries: &[PendingEntry]) -> Result<(), StoreError>;
    /// Stores a checkpoint this log signed.
    fn store_checkpoint(&mut self, cp: &SignedCheckpoint, now_ms: u64) -> Result<(), StoreError>;
    /// In one transaction: checks that the stored witness state is still
    /// `accept.prior_size`, stores the new state, the witnessed checkpoint (with its proof and
    /// our cosignature), the peer's binding, and `entries`.
    fn store_witness(
        &mut self,
        accept: &WitnessAccept,
        entries: &[PendingEntry],
    ) -> Result<(), StoreError>;
    /// Stores a verified peer cosignature of an own checkpoint (and the peer binding).
    fn store_cosignature(&mut self, acc: &AcceptedCosignature) -> Result<(), StoreError>;
    /// Stores a verified receipt for message `seq`.
    fn store_receipt(&mut self, seq: u64, receipt: &Receipt) -> Result<(), StoreError>;
    /// Stores fork evidence.
    fn store_evidence(
        &mut self,
        held: &SignedCheckpoint,
        offered: &SignedCheckpoint,
        now_ms: u64,
    ) -> Result<(), StoreError>;
    /// Records that receipts were produced for `msg_recv` entries below `size`.
    fn set_receipted_upto(&mut self, size: u64) -> Result<(), StoreError>;
    /// A peer checkpoint this node cosigned, by size.
    fn witnessed(&self, size: u64) -> Result<Option<SignedCheckpoint>, StoreError>;
    /// An own checkpoint, by size.
    fn own_checkpoint(&self, size: u64) -> Result<Option<SignedCheckpoint>, StoreError>;
    /// The commitment of the durable `msg_sent` entry for `seq`.
    fn sent_commitment(&self, seq: u64) -> Result<Option<Hash>, StoreError>;
    /// Durable `msg_recv` leaves with index in `[from, to)`, as (index, leaf).
    fn received_in(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
}

/// Where a line stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LineStatus {
    /// Entries logged.
    pub size: u64,
    /// Entries durable.
    pub durable: u64,
    /// Latest own checkpoint size.
    pub checkpoint: u64,
    /// Largest own size the peer holds (cosigned).
    pub cosigned_by_peer: u64,
    /// Largest peer size this node cosigned.
    pub peer_size_witnessed: u64,
}

/// One line's audit log and witness over a storage.
#[derive(Debug)]
pub struct Line<S: LineStorage> {
    log: AuditLog,
    witness: Witness,
    peer_binding: Option<KeyBinding>,
    receipted_upto: u64,
    storage: S,
    /// When the last cosignature was logged (Unix ms), and the log's length right after.
    last_record: Option<(u64, u64)>,
    /// The newest verified offer of a new checkpoint held back by the rate bound.
    deferred: Option<CheckpointOffer>,
}

fn binding_hash(b: &KeyBinding) -> Hash {
    Sha256::digest(b.to_bytes()).into()
}

impl<S: LineStorage> Line<S> {
    pub(crate) fn from_parts(
        log: AuditLog,
        witness: Witness,
        peer_binding: Option<KeyBinding>,
        receipted_upto: u64,
        storage: S,
    ) -> Self {
        Self {
            log,
            witness,
            peer_binding,
            receipted_upto,
            storage,
            last_record: None,
            deferred: None,
        }
    }

    /// The log.
    pub fn log(&self) -> &AuditLog {
        &self.log
    }

    /// The witness state for the peer's log.
    pub fn witness(&self) -> &Witness {
        &self.witness
    }

    /// The peer's audit key binding, once seen.
    pub fn peer_binding(&self) -> Option<&KeyBinding> {
        self.peer_binding.as_ref()
    }

    /// The storage.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The peer's identity.
    pub fn peer_identity(&self) -> &VerifyingKey {
        self.log.peer_identity()
    }

    /// Where the line stands.
    pub fn status(&self) -> LineStatus {
        LineStatus {
            size: self.log.len(),
            durable: self.log.durable_size(),
            checkpoint: self.log.last_signed().map_or(0, SignedCheckpoint::size),
            cosigned_by_peer: self.log.peer_holds().map_or(0, |(s, _)| s),
            peer_size_witnessed: self.witness.size(),
        }
    }

    /// Logs an event (durable at the next [`Line::commit`]); returns its index.
    pub fn append(&mut self, event: Event, now_ms: u64) -> u64 {
        self.log.append(event, now_ms)
    }

    /// Counts an anomaly (at most one entry per kind per minute, plus a summary).
    pub fn note_anomaly(&mut self, kind: AnomalyKind, now_ms: u64) {
        self.log.note_anomaly(kind, now_ms);
    }

    /// Group commit: stores pending entries, then, if some durable entry [calls for a
    /// checkpoint](crate::Event::calls_for_checkpoint), signs and stores one covering every
    /// durable entry (records of cosignatures alone do not: they wait for the next one).
    /// Returns the encoded [`CheckpointOffer`] to send to the peer, if a new checkpoint was
    /// signed. Call at most every 100 ms while entries are being appended.
    pub fn commit(&mut self, now_ms: u64) -> Result<Option<Vec<u8>>, LineError> {
        self.commit_with(now_ms, false)
    }

    fn commit_with(&mut self, now_ms: u64, all: bool) -> Result<Option<Vec<u8>>, LineError> {
        self.persist(now_ms)?;
        let cp = if all {
            self.log.prepare_final_checkpoint()?
        } else {
            self.log.prepare_checkpoint()?
        };
        let Some(cp) = cp else {
            return Ok(None);
        };
        self.storage.store_checkpoint(&cp, now_ms)?;
        self.log.checkpoint_persisted(cp);
        self.current_offer()
    }

    /// Makes the appended entries durable without signing a checkpoint (the next
    /// [`Line::commit`] signs them). Use it to make a `msg_recv` entry durable before
    /// acknowledging the message, so a crash cannot leave an acknowledgement without the entry.
    pub fn persist(&mut self, now_ms: u64) -> Result<(), LineError> {
        let batch = self.log.begin_commit(now_ms);
        if !batch.is_empty()
            && let Err(e) = self.storage.store_entries(batch.entries())
        {
            self.log.abort_commit(batch);
            return Err(e.into());
        }
        self.log.confirm_durable(batch)?;
        Ok(())
    }

    /// The offer of the latest checkpoint, if the peer does not hold it yet (send it on every
    /// new session).
    pub fn current_offer(&self) -> Result<Option<Vec<u8>>, LineError> {
        Ok(self.log.offer()?.map(|o| AuditMessage::Offer(o).encode()))
    }

    /// Closes anomaly windows and commits (before shutdown); unlike [`Line::commit`], the
    /// checkpoint also covers a tail of records of cosignatures, so nothing is left unsigned.
    pub fn close(&mut self, now_ms: u64) -> Result<Option<Vec<u8>>, LineError> {
        self.log.close(now_ms);
        self.commit_with(now_ms, true)
    }

    /// Handles one audit message from the peer; returns the messages to send back.
    /// A refused message is logged as an anomaly, then returned as an error.
    pub fn handle_message(&mut self, bytes: &[u8], now_ms: u64) -> Result<Vec<Vec<u8>>, LineError> {
        let msg = match AuditMessage::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.log.note_anomaly(AnomalyKind::MalformedFrame, now_ms);
                return Err(e.into());
            }
        };
        let res = match msg {
            AuditMessage::Offer(o) => self.handle_offer(&o, now_ms),
            AuditMessage::Cosignature(c) => self.handle_cosignature(&c, now_ms),
            AuditMessage::Resync(r) => self.handle_resync(&r),
            AuditMessage::Receipt(r) => self.handle_receipt(&r, now_ms).map(|()| Vec::new()),
        };
        if let Err(e) = &res
            && let Some(kind) = anomaly_for(e)
        {
            self.log.note_anomaly(kind, now_ms);
        }
        res
    }

    fn learn_peer_binding(&mut self, b: &KeyBinding, now_ms: u64) {
        if self.peer_binding.is_none() {
            self.peer_binding = Some(b.clone());
            self.log.append(
                Event::KeyEvent {
                    kind: KeyEventKind::PeerAuditKeys,
                    key_hash: binding_hash(b),
                },
                now_ms,
            );
        }
    }

    fn handle_offer(
        &mut self,
        offer: &CheckpointOffer,
        now_ms: u64,
    ) -> Result<Vec<Vec<u8>>, LineError> {
        let acc = match self.check_offer(offer, now_ms)? {
            WitnessOutcome::Resync(r) => return Ok(vec![AuditMessage::Resync(r).encode()]),
            WitnessOutcome::Cosign(acc) => acc,
        };
        if !acc.is_new {
            // The checkpoint already held: answered at once, nothing is logged.
            return Ok(vec![AuditMessage::Cosignature(acc.reply).encode()]);
        }
        if let Some(waiting) = &self.deferred {
            let (held, new) = (&waiting.checkpoint, &offer.checkpoint);
            if held.size() == new.size() && held.root() != new.root() {
                // Both extend what we cosigned, but the peer signed two roots for one size.
                self.storage.store_evidence(held, new, now_ms)?;
                return Err(WitnessError::Fork {
                    held: Box::new(held.clone()),
                    offered: Box::new(new.clone()),
                }
                .into());
            }
            if held.size() > new.size() {
                // The larger checkpoint waiting covers this one.
                return self.release_deferred(now_ms);
            }
        }
        if self.may_record_cosignature(now_ms) {
            self.deferred = None;
            self.cosign_new(&acc, now_ms)
        } else {
            self.deferred = Some(offer.clone());
            Ok(Vec::new())
        }
    }

    /// The witness's decision on `offer`; fork evidence is stored before the error returns.
    fn check_offer(
        &mut self,
        offer: &CheckpointOffer,
        now_ms: u64,
    ) -> Result<WitnessOutcome, LineError> {
        let storage = &self.storage;
        let lookup = |s: u64| storage.witnessed(s).ok().flatten();
        let outcome = self.witness.check_offer(
            offer,
            self.peer_binding.as_ref(),
            self.log.keys(),
            now_ms,
            &lookup,
        );
        match outcome {
            Ok(o) => Ok(o),
            Err(e) => {
                if let WitnessError::Fork { held, offered } = &e {
                    self.storage.store_evidence(held, offered, now_ms)?;
                }
                Err(e.into())
            }
        }
    }

    /// True if a new cosignature may be logged now (the rate bound of the module
    /// documentation): none was yet in this process, or this log has logged an entry that
    /// calls for a checkpoint since the last one, or [`COSIGN_INTERVAL_MS`] have passed (or
    /// the clock went back).
    fn may_record_cosignature(&self, now_ms: u64) -> bool {
        match self.last_record {
            None => true,
            Some((at, end)) => {
                self.log.calls_for_checkpoint_upto() > end
                    || now_ms >= at.saturating_add(COSIGN_INTERVAL_MS)
                    || now_ms < at
            }
        }
    }

    /// Cosigns a verified new checkpoint: the witness state, the peer's binding and the
    /// entries recording it are stored in one transaction, and only then is the cosignature
    /// released.
    fn cosign_new(&mut self, acc: &WitnessAccept, now_ms: u64) -> Result<Vec<Vec<u8>>, LineError> {
        let mark = self.log.len();
        let knew_peer = self.peer_binding.is_some();
        self.learn_peer_binding(&acc.binding, now_ms);
        self.log.append(
            Event::PeerCheckpointCosigned {
                size: acc.checkpoint.size(),
                root: *acc.checkpoint.root(),
            },
            now_ms,
        );
        let batch = self.log.begin_commit(now_ms);
        if let Err(e) = self.storage.store_witness(acc, batch.entries()) {
            // Nothing was stored: the entries recording this cosignature must not be
            // committed later either.
            self.log.abort_commit(batch);
            self.log.rollback_pending(mark);
            if !knew_peer {
                self.peer_binding = None;
            }
            return Err(e.into());
        }
        self.log.confirm_durable(batch)?;
        self.witness.apply(acc);
        self.last_record = Some((now_ms, self.log.len()));
        Ok(vec![AuditMessage::Cosignature(acc.reply.clone()).encode()])
    }

    /// Cosigns the deferred offer if the rate bound allows it now (checked again, as if it had
    /// just arrived).
    fn release_deferred(&mut self, now_ms: u64) -> Result<Vec<Vec<u8>>, LineError> {
        if self.deferred.is_none() || !self.may_record_cosignature(now_ms) {
            return Ok(Vec::new());
        }
        let Some(offer) = self.deferred.take() else {
            return Ok(Vec::new());
        };
        match self.check_offer(&offer, now_ms)? {
            WitnessOutcome::Resync(r) => Ok(vec![AuditMessage::Resync(r).encode()]),
            WitnessOutcome::Cosign(acc) if !acc.is_new => {
                Ok(vec![AuditMessage::Cosignature(acc.reply).encode()])
            }
            WitnessOutcome::Cosign(acc) => {
                let res = self.cosign_new(&acc, now_ms);
                if res.is_err() {
                    // Storing failed: try again at the next timeout.
                    self.deferred = Some(offer);
                }
                res
            }
        }
    }

    /// When a deferred cosignature comes due at the latest (Unix ms), if one waits. It may
    /// come due earlier, as soon as this log logs an entry that calls for a checkpoint:
    /// calling [`Line::handle_timeout`] at every group commit is the simple way to drive it.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.deferred.as_ref()?;
        Some(
            self.last_record
                .map_or(0, |(at, _)| at.saturating_add(COSIGN_INTERVAL_MS)),
        )
    }

    /// Cosigns the newest offer held back by the rate bound, if it is due; returns the
    /// messages to send (the cosignature). Cheap when nothing waits. A refusal is logged as an
    /// anomaly, then returned, as in [`Line::handle_message`].
    pub fn handle_timeout(&mut self, now_ms: u64) -> Result<Vec<Vec<u8>>, LineError> {
        let res = self.release_deferred(now_ms);
        if let Err(e) = &res
            && let Some(kind) = anomaly_for(e)
        {
            self.log.note_anomaly(kind, now_ms);
        }
        res
    }

    fn handle_cosignature(
        &mut self,
        msg: &CosignatureMsg,
        now_ms: u64,
    ) -> Result<Vec<Vec<u8>>, LineError> {
        let acc = self
            .log
            .check_cosignature(msg, self.peer_binding.as_ref())?;
        self.storage.store_cosignature(&acc)?;
        self.log.cosignature_persisted(&acc);
        self.learn_peer_binding(&acc.binding, now_ms);
        let mut out = Vec::new();
        if acc.size > self.receipted_upto {
            let cp = self
                .storage
                .own_checkpoint(acc.size)?
                .ok_or(LineError::Log(LogError::UnknownCheckpoint {
                    size: acc.size,
                }))?;
            for (index, leaf) in self.storage.received_in(self.receipted_upto, acc.size)? {
                out.push(AuditMessage::Receipt(self.log.receipt(index, leaf, &cp)?).encode());
            }
            self.storage.set_receipted_upto(acc.size)?;
            self.receipted_upto = acc.size;
        }
        Ok(out)
    }

    /// Receipts for the `msg_recv` entries in `[from, to)` under the own checkpoint of size
    /// `to` (to re-send receipts that may have been lost with a session).
    pub fn receipts_between(&self, from: u64, to: u64) -> Result<Vec<Vec<u8>>, LineError> {
        let cp = self
            .storage
            .own_checkpoint(to)?
            .ok_or(LineError::Log(LogError::UnknownCheckpoint { size: to }))?;
        let mut out = Vec::new();
        for (index, leaf) in self.storage.received_in(from, to)? {
            out.push(AuditMessage::Receipt(self.log.receipt(index, leaf, &cp)?).encode());
        }
        Ok(out)
    }

    fn handle_resync(&mut self, r: &Resync) -> Result<Vec<Vec<u8>>, LineError> {
        Ok(self
            .log
            .handle_resync(r)?
            .map(|o| AuditMessage::Offer(o).encode())
            .into_iter()
            .collect())
    }

    fn handle_receipt(&mut self, r: &Receipt, now_ms: u64) -> Result<(), LineError> {
        let peer = self
            .peer_binding
            .as_ref()
            .ok_or(LineError::PeerKeysUnknown)?;
        let v = r.verify(self.log.channel(), &peer.log_key)?;
        match self.witness.root_at(v.size) {
            Some(root) if root == v.root => {}
            Some(_) => {
                let held = self
                    .storage
                    .witnessed(v.size)?
                    .or_else(|| self.witness.latest().cloned());
                if let Some(held) = held {
                    self.storage.store_evidence(&held, &r.checkpoint, now_ms)?;
                    return Err(WitnessError::Fork {
                        held: Box::new(held),
                        offered: Box::new(r.checkpoint.clone()),
                    }
                    .into());
                }
                return Err(LineError::ReceiptUnwitnessed { size: v.size });
            }
            None => return Err(LineError::ReceiptUnwitnessed { size: v.size }),
        }
        let pending = self
            .log
            .pending_entries()
            .iter()
            .find_map(|p| match p.entry.event {
                Event::MsgSent {
                    seq, commitment, ..
                } if seq == v.seq => Some(commitment),
                _ => None,
            });
        let sent = match pending {
            Some(c) => Some(c),
            None => self.storage.sent_commitment(v.seq)?,
        };
        if sent != Some(v.commitment) {
            return Err(LineError::ReceiptMismatch { seq: v.seq });
        }
        self.storage.store_receipt(v.seq, r)?;
        Ok(())
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
    use crate::keys::{LocalKeys, channel_id, generate_signing_key};
    use crate::mem::{MemoryLine, MemoryStorage};

    /// Memory storage whose witness transaction fails once.
    #[derive(Debug, Default)]
    struct Flaky {
        inner: MemoryStorage,
        fail_next_witness: bool,
    }

    impl LineStorage for Flaky {
        fn store_entries(&mut self, e: &[PendingEntry]) -> Result<(), StoreError> {
            self.inner.store_entries(e)
        }
        fn store_checkpoint(&mut self, cp: &SignedCheckpoint, now: u64) -> Result<(), StoreError> {
            self.inner.store_checkpoint(cp, now)
        }
        fn store_witness(
            &mut self,
            a: &WitnessAccept,
            e: &[PendingEntry],
        ) -> Result<(), StoreError> {
            if std::mem::take(&mut self.fail_next_witness) {
                return Err(StoreError::Conflict("injected".into()));
            }
            self.inner.store_witness(a, e)
        }
        fn store_cosignature(&mut self, a: &AcceptedCosignature) -> Result<(), StoreError> {
            self.inner.store_cosignature(a)
        }
        fn store_receipt(&mut self, seq: u64, r: &Receipt) -> Result<(), StoreError> {
            self.inner.store_receipt(seq, r)
        }
        fn store_evidence(
            &mut self,
            h: &SignedCheckpoint,
            o: &SignedCheckpoint,
            now: u64,
        ) -> Result<(), StoreError> {
            self.inner.store_evidence(h, o, now)
        }
        fn set_receipted_upto(&mut self, size: u64) -> Result<(), StoreError> {
            self.inner.set_receipted_upto(size)
        }
        fn witnessed(&self, size: u64) -> Result<Option<SignedCheckpoint>, StoreError> {
            self.inner.witnessed(size)
        }
        fn own_checkpoint(&self, size: u64) -> Result<Option<SignedCheckpoint>, StoreError> {
            self.inner.own_checkpoint(size)
        }
        fn sent_commitment(&self, seq: u64) -> Result<Option<Hash>, StoreError> {
            self.inner.sent_commitment(seq)
        }
        fn received_in(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
            self.inner.received_in(from, to)
        }
    }

    #[test]
    fn a_failed_witness_transaction_leaves_no_trace() {
        let (ia, ib) = (
            generate_signing_key().unwrap(),
            generate_signing_key().unwrap(),
        );
        let mut a = MemoryLine::in_memory(LocalKeys::generate(&ia).unwrap(), ib.verifying_key());
        let kb = LocalKeys::generate(&ib).unwrap();
        let ch = channel_id(&ib.verifying_key(), &ia.verifying_key());
        let mut b = Line::from_parts(
            AuditLog::new(kb, ia.verifying_key()),
            Witness::new(ch, ia.verifying_key(), None, []),
            None,
            0,
            Flaky {
                fail_next_witness: true,
                ..Flaky::default()
            },
        );
        b.append(Event::MsgAcked { seq: 1 }, 1);
        a.append(Event::MsgAcked { seq: 1 }, 1);
        let offer = a.commit(2).unwrap().unwrap();
        assert!(matches!(
            b.handle_message(&offer, 3),
            Err(LineError::Store(_))
        ));
        assert_eq!(b.witness().size(), 0);
        assert!(b.peer_binding().is_none());
        assert_eq!(b.log().len(), 1, "the cosignature entries were rolled back");
        // The retry goes through and is recorded once.
        let reply = b.handle_message(&offer, 4).unwrap();
        assert_eq!(reply.len(), 1);
        assert_eq!(b.witness().size(), 1);
        assert_eq!(b.log().len(), 3);
        assert_eq!(b.log().durable_size(), 3);
    }
}
