//! A node's home directory (design §7, cli.md "Global"): where it is, what lives in it, the
//! checks before trusting it, the one-process-per-home lock, and process hardening.
//!
//! Layout (all names relative to the home, which is mode 0700 and owned by the user):
//! - `keys`: the key file ([`crate::keyfile`]), mode 0600.
//! - `node.db`: the SQLite store (messages, outbox, delivery, audit log), with its `-wal` and
//!   `-shm` files.
//! - `manifest`: which stores the home has and their ids ([`Manifest`]), so a store that went
//!   missing, was emptied or was replaced by another home's is refused, not used.
//! - `lock`: locked exclusively (`flock`) by the process driving the node
//!   (`listen`, `call`, `send`); holds that process's pid for diagnostics. The kernel releases
//!   the lock when its holder dies, so a dead holder's lock is taken over without ceremony.
//! - `control.sock`: the 0600 unix control socket of a running `listen`.
//! - `relays/`: per-relay state (pinned relay cards, this node's per-relay hop keys).
//!
//! [`Home::open`] refuses a home that other users can access or that belongs to someone else;
//! [`Home::create`] makes it (or tightens an empty existing directory) with mode 0700.

use nix::sys::resource::{Resource, setrlimit};
use std::ffi::OsStr;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions, TryLockError};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Key file name.
pub const KEYS_FILE: &str = "keys";
/// SQLite database file name.
pub const DB_FILE: &str = "node.db";
/// Manifest file name.
pub const MANIFEST_FILE: &str = "manifest";
/// Largest manifest read.
const MAX_MANIFEST: u64 = 4096;
/// Lock file name.
pub const LOCK_FILE: &str = "lock";
/// Control socket name.
pub const CONTROL_SOCKET: &str = "control.sock";
/// Relay state directory name.
pub const RELAYS_DIR: &str = "relays";
/// Directory name under the platform data directory.
pub const APP_DIR: &str = "liaison";

/// Why a home could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HomeError {
    /// No home there.
    #[error(
        "no liaison home at {}: run `liaison init --name NAME` first, or pass --home DIR",
        path.display()
    )]
    NotFound {
        /// The home directory.
        path: PathBuf,
    },
    /// The path exists but is not a directory.
    #[error("{} is not a directory", path.display())]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// `create` found a non-empty directory.
    #[error(
        "{} already exists and is not empty: choose another --home, or use --force to reuse it",
        path.display()
    )]
    NotEmpty {
        /// The home directory.
        path: PathBuf,
    },
    /// Group or other users may access the home.
    #[error(
        "home {} is accessible by other users (mode {mode:04o}): run `chmod 700 {}`",
        path.display(), path.display()
    )]
    LoosePermissions {
        /// The home directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The home belongs to another user.
    #[error(
        "home {} belongs to uid {owner}, not to this user (uid {uid}): use your own home, or \
         run as its owner",
        path.display()
    )]
    WrongOwner {
        /// The home directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Our effective uid.
        uid: u32,
    },
    /// Another process holds the home's lock.
    #[error(
        "another liaison process{} is using the home {}: stop it, or let `listen` carry this \
         command through its control socket",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default(), path.display()
    )]
    Locked {
        /// The home directory.
        path: PathBuf,
        /// The holder's pid, as it wrote it in the lock file.
        pid: Option<u32>,
    },
    /// No platform data directory could be determined.
    #[error("cannot find a default home: set LIAISON_HOME or pass --home DIR")]
    NoDefaultHome,
    /// Process hardening failed.
    #[error("could not {what}: {source}")]
    Harden {
        /// What was attempted.
        what: &'static str,
        /// The error.
        #[source]
        source: nix::Error,
    },
    /// The manifest does not parse.
    #[error(
        "the home manifest {} is damaged ({why}): restore this home from a backup",
        path.display()
    )]
    BadManifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A file-system operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// What a home's `manifest` records: the stores it has and their ids. Text, one line each:
///
/// ```text
/// liaison home manifest 1
/// store node.db 00112233445566778899aabbccddeeff
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The id of `node.db` ([`crate::store::store_id`]).
    pub store_id: [u8; 16],
}

const MANIFEST_HEADER: &str = "liaison home manifest 1";

impl Manifest {
    /// The file's text.
    pub fn to_text(&self) -> String {
        format!(
            "{MANIFEST_HEADER}\nstore {DB_FILE} {}\n",
            hex::encode(self.store_id)
        )
    }

    /// Parses the file's text (strict: the header, then exactly the known lines).
    pub fn parse(text: &str) -> Result<Manifest, String> {
        if text.len() as u64 > MAX_MANIFEST {
            return Err("too long".into());
        }
        let mut lines = text.lines();
        if lines.next() != Some(MANIFEST_HEADER) {
            return Err("unknown header".into());
        }
        let mut store_id = None;
        for line in lines {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.as_slice() {
                ["store", name, id] if *name == DB_FILE => {
                    let mut b = [0u8; 16];
                    hex::decode_to_slice(id, &mut b).map_err(|_| "bad store id".to_string())?;
                    if store_id.replace(b).is_some() {
                        return Err("the store is listed twice".into());
                    }
                }
                _ => return Err(format!("unknown line {line:?}")),
            }
        }
        store_id
            .map(|store_id| Manifest { store_id })
            .ok_or_else(|| "no store listed".into())
    }
}

/// A checked home directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    dir: PathBuf,
}

impl Home {
    /// Creates a home at `dir` with mode 0700 (parents are created with default permissions).
    /// An existing empty directory owned by us is accepted and tightened to 0700; a non-empty
    /// one only when `allow_non_empty` (`init --force`).
    pub fn create(dir: &Path, allow_non_empty: bool) -> Result<Home, HomeError> {
        let dir = absolute(dir)?;
        match fs::metadata(&dir) {
            Ok(meta) => {
                if !meta.is_dir() {
                    return Err(HomeError::NotADirectory { path: dir });
                }
                check_owner(&dir, &meta)?;
                let empty = fs::read_dir(&dir)
                    .map_err(|e| io_err(&dir, e))?
                    .next()
                    .is_none();
                if !empty && !allow_non_empty {
                    return Err(HomeError::NotEmpty { path: dir });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(parent) = dir.parent() {
                    fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
                }
                DirBuilder::new()
                    .mode(0o700)
                    .create(&dir)
                    .map_err(|e| io_err(&dir, e))?;
            }
            Err(e) => return Err(io_err(&dir, e)),
        }
        fs::set_permissions(&dir, Permissions::from_mode(0o700)).map_err(|e| io_err(&dir, e))?;
        Home::open(&dir)
    }

    /// Opens an existing home after checking it is a directory owned by us with no group or
    /// other permission bits.
    pub fn open(dir: &Path) -> Result<Home, HomeError> {
        let dir = absolute(dir)?;
        let meta = match fs::metadata(&dir) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(HomeError::NotFound { path: dir });
            }
            Err(e) => return Err(io_err(&dir, e)),
        };
        if !meta.is_dir() {
            return Err(HomeError::NotADirectory { path: dir });
        }
        check_owner(&dir, &meta)?;
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(HomeError::LoosePermissions { path: dir, mode });
        }
        Ok(Home { dir })
    }

    /// The home directory (absolute).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `keys`: the key file.
    pub fn keys_path(&self) -> PathBuf {
        self.dir.join(KEYS_FILE)
    }

    /// `manifest`: the stores this home has.
    pub fn manifest_path(&self) -> PathBuf {
        self.dir.join(MANIFEST_FILE)
    }

    /// The manifest, or `None` for a home made before manifests (or before its store).
    pub fn read_manifest(&self) -> Result<Option<Manifest>, HomeError> {
        let path = self.manifest_path();
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path, e)),
        };
        let mut text = String::new();
        f.take(MAX_MANIFEST + 1)
            .read_to_string(&mut text)
            .map_err(|e| HomeError::BadManifest {
                path: path.clone(),
                why: e.to_string(),
            })?;
        Manifest::parse(&text)
            .map(Some)
            .map_err(|why| HomeError::BadManifest { path, why })
    }

    /// Writes the manifest atomically (a 0600 temporary file, synced, renamed over it).
    pub fn write_manifest(&self, m: &Manifest) -> Result<(), HomeError> {
        let path = self.manifest_path();
        let tmp = self.dir.join(format!("{MANIFEST_FILE}.tmp"));
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io_err(&tmp, e))?;
        f.write_all(m.to_text().as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| io_err(&tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err(&self.dir, e))?;
        Ok(())
    }

    /// Whether an identity was created here (the key file exists).
    pub fn has_keys(&self) -> bool {
        fs::symlink_metadata(self.keys_path()).is_ok()
    }

    /// `node.db`: the SQLite store.
    pub fn db_path(&self) -> PathBuf {
        self.dir.join(DB_FILE)
    }

    /// `lock`: the lock file.
    pub fn lock_path(&self) -> PathBuf {
        self.dir.join(LOCK_FILE)
    }

    /// `control.sock`: the control socket. Unix socket paths are limited to 107 bytes.
    pub fn control_socket_path(&self) -> PathBuf {
        self.dir.join(CONTROL_SOCKET)
    }

    /// `relays/`: relay state.
    pub fn relays_dir(&self) -> PathBuf {
        self.dir.join(RELAYS_DIR)
    }

    /// Creates (if needed) the private (0700) subdirectory `name` of the home and returns it.
    pub fn private_dir(&self, name: &str) -> Result<PathBuf, HomeError> {
        let path = self.dir.join(name);
        match DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(&path, e)),
        }
        let meta = fs::symlink_metadata(&path).map_err(|e| io_err(&path, e))?;
        if !meta.is_dir() {
            return Err(HomeError::NotADirectory { path });
        }
        check_owner(&path, &meta)?;
        fs::set_permissions(&path, Permissions::from_mode(0o700)).map_err(|e| io_err(&path, e))?;
        Ok(path)
    }

    /// Takes the home's exclusive lock without waiting. Fails with [`HomeError::Locked`] while
    /// another process (or another handle in this process) holds it. Released when the
    /// returned guard is dropped, or by the kernel when the process dies.
    pub fn lock(&self) -> Result<HomeLock, HomeError> {
        let path = self.lock_path();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let pid = (&file)
                    .take(32)
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| text.trim().parse().ok());
                return Err(HomeError::Locked {
                    path: self.dir.clone(),
                    pid,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io_err(&path, e)),
        }
        // best effort: record our pid for the next process's error message
        let _ = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()));
        Ok(HomeLock { file, path })
    }
}

/// The home's lock, held until dropped.
#[derive(Debug)]
pub struct HomeLock {
    file: File,
    path: PathBuf,
}

impl HomeLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for HomeLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

/// Hardens the current process before any secret is loaded:
/// - `setrlimit(RLIMIT_CORE, 0, 0)`: no core dump can write secrets to disk (the hard limit
///   is lowered too, so it cannot be raised again);
/// - `prctl(PR_SET_DUMPABLE, 0)`: no core dump even through a `core_pattern` pipe, and
///   `/proc/PID/mem`, `/proc/PID/environ` and `ptrace` attach are refused to other processes
///   of the same uid (only a process with `CAP_SYS_PTRACE` can still attach). This also blocks
///   debuggers and `strace -p` on a running node, which is intended.
pub fn harden_process() -> Result<(), HomeError> {
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(|source| HomeError::Harden {
        what: "disable core dumps (RLIMIT_CORE)",
        source,
    })?;
    #[cfg(target_os = "linux")]
    nix::sys::prctl::set_dumpable(false).map_err(|source| HomeError::Harden {
        what: "mark the process non-dumpable (PR_SET_DUMPABLE)",
        source,
    })?;
    Ok(())
}

/// The platform data directory's `liaison` folder, from the values of `XDG_DATA_HOME` and
/// `HOME` (the binary reads the environment; libraries never do).
pub fn default_home_from(xdg_data_home: Option<&OsStr>, home: Option<&OsStr>) -> Option<PathBuf> {
    if let Some(x) = xdg_data_home.map(Path::new)
        && x.is_absolute()
    {
        return Some(x.join(APP_DIR));
    }
    let home = home.map(Path::new).filter(|h| h.is_absolute())?;
    Some(home.join(".local").join("share").join(APP_DIR))
}

fn check_owner(path: &Path, meta: &fs::Metadata) -> Result<(), HomeError> {
    let uid = nix::unistd::geteuid().as_raw();
    if meta.uid() != uid {
        return Err(HomeError::WrongOwner {
            path: path.to_owned(),
            owner: meta.uid(),
            uid,
        });
    }
    Ok(())
}

fn absolute(dir: &Path) -> Result<PathBuf, HomeError> {
    std::path::absolute(dir).map_err(|e| io_err(dir, e))
}

fn io_err(path: &Path, source: io::Error) -> HomeError {
    HomeError::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o777
    }

    #[test]
    fn create_then_open() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("a/b/home");
        let h = Home::create(&dir, false).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(h.dir(), dir);
        assert_eq!(h.keys_path(), dir.join("keys"));
        assert_eq!(h.db_path(), dir.join("node.db"));
        assert_eq!(h.control_socket_path(), dir.join("control.sock"));
        assert_eq!(h.relays_dir(), dir.join("relays"));
        assert!(!h.has_keys());
        assert_eq!(Home::open(&dir).unwrap(), h);
        let r = h.private_dir(RELAYS_DIR).unwrap();
        assert_eq!(mode(&r), 0o700);
        h.private_dir(RELAYS_DIR).unwrap();
    }

    #[test]
    fn create_refuses_non_empty_unless_allowed() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("home");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        // empty existing dir: accepted and tightened
        Home::create(&dir, false).unwrap();
        assert_eq!(mode(&dir), 0o700);
        fs::write(dir.join("x"), b"").unwrap();
        let e = Home::create(&dir, false).unwrap_err();
        assert!(matches!(e, HomeError::NotEmpty { .. }), "{e}");
        assert!(e.to_string().contains("--force"));
        Home::create(&dir, true).unwrap();
        let file = t.path().join("file");
        fs::write(&file, b"").unwrap();
        assert!(matches!(
            Home::create(&file, true),
            Err(HomeError::NotADirectory { .. })
        ));
    }

    #[test]
    fn open_refuses_loose_missing_and_files() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("home");
        Home::create(&dir, false).unwrap();
        for m in [0o750, 0o705, 0o701, 0o777] {
            fs::set_permissions(&dir, Permissions::from_mode(m)).unwrap();
            let e = Home::open(&dir).unwrap_err();
            match &e {
                HomeError::LoosePermissions { mode, .. } => assert_eq!(*mode, m),
                other => panic!("unexpected {other}"),
            }
            assert!(e.to_string().contains("chmod 700"));
        }
        fs::set_permissions(&dir, Permissions::from_mode(0o700)).unwrap();
        Home::open(&dir).unwrap();
        let e = Home::open(&t.path().join("missing")).unwrap_err();
        assert!(matches!(e, HomeError::NotFound { .. }));
        assert!(e.to_string().contains("liaison init"));
        let file = t.path().join("file");
        fs::write(&file, b"").unwrap();
        assert!(matches!(
            Home::open(&file),
            Err(HomeError::NotADirectory { .. })
        ));
    }

    #[test]
    fn open_refuses_a_home_owned_by_someone_else() {
        let (path, _t) = if nix::unistd::geteuid().is_root() {
            // root can make a directory belong to someone else
            let t = tempfile::tempdir().unwrap();
            let dir = t.path().join("home");
            Home::create(&dir, false).unwrap();
            std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
            (dir, Some(t))
        } else {
            // `/` belongs to root
            (PathBuf::from("/"), None)
        };
        let e = Home::open(&path).unwrap_err();
        assert!(matches!(e, HomeError::WrongOwner { .. }), "{e}");
        assert!(matches!(
            Home::create(&path, true),
            Err(HomeError::WrongOwner { .. })
        ));
    }

    #[test]
    fn lock_is_exclusive_and_released_on_drop() {
        let t = tempfile::tempdir().unwrap();
        let h = Home::create(&t.path().join("home"), false).unwrap();
        let l = h.lock().unwrap();
        assert_eq!(mode(l.path()), 0o600);
        let e = h.lock().unwrap_err();
        match &e {
            HomeError::Locked { pid, .. } => assert_eq!(*pid, Some(std::process::id())),
            other => panic!("unexpected {other}"),
        }
        assert!(e.to_string().contains("another liaison process"));
        drop(l);
        let l2 = h.lock().unwrap();
        drop(l2);
    }

    /// Runs one test of this binary in a child process with `env` set.
    fn spawn_child_test(name: &str, env: (&str, &OsStr)) -> std::process::Child {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env(env.0, env.1)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Child half of `lock_of_a_dead_process_is_taken_over`: takes the lock and sleeps.
    #[test]
    fn child_holds_lock() {
        let Some(dir) = std::env::var_os("LIAISON_TEST_LOCK_HOME") else {
            return;
        };
        let _lock = Home::open(Path::new(&dir)).unwrap().lock().unwrap();
        std::thread::sleep(std::time::Duration::from_secs(30));
    }

    #[test]
    fn lock_of_a_dead_process_is_taken_over() {
        let t = tempfile::tempdir().unwrap();
        let h = Home::create(&t.path().join("home"), false).unwrap();
        let mut child = spawn_child_test(
            "home::tests::child_holds_lock",
            ("LIAISON_TEST_LOCK_HOME", h.dir().as_os_str()),
        );
        // wait (bounded) until the child holds the lock
        let mut seen = None;
        for _ in 0..500 {
            // the holder writes its pid just after locking: wait for both
            if let Err(HomeError::Locked { pid: Some(pid), .. }) = h.lock() {
                seen = Some(pid);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(seen, Some(child.id()), "child never took the lock");
        // the dead holder's lock is free: taken over at once
        let l = h.lock().unwrap();
        drop(l);
    }

    #[test]
    fn default_home_rules() {
        let p = |x: Option<&str>, h: Option<&str>| {
            default_home_from(x.map(OsStr::new), h.map(OsStr::new))
        };
        assert_eq!(
            p(Some("/x/data"), Some("/home/u")),
            Some(PathBuf::from("/x/data/liaison"))
        );
        assert_eq!(
            p(None, Some("/home/u")),
            Some(PathBuf::from("/home/u/.local/share/liaison"))
        );
        assert_eq!(
            p(Some("relative"), Some("/home/u")),
            Some(PathBuf::from("/home/u/.local/share/liaison"))
        );
        assert_eq!(p(Some(""), None), None);
        assert_eq!(p(None, Some("rel")), None);
    }

    /// Child half of `harden_process_works` (hardening is process-wide, so it runs in a child
    /// process to leave the other tests alone).
    #[test]
    fn child_hardens() {
        if std::env::var_os("LIAISON_TEST_HARDEN").is_none() {
            return;
        }
        harden_process().unwrap();
        let (soft, hard) = nix::sys::resource::getrlimit(Resource::RLIMIT_CORE).unwrap();
        assert_eq!((soft, hard), (0, 0));
        assert!(!nix::sys::prctl::get_dumpable().unwrap());
    }

    #[test]
    fn harden_process_works() {
        let mut child = spawn_child_test(
            "home::tests::child_hardens",
            ("LIAISON_TEST_HARDEN", OsStr::new("1")),
        );
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > std::time::Duration::from_secs(30) {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!("hardening child did not finish");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert!(status.success());
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert!(
            out.contains("child_hardens ... ok"),
            "child did not run: {out}"
        );
    }
}
