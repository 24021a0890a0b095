//! A client's outbound queue, bounded in bytes per client and across all clients.
//!
//! Frames are charged to two semaphores (the client's budget and the relay's) while they wait
//! and while they are being written. Live traffic uses [`OutQueue::try_push`], which never
//! waits: when a budget is spent the caller disconnects the slow client instead of buffering.
//! Replays of stored envelopes use [`OutQueue::push`], which waits for room (the relay's own
//! backlog is paced by the client's reading). An empty queue allocates nothing.

use crate::metrics::{Dropped, Metrics};
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// An encoded frame (or several), shared between the clients it goes to.
pub type Frame = Arc<Vec<u8>>;

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// A budget is spent (the client's own, or the relay's total).
    Full(Dropped),
    /// The queue is closed.
    Closed,
}

/// A queued frame holding its share of the budgets.
#[derive(Debug)]
pub struct OutFrame {
    /// The bytes to write.
    pub bytes: Frame,
    _client: OwnedSemaphorePermit,
    _global: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for OutFrame {
    fn drop(&mut self) {
        self.metrics
            .outbound_bytes
            .fetch_sub(self.bytes.len() as u64, Relaxed);
    }
}

#[derive(Debug, Default)]
struct State {
    q: VecDeque<OutFrame>,
    closed: bool,
}

/// One client's outbound queue.
#[derive(Debug)]
pub struct OutQueue {
    state: Mutex<State>,
    ready: Notify,
    client: Arc<Semaphore>,
    global: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

fn permits(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

impl OutQueue {
    /// A queue holding at most `client_bytes`, drawing on the shared `global` budget.
    pub fn new(client_bytes: usize, global: Arc<Semaphore>, metrics: Arc<Metrics>) -> Self {
        OutQueue {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            client: Arc::new(Semaphore::new(client_bytes)),
            global,
            metrics,
        }
    }

    fn enqueue(
        &self,
        bytes: Frame,
        client: OwnedSemaphorePermit,
        global: OwnedSemaphorePermit,
    ) -> Result<(), PushError> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.closed {
            return Err(PushError::Closed);
        }
        self.metrics
            .outbound_bytes
            .fetch_add(bytes.len() as u64, Relaxed);
        s.q.push_back(OutFrame {
            bytes,
            _client: client,
            _global: global,
            metrics: Arc::clone(&self.metrics),
        });
        drop(s);
        self.ready.notify_one();
        Ok(())
    }

    /// Queues a frame if both budgets have room, without waiting.
    pub fn try_push(&self, bytes: Frame) -> Result<(), PushError> {
        let n = permits(bytes.len());
        let client = match Arc::clone(&self.client).try_acquire_many_owned(n) {
            Ok(p) => p,
            Err(TryAcquireError::NoPermits) => return Err(PushError::Full(Dropped::SlowClient)),
            Err(TryAcquireError::Closed) => return Err(PushError::Closed),
        };
        let global = match Arc::clone(&self.global).try_acquire_many_owned(n) {
            Ok(p) => p,
            Err(TryAcquireError::NoPermits) => return Err(PushError::Full(Dropped::Overload)),
            Err(TryAcquireError::Closed) => return Err(PushError::Closed),
        };
        self.enqueue(bytes, client, global)
    }

    /// Queues a frame, waiting for room.
    pub async fn push(&self, bytes: Frame) -> Result<(), PushError> {
        let n = permits(bytes.len());
        let client = Arc::clone(&self.client)
            .acquire_many_owned(n)
            .await
            .map_err(|_| PushError::Closed)?;
        let global = Arc::clone(&self.global)
            .acquire_many_owned(n)
            .await
            .map_err(|_| PushError::Closed)?;
        self.enqueue(bytes, client, global)
    }

    /// The next frame; `None` once the queue is closed and empty.
    pub async fn pop(&self) -> Option<OutFrame> {
        loop {
            let notified = self.ready.notified();
            {
                let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(f) = s.q.pop_front() {
                    if s.q.is_empty() && s.q.capacity() > 64 {
                        s.q = VecDeque::new();
                    }
                    return Some(f);
                }
                if s.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// No more frames are accepted; [`OutQueue::pop`] drains what is queued, then ends.
    /// Waiting [`OutQueue::push`] calls fail.
    pub fn close(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.client.close();
        self.ready.notify_one();
    }

    /// Drops everything queued (the connection is gone).
    pub fn clear(&self) {
        let drained: Vec<OutFrame> = {
            let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            s.closed = true;
            s.q.drain(..).collect()
        };
        self.client.close();
        drop(drained);
        self.ready.notify_one();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    fn frame(n: usize) -> Frame {
        Arc::new(vec![0; n])
    }

    #[tokio::test]
    async fn bounded_per_client_and_globally() {
        let m = Metrics::new();
        let global = Arc::new(Semaphore::new(240));
        let a = OutQueue::new(150, Arc::clone(&global), Arc::clone(&m));
        let b = OutQueue::new(150, Arc::clone(&global), Arc::clone(&m));
        a.try_push(frame(100)).unwrap();
        assert_eq!(
            a.try_push(frame(100)),
            Err(PushError::Full(Dropped::SlowClient))
        );
        b.try_push(frame(100)).unwrap();
        assert_eq!(
            b.try_push(frame(50)).unwrap_err(),
            PushError::Full(Dropped::Overload)
        );
        assert_eq!(m.outbound_bytes.load(Relaxed), 200);
        let f = a.pop().await.unwrap();
        assert_eq!(f.bytes.len(), 100);
        // still charged while being written
        assert!(a.try_push(frame(100)).is_err());
        drop(f);
        a.try_push(frame(100)).unwrap();
        assert_eq!(m.outbound_bytes.load(Relaxed), 200);
        a.close();
        assert_eq!(a.try_push(frame(1)), Err(PushError::Closed));
        assert!(a.pop().await.is_some(), "close drains");
        assert!(a.pop().await.is_none());
        b.clear();
        assert!(b.pop().await.is_none());
        assert_eq!(m.outbound_bytes.load(Relaxed), 0);
        assert_eq!(global.available_permits(), 240);
    }

    #[tokio::test]
    async fn push_waits_for_room() {
        let m = Metrics::new();
        let q = Arc::new(OutQueue::new(
            100,
            Arc::new(Semaphore::new(1000)),
            Arc::clone(&m),
        ));
        q.push(frame(80)).await.unwrap();
        let q2 = Arc::clone(&q);
        let waiter = tokio::spawn(async move { q2.push(frame(80)).await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(q.pop().await.unwrap());
        waiter.await.unwrap().unwrap();
        let q3 = Arc::clone(&q);
        let blocked = tokio::spawn(async move { q3.push(frame(80)).await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        q.close();
        assert_eq!(blocked.await.unwrap(), Err(PushError::Closed));
    }
}
