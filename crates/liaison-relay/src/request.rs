//! What a client may ask of a relay, parsed from one hop frame (sans-IO, fuzzed).
//!
//! A relay accepts `SUBSCRIBE`, `POST` and `ACK` from clients after `HELLO`. Every other
//! frame type, and any frame that does not parse, is a protocol violation: the relay answers
//! `ERR MALFORMED` and closes the connection. The one exception is a well-framed `POST` whose
//! blob is larger than any blob: `ERR TOO_LARGE`, and the connection stays.

use liaison_wire::hop::{self, EnvelopeId, HopError, HopFrame, InboxId};

/// A client's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// Subscribe to inboxes (`count × 16` bytes, 1..=1024 ids).
    Subscribe(&'a [u8]),
    /// Post a blob to an inbox.
    Post {
        /// Destination inbox.
        dst: InboxId,
        /// Store durably (`true`) or forward live only.
        store: bool,
        /// The opaque blob.
        blob: &'a [u8],
    },
    /// The client holds this envelope: delete it.
    Ack {
        /// Which envelope.
        envelope_id: EnvelopeId,
    },
}

/// Why a frame is not a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The frame does not parse.
    #[error(transparent)]
    Malformed(#[from] HopError),
    /// A valid frame a client may not send to a relay.
    #[error("hop frame type {0:#04x} is not a relay request")]
    Unexpected(u8),
    /// A well-formed `POST` whose blob is larger than any blob of the protocol
    /// (`MAX_BLOB_LEN`): answered `ERR TOO_LARGE` with the blob's envelope id, and the
    /// connection stays (the frame was framed correctly).
    #[error("a POST blob of {len} bytes is larger than the protocol's largest blob")]
    TooLarge {
        /// The blob's length.
        len: usize,
        /// `envelope_id` of the blob, for the `ERR`'s reference.
        reference: EnvelopeId,
    },
}

/// Parses `type || body` (the bytes after the length prefix) as a request.
pub fn parse_request(frame: &[u8]) -> Result<Request<'_>, RequestError> {
    if let [hop::ty::POST, body @ ..] = frame
        && let Some(blob) = body.get(17..)
        && matches!(body.get(16), Some(0 | 1))
        && blob.len() > liaison_wire::consts::MAX_BLOB_LEN
    {
        return Err(RequestError::TooLarge {
            len: blob.len(),
            reference: hop::envelope_id(blob),
        });
    }
    match HopFrame::parse(frame)? {
        HopFrame::Subscribe(ids) => Ok(Request::Subscribe(ids)),
        HopFrame::Post { dst, store, blob } => Ok(Request::Post { dst, store, blob }),
        HopFrame::Ack { envelope_id } => Ok(Request::Ack { envelope_id }),
        other => Err(RequestError::Unexpected(frame_type(&other))),
    }
}

fn frame_type(f: &HopFrame<'_>) -> u8 {
    match f {
        HopFrame::Hello { .. } => hop::ty::HELLO,
        HopFrame::Ready { .. } => hop::ty::READY,
        HopFrame::Blob(_) => hop::ty::BLOB,
        HopFrame::Err { .. } => hop::ty::ERR,
        HopFrame::Subscribe(_) => hop::ty::SUBSCRIBE,
        HopFrame::Post { .. } => hop::ty::POST,
        HopFrame::Deliver { .. } => hop::ty::DELIVER,
        HopFrame::Ack { .. } => hop::ty::ACK,
    }
}

/// Splits a byte stream into hop frames (`type || body` slices) the way the relay reads
/// them: each length prefix is checked before anything else. Stops at the first error or at
/// an incomplete frame (returned as the remainder).
pub fn split_frames(mut bytes: &[u8]) -> (Vec<Result<&[u8], HopError>>, &[u8]) {
    let mut out = Vec::new();
    loop {
        let Some((len, rest)) = bytes.split_first_chunk::<4>() else {
            return (out, bytes);
        };
        let n = match hop::check_len(u32::from_le_bytes(*len)) {
            Ok(n) => n,
            Err(e) => {
                out.push(Err(e));
                return (out, &[]);
            }
        };
        let Some((frame, tail)) = rest.split_at_checked(n) else {
            return (out, bytes);
        };
        out.push(Ok(frame));
        bytes = tail;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_oversized_post_is_too_large_not_malformed() {
        let blob = vec![9u8; liaison_wire::consts::MAX_BLOB_LEN + 8];
        let mut frame = vec![hop::ty::POST];
        frame.extend_from_slice(&[4; 16]);
        frame.push(1);
        frame.extend_from_slice(&blob);
        assert_eq!(
            parse_request(&frame),
            Err(RequestError::TooLarge {
                len: blob.len(),
                reference: hop::envelope_id(&blob)
            })
        );
        // the largest blob is a request; a bad store flag is still malformed
        frame.truncate(frame.len() - 8);
        assert!(matches!(parse_request(&frame), Ok(Request::Post { .. })));
        frame.push(0);
        frame[17] = 2;
        assert!(matches!(
            parse_request(&frame),
            Err(RequestError::Malformed(_))
        ));
    }

    #[test]
    fn requests_and_refusals() {
        let post = HopFrame::Post {
            dst: [1; 16],
            store: true,
            blob: b"x",
        }
        .to_vec();
        assert_eq!(
            parse_request(&post[4..]).unwrap(),
            Request::Post {
                dst: [1; 16],
                store: true,
                blob: b"x"
            }
        );
        let sub = HopFrame::Subscribe(&[2; 32]).to_vec();
        assert_eq!(
            parse_request(&sub[4..]).unwrap(),
            Request::Subscribe(&[2; 32])
        );
        let ack = HopFrame::Ack {
            envelope_id: [3; 16],
        }
        .to_vec();
        assert!(matches!(
            parse_request(&ack[4..]).unwrap(),
            Request::Ack { .. }
        ));
        for f in [
            HopFrame::Hello { version: 1 },
            HopFrame::Ready { version: 1 },
            HopFrame::Blob(b"b"),
            HopFrame::Deliver {
                inbox: [0; 16],
                envelope_id: [0; 16],
                blob: b"b",
            },
            HopFrame::Err {
                code: 1,
                reference: [0; 16],
            },
        ] {
            let v = f.to_vec();
            assert!(matches!(
                parse_request(&v[4..]),
                Err(RequestError::Unexpected(_))
            ));
        }
        assert!(matches!(
            parse_request(&[0x77]),
            Err(RequestError::Malformed(_))
        ));
        assert!(parse_request(&[]).is_err());
    }

    #[test]
    fn splitting() {
        let mut s = HopFrame::Ack {
            envelope_id: [3; 16],
        }
        .to_vec();
        s.extend(HopFrame::Subscribe(&[1; 16]).to_vec());
        s.extend([9, 0, 0]);
        let (frames, rest) = split_frames(&s);
        assert_eq!(frames.len(), 2);
        assert_eq!(rest, &[9, 0, 0]);
        let (frames, rest) = split_frames(&[0, 0, 0, 0, 1]);
        assert!(frames[0].is_err());
        assert!(rest.is_empty());
        let max = u32::MAX.to_le_bytes();
        let (frames, _) = split_frames(&max);
        assert!(frames[0].is_err());
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let (frames, _) = split_frames(&bytes);
            for f in frames.into_iter().flatten() {
                let _ = parse_request(f);
            }
            let _ = parse_request(&bytes);
        }
    }
}
