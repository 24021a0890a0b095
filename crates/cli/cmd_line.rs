//! `listen`, `call` and `send`: the commands that run a node.
//!
//! `call` and `send` take the home's lock and run their own node; if `listen` already holds
//! the lock they hand the same request to it over the control socket, and print what it
//! answers. The logic ([`send_logic`], [`call_logic`]) is the same either way.

use crate::control::{self, Request};
use crate::ctx::Ctx;
use crate::exit::{CmdResult, Code, Context, Failure, runtime, usage};
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
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc};

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
    after_help = "Examples:\n  liaison call bob --addr bob.example:7700       # interactive: type, Enter sends\n  printf 'one\\ntwo\\n' | liaison call bob         # piped: exits 0 once bob has both\n  liaison call bob --relay r1\n\nWhile it runs, `status`, `send` and `call` on the same home go through it, as they go\nthrough a running `listen`."
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
    after_help = "Examples:\n  liaison send bob \"meeting moved to 10:00\"\n  liaison send bob --file report.pdf --addr bob.example:7700\n  liaison send bob \"while you were out\" --relay r1     # `queued` if bob is away\n\nStatus: delivered (bob's node stored it) and queued (a relay holds it sealed) exit 0;\npending (still only in your outbox) exits 4."
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

fn text_content(text: String) -> MessageContent {
    MessageContent {
        kind: MSG_KIND_TEXT,
        sent_at_ms: unix_ms(),
        salt: salt(),
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
    /// A running listener's control socket, and the home's message store.
    Remote(PathBuf, PathBuf),
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
                if sock.exists() && liaison_node::control::connect(&sock).await.is_ok() {
                    return Ok(Access::Remote(sock, home.db_path()));
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
    let content = match (&req.text, &req.file) {
        (Some(t), None) => text_content(t.clone()),
        (None, Some((name, b64))) => match STANDARD.decode(b64) {
            Ok(body) => MessageContent {
                kind: MSG_KIND_FILE,
                sent_at_ms: unix_ms(),
                salt: salt(),
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
    mut input: mpsc::Receiver<Option<String>>,
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
    let mut ours: BTreeSet<u64> = BTreeSet::new();
    let mut sent = 0usize;
    let mut eof = false;
    let mut last_progress = Instant::now();
    let timeout = Duration::from_secs(req.timeout);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            line = input.recv(), if !eof => {
                let mut batch = Vec::new();
                let mut item = line;
                loop {
                    match item {
                        Some(Some(text)) => batch.push(text_content(text)),
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
                        Ok(seqs) => { ours.extend(seqs); sent += n; }
                        Err(e) => {
                            let f = node_failure(e);
                            out.err(&format!("error: {}", f.msg));
                            return f.code;
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
                        NodeEvent::DialFailed { contact: c, refused, .. } if *c == contact => {
                            show(out, &ev, req.json);
                            if *refused {
                                return Code::Verify;
                            }
                        }
                        NodeEvent::Renumbered { contact: c, moves, .. } if *c == contact => {
                            for m in moves {
                                if ours.remove(&m[0]) {
                                    ours.insert(m[1]);
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
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = tick.tick() => {
                if eof && ours.is_empty() {
                    break;
                }
                if eof && last_progress.elapsed() >= timeout {
                    break;
                }
            }
        }
    }
    resync(node, &contact, &mut ours).await;
    if ours.is_empty() {
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
    let mut queued = 0usize;
    let mut pending = 0usize;
    for seq in &ours {
        match status_of(node, &contact, *seq).await.as_deref() {
            Some(store::status::QUEUED) => queued += 1,
            _ => pending += 1,
        }
    }
    let acked = sent - ours.len();
    if req.json {
        out.out(
            &serde_json::json!({"event": "call_ended", "sent": sent, "acknowledged": acked,
                                "queued": queued, "pending": pending})
            .to_string(),
        );
    }
    out.err(&format!(
        "not every message was acknowledged: {acked} acknowledged, {queued} queued at a relay, \
         {pending} pending (they stay in the outbox for a later listen, call or send)"
    ));
    Code::NotDelivered
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
    let req = SendReq {
        contact: a.name,
        text: a.text,
        file: file.map(|(n, b)| (n, STANDARD.encode(b))),
        addr: a.addr,
        relay: a.relay,
        timeout: a.timeout,
        json: ctx.json,
    };
    let rt = ctx.runtime()?;
    rt.block_on(async {
        match access(ctx).await? {
            Access::Local(r) => {
                let code = send_logic(&r.node, req, &mut Local).await;
                r.node.shutdown().await;
                Ok(code)
            }
            Access::Remote(sock, db) => remote(&sock, &db, Request::Send(req), None).await,
        }
    })
}

async fn remote(
    sock: &std::path::Path,
    db: &std::path::Path,
    req: Request,
    input: Option<mpsc::Receiver<Option<String>>>,
) -> CmdResult {
    let json = match &req {
        Request::Send(r) => Some(r.json),
        _ => None,
    };
    let end = control::run_remote(sock, req, input).await.map_err(|e| {
        runtime(format!(
            "cannot talk to the running `liaison listen`: {e}; nothing was sent"
        ))
    })?;
    let code = match end {
        control::RemoteEnd::Exit(code) => code,
        control::RemoteEnd::Lost { stored } => return lost_listener(db, json, stored),
    };
    Ok(match code {
        0 => Code::Ok,
        2 => Code::Usage,
        3 => Code::Verify,
        4 => Code::NotDelivered,
        _ => Code::Runtime,
    })
}

/// The listener carrying our command stopped before it answered. For a `send` (`json` is its
/// `--json`), the message's state is read from the store and reported the way `send` reports
/// it, so that a script neither loses it nor sends it twice.
fn lost_listener(db: &std::path::Path, json: Option<bool>, stored: Option<String>) -> CmdResult {
    let Some(json) = json else {
        return Err(runtime(
            "the running `liaison listen` stopped during this call: what it sent and what was \
             delivered is in `liaison history CONTACT`",
        ));
    };
    let Some(id) = stored else {
        return Err(runtime(
            "the running `liaison listen` stopped before the message was stored: it was not \
             sent; send it again",
        ));
    };
    let status = id
        .rsplit_once(':')
        .and_then(|(c, s)| Some((c, s.parse::<u64>().ok()?)))
        .and_then(|(contact, seq)| {
            let conn = store::open_read_only(db).ok()?;
            store::outbox_status(&conn, contact, seq).ok().flatten()
        });
    let Some(status) = status else {
        return Err(runtime(format!(
            "the running `liaison listen` stopped during this send; {id} was stored but its \
             state cannot be read now: see `liaison history` before sending it again"
        )));
    };
    if json {
        outln!("{}", serde_json::json!({"status": status, "id": id}));
    } else {
        outln!("{status} {id}");
    }
    match status.as_str() {
        "delivered" | "queued" => {
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

fn stdin_lines() -> mpsc::Receiver<Option<String>> {
    let (tx, rx) = mpsc::channel(1024);
    std::thread::spawn(move || {
        use std::io::BufRead;
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            match line {
                Ok(l) => {
                    if tx.blocking_send(Some(l)).is_err() {
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
    rt.block_on(async {
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
                let code = tokio::select! {
                    c = call_logic(&r.node, req, input, &mut local) => c,
                    _ = interrupted() => Code::Ok,
                    () = serve => Code::Runtime,
                };
                drop(control);
                r.node.shutdown().await;
                Ok(code)
            }
            Access::Remote(sock, db) => remote(&sock, &db, Request::Call(req), Some(input)).await,
        }
    })
}

async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {},
        _ = term.recv() => {},
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
        let stop = interrupted();
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
    drop(lock);
    code
}
