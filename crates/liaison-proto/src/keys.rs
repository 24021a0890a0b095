//! Key types shared by the handshake, sessions and envelopes, and the one random source.
//!
//! Secrets live in `Zeroizing` buffers and print as `[redacted]`. Randomness comes from the
//! operating system (`getrandom`), never from a vendor device.

use std::fmt;
use zeroize::Zeroizing;

/// A 32-byte secret that is wiped when dropped.
pub type Secret32 = Zeroizing<[u8; 32]>;

/// The operating system's random generator failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the system random generator failed: {0}")]
pub struct RngError(pub String);

/// Fills a new secret buffer from the operating system's random generator.
pub fn random_secret<const N: usize>() -> Result<Zeroizing<[u8; N]>, RngError> {
    let mut out = Zeroizing::new([0u8; N]);
    getrandom::fill(out.as_mut_slice()).map_err(|e| RngError(e.to_string()))?;
    Ok(out)
}

/// Random public bytes (indices, salts).
pub fn random_bytes<const N: usize>() -> Result<[u8; N], RngError> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|e| RngError(e.to_string()))?;
    Ok(out)
}

/// An X25519 Noise static secret key.
#[derive(Clone)]
pub struct NoiseSecret(Secret32);

impl NoiseSecret {
    /// Wraps a 32-byte secret (clamping happens inside X25519).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        NoiseSecret(Zeroizing::new(bytes))
    }

    /// A fresh random key.
    pub fn generate() -> Result<Self, RngError> {
        Ok(NoiseSecret(random_secret()?))
    }

    /// The secret bytes, for snow and for storage at rest.
    pub fn secret_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The X25519 public key.
    pub fn public(&self) -> [u8; 32] {
        let s = x25519_dalek::StaticSecret::from(*self.0);
        x25519_dalek::PublicKey::from(&s).to_bytes()
    }

    /// X25519 with a peer public key. `None` if the result is all zeros (a low-order point:
    /// the exchange is not contributory).
    pub fn dh(&self, peer: &[u8; 32]) -> Option<Secret32> {
        let s = x25519_dalek::StaticSecret::from(*self.0);
        let shared = s.diffie_hellman(&x25519_dalek::PublicKey::from(*peer));
        if !shared.was_contributory() {
            return None;
        }
        Some(Zeroizing::new(shared.to_bytes()))
    }
}

impl fmt::Debug for NoiseSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NoiseSecret([redacted])")
    }
}

/// What a node brings to a live session: its identity public key (for the prologue) and its
/// Noise static secret.
#[derive(Clone, Debug)]
pub struct LocalKeys {
    /// Ed25519 identity public key.
    pub identity: [u8; 32],
    /// X25519 Noise static secret.
    pub noise: NoiseSecret,
}

/// What a node pinned about a peer, as a live session needs it.
#[derive(Clone)]
pub struct PeerKeys {
    /// Ed25519 identity public key.
    pub identity: [u8; 32],
    /// X25519 Noise static public key.
    pub noise: [u8; 32],
    /// Pairing secret exchanged in person, if any (salt of the hybrid psk).
    pub pairing: Option<Secret32>,
}

impl fmt::Debug for PeerKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerKeys")
            .field("identity", &hex4(&self.identity))
            .field("noise", &hex4(&self.noise))
            .field("pairing", &self.pairing.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

fn hex4(b: &[u8; 32]) -> String {
    b.iter().take(4).map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn dh_agrees_and_rejects_low_order() {
        let a = NoiseSecret::generate().unwrap();
        let b = NoiseSecret::generate().unwrap();
        assert_eq!(*a.dh(&b.public()).unwrap(), *b.dh(&a.public()).unwrap());
        assert!(a.dh(&[0u8; 32]).is_none());
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(a.dh(&one).is_none());
        assert_eq!(format!("{a:?}"), "NoiseSecret([redacted])");
    }
}
