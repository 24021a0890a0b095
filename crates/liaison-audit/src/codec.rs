//! Bounded big-endian binary reading and writing, shared by the inner-line messages
//! ([`crate::wire`]) and the bundle format ([`crate::bundle`]).
//!
//! The reader never panics and never allocates on the strength of a length it has read: every
//! count is checked against a constant maximum *and* against the bytes actually left (each item
//! has a known minimum size) before anything is reserved.

use crate::Hash;
use crate::checkpoint::SignedCheckpoint;
use crate::keys::{KEY_BINDING_LEN, KeyBinding};
use crate::merkle::MAX_PROOF_HASHES;
use crate::note::MAX_NOTE_LEN;

/// Why bytes could not be decoded.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Input ended inside a field.
    #[error("truncated: input ends inside {what}")]
    Truncated {
        /// Field being read.
        what: &'static str,
    },
    /// A length or count above its limit (or above what the input can hold).
    #[error("{what}: {len} exceeds the limit of {max}")]
    TooLong {
        /// Field.
        what: &'static str,
        /// Value read.
        len: u64,
        /// Limit.
        max: u64,
    },
    /// Bytes left over after the last field.
    #[error("{count} trailing bytes after the end")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// Not a bundle (wrong magic).
    #[error("not a liaison audit bundle (bad magic)")]
    BadMagic,
    /// Unsupported format version.
    #[error("unsupported format version {0}")]
    Version(u8),
    /// Unknown message type.
    #[error("unknown message type {0:#04x}")]
    UnknownType(u8),
    /// A field decoded but its content is invalid.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Field.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

impl DecodeError {
    pub(crate) fn invalid(what: &'static str, reason: impl std::fmt::Display) -> Self {
        Self::Invalid {
            what,
            reason: reason.to_string(),
        }
    }
}

/// A cursor over untrusted bytes.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { rest: buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }

    pub(crate) fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let (head, tail) = self
            .rest
            .split_at_checked(n)
            .ok_or(DecodeError::Truncated { what })?;
        self.rest = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        let (head, tail) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or(DecodeError::Truncated { what })?;
        self.rest = tail;
        Ok(*head)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn hash(&mut self, what: &'static str) -> Result<Hash, DecodeError> {
        self.array(what)
    }

    /// Checks a count read from the input against `max` and against the bytes left, given
    /// that each item takes at least `min_item_len` bytes.
    pub(crate) fn check_count(
        &self,
        count: u64,
        max: u64,
        min_item_len: usize,
        what: &'static str,
    ) -> Result<usize, DecodeError> {
        let room = (self.rest.len() / min_item_len.max(1)) as u64;
        let limit = max.min(room);
        if count > limit {
            return Err(DecodeError::TooLong {
                what,
                len: count,
                max: limit,
            });
        }
        usize::try_from(count).map_err(|_| DecodeError::TooLong {
            what,
            len: count,
            max: limit,
        })
    }

    /// A `u8` count, then that many 32-byte hashes (at most [`MAX_PROOF_HASHES`]).
    pub(crate) fn proof(&mut self, what: &'static str) -> Result<Vec<Hash>, DecodeError> {
        let n = self.u8(what)?;
        let n = self.check_count(u64::from(n), MAX_PROOF_HASHES as u64, 32, what)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.hash(what)?);
        }
        Ok(out)
    }

    /// A `u16` length, then a signed checkpoint note of at most [`MAX_NOTE_LEN`] bytes.
    pub(crate) fn checkpoint(
        &mut self,
        what: &'static str,
    ) -> Result<SignedCheckpoint, DecodeError> {
        let len = self.u16(what)?;
        if usize::from(len) > MAX_NOTE_LEN {
            return Err(DecodeError::TooLong {
                what,
                len: u64::from(len),
                max: MAX_NOTE_LEN as u64,
            });
        }
        let raw = self.bytes(usize::from(len), what)?;
        SignedCheckpoint::parse(raw).map_err(|e| DecodeError::invalid(what, e))
    }

    /// A 160-byte key binding (points must decode; the signature is checked later).
    pub(crate) fn binding(&mut self, what: &'static str) -> Result<KeyBinding, DecodeError> {
        let raw = self.array::<KEY_BINDING_LEN>(what)?;
        KeyBinding::from_bytes(&raw).map_err(|e| DecodeError::invalid(what, e))
    }

    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                count: self.rest.len(),
            })
        }
    }
}

/// Writing helpers.
pub(crate) trait Put {
    fn put_u8(&mut self, v: u8);
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_u64(&mut self, v: u64);
    fn put(&mut self, b: &[u8]);
    fn put_proof(&mut self, p: &[Hash]);
    fn put_checkpoint(&mut self, c: &SignedCheckpoint);
}

impl Put for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put(&mut self, b: &[u8]) {
        self.extend_from_slice(b);
    }
    fn put_proof(&mut self, p: &[Hash]) {
        // Proofs are generated by our own tree and never exceed MAX_PROOF_HASHES (65).
        let n = p.len().min(MAX_PROOF_HASHES);
        self.push(n as u8);
        for h in p.iter().take(n) {
            self.extend_from_slice(h);
        }
    }
    fn put_checkpoint(&mut self, c: &SignedCheckpoint) {
        // A checkpoint we produce is far below MAX_NOTE_LEN; a longer one would not parse back,
        // so it is written as an empty (invalid) note rather than truncated silently.
        let note = c.to_note();
        let len = if note.len() <= MAX_NOTE_LEN {
            note.len()
        } else {
            0
        };
        self.put_u16(len as u16);
        if len > 0 {
            self.extend_from_slice(note.as_bytes());
        }
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

    #[test]
    fn counts_are_bounded_by_limit_and_input() {
        let r = Reader::new(&[0u8; 64]);
        assert_eq!(r.check_count(2, 10, 32, "x").unwrap(), 2);
        assert!(r.check_count(3, 10, 32, "x").is_err());
        assert!(r.check_count(2, 1, 32, "x").is_err());
        assert!(r.check_count(u64::MAX, u64::MAX, 0, "x").is_err());
    }

    #[test]
    fn reads_fail_cleanly_at_the_end() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16("a").unwrap(), 0x0102);
        assert!(matches!(
            r.u16("b"),
            Err(DecodeError::Truncated { what: "b" })
        ));
        assert_eq!(r.u8("c").unwrap(), 3);
        r.finish().unwrap();
        let mut r = Reader::new(&[200]);
        assert!(r.proof("p").is_err());
        assert!(matches!(
            Reader::new(&[1]).finish(),
            Err(DecodeError::TrailingBytes { count: 1 })
        ));
    }
}
