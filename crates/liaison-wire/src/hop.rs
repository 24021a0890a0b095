//! Hop frames: what travels on the QUIC stream of a hop (node to node, or node to relay).
//!
//! ```text
//! hop frame = len u32le || type u8 || body        (len counts type + body, ≤ MAX_HOP_FRAME_LEN)
//! HELLO     0x04  version u8                       client → server, first frame of the stream
//! READY     0x01  version u8                       server → client: the hop is accepted
//! BLOB      0x02  blob                             direct line, both ways
//! ERR       0x03  code u16le || ref (16)           either way; ref = envelope id or zeros
//! SUBSCRIBE 0x10  count u16le || inbox (16) × count            node → relay
//! POST      0x11  dst inbox (16) || store u8 || blob           node → relay
//! DELIVER   0x12  inbox (16) || envelope_id (16) || blob       relay → node
//! ACK       0x13  envelope_id (16)                             both ways (see docs/relay.md)
//! ```
//! The envelope id of a blob is `SHA-256(blob)[..16]`, computed by whoever needs it; for a
//! live (`store = 0`) delivery the relay sends zeros.

use crate::consts::*;

/// Hop frame types.
pub mod ty {
    /// The server accepted the hop.
    pub const READY: u8 = 0x01;
    /// A blob on a direct line.
    pub const BLOB: u8 = 0x02;
    /// An error.
    pub const ERR: u8 = 0x03;
    /// The client opens the stream.
    pub const HELLO: u8 = 0x04;
    /// Subscribe to inboxes.
    pub const SUBSCRIBE: u8 = 0x10;
    /// Post a blob to an inbox.
    pub const POST: u8 = 0x11;
    /// A blob for a subscribed inbox.
    pub const DELIVER: u8 = 0x12;
    /// An envelope is stored (relay → node) or may be deleted (node → relay).
    pub const ACK: u8 = 0x13;
}

/// Error codes in ERR frames. Coarse on purpose.
pub mod err {
    /// The frame was malformed.
    pub const MALFORMED: u16 = 1;
    /// No live subscriber for a `store = 0` post.
    pub const NO_SUBSCRIBER: u16 = 2;
    /// The destination's queue is full.
    pub const QUOTA: u16 = 3;
    /// Too large.
    pub const TOO_LARGE: u16 = 4;
    /// Too many requests.
    pub const RATE_LIMITED: u16 = 5;
    /// The hop key is not allowed.
    pub const NOT_ALLOWED: u16 = 6;
    /// The server is shutting down.
    pub const SHUTTING_DOWN: u16 = 7;
    /// A local failure at the server.
    pub const INTERNAL: u16 = 8;
    /// The caller is not a pinned contact, or the line is refused.
    pub const REFUSED: u16 = 9;

    /// A short human name for a code.
    pub fn name(code: u16) -> &'static str {
        match code {
            MALFORMED => "malformed",
            NO_SUBSCRIBER => "no subscriber",
            QUOTA => "quota exceeded",
            TOO_LARGE => "too large",
            RATE_LIMITED => "rate limited",
            NOT_ALLOWED => "not allowed",
            SHUTTING_DOWN => "shutting down",
            INTERNAL => "internal error",
            REFUSED => "refused",
            _ => "unknown error",
        }
    }
}

/// A 16-byte inbox id.
pub type InboxId = [u8; INBOX_ID_LEN];
/// A 16-byte envelope id.
pub type EnvelopeId = [u8; ENVELOPE_ID_LEN];

/// A parsed hop frame borrowing from its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HopFrame<'a> {
    /// The client's first frame.
    Hello {
        /// Client's protocol version.
        version: u8,
    },
    /// The hop is accepted.
    Ready {
        /// Server's protocol version.
        version: u8,
    },
    /// A blob on a direct line.
    Blob(&'a [u8]),
    /// An error.
    Err {
        /// See [`err`].
        code: u16,
        /// The envelope id the error is about, or zeros.
        reference: EnvelopeId,
    },
    /// Subscribe to inboxes (raw `count × 16` bytes; iterate with [`inboxes`]).
    Subscribe(&'a [u8]),
    /// Post a blob.
    Post {
        /// Destination inbox.
        dst: InboxId,
        /// 1: store durably and ACK; 0: live subscribers only.
        store: bool,
        /// The blob.
        blob: &'a [u8],
    },
    /// Deliver a blob.
    Deliver {
        /// The inbox it was posted to.
        inbox: InboxId,
        /// Its envelope id (zeros when not stored).
        envelope_id: EnvelopeId,
        /// The blob.
        blob: &'a [u8],
    },
    /// Envelope acknowledgement.
    Ack {
        /// The envelope.
        envelope_id: EnvelopeId,
    },
}

/// Why bytes are not a hop frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HopError {
    /// Length prefix over [`MAX_HOP_FRAME_LEN`] or zero.
    #[error("hop frame length {0} out of bounds")]
    BadLength(usize),
    /// Unknown type byte.
    #[error("unknown hop frame type {0:#04x}")]
    UnknownType(u8),
    /// Body of the wrong size for its type.
    #[error("malformed hop frame of type {0:#04x}")]
    Malformed(u8),
}

/// Checks a length prefix before anything is read or allocated.
pub fn check_len(len: u32) -> Result<usize, HopError> {
    let len = len as usize;
    if len == 0 || len > MAX_HOP_FRAME_LEN {
        return Err(HopError::BadLength(len));
    }
    Ok(len)
}

fn id16(b: &[u8]) -> Option<[u8; 16]> {
    b.get(..16).and_then(|s| <[u8; 16]>::try_from(s).ok())
}

impl<'a> HopFrame<'a> {
    /// Parses `type || body` (the bytes after the length prefix).
    pub fn parse(frame: &'a [u8]) -> Result<Self, HopError> {
        let (&t, body) = frame.split_first().ok_or(HopError::BadLength(0))?;
        let bad = HopError::Malformed(t);
        let blob_ok = |b: &[u8]| !b.is_empty() && b.len() <= MAX_BLOB_LEN;
        match t {
            ty::READY => match body {
                [v] => Ok(HopFrame::Ready { version: *v }),
                _ => Err(bad),
            },
            ty::HELLO => match body {
                [v] => Ok(HopFrame::Hello { version: *v }),
                _ => Err(bad),
            },
            ty::BLOB => {
                if !blob_ok(body) {
                    return Err(bad);
                }
                Ok(HopFrame::Blob(body))
            }
            ty::ERR => {
                if body.len() != 18 {
                    return Err(bad);
                }
                let code =
                    u16::from_le_bytes([*body.first().ok_or(bad)?, *body.get(1).ok_or(bad)?]);
                Ok(HopFrame::Err {
                    code,
                    reference: id16(body.get(2..).ok_or(bad)?).ok_or(bad)?,
                })
            }
            ty::SUBSCRIBE => {
                let n = u16::from_le_bytes([*body.first().ok_or(bad)?, *body.get(1).ok_or(bad)?])
                    as usize;
                let ids = body.get(2..).ok_or(bad)?;
                if n == 0 || n > MAX_SUBSCRIBE_INBOXES || ids.len() != n * INBOX_ID_LEN {
                    return Err(bad);
                }
                Ok(HopFrame::Subscribe(ids))
            }
            ty::POST => {
                let dst = id16(body).ok_or(bad)?;
                let store = match body.get(16) {
                    Some(0) => false,
                    Some(1) => true,
                    _ => return Err(bad),
                };
                let blob = body.get(17..).ok_or(bad)?;
                if !blob_ok(blob) {
                    return Err(bad);
                }
                Ok(HopFrame::Post { dst, store, blob })
            }
            ty::DELIVER => {
                let inbox = id16(body).ok_or(bad)?;
                let envelope_id = id16(body.get(16..).ok_or(bad)?).ok_or(bad)?;
                let blob = body.get(32..).ok_or(bad)?;
                if !blob_ok(blob) {
                    return Err(bad);
                }
                Ok(HopFrame::Deliver {
                    inbox,
                    envelope_id,
                    blob,
                })
            }
            ty::ACK => {
                if body.len() != 16 {
                    return Err(bad);
                }
                Ok(HopFrame::Ack {
                    envelope_id: id16(body).ok_or(bad)?,
                })
            }
            other => Err(HopError::UnknownType(other)),
        }
    }

    /// Appends `len || type || body` to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0, 0, 0, 0]);
        match *self {
            HopFrame::Ready { version } => out.extend_from_slice(&[ty::READY, version]),
            HopFrame::Hello { version } => out.extend_from_slice(&[ty::HELLO, version]),
            HopFrame::Blob(b) => {
                out.push(ty::BLOB);
                out.extend_from_slice(b);
            }
            HopFrame::Err { code, reference } => {
                out.push(ty::ERR);
                out.extend_from_slice(&code.to_le_bytes());
                out.extend_from_slice(&reference);
            }
            HopFrame::Subscribe(ids) => {
                out.push(ty::SUBSCRIBE);
                out.extend_from_slice(&((ids.len() / INBOX_ID_LEN) as u16).to_le_bytes());
                out.extend_from_slice(ids);
            }
            HopFrame::Post { dst, store, blob } => {
                out.push(ty::POST);
                out.extend_from_slice(&dst);
                out.push(u8::from(store));
                out.extend_from_slice(blob);
            }
            HopFrame::Deliver {
                inbox,
                envelope_id,
                blob,
            } => {
                out.push(ty::DELIVER);
                out.extend_from_slice(&inbox);
                out.extend_from_slice(&envelope_id);
                out.extend_from_slice(blob);
            }
            HopFrame::Ack { envelope_id } => {
                out.push(ty::ACK);
                out.extend_from_slice(&envelope_id);
            }
        }
        let len = (out.len() - start - 4) as u32;
        if let Some(prefix) = out.get_mut(start..start + 4) {
            prefix.copy_from_slice(&len.to_le_bytes());
        }
    }

    /// The encoding (with its length prefix) as a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode_into(&mut v);
        v
    }
}

/// The inbox ids in a SUBSCRIBE body.
pub fn inboxes(ids: &[u8]) -> impl Iterator<Item = InboxId> + '_ {
    ids.chunks_exact(INBOX_ID_LEN).filter_map(id16)
}

/// The relay's id of a stored blob: `SHA-256(blob)[..16]`. Relays compute it to dedupe and
/// delete; senders to match the relay's `ACK`/`ERR` to their post.
pub fn envelope_id(blob: &[u8]) -> EnvelopeId {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(blob);
    let mut id = [0u8; ENVELOPE_ID_LEN];
    for (out, b) in id.iter_mut().zip(digest.iter()) {
        *out = *b;
    }
    id
}

/// How a blob reaches the peer: the hop frame that carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// On a direct hop to the peer: `BLOB(blob)`.
    Direct,
    /// Through a relay: `POST(dst, store, blob)`.
    Relay {
        /// The peer's inbox at the relay.
        dst: InboxId,
        /// Store durably (sealed envelopes) or forward to a live subscriber only.
        store: bool,
    },
}

impl Route {
    /// Bytes of the hop frame before the blob (length prefix included).
    pub const fn header_len(self) -> usize {
        match self {
            Route::Direct => HOP_HEADER_LEN,
            Route::Relay { .. } => HOP_HEADER_LEN + INBOX_ID_LEN + 1,
        }
    }
}

/// One hop frame carrying a blob, built in place: the header is written first, the blob is
/// appended to [`BlobFrame::buf`] (sealing straight into it saves a copy), and
/// [`BlobFrame::finish`] fixes the length prefix. The only way the node, the engine and the
/// bench frame blobs.
#[derive(Debug)]
pub struct BlobFrame {
    buf: Vec<u8>,
}

impl BlobFrame {
    /// A frame for `route` with room for a blob of `blob_capacity` bytes.
    pub fn new(route: Route, blob_capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(route.header_len() + blob_capacity);
        buf.extend_from_slice(&[0; 4]);
        match route {
            Route::Direct => buf.push(ty::BLOB),
            Route::Relay { dst, store } => {
                buf.push(ty::POST);
                buf.extend_from_slice(&dst);
                buf.push(u8::from(store));
            }
        }
        BlobFrame { buf }
    }

    /// The frame so far; append the blob.
    pub fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// The encoded hop frame, length prefix set.
    pub fn finish(mut self) -> Vec<u8> {
        let len = (self.buf.len().saturating_sub(4)) as u32;
        if let Some(p) = self.buf.get_mut(..4) {
            p.copy_from_slice(&len.to_le_bytes());
        }
        self.buf
    }

    /// A frame carrying a copy of `blob`.
    pub fn with_blob(route: Route, blob: &[u8]) -> Vec<u8> {
        let mut f = BlobFrame::new(route, blob.len());
        f.buf.extend_from_slice(blob);
        f.finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;

    fn round(f: HopFrame) {
        let v = f.to_vec();
        let len = check_len(u32::from_le_bytes(v[..4].try_into().unwrap())).unwrap();
        assert_eq!(len, v.len() - 4);
        assert_eq!(HopFrame::parse(&v[4..]).unwrap(), f);
    }

    #[test]
    fn blob_frames_match_the_encoder() {
        let blob = [3u8; 40];
        assert_eq!(
            BlobFrame::with_blob(Route::Direct, &blob),
            HopFrame::Blob(&blob).to_vec()
        );
        for store in [false, true] {
            let route = Route::Relay {
                dst: [9; 16],
                store,
            };
            let mut f = BlobFrame::new(route, blob.len());
            assert_eq!(f.buf().len(), route.header_len());
            f.buf().extend_from_slice(&blob);
            assert_eq!(
                f.finish(),
                HopFrame::Post {
                    dst: [9; 16],
                    store,
                    blob: &blob
                }
                .to_vec()
            );
        }
        assert_eq!(
            hex::encode(envelope_id(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223"
        );
    }

    #[test]
    fn golden_and_round_trips() {
        assert_eq!(
            hex::encode(HopFrame::Ready { version: 1 }.to_vec()),
            "020000000101"
        );
        round(HopFrame::Ready { version: 1 });
        round(HopFrame::Hello { version: 1 });
        round(HopFrame::Blob(&[3; 40]));
        round(HopFrame::Err {
            code: err::NO_SUBSCRIBER,
            reference: [7; 16],
        });
        round(HopFrame::Subscribe(&[1; 32]));
        round(HopFrame::Post {
            dst: [2; 16],
            store: true,
            blob: &[4; 100],
        });
        round(HopFrame::Deliver {
            inbox: [2; 16],
            envelope_id: [5; 16],
            blob: &[4; 100],
        });
        round(HopFrame::Ack {
            envelope_id: [9; 16],
        });
    }

    #[test]
    fn bounds() {
        assert!(check_len(0).is_err());
        assert!(check_len(u32::MAX).is_err());
        assert!(check_len(MAX_HOP_FRAME_LEN as u32).is_ok());
        assert!(HopFrame::parse(&[ty::SUBSCRIBE, 0, 0]).is_err());
        assert!(HopFrame::parse(&[ty::SUBSCRIBE, 2, 0, 1]).is_err());
        assert!(HopFrame::parse(&[ty::BLOB]).is_err());
        assert!(HopFrame::parse(&[0x99]).is_err());
        let mut post = vec![ty::POST];
        post.extend([0; 16]);
        post.push(2);
        post.push(1);
        assert!(HopFrame::parse(&post).is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = HopFrame::parse(&b);
        }

        #[test]
        fn post_round_trip(dst: [u8; 16], store: bool, blob in proptest::collection::vec(any::<u8>(), 1..500)) {
            let f = HopFrame::Post { dst, store, blob: &blob };
            let v = f.to_vec();
            prop_assert_eq!(HopFrame::parse(&v[4..]).unwrap(), f);
        }
    }
}
