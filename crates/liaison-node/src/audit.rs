//! The audit service: one thread owns every line's audit log (`liaison_audit::LineAudit`, in
//! the `audit_*` tables of the home's one database, beside the messages), so appends never
//! block a line task and every line group-commits together at most every [`COMMIT_EVERY`].
//!
//! Ordering rules the node follows (docs/audit.md):
//! - a received message's `msg_recv` entry is durable (`Audit::persist`) before the message
//!   is stored and acknowledged, and a sent message's `msg_sent` before the message leaves;
//!   after a crash the same entry may be written again, which the checker accepts (same seq,
//!   same commitment);
//! - checkpoints are signed only over durable entries (the audit crate's rule), offered to the
//!   peer in AUDIT frames after each commit that signed one and whenever a session comes up;
//!   the peer's cosignatures and receipts come back the same way. Records of cosignatures
//!   sign no checkpoint of their own and cosigning is rate-bounded per peer (the audit crate's
//!   `line` module), so an idle line goes quiet; every tick also releases a cosignature the
//!   rate bound held back.
//!
//! Only the process holding the home lock runs this service, so one log is never signed by
//! two processes (which would fork it).

use crate::line::LineInput;
use crate::node::NodeEvent;
use ed25519_dalek::{SigningKey, VerifyingKey};
use liaison_audit::entry::{AnomalyKind, Event};
use liaison_audit::{LineAudit, LocalKeys};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, oneshot};
use zeroize::Zeroizing;

/// Longest wait for the last commit at shutdown (above SQLite's 5 s busy timeout).
const STOP_WAIT: Duration = Duration::from_secs(12);

/// Group-commit period of audit logs.
pub const COMMIT_EVERY: Duration = Duration::from_millis(100);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

enum Cmd {
    Open {
        contact: String,
        peer: [u8; 32],
        line: mpsc::Sender<LineInput>,
        sent: Vec<(u64, [u8; 32])>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Append {
        contact: String,
        event: Event,
    },
    Anomaly {
        contact: String,
        kind: AnomalyKind,
    },
    Persist {
        contact: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Message {
        contact: String,
        bytes: Vec<u8>,
    },
    SessionUp {
        contact: String,
    },
    Status {
        reply: oneshot::Sender<HashMap<String, liaison_audit::LineStatus>>,
    },
    Stop {
        reply: oneshot::Sender<()>,
    },
}

/// Handle to the audit thread. Cloning shares it.
#[derive(Clone, Debug)]
pub struct Audit {
    tx: std_mpsc::SyncSender<Cmd>,
}

/// The keys the audit thread signs with (kept as seeds, wiped on drop).
pub(crate) struct AuditKeys {
    pub(crate) identity: SigningKey,
    pub(crate) log: Zeroizing<[u8; 32]>,
    pub(crate) witness: Zeroizing<[u8; 32]>,
}

impl AuditKeys {
    fn local(&self) -> Option<LocalKeys> {
        LocalKeys::from_identity(
            &self.identity,
            SigningKey::from_bytes(&self.log),
            SigningKey::from_bytes(&self.witness),
        )
        .ok()
    }
}

struct Open {
    log: LineAudit,
    line: mpsc::Sender<LineInput>,
    dirty: bool,
    /// When a refused peer message was last shown to the user (at most once a minute: a peer
    /// whose log forked offers the same checkpoint again and again).
    reported: Option<Instant>,
}

/// Least time between two refused peer audit messages shown to the user, per line (all are
/// logged; the audit log aggregates them per minute itself).
const REPORT_EVERY: Duration = Duration::from_secs(60);

impl Audit {
    /// Starts the thread for the audit store at `path`.
    pub(crate) fn start(
        path: PathBuf,
        keys: AuditKeys,
        events: broadcast::Sender<NodeEvent>,
    ) -> std::io::Result<Audit> {
        let (tx, rx) = std_mpsc::sync_channel::<Cmd>(65_536);
        std::thread::Builder::new()
            .name("liaison-audit".into())
            .spawn(move || run(path, keys, events, rx))?;
        Ok(Audit { tx })
    }

    fn send(&self, c: Cmd) {
        if self.tx.send(c).is_err() {
            tracing::debug!("audit service is gone");
        }
    }

    /// Opens (or creates) the log of the line with the contact whose identity key is `peer`,
    /// and makes sure every message about to leave has its `msg_sent` entry: `sent` lists the
    /// outbox's unacknowledged messages (seq, commitment); those a crash kept out of the log
    /// (it struck between the outbox commit and the audit commit) are logged now, durably,
    /// before the line may send them. An error means the line must not run.
    pub(crate) async fn open(
        &self,
        contact: &str,
        peer: [u8; 32],
        line: mpsc::Sender<LineInput>,
        sent: Vec<(u64, [u8; 32])>,
    ) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Open {
            contact: contact.to_string(),
            peer,
            line,
            sent,
            reply,
        });
        rx.await
            .unwrap_or_else(|_| Err("the audit service has stopped".into()))
    }

    /// Appends an event (durable at the next group commit).
    pub(crate) fn append(&self, contact: &str, event: Event) {
        self.send(Cmd::Append {
            contact: contact.to_string(),
            event,
        });
    }

    /// Counts an anomaly (aggregated per minute by the log).
    pub(crate) fn anomaly(&self, contact: &str, kind: AnomalyKind) {
        self.send(Cmd::Anomaly {
            contact: contact.to_string(),
            kind,
        });
    }

    /// Makes everything appended so far durable. An error says why it is not (the entries
    /// stay pending and are stored by a later commit if the cause goes away).
    pub(crate) async fn persist(&self, contact: &str) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Persist {
            contact: contact.to_string(),
            reply,
        });
        rx.await
            .unwrap_or_else(|_| Err("the audit service has stopped".into()))
    }

    /// An AUDIT frame from the peer; replies go back to the line as `AuditOut`.
    pub(crate) fn message(&self, contact: &str, bytes: &[u8]) {
        self.send(Cmd::Message {
            contact: contact.to_string(),
            bytes: bytes.to_vec(),
        });
    }

    /// A session came up: offer the latest checkpoint again.
    pub(crate) fn session_up(&self, contact: &str) {
        self.send(Cmd::SessionUp {
            contact: contact.to_string(),
        });
    }

    /// Every open line's status.
    pub async fn status(&self) -> HashMap<String, liaison_audit::LineStatus> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Status { reply });
        rx.await.unwrap_or_default()
    }

    /// Commits and signs whatever is pending, then stops the thread (at shutdown), so a node
    /// started again on the same home in this process is the only writer of its logs.
    pub(crate) async fn stop(&self) {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Stop { reply });
        let _ = tokio::time::timeout(STOP_WAIT, rx).await;
    }
}

fn run(
    path: PathBuf,
    keys: AuditKeys,
    events: broadcast::Sender<NodeEvent>,
    rx: std_mpsc::Receiver<Cmd>,
) {
    let mut lines: HashMap<String, Open> = HashMap::new();
    let mut next_commit = Instant::now() + COMMIT_EVERY;
    loop {
        let wait = next_commit.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Cmd::Stop { reply }) => {
                commit_all(&mut lines);
                let _ = reply.send(());
                return;
            }
            Ok(cmd) => handle(cmd, &path, &keys, &events, &mut lines),
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                commit_all(&mut lines);
                return;
            }
        }
        if Instant::now() >= next_commit {
            commit_all(&mut lines);
            next_commit = Instant::now() + COMMIT_EVERY;
        }
    }
}

fn send_out(o: &Open, msgs: Vec<Vec<u8>>) {
    if !msgs.is_empty() && o.line.try_send(LineInput::AuditOut(msgs)).is_err() {
        tracing::debug!("line busy: audit messages dropped (they are offered again)");
    }
}

fn commit_all(lines: &mut HashMap<String, Open>) {
    let now = now_ms();
    for (contact, o) in lines.iter_mut() {
        // a cosignature the audit crate's rate bound held back, once due (cheap otherwise);
        // its record is stored with the witness state and calls for no checkpoint
        match o.log.handle_timeout(now) {
            Ok(msgs) => send_out(o, msgs),
            Err(e) => tracing::warn!(contact = %contact, "audit: {e}"),
        }
        if !o.dirty {
            continue;
        }
        match o.log.commit(now) {
            Ok(offer) => {
                o.dirty = false;
                send_out(o, offer.into_iter().collect());
            }
            Err(e) => tracing::error!(contact = %contact, "audit commit failed: {e}"),
        }
    }
}

fn handle(
    cmd: Cmd,
    path: &std::path::Path,
    keys: &AuditKeys,
    events: &broadcast::Sender<NodeEvent>,
    lines: &mut HashMap<String, Open>,
) {
    let now = now_ms();
    match cmd {
        Cmd::Open {
            contact,
            peer,
            line,
            sent,
            reply,
        } => {
            let r = open_line(&contact, peer, line, &sent, path, keys, lines, now);
            if let Err(e) = &r {
                tracing::error!(contact = %contact, "cannot open the audit log: {e}");
                let _ = events.send(NodeEvent::Anomaly {
                    contact,
                    kind: format!("audit log unavailable: {e}"),
                });
            }
            let _ = reply.send(r);
        }
        Cmd::Append { contact, event } => {
            if let Some(o) = lines.get_mut(&contact) {
                o.log.append(event, now);
                o.dirty = true;
            }
        }
        Cmd::Anomaly { contact, kind } => {
            if let Some(o) = lines.get_mut(&contact) {
                o.log.note_anomaly(kind, now);
                o.dirty = true;
            }
        }
        Cmd::Persist { contact, reply } => {
            let r = match lines.get_mut(&contact) {
                Some(o) => o.log.persist(now).map_err(|e| {
                    tracing::error!(contact = %contact, "audit persist failed: {e}");
                    e.to_string()
                }),
                None => Err("the line's audit log is not open".into()),
            };
            let _ = reply.send(r);
        }
        Cmd::Message { contact, bytes } => {
            let Some(o) = lines.get_mut(&contact) else {
                return;
            };
            match o.log.handle_message(&bytes, now) {
                Ok(replies) => {
                    o.dirty = true;
                    send_out(o, replies);
                }
                Err(e) => {
                    o.dirty = true;
                    if e.is_peer_fault() {
                        tracing::warn!(contact = %contact, "audit: {e}");
                        let quiet = o.reported.is_some_and(|t| t.elapsed() < REPORT_EVERY);
                        if !quiet {
                            o.reported = Some(Instant::now());
                            let _ = events.send(NodeEvent::Anomaly {
                                contact,
                                kind: format!("audit: {e}"),
                            });
                        }
                    } else {
                        tracing::error!(contact = %contact, "audit: {e}");
                    }
                }
            }
        }
        Cmd::SessionUp { contact } => {
            if let Some(o) = lines.get(&contact) {
                match o.log.current_offer() {
                    Ok(offer) => send_out(o, offer.into_iter().collect()),
                    Err(e) => tracing::warn!(contact = %contact, "audit offer: {e}"),
                }
            }
        }
        Cmd::Status { reply } => {
            let m = lines
                .iter()
                .map(|(c, o)| (c.clone(), o.log.status()))
                .collect();
            let _ = reply.send(m);
        }
        Cmd::Stop { reply } => {
            commit_all(lines);
            let _ = reply.send(());
        }
    }
}

/// Opens a line's log (or rebinds it to a new line task) and logs the `msg_sent` entries a
/// crash kept out of it, durably (see [`Audit::open`]).
#[allow(clippy::too_many_arguments)]
fn open_line(
    contact: &str,
    peer: [u8; 32],
    line: mpsc::Sender<LineInput>,
    sent: &[(u64, [u8; 32])],
    path: &std::path::Path,
    keys: &AuditKeys,
    lines: &mut HashMap<String, Open>,
    now: u64,
) -> Result<(), String> {
    if !lines.contains_key(contact) {
        let peer = VerifyingKey::from_bytes(&peer).map_err(|_| "bad peer key".to_string())?;
        let local = keys
            .local()
            .ok_or_else(|| "the audit keys do not bind to the identity".to_string())?;
        let (log, recovery) = LineAudit::open(path, local, peer, now).map_err(|e| e.to_string())?;
        let o = Open {
            log,
            line: line.clone(),
            dirty: false,
            reported: None,
        };
        send_out(&o, recovery.into_iter().collect());
        lines.insert(contact.to_string(), o);
    }
    let Some(o) = lines.get_mut(contact) else {
        return Err("the line's audit log is not open".into());
    };
    o.line = line;
    let (Some(from), Some(to)) = (
        sent.iter().map(|s| s.0).min(),
        sent.iter().map(|s| s.0).max(),
    ) else {
        return Ok(());
    };
    let logged = o
        .log
        .sent_commitments(from, to)
        .map_err(|e| e.to_string())?;
    let mut repaired = 0usize;
    for &(seq, commitment) in sent {
        if logged.get(&seq) == Some(&commitment) {
            continue;
        }
        o.log.append(
            Event::MsgSent {
                seq,
                commitment,
                ciphertext_hash: [0; 32],
            },
            now,
        );
        repaired += 1;
    }
    if repaired > 0 {
        o.dirty = true;
        o.log.persist(now).map_err(|e| e.to_string())?;
        tracing::warn!(
            contact,
            repaired,
            "logged the msg_sent entries of messages a crash kept out of the audit log"
        );
    }
    Ok(())
}
