//! ML-KEM-768 (FIPS 203) and the HKDF that turns its shared secret into a Noise psk.
//!
//! `psk = HKDF-SHA256(salt = pairing secret or 32 zero bytes, ikm = ML-KEM shared secret,
//! info = label || ek || ct)`, expanded to 32 bytes. The same construction serves live sessions
//! (`"liaison/1 pq-psk"`) and mailbox envelopes (`"liaison/1 mailbox-psk" || key_id`).

use crate::keys::{RngError, Secret32, random_secret};
use hkdf::Hkdf;
use liaison_wire::consts::{MLKEM_CT_LEN, MLKEM_EK_LEN, MLKEM_SEED_LEN};
use ml_kem::array::Array;
use ml_kem::ml_kem_768::{DecapsulationKey, EncapsulationKey};
use ml_kem::{Decapsulate, Encapsulate, KeyExport};
use sha2::Sha256;
use zeroize::Zeroizing;

/// An ML-KEM-768 decapsulation key and its encoded encapsulation key.
pub struct KemPair {
    dk: DecapsulationKey,
    ek: Box<[u8; MLKEM_EK_LEN]>,
}

impl std::fmt::Debug for KemPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KemPair([redacted])")
    }
}

/// The peer's encapsulation key failed FIPS 203 validation, or a length was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid ML-KEM-768 key or ciphertext")]
pub struct InvalidKem;

impl KemPair {
    /// A key pair from a 64-byte seed `d || z`.
    pub fn from_seed(seed: &[u8; MLKEM_SEED_LEN]) -> Self {
        let dk = DecapsulationKey::from_seed(Array::from(*seed));
        let mut ek = Box::new([0u8; MLKEM_EK_LEN]);
        ek.copy_from_slice(dk.encapsulation_key().to_bytes().as_slice());
        KemPair { dk, ek }
    }

    /// A fresh key pair.
    pub fn generate() -> Result<Self, RngError> {
        let seed: Zeroizing<[u8; MLKEM_SEED_LEN]> = random_secret()?;
        Ok(Self::from_seed(&seed))
    }

    /// The encoded encapsulation key.
    pub fn ek(&self) -> &[u8; MLKEM_EK_LEN] {
        &self.ek
    }

    /// Decapsulates a ciphertext (ML-KEM's implicit rejection: a forged ciphertext yields an
    /// unrelated secret, and the Noise handshake then fails).
    pub fn decapsulate(&self, ct: &[u8]) -> Result<Secret32, InvalidKem> {
        let ss = self.dk.decapsulate_slice(ct).map_err(|_| InvalidKem)?;
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(ss.as_slice());
        Ok(out)
    }
}

fn parse_ek(ek: &[u8]) -> Result<EncapsulationKey, InvalidKem> {
    if ek.len() != MLKEM_EK_LEN {
        return Err(InvalidKem);
    }
    let key = Array::try_from(ek).map_err(|_| InvalidKem)?;
    EncapsulationKey::new(&key).map_err(|_| InvalidKem)
}

/// Validates an encoded encapsulation key (FIPS 203 §7.2 modulus check).
pub fn validate_ek(ek: &[u8]) -> Result<(), InvalidKem> {
    parse_ek(ek).map(|_| ())
}

/// Encapsulates to `ek` with fresh randomness: `(ct, shared secret)`.
pub fn encapsulate(ek: &[u8]) -> Result<(Box<[u8; MLKEM_CT_LEN]>, Secret32), InvalidKem> {
    let key = parse_ek(ek)?;
    let (ct, ss) = key.encapsulate();
    finish_encaps(ct.as_slice(), ss.as_slice())
}

/// Deterministic encapsulation with message `m`, for published test vectors only.
#[cfg(any(test, feature = "test-vectors"))]
pub fn encapsulate_deterministic(
    ek: &[u8],
    m: &[u8; 32],
) -> Result<(Box<[u8; MLKEM_CT_LEN]>, Secret32), InvalidKem> {
    let key = parse_ek(ek)?;
    let (ct, ss) = key.encapsulate_deterministic(&Array::from(*m));
    finish_encaps(ct.as_slice(), ss.as_slice())
}

fn finish_encaps(ct: &[u8], ss: &[u8]) -> Result<(Box<[u8; MLKEM_CT_LEN]>, Secret32), InvalidKem> {
    let mut c = Box::new([0u8; MLKEM_CT_LEN]);
    if ct.len() != MLKEM_CT_LEN || ss.len() != 32 {
        return Err(InvalidKem);
    }
    c.copy_from_slice(ct);
    let mut s = Zeroizing::new([0u8; 32]);
    s.copy_from_slice(ss);
    Ok((c, s))
}

/// `HKDF-SHA256(salt, ikm = ss, info = label || parts...)` expanded to 32 bytes.
pub fn derive_psk(
    salt: Option<&[u8; 32]>,
    ss: &[u8; 32],
    label: &[u8],
    parts: &[&[u8]],
) -> Secret32 {
    let zero = [0u8; 32];
    let hk = Hkdf::<Sha256>::new(Some(salt.unwrap_or(&zero)), ss);
    let mut info = Vec::with_capacity(label.len() + parts.iter().map(|p| p.len()).sum::<usize>());
    info.extend_from_slice(label);
    for p in parts {
        info.extend_from_slice(p);
    }
    let mut out = Zeroizing::new([0u8; 32]);
    // 32 bytes is always a valid HKDF-SHA256 output length (≤ 255 × 32)
    if hk.expand(&info, out.as_mut_slice()).is_err() {
        out.fill(0);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn kem_round_trip_and_validation() {
        let kp = KemPair::generate().unwrap();
        let (ct, ss) = encapsulate(kp.ek()).unwrap();
        assert_eq!(*kp.decapsulate(&ct[..]).unwrap(), *ss);
        assert!(kp.decapsulate(&ct[..10]).is_err());
        assert!(
            validate_ek(&[0xff; MLKEM_EK_LEN]).is_err(),
            "coefficients ≥ q refused"
        );
        assert!(validate_ek(&kp.ek()[..100]).is_err());
        let (ct2, ss2) = encapsulate_deterministic(kp.ek(), &[7; 32]).unwrap();
        let (ct3, _) = encapsulate_deterministic(kp.ek(), &[7; 32]).unwrap();
        assert_eq!(ct2, ct3);
        assert_eq!(*kp.decapsulate(&ct2[..]).unwrap(), *ss2);
    }

    #[test]
    fn psk_depends_on_everything() {
        let a = derive_psk(None, &[1; 32], b"l", &[b"x", b"y"]);
        assert_ne!(
            *a,
            *derive_psk(Some(&[2; 32]), &[1; 32], b"l", &[b"x", b"y"])
        );
        assert_ne!(*a, *derive_psk(None, &[1; 32], b"l", &[b"x", b"z"]));
        assert_ne!(*a, *derive_psk(None, &[3; 32], b"l", &[b"x", b"y"]));
        assert_eq!(*a, *derive_psk(None, &[1; 32], b"lx", &[b"y"]));
    }
}
