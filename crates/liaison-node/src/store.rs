//! The node's SQLite store: contacts, outbox, inbox, delivery and handshake-replay state.
//!
//! One writer thread owns the read-write connection (WAL, `synchronous=FULL`). Every write
//! is a closure sent to it; the thread runs all closures that are waiting in **one**
//! transaction (group commit), each inside its own savepoint so one failing job does not undo
//! the others, commits (one fsync), and only then answers the callers. Callers therefore learn
//! "done" only once their change is durable. Read-only commands open their own read-only
//! connection and never block the writer.
//!
//! Message bodies are stored sealed under the home's data key (see `atrest`); the store
//! never sees plaintext.

use liaison_wire::consts::ENVELOPE_ID_LEN;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::thread;
use tokio::sync::oneshot;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// SQLite reported an error.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The transaction holding this change failed to commit; nothing of it was stored.
    #[error("database commit failed")]
    CommitFailed,
    /// The writer thread is gone (shutting down).
    #[error("database is closed")]
    Closed,
    /// Stored data does not have the expected shape.
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
    /// A request that cannot be satisfied (unknown contact...).
    #[error("{0}")]
    Invalid(String),
    /// The store's files are damaged (found on open, before anything was written).
    #[error("the message store is damaged: {0}")]
    Damaged(crate::damage::Damage),
}

type Finisher = Box<dyn FnOnce(bool) + Send>;
type Work = Box<dyn FnOnce(&Connection) -> (bool, Finisher) + Send>;

/// Handle to the writer thread. Cloning shares it.
#[derive(Clone, Debug)]
pub struct Db {
    tx: std_mpsc::SyncSender<Work>,
}

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS contacts (
    name TEXT PRIMARY KEY,
    card BLOB NOT NULL,
    identity BLOB NOT NULL UNIQUE,
    noise BLOB NOT NULL UNIQUE,
    hop BLOB NOT NULL UNIQUE,
    addr TEXT,
    relay TEXT,
    live_only INTEGER NOT NULL DEFAULT 0,
    verified INTEGER NOT NULL DEFAULT 0,
    pairing BLOB,
    added INTEGER NOT NULL,
    last_seen INTEGER,
    hs_sent_ts BLOB NOT NULL DEFAULT x'000000000000000000000000',
    hs_accepted_ts BLOB NOT NULL DEFAULT x'000000000000000000000000',
    next_seq INTEGER NOT NULL DEFAULT 1,
    acked_upto INTEGER NOT NULL DEFAULT 0,
    delivered_upto INTEGER NOT NULL DEFAULT 0,
    peer_mbox BLOB
);
CREATE TABLE IF NOT EXISTS outbox (
    contact TEXT NOT NULL,
    seq INTEGER NOT NULL,
    created INTEGER NOT NULL,
    status TEXT NOT NULL,
    done_at INTEGER,
    PRIMARY KEY (contact, seq)
);
CREATE TABLE IF NOT EXISTS outbox_body (
    contact TEXT NOT NULL,
    seq INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (contact, seq)
);
CREATE INDEX IF NOT EXISTS outbox_status ON outbox (status);
CREATE TABLE IF NOT EXISTS outbox_envelope (
    contact TEXT NOT NULL,
    id BLOB NOT NULL,
    blob BLOB NOT NULL,
    seqs BLOB NOT NULL,
    completes BLOB NOT NULL,
    key_not_after INTEGER NOT NULL,
    card_key INTEGER NOT NULL,
    PRIMARY KEY (contact, id)
);
CREATE TABLE IF NOT EXISTS inbox (
    contact TEXT NOT NULL,
    seq INTEGER NOT NULL,
    received INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (contact, seq)
);
CREATE TABLE IF NOT EXISTS relays (
    name TEXT PRIMARY KEY,
    card TEXT NOT NULL,
    relay_key BLOB NOT NULL,
    addr TEXT NOT NULL,
    our_key BLOB NOT NULL,
    added INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    contact TEXT,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
";

fn configure(conn: &Connection) -> Result<(), DbError> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// File name of the separate audit database homes kept before the audit log moved into the
/// store (merged into the store, then deleted, when the store is opened for writing).
pub const LEGACY_AUDIT_DB: &str = "audit.db";

/// The database `audit show`/`verify`/`export` read for the store at `path`: the store itself,
/// or a separate audit database not merged yet.
pub fn audit_db_path(path: &Path) -> std::path::PathBuf {
    let legacy = path.with_file_name(LEGACY_AUDIT_DB);
    if legacy.exists() {
        legacy
    } else {
        path.to_path_buf()
    }
}

/// Creates a new store at `path` (for a new home) and starts its writer thread. An existing
/// file is refused: [`open`] opens it.
pub fn create(path: &Path) -> Result<Db, DbError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.len() > 0 || !m.is_file() => {
            return Err(DbError::Invalid(format!(
                "{} exists already: open it instead of creating a store over it",
                path.display()
            )));
        }
        _ => {}
    }
    open_inner(path, true)
}

/// Opens the existing store at `path` and starts its writer thread, after checking it for
/// damage ([`crate::damage`]: the database header and length, the write-ahead log, SQLite's
/// `quick_check`, and that the file holds a store at all). Damage is refused with
/// [`DbError::Damaged`] before SQLite writes anything, so the files stay as they were for a
/// repair or a restore.
pub fn open(path: &Path) -> Result<Db, DbError> {
    crate::damage::check_files(path).map_err(DbError::Damaged)?;
    open_inner(path, false)
}

/// [`open`] while another process (a running node) has the store open and is writing its
/// write-ahead log: the same checks but the log's, which the writer did when it opened it
/// (a log being written cannot be read whole at one instant).
pub fn open_beside_writer(path: &Path) -> Result<Db, DbError> {
    crate::damage::check_db_file(path).map_err(DbError::Damaged)?;
    open_inner(path, false)
}

fn open_inner(path: &Path, new: bool) -> Result<Db, DbError> {
    liaison_audit::store::make_db_private(path).map_err(|e| {
        DbError::Invalid(format!(
            "cannot make the store {} private to this user: {e}",
            path.display()
        ))
    })?;
    crate::damage::note_open(path);
    let conn = Connection::open(path)?;
    if !new {
        crate::damage::quick_check(&conn).map_err(DbError::Damaged)?;
        let has_meta: Option<i64> = conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if has_meta.is_none() {
            return Err(DbError::Damaged(crate::damage::Damage::NotAStore(
                "it holds no Liaison store (emptied, or another database put in its place)".into(),
            )));
        }
    }
    configure(&conn)?;
    conn.execute_batch(SCHEMA)?;
    // homes made before the audit log moved into this database kept it in `audit.db`
    let legacy = path.with_file_name(LEGACY_AUDIT_DB);
    match liaison_audit::store::merge_legacy(&conn, &legacy) {
        Ok(true) => tracing::info!(
            "moved the audit log from {} into the store",
            legacy.display()
        ),
        Ok(false) => {}
        Err(e) => {
            return Err(DbError::Corrupt(format!(
                "cannot move the audit log {} into the store: {e}",
                legacy.display()
            )));
        }
    }
    let version: Option<i64> = conn
        .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
            r.get(0)
        })
        .optional()?;
    match version {
        None if !new => {
            return Err(DbError::Damaged(crate::damage::Damage::NotAStore(
                "its schema version is missing".into(),
            )));
        }
        None => {
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema', ?1)",
                [SCHEMA_VERSION],
            )?;
        }
        Some(SCHEMA_VERSION) => {}
        Some(v) => {
            return Err(DbError::Corrupt(format!(
                "store schema version {v} is not supported by this build (expects {SCHEMA_VERSION})"
            )));
        }
    }
    let (tx, rx) = std_mpsc::sync_channel::<Work>(4096);
    thread::Builder::new()
        .name("liaison-db".into())
        .spawn(move || writer(conn, rx))
        .map_err(|e| DbError::Invalid(format!("cannot start the database thread: {e}")))?;
    Ok(Db { tx })
}

/// Opens the store read-only (for commands that only look).
pub fn open_read_only(path: &Path) -> Result<Connection, DbError> {
    crate::damage::note_open(path);
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

fn writer(conn: Connection, rx: std_mpsc::Receiver<Work>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let began = conn.execute_batch("BEGIN IMMEDIATE").is_ok();
        let mut finishers = Vec::with_capacity(batch.len());
        for work in batch {
            if !began {
                finishers.push(work(&conn).1);
                continue;
            }
            let sp = conn.execute_batch("SAVEPOINT job").is_ok();
            let (ok, fin) = work(&conn);
            if sp {
                if !ok {
                    let _ = conn.execute_batch("ROLLBACK TO job");
                }
                let _ = conn.execute_batch("RELEASE job");
            }
            finishers.push(fin);
        }
        let committed = began && conn.execute_batch("COMMIT").is_ok();
        if began && !committed {
            tracing::error!("database commit failed; the batch is rolled back");
            let _ = conn.execute_batch("ROLLBACK");
        }
        for fin in finishers {
            fin(committed);
        }
    }
}

impl Db {
    /// Runs `f` in the next group-committed transaction and returns its result once the
    /// transaction is durable.
    pub async fn write<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    {
        let (otx, orx) = oneshot::channel();
        let work: Work = Box::new(move |conn| {
            let r = f(conn);
            let ok = r.is_ok();
            let fin: Finisher = Box::new(move |committed| {
                let _ = otx.send(match r {
                    Ok(v) if committed => Ok(v),
                    Ok(_) => Err(DbError::CommitFailed),
                    Err(e) => Err(e),
                });
            });
            (ok, fin)
        });
        self.tx.send(work).map_err(|_| DbError::Closed)?;
        orx.await.map_err(|_| DbError::Closed)?
    }

    /// Like [`Db::write`] but blocking (for synchronous callers outside the runtime).
    pub fn write_blocking<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    {
        let (otx, orx) = std_mpsc::sync_channel(1);
        let work: Work = Box::new(move |conn| {
            let r = f(conn);
            let ok = r.is_ok();
            let fin: Finisher = Box::new(move |committed| {
                let _ = otx.send(match r {
                    Ok(v) if committed => Ok(v),
                    Ok(_) => Err(DbError::CommitFailed),
                    Err(e) => Err(e),
                });
            });
            (ok, fin)
        });
        self.tx.send(work).map_err(|_| DbError::Closed)?;
        orx.recv().map_err(|_| DbError::Closed)?
    }
}

/// Converts a stored INTEGER to u64 (seqs and times are never negative).
pub fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Converts a u64 for storage (values above i64::MAX are clamped; seqs never get there).
pub fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn key32(v: Vec<u8>) -> Result<[u8; 32], DbError> {
    <[u8; 32]>::try_from(v).map_err(|_| DbError::Corrupt("key length".into()))
}

/// A pinned contact as stored.
#[derive(Debug, Clone)]
pub struct ContactRow {
    /// Local name.
    pub name: String,
    /// Binary card as pinned.
    pub card: Vec<u8>,
    /// Identity public key.
    pub identity: [u8; 32],
    /// Noise static public key.
    pub noise: [u8; 32],
    /// Direct-line hop public key.
    pub hop: [u8; 32],
    /// Where to call them.
    pub addr: Option<String>,
    /// Which relay to meet them at.
    pub relay: Option<String>,
    /// Refuse the mailbox path.
    pub live_only: bool,
    /// Safety number confirmed.
    pub verified: bool,
    /// Pairing secret, sealed under the data key.
    pub pairing: Option<Vec<u8>>,
    /// Unix seconds when pinned.
    pub added: u64,
    /// Unix seconds of the last authentic traffic.
    pub last_seen: Option<u64>,
    /// Last handshake timestamp we sent (TAI64N).
    pub hs_sent_ts: [u8; 12],
    /// Last handshake timestamp we accepted (TAI64N).
    pub hs_accepted_ts: [u8; 12],
    /// Next outbound seq.
    pub next_seq: u64,
    /// Peer acknowledged our messages up to here.
    pub acked_upto: u64,
    /// We stored the peer's messages up to here.
    pub delivered_upto: u64,
    /// The peer's newest in-band mailbox key (`PeerMailboxKeys` storage form).
    pub peer_mbox: Option<Vec<u8>>,
}

const CONTACT_COLS: &str = "name, card, identity, noise, hop, addr, relay, live_only, verified, \
    pairing, added, last_seen, hs_sent_ts, hs_accepted_ts, next_seq, acked_upto, delivered_upto, \
    peer_mbox";

fn ts12(v: Vec<u8>) -> [u8; 12] {
    <[u8; 12]>::try_from(v).unwrap_or([0; 12])
}

fn contact_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<ContactRow, DbError>> {
    let identity: Vec<u8> = r.get(2)?;
    let noise: Vec<u8> = r.get(3)?;
    let hop: Vec<u8> = r.get(4)?;
    let last_seen: Option<i64> = r.get(11)?;
    let row = (|| {
        Ok(ContactRow {
            name: r.get(0)?,
            card: r.get(1)?,
            identity: key32(identity)?,
            noise: key32(noise)?,
            hop: key32(hop)?,
            addr: r.get(5)?,
            relay: r.get(6)?,
            live_only: r.get::<_, i64>(7)? != 0,
            verified: r.get::<_, i64>(8)? != 0,
            pairing: r.get(9)?,
            added: u(r.get(10)?),
            last_seen: last_seen.map(u),
            hs_sent_ts: ts12(r.get(12)?),
            hs_accepted_ts: ts12(r.get(13)?),
            next_seq: u(r.get(14)?),
            acked_upto: u(r.get(15)?),
            delivered_upto: u(r.get(16)?),
            peer_mbox: r.get(17)?,
        })
    })();
    Ok(row.map_err(|e: DbError| e))
}

/// All contacts, by name.
pub fn contacts(conn: &Connection) -> Result<Vec<ContactRow>, DbError> {
    let mut st = conn.prepare(&format!(
        "SELECT {CONTACT_COLS} FROM contacts ORDER BY name"
    ))?;
    let rows = st.query_map([], contact_from_row)?;
    let mut out = Vec::new();
    for r in rows {
        out.push(r??);
    }
    Ok(out)
}

/// One contact.
pub fn contact(conn: &Connection, name: &str) -> Result<Option<ContactRow>, DbError> {
    let mut st = conn.prepare(&format!(
        "SELECT {CONTACT_COLS} FROM contacts WHERE name = ?1"
    ))?;
    match st.query_row([name], contact_from_row).optional()? {
        Some(r) => Ok(Some(r?)),
        None => Ok(None),
    }
}

/// The contact whose direct hop key is `hop`.
pub fn contact_by_hop(conn: &Connection, hop: &[u8; 32]) -> Result<Option<ContactRow>, DbError> {
    let mut st = conn.prepare(&format!(
        "SELECT {CONTACT_COLS} FROM contacts WHERE hop = ?1"
    ))?;
    match st.query_row([&hop[..]], contact_from_row).optional()? {
        Some(r) => Ok(Some(r?)),
        None => Ok(None),
    }
}

/// A new contact to pin.
#[derive(Debug, Clone)]
pub struct NewContact {
    /// Local name.
    pub name: String,
    /// Binary card.
    pub card: Vec<u8>,
    /// Identity public key.
    pub identity: [u8; 32],
    /// Noise static public key.
    pub noise: [u8; 32],
    /// Hop public key.
    pub hop: [u8; 32],
    /// Address to call.
    pub addr: Option<String>,
    /// Relay to meet at.
    pub relay: Option<String>,
}

/// Pins a contact; with `replace`, re-pins an existing name (new keys, delivery state kept).
pub fn add_contact(
    conn: &Connection,
    c: &NewContact,
    now: u64,
    replace: bool,
) -> Result<(), DbError> {
    if replace {
        let n = conn.execute(
            "UPDATE contacts SET card = ?2, identity = ?3, noise = ?4, hop = ?5, \
             addr = COALESCE(?6, addr), relay = COALESCE(?7, relay), verified = 0, \
             hs_sent_ts = x'000000000000000000000000', \
             hs_accepted_ts = x'000000000000000000000000' WHERE name = ?1",
            params![
                c.name,
                c.card,
                &c.identity[..],
                &c.noise[..],
                &c.hop[..],
                c.addr,
                c.relay
            ],
        )?;
        if n == 0 {
            return Err(DbError::Invalid(format!("no contact named {}", c.name)));
        }
    } else {
        conn.execute(
            "INSERT INTO contacts (name, card, identity, noise, hop, addr, relay, added) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                c.name,
                c.card,
                &c.identity[..],
                &c.noise[..],
                &c.hop[..],
                c.addr,
                c.relay,
                i(now)
            ],
        )?;
    }
    Ok(())
}

/// Removes a contact with its messages. Returns false if there was none.
pub fn remove_contact(conn: &Connection, name: &str) -> Result<bool, DbError> {
    conn.execute("DELETE FROM outbox WHERE contact = ?1", [name])?;
    conn.execute("DELETE FROM outbox_body WHERE contact = ?1", [name])?;
    conn.execute("DELETE FROM outbox_envelope WHERE contact = ?1", [name])?;
    conn.execute("DELETE FROM inbox WHERE contact = ?1", [name])?;
    Ok(conn.execute("DELETE FROM contacts WHERE name = ?1", [name])? > 0)
}

/// Updates contact settings; `None` leaves a field as it is.
pub fn set_contact(
    conn: &Connection,
    name: &str,
    addr: Option<Option<&str>>,
    relay: Option<Option<&str>>,
    live_only: Option<bool>,
    verified: Option<bool>,
) -> Result<bool, DbError> {
    let mut changed = 0;
    if let Some(a) = addr {
        changed += conn.execute(
            "UPDATE contacts SET addr = ?2 WHERE name = ?1",
            params![name, a],
        )?;
    }
    if let Some(r) = relay {
        changed += conn.execute(
            "UPDATE contacts SET relay = ?2 WHERE name = ?1",
            params![name, r],
        )?;
    }
    if let Some(l) = live_only {
        changed += conn.execute(
            "UPDATE contacts SET live_only = ?2 WHERE name = ?1",
            params![name, i64::from(l)],
        )?;
    }
    if let Some(v) = verified {
        changed += conn.execute(
            "UPDATE contacts SET verified = ?2 WHERE name = ?1",
            params![name, i64::from(v)],
        )?;
    }
    let exists: bool = conn
        .query_row("SELECT 1 FROM contacts WHERE name = ?1", [name], |_| Ok(()))
        .optional()?
        .is_some();
    Ok(exists || changed > 0)
}

/// Stores a (sealed) pairing secret for a contact.
pub fn set_pairing(conn: &Connection, name: &str, sealed: Option<&[u8]>) -> Result<bool, DbError> {
    Ok(conn.execute(
        "UPDATE contacts SET pairing = ?2 WHERE name = ?1",
        params![name, sealed],
    )? > 0)
}

/// Records the handshake timestamp we sent.
pub fn set_hs_sent_ts(conn: &Connection, name: &str, ts: &[u8; 12]) -> Result<(), DbError> {
    conn.execute(
        "UPDATE contacts SET hs_sent_ts = ?2 WHERE name = ?1",
        params![name, &ts[..]],
    )?;
    Ok(())
}

/// Records the handshake timestamp we accepted.
pub fn set_hs_accepted_ts(conn: &Connection, name: &str, ts: &[u8; 12]) -> Result<(), DbError> {
    conn.execute(
        "UPDATE contacts SET hs_accepted_ts = ?2 WHERE name = ?1",
        params![name, &ts[..]],
    )?;
    Ok(())
}

/// Forgets the accepted handshake timestamp (`contact reset-replay`).
pub fn reset_replay(conn: &Connection, name: &str) -> Result<bool, DbError> {
    Ok(conn.execute(
        "UPDATE contacts SET hs_accepted_ts = x'000000000000000000000000' WHERE name = ?1",
        [name],
    )? > 0)
}

/// Stores the peer's newest in-band mailbox key.
pub fn set_peer_mbox(conn: &Connection, name: &str, bytes: &[u8]) -> Result<(), DbError> {
    conn.execute(
        "UPDATE contacts SET peer_mbox = ?2 WHERE name = ?1",
        params![name, bytes],
    )?;
    Ok(())
}

/// A value from the `meta` table.
pub fn meta_get(conn: &Connection, key: &str) -> Result<Option<Vec<u8>>, DbError> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

/// This store's id: 16 random bytes made the first time it is asked for, which the home's
/// manifest records, so a store from another home put in this one's place is noticed.
pub fn store_id(conn: &Connection) -> Result<[u8; 16], DbError> {
    if let Some(v) = meta_get(conn, "store_id")? {
        return <[u8; 16]>::try_from(v.as_slice())
            .map_err(|_| DbError::Corrupt("the store id is not 16 bytes".into()));
    }
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|e| DbError::Invalid(format!("no randomness: {e}")))?;
    meta_set(conn, "store_id", &id)?;
    Ok(id)
}

/// Sets a value in the `meta` table.
pub fn meta_set(conn: &Connection, key: &str, value: &[u8]) -> Result<(), DbError> {
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
        params![key, value],
    )?;
    Ok(())
}

/// Records authentic traffic from a contact.
pub fn touch(conn: &Connection, name: &str, now: u64) -> Result<(), DbError> {
    conn.execute(
        "UPDATE contacts SET last_seen = ?2 WHERE name = ?1",
        params![name, i(now)],
    )?;
    Ok(())
}

/// Appends one message to the outbox with the next seq; returns the seq.
pub fn outbox_push(
    conn: &Connection,
    contact: &str,
    now: u64,
    body: &[u8],
) -> Result<u64, DbError> {
    let seq: Option<i64> = conn
        .query_row(
            "SELECT next_seq FROM contacts WHERE name = ?1",
            [contact],
            |r| r.get(0),
        )
        .optional()?;
    let seq = seq.ok_or_else(|| DbError::Invalid(format!("no contact named {contact}")))?;
    conn.execute(
        "UPDATE contacts SET next_seq = next_seq + 1 WHERE name = ?1",
        [contact],
    )?;
    conn.execute(
        "INSERT INTO outbox (contact, seq, created, status) VALUES (?1, ?2, ?3, 'pending')",
        params![contact, seq, i(now)],
    )?;
    conn.execute(
        "INSERT INTO outbox_body (contact, seq, body) VALUES (?1, ?2, ?3)",
        params![contact, seq, body],
    )?;
    Ok(u(seq))
}

/// Outbox statuses.
pub mod status {
    /// Only in the local outbox.
    pub const PENDING: &str = "pending";
    /// A relay durably holds the sealed envelope.
    pub const QUEUED: &str = "queued";
    /// The peer acknowledged it end to end.
    pub const DELIVERED: &str = "delivered";
    /// Abandoned by the user.
    pub const DROPPED: &str = "dropped";
}

/// An outbox entry.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    /// Contact.
    pub contact: String,
    /// Seq.
    pub seq: u64,
    /// Unix seconds.
    pub created: u64,
    /// Sealed encoded content.
    pub body: Vec<u8>,
    /// See [`status`].
    pub status: String,
    /// When it was delivered or dropped.
    pub done_at: Option<u64>,
}

fn outbox_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxRow> {
    let done: Option<i64> = r.get(5)?;
    Ok(OutboxRow {
        contact: r.get(0)?,
        seq: u(r.get(1)?),
        created: u(r.get(2)?),
        body: r.get(3)?,
        status: r.get(4)?,
        done_at: done.map(u),
    })
}

/// Unacknowledged messages to one contact (pending or queued), by seq.
pub fn outbox_unacked(conn: &Connection, contact: &str) -> Result<Vec<OutboxRow>, DbError> {
    let mut st = conn.prepare(
        "SELECT o.contact, o.seq, o.created, b.body, o.status, o.done_at FROM outbox o \
         JOIN outbox_body b USING (contact, seq) \
         WHERE o.contact = ?1 AND o.status IN ('pending', 'queued') ORDER BY o.seq",
    )?;
    let rows = st.query_map([contact], outbox_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Outbox entries, optionally only those not yet delivered.
pub fn outbox_list(
    conn: &Connection,
    contact: Option<&str>,
    undelivered_only: bool,
) -> Result<Vec<OutboxRow>, DbError> {
    let mut sql = String::from(
        "SELECT contact, seq, created, body, status, done_at FROM outbox \
         JOIN outbox_body USING (contact, seq)",
    );
    let mut conds = Vec::new();
    if contact.is_some() {
        conds.push("contact = ?1");
    }
    if undelivered_only {
        conds.push("status IN ('pending', 'queued')");
    }
    if !conds.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conds.join(" AND "));
    }
    sql.push_str(" ORDER BY contact, seq");
    let mut st = conn.prepare(&sql)?;
    let rows = match contact {
        Some(c) => st
            .query_map([c], outbox_row)?
            .collect::<Result<Vec<_>, _>>()?,
        None => st
            .query_map([], outbox_row)?
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok(rows)
}

/// Status of one outbox entry.
pub fn outbox_status(
    conn: &Connection,
    contact: &str,
    seq: u64,
) -> Result<Option<String>, DbError> {
    Ok(conn
        .query_row(
            "SELECT status FROM outbox WHERE contact = ?1 AND seq = ?2",
            params![contact, i(seq)],
            |r| r.get(0),
        )
        .optional()?)
}

/// Marks everything up to `upto` delivered; returns the seqs that changed.
pub fn outbox_acked(
    conn: &Connection,
    contact: &str,
    upto: u64,
    now: u64,
) -> Result<Vec<u64>, DbError> {
    let mut st = conn.prepare(
        "SELECT seq FROM outbox WHERE contact = ?1 AND seq <= ?2 AND status IN ('pending', 'queued')",
    )?;
    let seqs: Vec<u64> = st
        .query_map(params![contact, i(upto)], |r| r.get::<_, i64>(0))?
        .map(|r| r.map(u))
        .collect::<Result<_, _>>()?;
    conn.execute(
        "UPDATE outbox SET status = 'delivered', done_at = ?3 \
         WHERE contact = ?1 AND seq <= ?2 AND status IN ('pending', 'queued')",
        params![contact, i(upto), i(now)],
    )?;
    conn.execute(
        "UPDATE contacts SET acked_upto = MAX(acked_upto, ?2) WHERE name = ?1",
        params![contact, i(upto)],
    )?;
    Ok(seqs)
}

/// The sealed body of outbox entry `seq`.
pub fn outbox_body(conn: &Connection, contact: &str, seq: u64) -> Result<Option<Vec<u8>>, DbError> {
    Ok(conn
        .query_row(
            "SELECT body FROM outbox_body WHERE contact = ?1 AND seq = ?2",
            params![contact, i(seq)],
            |r| r.get(0),
        )
        .optional()?)
}

/// Moves pending outbox entries to new seqs after a rollback of this store was detected:
/// each `(old, new, body sealed for new)`; `acked_upto` rises to `peer_holds` and `next_seq`
/// past the last new seq. Call inside one transaction (the writer's `write`).
pub fn outbox_renumber(
    conn: &Connection,
    contact: &str,
    moves: &[(u64, u64, Vec<u8>)],
    peer_holds: u64,
) -> Result<(), DbError> {
    // new seqs are all above every old one: no collision whatever the order
    for (old, new, body) in moves {
        conn.execute(
            "UPDATE outbox SET seq = ?3 WHERE contact = ?1 AND seq = ?2",
            params![contact, i(*old), i(*new)],
        )?;
        conn.execute(
            "UPDATE outbox_body SET seq = ?3, body = ?4 WHERE contact = ?1 AND seq = ?2",
            params![contact, i(*old), i(*new), body],
        )?;
    }
    let next = moves.iter().map(|m| m.1).max().unwrap_or(0).max(peer_holds);
    conn.execute(
        "UPDATE contacts SET acked_upto = MAX(acked_upto, ?2), next_seq = MAX(next_seq, ?3) \
         WHERE name = ?1",
        params![contact, i(peer_holds), i(next.saturating_add(1))],
    )?;
    Ok(())
}

/// The peer lost messages `(peer_holds, acked_upto]` it had acknowledged: marks them pending
/// again, lowers `acked_upto` to `peer_holds`, and returns them to send again.
pub fn outbox_reopen(
    conn: &Connection,
    contact: &str,
    peer_holds: u64,
    acked_upto: u64,
    now: u64,
) -> Result<Vec<OutboxRow>, DbError> {
    conn.execute(
        "UPDATE outbox SET status = 'pending', done_at = ?4 WHERE contact = ?1 AND seq > ?2 \
         AND seq <= ?3 AND status = 'delivered'",
        params![contact, i(peer_holds), i(acked_upto), i(now)],
    )?;
    conn.execute(
        "UPDATE contacts SET acked_upto = MIN(acked_upto, ?2) WHERE name = ?1",
        params![contact, i(peer_holds)],
    )?;
    let mut st = conn.prepare(
        "SELECT o.contact, o.seq, o.created, b.body, o.status, o.done_at FROM outbox o \
         JOIN outbox_body b USING (contact, seq) \
         WHERE o.contact = ?1 AND o.seq > ?2 AND o.seq <= ?3 ORDER BY o.seq",
    )?;
    let rows = st.query_map(params![contact, i(peer_holds), i(acked_upto)], outbox_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn seqs_blob(seqs: &[u64]) -> Vec<u8> {
    seqs.iter().flat_map(|s| s.to_le_bytes()).collect()
}

fn blob_seqs(b: &[u8]) -> Vec<u64> {
    b.chunks_exact(8)
        .filter_map(|c| <[u8; 8]>::try_from(c).ok())
        .map(u64::from_le_bytes)
        .collect()
}

/// Keeps a sealed envelope this node posted (until it is no longer needed), so a restarted
/// node posts the same bytes again instead of sealing the messages anew.
pub fn envelope_keep(
    conn: &Connection,
    contact: &str,
    env: &liaison_proto::conn::SealedEnvelope,
) -> Result<(), DbError> {
    conn.execute(
        "INSERT OR REPLACE INTO outbox_envelope \
         (contact, id, blob, seqs, completes, key_not_after, card_key) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            contact,
            &env.id[..],
            &env.blob[..],
            seqs_blob(&env.seqs),
            seqs_blob(&env.completes),
            i(env.key_not_after),
            i64::from(env.card_key)
        ],
    )?;
    Ok(())
}

/// Forgets sealed envelopes.
pub fn envelope_forget(
    conn: &Connection,
    contact: &str,
    ids: &[[u8; ENVELOPE_ID_LEN]],
) -> Result<(), DbError> {
    let mut st =
        conn.prepare_cached("DELETE FROM outbox_envelope WHERE contact = ?1 AND id = ?2")?;
    for id in ids {
        st.execute(params![contact, &id[..]])?;
    }
    Ok(())
}

/// The sealed envelopes kept for a contact.
pub fn envelopes(
    conn: &Connection,
    contact: &str,
) -> Result<Vec<liaison_proto::conn::SealedEnvelope>, DbError> {
    let mut st = conn.prepare(
        "SELECT id, blob, seqs, completes, key_not_after, card_key FROM outbox_envelope \
         WHERE contact = ?1",
    )?;
    let rows = st.query_map([contact], |r| {
        let id: Vec<u8> = r.get(0)?;
        let blob: Vec<u8> = r.get(1)?;
        let seqs: Vec<u8> = r.get(2)?;
        let completes: Vec<u8> = r.get(3)?;
        let not_after: i64 = r.get(4)?;
        let card: i64 = r.get(5)?;
        Ok((id, blob, seqs, completes, not_after, card))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, blob, seqs, completes, not_after, card) = row?;
        let Ok(id) = <[u8; ENVELOPE_ID_LEN]>::try_from(id.as_slice()) else {
            continue;
        };
        out.push(liaison_proto::conn::SealedEnvelope {
            id,
            blob: std::sync::Arc::from(blob),
            seqs: blob_seqs(&seqs),
            completes: blob_seqs(&completes),
            key_not_after: u(not_after),
            card_key: card != 0,
        });
    }
    Ok(out)
}

/// Sets the status of one outbox entry (e.g. queued at a relay, dropped by the user).
pub fn outbox_set_status(
    conn: &Connection,
    contact: &str,
    seq: u64,
    status: &str,
    now: u64,
) -> Result<bool, DbError> {
    Ok(conn.execute(
        "UPDATE outbox SET status = ?3, done_at = ?4 WHERE contact = ?1 AND seq = ?2 \
         AND status IN ('pending', 'queued')",
        params![contact, i(seq), status, i(now)],
    )? > 0)
}

/// A received message to store.
#[derive(Debug, Clone)]
pub struct Received {
    /// Seq.
    pub seq: u64,
    /// Sealed encoded content.
    pub body: Vec<u8>,
}

/// Stores received messages (duplicates ignored) and the new `delivered_upto`, in one
/// transaction; returns how many were new.
pub fn inbox_store(
    conn: &Connection,
    contact: &str,
    items: &[Received],
    delivered_upto: u64,
    now: u64,
) -> Result<usize, DbError> {
    let mut st = conn.prepare_cached(
        "INSERT OR IGNORE INTO inbox (contact, seq, received, body) VALUES (?1, ?2, ?3, ?4)",
    )?;
    let mut n = 0;
    for it in items {
        n += st.execute(params![contact, i(it.seq), i(now), it.body])?;
    }
    conn.execute(
        "UPDATE contacts SET delivered_upto = MAX(delivered_upto, ?2), last_seen = ?3 WHERE name = ?1",
        params![contact, i(delivered_upto), i(now)],
    )?;
    Ok(n)
}

/// A stored received message.
#[derive(Debug, Clone)]
pub struct InboxRow {
    /// Contact.
    pub contact: String,
    /// Seq.
    pub seq: u64,
    /// Unix seconds when stored.
    pub received: u64,
    /// Sealed encoded content.
    pub body: Vec<u8>,
}

/// Received messages that are delivered in order (seq ≤ delivered_upto), optionally for one
/// contact and after a seq.
pub fn inbox_list(
    conn: &Connection,
    contact: Option<&str>,
    after_seq: u64,
) -> Result<Vec<InboxRow>, DbError> {
    let sql = "SELECT i.contact, i.seq, i.received, i.body FROM inbox i \
               JOIN contacts c ON c.name = i.contact \
               WHERE i.seq <= c.delivered_upto AND i.seq > ?2 AND (?1 IS NULL OR i.contact = ?1) \
               ORDER BY i.received, i.contact, i.seq";
    let mut st = conn.prepare(sql)?;
    let rows = st.query_map(params![contact, i(after_seq)], |r| {
        Ok(InboxRow {
            contact: r.get(0)?,
            seq: u(r.get(1)?),
            received: u(r.get(2)?),
            body: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Seqs stored beyond `delivered_upto` (received out of order).
pub fn inbox_ahead(
    conn: &Connection,
    contact: &str,
    delivered_upto: u64,
) -> Result<Vec<u64>, DbError> {
    let mut st = conn.prepare("SELECT seq FROM inbox WHERE contact = ?1 AND seq > ?2")?;
    let rows = st.query_map(params![contact, i(delivered_upto)], |r| r.get::<_, i64>(0))?;
    Ok(rows.map(|r| r.map(u)).collect::<Result<_, _>>()?)
}

/// One received message.
pub fn inbox_get(conn: &Connection, contact: &str, seq: u64) -> Result<Option<InboxRow>, DbError> {
    Ok(conn
        .query_row(
            "SELECT contact, seq, received, body FROM inbox WHERE contact = ?1 AND seq = ?2",
            params![contact, i(seq)],
            |r| {
                Ok(InboxRow {
                    contact: r.get(0)?,
                    seq: u(r.get(1)?),
                    received: u(r.get(2)?),
                    body: r.get(3)?,
                })
            },
        )
        .optional()?)
}

/// A pinned relay.
#[derive(Debug, Clone)]
pub struct RelayRow {
    /// Local name.
    pub name: String,
    /// Its `liaison-relay:` card text.
    pub card: String,
    /// The relay's hop public key (pinned as SPKI).
    pub relay_key: [u8; 32],
    /// Its public address.
    pub addr: String,
    /// Our hop public key for this relay.
    pub our_key: [u8; 32],
    /// Unix seconds when pinned.
    pub added: u64,
}

type RelayTuple = (String, String, Vec<u8>, String, Vec<u8>, i64);

fn relay_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RelayTuple> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn relay_from(t: RelayTuple) -> Result<RelayRow, DbError> {
    Ok(RelayRow {
        name: t.0,
        card: t.1,
        relay_key: key32(t.2)?,
        addr: t.3,
        our_key: key32(t.4)?,
        added: u(t.5),
    })
}

/// Pins (or, with `replace`, re-pins) a relay.
pub fn add_relay(conn: &Connection, r: &RelayRow, replace: bool) -> Result<(), DbError> {
    let sql = if replace {
        "INSERT OR REPLACE INTO relays (name, card, relay_key, addr, our_key, added) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
    } else {
        "INSERT INTO relays (name, card, relay_key, addr, our_key, added) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
    };
    conn.execute(
        sql,
        params![
            r.name,
            r.card,
            &r.relay_key[..],
            r.addr,
            &r.our_key[..],
            i(r.added)
        ],
    )?;
    Ok(())
}

/// All pinned relays.
pub fn relays(conn: &Connection) -> Result<Vec<RelayRow>, DbError> {
    let mut st = conn
        .prepare("SELECT name, card, relay_key, addr, our_key, added FROM relays ORDER BY name")?;
    let rows = st.query_map([], relay_row)?;
    let mut out = Vec::new();
    for r in rows {
        out.push(relay_from(r?)?);
    }
    Ok(out)
}

/// One pinned relay.
pub fn relay(conn: &Connection, name: &str) -> Result<Option<RelayRow>, DbError> {
    let mut st = conn.prepare(
        "SELECT name, card, relay_key, addr, our_key, added FROM relays WHERE name = ?1",
    )?;
    match st.query_row([name], relay_row).optional()? {
        Some(t) => Ok(Some(relay_from(t)?)),
        None => Ok(None),
    }
}

/// Appends to the local event log (key events, anomalies, line events).
pub fn log_event(
    conn: &Connection,
    now: u64,
    contact: Option<&str>,
    kind: &str,
    detail: &str,
) -> Result<(), DbError> {
    conn.execute(
        "INSERT INTO events (at, contact, kind, detail) VALUES (?1, ?2, ?3, ?4)",
        params![i(now), contact, kind, detail],
    )?;
    Ok(())
}

/// Kinds of key events the CLI records (imported into each line's audit log by the node).
pub mod key_event {
    /// A contact was pinned.
    pub const PINNED: &str = "key:pinned";
    /// A contact was re-pinned with a new identity.
    pub const REPINNED: &str = "key:repinned";
    /// The safety number was confirmed.
    pub const VERIFIED: &str = "key:verified";
    /// A pairing secret was set.
    pub const PAIRED: &str = "key:paired";
    /// The handshake replay state was reset.
    pub const REPLAY_RESET: &str = "key:replay-reset";
}

/// Key events of one contact after event id `after`: (id, kind, detail).
pub fn key_events_after(
    conn: &Connection,
    contact: &str,
    after: i64,
) -> Result<Vec<(i64, String, String)>, DbError> {
    let mut st = conn.prepare(
        "SELECT id, kind, detail FROM events WHERE contact = ?1 AND id > ?2 AND kind LIKE 'key:%' \
         ORDER BY id",
    )?;
    let rows = st.query_map(params![contact, after], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A local event.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EventRow {
    /// Unix seconds.
    pub at: u64,
    /// Contact, if any.
    pub contact: Option<String>,
    /// Kind.
    pub kind: String,
    /// Detail.
    pub detail: String,
}

/// The most recent local events.
pub fn events(conn: &Connection, limit: usize) -> Result<Vec<EventRow>, DbError> {
    let mut st =
        conn.prepare("SELECT at, contact, kind, detail FROM events ORDER BY id DESC LIMIT ?1")?;
    let rows = st.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
        Ok(EventRow {
            at: u(r.get(0)?),
            contact: r.get(1)?,
            kind: r.get(2)?,
            detail: r.get(3)?,
        })
    })?;
    let mut v: Vec<EventRow> = rows.collect::<Result<_, _>>()?;
    v.reverse();
    Ok(v)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    fn new_contact(name: &str, k: u8) -> NewContact {
        NewContact {
            name: name.into(),
            card: vec![k],
            identity: [k; 32],
            noise: [k + 1; 32],
            hop: [k + 2; 32],
            addr: None,
            relay: None,
        }
    }

    #[tokio::test]
    async fn group_commit_outbox_inbox() {
        let dir = tempfile::tempdir().unwrap();
        let db = create(&dir.path().join("node.db")).unwrap();
        db.write(|c| add_contact(c, &new_contact("bob", 1), 1, false))
            .await
            .unwrap();
        // a duplicate key is refused and does not disturb other jobs in the same batch
        let dup = db.write(|c| add_contact(c, &new_contact("bob2", 1), 1, false));
        let push = db.write(|c| outbox_push(c, "bob", 5, b"sealed"));
        let (dup, push) = tokio::join!(dup, push);
        assert!(dup.is_err());
        assert_eq!(push.unwrap(), 1);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let db = db.clone();
            set.spawn(async move { db.write(|c| outbox_push(c, "bob", 6, b"x")).await });
        }
        let mut seqs = Vec::new();
        while let Some(r) = set.join_next().await {
            seqs.push(r.unwrap().unwrap());
        }
        let mut sorted = seqs.clone();
        sorted.sort();
        assert_eq!(sorted, (2..=51).collect::<Vec<_>>());
        let acked = db.write(|c| outbox_acked(c, "bob", 10, 7)).await.unwrap();
        assert_eq!(acked, (1..=10).collect::<Vec<_>>());
        let un = db.write(|c| outbox_unacked(c, "bob")).await.unwrap();
        assert_eq!(un.len(), 41);
        let items = vec![
            Received {
                seq: 1,
                body: b"a".to_vec(),
            },
            Received {
                seq: 3,
                body: b"c".to_vec(),
            },
        ];
        assert_eq!(
            db.write(move |c| inbox_store(c, "bob", &items, 1, 9))
                .await
                .unwrap(),
            2
        );
        let ro = open_read_only(&dir.path().join("node.db")).unwrap();
        let listed = inbox_list(&ro, Some("bob"), 0).unwrap();
        assert_eq!(listed.len(), 1, "seq 3 is stored but not yet deliverable");
        assert_eq!(inbox_ahead(&ro, "bob", 1).unwrap(), vec![3]);
        assert!(ro.execute("DELETE FROM inbox", []).is_err(), "read-only");
    }
}
