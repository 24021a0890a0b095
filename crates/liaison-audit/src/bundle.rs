//! The export bundle: a self-contained, versioned, length-prefixed binary file holding one
//! node's log of one line and everything needed to check it offline.
//!
//! Layout (integers big-endian; `note` = u16 length + signed checkpoint note of at most 4096
//! bytes; `proof` = u8 count (≤ 65) + 32-byte hashes; `binding` = 160 bytes, see
//! [`crate::keys::KeyBinding`]):
//!
//! ```text
//! magic "LSNAUDIT" (8) · version u8 = 1
//! local binding                       this node: identity, log key, witness key, signature
//! peer identity (32)
//! peer binding present u8 (0|1) · [peer binding]
//! exported_ms u64
//! start u64                           index of the first entry carried
//! count u64                           number of entries carried
//! covered_size u64                    tree size proven (≥ start + count)
//! prefix: n u8 (= popcount(start)) · n × hash          frontier of [0, start)
//! suffix: n u8 (≤ 128) · n × (level u8 · hash)         compact range of [start+count, covered_size)
//! checkpoints: n u32 · n × (note · proof)              own checkpoints, oldest first; proof to
//!                                                      covered_size when outside [start, start+count]
//! cosignatures: n u32 · n × (size u64 · timestamp u64 · signature 64)   peer's, on own checkpoints
//! witnessed: n u32 · n × (note · from_size u64 · proof · timestamp u64 · signature 64)
//!                                                      peer checkpoints this node cosigned, oldest first,
//!                                                      with the proof it checked and its own cosignature
//! evidence: n u16 · n × (note · note · detected_ms u64) peer checkpoint pairs that forked
//! receipts: n u32 · n × (note · leaf_index u64 · leaf_len u8 · leaf · proof)
//! entries: count × (leaf_len u8 · leaf)                58 ≤ leaf_len ≤ 122
//! (end of file: no trailing bytes)
//! ```
//!
//! Entries come last and their count first, so a reader can stream them. Every count is checked
//! against a constant maximum and against the bytes left before anything is allocated.

use std::io::Write;

use ed25519_dalek::{Signature, VerifyingKey};

use crate::Hash;
use crate::checkpoint::SignedCheckpoint;
use crate::codec::{DecodeError, Put, Reader};
use crate::cosig::Cosignature;
use crate::entry::{Entry, EntryError, MAX_LEAF_LEN, MIN_LEAF_LEN};
use crate::keys::{KeyBinding, parse_public_key};
use crate::receipt::Receipt;

/// First bytes of every bundle.
pub const BUNDLE_MAGIC: [u8; 8] = *b"LSNAUDIT";
/// Bundle format version.
pub const BUNDLE_VERSION: u8 = 1;
/// Most own checkpoints, cosignatures, witnessed checkpoints or receipts in a bundle.
pub const MAX_ITEMS: u64 = 1 << 24;
/// Most evidence pairs.
pub const MAX_EVIDENCE: u64 = 4096;
/// Most entries.
pub const MAX_ENTRIES: u64 = 1 << 40;
/// Most compact-range blocks in the suffix.
pub const MAX_SUFFIX: usize = 128;
/// Largest bundle file read by [`Bundle::read_file`].
pub const MAX_BUNDLE_BYTES: u64 = 8 << 30;

/// An own checkpoint, with a consistency proof to `covered_size` when the entries carried do
/// not include its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleCheckpoint {
    /// The checkpoint.
    pub checkpoint: SignedCheckpoint,
    /// Proof to the covered size (empty for full bundles).
    pub proof: Vec<Hash>,
}

/// The peer's cosignature on an own checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleCosignature {
    /// Size of the own checkpoint cosigned.
    pub size: u64,
    /// The cosignature (by the peer binding's witness key).
    pub cosignature: Cosignature,
}

/// A peer checkpoint this node cosigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessedCheckpoint {
    /// The peer's checkpoint.
    pub checkpoint: SignedCheckpoint,
    /// Size the consistency proof started from (the previous record's size; 0 for the first).
    pub from_size: u64,
    /// The consistency proof the witness checked.
    pub proof: Vec<Hash>,
    /// This node's cosignature.
    pub cosignature: Cosignature,
}

/// Two peer checkpoints that cannot share a history, kept when the witness refused an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// The one cosigned before.
    pub held: SignedCheckpoint,
    /// The one offered.
    pub offered: SignedCheckpoint,
    /// When it was detected.
    pub detected_ms: u64,
}

/// Everything in a bundle but the entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleMeta {
    /// This node's binding.
    pub local: KeyBinding,
    /// The peer's identity.
    pub peer_identity: VerifyingKey,
    /// The peer's binding, once learnt.
    pub peer: Option<KeyBinding>,
    /// Export time.
    pub exported_ms: u64,
    /// Index of the first entry carried.
    pub start: u64,
    /// Tree size the bundle proves.
    pub covered_size: u64,
    /// Frontier of `[0, start)`.
    pub prefix: Vec<Hash>,
    /// Compact range of `[start + count, covered_size)`.
    pub suffix: Vec<(u8, Hash)>,
    /// Own checkpoints, oldest first.
    pub checkpoints: Vec<BundleCheckpoint>,
    /// Peer cosignatures of own checkpoints.
    pub cosignatures: Vec<BundleCosignature>,
    /// Peer checkpoints cosigned, oldest first.
    pub witnessed: Vec<WitnessedCheckpoint>,
    /// Fork evidence against the peer.
    pub evidence: Vec<Evidence>,
    /// Receipts from the peer for messages this node sent.
    pub receipts: Vec<Receipt>,
}

/// A decoded bundle. Leaves are kept as one contiguous buffer (`len u8 · leaf` each), so a
/// million entries cost no per-entry allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// Everything but the entries.
    pub meta: BundleMeta,
    count: u64,
    entries: Vec<u8>,
}

impl BundleMeta {
    fn encode_header(&self, count: u64, out: &mut Vec<u8>) {
        out.put(&BUNDLE_MAGIC);
        out.put_u8(BUNDLE_VERSION);
        out.put(&self.local.to_bytes());
        out.put(self.peer_identity.as_bytes());
        match &self.peer {
            Some(p) => {
                out.put_u8(1);
                out.put(&p.to_bytes());
            }
            None => out.put_u8(0),
        }
        out.put_u64(self.exported_ms);
        out.put_u64(self.start);
        out.put_u64(count);
        out.put_u64(self.covered_size);
        out.put_u8(self.prefix.len().min(64) as u8);
        for h in self.prefix.iter().take(64) {
            out.put(h);
        }
        out.put_u8(self.suffix.len().min(MAX_SUFFIX) as u8);
        for (l, h) in self.suffix.iter().take(MAX_SUFFIX) {
            out.put_u8(*l);
            out.put(h);
        }
        out.put_u32(self.checkpoints.len() as u32);
        for c in &self.checkpoints {
            out.put_checkpoint(&c.checkpoint);
            out.put_proof(&c.proof);
        }
        out.put_u32(self.cosignatures.len() as u32);
        for c in &self.cosignatures {
            out.put_u64(c.size);
            out.put_u64(c.cosignature.timestamp);
            out.put(&c.cosignature.signature.to_bytes());
        }
        out.put_u32(self.witnessed.len() as u32);
        for w in &self.witnessed {
            out.put_checkpoint(&w.checkpoint);
            out.put_u64(w.from_size);
            out.put_proof(&w.proof);
            out.put_u64(w.cosignature.timestamp);
            out.put(&w.cosignature.signature.to_bytes());
        }
        out.put_u16(self.evidence.len().min(MAX_EVIDENCE as usize) as u16);
        for e in self.evidence.iter().take(MAX_EVIDENCE as usize) {
            out.put_checkpoint(&e.held);
            out.put_checkpoint(&e.offered);
            out.put_u64(e.detected_ms);
        }
        out.put_u32(self.receipts.len() as u32);
        for r in &self.receipts {
            r.encode_into(out);
        }
    }

    fn decode_header(r: &mut Reader<'_>) -> Result<(Self, u64), DecodeError> {
        if r.array::<8>("magic").map_err(|_| DecodeError::BadMagic)? != BUNDLE_MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let v = r.u8("version")?;
        if v != BUNDLE_VERSION {
            return Err(DecodeError::Version(v));
        }
        let local = r.binding("local binding")?;
        let peer_identity = parse_public_key(&r.array::<32>("peer identity")?)
            .map_err(|e| DecodeError::invalid("peer identity", e))?;
        let peer = match r.u8("peer binding flag")? {
            0 => None,
            1 => Some(r.binding("peer binding")?),
            x => return Err(DecodeError::invalid("peer binding flag", x)),
        };
        let exported_ms = r.u64("exported_ms")?;
        let start = r.u64("start")?;
        let count = r.u64("count")?;
        let covered_size = r.u64("covered_size")?;
        let n = r.u8("prefix")?;
        if u32::from(n) != start.count_ones() {
            return Err(DecodeError::invalid(
                "prefix",
                "hash count is not popcount(start)",
            ));
        }
        let n = r.check_count(u64::from(n), 64, 32, "prefix")?;
        let mut prefix = Vec::with_capacity(n);
        for _ in 0..n {
            prefix.push(r.hash("prefix")?);
        }
        let n = r.u8("suffix")?;
        let n = r.check_count(u64::from(n), MAX_SUFFIX as u64, 33, "suffix")?;
        let mut suffix = Vec::with_capacity(n);
        for _ in 0..n {
            let l = r.u8("suffix level")?;
            if l > 62 {
                return Err(DecodeError::invalid("suffix level", l));
            }
            suffix.push((l, r.hash("suffix")?));
        }
        let n = r.u32("checkpoints")?;
        let n = r.check_count(u64::from(n), MAX_ITEMS, 3, "checkpoints")?;
        let mut checkpoints = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            checkpoints.push(BundleCheckpoint {
                checkpoint: r.checkpoint("checkpoint")?,
                proof: r.proof("checkpoint proof")?,
            });
        }
        let n = r.u32("cosignatures")?;
        let n = r.check_count(u64::from(n), MAX_ITEMS, 80, "cosignatures")?;
        let mut cosignatures = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            cosignatures.push(BundleCosignature {
                size: r.u64("cosignature size")?,
                cosignature: read_cosig(r)?,
            });
        }
        let n = r.u32("witnessed")?;
        let n = r.check_count(u64::from(n), MAX_ITEMS, 83, "witnessed")?;
        let mut witnessed = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            witnessed.push(WitnessedCheckpoint {
                checkpoint: r.checkpoint("witnessed checkpoint")?,
                from_size: r.u64("witnessed from_size")?,
                proof: r.proof("witnessed proof")?,
                cosignature: read_cosig(r)?,
            });
        }
        let n = r.u16("evidence")?;
        let n = r.check_count(u64::from(n), MAX_EVIDENCE, 12, "evidence")?;
        let mut evidence = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            evidence.push(Evidence {
                held: r.checkpoint("evidence")?,
                offered: r.checkpoint("evidence")?,
                detected_ms: r.u64("evidence time")?,
            });
        }
        let n = r.u32("receipts")?;
        let n = r.check_count(u64::from(n), MAX_ITEMS, 12, "receipts")?;
        let mut receipts = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            receipts.push(Receipt::decode_from(r)?);
        }
        let meta = Self {
            local,
            peer_identity,
            peer,
            exported_ms,
            start,
            covered_size,
            prefix,
            suffix,
            checkpoints,
            cosignatures,
            witnessed,
            evidence,
            receipts,
        };
        Ok((meta, count))
    }
}

fn read_cosig(r: &mut Reader<'_>) -> Result<Cosignature, DecodeError> {
    Ok(Cosignature {
        timestamp: r.u64("cosignature timestamp")?,
        signature: Signature::from_bytes(&r.array::<64>("cosignature")?),
    })
}

impl Bundle {
    /// Assembles a bundle from its metadata and leaves (each 58..=122 bytes).
    pub fn from_parts<'a>(
        meta: BundleMeta,
        leaves: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Self, DecodeError> {
        let mut entries = Vec::new();
        let mut count = 0u64;
        for l in leaves {
            check_leaf_len(l.len())?;
            entries.push(l.len() as u8);
            entries.extend_from_slice(l);
            count += 1;
        }
        Ok(Self {
            meta,
            count,
            entries,
        })
    }

    /// Number of entries carried.
    pub fn entry_count(&self) -> u64 {
        self.count
    }

    /// The leaves, in order.
    pub fn leaves(&self) -> Leaves<'_> {
        Leaves {
            rest: &self.entries,
        }
    }

    /// Decodes entry `i` (0-based within the bundle; its log index is `start + i`).
    pub fn entry(&self, i: u64) -> Option<Result<Entry, EntryError>> {
        let i = usize::try_from(i).ok()?;
        self.leaves().nth(i).map(Entry::from_leaf)
    }

    /// Encodes the whole bundle.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4096 + self.entries.len());
        self.meta.encode_header(self.count, &mut out);
        out.extend_from_slice(&self.entries);
        out
    }

    /// Decodes a bundle from untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let (meta, count) = BundleMeta::decode_header(&mut r)?;
        let n = r.check_count(count, MAX_ENTRIES, 1 + MIN_LEAF_LEN, "entries")?;
        let body = r.bytes(r.remaining(), "entries")?;
        // Walk the leaves once to check every length; the buffer is then copied as is.
        let mut walk = Reader::new(body);
        for _ in 0..n {
            let len = walk.u8("leaf length")?;
            check_leaf_len(usize::from(len))?;
            walk.bytes(usize::from(len), "leaf")?;
        }
        walk.finish()?;
        if meta
            .start
            .checked_add(count)
            .is_none_or(|end| end > meta.covered_size)
        {
            return Err(DecodeError::invalid(
                "covered_size",
                "smaller than start + count",
            ));
        }
        Ok(Self {
            meta,
            count,
            entries: body.to_vec(),
        })
    }

    /// Reads and decodes a bundle file (at most [`MAX_BUNDLE_BYTES`]).
    pub fn read_file(path: &std::path::Path) -> Result<Self, BundleReadError> {
        use std::io::Read;
        let f = std::fs::File::open(path)?;
        let mut buf = Vec::new();
        f.take(MAX_BUNDLE_BYTES + 1).read_to_end(&mut buf)?;
        if buf.len() as u64 > MAX_BUNDLE_BYTES {
            return Err(BundleReadError::Decode(DecodeError::TooLong {
                what: "bundle file",
                len: buf.len() as u64,
                max: MAX_BUNDLE_BYTES,
            }));
        }
        Ok(Self::decode(&buf)?)
    }
}

/// Reading a bundle file failed.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum BundleReadError {
    /// The file could not be read.
    #[error("cannot read bundle: {0}")]
    Io(#[from] std::io::Error),
    /// The content is malformed.
    #[error("malformed bundle: {0}")]
    Decode(#[from] DecodeError),
}

fn check_leaf_len(len: usize) -> Result<(), DecodeError> {
    if !(MIN_LEAF_LEN..=MAX_LEAF_LEN).contains(&len) {
        return Err(DecodeError::invalid("leaf length", len));
    }
    Ok(())
}

/// Iterator over a bundle's leaves.
#[derive(Debug, Clone)]
pub struct Leaves<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Leaves<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        let (&len, tail) = self.rest.split_first()?;
        let (leaf, tail) = tail.split_at_checked(usize::from(len))?;
        self.rest = tail;
        Some(leaf)
    }
}

/// Streams a bundle to a writer: the header first, then each leaf. Used by the store to export
/// without holding the log in memory.
#[derive(Debug)]
pub struct BundleWriter<W: Write> {
    out: W,
    remaining: u64,
}

impl<W: Write> BundleWriter<W> {
    /// Writes the header of a bundle that will carry `count` entries.
    pub fn start(mut out: W, meta: &BundleMeta, count: u64) -> std::io::Result<Self> {
        let mut header = Vec::with_capacity(4096);
        meta.encode_header(count, &mut header);
        out.write_all(&header)?;
        Ok(Self {
            out,
            remaining: count,
        })
    }

    /// Writes the next leaf.
    pub fn leaf(&mut self, leaf: &[u8]) -> std::io::Result<()> {
        if self.remaining == 0 || check_leaf_len(leaf.len()).is_err() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "unexpected or invalid leaf",
            ));
        }
        self.out.write_all(&[leaf.len() as u8])?;
        self.out.write_all(leaf)?;
        self.remaining -= 1;
        Ok(())
    }

    /// Checks that every announced leaf was written and returns the writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        if self.remaining != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "fewer leaves than announced",
            ));
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Proof material of a bundle carrying entries `[start, end)` of a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeParts {
    /// Tree size proven: the larger of `end` and the latest checkpoint.
    pub covered_size: u64,
    /// Frontier of `[0, start)`.
    pub prefix: Vec<Hash>,
    /// Compact range of `[end, covered_size)`.
    pub suffix: Vec<(u8, Hash)>,
    /// Every checkpoint, with a consistency proof to `covered_size` for those outside
    /// `[start, end]`.
    pub checkpoints: Vec<BundleCheckpoint>,
}

/// Computes the proof material for carrying `[start, end)` of the log in `tree` (all leaves)
/// with its signed `checkpoints` (oldest first). `[0, len)` needs no proofs at all.
pub fn range_parts(
    tree: &crate::merkle::MerkleTree,
    checkpoints: &[SignedCheckpoint],
    start: u64,
    end: u64,
) -> Result<RangeParts, crate::merkle::ProofError> {
    use crate::merkle::ProofError;
    if start > end {
        return Err(ProofError::SizeDecreased {
            first: start,
            second: end,
        });
    }
    let latest = checkpoints
        .iter()
        .map(SignedCheckpoint::size)
        .max()
        .unwrap_or(0);
    let covered_size = end.max(latest);
    let prefix = tree.frontier(start)?.nodes().to_vec();
    let suffix = tree.compact_range(end, covered_size)?;
    if suffix.len() > MAX_SUFFIX {
        return Err(ProofError::Misaligned { size: end });
    }
    let mut out = Vec::with_capacity(checkpoints.len());
    for c in checkpoints {
        let s = c.size();
        let proof = if (start..=end).contains(&s) || s == covered_size {
            Vec::new()
        } else {
            tree.consistency_proof(s, covered_size)?
        };
        out.push(BundleCheckpoint {
            checkpoint: c.clone(),
            proof,
        });
    }
    Ok(RangeParts {
        covered_size,
        prefix,
        suffix,
        checkpoints: out,
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
    use crate::entry::Event;
    use crate::keys::{LocalKeys, generate_signing_key};
    use crate::mem::MemoryLine;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    /// A small honest bundle with every section populated.
    fn sample() -> &'static Vec<u8> {
        static S: OnceLock<Vec<u8>> = OnceLock::new();
        S.get_or_init(|| {
            let (ia, ib) = (
                generate_signing_key().unwrap(),
                generate_signing_key().unwrap(),
            );
            let mut a =
                MemoryLine::in_memory(LocalKeys::generate(&ia).unwrap(), ib.verifying_key());
            let mut b =
                MemoryLine::in_memory(LocalKeys::generate(&ib).unwrap(), ia.verifying_key());
            let c = crate::entry::commitment(&[1; 32], b"m");
            for round in 0..2u64 {
                a.append(
                    Event::MsgSent {
                        seq: round,
                        commitment: c,
                        ciphertext_hash: [0; 32],
                    },
                    round,
                );
                b.append(
                    Event::MsgReceived {
                        seq: round,
                        commitment: c,
                        ciphertext_hash: [0; 32],
                    },
                    round,
                );
                a.append(Event::MsgAcked { seq: round }, round);
                let mut to_b: Vec<Vec<u8>> = a.commit(round).unwrap().into_iter().collect();
                let mut to_a: Vec<Vec<u8>> = b.commit(round).unwrap().into_iter().collect();
                for _ in 0..4 {
                    let (mut na, mut nb) = (Vec::new(), Vec::new());
                    for m in to_b.drain(..) {
                        na.extend(b.handle_message(&m, round).unwrap());
                    }
                    for m in to_a.drain(..) {
                        nb.extend(a.handle_message(&m, round).unwrap());
                    }
                    (to_a, to_b) = (na, nb);
                }
            }
            let bundle = a.bundle_range(1, 4, 9).unwrap();
            assert!(!bundle.meta.receipts.is_empty() && !bundle.meta.witnessed.is_empty());
            assert!(!bundle.meta.prefix.is_empty() && !bundle.meta.suffix.is_empty());
            bundle.encode()
        })
    }

    #[test]
    fn round_trips_byte_for_byte() {
        let b = Bundle::decode(sample()).unwrap();
        assert_eq!(&b.encode(), sample());
        let mut streamed = Vec::new();
        let mut w = BundleWriter::start(&mut streamed, &b.meta, b.entry_count()).unwrap();
        for l in b.leaves() {
            w.leaf(l).unwrap();
        }
        w.finish().unwrap();
        assert_eq!(&streamed, sample());
        assert_eq!(b.leaves().count() as u64, b.entry_count());
    }

    #[test]
    fn writer_refuses_wrong_leaf_counts() {
        let b = Bundle::decode(sample()).unwrap();
        let w = BundleWriter::start(Vec::new(), &b.meta, 1).unwrap();
        assert!(w.finish().is_err());
        let mut w = BundleWriter::start(Vec::new(), &b.meta, 0).unwrap();
        assert!(w.leaf(&[0; 60]).is_err());
    }

    #[test]
    fn refuses_counts_beyond_the_input_before_allocating() {
        let b = Bundle::decode(sample()).unwrap();
        // An entry count of 2^40 with a few bytes behind it.
        let mut meta_only = Vec::new();
        b.meta.encode_header(MAX_ENTRIES, &mut meta_only);
        assert!(matches!(
            Bundle::decode(&meta_only),
            Err(DecodeError::TooLong {
                what: "entries",
                ..
            })
        ));
        // covered_size below start + count.
        let mut m = b.meta.clone();
        m.covered_size = 0;
        let bad = Bundle::from_parts(m, b.leaves()).unwrap().encode();
        assert!(Bundle::decode(&bad).is_err());
        // Leaves of impossible lengths.
        assert!(Bundle::from_parts(b.meta.clone(), [&[0u8; 10][..]]).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn decode_never_panics_and_round_trips(idx in any::<usize>(), val in any::<u8>(), cut in any::<usize>()) {
            let mut bytes = sample().clone();
            let i = idx % bytes.len();
            bytes[i] = val;
            bytes.truncate(bytes.len() - cut % 64);
            if let Ok(b) = Bundle::decode(&bytes) {
                prop_assert_eq!(b.encode(), bytes);
                let _ = crate::check::check(&[b]);
            }
        }

        #[test]
        fn decode_never_panics_on_noise(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut with_magic = BUNDLE_MAGIC.to_vec();
            with_magic.push(BUNDLE_VERSION);
            with_magic.extend_from_slice(&bytes);
            let _ = Bundle::decode(&with_magic);
            let _ = Bundle::decode(&bytes);
        }
    }
}
