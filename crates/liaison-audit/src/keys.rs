//! The audit log's keys, the channel id, and the names that bind checkpoints to one line.
//!
//! Every node has two Ed25519 keys for auditing besides its identity key:
//!
//! * a **log key**, which signs the node's own checkpoints, and
//! * a **witness key**, which cosigns the peer's checkpoints (C2SP tlog-cosignature, a
//!   separate key as that specification requires of distinct cosigner roles).
//!
//! Both are bound to the identity key by a [`KeyBinding`]: the identity key signs
//! `"liaison/1 audit-keys" || log_pub || witness_pub` (20 + 32 + 32 bytes). A peer (and the
//! offline checker) accepts a checkpoint or cosignature only from keys bound this way to the
//! pinned identity.
//!
//! `channel_id = SHA-256("liaison/1 channel" || min(id_a, id_b) || max(id_a, id_b))`, ids being
//! the two 32-byte identity public keys compared bytewise. The checkpoint origin (also the log's
//! key name) is `liaison/1/audit/<hex channel_id>/<hex first 8 bytes of the log key>` and the
//! witness key name is `liaison/1/witness/<hex first 8 bytes of the witness key>`. Both contain
//! no spaces or `+`, as C2SP signed-note requires of key names, so a checkpoint's key name can
//! equal its origin (as tlog-checkpoint recommends).

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::Hash;

/// Domain separator of the channel id.
pub const CHANNEL_DOMAIN: &[u8] = b"liaison/1 channel";
/// Domain separator of the statement the identity key signs to bind the audit keys.
pub const KEY_BINDING_DOMAIN: &[u8] = b"liaison/1 audit-keys";
/// Encoded length of a [`KeyBinding`]: identity (32) || log key (32) || witness key (32) ||
/// signature (64).
pub const KEY_BINDING_LEN: usize = 160;
/// Prefix of every log origin.
pub const ORIGIN_PREFIX: &str = "liaison/1/audit/";
/// Prefix of every witness key name.
pub const WITNESS_NAME_PREFIX: &str = "liaison/1/witness/";

/// Key problems.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// 32 bytes that are not a valid Ed25519 point.
    #[error("not a valid Ed25519 public key")]
    InvalidKey,
    /// A small-order ("weak") public key.
    #[error("weak Ed25519 public key refused")]
    WeakKey,
    /// The identity key's signature over the audit keys does not verify.
    #[error("the identity key's signature binding the audit keys does not verify")]
    BadBindingSignature,
    /// Identity, log and witness keys must be three different keys.
    #[error("identity, log and witness keys must all differ")]
    KeysNotDistinct,
    /// The binding names other keys than the ones supplied.
    #[error("the key binding does not name these log and witness keys")]
    BindingMismatch,
    /// The system random generator failed.
    #[error("random generator failed: {0}")]
    Random(String),
}

/// `SHA-256("liaison/1 channel" || min(a, b) || max(a, b))`.
pub fn channel_id(a: &VerifyingKey, b: &VerifyingKey) -> Hash {
    let (lo, hi) = if a.as_bytes() <= b.as_bytes() {
        (a, b)
    } else {
        (b, a)
    };
    let mut h = Sha256::new();
    h.update(CHANNEL_DOMAIN);
    h.update(lo.as_bytes());
    h.update(hi.as_bytes());
    h.finalize().into()
}

fn key_prefix(k: &VerifyingKey) -> [u8; 8] {
    let mut p = [0u8; 8];
    for (d, s) in p.iter_mut().zip(k.as_bytes().iter()) {
        *d = *s;
    }
    p
}

/// The origin line (and log key name) of the log `log_key` keeps for line `channel`.
pub fn log_origin(channel: &Hash, log_key: &VerifyingKey) -> String {
    format!(
        "{ORIGIN_PREFIX}{}/{}",
        hex::encode(channel),
        hex::encode(key_prefix(log_key))
    )
}

/// The cosigner (key) name of a witness key.
pub fn witness_name(witness_key: &VerifyingKey) -> String {
    format!(
        "{WITNESS_NAME_PREFIX}{}",
        hex::encode(key_prefix(witness_key))
    )
}

/// An origin split into its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedOrigin {
    /// The line's channel id.
    pub channel: Hash,
    /// First 8 bytes of the log key.
    pub key_prefix: [u8; 8],
}

/// Parses `liaison/1/audit/<64 hex>/<16 hex>`; `None` for anything else.
pub fn parse_origin(origin: &str) -> Option<ParsedOrigin> {
    let rest = origin.strip_prefix(ORIGIN_PREFIX)?;
    let (ch, kp) = rest.split_once('/')?;
    if ch.len() != 64 || kp.len() != 16 {
        return None;
    }
    let mut channel = [0u8; 32];
    hex::decode_to_slice(ch, &mut channel).ok()?;
    let mut key_prefix = [0u8; 8];
    hex::decode_to_slice(kp, &mut key_prefix).ok()?;
    // Only lowercase hex is canonical.
    if hex::encode(channel) != ch || hex::encode(key_prefix) != kp {
        return None;
    }
    Some(ParsedOrigin {
        channel,
        key_prefix,
    })
}

/// Parses 32 bytes as an Ed25519 public key, refusing invalid and weak points.
pub fn parse_public_key(bytes: &[u8; 32]) -> Result<VerifyingKey, KeyError> {
    let k = VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::InvalidKey)?;
    if k.is_weak() {
        return Err(KeyError::WeakKey);
    }
    Ok(k)
}

/// The identity key's statement binding a node's log key and witness key.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyBinding {
    /// The node's identity public key.
    pub identity: VerifyingKey,
    /// Signs the node's own checkpoints.
    pub log_key: VerifyingKey,
    /// Cosigns the peer's checkpoints.
    pub witness_key: VerifyingKey,
    /// Identity signature over `"liaison/1 audit-keys" || log_key || witness_key`.
    pub signature: Signature,
}

impl fmt::Debug for KeyBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyBinding")
            .field("identity", &hex::encode(self.identity.as_bytes()))
            .field("log_key", &hex::encode(self.log_key.as_bytes()))
            .field("witness_key", &hex::encode(self.witness_key.as_bytes()))
            .finish_non_exhaustive()
    }
}

impl KeyBinding {
    /// The exact bytes the identity key signs.
    pub fn signed_message(log_key: &VerifyingKey, witness_key: &VerifyingKey) -> Vec<u8> {
        let mut m = Vec::with_capacity(KEY_BINDING_DOMAIN.len() + 64);
        m.extend_from_slice(KEY_BINDING_DOMAIN);
        m.extend_from_slice(log_key.as_bytes());
        m.extend_from_slice(witness_key.as_bytes());
        m
    }

    /// Signs a binding with the identity key.
    pub fn sign(identity: &SigningKey, log_key: &VerifyingKey, witness_key: &VerifyingKey) -> Self {
        let signature = identity.sign(&Self::signed_message(log_key, witness_key));
        Self {
            identity: identity.verifying_key(),
            log_key: *log_key,
            witness_key: *witness_key,
            signature,
        }
    }

    /// Checks the identity signature (`verify_strict`), that no key is weak and that the three
    /// keys differ.
    pub fn verify(&self) -> Result<(), KeyError> {
        for k in [&self.identity, &self.log_key, &self.witness_key] {
            if k.is_weak() {
                return Err(KeyError::WeakKey);
            }
        }
        if self.identity == self.log_key
            || self.identity == self.witness_key
            || self.log_key == self.witness_key
        {
            return Err(KeyError::KeysNotDistinct);
        }
        self.identity
            .verify_strict(
                &Self::signed_message(&self.log_key, &self.witness_key),
                &self.signature,
            )
            .map_err(|_| KeyError::BadBindingSignature)
    }

    /// `identity || log_key || witness_key || signature`.
    pub fn to_bytes(&self) -> [u8; KEY_BINDING_LEN] {
        let mut out = [0u8; KEY_BINDING_LEN];
        let parts: [&[u8]; 4] = [
            self.identity.as_bytes(),
            self.log_key.as_bytes(),
            self.witness_key.as_bytes(),
            &self.signature.to_bytes(),
        ];
        for (d, s) in out.iter_mut().zip(parts.iter().flat_map(|p| p.iter())) {
            *d = *s;
        }
        out
    }

    /// Parses the 160-byte encoding (keys must be valid points; the signature is not checked
    /// here, call [`KeyBinding::verify`]).
    pub fn from_bytes(bytes: &[u8; KEY_BINDING_LEN]) -> Result<Self, KeyError> {
        let (id, rest) = bytes
            .split_first_chunk::<32>()
            .ok_or(KeyError::InvalidKey)?;
        let (lk, rest) = rest.split_first_chunk::<32>().ok_or(KeyError::InvalidKey)?;
        let (wk, sig) = rest.split_first_chunk::<32>().ok_or(KeyError::InvalidKey)?;
        let sig: &[u8; 64] = sig.try_into().map_err(|_| KeyError::InvalidKey)?;
        Ok(Self {
            identity: VerifyingKey::from_bytes(id).map_err(|_| KeyError::InvalidKey)?,
            log_key: VerifyingKey::from_bytes(lk).map_err(|_| KeyError::InvalidKey)?,
            witness_key: VerifyingKey::from_bytes(wk).map_err(|_| KeyError::InvalidKey)?,
            signature: Signature::from_bytes(sig),
        })
    }
}

/// This node's audit keys: the binding and the two private keys. Supplied by the node, which
/// owns key storage; this crate never creates keys except through [`LocalKeys::generate`].
pub struct LocalKeys {
    binding: KeyBinding,
    log: SigningKey,
    witness: SigningKey,
}

impl fmt::Debug for LocalKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKeys")
            .field("binding", &self.binding)
            .field("log", &"[redacted]")
            .field("witness", &"[redacted]")
            .finish()
    }
}

impl LocalKeys {
    /// Assembles keys the node keeps; the binding must verify and name exactly these keys.
    pub fn new(
        binding: KeyBinding,
        log: SigningKey,
        witness: SigningKey,
    ) -> Result<Self, KeyError> {
        binding.verify()?;
        if binding.log_key != log.verifying_key() || binding.witness_key != witness.verifying_key()
        {
            return Err(KeyError::BindingMismatch);
        }
        Ok(Self {
            binding,
            log,
            witness,
        })
    }

    /// Binds `log` and `witness` with the identity key and assembles them.
    pub fn from_identity(
        identity: &SigningKey,
        log: SigningKey,
        witness: SigningKey,
    ) -> Result<Self, KeyError> {
        let binding = KeyBinding::sign(identity, &log.verifying_key(), &witness.verifying_key());
        Self::new(binding, log, witness)
    }

    /// Fresh random log and witness keys bound to `identity` (tests, benches, demos).
    pub fn generate(identity: &SigningKey) -> Result<Self, KeyError> {
        Self::from_identity(identity, generate_signing_key()?, generate_signing_key()?)
    }

    /// The binding statement.
    pub fn binding(&self) -> &KeyBinding {
        &self.binding
    }

    /// Identity public key.
    pub fn identity(&self) -> &VerifyingKey {
        &self.binding.identity
    }

    pub(crate) fn log_signer(&self) -> &SigningKey {
        &self.log
    }

    pub(crate) fn witness_signer(&self) -> &SigningKey {
        &self.witness
    }
}

/// A fresh Ed25519 key from the operating system's generator (tests, benches, demos).
pub fn generate_signing_key() -> Result<SigningKey, KeyError> {
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut()).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
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
    fn channel_id_is_symmetric_and_domain_separated() {
        let a = generate_signing_key().unwrap().verifying_key();
        let b = generate_signing_key().unwrap().verifying_key();
        assert_eq!(channel_id(&a, &b), channel_id(&b, &a));
        let (lo, hi) = if a.as_bytes() < b.as_bytes() {
            (a, b)
        } else {
            (b, a)
        };
        let mut m = b"liaison/1 channel".to_vec();
        m.extend_from_slice(lo.as_bytes());
        m.extend_from_slice(hi.as_bytes());
        let expect: Hash = Sha256::digest(&m).into();
        assert_eq!(channel_id(&a, &b), expect);
    }

    #[test]
    fn origin_round_trips() {
        let k = generate_signing_key().unwrap().verifying_key();
        let ch = [0xab; 32];
        let o = log_origin(&ch, &k);
        assert!(!o.contains(' ') && !o.contains('+'));
        let p = parse_origin(&o).unwrap();
        assert_eq!(p.channel, ch);
        assert_eq!(&p.key_prefix, &k.as_bytes()[..8]);
        assert!(parse_origin(&o.to_uppercase()).is_none());
        assert!(parse_origin("example.com/log").is_none());
        assert!(parse_origin(&format!("{o}/x")).is_none());
    }

    #[test]
    fn binding_signs_verifies_and_round_trips() {
        let id = generate_signing_key().unwrap();
        let keys = LocalKeys::generate(&id).unwrap();
        let b = keys.binding().clone();
        b.verify().unwrap();
        let back = KeyBinding::from_bytes(&b.to_bytes()).unwrap();
        assert_eq!(back, b);
        // The signed statement is exactly domain || log || witness.
        let mut m = b"liaison/1 audit-keys".to_vec();
        m.extend_from_slice(b.log_key.as_bytes());
        m.extend_from_slice(b.witness_key.as_bytes());
        id.verifying_key().verify_strict(&m, &b.signature).unwrap();
    }

    #[test]
    fn binding_refuses_swaps_and_other_identities() {
        let id = generate_signing_key().unwrap();
        let keys = LocalKeys::generate(&id).unwrap();
        let mut swapped = keys.binding().clone();
        std::mem::swap(&mut swapped.log_key, &mut swapped.witness_key);
        assert_eq!(swapped.verify(), Err(KeyError::BadBindingSignature));
        let mut other = keys.binding().clone();
        other.identity = generate_signing_key().unwrap().verifying_key();
        assert_eq!(other.verify(), Err(KeyError::BadBindingSignature));
        let same = KeyBinding::sign(&id, &id.verifying_key(), &keys.binding().witness_key);
        assert_eq!(same.verify(), Err(KeyError::KeysNotDistinct));
        let l = generate_signing_key().unwrap();
        let w = generate_signing_key().unwrap();
        let b = KeyBinding::sign(&id, &l.verifying_key(), &w.verifying_key());
        assert_eq!(
            LocalKeys::new(b, w, l).err(),
            Some(KeyError::BindingMismatch)
        );
    }

    #[test]
    fn debug_redacts_private_keys() {
        let id = generate_signing_key().unwrap();
        let keys = LocalKeys::generate(&id).unwrap();
        let s = format!("{keys:?}");
        assert!(s.contains("[redacted]"));
        assert!(!s.contains(&hex::encode(keys.log_signer().to_bytes())));
    }
}
