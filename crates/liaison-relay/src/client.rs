//! The per-client actor: reads a client's frames, posts, subscribes and acknowledges for it,
//! and writes to it through its bounded outbound queue.
//!
//! Tasks of one connection, all owned by [`serve_client`]:
//! - the **reader** (this function's own loop): one frame at a time, every length checked
//!   before allocating; a `store = 1` post waits for room among `max_inflight_posts`; a live
//!   post waits up to `write_timeout` for room in each subscriber's queue (back-pressure on
//!   the poster) before that subscriber is dropped as too slow;
//! - the **writer**: drains the outbound queue into the QUIC stream; a client that accepts
//!   nothing for `write_timeout` is disconnected;
//! - the **committer**: takes the store's answers in post order and sends `ACK` (or `ERR`),
//!   then delivers the new envelope to the inbox's live subscribers;
//! - at most one **replay**: after `SUBSCRIBE`, pages the inboxes' stored envelopes into the
//!   queue, waiting for room (the client's reading paces it).
//!
//! Teardown is ordered so nothing acknowledged is lost: stop reading, let the committer finish
//! the posts already handed to the store (their `ACK`s are queued), wait for the store to
//! pass the client's last `ACK` (so its deletions use its subscriptions), unregister, flush
//! the queue within `drain_timeout`, then close the connection with a code.

use crate::admission::addr_key;
use crate::metrics::Rejected;
use crate::outbound::{Frame, OutQueue, PushError};
use crate::registry::ClientHandle;
use crate::request::{Request, RequestError, parse_request};
use crate::server::Shared;
use crate::store::{DELIVER_HEADER, Poster, PutOutcome, PutReq};
use liaison_hop::{HopReader, HopWriter};
use liaison_wire::consts::INBOX_ID_LEN;
use liaison_wire::hop::{self, EnvelopeId, HopFrame, InboxId, err, ty};
use quinn::VarInt;
use sha2::{Digest, Sha256};
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// `type || dst || store` before the blob of a `POST`.
const POST_PREFIX: usize = 1 + INBOX_ID_LEN + 1;
/// Free bytes kept before each frame read, so a `POST` becomes a `DELIVER` in place.
pub(crate) const HEADROOM: usize = DELIVER_HEADER - POST_PREFIX;
/// Envelopes per replay page.
const PAGE_COUNT: usize = 64;
/// Blob bytes per replay page.
const PAGE_BYTES: usize = 256 * 1024;
/// Inbox ids checked for stored envelopes at once.
const REPLAY_BATCH: usize = 1024;
/// How long a closing connection waits for the client to acknowledge our last bytes.
const FLUSH_ACK_WAIT: Duration = Duration::from_secs(2);

/// How a client's reading ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client finished its stream.
    Finished,
    /// The relay is shutting down.
    Shutdown,
    /// The client broke the protocol (ERR MALFORMED queued).
    Malformed,
    /// The connection is gone (lost, or closed by us already).
    Lost,
}

enum ReadEnd {
    Malformed,
    Lost,
    Timeout,
}

/// A post waiting for its commit.
struct Pending {
    outcome: oneshot::Receiver<PutOutcome>,
    dst: InboxId,
    envelope_id: EnvelopeId,
    frame: Frame,
}

#[derive(Debug, Default)]
struct ReplayQueue {
    ids: VecDeque<InboxId>,
    queued: HashSet<InboxId>,
    running: bool,
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn envelope_id(blob: &[u8]) -> EnvelopeId {
    let d: [u8; 32] = Sha256::digest(blob).into();
    let mut id = [0u8; 16];
    id.copy_from_slice(d.get(..16).unwrap_or(&[0; 16]));
    id
}

fn err_frame(code: u16, reference: EnvelopeId) -> Frame {
    Arc::new(HopFrame::Err { code, reference }.to_vec())
}

/// Rewrites the first [`DELIVER_HEADER`] bytes of `buf` (whose blob starts there) as a
/// `DELIVER` header.
fn set_deliver_header(buf: &mut [u8], inbox: &InboxId, envelope_id: &EnvelopeId) {
    let body_len = u32::try_from(buf.len().saturating_sub(4)).unwrap_or(u32::MAX);
    if let Some(h) = buf.get_mut(..DELIVER_HEADER) {
        let (len, rest) = h.split_at_mut(4);
        len.copy_from_slice(&body_len.to_le_bytes());
        let (t, rest) = rest.split_at_mut(1);
        t.copy_from_slice(&[ty::DELIVER]);
        let (i, e) = rest.split_at_mut(INBOX_ID_LEN);
        i.copy_from_slice(inbox);
        e.copy_from_slice(envelope_id);
    }
}

async fn read_frame(
    recv: &mut quinn::RecvStream,
    frame_timeout: Duration,
) -> Result<Option<Vec<u8>>, ReadEnd> {
    use quinn::ReadExactError::{FinishedEarly, ReadError};
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(FinishedEarly(0)) => return Ok(None),
        Err(FinishedEarly(_)) => return Err(ReadEnd::Malformed),
        Err(ReadError(_)) => return Err(ReadEnd::Lost),
    }
    let n = hop::check_len(u32::from_le_bytes(len)).map_err(|_| ReadEnd::Malformed)?;
    let mut buf = vec![0u8; HEADROOM + n];
    let body = buf.get_mut(HEADROOM..).ok_or(ReadEnd::Malformed)?;
    match timeout(frame_timeout, recv.read_exact(body)).await {
        Err(_) => Err(ReadEnd::Timeout),
        Ok(Err(FinishedEarly(_))) => Err(ReadEnd::Malformed),
        Ok(Err(ReadError(_))) => Err(ReadEnd::Lost),
        Ok(Ok(())) => Ok(Some(buf)),
    }
}

/// Queues `frame` for `client`; a client whose queue is full is disconnected.
fn send_to(shared: &Shared, client: &ClientHandle, frame: Frame) -> bool {
    match client.out.try_push(frame) {
        Ok(()) => true,
        Err(PushError::Full(why)) => {
            shared.metrics.drop_frame(why);
            tracing::debug!(client = client.id, "outbound queue full: disconnecting");
            client.disconnect(err::QUOTA, "outbound queue full");
            false
        }
        Err(PushError::Closed) => false,
    }
}

/// Sends `frame` to every live subscriber of `inbox`; returns how many took it.
fn fan_out(shared: &Shared, inbox: &InboxId, frame: &Frame) -> u64 {
    let mut n = 0;
    for s in shared.registry.subscribers(inbox) {
        if send_to(shared, &s, Arc::clone(frame)) {
            n += 1;
        }
    }
    n
}

struct Client {
    handle: Arc<ClientHandle>,
    shared: Arc<Shared>,
    poster: Poster,
    /// The committer's queue and task, started by the first `store = 1` post (idle nodes
    /// never post, and this keeps them small).
    committer: Option<(mpsc::Sender<Pending>, tokio::task::JoinHandle<()>)>,
    replay: Arc<Mutex<ReplayQueue>>,
    replays: JoinSet<()>,
}

impl Client {
    fn reply(&self, frame: Frame) {
        send_to(&self.shared, &self.handle, frame);
    }

    async fn read_loop(&mut self, recv: &mut quinn::RecvStream) -> End {
        loop {
            while self.replays.try_join_next().is_some() {}
            let frame = match read_frame(recv, self.shared.config.frame_timeout).await {
                Ok(Some(f)) => f,
                Ok(None) => return End::Finished,
                Err(ReadEnd::Lost) => return End::Lost,
                Err(ReadEnd::Malformed | ReadEnd::Timeout) => return self.malformed(),
            };
            let body = frame.get(HEADROOM..).unwrap_or_default();
            let request = match parse_request(body) {
                Ok(r) => r,
                Err(RequestError::TooLarge { len, reference }) => {
                    tracing::debug!(client = self.handle.id, "refused a {len}-byte POST blob");
                    self.shared.metrics.reject(Rejected::TooLarge);
                    self.reply(err_frame(err::TOO_LARGE, reference));
                    continue;
                }
                Err(e) => {
                    tracing::debug!(client = self.handle.id, "refused frame: {e}");
                    return self.malformed();
                }
            };
            match request {
                Request::Subscribe(ids) => {
                    let ids: Vec<InboxId> = hop::inboxes(ids).collect();
                    self.subscribe(ids);
                }
                Request::Post {
                    dst, store: false, ..
                } => {
                    self.forward(frame, dst).await;
                }
                Request::Post {
                    dst, store: true, ..
                } => {
                    if !self.store(frame, dst).await {
                        return End::Shutdown;
                    }
                }
                Request::Ack { envelope_id } => {
                    let shared = Arc::clone(&self.shared);
                    let id = self.handle.id;
                    let filter =
                        Box::new(move |inbox: &InboxId| shared.registry.is_subscribed(id, inbox));
                    if self.shared.store.ack(envelope_id, filter).await.is_err() {
                        return End::Shutdown;
                    }
                }
            }
        }
    }

    fn malformed(&self) -> End {
        self.shared.metrics.reject(Rejected::Malformed);
        self.reply(err_frame(err::MALFORMED, [0; 16]));
        End::Malformed
    }

    fn subscribe(&mut self, ids: Vec<InboxId>) {
        self.shared
            .registry
            .subscribe(self.handle.id, ids.iter().copied());
        let start = {
            let mut q = self.replay.lock().unwrap_or_else(PoisonError::into_inner);
            for id in ids {
                if q.queued.insert(id) {
                    q.ids.push_back(id);
                }
            }
            let start = !q.running && !q.ids.is_empty();
            q.running |= start;
            start
        };
        if start {
            self.replays.spawn(replay(
                Arc::clone(&self.handle),
                Arc::clone(&self.shared),
                Arc::clone(&self.replay),
            ));
        }
    }

    /// `store = 0`: forward to live subscribers or answer `NO_SUBSCRIBER`.
    async fn forward(&self, mut frame: Vec<u8>, dst: InboxId) {
        let blob_ref = |f: &[u8]| envelope_id(f.get(DELIVER_HEADER..).unwrap_or_default());
        let subscribers = self.shared.registry.subscribers(&dst);
        if subscribers.is_empty() {
            self.shared.metrics.reject(Rejected::NoSubscriber);
            self.reply(err_frame(err::NO_SUBSCRIBER, blob_ref(&frame)));
            return;
        }
        set_deliver_header(&mut frame, &dst, &[0; 16]);
        let frame = Arc::new(frame);
        let mut n = 0;
        for s in subscribers {
            // back-pressure: a subscriber whose queue is full makes this poster wait (and
            // QUIC flow control makes the poster's sender wait) for up to write_timeout,
            // instead of being disconnected at once
            let ok = match s.out.try_push(Arc::clone(&frame)) {
                Ok(()) => true,
                Err(crate::outbound::PushError::Closed) => false,
                Err(crate::outbound::PushError::Full(why)) => {
                    match timeout(
                        self.shared.config.write_timeout,
                        s.out.push(Arc::clone(&frame)),
                    )
                    .await
                    {
                        Ok(Ok(())) => true,
                        Ok(Err(_)) => false,
                        Err(_) => {
                            self.shared.metrics.drop_frame(why);
                            s.disconnect(err::QUOTA, "outbound queue full");
                            false
                        }
                    }
                }
            };
            if ok {
                n += 1;
            }
        }
        if n == 0 {
            self.shared.metrics.reject(Rejected::NoSubscriber);
            self.reply(err_frame(err::NO_SUBSCRIBER, blob_ref(&frame)));
        } else {
            self.shared.metrics.forwarded_total.fetch_add(n, Relaxed);
        }
    }

    /// `store = 1`: hand to the store; the committer answers. False when the store is gone.
    async fn store(&mut self, mut frame: Vec<u8>, dst: InboxId) -> bool {
        let blob = frame.get(DELIVER_HEADER..).unwrap_or_default();
        let id = envelope_id(blob);
        let too_large = blob.len() > self.shared.config.quotas.max_blob_bytes;
        set_deliver_header(&mut frame, &dst, &id);
        let frame = Arc::new(frame);
        let commits = match &self.committer {
            Some((tx, _)) => tx.clone(),
            None => {
                let (tx, rx) = mpsc::channel(self.shared.config.max_inflight_posts);
                let task = tokio::spawn(commit_loop(
                    rx,
                    Arc::clone(&self.handle),
                    Arc::clone(&self.shared),
                ));
                self.committer = Some((tx.clone(), task));
                tx
            }
        };
        let Ok(slot) = commits.reserve().await else {
            return false;
        };
        let outcome = if too_large {
            // answered in posting order like every other post, without touching the store
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(PutOutcome::TooLarge);
            rx
        } else {
            let req = PutReq {
                inbox: dst,
                envelope_id: id,
                frame: Arc::clone(&frame),
                blob_at: DELIVER_HEADER,
                poster: self.poster,
                now_ms: now_ms(),
            };
            let Ok(rx) = self.shared.store.put(req).await else {
                self.reply(err_frame(err::SHUTTING_DOWN, id));
                return false;
            };
            rx
        };
        slot.send(Pending {
            outcome,
            dst,
            envelope_id: id,
            frame,
        });
        true
    }
}

/// Answers posts in order once committed, and delivers new envelopes live.
async fn commit_loop(mut rx: mpsc::Receiver<Pending>, me: Arc<ClientHandle>, shared: Arc<Shared>) {
    while let Some(p) = rx.recv().await {
        let outcome = p.outcome.await.unwrap_or(PutOutcome::Failed);
        let id = p.envelope_id;
        let (answer, rejected) = match outcome {
            PutOutcome::Stored | PutOutcome::Duplicate => {
                (Arc::new(HopFrame::Ack { envelope_id: id }.to_vec()), None)
            }
            PutOutcome::Quota => (err_frame(err::QUOTA, id), Some(Rejected::Quota)),
            PutOutcome::TooLarge => (err_frame(err::TOO_LARGE, id), Some(Rejected::TooLarge)),
            PutOutcome::Failed => (err_frame(err::INTERNAL, id), Some(Rejected::Internal)),
        };
        if let Some(r) = rejected {
            shared.metrics.reject(r);
        }
        send_to(&shared, &me, answer);
        if outcome == PutOutcome::Stored {
            let n = fan_out(&shared, &p.dst, &p.frame);
            shared.metrics.delivered_total.fetch_add(n, Relaxed);
        }
    }
}

/// Sends the stored envelopes of newly subscribed inboxes, page by page. Inboxes are first
/// filtered in batches by the store's in-memory counts, so subscribing to empty inboxes
/// (the common case) costs no query.
async fn replay(me: Arc<ClientHandle>, shared: Arc<Shared>, queue: Arc<Mutex<ReplayQueue>>) {
    loop {
        let batch: Vec<InboxId> = {
            let mut q = queue.lock().unwrap_or_else(PoisonError::into_inner);
            if q.ids.is_empty() {
                q.running = false;
                return;
            }
            let n = q.ids.len().min(REPLAY_BATCH);
            let batch: Vec<InboxId> = q.ids.drain(..n).collect();
            for i in &batch {
                q.queued.remove(i);
            }
            batch
        };
        let Ok(inboxes) = shared.store.non_empty(batch).await else {
            return;
        };
        for inbox in inboxes {
            if replay_inbox(&me, &shared, inbox).await.is_err() {
                return;
            }
        }
    }
}

/// Pages one inbox's stored envelopes into the client's queue.
async fn replay_inbox(me: &ClientHandle, shared: &Shared, inbox: InboxId) -> Result<(), ()> {
    let mut after = 0;
    loop {
        if !shared.registry.is_subscribed(me.id, &inbox) {
            return Ok(());
        }
        let _permit = shared.replay_limit.acquire().await.map_err(|_| ())?;
        let not_before = now_ms()
            .saturating_sub(i64::try_from(shared.config.ttl.as_millis()).unwrap_or(i64::MAX));
        let page = shared
            .store
            .fetch(inbox, after, PAGE_BYTES, PAGE_COUNT, not_before)
            .await
            .map_err(|_| ())?;
        if page.is_empty() {
            return Ok(());
        }
        for env in page {
            after = env.rowid;
            me.out.push(Arc::new(env.frame)).await.map_err(|_| ())?;
            shared.metrics.delivered_total.fetch_add(1, Relaxed);
        }
    }
}

/// Writes queued frames until the queue is closed and empty; hands the writer back.
async fn write_loop(
    mut writer: HopWriter,
    me: Arc<ClientHandle>,
    shared: Arc<Shared>,
) -> Option<HopWriter> {
    while let Some(f) = me.out.pop().await {
        match timeout(
            shared.config.write_timeout,
            writer.stream().write_all(&f.bytes),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return None,
            Err(_) => {
                shared
                    .metrics
                    .drop_frame(crate::metrics::Dropped::SlowClient);
                me.disconnect(err::QUOTA, "too slow");
                return None;
            }
        }
    }
    Some(writer)
}

/// Runs one accepted client (after `READY`) to the end of its connection.
pub(crate) async fn serve_client(
    conn: quinn::Connection,
    mut reader: HopReader,
    writer: HopWriter,
    key_hash: [u8; 32],
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let id = shared.next_id.fetch_add(1, Relaxed);
    let handle = Arc::new(ClientHandle {
        id,
        key_hash,
        conn: conn.clone(),
        out: OutQueue::new(
            shared.config.client_queue_bytes,
            Arc::clone(&shared.out_budget),
            Arc::clone(&shared.metrics),
        ),
    });
    shared.registry.add(Arc::clone(&handle));
    shared.metrics.connections.fetch_add(1, Relaxed);
    shared.metrics.connections_total.fetch_add(1, Relaxed);

    let mut writer_task =
        tokio::spawn(write_loop(writer, Arc::clone(&handle), Arc::clone(&shared)));
    let mut key = [0u8; 8];
    key.copy_from_slice(key_hash.get(..8).unwrap_or(&[0; 8]));
    // connection migration is off: the address stays the one the connection was admitted from
    let poster = Poster {
        key,
        source: addr_key(conn.remote_address().ip()),
    };
    let mut client = Client {
        handle: Arc::clone(&handle),
        shared: Arc::clone(&shared),
        poster,
        committer: None,
        replay: Arc::default(),
        replays: JoinSet::new(),
    };

    let end = tokio::select! {
        biased;
        _ = shutdown.cancelled() => End::Shutdown,
        e = client.read_loop(reader.stream()) => e,
    };
    tracing::debug!(client = id, "reading ended: {end:?}");

    // teardown, every step bounded
    let drain = shared.config.drain_timeout;
    let Client {
        committer, replays, ..
    } = client;
    if let Some((commits, mut task)) = committer {
        drop(commits);
        if timeout(drain, &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
        }
    }
    let _ = timeout(drain, shared.store.barrier()).await;
    shared.registry.remove(id);
    let mut replays = replays;
    replays.shutdown().await;
    let (code, reason): (u16, &[u8]) = match end {
        End::Finished => (0, b"bye"),
        End::Shutdown => (err::SHUTTING_DOWN, b"shutting down"),
        End::Malformed => (err::MALFORMED, b"malformed frame"),
        End::Lost => (0, b""),
    };
    if end == End::Lost {
        handle.out.clear();
        writer_task.abort();
        let _ = writer_task.await;
    } else {
        handle.out.close();
        match timeout(drain, &mut writer_task).await {
            Ok(Ok(Some(mut w))) => {
                w.finish();
                let _ = timeout(FLUSH_ACK_WAIT, w.stream().stopped()).await;
            }
            Ok(_) => {}
            Err(_) => {
                writer_task.abort();
                let _ = writer_task.await;
            }
        }
        conn.close(VarInt::from(code), reason);
    }
    shared.metrics.connections.fetch_sub(1, Relaxed);
}
