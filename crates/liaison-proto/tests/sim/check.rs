//! The invariants checked at the end of a run (those checked on the way are in `world`).

use crate::node::Status;
use crate::world::{World, msg_id_of};
use liaison_audit::CheckError;
use liaison_wire::frame::MessageContent;
use std::collections::BTreeSet;

/// How a run ended, for the report.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub delivered: u64,
    pub audit_checked: bool,
    pub fork_reported: bool,
}

fn id_at(inbox: &std::collections::BTreeMap<u64, Vec<u8>>, seq: u64) -> Option<u64> {
    inbox
        .get(&seq)
        .and_then(|e| MessageContent::decode(e).ok())
        .map(|c| msg_id_of(&c.salt))
}

/// Delivery: exactly once and in order (at least once, first appearances in order, with
/// restores), nothing left unacknowledged.
pub fn delivery(w: &World, out: &mut Outcome) -> Vec<String> {
    let mut v = Vec::new();
    let restores = w.any_restore();
    for x in 0..2 {
        let y = 1 - x;
        let (sx, sy) = (&w.nodes[x], &w.nodes[y]);
        let dx = w.durable(x);
        let dy = w.durable(y);
        let (nx, ny) = (sx.name, sy.name);
        if sx.live.is_none() || sy.live.is_none() {
            v.push(format!("{nx} or {ny} is not running at the end"));
            continue;
        }
        {
            let pending = dx
                .outbox
                .iter()
                .filter(|(_, r)| r.status != Status::Delivered)
                .count();
            if pending > 0 {
                let first = dx
                    .outbox
                    .iter()
                    .find(|(_, r)| r.status != Status::Delivered)
                    .map_or(0, |(s, _)| *s);
                v.push(format!(
                    "{nx}: {pending} messages still not delivered after healing (first: seq {first}; engine unacked {})",
                    w.final_unacked[x]
                ));
            }
        }
        let max = dy.inbox.keys().next_back().copied().unwrap_or(0);
        if dy.delivered_upto != max {
            v.push(format!(
                "{ny}: delivered_upto {} but stores up to {max}",
                dy.delivered_upto
            ));
        }
        if !restores {
            // exactly once, in order: our i-th message is the peer's seq i
            let order = &sx.sent_order;
            if dy.inbox.len() != order.len() {
                v.push(format!(
                    "{ny} stores {} of {nx}'s messages, {nx} wrote {}",
                    dy.inbox.len(),
                    order.len()
                ));
            }
            for (i, id) in order.iter().enumerate() {
                let seq = i as u64 + 1;
                match id_at(&dy.inbox, seq) {
                    Some(got) if got == *id => {}
                    got => {
                        v.push(format!(
                            "{ny}'s seq {seq} from {nx} is message {got:?}, expected {id}"
                        ));
                        break;
                    }
                }
            }
            if dx.acked_upto != order.len() as u64 {
                v.push(format!(
                    "{nx}: acked_upto {} but wrote {} messages",
                    dx.acked_upto,
                    order.len()
                ));
            }
            for (id, count) in &sy.shown {
                if *count > 1 {
                    v.push(format!("{ny} was shown message {id} {count} times"));
                }
            }
        } else {
            // at least once, first appearances in the order written (but for messages that
            // were in flight when the rollback was found and moved to new seqs: the peer may
            // have stored later ones under their old seqs already)
            let have: BTreeSet<u64> = dy
                .inbox
                .keys()
                .filter_map(|s| id_at(&dy.inbox, *s))
                .collect();
            for (seq, r) in &dx.outbox {
                if !have.contains(&r.msg) {
                    let outbox: Vec<String> = dx
                        .outbox
                        .iter()
                        .map(|(s, r)| format!("{s}:{}{:?}", r.msg & 0xffff, r.status))
                        .collect();
                    let inbox: Vec<String> = dy
                        .inbox
                        .keys()
                        .map(|s| format!("{s}:{}", id_at(&dy.inbox, *s).unwrap_or(0) & 0xffff))
                        .collect();
                    v.push(format!(
                        "{ny} lacks {nx}'s message {} (seq {seq}) although {nx}'s store has it\n    {nx} outbox {}\n    {ny} inbox {}",
                        r.msg & 0xffff,
                        outbox.join(" "),
                        inbox.join(" ")
                    ));
                    break;
                }
            }
            let pos: std::collections::BTreeMap<u64, usize> = sx
                .sent_order
                .iter()
                .enumerate()
                .map(|(i, id)| (*id, i))
                .collect();
            let mut seen = BTreeSet::new();
            let mut last: Option<usize> = None;
            for s in dy.inbox.keys() {
                let Some(id) = id_at(&dy.inbox, *s) else {
                    continue;
                };
                if !seen.insert(id) || sx.renumbered.contains(&id) {
                    continue;
                }
                let p = pos.get(&id).copied();
                if let (Some(p), Some(l)) = (p, last)
                    && p < l
                {
                    v.push(format!(
                        "{ny}: {nx}'s message {id} first appears at seq {s}, after a later one"
                    ));
                    break;
                }
                if p.is_some() {
                    last = p;
                }
            }
        }
        out.delivered += dy.inbox.len() as u64;
    }
    v
}

/// The audit logs verify and cross-check; with a restore, the checker reports the fork the
/// peer witnessed.
pub fn audit(w: &World, out: &mut Outcome) -> Vec<String> {
    let mut v = Vec::new();
    let now = liaison_proto_time(w);
    let (Some(la), Some(lb)) = (&w.nodes[0].live, &w.nodes[1].live) else {
        return v;
    };
    let (ba, bb) = match (la.audit.bundle(now), lb.audit.bundle(now)) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            v.push(format!("bundle export failed: {:?} {:?}", a.err(), b.err()));
            return v;
        }
    };
    // a bundle survives its encoding
    for b in [&ba, &bb] {
        if liaison_audit::Bundle::decode(&b.encode()).is_err() {
            v.push("a bundle does not decode after encoding".into());
        }
    }
    if std::env::var_os("LIAISON_SIM_VERBOSE").is_some() {
        let mut kinds: std::collections::BTreeMap<String, u64> = Default::default();
        for b in [&ba, &bb] {
            for i in 0..b.entry_count() {
                if let Some(Ok(e)) = b.entry(i) {
                    let k: String = format!("{:?}", e.event)
                        .chars()
                        .take_while(|c| c.is_alphanumeric())
                        .collect();
                    *kinds.entry(k).or_default() += 1;
                }
            }
        }
        eprintln!("entries: {kinds:?}");
    }
    let res = liaison_audit::check(&[ba, bb]);
    out.audit_checked = true;
    if !w.any_restore() {
        if let Err(e) = res {
            v.push(format!("audit check failed: {e}"));
        }
        return v;
    }
    // which restored log did its peer witness beyond what it is now?
    let mut diverged = false;
    for r in 0..2 {
        if !w.nodes[r].restored {
            continue;
        }
        let (Some(lr), Some(lp)) = (&w.nodes[r].live, &w.nodes[1 - r].live) else {
            continue;
        };
        if let Some(cp) = lp.audit.witness().latest() {
            let s = cp.size();
            let tree = lr.audit.log().tree();
            let same = s <= tree.len() && tree.root_at(s).is_ok_and(|root| root == *cp.root());
            diverged |= !same;
        }
    }
    match res {
        Err(
            CheckError::Fork { .. } | CheckError::Truncated { .. } | CheckError::EditedEntry { .. },
        ) => out.fork_reported = true,
        Err(e) if diverged => v.push(format!(
            "a restored log forked, but the checker reports something else: {e}"
        )),
        Err(_) => out.fork_reported = true,
        Ok(_) if diverged => v.push(
            "a restored log forked from what its peer cosigned, and the checker passed".into(),
        ),
        Ok(_) => {}
    }
    v
}

fn liaison_proto_time(w: &World) -> u64 {
    crate::world::T0_UNIX_MS + w.t
}

/// Idle hours do not grow the audit logs.
pub fn idle(w: &mut World) -> Vec<String> {
    let over = w.idle_growth();
    over.into_iter()
        .take(3)
        .map(|(n, h, g)| {
            // what was logged then (by the wall clock of the node, near enough)
            let mut kinds: Vec<String> = Vec::new();
            if let Some(l) = &w.nodes[n].live {
                let from = crate::world::T0_UNIX_MS + h * crate::scenario::HOUR;
                for leaf in l.audit.storage().leaves() {
                    if let Ok(e) = liaison_audit::Entry::from_leaf(leaf)
                        && e.time_ms >= from
                        && e.time_ms < from + crate::scenario::HOUR
                    {
                        kinds.push(format!("{:?}", e.event).chars().take(40).collect());
                    }
                }
            }
            format!(
                "{}: {g} audit entries in idle hour {h} (bound {}): {}",
                w.nodes[n].name,
                crate::world::IDLE_ENTRIES_PER_HOUR,
                kinds.join("; ")
            )
        })
        .collect()
}
