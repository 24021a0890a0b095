//! The direct line's transport: Noise sessions (real handshake over the hop) sealing inner
//! frames into hop BLOB frames, on the same hop set-up as raw quinn.
//!
//! Every bulk plaintext is what the node sends for a large message: one `MSG` frame carrying a
//! full fragment (`MAX_FRAGMENT` = 65,500 bytes) built with `FrameWriter`, i.e. a maximal
//! 65,519-byte plaintext; it is sealed with `Line::seal` into a buffer that already holds the
//! hop BLOB header, and opened with `Line::handle_blob` after `HopReader::next`. Throughput
//! counts plaintext bytes (65,519 per frame). Two data paths are measured:
//!
//! * [`Path::Direct`], this bench's engineered path ([`Tuning::BEST`]): the sealing task hands
//!   each sealed frame to quinn as an owned `Bytes` (`SendStream::write_chunk`: no copy into
//!   quinn's send buffer) and then **yields to the scheduler**; the receiving task opens each
//!   frame straight from `HopReader`'s reused buffer (no copy, no extra task) and yields too.
//!   The yields matter more than any copy: quinn's stream calls do not consume tokio's
//!   cooperative budget, so a task that seals and writes without ever blocking keeps its
//!   worker, while the connection driver it just woke waits in that worker's LIFO slot (which
//!   the other worker cannot steal). Without them 0.3 of the two cores sits idle and the
//!   line loses about 14 % (measured: the `noyield` variant).
//! * [`Path::Node`], what `liaison-node` does today minus SQLite: a line task builds and seals
//!   frames into `Vec`s sent over a bounded channel (`reserve()` then `send`, 64 deep) to a
//!   hop writer task that `write_all`s them (quinn copies); a hop reader task copies each BLOB
//!   out of `HopReader` (`to_vec`) into a channel (1,024 deep) to the peer's line task, which
//!   opens it.
//!
//! Other variants of the engineered path (a separate writer or reader task, owned reads, no
//! yields) can be run with `--only bulk:NAME` (see [`VARIANTS`]) to reproduce the comparison
//! in `docs/performance.md`.

use crate::cpu::{Measured, Window};
use crate::raw::{RTT_LEN, bulk_timeout};
use crate::setup::{HopPair, Side, close_endpoints, handshake_over, line_pair, wall};
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use liaison_hop::HopReader;
use liaison_proto::line::{Line, Received};
use liaison_wire::consts::{
    DATA_HEADER_LEN, HOP_HEADER_LEN, MAX_FRAGMENT, MAX_PLAINTEXT, NOISE_TAG_LEN,
};
use liaison_wire::frame::{Frame, FrameWriter, Frames};
use liaison_wire::hop::{BlobFrame, HopFrame, Route};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Fragments per simulated message: the bulk stream is a sequence of 16 MiB messages.
pub(crate) const FRAGS_PER_MSG: u32 = 256;
/// Largest hop frame the sender produces.
const FRAME_CAP: usize = HOP_HEADER_LEN + DATA_HEADER_LEN + MAX_PLAINTEXT + NOISE_TAG_LEN;

/// Shape of the engineered data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// The sealing task yields after writing each frame.
    pub tx_yield: bool,
    /// Sealed frames go through a channel this deep to a separate writer task (0: the sealing
    /// task writes them itself).
    pub tx_split: usize,
    /// The opening task yields after each frame.
    pub rx_yield: bool,
    /// Frames go from a separate reader task through a channel this deep to the opening task
    /// (0: one task reads and opens).
    pub rx_split: usize,
    /// With `rx_split`, the reader reads each frame into its own buffer instead of copying it
    /// out of `HopReader` (`to_vec`).
    pub rx_owned: bool,
}

impl Tuning {
    /// The engineered path: one task per side, yielding after every frame.
    pub const BEST: Tuning = Tuning {
        tx_yield: true,
        tx_split: 0,
        rx_yield: true,
        rx_split: 0,
        rx_owned: false,
    };
}

/// Named variants for `--only bulk:NAME` (the comparison in `docs/performance.md`).
pub const VARIANTS: &[(&str, Tuning)] = &[
    (
        "noyield",
        Tuning {
            tx_yield: false,
            tx_split: 0,
            rx_yield: false,
            rx_split: 0,
            rx_owned: false,
        },
    ),
    (
        "txyield",
        Tuning {
            tx_yield: true,
            tx_split: 0,
            rx_yield: false,
            rx_split: 0,
            rx_owned: false,
        },
    ),
    (
        "rxsplit",
        Tuning {
            tx_yield: true,
            tx_split: 0,
            rx_yield: false,
            rx_split: 64,
            rx_owned: true,
        },
    ),
    (
        "txsplit",
        Tuning {
            tx_yield: false,
            tx_split: 64,
            rx_yield: false,
            rx_split: 0,
            rx_owned: false,
        },
    ),
    (
        "txsplityield",
        Tuning {
            tx_yield: true,
            tx_split: 64,
            rx_yield: true,
            rx_split: 0,
            rx_owned: false,
        },
    ),
];

/// Which data path moves the frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// The engineered path with [`Tuning::BEST`].
    Direct,
    /// The engineered path with other tuning.
    Tuned(Tuning),
    /// The node's structure: line task → channel → hop writer; hop reader → channel → line
    /// task. [`NodeOpts::TODAY`] is what `liaison-node` does now.
    Node(NodeOpts),
}

/// Options of [`Path::Node`]: the changes recommended for `liaison-node`, one at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeOpts {
    /// The hop writer hands frames to quinn with `write_chunk(Bytes)` (today: `write_all`,
    /// which copies each frame into a new allocation inside quinn).
    pub write_chunk: bool,
    /// The hop reader reads each frame into its own buffer (today: `HopReader::next` then
    /// `to_vec`, a second copy).
    pub owned_reads: bool,
}

impl NodeOpts {
    /// `liaison-node` as it is.
    pub const TODAY: NodeOpts = NodeOpts {
        write_chunk: false,
        owned_reads: false,
    };
    /// With the recommended writer change.
    pub const WRITE_CHUNK: NodeOpts = NodeOpts {
        write_chunk: true,
        owned_reads: false,
    };
    /// With both changes.
    pub const BOTH: NodeOpts = NodeOpts {
        write_chunk: true,
        owned_reads: true,
    };
}

/// Reads one hop frame into a new buffer of its exact size (length checked first, as
/// `HopReader` does); `None` at a clean end. The buffer starts with the hop type byte.
async fn read_owned_blob(r: &mut HopReader) -> Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.stream().read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let n = liaison_wire::hop::check_len(u32::from_le_bytes(len))?;
    let mut buf = vec![0u8; n];
    r.stream().read_exact(&mut buf).await?;
    match HopFrame::parse(&buf)? {
        HopFrame::Blob(_) => Ok(Some(buf)),
        other => bail!("unexpected hop frame {other:?}"),
    }
}

/// A full-fragment plaintext for fragment `idx` of message `seq` of `src`.
pub(crate) fn bulk_plaintext(src: &[u8], seq: u64, idx: u32) -> Vec<u8> {
    let mut w = FrameWriter::new(MAX_PLAINTEXT);
    let start = idx as usize * MAX_FRAGMENT;
    let chunk = src.get(start..start + MAX_FRAGMENT).unwrap_or_default();
    w.msg(seq, idx, FRAGS_PER_MSG, chunk);
    w.finish()
}

/// Seals `pt` into a new hop BLOB frame.
fn seal_frame(line: &mut Line, pt: &[u8]) -> Result<Vec<u8>> {
    let mut frame = BlobFrame::new(Route::Direct, FRAME_CAP);
    if line
        .seal(Instant::now(), wall(), pt, true, frame.buf())
        .is_err()
    {
        bail!("no session to seal on");
    }
    Ok(frame.finish())
}

/// Opens one blob; returns the plaintext bytes and the MSG chunk bytes it carried.
pub(crate) fn open_blob(line: &mut Line, blob: &[u8], pt: &mut Vec<u8>) -> Result<(usize, usize)> {
    if line.handle_blob(Instant::now(), blob, pt) != Received::Plaintext {
        bail!("a DATA blob did not open: {:?}", line.poll_event());
    }
    let mut chunk_bytes = 0;
    for f in Frames::new(pt) {
        if let Frame::Msg { chunk, .. } = f? {
            chunk_bytes += chunk.len();
        }
    }
    Ok((pt.len(), chunk_bytes))
}

/// Counts received plaintext and starts the clock once the warm-up is in.
#[derive(Debug)]
pub(crate) struct Meter {
    warmup: u64,
    total: u64,
    got: u64,
    start: Option<(Window, u64)>,
}

impl Meter {
    pub(crate) fn new(warmup: u64, total: u64) -> Self {
        Meter {
            warmup,
            total,
            got: 0,
            start: None,
        }
    }

    /// Adds `n` bytes; true when everything has arrived.
    pub(crate) fn add(&mut self, n: usize) -> bool {
        self.got += n as u64;
        if self.start.is_none() && self.got >= self.warmup {
            self.start = Some((Window::start(), self.got));
        }
        self.got >= self.total
    }

    pub(crate) fn finish(&self) -> Result<Measured> {
        let (w0, at) = self.start.context("nothing received")?;
        Ok(w0.finish(self.got - at))
    }
}

/// The bytes of one simulated 16 MiB message that bulk frames carry fragments of.
pub(crate) fn bulk_source() -> Vec<u8> {
    (0..MAX_FRAGMENT * FRAGS_PER_MSG as usize)
        .map(|i| (i % 251) as u8)
        .collect()
}

/// Number of full plaintexts that carry at least `bytes`.
pub(crate) fn frames_for(bytes: u64) -> u64 {
    bytes.div_ceil(MAX_PLAINTEXT as u64)
}

/// The frame for bulk frame number `i` of the stream: fragment `i % 256` of message
/// `1 + i / 256`.
fn bulk_frame(line: &mut Line, src: &[u8], i: u64) -> Result<Bytes> {
    let seq = 1 + i / u64::from(FRAGS_PER_MSG);
    let idx = (i % u64::from(FRAGS_PER_MSG)) as u32;
    let pt = bulk_plaintext(src, seq, idx);
    Ok(Bytes::from(seal_frame(line, &pt)?))
}

/// The engineered sender: seals `frames` frames and hands them to quinn without a copy.
/// Returns the client side (kept open until the receiver has everything).
fn spawn_sender(
    t: Tuning,
    frames: u64,
    src: Vec<u8>,
    mut line: Line,
    side: Side,
) -> tokio::task::JoinHandle<Result<Side>> {
    if t.tx_split == 0 {
        return tokio::spawn(async move {
            let mut side = side;
            for i in 0..frames {
                let frame = bulk_frame(&mut line, &src, i)?;
                side.writer.stream().write_chunk(frame).await?;
                if t.tx_yield {
                    tokio::task::yield_now().await;
                }
            }
            Ok(side)
        });
    }
    let (tx, mut rx) = mpsc::channel::<Bytes>(t.tx_split);
    let sealer = tokio::spawn(async move {
        for i in 0..frames {
            tx.send(bulk_frame(&mut line, &src, i)?).await?;
            if t.tx_yield {
                tokio::task::yield_now().await;
            }
        }
        anyhow::Ok(())
    });
    tokio::spawn(async move {
        let mut side = side;
        while let Some(frame) = rx.recv().await {
            side.writer.stream().write_chunk(frame).await?;
        }
        sealer.await??;
        Ok(side)
    })
}

/// The engineered receiver: opens frames until `total` plaintext bytes arrived; measures
/// after the first `warm_frames`.
fn spawn_receiver(
    t: Tuning,
    warm_frames: u64,
    total: u64,
    mut line: Line,
    side: Side,
) -> tokio::task::JoinHandle<Result<Measured>> {
    let warm = warm_frames * MAX_PLAINTEXT as u64;
    if t.rx_split == 0 {
        return tokio::spawn(async move {
            let mut side = side;
            let mut pt = Vec::with_capacity(MAX_PLAINTEXT + NOISE_TAG_LEN);
            let mut meter = Meter::new(warm, total);
            loop {
                let n = match side.reader.next().await? {
                    Some(HopFrame::Blob(blob)) => open_blob(&mut line, blob, &mut pt)?.0,
                    other => bail!("unexpected hop frame {other:?}"),
                };
                if meter.add(n) {
                    return meter.finish();
                }
                if t.rx_yield {
                    tokio::task::yield_now().await;
                }
            }
        });
    }
    // a reader task feeding an opening task; owned reads keep the hop type byte in front
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(t.rx_split);
    let reader = tokio::spawn(async move {
        let mut side = side;
        loop {
            let frame = if t.rx_owned {
                match read_owned_blob(&mut side.reader).await? {
                    Some(f) => f,
                    None => break,
                }
            } else {
                match side.reader.next().await? {
                    Some(HopFrame::Blob(blob)) => blob.to_vec(),
                    None => break,
                    other => bail!("unexpected hop frame {other:?}"),
                }
            };
            if tx.send(frame).await.is_err() {
                break;
            }
        }
        anyhow::Ok(side)
    });
    tokio::spawn(async move {
        let mut pt = Vec::with_capacity(MAX_PLAINTEXT + NOISE_TAG_LEN);
        let mut meter = Meter::new(warm, total);
        let skip = usize::from(t.rx_owned);
        while let Some(frame) = rx.recv().await {
            let blob = frame.get(skip..).unwrap_or_default();
            let (n, _) = open_blob(&mut line, blob, &mut pt)?;
            if meter.add(n) {
                // the reader (holding the server side) ends when the client closes
                drop(reader);
                return meter.finish();
            }
            if t.rx_yield {
                tokio::task::yield_now().await;
            }
        }
        bail!("the hop reader stopped early")
    })
}

/// One bulk run on a fresh hop and a fresh session: `warmup` plaintext bytes untimed, then
/// `bytes` timed at the receiver (plaintext bytes).
pub async fn bulk(warmup: u64, bytes: u64, path: Path) -> Result<Measured> {
    let mut pair = HopPair::new().await?;
    let (mut a, mut b) = line_pair()?;
    handshake_over(&mut pair, &mut a, &mut b).await?;
    let eps = pair.endpoints();
    let warm_frames = frames_for(warmup);
    let frames = warm_frames + frames_for(bytes);
    let total = frames * MAX_PLAINTEXT as u64;
    let src = bulk_source();
    let limit = bulk_timeout(total);
    let HopPair { client, server, .. } = pair;
    let mib = match path {
        Path::Direct | Path::Tuned(_) => {
            let t = match path {
                Path::Tuned(t) => t,
                _ => Tuning::BEST,
            };
            let sender = spawn_sender(t, frames, src, a, client);
            let receiver = spawn_receiver(t, warm_frames, total, b, server);
            let mib = tokio::time::timeout(limit, receiver)
                .await
                .context("line bulk receiver timed out")???;
            let kept = tokio::time::timeout(limit, sender)
                .await
                .context("line bulk sender timed out")???;
            kept.conn.close(0u32.into(), b"done");
            mib
        }
        Path::Node(opts) => {
            // hop writer task (node.rs `attach`): today `write_all` of each frame
            let (wtx, mut wrx) = mpsc::channel::<Bytes>(64);
            let writer = tokio::spawn(async move {
                let mut side = client;
                while let Some(frame) = wrx.recv().await {
                    if opts.write_chunk {
                        side.writer.stream().write_chunk(frame).await?;
                    } else {
                        side.writer.send_encoded(&frame).await?;
                    }
                }
                anyhow::Ok(side)
            });
            // sending line task (line_task.rs `run` → `build_data_frame`)
            let line_tx = tokio::spawn(async move {
                for i in 0..frames {
                    let permit = wtx.reserve().await?;
                    let seq = 1 + i / u64::from(FRAGS_PER_MSG);
                    let idx = (i % u64::from(FRAGS_PER_MSG)) as u32;
                    let mut w = FrameWriter::default();
                    let chunk = src
                        .get(idx as usize * MAX_FRAGMENT..(idx as usize + 1) * MAX_FRAGMENT)
                        .unwrap_or_default();
                    w.msg(seq, idx, FRAGS_PER_MSG, chunk);
                    let pt = w.finish();
                    let mut frame = Vec::with_capacity(5 + DATA_HEADER_LEN + pt.len() + 16);
                    frame.extend_from_slice(&[0; 4]);
                    frame.push(liaison_wire::hop::ty::BLOB);
                    if a.seal(Instant::now(), wall(), &pt, true, &mut frame)
                        .is_err()
                    {
                        bail!("no session to seal on");
                    }
                    let len = (frame.len() - 4) as u32;
                    if let Some(p) = frame.get_mut(..4) {
                        p.copy_from_slice(&len.to_le_bytes());
                    }
                    permit.send(Bytes::from(frame));
                }
                anyhow::Ok(())
            });
            // hop reader task → receiving line task: today `to_vec` of each BLOB
            let (ltx, mut lrx) = mpsc::channel::<Vec<u8>>(1024);
            let reader = tokio::spawn(async move {
                let mut side = server;
                loop {
                    let data = if opts.owned_reads {
                        match read_owned_blob(&mut side.reader).await? {
                            Some(f) => f,
                            None => break,
                        }
                    } else {
                        match side.reader.next().await? {
                            Some(HopFrame::Blob(blob)) => blob.to_vec(),
                            None => break,
                            other => bail!("unexpected hop frame {other:?}"),
                        }
                    };
                    if ltx.send(data).await.is_err() {
                        break;
                    }
                }
                anyhow::Ok(side)
            });
            let line_rx = tokio::spawn(async move {
                let mut pt = Vec::with_capacity(65_536);
                let mut meter = Meter::new(warm_frames * MAX_PLAINTEXT as u64, total);
                let skip = usize::from(opts.owned_reads);
                while let Some(data) = lrx.recv().await {
                    let (n, _) = open_blob(&mut b, data.get(skip..).unwrap_or_default(), &mut pt)?;
                    if meter.add(n) {
                        return meter.finish();
                    }
                }
                bail!("the hop reader stopped early")
            });
            let mib = tokio::time::timeout(limit, line_rx)
                .await
                .context("node-path receiver timed out")???;
            tokio::time::timeout(limit, line_tx)
                .await
                .context("node-path sender timed out")???;
            let kept = tokio::time::timeout(limit, writer)
                .await
                .context("node-path writer timed out")???;
            kept.conn.close(0u32.into(), b"done");
            // the reader ends with the connection
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
            mib
        }
    };
    close_endpoints(eps).await;
    Ok(mib)
}

/// Line round trips: a [`RTT_LEN`]-byte plaintext (one MSG frame, padded to its 256-byte
/// bucket) sealed each way, 290 bytes on the wire per direction, opened at each end.
#[derive(Debug)]
pub struct LinePinger {
    client: Side,
    line: Line,
    pt: Vec<u8>,
    seq: u64,
    echo: tokio::task::JoinHandle<Result<Side>>,
    eps: (quinn::Endpoint, quinn::Endpoint),
}

impl LinePinger {
    /// A fresh hop and session with an echoing (open, seal) server.
    pub async fn new() -> Result<LinePinger> {
        let mut pair = HopPair::new().await?;
        let (mut a, mut b) = line_pair()?;
        handshake_over(&mut pair, &mut a, &mut b).await?;
        let eps = pair.endpoints();
        let HopPair { client, server, .. } = pair;
        let echo = tokio::spawn(async move {
            let mut side = server;
            let mut pt = Vec::with_capacity(RTT_LEN + NOISE_TAG_LEN);
            loop {
                match side.reader.next().await {
                    Ok(Some(HopFrame::Blob(blob))) => {
                        open_blob(&mut b, blob, &mut pt)?;
                    }
                    _ => break,
                }
                let frame = seal_frame(&mut b, &pt)?;
                side.writer.stream().write_chunk(Bytes::from(frame)).await?;
            }
            Ok(side)
        });
        Ok(LinePinger {
            client,
            line: a,
            pt: Vec::with_capacity(RTT_LEN + NOISE_TAG_LEN),
            seq: 0,
            echo,
            eps,
        })
    }

    /// `n` round trips; samples in µs. Each includes building, sealing and opening.
    pub async fn block(&mut self, n: usize) -> Result<Vec<f64>> {
        let bound = Duration::from_secs(10 + n as u64 / 100);
        let LinePinger {
            client,
            line,
            pt,
            seq,
            ..
        } = self;
        tokio::time::timeout(bound, async {
            let body = [0x42u8; 200];
            let mut samples = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                *seq += 1;
                let mut fw = FrameWriter::default();
                fw.msg(*seq, 0, 1, &body);
                let msg = fw.finish();
                let frame = seal_frame(line, &msg)?;
                client
                    .writer
                    .stream()
                    .write_chunk(Bytes::from(frame))
                    .await?;
                match client.reader.next().await? {
                    Some(HopFrame::Blob(blob)) => {
                        open_blob(line, blob, pt)?;
                    }
                    other => bail!("unexpected hop frame {other:?}"),
                }
                samples.push(t.elapsed().as_secs_f64() * 1e6);
            }
            anyhow::Ok(samples)
        })
        .await
        .context("line round trips timed out")?
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
