//! The relay's home: a 0700 directory holding its hop key, reused across restarts.
//!
//! `relay-hop-key` (mode 0600) holds `"liaison-relay-key v1\n" || hex(seed) || "\n" ||
//! created (unix seconds) || "\n"`. The creation time is kept so the card text is the same on
//! every start (Ed25519 signatures are deterministic). The file is written to a temporary name,
//! synced and renamed, so a crash never leaves half a key. Loose permissions are refused.

use crate::RelayError;
use crate::card::{RelayCardError, sign_relay_card};
use liaison_hop::HopKey;
use liaison_wire::relay_card::RelayCard;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Name of the key file inside the home.
pub const KEY_FILE: &str = "relay-hop-key";
const KEY_HEADER: &str = "liaison-relay-key v1";

/// An opened relay home.
#[derive(Debug)]
pub struct RelayHome {
    dir: PathBuf,
    key: HopKey,
    created: u64,
}

fn home_err(path: &Path, what: &str, e: impl std::fmt::Display) -> RelayError {
    RelayError::Home(format!("{what} {}: {e}", path.display()))
}

/// Creates `dir` with mode 0700 if missing; refuses one that group or others can access.
pub(crate) fn private_dir(dir: &Path) -> Result<(), RelayError> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| home_err(dir, "cannot create", e))?;
    }
    let meta = fs::metadata(dir).map_err(|e| home_err(dir, "cannot read", e))?;
    if !meta.is_dir() {
        return Err(RelayError::Home(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(RelayError::Home(format!(
            "{} is accessible to other users (mode {mode:o}); run `chmod 700 {}`",
            dir.display(),
            dir.display()
        )));
    }
    Ok(())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl RelayHome {
    /// Opens the home at `dir`, creating it and a fresh hop key on first use.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, RelayError> {
        let dir = dir.as_ref().to_path_buf();
        private_dir(&dir)?;
        let path = dir.join(KEY_FILE);
        if !path.exists() {
            let key = HopKey::generate().map_err(RelayError::Hop)?;
            write_key(&dir, &path, &key, now_secs())?;
        }
        let (key, created) = read_key(&path)?;
        Ok(RelayHome { dir, key, created })
    }

    /// The home directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The relay's hop key (its TLS certificate key).
    pub fn key(&self) -> &HopKey {
        &self.key
    }

    /// Unix seconds when the key was made.
    pub fn created(&self) -> u64 {
        self.created
    }

    /// The relay's signed card for a public `HOST:PORT`.
    pub fn card(&self, public_addr: &str) -> Result<RelayCard, RelayCardError> {
        sign_relay_card(self.key.seed(), public_addr, self.created)
    }
}

fn write_key(dir: &Path, path: &Path, key: &HopKey, created: u64) -> Result<(), RelayError> {
    let tmp = dir.join(format!("{KEY_FILE}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| home_err(&tmp, "cannot create", e))?;
    let seed_hex = Zeroizing::new(hex::encode(key.seed()));
    let text = Zeroizing::new(format!("{KEY_HEADER}\n{}\n{created}\n", seed_hex.as_str()));
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| home_err(&tmp, "cannot write", e))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| home_err(path, "cannot create", e))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| home_err(dir, "cannot sync", e))?;
    Ok(())
}

fn read_key(path: &Path) -> Result<(HopKey, u64), RelayError> {
    let meta = fs::metadata(path).map_err(|e| home_err(path, "cannot read", e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(RelayError::Home(format!(
            "{} is readable by other users (mode {mode:o}); run `chmod 600 {}`",
            path.display(),
            path.display()
        )));
    }
    if meta.len() > 4096 {
        return Err(RelayError::Home(format!(
            "{} is not a relay key file",
            path.display()
        )));
    }
    let text =
        Zeroizing::new(fs::read_to_string(path).map_err(|e| home_err(path, "cannot read", e))?);
    let bad = || RelayError::Home(format!("{} is not a relay key file", path.display()));
    let mut lines = text.lines();
    if lines.next() != Some(KEY_HEADER) {
        return Err(bad());
    }
    let seed_hex = lines.next().ok_or_else(bad)?;
    let mut seed = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(seed_hex, seed.as_mut_slice()).map_err(|_| bad())?;
    let created = lines
        .next()
        .and_then(|l| l.parse::<u64>().ok())
        .ok_or_else(bad)?;
    Ok((HopKey::from_seed(&seed), created))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::card::verify_relay_card;

    #[test]
    fn created_once_reused_and_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("relay");
        let a = RelayHome::open(&dir).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
        let b = RelayHome::open(&dir).unwrap();
        assert_eq!(a.key().public(), b.key().public());
        let card_a = a.card("127.0.0.1:4433").unwrap().to_text().unwrap();
        let card_b = b.card("127.0.0.1:4433").unwrap().to_text().unwrap();
        assert_eq!(card_a, card_b, "the card is stable across restarts");
        let card = verify_relay_card(&card_a).unwrap();
        assert_eq!(card.hop_key, a.key().public());
        assert_eq!(card.addr, "127.0.0.1:4433");

        fs::set_permissions(dir.join(KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(RelayHome::open(&dir).is_err(), "loose key file refused");
        fs::set_permissions(dir.join(KEY_FILE), fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(RelayHome::open(&dir).is_err(), "loose home refused");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(dir.join(KEY_FILE), "garbage").unwrap();
        assert!(RelayHome::open(&dir).is_err(), "damaged key refused");
    }
}
