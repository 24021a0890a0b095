//! Message bodies at rest (design §7): every stored message body is sealed with
//! XChaCha20-Poly1305 under the home's 32-byte data key (kept inside the encrypted key file),
//! so a stolen disk shows no text.
//!
//! Sealed form: `nonce (24, random) || ciphertext || tag (16)`.
//! AAD ([`body_aad`]) binds a body to its place in the store, so rows cannot be swapped:
//! `"liaison/1 body" || u32be(len(contact)) || contact (UTF-8) || dir u8 (1 = sent,
//! 2 = received) || u64be(seq)`. `contact` must be a stable identifier of the contact (a body
//! sealed under one name does not open under another).

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use liaison_proto::keys::{RngError, Secret32, random_bytes, random_secret};
use std::fmt;
use zeroize::Zeroizing;

/// Domain label at the start of every body AAD.
pub const BODY_AAD_LABEL: &[u8] = b"liaison/1 body";
/// Nonce length, bytes.
pub const BODY_NONCE_LEN: usize = 24;
/// Tag length, bytes.
pub const BODY_TAG_LEN: usize = 16;

/// Why a body could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AtRestError {
    /// Shorter than a nonce and a tag.
    #[error("stored message body is truncated")]
    Truncated,
    /// Authentication failed.
    #[error("stored message body failed authentication: wrong data key, or the store was altered")]
    Damaged,
    /// Encryption failed (the body is too large for the cipher).
    #[error("message body could not be encrypted")]
    Seal,
    /// The system random generator failed.
    #[error(transparent)]
    Rng(#[from] RngError),
}

/// Direction of a stored message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Direction {
    /// We sent it.
    Sent,
    /// We received it.
    Received,
}

impl Direction {
    /// The byte used in [`body_aad`].
    pub fn code(self) -> u8 {
        match self {
            Direction::Sent => 1,
            Direction::Received => 2,
        }
    }
}

/// The home's data key (wiped on drop, printed as `[redacted]`).
#[derive(Clone)]
pub struct DataKey(Secret32);

impl DataKey {
    /// A fresh random key (made once, by `liaison init`).
    pub fn generate() -> Result<Self, RngError> {
        Ok(DataKey(random_secret()?))
    }

    /// Wraps stored key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        DataKey(Zeroizing::new(bytes))
    }

    /// The key bytes, for the key file.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&(*self.0).into())
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey([redacted])")
    }
}

/// The AAD of a stored body (see the module documentation).
pub fn body_aad(contact: &str, dir: Direction, seq: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(BODY_AAD_LABEL.len() + 4 + contact.len() + 1 + 8);
    aad.extend_from_slice(BODY_AAD_LABEL);
    // contact names are short (bounded far below u32::MAX by the store); saturate anyway
    let len = u32::try_from(contact.len()).unwrap_or(u32::MAX);
    aad.extend_from_slice(&len.to_be_bytes());
    aad.extend_from_slice(contact.as_bytes());
    aad.push(dir.code());
    aad.extend_from_slice(&seq.to_be_bytes());
    aad
}

/// Seals `plaintext`: `nonce || ciphertext || tag`.
pub fn seal_body(key: &DataKey, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, AtRestError> {
    let nonce: [u8; BODY_NONCE_LEN] = random_bytes()?;
    // room for the tag up front: no reallocation leaves plaintext behind; wiped on drop
    let mut buf = Zeroizing::new(Vec::with_capacity(plaintext.len() + BODY_TAG_LEN));
    buf.extend_from_slice(plaintext);
    key.cipher()
        .encrypt_in_place(&XNonce::from(nonce), aad, &mut *buf)
        .map_err(|_| AtRestError::Seal)?;
    let mut out = Vec::with_capacity(BODY_NONCE_LEN + buf.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&buf);
    Ok(out)
}

/// Opens a sealed body; fails if any byte or the AAD differs.
pub fn open_body(
    key: &DataKey,
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, AtRestError> {
    let (nonce, ct) = sealed
        .split_first_chunk::<BODY_NONCE_LEN>()
        .ok_or(AtRestError::Truncated)?;
    if ct.len() < BODY_TAG_LEN {
        return Err(AtRestError::Truncated);
    }
    let mut buf = Zeroizing::new(ct.to_vec());
    key.cipher()
        .decrypt_in_place(&XNonce::from(*nonce), aad, &mut *buf)
        .map_err(|_| AtRestError::Damaged)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_tamper() {
        let k = DataKey::generate().unwrap();
        let aad = body_aad("bob", Direction::Sent, 7);
        let sealed = seal_body(&k, &aad, b"hello bob").unwrap();
        assert_eq!(sealed.len(), 24 + 9 + 16);
        assert_eq!(
            open_body(&k, &aad, &sealed).unwrap().as_slice(),
            b"hello bob"
        );
        for i in 0..sealed.len() {
            let mut s = sealed.clone();
            s[i] ^= 0x01;
            assert!(matches!(open_body(&k, &aad, &s), Err(AtRestError::Damaged)));
        }
        for other in [
            body_aad("bob", Direction::Received, 7),
            body_aad("bob", Direction::Sent, 8),
            body_aad("bo", Direction::Sent, 7),
            body_aad("carol", Direction::Sent, 7),
        ] {
            assert!(open_body(&k, &other, &sealed).is_err());
        }
        let k2 = DataKey::generate().unwrap();
        assert!(open_body(&k2, &aad, &sealed).is_err());
        assert!(matches!(
            open_body(&k, &aad, &sealed[..39]),
            Err(AtRestError::Truncated)
        ));
        assert!(matches!(
            open_body(&k, &aad, &[]),
            Err(AtRestError::Truncated)
        ));
        // fresh nonce each time
        assert_ne!(
            seal_body(&k, &aad, b"x").unwrap(),
            seal_body(&k, &aad, b"x").unwrap()
        );
        assert_eq!(format!("{k:?}"), "DataKey([redacted])");
    }

    #[test]
    fn aad_golden_and_unambiguous() {
        let aad = body_aad("ab", Direction::Received, 0x0102);
        let mut want = b"liaison/1 body".to_vec();
        want.extend([0, 0, 0, 2, b'a', b'b', 2, 0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(aad, want);
        // moving bytes between the contact and the rest changes the encoding
        assert_ne!(
            body_aad("a\u{1}", Direction::Sent, 0),
            body_aad("a", Direction::Sent, 0x0100_0000_0000_0000)
        );
    }

    proptest! {
        #[test]
        fn seal_open_round_trip(body in proptest::collection::vec(any::<u8>(), 0..3000),
                                contact in "\\PC{0,20}", seq: u64, sent: bool) {
            let k = DataKey::from_bytes([9; 32]);
            let dir = if sent { Direction::Sent } else { Direction::Received };
            let aad = body_aad(&contact, dir, seq);
            let sealed = seal_body(&k, &aad, &body).unwrap();
            let opened = open_body(&k, &aad, &sealed).unwrap();
            prop_assert_eq!(opened.as_slice(), body.as_slice());
        }

        #[test]
        fn open_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = open_body(&DataKey::from_bytes([1; 32]), b"", &bytes);
        }
    }
}
