//! Where a command's output goes: this terminal, or a `call`/`send` client on the control
//! socket. Commands that can run inside `listen` write through [`Out`] so the client prints
//! exactly what it would have printed running alone.

use liaison_node::node::NodeEvent;
use tokio::sync::mpsc;

/// A command's output sink.
pub trait Out: Send {
    /// A line for stdout.
    fn out(&mut self, line: &str);
    /// A line for stderr.
    fn err(&mut self, line: &str);
    /// The message this command sends is durably stored under `id` (a `send`'s client learns
    /// it, so that it can tell its user the message's state if the listener stops).
    fn stored(&mut self, _id: &str) {}
}

/// This process's stdout/stderr.
#[derive(Debug, Default)]
pub struct Local;

impl Out for Local {
    fn out(&mut self, line: &str) {
        outln!("{line}");
    }
    fn err(&mut self, line: &str) {
        errln!("{line}");
    }
}

/// A line for one of the two streams of a remote client.
#[derive(Debug, Clone)]
pub enum Line {
    /// stdout.
    Out(String),
    /// stderr.
    Err(String),
    /// Not printed: the id under which the message was stored ([`Out::stored`]).
    Stored(String),
}

/// Output forwarded to a control-socket client.
#[derive(Debug)]
pub struct Remote {
    /// Lines to send.
    pub tx: mpsc::UnboundedSender<Line>,
}

impl Out for Remote {
    fn out(&mut self, line: &str) {
        let _ = self.tx.send(Line::Out(line.to_string()));
    }
    fn err(&mut self, line: &str) {
        let _ = self.tx.send(Line::Err(line.to_string()));
    }
    fn stored(&mut self, id: &str) {
        let _ = self.tx.send(Line::Stored(id.to_string()));
    }
}

/// How an event is shown: `(stdout line, stderr line)`.
pub fn render(ev: &NodeEvent, json: bool) -> (Option<String>, Option<String>) {
    if json {
        return (Some(serde_json::to_string(ev).unwrap_or_default()), None);
    }
    match ev {
        NodeEvent::Message {
            id, text: Some(t), ..
        } => (Some(format!("[{id}] {t}")), None),
        NodeEvent::Message {
            id,
            file: Some(f),
            size,
            ..
        } => (
            Some(format!(
                "[{id}] file {f} ({size} bytes): save it with `liaison inbox --save {id} --out PATH`"
            )),
            None,
        ),
        NodeEvent::Message { id, .. } => (Some(format!("[{id}] (empty)")), None),
        NodeEvent::Delivered { id, .. } => (Some(format!("delivered {id}")), None),
        NodeEvent::Queued { id, to, .. } => (
            Some(format!("queued {id}")),
            Some(format!(
                "{to} is away: a relay holds {id} sealed to {to}'s mailbox key until {to} comes back"
            )),
        ),
        NodeEvent::LineUp { contact } => (None, Some(format!("line to {contact} is up"))),
        NodeEvent::Unreachable { contact } => (
            None,
            Some(format!(
                "{contact} does not answer; messages stay pending until a later listen, call or send"
            )),
        ),
        NodeEvent::NotHeld { to, seqs, reason } => (
            None,
            Some(format!(
                "the relay refused to hold {} message(s) for {to} ({reason}); they stay pending",
                seqs.len()
            )),
        ),
        NodeEvent::DialFailed {
            contact,
            error,
            refused,
            relay,
        } => {
            if let Some(r) = relay {
                return (
                    None,
                    Some(if *refused {
                        format!("relay {r} refused this node: {error}")
                    } else {
                        format!("cannot reach relay {r}: {error}; retrying")
                    }),
                );
            }
            if *refused {
                (
                    None,
                    Some(format!(
                        "{contact} refused our key ({error}): they must pin our card (`liaison id`)"
                    )),
                )
            } else {
                (
                    None,
                    Some(format!("cannot reach {contact}: {error}; retrying")),
                )
            }
        }
        // the line's anomalies are named (`replayed-data`); the audit log's are sentences
        NodeEvent::Anomaly { contact, kind } if kind.contains(' ') => (
            None,
            Some(format!("warning: line to {contact}: {kind} (logged)")),
        ),
        NodeEvent::Anomaly { contact, kind } => (
            None,
            Some(format!(
                "warning: {kind} traffic on the line to {contact} (logged)"
            )),
        ),
        NodeEvent::Renumbered {
            contact,
            peer_holds,
            moves,
        } => (
            None,
            Some(format!(
                "warning: {contact} already holds messages #1–#{peer_holds} from this home, \
                 more than this home knows it sent: it was restored from a backup. {} pending \
                 message(s) got new numbers{} so none is taken for one {contact} already has \
                 (logged; {contact} may see a message twice if it had arrived before the restore)",
                moves.len(),
                match (moves.first(), moves.last()) {
                    (Some(f), Some(l)) => format!(" ({}–{} → {}–{})", f[0], l[0], f[1], l[1]),
                    _ => String::new(),
                }
            )),
        ),
        NodeEvent::PeerLost { contact, from, to } => (
            None,
            Some(format!(
                "warning: {contact}'s node no longer holds messages #{from}–#{to} it had \
                 acknowledged (restored from a backup?): they are pending again and sent again \
                 (logged)"
            )),
        ),
        NodeEvent::Notice { contact, message } => {
            (None, Some(format!("note ({contact}): {message}")))
        }
    }
}

/// Shows an event through `out`.
pub fn show(out: &mut dyn Out, ev: &NodeEvent, json: bool) {
    let (o, e) = render(ev, json);
    if let Some(o) = o {
        out.out(&o);
    }
    if let Some(e) = e {
        out.err(&e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anomalies_read_as_sentences() {
        let named = NodeEvent::Anomaly {
            contact: "bob".into(),
            kind: "replayed-data".into(),
        };
        assert_eq!(
            render(&named, false).1.as_deref(),
            Some("warning: replayed-data traffic on the line to bob (logged)")
        );
        let audit = NodeEvent::Anomaly {
            contact: "bob".into(),
            kind: "audit: the peer holds a checkpoint of size 22 that this log cannot reproduce"
                .into(),
        };
        assert_eq!(
            render(&audit, false).1.as_deref(),
            Some(
                "warning: line to bob: audit: the peer holds a checkpoint of size 22 that this \
                 log cannot reproduce (logged)"
            )
        );
    }
}
