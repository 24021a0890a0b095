//! Damage checks of the home's database before SQLite opens it.
//!
//! SQLite is silent about two kinds of damage that matter here: a write-ahead log whose
//! frames are corrupt (it ignores every frame from the first bad one, so committed
//! transactions vanish without an error: a contact, a receipt), and a database file cut
//! short or replaced by an empty one (an empty file opens as a new, empty database). These
//! checks look at the files themselves, by the published file format
//! (<https://www.sqlite.org/fileformat2.html>, §1.3 and §4), read-only and bounded; `PRAGMA
//! quick_check` then covers the pages (see [`crate::store::open`]).
//!
//! WAL rules: the 32-byte header must carry the magic, version 3007000, a power-of-two page
//! size and a valid checksum. Frames are read in order while their salts match the header
//! and their cumulative checksums verify (what SQLite itself replays). The first frame that
//! fails is damage if its salts match (it belongs to the current log) and a later frame with
//! matching salts closes a transaction: that transaction was committed, and SQLite would drop
//! it. A failing frame with stale salts, or a torn tail after the last commit, is what a crash
//! leaves and is not damage.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Stores this process has opened with SQLite. Their files are not read again by the checks
/// here: closing any descriptor of a database file drops every POSIX lock the process holds
/// on it, so another process could then checkpoint and delete the write-ahead log under the
/// open connection (and its later commits would be lost to every other reader).
static IN_USE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn key(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Records that this process opens the store at `path` with SQLite (see [`IN_USE`]).
pub(crate) fn note_open(path: &Path) {
    let k = key(path);
    if let Ok(mut v) = IN_USE.lock()
        && !v.contains(&k)
    {
        v.push(k);
    }
}

/// Whether this process has the store at `path` open: its files were checked then, and are
/// not read again.
pub fn in_use(path: &Path) -> bool {
    let k = key(path);
    IN_USE.lock().map(|v| v.contains(&k)).unwrap_or(true)
}

/// What is wrong with a store's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// The database file is not an SQLite database (overwritten, or emptied).
    NotADatabase(String),
    /// The database file is shorter than its header says (cut short).
    Truncated {
        /// Bytes the header calls for.
        expected: u64,
        /// Bytes there are.
        actual: u64,
    },
    /// The write-ahead log's header is not valid: every transaction in it would be lost.
    WalHeader(String),
    /// A committed transaction in the write-ahead log is corrupt: it and every later one
    /// would be lost.
    WalFrame {
        /// Index of the first bad frame.
        frame: u64,
        /// Valid frames before it.
        valid: u64,
    },
    /// SQLite's own check of the pages failed.
    Pages(String),
    /// The file is not this home's store, or holds no store.
    NotAStore(String),
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::NotADatabase(why) => write!(f, "it is not an SQLite database ({why})"),
            Damage::Truncated { expected, actual } => write!(
                f,
                "it is cut short ({actual} bytes of the {expected} its header calls for)"
            ),
            Damage::WalHeader(why) => write!(
                f,
                "its write-ahead log (-wal) has a damaged header ({why}); the transactions in it \
                 would be lost"
            ),
            Damage::WalFrame { frame, valid } => write!(
                f,
                "its write-ahead log (-wal) is damaged at frame {frame} ({valid} frames before \
                 it are intact); committed transactions after it would be lost"
            ),
            Damage::Pages(why) => write!(f, "SQLite's integrity check failed ({why})"),
            Damage::NotAStore(why) => write!(f, "{why}"),
        }
    }
}

impl Damage {
    /// Whether `liaison repair --accept-loss` can bring the store back (by cutting the
    /// write-ahead log to its intact part), as opposed to a restore from a backup.
    pub fn repairable(&self) -> bool {
        matches!(self, Damage::WalHeader(_) | Damage::WalFrame { .. })
    }
}

const DB_MAGIC: &[u8; 16] = b"SQLite format 3\0";
const WAL_MAGIC_LE: u32 = 0x377f_0682;
const WAL_MAGIC_BE: u32 = 0x377f_0683;
const WAL_VERSION: u32 = 3_007_000;
const WAL_HEADER: u64 = 32;
const FRAME_HEADER: u64 = 24;
/// Largest page SQLite makes.
const MAX_PAGE: u32 = 65_536;

/// The `-wal` file beside a database.
pub fn wal_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    PathBuf::from(p)
}

/// Checks the database file's header and, when no write-ahead log holds committed frames
/// (a log can hold pages past the file's end while a checkpoint is under way), its length.
pub fn check_db_file(path: &Path) -> Result<(), Damage> {
    if in_use(path) {
        return Ok(());
    }
    let wal_holds_pages = std::fs::metadata(wal_path(path)).is_ok_and(|m| m.len() > WAL_HEADER);
    check_db_file_with(path, wal_holds_pages)
}

fn check_db_file_with(path: &Path, wal_holds_pages: bool) -> Result<(), Damage> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| Damage::NotADatabase(format!("cannot read it: {e}")))?;
    let len = f
        .metadata()
        .map_err(|e| Damage::NotADatabase(format!("cannot read it: {e}")))?
        .len();
    let mut h = [0u8; 100];
    if len < 100 || f.read_exact(&mut h).is_err() {
        return Err(Damage::NotADatabase(format!(
            "{len} bytes, not even a database header"
        )));
    }
    if &h[..16] != DB_MAGIC {
        return Err(Damage::NotADatabase("no SQLite header".into()));
    }
    let page = match u16::from_be_bytes([h[16], h[17]]) {
        1 => 65_536u64,
        p if p >= 512 && p.is_power_of_two() => u64::from(p),
        p => return Err(Damage::NotADatabase(format!("page size {p}"))),
    };
    // the in-header page count is valid when the change counter matches version-valid-for
    let pages = u32::from_be_bytes([h[28], h[29], h[30], h[31]]);
    let changes = &h[24..28];
    let valid_for = &h[92..96];
    if pages > 0 && changes == valid_for && !wal_holds_pages {
        let expected = u64::from(pages) * page;
        if len < expected {
            return Err(Damage::Truncated {
                expected,
                actual: len,
            });
        }
    }
    Ok(())
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        w.copy_from_slice(s);
    }
    u32::from_be_bytes(w)
}

/// SQLite's WAL checksum over `data` (a multiple of 8 bytes), continuing from `s`.
fn checksum(big_endian: bool, data: &[u8], mut s: (u32, u32)) -> (u32, u32) {
    for pair in data.chunks_exact(8) {
        let word = |i: usize| {
            let mut w = [0u8; 4];
            if let Some(b) = pair.get(i..i + 4) {
                w.copy_from_slice(b);
            }
            if big_endian {
                u32::from_be_bytes(w)
            } else {
                u32::from_le_bytes(w)
            }
        };
        s.0 = s.0.wrapping_add(word(0)).wrapping_add(s.1);
        s.1 = s.1.wrapping_add(word(4)).wrapping_add(s.0);
    }
    s
}

/// What a WAL holds, as SQLite would replay it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WalReport {
    /// Frames with valid checksums, from the start.
    pub valid_frames: u64,
    /// Of those, the frames up to and including the last commit (what SQLite replays).
    pub committed_frames: u64,
    /// Bytes of the log SQLite replays (header and committed frames); the rest is ignored.
    pub committed_len: u64,
}

/// Checks the write-ahead log beside `db`, if there is one.
pub fn check_wal(db: &Path) -> Result<WalReport, Damage> {
    if in_use(db) {
        return Ok(WalReport::default());
    }
    match scan_wal(db)? {
        (_, Some(damage)) => Err(damage),
        (report, None) => Ok(report),
    }
}

/// Reads the log beside `db`: what SQLite replays, and the damage to a frame if any (the
/// report then covers the intact part before it). A damaged header is the error.
fn scan_wal(db: &Path) -> Result<(WalReport, Option<Damage>), Damage> {
    let path = wal_path(db);
    let mut f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((WalReport::default(), None));
        }
        Err(e) => return Err(Damage::WalHeader(format!("cannot read it: {e}"))),
    };
    let len = f
        .metadata()
        .map_err(|e| Damage::WalHeader(format!("cannot read it: {e}")))?
        .len();
    if len == 0 {
        return Ok((WalReport::default(), None));
    }
    let mut h = [0u8; WAL_HEADER as usize];
    if len < WAL_HEADER || f.read_exact(&mut h).is_err() {
        return Err(Damage::WalHeader(format!("{len} bytes")));
    }
    let big_endian = match be32(&h, 0) {
        WAL_MAGIC_BE => true,
        WAL_MAGIC_LE => false,
        _ => return Err(Damage::WalHeader("no WAL magic".into())),
    };
    if be32(&h, 4) != WAL_VERSION {
        return Err(Damage::WalHeader(format!("version {}", be32(&h, 4))));
    }
    let page = be32(&h, 8);
    if !(512..=MAX_PAGE).contains(&page) || !page.is_power_of_two() {
        return Err(Damage::WalHeader(format!("page size {page}")));
    }
    let mut sum = checksum(big_endian, &h[..24], (0, 0));
    if sum != (be32(&h, 24), be32(&h, 28)) {
        return Err(Damage::WalHeader("header checksum".into()));
    }
    let salts = (be32(&h, 16), be32(&h, 20));
    let frame_len = FRAME_HEADER + u64::from(page);
    let frames = (len - WAL_HEADER) / frame_len;
    let mut buf = vec![0u8; usize::try_from(frame_len).unwrap_or(usize::MAX)];
    let mut report = WalReport {
        committed_len: WAL_HEADER,
        ..WalReport::default()
    };
    let mut bad: Option<u64> = None;
    for i in 0..frames {
        if f.read_exact(&mut buf).is_err() {
            break;
        }
        let ours = (be32(&buf, 8), be32(&buf, 12)) == salts;
        let commit = be32(&buf, 4) != 0;
        match bad {
            None => {
                let next = checksum(big_endian, buf.get(..8).unwrap_or_default(), sum);
                let next = checksum(
                    big_endian,
                    buf.get(FRAME_HEADER as usize..).unwrap_or_default(),
                    next,
                );
                if !ours {
                    // stale frames of an earlier log: SQLite stops here, nothing is lost
                    break;
                }
                if next != (be32(&buf, 16), be32(&buf, 20)) || be32(&buf, 0) == 0 {
                    bad = Some(i);
                    continue;
                }
                sum = next;
                report.valid_frames = i + 1;
                if commit {
                    report.committed_frames = i + 1;
                    report.committed_len = WAL_HEADER + (i + 1) * frame_len;
                }
            }
            Some(first) => {
                if ours && commit {
                    let damage = Damage::WalFrame {
                        frame: first,
                        valid: report.valid_frames,
                    };
                    return Ok((report, Some(damage)));
                }
            }
        }
    }
    Ok((report, None))
}

/// Both file checks of the store at `db`.
pub fn check_files(db: &Path) -> Result<(), Damage> {
    if in_use(db) {
        return Ok(());
    }
    // a damaged log is reported first: it is what a repair can address
    let wal = check_wal(db)?;
    check_db_file_with(db, wal.committed_frames > 0)
}

/// `PRAGMA quick_check` on an open connection.
pub fn quick_check(conn: &rusqlite::Connection) -> Result<(), Damage> {
    let mut st = conn
        .prepare("PRAGMA quick_check(8)")
        .map_err(|e| Damage::Pages(e.to_string()))?;
    let rows: Vec<String> = st
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| Damage::Pages(e.to_string()))?;
    if rows.len() == 1 && rows.first().is_some_and(|r| r == "ok") {
        Ok(())
    } else {
        Err(Damage::Pages(rows.join("; ")))
    }
}

/// Cuts a damaged write-ahead log back to what SQLite replays (its intact committed
/// frames), keeping the whole original beside it as `-wal.damaged-UNIXTIME`. A log with a
/// bad header is moved aside whole. Returns the path of the copy kept.
pub fn cut_wal(db: &Path, now_unix: u64) -> std::io::Result<PathBuf> {
    let wal = wal_path(db);
    let mut keep = wal.as_os_str().to_owned();
    keep.push(format!(".damaged-{now_unix}"));
    let keep = PathBuf::from(keep);
    let committed = scan_wal(db).ok().map(|(r, _)| r.committed_len);
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut from = std::fs::File::open(&wal)?;
        let mut to = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&keep)?;
        std::io::copy(&mut from, &mut to)?;
        to.sync_all()?;
    }
    match committed {
        Some(n) if n > WAL_HEADER => {
            let f = std::fs::OpenOptions::new().write(true).open(&wal)?;
            f.set_len(n)?;
            f.sync_all()?;
        }
        _ => std::fs::remove_file(&wal)?,
    }
    Ok(keep)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    /// A database in WAL mode with `n` committed inserts still in its log, as a crash leaves
    /// it: both files copied while the writer was open (a clean close checkpoints and deletes
    /// the log), then put back. Returns the path and the log's bytes.
    fn db_with_wal(dir: &Path, n: usize) -> (PathBuf, Vec<u8>) {
        let db = dir.join("t.db");
        let c = Connection::open(&db).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        c.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
            .unwrap();
        for i in 0..n {
            c.execute(
                "INSERT INTO t (k, v) VALUES (?1, ?2)",
                (i as i64, vec![7u8; 300]),
            )
            .unwrap();
        }
        let wal = std::fs::read(wal_path(&db)).unwrap();
        let main = std::fs::read(&db).unwrap();
        drop(c);
        std::fs::write(&db, main).unwrap();
        std::fs::write(wal_path(&db), &wal).unwrap();
        let _ = std::fs::remove_file(dir.join("t.db-shm"));
        (db, wal)
    }

    /// Indexes of the commit frames in a log.
    fn commits(wal: &[u8]) -> Vec<usize> {
        let frame = (FRAME_HEADER + u64::from(be32(wal, 8))) as usize;
        (0..(wal.len() - 32) / frame)
            .filter(|i| be32(wal, 32 + i * frame + 4) != 0)
            .collect()
    }

    fn rows(db: &Path) -> i64 {
        let c = Connection::open(db).unwrap();
        c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn an_intact_log_checks_and_replays() {
        let dir = tempfile::tempdir().unwrap();
        let (db, wal) = db_with_wal(dir.path(), 5);
        let r = check_wal(&db).unwrap();
        assert!(r.committed_frames >= 6, "{r:?}");
        assert_eq!(r.valid_frames, r.committed_frames);
        assert_eq!(r.committed_len, wal.len() as u64);
        check_db_file(&db).unwrap();
        assert_eq!(rows(&db), 5);
    }

    #[test]
    fn a_garbage_header_or_frame_is_damage_and_a_torn_tail_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (db, wal) = db_with_wal(dir.path(), 5);
        let page = u64::from(be32(&wal, 8));
        let frame = (FRAME_HEADER + page) as usize;

        let mut g = wal.clone();
        g[..32].copy_from_slice(&[0xa5; 32]);
        std::fs::write(wal_path(&db), &g).unwrap();
        assert!(matches!(check_wal(&db), Err(Damage::WalHeader(_))));

        // garbage in the page of an early frame: later commits would be dropped
        let mut g = wal.clone();
        let at = 32 + frame + 24 + 100;
        g[at..at + 16].copy_from_slice(&[0x5a; 16]);
        std::fs::write(wal_path(&db), &g).unwrap();
        match check_wal(&db) {
            Err(Damage::WalFrame { frame, valid }) => assert_eq!((frame, valid), (1, 1)),
            other => panic!("{other:?}"),
        }

        // a tail cut inside the last frame (a crash mid-write): not damage
        std::fs::write(wal_path(&db), &wal[..wal.len() - 100]).unwrap();
        let r = check_wal(&db).unwrap();
        assert!(r.committed_len < wal.len() as u64);

        // garbage appended after the log: ignored by SQLite, not damage
        let mut g = wal.clone();
        g.extend_from_slice(&vec![0x33; frame * 2]);
        std::fs::write(wal_path(&db), &g).unwrap();
        assert_eq!(check_wal(&db).unwrap().committed_len, wal.len() as u64);
    }

    #[test]
    fn cutting_a_damaged_log_keeps_its_intact_commits_and_a_copy() {
        let dir = tempfile::tempdir().unwrap();
        let (db, wal) = db_with_wal(dir.path(), 5);
        let page = u64::from(be32(&wal, 8));
        let frame = (FRAME_HEADER + page) as usize;
        // one commit for the table, one per insert; damage the frame closing the 4th insert
        let c = commits(&wal);
        assert_eq!(c.len(), 6, "{c:?}");
        let mut g = wal.clone();
        let at = 32 + c[4] * frame + 24 + 50;
        g[at..at + 8].copy_from_slice(&[0x11; 8]);
        std::fs::write(wal_path(&db), &g).unwrap();
        assert_eq!(
            check_wal(&db),
            Err(Damage::WalFrame {
                frame: c[4] as u64,
                valid: c[4] as u64
            })
        );
        let kept = cut_wal(&db, 1_800_000_000).unwrap();
        assert_eq!(std::fs::read(&kept).unwrap(), g, "the original is kept");
        assert_eq!(
            check_wal(&db).unwrap().committed_len,
            (32 + (c[3] + 1) * frame) as u64
        );
        assert_eq!(rows(&db), 3, "the commits before the damage are kept");
    }

    #[test]
    fn an_emptied_or_cut_database_file_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = db_with_wal(dir.path(), 200);
        // every page in the file itself: out of WAL mode, the log checkpointed and gone
        let c = Connection::open(&db).unwrap();
        c.pragma_update(None, "journal_mode", "DELETE").unwrap();
        drop(c);
        assert!(!wal_path(&db).exists());
        check_db_file(&db).unwrap();
        let bytes = std::fs::read(&db).unwrap();
        std::fs::write(&db, &bytes[..bytes.len() / 2]).unwrap();
        assert!(matches!(check_db_file(&db), Err(Damage::Truncated { .. })));
        std::fs::write(&db, b"").unwrap();
        assert!(matches!(check_db_file(&db), Err(Damage::NotADatabase(_))));
    }
}
