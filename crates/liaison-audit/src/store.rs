//! The SQLite store: all lines of a home in its one database (WAL, `synchronous=FULL`; the
//! node keeps its messages in the same file, in tables of its own), keyed by channel id.
//!
//! * [`LineAudit`] (`Line<SqliteStorage>`) is the writer a node opens per line with its keys;
//!   opening rebuilds the tree from the stored leaves, refuses a store that no longer
//!   reproduces its own last signed checkpoint, and signs a checkpoint for entries stored
//!   after it (a crash between commit and signature), so recovery never looks like truncation;
//! * [`AuditReader`] opens the database read-only, needs no keys, and serves
//!   `audit show`, `audit verify` and `audit export`.
//!
//! Tables (`line` is the integer id of the line's row in `audit_lines`, which maps the 32-byte
//! channel id; integers are SQLite INTEGER, keys and hashes BLOB, notes TEXT):
//!
//! | table                | contents                                                              |
//! |----------------------|-----------------------------------------------------------------------|
//! | `audit_lines`        | id, channel, own key binding, peer identity, peer binding (once seen), |
//! |                      | receipted_upto, created_ms                                            |
//! | `audit_entries`      | line, idx, kind, time_ms, seq, commitment, leaf                       |
//! | `audit_checkpoints`  | line, size, signed note, signed_ms — own checkpoints                  |
//! | `audit_cosignatures` | line, size, timestamp, signature — peer cosignatures of them          |
//! | `audit_witnessed`    | line, size, note, from_size, proof, our cosignature — the witness     |
//! |                      | state for the peer is the row with the largest size                   |
//! | `audit_evidence`     | line, held note, offered note, detected_ms — fork evidence            |
//! | `audit_receipts`     | line, seq, leaf_index, checkpoint note, leaf, proof                   |

use std::io::Write;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use crate::Hash;
use crate::bundle::{
    Bundle, BundleCheckpoint, BundleCosignature, BundleMeta, BundleWriter, Evidence,
    WitnessedCheckpoint, range_parts,
};
use crate::check::{CheckError, CheckReport, check};
use crate::checkpoint::SignedCheckpoint;
use crate::cosig::Cosignature;
use crate::entry::{Entry, Event, MAX_LEAF_LEN};
use crate::keys::{KEY_BINDING_LEN, KeyBinding, LocalKeys, channel_id, parse_public_key};
use crate::line::{Line, LineError, LineStorage};
use crate::log::{AcceptedCosignature, AuditLog, LogError, PendingEntry, RestoredLog};
use crate::merkle::{MAX_PROOF_HASHES, MerkleTree, leaf_hash};
use crate::receipt::Receipt;
use crate::witness::{Witness, WitnessAccept};

/// Schema version stored in `audit_meta`.
pub const SCHEMA_VERSION: i64 = 1;

/// Storage failures.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Writing an export failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Stored data does not decode or verify.
    #[error("corrupt audit store: {0}")]
    Corrupt(String),
    /// The witness state changed between decision and write.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The line was created with other audit keys or another peer.
    #[error("key mismatch: {0}")]
    KeyMismatch(String),
    /// No such line in the store.
    #[error("no audit log for this line")]
    UnknownLine,
    /// The database holds no audit log at all (no line has run yet).
    #[error("no audit log yet: it starts with the first line this node runs")]
    NoLog,
    /// Restoring the log failed.
    #[error("{0}")]
    Log(#[from] LogError),
}

fn to_i64(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("value {v} out of range")))
}

fn to_u64(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative value {v}")))
}

fn proof_blob(p: &[Hash]) -> Vec<u8> {
    p.iter().flat_map(|h| h.iter().copied()).collect()
}

fn proof_from_blob(b: &[u8]) -> Result<Vec<Hash>, StoreError> {
    if !b.len().is_multiple_of(32) || b.len() / 32 > MAX_PROOF_HASHES {
        return Err(StoreError::Corrupt("proof blob".into()));
    }
    Ok(b.chunks_exact(32)
        .filter_map(|c| <Hash>::try_from(c).ok())
        .collect())
}

fn parse_note(s: &str) -> Result<SignedCheckpoint, StoreError> {
    SignedCheckpoint::parse(s.as_bytes())
        .map_err(|e| StoreError::Corrupt(format!("stored checkpoint: {e}")))
}

fn binding_from_blob(b: &[u8]) -> Result<KeyBinding, StoreError> {
    let arr: &[u8; KEY_BINDING_LEN] = b
        .try_into()
        .map_err(|_| StoreError::Corrupt("binding".into()))?;
    KeyBinding::from_bytes(arr).map_err(|e| StoreError::Corrupt(format!("binding: {e}")))
}

fn sig_from_blob(b: &[u8]) -> Result<ed25519_dalek::Signature, StoreError> {
    let arr: &[u8; 64] = b
        .try_into()
        .map_err(|_| StoreError::Corrupt("signature".into()))?;
    Ok(ed25519_dalek::Signature::from_bytes(arr))
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS audit_lines (
    id INTEGER PRIMARY KEY,
    channel BLOB NOT NULL UNIQUE,
    local_binding BLOB NOT NULL,
    peer_identity BLOB NOT NULL,
    peer_binding BLOB,
    receipted_upto INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_entries (
    line INTEGER NOT NULL REFERENCES audit_lines (id),
    idx INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    seq INTEGER,
    commitment BLOB,
    leaf BLOB NOT NULL,
    PRIMARY KEY (line, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS audit_entries_msg ON audit_entries (line, kind, seq);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    line INTEGER NOT NULL REFERENCES audit_lines (id),
    size INTEGER NOT NULL,
    note TEXT NOT NULL,
    signed_ms INTEGER NOT NULL,
    PRIMARY KEY (line, size)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_cosignatures (
    line INTEGER NOT NULL REFERENCES audit_lines (id),
    size INTEGER NOT NULL,
    timestamp INTEGER NOT NULL,
    signature BLOB NOT NULL,
    PRIMARY KEY (line, size)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_witnessed (
    line INTEGER NOT NULL REFERENCES audit_lines (id),
    size INTEGER NOT NULL,
    note TEXT NOT NULL,
    from_size INTEGER NOT NULL,
    proof BLOB NOT NULL,
    cosig_timestamp INTEGER NOT NULL,
    cosig BLOB NOT NULL,
    PRIMARY KEY (line, size)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_evidence (
    id INTEGER PRIMARY KEY,
    line INTEGER NOT NULL REFERENCES audit_lines (id),
    held TEXT NOT NULL,
    offered TEXT NOT NULL,
    detected_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_receipts (
    line INTEGER NOT NULL REFERENCES audit_lines (id),
    seq INTEGER NOT NULL,
    leaf_index INTEGER NOT NULL,
    checkpoint TEXT NOT NULL,
    leaf BLOB NOT NULL,
    proof BLOB NOT NULL,
    PRIMARY KEY (line, seq)
) WITHOUT ROWID;
";

/// Makes `path` (an SQLite database, created empty if missing) and its `-wal` / `-shm`
/// files readable by the owner only. SQLite gives a new `-wal` and `-shm` the mode of the
/// database file, so creating that 0600 keeps every file of the store private; files left
/// wider by an older version are narrowed. Call before opening the database.
pub fn make_db_private(path: &Path) -> std::io::Result<()> {
    // Only paths, never a descriptor of an existing file: closing any descriptor of a
    // database file drops every POSIX lock this process holds on it, so a connection already
    // open here would lose its locks and another process could checkpoint and delete the
    // write-ahead log under it.
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // a new file: nobody holds it open yet
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let p = std::path::PathBuf::from(p);
        match std::fs::metadata(&p) {
            Ok(m) => {
                let mode = m.permissions().mode();
                if mode & 0o077 != 0 {
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & 0o700))?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Names of the audit tables, parents first (the order to copy them in).
pub const TABLES: [&str; 8] = [
    "audit_meta",
    "audit_lines",
    "audit_entries",
    "audit_checkpoints",
    "audit_cosignatures",
    "audit_witnessed",
    "audit_evidence",
    "audit_receipts",
];

/// Moves the logs of a separate audit database (`legacy`, as homes kept them before the audit
/// log moved into the node's database) into the database `conn` is open on, in one
/// transaction, then deletes `legacy` and its `-wal`/`-shm` files. Refuses when `conn`'s
/// database already holds audit lines (two logs of one home: the user must choose).
/// Returns whether anything was moved.
pub fn merge_legacy(conn: &Connection, legacy: &Path) -> Result<bool, StoreError> {
    if !legacy.exists() {
        return Ok(false);
    }
    conn.execute_batch(SCHEMA)?;
    let merged: Option<i64> = conn
        .query_row(
            "SELECT value FROM audit_meta WHERE key = 'merged_legacy'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let held: i64 = conn.query_row("SELECT COUNT(*) FROM audit_lines", [], |r| r.get(0))?;
    if merged.is_some() {
        // moved before, and the process stopped before it deleted the old file
        remove_db_files(legacy)?;
        return Ok(false);
    }
    if held > 0 {
        return Err(StoreError::Corrupt(format!(
            "both this database and {} hold audit logs: move one of them out of the home",
            legacy.display()
        )));
    }
    let name = legacy
        .to_str()
        .ok_or_else(|| StoreError::Corrupt("the legacy audit path is not UTF-8".into()))?;
    conn.execute("ATTACH DATABASE ?1 AS legacy", params![name])?;
    let moved = (|| -> Result<(), StoreError> {
        let v: Option<i64> = conn
            .query_row(
                "SELECT value FROM legacy.audit_meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if v != Some(SCHEMA_VERSION) {
            return Err(StoreError::Corrupt(format!(
                "{} has audit schema {v:?}, this build reads {SCHEMA_VERSION}",
                legacy.display()
            )));
        }
        conn.execute_batch("BEGIN IMMEDIATE")?;
        for t in TABLES {
            if let Err(e) = conn.execute_batch(&format!(
                "INSERT OR REPLACE INTO main.{t} SELECT * FROM legacy.{t}"
            )) {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e.into());
            }
        }
        if let Err(e) = conn.execute(
            "INSERT OR REPLACE INTO main.audit_meta (key, value) VALUES ('merged_legacy', 1)",
            [],
        ) {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e.into());
        }
        conn.execute_batch("COMMIT")?;
        Ok(())
    })();
    let _ = conn.execute_batch("DETACH DATABASE legacy");
    moved?;
    remove_db_files(legacy)?;
    Ok(true)
}

fn remove_db_files(path: &Path) -> Result<(), StoreError> {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::remove_file(std::path::PathBuf::from(p)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn open_rw(path: &Path) -> Result<Connection, StoreError> {
    make_db_private(path)?;
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt(format!(
            "cannot enable WAL (journal mode {mode})"
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(SCHEMA)?;
    conn.execute(
        "INSERT INTO audit_meta (key, value) VALUES ('schema_version', ?1) ON CONFLICT(key) DO NOTHING",
        params![SCHEMA_VERSION],
    )?;
    let v: i64 = conn.query_row(
        "SELECT value FROM audit_meta WHERE key = 'schema_version'",
        [],
        |r| r.get(0),
    )?;
    if v != SCHEMA_VERSION {
        return Err(StoreError::Corrupt(format!("unknown schema version {v}")));
    }
    Ok(conn)
}

fn insert_entries(
    tx: &rusqlite::Transaction<'_>,
    line: i64,
    entries: &[PendingEntry],
) -> Result<(), StoreError> {
    let mut st = tx.prepare_cached(
        "INSERT INTO audit_entries (line, idx, kind, time_ms, seq, commitment, leaf) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for p in entries {
        let (seq, commitment) = match &p.entry.event {
            Event::MsgSent {
                seq, commitment, ..
            }
            | Event::MsgReceived {
                seq, commitment, ..
            } => (Some(to_i64(*seq)?), Some(commitment.to_vec())),
            Event::MsgAcked { seq } => (Some(to_i64(*seq)?), None),
            _ => (None, None),
        };
        st.execute(params![
            line,
            to_i64(p.entry.index)?,
            i64::from(p.entry.event.kind_code()),
            to_i64(p.entry.time_ms)?,
            seq,
            commitment,
            p.leaf,
        ])?;
    }
    Ok(())
}

/// SQLite storage of one line.
#[derive(Debug)]
pub struct SqliteStorage {
    conn: Connection,
    line: i64,
}

impl LineStorage for SqliteStorage {
    fn store_entries(&mut self, entries: &[PendingEntry]) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        insert_entries(&tx, self.line, entries)?;
        tx.commit()?;
        Ok(())
    }

    fn store_checkpoint(&mut self, cp: &SignedCheckpoint, now_ms: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO audit_checkpoints (line, size, note, signed_ms) VALUES (?1, ?2, ?3, ?4)",
            params![self.line, to_i64(cp.size())?, cp.to_note(), to_i64(now_ms)?],
        )?;
        Ok(())
    }

    fn store_witness(
        &mut self,
        accept: &WitnessAccept,
        entries: &[PendingEntry],
    ) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: i64 = tx.query_row(
            "SELECT COALESCE(MAX(size), 0) FROM audit_witnessed WHERE line = ?1",
            params![self.line],
            |r| r.get(0),
        )?;
        if to_u64(current)? != accept.prior_size {
            return Err(StoreError::Conflict(format!(
                "stored witness state is {current}, the decision was based on {}",
                accept.prior_size
            )));
        }
        tx.execute(
            "INSERT INTO audit_witnessed (line, size, note, from_size, proof, cosig_timestamp, cosig)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                self.line,
                to_i64(accept.checkpoint.size())?,
                accept.checkpoint.to_note(),
                to_i64(accept.from_size)?,
                proof_blob(&accept.proof),
                to_i64(accept.cosignature.timestamp)?,
                accept.cosignature.signature.to_bytes().to_vec(),
            ],
        )?;
        tx.execute(
            "UPDATE audit_lines SET peer_binding = ?2 WHERE id = ?1 AND peer_binding IS NULL",
            params![self.line, accept.binding.to_bytes().to_vec()],
        )?;
        insert_entries(&tx, self.line, entries)?;
        tx.commit()?;
        Ok(())
    }

    fn store_cosignature(&mut self, acc: &AcceptedCosignature) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT OR REPLACE INTO audit_cosignatures (line, size, timestamp, signature) VALUES (?1, ?2, ?3, ?4)",
            params![
                self.line,
                to_i64(acc.size)?,
                to_i64(acc.cosignature.timestamp)?,
                acc.cosignature.signature.to_bytes().to_vec(),
            ],
        )?;
        tx.execute(
            "UPDATE audit_lines SET peer_binding = ?2 WHERE id = ?1 AND peer_binding IS NULL",
            params![self.line, acc.binding.to_bytes().to_vec()],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn store_receipt(&mut self, seq: u64, r: &Receipt) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO audit_receipts (line, seq, leaf_index, checkpoint, leaf, proof)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                self.line,
                to_i64(seq)?,
                to_i64(r.leaf_index)?,
                r.checkpoint.to_note(),
                r.leaf,
                proof_blob(&r.proof),
            ],
        )?;
        Ok(())
    }

    fn store_evidence(
        &mut self,
        held: &SignedCheckpoint,
        offered: &SignedCheckpoint,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO audit_evidence (line, held, offered, detected_ms) VALUES (?1, ?2, ?3, ?4)",
            params![
                self.line,
                held.to_note(),
                offered.to_note(),
                to_i64(now_ms)?
            ],
        )?;
        Ok(())
    }

    fn set_receipted_upto(&mut self, size: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE audit_lines SET receipted_upto = ?2 WHERE id = ?1",
            params![self.line, to_i64(size)?],
        )?;
        Ok(())
    }

    fn witnessed(&self, size: u64) -> Result<Option<SignedCheckpoint>, StoreError> {
        let note: Option<String> = self
            .conn
            .query_row(
                "SELECT note FROM audit_witnessed WHERE line = ?1 AND size = ?2",
                params![self.line, to_i64(size)?],
                |r| r.get(0),
            )
            .optional()?;
        note.map(|n| parse_note(&n)).transpose()
    }

    fn own_checkpoint(&self, size: u64) -> Result<Option<SignedCheckpoint>, StoreError> {
        let note: Option<String> = self
            .conn
            .query_row(
                "SELECT note FROM audit_checkpoints WHERE line = ?1 AND size = ?2",
                params![self.line, to_i64(size)?],
                |r| r.get(0),
            )
            .optional()?;
        note.map(|n| parse_note(&n)).transpose()
    }

    fn sent_commitment(&self, seq: u64) -> Result<Option<Hash>, StoreError> {
        let c: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT commitment FROM audit_entries WHERE line = ?1 AND kind = ?2 AND seq = ?3 ORDER BY idx LIMIT 1",
                params![self.line, 0x10i64, to_i64(seq)?],
                |r| r.get(0),
            )
            .optional()?;
        c.map(|c| {
            <Hash>::try_from(c.as_slice()).map_err(|_| StoreError::Corrupt("commitment".into()))
        })
        .transpose()
    }

    fn received_in(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT idx, leaf FROM audit_entries WHERE line = ?1 AND kind = ?2 AND idx >= ?3 AND idx < ?4 ORDER BY idx",
        )?;
        let rows = st.query_map(
            params![self.line, 0x12i64, to_i64(from)?, to_i64(to)?],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)),
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (i, leaf) = row?;
            out.push((to_u64(i)?, leaf));
        }
        Ok(out)
    }
}

/// A line's audit log in the SQLite store, driven by the node.
pub type LineAudit = Line<SqliteStorage>;

/// Everything stored for one line, as read back.
struct LineRow {
    id: i64,
    local_binding: KeyBinding,
    peer_identity: VerifyingKey,
    peer_binding: Option<KeyBinding>,
    receipted_upto: u64,
}

/// Raw `audit_lines` columns: id, local binding, peer identity, peer binding, receipted_upto.
type RawLineRow = (i64, Vec<u8>, Vec<u8>, Option<Vec<u8>>, i64);

fn read_line(conn: &Connection, channel: &Hash) -> Result<Option<LineRow>, StoreError> {
    let row: Option<RawLineRow> = conn
        .query_row(
            "SELECT id, local_binding, peer_identity, peer_binding, receipted_upto FROM audit_lines WHERE channel = ?1",
            params![channel.as_slice()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    let Some((id, lb, pi, pb, ru)) = row else {
        return Ok(None);
    };
    let pi: &[u8; 32] = pi
        .as_slice()
        .try_into()
        .map_err(|_| StoreError::Corrupt("peer identity".into()))?;
    Ok(Some(LineRow {
        id,
        local_binding: binding_from_blob(&lb)?,
        peer_identity: parse_public_key(pi)
            .map_err(|e| StoreError::Corrupt(format!("peer identity: {e}")))?,
        peer_binding: pb.map(|b| binding_from_blob(&b)).transpose()?,
        receipted_upto: to_u64(ru)?,
    }))
}

/// Reads every leaf of a line in order, checking indices, decoding and chaining.
fn read_leaf_hashes(conn: &Connection, line: i64) -> Result<Vec<Hash>, StoreError> {
    let mut st =
        conn.prepare("SELECT idx, leaf FROM audit_entries WHERE line = ?1 ORDER BY idx")?;
    let mut rows = st.query(params![line])?;
    let mut out = Vec::new();
    let mut prev = [0u8; 32];
    while let Some(row) = rows.next()? {
        let idx = to_u64(row.get::<_, i64>(0)?)?;
        let leaf: Vec<u8> = row.get(1)?;
        if idx != out.len() as u64 {
            return Err(StoreError::Corrupt(format!(
                "entry {} missing (found {idx})",
                out.len()
            )));
        }
        let e = Entry::from_leaf(&leaf)
            .map_err(|e| StoreError::Corrupt(format!("entry {idx}: {e}")))?;
        if e.index != idx || e.prev != prev {
            return Err(StoreError::Corrupt(format!("entry {idx} was altered")));
        }
        prev = leaf_hash(&leaf);
        out.push(prev);
    }
    Ok(out)
}

fn read_checkpoints(conn: &Connection, line: i64) -> Result<Vec<SignedCheckpoint>, StoreError> {
    let mut st =
        conn.prepare("SELECT note FROM audit_checkpoints WHERE line = ?1 ORDER BY size")?;
    let rows = st.query_map(params![line], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for n in rows {
        out.push(parse_note(&n?)?);
    }
    Ok(out)
}

fn read_witnessed(conn: &Connection, line: i64) -> Result<Vec<WitnessedCheckpoint>, StoreError> {
    let mut st = conn.prepare(
        "SELECT note, from_size, proof, cosig_timestamp, cosig FROM audit_witnessed WHERE line = ?1 ORDER BY size",
    )?;
    let rows = st.query_map(params![line], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, Vec<u8>>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, Vec<u8>>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (note, from, proof, ts, sig) = row?;
        out.push(WitnessedCheckpoint {
            checkpoint: parse_note(&note)?,
            from_size: to_u64(from)?,
            proof: proof_from_blob(&proof)?,
            cosignature: Cosignature {
                timestamp: to_u64(ts)?,
                signature: sig_from_blob(&sig)?,
            },
        });
    }
    Ok(out)
}

fn read_cosignatures(conn: &Connection, line: i64) -> Result<Vec<BundleCosignature>, StoreError> {
    let mut st = conn.prepare(
        "SELECT size, timestamp, signature FROM audit_cosignatures WHERE line = ?1 ORDER BY size",
    )?;
    let rows = st.query_map(params![line], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, Vec<u8>>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (size, ts, sig) = row?;
        out.push(BundleCosignature {
            size: to_u64(size)?,
            cosignature: Cosignature {
                timestamp: to_u64(ts)?,
                signature: sig_from_blob(&sig)?,
            },
        });
    }
    Ok(out)
}

fn read_evidence(conn: &Connection, line: i64) -> Result<Vec<Evidence>, StoreError> {
    let mut st = conn.prepare(
        "SELECT held, offered, detected_ms FROM audit_evidence WHERE line = ?1 ORDER BY id",
    )?;
    let rows = st.query_map(params![line], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (h, o, t) = row?;
        out.push(Evidence {
            held: parse_note(&h)?,
            offered: parse_note(&o)?,
            detected_ms: to_u64(t)?,
        });
    }
    Ok(out)
}

fn read_receipts(conn: &Connection, line: i64) -> Result<Vec<Receipt>, StoreError> {
    let mut st = conn.prepare(
        "SELECT leaf_index, checkpoint, leaf, proof FROM audit_receipts WHERE line = ?1 ORDER BY seq",
    )?;
    let rows = st.query_map(params![line], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Vec<u8>>(2)?,
            r.get::<_, Vec<u8>>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (i, note, leaf, proof) = row?;
        if leaf.len() > MAX_LEAF_LEN {
            return Err(StoreError::Corrupt("receipt leaf".into()));
        }
        out.push(Receipt {
            checkpoint: parse_note(&note)?,
            leaf_index: to_u64(i)?,
            leaf,
            proof: proof_from_blob(&proof)?,
        });
    }
    Ok(out)
}

impl Line<SqliteStorage> {
    /// Opens (creating if needed) the audit log of the line between `keys`' identity and
    /// `peer_identity` in the database at `path`, and recovers: a checkpoint is signed for any
    /// entries stored after the last one. Returns the line and, if such a recovery checkpoint
    /// was signed, the offer to send once the line is up.
    pub fn open(
        path: &Path,
        keys: LocalKeys,
        peer_identity: VerifyingKey,
        now_ms: u64,
    ) -> Result<(Self, Option<Vec<u8>>), LineError> {
        let conn = open_rw(path)?;
        let channel = channel_id(keys.identity(), &peer_identity);
        let row = match read_line(&conn, &channel)? {
            Some(row) => {
                if row.local_binding != *keys.binding() {
                    return Err(StoreError::KeyMismatch(
                        "this line's log was created with other audit keys".into(),
                    )
                    .into());
                }
                if row.peer_identity != peer_identity {
                    return Err(
                        StoreError::KeyMismatch("stored peer identity differs".into()).into(),
                    );
                }
                row
            }
            None => {
                conn.execute(
                    "INSERT INTO audit_lines (channel, local_binding, peer_identity, peer_binding, receipted_upto, created_ms)
                     VALUES (?1, ?2, ?3, NULL, 0, ?4)",
                    params![
                        channel.as_slice(),
                        keys.binding().to_bytes().to_vec(),
                        peer_identity.as_bytes().to_vec(),
                        to_i64(now_ms)?,
                    ],
                )
                .map_err(StoreError::from)?;
                LineRow {
                    id: conn.last_insert_rowid(),
                    local_binding: keys.binding().clone(),
                    peer_identity,
                    peer_binding: None,
                    receipted_upto: 0,
                }
            }
        };
        let line_id = row.id;
        let leaf_hashes = read_leaf_hashes(&conn, line_id)?;
        let checkpoints = read_checkpoints(&conn, line_id)?;
        let last_signed = checkpoints.last().cloned();
        let cosigned_size: Option<i64> = conn
            .query_row(
                "SELECT MAX(size) FROM audit_cosignatures WHERE line = ?1",
                params![line_id],
                |r| r.get(0),
            )
            .map_err(StoreError::from)?;
        let cosigned = match cosigned_size {
            Some(s) => {
                let s = to_u64(s)?;
                let cp = checkpoints.iter().find(|c| c.size() == s).ok_or_else(|| {
                    StoreError::Corrupt(format!("cosignature for unknown checkpoint {s}"))
                })?;
                Some((s, *cp.root()))
            }
            None => None,
        };
        let witnessed = read_witnessed(&conn, line_id)?;
        let log = AuditLog::restore(
            keys,
            peer_identity,
            RestoredLog {
                leaf_hashes,
                last_signed,
                signed_sizes: checkpoints.iter().map(SignedCheckpoint::size).collect(),
                cosigned,
            },
        )?;
        let witness = Witness::new(
            channel,
            peer_identity,
            witnessed.last().map(|w| w.checkpoint.clone()),
            witnessed
                .iter()
                .map(|w| (w.checkpoint.size(), *w.checkpoint.root())),
        );
        let mut line = Line::from_parts(
            log,
            witness,
            row.peer_binding,
            row.receipted_upto,
            SqliteStorage {
                conn,
                line: line_id,
            },
        );
        let offer = if line.log().needs_checkpoint() {
            line.commit(now_ms)?
        } else {
            None
        };
        Ok((line, offer))
    }

    /// The seqs in `from..=to` that have a durable `msg_sent` entry in this line's log, with
    /// its commitment (the last one stored, should a seq have been logged twice). A node calls
    /// it when the line opens to find outbox rows whose entry a crash kept from being stored.
    pub fn sent_commitments(
        &self,
        from: u64,
        to: u64,
    ) -> Result<std::collections::BTreeMap<u64, Hash>, StoreError> {
        let s = self.storage();
        let mut st = s.conn.prepare_cached(
            "SELECT seq, commitment FROM audit_entries WHERE line = ?1 AND kind = ?2 AND seq BETWEEN ?3 AND ?4 ORDER BY idx",
        )?;
        let code = i64::from(
            Event::MsgSent {
                seq: 0,
                commitment: [0; 32],
                ciphertext_hash: [0; 32],
            }
            .kind_code(),
        );
        let rows = st.query_map(params![s.line, code, to_i64(from)?, to_i64(to)?], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut out = std::collections::BTreeMap::new();
        for row in rows {
            let (seq, c) = row?;
            let c: Hash = c
                .as_slice()
                .try_into()
                .map_err(|_| StoreError::Corrupt("stored commitment".into()))?;
            out.insert(to_u64(seq)?, c);
        }
        Ok(out)
    }
}

/// One line, as listed by [`AuditReader::lines`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineInfo {
    /// Channel id (hex).
    pub channel: String,
    /// Own identity (hex).
    pub identity: String,
    /// Peer identity (hex).
    pub peer_identity: String,
    /// Entries stored.
    pub entries: u64,
    /// Latest own checkpoint size.
    pub checkpoint: u64,
    /// Largest own size the peer cosigned.
    pub cosigned_by_peer: u64,
    /// Largest peer size this node cosigned.
    pub peer_size_witnessed: u64,
    /// Fork evidence records.
    pub evidence: u64,
}

/// One entry, as listed by `audit show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShownEntry {
    /// Channel id (hex).
    pub channel: String,
    /// The entry.
    #[serde(flatten)]
    pub entry: Entry,
}

/// `audit verify` failed.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The store could not be read (exit 1).
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Verification failed (exit 3).
    #[error("verification failed: {0}")]
    Check(#[from] CheckError),
}

/// Read-only access to the audit store (no keys needed).
#[derive(Debug)]
pub struct AuditReader {
    conn: Connection,
}

impl AuditReader {
    /// Opens the database read-only.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let has: Option<i64> = conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit_lines'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if has.is_none() {
            return Err(StoreError::NoLog);
        }
        Ok(Self { conn })
    }

    fn channels(&self) -> Result<Vec<Hash>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT channel FROM audit_lines ORDER BY id")?;
        let rows = st.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for c in rows {
            let c = c?;
            out.push(
                <Hash>::try_from(c.as_slice())
                    .map_err(|_| StoreError::Corrupt("channel".into()))?,
            );
        }
        Ok(out)
    }

    fn line(&self, channel: &Hash) -> Result<LineRow, StoreError> {
        read_line(&self.conn, channel)?.ok_or(StoreError::UnknownLine)
    }

    fn count(&self, sql: &str, line: i64) -> Result<u64, StoreError> {
        let v: Option<i64> = self.conn.query_row(sql, params![line], |r| r.get(0))?;
        to_u64(v.unwrap_or(0))
    }

    /// The lines in the store.
    pub fn lines(&self) -> Result<Vec<LineInfo>, StoreError> {
        let mut out = Vec::new();
        for ch in self.channels()? {
            let row = self.line(&ch)?;
            out.push(LineInfo {
                channel: hex::encode(ch),
                identity: hex::encode(row.local_binding.identity.as_bytes()),
                peer_identity: hex::encode(row.peer_identity.as_bytes()),
                entries: self
                    .count("SELECT COUNT(*) FROM audit_entries WHERE line = ?1", row.id)?,
                checkpoint: self.count(
                    "SELECT MAX(size) FROM audit_checkpoints WHERE line = ?1",
                    row.id,
                )?,
                cosigned_by_peer: self.count(
                    "SELECT MAX(size) FROM audit_cosignatures WHERE line = ?1",
                    row.id,
                )?,
                peer_size_witnessed: self.count(
                    "SELECT MAX(size) FROM audit_witnessed WHERE line = ?1",
                    row.id,
                )?,
                evidence: self.count(
                    "SELECT COUNT(*) FROM audit_evidence WHERE line = ?1",
                    row.id,
                )?,
            });
        }
        Ok(out)
    }

    /// Entries of one line (or of all lines), optionally only indices in `range`.
    pub fn show(
        &self,
        channel: Option<&Hash>,
        range: Option<Range<u64>>,
    ) -> Result<Vec<ShownEntry>, StoreError> {
        let channels = match channel {
            Some(c) => vec![*c],
            None => self.channels()?,
        };
        let (lo, hi) = match &range {
            Some(r) => (to_i64(r.start)?, to_i64(r.end.min(i64::MAX as u64))?),
            None => (0, i64::MAX),
        };
        let mut out = Vec::new();
        let mut st = self.conn.prepare(
            "SELECT leaf FROM audit_entries WHERE line = ?1 AND idx >= ?2 AND idx < ?3 ORDER BY idx",
        )?;
        for ch in channels {
            let id = self.line(&ch)?.id;
            let rows = st.query_map(params![id, lo, hi], |r| r.get::<_, Vec<u8>>(0))?;
            for leaf in rows {
                let leaf = leaf?;
                let entry =
                    Entry::from_leaf(&leaf).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                out.push(ShownEntry {
                    channel: hex::encode(ch),
                    entry,
                });
            }
        }
        Ok(out)
    }

    fn meta(
        &self,
        row: LineRow,
        start: u64,
        end: u64,
        now_ms: u64,
    ) -> Result<(BundleMeta, u64, u64), StoreError> {
        let id = row.id;
        let total = self.count("SELECT COUNT(*) FROM audit_entries WHERE line = ?1", id)?;
        let end = end.min(total);
        let start = start.min(end);
        let checkpoints = read_checkpoints(&self.conn, id)?;
        let (covered_size, prefix, suffix, cps) = if start == 0 && end == total {
            let covered = checkpoints
                .iter()
                .map(SignedCheckpoint::size)
                .max()
                .unwrap_or(0)
                .max(total);
            let cps = checkpoints
                .into_iter()
                .map(|checkpoint| BundleCheckpoint {
                    checkpoint,
                    proof: Vec::new(),
                })
                .collect();
            (covered, Vec::new(), Vec::new(), cps)
        } else {
            let tree = MerkleTree::from_leaf_hashes(read_leaf_hashes(&self.conn, id)?);
            let p = range_parts(&tree, &checkpoints, start, end)
                .map_err(|e| StoreError::Corrupt(format!("range proof: {e}")))?;
            (p.covered_size, p.prefix, p.suffix, p.checkpoints)
        };
        let meta = BundleMeta {
            local: row.local_binding,
            peer_identity: row.peer_identity,
            peer: row.peer_binding,
            exported_ms: now_ms,
            start,
            covered_size,
            prefix,
            suffix,
            checkpoints: cps,
            cosignatures: read_cosignatures(&self.conn, id)?,
            witnessed: read_witnessed(&self.conn, id)?,
            evidence: read_evidence(&self.conn, id)?,
            receipts: read_receipts(&self.conn, id)?,
        };
        Ok((meta, start, end))
    }

    fn for_each_leaf(
        &self,
        line: i64,
        start: u64,
        end: u64,
        mut f: impl FnMut(&[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut st = self.conn.prepare(
            "SELECT leaf FROM audit_entries WHERE line = ?1 AND idx >= ?2 AND idx < ?3 ORDER BY idx",
        )?;
        let mut rows = st.query(params![line, to_i64(start)?, to_i64(end)?])?;
        let mut index = start;
        while let Some(row) = rows.next()? {
            let leaf = row.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?;
            if !(crate::entry::MIN_LEAF_LEN..=MAX_LEAF_LEN).contains(&leaf.len()) {
                return Err(StoreError::Corrupt(format!(
                    "entry {index} has an invalid length"
                )));
            }
            f(leaf)?;
            index += 1;
        }
        Ok(())
    }

    /// Writes the bundle of a line (entries `range`, default all) to `out`, streaming.
    pub fn export(
        &self,
        channel: &Hash,
        out: impl Write,
        range: Option<Range<u64>>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let (start, end) = range.map_or((0, u64::MAX), |r| (r.start, r.end));
        let row = self.line(channel)?;
        let id = row.id;
        let (meta, start, end) = self.meta(row, start, end, now_ms)?;
        let mut w = BundleWriter::start(out, &meta, end - start)?;
        self.for_each_leaf(id, start, end, |leaf| Ok(w.leaf(leaf)?))?;
        w.finish()?;
        Ok(())
    }

    /// The bundle of a line, in memory.
    pub fn bundle(
        &self,
        channel: &Hash,
        range: Option<Range<u64>>,
        now_ms: u64,
    ) -> Result<Bundle, StoreError> {
        let mut buf = Vec::new();
        self.export(channel, &mut buf, range, now_ms)?;
        Bundle::decode(&buf).map_err(|e| StoreError::Corrupt(format!("exported bundle: {e}")))
    }

    /// `audit verify` for one line: the whole log (tree, chain, signatures, cosignatures,
    /// witness records, receipts) checked as a bundle.
    /// Stored data that no longer decodes is reported as a failed verification.
    pub fn verify(&self, channel: &Hash, now_ms: u64) -> Result<CheckReport, VerifyError> {
        let b = match self.bundle(channel, None, now_ms) {
            Ok(b) => b,
            Err(StoreError::Corrupt(reason)) => {
                return Err(VerifyError::Check(CheckError::Malformed {
                    bundle: 0,
                    reason,
                }));
            }
            Err(e) => return Err(e.into()),
        };
        Ok(check(std::slice::from_ref(&b))?)
    }

    /// `audit verify` for every line.
    pub fn verify_all(&self, now_ms: u64) -> Result<Vec<CheckReport>, VerifyError> {
        let mut out = Vec::new();
        for ch in self.channels()? {
            out.push(self.verify(&ch, now_ms)?);
        }
        Ok(out)
    }
}
