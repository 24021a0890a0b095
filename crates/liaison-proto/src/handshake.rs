//! The live-session handshake: `Noise_KKpsk2_25519_ChaChaPoly_SHA256` with an ML-KEM-768
//! hybrid psk.
//!
//! ```text
//! prologue = "liaison/1" || "Noise_KKpsk2_25519_ChaChaPoly_SHA256" || "ML-KEM-768"
//!            || id_initiator (32) || id_responder (32)              (Ed25519 identity keys)
//! -> HS_INIT  = 0x01 || sender_idx || msg1      msg1 = e, es, ss + payload ek (1184) || ts (12)
//! <- HS_RESP  = 0x02 || sender_idx || receiver_idx || ct (1088) || msg2
//!                                               msg2 = e, ee, se, psk + payload (inner frames)
//! psk2 = HKDF-SHA256(salt = pairing secret or 32 zero bytes, ikm = ML-KEM shared secret,
//!                    info = "liaison/1 pq-psk" || ek || ct)
//! ```
//! Both statics are pinned from cards, so no static key crosses the wire and a caller whose key
//! was never pinned gets no answer. Message 1 carries no application data (it is replayable
//! and KCI-weak); its TAI64N timestamp lets the responder refuse replays. A [`Session`] can
//! only be built by finishing a handshake.

use crate::keys::{LocalKeys, PeerKeys, RngError, Secret32};
use crate::pq::{self, KemPair};
use crate::session::Session;
use liaison_wire::blob::Blob;
use liaison_wire::consts::*;
use snow::{Builder, HandshakeState};
use std::time::Instant;
use zeroize::Zeroizing;

/// A TAI64N timestamp (8 bytes big-endian TAI64 label, 4 bytes big-endian nanoseconds).
/// Byte order equals time order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Tai64N(pub [u8; TAI64N_LEN]);

impl std::fmt::Debug for Tai64N {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (s, n) = self.parts();
        write!(f, "Tai64N({s}.{n:09})")
    }
}

/// TAI64 label of the unix epoch, as WireGuard computes it (2^62 + 10 leap seconds).
const TAI64_EPOCH: u64 = 0x4000_0000_0000_000a;

impl Tai64N {
    /// From unix time.
    pub fn from_unix(secs: u64, nanos: u32) -> Self {
        let mut b = [0u8; TAI64N_LEN];
        let (s, n) = b.split_at_mut(8);
        s.copy_from_slice(&TAI64_EPOCH.saturating_add(secs).to_be_bytes());
        n.copy_from_slice(&nanos.min(999_999_999).to_be_bytes());
        Tai64N(b)
    }

    fn parts(&self) -> (u64, u32) {
        let mut s = [0u8; 8];
        let mut n = [0u8; 4];
        s.copy_from_slice(self.0.get(..8).unwrap_or(&[0; 8]));
        n.copy_from_slice(self.0.get(8..).unwrap_or(&[0; 4]));
        (u64::from_be_bytes(s), u32::from_be_bytes(n))
    }

    /// One nanosecond later.
    pub fn succ(self) -> Self {
        let (s, n) = self.parts();
        let (s, n) = if n >= 999_999_999 {
            (s.saturating_add(1), 0)
        } else {
            (s, n + 1)
        };
        let mut b = [0u8; TAI64N_LEN];
        let (bs, bn) = b.split_at_mut(8);
        bs.copy_from_slice(&s.to_be_bytes());
        bn.copy_from_slice(&n.to_be_bytes());
        Tai64N(b)
    }

    /// `max(now, last + 1ns)`: strictly after the last one sent even if the clock went back.
    pub fn next_after(now: Tai64N, last: Tai64N) -> Self {
        now.max(last.succ())
    }
}

/// Why a handshake failed. Peers never learn which.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// Noise rejected a message: wrong static key, tampering, or a replayed message 2.
    #[error("handshake message failed to authenticate")]
    Decrypt,
    /// A message of the wrong size or layout.
    #[error("malformed handshake message")]
    Malformed,
    /// The peer's ML-KEM key or ciphertext is invalid.
    #[error("invalid post-quantum key material")]
    InvalidKem,
    /// The answer is for another handshake.
    #[error("handshake response for an unknown index")]
    UnknownIndex,
    /// A local failure (random generator, Noise setup).
    #[error("local handshake failure: {0}")]
    Local(String),
}

impl From<RngError> for HandshakeError {
    fn from(e: RngError) -> Self {
        HandshakeError::Local(e.0)
    }
}

impl From<pq::InvalidKem> for HandshakeError {
    fn from(_: pq::InvalidKem) -> Self {
        HandshakeError::InvalidKem
    }
}

fn prologue(id_initiator: &[u8; 32], id_responder: &[u8; 32]) -> Vec<u8> {
    let mut p = Vec::with_capacity(PROLOGUE_LABEL.len() + NOISE_PARAMS.len() + 10 + 64);
    p.extend_from_slice(PROLOGUE_LABEL);
    p.extend_from_slice(NOISE_PARAMS.as_bytes());
    p.extend_from_slice(PQ_KEM_NAME.as_bytes());
    p.extend_from_slice(id_initiator);
    p.extend_from_slice(id_responder);
    p
}

fn build(
    local: &LocalKeys,
    peer: &PeerKeys,
    initiator: bool,
    fixed_e: Option<&[u8; 32]>,
) -> Result<HandshakeState, HandshakeError> {
    let params = NOISE_PARAMS
        .parse()
        .map_err(|e| HandshakeError::Local(format!("noise params: {e}")))?;
    let prologue = if initiator {
        prologue(&local.identity, &peer.identity)
    } else {
        prologue(&peer.identity, &local.identity)
    };
    let mut b = Builder::new(params)
        .local_private_key(local.noise.secret_bytes())
        .and_then(|b| b.remote_public_key(&peer.noise))
        .and_then(|b| b.prologue(&prologue))
        .map_err(|e| HandshakeError::Local(format!("noise setup: {e}")))?;
    if let Some(e) = fixed_e {
        b = b.fixed_ephemeral_key_for_testing_only(e);
    }
    let hs = if initiator {
        b.build_initiator()
    } else {
        b.build_responder()
    };
    hs.map_err(|e| HandshakeError::Local(format!("noise setup: {e}")))
}

fn psk(pairing: Option<&Secret32>, ss: &Secret32, ek: &[u8], ct: &[u8]) -> Secret32 {
    pq::derive_psk(pairing.map(|p| &**p), ss, PQ_PSK_INFO, &[ek, ct])
}

/// Our outstanding handshake, waiting for message 2. A message 2 that does not authenticate
/// leaves it intact (snow restores its symmetric state on a failed read), so a forged or
/// damaged answer cannot cancel the handshake.
pub struct Initiation {
    /// `None` once a message 2 completed it.
    hs: Option<HandshakeState>,
    kem: KemPair,
    pairing: Option<Secret32>,
    sender_idx: u32,
    ts: Tai64N,
    sent_at: Instant,
    failed: u32,
}

impl std::fmt::Debug for Initiation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initiation")
            .field("sender_idx", &self.sender_idx)
            .field("ts", &self.ts)
            .finish_non_exhaustive()
    }
}

/// Starts a handshake: the initiation state and the `HS_INIT` blob to send.
pub fn initiate(
    local: &LocalKeys,
    peer: &PeerKeys,
    sender_idx: u32,
    ts: Tai64N,
    now: Instant,
) -> Result<(Initiation, Vec<u8>), HandshakeError> {
    initiate_with(local, peer, sender_idx, ts, now, KemPair::generate()?, None)
}

/// [`initiate`] with an explicit ML-KEM key pair and (for test vectors) ephemeral key.
pub fn initiate_with(
    local: &LocalKeys,
    peer: &PeerKeys,
    sender_idx: u32,
    ts: Tai64N,
    now: Instant,
    kem: KemPair,
    fixed_e: Option<&[u8; 32]>,
) -> Result<(Initiation, Vec<u8>), HandshakeError> {
    let mut hs = build(local, peer, true, fixed_e)?;
    let mut payload = Zeroizing::new(Vec::with_capacity(HS_INIT_PAYLOAD_LEN));
    payload.extend_from_slice(kem.ek());
    payload.extend_from_slice(&ts.0);
    let mut msg1 = vec![0u8; HS_MSG1_LEN];
    let n = hs
        .write_message(&payload, &mut msg1)
        .map_err(|e| HandshakeError::Local(format!("writing message 1: {e}")))?;
    if n != HS_MSG1_LEN {
        return Err(HandshakeError::Local(format!("message 1 is {n} bytes")));
    }
    let blob = Blob::HsInit {
        sender_idx,
        msg1: &msg1,
    }
    .to_vec();
    Ok((
        Initiation {
            hs: Some(hs),
            kem,
            pairing: peer.pairing.clone(),
            sender_idx,
            ts,
            sent_at: now,
            failed: 0,
        },
        blob,
    ))
}

impl Initiation {
    /// Our index, which the response must name.
    pub fn sender_idx(&self) -> u32 {
        self.sender_idx
    }

    /// The timestamp in our message 1.
    pub fn ts(&self) -> Tai64N {
        self.ts
    }

    /// When message 1 was sent.
    pub fn sent_at(&self) -> Instant {
        self.sent_at
    }

    /// Message 2s refused so far (forged, damaged, or for another pairing secret).
    pub fn failed_responses(&self) -> u32 {
        self.failed
    }

    /// Processes `HS_RESP`: the confirmed session and message 2's payload. On success the
    /// initiation is spent (drop it); on any error it is left as it was, waiting for the
    /// genuine answer, and [`Initiation::failed_responses`] counts the refusal.
    pub fn finish(
        &mut self,
        resp_sender_idx: u32,
        receiver_idx: u32,
        ct: &[u8],
        msg2: &[u8],
        now: Instant,
    ) -> Result<(Session, Zeroizing<Vec<u8>>), HandshakeError> {
        if receiver_idx != self.sender_idx {
            return Err(HandshakeError::UnknownIndex);
        }
        let r = self.try_finish(resp_sender_idx, ct, msg2, now);
        if r.is_err() {
            self.failed = self.failed.saturating_add(1);
        }
        r
    }

    fn try_finish(
        &mut self,
        resp_sender_idx: u32,
        ct: &[u8],
        msg2: &[u8],
        now: Instant,
    ) -> Result<(Session, Zeroizing<Vec<u8>>), HandshakeError> {
        if ct.len() != MLKEM_CT_LEN || !(HS_MSG2_MIN_LEN..=HS_MSG2_MAX_LEN).contains(&msg2.len()) {
            return Err(HandshakeError::Malformed);
        }
        let hs = self
            .hs
            .as_mut()
            .ok_or_else(|| HandshakeError::Local("handshake already finished".into()))?;
        let ss = self.kem.decapsulate(ct)?;
        let psk = psk(self.pairing.as_ref(), &ss, self.kem.ek(), ct);
        hs.set_psk(2, psk.as_slice())
            .map_err(|e| HandshakeError::Local(format!("psk: {e}")))?;
        let mut payload = Zeroizing::new(vec![0u8; msg2.len()]);
        // a refused message 2 leaves the state as it was (snow restores its checkpoint)
        let n = hs
            .read_message(msg2, &mut payload)
            .map_err(|_| HandshakeError::Decrypt)?;
        payload.truncate(n);
        let hs = self
            .hs
            .take()
            .ok_or_else(|| HandshakeError::Local("handshake already finished".into()))?;
        let session = Session::from_handshake(hs, self.sender_idx, resp_sender_idx, now)?;
        Ok((session, payload))
    }
}

/// A message 1 that authenticated, waiting for the caller to check and persist its timestamp
/// before [`IncomingInit::reply`].
pub struct IncomingInit {
    hs: HandshakeState,
    ek: Box<[u8; MLKEM_EK_LEN]>,
    ts: Tai64N,
    initiator_idx: u32,
    pairing: Option<Secret32>,
}

impl std::fmt::Debug for IncomingInit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingInit")
            .field("initiator_idx", &self.initiator_idx)
            .field("ts", &self.ts)
            .finish_non_exhaustive()
    }
}

/// Reads message 1 from `peer`. Fails (and nothing should be answered) unless it was made by
/// the pinned peer for us.
pub fn read_init(
    local: &LocalKeys,
    peer: &PeerKeys,
    sender_idx: u32,
    msg1: &[u8],
) -> Result<IncomingInit, HandshakeError> {
    read_init_with(local, peer, sender_idx, msg1, None)
}

/// [`read_init`] with a fixed ephemeral key for the reply (test vectors only).
pub fn read_init_with(
    local: &LocalKeys,
    peer: &PeerKeys,
    sender_idx: u32,
    msg1: &[u8],
    fixed_e: Option<&[u8; 32]>,
) -> Result<IncomingInit, HandshakeError> {
    if msg1.len() != HS_MSG1_LEN {
        return Err(HandshakeError::Malformed);
    }
    let mut hs = build(local, peer, false, fixed_e)?;
    let mut payload = Zeroizing::new(vec![0u8; HS_MSG1_LEN]);
    let n = hs
        .read_message(msg1, &mut payload)
        .map_err(|_| HandshakeError::Decrypt)?;
    if n != HS_INIT_PAYLOAD_LEN {
        return Err(HandshakeError::Malformed);
    }
    payload.truncate(n);
    let (ek_bytes, ts_bytes) = payload.split_at(MLKEM_EK_LEN);
    pq::validate_ek(ek_bytes)?;
    let mut ek = Box::new([0u8; MLKEM_EK_LEN]);
    ek.copy_from_slice(ek_bytes);
    let mut ts = [0u8; TAI64N_LEN];
    ts.copy_from_slice(ts_bytes);
    Ok(IncomingInit {
        hs,
        ek,
        ts: Tai64N(ts),
        initiator_idx: sender_idx,
        pairing: peer.pairing.clone(),
    })
}

impl IncomingInit {
    /// The initiator's timestamp: accept only if newer than the last accepted from this peer.
    pub fn ts(&self) -> Tai64N {
        self.ts
    }

    /// The initiator's index.
    pub fn initiator_idx(&self) -> u32 {
        self.initiator_idx
    }

    /// Answers: the (unconfirmed) responder session and the `HS_RESP` blob.
    pub fn reply(
        self,
        my_idx: u32,
        payload: &[u8],
        now: Instant,
    ) -> Result<(Session, Vec<u8>), HandshakeError> {
        let (ct, ss) = pq::encapsulate(&self.ek[..])?;
        self.reply_with(my_idx, payload, now, &ct, &ss)
    }

    /// [`IncomingInit::reply`] with deterministic ML-KEM encapsulation (test vectors only).
    #[cfg(any(test, feature = "test-vectors"))]
    pub fn reply_deterministic(
        self,
        my_idx: u32,
        payload: &[u8],
        now: Instant,
        m: &[u8; 32],
    ) -> Result<(Session, Vec<u8>), HandshakeError> {
        let (ct, ss) = pq::encapsulate_deterministic(&self.ek[..], m)?;
        self.reply_with(my_idx, payload, now, &ct, &ss)
    }

    fn reply_with(
        mut self,
        my_idx: u32,
        payload: &[u8],
        now: Instant,
        ct: &[u8; MLKEM_CT_LEN],
        ss: &Secret32,
    ) -> Result<(Session, Vec<u8>), HandshakeError> {
        if payload.len() > MAX_HS_RESP_PAYLOAD {
            return Err(HandshakeError::Local("message 2 payload too large".into()));
        }
        let psk = psk(self.pairing.as_ref(), ss, &self.ek[..], ct);
        self.hs
            .set_psk(2, psk.as_slice())
            .map_err(|e| HandshakeError::Local(format!("psk: {e}")))?;
        let mut msg2 = vec![0u8; HS_MSG2_MIN_LEN + payload.len()];
        let n = self
            .hs
            .write_message(payload, &mut msg2)
            .map_err(|e| HandshakeError::Local(format!("writing message 2: {e}")))?;
        msg2.truncate(n);
        let blob = Blob::HsResp {
            sender_idx: my_idx,
            receiver_idx: self.initiator_idx,
            ct,
            msg2: &msg2,
        }
        .to_vec();
        let session = Session::from_handshake(self.hs, my_idx, self.initiator_idx, now)?;
        Ok((session, blob))
    }
}
