//! Sans-IO RFC 9162 (Certificate Transparency v2) Merkle tree over SHA-256.
//!
//! * leaf hash `SHA-256(0x00 || leaf bytes)`, interior node `SHA-256(0x01 || left || right)`,
//!   the empty tree hashes to `SHA-256("")` (RFC 9162 §2.1.1);
//! * [`Frontier`]: the O(log n) "compact range" of a growing tree — push leaf hashes one by one
//!   and read the root at any size in O(log n), with no per-leaf allocation. The checker streams a
//!   million entries through it;
//! * [`MerkleTree`]: every complete level kept in memory (2 × 32 bytes per leaf), so inclusion
//!   and consistency proofs are generated in O(log² n) without rehashing;
//! * [`verify_inclusion`] and [`verify_consistency`]: the verification algorithms of RFC 9162
//!   §2.1.3.2 and §2.1.4.2, step by step, checked against transparency-dev/merkle's published
//!   vectors and against the independent `ct-merkle` crate.
//!
//! Proof generation follows the recursive definitions `PATH(m, D[n])` (§2.1.3.1) and
//! `SUBPROOF(m, D[n], b)` (§2.1.4.1).

use sha2::{Digest, Sha256};

use crate::Hash;

/// Domain-separation prefix of a leaf hash.
pub const LEAF_PREFIX: u8 = 0x00;
/// Domain-separation prefix of an interior node hash.
pub const NODE_PREFIX: u8 = 0x01;
/// Longest possible proof (inclusion or consistency) for a tree of at most 2^64 − 1 leaves:
/// 64 path hashes plus, for a consistency proof, the seed subtree hash.
pub const MAX_PROOF_HASHES: usize = 65;

/// Why a proof could not be generated or did not verify.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The leaf index is not inside the tree.
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange {
        /// Leaf index that was asked for.
        index: u64,
        /// Tree size it was asked against.
        size: u64,
    },
    /// The second tree is smaller than the first.
    #[error("tree size {second} is smaller than tree size {first}")]
    SizeDecreased {
        /// Older size.
        first: u64,
        /// Newer size.
        second: u64,
    },
    /// A consistency proof from the empty tree is meaningless (RFC 9162 §2.1.4: 0 < m).
    #[error("a consistency proof from the empty tree is meaningless")]
    EmptyOldTree,
    /// A proof for equal sizes must be empty.
    #[error("the sizes are equal but the proof is not empty")]
    NonEmptyProofForEqualSizes,
    /// A proof that must have hashes has none.
    #[error("the proof is empty")]
    EmptyProof,
    /// The proof has more hashes than the tree shape allows.
    #[error("the proof has too many hashes")]
    ProofTooLong,
    /// The proof has fewer hashes than the tree shape needs.
    #[error("the proof has too few hashes")]
    ProofTooShort,
    /// The recomputed root is not the expected one.
    #[error("the recomputed root hash does not match")]
    RootMismatch,
    /// The tree (or the requested size) is larger than what is held.
    #[error("tree size {size} is beyond the {held} leaves held")]
    SizeBeyondTree {
        /// Requested size.
        size: u64,
        /// Leaves held.
        held: u64,
    },
    /// A compact range was not aligned with the tree it was merged into.
    #[error("a subtree hash does not fit the tree shape at size {size}")]
    Misaligned {
        /// Tree size at which the subtree was pushed.
        size: u64,
    },
}

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([LEAF_PREFIX]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([NODE_PREFIX]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Root of the tree whose leaf hashes are `leaves`, computed iteratively in O(n) time and
/// O(log n) memory.
pub fn root_from_leaf_hashes<'a>(leaves: impl IntoIterator<Item = &'a Hash>) -> Hash {
    let mut f = Frontier::new();
    for h in leaves {
        f.push(*h);
    }
    f.root()
}

/// Largest power of two strictly smaller than `n` (`n >= 2`).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    let p = 1u64 << (63 - (n - 1).leading_zeros());
    if p == n { p >> 1 } else { p }
}

/// The perfect subtrees covering `[0, size)`: one hash per set bit of `size`, largest (leftmost)
/// first. Enough to append more leaves and to compute the root at every later size.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds a frontier from its parts; `nodes` must hold exactly one hash per set bit of
    /// `size`.
    pub fn from_parts(size: u64, nodes: Vec<Hash>) -> Result<Self, ProofError> {
        if nodes.len() != size.count_ones() as usize {
            return Err(ProofError::Misaligned { size });
        }
        Ok(Self { size, nodes })
    }

    /// Number of leaves covered.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The perfect-subtree hashes, largest first.
    pub fn nodes(&self) -> &[Hash] {
        &self.nodes
    }

    /// Appends one leaf hash (amortised O(1)).
    pub fn push(&mut self, leaf_hash: Hash) {
        let mut h = leaf_hash;
        let mut s = self.size;
        while s & 1 == 1 {
            match self.nodes.pop() {
                Some(left) => h = node_hash(&left, &h),
                None => break,
            }
            s >>= 1;
        }
        self.nodes.push(h);
        self.size = self.size.saturating_add(1);
    }

    /// Appends a whole perfect subtree of `2^level` leaves whose hash is `hash`. The current size
    /// must be a multiple of `2^level` (true for each block of a compact range, in order).
    pub fn push_subtree(&mut self, level: u8, hash: Hash) -> Result<(), ProofError> {
        if level >= 63 {
            return Err(ProofError::Misaligned { size: self.size });
        }
        let width = 1u64 << level;
        if !self.size.is_multiple_of(width) || self.size.checked_add(width).is_none() {
            return Err(ProofError::Misaligned { size: self.size });
        }
        let mut h = hash;
        let mut s = self.size >> level;
        while s & 1 == 1 {
            match self.nodes.pop() {
                Some(left) => h = node_hash(&left, &h),
                None => break,
            }
            s >>= 1;
        }
        self.nodes.push(h);
        self.size += width;
        Ok(())
    }

    /// Root hash of the `size()` leaves (O(log n)).
    pub fn root(&self) -> Hash {
        let mut it = self.nodes.iter().rev();
        let Some(first) = it.next() else {
            return empty_root();
        };
        it.fold(*first, |acc, left| node_hash(left, &acc))
    }
}

/// An in-memory Merkle tree that keeps every complete level, for proof generation.
///
/// `levels[k][i]` is the hash of the perfect subtree of leaves `[i·2^k, (i+1)·2^k)`.
#[derive(Clone, Debug, Default)]
pub struct MerkleTree {
    levels: Vec<Vec<Hash>>,
}

impl MerkleTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self {
            levels: vec![Vec::new()],
        }
    }

    /// Builds a tree from leaf hashes.
    pub fn from_leaf_hashes(leaves: impl IntoIterator<Item = Hash>) -> Self {
        let mut t = Self::new();
        for h in leaves {
            t.push(h);
        }
        t
    }

    /// Number of leaves.
    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// True if the tree has no leaves.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hash of leaf `index`.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        let i = usize::try_from(index).ok()?;
        self.levels.first()?.get(i).copied()
    }

    /// Appends a leaf hash (amortised O(1)).
    pub fn push(&mut self, leaf_hash: Hash) {
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
        }
        let mut carry = Some(leaf_hash);
        let mut level = 0usize;
        while let Some(h) = carry.take() {
            if self.levels.len() <= level {
                self.levels.push(Vec::new());
            }
            let Some(row) = self.levels.get_mut(level) else {
                break;
            };
            row.push(h);
            if row.len() % 2 == 0
                && let [.., l, r] = row.as_slice()
            {
                carry = Some(node_hash(l, r));
            }
            level += 1;
        }
    }

    /// Drops every leaf from `len` on (no-op if the tree is not longer). Only complete subtrees
    /// are stored, so truncating level `k` to `len >> k` keeps exactly the valid ones.
    pub fn truncate(&mut self, len: u64) {
        for (k, row) in self.levels.iter_mut().enumerate() {
            let keep = if k < 64 { len >> k } else { 0 };
            row.truncate(usize::try_from(keep).unwrap_or(usize::MAX));
        }
    }

    /// Hash of the perfect, aligned subtree at `level`, position `pos`.
    fn perfect(&self, level: u32, pos: u64) -> Option<Hash> {
        let row = self.levels.get(level as usize)?;
        row.get(usize::try_from(pos).ok()?).copied()
    }

    /// `MTH(D[start:end])` for a range inside the tree (`start < end <= len`).
    fn subtree(&self, start: u64, end: u64) -> Option<Hash> {
        let n = end.checked_sub(start)?;
        if n == 0 || end > self.len() {
            return None;
        }
        if n.is_power_of_two() && start.is_multiple_of(n) {
            return self.perfect(n.trailing_zeros(), start / n);
        }
        let k = split_point(n);
        let l = self.subtree(start, start + k)?;
        let r = self.subtree(start + k, end)?;
        Some(node_hash(&l, &r))
    }

    fn check_size(&self, size: u64) -> Result<(), ProofError> {
        if size > self.len() {
            return Err(ProofError::SizeBeyondTree {
                size,
                held: self.len(),
            });
        }
        Ok(())
    }

    /// Root hash of the whole tree.
    pub fn root(&self) -> Hash {
        self.root_at(self.len()).unwrap_or_else(|_| empty_root())
    }

    /// Root hash of the first `size` leaves.
    pub fn root_at(&self, size: u64) -> Result<Hash, ProofError> {
        self.check_size(size)?;
        if size == 0 {
            return Ok(empty_root());
        }
        self.subtree(0, size).ok_or(ProofError::SizeBeyondTree {
            size,
            held: self.len(),
        })
    }

    /// The [`Frontier`] of the first `size` leaves.
    pub fn frontier(&self, size: u64) -> Result<Frontier, ProofError> {
        self.check_size(size)?;
        let mut nodes = Vec::new();
        let mut start = 0u64;
        for bit in (0..64u32).rev() {
            let width = 1u64 << bit;
            if size & width != 0 {
                nodes.push(
                    self.perfect(bit, start / width)
                        .ok_or(ProofError::Misaligned { size })?,
                );
                start += width;
            }
        }
        Frontier::from_parts(size, nodes)
    }

    /// The aligned perfect subtrees that cover `[start, end)` left to right, as
    /// `(level, hash)` pairs: pushing them in order onto the frontier at `start` with
    /// [`Frontier::push_subtree`] yields the frontier at `end`.
    pub fn compact_range(&self, start: u64, end: u64) -> Result<Vec<(u8, Hash)>, ProofError> {
        self.check_size(end)?;
        if start > end {
            return Err(ProofError::SizeDecreased {
                first: start,
                second: end,
            });
        }
        let mut out = Vec::new();
        let mut pos = start;
        while pos < end {
            let mut level = if pos == 0 {
                63
            } else {
                pos.trailing_zeros().min(63)
            };
            while level > 0 && pos.checked_add(1u64 << level).is_none_or(|e| e > end) {
                level -= 1;
            }
            let width = 1u64 << level;
            let h = self
                .perfect(level, pos / width)
                .ok_or(ProofError::Misaligned { size: pos })?;
            out.push((level as u8, h));
            pos += width;
        }
        Ok(out)
    }

    /// Inclusion proof (audit path) of leaf `index` in the tree of the first `size` leaves,
    /// `PATH(m, D[n])` of RFC 9162 §2.1.3.1, ordered from the leaf upwards.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        self.check_size(size)?;
        if index >= size {
            return Err(ProofError::IndexOutOfRange { index, size });
        }
        let mut out = Vec::new();
        self.path(index, 0, size, &mut out)
            .ok_or(ProofError::SizeBeyondTree {
                size,
                held: self.len(),
            })?;
        Ok(out)
    }

    fn path(&self, m: u64, start: u64, end: u64, out: &mut Vec<Hash>) -> Option<()> {
        let n = end - start;
        if n <= 1 {
            return Some(());
        }
        let k = split_point(n);
        if m < k {
            self.path(m, start, start + k, out)?;
            out.push(self.subtree(start + k, end)?);
        } else {
            self.path(m - k, start + k, end, out)?;
            out.push(self.subtree(start, start + k)?);
        }
        Some(())
    }

    /// Consistency proof between the first `old_size` and the first `new_size` leaves,
    /// `PROOF(m, D[n]) = SUBPROOF(m, D[n], true)` of RFC 9162 §2.1.4.1. Empty when the sizes
    /// are equal; an error from the empty tree.
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>, ProofError> {
        self.check_size(new_size)?;
        if old_size > new_size {
            return Err(ProofError::SizeDecreased {
                first: old_size,
                second: new_size,
            });
        }
        if old_size == 0 {
            return Err(ProofError::EmptyOldTree);
        }
        let mut out = Vec::new();
        if old_size < new_size {
            self.subproof(old_size, 0, new_size, true, &mut out).ok_or(
                ProofError::SizeBeyondTree {
                    size: new_size,
                    held: self.len(),
                },
            )?;
        }
        Ok(out)
    }

    fn subproof(&self, m: u64, start: u64, end: u64, b: bool, out: &mut Vec<Hash>) -> Option<()> {
        let n = end - start;
        if m == n {
            if !b {
                out.push(self.subtree(start, end)?);
            }
            return Some(());
        }
        let k = split_point(n);
        if m <= k {
            self.subproof(m, start, start + k, b, out)?;
            out.push(self.subtree(start + k, end)?);
        } else {
            self.subproof(m - k, start + k, end, false, out)?;
            out.push(self.subtree(start, start + k)?);
        }
        Some(())
    }
}

/// Verifies an inclusion proof, RFC 9162 §2.1.3.2.
///
/// `root` is compared byte for byte, so a root of the wrong length simply does not match.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf_hash: &Hash,
    proof: &[Hash],
    root: &[u8],
) -> Result<(), ProofError> {
    let r = root_from_inclusion_proof(index, size, leaf_hash, proof)?;
    if r.as_slice() != root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// The root an inclusion proof leads to (steps 1–4 of RFC 9162 §2.1.3.2).
pub fn root_from_inclusion_proof(
    index: u64,
    size: u64,
    leaf_hash: &Hash,
    proof: &[Hash],
) -> Result<Hash, ProofError> {
    // 1. leaf_index must be below tree_size.
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    // 2. fn = leaf_index, sn = tree_size - 1.
    let mut fnode = index;
    let mut snode = size - 1;
    // 3. r = hash.
    let mut r = *leaf_hash;
    // 4. For each p in inclusion_path:
    for p in proof {
        // a. sn == 0: fail.
        if snode == 0 {
            return Err(ProofError::ProofTooLong);
        }
        // b. LSB(fn) set or fn == sn:
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        // c. shift once.
        fnode >>= 1;
        snode >>= 1;
    }
    // 5. sn must be 0.
    if snode != 0 {
        return Err(ProofError::ProofTooShort);
    }
    Ok(r)
}

/// Verifies a consistency proof between tree sizes `size1 <= size2`, RFC 9162 §2.1.4.2.
///
/// Equal sizes need an empty proof and equal roots; a proof from size 0 is refused as
/// meaningless (any tree extends the empty tree, so there is nothing to prove).
pub fn verify_consistency(
    size1: u64,
    size2: u64,
    proof: &[Hash],
    root1: &[u8],
    root2: &[u8],
) -> Result<(), ProofError> {
    if size2 < size1 {
        return Err(ProofError::SizeDecreased {
            first: size1,
            second: size2,
        });
    }
    if size1 == 0 {
        return Err(ProofError::EmptyOldTree);
    }
    if size1 == size2 {
        if !proof.is_empty() {
            return Err(ProofError::NonEmptyProofForEqualSizes);
        }
        if root1 != root2 {
            return Err(ProofError::RootMismatch);
        }
        return Ok(());
    }
    // 1. An empty consistency_path fails.
    let Some((head, rest)) = proof.split_first() else {
        return Err(ProofError::EmptyProof);
    };
    let first_hash: Hash = root1.try_into().map_err(|_| ProofError::RootMismatch)?;
    // 2. If first is an exact power of 2, prepend first_hash.
    let (seed, path): (&Hash, &[Hash]) = if size1.is_power_of_two() {
        (&first_hash, proof)
    } else {
        (head, rest)
    };
    // 3. fn = first - 1, sn = second - 1.
    let mut fnode = size1 - 1;
    let mut snode = size2 - 1;
    // 4. While LSB(fn) is set, shift both.
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    // 5. fr = sr = first value of the path.
    let mut fr = *seed;
    let mut sr = *seed;
    // 6. For each subsequent value c:
    for c in path {
        // a. sn == 0: fail.
        if snode == 0 {
            return Err(ProofError::ProofTooLong);
        }
        // b.
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        // c.
        fnode >>= 1;
        snode >>= 1;
    }
    // 7. fr == first_hash, sr == second_hash, sn == 0.
    if snode != 0 {
        return Err(ProofError::ProofTooShort);
    }
    if fr != first_hash || sr.as_slice() != root2 {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
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
    use proptest::prelude::*;

    /// Reference MTH straight from the recursive definition of RFC 9162 §2.1.1.
    fn mth(leaves: &[Vec<u8>]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaf_hash(&leaves[0]),
            n => {
                let k = split_point(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    fn leaves(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("leaf {i}").into_bytes()).collect()
    }

    #[test]
    fn empty_tree_hash_is_sha256_of_nothing() {
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn rfc6962_reference_roots() {
        // transparency-dev/merkle testonly: the 8 leaves and the roots of every prefix.
        let inputs: [&str; 8] = [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ];
        let roots = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let mut t = MerkleTree::new();
        let mut f = Frontier::new();
        for (i, inp) in inputs.iter().enumerate() {
            let h = leaf_hash(&hex::decode(inp).unwrap());
            t.push(h);
            f.push(h);
            assert_eq!(hex::encode(t.root()), roots[i], "tree root at {}", i + 1);
            assert_eq!(
                hex::encode(f.root()),
                roots[i],
                "frontier root at {}",
                i + 1
            );
        }
        for (i, r) in roots.iter().enumerate() {
            assert_eq!(hex::encode(t.root_at(i as u64 + 1).unwrap()), *r);
        }
    }

    #[test]
    fn tree_frontier_and_reference_agree() {
        for n in 0..70usize {
            let l = leaves(n);
            let hashes: Vec<Hash> = l.iter().map(|d| leaf_hash(d)).collect();
            let t = MerkleTree::from_leaf_hashes(hashes.iter().copied());
            assert_eq!(t.root(), mth(&l), "n = {n}");
            assert_eq!(root_from_leaf_hashes(&hashes), mth(&l));
            for m in 0..=n {
                assert_eq!(t.frontier(m as u64).unwrap().root(), mth(&l[..m]));
            }
        }
    }

    #[test]
    fn proofs_round_trip_exhaustively_for_small_trees() {
        for n in 1..40u64 {
            let l = leaves(n as usize);
            let t = MerkleTree::from_leaf_hashes(l.iter().map(|d| leaf_hash(d)));
            for size in 1..=n {
                let root = t.root_at(size).unwrap();
                for i in 0..size {
                    let p = t.inclusion_proof(i, size).unwrap();
                    verify_inclusion(i, size, &t.leaf(i).unwrap(), &p, &root).unwrap();
                    // Any other index must fail with the same proof (unless the shape allows it
                    // and hashes happen to coincide, which they cannot here).
                    if size > 1 {
                        let other = (i + 1) % size;
                        assert!(
                            verify_inclusion(other, size, &t.leaf(i).unwrap(), &p, &root).is_err()
                        );
                    }
                }
                for old in 1..=size {
                    let p = t.consistency_proof(old, size).unwrap();
                    let r1 = t.root_at(old).unwrap();
                    verify_consistency(old, size, &p, &r1, &root).unwrap();
                    if old < size {
                        let mut bad = p.clone();
                        bad[0][0] ^= 1;
                        assert!(verify_consistency(old, size, &bad, &r1, &root).is_err());
                        assert!(verify_consistency(old, size, &p, &root, &r1).is_err());
                    }
                }
            }
        }
    }

    #[test]
    fn compact_range_extends_a_frontier() {
        let n = 77u64;
        let t = MerkleTree::from_leaf_hashes(leaves(n as usize).iter().map(|d| leaf_hash(d)));
        for start in 0..=n {
            for end in start..=n {
                let mut f = t.frontier(start).unwrap();
                for (level, h) in t.compact_range(start, end).unwrap() {
                    f.push_subtree(level, h).unwrap();
                }
                assert_eq!(f.size(), end);
                assert_eq!(f.root(), t.root_at(end).unwrap(), "{start}..{end}");
            }
        }
    }

    #[test]
    fn truncate_restores_an_earlier_tree() {
        let all: Vec<Hash> = leaves(50).iter().map(|d| leaf_hash(d)).collect();
        for len in 0..50u64 {
            let mut t = MerkleTree::from_leaf_hashes(all.iter().copied());
            t.truncate(len);
            let fresh = MerkleTree::from_leaf_hashes(all.iter().take(len as usize).copied());
            assert_eq!(t.len(), len);
            assert_eq!(t.root(), fresh.root());
            // And it grows again correctly.
            t.push(all[len as usize]);
            assert_eq!(
                t.root(),
                MerkleTree::from_leaf_hashes(all.iter().take(len as usize + 1).copied()).root()
            );
        }
    }

    #[test]
    fn frontier_rejects_bad_parts() {
        assert!(Frontier::from_parts(3, vec![[0; 32]]).is_err());
        let mut f = Frontier::from_parts(1, vec![[0; 32]]).unwrap();
        assert!(f.push_subtree(1, [0; 32]).is_err());
    }

    #[test]
    fn proof_generation_errors() {
        let t = MerkleTree::from_leaf_hashes(leaves(5).iter().map(|d| leaf_hash(d)));
        assert!(matches!(
            t.inclusion_proof(5, 5),
            Err(ProofError::IndexOutOfRange { .. })
        ));
        assert!(matches!(
            t.inclusion_proof(0, 6),
            Err(ProofError::SizeBeyondTree { .. })
        ));
        assert!(matches!(
            t.consistency_proof(0, 5),
            Err(ProofError::EmptyOldTree)
        ));
        assert!(matches!(
            t.consistency_proof(4, 3),
            Err(ProofError::SizeDecreased { .. })
        ));
        assert!(t.consistency_proof(5, 5).unwrap().is_empty());
    }

    fn to_ct(
        leaves: &[Vec<u8>],
    ) -> ct_merkle::mem_backed_tree::MemoryBackedTree<sha2_011::Sha256, Vec<u8>> {
        let mut t = ct_merkle::mem_backed_tree::MemoryBackedTree::new();
        for l in leaves {
            t.push(l.clone());
        }
        t
    }

    fn flat(p: &[Hash]) -> Vec<u8> {
        p.iter().flat_map(|h| h.iter().copied()).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Roots and proofs agree byte for byte with the independent `ct-merkle` crate, and each
        /// side's proofs verify with the other side's verifier.
        #[test]
        fn agrees_with_ct_merkle(
            data in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..16), 1..140),
            i_seed in any::<u64>(),
            old_seed in any::<u64>(),
        ) {
            let n = data.len() as u64;
            let ours = MerkleTree::from_leaf_hashes(data.iter().map(|d| leaf_hash(d)));
            let theirs = to_ct(&data);
            let their_root = theirs.root();
            prop_assert_eq!(&ours.root()[..], &their_root.as_bytes()[..]);

            let i = i_seed % n;
            let our_proof = ours.inclusion_proof(i, n).unwrap();
            let their_proof = theirs.prove_inclusion(i as usize);
            prop_assert_eq!(flat(&our_proof), their_proof.as_bytes().to_vec());
            // Our proof through their verifier.
            let converted = ct_merkle::InclusionProof::<sha2_011::Sha256>::try_from_bytes(flat(&our_proof)).unwrap();
            prop_assert!(their_root.verify_inclusion(&data[i as usize], i, &converted).is_ok());
            // Their proof through our verifier.
            let theirs_as_ours: Vec<Hash> = their_proof.as_bytes().chunks(32).map(|c| c.try_into().unwrap()).collect();
            prop_assert!(verify_inclusion(i, n, &leaf_hash(&data[i as usize]), &theirs_as_ours, their_root.as_bytes()).is_ok());

            let old = 1 + old_seed % n;
            let our_cproof = ours.consistency_proof(old, n).unwrap();
            if old < n {
                let their_cproof = theirs.prove_consistency((n - old) as usize);
                prop_assert_eq!(flat(&our_cproof), their_cproof.as_bytes().to_vec());
                let old_tree = to_ct(&data[..old as usize]);
                let converted = ct_merkle::ConsistencyProof::<sha2_011::Sha256>::try_from_bytes(flat(&our_cproof)).unwrap();
                prop_assert!(their_root.verify_consistency(&old_tree.root(), &converted).is_ok());
                let theirs_as_ours: Vec<Hash> = their_cproof.as_bytes().chunks(32).map(|c| c.try_into().unwrap()).collect();
                prop_assert!(verify_consistency(old, n, &theirs_as_ours, old_tree.root().as_bytes(), their_root.as_bytes()).is_ok());
            } else {
                prop_assert!(our_cproof.is_empty());
            }
        }

        /// Random garbage never panics the verifiers.
        #[test]
        fn verifiers_never_panic(
            index in any::<u64>(), size in any::<u64>(), size2 in any::<u64>(),
            proof in proptest::collection::vec(any::<[u8; 32]>(), 0..70),
            root in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let _ = verify_inclusion(index, size, &[7; 32], &proof, &root);
            let _ = verify_consistency(size, size2, &proof, &root, &root);
            let _ = verify_consistency(size.min(size2), size.max(size2), &proof, &root, &[1; 32]);
        }
    }
}
