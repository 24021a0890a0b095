//! What commands share: the home, the passphrase, secrets, the store and the runtime.

use crate::GlobalArgs;
use crate::exit::{Context, Failure, runtime, usage, verify};
use liaison_node::home::{Home, HomeError, HomeLock};
use liaison_node::keyfile::KeyFileError;
use liaison_node::secrets::{NodeSecrets, SecretsError};
use liaison_node::store;
use liaison_proto::identity::{VerifiedCard, parse_card_text};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use zeroize::{Zeroize, Zeroizing};

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
    /// Whatever the source, it is read into one buffer allocated at its full size up front
    /// ([`SecretBuf`]), which never reallocates (a reallocation would leave a copy behind)
    /// and is wiped when dropped; so is every buffer it passes through.
    pub fn passphrase(&self, confirm: bool) -> Result<Zeroizing<String>, Failure> {
        if let Some(f) = &self.global.passphrase_file {
            let mut buf = read_secret_file(f, MAX_PASSPHRASE_FILE, "passphrase file")?;
            warn_if_readable_by_others(f);
            // the first line is the passphrase; the rest of the file is wiped now
            buf.keep_first_line();
            return buf.into_string().map_err(|()| {
                usage(format!(
                    "{} is not text (UTF-8): not a passphrase file",
                    f.display()
                ))
            });
        }
        if let Some(v) = std::env::var_os("LIAISON_PASSPHRASE") {
            // std copied the value out of the environment into one allocation of its exact
            // size, adopted here as it is (the environment itself keeps the value: see
            // `--help`)
            use std::os::unix::ffi::OsStringExt;
            return SecretBuf::adopt(v.into_vec())
                .into_string()
                .map_err(|()| usage("LIAISON_PASSPHRASE is not text (UTF-8)"));
        }
        let p = prompt_hidden("passphrase: ").map_err(|e| match e {
            PromptError::NoTerminal(e) => usage(format!(
                "a passphrase is needed and there is no terminal to ask on ({e}): set \
                 LIAISON_PASSPHRASE or pass --passphrase-file FILE"
            )),
            PromptError::Refused(why) => usage(why),
        })?;
        if confirm {
            let again = prompt_hidden("passphrase (again): ").map_err(|e| match e {
                PromptError::NoTerminal(e) => runtime(format!("reading the passphrase: {e}")),
                PromptError::Refused(why) => usage(why),
            })?;
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

    /// The store, read-only. A damaged store is still read (what can be read is shown) after
    /// one warning line that says what is wrong and how to recover. The write-ahead log is
    /// checked only when no other process holds the home (a running node checked it when it
    /// opened the store, and is writing it now).
    pub fn db_ro(&self, home: &Home) -> Result<rusqlite::Connection, Failure> {
        store_present(home)?;
        let path = home.db_path();
        let found = if wal_at_rest(home) {
            liaison_node::damage::check_files(&path)
        } else {
            liaison_node::damage::check_db_file(&path)
        };
        if let Err(d) = found {
            errln!(
                "warning: the message store {} is damaged: {d}. Showing what can still be                  read. {}",
                path.display(),
                recovery_hint(&d)
            );
        }
        store::open_read_only(&path).ctx("opening the message store")
    }

    /// The home's message store, which `init` created, checked for damage and against the
    /// home's manifest. A missing, damaged, emptied or foreign store is refused, never used or
    /// made afresh: an empty store would forget every contact and receipt and reuse sequence
    /// numbers the peers already hold.
    pub fn open_store(&self, home: &Home) -> Result<store::Db, Failure> {
        store_present(home)?;
        let manifest = home.read_manifest().map_err(home_failure)?;
        let path = home.db_path();
        let db = if wal_at_rest(home) {
            store::open(&path)
        } else {
            store::open_beside_writer(&path)
        }
        .map_err(|e| store_failure(&path, e))?;
        let id = db
            .write_blocking(store::store_id)
            .ctx("reading the message store's id")?;
        match manifest {
            Some(m) if m.store_id != id => Err(runtime(format!(
                "the message store {} is not this home's own (its id differs from the one the                  home's manifest records): a store from another home was put in its place. Put                  this home's store back, or restore the home from a backup",
                path.display()
            ))),
            Some(_) => Ok(db),
            None => {
                // a home made before manifests: record its store now
                home.write_manifest(&liaison_node::home::Manifest { store_id: id })
                    .map_err(home_failure)?;
                Ok(db)
            }
        }
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

/// Longest passphrase typed at the prompt, bytes (a terminal's line holds 4095 characters).
pub const MAX_PASSPHRASE_TYPED: usize = 4096;

/// Why the prompt gave no passphrase.
#[derive(Debug)]
pub enum PromptError {
    /// There is no terminal to ask on, or it failed.
    NoTerminal(std::io::Error),
    /// What was typed is not a passphrase (too long, not UTF-8): the reason.
    Refused(String),
}

/// Reads a line from the terminal with echo off, straight into a [`SecretBuf`]: no reader
/// buffer holds a copy, and a line longer than [`MAX_PASSPHRASE_TYPED`] is refused (and read
/// away, wiped, so that none of it is left for the shell to read).
pub fn prompt_hidden(prompt: &str) -> Result<Zeroizing<String>, PromptError> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let io = PromptError::NoTerminal;
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(io)?;
    let mut out = tty.try_clone().map_err(io)?;
    let old = tcgetattr(&tty).map_err(|e| io(std::io::Error::from(e)))?;
    let mut quiet = old.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    write!(out, "{prompt}").map_err(io)?;
    out.flush().map_err(io)?;
    tcsetattr(&tty, SetArg::TCSANOW, &quiet).map_err(|e| io(std::io::Error::from(e)))?;
    let mut buf = SecretBuf::new(MAX_PASSPHRASE_TYPED);
    let r = buf.read_line_from(&mut &tty);
    if let Ok(Fill::TooLong) = r {
        let mut rest = SecretBuf::new(MAX_PASSPHRASE_TYPED);
        while let Ok(Fill::TooLong) = rest.read_line_from(&mut &tty) {
            rest.clear();
        }
    }
    let _ = tcsetattr(&tty, SetArg::TCSANOW, &old);
    match r.map_err(io)? {
        Fill::TooLong => {
            return Err(PromptError::Refused(format!(
                "the passphrase typed is longer than {MAX_PASSPHRASE_TYPED} bytes"
            )));
        }
        Fill::Complete => {}
    }
    buf.keep_first_line();
    buf.into_string()
        .map_err(|()| PromptError::Refused("the passphrase typed is not text (UTF-8)".into()))
}

/// How a [`SecretBuf`] read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// At the end of the input (or of the line), within the limit.
    Complete,
    /// More than the limit: refused (what was read is kept only to be wiped).
    TooLong,
}

/// A buffer for a secret of at most `limit` bytes, allocated once at `limit + 1` bytes (one
/// more, to tell a secret of exactly `limit` bytes from a longer one): reading into it never
/// reallocates, so no copy of a part already read is left in freed memory, and all of it is
/// wiped when it is dropped.
pub struct SecretBuf {
    buf: Zeroizing<Vec<u8>>,
    len: usize,
}

impl std::fmt::Debug for SecretBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBuf({} bytes)", self.len)
    }
}

impl SecretBuf {
    /// An empty buffer for up to `limit` bytes.
    pub fn new(limit: usize) -> SecretBuf {
        SecretBuf {
            buf: Zeroizing::new(vec![0; limit.saturating_add(1)]),
            len: 0,
        }
    }

    /// A secret that is already in memory, in an allocation of its exact size: kept as it is
    /// (no copy), and wiped from now on.
    pub fn adopt(bytes: Vec<u8>) -> SecretBuf {
        let len = bytes.len();
        SecretBuf {
            buf: Zeroizing::new(bytes),
            len,
        }
    }

    /// What was read.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }

    /// The size of the allocation, which reading never changes.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Where the allocation is, which reading never changes.
    #[cfg(test)]
    pub fn as_ptr(&self) -> *const u8 {
        self.buf.as_ptr()
    }

    /// Wipes what was read; the buffer can be read into again.
    pub fn clear(&mut self) {
        self.buf.as_mut_slice().zeroize();
        self.len = 0;
    }

    /// Reads `r` to its end, or until more than the limit was read.
    pub fn fill_from(&mut self, r: &mut impl Read) -> std::io::Result<Fill> {
        self.read_from(r, false)
    }

    /// Reads `r` up to the end of the first line (included), or until more than the limit
    /// was read. On a terminal each read returns at most one line, so nothing after it is
    /// taken.
    pub fn read_line_from(&mut self, r: &mut impl Read) -> std::io::Result<Fill> {
        self.read_from(r, true)
    }

    fn read_from(&mut self, r: &mut impl Read, line: bool) -> std::io::Result<Fill> {
        let limit = self.buf.len().saturating_sub(1);
        loop {
            let Some(free) = self.buf.get_mut(self.len..).filter(|f| !f.is_empty()) else {
                return Ok(Fill::TooLong);
            };
            let n = match r.read(free) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let read = self.buf.get(self.len..self.len + n).unwrap_or_default();
            let newline = line && read.contains(&b'\n');
            self.len += n;
            if newline {
                break;
            }
        }
        Ok(if self.len > limit {
            Fill::TooLong
        } else {
            Fill::Complete
        })
    }

    /// Keeps only the first line (without its `\n` or `\r\n`); the rest is wiped.
    pub fn keep_first_line(&mut self) {
        let bytes = self.as_bytes();
        let mut end = bytes
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(bytes.len());
        if end > 0 && bytes.get(end - 1) == Some(&b'\r') {
            end -= 1;
        }
        if let Some(rest) = self.buf.get_mut(end..) {
            rest.zeroize();
        }
        self.len = end;
    }

    /// The secret as text, in the same allocation (wiped when dropped, spare capacity too).
    /// `Err` if it is not UTF-8 (the bytes are wiped).
    pub fn into_string(mut self) -> Result<Zeroizing<String>, ()> {
        let mut v = std::mem::take(&mut *self.buf);
        // shortening never reallocates; the tail was wiped or never written
        v.truncate(self.len);
        match String::from_utf8(v) {
            Ok(s) => Ok(Zeroizing::new(s)),
            Err(e) => {
                e.into_bytes().zeroize();
                Err(())
            }
        }
    }
}

/// Opens the file at `path` that the user named as `what`; a directory is refused.
fn open_named(path: &Path, what: &str) -> Result<std::fs::File, Failure> {
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
    Ok(f)
}

fn too_large(path: &Path, limit: u64, what: &str) -> Failure {
    usage(format!(
        "{} is larger than {limit} bytes: not a {what} (nothing was read further)",
        path.display()
    ))
}

/// Reads at most `limit` bytes of the file at `path` (`what` names it in errors). Every file
/// a user names is read this way: a device such as `/dev/zero` or an endless pipe is cut off
/// after `limit + 1` bytes and refused as too large, never read without end; a directory is
/// refused. Pipes stay allowed (`--passphrase-file <(pass show liaison)`).
pub fn read_bounded(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>, Failure> {
    let f = open_named(path, what)?;
    let mut buf = Vec::new();
    f.take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| runtime(format!("cannot read {what} {}: {e}", path.display())))?;
    if buf.len() as u64 > limit {
        return Err(too_large(path, limit, what));
    }
    Ok(buf)
}

/// [`read_bounded`] for a file holding a secret: read into a [`SecretBuf`], so that no
/// reallocation leaves a copy of it behind.
pub fn read_secret_file(path: &Path, limit: usize, what: &str) -> Result<SecretBuf, Failure> {
    let mut f = open_named(path, what)?;
    let mut buf = SecretBuf::new(limit);
    match buf
        .fill_from(&mut f)
        .map_err(|e| runtime(format!("cannot read {what} {}: {e}", path.display())))?
    {
        Fill::Complete => Ok(buf),
        Fill::TooLong => Err(too_large(path, limit as u64, what)),
    }
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
/// Whether the store's write-ahead log is at rest: no other process holds the home (this one
/// may), so no node is writing it while it is checked. A running node checked it when it
/// opened the store.
fn wal_at_rest(home: &Home) -> bool {
    match home.lock() {
        Ok(_lock) => true,
        Err(HomeError::Locked { pid, .. }) => pid == Some(std::process::id()),
        Err(_) => false,
    }
}

/// What to do about damage, in one sentence.
pub fn recovery_hint(d: &liaison_node::damage::Damage) -> &'static str {
    if d.repairable() {
        "Restore this home from a backup, or run `liaison repair --accept-loss` to cut the \
         write-ahead log back to its intact part (what was written after the damage is lost; \
         the damaged log is kept beside it)"
    } else {
        "Restore this home from a backup; nothing was changed (`liaison inbox`, `contact list` \
         and `audit show` still show what can be read)"
    }
}

/// A store that does not open: damage gets the recovery hint.
pub fn store_failure(path: &Path, e: store::DbError) -> Failure {
    match e {
        store::DbError::Damaged(d) => runtime(format!(
            "the message store {} is damaged: {d}. {}",
            path.display(),
            recovery_hint(&d)
        )),
        other => runtime(format!("opening the message store: {other}")),
    }
}

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
pub const MAX_PASSPHRASE_FILE: usize = 64 * 1024;

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
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    /// A reader that hands out `data` a few bytes at a time, as a slow pipe would, and counts
    /// what was taken.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        step: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let rest = self.data.get(self.at..).unwrap_or_default();
            let n = rest.len().min(self.step).min(out.len());
            out[..n].copy_from_slice(&rest[..n]);
            self.at += n;
            Ok(n)
        }
    }

    fn trickle(data: &[u8], step: usize) -> Trickle {
        Trickle {
            data: data.to_vec(),
            at: 0,
            step,
        }
    }

    #[test]
    fn a_secret_is_read_up_to_its_limit_without_reallocating() {
        let mut buf = SecretBuf::new(64);
        let (ptr, cap) = (buf.as_ptr(), buf.capacity());
        assert_eq!(cap, 65);
        // exactly the limit, one byte at a time
        let secret = [b's'; 64];
        let r = buf.fill_from(&mut trickle(&secret, 1)).expect("read");
        assert_eq!(r, Fill::Complete);
        assert_eq!(buf.as_bytes(), secret);
        assert_eq!(
            (buf.as_ptr(), buf.capacity()),
            (ptr, cap),
            "never reallocated"
        );
        // the text is that same allocation
        let s = buf.into_string().expect("utf-8");
        assert_eq!(s.as_ptr(), ptr);
        assert_eq!(s.capacity(), cap);
    }

    #[test]
    fn a_secret_over_its_limit_is_refused_and_not_read_on() {
        let mut buf = SecretBuf::new(64);
        let (ptr, cap) = (buf.as_ptr(), buf.capacity());
        let mut r = trickle(&[b'x'; 1000], 7);
        assert_eq!(buf.fill_from(&mut r).expect("read"), Fill::TooLong);
        assert_eq!(r.at, 65, "one byte past the limit, no more");
        assert_eq!((buf.as_ptr(), buf.capacity()), (ptr, cap));
        // an endless input too
        let mut buf = SecretBuf::new(64);
        assert_eq!(
            buf.fill_from(&mut std::io::repeat(0)).expect("read"),
            Fill::TooLong
        );
        assert_eq!((buf.capacity(), buf.as_bytes().len()), (65, 65));
    }

    #[test]
    fn a_typed_line_is_read_to_its_newline_only() {
        let mut buf = SecretBuf::new(64);
        let mut r = trickle(b"correct horse\r\nnext command\n", 1);
        assert_eq!(buf.read_line_from(&mut r).expect("read"), Fill::Complete);
        assert_eq!(r.at, 15, "nothing after the newline is taken");
        buf.keep_first_line();
        assert_eq!(buf.as_bytes(), b"correct horse");
        assert_eq!(&*buf.into_string().expect("utf-8"), "correct horse");
        // a line longer than the limit is refused; the rest can be read away
        let mut buf = SecretBuf::new(8);
        let mut r = trickle(b"much too long for this\nnext\n", 1);
        assert_eq!(buf.read_line_from(&mut r).expect("read"), Fill::TooLong);
        buf.clear();
        assert_eq!(buf.as_bytes(), b"");
        while buf.read_line_from(&mut r).expect("read") == Fill::TooLong {
            buf.clear();
        }
        assert_eq!(r.at, 23, "read away up to the end of the line");
    }

    #[test]
    fn only_the_first_line_of_a_passphrase_file_is_kept_and_the_rest_is_wiped() {
        let mut buf = SecretBuf::new(64);
        buf.fill_from(&mut trickle(b"first\nsecond line\n", 3))
            .expect("read");
        buf.keep_first_line();
        assert_eq!(buf.as_bytes(), b"first");
        assert!(buf.buf.iter().skip(5).all(|&b| b == 0), "the rest is wiped");
        let mut bad = SecretBuf::new(8);
        bad.fill_from(&mut trickle(&[0xff, 0xfe], 1)).expect("read");
        assert!(bad.into_string().is_err(), "not UTF-8");
    }

    #[test]
    fn dates() {
        assert_eq!(human_time(0), "1970-01-01 00:00:00Z");
        assert_eq!(human_time(1_700_000_000), "2023-11-14 22:13:20Z");
    }
}
