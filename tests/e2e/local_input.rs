//! What a user's own machine can throw at the binary: a closed output pipe, devices and
//! endless streams named as files, and the modes of the files a home holds.

use crate::harness::*;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Waits for `child` at most `limit`, killing it past that.
fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Runs `args` with a closed stdout (the reader end of its pipe is gone before it starts,
/// as in `liaison --json id | (exec 0<&-; true)`): (status, stderr).
fn run_with_closed_stdout(node: &Node, args: &[&str]) -> (Option<i32>, String) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let mut c = node.cmd(args);
    c.stdin(Stdio::null()).stdout(writer).stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn liaison");
    let mut err = child.stderr.take().expect("stderr");
    let t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut std::io::Read::take(&mut err, 1 << 20), &mut s);
        s
    });
    let st = wait_bounded(&mut child, Duration::from_secs(30));
    let text = t.join().unwrap_or_default();
    (st.and_then(|s| s.code()), text)
}

/// Issue 9, defect 7: a closed pipe made `println!` panic (exit 101 with a backtrace). It
/// ends the command quietly with 141, what a shell reports for `SIGPIPE`.
#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    let alice = Node::new("alice");
    let bob = Node::new("bob");
    alice.pin(&bob, None);
    for args in [
        &["--json", "id"][..],
        &["id"][..],
        &["contact", "list", "--json"][..],
        &["history", "bob"][..],
    ] {
        let (code, err) = run_with_closed_stdout(&alice, args);
        assert_eq!(code, Some(141), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?} quietly: {err}");
    }
    // the home is intact
    assert_ok(&alice.run(&["contact", "list"]), "contact list afterwards");
}

/// Runs `args` under a 2 GiB address-space limit and a time bound: (code, stderr). Without
/// a bound on the read, the old code grew until the limit stopped it.
fn run_bounded(node: &Node, args: &[&str]) -> (Option<i32>, String) {
    let mut c = node.cmd_memory_bounded(args);
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn sh");
    let mut err = child.stderr.take().expect("stderr");
    let t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut std::io::Read::take(&mut err, 1 << 20), &mut s);
        s
    });
    let st = wait_bounded(&mut child, Duration::from_secs(60));
    let text = t.join().unwrap_or_default();
    (st.and_then(|s| s.code()), text)
}

/// Issue 9, defect 6: `@/dev/zero` and `--passphrase-file /dev/zero` were read without end
/// (one run reached 24 GB before the kernel killed it). Every file a user names is read up
/// to the limit that applies and refused past it, with one clear line; nothing is stored.
#[test]
fn devices_named_as_files_are_refused_not_read_without_end() {
    let alice = Node::new("alice");
    let bob = Node::new("bob");
    alice.pin(&bob, None);
    let before = alice.run(&["contact", "list", "--json"]);
    let cases: [(&[&str], &str); 4] = [
        (&["contact", "add", "zed", "@/dev/zero"], "card"),
        (&["relay", "add", "r9", "@/dev/zero"], "card"),
        (
            &["--passphrase-file", "/dev/zero", "inbox"],
            "passphrase file",
        ),
        (
            &["send", "bob", "--file", "/dev/zero", "--timeout", "2"],
            "file to send",
        ),
    ];
    for (args, what) in cases {
        let t = std::time::Instant::now();
        let (code, err) = run_bounded(&alice, args);
        if what == "card" {
            // the bound for `contact add` / `relay add` (they take about 0.2 s)
            assert!(
                t.elapsed() < Duration::from_secs(3),
                "{args:?}: {:?}",
                t.elapsed()
            );
        }
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(
            err.contains("larger than") && err.contains(what),
            "{args:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
    }
    // a directory is refused too
    let (code, err) = run_bounded(&alice, &["send", "bob", "--file", "/tmp"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("directory"), "{err}");
    // nothing was stored
    assert_eq!(
        json(&alice.run(&["contact", "list", "--json"])),
        json(&before)
    );
    assert_eq!(
        json(&alice.run(&["relay", "list", "--json"])),
        serde_json::json!([])
    );
    assert!(alice.outbox_rows().is_empty());
}

/// Every regular file under `dir` whose mode lets group or others in.
fn loose_files(dir: &std::path::Path) -> Vec<String> {
    let mut loose = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            loose.extend(loose_files(&p));
        } else if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
            loose.push(format!(
                "{:o} {}",
                meta.permissions().mode() & 0o777,
                p.display()
            ));
        }
    }
    loose
}

/// Issue 9, defect 8: `node.db`, `audit.db` and their `-wal`/`-shm` files were created 0644.
/// After a real exchange (messages and audit log written; both live in `node.db` since the
/// home has one database), every file in both homes is 0600.
#[test]
fn every_file_in_a_home_is_private() {
    let (alice, bob, mut l) = pair_with_listener("alice", "bob");
    let out = alice.run(&["send", "bob", "private files", "--json"]);
    assert_ok(&out, "send");
    assert_eq!(json(&out)["status"], "delivered");
    assert_eq!(l.messages(1, Duration::from_secs(30)).len(), 1);
    for node in [&alice, &bob] {
        assert!(
            node.home.join("node.db").exists(),
            "{} has node.db",
            node.name
        );
        assert!(
            !node.home.join("audit.db").exists(),
            "{}: the audit log is in node.db, not a file of its own",
            node.name
        );
        assert_eq!(
            loose_files(&node.home),
            Vec::<String>::new(),
            "{}",
            node.name
        );
    }
    assert_eq!(l.terminate(), Some(0));
}

/// Issue 9, defect 9 (in part): a passphrase file that group or others can read is used, with
/// a one-line warning that says how to fix it.
#[test]
fn a_passphrase_file_others_can_read_is_warned_about() {
    let alice = Node::new("alice");
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("pass");
    std::fs::write(&f, format!("{PASS}\n")).expect("write");
    let path = f.to_str().expect("utf-8 path");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut c = alice.cmd(&["--passphrase-file", path, "inbox"]);
    c.env_remove("LIAISON_PASSPHRASE");
    let out = alice.run_with(c, None);
    assert_ok(&out, "inbox with a 0644 passphrase file");
    assert!(
        stderr(&out).contains("can be read by other users") && stderr(&out).contains("chmod 600"),
        "{}",
        stderr(&out)
    );
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut c = alice.cmd(&["--passphrase-file", path, "inbox"]);
    c.env_remove("LIAISON_PASSPHRASE");
    let out = alice.run_with(c, None);
    assert_ok(&out, "inbox with a 0600 passphrase file");
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
}

/// A free loopback port (bound and released; nothing listens there afterwards).
fn free_port() -> String {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr").to_string()
}

/// Issue 9, defect 2: `listen` refused to start while a one-shot command held the home ("another
/// liaison process … is using the home"), so a script restarting its listener beside its own
/// `send` loop left messages pending. `listen` now waits for the command to finish (saying
/// so), then starts within 15 s, and delivers what the command left pending.
#[test]
fn listen_started_while_a_send_holds_the_home_waits_then_delivers() {
    let alice = Node::new("alice");
    let bob = Node::new("bob");
    let b_bind = free_port();
    alice.pin(&bob, Some(&b_bind));
    bob.pin(&alice, None);
    // bob is away: alice's send holds her home for its whole timeout
    let send = alice.spawn_stdin(&["send", "bob", "held by a send", "--json", "--timeout", "4"]);
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    let log = tempfile::NamedTempFile::new().expect("log");
    let mut la = alice.listen_logged(
        &["listen", "--bind", "127.0.0.1:0", "--json"],
        &[],
        log.path(),
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "listen started after {:?}",
        started.elapsed()
    );
    let said = std::fs::read_to_string(log.path()).unwrap_or_default();
    assert!(
        said.contains("waiting for another liaison process"),
        "{said}"
    );
    let out = send.finish(Duration::from_secs(30));
    assert_code(&out, 4, "the send, bob away");
    assert_eq!(json(&out)["status"], "pending");
    // bob comes up where alice knows him: her listener delivers the held message once
    let mut lb = bob.listen(&b_bind);
    let got = lb.messages(1, Duration::from_secs(45));
    assert_eq!(got.len(), 1, "bob got {got:?}");
    assert_eq!(got[0]["text"], "held by a send");
    assert!(lb.messages(1, Duration::from_secs(2)).is_empty(), "once");
    // a second listen on alice's home is refused at once, not left waiting
    let out = alice.run(&["listen", "--bind", "127.0.0.1:0"]);
    assert_code(&out, 1, "a second listen");
    assert!(stderr(&out).contains("already runs"), "{}", stderr(&out));
    let _ = la.messages(0, Duration::from_millis(10));
    assert_eq!(la.terminate(), Some(0));
    assert_eq!(lb.terminate(), Some(0));
}

/// Issue 9, defect 2: a `send` racing its listener's start (the listener holds the home, its
/// control socket not yet answering) exited 1 with "Connection refused" and the message was
/// not stored. It now waits for the listener's socket and goes through it.
#[test]
fn a_send_racing_the_listeners_start_goes_through_it() {
    let (alice, bob, mut lb) = pair_with_listener("alice", "bob");
    // alice's listener is killed: its socket file stays behind, answering nobody
    let la = alice.listen("127.0.0.1:0");
    la.kill9();
    assert!(alice.home.join("control.sock").exists());
    // a new listener starts while a send runs at the same moment
    let l2 = std::thread::spawn({
        let home = alice.home.clone();
        move || {
            let mut c = std::process::Command::new(BIN);
            c.arg("--home")
                .arg(home)
                .args(["listen", "--bind", "127.0.0.1:0", "--json"])
                .env("LIAISON_PASSPHRASE", PASS)
                .env_remove("LIAISON_HOME")
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            c.spawn().expect("listen")
        }
    });
    std::thread::sleep(Duration::from_millis(30));
    let out = alice.run(&["send", "bob", "racing the listener", "--json"]);
    let mut listener = l2.join().expect("listen thread");
    assert_ok(&out, "the racing send");
    assert_eq!(json(&out)["status"], "delivered");
    let got = lb.messages(1, Duration::from_secs(30));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["text"], "racing the listener");
    let _ = listener.kill();
    let _ = listener.wait();
    assert_eq!(lb.terminate(), Some(0));
    drop(bob);
}

/// Issue 9, defect 3: a listener killed during a `send` through it made the send exit 1 with
/// no output, even when the message was stored (a script that retried then sent it twice).
/// The send now reports the stored message's state and id from the store, and exits 4 for a
/// pending one; the next listener delivers it once.
#[test]
fn a_send_whose_listener_is_killed_reports_the_stored_message() {
    let alice = Node::new("alice");
    let bob = Node::new("bob");
    let b_bind = free_port();
    alice.pin(&bob, Some(&b_bind));
    bob.pin(&alice, None);
    let la = alice.listen("127.0.0.1:0");
    // bob is away: the send waits in alice's listener
    let send = alice.spawn_stdin(&[
        "send",
        "bob",
        "stored, then killed",
        "--json",
        "--timeout",
        "30",
    ]);
    std::thread::sleep(Duration::from_millis(1500));
    la.kill9();
    let out = send.finish(Duration::from_secs(20));
    assert_code(&out, 4, "the send whose listener was killed");
    assert_eq!(json(&out)["status"], "pending", "{}", stderr(&out));
    assert_eq!(json(&out)["id"], "bob:1");
    assert!(
        stderr(&out).contains("stopped during this send") && stderr(&out).contains("bob:1"),
        "{}",
        stderr(&out)
    );
    // the next listener delivers it, once
    let mut lb = bob.listen(&b_bind);
    let la2 = alice.listen("127.0.0.1:0");
    let got = lb.messages(1, Duration::from_secs(45));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["text"], "stored, then killed");
    assert!(lb.messages(1, Duration::from_secs(2)).is_empty(), "once");
    drop(la2);
    assert_eq!(lb.terminate(), Some(0));
}

/// Issue 9, defect 5 (in part): with `node.db` deleted, `listen` silently made an empty store
/// (every contact and receipt forgotten, sequence numbers to be reused). Every command that
/// needs the store refuses with one line saying to restore from a backup, and creates nothing;
/// `id` (which needs no store) still works.
#[test]
fn a_deleted_message_store_is_refused_not_recreated() {
    let alice = Node::new("alice");
    let bob = Node::new("bob");
    alice.pin(&bob, None);
    for f in ["node.db", "node.db-wal", "node.db-shm"] {
        let _ = std::fs::remove_file(alice.home.join(f));
    }
    for args in [
        &["listen", "--bind", "127.0.0.1:0"][..],
        &["send", "bob", "into the void", "--timeout", "2"][..],
        &["contact", "list"][..],
        &["inbox"][..],
        &["status"][..],
    ] {
        let out = alice.run(args);
        assert_code(&out, 1, &format!("{args:?} without a store"));
        assert!(
            stderr(&out).contains("is missing") && stderr(&out).contains("backup"),
            "{args:?}: {}",
            stderr(&out)
        );
        assert_eq!(
            stderr(&out).lines().count(),
            1,
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(
            !alice.home.join("node.db").exists(),
            "{args:?} made a store"
        );
    }
    assert_ok(&alice.run(&["id"]), "id needs no store");
}
