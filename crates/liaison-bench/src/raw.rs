//! Raw quinn: bulk throughput and 256-byte round trips on a hop exactly like the line's (same
//! pinned-TLS configuration, same stream after HELLO/READY), with no Noise and no framing.

use crate::cpu::{Measured, Window};
use crate::setup::{HopPair, Side, close_endpoints};
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use std::time::{Duration, Instant};

/// Bytes per application write in the raw bulk test.
pub const CHUNK: usize = 64 * 1024;
/// Size of one round-trip message.
pub const RTT_LEN: usize = 256;

/// How the raw bulk test moves bytes through quinn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawMode {
    /// `write_all(&[u8; 64 KiB])` (quinn copies) and `read(&mut [u8; 64 KiB])` (copies out):
    /// what an application does; the baseline `R`.
    Copying,
    /// `write_chunk(Bytes)` of one shared buffer (no copy into quinn), `read` as above: the
    /// send side the line uses.
    WriteChunk,
    /// [`RawMode::Copying`], both tasks yielding to the scheduler after every 64 KiB (as the
    /// line's engineered path does after every frame).
    CopyingYield,
}

/// A time bound for moving `bytes` that no sane run gets near (≥ 10 MiB/s plus set-up).
pub fn bulk_timeout(bytes: u64) -> Duration {
    Duration::from_secs(30 + bytes / (10 * 1024 * 1024))
}

/// One bulk run on a fresh hop: `warmup` bytes untimed, then `bytes` timed at the receiver
/// (from the moment the warm-up is in until the last byte is).
pub async fn bulk(warmup: u64, bytes: u64, mode: RawMode) -> Result<Measured> {
    let pair = HopPair::new().await?;
    let eps = pair.endpoints();
    let HopPair { client, server, .. } = pair;
    let total = warmup + bytes;
    let sender = tokio::spawn(async move {
        let mut w = client.writer;
        let chunk = vec![0x5au8; CHUNK];
        let shared = Bytes::from(chunk.clone());
        let mut sent: u64 = 0;
        while sent < total {
            let n = (total - sent).min(CHUNK as u64) as usize;
            match mode {
                RawMode::Copying | RawMode::CopyingYield => {
                    w.stream()
                        .write_all(chunk.get(..n).unwrap_or(&chunk))
                        .await?
                }
                RawMode::WriteChunk => w.stream().write_chunk(shared.slice(..n)).await?,
            }
            if mode == RawMode::CopyingYield {
                tokio::task::yield_now().await;
            }
            sent += n as u64;
        }
        // keep the connection and stream alive until the receiver has everything
        anyhow::Ok((w, client.reader, client.conn))
    });
    let receiver = tokio::spawn(async move {
        let mut r = server.reader;
        let mut buf = vec![0u8; CHUNK];
        let mut got: u64 = 0;
        let mut start: Option<(Window, u64)> = None;
        while got < total {
            match r.stream().read(&mut buf).await? {
                Some(n) => got += n as u64,
                None => bail!("stream ended after {got} of {total} bytes"),
            }
            if start.is_none() && got >= warmup {
                start = Some((Window::start(), got));
            }
            if mode == RawMode::CopyingYield {
                tokio::task::yield_now().await;
            }
        }
        let (w0, at) = start.context("nothing received")?;
        anyhow::Ok((w0.finish(got - at), r, server.writer, server.conn))
    });
    let limit = bulk_timeout(total);
    let (mib, ..) = tokio::time::timeout(limit, receiver)
        .await
        .context("raw bulk receiver timed out")???;
    let kept = tokio::time::timeout(limit, sender)
        .await
        .context("raw bulk sender timed out")???;
    kept.2.close(0u32.into(), b"done");
    drop(kept);
    close_endpoints(eps).await;
    Ok(mib)
}

/// Raw round trips of [`RTT_LEN`] bytes on one stream of a hop: the client writes 256 bytes,
/// the server echoes them, the client reads 256.
#[derive(Debug)]
pub struct RawPinger {
    client: Side,
    echo: tokio::task::JoinHandle<Result<Side>>,
    eps: (quinn::Endpoint, quinn::Endpoint),
}

impl RawPinger {
    /// A fresh hop with an echoing server.
    pub async fn new() -> Result<RawPinger> {
        let pair = HopPair::new().await?;
        let eps = pair.endpoints();
        let HopPair { client, server, .. } = pair;
        let echo = tokio::spawn(async move {
            let mut side = server;
            let mut buf = [0u8; RTT_LEN];
            // ends when the client finishes its stream
            while side.reader.stream().read_exact(&mut buf).await.is_ok() {
                side.writer.stream().write_all(&buf).await?;
            }
            Ok(side)
        });
        Ok(RawPinger { client, echo, eps })
    }

    /// `n` round trips; samples in µs.
    pub async fn block(&mut self, n: usize) -> Result<Vec<f64>> {
        let bound = Duration::from_secs(10 + n as u64 / 100);
        let c = &mut self.client;
        tokio::time::timeout(bound, async {
            let msg = [0x42u8; RTT_LEN];
            let mut buf = [0u8; RTT_LEN];
            let mut samples = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                c.writer.stream().write_all(&msg).await?;
                c.reader.stream().read_exact(&mut buf).await?;
                samples.push(t.elapsed().as_secs_f64() * 1e6);
            }
            anyhow::Ok(samples)
        })
        .await
        .context("raw round trips timed out")?
    }

    /// Ends the stream and closes everything (bounded).
    pub async fn close(mut self) {
        self.client.writer.finish();
        if let Ok(Ok(Ok(side))) = tokio::time::timeout(Duration::from_secs(5), self.echo).await {
            side.conn.close(0u32.into(), b"done");
        }
        self.client.conn.close(0u32.into(), b"done");
        close_endpoints(self.eps).await;
    }
}
