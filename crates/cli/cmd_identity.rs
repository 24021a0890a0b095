//! `init` and `id`: this node's identity and card.

use crate::ctx::{CARD_FILE, Ctx, print_json};
use crate::exit::{CmdResult, Code, Context, runtime, usage};
use clap::Args;
use liaison_node::home::Home;
use liaison_node::node::unix_now;
use liaison_node::secrets::NodeSecrets;
use liaison_node::store;
use liaison_proto::identity::Identity;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

/// `liaison init`.
#[derive(Args, Debug)]
pub struct InitArgs {
    /// Your name as your partner will see it on your card (1 to 64 bytes).
    #[arg(long)]
    pub name: String,
    /// Replace an existing identity in this home. Its contacts and messages are deleted: your
    /// partners must pin your new card and verify the new safety number.
    #[arg(long)]
    pub force: bool,
    /// Store the keys unencrypted (for unattended test nodes only).
    #[arg(long)]
    pub no_passphrase: bool,
    /// An address hint put in your card (HOST:PORT where you listen).
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: Option<String>,
}

/// `liaison init`.
pub fn init(ctx: &Ctx, a: InitArgs) -> CmdResult {
    let dir = ctx.home_dir()?;
    let keys_exist = dir.join(liaison_node::home::KEYS_FILE).exists();
    if keys_exist && !a.force {
        return Err(runtime(format!(
            "{} already holds an identity; use another --home, or --force to replace it (its \
             contacts and messages are deleted)",
            dir.display()
        )));
    }
    liaison_wire::card::check_name(&a.name).map_err(|e| usage(format!("--name: {e}")))?;
    let home = Home::create(&dir, a.force).map_err(crate::ctx::home_failure)?;
    let _lock = ctx.lock(&home)?;
    let pass = if a.no_passphrase {
        None
    } else {
        Some(ctx.passphrase(true)?)
    };
    if let Some(p) = &pass
        && p.is_empty()
    {
        return Err(usage(
            "the passphrase is empty: choose one, or use --no-passphrase",
        ));
    }
    let mut identity = Identity::generate(&a.name, unix_now()).ctx("making the identity")?;
    if a.addr.is_some() {
        identity
            .set_hints(a.addr.clone(), Vec::new())
            .map_err(|e| usage(format!("--addr: {e}")))?;
    }
    let card = identity.card().ctx("signing the card")?;
    let verified = identity.verified_card().ctx("checking the new card")?;
    if a.force {
        for f in [
            "node.db",
            "node.db-wal",
            "node.db-shm",
            "audit.db",
            "audit.db-wal",
            "audit.db-shm",
            liaison_node::home::MANIFEST_FILE,
            CARD_FILE,
        ] {
            let _ = std::fs::remove_file(home.dir().join(f));
        }
    }
    let secrets = NodeSecrets::new(identity).ctx("making the data key")?;
    secrets
        .save(&home.keys_path(), pass.as_ref().map(|p| p.as_bytes()))
        .map_err(crate::ctx::secrets_failure)?;
    let text = card.to_text();
    let card_path = home.dir().join(CARD_FILE);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&card_path)
        .ctx("writing the card file")?;
    writeln!(f, "{text}").ctx("writing the card file")?;
    f.sync_all().ctx("writing the card file")?;
    let db = store::create(&home.db_path()).ctx("creating the message store")?;
    let store_id = db
        .write_blocking(store::store_id)
        .ctx("creating the message store")?;
    home.write_manifest(&liaison_node::home::Manifest { store_id })
        .ctx("writing the home manifest")?;
    let detail = format!("identity {} created", verified.fingerprint());
    db.write_blocking(move |c| store::log_event(c, unix_now(), None, "key", &detail))
        .ctx("logging")?;
    if pass.is_none() {
        errln!(
            "WARNING: the keys in {} are NOT encrypted (--no-passphrase). Anyone who can read \
             this home can impersonate you.",
            home.keys_path().display()
        );
    }
    if ctx.json {
        print_json(&serde_json::json!({
            "name": a.name,
            "card": text,
            "fingerprint": verified.fingerprint(),
            "home": home.dir().display().to_string(),
            "encrypted": pass.is_some(),
        }));
    } else {
        outln!("identity created in {}", home.dir().display());
        outln!("fingerprint: {}", verified.fingerprint());
        outln!("your card (give it to your partner; it holds no secret):");
        outln!("{text}");
    }
    Ok(Code::Ok)
}

/// `liaison id`.
pub fn id(ctx: &Ctx) -> CmdResult {
    let home = ctx.open_home()?;
    let card = ctx.own_card(&home)?;
    if ctx.json {
        print_json(&serde_json::json!({
            "name": card.name(),
            "card": card.to_text(),
            "fingerprint": card.fingerprint(),
        }));
    } else {
        outln!("{}", card.to_text());
        outln!("fingerprint: {}", card.fingerprint());
    }
    Ok(Code::Ok)
}
