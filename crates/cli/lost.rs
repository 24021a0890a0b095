//! What became of the messages a stopped listener was carrying.
//!
//! A `send` or `call` that runs through a `listen` (or a `call` holding the home) learns each
//! message's id as soon as that process stored it (`Reply::Stored`). When the process dies
//! first, the message may be stored all the same: its outbox row is committed, and visible to
//! every other process, before the listener can say so. Its client then finds out from the
//! home itself, never by guessing, so that a script neither loses a message nor sends it twice:
//!
//! 1. it waits until the stopped process has let go of the home (nothing more is written);
//! 2. the contact's outbox rows numbered from its `next_seq`, read before the request, are the
//!    candidates; none means that nothing was stored;
//! 3. the client chose each message's commitment salt, so the audit log's `msg_sent` entries
//!    (readable without keys) name the seq of each of its messages that has one;
//! 4. candidates without such an entry are opened with the data key when the passphrase is at
//!    hand without asking (`--passphrase-file`, `LIAISON_PASSPHRASE`, or unencrypted keys);
//! 5. a message found nowhere while a candidate could not be opened is reported as unknown.

use crate::ctx::Ctx;
use liaison_audit::{AuditReader, Event};
use liaison_node::atrest::Direction;
use liaison_node::home::{Home, HomeError};
use liaison_node::node::open_content;
use liaison_node::store;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How long a client waits for a stopped listener to let go of the home.
const RELEASE_WAIT: Duration = Duration::from_secs(10);

/// One message a client handed to the process that stopped.
#[derive(Debug, Clone)]
pub struct Handed {
    /// The commitment salt the client chose for it.
    pub salt: [u8; 32],
    /// `commitment(salt, body)`, as the audit log records it.
    pub commitment: [u8; 32],
    /// Its seq, if the process said it stored it.
    pub seq: Option<u64>,
}

impl Handed {
    /// A message with body `body`, with a fresh random salt.
    pub fn new(body: &[u8]) -> Handed {
        let salt: [u8; 32] = liaison_proto::keys::random_bytes().unwrap_or([0; 32]);
        Handed {
            salt,
            commitment: liaison_audit::commitment(&salt, body),
            seq: None,
        }
    }

    /// The salt in the form the control protocol carries it.
    pub fn salt_hex(&self) -> String {
        hex::encode(self.salt)
    }
}

/// Parses a salt carried by the control protocol.
pub fn parse_salt(hex_salt: &str) -> Option<[u8; 32]> {
    let v = hex::decode(hex_salt).ok()?;
    <[u8; 32]>::try_from(v.as_slice()).ok()
}

/// Where a message is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// In the outbox under `seq`, with this status (`pending`, `queued`, `delivered`, …).
    Stored {
        /// Its seq.
        seq: u64,
        /// Its outbox status.
        status: String,
    },
    /// Not stored: it was never sent.
    NotStored,
    /// Cannot be told; the reason, for the user.
    Unknown(String),
}

impl State {
    /// The state's name in output: the outbox status, `not stored` or `unknown`.
    pub fn name(&self) -> &str {
        match self {
            State::Stored { status, .. } => status,
            State::NotStored => "not stored",
            State::Unknown(_) => "unknown",
        }
    }

    /// The same in JSON (`not_stored`).
    pub fn json_name(&self) -> &str {
        match self {
            State::NotStored => "not_stored",
            other => other.name(),
        }
    }
}

/// Waits until the process `holder` (the listener that stopped) no longer holds the home:
/// the home is free, or another process took it. False if it still holds it after
/// [`RELEASE_WAIT`] (alive, but not answering).
async fn wait_released(home: &Home, holder: Option<u32>) -> bool {
    let end = tokio::time::Instant::now() + RELEASE_WAIT;
    loop {
        match home.lock() {
            // free: released at once (a listener being restarted waits a moment)
            Ok(_lock) => return true,
            // a new holder (whose pid may not be written yet)
            Err(HomeError::Locked { pid, .. }) if holder.is_some() && pid != holder => {
                return true;
            }
            Err(HomeError::Locked { .. }) => {}
            Err(_) => return false,
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The contact's next outbound seq now: what a message submitted from now on is numbered from.
pub fn next_seq(home: &Home, contact: &str) -> Option<u64> {
    let conn = store::open_read_only(&home.db_path()).ok()?;
    store::contact(&conn, contact)
        .ok()
        .flatten()
        .map(|c| c.next_seq)
}

/// Seqs of the `msg_sent` entries about `contact` numbered `from` or later, by commitment,
/// and every such seq.
fn audit_sent(
    home: &Home,
    identity: &[u8; 32],
    from: u64,
) -> (BTreeMap<[u8; 32], u64>, BTreeSet<u64>) {
    let mut by_commitment = BTreeMap::new();
    let mut seqs = BTreeSet::new();
    let path = store::audit_db_path(&home.db_path());
    let Ok(reader) = AuditReader::open(&path) else {
        return (by_commitment, seqs);
    };
    let peer = hex::encode(identity);
    let Ok(lines) = reader.lines() else {
        return (by_commitment, seqs);
    };
    for line in lines.into_iter().filter(|l| l.peer_identity == peer) {
        let Some(channel) = hex::decode(&line.channel)
            .ok()
            .and_then(|c| <[u8; 32]>::try_from(c.as_slice()).ok())
        else {
            continue;
        };
        let Ok(entries) = reader.show(Some(&channel), None) else {
            continue;
        };
        for e in entries {
            if let Event::MsgSent {
                seq, commitment, ..
            } = e.entry.event
                && seq >= from
            {
                by_commitment.insert(commitment, seq);
                seqs.insert(seq);
            }
        }
    }
    (by_commitment, seqs)
}

/// The state of each message of `handed` (in order) that the process with pid `holder` was
/// carrying to `contact` when it stopped. `from` is the contact's `next_seq` read before the
/// first of them was handed over.
pub async fn settle(
    ctx: &Ctx,
    home: &Home,
    contact: &str,
    from: Option<u64>,
    holder: Option<u32>,
    handed: &[Handed],
) -> Vec<State> {
    let conn = match store::open_read_only(&home.db_path()) {
        Ok(c) => c,
        Err(e) => {
            let why = format!("the message store cannot be read ({e})");
            return handed.iter().map(|_| State::Unknown(why.clone())).collect();
        }
    };
    let status = |seq: u64| match store::outbox_status(&conn, contact, seq) {
        Ok(Some(status)) => State::Stored { seq, status },
        Ok(None) => State::Unknown(format!("{contact}:{seq} is not in the outbox")),
        Err(e) => State::Unknown(format!("the outbox cannot be read ({e})")),
    };
    let mut states: Vec<Option<State>> = handed.iter().map(|h| h.seq.map(status)).collect();
    if states.iter().all(Option::is_some) {
        return states.into_iter().flatten().collect();
    }
    if !wait_released(home, holder).await {
        let why = "the listener still holds the home but stopped answering".to_string();
        return states
            .into_iter()
            .map(|s| s.unwrap_or_else(|| State::Unknown(why.clone())))
            .collect();
    }
    let from = from.unwrap_or(0);
    let known: BTreeSet<u64> = handed.iter().filter_map(|h| h.seq).collect();
    let rows: Vec<store::OutboxRow> = match store::outbox_list(&conn, Some(contact), false) {
        Ok(rows) => rows
            .into_iter()
            .filter(|r| r.seq >= from && !known.contains(&r.seq))
            .collect(),
        Err(e) => {
            let why = format!("the outbox cannot be read ({e})");
            return states
                .into_iter()
                .map(|s| s.unwrap_or_else(|| State::Unknown(why.clone())))
                .collect();
        }
    };
    // the audit log names the seq of each message that has its record there
    let identity = store::contact(&conn, contact)
        .ok()
        .flatten()
        .map(|c| c.identity);
    let (by_commitment, recorded) = match (&identity, rows.is_empty()) {
        (Some(id), false) => audit_sent(home, id, from),
        _ => (BTreeMap::new(), BTreeSet::new()),
    };
    for (s, h) in states.iter_mut().zip(handed) {
        if s.is_none()
            && let Some(&seq) = by_commitment.get(&h.commitment)
            && rows.iter().any(|r| r.seq == seq)
        {
            *s = Some(status(seq));
        }
    }
    // rows without an audit record may be ours: open them if the key is at hand
    let unexplained: Vec<&store::OutboxRow> =
        rows.iter().filter(|r| !recorded.contains(&r.seq)).collect();
    if states.iter().any(Option::is_none) && !unexplained.is_empty() {
        let mut unopened = Vec::new();
        let secrets = ctx.secrets_without_prompt(home);
        match &secrets {
            Some(secrets) => {
                for r in &unexplained {
                    match open_content(&secrets.data_key, contact, Direction::Sent, r.seq, &r.body)
                    {
                        Ok(c) => {
                            let commitment = liaison_audit::commitment(&c.salt, &c.body);
                            for (s, h) in states.iter_mut().zip(handed) {
                                if s.is_none() && h.commitment == commitment {
                                    *s = Some(status(r.seq));
                                }
                            }
                        }
                        Err(_) => unopened.push(r.seq),
                    }
                }
            }
            None => unopened.extend(unexplained.iter().map(|r| r.seq)),
        }
        if !unopened.is_empty() {
            let ids: Vec<String> = unopened.iter().map(|s| format!("{contact}:{s}")).collect();
            let why = if secrets.is_some() {
                format!(
                    "{} stored meanwhile without its audit record cannot be opened",
                    ids.join(", ")
                )
            } else {
                format!(
                    "{} stored meanwhile without its audit record, and the passphrase is \
                     needed to tell whether it is this message (give LIAISON_PASSPHRASE or \
                     --passphrase-file)",
                    ids.join(", ")
                )
            };
            return states
                .into_iter()
                .map(|s| s.unwrap_or_else(|| State::Unknown(why.clone())))
                .collect();
        }
    }
    // every candidate is explained: the rest was not stored
    states
        .into_iter()
        .map(|s| s.unwrap_or(State::NotStored))
        .collect()
}
