//! One-core, in-memory Noise cost: `N` = MiB of plaintext per second through encrypt **then**
//! decrypt of maximal (65,519-byte) transport messages with snow's `StatelessTransportState`,
//! on a transport pair made by a real `Noise_KKpsk2_25519_ChaChaPoly_SHA256` handshake.
//!
//! Measured with snow's default (pure-Rust, RustCrypto `chacha20poly1305`) resolver, which
//! liaison-proto uses, and with snow's `RingResolver` (ring's assembly ChaCha20-Poly1305; DH
//! falls back to the default resolver), to decide on `ring-resolver` with numbers. A third
//! figure runs the same bytes through liaison-proto's own API (`Line::seal` into a DATA blob,
//! `Line::handle_blob` with the replay window), i.e. the session layer's overhead on top of
//! snow.

use crate::setup::{line_pair, wall};
use crate::stats::{median, mib_s};
use anyhow::{Result, bail};
use liaison_proto::keys::random_bytes;
use liaison_proto::line::{Line, LineEvent, Received};
use liaison_wire::consts::{MAX_PLAINTEXT, NOISE_MAX_MSG, NOISE_PARAMS};
use snow::resolvers::{DefaultResolver, FallbackResolver, RingResolver};
use snow::{Builder, StatelessTransportState};
use std::time::{Duration, Instant};

/// Which crypto provider snow uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolver {
    /// snow's default: pure Rust (what liaison-proto uses).
    Default,
    /// snow's `RingResolver` for cipher and hash, default for DH.
    Ring,
}

fn builder(resolver: Resolver) -> Result<Builder<'static>> {
    let params = NOISE_PARAMS.parse()?;
    Ok(match resolver {
        Resolver::Default => Builder::with_resolver(params, Box::new(DefaultResolver)),
        Resolver::Ring => Builder::with_resolver(
            params,
            Box::new(FallbackResolver::new(
                Box::new(RingResolver),
                Box::new(DefaultResolver),
            )),
        ),
    })
}

/// A transport pair from a real KKpsk2 handshake (random statics and psk).
fn transport_pair(
    resolver: Resolver,
) -> Result<(StatelessTransportState, StatelessTransportState)> {
    let a = builder(resolver)?.generate_keypair()?;
    let b = builder(resolver)?.generate_keypair()?;
    let psk = random_bytes::<32>()?;
    let mut init = builder(resolver)?
        .local_private_key(&a.private)?
        .remote_public_key(&b.public)?
        .prologue(b"liaison-bench")?
        .psk(2, &psk)?
        .build_initiator()?;
    let mut resp = builder(resolver)?
        .local_private_key(&b.private)?
        .remote_public_key(&a.public)?
        .prologue(b"liaison-bench")?
        .psk(2, &psk)?
        .build_responder()?;
    let mut m = vec![0u8; NOISE_MAX_MSG];
    let mut p = vec![0u8; NOISE_MAX_MSG];
    let n = init.write_message(&[], &mut m)?;
    resp.read_message(m.get(..n).unwrap_or_default(), &mut p)?;
    let n = resp.write_message(&[], &mut m)?;
    init.read_message(m.get(..n).unwrap_or_default(), &mut p)?;
    Ok((
        init.into_stateless_transport_mode()?,
        resp.into_stateless_transport_mode()?,
    ))
}

/// Encrypt-then-decrypt MiB/s over about `dur`, after a short warm-up.
fn snow_run(resolver: Resolver, dur: Duration) -> Result<f64> {
    let (tx, rx) = transport_pair(resolver)?;
    let pt: Vec<u8> = (0..MAX_PLAINTEXT).map(|i| (i % 251) as u8).collect();
    let mut ct = vec![0u8; NOISE_MAX_MSG];
    let mut out = vec![0u8; NOISE_MAX_MSG];
    let mut nonce = 0u64;
    let mut one = |nonce: u64| -> Result<()> {
        let n = tx.write_message(nonce, &pt, &mut ct)?;
        let m = rx.read_message(nonce, ct.get(..n).unwrap_or_default(), &mut out)?;
        if m != pt.len() {
            bail!("decrypted {m} bytes of {}", pt.len());
        }
        Ok(())
    };
    let warm = Instant::now();
    while warm.elapsed() < dur / 5 {
        one(nonce)?;
        nonce += 1;
    }
    let t0 = Instant::now();
    let mut msgs = 0u64;
    while t0.elapsed() < dur {
        for _ in 0..16 {
            one(nonce)?;
            nonce += 1;
            msgs += 1;
        }
    }
    Ok(mib_s(msgs * MAX_PLAINTEXT as u64, t0.elapsed()))
}

/// Median of `runs` runs of [`snow_run`]; also returns every run.
pub fn snow_mib_s(resolver: Resolver, dur: Duration, runs: usize) -> Result<(f64, Vec<f64>)> {
    let mut all = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        all.push(snow_run(resolver, dur)?);
    }
    Ok((median(&all), all))
}

/// Two `Line`s with a session, handshaken in memory (no hop).
fn line_sessions() -> Result<(Line, Line)> {
    let (mut a, mut b) = line_pair()?;
    let mut pt = Vec::new();
    a.connect(Instant::now(), wall());
    for _ in 0..4 {
        let mut moved = false;
        while let Some(ev) = a.poll_event() {
            if let LineEvent::Transmit(blob) = ev {
                b.handle_blob(Instant::now(), &blob, &mut pt);
                moved = true;
            }
        }
        while let Some(ev) = b.poll_event() {
            if let LineEvent::Transmit(blob) = ev {
                a.handle_blob(Instant::now(), &blob, &mut pt);
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
    let now = Instant::now();
    if !a.is_ready(now) || !b.is_ready(now) {
        bail!("in-memory handshake did not complete");
    }
    Ok((a, b))
}

/// The same measurement through liaison-proto's `Line::seal` / `Line::handle_blob`.
pub fn session_api_mib_s(dur: Duration) -> Result<f64> {
    let (mut a, mut b) = line_sessions()?;
    let pt: Vec<u8> = (0..MAX_PLAINTEXT).map(|i| (i % 251) as u8).collect();
    let mut blob = Vec::with_capacity(NOISE_MAX_MSG + 64);
    let mut out = Vec::with_capacity(NOISE_MAX_MSG);
    let w = wall();
    let mut one = || -> Result<()> {
        blob.clear();
        if a.seal(Instant::now(), w, &pt, false, &mut blob).is_err() {
            bail!("seal failed");
        }
        if b.handle_blob(Instant::now(), &blob, &mut out) != Received::Plaintext {
            bail!("open failed");
        }
        Ok(())
    };
    let warm = Instant::now();
    while warm.elapsed() < dur / 5 {
        one()?;
    }
    let t0 = Instant::now();
    let mut msgs = 0u64;
    while t0.elapsed() < dur {
        for _ in 0..16 {
            one()?;
            msgs += 1;
        }
    }
    Ok(mib_s(msgs * MAX_PLAINTEXT as u64, t0.elapsed()))
}

/// The crypto-cost bound on line/raw: `2N / (2N + R)`.
///
/// Both ends share the two cores that raw quinn already saturates: a MiB costs `2/R`
/// core-seconds of QUIC (two cores busy for `1/R` s) plus `1/N` core-seconds of Noise
/// (encrypt at one end, decrypt at the other), so two cores move `2 / (2/R + 1/N)` MiB/s,
/// which is `R · 2N / (2N + R)`.
pub fn bound(n: f64, r: f64) -> f64 {
    if n <= 0.0 || r <= 0.0 {
        return 0.0;
    }
    2.0 * n / (2.0 * n + r)
}

/// The crypto-cost bound on relay-path/raw: `2N / (4N + R)`.
///
/// Through a relay a MiB crosses two QUIC hops on the same two cores (`4/R` core-seconds:
/// each hop costs what a raw quinn MiB costs) plus the Noise encrypt and decrypt (`1/N`), so
/// two cores move `2 / (4/R + 1/N)` MiB/s, which is `R · 2N / (4N + R)`.
pub fn relay_bound(n: f64, r: f64) -> f64 {
    if n <= 0.0 || r <= 0.0 {
        return 0.0;
    }
    2.0 * n / (4.0 * n + r)
}
