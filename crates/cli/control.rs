//! The control-socket protocol: JSON lines between a `call`/`send` client and the `listen`
//! process that owns the home.
//!
//! Client → server: one [`Request`] line, then (for `call`) `input` lines and an `eof`.
//! Server → client: `out`/`err` lines to print, and finally `exit` with the exit code. The
//! client prints exactly those lines and exits with that code, so a command behaves the same
//! whether it ran alone or through `listen`.

use crate::cmd_line::{CallInput, CallReq, SendReq, call_logic, send_logic};
use crate::output::{Line, Remote};
use liaison_node::node::Node;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

/// Longest control line, bytes (a 16 MiB file in base64 plus its request).
pub const MAX_LINE: usize = 24 * 1024 * 1024;

/// A client's message.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Run `send`.
    Send(SendReq),
    /// Run `call`.
    Call(CallReq),
    /// A stdin line for `call`.
    Input {
        /// The line.
        line: String,
        /// The commitment salt the client chose for it (hex), so that it can find the message
        /// in the home if the listener stops before saying it stored it.
        #[serde(default)]
        salt: Option<String>,
    },
    /// stdin ended.
    Eof,
    /// Report every line's state (one `out` line: a JSON object by contact).
    Status,
    /// A contact was changed in the store by another command: apply it to the running line
    /// now (exit 0 once applied).
    ContactChanged {
        /// The contact.
        name: String,
    },
}

/// A server's message.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// Print on stdout.
    Out {
        /// The line.
        line: String,
    },
    /// Print on stderr.
    Err {
        /// The line.
        line: String,
    },
    /// Not printed: the message is stored under `id` (`contact:seq`). A `call` gets one for
    /// each input line, in order.
    Stored {
        /// The message's id.
        id: String,
    },
    /// The command ended with this exit code.
    Exit {
        /// Exit code.
        code: u8,
    },
}

/// Reads one line of at most [`MAX_LINE`] bytes; `None` at end of stream.
pub async fn read_line<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
) -> std::io::Result<Option<String>> {
    let mut buf = Vec::new();
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "truncated control line",
                ))
            };
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        buf.extend_from_slice(available.get(..take).unwrap_or_default());
        r.consume(take);
        if buf.len() > MAX_LINE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "control line too long",
            ));
        }
        if done {
            buf.pop();
            return String::from_utf8(buf)
                .map(Some)
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"));
        }
    }
}

async fn write_json<W: AsyncWriteExt + Unpin, T: Serialize>(
    w: &mut W,
    v: &T,
) -> std::io::Result<()> {
    let mut s = serde_json::to_string(v).map_err(std::io::Error::other)?;
    s.push('\n');
    w.write_all(s.as_bytes()).await
}

/// Serves one control connection inside `listen`.
pub async fn serve_connection(node: Node, stream: UnixStream) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let first = match read_line(&mut rd).await {
        Ok(Some(l)) => l,
        _ => return,
    };
    let req: Request = match serde_json::from_str(&first) {
        Ok(r) => r,
        Err(e) => {
            let _ = write_json(
                &mut wr,
                &Reply::Err {
                    line: format!("error: bad control request: {e}"),
                },
            )
            .await;
            let _ = write_json(&mut wr, &Reply::Exit { code: 2 }).await;
            return;
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Line>();
    let writer = tokio::spawn(async move {
        while let Some(l) = rx.recv().await {
            let r = match l {
                Line::Out(line) => Reply::Out { line },
                Line::Err(line) => Reply::Err { line },
                Line::Stored(id) => Reply::Stored { id },
            };
            if write_json(&mut wr, &r).await.is_err() {
                break;
            }
        }
        wr
    });
    let mut out = Remote { tx };
    let code = match req {
        Request::Send(s) => send_logic(&node, s, &mut out).await,
        Request::Call(c) => {
            let (itx, irx) = mpsc::channel::<Option<CallInput>>(256);
            let pump = tokio::spawn(async move {
                loop {
                    match read_line(&mut rd).await {
                        Ok(Some(l)) => match serde_json::from_str::<Request>(&l) {
                            Ok(Request::Input { line, salt }) => {
                                let input = CallInput {
                                    text: line,
                                    salt: salt.as_deref().and_then(crate::lost::parse_salt),
                                };
                                if itx.send(Some(input)).await.is_err() {
                                    break;
                                }
                            }
                            _ => {
                                let _ = itx.send(None).await;
                                break;
                            }
                        },
                        _ => {
                            let _ = itx.send(None).await;
                            break;
                        }
                    }
                }
            });
            // a listener shutting down ends the call the way its end of input would, reporting
            // what became of each line
            let stop = node.shutdown_token();
            let code = call_logic(&node, c, irx, stop, &mut out).await;
            pump.abort();
            code
        }
        Request::Status => {
            let names: Vec<String> = node
                .db()
                .write(liaison_node::store::contacts)
                .await
                .map(|v| v.into_iter().map(|c| c.name).collect())
                .unwrap_or_default();
            let mut map = serde_json::Map::new();
            for n in names {
                let st = node.line_status(&n).await;
                map.insert(n, serde_json::to_value(st).unwrap_or_default());
            }
            use crate::output::Out;
            out.out(&serde_json::Value::Object(map).to_string());
            crate::exit::Code::Ok
        }
        Request::ContactChanged { name } => match node.contact_changed(&name).await {
            Ok(()) => crate::exit::Code::Ok,
            Err(e) => {
                use crate::output::Out;
                out.err(&format!("error: {e}"));
                crate::exit::Code::Runtime
            }
        },
        Request::Input { .. } | Request::Eof => crate::exit::Code::Usage,
    };
    drop(out);
    if let Ok(mut wr) = writer.await {
        let _ = write_json(&mut wr, &Reply::Exit { code: code as u8 }).await;
        let _ = wr.shutdown().await;
    }
}

/// Runs a request through a running `listen` on `stream` (connected to its control socket);
/// returns the exit code it reported. `input` requests (`input` lines and `eof`, for `call`)
/// are forwarded as they come. A listener that goes away before it answered, even before it
/// read the request, is [`RemoteEnd::Lost`].
pub async fn run_remote(
    stream: UnixStream,
    req: Request,
    input: Option<mpsc::Receiver<Request>>,
) -> RemoteEnd {
    // the process that serves us: if it stops, its client waits until it let go of the home
    let holder = stream
        .peer_cred()
        .ok()
        .and_then(|c| c.pid())
        .and_then(|p| u32::try_from(p).ok());
    let (rd, mut wr) = stream.into_split();
    if write_json(&mut wr, &req).await.is_err() {
        return RemoteEnd::Lost {
            stored: Vec::new(),
            holder,
        };
    }
    let fwd = input.map(|mut input| {
        tokio::spawn(async move {
            while let Some(msg) = input.recv().await {
                let eof = matches!(msg, Request::Eof);
                if write_json(&mut wr, &msg).await.is_err() || eof {
                    break;
                }
            }
        })
    });
    let mut rd = BufReader::new(rd);
    let mut end = None;
    let mut stored = Vec::new();
    loop {
        let line = match read_line(&mut rd).await {
            Ok(Some(l)) => l,
            // the listener went away (end of stream, or the connection reset)
            Ok(None) | Err(_) => break,
        };
        match serde_json::from_str::<Reply>(&line) {
            Ok(Reply::Out { line }) => outln!("{line}"),
            Ok(Reply::Err { line }) => errln!("{line}"),
            Ok(Reply::Stored { id }) => stored.push(id),
            Ok(Reply::Exit { code: c }) => {
                end = Some(c);
                break;
            }
            Err(e) => {
                errln!("error: bad reply from the running node: {e}");
                break;
            }
        }
    }
    if let Some(f) = fwd {
        f.abort();
    }
    match end {
        Some(code) => RemoteEnd::Exit(code),
        None => RemoteEnd::Lost { stored, holder },
    }
}

/// How a command run through a listener ended.
#[derive(Debug)]
pub enum RemoteEnd {
    /// The listener ran it to the end with this exit code.
    Exit(u8),
    /// The listener went away first.
    Lost {
        /// `contact:seq` of each message it said it stored, in order.
        stored: Vec<String>,
        /// The listener's pid, if known.
        holder: Option<u32>,
    },
}

/// Tells a running `listen` (if any) that contact `name` changed, and waits until its line
/// uses the change. Returns false if a listener runs but did not confirm.
pub fn notify_contact_changed(socket: &Path, name: &str) -> bool {
    use std::io::{BufRead, Read, Write};
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
        // no listener: the next node to start reads the store
        return true;
    };
    let t = Some(std::time::Duration::from_secs(10));
    if s.set_read_timeout(t).is_err() || s.set_write_timeout(t).is_err() {
        return false;
    }
    let Ok(mut req) = serde_json::to_string(&Request::ContactChanged {
        name: name.to_string(),
    }) else {
        return false;
    };
    req.push('\n');
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let reader = std::io::BufReader::new(s.take(MAX_LINE as u64));
    for line in reader.lines() {
        let Ok(line) = line else { return false };
        if let Ok(Reply::Exit { code }) = serde_json::from_str::<Reply>(&line) {
            return code == 0;
        }
    }
    false
}

/// Asks a running `listen` for its lines' state; `None` if no node runs on this home.
pub fn query_status(
    socket: &Path,
) -> Option<std::collections::HashMap<String, liaison_node::node::LineStatus>> {
    use std::io::{BufRead, Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).ok()?;
    let t = Some(std::time::Duration::from_secs(5));
    s.set_read_timeout(t).ok()?;
    s.set_write_timeout(t).ok()?;
    let mut req = serde_json::to_string(&Request::Status).ok()?;
    req.push('\n');
    s.write_all(req.as_bytes()).ok()?;
    let reader = std::io::BufReader::new(s.take(MAX_LINE as u64));
    for line in reader.lines() {
        match serde_json::from_str::<Reply>(&line.ok()?).ok()? {
            Reply::Out { line } => return serde_json::from_str(&line).ok(),
            Reply::Exit { .. } => return None,
            Reply::Err { .. } | Reply::Stored { .. } => {}
        }
    }
    None
}
