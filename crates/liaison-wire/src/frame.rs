//! Inner frames: the plaintext inside a DATA blob, a message 2 payload or an envelope.
//!
//! ```text
//! plaintext = frame* [0x00 zero*]            (padded to a PAD_BUCKETS size)
//! frame     = type u8 || len u16le || body[len]
//! MSG       body = seq u64le || frag_index u32le || frag_count u32le || chunk
//! ACK       body = delivered_upto u64le || digest (16)
//! MBOX_KEY  body = MailboxKeyPub (MAILBOX_KEY_PUB_LEN bytes)
//! CARD      body = binary card
//! CLOSE     body = reason u8
//! AUDIT     body = audit message (opaque here)
//! ```
//! A user message is a [`MessageContent`] encoded with the codec, split into chunks of at most
//! [`MAX_FRAGMENT`] bytes, one `MSG` frame per chunk.

use crate::codec::{self, CodecError};
use crate::consts::*;
use serde::{Deserialize, Serialize};

/// One parsed inner frame, borrowing from the plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A fragment of a user message.
    Msg {
        /// Per-contact, per-direction sequence number, from 1.
        seq: u64,
        /// Index of this fragment.
        frag_index: u32,
        /// Number of fragments (1..=MAX_FRAGMENTS).
        frag_count: u32,
        /// Fragment bytes.
        chunk: &'a [u8],
    },
    /// Every message up to and including this seq is durably stored by the sender of the ACK.
    Ack {
        /// Highest contiguous stored seq.
        delivered_upto: u64,
        /// [`msg_digest`] of the stored message `delivered_upto` (zeros for 0).
        digest: [u8; MSG_DIGEST_LEN],
    },

    /// A signed mailbox key (encoded [`crate::card::MailboxKeyPub`]).
    MboxKey(&'a [u8]),
    /// A rotated card (binary form).
    Card(&'a [u8]),
    /// The sender closes the session.
    Close {
        /// Coarse reason code.
        reason: u8,
    },
    /// An audit-log message.
    Audit(&'a [u8]),
}

/// Coarse reasons carried in `CLOSE`.
pub mod close_reason {
    /// Normal end of a call.
    pub const BYE: u8 = 0;
    /// The peer sent something malformed.
    pub const MALFORMED: u8 = 1;
    /// The peer misbehaved (limits, protocol order).
    pub const MISBEHAVING: u8 = 2;
    /// A local failure.
    pub const LOCAL: u8 = 3;
}

/// Why a plaintext was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame extends past the end of the plaintext.
    #[error("truncated frame")]
    Truncated,
    /// An unknown frame type.
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    /// A frame body of the wrong size for its type.
    #[error("bad frame length for type {0:#04x}")]
    BadLength(u8),
    /// Padding that is not all zero.
    #[error("non-zero padding")]
    BadPadding,
    /// Fragment numbers out of range.
    #[error("bad fragment numbering")]
    BadFragment,
}

/// Iterates over the frames of a plaintext; stops at padding.
#[derive(Debug, Clone)]
pub struct Frames<'a> {
    rest: &'a [u8],
}

impl<'a> Frames<'a> {
    /// Starts iterating over `plaintext`.
    pub fn new(plaintext: &'a [u8]) -> Self {
        Frames { rest: plaintext }
    }
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(..8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(..4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (&ty, after) = self.rest.split_first()?;
        if ty == FRAME_PAD {
            let ok = after.iter().all(|&b| b == 0);
            self.rest = &[];
            return if ok {
                None
            } else {
                Some(Err(FrameError::BadPadding))
            };
        }
        let parsed = (|| {
            let len_bytes: [u8; 2] = after
                .get(..2)
                .and_then(|s| s.try_into().ok())
                .ok_or(FrameError::Truncated)?;
            let len = usize::from(u16::from_le_bytes(len_bytes));
            let body = after.get(2..2 + len).ok_or(FrameError::Truncated)?;
            let rest = after.get(2 + len..).ok_or(FrameError::Truncated)?;
            let frame = match ty {
                FRAME_MSG => {
                    if len < MSG_FRAME_HEADER_LEN {
                        return Err(FrameError::BadLength(ty));
                    }
                    let seq = le_u64(body);
                    let frag_index = le_u32(body.get(8..).unwrap_or_default());
                    let frag_count = le_u32(body.get(12..).unwrap_or_default());
                    if seq == 0
                        || frag_count == 0
                        || frag_count > MAX_FRAGMENTS
                        || frag_index >= frag_count
                    {
                        return Err(FrameError::BadFragment);
                    }
                    Frame::Msg {
                        seq,
                        frag_index,
                        frag_count,
                        chunk: body.get(MSG_FRAME_HEADER_LEN..).unwrap_or_default(),
                    }
                }
                FRAME_ACK => {
                    if len != ACK_BODY_LEN {
                        return Err(FrameError::BadLength(ty));
                    }
                    let mut digest = [0u8; MSG_DIGEST_LEN];
                    if let Some(d) = body.get(8..ACK_BODY_LEN) {
                        digest.copy_from_slice(d);
                    }
                    Frame::Ack {
                        delivered_upto: le_u64(body),
                        digest,
                    }
                }
                FRAME_MBOX_KEY => {
                    if len != crate::card::MAILBOX_KEY_PUB_LEN {
                        return Err(FrameError::BadLength(ty));
                    }
                    Frame::MboxKey(body)
                }
                FRAME_CARD => {
                    if len > MAX_CARD_LEN {
                        return Err(FrameError::BadLength(ty));
                    }
                    Frame::Card(body)
                }
                FRAME_CLOSE => match body {
                    [reason] => Frame::Close { reason: *reason },
                    _ => return Err(FrameError::BadLength(ty)),
                },
                FRAME_AUDIT => {
                    if len == 0 {
                        return Err(FrameError::BadLength(ty));
                    }
                    Frame::Audit(body)
                }
                other => return Err(FrameError::UnknownType(other)),
            };
            Ok((frame, rest))
        })();
        match parsed {
            Ok((frame, rest)) => {
                self.rest = rest;
                Some(Ok(frame))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

/// Size of a plaintext of `len` bytes once padded.
pub fn padded_len(len: usize) -> usize {
    PAD_BUCKETS
        .iter()
        .copied()
        .find(|&b| b >= len)
        .unwrap_or(MAX_PLAINTEXT)
}

/// Builds one plaintext: frames appended while they fit, then padding.
#[derive(Debug)]
pub struct FrameWriter {
    buf: Vec<u8>,
    limit: usize,
}

impl Default for FrameWriter {
    fn default() -> Self {
        Self::new(MAX_PLAINTEXT)
    }
}

impl FrameWriter {
    /// A writer for a plaintext of at most `limit` bytes (≤ [`MAX_PLAINTEXT`]).
    pub fn new(limit: usize) -> Self {
        FrameWriter {
            buf: Vec::with_capacity(limit.min(4096)),
            limit: limit.min(MAX_PLAINTEXT),
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when no frame was written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Bytes still free for a frame body after its header.
    pub fn room(&self) -> usize {
        self.limit
            .saturating_sub(self.buf.len())
            .saturating_sub(FRAME_HEADER_LEN)
    }

    fn header(&mut self, ty: u8, len: usize) -> bool {
        if len > self.room() || len > usize::from(u16::MAX) {
            return false;
        }
        self.buf.push(ty);
        self.buf.extend_from_slice(&(len as u16).to_le_bytes());
        true
    }

    /// Appends a MSG frame; false (nothing written) if it does not fit.
    pub fn msg(&mut self, seq: u64, frag_index: u32, frag_count: u32, chunk: &[u8]) -> bool {
        if !self.header(FRAME_MSG, MSG_FRAME_HEADER_LEN + chunk.len()) {
            return false;
        }
        self.buf.extend_from_slice(&seq.to_le_bytes());
        self.buf.extend_from_slice(&frag_index.to_le_bytes());
        self.buf.extend_from_slice(&frag_count.to_le_bytes());
        self.buf.extend_from_slice(chunk);
        true
    }

    /// Appends an ACK frame naming the stored message `delivered_upto` by its digest.
    pub fn ack(&mut self, delivered_upto: u64, digest: &[u8; MSG_DIGEST_LEN]) -> bool {
        if !self.header(FRAME_ACK, ACK_BODY_LEN) {
            return false;
        }
        self.buf.extend_from_slice(&delivered_upto.to_le_bytes());
        self.buf.extend_from_slice(digest);
        true
    }

    /// Appends a frame with an opaque body (MBOX_KEY, CARD, CLOSE, AUDIT).
    pub fn raw(&mut self, ty: u8, body: &[u8]) -> bool {
        if !self.header(ty, body.len()) {
            return false;
        }
        self.buf.extend_from_slice(body);
        true
    }

    /// The plaintext, padded to its bucket.
    pub fn finish(mut self) -> Vec<u8> {
        let target = padded_len(self.buf.len()).min(self.limit.max(self.buf.len()));
        self.buf.resize(target, 0);
        self.buf
    }

    /// Like [`FrameWriter::finish`] but writes into `out` (cleared first), reusing its
    /// allocation.
    pub fn finish_into(self, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.finish());
    }
}

/// The digest `ACK` names a message by: `SHA-256(MSG_DIGEST_CONTEXT || encoded)[..16]`
/// over the message's encoded [`MessageContent`] (the bytes its `MSG` fragments carry).
pub fn msg_digest(encoded: &[u8]) -> [u8; MSG_DIGEST_LEN] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(MSG_DIGEST_CONTEXT);
    h.update(encoded);
    let full = h.finalize();
    let mut d = [0u8; MSG_DIGEST_LEN];
    d.copy_from_slice(full.get(..MSG_DIGEST_LEN).unwrap_or(&[0; MSG_DIGEST_LEN]));
    d
}

/// A user message as carried (fragmented) in MSG frames.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageContent {
    /// [`MSG_KIND_TEXT`] or [`MSG_KIND_FILE`].
    pub kind: u8,
    /// Sender's clock when the message was written, unix milliseconds (information only).
    pub sent_at_ms: u64,
    /// Salt of the audit commitment `SHA-256("liaison/1 msg-commit" || salt || body)`.
    pub salt: [u8; MSG_SALT_LEN],
    /// File name for files (no path separators), `None` for text.
    pub name: Option<String>,
    /// UTF-8 text or file bytes.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// A text message: `body` is UTF-8.
pub const MSG_KIND_TEXT: u8 = 1;
/// A file: `body` is its bytes, `name` its file name.
pub const MSG_KIND_FILE: u8 = 2;

/// Why a message content was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContentError {
    /// Undecodable or over the size limit.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// Fields out of range (kind, UTF-8, file name).
    #[error("invalid message: {0}")]
    Invalid(&'static str),
}

impl MessageContent {
    /// Checks kind, text encoding and file name.
    pub fn validate(&self) -> Result<(), ContentError> {
        if self.body.len() > MAX_MESSAGE_BODY {
            return Err(ContentError::Invalid("body too large"));
        }
        match self.kind {
            MSG_KIND_TEXT => {
                if self.name.is_some() {
                    return Err(ContentError::Invalid("text with a file name"));
                }
                std::str::from_utf8(&self.body)
                    .map_err(|_| ContentError::Invalid("text is not UTF-8"))?;
            }
            MSG_KIND_FILE => {
                let name = self
                    .name
                    .as_deref()
                    .ok_or(ContentError::Invalid("file without a name"))?;
                if !valid_file_name(name) {
                    return Err(ContentError::Invalid("bad file name"));
                }
            }
            _ => return Err(ContentError::Invalid("unknown message kind")),
        }
        Ok(())
    }

    /// Encodes after validating.
    pub fn encode(&self) -> Result<Vec<u8>, ContentError> {
        self.validate()?;
        Ok(codec::encode(self, MAX_MESSAGE_ENCODED)?)
    }

    /// Decodes and validates.
    pub fn decode(bytes: &[u8]) -> Result<Self, ContentError> {
        let c: MessageContent = codec::decode(bytes, MAX_MESSAGE_ENCODED)?;
        c.validate()?;
        Ok(c)
    }
}

/// A file name we accept: 1..=255 bytes, no separators, no control characters, not `.`/`..`.
pub fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_FILE_NAME
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\'])
        && !name.chars().any(char::is_control)
}

/// Number of fragments an encoded message of `len` bytes needs.
pub fn fragment_count(len: usize) -> u32 {
    len.div_ceil(MAX_FRAGMENT).max(1) as u32
}

/// The `index`th fragment of an encoded message.
pub fn fragment(encoded: &[u8], index: u32) -> &[u8] {
    let start = (index as usize).saturating_mul(MAX_FRAGMENT);
    let end = start.saturating_add(MAX_FRAGMENT).min(encoded.len());
    encoded.get(start..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn golden_ack_and_padding() {
        let mut w = FrameWriter::default();
        let d = msg_digest(b"x");
        assert!(w.ack(3, &d));
        let p = w.finish();
        assert_eq!(p.len(), 64);
        assert_eq!(
            hex::encode(&p[..27]),
            format!("0218000300000000000000{}", hex::encode(d))
        );
        assert!(p[27..].iter().all(|&b| b == 0));
        let frames: Vec<_> = Frames::new(&p).collect();
        assert_eq!(
            frames,
            vec![Ok(Frame::Ack {
                delivered_upto: 3,
                digest: d
            })]
        );
        // the digest is SHA-256 over the context and the encoding, truncated
        assert_eq!(hex::encode(msg_digest(b"")), {
            use sha2::{Digest, Sha256};
            hex::encode(&Sha256::digest(MSG_DIGEST_CONTEXT)[..16])
        });
        // an ACK body of the old 8-byte layout is refused
        assert_eq!(
            Frames::new(&[FRAME_ACK, 8, 0, 1, 0, 0, 0, 0, 0, 0, 0]).next(),
            Some(Err(FrameError::BadLength(FRAME_ACK)))
        );
    }

    #[test]
    fn keepalive_is_all_padding() {
        let p = FrameWriter::default().finish();
        assert_eq!(p.len(), 64);
        assert_eq!(Frames::new(&p).count(), 0);
    }

    #[test]
    fn bad_inputs() {
        assert_eq!(
            Frames::new(&[0, 0, 1]).collect::<Vec<_>>(),
            vec![Err(FrameError::BadPadding)]
        );
        assert_eq!(
            Frames::new(&[FRAME_ACK, 9, 0]).collect::<Vec<_>>(),
            vec![Err(FrameError::Truncated)]
        );
        assert_eq!(
            Frames::new(&[0x7f, 0, 0]).collect::<Vec<_>>(),
            vec![Err(FrameError::UnknownType(0x7f))]
        );
        let mut w = FrameWriter::default();
        w.raw(FRAME_MSG, &[0u8; 16]); // seq 0 is invalid
        assert_eq!(
            Frames::new(&w.finish()).next(),
            Some(Err(FrameError::BadFragment))
        );
    }

    #[test]
    fn writer_respects_limit() {
        let mut w = FrameWriter::default();
        let chunk = vec![7u8; MAX_FRAGMENT];
        assert!(w.msg(1, 0, 1, &chunk));
        // a full fragment leaves room for small frames (an ACK) in a DATA plaintext
        assert!(w.ack(1, &[1; 16]));
        let fill = vec![1u8; w.room()];
        assert!(w.raw(FRAME_AUDIT, &fill));
        assert_eq!(w.len(), MAX_PLAINTEXT);
        assert!(!w.ack(2, &[2; 16]));
        let p = w.finish();
        assert_eq!(p.len(), MAX_PLAINTEXT);
        let f: Vec<_> = Frames::new(&p).collect();
        assert_eq!(f.len(), 3);
    }

    #[test]
    fn content_rules() {
        let mut c = MessageContent {
            kind: MSG_KIND_TEXT,
            sent_at_ms: 1,
            salt: [0; 32],
            name: None,
            body: b"hi".to_vec(),
        };
        let enc = c.encode().unwrap();
        assert_eq!(MessageContent::decode(&enc).unwrap(), c);
        c.body = vec![0xff];
        assert!(c.encode().is_err());
        c.kind = MSG_KIND_FILE;
        c.name = Some("../x".into());
        assert!(c.encode().is_err());
        c.name = Some("x.bin".into());
        assert!(c.encode().is_ok());
    }

    #[test]
    fn fragmentation_covers_everything() {
        let data: Vec<u8> = (0..MAX_FRAGMENT * 2 + 5).map(|i| i as u8).collect();
        let n = fragment_count(data.len());
        assert_eq!(n, 3);
        let joined: Vec<u8> = (0..n).flat_map(|i| fragment(&data, i).to_vec()).collect();
        assert_eq!(joined, data);
        assert_eq!(fragment_count(0), 1);
    }

    proptest! {
        #[test]
        fn frames_round_trip(acks in proptest::collection::vec(any::<u64>(), 0..5),
                             seq in 1u64.., chunk in proptest::collection::vec(any::<u8>(), 0..500),
                             audit in proptest::collection::vec(any::<u8>(), 1..100)) {
            let mut w = FrameWriter::default();
            for a in &acks { prop_assert!(w.ack(*a, &[*a as u8; 16])); }
            prop_assert!(w.msg(seq, 0, 1, &chunk));
            prop_assert!(w.raw(FRAME_AUDIT, &audit));
            let p = w.finish();
            prop_assert!(PAD_BUCKETS.contains(&p.len()));
            let got: Vec<_> = Frames::new(&p).collect::<Result<_, _>>().unwrap();
            let mut want: Vec<Frame> = acks.iter().map(|&a| Frame::Ack { delivered_upto: a, digest: [a as u8; 16] }).collect();
            want.push(Frame::Msg { seq, frag_index: 0, frag_count: 1, chunk: &chunk });
            want.push(Frame::Audit(&audit));
            prop_assert_eq!(got, want);
        }

        #[test]
        fn content_round_trip(kind in prop_oneof![Just(MSG_KIND_TEXT), Just(MSG_KIND_FILE)],
                              text in ".{0,200}", at: u64, salt: [u8; 32]) {
            let c = MessageContent {
                kind,
                sent_at_ms: at,
                salt,
                name: (kind == MSG_KIND_FILE).then(|| "f.txt".to_string()),
                body: text.into_bytes(),
            };
            prop_assert_eq!(MessageContent::decode(&c.encode().unwrap()).unwrap(), c);
        }

        #[test]
        fn parser_never_panics(b in proptest::collection::vec(any::<u8>(), 0..3000)) {
            for f in Frames::new(&b) { let _ = f; }
            let _ = MessageContent::decode(&b);
        }
    }
}
