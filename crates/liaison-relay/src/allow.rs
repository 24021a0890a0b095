//! The allow list: which client hop keys may use the relay, checked during the TLS handshake.
//!
//! File format: one lowercase (or uppercase) hex SHA-256 of a client's SPKI per line
//! (`liaison_hop::spki_hash`, what `liaison relay add` prints), `#` starts a comment, blank
//! lines are ignored. A file that does not parse is refused whole and the previous list stays
//! in force. Without a file, any client presenting a valid Ed25519 certificate is accepted.

use crate::RelayError;
use liaison_hop::ClientPins;
use liaison_hop::tls::{ED25519_SPKI_LEN, ED25519_SPKI_PREFIX};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};

/// Largest allow-list file, bytes (about 150,000 entries).
pub const MAX_ALLOW_FILE: u64 = 10 << 20;

/// A reloadable set of allowed SPKI hashes, used as the endpoint's [`ClientPins`].
#[derive(Debug)]
pub struct AllowList {
    path: Option<PathBuf>,
    set: RwLock<Option<HashSet<[u8; 32]>>>,
}

/// True for an Ed25519 SubjectPublicKeyInfo (the only key type hops use).
pub fn is_ed25519_spki(spki: &[u8]) -> bool {
    spki.len() == ED25519_SPKI_LEN && spki.starts_with(&ED25519_SPKI_PREFIX)
}

/// Parses allow-list text.
pub fn parse_allow_list(text: &str) -> Result<HashSet<[u8; 32]>, RelayError> {
    let mut set = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        let mut hash = [0u8; 32];
        hex::decode_to_slice(entry, &mut hash).map_err(|_| {
            RelayError::AllowList(format!(
                "line {}: expected 64 hex digits (a hop key's SPKI SHA-256)",
                n + 1
            ))
        })?;
        set.insert(hash);
    }
    Ok(set)
}

fn read_file(path: &Path) -> Result<HashSet<[u8; 32]>, RelayError> {
    let err = |e: std::io::Error| RelayError::AllowList(format!("{}: {e}", path.display()));
    let meta = std::fs::metadata(path).map_err(err)?;
    if meta.len() > MAX_ALLOW_FILE {
        return Err(RelayError::AllowList(format!(
            "{} is larger than {MAX_ALLOW_FILE} bytes",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(err)?;
    parse_allow_list(&text).map_err(|e| RelayError::AllowList(format!("{}: {e}", path.display())))
}

impl AllowList {
    /// Loads the list from `path`, or allows every Ed25519 client when `None`.
    pub fn open(path: Option<&Path>) -> Result<Self, RelayError> {
        let set = path.map(read_file).transpose()?;
        Ok(AllowList {
            path: path.map(Path::to_path_buf),
            set: RwLock::new(set),
        })
    }

    /// A fixed list (no file), for tests and embedding.
    pub fn fixed(hashes: impl IntoIterator<Item = [u8; 32]>) -> Self {
        AllowList {
            path: None,
            set: RwLock::new(Some(hashes.into_iter().collect())),
        }
    }

    /// Re-reads the file. On error the previous list stays in force. Returns the number of
    /// entries, or `None` when there is no list (everyone allowed).
    pub fn reload(&self) -> Result<Option<usize>, RelayError> {
        let Some(path) = &self.path else {
            return Ok(self.len());
        };
        let set = read_file(path)?;
        let n = set.len();
        *self.set.write().unwrap_or_else(PoisonError::into_inner) = Some(set);
        Ok(Some(n))
    }

    /// Number of entries, `None` when everyone is allowed.
    pub fn len(&self) -> Option<usize> {
        self.set
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(HashSet::len)
    }

    /// True when the list is present and empty (nobody allowed).
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// True if a client with this SPKI hash may connect.
    pub fn allows_hash(&self, hash: &[u8; 32]) -> bool {
        match &*self.set.read().unwrap_or_else(PoisonError::into_inner) {
            None => true,
            Some(set) => set.contains(hash),
        }
    }
}

impl ClientPins for AllowList {
    fn allows(&self, spki: &[u8]) -> bool {
        is_ed25519_spki(spki) && self.allows_hash(&liaison_hop::spki_hash(spki))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use liaison_hop::{HopKey, spki_hash};

    #[test]
    fn parse_and_reload() {
        let a = HopKey::from_seed(&[1; 32]);
        let b = HopKey::from_seed(&[2; 32]);
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("allow");
        std::fs::write(
            &path,
            format!(
                "# relay users\n\n{}  # alice\n",
                hex::encode(spki_hash(&a.spki()))
            ),
        )
        .unwrap();
        let list = AllowList::open(Some(&path)).unwrap();
        assert!(list.allows(&a.spki()));
        assert!(!list.allows(&b.spki()));
        assert_eq!(list.len(), Some(1));

        std::fs::write(
            &path,
            format!(
                "{}\n{}\n",
                hex::encode(spki_hash(&a.spki())),
                hex::encode(spki_hash(&b.spki())).to_uppercase()
            ),
        )
        .unwrap();
        assert_eq!(list.reload().unwrap(), Some(2));
        assert!(list.allows(&b.spki()));

        std::fs::write(&path, "not hex\n").unwrap();
        let err = list.reload().unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        assert!(list.allows(&b.spki()), "a bad file keeps the old list");

        std::fs::write(&path, "").unwrap();
        assert_eq!(list.reload().unwrap(), Some(0));
        assert!(list.is_empty());
        assert!(!list.allows(&a.spki()));
    }

    #[test]
    fn open_list_needs_ed25519() {
        let list = AllowList::open(None).unwrap();
        assert!(list.allows(&HopKey::from_seed(&[3; 32]).spki()));
        assert!(!list.allows(&[0u8; 44]));
        assert!(!list.allows(b"short"));
        assert_eq!(list.reload().unwrap(), None);
        assert!(AllowList::open(Some(Path::new("/nonexistent/allow"))).is_err());
    }
}
