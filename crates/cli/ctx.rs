//! What commands share: the home, the passphrase, secrets, the store and the runtime.

use crate::GlobalArgs;
use crate::exit::{Context, Failure, runtime, usage, verify};
use liaison_node::home::{Home, HomeError, HomeLock};
use liaison_node::keyfile::KeyFileError;
use liaison_node::secrets::{NodeSecrets, SecretsError};
use liaison_node::store;
use liaison_proto::identity::{VerifiedCard, parse_card_text};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Name of the public card file in a home (so `id` needs no passphrase).
pub const CARD_FILE: &str = "card";

/// Shared command context.
#[derive(Debug)]
pub struct Ctx {
    /// Global options.
    pub global: GlobalArgs,
    /// `--json`.
    pub json: bool,
}

impl Ctx {
    /// From the parsed global options.
    pub fn new(global: GlobalArgs) -> Self {
        let json = global.json;
        Ctx { global, json }
    }

    /// The home directory path (not necessarily existing).
    pub fn home_dir(&self) -> Result<PathBuf, Failure> {
        match &self.global.home {
            Some(h) => Ok(h.clone()),
            None => liaison_node::home::default_home_from(
                std::env::var_os("XDG_DATA_HOME").as_deref(),
                std::env::var_os("HOME").as_deref(),
            )
            .ok_or_else(|| {
                usage("cannot find a default home: pass --home DIR or set LIAISON_HOME")
            }),
        }
    }

    /// Opens an existing home, checking its permissions.
    pub fn open_home(&self) -> Result<Home, Failure> {
        let dir = self.home_dir()?;
        if !dir.join(liaison_node::home::KEYS_FILE).exists() {
            return Err(runtime(format!(
                "no identity in {}: run `liaison init --name NAME` first (or pass --home)",
                dir.display()
            )));
        }
        Home::open(&dir).map_err(home_failure)
    }

    /// Takes the home's exclusive lock.
    pub fn lock(&self, home: &Home) -> Result<HomeLock, Failure> {
        home.lock().map_err(home_failure)
    }

    /// The passphrase from `--passphrase-file`, `LIAISON_PASSPHRASE`, or a terminal prompt.
    /// `None` if none is available and `required` is false.
    pub fn passphrase(&self, confirm: bool) -> Result<Zeroizing<String>, Failure> {
        if let Some(f) = &self.global.passphrase_file {
            let bytes = Zeroizing::new(read_bounded(f, MAX_PASSPHRASE_FILE, "passphrase file")?);
            warn_if_readable_by_others(f);
            let text = std::str::from_utf8(&bytes).map_err(|_| {
                usage(format!(
                    "{} is not text (UTF-8): not a passphrase file",
                    f.display()
                ))
            })?;
            let line = text.lines().next().unwrap_or("").to_string();
            return Ok(Zeroizing::new(line));
        }
        if let Ok(p) = std::env::var("LIAISON_PASSPHRASE") {
            return Ok(Zeroizing::new(p));
        }
        let p = prompt_hidden("passphrase: ").map_err(|e| {
            usage(format!(
                "a passphrase is needed and there is no terminal to ask on ({e}): set \
                 LIAISON_PASSPHRASE or pass --passphrase-file FILE"
            ))
        })?;
        if confirm {
            let again = prompt_hidden("passphrase (again): ").ctx("reading the passphrase")?;
            if *again != *p {
                return Err(usage("the two passphrases differ; nothing was written"));
            }
        }
        Ok(p)
    }

    /// Loads and decrypts the node's secrets.
    pub fn load_secrets(&self, home: &Home) -> Result<NodeSecrets, Failure> {
        Ok(self.load_secrets_keeping_passphrase(home)?.0)
    }

    /// Loads the secrets and keeps the passphrase, to write the key file back after a change.
    pub fn load_secrets_keeping_passphrase(
        &self,
        home: &Home,
    ) -> Result<(NodeSecrets, Option<Zeroizing<String>>), Failure> {
        let path = home.keys_path();
        let encrypted = liaison_node::keyfile::is_encrypted(&path).map_err(secrets_failure_kf)?;
        let pass = if encrypted {
            Some(self.passphrase(false)?)
        } else {
            None
        };
        let secrets = NodeSecrets::load(&path, pass.as_ref().map(|p| p.as_bytes()))
            .map_err(secrets_failure)?;
        Ok((secrets, pass))
    }

    /// The node's secrets if they can be had without asking anyone: the key file is not
    /// encrypted, or the passphrase comes from `--passphrase-file` or `LIAISON_PASSPHRASE`.
    /// `None` otherwise, or if they do not open.
    pub fn secrets_without_prompt(&self, home: &Home) -> Option<NodeSecrets> {
        let path = home.keys_path();
        let encrypted = liaison_node::keyfile::is_encrypted(&path).ok()?;
        let pass = if !encrypted {
            None
        } else if self.global.passphrase_file.is_some()
            || std::env::var_os("LIAISON_PASSPHRASE").is_some()
        {
            Some(self.passphrase(false).ok()?)
        } else {
            return None;
        };
        NodeSecrets::load(&path, pass.as_ref().map(|p| p.as_bytes())).ok()
    }

    /// This node's own card (public file, no passphrase needed).
    pub fn own_card(&self, home: &Home) -> Result<VerifiedCard, Failure> {
        let path = home.dir().join(CARD_FILE);
        let text = read_bounded_text(&path, MAX_CARD_FILE, "card")?;
        parse_card_text(&text).map_err(|e| {
            verify(format!(
                "this home's own card {} does not verify ({e}); it was altered",
                path.display()
            ))
        })
    }

    /// The store, read-only.
    pub fn db_ro(&self, home: &Home) -> Result<rusqlite::Connection, Failure> {
        store_present(home)?;
        store::open_read_only(&home.db_path()).ctx("opening the message store")
    }

    /// The home's message store, which `init` created. A missing one is refused, never made
    /// afresh: an empty store would forget every contact and receipt and reuse sequence
    /// numbers the peers already hold.
    pub fn open_store(&self, home: &Home) -> Result<store::Db, Failure> {
        store_present(home)?;
        store::open(&home.db_path()).ctx("opening the message store")
    }

    /// A tokio runtime for commands that do I/O.
    pub fn runtime(&self) -> Result<tokio::runtime::Runtime, Failure> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .ctx("starting the runtime")
    }
}

/// Maps home errors to failures with the fix.
pub fn home_failure(e: HomeError) -> Failure {
    runtime(e.to_string())
}

fn secrets_failure_kf(e: KeyFileError) -> Failure {
    secrets_failure(SecretsError::KeyFile(e))
}

/// Maps key-file errors: a wrong passphrase or a damaged key file fails verification (3).
pub fn secrets_failure(e: SecretsError) -> Failure {
    match e {
        SecretsError::KeyFile(KeyFileError::WrongPassphrase) => {
            verify("wrong passphrase, or the key file is damaged: nothing was changed; try again")
        }
        SecretsError::KeyFile(k @ KeyFileError::LoosePermissions { .. }) => runtime(k.to_string()),
        SecretsError::KeyFile(KeyFileError::PassphraseRequired) => usage(
            "the key file is encrypted: set LIAISON_PASSPHRASE or pass --passphrase-file FILE",
        ),
        other => runtime(other.to_string()),
    }
}

/// Reads a line from the terminal with echo off.
pub fn prompt_hidden(prompt: &str) -> std::io::Result<Zeroizing<String>> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")?;
    let mut out = tty.try_clone()?;
    let old = tcgetattr(&tty).map_err(std::io::Error::from)?;
    let mut quiet = old.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    write!(out, "{prompt}")?;
    out.flush()?;
    tcsetattr(&tty, SetArg::TCSANOW, &quiet).map_err(std::io::Error::from)?;
    let mut line = Zeroizing::new(String::new());
    let r = std::io::BufReader::new(&tty).read_line(&mut line);
    let _ = tcsetattr(&tty, SetArg::TCSANOW, &old);
    r?;
    while line.ends_with('\n') || line.ends_with('\r') {
        line.pop();
    }
    Ok(line)
}

/// Reads at most `limit` bytes of the file at `path` (`what` names it in errors). Every file
/// a user names is read this way: a device such as `/dev/zero` or an endless pipe is cut off
/// after `limit + 1` bytes and refused as too large, never read without end; a directory is
/// refused. Pipes stay allowed (`--passphrase-file <(pass show liaison)`).
pub fn read_bounded(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>, Failure> {
    use std::io::Read;
    let f = std::fs::File::open(path)
        .map_err(|e| runtime(format!("cannot read {what} {}: {e}", path.display())))?;
    let meta = f
        .metadata()
        .map_err(|e| runtime(format!("cannot read {what} {}: {e}", path.display())))?;
    if meta.is_dir() {
        return Err(usage(format!(
            "{} is a directory; give the {what} file itself",
            path.display()
        )));
    }
    let mut buf = Vec::new();
    f.take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| runtime(format!("cannot read {what} {}: {e}", path.display())))?;
    if buf.len() as u64 > limit {
        return Err(usage(format!(
            "{} is larger than {limit} bytes: not a {what} (nothing was read further)",
            path.display()
        )));
    }
    Ok(buf)
}

/// [`read_bounded`] for a text file.
pub fn read_bounded_text(path: &Path, limit: u64, what: &str) -> Result<String, Failure> {
    let bytes = read_bounded(path, limit, what)?;
    String::from_utf8(bytes).map_err(|_| {
        usage(format!(
            "{} is not text (UTF-8): not a {what}",
            path.display()
        ))
    })
}

/// Warns (one line on stderr) when the regular file `path`, which holds a secret, can be read
/// by group or others.
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.is_file()
        && meta.permissions().mode() & 0o044 != 0
    {
        errln!(
            "warning: the passphrase file {} can be read by other users of this machine: \
             chmod 600 {}",
            path.display(),
            path.display()
        );
    }
}

/// Refuses a home whose message store is gone (`init` makes it; nothing deletes it).
fn store_present(home: &Home) -> Result<(), Failure> {
    let path = home.db_path();
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(runtime(format!(
            "the message store {} is not a regular file: restore this home from a backup",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(runtime(format!(
            "the message store {} is missing: this home's contacts, messages and receipts are \
             gone. Restore the home from a backup; nothing was created in its place (an empty \
             store would reuse sequence numbers your contacts already hold)",
            path.display()
        ))),
        Err(e) => Err(runtime(format!("cannot read {}: {e}", path.display()))),
    }
}

/// Largest card file read (a card is a few KiB).
pub const MAX_CARD_FILE: u64 = 64 * 1024;
/// Largest passphrase file read (its first line is the passphrase).
pub const MAX_PASSPHRASE_FILE: u64 = 64 * 1024;

/// Reads CARD or `@FILE`.
pub fn card_arg(arg: &str) -> Result<String, Failure> {
    match arg.strip_prefix('@') {
        Some(path) => {
            let p = Path::new(path);
            let meta = std::fs::metadata(p)
                .map_err(|e| runtime(format!("cannot read {}: {e}", p.display())))?;
            if meta.len() > MAX_CARD_FILE {
                return Err(verify(format!("{} is too large to be a card", p.display())));
            }
            read_bounded_text(p, MAX_CARD_FILE, "card")
        }
        None => Ok(arg.to_string()),
    }
}

/// Prints a JSON value on one line.
pub fn print_json(v: &serde_json::Value) {
    outln!("{v}");
}

/// A timestamp for humans (UTC).
pub fn human_time(unix: u64) -> String {
    let days = unix / 86_400;
    let secs = unix % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(human_time(0), "1970-01-01 00:00:00Z");
        assert_eq!(human_time(1_700_000_000), "2023-11-14 22:13:20Z");
    }
}
