//! The one bincode configuration of the protocol, and fixed-size byte arrays for serde.
//!
//! bincode is pinned to `=1.3.3` and always used through [`options`]: fixed-width little-endian
//! integers, a byte limit checked before anything is allocated, and trailing bytes rejected.
//! Encoding rules this implies (spelled out in `docs/protocol.md`):
//! `u8`/`u16`/`u32`/`u64` are 1/2/4/8 bytes little-endian; `[u8; N]` and [`Fixed<N>`] are N raw
//! bytes; `Vec<u8>` and `String` are a `u64` length then the bytes; `Option<T>` is one byte
//! `0`/`1` then `T`; a struct is its fields in order.

use bincode::Options;
use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A codec failure. The message is for the local log only.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The input exceeds the limit for this type.
    #[error("input longer than the {limit}-byte limit")]
    TooLong {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// bincode rejected the input (truncated, trailing bytes, bad tag, bad UTF-8, limit...).
    #[error("malformed encoding: {0}")]
    Malformed(String),
}

/// The protocol's bincode options, limited to `limit` bytes.
pub fn options(limit: usize) -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .with_limit(limit as u64)
        .reject_trailing_bytes()
}

/// Encodes `value`, refusing to produce more than `limit` bytes.
pub fn encode<T: Serialize>(value: &T, limit: usize) -> Result<Vec<u8>, CodecError> {
    options(limit).serialize(value).map_err(|e| match *e {
        bincode::ErrorKind::SizeLimit => CodecError::TooLong { limit },
        other => CodecError::Malformed(other.to_string()),
    })
}

/// Decodes exactly one `T` from all of `bytes`, which must not exceed `limit`.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], limit: usize) -> Result<T, CodecError> {
    if bytes.len() > limit {
        return Err(CodecError::TooLong { limit });
    }
    options(limit)
        .deserialize(bytes)
        .map_err(|e| CodecError::Malformed(e.to_string()))
}

/// N raw bytes, encoded without a length prefix (serde only derives arrays up to 32).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fixed<const N: usize>(pub [u8; N]);

impl<const N: usize> Fixed<N> {
    /// Copies a slice of exactly N bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; N]>::try_from(bytes).ok().map(Fixed)
    }
}

impl<const N: usize> Default for Fixed<N> {
    fn default() -> Self {
        Fixed([0u8; N])
    }
}

impl<const N: usize> AsRef<[u8]> for Fixed<N> {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl<const N: usize> fmt::Debug for Fixed<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fixed<{N}>(")?;
        for b in self.0.iter().take(8) {
            write!(f, "{b:02x}")?;
        }
        if N > 8 {
            write!(f, "..")?;
        }
        write!(f, ")")
    }
}

impl<const N: usize> Serialize for Fixed<N> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut t = serializer.serialize_tuple(N)?;
        for b in &self.0 {
            t.serialize_element(b)?;
        }
        t.end()
    }
}

impl<'de, const N: usize> Deserialize<'de> for Fixed<N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<const M: usize>;
        impl<'de, const M: usize> Visitor<'de> for V<M> {
            type Value = Fixed<M>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{M} bytes")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Fixed<M>, A::Error> {
                let mut out = [0u8; M];
                for (i, slot) in out.iter_mut().enumerate() {
                    *slot = seq
                        .next_element()?
                        .ok_or_else(|| de::Error::invalid_length(i, &self))?;
                }
                Ok(Fixed(out))
            }
        }
        deserializer.deserialize_tuple(N, V::<N>)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Sample {
        a: u8,
        b: u32,
        c: Fixed<40>,
        d: Vec<u8>,
        e: Option<String>,
    }

    #[test]
    fn golden_layout() {
        let s = Sample {
            a: 7,
            b: 0x01020304,
            c: Fixed([0xaa; 40]),
            d: vec![1, 2],
            e: Some("hi".into()),
        };
        let bytes = encode(&s, 1000).unwrap();
        let mut want = vec![7u8, 4, 3, 2, 1];
        want.extend([0xaa; 40]);
        want.extend([2, 0, 0, 0, 0, 0, 0, 0, 1, 2]);
        want.extend([1, 2, 0, 0, 0, 0, 0, 0, 0, b'h', b'i']);
        assert_eq!(bytes, want);
        assert_eq!(decode::<Sample>(&bytes, 1000).unwrap(), s);
    }

    #[test]
    fn rejects_trailing_and_truncated_and_oversized() {
        let s = Sample {
            a: 1,
            b: 2,
            c: Fixed::default(),
            d: vec![],
            e: None,
        };
        let mut bytes = encode(&s, 1000).unwrap();
        assert!(decode::<Sample>(&bytes[..bytes.len() - 1], 1000).is_err());
        bytes.push(0);
        assert!(decode::<Sample>(&bytes, 1000).is_err());
        bytes.pop();
        assert!(matches!(
            decode::<Sample>(&bytes, 10),
            Err(CodecError::TooLong { .. })
        ));
        assert!(matches!(encode(&s, 10), Err(CodecError::TooLong { .. })));
    }

    #[test]
    fn huge_length_prefix_does_not_allocate() {
        // a Vec<u8> claiming u64::MAX bytes must fail on the limit, not try to allocate
        let mut bytes = vec![1u8, 2, 0, 0, 0];
        bytes.extend([0u8; 40]);
        bytes.extend(u64::MAX.to_le_bytes());
        assert!(decode::<Sample>(&bytes, 1 << 20).is_err());
    }
}
