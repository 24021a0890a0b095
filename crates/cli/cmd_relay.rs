//! `relay serve` (operators) and `relay add` / `relay list` (nodes).

use crate::ctx::{Ctx, human_time, print_json};
use crate::exit::{CmdResult, Code, Context, runtime, usage, verify};
use clap::{Args, Subcommand};
use liaison_hop::{HopKey, ed25519_spki, spki_hash};
use liaison_node::home::Home;
use liaison_node::node::unix_now;
use liaison_node::store::{self, RelayRow};
use liaison_relay::{RelayConfig, parse_duration, verify_relay_card};
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

/// `liaison relay …`.
#[derive(Subcommand, Debug)]
pub enum RelayCmd {
    /// Run a relay: forwards ciphertext between nodes and holds sealed envelopes for nodes
    /// that are away. It cannot read, forge or silently reorder what it carries.
    Serve(ServeArgs),
    /// Pin a relay from its `liaison-relay:` card and make this node's own hop key for it.
    Add(AddArgs),
    /// List pinned relays and this node's key hash for each.
    List,
}

/// `relay serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// UDP address to listen on, e.g. 0.0.0.0:7710.
    #[arg(long, value_name = "ADDR")]
    pub bind: SocketAddr,
    /// The HOST:PORT nodes use to reach this relay, written into its card (default: the bound
    /// address; required when binding 0.0.0.0 or ::).
    #[arg(long, value_name = "HOST:PORT")]
    pub public_addr: Option<String>,
    /// Where the queue of held envelopes lives (default: HOME/relay-store).
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Only nodes whose hop-key SPKI SHA-256 (hex, one per line, `#` comments) is listed may
    /// connect; reloaded on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub allow: Option<PathBuf>,
    /// Drop held envelopes older than this (e.g. 7d, 12h, 30m).
    #[arg(long, default_value = "7d", value_name = "DURATION")]
    pub ttl: String,
    /// Most bytes held for one destination inbox.
    #[arg(long, value_name = "BYTES")]
    pub max_queue_bytes: Option<u64>,
    /// Most envelopes held for one destination inbox.
    #[arg(long, value_name = "N")]
    pub max_queue_envelopes: Option<u64>,
    /// Most connections from one IP address (IPv6: one /64).
    #[arg(long, value_name = "N")]
    pub max_connections_per_ip: Option<usize>,
    /// Serve Prometheus metrics (aggregate counters only) on this TCP address.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
}

/// `relay add`.
#[derive(Args, Debug)]
pub struct AddArgs {
    /// Your local name for the relay.
    pub name: String,
    /// Its card: the `liaison-relay:` line, or @FILE.
    pub card: String,
    /// Re-pin a relay of that name (new card; this node keeps its hop key for it).
    #[arg(long)]
    pub replace: bool,
}

/// Dispatches `relay …`.
pub fn run(ctx: &Ctx, cmd: RelayCmd) -> CmdResult {
    match cmd {
        RelayCmd::Serve(a) => serve(ctx, a),
        RelayCmd::Add(a) => add(ctx, a),
        RelayCmd::List => list(ctx),
    }
}

fn serve(ctx: &Ctx, a: ServeArgs) -> CmdResult {
    let home = ctx.home_dir()?;
    let mut cfg = RelayConfig::new(home, a.bind);
    cfg.public_addr = a.public_addr;
    if let Some(s) = a.store {
        cfg = cfg.with_store_dir(s);
    }
    cfg.allow_file = a.allow;
    cfg.metrics_addr = a.metrics;
    cfg.ttl = parse_duration(&a.ttl).map_err(|e| usage(format!("--ttl: {e}")))?;
    if let Some(b) = a.max_queue_bytes {
        cfg.quotas.inbox_bytes = b;
    }
    if let Some(n) = a.max_queue_envelopes {
        cfg.quotas.inbox_envelopes = n;
    }
    if let Some(n) = a.max_connections_per_ip {
        cfg.max_connections_per_ip = n;
    }
    cfg.validate().map_err(|e| usage(e.to_string()))?;
    let json = ctx.json;
    let rt = ctx.runtime()?;
    rt.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let shutdown = CancellationToken::new();
        let mut term = signal(SignalKind::terminate()).ctx("installing signal handlers")?;
        let mut int = signal(SignalKind::interrupt()).ctx("installing signal handlers")?;
        let mut hup = signal(SignalKind::hangup()).ctx("installing signal handlers")?;
        let stop = shutdown.clone();
        let (htx, mut hrx) = tokio::sync::oneshot::channel();
        let server = liaison_relay::serve(cfg, shutdown.clone(), move |r| {
            errln!("listening on {}", r.addr);
            if let Some(m) = r.metrics_addr {
                errln!("metrics on http://{m}/metrics");
            }
            if json {
                outln!(
                    "{}",
                    serde_json::json!({"event": "listening", "addr": r.addr.to_string(), "card": r.card_text})
                );
            } else {
                outln!("{}", r.card_text);
            }
            let _ = htx.send(r.handle);
        });
        tokio::pin!(server);
        let mut handle = None;
        loop {
            tokio::select! {
                r = &mut server => {
                    return r.map(|()| Code::Ok).map_err(|e| runtime(format!("relay: {e}")));
                }
                h = &mut hrx, if handle.is_none() => { handle = h.ok(); }
                _ = term.recv() => { errln!("draining and stopping"); stop.cancel(); }
                _ = int.recv() => { errln!("draining and stopping"); stop.cancel(); }
                _ = hup.recv() => {
                    match handle.as_ref().map(|h: &liaison_relay::RelayHandle| h.reload_allow_list()) {
                        Some(Ok(r)) => errln!("allow list reloaded: {r:?}"),
                        Some(Err(e)) => errln!("allow list NOT reloaded (the old one stays): {e}"),
                        None => errln!("SIGHUP before the relay was ready: ignored"),
                    }
                }
            }
        }
    })
}

fn add(ctx: &Ctx, a: AddArgs) -> CmdResult {
    liaison_wire::card::check_name(&a.name).map_err(|e| usage(format!("relay name: {e}")))?;
    let text = crate::ctx::card_arg(&a.card)?;
    let card =
        verify_relay_card(text.trim()).map_err(|e| verify(format!("relay card refused: {e}")))?;
    let home: Home = ctx.open_home()?;
    let _lock = ctx.lock(&home)?;
    let (mut secrets, pass) = ctx.load_secrets_keeping_passphrase(&home)?;
    let db = ctx.open_store(&home)?;
    let name = a.name.clone();
    let existing = db
        .write_blocking(move |c| store::relay(c, &name))
        .ctx("reading relays")?;
    if existing.is_some() && !a.replace {
        return Err(runtime(format!(
            "a relay named {} is already pinned; use --replace to change its card",
            a.name
        )));
    }
    // one relay, one name: a second name for the same relay key would split its hop keys,
    // its subscriptions and its contacts' routes between two entries (contact cards refuse
    // this the same way)
    let all = db.write_blocking(store::relays).ctx("reading relays")?;
    if let Some(other) = all
        .iter()
        .find(|r| r.name != a.name && r.relay_key == card.hop_key)
    {
        return Err(verify(format!(
            "relay card refused: this relay is already pinned as {} (see `liaison relay list`)",
            other.name
        )));
    }
    let key = match secrets.relay_key(&a.name) {
        Some(seed) => HopKey::from_seed(seed),
        None => {
            let k = HopKey::generate().ctx("making the hop key")?;
            if secrets.relays.len() >= liaison_node::secrets::MAX_RELAYS {
                return Err(usage("too many relays pinned"));
            }
            secrets
                .relays
                .push((a.name.clone(), Zeroizing::new(*k.seed())));
            secrets
                .save(&home.keys_path(), pass.as_ref().map(|p| p.as_bytes()))
                .map_err(crate::ctx::secrets_failure)?;
            k
        }
    };
    let hash = hex::encode(spki_hash(&key.spki()));
    let row = RelayRow {
        name: a.name.clone(),
        card: text.trim().to_string(),
        relay_key: card.hop_key,
        addr: card.addr.clone(),
        our_key: key.public(),
        added: unix_now(),
    };
    let replace = a.replace;
    let detail = format!("relay pinned at {}", card.addr);
    let n2 = a.name.clone();
    db.write_blocking(move |c| {
        store::add_relay(c, &row, replace)?;
        store::log_event(c, unix_now(), None, "relay", &format!("{n2}: {detail}"))
    })
    .ctx("pinning the relay")?;
    if ctx.json {
        print_json(&serde_json::json!({
            "relay": a.name, "addr": card.addr, "hop_key_hash": hash,
        }));
    } else {
        outln!("pinned relay {} at {}", a.name, card.addr);
        outln!("this node's hop key hash for it (give it to the relay's operator for --allow):");
        outln!("{hash}");
    }
    Ok(Code::Ok)
}

fn list(ctx: &Ctx) -> CmdResult {
    let home = ctx.open_home()?;
    let conn = ctx.db_ro(&home)?;
    let rows = store::relays(&conn).ctx("reading relays")?;
    if ctx.json {
        let v: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "relay": r.name, "addr": r.addr, "added": r.added,
                    "hop_key_hash": hex::encode(spki_hash(&ed25519_spki(&r.our_key))),
                })
            })
            .collect();
        print_json(&serde_json::Value::Array(v));
    } else if rows.is_empty() {
        outln!("no relays: pin one with `liaison relay add NAME CARD`");
    } else {
        for r in rows {
            outln!(
                "{}  {}  our key hash {}  (pinned {})",
                r.name,
                r.addr,
                hex::encode(spki_hash(&ed25519_spki(&r.our_key))),
                human_time(r.added)
            );
        }
    }
    Ok(Code::Ok)
}
