//! Test harness: run the real `liaison` binary with a temporary home per node, collect the
//! output of long-running `listen` processes line by line, and kill exactly the processes we
//! started. Every wait is bounded.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_liaison");
pub const PASS: &str = "correct horse battery staple";

/// A node's home in a temporary directory.
pub struct Node {
    pub name: String,
    _tmp: tempfile::TempDir,
    pub home: PathBuf,
}

impl Node {
    /// `liaison init --name NAME` in a fresh home.
    pub fn new(name: &str) -> Node {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = tmp.path().join("home");
        let n = Node {
            name: name.to_string(),
            _tmp: tmp,
            home,
        };
        let out = n.run(&["init", "--name", name]);
        assert_ok(&out, "init");
        n
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--home")
            .arg(&self.home)
            .args(args)
            .env("LIAISON_PASSPHRASE", PASS)
            .env_remove("LIAISON_HOME")
            .env_remove("RUST_LOG");
        c
    }

    /// `liaison ARGS…` on this home, like [`Node::cmd`], under a 2 GiB address-space limit
    /// (through `sh -c ulimit`), for commands that must not grow without bound.
    pub fn cmd_memory_bounded(&self, args: &[&str]) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg("ulimit -v 2097152; exec \"$@\"")
            .arg("sh")
            .arg(BIN)
            .arg("--home")
            .arg(&self.home)
            .args(args)
            .env("LIAISON_PASSPHRASE", PASS)
            .env_remove("LIAISON_HOME")
            .env_remove("RUST_LOG");
        c
    }

    /// Runs to completion (bounded), stdin closed.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with(self.cmd(args), None)
    }

    /// Runs with `input` on stdin.
    pub fn run_stdin(&self, args: &[&str], input: &str) -> Output {
        self.run_with(self.cmd(args), Some(input))
    }

    pub fn run_with(&self, mut c: Command, input: Option<&str>) -> Output {
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c.stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = c.spawn().expect("spawn liaison");
        if let (Some(text), Some(mut si)) = (input, child.stdin.take()) {
            let text = text.to_string();
            std::thread::spawn(move || {
                let _ = si.write_all(text.as_bytes());
            });
        }
        wait_bounded(child, Duration::from_secs(180))
    }

    pub fn card(&self) -> String {
        let out = self.run(&["id", "--json"]);
        assert_ok(&out, "id");
        json(&out)["card"].as_str().expect("card").to_string()
    }

    /// Pins `other` under its own name, optionally with an address.
    pub fn pin(&self, other: &Node, addr: Option<&str>) {
        let card = other.card();
        let mut args = vec!["contact", "add", other.name.as_str(), card.as_str()];
        if let Some(a) = addr {
            args.extend(["--addr", a]);
        }
        let out = self.run(&args);
        assert_ok(&out, "contact add");
    }

    /// Starts `listen --json` on `bind`.
    pub fn listen(&self, bind: &str) -> Listener {
        let (mut l, first) = self.start_listener(&["listen", "--bind", bind, "--json"]);
        l.addr = first["addr"].as_str().expect("addr").to_string();
        l
    }

    /// Spawns a `listen … --json` and waits for its `listening` event, returned beside it.
    fn start_listener(&self, args: &[&str]) -> (Listener, serde_json::Value) {
        self.spawn_listener(self.cmd(args), Stdio::null())
    }

    /// Starts `listen ARGS…` (which must include `--json`) with extra environment (e.g.
    /// `RUST_LOG`) and its stderr written to `log`, for tests that read the node's log
    /// afterwards. `addr` is set when it listens on a direct address.
    pub fn listen_logged(&self, args: &[&str], env: &[(&str, &str)], log: &Path) -> Listener {
        let mut c = self.cmd(args);
        c.envs(env.iter().copied());
        let f = std::fs::File::create(log).expect("listener log file");
        let (mut l, first) = self.spawn_listener(c, Stdio::from(f));
        l.addr = first["addr"].as_str().unwrap_or_default().to_string();
        l
    }

    fn spawn_listener(&self, mut c: Command, stderr: Stdio) -> (Listener, serde_json::Value) {
        c.stdout(Stdio::piped()).stderr(stderr).stdin(Stdio::null());
        let mut child = c.spawn().expect("spawn listen");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(l) = line else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut l = Listener {
            child,
            lines: rx,
            addr: String::new(),
            seen: Vec::new(),
        };
        let first = l
            .next_json(Duration::from_secs(60))
            .expect("listen did not start");
        assert_eq!(first["event"], "listening", "{first}");
        (l, first)
    }

    /// Starts a long-running command with a writable stdin (e.g. `call`).
    pub fn spawn_stdin(&self, args: &[&str]) -> Running {
        let mut c = self.cmd(args);
        c.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::piped());
        let mut child = c.spawn().expect("spawn");
        let stdin = child.stdin.take();
        Running { child, stdin }
    }
}

/// A process with a writable stdin.
pub struct Running {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
}

impl Running {
    pub fn write_lines(&mut self, lines: &[String]) {
        let si = self.stdin.as_mut().expect("stdin open");
        for l in lines {
            writeln!(si, "{l}").expect("write stdin");
        }
        si.flush().expect("flush");
    }

    /// Closes stdin and waits (bounded).
    pub fn finish(mut self, limit: Duration) -> Output {
        drop(self.stdin.take());
        let child = std::mem::replace(&mut self.child, dummy_child());
        wait_bounded(child, limit)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dummy_child() -> Child {
    Command::new("true").spawn().expect("true")
}

/// A running `listen`.
pub struct Listener {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub addr: String,
    pub seen: Vec<serde_json::Value>,
}

impl Listener {
    pub fn next_json(&mut self, limit: Duration) -> Option<serde_json::Value> {
        let line = self.lines.recv_timeout(limit).ok()?;
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("listen printed non-JSON {line:?}: {e}"));
        self.seen.push(v.clone());
        Some(v)
    }

    /// Collects `message` events until `n` arrived or `limit` passed.
    pub fn messages(&mut self, n: usize, limit: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + limit;
        let mut got = Vec::new();
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.next_json(left) {
                Some(v) if v["event"] == "message" => got.push(v),
                Some(_) => {}
                None => break,
            }
        }
        got
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    /// SIGKILL, then reap.
    pub fn kill9(mut self) {
        let _ = nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit (bounded); returns the exit status code.
    pub fn terminate(mut self) -> Option<i32> {
        let _ = nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_bounded(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    // drain pipes in threads so a chatty child cannot block on a full pipe
    let out = child.stdout.take();
    let err = child.stderr.take();
    let ho = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(mut o) = out {
            let _ = std::io::Read::read_to_end(&mut o, &mut v);
        }
        v
    });
    let he = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(mut e) = err {
            let _ = std::io::Read::read_to_end(&mut e, &mut v);
        }
        v
    });
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let st = child.wait().expect("wait");
            panic!("command did not finish within {limit:?} (killed; status {st})");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: ho.join().unwrap_or_default(),
        stderr: he.join().unwrap_or_default(),
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn assert_ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed ({:?}):\nstdout: {}\nstderr: {}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
}

pub fn assert_code(o: &Output, code: i32, what: &str) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "{what}: wanted exit {code}\nstdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
}

pub fn json(o: &Output) -> serde_json::Value {
    let s = stdout(o);
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("not JSON: {s:?}: {e}"))
}

/// Two nodes that pinned each other; `b` listens. Returns (a, b, b's listener).
pub fn pair_with_listener(a: &str, b: &str) -> (Node, Node, Listener) {
    let na = Node::new(a);
    let nb = Node::new(b);
    nb.pin(&na, None);
    let l = nb.listen("127.0.0.1:0");
    na.pin(&nb, Some(&l.addr));
    (na, nb, l)
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Relays: `liaison relay serve` as a child process, and nodes that meet at it.

/// A `liaison relay serve` child process with its own temporary home and store. Its stdout
/// and stderr go to files (one pair per start) so tests can search them afterwards.
pub struct RelayProc {
    _tmp: tempfile::TempDir,
    /// The relay's home (its hop key).
    pub home: PathBuf,
    /// The `--store` directory (its queue).
    pub store: PathBuf,
    /// Where stdout/stderr files of every start are written.
    pub logs: PathBuf,
    /// `127.0.0.1:PORT` it is bound to (kept across restarts).
    pub addr: String,
    /// Its `liaison-relay:` card.
    pub card: String,
    /// Its metrics endpoint (`--metrics 127.0.0.1:0`; changes across restarts).
    pub metrics: String,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    starts: usize,
}

impl RelayProc {
    /// Starts a relay on a free loopback port with `extra` arguments for `relay serve`.
    pub fn start(extra: &[&str]) -> RelayProc {
        Self::start_with_env(extra, &[])
    }

    /// Same, with extra environment variables (e.g. `RUST_LOG`).
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> RelayProc {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = tmp.path().join("relay-home");
        let store = tmp.path().join("relay-queue");
        let logs = tmp.path().join("logs");
        std::fs::create_dir(&logs).expect("logs dir");
        let mut r = RelayProc {
            _tmp: tmp,
            home,
            store,
            logs,
            addr: String::new(),
            card: String::new(),
            metrics: String::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
            starts: 0,
        };
        r.spawn("127.0.0.1:0");
        r
    }

    fn spawn(&mut self, bind: &str) {
        self.starts += 1;
        let out = std::fs::File::create(self.logs.join(format!("stdout.{}", self.starts)))
            .expect("stdout file");
        let err = std::fs::File::create(self.logs.join(format!("stderr.{}", self.starts)))
            .expect("stderr file");
        let mut c = Command::new(BIN);
        c.arg("--home")
            .arg(&self.home)
            .args(["relay", "serve", "--bind", bind, "--store"])
            .arg(&self.store)
            .args(["--metrics", "127.0.0.1:0"])
            .args(&self.extra)
            .env_remove("LIAISON_HOME")
            .env_remove("RUST_LOG")
            .env_remove("LIAISON_PASSPHRASE")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        for (k, v) in &self.env {
            c.env(k, v);
        }
        self.child = Some(c.spawn().expect("spawn relay"));
        // the card on stdout, `listening on ADDR` on stderr
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = std::fs::read_to_string(self.logs.join(format!("stdout.{}", self.starts)))
                .unwrap_or_default();
            let err = std::fs::read_to_string(self.logs.join(format!("stderr.{}", self.starts)))
                .unwrap_or_default();
            let card = out.lines().find(|l| l.starts_with("liaison-relay:"));
            let addr = err
                .lines()
                .find_map(|l| l.strip_prefix("listening on "))
                .map(str::trim);
            let metrics = err
                .lines()
                .find_map(|l| l.strip_prefix("metrics on http://"))
                .and_then(|l| l.strip_suffix("/metrics"));
            if let (Some(card), Some(addr), Some(metrics)) = (card, addr, metrics) {
                if !self.card.is_empty() {
                    assert_eq!(card, self.card, "the relay's card changed across a restart");
                }
                self.card = card.to_string();
                self.addr = addr.to_string();
                self.metrics = metrics.to_string();
                return;
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("relay exited at start ({st}):\nstdout: {out}\nstderr: {err}");
            }
            assert!(
                Instant::now() < deadline,
                "relay did not start within 30 s:\nstdout: {out}\nstderr: {err}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The relay's pid (while it runs).
    pub fn pid(&self) -> nix::unistd::Pid {
        let c = self.child.as_ref().expect("relay running");
        nix::unistd::Pid::from_raw(c.id() as i32)
    }

    /// True while the process has not exited.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Sends `sig` to the relay.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), sig).expect("signal the relay");
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, home and store (after [`RelayProc::kill9`] or
    /// [`RelayProc::terminate`]).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running relay");
        let addr = self.addr.clone();
        self.spawn(&addr);
    }

    /// SIGTERM and wait for the drained exit (bounded); the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the relay wrote to stderr, over all its starts.
    pub fn stderr_text(&self) -> String {
        (1..=self.starts)
            .map(|i| {
                std::fs::read_to_string(self.logs.join(format!("stderr.{i}"))).unwrap_or_default()
            })
            .collect()
    }

    /// Waits (bounded) until stderr contains `needle`.
    pub fn wait_stderr(&self, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.stderr_text().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The value of an unlabelled metric from the relay's Prometheus endpoint.
    pub fn metric(&self, name: &str) -> Option<u64> {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(&self.metrics).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
    }

    /// Waits (bounded) until the relay holds at least `n` inbox subscriptions: a node's
    /// `listen --relay` prints `listening` before its relay connection is up.
    pub fn wait_subscriptions(&self, n: u64) {
        self.wait_subscriptions_for(|have| have >= n, &format!("at least {n}"));
    }

    /// Waits until the relay holds exactly `n` subscriptions: those of processes that just
    /// exited are gone (their connections close asynchronously at the relay).
    pub fn wait_subscriptions_exactly(&self, n: u64) {
        self.wait_subscriptions_for(|have| have == n, &format!("exactly {n}"));
    }

    fn wait_subscriptions_for(&self, done: impl Fn(u64) -> bool, wanted: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let have = self.metric("liaison_relay_subscriptions").unwrap_or(0);
            if done(have) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the relay holds {have} subscriptions, wanted {wanted}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Envelopes held in the queue now, and their blob bytes (read-only look at SQLite).
    pub fn queued(&self) -> (u64, u64) {
        let path = self.store.join("queue.sqlite3");
        let c = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open the relay's queue");
        c.query_row(
            "SELECT COUNT(*), COALESCE(SUM(len), 0) FROM envelopes",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )
        .expect("count envelopes")
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

impl Node {
    /// `relay add NAME CARD --json`; returns this node's hop-key hash for that relay.
    pub fn relay_add(&self, name: &str, card: &str) -> String {
        let out = self.run(&["relay", "add", name, card, "--json"]);
        assert_ok(&out, "relay add");
        let v = json(&out);
        assert_eq!(v["relay"], name);
        v["hop_key_hash"]
            .as_str()
            .expect("hop_key_hash")
            .to_string()
    }

    /// Pins `other` under its own name, to be met at relay `relay`.
    pub fn pin_via_relay(&self, other: &Node, relay: &str) {
        let card = other.card();
        let out = self.run(&[
            "contact",
            "add",
            other.name.as_str(),
            &card,
            "--relay",
            relay,
        ]);
        assert_ok(&out, "contact add --relay");
    }

    /// Starts `listen --relay R… --json` (no direct address).
    pub fn listen_relays(&self, relays: &[&str]) -> Listener {
        let mut args = vec!["listen", "--json"];
        for r in relays {
            args.extend(["--relay", r]);
        }
        self.start_listener(&args).0
    }

    /// `outbox --json` as (seq, status, text).
    pub fn outbox_rows(&self) -> Vec<(u64, String, String)> {
        let out = self.run(&["outbox", "--json"]);
        assert_ok(&out, "outbox");
        json(&out)
            .as_array()
            .expect("array")
            .iter()
            .map(|m| {
                (
                    m["seq"].as_u64().expect("seq"),
                    m["status"].as_str().expect("status").to_string(),
                    m["text"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// `inbox --json` as (seq, text).
    pub fn inbox_rows(&self) -> Vec<(u64, String)> {
        let out = self.run(&["inbox", "--json"]);
        assert_ok(&out, "inbox");
        json(&out)
            .as_array()
            .expect("array")
            .iter()
            .map(|m| {
                (
                    m["seq"].as_u64().expect("seq"),
                    m["text"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }
}

/// Two nodes (`a`, `b`) that pinned each other to meet at a fresh relay pinned as `r1` on both.
pub fn pair_at_relay(relay: &RelayProc, a: &str, b: &str) -> (Node, Node) {
    let na = Node::new(a);
    let nb = Node::new(b);
    na.relay_add("r1", &relay.card);
    nb.relay_add("r1", &relay.card);
    na.pin_via_relay(&nb, "r1");
    nb.pin_via_relay(&na, "r1");
    (na, nb)
}

/// Checks that `shown` (a listener's `message` events from one contact) are exactly
/// `sent[..]` in order, each once: seq `i + 1` carries `sent[i]`.
pub fn assert_exact_in_order(shown: &[serde_json::Value], sent: &[String], from: &str) {
    let texts: Vec<&str> = shown
        .iter()
        .map(|m| m["text"].as_str().unwrap_or("<no text>"))
        .collect();
    for (i, m) in shown.iter().enumerate() {
        assert_eq!(m["from"], from, "message {i} is from {}", m["from"]);
        assert_eq!(
            m["seq"].as_u64(),
            Some(i as u64 + 1),
            "message {i} out of order or repeated: shown {texts:?}"
        );
        assert_eq!(
            m["text"].as_str(),
            sent.get(i).map(String::as_str),
            "message {i} altered: shown {texts:?}"
        );
    }
    assert_eq!(
        shown.len(),
        sent.len(),
        "shown {} of {} messages: {texts:?}",
        shown.len(),
        sent.len()
    );
}

/// Every file under `dirs` that contains `needle` (bytes), for "no plaintext here" checks.
pub fn files_containing(dirs: &[&Path], needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    for d in dirs {
        for f in files_under(d) {
            let bytes = std::fs::read(&f).unwrap_or_default();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                hits.push(f);
            }
        }
    }
    hits
}
