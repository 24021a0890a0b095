//! `liaison demo`: two nodes on loopback in temporary homes, driven through this very binary
//! step by step, each step printed with the command it ran. Exits 0 only if every step held.
// `serde_json::Value` indexing returns `Null` for a missing key; it never panics.
#![allow(clippy::indexing_slicing)]

use crate::ctx::Ctx;
use crate::exit::{CmdResult, Code, Failure, runtime};
use clap::Args;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `liaison demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Keep the temporary homes afterwards (their path is printed).
    #[arg(long)]
    pub keep: bool,
    /// How many messages the call carries.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub messages: u32,
}

struct Demo {
    exe: PathBuf,
    root: PathBuf,
    pass: String,
    step: u32,
    json: bool,
    children: Vec<Child>,
}

struct Listener {
    lines: mpsc::Receiver<String>,
    addr: String,
    idx: usize,
    first: serde_json::Value,
}

impl Drop for Demo {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn fail(msg: impl Into<String>) -> Failure {
    runtime(format!("demo step failed: {}", msg.into()))
}

impl Demo {
    fn home(&self, who: &str) -> PathBuf {
        self.root.join(who)
    }

    fn say(&mut self, what: &str) {
        self.step += 1;
        if self.json {
            outln!("{}", serde_json::json!({"step": self.step, "what": what}));
        } else {
            outln!("\n[{}] {what}", self.step);
        }
    }

    fn show_cmd(&self, who: &str, args: &[&str]) {
        if !self.json {
            let shown: Vec<String> = args
                .iter()
                .map(|a| {
                    if a.len() > 48 {
                        format!(
                            "{}…({} chars)",
                            a.chars().take(24).collect::<String>(),
                            a.len()
                        )
                    } else if a.contains(' ') {
                        format!("{a:?}")
                    } else {
                        a.to_string()
                    }
                })
                .collect();
            outln!("    $ liaison --home <{who}> {}", shown.join(" "));
        }
    }

    fn cmd(&self, who: &str, args: &[&str]) -> Command {
        let mut c = Command::new(&self.exe);
        c.arg("--home")
            .arg(self.home(who))
            .args(args)
            .env("LIAISON_PASSPHRASE", &self.pass)
            .env_remove("LIAISON_HOME");
        c
    }

    /// Runs a command to completion; returns stdout. Fails unless it exits with `want`.
    fn run(
        &self,
        who: &str,
        args: &[&str],
        stdin: Option<&str>,
        want: i32,
    ) -> Result<String, Failure> {
        self.show_cmd(who, args);
        let mut c = self.cmd(who, args);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = c
            .spawn()
            .map_err(|e| fail(format!("cannot run liaison: {e}")))?;
        if let (Some(text), Some(mut si)) = (stdin, child.stdin.take()) {
            si.write_all(text.as_bytes())
                .map_err(|e| fail(format!("writing stdin: {e}")))?;
        }
        let out = wait_output(child, Duration::from_secs(120))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.code() != Some(want) {
            return Err(fail(format!(
                "`liaison {}` exited with {:?} (wanted {want}): {}",
                args.join(" "),
                out.status.code(),
                stderr.trim()
            )));
        }
        Ok(stdout)
    }

    fn spawn_listener(&mut self, who: &str) -> Result<Listener, Failure> {
        self.spawn_listener_with(who, &["listen", "--bind", "127.0.0.1:0", "--json"])
    }

    /// Starts a long-running command whose first stdout line is a JSON `listening` event.
    fn spawn_listener_with(&mut self, who: &str, args: &[&str]) -> Result<Listener, Failure> {
        self.show_cmd(who, args);
        let mut c = self.cmd(who, args);
        c.stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null());
        let mut child = c
            .spawn()
            .map_err(|e| fail(format!("cannot start `liaison {}`: {e}", args.join(" "))))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| fail("listen has no stdout"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => {
                        if tx.send(l).is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        });
        self.children.push(child);
        let idx = self.children.len() - 1;
        let first = rx
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| fail(format!("{who}'s listen did not start")))?;
        let v: serde_json::Value = serde_json::from_str(&first)
            .map_err(|e| fail(format!("listen said {first:?}: {e}")))?;
        let addr = v["addr"]
            .as_str()
            .ok_or_else(|| fail("listen did not print its address"))?
            .to_string();
        if !self.json {
            outln!("    {who} listens on {addr}");
        }
        Ok(Listener {
            lines: rx,
            addr,
            idx,
            first: v,
        })
    }

    fn expect_messages(&self, l: &Listener, who: &str, want: &[String]) -> Result<(), Failure> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut got = Vec::new();
        while got.len() < want.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = l.lines.recv_timeout(left).map_err(|_| {
                fail(format!(
                    "{who} showed {} of {} messages",
                    got.len(),
                    want.len()
                ))
            })?;
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["event"] == "message" {
                let text = v["text"].as_str().unwrap_or_default().to_string();
                if !self.json {
                    outln!(
                        "    {who} shows [{}] {text}",
                        v["id"].as_str().unwrap_or("?")
                    );
                }
                got.push(text);
            }
        }
        if got != want {
            return Err(fail(format!("{who} received {got:?}, expected {want:?}")));
        }
        Ok(())
    }

    fn stop(&mut self, l: &Listener, who: &str) -> Result<(), Failure> {
        let child = self
            .children
            .get_mut(l.idx)
            .ok_or_else(|| fail("lost a listener"))?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
            .map_err(|e| fail(format!("stopping {who}: {e}")))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = child.try_wait().map_err(|e| fail(e.to_string()))? {
                if !st.success() {
                    return Err(fail(format!("{who}'s listen exited with {st}")));
                }
                break;
            }
            if Instant::now() > deadline {
                return Err(fail(format!("{who}'s listen did not stop on SIGTERM")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !self.json {
            outln!("    {who}'s node stopped cleanly");
        }
        Ok(())
    }
}

fn wait_output(mut child: Child, limit: Duration) -> Result<std::process::Output, Failure> {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().map_err(|e| fail(e.to_string()))?.is_some() {
            return child.wait_with_output().map_err(|e| fail(e.to_string()));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail("a command did not finish in time"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn temp_root() -> Result<PathBuf, Failure> {
    let tag: [u8; 8] = liaison_proto::keys::random_bytes().map_err(|e| runtime(e.to_string()))?;
    let name: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    let root = std::env::temp_dir().join(format!("liaison-demo-{name}"));
    std::fs::create_dir(&root)
        .map_err(|e| runtime(format!("cannot create {}: {e}", root.display())))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| runtime(e.to_string()))?;
    Ok(root)
}

fn json_field(out: &str, field: &str) -> Result<String, Failure> {
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).map_err(|e| fail(format!("bad JSON {out:?}: {e}")))?;
    v[field]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| fail(format!("no {field} in {out}")))
}

/// `liaison demo`.
pub fn run(ctx: &Ctx, a: DemoArgs) -> CmdResult {
    let exe =
        std::env::current_exe().map_err(|e| runtime(format!("cannot find this binary: {e}")))?;
    let root = temp_root()?;
    let pass: [u8; 16] = liaison_proto::keys::random_bytes().map_err(|e| runtime(e.to_string()))?;
    let mut d = Demo {
        exe,
        root: root.clone(),
        pass: pass.iter().map(|b| format!("{b:02x}")).collect(),
        step: 0,
        json: ctx.json,
        children: Vec::new(),
    };
    if !d.json {
        outln!(
            "liaison demo: two nodes, alice and bob, on 127.0.0.1 in {}",
            root.display()
        );
        outln!("(keys are encrypted with a random passphrase given to each step)");
    }
    let result = steps(&mut d, a.messages);
    drop(d);
    if a.keep {
        errln!("homes kept in {}", root.display());
    } else {
        let _ = std::fs::remove_dir_all(&root);
    }
    match result {
        Ok(n) => {
            if ctx.json {
                outln!("{}", serde_json::json!({"demo": "ok", "steps": n}));
            } else {
                outln!("\nall {n} steps held");
            }
            Ok(Code::Ok)
        }
        Err(f) => Err(f),
    }
}

fn steps(d: &mut Demo, messages: u32) -> Result<u32, Failure> {
    d.say("create two identities (Ed25519 identity, X25519 Noise static, hop key, mailbox key)");
    for who in ["alice", "bob"] {
        let out = d.run(who, &["init", "--name", who, "--json"], None, 0)?;
        if !d.json {
            outln!(
                "    {who}: fingerprint {}",
                json_field(&out, "fingerprint")?
            );
        }
    }

    d.say("exchange signed contact cards and pin each other");
    let alice_card = json_field(&d.run("alice", &["id", "--json"], None, 0)?, "card")?;
    let bob_card = json_field(&d.run("bob", &["id", "--json"], None, 0)?, "card")?;
    d.run("alice", &["contact", "add", "bob", &bob_card], None, 0)?;
    d.run("bob", &["contact", "add", "alice", &alice_card], None, 0)?;

    d.say("a card with one flipped character is refused (exit 3)");
    let mut bad = bob_card.clone().into_bytes();
    if let Some(b) = bad.get_mut(40) {
        *b = if *b == b'A' { b'B' } else { b'A' };
    }
    let bad = String::from_utf8(bad).map_err(|e| fail(e.to_string()))?;
    d.run("alice", &["contact", "add", "mallory", &bad], None, 3)?;

    d.say("compare the safety number aloud: both sides must show the same 60 digits");
    let na = json_field(
        &d.run("alice", &["verify", "bob", "--json"], None, 0)?,
        "safety_number",
    )?;
    let nb = json_field(
        &d.run("bob", &["verify", "alice", "--json"], None, 0)?,
        "safety_number",
    )?;
    if na != nb {
        return Err(fail(format!("safety numbers differ: {na} / {nb}")));
    }
    if !d.json {
        outln!("    both read: {na}");
    }
    d.run("alice", &["verify", "bob", "--confirm"], None, 0)?;
    d.run("bob", &["verify", "alice", "--confirm"], None, 0)?;

    d.say("an operator starts a blind relay; both nodes pin it with a hop key of their own");
    let relay = d.spawn_listener_with(
        "relay",
        &["relay", "serve", "--bind", "127.0.0.1:0", "--json"],
    )?;
    let relay_card = relay
        .first
        .get("card")
        .and_then(|c| c.as_str())
        .ok_or_else(|| fail("the relay did not print its card"))?
        .to_string();
    d.run("alice", &["relay", "add", "r1", &relay_card], None, 0)?;
    d.run("bob", &["relay", "add", "r1", &relay_card], None, 0)?;

    d.say("both nodes listen on loopback (QUIC, pinned mutual TLS, Retry); bob also at the relay");
    let lb = d.spawn_listener_with(
        "bob",
        &["listen", "--bind", "127.0.0.1:0", "--relay", "r1", "--json"],
    )?;
    let la = d.spawn_listener("alice")?;
    d.run(
        "alice",
        &["contact", "set", "bob", "--addr", &lb.addr],
        None,
        0,
    )?;
    d.run(
        "bob",
        &["contact", "set", "alice", "--addr", &la.addr],
        None,
        0,
    )?;

    d.say(&format!(
        "alice calls bob with {messages} piped messages (Noise KKpsk2 + ML-KEM-768 inside QUIC); \
         the call ends once bob's node acknowledged every one"
    ));
    let texts: Vec<String> = (1..=messages)
        .map(|i| format!("message {i} from alice"))
        .collect();
    let stdin = texts.join("\n") + "\n";
    d.run(
        "alice",
        &["call", "bob", "--timeout", "60"],
        Some(&stdin),
        0,
    )?;
    d.expect_messages(&lb, "bob", &texts)?;

    d.say("bob answers with a one-shot send through his running node");
    let out = d.run(
        "bob",
        &["send", "alice", "received, all clear", "--json"],
        None,
        0,
    )?;
    if json_field(&out, "status")? != "delivered" {
        return Err(fail(format!("send reported {out}")));
    }
    d.expect_messages(&la, "alice", &["received, all clear".to_string()])?;

    d.say("the same line through the relay: it forwards ciphertext it cannot read");
    let out = d.run(
        "alice",
        &["send", "bob", "via the relay", "--relay", "r1", "--json"],
        None,
        0,
    )?;
    if json_field(&out, "status")? != "delivered" {
        return Err(fail(format!("send through the relay reported {out}")));
    }
    d.expect_messages(&lb, "bob", &["via the relay".to_string()])?;

    d.say("bob goes away; alice's message is sealed to his mailbox key and held by the relay");
    d.stop(&lb, "bob")?;
    let out = d.run(
        "alice",
        &[
            "send",
            "bob",
            "held for you while away",
            "--relay",
            "r1",
            "--json",
        ],
        None,
        0,
    )?;
    if json_field(&out, "status")? != "queued" {
        return Err(fail(format!("expected `queued`, send reported {out}")));
    }
    if !d.json {
        outln!("    alice: queued (a relay's ACK is not a receipt: it stays in her outbox)");
    }

    d.say("bob comes back: the held message arrives, exactly once");
    let lb2 = d.spawn_listener_with(
        "bob",
        &["listen", "--bind", "127.0.0.1:0", "--relay", "r1", "--json"],
    )?;
    d.expect_messages(&lb2, "bob", &["held for you while away".to_string()])?;
    d.run(
        "alice",
        &["contact", "set", "bob", "--addr", &lb2.addr],
        None,
        0,
    )?;
    // bob's receipt reaches alice (sealed back through the relay, or on a live session)
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ob: serde_json::Value =
            serde_json::from_str(&d.run("alice", &["outbox", "--json"], None, 0)?)
                .map_err(|e| fail(e.to_string()))?;
        if ob.as_array().is_some_and(Vec::is_empty) {
            break;
        }
        if Instant::now() > deadline {
            return Err(fail(format!("alice's outbox still holds {ob}")));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    if !d.json {
        outln!("    alice's outbox is empty: bob's node acknowledged it end to end");
    }

    d.say("the history on each side shows both directions, every message delivered");
    let h: serde_json::Value =
        serde_json::from_str(&d.run("alice", &["history", "bob", "--json"], None, 0)?)
            .map_err(|e| fail(e.to_string()))?;
    let items = h.as_array().cloned().unwrap_or_default();
    let sent_ok = items
        .iter()
        .filter(|i| i["direction"] == "sent" && i["status"] == "delivered")
        .count();
    let recv = items
        .iter()
        .filter(|i| i["direction"] == "received")
        .count();
    if sent_ok != messages as usize + 2 || recv != 1 {
        return Err(fail(format!(
            "alice's history: {sent_ok} delivered, {recv} received"
        )));
    }
    if !d.json {
        outln!("    alice: {sent_ok} sent and delivered, {recv} received");
    }

    d.say("stop both nodes and the relay (SIGTERM: clean shutdown, nothing lost)");
    d.stop(&la, "alice")?;
    d.stop(&lb2, "bob")?;
    d.stop(&relay, "the relay")?;

    d.say("each side verifies its own co-signed audit log");
    for who in ["alice", "bob"] {
        let out = d.run(who, &["audit", "verify", "--json"], None, 0)?;
        if !d.json {
            let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_default();
            let n = v["lines"][0]["bundles"][0]["entries"].as_u64().unwrap_or(0);
            outln!(
                "    {who}: {n} entries, every checkpoint signed, the peer's cosignatures valid"
            );
        }
    }

    d.say("an arbiter cross-checks both exported logs offline: they agree on the whole line");
    let ba = d.root.join("alice.bundle");
    let bb = d.root.join("bob.bundle");
    let (sa, sb) = (ba.display().to_string(), bb.display().to_string());
    d.run("alice", &["audit", "export", "--out", &sa], None, 0)?;
    d.run("bob", &["audit", "export", "--out", &sb], None, 0)?;
    let out = d.run("alice", &["audit", "check", &sa, &sb, "--json"], None, 0)?;
    let v: serde_json::Value = serde_json::from_str(out.trim()).map_err(|e| fail(e.to_string()))?;
    let cross = &v["report"]["cross"];
    let matched = cross["acked_messages_matched"].as_u64().unwrap_or(0);
    let horizon = cross["acks_beyond_horizon"].as_u64().unwrap_or(0);
    // alice's messages + 2 and bob's reply, each matched or past the receiver's horizon
    if v["ok"] != true || matched == 0 || matched + horizon != messages as u64 + 3 {
        return Err(fail(format!(
            "the bundles do not account for every message: {out}"
        )));
    }
    if !d.json {
        outln!(
            "    {matched} acknowledged messages matched to the receiver's log; {horizon} more were \
             acknowledged after the last checkpoint the receiver cosigned (checkable once they \
             next talk)"
        );
    }
    Ok(d.step)
}
