//! `contact …` and `verify`: pinning partners and confirming them by safety number.

use crate::ctx::{Ctx, card_arg, human_time, print_json};
use crate::exit::{CmdResult, Code, Context, Failure, runtime, usage, verify as verify_fail};
use clap::{Args, Subcommand};
use liaison_node::atrest;
use liaison_node::line::pairing_aad;
use liaison_node::node::unix_now;
use liaison_node::store::{self, NewContact};
use liaison_proto::identity::{PinnedSummary, check_new_contact, parse_card_text};
use liaison_proto::pairing::PairingSecret;
use liaison_proto::safety::{fingerprint, safety_number};

/// `liaison contact …`.
#[derive(Subcommand, Debug)]
pub enum ContactCmd {
    /// Pin a partner from their card (`liaison-card:` text, or @FILE holding it).
    Add(AddArgs),
    /// List pinned contacts.
    List,
    /// Forget a contact, with its messages.
    Remove {
        /// The contact.
        name: String,
    },
    /// Change how a contact is reached.
    Set(SetArgs),
    /// Make (--new) or enter a pairing secret: 32 random bytes exchanged in person that add
    /// post-quantum authentication to every handshake with this contact.
    Pair(PairArgs),
    /// Forget the last handshake time accepted from a contact (after a clock disaster on
    /// their side). Logged.
    ResetReplay {
        /// The contact.
        name: String,
    },
}

/// `contact add`.
#[derive(Args, Debug)]
pub struct AddArgs {
    /// Your local name for the contact.
    pub name: String,
    /// Their card: the `liaison-card:` line, or @FILE.
    pub card: String,
    /// Where they listen for direct calls.
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: Option<String>,
    /// The relay to meet them at (a relay pinned with `liaison relay add`).
    #[arg(long, value_name = "RELAYNAME")]
    pub relay: Option<String>,
    /// Re-pin an existing contact whose identity changed (new safety number; logged).
    #[arg(long)]
    pub replace: bool,
}

/// `contact set`.
#[derive(Args, Debug)]
pub struct SetArgs {
    /// The contact.
    pub name: String,
    /// Where they listen for direct calls.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "no_addr")]
    pub addr: Option<String>,
    /// Forget the stored address.
    #[arg(long)]
    pub no_addr: bool,
    /// The relay to meet them at.
    #[arg(long, value_name = "RELAYNAME", conflicts_with = "no_relay")]
    pub relay: Option<String>,
    /// Forget the stored relay.
    #[arg(long)]
    pub no_relay: bool,
    /// Never seal messages to their mailbox key: only live sessions.
    #[arg(long, conflicts_with = "allow_mailbox")]
    pub live_only: bool,
    /// Allow the mailbox path again.
    #[arg(long)]
    pub allow_mailbox: bool,
}

/// `contact pair`.
#[derive(Args, Debug)]
pub struct PairArgs {
    /// The contact.
    pub name: String,
    /// The secret your partner made with --new.
    #[arg(conflicts_with = "new")]
    pub secret: Option<String>,
    /// Make a fresh secret to carry to your partner in person.
    #[arg(long)]
    pub new: bool,
}

/// `liaison verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The contact.
    pub name: String,
    /// You compared the number with your partner and it matches: mark the contact verified.
    #[arg(long)]
    pub confirm: bool,
    /// Also show the safety number as a QR code made of block characters, for a partner in
    /// the same room to scan and compare (it encodes `LIAISON-SAFETY-NUMBER:` and the 60
    /// digits; nothing secret).
    #[arg(long)]
    pub qr: bool,
}

/// The safety number as a QR code for a terminal (two rows of modules per line, light on
/// dark, with the quiet zone a scanner needs).
pub fn safety_qr(number: &str) -> Result<String, Failure> {
    use qrcode::render::unicode::Dense1x2;
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    let code = qrcode::QrCode::new(format!("LIAISON-SAFETY-NUMBER:{digits}"))
        .map_err(|e| runtime(format!("cannot make the QR code: {e}")))?;
    Ok(code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

/// Dispatches `contact …`.
pub fn run(ctx: &Ctx, cmd: ContactCmd) -> CmdResult {
    let changed = match &cmd {
        ContactCmd::Add(a) => Some(a.name.clone()),
        ContactCmd::Remove { name } | ContactCmd::ResetReplay { name } => Some(name.clone()),
        ContactCmd::Set(a) => Some(a.name.clone()),
        ContactCmd::Pair(a) => Some(a.name.clone()),
        ContactCmd::List => None,
    };
    let code = match cmd {
        ContactCmd::Add(a) => add(ctx, a),
        ContactCmd::List => list(ctx),
        ContactCmd::Remove { name } => remove(ctx, &name),
        ContactCmd::Set(a) => set(ctx, a),
        ContactCmd::Pair(a) => pair(ctx, a),
        ContactCmd::ResetReplay { name } => reset_replay(ctx, &name),
    }?;
    if let (Some(name), Code::Ok) = (changed, code) {
        tell_listener(ctx, &name);
    }
    Ok(code)
}

/// A running `listen` on this home applies the change before this command returns (a new
/// pairing secret ends the sessions made without it at once).
fn tell_listener(ctx: &Ctx, name: &str) {
    let Ok(home) = ctx.open_home() else {
        return;
    };
    let sock = home.control_socket_path();
    if sock.exists() && !crate::control::notify_contact_changed(&sock, name) {
        errln!(
            "warning: the running `liaison listen` did not confirm the change; it applies it \
             within a few seconds"
        );
    }
}

fn hex8(k: &[u8; 32]) -> String {
    k.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn add(ctx: &Ctx, a: AddArgs) -> CmdResult {
    liaison_wire::card::check_name(&a.name).map_err(|e| usage(format!("contact name: {e}")))?;
    let text = card_arg(&a.card)?;
    let card = parse_card_text(&text).map_err(|e| verify_fail(format!("card refused: {e}")))?;
    let home = ctx.open_home()?;
    let secrets = ctx.load_secrets(&home)?;
    let db = ctx.open_store(&home)?;
    let name = a.name.clone();
    let existing = db.write_blocking(store::contacts).ctx("reading contacts")?;
    let exists = existing.iter().any(|c| c.name == name);
    if exists && !a.replace {
        return Err(runtime(format!(
            "a contact named {name} is already pinned; use --replace if their identity \
             changed (you will need to verify the new safety number)"
        )));
    }
    if !exists && a.replace {
        return Err(usage(format!("no contact named {name} to replace")));
    }
    let pinned: Vec<PinnedSummary> = existing
        .iter()
        .filter(|c| c.name != name)
        .map(|c| PinnedSummary {
            name: c.name.clone(),
            identity: c.identity,
            noise: c.noise,
            hop: c.hop,
        })
        .collect();
    check_new_contact(&card, &secrets.identity, &pinned)
        .map_err(|e| verify_fail(format!("card refused: {e}")))?;
    let addr = a.addr.clone().or_else(|| card.addr().map(str::to_string));
    let new = NewContact {
        name: name.clone(),
        card: card.to_bytes(),
        identity: *card.identity_key(),
        noise: *card.noise_static(),
        hop: *card.hop_key(),
        addr,
        relay: a.relay.clone(),
    };
    let replace = a.replace;
    let detail = format!(
        "{} {} (fingerprint {})",
        if replace { "re-pinned" } else { "pinned" },
        hex8(card.identity_key()),
        card.fingerprint()
    );
    let n2 = name.clone();
    db.write_blocking(move |c| {
        store::add_contact(c, &new, unix_now(), replace)?;
        let kind = if replace {
            store::key_event::REPINNED
        } else {
            store::key_event::PINNED
        };
        store::log_event(c, unix_now(), Some(&n2), kind, &detail)
    })
    .ctx("pinning the contact")?;
    let number = safety_number(&secrets.identity.identity_public(), card.identity_key());
    if ctx.json {
        print_json(&serde_json::json!({
            "name": name, "card_name": card.name(), "fingerprint": card.fingerprint(),
            "safety_number": number, "verified": false, "replaced": replace,
        }));
    } else {
        outln!(
            "pinned {name} (their card says \"{}\"), fingerprint {}",
            card.name(),
            card.fingerprint()
        );
        outln!("safety number: {number}");
        outln!(
            "read it aloud with {name} on a channel you trust, then run `liaison verify {name} --confirm`"
        );
    }
    Ok(Code::Ok)
}

fn list(ctx: &Ctx) -> CmdResult {
    let home = ctx.open_home()?;
    let conn = ctx.db_ro(&home)?;
    let rows = store::contacts(&conn).ctx("reading contacts")?;
    if ctx.json {
        let v: Vec<_> = rows
            .iter()
            .map(|c| {
                serde_json::json!({
                    "name": c.name, "fingerprint": fingerprint(&c.identity), "verified": c.verified,
                    "addr": c.addr, "relay": c.relay, "live_only": c.live_only,
                    "paired": c.pairing.is_some(), "added": c.added, "last_seen": c.last_seen,
                })
            })
            .collect();
        print_json(&serde_json::Value::Array(v));
    } else if rows.is_empty() {
        outln!("no contacts yet: pin one with `liaison contact add NAME CARD`");
    } else {
        for c in rows {
            outln!(
                "{}  {}  {}{}{}{}",
                c.name,
                if c.verified {
                    "verified"
                } else {
                    "NOT VERIFIED"
                },
                fingerprint(&c.identity),
                c.addr
                    .as_ref()
                    .map(|a| format!("  addr {a}"))
                    .unwrap_or_default(),
                c.relay
                    .as_ref()
                    .map(|r| format!("  relay {r}"))
                    .unwrap_or_default(),
                c.last_seen
                    .map(|t| format!("  last seen {}", human_time(t)))
                    .unwrap_or_default(),
            );
        }
    }
    Ok(Code::Ok)
}

fn open_rw(ctx: &Ctx) -> Result<store::Db, Failure> {
    let home = ctx.open_home()?;
    ctx.open_store(&home)
}

fn no_such(name: &str) -> Failure {
    usage(format!(
        "no contact named {name} (see `liaison contact list`)"
    ))
}

fn remove(ctx: &Ctx, name: &str) -> CmdResult {
    let db = open_rw(ctx)?;
    let n = name.to_string();
    let removed = db
        .write_blocking(move |c| {
            let r = store::remove_contact(c, &n)?;
            if r {
                store::log_event(c, unix_now(), Some(&n), "key", "contact removed")?;
            }
            Ok(r)
        })
        .ctx("removing the contact")?;
    if !removed {
        return Err(no_such(name));
    }
    if !ctx.json {
        outln!("removed {name} and its messages");
    } else {
        print_json(&serde_json::json!({"removed": name}));
    }
    Ok(Code::Ok)
}

fn set(ctx: &Ctx, a: SetArgs) -> CmdResult {
    let db = open_rw(ctx)?;
    let addr: Option<Option<String>> = if a.no_addr {
        Some(None)
    } else {
        a.addr.clone().map(Some)
    };
    let relay: Option<Option<String>> = if a.no_relay {
        Some(None)
    } else {
        a.relay.clone().map(Some)
    };
    let live = if a.live_only {
        Some(true)
    } else if a.allow_mailbox {
        Some(false)
    } else {
        None
    };
    let name = a.name.clone();
    let ok = db
        .write_blocking(move |c| {
            store::set_contact(
                c,
                &name,
                addr.as_ref().map(|o| o.as_deref()),
                relay.as_ref().map(|o| o.as_deref()),
                live,
                None,
            )
        })
        .ctx("updating the contact")?;
    if !ok {
        return Err(no_such(&a.name));
    }
    if ctx.json {
        print_json(&serde_json::json!({"updated": a.name}));
    } else {
        outln!("updated {}", a.name);
    }
    Ok(Code::Ok)
}

fn pair(ctx: &Ctx, a: PairArgs) -> CmdResult {
    let home = ctx.open_home()?;
    let secrets = ctx.load_secrets(&home)?;
    let db = ctx.open_store(&home)?;
    let secret = match (&a.secret, a.new) {
        (Some(s), false) => {
            PairingSecret::parse(s).map_err(|e| usage(format!("pairing secret refused: {e}")))?
        }
        (None, true) => PairingSecret::generate().ctx("making the secret")?,
        _ => {
            return Err(usage(
                "give the secret your partner made, or --new to make one",
            ));
        }
    };
    let sealed = atrest::seal_body(&secrets.data_key, &pairing_aad(&a.name), secret.as_bytes())
        .ctx("sealing the secret")?;
    let name = a.name.clone();
    let ok = db
        .write_blocking(move |c| {
            let ok = store::set_pairing(c, &name, Some(&sealed))?;
            if ok {
                store::log_event(
                    c,
                    unix_now(),
                    Some(&name),
                    store::key_event::PAIRED,
                    "pairing secret set",
                )?;
            }
            Ok(ok)
        })
        .ctx("storing the secret")?;
    if !ok {
        return Err(no_such(&a.name));
    }
    if a.new {
        let text = secret.to_text();
        if ctx.json {
            print_json(&serde_json::json!({"contact": a.name, "secret": text.as_str()}));
        } else {
            outln!("{}", text.as_str());
            errln!(
                "carry this to {} in person (never over the line itself); they run \
                 `liaison contact pair YOURNAME SECRET`",
                a.name
            );
        }
    } else if ctx.json {
        print_json(&serde_json::json!({"contact": a.name, "paired": true}));
    } else {
        outln!("pairing secret stored for {}", a.name);
    }
    Ok(Code::Ok)
}

fn reset_replay(ctx: &Ctx, name: &str) -> CmdResult {
    let db = open_rw(ctx)?;
    let n = name.to_string();
    let ok = db
        .write_blocking(move |c| {
            let ok = store::reset_replay(c, &n)?;
            if ok {
                store::log_event(
                    c,
                    unix_now(),
                    Some(&n),
                    store::key_event::REPLAY_RESET,
                    "handshake replay state reset",
                )?;
            }
            Ok(ok)
        })
        .ctx("resetting")?;
    if !ok {
        return Err(no_such(name));
    }
    outln!("the next handshake from {name} will be accepted whatever its time (logged)");
    Ok(Code::Ok)
}

/// `liaison verify`.
pub fn verify(ctx: &Ctx, a: VerifyArgs) -> CmdResult {
    let home = ctx.open_home()?;
    let own = ctx.own_card(&home)?;
    let conn = ctx.db_ro(&home)?;
    let c = store::contact(&conn, &a.name)
        .ctx("reading contacts")?
        .ok_or_else(|| no_such(&a.name))?;
    let number = safety_number(own.identity_key(), &c.identity);
    let mut verified = c.verified;
    if a.confirm {
        let db = ctx.open_store(&home)?;
        let name = a.name.clone();
        let detail = format!("safety number confirmed {number}");
        db.write_blocking(move |conn| {
            store::set_contact(conn, &name, None, None, None, Some(true))?;
            store::log_event(
                conn,
                unix_now(),
                Some(&name),
                store::key_event::VERIFIED,
                &detail,
            )
        })
        .ctx("marking verified")?;
        verified = true;
    }
    let qr = if a.qr {
        Some(safety_qr(&number)?)
    } else {
        None
    };
    if ctx.json {
        let mut v = serde_json::json!({
            "contact": a.name, "safety_number": number, "verified": verified,
        });
        if let (Some(q), Some(obj)) = (&qr, v.as_object_mut()) {
            obj.insert("qr".into(), serde_json::Value::String(q.clone()));
        }
        print_json(&v);
    } else {
        outln!("safety number with {}:", a.name);
        outln!("{number}");
        if let Some(q) = &qr {
            outln!("{q}");
        }
        if a.confirm {
            outln!("{} is now marked verified", a.name);
        } else if verified {
            outln!("(already verified)");
        } else {
            outln!(
                "compare it aloud with {name}: both screens must show the same 60 digits; then \
                 run `liaison verify {name} --confirm`",
                name = a.name
            );
        }
    }
    Ok(Code::Ok)
}
