//! The durable store-and-forward queue: SQLite (WAL, `synchronous=FULL`) on one thread, with
//! group commit, quotas, idempotent puts and expiry.
//!
//! One table holds envelopes: `(id, inbox, envelope_id, stored_ms, len, blob)`, unique on
//! `(inbox, envelope_id)`, so a re-post of the same blob to the same inbox is stored once.
//! The table holds no key, no address and no poster: who posted what, and from which address
//! group, is known only in memory while the process runs (for the per-poster and per-address
//! quotas), so a copied disk shows no sender.
//!
//! **Group commit.** A dedicated thread takes every command waiting in its bounded queue,
//! runs all writes (puts, deletions) in one transaction, commits (one fsync), then answers.
//! Commands that arrive during a commit form the next batch, so under load one fsync covers
//! many posts without any added wait, and at low load nothing lingers. Reads (pages of an
//! inbox) run after the batch's commit. A put is answered only after its commit.
//!
//! **Quotas** are checked against in-memory counters kept in step with the table (loaded at
//! start, updated in the transaction, undone if the commit fails).

use crate::RelayError;
use crate::config::Quotas;
use crate::home::private_dir;
use crate::metrics::Metrics;
use liaison_wire::consts::{ENVELOPE_ID_LEN, INBOX_ID_LEN};
use liaison_wire::hop::{EnvelopeId, InboxId, ty};
use nix::fcntl::{Flock, FlockArg};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use tokio::sync::{mpsc, oneshot};

/// Database file name inside the store directory.
pub const DB_FILE: &str = "queue.sqlite3";
/// Lock file name inside the store directory.
pub const LOCK_FILE: &str = "lock";
/// Schema version (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;
/// Commands waiting for the store thread at most.
const QUEUE_DEPTH: usize = 1024;
/// Commands in one batch at most.
const MAX_BATCH: usize = 512;
/// Rows deleted per expiry transaction.
const EXPIRE_CHUNK: i64 = 5000;

/// A tag for the hop key that posted (first 8 bytes of its SPKI hash); memory only.
pub type PosterTag = [u8; 8];

/// Who posted an envelope, for quotas: the hop key's tag and the client's address group
/// (IPv4 address or IPv6 /64, [`crate::admission::addr_key`]). Memory only, never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Poster {
    /// The hop key.
    pub key: PosterTag,
    /// The address group the client connected from.
    pub source: IpAddr,
}

/// What became of a `store = 1` post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Committed now.
    Stored,
    /// Already held for this inbox: not stored twice.
    Duplicate,
    /// A quota would be exceeded.
    Quota,
    /// The blob can never fit.
    TooLarge,
    /// The store failed (disk full, I/O error...).
    Failed,
}

/// A stored envelope, ready to send: `frame` is a complete encoded `DELIVER`.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Row id, increasing with storage order.
    pub rowid: i64,
    /// Its envelope id.
    pub envelope_id: EnvelopeId,
    /// `len || DELIVER || inbox || envelope_id || blob`.
    pub frame: Vec<u8>,
}

/// A post to store.
#[derive(Debug, Clone)]
pub struct PutReq {
    /// Destination inbox.
    pub inbox: InboxId,
    /// `SHA-256(blob)[..16]`.
    pub envelope_id: EnvelopeId,
    /// A buffer holding the blob at `blob_at..`.
    pub frame: Arc<Vec<u8>>,
    /// Where the blob starts in `frame`.
    pub blob_at: usize,
    /// Who posted it.
    pub poster: Poster,
    /// Unix milliseconds now.
    pub now_ms: i64,
}

impl PutReq {
    fn blob(&self) -> &[u8] {
        self.frame.get(self.blob_at..).unwrap_or_default()
    }
}

/// Deciding whether an acknowledging client may delete an envelope of this inbox.
pub type AckFilter = Box<dyn Fn(&InboxId) -> bool + Send>;

enum Cmd {
    Put(PutReq, oneshot::Sender<PutOutcome>),
    Ack(EnvelopeId, AckFilter),
    Fetch {
        inbox: InboxId,
        after: i64,
        max_bytes: usize,
        max_count: usize,
        not_before_ms: i64,
        reply: oneshot::Sender<Vec<Stored>>,
    },
    Expire(i64, oneshot::Sender<u64>),
    Barrier(oneshot::Sender<()>),
    NonEmpty(Vec<InboxId>, oneshot::Sender<Vec<InboxId>>),
    Close(oneshot::Sender<()>),
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Usage {
    count: u64,
    bytes: u64,
}

impl Usage {
    fn add(&mut self, len: u64) {
        self.count += 1;
        self.bytes += len;
    }
    fn sub(&mut self, len: u64) {
        self.count = self.count.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(len);
    }
    fn is_zero(&self) -> bool {
        self.count == 0
    }
}

/// A change to the table within the open transaction, kept to undo counters on rollback.
#[derive(Debug, Clone, Copy)]
enum Change {
    Added(i64, InboxId, u64),
    Removed(i64, InboxId, u64),
}

#[derive(Debug, Default)]
struct Counters {
    total: Usage,
    inbox: HashMap<InboxId, Usage>,
    poster: HashMap<PosterTag, Usage>,
    source: HashMap<IpAddr, Usage>,
    /// Who posted each row stored while this process runs (rows loaded at start have none).
    owner: HashMap<i64, Poster>,
}

/// Takes `len` off `key`'s usage, forgetting it once nothing is left (so both maps hold only
/// posters and addresses with envelopes held: at most `total_envelopes` entries each).
fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Usage>, key: &K, len: u64) {
    if let Some(u) = map.get_mut(key) {
        u.sub(len);
        if u.is_zero() {
            map.remove(key);
        }
    }
}

impl Counters {
    fn add(&mut self, rowid: i64, inbox: InboxId, len: u64, poster: Poster) {
        self.total.add(len);
        self.inbox.entry(inbox).or_default().add(len);
        self.poster.entry(poster.key).or_default().add(len);
        self.source.entry(poster.source).or_default().add(len);
        self.owner.insert(rowid, poster);
    }

    fn remove(&mut self, rowid: i64, inbox: InboxId, len: u64) {
        self.total.sub(len);
        if let Some(u) = self.inbox.get_mut(&inbox) {
            u.sub(len);
            if u.is_zero() {
                self.inbox.remove(&inbox);
            }
        }
        if let Some(p) = self.owner.remove(&rowid) {
            release(&mut self.poster, &p.key, len);
            release(&mut self.source, &p.source, len);
        }
    }

    fn undo(&mut self, changes: &[Change]) {
        for c in changes.iter().rev() {
            match *c {
                Change::Added(rowid, inbox, len) => self.remove(rowid, inbox, len),
                Change::Removed(rowid, inbox, len) => {
                    // the poster and address of a re-instated row are forgotten: it counts
                    // against neither
                    self.total.add(len);
                    self.inbox.entry(inbox).or_default().add(len);
                    let _ = rowid;
                }
            }
        }
    }
}

/// The queue database. Used by one thread; see [`StoreHandle`] for the async side.
pub struct Store {
    conn: Connection,
    quotas: Quotas,
    counters: Counters,
    metrics: Arc<Metrics>,
    _lock: Flock<File>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("envelopes", &self.counters.total.count)
            .field("bytes", &self.counters.total.bytes)
            .finish_non_exhaustive()
    }
}

fn db_err(e: rusqlite::Error) -> RelayError {
    RelayError::Store(e.to_string())
}

fn id16(b: &[u8]) -> Option<[u8; 16]> {
    <[u8; 16]>::try_from(b).ok()
}

/// Encodes a `DELIVER` frame from its parts.
pub fn deliver_frame(inbox: &InboxId, envelope_id: &EnvelopeId, blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(DELIVER_HEADER + blob.len());
    out.extend_from_slice(
        &((1 + INBOX_ID_LEN + ENVELOPE_ID_LEN + blob.len()) as u32).to_le_bytes(),
    );
    out.push(ty::DELIVER);
    out.extend_from_slice(inbox);
    out.extend_from_slice(envelope_id);
    out.extend_from_slice(blob);
    out
}

/// Bytes before the blob in an encoded `DELIVER` frame: `len (4) || type (1) || inbox (16) ||
/// envelope_id (16)`.
pub const DELIVER_HEADER: usize = 4 + 1 + INBOX_ID_LEN + ENVELOPE_ID_LEN;

impl Store {
    /// Opens (creating if needed) the store in `dir`, taking its exclusive lock.
    pub fn open(dir: &Path, quotas: Quotas, metrics: Arc<Metrics>) -> Result<Self, RelayError> {
        private_dir(dir)?;
        let lock_path = dir.join(LOCK_FILE);
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| RelayError::Store(format!("{}: {e}", lock_path.display())))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|_| {
            RelayError::Store(format!(
                "{} is in use by another relay process",
                dir.display()
            ))
        })?;
        let conn = Connection::open(dir.join(DB_FILE)).map_err(db_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db_err)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(db_err)?;
        if version > SCHEMA_VERSION {
            return Err(RelayError::Store(format!(
                "the queue in {} was made by a newer relay (schema {version}); upgrade this relay",
                dir.display()
            )));
        }
        conn.execute_batch(
            "BEGIN;
             CREATE TABLE IF NOT EXISTS envelopes (
               id INTEGER PRIMARY KEY,
               inbox BLOB NOT NULL CHECK (length(inbox) = 16),
               envelope_id BLOB NOT NULL CHECK (length(envelope_id) = 16),
               stored_ms INTEGER NOT NULL,
               len INTEGER NOT NULL,
               blob BLOB NOT NULL,
               UNIQUE (inbox, envelope_id)
             );
             CREATE INDEX IF NOT EXISTS envelopes_by_inbox ON envelopes(inbox);
             CREATE INDEX IF NOT EXISTS envelopes_by_id ON envelopes(envelope_id);
             CREATE INDEX IF NOT EXISTS envelopes_by_time ON envelopes(stored_ms);
             PRAGMA user_version = 1;
             COMMIT;",
        )
        .map_err(db_err)?;
        let mut store = Store {
            conn,
            quotas,
            counters: Counters::default(),
            metrics,
            _lock: lock,
        };
        store.load_counters()?;
        Ok(store)
    }

    fn load_counters(&mut self) -> Result<(), RelayError> {
        let mut c = Counters::default();
        let mut stmt = self
            .conn
            .prepare("SELECT inbox, COUNT(*), SUM(len) FROM envelopes GROUP BY inbox")
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(db_err)?;
        for row in rows {
            let (inbox, count, bytes) = row.map_err(db_err)?;
            let Some(inbox) = id16(&inbox) else { continue };
            let u = Usage {
                count: u64::try_from(count).unwrap_or(0),
                bytes: u64::try_from(bytes).unwrap_or(0),
            };
            c.total.count += u.count;
            c.total.bytes += u.bytes;
            c.inbox.insert(inbox, u);
        }
        drop(stmt);
        self.counters = c;
        self.publish();
        Ok(())
    }

    fn publish(&self) {
        self.metrics
            .queued_envelopes
            .store(self.counters.total.count, Relaxed);
        self.metrics
            .queued_bytes
            .store(self.counters.total.bytes, Relaxed);
    }

    /// Envelopes and blob bytes held.
    pub fn usage(&self) -> (u64, u64) {
        (self.counters.total.count, self.counters.total.bytes)
    }

    fn check_quota(&self, inbox: &InboxId, poster: &Poster, len: u64) -> PutOutcome {
        let q = &self.quotas;
        if len > q.max_blob_bytes as u64
            || len > q.inbox_bytes
            || len > q.poster_bytes
            || len > q.address_bytes
            || len > q.total_bytes
        {
            return PutOutcome::TooLarge;
        }
        let over = |u: Option<&Usage>, max_count: u64, max_bytes: u64| {
            u.is_some_and(|u| u.count + 1 > max_count || u.bytes + len > max_bytes)
        };
        if over(Some(&self.counters.total), q.total_envelopes, q.total_bytes)
            || over(
                self.counters.inbox.get(inbox),
                q.inbox_envelopes,
                q.inbox_bytes,
            )
            || over(
                self.counters.poster.get(&poster.key),
                q.poster_envelopes,
                q.poster_bytes,
            )
            || over(
                self.counters.source.get(&poster.source),
                q.address_envelopes,
                q.address_bytes,
            )
        {
            return PutOutcome::Quota;
        }
        PutOutcome::Stored
    }

    fn put_in_tx(
        &mut self,
        req: &PutReq,
        changes: &mut Vec<Change>,
    ) -> Result<PutOutcome, rusqlite::Error> {
        let exists = self
            .conn
            .prepare_cached("SELECT 1 FROM envelopes WHERE inbox = ?1 AND envelope_id = ?2")?
            .query_row(params![&req.inbox[..], &req.envelope_id[..]], |_| Ok(()))
            .optional()?
            .is_some();
        if exists {
            return Ok(PutOutcome::Duplicate);
        }
        let blob = req.blob();
        let len = blob.len() as u64;
        let verdict = self.check_quota(&req.inbox, &req.poster, len);
        if verdict != PutOutcome::Stored {
            return Ok(verdict);
        }
        self.conn
            .prepare_cached(
                "INSERT INTO envelopes (inbox, envelope_id, stored_ms, len, blob)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                &req.inbox[..],
                &req.envelope_id[..],
                req.now_ms,
                len as i64,
                blob
            ])?;
        let rowid = self.conn.last_insert_rowid();
        self.counters.add(rowid, req.inbox, len, req.poster);
        changes.push(Change::Added(rowid, req.inbox, len));
        Ok(PutOutcome::Stored)
    }

    fn ack_in_tx(
        &mut self,
        envelope_id: &EnvelopeId,
        allowed: &AckFilter,
        changes: &mut Vec<Change>,
    ) -> Result<u64, rusqlite::Error> {
        let rows: Vec<(i64, Vec<u8>, i64)> = self
            .conn
            .prepare_cached("SELECT id, inbox, len FROM envelopes WHERE envelope_id = ?1")?
            .query_map(params![&envelope_id[..]], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<Result<_, _>>()?;
        let mut n = 0;
        for (rowid, inbox, len) in rows {
            let Some(inbox) = id16(&inbox) else { continue };
            if !allowed(&inbox) {
                continue;
            }
            self.conn
                .prepare_cached("DELETE FROM envelopes WHERE id = ?1")?
                .execute(params![rowid])?;
            let len = u64::try_from(len).unwrap_or(0);
            self.counters.remove(rowid, inbox, len);
            changes.push(Change::Removed(rowid, inbox, len));
            n += 1;
        }
        Ok(n)
    }

    /// Runs puts and acknowledgements in one transaction and commits it. Returns the outcome
    /// of each put (in order) and the number of envelopes deleted.
    pub fn write_batch(
        &mut self,
        puts: &[PutReq],
        acks: &[(EnvelopeId, AckFilter)],
    ) -> (Vec<PutOutcome>, u64) {
        let mut changes = Vec::new();
        let mut outcomes = Vec::with_capacity(puts.len());
        let mut deleted = 0;
        let result = (|| -> Result<(), rusqlite::Error> {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            for p in puts {
                outcomes.push(self.put_in_tx(p, &mut changes)?);
            }
            for (id, filter) in acks {
                deleted += self.ack_in_tx(id, filter, &mut changes)?;
            }
            self.conn.execute_batch("COMMIT")
        })();
        match result {
            Ok(()) => {
                let m = &self.metrics;
                m.commits_total.fetch_add(1, Relaxed);
                m.committed_ops_total
                    .fetch_add(changes.len() as u64, Relaxed);
                let stored = outcomes
                    .iter()
                    .filter(|o| **o == PutOutcome::Stored)
                    .count();
                let dups = outcomes
                    .iter()
                    .filter(|o| **o == PutOutcome::Duplicate)
                    .count();
                m.stored_total.fetch_add(stored as u64, Relaxed);
                m.duplicates_total.fetch_add(dups as u64, Relaxed);
                m.acked_total.fetch_add(deleted, Relaxed);
                self.publish();
                (outcomes, deleted)
            }
            Err(e) => {
                tracing::error!("queue transaction failed: {e}");
                let _ = self.conn.execute_batch("ROLLBACK");
                self.counters.undo(&changes);
                self.publish();
                (vec![PutOutcome::Failed; puts.len()], 0)
            }
        }
    }

    /// Up to `max_count` envelopes of `inbox` after row `after`, stored at or after
    /// `not_before_ms`, stopping once `max_bytes` of blobs are collected (at least one is
    /// returned when any is left).
    pub fn fetch(
        &self,
        inbox: &InboxId,
        after: i64,
        max_bytes: usize,
        max_count: usize,
        not_before_ms: i64,
    ) -> Result<Vec<Stored>, RelayError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, envelope_id, blob FROM envelopes
                 WHERE inbox = ?1 AND id > ?2 AND stored_ms >= ?3 ORDER BY id LIMIT ?4",
            )
            .map_err(db_err)?;
        let mut rows = stmt
            .query(params![
                &inbox[..],
                after,
                not_before_ms,
                i64::try_from(max_count).unwrap_or(i64::MAX)
            ])
            .map_err(db_err)?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while let Some(row) = rows.next().map_err(db_err)? {
            let rowid: i64 = row.get(0).map_err(db_err)?;
            let env = row
                .get_ref(1)
                .map_err(db_err)?
                .as_blob()
                .ok()
                .and_then(id16);
            let blob = row
                .get_ref(2)
                .map_err(db_err)?
                .as_blob()
                .unwrap_or_default();
            let Some(envelope_id) = env else { continue };
            if !out.is_empty() && bytes + blob.len() > max_bytes {
                break;
            }
            bytes += blob.len();
            out.push(Stored {
                rowid,
                envelope_id,
                frame: deliver_frame(inbox, &envelope_id, blob),
            });
        }
        Ok(out)
    }

    /// The inboxes among `ids` that hold envelopes (from memory: no query).
    pub fn non_empty(&self, mut ids: Vec<InboxId>) -> Vec<InboxId> {
        ids.retain(|i| self.counters.inbox.contains_key(i));
        ids
    }

    /// Deletes envelopes stored before `before_ms`; returns how many.
    pub fn expire(&mut self, before_ms: i64) -> Result<u64, RelayError> {
        let mut total = 0;
        loop {
            let removed: Vec<(i64, Vec<u8>, i64)> = (|| {
                self.conn.execute_batch("BEGIN IMMEDIATE")?;
                let rows = self
                    .conn
                    .prepare_cached(
                        "DELETE FROM envelopes WHERE id IN (SELECT id FROM envelopes
                         WHERE stored_ms < ?1 ORDER BY stored_ms LIMIT ?2)
                         RETURNING id, inbox, len",
                    )?
                    .query_map(params![before_ms, EXPIRE_CHUNK], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                self.conn.execute_batch("COMMIT")?;
                Ok(rows)
            })()
            .map_err(|e: rusqlite::Error| {
                let _ = self.conn.execute_batch("ROLLBACK");
                db_err(e)
            })?;
            let n = removed.len();
            for (rowid, inbox, len) in removed {
                if let Some(inbox) = id16(&inbox) {
                    self.counters
                        .remove(rowid, inbox, u64::try_from(len).unwrap_or(0));
                }
            }
            total += n as u64;
            self.metrics.expired_total.fetch_add(n as u64, Relaxed);
            self.publish();
            if (n as i64) < EXPIRE_CHUNK {
                return Ok(total);
            }
        }
    }

    fn run_batch(&mut self, batch: Vec<Cmd>) -> Option<oneshot::Sender<()>> {
        let mut puts = Vec::new();
        let mut put_replies = Vec::new();
        let mut acks = Vec::new();
        let mut later = Vec::new();
        let mut close = None;
        for cmd in batch {
            match cmd {
                Cmd::Put(req, reply) => {
                    puts.push(req);
                    put_replies.push(reply);
                }
                Cmd::Ack(id, filter) => acks.push((id, filter)),
                Cmd::Close(reply) => close = Some(reply),
                other => later.push(other),
            }
        }
        if !puts.is_empty() || !acks.is_empty() {
            let (outcomes, _) = self.write_batch(&puts, &acks);
            for (reply, outcome) in put_replies.into_iter().zip(outcomes) {
                let _ = reply.send(outcome);
            }
        }
        for cmd in later {
            match cmd {
                Cmd::Fetch {
                    inbox,
                    after,
                    max_bytes,
                    max_count,
                    not_before_ms,
                    reply,
                } => {
                    let page = self
                        .fetch(&inbox, after, max_bytes, max_count, not_before_ms)
                        .unwrap_or_else(|e| {
                            tracing::error!("queue read failed: {e}");
                            Vec::new()
                        });
                    let _ = reply.send(page);
                }
                Cmd::Expire(before_ms, reply) => {
                    let n = self.expire(before_ms).unwrap_or_else(|e| {
                        tracing::error!("expiry failed: {e}");
                        0
                    });
                    let _ = reply.send(n);
                }
                Cmd::Barrier(reply) => {
                    let _ = reply.send(());
                }
                Cmd::NonEmpty(ids, reply) => {
                    let _ = reply.send(self.non_empty(ids));
                }
                Cmd::Put(..) | Cmd::Ack(..) | Cmd::Close(_) => {}
            }
        }
        close
    }
}

/// The async side of the store: commands to its thread.
#[derive(Debug, Clone)]
pub struct StoreHandle {
    tx: mpsc::Sender<Cmd>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cmd::Put(..) => "Put",
            Cmd::Ack(..) => "Ack",
            Cmd::Fetch { .. } => "Fetch",
            Cmd::Expire(..) => "Expire",
            Cmd::Barrier(_) => "Barrier",
            Cmd::NonEmpty(..) => "NonEmpty",
            Cmd::Close(_) => "Close",
        })
    }
}

/// The store thread, joined on close.
#[derive(Debug)]
pub struct StoreThread {
    handle: StoreHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The store thread is gone (shut down or failed).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the queue store has stopped")]
pub struct StoreClosed;

impl Store {
    /// Moves the store to its own thread.
    pub fn spawn(mut self) -> Result<StoreThread, RelayError> {
        let (tx, mut rx) = mpsc::channel::<Cmd>(QUEUE_DEPTH);
        let thread = std::thread::Builder::new()
            .name("relay-store".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(c) => batch.push(c),
                            Err(_) => break,
                        }
                    }
                    if let Some(done) = self.run_batch(batch) {
                        rx.close();
                        drop(self);
                        let _ = done.send(());
                        return;
                    }
                }
            })
            .map_err(|e| RelayError::Store(format!("cannot start the store thread: {e}")))?;
        Ok(StoreThread {
            handle: StoreHandle { tx },
            thread: Some(thread),
        })
    }
}

impl StoreThread {
    /// A handle for commands.
    pub fn handle(&self) -> StoreHandle {
        self.handle.clone()
    }

    /// Finishes every command sent before, closes the database and joins the thread.
    pub async fn close(mut self) {
        let (tx, rx) = oneshot::channel();
        if self.handle.tx.send(Cmd::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

impl StoreHandle {
    async fn call<T>(&self, cmd: Cmd, rx: oneshot::Receiver<T>) -> Result<T, StoreClosed> {
        self.tx.send(cmd).await.map_err(|_| StoreClosed)?;
        rx.await.map_err(|_| StoreClosed)
    }

    /// Queues a put; the receiver yields its outcome after the commit.
    pub async fn put(&self, req: PutReq) -> Result<oneshot::Receiver<PutOutcome>, StoreClosed> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Put(req, tx))
            .await
            .map_err(|_| StoreClosed)?;
        Ok(rx)
    }

    /// Queues the deletion of an acknowledged envelope in inboxes `allowed` accepts.
    pub async fn ack(
        &self,
        envelope_id: EnvelopeId,
        allowed: AckFilter,
    ) -> Result<(), StoreClosed> {
        self.tx
            .send(Cmd::Ack(envelope_id, allowed))
            .await
            .map_err(|_| StoreClosed)
    }

    /// A page of an inbox (see [`Store::fetch`]).
    pub async fn fetch(
        &self,
        inbox: InboxId,
        after: i64,
        max_bytes: usize,
        max_count: usize,
        not_before_ms: i64,
    ) -> Result<Vec<Stored>, StoreClosed> {
        let (tx, rx) = oneshot::channel();
        self.call(
            Cmd::Fetch {
                inbox,
                after,
                max_bytes,
                max_count,
                not_before_ms,
                reply: tx,
            },
            rx,
        )
        .await
    }

    /// Resolves once every command sent before it has been carried out.
    pub async fn barrier(&self) -> Result<(), StoreClosed> {
        let (tx, rx) = oneshot::channel();
        self.call(Cmd::Barrier(tx), rx).await
    }

    /// The inboxes among `ids` that hold envelopes.
    pub async fn non_empty(&self, ids: Vec<InboxId>) -> Result<Vec<InboxId>, StoreClosed> {
        let (tx, rx) = oneshot::channel();
        self.call(Cmd::NonEmpty(ids, tx), rx).await
    }

    /// Deletes envelopes stored before `before_ms`.
    pub async fn expire(&self, before_ms: i64) -> Result<u64, StoreClosed> {
        let (tx, rx) = oneshot::channel();
        self.call(Cmd::Expire(before_ms, tx), rx).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    fn req(inbox: u8, blob: &[u8], poster: u8, now_ms: i64) -> PutReq {
        req_from(inbox, blob, poster, "10.0.0.1", now_ms)
    }

    fn req_from(inbox: u8, blob: &[u8], poster: u8, source: &str, now_ms: i64) -> PutReq {
        use sha2::Digest;
        let id: [u8; 32] = sha2::Sha256::digest(blob).into();
        PutReq {
            inbox: [inbox; 16],
            envelope_id: id[..16].try_into().unwrap(),
            frame: Arc::new(blob.to_vec()),
            blob_at: 0,
            poster: Poster {
                key: [poster; 8],
                source: crate::admission::addr_key(source.parse().unwrap()),
            },
            now_ms,
        }
    }

    fn open(dir: &Path, q: Quotas) -> Store {
        Store::open(dir, q, Metrics::new()).unwrap()
    }

    #[test]
    fn idempotent_put_fetch_ack_and_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("q");
        let mut s = open(&dir, Quotas::default());
        let mode: String = s
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = s
            .conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
        assert_eq!(s.non_empty(vec![[1; 16]]), Vec::<InboxId>::new());
        let a = req(1, b"first", 9, 1000);
        let b = req(1, b"second", 9, 1001);
        let (out, _) = s.write_batch(&[a.clone(), b.clone(), a.clone()], &[]);
        assert_eq!(
            out,
            vec![
                PutOutcome::Stored,
                PutOutcome::Stored,
                PutOutcome::Duplicate
            ]
        );
        // the same blob to another inbox is another envelope
        let mut a2 = a.clone();
        a2.inbox = [2; 16];
        assert_eq!(s.write_batch(&[a2], &[]).0, vec![PutOutcome::Stored]);
        assert_eq!(s.usage(), (3, 16));
        assert_eq!(
            s.non_empty(vec![[1; 16], [3; 16], [2; 16]]),
            vec![[1; 16], [2; 16]]
        );

        let page = s.fetch(&[1; 16], 0, 1 << 20, 10, 0).unwrap();
        assert_eq!(page.len(), 2);
        assert_eq!(page[0].envelope_id, a.envelope_id);
        assert_eq!(
            page[0].frame,
            deliver_frame(&[1; 16], &a.envelope_id, b"first")
        );
        let page2 = s.fetch(&[1; 16], page[0].rowid, 1 << 20, 10, 0).unwrap();
        assert_eq!(page2.len(), 1);
        // byte budget: one at least, then stop
        assert_eq!(s.fetch(&[1; 16], 0, 1, 10, 0).unwrap().len(), 1);
        // not_before filters old envelopes
        assert_eq!(s.fetch(&[1; 16], 0, 1 << 20, 10, 1001).unwrap().len(), 1);

        // an ACK deletes only in inboxes the filter allows
        let (_, n) = s.write_batch(
            &[],
            &[(a.envelope_id, Box::new(|i: &InboxId| *i == [7; 16]))],
        );
        assert_eq!(n, 0);
        let (_, n) = s.write_batch(
            &[],
            &[(a.envelope_id, Box::new(|i: &InboxId| *i == [1; 16]))],
        );
        assert_eq!(n, 1);
        assert_eq!(s.usage(), (2, 11));
        drop(s);

        let s = open(&dir, Quotas::default());
        assert_eq!(s.usage(), (2, 11), "counters reloaded after reopen");
        assert_eq!(s.fetch(&[1; 16], 0, 1 << 20, 10, 0).unwrap().len(), 1);
        assert_eq!(s.fetch(&[2; 16], 0, 1 << 20, 10, 0).unwrap().len(), 1);
    }

    #[test]
    fn second_open_is_refused_while_locked() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("q");
        let _s = open(&dir, Quotas::default());
        let err = Store::open(&dir, Quotas::default(), Metrics::new()).unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");
    }

    #[test]
    fn quotas_refuse_instead_of_growing() {
        let tmp = tempfile::tempdir().unwrap();
        let q = Quotas {
            inbox_bytes: 100,
            inbox_envelopes: 3,
            poster_bytes: 1000,
            poster_envelopes: 5,
            address_bytes: 1000,
            address_envelopes: 100,
            total_bytes: 10_000,
            total_envelopes: 100,
            max_blob_bytes: 60,
        };
        let mut s = open(&tmp.path().join("q"), q);
        assert_eq!(
            s.write_batch(&[req(1, &[0; 61], 1, 0)], &[]).0,
            vec![PutOutcome::TooLarge]
        );
        let puts: Vec<_> = (0..4u8).map(|i| req(1, &[i; 10], 1, 0)).collect();
        assert_eq!(
            s.write_batch(&puts, &[]).0,
            vec![
                PutOutcome::Stored,
                PutOutcome::Stored,
                PutOutcome::Stored,
                PutOutcome::Quota
            ]
        );
        // bytes per inbox
        let big: Vec<_> = (0..2u8).map(|i| req(2, &[i; 60], 2, 0)).collect();
        assert_eq!(
            s.write_batch(&big, &[]).0,
            vec![PutOutcome::Stored, PutOutcome::Quota]
        );
        // envelopes per poster, across inboxes
        let spread: Vec<_> = (10..14u8).map(|i| req(i, &[i; 5], 1, 0)).collect();
        assert_eq!(
            s.write_batch(&spread, &[]).0,
            vec![
                PutOutcome::Stored,
                PutOutcome::Stored,
                PutOutcome::Quota,
                PutOutcome::Quota
            ]
        );
        // acknowledging frees room
        let id = puts[0].envelope_id;
        s.write_batch(&[], &[(id, Box::new(|_: &InboxId| true))]);
        assert_eq!(
            s.write_batch(&[puts[3].clone()], &[]).0,
            vec![PutOutcome::Stored]
        );
    }

    #[test]
    fn address_quotas_hold_across_posters_and_forget_at_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("q");
        let q = Quotas {
            poster_envelopes: 2,
            address_envelopes: 3,
            address_bytes: 40,
            ..Quotas::default()
        };
        let mut s = open(&dir, q.clone());
        // fresh keys (posters 1..=4) from one address: 3 envelopes in all, then refusals
        let puts: Vec<_> = (1..=4u8)
            .map(|p| req_from(p, &[p; 10], p, "10.0.0.1", 0))
            .collect();
        assert_eq!(
            s.write_batch(&puts, &[]).0,
            vec![
                PutOutcome::Stored,
                PutOutcome::Stored,
                PutOutcome::Stored,
                PutOutcome::Quota
            ]
        );
        // the IPv6 /64 is one address group; another group has its own share
        let v6: Vec<_> = (5..=8u8)
            .map(|p| req_from(p, &[p; 10], p, &format!("2001:db8::{p}"), 0))
            .collect();
        assert_eq!(
            s.write_batch(&v6, &[]).0,
            vec![
                PutOutcome::Stored,
                PutOutcome::Stored,
                PutOutcome::Stored,
                PutOutcome::Quota
            ]
        );
        assert_eq!(
            s.write_batch(&[req_from(9, &[9; 10], 9, "10.0.0.2", 0)], &[])
                .0,
            vec![PutOutcome::Stored]
        );
        // bytes: a blob larger than an address may hold can never fit
        assert_eq!(
            s.write_batch(&[req_from(9, &[9; 41], 9, "10.0.0.2", 0)], &[])
                .0,
            vec![PutOutcome::TooLarge]
        );
        assert_eq!(
            s.write_batch(&[req_from(9, &[8; 31], 9, "10.0.0.2", 0)], &[])
                .0,
            vec![PutOutcome::Quota],
            "10 + 31 bytes are over the address's 40"
        );
        // an acknowledged envelope gives its address room back
        s.write_batch(&[], &[(puts[0].envelope_id, Box::new(|_: &InboxId| true))]);
        assert_eq!(
            s.write_batch(&[puts[3].clone()], &[]).0,
            vec![PutOutcome::Stored]
        );
        assert!(s.counters.source.len() <= 3);
        drop(s);
        // like per-poster counts, per-address counts live in memory only: after a restart
        // what is held counts against its inbox and the total, not against an address
        let mut s = open(&dir, q);
        assert!(s.counters.source.is_empty() && s.counters.owner.is_empty());
        assert_eq!(
            s.write_batch(&[req_from(20, &[20; 10], 20, "10.0.0.1", 0)], &[])
                .0,
            vec![PutOutcome::Stored]
        );
        let stored: i64 = s
            .conn
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('envelopes')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(stored, 6, "no column for a poster or an address");
    }

    #[test]
    fn expiry_deletes_old_only() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = open(&tmp.path().join("q"), Quotas::default());
        let puts: Vec<_> = (0..10u8)
            .map(|i| req(1, &[i; 4], 1, i64::from(i) * 100))
            .collect();
        s.write_batch(&puts, &[]);
        assert_eq!(s.expire(500).unwrap(), 5);
        assert_eq!(s.usage(), (5, 20));
        assert_eq!(s.expire(500).unwrap(), 0);
        assert_eq!(s.fetch(&[1; 16], 0, 1 << 20, 100, 0).unwrap().len(), 5);
    }

    #[tokio::test]
    async fn thread_group_commits() {
        let tmp = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let st = Store::open(
            &tmp.path().join("q"),
            Quotas::default(),
            Arc::clone(&metrics),
        )
        .unwrap()
        .spawn()
        .unwrap();
        let h = st.handle();
        let mut rxs = Vec::new();
        for i in 0..400u32 {
            rxs.push(h.put(req(3, &i.to_le_bytes(), 1, 0)).await.unwrap());
        }
        for rx in rxs {
            assert_eq!(rx.await.unwrap(), PutOutcome::Stored);
        }
        let commits = metrics.commits_total.load(Relaxed);
        assert!(
            (1..400).contains(&commits),
            "{commits} commits for 400 puts"
        );
        assert_eq!(
            h.fetch([3; 16], 0, 1 << 20, 1000, 0).await.unwrap().len(),
            400
        );
        assert_eq!(h.expire(1).await.unwrap(), 400);
        st.close().await;
        assert!(h.expire(1).await.is_err());
    }
}
