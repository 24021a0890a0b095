//! Sealed mailbox envelopes (design §3.4): offline delivery to a peer who is away, sealed to
//! one of the peer's mailbox keys with `Noise_Kpsk0_25519_ChaChaPoly_SHA256` and an ML-KEM-768
//! psk, and signed by the sender's identity key.
//!
//! ```text
//! ENVELOPE   = 0x04 || key_id (8) || ct (1088) || noise_msg
//! channel_id = SHA-256("liaison/1 channel" || min(id_a, id_b) || max(id_a, id_b))
//! prologue   = "liaison/1 mailbox" || channel_id (32) || key_id (8)               (57 bytes)
//! (ct, ss)   = ML-KEM-768.Encaps(mailbox ek)
//! psk0       = HKDF-SHA256(salt = pairing secret or 32 zero bytes, ikm = ss,
//!                          info = "liaison/1 mailbox-psk" || key_id || ek || ct)
//! Kpsk0:       -> s  <- s  ...  -> psk, e, es, ss
//!              initiator s = sender's Noise static, responder s = mailbox X25519 key
//! noise_msg  = e (32) || AEAD(frames || sig) (|frames| + 64 + 16)
//! frames     = inner frames padded to an ENVELOPE_PAD_BUCKETS size (64 .. 65,423)
//! sig        = Ed25519(sender identity, prologue || e || ct || SHA-256(frames))
//! ```
//! The signature closes Kpsk0's key-compromise impersonation (whoever holds the mailbox secret
//! could otherwise forge envelopes from anyone) and gives the audit log non-repudiation: the
//! recipient can show `(prologue, e, ct, SHA-256(frames), sig)` to a third party
//! ([`verify_envelope_signature`]). It is inside the AEAD, so the relay cannot verify it.
//!
//! [`open`] checks, in this order, before returning any plaintext: the blob layout and that the
//! Noise message length gives a valid padded size; that `key_id` names a retained mailbox key;
//! that `e` is not a low-order point; ML-KEM decapsulation; the Noise message (wrong recipient,
//! wrong sender static, wrong pairing secret and any flipped byte fail here); the signature
//! (`verify_strict`); and that the frames parse with all-zero padding. Errors are coarse.
//!
//! An envelope that was opened once opens again: replays and duplicates are absorbed by the
//! delivery layer (sequence numbers, `delivered_upto`), not here. [`OpenedEnvelope::envelope_id`]
//! is the relay's `SHA-256(blob)[..16]`, for acks by envelope.

use crate::keys::{LocalKeys, PeerKeys, RngError, Secret32, random_secret};
use crate::mailbox_key::MailboxSecret;
use crate::pq;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use liaison_wire::blob::Blob;
use liaison_wire::card::MailboxKeyPub;
use liaison_wire::consts::*;
use liaison_wire::frame::{FrameWriter, Frames};
use ml_kem::Decapsulate;
use sha2::{Digest, Sha256};
use snow::Builder;
use std::fmt;
use zeroize::{Zeroize, Zeroizing};

/// Length of the message the sender's identity key signs:
/// prologue (57) || e (32) || ct (1088) || SHA-256(frames) (32) = 1,209 bytes.
pub const ENVELOPE_SIGNED_LEN: usize = MAILBOX_PROLOGUE_LEN + NOISE_DH_LEN + MLKEM_CT_LEN + 32;

/// Why an envelope could not be sealed or opened. Nothing is ever answered to the sender;
/// the variants are for the local log and anomaly counters.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Not an envelope blob, or lengths out of bounds (malformed).
    #[error("malformed envelope")]
    Malformed,
    /// The envelope is sealed to a mailbox key we do not hold (never had, or already erased).
    #[error("envelope for an unknown or erased mailbox key")]
    UnknownKey,
    /// Decryption or the sender's signature failed: wrong sender, recipient or pairing secret,
    /// or tampering (misbehaving or forged).
    #[error("envelope failed to authenticate")]
    Unauthentic,
    /// The authenticated plaintext is not well-formed inner frames (sender misbehaving), or,
    /// when sealing, the given plaintext is not.
    #[error("envelope plaintext is not well-formed inner frames")]
    BadPlaintext,
    /// The plaintext is longer than [`MAX_ENVELOPE_PLAINTEXT`] (sealing only).
    #[error("plaintext longer than {MAX_ENVELOPE_PLAINTEXT} bytes cannot be sealed")]
    TooLarge,
    /// The recipient's mailbox key cannot be sealed to (invalid ML-KEM key or a low-order
    /// X25519 key) (sealing only).
    #[error("the recipient's mailbox key is unusable")]
    InvalidKey,
    /// A local failure (random generator, Noise setup, inconsistent local keys).
    #[error("local envelope failure: {0}")]
    Local(String),
}

impl From<RngError> for EnvelopeError {
    fn from(e: RngError) -> Self {
        EnvelopeError::Local(e.0)
    }
}

/// `SHA-256("liaison/1 channel" || min(id_a, id_b) || max(id_a, id_b))` (bytewise order of
/// the two Ed25519 identity public keys): the same on both sides.
pub fn channel_id(id_a: &[u8; KEY_LEN], id_b: &[u8; KEY_LEN]) -> [u8; 32] {
    let (lo, hi) = if id_a <= id_b {
        (id_a, id_b)
    } else {
        (id_b, id_a)
    };
    Sha256::new()
        .chain_update(CHANNEL_ID_CONTEXT)
        .chain_update(lo)
        .chain_update(hi)
        .finalize()
        .into()
}

/// `"liaison/1 mailbox" || channel_id || key_id`.
pub fn mailbox_prologue(
    channel_id: &[u8; 32],
    key_id: &[u8; MAILBOX_KEY_ID_LEN],
) -> [u8; MAILBOX_PROLOGUE_LEN] {
    let mut p = [0u8; MAILBOX_PROLOGUE_LEN];
    for (out, b) in p.iter_mut().zip(
        MAILBOX_PROLOGUE_LABEL
            .iter()
            .chain(channel_id.iter())
            .chain(key_id.iter()),
    ) {
        *out = *b;
    }
    p
}

/// The padded size of an envelope plaintext of `len` bytes: the smallest
/// [`ENVELOPE_PAD_BUCKETS`] size that holds it, `None` above [`MAX_ENVELOPE_PLAINTEXT`].
pub fn envelope_padded_len(len: usize) -> Option<usize> {
    ENVELOPE_PAD_BUCKETS.iter().copied().find(|&b| b >= len)
}

/// A frame writer sized for one envelope (at most [`MAX_ENVELOPE_PLAINTEXT`] bytes); its
/// `finish()` pads to an envelope bucket.
pub fn envelope_frame_writer() -> FrameWriter {
    FrameWriter::new(MAX_ENVELOPE_PLAINTEXT)
}

/// The relay's id of a stored blob: `SHA-256(blob)[..16]`.
pub fn envelope_id(blob: &[u8]) -> [u8; ENVELOPE_ID_LEN] {
    let digest = Sha256::digest(blob);
    let mut id = [0u8; ENVELOPE_ID_LEN];
    for (out, b) in id.iter_mut().zip(digest.iter()) {
        *out = *b;
    }
    id
}

/// `prologue || e || ct || frames_hash`, the message the sender's identity key signs.
fn signed_message(
    prologue: &[u8; MAILBOX_PROLOGUE_LEN],
    e: &[u8; NOISE_DH_LEN],
    ct: &[u8; MLKEM_CT_LEN],
    frames_hash: &[u8; 32],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(ENVELOPE_SIGNED_LEN);
    m.extend_from_slice(prologue);
    m.extend_from_slice(e);
    m.extend_from_slice(ct);
    m.extend_from_slice(frames_hash);
    m
}

/// Checks an envelope signature outside the envelope (the audit checker's non-repudiation
/// check): `sender` signed that it sealed frames hashing to `frames_hash` to `recipient`'s
/// mailbox key `key_id`, with ephemeral `e` and ML-KEM ciphertext `ct`.
pub fn verify_envelope_signature(
    sender: &[u8; KEY_LEN],
    recipient: &[u8; KEY_LEN],
    key_id: &[u8; MAILBOX_KEY_ID_LEN],
    e: &[u8; NOISE_DH_LEN],
    ct: &[u8; MLKEM_CT_LEN],
    frames_hash: &[u8; 32],
    signature: &[u8; SIG_LEN],
) -> bool {
    let Ok(vk) = VerifyingKey::from_bytes(sender) else {
        return false;
    };
    let prologue = mailbox_prologue(&channel_id(sender, recipient), key_id);
    vk.verify_strict(
        &signed_message(&prologue, e, ct, frames_hash),
        &Signature::from_bytes(signature),
    )
    .is_ok()
}

fn mailbox_psk(
    pairing: Option<&Secret32>,
    ss: &Secret32,
    key_id: &[u8; MAILBOX_KEY_ID_LEN],
    ek: &[u8],
    ct: &[u8],
) -> Secret32 {
    pq::derive_psk(
        pairing.map(|p| &**p),
        ss,
        MAILBOX_PSK_INFO,
        &[key_id, ek, ct],
    )
}

fn noise_params() -> Result<snow::params::NoiseParams, EnvelopeError> {
    MAILBOX_NOISE_PARAMS
        .parse()
        .map_err(|e| EnvelopeError::Local(format!("noise params: {e}")))
}

/// Seals `plaintext` (inner frames, padded or not; padded here to an envelope bucket) from
/// `local` (Noise static) and `signing` (identity key, whose public key must be
/// `local.identity`) to `peer`'s mailbox key `mailbox`, which the caller has verified
/// (`verify_mailbox_key`, e.g. through `PeerMailboxKeys`). The pairing secret is
/// `peer.pairing`. Returns the `ENVELOPE` blob.
pub fn seal(
    local: &LocalKeys,
    signing: &SigningKey,
    peer: &PeerKeys,
    mailbox: &MailboxKeyPub,
    plaintext: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let frames = prepare(local, signing, mailbox, plaintext)?;
    let (ct, ss) = pq::encapsulate(&mailbox.mlkem_ek.0).map_err(|_| EnvelopeError::InvalidKey)?;
    let e: Secret32 = random_secret()?;
    seal_core(local, signing, peer, mailbox, &frames, &ct, &ss, &e)
}

/// [`seal`] with a fixed Noise ephemeral secret and deterministic ML-KEM encapsulation
/// randomness `m` (FIPS 203 `ML-KEM.Encaps_internal`), for published test vectors only.
#[cfg(any(test, feature = "test-vectors"))]
pub fn seal_with(
    local: &LocalKeys,
    signing: &SigningKey,
    peer: &PeerKeys,
    mailbox: &MailboxKeyPub,
    plaintext: &[u8],
    ephemeral: &[u8; 32],
    m: &[u8; 32],
) -> Result<Vec<u8>, EnvelopeError> {
    let frames = prepare(local, signing, mailbox, plaintext)?;
    let (ct, ss) = pq::encapsulate_deterministic(&mailbox.mlkem_ek.0, m)
        .map_err(|_| EnvelopeError::InvalidKey)?;
    let e = Zeroizing::new(*ephemeral);
    seal_core(local, signing, peer, mailbox, &frames, &ct, &ss, &e)
}

/// The cheap checks before any encapsulation; returns the padded frames.
fn prepare(
    local: &LocalKeys,
    signing: &SigningKey,
    mailbox: &MailboxKeyPub,
    plaintext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    if signing.verifying_key().to_bytes() != local.identity {
        return Err(EnvelopeError::Local(
            "signing key does not match the local identity".into(),
        ));
    }
    let padded = envelope_padded_len(plaintext.len()).ok_or(EnvelopeError::TooLarge)?;
    let mut frames = Zeroizing::new(Vec::with_capacity(padded));
    frames.extend_from_slice(plaintext);
    frames.resize(padded, 0);
    if Frames::new(&frames).any(|f| f.is_err()) {
        return Err(EnvelopeError::BadPlaintext);
    }
    // es and ss must both be contributory; a low-order mailbox key would leave only the psk
    if local.noise.dh(&mailbox.x25519).is_none() {
        return Err(EnvelopeError::InvalidKey);
    }
    Ok(frames)
}

#[allow(clippy::too_many_arguments)]
fn seal_core(
    local: &LocalKeys,
    signing: &SigningKey,
    peer: &PeerKeys,
    mailbox: &MailboxKeyPub,
    frames: &[u8],
    ct: &[u8; MLKEM_CT_LEN],
    ss: &Secret32,
    e_secret: &Secret32,
) -> Result<Vec<u8>, EnvelopeError> {
    let key_id = mailbox.key_id;
    let e_pub = crate::keys::NoiseSecret::from_bytes(**e_secret).public();
    let prologue = mailbox_prologue(&channel_id(&local.identity, &peer.identity), &key_id);
    let frames_hash: [u8; 32] = Sha256::digest(frames).into();
    let sig = signing.sign(&signed_message(&prologue, &e_pub, ct, &frames_hash));

    let psk = mailbox_psk(peer.pairing.as_ref(), ss, &key_id, &mailbox.mlkem_ek.0, ct);
    // The signature covers e, so the ephemeral key is chosen here and handed to snow (its only
    // hook for a caller-chosen ephemeral); it is checked against the message below.
    let mut hs = Builder::new(noise_params()?)
        .local_private_key(local.noise.secret_bytes())
        .and_then(|b| b.remote_public_key(&mailbox.x25519))
        .and_then(|b| b.prologue(&prologue))
        .and_then(|b| b.psk(0, &psk))
        .map(|b| b.fixed_ephemeral_key_for_testing_only(e_secret.as_slice()))
        .and_then(|b| b.build_initiator())
        .map_err(|e| EnvelopeError::Local(format!("noise setup: {e}")))?;

    let mut payload = Zeroizing::new(Vec::with_capacity(frames.len() + SIG_LEN));
    payload.extend_from_slice(frames);
    payload.extend_from_slice(&sig.to_bytes());
    let msg_len = NOISE_DH_LEN + payload.len() + NOISE_TAG_LEN;
    if msg_len > NOISE_MAX_MSG {
        return Err(EnvelopeError::TooLarge);
    }
    let mut blob = Vec::with_capacity(ENVELOPE_HEADER_LEN + msg_len);
    blob.push(BLOB_ENVELOPE);
    blob.extend_from_slice(&key_id);
    blob.extend_from_slice(ct);
    blob.resize(ENVELOPE_HEADER_LEN + msg_len, 0);
    let out = blob
        .get_mut(ENVELOPE_HEADER_LEN..)
        .ok_or_else(|| EnvelopeError::Local("envelope buffer".into()))?;
    let n = hs
        .write_message(&payload, out)
        .map_err(|e| EnvelopeError::Local(format!("writing the envelope: {e}")))?;
    if n != msg_len || out.get(..NOISE_DH_LEN) != Some(e_pub.as_slice()) {
        return Err(EnvelopeError::Local(
            "noise wrote an unexpected envelope".into(),
        ));
    }
    Ok(blob)
}

/// A verified envelope. Only [`open`] makes one.
pub struct OpenedEnvelope {
    frames: Zeroizing<Vec<u8>>,
    frames_hash: [u8; 32],
    signature: [u8; SIG_LEN],
    key_id: [u8; MAILBOX_KEY_ID_LEN],
    ephemeral: [u8; NOISE_DH_LEN],
    ct: Box<[u8; MLKEM_CT_LEN]>,
    envelope_id: [u8; ENVELOPE_ID_LEN],
}

impl OpenedEnvelope {
    /// The padded inner frames (parse with `liaison_wire::frame::Frames`; they are known to
    /// parse).
    pub fn frames(&self) -> &[u8] {
        &self.frames
    }

    /// The frames, by value (wiped on drop).
    pub fn into_frames(self) -> Zeroizing<Vec<u8>> {
        self.frames
    }

    /// `SHA-256(frames)`, as signed.
    pub fn frames_hash(&self) -> &[u8; 32] {
        &self.frames_hash
    }

    /// The sender's identity signature over `prologue || e || ct || SHA-256(frames)`.
    pub fn signature(&self) -> &[u8; SIG_LEN] {
        &self.signature
    }

    /// The mailbox key the envelope was sealed to.
    pub fn key_id(&self) -> &[u8; MAILBOX_KEY_ID_LEN] {
        &self.key_id
    }

    /// The sender's Noise ephemeral public key (`e`).
    pub fn ephemeral(&self) -> &[u8; NOISE_DH_LEN] {
        &self.ephemeral
    }

    /// The ML-KEM-768 ciphertext.
    pub fn ct(&self) -> &[u8; MLKEM_CT_LEN] {
        &self.ct
    }

    /// `SHA-256(blob)[..16]`, the relay's id of this envelope (for acks by envelope).
    pub fn envelope_id(&self) -> &[u8; ENVELOPE_ID_LEN] {
        &self.envelope_id
    }
}

impl fmt::Debug for OpenedEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        f.debug_struct("OpenedEnvelope")
            .field("key_id", &hex(&self.key_id))
            .field("envelope_id", &hex(&self.envelope_id))
            .field("frames", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// Opens an `ENVELOPE` blob from `peer` (its identity key, Noise static and pairing secret:
/// the caller knows the contact from the inbox the blob came in) to us (`local.identity`).
/// `find` returns the retained mailbox secret with a given key id. Every check (module
/// documentation) passes before any plaintext is returned.
pub fn open<'k>(
    local: &LocalKeys,
    peer: &PeerKeys,
    find: impl FnOnce(&[u8; MAILBOX_KEY_ID_LEN]) -> Option<&'k MailboxSecret>,
    blob: &[u8],
) -> Result<OpenedEnvelope, EnvelopeError> {
    // 1. layout and lengths
    let Ok(Blob::Envelope {
        key_id,
        ct,
        noise_msg,
    }) = Blob::parse(blob)
    else {
        return Err(EnvelopeError::Malformed);
    };
    let frames_len = noise_msg
        .len()
        .checked_sub(NOISE_DH_LEN + SIG_LEN + NOISE_TAG_LEN)
        .ok_or(EnvelopeError::Malformed)?;
    if !ENVELOPE_PAD_BUCKETS.contains(&frames_len) {
        return Err(EnvelopeError::Malformed);
    }
    let ct: Box<[u8; MLKEM_CT_LEN]> = Box::new(
        ct.try_into()
            .map_err(|_: std::array::TryFromSliceError| EnvelopeError::Malformed)?,
    );
    let e: [u8; NOISE_DH_LEN] = noise_msg
        .get(..NOISE_DH_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or(EnvelopeError::Malformed)?;

    // 2. a mailbox key we still hold
    let secret = find(&key_id).ok_or(EnvelopeError::UnknownKey)?;
    if secret.key_id() != key_id {
        return Err(EnvelopeError::UnknownKey);
    }
    let mailbox_x = secret.x25519_secret();

    // 3. a contributory ephemeral (a low-order e would make es predictable)
    mailbox_x.dh(&e).ok_or(EnvelopeError::Unauthentic)?;

    // 4. ML-KEM decapsulation (implicit rejection: a forged ct yields an unrelated secret)
    let ss = {
        let mut raw = secret
            .decapsulation_key()
            .decapsulate_slice(&ct[..])
            .map_err(|_| EnvelopeError::Malformed)?;
        let mut out = Zeroizing::new([0u8; 32]);
        for (o, b) in out.iter_mut().zip(raw.iter()) {
            *o = *b;
        }
        raw.as_mut_slice().zeroize();
        out
    };
    let psk = mailbox_psk(
        peer.pairing.as_ref(),
        &ss,
        &key_id,
        &secret.public().mlkem_ek.0,
        &ct[..],
    );

    // 5. Noise Kpsk0
    let prologue = mailbox_prologue(&channel_id(&peer.identity, &local.identity), &key_id);
    let mut hs = Builder::new(noise_params()?)
        .local_private_key(mailbox_x.secret_bytes())
        .and_then(|b| b.remote_public_key(&peer.noise))
        .and_then(|b| b.prologue(&prologue))
        .and_then(|b| b.psk(0, &psk))
        .and_then(|b| b.build_responder())
        .map_err(|e| EnvelopeError::Local(format!("noise setup: {e}")))?;
    let mut payload = Zeroizing::new(vec![0u8; noise_msg.len()]);
    let n = hs
        .read_message(noise_msg, &mut payload)
        .map_err(|_| EnvelopeError::Unauthentic)?;
    if n != frames_len + SIG_LEN {
        return Err(EnvelopeError::Unauthentic);
    }
    let signature: [u8; SIG_LEN] = payload
        .get(frames_len..n)
        .and_then(|s| s.try_into().ok())
        .ok_or(EnvelopeError::Malformed)?;
    payload.truncate(frames_len);
    let frames = payload;

    // 6. the sender's identity signature
    let frames_hash: [u8; 32] = Sha256::digest(&frames[..]).into();
    let vk = VerifyingKey::from_bytes(&peer.identity)
        .map_err(|_| EnvelopeError::Local("the pinned identity key is invalid".into()))?;
    vk.verify_strict(
        &signed_message(&prologue, &e, &ct, &frames_hash),
        &Signature::from_bytes(&signature),
    )
    .map_err(|_| EnvelopeError::Unauthentic)?;

    // 7. well-formed frames
    if Frames::new(&frames).any(|f| f.is_err()) {
        return Err(EnvelopeError::BadPlaintext);
    }

    Ok(OpenedEnvelope {
        frames,
        frames_hash,
        signature,
        key_id,
        ephemeral: e,
        ct,
        envelope_id: envelope_id(blob),
    })
}

#[cfg(test)]
pub(crate) use vectors::envelope_vectors;

#[cfg(test)]
mod vectors {
    //! Fixed-key vectors for `docs/protocol-envelopes.md` (alice = party(0x10), bob =
    //! party(0x20) as in `crate::vectors`).
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use crate::inbox::InboxKeys;
    use crate::keys::NoiseSecret;
    use crate::mailbox_key::StoredMailboxSecret;
    use liaison_wire::codec::Fixed;
    use liaison_wire::frame::{MSG_KIND_TEXT, MessageContent, fragment};

    pub(crate) struct Party {
        pub(crate) sign: SigningKey,
        pub(crate) noise: NoiseSecret,
        pub(crate) mailbox: MailboxSecret,
    }

    impl Party {
        pub(crate) fn local(&self) -> LocalKeys {
            LocalKeys {
                identity: self.sign.verifying_key().to_bytes(),
                noise: self.noise.clone(),
            }
        }

        pub(crate) fn as_peer(&self, pairing: Option<[u8; 32]>) -> PeerKeys {
            PeerKeys {
                identity: self.sign.verifying_key().to_bytes(),
                noise: self.noise.public(),
                pairing: pairing.map(Zeroizing::new),
            }
        }
    }

    /// The parties of `crate::vectors`: identity seed `base+1`, Noise static `base+2`, card
    /// mailbox key X25519 `base+4` and ML-KEM seed `base+5`, `not_after` 1,831,536,000.
    pub(crate) fn party(base: u8) -> Party {
        let sign = SigningKey::from_bytes(&[base + 1; 32]);
        let unsigned = MailboxSecret::from_stored(&StoredMailboxSecret {
            version: 1,
            x25519: Fixed([base + 4; 32]),
            mlkem_seed: Fixed([base + 5; 64]),
            not_after: 1_831_536_000,
            signature: Fixed([0; 64]),
        });
        let sig = sign.sign(&unsigned.public().signed_bytes()).to_bytes();
        let mailbox = MailboxSecret::from_stored(&StoredMailboxSecret {
            version: 1,
            x25519: Fixed([base + 4; 32]),
            mlkem_seed: Fixed([base + 5; 64]),
            not_after: 1_831_536_000,
            signature: Fixed(sig),
        });
        Party {
            sign,
            noise: NoiseSecret::from_bytes([base + 2; 32]),
            mailbox,
        }
    }

    /// ACK(0) + MSG seq 1 "hello, alice", as in `crate::vectors`.
    pub(crate) fn hello_frames() -> Vec<u8> {
        let content = MessageContent {
            kind: MSG_KIND_TEXT,
            sent_at_ms: 1_800_000_000_123,
            salt: [0x5a; MSG_SALT_LEN],
            name: None,
            body: b"hello, alice".to_vec(),
        };
        let enc = content.encode().unwrap();
        let mut w = envelope_frame_writer();
        assert!(w.ack(0, &[0; 16]));
        assert!(w.msg(1, 0, 1, fragment(&enc, 0)));
        w.finish()
    }

    pub(crate) const FIXED_E: [u8; 32] = [0x18; 32];
    pub(crate) const FIXED_M: [u8; 32] = [0x28; 32];
    pub(crate) const EPOCH: u32 = 20_833;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// All envelope-document vectors: (name, lowercase hex).
    pub(crate) fn envelope_vectors() -> Vec<(&'static str, String)> {
        let a = party(0x10);
        let b = party(0x20);
        let (la, lb) = (a.local(), b.local());
        let mut v: Vec<(&'static str, String)> = Vec::new();

        v.push((
            "channel_id_alice_bob",
            hex(&channel_id(&la.identity, &lb.identity)),
        ));
        let ab = InboxKeys::new(&la, &b.as_peer(None)).unwrap();
        let ba = InboxKeys::new(&lb, &a.as_peer(None)).unwrap();
        assert_eq!(ab.send_inbox_at(EPOCH), ba.recv_inbox_at(EPOCH));
        v.push(("inbox_alice_to_bob_20833", hex(&ab.send_inbox_at(EPOCH))));
        v.push(("inbox_bob_to_alice_20833", hex(&ba.send_inbox_at(EPOCH))));

        let mailbox = b.mailbox.public();
        v.push(("bob_card_mailbox_key_id", hex(&mailbox.key_id)));
        let frames = hello_frames();
        v.push(("envelope_frames", hex(&frames)));
        let (ct, ss) = pq::encapsulate_deterministic(&mailbox.mlkem_ek.0, &FIXED_M).unwrap();
        v.push(("envelope_mlkem_ss", hex(&ss[..])));
        for (pairing, names) in [
            (None, ["envelope_psk0", "envelope_alice_to_bob"]),
            (
                Some([0x77u8; 32]),
                ["paired_envelope_psk0", "paired_envelope_alice_to_bob"],
            ),
        ] {
            let psk = mailbox_psk(
                pairing.map(Zeroizing::new).as_ref(),
                &ss,
                &mailbox.key_id,
                &mailbox.mlkem_ek.0,
                &ct[..],
            );
            v.push((names[0], hex(&psk[..])));
            let blob = seal_with(
                &la,
                &a.sign,
                &b.as_peer(pairing),
                mailbox,
                &frames,
                &FIXED_E,
                &FIXED_M,
            )
            .unwrap();
            let opened = open(
                &lb,
                &a.as_peer(pairing),
                |id| (*id == b.mailbox.key_id()).then_some(&b.mailbox),
                &blob,
            )
            .unwrap();
            assert_eq!(opened.frames(), &frames[..]);
            if pairing.is_none() {
                v.push(("envelope_signature", hex(opened.signature())));
            }
            v.push((names[1], hex(&blob)));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::vectors::{FIXED_E, FIXED_M, hello_frames, party};
    use super::*;
    use crate::mailbox_key::verify_mailbox_key;
    use liaison_wire::frame::Frame;
    use proptest::prelude::*;

    struct Setup {
        alice: vectors::Party,
        bob: vectors::Party,
    }

    fn setup() -> Setup {
        Setup {
            alice: party(0x10),
            bob: party(0x20),
        }
    }

    impl Setup {
        fn seal(&self, pt: &[u8]) -> Vec<u8> {
            seal(
                &self.alice.local(),
                &self.alice.sign,
                &self.bob.as_peer(None),
                self.bob.mailbox.public(),
                pt,
            )
            .unwrap()
        }

        fn open(&self, blob: &[u8]) -> Result<OpenedEnvelope, EnvelopeError> {
            open(
                &self.bob.local(),
                &self.alice.as_peer(None),
                |id| (*id == self.bob.mailbox.key_id()).then_some(&self.bob.mailbox),
                blob,
            )
        }
    }

    #[test]
    fn round_trip_and_sizes() {
        let s = setup();
        verify_mailbox_key(
            s.bob.mailbox.public(),
            &s.bob.sign.verifying_key().to_bytes(),
        )
        .unwrap();
        let frames = hello_frames();
        assert_eq!(frames.len(), 128);
        let blob = s.seal(&frames);
        assert_eq!(
            blob.len(),
            ENVELOPE_HEADER_LEN + NOISE_DH_LEN + 128 + SIG_LEN + NOISE_TAG_LEN
        );
        let opened = s.open(&blob).unwrap();
        assert_eq!(opened.frames(), &frames[..]);
        assert_eq!(opened.key_id(), &s.bob.mailbox.key_id());
        assert_eq!(opened.envelope_id(), &envelope_id(&blob));
        assert_eq!(&opened.ct()[..], &blob[9..ENVELOPE_HEADER_LEN]);
        assert_eq!(
            &opened.ephemeral()[..],
            &blob[ENVELOPE_HEADER_LEN..ENVELOPE_HEADER_LEN + 32]
        );
        let f: Vec<_> = Frames::new(opened.frames()).collect();
        assert_eq!(
            f[0],
            Ok(Frame::Ack {
                delivered_upto: 0,
                digest: [0; 16]
            })
        );
        assert!(matches!(f[1], Ok(Frame::Msg { seq: 1, .. })));
        // third-party check of the signature, as the audit checker does it
        let alice_id = s.alice.sign.verifying_key().to_bytes();
        let bob_id = s.bob.sign.verifying_key().to_bytes();
        assert!(verify_envelope_signature(
            &alice_id,
            &bob_id,
            opened.key_id(),
            opened.ephemeral(),
            opened.ct(),
            opened.frames_hash(),
            opened.signature(),
        ));
        assert!(!verify_envelope_signature(
            &bob_id,
            &alice_id,
            opened.key_id(),
            opened.ephemeral(),
            opened.ct(),
            opened.frames_hash(),
            opened.signature(),
        ));
        // fresh randomness every time
        assert_ne!(s.seal(&frames), blob);
        assert!(format!("{opened:?}").contains("[redacted]"));
    }

    #[test]
    fn unpadded_input_is_padded_and_keepalive_is_smallest() {
        let s = setup();
        let blob = s.seal(&[]);
        assert_eq!(
            blob.len() - ENVELOPE_HEADER_LEN,
            MIN_ENVELOPE_NOISE_MSG,
            "an empty plaintext is one 64-byte bucket of padding"
        );
        assert_eq!(s.open(&blob).unwrap().frames(), &[0u8; 64][..]);
        let mut w = FrameWriter::new(1000);
        w.ack(7, &[7; 16]);
        let blob = s.seal(&w.finish()[..11]);
        assert_eq!(s.open(&blob).unwrap().frames().len(), 64);
    }

    #[test]
    fn wrong_recipient_sender_or_pairing_is_refused() {
        let s = setup();
        let carol = party(0x30);
        let blob = s.seal(&hello_frames());
        // carol holds bob's mailbox key id lookup but her own secret: unknown / unauthentic
        let r = open(
            &carol.local(),
            &s.alice.as_peer(None),
            |_| Some(&carol.mailbox),
            &blob,
        );
        assert!(matches!(r, Err(EnvelopeError::UnknownKey)));
        // carol somehow holding bob's mailbox secret still fails: the channel id differs
        let r = open(
            &carol.local(),
            &s.alice.as_peer(None),
            |_| Some(&s.bob.mailbox),
            &blob,
        );
        assert!(matches!(r, Err(EnvelopeError::Unauthentic)));
        // bob expecting carol as the sender (wrong sender static and identity)
        let r = open(
            &s.bob.local(),
            &carol.as_peer(None),
            |_| Some(&s.bob.mailbox),
            &blob,
        );
        assert!(matches!(r, Err(EnvelopeError::Unauthentic)));
        // right identity, wrong sender static
        let mut wrong_static = s.alice.as_peer(None);
        wrong_static.noise = carol.noise.public();
        let r = open(
            &s.bob.local(),
            &wrong_static,
            |_| Some(&s.bob.mailbox),
            &blob,
        );
        assert!(matches!(r, Err(EnvelopeError::Unauthentic)));
        // pairing secret on one side only, or different ones
        let r = open(
            &s.bob.local(),
            &s.alice.as_peer(Some([0x77; 32])),
            |_| Some(&s.bob.mailbox),
            &blob,
        );
        assert!(matches!(r, Err(EnvelopeError::Unauthentic)));
        let paired = seal(
            &s.alice.local(),
            &s.alice.sign,
            &s.bob.as_peer(Some([0x77; 32])),
            s.bob.mailbox.public(),
            &hello_frames(),
        )
        .unwrap();
        assert!(s.open(&paired).is_err());
        for (p, ok) in [([0x77; 32], true), ([0x78; 32], false)] {
            let r = open(
                &s.bob.local(),
                &s.alice.as_peer(Some(p)),
                |_| Some(&s.bob.mailbox),
                &paired,
            );
            assert_eq!(r.is_ok(), ok);
        }
        // no key at all
        let r = open(&s.bob.local(), &s.alice.as_peer(None), |_| None, &blob);
        assert!(matches!(r, Err(EnvelopeError::UnknownKey)));
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let s = setup();
        let blob = s.seal(&hello_frames());
        let mut positions: Vec<usize> = (0..blob.len()).step_by(7).collect();
        positions.extend([0, 1, 8, 9, 1096, 1097, 1128, 1129, blob.len() - 1]);
        for i in positions {
            let mut b = blob.clone();
            b[i] ^= 0x01;
            assert!(s.open(&b).is_err(), "flipped byte {i} was accepted");
        }
        // truncated or extended
        for len in [
            0,
            1,
            9,
            ENVELOPE_HEADER_LEN,
            blob.len() - 1,
            blob.len() - 64,
        ] {
            assert!(s.open(&blob[..len]).is_err(), "truncated to {len}");
        }
        let mut longer = blob.clone();
        longer.push(0);
        assert!(matches!(s.open(&longer), Err(EnvelopeError::Malformed)));
        // other blob kinds
        let mut other = blob.clone();
        other[0] = BLOB_DATA;
        assert!(matches!(s.open(&other), Err(EnvelopeError::Malformed)));
        assert!(s.open(&blob).is_ok());
    }

    #[test]
    fn replay_opens_again() {
        // dedup is the delivery layer's job (seq / delivered_upto), not the envelope's
        let s = setup();
        let blob = s.seal(&hello_frames());
        let a = s.open(&blob).unwrap();
        let b = s.open(&blob).unwrap();
        assert_eq!(a.frames(), b.frames());
        assert_eq!(a.envelope_id(), b.envelope_id());
    }

    #[test]
    fn envelope_signed_by_another_identity_is_refused() {
        // mallory knows alice's Noise static secret (and so passes Noise) but signs with her
        // own identity key: the signature check refuses it.
        let s = setup();
        let mallory = SigningKey::from_bytes(&[0x99; 32]);
        let mut la = s.alice.local();
        la.identity = mallory.verifying_key().to_bytes();
        let peer_bob = s.bob.as_peer(None);
        // sealed under mallory's identity: the prologue's channel id is mallory–bob
        let blob = seal(
            &la,
            &mallory,
            &peer_bob,
            s.bob.mailbox.public(),
            &hello_frames(),
        )
        .unwrap();
        assert!(matches!(s.open(&blob), Err(EnvelopeError::Unauthentic)));
        // sealed with alice's prologue but mallory's signature: build it by hand
        let frames = hello_frames();
        let mailbox = s.bob.mailbox.public();
        let (ct, ss) = pq::encapsulate(&mailbox.mlkem_ek.0).unwrap();
        let e = Zeroizing::new([0x42; 32]);
        let alice_local = s.alice.local();
        let forged = {
            // `seal` refuses a signing key that is not `local.identity`'s, so go around it
            seal_core(
                &alice_local,
                &mallory,
                &peer_bob,
                mailbox,
                &frames,
                &ct,
                &ss,
                &e,
            )
            .unwrap()
        };
        assert!(matches!(s.open(&forged), Err(EnvelopeError::Unauthentic)));
        // and the mismatch is refused when sealing through the public API
        assert!(matches!(
            seal(&alice_local, &mallory, &peer_bob, mailbox, &frames),
            Err(EnvelopeError::Local(_))
        ));
    }

    #[test]
    fn the_mailbox_key_holder_cannot_forge_from_alice() {
        // KCI: bob's mailbox secret lets bob run Noise "as alice" (es and ss are computable
        // from the responder side) — but not sign as alice.
        let s = setup();
        let blob = s.seal(&hello_frames());
        let opened = s.open(&blob).unwrap();
        let mut other = hello_frames();
        other[20] ^= 1;
        let h: [u8; 32] = Sha256::digest(&other).into();
        assert!(!verify_envelope_signature(
            &s.alice.sign.verifying_key().to_bytes(),
            &s.bob.sign.verifying_key().to_bytes(),
            opened.key_id(),
            opened.ephemeral(),
            opened.ct(),
            &h,
            opened.signature(),
        ));
    }

    #[test]
    fn bad_plaintexts_and_keys_are_refused_when_sealing() {
        let s = setup();
        let la = s.alice.local();
        let pb = s.bob.as_peer(None);
        let mk = s.bob.mailbox.public();
        let big = vec![0u8; MAX_ENVELOPE_PLAINTEXT + 1];
        assert!(matches!(
            seal(&la, &s.alice.sign, &pb, mk, &big),
            Err(EnvelopeError::TooLarge)
        ));
        assert!(matches!(
            seal(&la, &s.alice.sign, &pb, mk, &[0x7f, 0, 0]),
            Err(EnvelopeError::BadPlaintext)
        ));
        assert!(matches!(
            seal(&la, &s.alice.sign, &pb, mk, &[0, 0, 1]),
            Err(EnvelopeError::BadPlaintext)
        ));
        let mut low = mk.clone();
        low.x25519 = [0; 32];
        assert!(matches!(
            seal(&la, &s.alice.sign, &pb, &low, &[]),
            Err(EnvelopeError::InvalidKey)
        ));
        let mut bad_ek = mk.clone();
        bad_ek.mlkem_ek.0 = [0xff; MLKEM_EK_LEN];
        assert!(matches!(
            seal(&la, &s.alice.sign, &pb, &bad_ek, &[]),
            Err(EnvelopeError::InvalidKey)
        ));
    }

    #[test]
    fn low_order_ephemeral_is_refused() {
        let s = setup();
        let mut blob = s.seal(&hello_frames());
        blob[ENVELOPE_HEADER_LEN..ENVELOPE_HEADER_LEN + 32].fill(0);
        assert!(matches!(s.open(&blob), Err(EnvelopeError::Unauthentic)));
    }

    #[test]
    fn max_size_payload() {
        let s = setup();
        let mut w = envelope_frame_writer();
        let chunk = vec![0xab; MAX_ENVELOPE_FRAGMENT];
        // the reserved frames first (an ACK and a mailbox key), then a full fragment
        assert!(w.ack(3, &[3; 16]));
        assert!(w.raw(
            FRAME_MBOX_KEY,
            &[0; liaison_wire::card::MAILBOX_KEY_PUB_LEN]
        ));
        assert!(w.msg(9, 0, 1, &chunk));
        assert_eq!(w.room(), 0);
        let frames = w.finish();
        assert_eq!(frames.len(), MAX_ENVELOPE_PLAINTEXT);
        let blob = s.seal(&frames);
        assert_eq!(blob.len(), MAX_BLOB_LEN);
        assert_eq!(blob.len() - ENVELOPE_HEADER_LEN, NOISE_MAX_MSG);
        assert_eq!(s.open(&blob).unwrap().frames(), &frames[..]);
        // one byte more does not fit beside them
        let mut w = envelope_frame_writer();
        assert!(w.ack(3, &[3; 16]));
        assert!(w.raw(
            FRAME_MBOX_KEY,
            &[0; liaison_wire::card::MAILBOX_KEY_PUB_LEN]
        ));
        assert!(!w.msg(9, 0, 1, &vec![0xab; MAX_ENVELOPE_FRAGMENT + 1]));
        // every fragment fits an envelope: live sessions and envelopes share one fragment size
        const { assert!(MAX_FRAGMENT == MAX_ENVELOPE_FRAGMENT) };
        let mut w = envelope_frame_writer();
        assert!(w.msg(9, 0, 1, &vec![0xab; MAX_FRAGMENT]));
    }

    #[test]
    fn bucket_sizes() {
        assert_eq!(MAX_ENVELOPE_PLAINTEXT, 65_423);
        assert_eq!(MAX_ENVELOPE_FRAGMENT, 64_078);
        assert_eq!(ENVELOPE_RESERVED, 1_326);
        assert_eq!(MIN_ENVELOPE_NOISE_MSG, 176);
        assert_eq!(MAILBOX_PROLOGUE_LEN, 57);
        assert_eq!(ENVELOPE_SIGNED_LEN, 1209);
        assert_eq!(envelope_padded_len(0), Some(64));
        assert_eq!(envelope_padded_len(65), Some(128));
        assert_eq!(envelope_padded_len(32_769), Some(MAX_ENVELOPE_PLAINTEXT));
        assert_eq!(envelope_padded_len(MAX_ENVELOPE_PLAINTEXT + 1), None);
        // the FrameWriter pads to the same sizes
        for n in [
            0usize,
            1,
            63,
            64,
            65,
            1000,
            40_000,
            MAX_ENVELOPE_PLAINTEXT - 3,
        ] {
            let mut w = envelope_frame_writer();
            if n >= 3 {
                assert!(w.raw(FRAME_AUDIT, &vec![1; n - 3]));
            }
            assert_eq!(Some(w.finish().len()), envelope_padded_len(n), "{n}");
        }
    }

    #[test]
    fn channel_id_is_symmetric() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        assert_eq!(channel_id(&a, &b), channel_id(&b, &a));
        assert_ne!(channel_id(&a, &b), channel_id(&a, &a));
    }

    #[test]
    fn vectors_are_deterministic() {
        let v = envelope_vectors();
        assert_eq!(v, envelope_vectors());
        let get = |n: &str| v.iter().find(|(k, _)| *k == n).unwrap().1.clone();
        assert_eq!(get("envelope_alice_to_bob").len() / 2, 1337);
        assert_ne!(
            get("envelope_alice_to_bob"),
            get("paired_envelope_alice_to_bob")
        );
        // same e and ct: only the AEAD part differs with a pairing secret
        assert_eq!(
            get("envelope_alice_to_bob")[..2 * (ENVELOPE_HEADER_LEN + 32)],
            get("paired_envelope_alice_to_bob")[..2 * (ENVELOPE_HEADER_LEN + 32)]
        );
        if std::env::var_os("LIAISON_PRINT_VECTORS").is_some() {
            for (n, val) in &v {
                let wrapped: Vec<String> = val
                    .as_bytes()
                    .chunks(96)
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .collect();
                println!("```vector {n}\n{}\n```", wrapped.join("\n"));
            }
        }
        let _ = (FIXED_E, FIXED_M);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn random_plaintexts_round_trip(acks in proptest::collection::vec(any::<u64>(), 0..4),
                                         chunk in proptest::collection::vec(any::<u8>(), 0..3000),
                                         seq in 1u64..u64::MAX) {
            let s = setup();
            let mut w = envelope_frame_writer();
            for a in &acks {
                prop_assert!(w.ack(*a, &[0; 16]));
            }
            prop_assert!(w.msg(seq, 0, 1, &chunk));
            let frames = w.finish();
            let blob = s.seal(&frames);
            let opened = s.open(&blob).unwrap();
            prop_assert_eq!(opened.frames(), &frames[..]);
        }

        #[test]
        fn open_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1400)) {
            let s = setup();
            let mut b = vec![BLOB_ENVELOPE];
            b.extend_from_slice(&s.bob.mailbox.key_id());
            b.extend_from_slice(&bytes);
            prop_assert!(s.open(&b).is_err());
            prop_assert!(s.open(&bytes).is_err());
        }
    }
}
