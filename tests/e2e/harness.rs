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
        let mut c = self.cmd(&["listen", "--bind", bind, "--json"]);
        c.stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null());
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
        l.addr = first["addr"].as_str().expect("addr").to_string();
        l
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
