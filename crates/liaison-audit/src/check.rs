//! The offline checker: verifies one bundle on its own, or the two parties' bundles of one
//! line against each other.
//!
//! One bundle (`check(&[a])`):
//!
//! * the identity key binds the log and witness keys; every own checkpoint is for this line
//!   (else *foreign*), signed by the bound log key (else *wrong key* / *bad signature*), sizes
//!   strictly increasing (else *replayed*), none beyond the entries carried (else *truncated*);
//! * every entry decodes, sits at its own index (else *reordered* / *missing entries*), chains
//!   to its predecessor's leaf hash and the entries hash to every checkpoint's root (else
//!   *edited entry*, pinned to one index when the chain allows, to a checkpoint range if not);
//! * the peer's cosignatures verify under the peer's bound witness key; the peer checkpoints
//!   this node cosigned verify under the peer's log key, each consistent with the one before
//!   (else *fork*), with this node's own cosignature; fork evidence of the same size is
//!   reported as a *fork*; receipts verify (leaf included under the peer's checkpoint) and name
//!   messages this log sent.
//!
//! Two bundles of one line (A's and B's) also: each side's keys are the ones the other
//! witnessed (else *wrong key*); every checkpoint of A's key that B holds (cosigned, fork
//! evidence, receipts) is within A's bundle (else *truncated*) and matches A's entries (else
//! *fork*, both checkpoints printed); every message A logged as acknowledged has B's matching
//! `msg_recv` (else *missing receipt*) and every `msg_recv` of B has A's `msg_sent` (else
//! *unmatched receipt*) — each only within the part of the other's log the checking side had
//! cosigned, so a slightly older export does not produce false alarms.
//!
//! What it cannot prove: a side silently dropping its own tail that the other never
//! cosigned, and anything both sides agree to forge (see `docs/audit.md`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use crate::Hash;
use crate::bundle::Bundle;
use crate::checkpoint::{CheckpointError, SignedCheckpoint};
use crate::codec::DecodeError;
use crate::cosig::cosigned_note;
use crate::entry::{Entry, Event, OpenedMessage, leaf_index_field, verify_opening};
use crate::keys::{KeyBinding, channel_id, log_origin};
use crate::merkle::{Frontier, leaf_hash, verify_consistency};

/// Why a check failed. `bundle`, `sender` and `receiver` are 0-based positions in the slice
/// passed to [`check`] (shown 1-based).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// Nothing to check.
    #[error("no bundle given")]
    NoBundles,
    /// More than two bundles.
    #[error("{0} bundles given; a line has two parties")]
    TooManyBundles(usize),
    /// The bundle is malformed.
    #[error("bundle {}: malformed: {reason}", .bundle + 1)]
    Malformed {
        /// Bundle.
        bundle: usize,
        /// What is wrong.
        reason: String,
    },
    /// An entry does not decode.
    #[error("bundle {}: entry {index} is malformed: {reason}", .bundle + 1)]
    MalformedEntry {
        /// Bundle.
        bundle: usize,
        /// Entry index.
        index: u64,
        /// Why.
        reason: String,
    },
    /// An entry was altered after it was logged.
    #[error("bundle {}: {}", .bundle + 1, edited_text(*.first, *.last))]
    EditedEntry {
        /// Bundle.
        bundle: usize,
        /// First entry that may be the altered one.
        first: u64,
        /// Last entry that may be the altered one (equal to `first` when pinned).
        last: u64,
    },
    /// Entries are out of order.
    #[error("bundle {}: entries reordered: entry {found} found at position {position}", .bundle + 1)]
    Reordered {
        /// Bundle.
        bundle: usize,
        /// Position in the log.
        position: u64,
        /// Index the entry there carries.
        found: u64,
    },
    /// Entries were removed from the middle.
    #[error("bundle {}: entries {position}..{found} are missing", .bundle + 1)]
    MissingEntries {
        /// Bundle.
        bundle: usize,
        /// First missing index.
        position: u64,
        /// Index of the entry found there instead.
        found: u64,
    },
    /// The bundle is shorter than a checkpoint signed by its own log key.
    #[error(
        "bundle {}: truncated: its log key signed a checkpoint of {held_size} entries but the bundle proves only {bundle_size}",
        .bundle + 1
    )]
    Truncated {
        /// Bundle.
        bundle: usize,
        /// Size of the checkpoint held.
        held_size: u64,
        /// Entries the bundle proves.
        bundle_size: u64,
    },
    /// Two checkpoints signed by one log key that cannot share a history.
    #[error("bundle {}: fork: the log key of {owner} signed\n{a}and\n{b}which cannot share a history", .bundle + 1)]
    Fork {
        /// Bundle in which the fork was found.
        bundle: usize,
        /// Identity (first 8 bytes, hex) whose log forked.
        owner: String,
        /// One checkpoint (note text).
        a: String,
        /// The other.
        b: String,
    },
    /// A checkpoint of another line.
    #[error("bundle {}: foreign checkpoint: origin {found} is not this line's {expected}", .bundle + 1)]
    ForeignCheckpoint {
        /// Bundle.
        bundle: usize,
        /// Origin found.
        found: String,
        /// Origin expected.
        expected: String,
    },
    /// A checkpoint older than (or as old as) one listed before it.
    #[error("bundle {}: replayed checkpoint: size {size} listed after size {after}", .bundle + 1)]
    ReplayedCheckpoint {
        /// Bundle.
        bundle: usize,
        /// Size of the replayed checkpoint.
        size: u64,
        /// Size listed before it.
        after: u64,
    },
    /// A key that is not bound to the identity, or not the one the peer knows.
    #[error("bundle {}: wrong key: {what}", .bundle + 1)]
    WrongKey {
        /// Bundle.
        bundle: usize,
        /// Which key.
        what: String,
    },
    /// A signature that does not verify.
    #[error("bundle {}: bad signature on {what}", .bundle + 1)]
    BadSignature {
        /// Bundle.
        bundle: usize,
        /// On what.
        what: String,
    },
    /// A peer cosignature that does not verify.
    #[error("bundle {}: the peer's cosignature of checkpoint {size} does not verify", .bundle + 1)]
    BadCosignature {
        /// Bundle.
        bundle: usize,
        /// Checkpoint size.
        size: u64,
    },
    /// A consistency proof that does not verify.
    #[error("bundle {}: bad proof: {what}", .bundle + 1)]
    BadProof {
        /// Bundle.
        bundle: usize,
        /// Which.
        what: String,
    },
    /// A receipt that does not verify or names no message this log sent.
    #[error("bundle {}: bad receipt for seq {seq}: {reason}", .bundle + 1)]
    BadReceipt {
        /// Bundle.
        bundle: usize,
        /// Message seq.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// The witnessed peer checkpoints do not agree with the log entries recording them.
    #[error("bundle {}: witness record for peer size {size}: {reason}", .bundle + 1)]
    BadWitnessRecord {
        /// Bundle.
        bundle: usize,
        /// Peer size.
        size: u64,
        /// Why.
        reason: String,
    },
    /// One seq logged twice with different commitments.
    #[error("bundle {}: message seq {seq} logged twice with different commitments", .bundle + 1)]
    DuplicateSeq {
        /// Bundle.
        bundle: usize,
        /// Seq.
        seq: u64,
    },
    /// The other party holds a checkpoint of this log that this partial bundle cannot place.
    #[error("bundle {}: the other party holds its checkpoint of size {size}, which this partial bundle neither contains nor covers", .bundle + 1)]
    CheckpointMissing {
        /// Bundle.
        bundle: usize,
        /// Size.
        size: u64,
    },
    /// A revealed message does not match the entry it is said to open.
    #[error("bundle {}: entry {index} does not open to the revealed message: {reason}", .bundle + 1)]
    Opening {
        /// Bundle.
        bundle: usize,
        /// Entry index.
        index: u64,
        /// Why.
        reason: String,
    },
    /// The two bundles are not the two sides of one line.
    #[error("the bundles are not the two sides of one line")]
    DifferentLines,
    /// An acknowledged message with no matching `msg_recv` on the other side.
    #[error(
        "missing receipt: bundle {} logged message seq {seq} as acknowledged, bundle {} has no matching msg_recv",
        .sender + 1, .receiver + 1
    )]
    MissingReceipt {
        /// Bundle of the sender.
        sender: usize,
        /// Bundle of the receiver.
        receiver: usize,
        /// Seq.
        seq: u64,
    },
    /// A `msg_recv` with no matching `msg_sent` on the other side.
    #[error(
        "unmatched receipt: bundle {} logged receiving seq {seq}, bundle {} never logged sending it",
        .receiver + 1, .sender + 1
    )]
    UnmatchedReceipt {
        /// Bundle of the receiver.
        receiver: usize,
        /// Bundle of the (supposed) sender.
        sender: usize,
        /// Seq.
        seq: u64,
    },
}

fn short_id(k: &ed25519_dalek::VerifyingKey) -> String {
    hex::encode(k.as_bytes().get(..8).unwrap_or_default())
}

fn edited_text(first: u64, last: u64) -> String {
    if first == last {
        format!("entry {first} was altered")
    } else {
        format!(
            "an entry in {first}..={last} was altered (the entries no longer hash to the checkpoint its log key signed)"
        )
    }
}

/// What one bundle holds, once verified.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BundleReport {
    /// Identity key (hex).
    pub identity: String,
    /// Peer identity key (hex).
    pub peer_identity: String,
    /// Channel id (hex).
    pub channel: String,
    /// Log origin.
    pub origin: String,
    /// First entry carried.
    pub start: u64,
    /// Entries carried.
    pub entries: u64,
    /// Tree size proven.
    pub covered_size: u64,
    /// True if the bundle carries the whole log.
    pub complete: bool,
    /// Own checkpoints.
    pub checkpoints: usize,
    /// Size of the latest own checkpoint.
    pub latest_checkpoint: u64,
    /// Entries after the latest checkpoint (logged, not yet signed).
    pub unsigned_tail: u64,
    /// Largest own checkpoint the peer cosigned.
    pub cosigned_by_peer: u64,
    /// Peer checkpoints this node cosigned.
    pub witnessed: usize,
    /// Largest peer size this node cosigned.
    pub peer_size_witnessed: u64,
    /// Receipts held.
    pub receipts: usize,
    /// `msg_sent` entries.
    pub messages_sent: usize,
    /// `msg_recv` entries.
    pub messages_received: usize,
    /// `msg_acked` entries.
    pub messages_acked: usize,
    /// Acknowledged sends without a receipt held.
    pub acked_without_receipt: usize,
    /// Anomalies counted (first entries plus summaries' extra counts).
    pub anomalies: u64,
    /// Fork claims against the peer that cannot be proven from this bundle alone.
    pub unproven_evidence: usize,
}

/// What a two-bundle check compared.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CrossReport {
    /// Checkpoints of one side held by the other, matched against its entries.
    pub held_checkpoints_checked: usize,
    /// Sends acknowledged and matched to the other side's `msg_recv`.
    pub acked_messages_matched: usize,
    /// Acknowledged sends past what the other side had cosigned (not checkable).
    pub acks_beyond_horizon: usize,
    /// `msg_recv` entries matched to the other side's `msg_sent`.
    pub received_messages_matched: usize,
    /// `msg_recv` entries past what the other side had cosigned (not checkable).
    pub received_beyond_horizon: usize,
    /// Message matching was skipped because a bundle is partial.
    pub messages_skipped_partial: bool,
}

/// Result of a successful check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// One report per bundle.
    pub bundles: Vec<BundleReport>,
    /// Present for two bundles.
    pub cross: Option<CrossReport>,
}

/// Decodes and checks bundles given as bytes; a decoding failure is
/// [`CheckError::Malformed`].
pub fn check_bytes(inputs: &[&[u8]]) -> Result<CheckReport, CheckError> {
    let mut bundles = Vec::with_capacity(inputs.len().min(2));
    if inputs.len() > 2 {
        return Err(CheckError::TooManyBundles(inputs.len()));
    }
    for (i, b) in inputs.iter().enumerate() {
        bundles.push(
            Bundle::decode(b).map_err(|e: DecodeError| CheckError::Malformed {
                bundle: i,
                reason: e.to_string(),
            })?,
        );
    }
    check(&bundles)
}

/// Checks one bundle, or two bundles of one line against each other.
pub fn check(bundles: &[Bundle]) -> Result<CheckReport, CheckError> {
    match bundles.len() {
        0 => return Err(CheckError::NoBundles),
        1 | 2 => {}
        n => return Err(CheckError::TooManyBundles(n)),
    }
    let headers: Vec<Header> = bundles
        .iter()
        .enumerate()
        .map(|(i, b)| verify_header(i, b))
        .collect::<Result<_, _>>()?;
    let cross_line = if let [a, b] = headers.as_slice() {
        if a.local.identity != b.peer_identity || b.local.identity != a.peer_identity {
            return Err(CheckError::DifferentLines);
        }
        for (x, y) in [(0usize, 1usize), (1, 0)] {
            let (hx, hy) = (&headers_get(&headers, x)?, &headers_get(&headers, y)?);
            if hy.peer.as_ref().is_some_and(|p| *p != hx.local) {
                return Err(CheckError::WrongKey {
                    bundle: x,
                    what: "its audit keys are not the ones the other party witnessed".into(),
                });
            }
        }
        true
    } else {
        false
    };

    // Sizes of each log whose root the other bundle needs.
    let mut extra_targets: Vec<BTreeSet<u64>> = vec![BTreeSet::new(); bundles.len()];
    if cross_line {
        for (x, y) in [(0usize, 1usize), (1, 0)] {
            let hy = headers_get(&headers, y)?;
            if let Some(t) = extra_targets.get_mut(x) {
                t.extend(hy.held_of_peer.iter().map(|h| h.size()));
            }
        }
    }

    let mut scans = Vec::with_capacity(bundles.len());
    for (i, b) in bundles.iter().enumerate() {
        let h = headers_get(&headers, i)?;
        let targets = extra_targets.get(i).cloned().unwrap_or_default();
        scans.push(scan(i, b, h, &targets)?);
    }

    let mut reports = Vec::with_capacity(bundles.len());
    for (i, b) in bundles.iter().enumerate() {
        let h = headers_get(&headers, i)?;
        let s = scans.get(i).ok_or(CheckError::NoBundles)?;
        reports.push(finish_single(i, b, h, s)?);
    }

    let cross = if cross_line {
        Some(cross_check(bundles, &headers, &scans)?)
    } else {
        None
    };
    Ok(CheckReport {
        bundles: reports,
        cross,
    })
}

/// Runs `f` over `items` on every available core (scoped threads); a panicked worker counts
/// as failed checks, so this fails closed.
fn par_check<T: Sync>(items: &[T], f: impl Fn(&T) -> bool + Sync) -> Vec<bool> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    if threads < 2 || items.len() < 64 {
        return items.iter().map(&f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|s| {
        let workers: Vec<_> = items
            .chunks(chunk)
            .map(|c| {
                (
                    c.len(),
                    s.spawn(move || c.iter().map(f).collect::<Vec<bool>>()),
                )
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|(n, w)| w.join().unwrap_or_else(|_| vec![false; n]))
            .collect()
    })
}

fn headers_get(h: &[Header], i: usize) -> Result<&Header, CheckError> {
    h.get(i).ok_or(CheckError::NoBundles)
}

/// Header facts established before scanning entries.
#[derive(Debug)]
struct Header {
    local: KeyBinding,
    peer_identity: ed25519_dalek::VerifyingKey,
    peer: Option<KeyBinding>,
    channel: Hash,
    origin: String,
    own: BTreeMap<u64, SignedCheckpoint>,
    /// Peer checkpoints this bundle holds (witnessed, evidence, receipts).
    held_of_peer: Vec<SignedCheckpoint>,
    cosigned_by_peer: u64,
    unproven_evidence: usize,
}

fn checkpoint_error(bundle: usize, what: &str, e: CheckpointError) -> CheckError {
    match e {
        CheckpointError::ForeignOrigin { found, expected } => CheckError::ForeignCheckpoint {
            bundle,
            found,
            expected,
        },
        CheckpointError::WrongKey => CheckError::WrongKey {
            bundle,
            what: format!("{what} is not signed by the log key bound to the identity"),
        },
        _ => CheckError::BadSignature {
            bundle,
            what: what.to_owned(),
        },
    }
}

fn verify_header(i: usize, b: &Bundle) -> Result<Header, CheckError> {
    let m = &b.meta;
    m.local.verify().map_err(|e| CheckError::WrongKey {
        bundle: i,
        what: format!("log and witness keys are not bound to the identity key ({e})"),
    })?;
    if m.local.identity == m.peer_identity {
        return Err(CheckError::Malformed {
            bundle: i,
            reason: "peer identity is the bundle's own".into(),
        });
    }
    if let Some(p) = &m.peer {
        p.verify().map_err(|e| CheckError::WrongKey {
            bundle: i,
            what: format!("the peer's audit keys are not bound to its identity ({e})"),
        })?;
        if p.identity != m.peer_identity {
            return Err(CheckError::WrongKey {
                bundle: i,
                what: "peer binding names another identity".into(),
            });
        }
    }
    let channel = channel_id(&m.local.identity, &m.peer_identity);
    let origin = log_origin(&channel, &m.local.log_key);

    // Signature checks dominate with many checkpoints: run them on every core first, then
    // walk the sections in order (re-running a failed check to report its precise reason).
    let by_size: HashMap<u64, &SignedCheckpoint> = m
        .checkpoints
        .iter()
        .map(|c| (c.checkpoint.size(), &c.checkpoint))
        .collect();
    let own_ok = par_check(&m.checkpoints, |c| {
        c.checkpoint.verify(&channel, &m.local.log_key).is_ok()
    });
    let cosig_ok = par_check(&m.cosignatures, |c| match (by_size.get(&c.size), &m.peer) {
        (Some(cp), Some(peer)) => c
            .cosignature
            .verify(&peer.witness_key, &cp.checkpoint)
            .is_ok(),
        _ => false,
    });
    let witnessed_ok = par_check(&m.witnessed, |w| {
        m.peer.as_ref().is_some_and(|peer| {
            w.checkpoint.verify(&channel, &peer.log_key).is_ok()
                && w.cosignature
                    .verify(&m.local.witness_key, &w.checkpoint.checkpoint)
                    .is_ok()
        })
    });
    let ok = |v: &[bool], k: usize| v.get(k).copied().unwrap_or(false);

    // Own checkpoints.
    let mut own = BTreeMap::new();
    let mut last = 0u64;
    for (k, c) in m.checkpoints.iter().enumerate() {
        let cp = &c.checkpoint;
        if !ok(&own_ok, k) {
            cp.verify(&channel, &m.local.log_key)
                .map_err(|e| checkpoint_error(i, &format!("checkpoint {}", cp.size()), e))?;
        }
        if cp.size() <= last {
            return Err(CheckError::ReplayedCheckpoint {
                bundle: i,
                size: cp.size(),
                after: last,
            });
        }
        last = cp.size();
        own.insert(cp.size(), cp.clone());
    }

    // The peer's cosignatures of own checkpoints.
    let mut cosigned_by_peer = 0u64;
    for (k, c) in m.cosignatures.iter().enumerate() {
        let Some(cp) = own.get(&c.size) else {
            return Err(CheckError::BadCosignature {
                bundle: i,
                size: c.size,
            });
        };
        let Some(peer) = &m.peer else {
            return Err(CheckError::BadCosignature {
                bundle: i,
                size: c.size,
            });
        };
        if !ok(&cosig_ok, k) {
            c.cosignature
                .verify(&peer.witness_key, &cp.checkpoint)
                .map_err(|_| CheckError::BadCosignature {
                    bundle: i,
                    size: c.size,
                })?;
        }
        cosigned_by_peer = cosigned_by_peer.max(c.size);
    }

    let mut held_of_peer = Vec::new();
    let needs_peer = !m.witnessed.is_empty() || !m.evidence.is_empty() || !m.receipts.is_empty();
    let peer = match (&m.peer, needs_peer) {
        (Some(p), _) => Some(p),
        (None, false) => None,
        (None, true) => {
            return Err(CheckError::Malformed {
                bundle: i,
                reason: "peer checkpoints without the peer's key binding".into(),
            });
        }
    };
    if let Some(peer) = peer {
        // Peer checkpoints this node cosigned: a consistent chain.
        let mut prev: Option<&SignedCheckpoint> = None;
        for (k, w) in m.witnessed.iter().enumerate() {
            let cp = &w.checkpoint;
            let sigs_ok = ok(&witnessed_ok, k);
            if !sigs_ok {
                cp.verify(&channel, &peer.log_key).map_err(|e| {
                    checkpoint_error(i, &format!("witnessed peer checkpoint {}", cp.size()), e)
                })?;
            }
            let prev_size = prev.map_or(0, SignedCheckpoint::size);
            if cp.size() <= prev_size {
                return Err(CheckError::ReplayedCheckpoint {
                    bundle: i,
                    size: cp.size(),
                    after: prev_size,
                });
            }
            if prev.is_none() && (w.from_size != 0 || !w.proof.is_empty()) {
                return Err(CheckError::BadWitnessRecord {
                    bundle: i,
                    size: cp.size(),
                    reason: "the first cosigned checkpoint carries a proof from an earlier one"
                        .into(),
                });
            }
            if let Some(p) = prev {
                if w.from_size != p.size() {
                    return Err(CheckError::BadWitnessRecord {
                        bundle: i,
                        size: cp.size(),
                        reason: format!("proof starts at {} instead of {}", w.from_size, p.size()),
                    });
                }
                if verify_consistency(p.size(), cp.size(), &w.proof, p.root(), cp.root()).is_err() {
                    return Err(CheckError::BadWitnessRecord {
                        bundle: i,
                        size: cp.size(),
                        reason: format!(
                            "cosigned without a valid consistency proof from\n{}to\n{}",
                            p.to_note(),
                            cp.to_note()
                        ),
                    });
                }
            }
            if !sigs_ok {
                w.cosignature
                    .verify(&m.local.witness_key, &cp.checkpoint)
                    .map_err(|_| CheckError::BadSignature {
                        bundle: i,
                        what: format!("this node's cosignature of peer checkpoint {}", cp.size()),
                    })?;
            }
            held_of_peer.push(cp.clone());
            prev = Some(cp);
        }
    }
    let witnessed_roots: HashMap<u64, Hash> = m
        .witnessed
        .iter()
        .map(|w| (w.checkpoint.size(), *w.checkpoint.root()))
        .collect();

    // Fork evidence against the peer.
    let mut unproven_evidence = 0;
    if let Some(peer) = peer {
        for e in &m.evidence {
            for cp in [&e.held, &e.offered] {
                cp.verify(&channel, &peer.log_key).map_err(|err| {
                    checkpoint_error(i, &format!("fork evidence checkpoint {}", cp.size()), err)
                })?;
            }
            if e.held.size() == e.offered.size() && e.held.root() != e.offered.root() {
                return Err(CheckError::Fork {
                    bundle: i,
                    owner: short_id(&m.peer_identity),
                    a: e.held.to_note(),
                    b: e.offered.to_note(),
                });
            }
            unproven_evidence += 1;
            held_of_peer.push(e.held.clone());
            held_of_peer.push(e.offered.clone());
        }
        // Receipts from the peer.
        for r in &m.receipts {
            let seq = Entry::from_leaf(&r.leaf).map_or(0, |e| match e.event {
                Event::MsgReceived { seq, .. } => seq,
                _ => 0,
            });
            r.verify(&channel, &peer.log_key)
                .map_err(|e| CheckError::BadReceipt {
                    bundle: i,
                    seq,
                    reason: e.to_string(),
                })?;
            if let Some(root) = witnessed_roots.get(&r.checkpoint.size())
                && root != r.checkpoint.root()
            {
                let held = m
                    .witnessed
                    .iter()
                    .find(|w| w.checkpoint.size() == r.checkpoint.size());
                return Err(CheckError::Fork {
                    bundle: i,
                    owner: short_id(&m.peer_identity),
                    a: held.map(|w| w.checkpoint.to_note()).unwrap_or_default(),
                    b: r.checkpoint.to_note(),
                });
            }
            held_of_peer.push(r.checkpoint.clone());
        }
    }
    Ok(Header {
        local: m.local.clone(),
        peer_identity: m.peer_identity,
        peer: m.peer.clone(),
        channel,
        origin,
        own,
        held_of_peer,
        cosigned_by_peer,
        unproven_evidence,
    })
}

/// What a pass over the entries found.
#[derive(Debug, Default)]
struct Scan {
    roots: HashMap<u64, Hash>,
    covered_root: Hash,
    sent: BTreeMap<u64, (Hash, u64)>,
    recv: BTreeMap<u64, (Hash, u64)>,
    acked: Vec<(u64, u64)>,
    cosigned_entries: Vec<(u64, Hash, u64)>,
    anomalies: u64,
}

fn scan(i: usize, b: &Bundle, h: &Header, extra: &BTreeSet<u64>) -> Result<Scan, CheckError> {
    let m = &b.meta;
    let start = m.start;
    let end = start + b.entry_count();
    let mut f =
        Frontier::from_parts(start, m.prefix.clone()).map_err(|e| CheckError::Malformed {
            bundle: i,
            reason: format!("prefix: {e}"),
        })?;

    let mut targets: Vec<u64> = h
        .own
        .keys()
        .copied()
        .filter(|s| (start..=end).contains(s))
        .collect();
    targets.extend(extra.iter().copied().filter(|s| (start..=end).contains(s)));
    targets.sort_unstable();
    targets.dedup();
    let mut next_target = 0usize;

    let mut out = Scan::default();
    let mut last_ok = start;
    let mut root_fail: Option<(u64, u64)> = None;
    let mut chain_break: Option<u64> = None;
    let mut prev_hash: Option<Hash> = if start == 0 { Some([0; 32]) } else { None };

    let mut reach_targets =
        |f: &Frontier, out: &mut Scan, last_ok: &mut u64, root_fail: &mut Option<(u64, u64)>| {
            while let Some(&t) = targets.get(next_target) {
                if t != f.size() {
                    break;
                }
                next_target += 1;
                let root = f.root();
                out.roots.insert(t, root);
                if let Some(cp) = h.own.get(&t) {
                    if *cp.root() == root {
                        if root_fail.is_none() {
                            *last_ok = t;
                        }
                    } else if root_fail.is_none() {
                        *root_fail = Some((*last_ok, t.saturating_sub(1)));
                    }
                }
            }
        };
    reach_targets(&f, &mut out, &mut last_ok, &mut root_fail);

    for (k, leaf) in b.leaves().enumerate() {
        let p = start + k as u64;
        let idx = leaf_index_field(leaf).unwrap_or(u64::MAX);
        if idx != p {
            return Err(index_error(i, b, p, idx));
        }
        let entry = Entry::from_leaf(leaf).map_err(|e| CheckError::MalformedEntry {
            bundle: i,
            index: p,
            reason: e.to_string(),
        })?;
        if let Some(bp) = chain_break {
            // The link into `bp` broke. If the link out of it breaks too, `bp` itself changed;
            // otherwise its predecessor did.
            let edited = if Some(entry.prev) == prev_hash {
                bp.saturating_sub(1)
            } else {
                bp
            };
            return Err(edited_or_range(i, edited, edited, root_fail));
        }
        if let Some(expected) = prev_hash
            && entry.prev != expected
        {
            chain_break = Some(p);
        }
        let lh = leaf_hash(leaf);
        f.push(lh);
        prev_hash = Some(lh);
        collect(i, &entry, &mut out)?;
        reach_targets(&f, &mut out, &mut last_ok, &mut root_fail);
    }
    if let Some(bp) = chain_break {
        return Err(edited_or_range(i, bp.saturating_sub(1), bp, root_fail));
    }
    if let Some((first, last)) = root_fail {
        return Err(CheckError::EditedEntry {
            bundle: i,
            first,
            last,
        });
    }

    // The bundle must reach every checkpoint its own key signed.
    if let Some(latest) = h.own.keys().next_back()
        && *latest > m.covered_size
    {
        return Err(CheckError::Truncated {
            bundle: i,
            held_size: *latest,
            bundle_size: m.covered_size,
        });
    }
    // Extend to the covered size with the suffix.
    for (level, hash) in &m.suffix {
        f.push_subtree(*level, *hash)
            .map_err(|e| CheckError::Malformed {
                bundle: i,
                reason: format!("suffix: {e}"),
            })?;
    }
    if f.size() != m.covered_size {
        return Err(CheckError::Malformed {
            bundle: i,
            reason: "prefix, entries and suffix do not reach the covered size".into(),
        });
    }
    out.covered_root = f.root();
    out.roots.insert(m.covered_size, out.covered_root);
    // Own checkpoints outside the entries carried (partial bundles): consistency to the
    // covered size.
    if let Some(cp) = h.own.get(&m.covered_size)
        && !(start..=end).contains(&m.covered_size)
        && *cp.root() != out.covered_root
    {
        return Err(CheckError::EditedEntry {
            bundle: i,
            first: start,
            last: end.saturating_sub(1),
        });
    }
    for c in &m.checkpoints {
        let s = c.checkpoint.size();
        if (start..=end).contains(&s) || s == m.covered_size {
            continue;
        }
        verify_consistency(
            s,
            m.covered_size,
            &c.proof,
            c.checkpoint.root(),
            &out.covered_root,
        )
        .map_err(|e| CheckError::BadProof {
            bundle: i,
            what: format!("checkpoint {s} to covered size {}: {e}", m.covered_size),
        })?;
        out.roots.insert(s, *c.checkpoint.root());
    }
    Ok(out)
}

fn edited_or_range(i: usize, first: u64, last: u64, root_fail: Option<(u64, u64)>) -> CheckError {
    match root_fail {
        Some((a, b)) if first > b => CheckError::EditedEntry {
            bundle: i,
            first: a,
            last: b,
        },
        _ => CheckError::EditedEntry {
            bundle: i,
            first,
            last,
        },
    }
}

fn index_error(i: usize, b: &Bundle, position: u64, found: u64) -> CheckError {
    let start = b.meta.start;
    if found < position {
        return CheckError::Reordered {
            bundle: i,
            position,
            found,
        };
    }
    let later = b
        .leaves()
        .skip(usize::try_from(position - start).unwrap_or(usize::MAX))
        .any(|l| leaf_index_field(l) == Some(position));
    if later {
        CheckError::Reordered {
            bundle: i,
            position,
            found,
        }
    } else {
        CheckError::MissingEntries {
            bundle: i,
            position,
            found,
        }
    }
}

fn insert_msg(
    map: &mut BTreeMap<u64, (Hash, u64)>,
    i: usize,
    seq: u64,
    c: Hash,
    index: u64,
) -> Result<(), CheckError> {
    match map.get(&seq) {
        Some((prev, _)) if *prev != c => Err(CheckError::DuplicateSeq { bundle: i, seq }),
        Some(_) => Ok(()),
        None => {
            map.insert(seq, (c, index));
            Ok(())
        }
    }
}

fn collect(i: usize, e: &Entry, out: &mut Scan) -> Result<(), CheckError> {
    match &e.event {
        Event::MsgSent {
            seq, commitment, ..
        } => insert_msg(&mut out.sent, i, *seq, *commitment, e.index)?,
        Event::MsgReceived {
            seq, commitment, ..
        } => insert_msg(&mut out.recv, i, *seq, *commitment, e.index)?,
        Event::MsgAcked { seq } => out.acked.push((*seq, e.index)),
        Event::PeerCheckpointCosigned { size, root } => {
            out.cosigned_entries.push((*size, *root, e.index))
        }
        Event::Anomaly { .. } => out.anomalies += 1,
        Event::AnomalySummary { count, .. } => out.anomalies += u64::from(count.saturating_sub(1)),
        _ => {}
    }
    Ok(())
}

/// Every sent message the peer acknowledged, as (seq, commitment, index of the first
/// `msg_acked` entry covering it). Acknowledgements are cumulative, like the protocol's
/// `ACK(delivered_upto)`: `msg_acked(n)` acknowledges every seq up to `n`.
fn acked_sends(s: &Scan) -> Vec<(u64, Hash, u64)> {
    use std::ops::Bound::{Excluded, Included, Unbounded};
    let mut out = Vec::new();
    let mut done: Option<u64> = None;
    for (upto, index) in &s.acked {
        let lower = match done {
            Some(d) if *upto <= d => continue,
            Some(d) => Excluded(d),
            None => Unbounded,
        };
        for (seq, (c, _)) in s.sent.range((lower, Included(*upto))) {
            out.push((*seq, *c, *index));
        }
        done = Some(*upto);
    }
    out
}

fn finish_single(i: usize, b: &Bundle, h: &Header, s: &Scan) -> Result<BundleReport, CheckError> {
    let m = &b.meta;
    let complete = m.start == 0 && m.covered_size == b.entry_count();
    let witnessed: HashMap<u64, Hash> = m
        .witnessed
        .iter()
        .map(|w| (w.checkpoint.size(), *w.checkpoint.root()))
        .collect();
    // Log entries recording cosigned peer checkpoints must match the witness records.
    for (size, root, _) in &s.cosigned_entries {
        match witnessed.get(size) {
            Some(r) if r == root => {}
            Some(_) => {
                return Err(CheckError::BadWitnessRecord {
                    bundle: i,
                    size: *size,
                    reason: "log entry and witness record disagree on the root".into(),
                });
            }
            None => {
                return Err(CheckError::BadWitnessRecord {
                    bundle: i,
                    size: *size,
                    reason: "logged as cosigned but missing from the bundle".into(),
                });
            }
        }
    }
    // Receipts must name messages this log sent (checkable on complete bundles).
    let mut receipted = BTreeSet::new();
    for r in &m.receipts {
        let Ok(Entry {
            event: Event::MsgReceived {
                seq, commitment, ..
            },
            ..
        }) = Entry::from_leaf(&r.leaf)
        else {
            continue;
        };
        receipted.insert(seq);
        if complete {
            match s.sent.get(&seq) {
                Some((c, _)) if *c == commitment => {}
                _ => {
                    return Err(CheckError::BadReceipt {
                        bundle: i,
                        seq,
                        reason: "no matching msg_sent in this log".into(),
                    });
                }
            }
        }
    }
    let latest = h.own.keys().next_back().copied().unwrap_or(0);
    Ok(BundleReport {
        identity: hex::encode(m.local.identity.as_bytes()),
        peer_identity: hex::encode(m.peer_identity.as_bytes()),
        channel: hex::encode(h.channel),
        origin: h.origin.clone(),
        start: m.start,
        entries: b.entry_count(),
        covered_size: m.covered_size,
        complete,
        checkpoints: h.own.len(),
        latest_checkpoint: latest,
        unsigned_tail: m.covered_size.saturating_sub(latest),
        cosigned_by_peer: h.cosigned_by_peer,
        witnessed: m.witnessed.len(),
        peer_size_witnessed: m.witnessed.last().map_or(0, |w| w.checkpoint.size()),
        receipts: m.receipts.len(),
        messages_sent: s.sent.len(),
        messages_received: s.recv.len(),
        messages_acked: s.acked.len(),
        acked_without_receipt: acked_sends(s)
            .iter()
            .filter(|(seq, _, _)| !receipted.contains(seq))
            .count(),
        anomalies: s.anomalies,
        unproven_evidence: h.unproven_evidence,
    })
}

fn cross_check(
    bundles: &[Bundle],
    headers: &[Header],
    scans: &[Scan],
) -> Result<CrossReport, CheckError> {
    let mut rep = CrossReport::default();
    let get = |i: usize| -> Result<(&Bundle, &Header, &Scan), CheckError> {
        Ok((
            bundles.get(i).ok_or(CheckError::NoBundles)?,
            headers.get(i).ok_or(CheckError::NoBundles)?,
            scans.get(i).ok_or(CheckError::NoBundles)?,
        ))
    };
    // Checkpoints of X's log held by Y: truncation first (the clearest reason), then forks.
    for (x, y) in [(0usize, 1usize), (1, 0)] {
        let (bx, _, _) = get(x)?;
        let (_, hy, _) = get(y)?;
        if let Some(max) = hy.held_of_peer.iter().map(SignedCheckpoint::size).max()
            && max > bx.meta.covered_size
        {
            return Err(CheckError::Truncated {
                bundle: x,
                held_size: max,
                bundle_size: bx.meta.covered_size,
            });
        }
    }
    for (x, y) in [(0usize, 1usize), (1, 0)] {
        let (bx, hx, sx) = get(x)?;
        let (_, hy, _) = get(y)?;
        for held in &hy.held_of_peer {
            let size = held.size();
            let Some(root) = sx.roots.get(&size) else {
                return Err(CheckError::CheckpointMissing { bundle: x, size });
            };
            if root != held.root() {
                let own = hx
                    .own
                    .range(size..)
                    .next()
                    .map(|(_, c)| c.to_note())
                    .unwrap_or_else(|| {
                        format!(
                            "(the {} entries of bundle {})\n",
                            bx.meta.covered_size,
                            x + 1
                        )
                    });
                return Err(CheckError::Fork {
                    bundle: x,
                    owner: short_id(&hx.local.identity),
                    a: own,
                    b: held.to_note(),
                });
            }
            rep.held_checkpoints_checked += 1;
        }
    }

    let complete = |i: usize| -> Result<bool, CheckError> {
        let (b, _, _) = get(i)?;
        Ok(b.meta.start == 0 && b.meta.covered_size == b.entry_count())
    };
    if !complete(0)? || !complete(1)? {
        rep.messages_skipped_partial = true;
        return Ok(rep);
    }
    for (x, y) in [(0usize, 1usize), (1, 0)] {
        let (_, hx, sx) = get(x)?;
        let (by, hy, sy) = get(y)?;
        // How far the other side had seen (cosigned) each log.
        let seen_x_by_y = hx
            .cosigned_by_peer
            .max(by.meta.witnessed.last().map_or(0, |w| w.checkpoint.size()));
        let seen_y_by_x = hy.cosigned_by_peer.max(
            bundles
                .get(x)
                .and_then(|b| b.meta.witnessed.last())
                .map_or(0, |w| w.checkpoint.size()),
        );
        for (seq, c, index) in acked_sends(sx) {
            if index >= seen_x_by_y {
                rep.acks_beyond_horizon += 1;
                continue;
            }
            match sy.recv.get(&seq) {
                Some((rc, _)) if *rc == c => rep.acked_messages_matched += 1,
                _ => {
                    return Err(CheckError::MissingReceipt {
                        sender: x,
                        receiver: y,
                        seq,
                    });
                }
            }
        }
        for (seq, (c, index)) in &sy.recv {
            if *index >= seen_y_by_x {
                rep.received_beyond_horizon += 1;
                continue;
            }
            match sx.sent.get(seq) {
                Some((sc, _)) if sc == c => rep.received_messages_matched += 1,
                _ => {
                    return Err(CheckError::UnmatchedReceipt {
                        receiver: y,
                        sender: x,
                        seq: *seq,
                    });
                }
            }
        }
    }
    Ok(rep)
}

/// Checks the bundles, then a revealed message (`body` and `salt`) against message entry
/// `index` of bundle `bundle`: proves that this node logged (and, if the entry is below its
/// latest checkpoint, signed) a commitment to exactly this text.
pub fn check_opening(
    bundles: &[Bundle],
    bundle: usize,
    index: u64,
    salt: &[u8; 32],
    body: &[u8],
) -> Result<(OpenedMessage, CheckReport), CheckError> {
    let report = check(bundles)?;
    let opening = |reason: String| CheckError::Opening {
        bundle,
        index,
        reason,
    };
    let b = bundles
        .get(bundle)
        .ok_or_else(|| opening("no such bundle".into()))?;
    let i = index
        .checked_sub(b.meta.start)
        .ok_or_else(|| opening("entry not in this bundle".into()))?;
    let entry = b
        .entry(i)
        .ok_or_else(|| opening("entry not in this bundle".into()))?
        .map_err(|e| opening(e.to_string()))?;
    let opened = verify_opening(&entry, salt, body).map_err(|e| opening(e.to_string()))?;
    Ok((opened, report))
}

/// Renders a checkpoint with the cosignatures a bundle holds for it (for display).
pub fn cosigned_checkpoint_note(b: &Bundle, size: u64) -> Option<String> {
    let cp = b
        .meta
        .checkpoints
        .iter()
        .find(|c| c.checkpoint.size() == size)?;
    let cosigs: Vec<_> = match &b.meta.peer {
        Some(p) => b
            .meta
            .cosignatures
            .iter()
            .filter(|c| c.size == size)
            .map(|c| (p.witness_key, c.cosignature))
            .collect(),
        None => Vec::new(),
    };
    Some(cosigned_note(&cp.checkpoint, &cosigs))
}
