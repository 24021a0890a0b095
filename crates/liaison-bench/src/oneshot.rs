//! Cold one-shot commands through the real `liaison` binary, as a user runs them: two
//! temporary homes pinned to each other, bob's `listen` on 127.0.0.1, and alice's
//! `liaison send bob TEXT` timed from spawn to exit (unlocking the keys, opening the stores,
//! dialing, the handshake, delivery with bob's receipt, the goodbye and the close). The
//! baseline in the same run is `liaison inbox` on the same home: the unlock alone (argon2id
//! and the stores, no network). The aim: a send's median within 0.4 s of the unlock's.
//!
//! The binary is `$LIAISON_BIN`, else `liaison` beside this bench's executable (build it with
//! `cargo build --release`, which `cargo run --release -p liaison-bench` does not do).

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

const PASS: &str = "liaison-bench one-shot passphrase";

fn binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("LIAISON_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("locating the bench executable")?;
    let bin = exe.with_file_name("liaison");
    if !bin.is_file() {
        bail!(
            "{} not found: build it first (`cargo build --release`) or set LIAISON_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

fn cmd(bin: &Path, home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin);
    c.arg("--home")
        .arg(home)
        .args(args)
        .env("LIAISON_PASSPHRASE", PASS)
        .env_remove("LIAISON_HOME")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    c
}

/// Runs to completion and returns stdout; fails on a non-zero exit.
fn run(bin: &Path, home: &Path, args: &[&str]) -> Result<String> {
    let out = cmd(bin, home, args)
        .output()
        .with_context(|| format!("running liaison {args:?}"))?;
    if !out.status.success() {
        bail!(
            "liaison {args:?} exited {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn card(bin: &Path, home: &Path) -> Result<String> {
    let v: Value = serde_json::from_str(&run(bin, home, &["id", "--json"])?)?;
    v.get("card")
        .and_then(Value::as_str)
        .map(str::to_string)
        .context("no card in `id --json`")
}

/// Kills the listener when dropped.
struct Listener(Child);

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The section's figures (`rounds` timed runs of each command, after one warm-up each).
pub fn run_section(rounds: usize) -> Result<Value> {
    let bin = binary()?;
    let dir = tempfile::tempdir()?;
    let (a, b) = (dir.path().join("alice"), dir.path().join("bob"));
    run(&bin, &a, &["init", "--name", "alice"])?;
    run(&bin, &b, &["init", "--name", "bob"])?;
    let (ca, cb) = (card(&bin, &a)?, card(&bin, &b)?);
    run(&bin, &b, &["contact", "add", "alice", &ca])?;
    let mut child = cmd(&bin, &b, &["listen", "--bind", "127.0.0.1:0", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting bob's listen")?;
    let stdout = child.stdout.take().context("listen stdout")?;
    let listener = Listener(child);
    let mut lines = BufReader::new(stdout).lines();
    let first: Value = serde_json::from_str(&lines.next().context("listen printed nothing")??)?;
    let addr = first
        .get("addr")
        .and_then(Value::as_str)
        .context("listen printed no address")?
        .to_string();
    // bob's output is drained so that his listen never blocks on a full pipe
    std::thread::spawn(move || for _ in lines.by_ref() {});
    run(&bin, &a, &["contact", "add", "bob", &cb, "--addr", &addr])?;

    let time = |args: &[&str]| -> Result<f64> {
        let t = Instant::now();
        run(&bin, &a, args)?;
        Ok(t.elapsed().as_secs_f64())
    };
    let mut unlock = Vec::new();
    let mut send = Vec::new();
    time(&["inbox"])?;
    time(&["send", "bob", "warm-up", "--timeout", "10"])?;
    for i in 0..rounds {
        unlock.push(time(&["inbox"])?);
        send.push(time(&[
            "send",
            "bob",
            &format!("one-shot {i}"),
            "--timeout",
            "10",
        ])?);
    }
    drop(listener);
    let ms = |v: &[f64]| v.iter().map(|s| (s * 1000.0).round()).collect::<Vec<_>>();
    let (u, s) = (median(&mut unlock.clone()), median(&mut send.clone()));
    Ok(json!({
        "binary": bin.display().to_string(),
        "rounds": rounds,
        "unlock_inbox_ms": ms(&unlock),
        "send_ms": ms(&send),
        "unlock_median_ms": (u * 1000.0).round(),
        "send_median_ms": (s * 1000.0).round(),
        "send_over_unlock_ms": ((s - u) * 1000.0).round(),
        "aim_send_over_unlock_ms_at_most": 400,
    }))
}
