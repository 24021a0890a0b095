//! `inbox`, `history`, `outbox` and `status`: looking at what was said. These open the store
//! read-only and never wait for a running node.

use crate::ctx::{Ctx, human_time, print_json};
use crate::exit::{CmdResult, Code, Context, Failure, runtime, usage};
use clap::{Args, Subcommand};
use liaison_node::atrest::{DataKey, Direction};
use liaison_node::node::{open_content, unix_now};
use liaison_node::store;
use liaison_wire::frame::{MSG_KIND_FILE, MessageContent};
use std::path::PathBuf;

/// `liaison inbox`.
#[derive(Args, Debug)]
pub struct InboxArgs {
    /// Only messages from this contact.
    #[arg(long, value_name = "NAME")]
    pub from: Option<String>,
    /// Write the file received as message ID (`CONTACT:SEQ`) to --out.
    #[arg(long, value_name = "ID", requires = "out")]
    pub save: Option<String>,
    /// Where --save writes the file (refuses to overwrite).
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
}

/// `liaison history`.
#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// The contact.
    pub name: String,
}

/// `liaison outbox`.
#[derive(Args, Debug)]
pub struct OutboxArgs {
    #[command(subcommand)]
    cmd: Option<OutboxCmd>,
}

#[derive(Subcommand, Debug)]
enum OutboxCmd {
    /// Abandon an undelivered message (`CONTACT:SEQ`). A running `listen` may already have
    /// sent it; the peer then still receives it.
    Drop {
        /// The message id.
        id: String,
    },
}

fn parse_id(id: &str) -> Result<(String, u64), Failure> {
    let (c, s) = id
        .rsplit_once(':')
        .ok_or_else(|| usage(format!("{id} is not a message id (CONTACT:SEQ)")))?;
    let seq = s
        .parse::<u64>()
        .map_err(|_| usage(format!("{id} is not a message id (CONTACT:SEQ)")))?;
    Ok((c.to_string(), seq))
}

/// Opens a stored message body, sealed at rest under the home's data key.
fn open_stored(
    key: &DataKey,
    contact: &str,
    dir: Direction,
    seq: u64,
    sealed: &[u8],
) -> Result<MessageContent, Failure> {
    open_content(key, contact, dir, seq, sealed).ctx("opening a stored message")
}

fn body_json(c: &MessageContent) -> serde_json::Value {
    if c.kind == MSG_KIND_FILE {
        serde_json::json!({"file": c.name, "size": c.body.len()})
    } else {
        serde_json::json!({"text": String::from_utf8_lossy(&c.body), "size": c.body.len()})
    }
}

/// `o` (a JSON object) with the message's `text` or `file`, and `size`.
fn with_body(mut o: serde_json::Value, c: &MessageContent) -> serde_json::Value {
    if let (Some(obj), serde_json::Value::Object(b)) = (o.as_object_mut(), body_json(c)) {
        obj.extend(b);
    }
    o
}

fn body_text(c: &MessageContent) -> String {
    if c.kind == MSG_KIND_FILE {
        format!(
            "file {} ({} bytes)",
            c.name.as_deref().unwrap_or("?"),
            c.body.len()
        )
    } else {
        String::from_utf8_lossy(&c.body).into_owned()
    }
}

/// `liaison inbox`.
pub fn inbox(ctx: &Ctx, a: InboxArgs) -> CmdResult {
    let home = ctx.open_home()?;
    let secrets = ctx.load_secrets(&home)?;
    let conn = ctx.db_ro(&home)?;
    if let Some(id) = &a.save {
        let (contact, seq) = parse_id(id)?;
        let row = store::inbox_get(&conn, &contact, seq)
            .ctx("reading the inbox")?
            .ok_or_else(|| usage(format!("no received message {id}")))?;
        let c = open_content(
            &secrets.data_key,
            &contact,
            Direction::Received,
            seq,
            &row.body,
        )
        .ctx("opening the message")?;
        let out = a
            .out
            .as_ref()
            .ok_or_else(|| usage("--save needs --out PATH"))?;
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(out)
            .map_err(|e| runtime(format!("cannot create {}: {e}", out.display())))?;
        f.write_all(&c.body).ctx("writing the file")?;
        f.sync_all().ctx("writing the file")?;
        if ctx.json {
            print_json(
                &serde_json::json!({"saved": id, "path": out.display().to_string(), "size": c.body.len()}),
            );
        } else {
            outln!("saved {id} ({} bytes) to {}", c.body.len(), out.display());
        }
        return Ok(Code::Ok);
    }
    let mut rows = store::inbox_list(&conn, a.from.as_deref(), 0).ctx("reading the inbox")?;
    // messages are delivered in seq order: one stored early (out of order) is shown when the
    // ones before it arrived, so order by that moment, then by seq
    rows.sort_by(|x, y| (&x.contact, x.seq).cmp(&(&y.contact, y.seq)));
    let mut keyed = Vec::with_capacity(rows.len());
    let mut running: Option<(String, u64)> = None;
    for r in rows {
        let t = match &running {
            Some((c, t)) if *c == r.contact => (*t).max(r.received),
            _ => r.received,
        };
        running = Some((r.contact.clone(), t));
        keyed.push((t, r));
    }
    keyed.sort_by(|(ta, a), (tb, b)| (ta, &a.contact, a.seq).cmp(&(tb, &b.contact, b.seq)));
    let rows: Vec<_> = keyed.into_iter().map(|(_, r)| r).collect();
    let mut items = Vec::new();
    for r in rows {
        let c = open_stored(
            &secrets.data_key,
            &r.contact,
            Direction::Received,
            r.seq,
            &r.body,
        )?;
        items.push((r, c));
    }
    if ctx.json {
        let v: Vec<_> = items
            .iter()
            .map(|(r, c)| {
                with_body(
                    serde_json::json!({
                        "from": r.contact, "id": format!("{}:{}", r.contact, r.seq), "seq": r.seq,
                        "received": r.received, "sent_at_ms": c.sent_at_ms,
                    }),
                    c,
                )
            })
            .collect();
        print_json(&serde_json::Value::Array(v));
    } else if items.is_empty() {
        outln!("no messages");
    } else {
        for (r, c) in items {
            outln!(
                "{} [{}:{}] {}",
                human_time(r.received),
                r.contact,
                r.seq,
                body_text(&c)
            );
        }
    }
    Ok(Code::Ok)
}

/// `liaison history`.
pub fn history(ctx: &Ctx, a: HistoryArgs) -> CmdResult {
    let home = ctx.open_home()?;
    let secrets = ctx.load_secrets(&home)?;
    let conn = ctx.db_ro(&home)?;
    if store::contact(&conn, &a.name)
        .ctx("reading contacts")?
        .is_none()
    {
        return Err(usage(format!("no contact named {}", a.name)));
    }
    struct Item {
        at: u64,
        dir: &'static str,
        id: String,
        status: Option<String>,
        c: MessageContent,
    }
    let mut items = Vec::new();
    for r in store::outbox_list(&conn, Some(&a.name), false).ctx("reading the outbox")? {
        let c = open_stored(
            &secrets.data_key,
            &r.contact,
            Direction::Sent,
            r.seq,
            &r.body,
        )?;
        items.push(Item {
            at: r.created,
            dir: "sent",
            id: format!("{}:{}", r.contact, r.seq),
            status: Some(r.status),
            c,
        });
    }
    for r in store::inbox_list(&conn, Some(&a.name), 0).ctx("reading the inbox")? {
        let c = open_stored(
            &secrets.data_key,
            &r.contact,
            Direction::Received,
            r.seq,
            &r.body,
        )?;
        items.push(Item {
            at: r.received,
            dir: "received",
            id: format!("{}:{}", r.contact, r.seq),
            status: None,
            c,
        });
    }
    items.sort_by_key(|i| (i.at, i.c.sent_at_ms));
    if ctx.json {
        let v: Vec<_> = items
            .iter()
            .map(|i| {
                with_body(
                    serde_json::json!({
                        "direction": i.dir, "id": i.id, "at": i.at, "sent_at_ms": i.c.sent_at_ms,
                        "status": i.status,
                    }),
                    &i.c,
                )
            })
            .collect();
        print_json(&serde_json::Value::Array(v));
    } else if items.is_empty() {
        outln!("nothing yet with {}", a.name);
    } else {
        for i in items {
            let arrow = if i.dir == "sent" { "->" } else { "<-" };
            let st = i.status.map(|s| format!(" ({s})")).unwrap_or_default();
            outln!(
                "{} {arrow} [{}] {}{st}",
                human_time(i.at),
                i.id,
                body_text(&i.c)
            );
        }
    }
    Ok(Code::Ok)
}

/// `liaison outbox`.
pub fn outbox(ctx: &Ctx, a: OutboxArgs) -> CmdResult {
    let home = ctx.open_home()?;
    if let Some(OutboxCmd::Drop { id }) = a.cmd {
        let (contact, seq) = parse_id(&id)?;
        let db = ctx.open_store(&home)?;
        let c2 = contact.clone();
        let ok = db
            .write_blocking(move |c| {
                store::outbox_set_status(c, &c2, seq, store::status::DROPPED, unix_now())
            })
            .ctx("dropping")?;
        if !ok {
            return Err(usage(format!("{id} is not an undelivered message")));
        }
        if ctx.json {
            print_json(&serde_json::json!({"dropped": id}));
        } else {
            outln!("dropped {id}");
        }
        return Ok(Code::Ok);
    }
    let secrets = ctx.load_secrets(&home)?;
    let conn = ctx.db_ro(&home)?;
    let rows = store::outbox_list(&conn, None, true).ctx("reading the outbox")?;
    let mut v = Vec::new();
    for r in rows {
        let c = open_stored(
            &secrets.data_key,
            &r.contact,
            Direction::Sent,
            r.seq,
            &r.body,
        )?;
        v.push((r, c));
    }
    if ctx.json {
        let arr: Vec<_> = v
            .iter()
            .map(|(r, c)| {
                with_body(
                    serde_json::json!({
                        "to": r.contact, "id": format!("{}:{}", r.contact, r.seq), "seq": r.seq,
                        "status": r.status, "created": r.created,
                    }),
                    c,
                )
            })
            .collect();
        print_json(&serde_json::Value::Array(arr));
    } else if v.is_empty() {
        outln!("outbox empty: everything was delivered");
    } else {
        for (r, c) in v {
            outln!(
                "{} [{}:{}] {} ({})",
                human_time(r.created),
                r.contact,
                r.seq,
                body_text(&c),
                r.status
            );
        }
    }
    Ok(Code::Ok)
}

/// `liaison status`.
pub fn status(ctx: &Ctx) -> CmdResult {
    let home = ctx.open_home()?;
    let conn = ctx.db_ro(&home)?;
    let contacts = store::contacts(&conn).ctx("reading contacts")?;
    let live = crate::control::query_status(&home.control_socket_path());
    // the peer's last cosigned size of our log, by peer identity (read-only, no keys)
    let mut cosigned: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let audit_path = liaison_node::store::audit_db_path(&home.db_path());
    if let Ok(reader) = liaison_audit::AuditReader::open(&audit_path)
        && let Ok(lines) = reader.lines()
    {
        for l in lines {
            cosigned.insert(l.peer_identity, l.cosigned_by_peer);
        }
    }
    let mut out = Vec::new();
    for c in &contacts {
        let pending = store::outbox_list(&conn, Some(&c.name), true)
            .ctx("reading the outbox")?
            .len();
        let up = live
            .as_ref()
            .and_then(|m| m.get(&c.name))
            .is_some_and(|s| s.up);
        out.push(serde_json::json!({
            "contact": c.name, "line_up": up, "last_seen": c.last_seen, "pending": pending,
            "verified": c.verified,
            "peer_cosigned_size": cosigned.get(&hex::encode(c.identity)),
        }));
    }
    if ctx.json {
        print_json(&serde_json::json!({"node_running": live.is_some(), "contacts": out}));
    } else {
        outln!(
            "node: {}",
            if live.is_some() {
                "running (liaison listen or call)"
            } else {
                "not running"
            }
        );
        for (c, o) in contacts.iter().zip(&out) {
            outln!(
                "{}: line {}, {} pending, last seen {}, our log cosigned by them up to {}{}",
                c.name,
                if o["line_up"].as_bool() == Some(true) {
                    "up"
                } else {
                    "down"
                },
                o["pending"],
                c.last_seen
                    .map(human_time)
                    .unwrap_or_else(|| "never".into()),
                o["peer_cosigned_size"]
                    .as_u64()
                    .map_or("nothing yet".to_string(), |n| format!("{n} entries")),
                if c.verified { "" } else { ", NOT VERIFIED" }
            );
        }
        if contacts.is_empty() {
            outln!("no contacts");
        }
    }
    Ok(Code::Ok)
}
