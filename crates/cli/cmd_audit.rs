//! `audit show | verify | export | reveal | check`: the co-signed, tamper-evident log of each
//! line. `show`, `verify` and `export` read the store read-only and need no passphrase;
//! `reveal` decrypts one message to prove it against its commitment; `check` needs no home at
//! all and verifies exported bundles offline.

use crate::ctx::{Ctx, human_time, print_json};
use crate::exit::{CmdResult, Code, Context, Failure, runtime, usage, verify};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::{Args, Subcommand};
use ed25519_dalek::VerifyingKey;
use liaison_audit::entry::Event;
use liaison_audit::{AuditReader, Bundle, BundleReadError, CheckError, VerifyError};
use liaison_node::atrest::Direction;
use liaison_node::node::{open_content, unix_ms};
use liaison_node::store;
use std::collections::HashMap;
use std::io::Write;
use std::ops::Range;
use std::path::PathBuf;

/// `liaison audit …`.
#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// List the log's entries (one log per contact).
    Show(ShowArgs),
    /// Check the whole local log: tree, signatures, the peer's cosignatures. Exit 0 only if
    /// everything holds, 3 with the precise reason otherwise.
    Verify,
    /// Write a self-contained bundle (entries, checkpoints, cosignatures, receipts, keys) for an
    /// arbiter. It reveals both identities and the timing and volume of the line, not the text.
    Export(ExportArgs),
    /// Reveal one message's text and salt so an arbiter can check it against its commitment in
    /// a bundle (`audit check BUNDLE --opening FILE`).
    Reveal(RevealArgs),
    /// Verify bundles offline (no home needed): one bundle on its own, or both parties'
    /// bundles of a line against each other.
    Check(CheckArgs),
}

/// `audit show`.
#[derive(Args, Debug)]
pub struct ShowArgs {
    /// Only the log of the line with this contact.
    #[arg(long, value_name = "NAME")]
    pub contact: Option<String>,
    /// Only entries A..B (A included, B excluded).
    #[arg(long, value_name = "A..B")]
    pub entries: Option<String>,
}

/// `audit export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Where to write the bundle (refuses to overwrite).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// The line to export (needed when this node has more than one).
    #[arg(long, value_name = "NAME")]
    pub contact: Option<String>,
    /// Only entries A..B, with the proofs that tie them to the signed checkpoints.
    #[arg(long, value_name = "A..B")]
    pub entries: Option<String>,
}

/// `audit reveal`.
#[derive(Args, Debug)]
pub struct RevealArgs {
    /// The message: CONTACT:SEQ.
    pub id: String,
    /// It is a message this node sent (default: one it received).
    #[arg(long)]
    pub sent: bool,
    /// Where to write the opening (JSON; it contains the message text).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// `audit check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// One bundle, or the two parties' bundles of one line.
    #[arg(required = true, num_args = 1..=2, value_name = "FILE")]
    pub bundles: Vec<PathBuf>,
    /// Also check a revealed message (`audit reveal`) against its commitment.
    #[arg(long, value_name = "FILE")]
    pub opening: Option<PathBuf>,
}

/// Dispatches `audit …`.
pub fn run(ctx: &Ctx, cmd: AuditCmd) -> CmdResult {
    match cmd {
        AuditCmd::Show(a) => show(ctx, a),
        AuditCmd::Verify => verify_cmd(ctx),
        AuditCmd::Export(a) => export(ctx, a),
        AuditCmd::Reveal(a) => reveal(ctx, a),
        AuditCmd::Check(a) => check(ctx, a),
    }
}

fn parse_range(s: &str) -> Result<Range<u64>, Failure> {
    let bad = || usage(format!("{s} is not a range A..B of entry indexes"));
    let (a, b) = s.split_once("..").ok_or_else(bad)?;
    let a: u64 = a.trim().parse().map_err(|_| bad())?;
    let b: u64 = b.trim().parse().map_err(|_| bad())?;
    if b <= a {
        return Err(bad());
    }
    Ok(a..b)
}

struct Lines {
    reader: AuditReader,
    /// channel → contact name
    names: HashMap<[u8; 32], String>,
    /// contact name → channel
    by_name: HashMap<String, [u8; 32]>,
    own: [u8; 32],
}

fn open_lines(ctx: &Ctx) -> Result<Lines, Failure> {
    let home = ctx.open_home()?;
    let own = *ctx.own_card(&home)?.identity_key();
    let conn = ctx.db_ro(&home)?;
    let path = liaison_node::store::audit_db_path(&home.db_path());
    let reader = match AuditReader::open(&path) {
        Err(e @ liaison_audit::StoreError::NoLog) => return Err(runtime(e.to_string())),
        r => r.ctx("opening the audit log")?,
    };
    let own_vk = VerifyingKey::from_bytes(&own)
        .map_err(|_| verify("this home's own card holds an invalid identity key"))?;
    let mut names = HashMap::new();
    let mut by_name = HashMap::new();
    for c in store::contacts(&conn).ctx("reading contacts")? {
        if let Ok(vk) = VerifyingKey::from_bytes(&c.identity) {
            let ch = liaison_audit::channel_id(&own_vk, &vk);
            names.insert(ch, c.name.clone());
            by_name.insert(c.name, ch);
        }
    }
    Ok(Lines {
        reader,
        names,
        by_name,
        own,
    })
}

fn channel_of(lines: &Lines, contact: &Option<String>) -> Result<Option<[u8; 32]>, Failure> {
    match contact {
        Some(n) => lines
            .by_name
            .get(n)
            .copied()
            .map(Some)
            .ok_or_else(|| usage(format!("no contact named {n}"))),
        None => Ok(None),
    }
}

fn hex_channel(s: &str) -> Option<[u8; 32]> {
    hex::decode(s)
        .ok()
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
}

fn describe(e: &Event) -> String {
    serde_json::to_value(e)
        .ok()
        .and_then(|v| {
            let o = v.as_object()?;
            let kind = o.get("event")?.as_str()?.to_string();
            let rest: Vec<String> = o
                .iter()
                .filter(|(k, _)| k.as_str() != "event")
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) if s.len() == 64 => format!("{k}={}…", &s[..12]),
                    serde_json::Value::String(s) => format!("{k}={s}"),
                    other => format!("{k}={other}"),
                })
                .collect();
            Some(format!("{kind} {}", rest.join(" ")))
        })
        .unwrap_or_else(|| format!("{e:?}"))
}

fn show(ctx: &Ctx, a: ShowArgs) -> CmdResult {
    let lines = open_lines(ctx)?;
    let channel = channel_of(&lines, &a.contact)?;
    let range = a.entries.as_deref().map(parse_range).transpose()?;
    let entries = lines
        .reader
        .show(channel.as_ref(), range)
        .ctx("reading the audit log")?;
    if ctx.json {
        let v: Vec<_> = entries
            .iter()
            .map(|e| {
                let mut j = serde_json::to_value(e).unwrap_or_default();
                let name = hex_channel(&e.channel).and_then(|c| lines.names.get(&c).cloned());
                if let Some(o) = j.as_object_mut() {
                    o.insert("contact".into(), serde_json::json!(name));
                }
                j
            })
            .collect();
        print_json(&serde_json::Value::Array(v));
        return Ok(Code::Ok);
    }
    if entries.is_empty() {
        outln!("no entries");
    }
    let mut last = String::new();
    for e in entries {
        if e.channel != last {
            let name = hex_channel(&e.channel)
                .and_then(|c| lines.names.get(&c).cloned())
                .unwrap_or_else(|| "(removed contact)".into());
            outln!(
                "== line with {name} (channel {}…)",
                &e.channel[..16.min(e.channel.len())]
            );
            last = e.channel.clone();
        }
        outln!(
            "{:>6}  {}  {}",
            e.entry.index,
            human_time(e.entry.time_ms / 1000),
            describe(&e.entry.event)
        );
    }
    Ok(Code::Ok)
}

fn verify_cmd(ctx: &Ctx) -> CmdResult {
    let lines = open_lines(ctx)?;
    match lines.reader.verify_all(unix_ms()) {
        Ok(reports) => {
            if ctx.json {
                print_json(&serde_json::json!({"ok": true, "lines": reports}));
            } else {
                for r in &reports {
                    for b in &r.bundles {
                        let name = hex_channel(&b.channel)
                            .and_then(|c| lines.names.get(&c).cloned())
                            .unwrap_or_else(|| "(removed contact)".into());
                        outln!(
                            "line with {name}: {} entries, {} checkpoints (latest {}), all verified",
                            b.entries,
                            b.checkpoints,
                            b.latest_checkpoint
                        );
                    }
                }
                if reports.is_empty() {
                    outln!("no lines logged yet");
                }
            }
            Ok(Code::Ok)
        }
        Err(VerifyError::Check(e)) => Err(verify(format!("audit log verification failed: {e}"))),
        Err(e) => Err(runtime(format!("cannot read the audit log: {e}"))),
    }
}

fn export(ctx: &Ctx, a: ExportArgs) -> CmdResult {
    let lines = open_lines(ctx)?;
    let channel = match channel_of(&lines, &a.contact)? {
        Some(c) => c,
        None => {
            let logged: Vec<String> = lines
                .reader
                .lines()
                .ctx("reading the audit log")?
                .iter()
                .filter_map(|l| hex_channel(&l.channel))
                .filter_map(|c| lines.names.get(&c).cloned())
                .collect();
            match logged.as_slice() {
                [] => return Err(runtime("no line has been logged yet")),
                [one] => lines
                    .by_name
                    .get(one)
                    .copied()
                    .ok_or_else(|| runtime("line vanished"))?,
                many => {
                    return Err(usage(format!(
                        "this node has lines with {}: choose one with --contact NAME",
                        many.join(", ")
                    )));
                }
            }
        }
    };
    let range = a.entries.as_deref().map(parse_range).transpose()?;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&a.out)
        .map_err(|e| runtime(format!("cannot create {}: {e}", a.out.display())))?;
    let mut w = std::io::BufWriter::new(f);
    lines
        .reader
        .export(&channel, &mut w, range, unix_ms())
        .ctx("exporting")?;
    w.flush().ctx("writing the bundle")?;
    w.get_ref().sync_all().ctx("writing the bundle")?;
    let size = std::fs::metadata(&a.out).map(|m| m.len()).unwrap_or(0);
    if ctx.json {
        print_json(&serde_json::json!({"out": a.out.display().to_string(), "bytes": size}));
    } else {
        outln!("wrote {} ({size} bytes)", a.out.display());
        errln!(
            "the bundle reveals both identities and the timing and volume of the line, not what \
             was said"
        );
    }
    Ok(Code::Ok)
}

fn reveal(ctx: &Ctx, a: RevealArgs) -> CmdResult {
    let (contact, seq) =
        a.id.rsplit_once(':')
            .and_then(|(c, s)| s.parse::<u64>().ok().map(|s| (c.to_string(), s)))
            .ok_or_else(|| usage(format!("{} is not a message id (CONTACT:SEQ)", a.id)))?;
    let lines = open_lines(ctx)?;
    let channel =
        channel_of(&lines, &Some(contact.clone()))?.ok_or_else(|| usage("no such contact"))?;
    let home = ctx.open_home()?;
    let secrets = ctx.load_secrets(&home)?;
    let conn = ctx.db_ro(&home)?;
    let (dir, sealed) = if a.sent {
        let rows = store::outbox_list(&conn, Some(&contact), false).ctx("reading the outbox")?;
        let r = rows
            .into_iter()
            .find(|r| r.seq == seq)
            .ok_or_else(|| usage(format!("no sent message {}", a.id)))?;
        (Direction::Sent, r.body)
    } else {
        let r = store::inbox_get(&conn, &contact, seq)
            .ctx("reading the inbox")?
            .ok_or_else(|| usage(format!("no received message {}", a.id)))?;
        (Direction::Received, r.body)
    };
    let content =
        open_content(&secrets.data_key, &contact, dir, seq, &sealed).ctx("opening the message")?;
    let entries = lines
        .reader
        .show(Some(&channel), None)
        .ctx("reading the audit log")?;
    let index = entries
        .iter()
        .find(|e| match (&e.entry.event, a.sent) {
            (Event::MsgSent { seq: s, .. }, true) => *s == seq,
            (Event::MsgReceived { seq: s, .. }, false) => *s == seq,
            _ => false,
        })
        .map(|e| e.entry.index)
        .ok_or_else(|| runtime(format!("{} is not in the audit log", a.id)))?;
    let opening = serde_json::json!({
        "identity": hex::encode(lines.own),
        "index": index,
        "direction": if a.sent { "sent" } else { "received" },
        "seq": seq,
        "salt": hex::encode(content.salt),
        "body_base64": STANDARD.encode(&content.body),
        "text": (content.kind == liaison_wire::frame::MSG_KIND_TEXT)
            .then(|| String::from_utf8_lossy(&content.body).into_owned()),
    });
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&a.out)
        .map_err(|e| runtime(format!("cannot create {}: {e}", a.out.display())))?;
    writeln!(f, "{opening}").ctx("writing the opening")?;
    if !ctx.json {
        outln!(
            "wrote {}: entry {index} of your log; it contains the message text",
            a.out.display()
        );
    } else {
        print_json(&serde_json::json!({"out": a.out.display().to_string(), "index": index}));
    }
    Ok(Code::Ok)
}

fn check(ctx: &Ctx, a: CheckArgs) -> CmdResult {
    let mut bundles = Vec::new();
    for (i, p) in a.bundles.iter().enumerate() {
        match Bundle::read_file(p) {
            Ok(b) => bundles.push(b),
            Err(BundleReadError::Io(e)) => {
                return Err(runtime(format!("cannot read {}: {e}", p.display())));
            }
            Err(e) => {
                return Err(verify(format!("bundle {} ({}): {e}", i + 1, p.display())));
            }
        }
    }
    let report = match &a.opening {
        None => liaison_audit::check(&bundles),
        Some(path) => {
            let text = crate::ctx::read_bounded_text(path, 1024 * 1024, "opening")?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| usage(format!("{} is not an opening: {e}", path.display())))?;
            let field = |k: &str| {
                v.get(k)
                    .ok_or_else(|| usage(format!("the opening lacks `{k}`")))
            };
            let index = field("index")?
                .as_u64()
                .ok_or_else(|| usage("bad `index` in the opening"))?;
            let salt: [u8; 32] = field("salt")?
                .as_str()
                .and_then(|s| hex::decode(s).ok())
                .and_then(|v| <[u8; 32]>::try_from(v).ok())
                .ok_or_else(|| usage("bad `salt` in the opening"))?;
            let body = field("body_base64")?
                .as_str()
                .and_then(|s| STANDARD.decode(s).ok())
                .ok_or_else(|| usage("bad `body_base64` in the opening"))?;
            let identity = field("identity")?.as_str().unwrap_or_default().to_string();
            let first = liaison_audit::check(&bundles)
                .map_err(|e| verify(format!("verification failed: {e}")))?;
            let which = first
                .bundles
                .iter()
                .position(|b| b.identity == identity)
                .ok_or_else(|| {
                    verify("the opening is for a log that is not among these bundles")
                })?;
            liaison_audit::check_opening(&bundles, which, index, &salt, &body).map(|(m, r)| {
                if !ctx.json {
                    outln!(
                        "opening holds: entry {index} commits to this message ({} bytes)",
                        body.len()
                    );
                }
                let _ = m;
                r
            })
        }
    };
    match report {
        Ok(r) => {
            if ctx.json {
                print_json(&serde_json::json!({"ok": true, "report": r}));
            } else {
                for (i, b) in r.bundles.iter().enumerate() {
                    outln!(
                        "bundle {}: log of {}… with {}…: {} entries, {} checkpoints, verified{}",
                        i + 1,
                        &b.identity[..12.min(b.identity.len())],
                        &b.peer_identity[..12.min(b.peer_identity.len())],
                        b.entries,
                        b.checkpoints,
                        if b.complete { "" } else { " (partial)" }
                    );
                }
                if let Some(c) = &r.cross {
                    outln!(
                        "both sides agree: {} held checkpoints consistent, {} acknowledged messages \
                         and {} receipts matched",
                        c.held_checkpoints_checked,
                        c.acked_messages_matched,
                        c.received_messages_matched
                    );
                }
            }
            Ok(Code::Ok)
        }
        Err(e) => {
            if let CheckError::Fork { .. } = &e {
                // the two conflicting notes are the evidence: print them in full
                outln!("{e}");
            }
            Err(verify(format!("verification failed: {e}")))
        }
    }
}
