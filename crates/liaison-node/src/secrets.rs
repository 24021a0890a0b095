//! What the key file holds: the identity (all long-term secrets), the home's data key, and
//! one hop key per pinned relay. Encoded with the wire codec, then sealed by `keyfile`.

use crate::atrest::DataKey;
use crate::keyfile::{self, KeyFileError};
use liaison_proto::identity::{Identity, IdentityError};
use liaison_proto::keys::Secret32;
use liaison_wire::codec::{self, Fixed};
use serde::{Deserialize, Serialize};
use std::path::Path;
use zeroize::{Zeroize, Zeroizing};

/// Largest encoded secrets, bytes.
const MAX_SECRETS_LEN: usize = 64 * 1024;
/// Most relays a node can pin.
pub const MAX_RELAYS: usize = 64;

/// Why secrets could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretsError {
    /// The key file itself.
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// The identity inside it.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The key file decrypted but its content is damaged.
    #[error("the key file's content is damaged: {0}")]
    Corrupt(String),
}

#[derive(Serialize, Deserialize)]
struct Stored {
    version: u8,
    identity: Vec<u8>,
    data_key: Fixed<32>,
    audit_log: Fixed<32>,
    audit_witness: Fixed<32>,
    relays: Vec<(String, Fixed<32>)>,
}

impl Drop for Stored {
    fn drop(&mut self) {
        self.identity.zeroize();
        self.data_key.0.zeroize();
        self.audit_log.0.zeroize();
        self.audit_witness.0.zeroize();
        for (_, k) in &mut self.relays {
            k.0.zeroize();
        }
    }
}

/// A node's secrets, in memory.
pub struct NodeSecrets {
    /// Identity and the keys it binds.
    pub identity: Identity,
    /// Key sealing message bodies at rest.
    pub data_key: DataKey,
    /// Seed of the Ed25519 key that signs this node's audit checkpoints.
    pub audit_log: Secret32,
    /// Seed of the Ed25519 key that cosigns peers' audit checkpoints.
    pub audit_witness: Secret32,
    /// This node's hop key seed for each pinned relay, by relay name.
    pub relays: Vec<(String, Secret32)>,
}

impl std::fmt::Debug for NodeSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSecrets")
            .field("name", &self.identity.name())
            .field("secrets", &"[redacted]")
            .finish()
    }
}

impl NodeSecrets {
    /// New secrets for a fresh identity.
    pub fn new(identity: Identity) -> Result<Self, SecretsError> {
        let data_key = DataKey::generate().map_err(|e| SecretsError::Corrupt(e.to_string()))?;
        let rng = |e: liaison_proto::keys::RngError| SecretsError::Corrupt(e.to_string());
        Ok(NodeSecrets {
            identity,
            data_key,
            audit_log: liaison_proto::keys::random_secret().map_err(rng)?,
            audit_witness: liaison_proto::keys::random_secret().map_err(rng)?,
            relays: Vec::new(),
        })
    }

    fn encode(&self) -> Result<Zeroizing<Vec<u8>>, SecretsError> {
        let identity = self.identity.to_secret_bytes()?;
        let stored = Stored {
            version: 1,
            identity: identity.to_vec(),
            data_key: Fixed(*self.data_key.as_bytes()),
            audit_log: Fixed(*self.audit_log),
            audit_witness: Fixed(*self.audit_witness),
            relays: self
                .relays
                .iter()
                .map(|(n, k)| (n.clone(), Fixed(**k)))
                .collect(),
        };
        let bytes = codec::encode(&stored, MAX_SECRETS_LEN)
            .map_err(|e| SecretsError::Corrupt(e.to_string()))?;
        Ok(Zeroizing::new(bytes))
    }

    fn decode(bytes: &[u8]) -> Result<Self, SecretsError> {
        let stored: Stored = codec::decode(bytes, MAX_SECRETS_LEN)
            .map_err(|e| SecretsError::Corrupt(e.to_string()))?;
        if stored.version != 1 {
            return Err(SecretsError::Corrupt(format!(
                "unsupported secrets version {}",
                stored.version
            )));
        }
        if stored.relays.len() > MAX_RELAYS {
            return Err(SecretsError::Corrupt("too many relays".into()));
        }
        Ok(NodeSecrets {
            identity: Identity::from_secret_bytes(&stored.identity)?,
            data_key: DataKey::from_bytes(stored.data_key.0),
            audit_log: Zeroizing::new(stored.audit_log.0),
            audit_witness: Zeroizing::new(stored.audit_witness.0),
            relays: stored
                .relays
                .iter()
                .map(|(n, k)| (n.clone(), Zeroizing::new(k.0)))
                .collect(),
        })
    }

    /// Writes the key file (encrypted unless `passphrase` is `None`).
    pub fn save(&self, path: &Path, passphrase: Option<&[u8]>) -> Result<(), SecretsError> {
        let bytes = self.encode()?;
        keyfile::write_key_file(path, &bytes, passphrase)?;
        Ok(())
    }

    /// Reads and decrypts the key file.
    pub fn load(path: &Path, passphrase: Option<&[u8]>) -> Result<Self, SecretsError> {
        let bytes = keyfile::read_key_file(path, passphrase)?;
        Self::decode(&bytes)
    }

    /// The audit keys (log and witness), bound to the identity key.
    pub fn audit_keys(&self) -> Result<liaison_audit::LocalKeys, SecretsError> {
        liaison_audit::LocalKeys::from_identity(
            self.identity.signing_key(),
            ed25519_dalek::SigningKey::from_bytes(&self.audit_log),
            ed25519_dalek::SigningKey::from_bytes(&self.audit_witness),
        )
        .map_err(|e| SecretsError::Corrupt(format!("audit keys: {e}")))
    }

    /// The hop key seed for a relay.
    pub fn relay_key(&self, relay: &str) -> Option<&Secret32> {
        self.relays.iter().find(|(n, _)| n == relay).map(|(_, k)| k)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn round_trip_through_the_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let mut s = NodeSecrets::new(Identity::generate("alice", 1_800_000_000).unwrap()).unwrap();
        s.relays.push(("r1".into(), Zeroizing::new([5; 32])));
        s.save(&path, None).unwrap();
        let back = NodeSecrets::load(&path, None).unwrap();
        assert_eq!(
            back.identity.identity_public(),
            s.identity.identity_public()
        );
        assert_eq!(back.data_key.as_bytes(), s.data_key.as_bytes());
        assert_eq!(**back.relay_key("r1").unwrap(), [5; 32]);
        assert!(NodeSecrets::decode(&[1, 2, 3]).is_err());
    }
}
