//! Mailbox keys (design §3.4): the X25519 + ML-KEM-768 key pair a peer seals offline envelopes
//! to, signed by the owner's Ed25519 identity key.
//!
//! - Public form: [`MailboxKeyPub`] (layout in `liaison_wire::card`): `key_id =
//!   SHA-256(x25519_pub || ek)[..8]`, the X25519 public key, the 1,184-byte ML-KEM-768
//!   encapsulation key, `not_after` (unix seconds) and an Ed25519 signature by the identity key
//!   over [`MailboxKeyPub::signed_bytes`] (`"liaison/1 mailbox-key" || key_id || x25519 || ek ||
//!   u64le(not_after)`).
//! - Secret form: [`MailboxSecret`] keeps the X25519 secret and the 64-byte ML-KEM seed
//!   `d || z` (FIPS 203 §7.1); the decapsulation key is re-expanded from the seed when needed.
//! - [`verify_mailbox_key`] is the only acceptance check for a peer's key: `verify_strict`
//!   signature, recomputed key id, and ML-KEM encapsulation-key validation (FIPS 203 §7.2).
//!
//! Storage form ([`MailboxSecret::to_secret_bytes`], bincode via `liaison_wire::codec`, fixed
//! 169 bytes): `version u8 (= 1) || x25519_secret [32] || mlkem_seed [64] || not_after u64le ||
//! signature [64]`. The public key, its id and the encapsulation key are recomputed on load.

use crate::keys::{NoiseSecret, RngError, Secret32, random_secret};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use liaison_wire::card::MailboxKeyPub;
use liaison_wire::codec::{self, Fixed};
use liaison_wire::consts::{KEY_LEN, MAILBOX_KEY_ID_LEN, MLKEM_EK_LEN, MLKEM_SEED_LEN, SIG_LEN};
use ml_kem::KeyExport;
use ml_kem::ml_kem_768::{DecapsulationKey, EncapsulationKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use zeroize::{Zeroize, Zeroizing};

/// Version byte of the mailbox secret storage form.
const SECRET_VERSION: u8 = 1;
/// Exact size of the mailbox secret storage form, bytes.
pub const MAILBOX_SECRET_LEN: usize = 1 + KEY_LEN + MLKEM_SEED_LEN + 8 + SIG_LEN;

/// Why a mailbox key was refused or could not be made or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MailboxKeyError {
    /// The identity key that should have signed the mailbox key is not a valid Ed25519 key.
    #[error("mailbox key check: the identity key is not a valid Ed25519 public key")]
    BadIdentityKey,
    /// The identity-key signature over the mailbox key does not verify.
    #[error("mailbox key signature does not verify")]
    BadSignature,
    /// `key_id` is not `SHA-256(x25519 || ek)[..8]`.
    #[error("mailbox key id does not match its keys")]
    BadKeyId,
    /// The ML-KEM-768 encapsulation key fails FIPS 203 key validation.
    #[error("mailbox key has an invalid ML-KEM-768 encapsulation key")]
    BadEncapsulationKey,
    /// The stored secret form is malformed or of an unknown version.
    #[error("stored mailbox key is malformed: {0}")]
    Malformed(String),
    /// The system random generator failed.
    #[error(transparent)]
    Rng(#[from] RngError),
}

/// `SHA-256(x25519_pub || ek)[..8]`.
pub fn mailbox_key_id(x25519_pub: &[u8; KEY_LEN], ek: &[u8]) -> [u8; MAILBOX_KEY_ID_LEN] {
    let digest = Sha256::new()
        .chain_update(x25519_pub)
        .chain_update(ek)
        .finalize();
    let mut id = [0u8; MAILBOX_KEY_ID_LEN];
    for (out, b) in id.iter_mut().zip(digest.iter()) {
        *out = *b;
    }
    id
}

/// Parses and validates (FIPS 203 §7.2 modulus check) an ML-KEM-768 encapsulation key.
pub fn validated_encapsulation_key(
    ek: &[u8; MLKEM_EK_LEN],
) -> Result<EncapsulationKey, MailboxKeyError> {
    let key = ml_kem::Key::<EncapsulationKey>::try_from(ek.as_slice())
        .map_err(|_| MailboxKeyError::BadEncapsulationKey)?;
    EncapsulationKey::new(&key).map_err(|_| MailboxKeyError::BadEncapsulationKey)
}

/// Checks a peer's mailbox key against its owner's Ed25519 identity key: `verify_strict`
/// signature over [`MailboxKeyPub::signed_bytes`], key id, and encapsulation-key validation.
pub fn verify_mailbox_key(
    key: &MailboxKeyPub,
    identity_pub: &[u8; KEY_LEN],
) -> Result<(), MailboxKeyError> {
    let vk = VerifyingKey::from_bytes(identity_pub).map_err(|_| MailboxKeyError::BadIdentityKey)?;
    let sig = Signature::from_bytes(&key.signature.0);
    vk.verify_strict(&key.signed_bytes(), &sig)
        .map_err(|_| MailboxKeyError::BadSignature)?;
    if mailbox_key_id(&key.x25519, &key.mlkem_ek.0) != key.key_id {
        return Err(MailboxKeyError::BadKeyId);
    }
    validated_encapsulation_key(&key.mlkem_ek.0)?;
    Ok(())
}

/// A mailbox key pair held by its owner.
#[derive(Clone)]
pub struct MailboxSecret {
    x25519: Secret32,
    mlkem_seed: Zeroizing<[u8; MLKEM_SEED_LEN]>,
    public: MailboxKeyPub,
}

impl MailboxSecret {
    /// A fresh key pair valid until `not_after` (unix seconds), signed by `signing_key`.
    pub fn generate(signing_key: &SigningKey, not_after: u64) -> Result<Self, MailboxKeyError> {
        let x25519 = random_secret::<KEY_LEN>()?;
        let mlkem_seed = random_secret::<MLKEM_SEED_LEN>()?;
        let mut public = derive_public(&x25519, &mlkem_seed, not_after, [0u8; SIG_LEN]);
        public.signature = Fixed(signing_key.sign(&public.signed_bytes()).to_bytes());
        Ok(MailboxSecret {
            x25519,
            mlkem_seed,
            public,
        })
    }

    /// The signed public key, as sent to peers.
    pub fn public(&self) -> &MailboxKeyPub {
        &self.public
    }

    /// The key id.
    pub fn key_id(&self) -> [u8; MAILBOX_KEY_ID_LEN] {
        self.public.key_id
    }

    /// Unix seconds after which senders stop using this key.
    pub fn not_after(&self) -> u64 {
        self.public.not_after
    }

    /// The X25519 secret, as a Noise static (the responder static of envelope handshakes).
    pub fn x25519_secret(&self) -> NoiseSecret {
        NoiseSecret::from_bytes(*self.x25519)
    }

    /// The ML-KEM-768 decapsulation key, expanded from the stored seed (wiped on drop).
    pub fn decapsulation_key(&self) -> DecapsulationKey {
        decapsulation_key_from_seed(&self.mlkem_seed)
    }

    /// The storage form (see the module documentation), for the encrypted key file.
    pub fn to_secret_bytes(&self) -> Result<Zeroizing<Vec<u8>>, MailboxKeyError> {
        let stored = self.to_stored();
        codec::encode(&stored, MAILBOX_SECRET_LEN)
            .map(Zeroizing::new)
            .map_err(|e| MailboxKeyError::Malformed(e.to_string()))
    }

    /// Loads the storage form. The signature is kept as stored; check it with
    /// [`verify_mailbox_key`] against the owner's identity key.
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, MailboxKeyError> {
        match bytes.first() {
            Some(&SECRET_VERSION) => {}
            Some(v) => {
                return Err(MailboxKeyError::Malformed(format!(
                    "unsupported mailbox secret version {v}"
                )));
            }
            None => return Err(MailboxKeyError::Malformed("empty".into())),
        }
        let stored: StoredMailboxSecret = codec::decode(bytes, MAILBOX_SECRET_LEN)
            .map_err(|e| MailboxKeyError::Malformed(e.to_string()))?;
        Ok(Self::from_stored(&stored))
    }

    pub(crate) fn to_stored(&self) -> StoredMailboxSecret {
        StoredMailboxSecret {
            version: SECRET_VERSION,
            x25519: Fixed(*self.x25519),
            mlkem_seed: Fixed(*self.mlkem_seed),
            not_after: self.public.not_after,
            signature: self.public.signature,
        }
    }

    pub(crate) fn from_stored(stored: &StoredMailboxSecret) -> Self {
        let x25519 = Zeroizing::new(stored.x25519.0);
        let mlkem_seed = Zeroizing::new(stored.mlkem_seed.0);
        let public = derive_public(&x25519, &mlkem_seed, stored.not_after, stored.signature.0);
        MailboxSecret {
            x25519,
            mlkem_seed,
            public,
        }
    }
}

impl fmt::Debug for MailboxSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailboxSecret")
            .field("key_id", &hex(&self.public.key_id))
            .field("not_after", &self.public.not_after)
            .field("secret", &"[redacted]")
            .finish()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn decapsulation_key_from_seed(seed: &[u8; MLKEM_SEED_LEN]) -> DecapsulationKey {
    let mut s = ml_kem::Seed::from(*seed);
    let dk = DecapsulationKey::from_seed(s);
    s.as_mut_slice().zeroize();
    dk
}

/// Recomputes the public half from the secrets.
fn derive_public(
    x25519: &[u8; KEY_LEN],
    mlkem_seed: &[u8; MLKEM_SEED_LEN],
    not_after: u64,
    signature: [u8; SIG_LEN],
) -> MailboxKeyPub {
    let x_pub = NoiseSecret::from_bytes(*x25519).public();
    let dk = decapsulation_key_from_seed(mlkem_seed);
    let ek_bytes = dk.encapsulation_key().to_bytes();
    let mut ek = [0u8; MLKEM_EK_LEN];
    for (out, b) in ek.iter_mut().zip(ek_bytes.iter()) {
        *out = *b;
    }
    MailboxKeyPub {
        key_id: mailbox_key_id(&x_pub, &ek),
        x25519: x_pub,
        mlkem_ek: Fixed(ek),
        not_after,
        signature: Fixed(signature),
    }
}

/// Storage form of a mailbox secret (also nested inside the identity's storage form).
/// Its secret fields are wiped on drop.
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredMailboxSecret {
    pub(crate) version: u8,
    pub(crate) x25519: Fixed<KEY_LEN>,
    pub(crate) mlkem_seed: Fixed<MLKEM_SEED_LEN>,
    pub(crate) not_after: u64,
    pub(crate) signature: Fixed<SIG_LEN>,
}

impl Drop for StoredMailboxSecret {
    fn drop(&mut self) {
        self.x25519.0.zeroize();
        self.mlkem_seed.0.zeroize();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use ml_kem::kem::{Decapsulate, Encapsulate};
    use proptest::prelude::*;

    fn signer() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    #[test]
    fn generate_verify_and_kem_round_trip() {
        let sk = signer();
        let mk = MailboxSecret::generate(&sk, 1_900_000_000).unwrap();
        let id = sk.verifying_key().to_bytes();
        verify_mailbox_key(mk.public(), &id).unwrap();
        assert_eq!(mk.not_after(), 1_900_000_000);
        assert_eq!(
            mk.key_id(),
            mailbox_key_id(&mk.public().x25519, &mk.public().mlkem_ek.0)
        );
        assert_eq!(mk.x25519_secret().public(), mk.public().x25519);
        // the published ek is the one the decapsulation key answers to
        let ek = validated_encapsulation_key(&mk.public().mlkem_ek.0).unwrap();
        let (ct, ss) = ek.encapsulate();
        assert_eq!(mk.decapsulation_key().decapsulate(&ct), ss);
        assert!(format!("{mk:?}").contains("[redacted]"));
    }

    #[test]
    fn tampering_is_refused() {
        let sk = signer();
        let id = sk.verifying_key().to_bytes();
        let mk = MailboxSecret::generate(&sk, 5).unwrap();

        let mut p = mk.public().clone();
        p.not_after += 1;
        assert!(matches!(
            verify_mailbox_key(&p, &id),
            Err(MailboxKeyError::BadSignature)
        ));

        let other = SigningKey::from_bytes(&[8u8; 32])
            .verifying_key()
            .to_bytes();
        assert!(matches!(
            verify_mailbox_key(mk.public(), &other),
            Err(MailboxKeyError::BadSignature)
        ));

        // wrong key id, properly signed
        let mut p = mk.public().clone();
        p.key_id[0] ^= 1;
        p.signature = Fixed(sk.sign(&p.signed_bytes()).to_bytes());
        assert!(matches!(
            verify_mailbox_key(&p, &id),
            Err(MailboxKeyError::BadKeyId)
        ));

        // an ek whose coefficients are out of range (all 0xff), properly signed with a
        // matching id: fails FIPS 203 validation
        let mut p = mk.public().clone();
        p.mlkem_ek = Fixed([0xff; MLKEM_EK_LEN]);
        p.key_id = mailbox_key_id(&p.x25519, &p.mlkem_ek.0);
        p.signature = Fixed(sk.sign(&p.signed_bytes()).to_bytes());
        assert!(matches!(
            verify_mailbox_key(&p, &id),
            Err(MailboxKeyError::BadEncapsulationKey)
        ));
    }

    #[test]
    fn secret_bytes_round_trip_and_limits() {
        let sk = signer();
        let mk = MailboxSecret::generate(&sk, 42).unwrap();
        let bytes = mk.to_secret_bytes().unwrap();
        assert_eq!(bytes.len(), MAILBOX_SECRET_LEN);
        let back = MailboxSecret::from_secret_bytes(&bytes).unwrap();
        assert_eq!(back.public(), mk.public());
        assert_eq!(*back.mlkem_seed, *mk.mlkem_seed);
        assert!(MailboxSecret::from_secret_bytes(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(MailboxSecret::from_secret_bytes(&longer).is_err());
        let mut v2 = bytes.to_vec();
        v2[0] = 2;
        assert!(MailboxSecret::from_secret_bytes(&v2).is_err());
        assert!(MailboxSecret::from_secret_bytes(&[]).is_err());
    }

    proptest! {
        #[test]
        fn stored_form_round_trips(x in proptest::array::uniform32(any::<u8>()),
                                   d in proptest::array::uniform32(any::<u8>()),
                                   z in proptest::array::uniform32(any::<u8>()),
                                   not_after: u64) {
            let mut seed = [0u8; 64];
            seed[..32].copy_from_slice(&d);
            seed[32..].copy_from_slice(&z);
            let stored = StoredMailboxSecret {
                version: SECRET_VERSION,
                x25519: Fixed(x),
                mlkem_seed: Fixed(seed),
                not_after,
                signature: Fixed([3; 64]),
            };
            let mk = MailboxSecret::from_stored(&stored);
            let bytes = mk.to_secret_bytes().unwrap();
            let back = MailboxSecret::from_secret_bytes(&bytes).unwrap();
            prop_assert_eq!(back.public(), mk.public());
            prop_assert_eq!(*back.x25519, x);
        }

        #[test]
        fn loader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = MailboxSecret::from_secret_bytes(&bytes);
        }
    }
}
