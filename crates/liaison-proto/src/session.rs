//! A live session: snow's `StatelessTransportState` with explicit nonces, our own sliding
//! anti-replay window, and the WireGuard age and counter limits.
//!
//! `DATA = 0x03 || receiver_idx u32le || nonce u64le || ChaChaPoly(k, nonce, plaintext)`.
//! Nonces count up from 0 per direction. A receiver accepts a nonce once, and only if it is
//! within [`REPLAY_WINDOW`] of the highest nonce it has authenticated; the window is updated
//! only after the message authenticated. Keys, nonces and windows never leave memory.

use crate::handshake::HandshakeError;
use liaison_wire::blob::write_data_header;
use liaison_wire::consts::*;
use snow::{HandshakeState, StatelessTransportState};
use std::time::{Duration, Instant};

/// Why a session refused to seal or open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// Older than REJECT_AFTER_TIME, or the nonce space is used up.
    #[error("session expired")]
    Expired,
    /// The responder may not send before the initiator confirmed the session.
    #[error("session not confirmed yet")]
    Unconfirmed,
    /// The nonce was already seen or is too old for the window.
    #[error("replayed or too old nonce")]
    Replay,
    /// The ciphertext failed to authenticate.
    #[error("data failed to authenticate")]
    Decrypt,
    /// The plaintext is larger than one Noise message can carry.
    #[error("plaintext too large")]
    TooLarge,
}

const WINDOW_WORDS: usize = (REPLAY_WINDOW as usize).div_ceil(64);

/// A sliding anti-replay bitmap of [`REPLAY_WINDOW`] nonces (RFC 6479 style).
#[derive(Clone)]
pub struct ReplayWindow {
    greatest: Option<u64>,
    bits: Box<[u64; WINDOW_WORDS]>,
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReplayWindow(greatest={:?})", self.greatest)
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            greatest: None,
            bits: Box::new([0; WINDOW_WORDS]),
        }
    }
}

impl ReplayWindow {
    fn slot(n: u64) -> (usize, u64) {
        let bit = n % REPLAY_WINDOW;
        ((bit / 64) as usize, 1u64 << (bit % 64))
    }

    /// True if `n` has not been seen and is not too old.
    pub fn check(&self, n: u64) -> bool {
        if n >= REJECT_AFTER_MESSAGES {
            return false;
        }
        match self.greatest {
            None => true,
            Some(g) if n > g => true,
            Some(g) if g - n >= REPLAY_WINDOW => false,
            Some(_) => {
                let (w, m) = Self::slot(n);
                self.bits.get(w).is_some_and(|word| word & m == 0)
            }
        }
    }

    /// Records `n` as seen (call only after it authenticated and [`ReplayWindow::check`]).
    pub fn mark(&mut self, n: u64) {
        match self.greatest {
            Some(g) if n <= g => {}
            Some(g) => {
                if n - g >= REPLAY_WINDOW {
                    self.bits.fill(0);
                } else {
                    for k in g + 1..n {
                        let (w, m) = Self::slot(k);
                        if let Some(word) = self.bits.get_mut(w) {
                            *word &= !m;
                        }
                    }
                }
                self.greatest = Some(n);
            }
            None => {
                self.greatest = Some(n);
            }
        }
        let (w, m) = Self::slot(n);
        if let Some(word) = self.bits.get_mut(w) {
            *word |= m;
        }
    }
}

/// An established session. Only a finished handshake makes one.
pub struct Session {
    transport: StatelessTransportState,
    local_idx: u32,
    remote_idx: u32,
    initiator: bool,
    created: Instant,
    next_nonce: u64,
    replay: ReplayWindow,
    confirmed: bool,
    handshake_hash: [u8; 32],
    last_sent: Option<Instant>,
    last_received: Option<Instant>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("local_idx", &self.local_idx)
            .field("remote_idx", &self.remote_idx)
            .field("initiator", &self.initiator)
            .field("confirmed", &self.confirmed)
            .field("next_nonce", &self.next_nonce)
            .field("keys", &"[redacted]")
            .finish()
    }
}

impl Session {
    pub(crate) fn from_handshake(
        hs: HandshakeState,
        local_idx: u32,
        remote_idx: u32,
        now: Instant,
    ) -> Result<Self, HandshakeError> {
        let mut handshake_hash = [0u8; 32];
        if let Some(h) = hs.get_handshake_hash().get(..32) {
            handshake_hash.copy_from_slice(h);
        }
        let initiator = hs.is_initiator();
        let transport = hs
            .into_stateless_transport_mode()
            .map_err(|e| HandshakeError::Local(format!("transport: {e}")))?;
        Ok(Session {
            transport,
            local_idx,
            remote_idx,
            initiator,
            created: now,
            next_nonce: 0,
            replay: ReplayWindow::default(),
            // the initiator has authenticated the responder with message 2; the responder
            // waits for the first DATA (key confirmation)
            confirmed: initiator,
            handshake_hash,
            last_sent: None,
            last_received: None,
        })
    }

    /// Our index (the peer puts it in DATA it sends us).
    pub fn local_idx(&self) -> u32 {
        self.local_idx
    }

    /// The peer's index (we put it in DATA we send).
    pub fn remote_idx(&self) -> u32 {
        self.remote_idx
    }

    /// True if we sent message 1.
    pub fn is_initiator(&self) -> bool {
        self.initiator
    }

    /// True once both sides proved they hold the keys.
    pub fn is_confirmed(&self) -> bool {
        self.confirmed
    }

    /// When the handshake finished here.
    pub fn created(&self) -> Instant {
        self.created
    }

    /// Age of the session.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.created)
    }

    /// The Noise handshake hash (channel binding).
    pub fn handshake_hash(&self) -> &[u8; 32] {
        &self.handshake_hash
    }

    /// Nonces used for sending so far.
    pub fn sent_count(&self) -> u64 {
        self.next_nonce
    }

    /// When we last sent on it.
    pub fn last_sent(&self) -> Option<Instant> {
        self.last_sent
    }

    /// When we last received on it.
    pub fn last_received(&self) -> Option<Instant> {
        self.last_received
    }

    /// True if it may still receive.
    pub fn can_receive(&self, now: Instant) -> bool {
        self.age(now) < REJECT_AFTER_TIME
    }

    /// True if it may still send.
    pub fn can_send(&self, now: Instant) -> bool {
        self.confirmed
            && self.age(now) < REJECT_AFTER_TIME
            && self.next_nonce < REJECT_AFTER_MESSAGES
    }

    /// Encrypts `plaintext` and appends the whole DATA blob to `out`.
    pub fn seal_into(
        &mut self,
        now: Instant,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SessionError> {
        if !self.confirmed {
            return Err(SessionError::Unconfirmed);
        }
        if !self.can_send(now) {
            return Err(SessionError::Expired);
        }
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(SessionError::TooLarge);
        }
        let nonce = self.next_nonce;
        write_data_header(out, self.remote_idx, nonce);
        let start = out.len();
        out.resize(start + plaintext.len() + NOISE_TAG_LEN, 0);
        let dst = out.get_mut(start..).ok_or(SessionError::TooLarge)?;
        match self.transport.write_message(nonce, plaintext, dst) {
            Ok(n) => {
                out.truncate(start + n);
                self.next_nonce += 1;
                self.last_sent = Some(now);
                Ok(())
            }
            Err(_) => {
                out.truncate(start.saturating_sub(DATA_HEADER_LEN));
                Err(SessionError::TooLarge)
            }
        }
    }

    /// Authenticates and decrypts a DATA ciphertext into `out` (cleared first). A responder
    /// session becomes confirmed by the first one that authenticates.
    pub fn open_into(
        &mut self,
        now: Instant,
        nonce: u64,
        ciphertext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SessionError> {
        if !self.can_receive(now) {
            return Err(SessionError::Expired);
        }
        if !self.replay.check(nonce) {
            return Err(SessionError::Replay);
        }
        out.clear();
        out.resize(ciphertext.len(), 0);
        let n = self
            .transport
            .read_message(nonce, ciphertext, out)
            .map_err(|_| SessionError::Decrypt)?;
        out.truncate(n);
        self.replay.mark(nonce);
        self.confirmed = true;
        self.last_received = Some(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn window_basics() {
        let mut w = ReplayWindow::default();
        assert!(w.check(5));
        w.mark(5);
        assert!(!w.check(5));
        assert!(w.check(3));
        w.mark(3);
        assert!(!w.check(3));
        w.mark(5 + REPLAY_WINDOW);
        assert!(!w.check(5), "too old now");
        assert!(!w.check(3));
        assert!(w.check(6 + REPLAY_WINDOW - 1) || 6 + REPLAY_WINDOW - 1 == 5 + REPLAY_WINDOW);
        assert!(w.check(REPLAY_WINDOW + 6));
        assert!(!w.check(REJECT_AFTER_MESSAGES));
    }

    proptest! {
        /// The window accepts a nonce exactly when a reference set model would.
        #[test]
        fn window_matches_model(ops in proptest::collection::vec(0u64..30_000, 1..400)) {
            let mut w = ReplayWindow::default();
            let mut seen = std::collections::BTreeSet::new();
            let mut greatest: Option<u64> = None;
            for n in ops {
                let fresh = !seen.contains(&n);
                let in_window = greatest.is_none_or(|g| n > g || g - n < REPLAY_WINDOW);
                let expect = fresh && in_window;
                prop_assert_eq!(w.check(n), expect, "nonce {}", n);
                if expect {
                    w.mark(n);
                    seen.insert(n);
                    greatest = Some(greatest.map_or(n, |g| g.max(n)));
                }
            }
        }
    }
}
