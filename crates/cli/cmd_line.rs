//! `listen`, `call` and `send`: the commands that run a node.
//!
//! `call` and `send` take the home's lock and run their own node; if `listen` already holds
//! the lock they hand the same request to it over the control socket, and print what it
//! answers. The logic ([`send_logic`], [`call_logic`]) is the same either way.

use crate::control::{self, Request};
use crate::ctx::Ctx;
use crate::exit::{CmdResult, Code, Context, Failure, runtime, usage};
use crate::lost::{self, Handed, State};
use crate::output::{Local, Out, show};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::Args;
use liaison_node::control::ControlListener;
use liaison_node::home::{Home, HomeError, HomeLock};
use liaison_node::node::{Node, NodeError, NodeEvent, NodeOptions, unix_ms};
use liaison_node::store;
use liaison_wire::consts::{MAX_MESSAGE_BODY, MSG_SALT_LEN};
use liaison_wire::frame::{MSG_KIND_FILE, MSG_KIND_TEXT, MessageContent, valid_file_name};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

/// `liaison listen`.
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  liaison listen --bind 0.0.0.0:7700\n  liaison listen --relay r1 --json        # one JSON object per event on stdout\n\nWhile it runs, `call` and `send` on the same home go through it. SIGINT/SIGTERM stop it\ncleanly; nothing acknowledged is lost."
)]
pub struct ListenArgs {
    /// Accept direct calls on this address, e.g. 0.0.0.0:7700 (port 0 picks a free port; the
    /// bound address is printed as `listening on ADDR`).
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<SocketAddr>,
    /// Stay subscribed at this pinned relay (repeatable): contacts that name it, or name no
    /// relay, can reach this node through it, and messages held for it there arrive.
    #[arg(long = "relay", value_name = "RELAYNAME")]
    pub relays: Vec<String>,
}

/// `liaison call`.
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  liaison call bob --addr bob.example:7700       # interactive: type, Enter sends\n  printf 'one\\ntwo\\n' | liaison call bob         # piped: exits 0 once bob has both\n  liaison call bob --relay r1\n\nIt exits 0 once bob acknowledged every line. Otherwise (timeout, Ctrl-C, a refusal, or the\nlistener it ran through stopped) it prints each line's state and id on stdout, e.g.\n`pending bob:3 (line 3)` or `not stored (line 4): send it again` (with --json,\n`message_state` objects), then one line on stderr saying what failed, and exits 4 (3 for a\nrefusal; 1 if a line was not stored or its state is unknown).\n\nWhile it runs, `status`, `send` and `call` on the same home go through it, as they go\nthrough a running `listen`."
)]
pub struct CallArgs {
    /// The contact to call.
    pub name: String,
    /// Where the contact listens (default: the address stored with the contact).
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "relay")]
    pub addr: Option<String>,
    /// Meet the contact at this pinned relay instead.
    #[arg(long, value_name = "RELAYNAME")]
    pub relay: Option<String>,
    /// After stdin ends, wait this many seconds without progress for receipts.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub timeout: u64,
}

/// `liaison send`.
#[derive(Args, Debug)]
#[command(
    group(clap::ArgGroup::new("what").required(true).args(["text", "file"])),
    after_help = "Examples:\n  liaison send bob \"meeting moved to 10:00\"\n  liaison send bob --file report.pdf --addr bob.example:7700\n  liaison send bob \"while you were out\" --relay r1     # `queued` if bob is away\n\nStatus: delivered (bob's node stored it) and queued (a relay holds it sealed) exit 0;\npending (still only in your outbox) exits 4. If the `listen` it goes through stops\nmeanwhile, send finds the message in the home and reports it the same way; only a message\nreported `not stored` (exit 1) is to be sent again."
)]
pub struct SendArgs {
    /// The contact.
    pub name: String,
    /// The message text.
    pub text: Option<String>,
    /// Send this file instead of text (up to 16 MiB).
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Where the contact listens (default: the address stored with the contact).
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "relay")]
    pub addr: Option<String>,
    /// Meet the contact at this pinned relay instead; if the contact is away, the message is
    /// sealed to its mailbox key and held there (`queued`).
    #[arg(long, value_name = "RELAYNAME")]
    pub relay: Option<String>,
    /// Wait this many seconds for the receipt before reporting `pending` (exit 4).
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub timeout: u64,
}

/// A `send` request (also carried over the control socket).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendReq {
    /// Contact.
    pub contact: String,
    /// Text, or
    pub text: Option<String>,
    /// a file: name and base64 bytes.
    pub file: Option<(String, String)>,
    /// Address override.
    pub addr: Option<String>,
    /// Relay to meet at.
    #[serde(default)]
    pub relay: Option<String>,
    /// Seconds to wait for the receipt.
    pub timeout: u64,
    /// JSON output.
    pub json: bool,
    /// The commitment salt the client chose (hex): a client whose listener stops before
    /// saying it stored the message finds it in the home by this.
    #[serde(default)]
    pub salt: Option<String>,
}

/// One line of a call's input.
#[derive(Debug, Clone)]
pub struct CallInput {
    /// The message.
    pub text: String,
    /// The commitment salt its client chose, if any.
    pub salt: Option<[u8; MSG_SALT_LEN]>,
}

/// A `call` request (also carried over the control socket).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallReq {
    /// Contact.
    pub contact: String,
    /// Address override.
    pub addr: Option<String>,
    /// Relay to meet at.
    #[serde(default)]
    pub relay: Option<String>,
    /// Seconds without progress to wait for receipts after stdin ends.
    pub timeout: u64,
    /// stdin is a terminal.
    pub interactive: bool,
    /// JSON output.
    pub json: bool,
}

fn salt() -> [u8; MSG_SALT_LEN] {
    liaison_proto::keys::random_bytes().unwrap_or([0; MSG_SALT_LEN])
}

fn text_content(text: String, salt_chosen: Option<[u8; MSG_SALT_LEN]>) -> MessageContent {
    MessageContent {
        kind: MSG_KIND_TEXT,
        sent_at_ms: unix_ms(),
        salt: salt_chosen.unwrap_or_else(salt),
        name: None,
        body: text.into_bytes(),
    }
}

/// Opened node for `call`/`send` when no `listen` holds the home.
struct Running {
    node: Node,
    _lock: HomeLock,
    /// The home's control socket path (a running `call` serves it, like `listen`).
    control: PathBuf,
}

enum Access {
    Local(Box<Running>),
    /// A connection to a running listener's control socket, and the home.
    Remote(tokio::net::UnixStream, Home),
}

async fn access(ctx: &Ctx) -> Result<Access, Failure> {
    let home = ctx.open_home()?;
    match home.lock() {
        Ok(lock) => local_access(ctx, &home, lock),
        Err(HomeError::Locked { .. }) => {
            let sock = home.control_socket_path();
            // A `listen` may be starting (its socket not yet open, or a stale one left by a
            // listener that was killed), or a one-shot command may be about to finish: until
            // `ACCESS_WAIT` passes, take the home when it is free, or the running listener's
            // socket once it answers. Nothing of this command is stored before then.
            let end = tokio::time::Instant::now() + ACCESS_WAIT;
            loop {
                if sock.exists()
                    && let Ok(stream) = liaison_node::control::connect(&sock).await
                {
                    return Ok(Access::Remote(stream, home));
                }
                match home.lock() {
                    Ok(lock) => return local_access(ctx, &home, lock),
                    Err(HomeError::Locked { .. }) => {}
                    Err(e) => return Err(crate::ctx::home_failure(e)),
                }
                if tokio::time::Instant::now() >= end {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(runtime(format!(
                "another liaison process (call or send) is using {} and no listener answers: \
                 nothing was stored; wait for it to finish, or run `liaison listen` so \
                 commands can share the home",
                home.dir().display()
            )))
        }
        Err(e) => Err(crate::ctx::home_failure(e)),
    }
}

/// How long `send` and `call` wait for a home another process holds: for a starting
/// listener to answer on its socket, or for the home to be free.
const ACCESS_WAIT: Duration = Duration::from_secs(15);

/// Runs a node of our own on `home`, whose lock we hold.
fn local_access(ctx: &Ctx, home: &Home, lock: HomeLock) -> Result<Access, Failure> {
    let secrets = ctx.load_secrets(home)?;
    let db = ctx.open_store(home)?;
    let node = Node::start(db, home.db_path(), secrets, NodeOptions::default())
        .ctx("starting the node")?;
    Ok(Access::Local(Box::new(Running {
        node,
        _lock: lock,
        control: home.control_socket_path(),
    })))
}

/// `listen`'s lock: waits while a one-shot command holds the home (saying so once), so that a
/// listener restarted by a script while that script's own `send` runs still starts.
fn wait_for_home(home: &Home) -> Result<HomeLock, Failure> {
    let mut said = false;
    loop {
        match home.lock() {
            Ok(lock) => return Ok(lock),
            Err(HomeError::Locked { pid, .. }) => {
                let sock = home.control_socket_path();
                if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
                    return Err(runtime(format!(
                        "a listener already runs on {}: `liaison send` and `call` use it; stop \
                         it first to start another",
                        home.dir().display()
                    )));
                }
                if !said {
                    let who = pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
                    errln!(
                        "waiting for another liaison process{who} (a send or call) to finish \
                         with {}: Ctrl-C to give up",
                        home.dir().display()
                    );
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(crate::ctx::home_failure(e)),
        }
    }
}

fn node_failure(e: NodeError) -> Failure {
    match e {
        NodeError::UnknownContact(_) => usage(e.to_string()),
        NodeError::InvalidMessage(_) => usage(e.to_string()),
        other => runtime(other.to_string()),
    }
}

/// Sends one message and waits for its receipt.
pub async fn send_logic(node: &Node, req: SendReq, out: &mut dyn Out) -> Code {
    let chosen = match req.salt.as_deref().map(lost::parse_salt) {
        None => None,
        Some(Some(s)) => Some(s),
        Some(None) => {
            out.err("error: bad control request: the salt is not 32 bytes of hex");
            return Code::Usage;
        }
    };
    let content = match (&req.text, &req.file) {
        (Some(t), None) => text_content(t.clone(), chosen),
        (None, Some((name, b64))) => match STANDARD.decode(b64) {
            Ok(body) => MessageContent {
                kind: MSG_KIND_FILE,
                sent_at_ms: unix_ms(),
                salt: chosen.unwrap_or_else(salt),
                name: Some(name.clone()),
                body,
            },
            Err(_) => {
                out.err("error: the file did not arrive intact at the running node");
                return Code::Runtime;
            }
        },
        _ => {
            out.err("error: give either TEXT or --file PATH");
            return Code::Usage;
        }
    };
    let mut events = node.subscribe();
    let seq = match node.submit(&req.contact, vec![content]).await {
        Ok(s) => match s.first() {
            Some(&s) => s,
            None => return Code::Runtime,
        },
        Err(NodeError::Unlogged {
            contact,
            seqs,
            reason,
        }) => {
            // stored, so said as the stored state is everywhere else: pending (exit 4)
            let e = NodeError::Unlogged {
                contact: contact.clone(),
                seqs: seqs.clone(),
                reason,
            };
            for s in seqs {
                let id = format!("{contact}:{s}");
                out.stored(&id);
                if req.json {
                    out.out(&serde_json::json!({"status": "pending", "id": id}).to_string());
                } else {
                    out.out(&format!("pending {id}"));
                }
            }
            out.err(&format!("error: {e}"));
            return Code::NotDelivered;
        }
        Err(e) => {
            let f = node_failure(e);
            out.err(&format!("error: {}", f.msg));
            return f.code;
        }
    };
    out.stored(&format!("{}:{seq}", req.contact));
    let mut seq = seq;
    let report = |out: &mut dyn Out, seq: u64, status: &str, detail: &str| {
        let id = format!("{}:{seq}", req.contact);
        if req.json {
            out.out(&serde_json::json!({"status": status, "id": id}).to_string());
        } else {
            out.out(&format!("{status} {id}"));
        }
        if !detail.is_empty() {
            out.err(detail);
        }
    };
    let reachable = req.addr.is_some()
        || req.relay.is_some()
        || contact_has_route(node, &req.contact).await
        || node.line_status(&req.contact).await.hops > 0;
    if !reachable {
        report(
            out,
            seq,
            "pending",
            &format!(
                "no address or relay for {c}: it stays in the outbox; give --addr HOST:PORT or \
                 --relay RELAYNAME, or store one with `liaison contact set {c}`",
                c = req.contact
            ),
        );
        return Code::NotDelivered;
    }
    if let Err(e) = node
        .connect_via(
            &req.contact,
            req.addr.clone(),
            route_relay(node, &req.contact, &req.relay).await,
        )
        .await
    {
        out.err(&format!("error: {e}"));
        return Code::Runtime;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(req.timeout);
    let mut last_error = String::new();
    let mut refused_answer = false;
    loop {
        let ev = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            ev = events.recv() => ev,
        };
        match ev {
            Ok(NodeEvent::Delivered { to, seq: s, .. }) if to == req.contact && s == seq => {
                report(out, seq, "delivered", "");
                return Code::Ok;
            }
            Ok(NodeEvent::Queued { to, seq: s, .. }) if to == req.contact && s == seq => {
                report(
                    out,
                    seq,
                    "queued",
                    &format!(
                        "{} is away: the relay holds the message sealed to their mailbox key; \
                         it is delivered when they come back",
                        req.contact
                    ),
                );
                return Code::Ok;
            }
            Ok(NodeEvent::DialFailed {
                contact,
                error,
                refused: true,
                relay,
            }) if contact == req.contact => {
                match relay {
                    Some(r) => out.err(&format!(
                        "error: relay {r} refused this node ({error}); the message stays pending. \
                         Ask its operator to allow this node's key hash (`liaison relay list`)"
                    )),
                    None => out.err(&format!(
                        "error: {contact} refused the connection or presented a key we did not \
                         pin ({error}); the message stays pending. Check that you both pinned \
                         each other's current card (`liaison verify {contact}`)"
                    )),
                }
                report(out, seq, "pending", "");
                return Code::Verify;
            }
            Ok(NodeEvent::NotHeld { to, seqs, reason })
                if to == req.contact && seqs.contains(&seq) =>
            {
                out.err(&format!(
                    "error: {to} is away and the relay refused to hold the message ({reason}); \
                     it stays in the outbox for a later listen, call or send"
                ));
                report(out, seq, "pending", "");
                return Code::NotDelivered;
            }
            Ok(NodeEvent::DialFailed { contact, error, .. }) if contact == req.contact => {
                last_error = error;
            }
            Ok(NodeEvent::Notice { contact, message }) if contact == req.contact => {
                out.err(&format!("note: {message}"));
            }
            Ok(NodeEvent::Anomaly { contact, kind })
                if contact == req.contact && kind == "bad-handshake" =>
            {
                // the peer answered, but its answer did not authenticate
                refused_answer = true;
            }
            Ok(NodeEvent::Renumbered { contact, moves, .. }) if contact == req.contact => {
                // our message got a new seq (this home was restored from a backup)
                if let Some(m) = moves.iter().find(|m| m[0] == seq) {
                    out.err(&format!(
                        "note: {c}:{} is now {c}:{} (this home was restored from a backup)",
                        m[0],
                        m[1],
                        c = req.contact
                    ));
                    seq = m[1];
                }
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => {
                if status_of(node, &req.contact, seq).await.as_deref()
                    == Some(store::status::DELIVERED)
                {
                    report(out, seq, "delivered", "");
                    return Code::Ok;
                }
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
    if status_of(node, &req.contact, seq).await.as_deref() == Some(store::status::DELIVERED) {
        report(out, seq, "delivered", "");
        return Code::Ok;
    }
    if refused_answer {
        out.err(&format!(
            "error: {c}'s node answered, but its answers did not authenticate: you two hold \
             different pairing secrets (or someone on the path forges answers). Run \
             `liaison contact pair {c}` on both sides with the same secret; the message stays \
             pending",
            c = req.contact
        ));
        report(out, seq, "pending", "");
        return Code::Verify;
    }
    let why = if last_error.is_empty() {
        format!(
            "{} did not acknowledge within {} s",
            req.contact, req.timeout
        )
    } else {
        format!("last attempt: {last_error}")
    };
    report(
        out,
        seq,
        "pending",
        &format!("{why}; the message stays in the outbox for a later listen, call or send"),
    );
    Code::NotDelivered
}

async fn contact_has_route(node: &Node, contact: &str) -> bool {
    let name = contact.to_string();
    node.db()
        .write(move |c| store::contact(c, &name))
        .await
        .ok()
        .flatten()
        .is_some_and(|r| r.addr.is_some() || r.relay.is_some())
}

/// The relay to meet `contact` at: the one asked for, else the one stored with the contact.
async fn route_relay(node: &Node, contact: &str, asked: &Option<String>) -> Option<String> {
    if asked.is_some() {
        return asked.clone();
    }
    let name = contact.to_string();
    node.db()
        .write(move |c| store::contact(c, &name))
        .await
        .ok()
        .flatten()
        .and_then(|r| r.relay)
}

async fn status_of(node: &Node, contact: &str, seq: u64) -> Option<String> {
    let name = contact.to_string();
    node.db()
        .write(move |c| store::outbox_status(c, &name, seq))
        .await
        .ok()
        .flatten()
}

/// Runs a call: stdin lines become messages; incoming messages and receipts are shown.
pub async fn call_logic(
    node: &Node,
    req: CallReq,
    mut input: mpsc::Receiver<Option<CallInput>>,
    stop: CancellationToken,
    out: &mut dyn Out,
) -> Code {
    let mut events = node.subscribe();
    let contact = req.contact.clone();
    let relay = route_relay(node, &contact, &req.relay).await;
    if let Err(e) = node.connect_via(&contact, req.addr.clone(), relay).await {
        let f = node_failure(e);
        out.err(&format!("error: {}", f.msg));
        return f.code;
    }
    if req.interactive {
        out.err(&format!(
            "calling {contact}: type a message and press Enter; Ctrl-D ends the call"
        ));
    }
    // the seq of each input line, in order (`None`: not stored)
    let mut lines: Vec<Option<u64>> = Vec::new();
    let mut ours: BTreeSet<u64> = BTreeSet::new();
    let mut eof = false;
    let mut last_progress = Instant::now();
    let timeout = Duration::from_secs(req.timeout);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    // why the call ended early: the exit code and the line saying so
    let failure: Option<(Code, String)> = loop {
        tokio::select! {
            _ = stop.cancelled() => break None,
            line = input.recv(), if !eof => {
                let mut batch = Vec::new();
                let mut item = line;
                loop {
                    match item {
                        Some(Some(l)) => batch.push(text_content(l.text, l.salt)),
                        Some(None) | None => { eof = true; break; }
                    }
                    if batch.len() >= 512 { break; }
                    match input.try_recv() {
                        Ok(next) => item = Some(next),
                        Err(_) => break,
                    }
                }
                if !batch.is_empty() {
                    let n = batch.len();
                    match node.submit(&contact, batch).await {
                        Ok(seqs) => {
                            for s in &seqs {
                                out.stored(&format!("{contact}:{s}"));
                            }
                            ours.extend(seqs.iter().copied());
                            lines.extend(seqs.into_iter().map(Some));
                        }
                        Err(e) => {
                            lines.extend(std::iter::repeat_n(None, n));
                            let f = node_failure(e);
                            break Some((f.code, format!("error: {}", f.msg)));
                        }
                    }
                }
                last_progress = Instant::now();
            }
            ev = events.recv() => match ev {
                Ok(ev) => {
                    match &ev {
                        NodeEvent::Delivered { to, seq, .. } if *to == contact => {
                            if ours.remove(seq) {
                                last_progress = Instant::now();
                            }
                            if req.interactive || req.json {
                                show(out, &ev, req.json);
                            }
                        }
                        NodeEvent::Message { from, .. } if *from == contact => show(out, &ev, req.json),
                        NodeEvent::NotHeld { to, .. } if *to == contact => show(out, &ev, req.json),
                        NodeEvent::Queued { to, .. } if *to == contact => {
                            last_progress = Instant::now();
                            if req.interactive || req.json {
                                show(out, &ev, req.json);
                            }
                        }
                        NodeEvent::DialFailed { contact: c, refused, error, .. } if *c == contact => {
                            show(out, &ev, req.json);
                            if *refused {
                                break Some((
                                    Code::Verify,
                                    format!("error: the line to {contact} was refused ({error})"),
                                ));
                            }
                        }
                        NodeEvent::Renumbered { contact: c, moves, .. } if *c == contact => {
                            for m in moves {
                                if ours.remove(&m[0]) {
                                    ours.insert(m[1]);
                                }
                                for l in lines.iter_mut().flatten() {
                                    if *l == m[0] {
                                        *l = m[1];
                                    }
                                }
                            }
                            show(out, &ev, req.json);
                        }
                        NodeEvent::LineUp { contact: c }
                        | NodeEvent::Unreachable { contact: c }
                        | NodeEvent::PeerLost { contact: c, .. }
                        | NodeEvent::Notice { contact: c, .. }
                        | NodeEvent::Anomaly { contact: c, .. } if *c == contact => show(out, &ev, req.json),
                        _ => {}
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    resync(node, &contact, &mut ours).await;
                }
                Err(broadcast::error::RecvError::Closed) => break None,
            },
            _ = tick.tick() => {
                if eof && ours.is_empty() {
                    break None;
                }
                if eof && last_progress.elapsed() >= timeout {
                    break None;
                }
            }
        }
    };
    resync(node, &contact, &mut ours).await;
    let sent = lines.len();
    if failure.is_none() && ours.is_empty() && lines.iter().all(Option::is_some) {
        if req.json {
            out.out(
                &serde_json::json!({"event": "call_ended", "sent": sent, "acknowledged": sent})
                    .to_string(),
            );
        } else if req.interactive {
            out.err(&format!("call ended: {sent} sent, all acknowledged"));
        }
        return Code::Ok;
    }
    // every line's state and id, then one line saying what failed
    let mut states = Vec::with_capacity(lines.len());
    for l in &lines {
        states.push(match l {
            Some(seq) => match status_of(node, &contact, *seq).await {
                Some(status) => State::Stored { seq: *seq, status },
                None => State::Unknown(format!("{contact}:{seq} cannot be read")),
            },
            None => State::NotStored,
        });
    }
    report_states(out, &contact, req.json, &states);
    let tally = Tally::of(&states);
    if req.json {
        out.out(&tally.call_ended_json());
    }
    match failure {
        Some((code, why)) => {
            out.err(&format!("{why}; {}", tally.text()));
            code
        }
        None => {
            out.err(&format!(
                "not every message was acknowledged: {} (they stay in the outbox for a later \
                 listen, call or send)",
                tally.text()
            ));
            Code::NotDelivered
        }
    }
}

/// How many of a call's lines are in each state.
#[derive(Debug, Default)]
struct Tally {
    sent: usize,
    delivered: usize,
    queued: usize,
    pending: usize,
    not_stored: usize,
    unknown: usize,
}

impl Tally {
    fn of(states: &[State]) -> Tally {
        let mut t = Tally {
            sent: states.len(),
            ..Tally::default()
        };
        for s in states {
            match s {
                State::Stored { status, .. } if status == store::status::DELIVERED => {
                    t.delivered += 1;
                }
                State::Stored { status, .. } if status == store::status::QUEUED => t.queued += 1,
                State::Stored { .. } => t.pending += 1,
                State::NotStored => t.not_stored += 1,
                State::Unknown(_) => t.unknown += 1,
            }
        }
        t
    }

    /// `2 acknowledged, 0 queued at a relay, 1 pending[, 1 not stored …]`.
    fn text(&self) -> String {
        let mut s = format!(
            "{} acknowledged, {} queued at a relay, {} pending",
            self.delivered, self.queued, self.pending
        );
        if self.not_stored > 0 {
            s.push_str(&format!(
                ", {} not stored (never sent: send them again)",
                self.not_stored
            ));
        }
        if self.unknown > 0 {
            s.push_str(&format!(
                ", {} unknown (see `liaison outbox` before sending them again)",
                self.unknown
            ));
        }
        s
    }

    fn call_ended_json(&self) -> String {
        serde_json::json!({
            "event": "call_ended", "sent": self.sent, "acknowledged": self.delivered,
            "queued": self.queued, "pending": self.pending, "not_stored": self.not_stored,
            "unknown": self.unknown,
        })
        .to_string()
    }
}

/// One line per input line of a call: its state and id (`pending bob:3 (line 3)`, or with
/// `--json` a `message_state` object).
fn report_states(out: &mut dyn Out, contact: &str, json: bool, states: &[State]) {
    for (i, s) in states.iter().enumerate() {
        let line = i + 1;
        let id = match s {
            State::Stored { seq, .. } => Some(format!("{contact}:{seq}")),
            _ => None,
        };
        if json {
            let mut v = serde_json::json!({
                "event": "message_state", "line": line, "id": id, "status": s.json_name(),
            });
            if let (State::Unknown(why), Some(o)) = (s, v.as_object_mut()) {
                o.insert("reason".into(), why.clone().into());
            }
            out.out(&v.to_string());
        } else {
            match (s, id) {
                (_, Some(id)) => out.out(&format!("{} {id} (line {line})", s.name())),
                (State::Unknown(why), None) => out.out(&format!("unknown (line {line}): {why}")),
                (_, None) => out.out(&format!("not stored (line {line}): send it again")),
            }
        }
    }
}

async fn resync(node: &Node, contact: &str, ours: &mut BTreeSet<u64>) {
    let mut done = Vec::new();
    for seq in ours.iter() {
        if status_of(node, contact, *seq).await.as_deref() == Some(store::status::DELIVERED) {
            done.push(*seq);
        }
    }
    for s in done {
        ours.remove(&s);
    }
}

fn file_payload(path: &PathBuf) -> Result<(String, Vec<u8>), Failure> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| valid_file_name(n))
        .ok_or_else(|| usage(format!("{} has no usable file name", path.display())))?
        .to_string();
    let meta = std::fs::metadata(path)
        .map_err(|e| runtime(format!("cannot read {}: {e}", path.display())))?;
    if meta.len() > MAX_MESSAGE_BODY as u64 {
        return Err(usage(format!(
            "{} is {} bytes; files up to {} bytes can be sent",
            path.display(),
            meta.len(),
            MAX_MESSAGE_BODY
        )));
    }
    let body = crate::ctx::read_bounded(path, MAX_MESSAGE_BODY as u64, "file to send")?;
    Ok((name, body))
}

/// `liaison send`.
pub fn send(ctx: &Ctx, a: SendArgs) -> CmdResult {
    let file = match &a.file {
        Some(p) => Some(file_payload(p)?),
        None => None,
    };
    // the salt is chosen here, so that this client can find its message in the home if a
    // listener carrying it stops before saying it stored it
    let handed = Handed::new(match (&file, &a.text) {
        (Some((_, body)), _) => body,
        (None, Some(text)) => text.as_bytes(),
        (None, None) => &[],
    });
    let req = SendReq {
        contact: a.name,
        text: a.text,
        file: file.map(|(n, b)| (n, STANDARD.encode(b))),
        addr: a.addr,
        relay: a.relay,
        timeout: a.timeout,
        json: ctx.json,
        salt: Some(handed.salt_hex()),
    };
    let rt = ctx.runtime()?;
    rt.block_on(async {
        match access(ctx).await? {
            Access::Local(r) => {
                let code = send_logic(&r.node, req, &mut Local).await;
                r.node.shutdown().await;
                Ok(code)
            }
            Access::Remote(stream, home) => {
                let (contact, json) = (req.contact.clone(), req.json);
                let from = lost::next_seq(&home, &contact);
                match control::run_remote(stream, Request::Send(req), None).await {
                    control::RemoteEnd::Exit(code) => Ok(exit_code(code)),
                    control::RemoteEnd::Lost { stored, holder } => {
                        let mut handed = handed;
                        handed.seq = stored.first().and_then(|id| seq_of(id));
                        let state = lost::settle(ctx, &home, &contact, from, holder, &[handed])
                            .await
                            .pop()
                            .unwrap_or_else(|| State::Unknown("nothing was read".into()));
                        send_lost(&contact, json, state)
                    }
                }
            }
        }
    })
}

fn exit_code(code: u8) -> Code {
    match code {
        0 => Code::Ok,
        2 => Code::Usage,
        3 => Code::Verify,
        4 => Code::NotDelivered,
        _ => Code::Runtime,
    }
}

/// The seq of message id `CONTACT:SEQ`.
fn seq_of(id: &str) -> Option<u64> {
    id.rsplit_once(':').and_then(|(_, s)| s.parse().ok())
}

/// The listener carrying a `send` stopped before it answered: the message's state, found in
/// the home ([`lost::settle`]), is reported the way `send` reports it, so that a script
/// neither loses it nor sends it twice.
fn send_lost(contact: &str, json: bool, state: State) -> CmdResult {
    let (seq, status) = match state {
        State::Stored { seq, status } => (seq, status),
        State::NotStored => {
            return Err(runtime(
                "the running `liaison listen` stopped before it stored the message: not \
                 stored, not sent; send it again",
            ));
        }
        State::Unknown(why) => {
            return Err(runtime(format!(
                "the running `liaison listen` stopped during this send, and whether it stored \
                 the message cannot be told: {why}. See `liaison outbox` before sending it again"
            )));
        }
    };
    let id = format!("{contact}:{seq}");
    if json {
        outln!("{}", serde_json::json!({"status": status, "id": id}));
    } else {
        outln!("{status} {id}");
    }
    match status.as_str() {
        store::status::DELIVERED | store::status::QUEUED => {
            errln!("note: the running `liaison listen` stopped, after {id} was {status}");
            Ok(Code::Ok)
        }
        _ => {
            errln!(
                "error: the running `liaison listen` stopped during this send; {id} is stored \
                 and {status}: the next listen, call or send delivers it (do not send it again)"
            );
            Ok(Code::NotDelivered)
        }
    }
}

/// The listener carrying a `call` stopped before it answered: every line the call read is
/// reported with its state, found in the home, then one line says what failed. `eof`: the
/// whole input was read.
fn call_lost(contact: &str, json: bool, states: &[State], eof: bool, interactive: bool) -> Code {
    report_states(&mut Local, contact, json, states);
    let tally = Tally::of(states);
    if json {
        outln!("{}", tally.call_ended_json());
    }
    let unread = !eof && !interactive;
    if tally.delivered == tally.sent && !unread {
        errln!(
            "note: the running `liaison listen` stopped, after every message of this call was \
             acknowledged"
        );
        return Code::Ok;
    }
    let rest = if unread {
        format!(
            "; the input after line {} was not read (not sent)",
            tally.sent
        )
    } else {
        String::new()
    };
    errln!(
        "error: the running `liaison listen` stopped during this call: {}{rest}",
        tally.text()
    );
    if tally.not_stored + tally.unknown > 0 || unread {
        Code::Runtime
    } else {
        Code::NotDelivered
    }
}

fn stdin_lines() -> mpsc::Receiver<Option<CallInput>> {
    let (tx, rx) = mpsc::channel(1024);
    std::thread::spawn(move || {
        use std::io::BufRead;
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            match line {
                Ok(text) => {
                    if tx
                        .blocking_send(Some(CallInput { text, salt: None }))
                        .is_err()
                    {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.blocking_send(None);
    });
    rx
}

/// Hands the call's input lines to a listener as control requests, each with a salt chosen
/// here and kept in `handed` (in order). When `done` is cancelled (the listener answered its
/// last, or stopped), the lines read but not handed over are kept too (they were not sent).
/// Returns whether the whole input was read.
async fn hand_over(
    mut input: mpsc::Receiver<Option<CallInput>>,
    tx: mpsc::Sender<Request>,
    handed: Arc<Mutex<Vec<Handed>>>,
    done: CancellationToken,
) -> bool {
    let keep = |h: Handed| {
        if let Ok(mut v) = handed.lock() {
            v.push(h);
        }
    };
    loop {
        let item = tokio::select! {
            biased;
            _ = done.cancelled() => {
                while let Ok(item) = input.try_recv() {
                    match item {
                        Some(l) => keep(Handed::new(l.text.as_bytes())),
                        None => return true,
                    }
                }
                return false;
            }
            item = input.recv() => item,
        };
        match item {
            Some(Some(l)) => {
                let h = Handed::new(l.text.as_bytes());
                let salt = Some(h.salt_hex());
                keep(h);
                // a line the listener never got is found not stored
                let _ = tx.send(Request::Input { line: l.text, salt }).await;
            }
            Some(None) | None => {
                let _ = tx.send(Request::Eof).await;
                return true;
            }
        }
    }
}

/// `liaison call`.
pub fn call(ctx: &Ctx, a: CallArgs) -> CmdResult {
    let req = CallReq {
        contact: a.name,
        addr: a.addr,
        relay: a.relay,
        timeout: a.timeout,
        interactive: std::io::stdin().is_terminal(),
        json: ctx.json,
    };
    let rt = ctx.runtime()?;
    // our own node's home lock, released only once every task of the runtime is gone
    let mut held = None;
    let result = rt.block_on(async {
        let acc = access(ctx).await?;
        let input = stdin_lines();
        match acc {
            Access::Local(r) => {
                let mut local = Local;
                // while the call runs, `status`, `send` and `call` on this home go through it,
                // as they go through a running `listen`
                let control = match ControlListener::bind(&r.control) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        errln!("warning: other commands cannot use this call's line: {e}");
                        None
                    }
                };
                let serve = async {
                    let Some(control) = &control else {
                        return std::future::pending().await;
                    };
                    loop {
                        match control.accept().await {
                            Ok(stream) => {
                                tokio::spawn(control::serve_connection(r.node.clone(), stream));
                            }
                            Err(e) => {
                                errln!("warning: control socket: {e}");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                };
                // Ctrl-C or SIGTERM ends the call as the end of its input would, without
                // waiting: what became of each line is reported
                let stop = CancellationToken::new();
                let stopper = tokio::spawn({
                    let stop = stop.clone();
                    let signalled = interrupted();
                    async move {
                        signalled.await;
                        stop.cancel();
                    }
                });
                let code = tokio::select! {
                    c = call_logic(&r.node, req, input, stop, &mut local) => c,
                    () = serve => Code::Runtime,
                };
                stopper.abort();
                drop(control);
                r.node.shutdown().await;
                held = Some(r);
                Ok(code)
            }
            Access::Remote(stream, home) => {
                let (contact, json, interactive) = (req.contact.clone(), req.json, req.interactive);
                let from = lost::next_seq(&home, &contact);
                let handed = Arc::new(Mutex::new(Vec::new()));
                let done = CancellationToken::new();
                let (tx, rx) = mpsc::channel(256);
                let relay = tokio::spawn(hand_over(input, tx, handed.clone(), done.clone()));
                let end = control::run_remote(stream, Request::Call(req), Some(rx)).await;
                done.cancel();
                let eof = relay.await.unwrap_or(false);
                match end {
                    control::RemoteEnd::Exit(code) => Ok(exit_code(code)),
                    control::RemoteEnd::Lost { stored, holder } => {
                        let mut handed = handed.lock().map(|v| v.clone()).unwrap_or_default();
                        for (h, id) in handed.iter_mut().zip(&stored) {
                            h.seq = seq_of(id);
                        }
                        let states =
                            lost::settle(ctx, &home, &contact, from, holder, &handed).await;
                        Ok(call_lost(&contact, json, &states, eof, interactive))
                    }
                }
            }
        }
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    drop(held);
    result
}

/// Registers SIGINT and SIGTERM at once (from here on they stop the command cleanly instead
/// of killing it) and returns a future that completes on either. Call it before telling
/// anyone the command is up: a signal sent on seeing `listening` must not kill the process.
fn interrupted() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let signals = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    );
    async move {
        let (Ok(mut int), Ok(mut term)) = signals else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
    }
}

/// `liaison listen`.
pub fn listen(ctx: &Ctx, a: ListenArgs) -> CmdResult {
    if a.bind.is_none() && a.relays.is_empty() {
        return Err(usage(
            "nothing to listen on: pass --bind ADDR (e.g. --bind 0.0.0.0:7700, or 127.0.0.1:0 \
             for a free port) and/or --relay RELAYNAME",
        ));
    }
    let home: Home = ctx.open_home()?;
    let lock = wait_for_home(&home)?;
    let secrets = ctx.load_secrets(&home)?;
    let rt = ctx.runtime()?;
    let json = ctx.json;
    let code = rt.block_on(async {
        let db = ctx.open_store(&home)?;
        let node = Node::start(db, home.db_path(), secrets, NodeOptions::default())
            .ctx("starting the node")?;
        let stop = interrupted();
        let addr = match a.bind {
            Some(bind) => match node.listen(bind).await {
                Ok(a) => Some(a),
                Err(e) => {
                    node.shutdown().await;
                    return Err(runtime(format!("cannot listen on {bind}: {e}")));
                }
            },
            None => None,
        };
        for r in &a.relays {
            match node.use_relay(r, Duration::from_secs(5)).await {
                Ok(true) => {}
                Ok(false) => errln!(
                    "warning: relay {r} is not reachable yet; still trying in the background"
                ),
                Err(e) => {
                    node.shutdown().await;
                    return Err(runtime(format!("relay {r}: {e}")));
                }
            }
        }
        let control =
            ControlListener::bind(&home.control_socket_path()).ctx("opening the control socket")?;
        let mut events = node.subscribe();
        match addr {
            Some(addr) => errln!("listening on {addr}"),
            None => errln!("listening on relay {}", a.relays.join(", ")),
        }
        if json {
            outln!(
                "{}",
                serde_json::json!({
                    "event": "listening",
                    "addr": addr.map(|a| a.to_string()),
                    "relays": a.relays,
                })
            );
        }
        if let Err(e) = node.resume_pending().await {
            errln!("warning: cannot resume pending deliveries: {e}");
        }
        let mut out = Local;
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                ev = events.recv() => match ev {
                    Ok(ev) => show(&mut out, &ev, json),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        errln!("warning: {n} events not shown (see `liaison inbox`)");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                c = control.accept() => match c {
                    Ok(stream) => {
                        let n = node.clone();
                        tokio::spawn(control::serve_connection(n, stream));
                    }
                    Err(e) => errln!("warning: control socket: {e}"),
                },
            }
        }
        errln!("shutting down");
        node.shutdown().await;
        drop(control);
        Ok(Code::Ok)
    });
    // the home is let go only once no task of this process can write to it: a client whose
    // command this listener carried reads the home after that to tell what became of it
    rt.shutdown_timeout(Duration::from_secs(5));
    drop(lock);
    code
}
