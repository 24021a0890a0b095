//! `liaison repair`: checks the home's store for damage and, with `--accept-loss`, cuts a
//! damaged write-ahead log back to its intact part. Damage to the database file itself cannot
//! be repaired in place: the home is restored from a backup.

use crate::ctx::{Ctx, print_json, recovery_hint, store_failure};
use crate::exit::{CmdResult, Code, Context, runtime};
use clap::Args;
use liaison_node::damage;
use liaison_node::node::unix_now;
use liaison_node::store;

/// `liaison repair`.
#[derive(Args, Debug)]
#[command(after_help = "\
Checks the message store (node.db, its write-ahead log node.db-wal, and SQLite's own page
check) while no node runs on the home. It changes nothing unless damage is found and
--accept-loss is given.

Only a damaged write-ahead log can be repaired: it is cut back to the transactions before the
damage, as SQLite would replay them, and the damaged log is kept beside it as
node.db-wal.damaged-UNIXTIME. What was written after the damage is lost; the line copes with
that as with a restored backup (sequence numbers move on past what the contacts hold, messages
they sent again arrive again). A damaged database file is restored from a backup.

Exit status: 0 intact or repaired, 1 damaged and not repaired.")]
pub struct RepairArgs {
    /// Cut a damaged write-ahead log back to its intact part, losing what came after the
    /// damage.
    #[arg(long)]
    pub accept_loss: bool,
}

/// Runs `liaison repair`.
pub fn repair(ctx: &Ctx, a: RepairArgs) -> CmdResult {
    let home = ctx.open_home()?;
    // no node may write the store while it is checked or cut
    let _lock = ctx.lock(&home)?;
    let path = home.db_path();
    if !path.exists() {
        return Err(runtime(format!(
            "the message store {} is missing: restore this home from a backup",
            path.display()
        )));
    }
    let found = damage::check_files(&path).and_then(|()| {
        let conn = store::open_read_only(&path)
            .map_err(|e| damage::Damage::NotADatabase(e.to_string()))?;
        damage::quick_check(&conn)
    });
    let d = match found {
        Ok(()) => {
            if ctx.json {
                print_json(&serde_json::json!({"state": "intact", "store": path}));
            } else {
                outln!("the message store {} is intact", path.display());
            }
            return Ok(Code::Ok);
        }
        Err(d) => d,
    };
    if !d.repairable() {
        return Err(runtime(format!(
            "the message store {} is damaged: {d}. It cannot be repaired in place. {}",
            path.display(),
            recovery_hint(&d)
        )));
    }
    if !a.accept_loss {
        return Err(runtime(format!(
            "the message store {} is damaged: {d}. Nothing was changed: run `liaison repair \
             --accept-loss` to cut the write-ahead log back to its intact part (what was written \
             after the damage is lost), or restore this home from a backup",
            path.display()
        )));
    }
    let kept = damage::cut_wal(&path, unix_now()).ctx("cutting the write-ahead log")?;
    // the store must now open as any other: checked again, pages included
    drop(store::open(&path).map_err(|e| store_failure(&path, e))?);
    if ctx.json {
        print_json(&serde_json::json!({
            "state": "repaired",
            "store": path,
            "damage": d.to_string(),
            "damaged_log_kept": kept,
        }));
    } else {
        outln!(
            "repaired {}: the write-ahead log was cut back to its intact part ({d}); the damaged \
             log is kept at {}",
            path.display(),
            kept.display()
        );
    }
    Ok(Code::Ok)
}
