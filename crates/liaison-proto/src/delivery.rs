//! Delivery: nothing lost, nothing twice, in order (design §5). Sans-IO.
//!
//! Sender: every message has a per-contact `seq` (from 1) fixed in the outbox before it is
//! sent. [`Sender`] keeps every unacknowledged message, fills plaintexts with their fragments,
//! rewinds to the first unacknowledged one on every fresh session and on a retransmission
//! timeout (1 s doubling to 30 s, reset by progress), and forgets a message once a cumulative
//! `ACK(delivered_upto)` covers it.
//!
//! Receiver: [`Receiver`] reassembles fragments by `(seq, index)` whatever the session,
//! bounded in memory ([`MAX_REASSEMBLY_BYTES`], [`MAX_SEQ_AHEAD`]); a complete message is
//! handed to the driver, which stores it and then calls [`Receiver::mark_stored`];
//! `delivered_upto` is the highest seq with every seq up to it stored, and is what the
//! receiver acks. Duplicates of stored messages are re-acked, never re-delivered.

use liaison_wire::consts::*;
use liaison_wire::frame::{FrameWriter, fragment, fragment_count, msg_digest};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound::{Excluded, Unbounded};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct OutMsg {
    encoded: Arc<[u8]>,
    frag_count: u32,
    digest: Option<[u8; MSG_DIGEST_LEN]>,
}

/// The sending half of delivery for one contact.
#[derive(Debug)]
pub struct Sender {
    unacked: BTreeMap<u64, OutMsg>,
    acked_upto: u64,
    cursor: Option<(u64, u32)>,
    rto: Duration,
    deadline: Option<Instant>,
}

impl Sender {
    /// A sender whose peer has acknowledged everything up to `acked_upto`.
    pub fn new(acked_upto: u64) -> Self {
        Sender {
            unacked: BTreeMap::new(),
            acked_upto,
            cursor: None,
            rto: RTO_INITIAL,
            deadline: None,
        }
    }

    /// Highest seq the peer acknowledged.
    pub fn acked_upto(&self) -> u64 {
        self.acked_upto
    }

    /// Messages not yet acknowledged.
    pub fn unacked_count(&self) -> usize {
        self.unacked.len()
    }

    /// The encoded content of an unacknowledged message.
    pub fn message(&self, seq: u64) -> Option<&Arc<[u8]>> {
        self.unacked.get(&seq).map(|m| &m.encoded)
    }

    /// Seqs not yet acknowledged, in order.
    pub fn unacked_seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.unacked.keys().copied()
    }

    /// Adds a message already recorded in the outbox. Ignored if the peer already has it.
    pub fn push(&mut self, seq: u64, encoded: Arc<[u8]>) {
        if seq <= self.acked_upto || self.unacked.contains_key(&seq) {
            return;
        }
        let frag_count = fragment_count(encoded.len());
        self.unacked.insert(
            seq,
            OutMsg {
                encoded,
                frag_count,
                digest: None,
            },
        );
        match self.cursor {
            None => self.cursor = Some((seq, 0)),
            Some((c, _)) if seq < c => self.cursor = Some((seq, 0)),
            Some(_) => {}
        }
    }

    /// The highest unacknowledged seq held.
    pub fn highest_unacked(&self) -> Option<u64> {
        self.unacked.keys().next_back().copied()
    }

    /// The [`msg_digest`] of unacknowledged message `seq` (computed once), as the peer's
    /// `ACK` must name it.
    pub fn digest(&mut self, seq: u64) -> Option<[u8; MSG_DIGEST_LEN]> {
        let m = self.unacked.get_mut(&seq)?;
        Some(*m.digest.get_or_insert_with(|| msg_digest(&m.encoded)))
    }

    /// Takes the unacknowledged messages up to `peer_holds` out (to give them new seqs after
    /// a rollback of our store was detected), in seq order, and raises `acked_upto` to
    /// `peer_holds`: the peer holds other messages under every seq up to there. The messages
    /// above keep their seqs (the peer expects `peer_holds + 1` next).
    pub fn take_unacked(&mut self, peer_holds: u64) -> Vec<(u64, Arc<[u8]>)> {
        let rest = match peer_holds.checked_add(1) {
            Some(next) => self.unacked.split_off(&next),
            None => BTreeMap::new(),
        };
        let taken = std::mem::replace(&mut self.unacked, rest);
        self.cursor = None;
        self.deadline = None;
        self.rto = RTO_INITIAL;
        self.acked_upto = self.acked_upto.max(peer_holds);
        taken.into_iter().map(|(s, m)| (s, m.encoded)).collect()
    }

    /// The peer lost messages it had acknowledged (its store was rolled back): lowers
    /// `acked_upto` to what it holds, so the messages it lost can be [`Sender::push`]ed again.
    pub fn reopen(&mut self, peer_holds: u64) {
        self.acked_upto = self.acked_upto.min(peer_holds);
    }

    /// Processes a cumulative ack; returns the seqs it newly acknowledged.
    pub fn on_ack(&mut self, now: Instant, delivered_upto: u64) -> Vec<u64> {
        if delivered_upto <= self.acked_upto {
            return Vec::new();
        }
        self.acked_upto = delivered_upto;
        let rest = match delivered_upto.checked_add(1) {
            Some(next) => self.unacked.split_off(&next),
            None => BTreeMap::new(),
        };
        let done: Vec<u64> = std::mem::replace(&mut self.unacked, rest)
            .into_keys()
            .collect();
        if let Some((c, _)) = self.cursor
            && c <= delivered_upto
        {
            self.cursor = self.unacked.keys().next().map(|&s| (s, 0));
        }
        self.rto = RTO_INITIAL;
        self.deadline = (!self.unacked.is_empty()).then(|| now + self.rto);
        done
    }

    /// Sends every unacknowledged message again from the first (a fresh session).
    pub fn rewind(&mut self) {
        self.cursor = self.unacked.keys().next().map(|&s| (s, 0));
    }

    /// True if some fragment waits to be (re)sent.
    pub fn has_pending(&self) -> bool {
        self.cursor.is_some()
    }

    /// Writes as many whole fragments as fit into `w`; returns how many it wrote.
    pub fn fill(&mut self, now: Instant, w: &mut FrameWriter) -> usize {
        let mut n = 0;
        while let Some((seq, idx)) = self.cursor {
            let Some(m) = self.unacked.get(&seq) else {
                self.cursor = self.next_after(seq);
                continue;
            };
            let chunk = fragment(&m.encoded, idx);
            if !w.msg(seq, idx, m.frag_count, chunk) {
                break;
            }
            n += 1;
            self.cursor = if idx + 1 < m.frag_count {
                Some((seq, idx + 1))
            } else {
                self.next_after(seq)
            };
        }
        if n > 0 && self.deadline.is_none() {
            self.deadline = Some(now + self.rto);
        }
        n
    }

    fn next_after(&self, seq: u64) -> Option<(u64, u32)> {
        self.unacked
            .range((Excluded(seq), Unbounded))
            .next()
            .map(|(&s, _)| (s, 0))
    }

    /// The path to the peer came back after a stall: send everything unacknowledged now and
    /// restart the retransmission timer from its initial value.
    pub fn kick(&mut self, now: Instant) {
        if self.unacked.is_empty() {
            return;
        }
        self.rewind();
        self.rto = RTO_INITIAL;
        self.deadline = Some(now + self.rto);
    }

    /// When [`Sender::handle_timeout`] should run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// Retransmission timeout: rewind and back off. True if it fired.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        match self.deadline {
            Some(d) if d <= now => {
                if self.unacked.is_empty() {
                    self.deadline = None;
                    return false;
                }
                self.rewind();
                self.rto = (self.rto * 2).min(RTO_MAX);
                self.deadline = Some(now + self.rto);
                true
            }
            _ => false,
        }
    }
}

/// What a fragment did.
#[derive(Debug, PartialEq, Eq)]
pub enum FragmentOutcome {
    /// Already stored: re-ack, do not deliver again.
    Duplicate,
    /// Kept; more fragments needed.
    Incomplete,
    /// The message is complete: store it, then call [`Receiver::mark_stored`].
    Complete {
        /// Its seq.
        seq: u64,
        /// The encoded message content.
        encoded: Vec<u8>,
    },
    /// Dropped (too far ahead or over the memory bound); the sender will resend it.
    Dropped,
}

/// The peer broke fragmentation rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("inconsistent message fragments")]
pub struct FragmentError;

#[derive(Debug)]
struct Partial {
    frag_count: u32,
    frags: BTreeMap<u32, Vec<u8>>,
    bytes: usize,
}

/// How many digests of delivered messages a [`Receiver`] remembers (24 bytes each).
pub const RECENT_DIGESTS: usize = 1024;

/// The receiving half of delivery for one contact.
#[derive(Debug)]
pub struct Receiver {
    delivered_upto: u64,
    delivered_digest: [u8; MSG_DIGEST_LEN],
    /// Digests of complete messages above `delivered_upto` (stored ahead, or being stored).
    digests: BTreeMap<u64, [u8; MSG_DIGEST_LEN]>,
    /// Digests of the last [`RECENT_DIGESTS`] messages delivered (below `delivered_upto`):
    /// to notice a sender that reuses their seqs for other messages.
    recent: BTreeMap<u64, [u8; MSG_DIGEST_LEN]>,
    stored_ahead: BTreeSet<u64>,
    pending_store: BTreeSet<u64>,
    partial: BTreeMap<u64, Partial>,
    partial_bytes: usize,
}

impl Receiver {
    /// A receiver that has stored everything up to `delivered_upto` (whose message has
    /// [`msg_digest`] `delivered_digest`; zeros for 0), plus `stored_ahead` (seq, digest).
    pub fn new(
        delivered_upto: u64,
        delivered_digest: [u8; MSG_DIGEST_LEN],
        stored_ahead: impl IntoIterator<Item = (u64, [u8; MSG_DIGEST_LEN])>,
    ) -> Self {
        let digests: BTreeMap<u64, [u8; MSG_DIGEST_LEN]> = stored_ahead
            .into_iter()
            .filter(|&(s, _)| s > delivered_upto)
            .collect();
        Receiver {
            delivered_upto,
            delivered_digest,
            stored_ahead: digests.keys().copied().collect(),
            digests,
            recent: BTreeMap::new(),
            pending_store: BTreeSet::new(),
            partial: BTreeMap::new(),
            partial_bytes: 0,
        }
    }

    /// Highest seq with every seq up to it stored.
    pub fn delivered_upto(&self) -> u64 {
        self.delivered_upto
    }

    /// The [`msg_digest`] of message `delivered_upto` (what an `ACK` names).
    pub fn delivered_digest(&self) -> &[u8; MSG_DIGEST_LEN] {
        &self.delivered_digest
    }

    /// True if `seq` is in durable storage (acknowledged or stored ahead), not merely
    /// reassembled or being stored.
    pub fn is_stored(&self, seq: u64) -> bool {
        seq <= self.delivered_upto || self.stored_ahead.contains(&seq)
    }

    /// True if `seq` was handed out complete and is not durable yet.
    pub fn is_storing(&self, seq: u64) -> bool {
        self.pending_store.contains(&seq)
    }

    /// Bytes held in incomplete messages.
    pub fn buffered_bytes(&self) -> usize {
        self.partial_bytes
    }

    fn have(&self, seq: u64) -> bool {
        seq <= self.delivered_upto
            || self.stored_ahead.contains(&seq)
            || self.pending_store.contains(&seq)
    }

    /// Takes one MSG fragment.
    pub fn on_fragment(
        &mut self,
        seq: u64,
        index: u32,
        count: u32,
        chunk: &[u8],
    ) -> Result<FragmentOutcome, FragmentError> {
        if count == 0 || count > MAX_FRAGMENTS || index >= count || seq == 0 {
            return Err(FragmentError);
        }
        // every fragment but the last is exactly MAX_FRAGMENT bytes; so the total is bounded
        let last = index + 1 == count;
        if (!last && chunk.len() != MAX_FRAGMENT) || chunk.len() > MAX_FRAGMENT {
            return Err(FragmentError);
        }
        if self.have(seq) {
            return Ok(FragmentOutcome::Duplicate);
        }
        if seq > self.delivered_upto.saturating_add(MAX_SEQ_AHEAD) {
            return Ok(FragmentOutcome::Dropped);
        }
        if count == 1 {
            self.pending_store.insert(seq);
            self.digests.insert(seq, msg_digest(chunk));
            return Ok(FragmentOutcome::Complete {
                seq,
                encoded: chunk.to_vec(),
            });
        }
        if let Some(p) = self.partial.get(&seq)
            && p.frag_count != count
        {
            return Err(FragmentError);
        }
        if self.partial_bytes + chunk.len() > MAX_REASSEMBLY_BYTES {
            // make room by dropping the message furthest ahead, unless it is this one
            let furthest = self.partial.keys().next_back().copied();
            match furthest {
                Some(f) if f > seq => {
                    if let Some(p) = self.partial.remove(&f) {
                        self.partial_bytes -= p.bytes;
                    }
                }
                _ => return Ok(FragmentOutcome::Dropped),
            }
            if self.partial_bytes + chunk.len() > MAX_REASSEMBLY_BYTES {
                return Ok(FragmentOutcome::Dropped);
            }
        }
        let p = self.partial.entry(seq).or_insert_with(|| Partial {
            frag_count: count,
            frags: BTreeMap::new(),
            bytes: 0,
        });
        if p.frags.contains_key(&index) {
            return Ok(FragmentOutcome::Incomplete);
        }
        p.frags.insert(index, chunk.to_vec());
        p.bytes += chunk.len();
        self.partial_bytes += chunk.len();
        if p.frags.len() as u32 != p.frag_count {
            return Ok(FragmentOutcome::Incomplete);
        }
        let Some(p) = self.partial.remove(&seq) else {
            return Ok(FragmentOutcome::Incomplete);
        };
        self.partial_bytes -= p.bytes;
        let mut encoded = Vec::with_capacity(p.bytes);
        for (_, f) in p.frags {
            encoded.extend_from_slice(&f);
        }
        self.pending_store.insert(seq);
        self.digests.insert(seq, msg_digest(&encoded));
        Ok(FragmentOutcome::Complete { seq, encoded })
    }

    /// A complete message could not be used (undecodable content): forget it so a resend is
    /// processed again.
    pub fn abandon(&mut self, seq: u64) {
        self.pending_store.remove(&seq);
        self.digests.remove(&seq);
    }

    /// Records that `seq` is durably stored; returns the seqs that became deliverable in
    /// order (from the old `delivered_upto + 1` to the new one).
    pub fn mark_stored(&mut self, seq: u64) -> std::ops::RangeInclusive<u64> {
        self.pending_store.remove(&seq);
        let start = self.delivered_upto.saturating_add(1);
        if seq > self.delivered_upto {
            self.stored_ahead.insert(seq);
        }
        while let Some(next) = self.delivered_upto.checked_add(1)
            && self.stored_ahead.remove(&next)
        {
            if self.delivered_upto > 0 {
                self.recent
                    .insert(self.delivered_upto, self.delivered_digest);
                while self.recent.len() > RECENT_DIGESTS {
                    self.recent.pop_first();
                }
            }
            self.delivered_upto = next;
            if let Some(d) = self.digests.remove(&next) {
                self.delivered_digest = d;
            }
        }
        start..=self.delivered_upto
    }

    /// The digest of the message held under `seq`, if this receiver still knows it (the last
    /// [`RECENT_DIGESTS`] delivered, and those stored ahead or being stored).
    pub fn held_digest(&self, seq: u64) -> Option<[u8; MSG_DIGEST_LEN]> {
        if seq == 0 {
            return None;
        }
        if seq == self.delivered_upto {
            return Some(self.delivered_digest);
        }
        self.digests
            .get(&seq)
            .or_else(|| self.recent.get(&seq))
            .copied()
    }

    /// The `delivered_upto` that results if every seq handed out complete (and not yet
    /// stored) is stored too: what to write in the same transaction as those messages.
    pub fn delivered_upto_if_stored(&self) -> u64 {
        let mut d = self.delivered_upto;
        while let Some(next) = d.checked_add(1)
            && (self.stored_ahead.contains(&next) || self.pending_store.contains(&next))
        {
            d = next;
        }
        d
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use liaison_wire::frame::{Frame, Frames};
    use proptest::prelude::*;

    fn drain(s: &mut Sender, now: Instant) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while s.has_pending() {
            let mut w = FrameWriter::default();
            assert!(s.fill(now, &mut w) > 0);
            out.push(w.finish());
        }
        out
    }

    fn feed(r: &mut Receiver, p: &[u8], stored: &mut Vec<(u64, Vec<u8>)>) {
        for f in Frames::new(p) {
            if let Frame::Msg {
                seq,
                frag_index,
                frag_count,
                chunk,
            } = f.unwrap()
                && let FragmentOutcome::Complete { seq, encoded } =
                    r.on_fragment(seq, frag_index, frag_count, chunk).unwrap()
            {
                r.mark_stored(seq);
                stored.push((seq, encoded));
            }
        }
    }

    #[test]
    fn big_message_fragments_and_reassembles() {
        let now = Instant::now();
        let mut s = Sender::new(0);
        let big: Arc<[u8]> = (0..200_000u32).map(|i| i as u8).collect::<Vec<_>>().into();
        assert_eq!(s.digest(1), None);
        s.push(1, big.clone());
        s.push(2, Arc::from(&b"small"[..]));
        let pts = drain(&mut s, now);
        assert_eq!(pts.len(), 4);
        let mut r = Receiver::new(0, [0; 16], []);
        let mut got = Vec::new();
        for p in pts.iter().rev() {
            feed(&mut r, p, &mut got);
        }
        got.sort();
        assert_eq!(got, vec![(1, big.to_vec()), (2, b"small".to_vec())]);
        assert_eq!(r.delivered_upto(), 2);
        assert_eq!(r.buffered_bytes(), 0);
        // a resend of everything is all duplicates
        s.rewind();
        let mut again = Vec::new();
        for p in drain(&mut s, now) {
            feed(&mut r, &p, &mut again);
        }
        assert!(again.is_empty());
        assert_eq!(s.digest(2), Some(msg_digest(b"small")));
        assert_eq!(s.on_ack(now, 2), vec![1, 2]);
        assert_eq!(s.unacked_count(), 0);
        assert!(!s.has_pending());
    }

    #[test]
    fn an_ack_of_the_largest_seq_does_not_overflow() {
        let now = Instant::now();
        let mut s = Sender::new(0);
        s.push(1, Arc::from(&b"x"[..]));
        s.push(u64::MAX, Arc::from(&b"y"[..]));
        assert_eq!(s.on_ack(now, u64::MAX), vec![1, u64::MAX]);
        assert_eq!(s.unacked_count(), 0);
    }

    #[test]
    fn renumbering_and_reopening() {
        let now = Instant::now();
        let mut s = Sender::new(3);
        s.push(4, Arc::from(&b"a"[..]));
        s.push(5, Arc::from(&b"b"[..]));
        let taken = s.take_unacked(9);
        assert_eq!(taken.iter().map(|t| t.0).collect::<Vec<_>>(), vec![4, 5]);
        assert_eq!(s.acked_upto(), 9);
        assert!(!s.has_pending());
        s.push(10, taken[0].1.clone());
        s.push(4, taken[1].1.clone()); // below acked_upto: ignored
        assert_eq!(s.unacked_seqs().collect::<Vec<_>>(), vec![10]);
        s.reopen(2);
        s.push(3, Arc::from(&b"again"[..]));
        assert_eq!(s.unacked_seqs().collect::<Vec<_>>(), vec![3, 10]);
        assert_eq!(s.on_ack(now, 10), vec![3, 10]);
    }

    #[test]
    fn rto_doubles_and_resets() {
        let t0 = Instant::now();
        let mut s = Sender::new(0);
        s.push(1, Arc::from(&b"x"[..]));
        drain(&mut s, t0);
        assert_eq!(s.poll_timeout(), Some(t0 + RTO_INITIAL));
        assert!(!s.handle_timeout(t0));
        assert!(s.handle_timeout(t0 + RTO_INITIAL));
        assert!(s.has_pending());
        drain(&mut s, t0 + RTO_INITIAL);
        assert_eq!(s.poll_timeout(), Some(t0 + RTO_INITIAL * 3));
        let mut t = t0 + RTO_INITIAL * 3;
        for _ in 0..10 {
            assert!(s.handle_timeout(t));
            t = s.poll_timeout().unwrap();
        }
        assert!(s.poll_timeout().unwrap() - t0 <= t - t0 + RTO_MAX);
        s.on_ack(t, 1);
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn receiver_bounds() {
        let mut r = Receiver::new(10, [0; 16], []);
        assert_eq!(r.on_fragment(5, 0, 1, b"x"), Ok(FragmentOutcome::Duplicate));
        assert_eq!(
            r.on_fragment(10 + MAX_SEQ_AHEAD + 1, 0, 1, b"x"),
            Ok(FragmentOutcome::Dropped)
        );
        assert!(
            r.on_fragment(11, 0, 2, b"short").is_err(),
            "non-final fragment must be full"
        );
        assert!(r.on_fragment(11, 2, 2, b"x").is_err());
        let full = vec![0u8; MAX_FRAGMENT];
        assert_eq!(
            r.on_fragment(11, 0, 3, &full),
            Ok(FragmentOutcome::Incomplete)
        );
        assert!(r.on_fragment(11, 1, 4, &full).is_err(), "count changed");
        // memory bound: many partial messages never exceed MAX_REASSEMBLY_BYTES
        for seq in 12..12 + 2000 {
            let _ = r.on_fragment(seq, 0, 2, &full);
            assert!(r.buffered_bytes() <= MAX_REASSEMBLY_BYTES);
        }
    }

    #[test]
    fn out_of_order_storage_delivers_in_order() {
        let mut r = Receiver::new(0, [0; 16], [(3, msg_digest(b"c"))]);
        assert_eq!(r.on_fragment(3, 0, 1, b"c"), Ok(FragmentOutcome::Duplicate));
        assert!(matches!(
            r.on_fragment(2, 0, 1, b"b").unwrap(),
            FragmentOutcome::Complete { seq: 2, .. }
        ));
        assert_eq!(r.delivered_upto_if_stored(), 0);
        assert!(r.mark_stored(2).is_empty());
        assert!(matches!(
            r.on_fragment(1, 0, 1, b"a").unwrap(),
            FragmentOutcome::Complete { seq: 1, .. }
        ));
        assert_eq!(r.delivered_upto_if_stored(), 3);
        assert_eq!(r.mark_stored(1), 1..=3);
        assert_eq!(r.delivered_digest(), &msg_digest(b"c"));
    }

    proptest! {
        /// Whatever loss, duplication and reordering, every message arrives exactly once once
        /// the sender keeps resending what is unacked.
        #[test]
        fn exactly_once_under_chaos(sizes in proptest::collection::vec(0usize..150_000, 1..12),
                                    seed: u64) {
            let now = Instant::now();
            let mut s = Sender::new(0);
            let msgs: Vec<Arc<[u8]>> = sizes.iter().enumerate()
                .map(|(i, &n)| (0..n).map(|j| (i * 7 + j) as u8).collect::<Vec<_>>().into())
                .collect();
            for (i, m) in msgs.iter().enumerate() { s.push(i as u64 + 1, m.clone()); }
            let mut r = Receiver::new(0, [0; 16], []);
            let mut got: Vec<(u64, Vec<u8>)> = Vec::new();
            let mut rng = seed;
            let mut next = || { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; rng };
            for _round in 0..200 {
                if s.unacked_count() == 0 { break; }
                let mut batch = drain(&mut s, now);
                // duplicate some, drop some, shuffle
                let extra: Vec<_> = batch.iter().filter(|_| next() % 4 == 0).cloned().collect();
                batch.extend(extra);
                batch.retain(|_| next() % 3 != 0);
                for i in (1..batch.len()).rev() { let j = (next() as usize) % (i + 1); batch.swap(i, j); }
                for p in &batch { feed(&mut r, p, &mut got); }
                s.on_ack(now, r.delivered_upto());
                s.rewind();
            }
            prop_assert_eq!(s.unacked_count(), 0);
            got.sort_by_key(|g| g.0);
            prop_assert_eq!(got.len(), msgs.len());
            for (i, (seq, body)) in got.iter().enumerate() {
                prop_assert_eq!(*seq, i as u64 + 1);
                prop_assert_eq!(&body[..], &msgs[i][..]);
            }
        }
    }
}
