//! Blobs: what a live session or a sealed envelope puts on a hop, identical direct and relayed.
//!
//! ```text
//! HS_INIT  = 0x01 || sender_idx u32le || msg1 (HS_MSG1_LEN)
//! HS_RESP  = 0x02 || sender_idx u32le || receiver_idx u32le || mlkem_ct (1088) || msg2
//! DATA     = 0x03 || receiver_idx u32le || nonce u64le || ciphertext (16..=65535)
//! ENVELOPE = 0x04 || key_id (8) || mlkem_ct (1088) || noise_msg (48..=65535)
//! ```
//! Parsing borrows from the input and checks every length against `consts` first.

use crate::consts::*;

/// A parsed blob borrowing from its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blob<'a> {
    /// Noise message 1.
    HsInit {
        /// Initiator's session index.
        sender_idx: u32,
        /// Noise message 1.
        msg1: &'a [u8],
    },
    /// ML-KEM ciphertext and Noise message 2.
    HsResp {
        /// Responder's session index.
        sender_idx: u32,
        /// The initiator's index this answers.
        receiver_idx: u32,
        /// ML-KEM-768 ciphertext.
        ct: &'a [u8],
        /// Noise message 2.
        msg2: &'a [u8],
    },
    /// Transport data.
    Data {
        /// The receiver's session index.
        receiver_idx: u32,
        /// Explicit Noise nonce.
        nonce: u64,
        /// Noise transport message.
        ciphertext: &'a [u8],
    },
    /// A sealed mailbox envelope.
    Envelope {
        /// Which mailbox key it is sealed to.
        key_id: [u8; MAILBOX_KEY_ID_LEN],
        /// ML-KEM-768 ciphertext to the mailbox key.
        ct: &'a [u8],
        /// `Noise_Kpsk0` message.
        noise_msg: &'a [u8],
    },
}

/// Why bytes are not a blob. Coarse on purpose: details are not sent to peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// Empty input or an unknown kind byte.
    #[error("unknown blob kind")]
    UnknownKind,
    /// A length outside the bounds for its kind.
    #[error("blob length {len} out of bounds for its kind")]
    BadLength {
        /// The offending length.
        len: usize,
    },
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

impl<'a> Blob<'a> {
    /// Parses one blob occupying all of `b`.
    pub fn parse(b: &'a [u8]) -> Result<Self, BlobError> {
        let len = b.len();
        let bad = BlobError::BadLength { len };
        match b.first() {
            Some(&BLOB_HS_INIT) => {
                if len != HS_INIT_BLOB_LEN {
                    return Err(bad);
                }
                Ok(Blob::HsInit {
                    sender_idx: u32_at(b, 1),
                    msg1: b.get(5..).ok_or(bad)?,
                })
            }
            Some(&BLOB_HS_RESP) => {
                let msg2_len = len.checked_sub(HS_RESP_HEADER_LEN).ok_or(bad)?;
                if !(HS_MSG2_MIN_LEN..=HS_MSG2_MAX_LEN).contains(&msg2_len) {
                    return Err(bad);
                }
                Ok(Blob::HsResp {
                    sender_idx: u32_at(b, 1),
                    receiver_idx: u32_at(b, 5),
                    ct: b.get(9..HS_RESP_HEADER_LEN).ok_or(bad)?,
                    msg2: b.get(HS_RESP_HEADER_LEN..).ok_or(bad)?,
                })
            }
            Some(&BLOB_DATA) => {
                let ct_len = len.checked_sub(DATA_HEADER_LEN).ok_or(bad)?;
                if !(NOISE_TAG_LEN..=NOISE_MAX_MSG).contains(&ct_len) {
                    return Err(bad);
                }
                Ok(Blob::Data {
                    receiver_idx: u32_at(b, 1),
                    nonce: u64_at(b, 5),
                    ciphertext: b.get(DATA_HEADER_LEN..).ok_or(bad)?,
                })
            }
            Some(&BLOB_ENVELOPE) => {
                let n_len = len.checked_sub(ENVELOPE_HEADER_LEN).ok_or(bad)?;
                if !(NOISE_DH_LEN + NOISE_TAG_LEN..=NOISE_MAX_MSG).contains(&n_len) {
                    return Err(bad);
                }
                let mut key_id = [0u8; MAILBOX_KEY_ID_LEN];
                key_id.copy_from_slice(b.get(1..1 + MAILBOX_KEY_ID_LEN).ok_or(bad)?);
                Ok(Blob::Envelope {
                    key_id,
                    ct: b
                        .get(1 + MAILBOX_KEY_ID_LEN..ENVELOPE_HEADER_LEN)
                        .ok_or(bad)?,
                    noise_msg: b.get(ENVELOPE_HEADER_LEN..).ok_or(bad)?,
                })
            }
            _ => Err(BlobError::UnknownKind),
        }
    }

    /// Appends the encoding to `out`. Lengths are the caller's responsibility; [`Blob::parse`]
    /// of the result fails if they are out of bounds.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match *self {
            Blob::HsInit { sender_idx, msg1 } => {
                out.push(BLOB_HS_INIT);
                out.extend_from_slice(&sender_idx.to_le_bytes());
                out.extend_from_slice(msg1);
            }
            Blob::HsResp {
                sender_idx,
                receiver_idx,
                ct,
                msg2,
            } => {
                out.push(BLOB_HS_RESP);
                out.extend_from_slice(&sender_idx.to_le_bytes());
                out.extend_from_slice(&receiver_idx.to_le_bytes());
                out.extend_from_slice(ct);
                out.extend_from_slice(msg2);
            }
            Blob::Data {
                receiver_idx,
                nonce,
                ciphertext,
            } => {
                write_data_header(out, receiver_idx, nonce);
                out.extend_from_slice(ciphertext);
            }
            Blob::Envelope {
                key_id,
                ct,
                noise_msg,
            } => {
                out.push(BLOB_ENVELOPE);
                out.extend_from_slice(&key_id);
                out.extend_from_slice(ct);
                out.extend_from_slice(noise_msg);
            }
        }
    }

    /// The encoding as a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode_into(&mut v);
        v
    }
}

/// Appends a DATA header; the caller appends the ciphertext (zero-copy sends).
pub fn write_data_header(out: &mut Vec<u8>, receiver_idx: u32, nonce: u64) {
    out.push(BLOB_DATA);
    out.extend_from_slice(&receiver_idx.to_le_bytes());
    out.extend_from_slice(&nonce.to_le_bytes());
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn golden_data_header() {
        let b = Blob::Data {
            receiver_idx: 0x11223344,
            nonce: 5,
            ciphertext: &[0xee; 16],
        }
        .to_vec();
        assert_eq!(
            hex::encode(&b[..DATA_HEADER_LEN]),
            "03443322110500000000000000"
        );
        assert_eq!(Blob::parse(&b).unwrap().to_vec(), b);
    }

    #[test]
    fn length_bounds() {
        assert_eq!(Blob::parse(&[]), Err(BlobError::UnknownKind));
        assert_eq!(Blob::parse(&[9, 1, 2]), Err(BlobError::UnknownKind));
        assert!(Blob::parse(&[BLOB_HS_INIT; 10]).is_err());
        let mut d = vec![BLOB_DATA];
        d.extend([0u8; 12 + 15]);
        assert!(Blob::parse(&d).is_err());
        d.push(0);
        assert!(Blob::parse(&d).is_ok());
        let mut big = vec![BLOB_DATA];
        big.resize(DATA_HEADER_LEN + NOISE_MAX_MSG + 1, 0);
        assert!(Blob::parse(&big).is_err());
    }

    fn any_blob() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            (
                any::<u32>(),
                proptest::collection::vec(any::<u8>(), HS_MSG1_LEN)
            )
                .prop_map(|(i, m)| Blob::HsInit {
                    sender_idx: i,
                    msg1: &m
                }
                .to_vec()),
            (
                any::<u32>(),
                any::<u32>(),
                proptest::collection::vec(any::<u8>(), MLKEM_CT_LEN),
                proptest::collection::vec(any::<u8>(), HS_MSG2_MIN_LEN..HS_MSG2_MAX_LEN)
            )
                .prop_map(|(s, r, c, m)| Blob::HsResp {
                    sender_idx: s,
                    receiver_idx: r,
                    ct: &c,
                    msg2: &m
                }
                .to_vec()),
            (
                any::<u32>(),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 16..3000)
            )
                .prop_map(|(r, n, c)| Blob::Data {
                    receiver_idx: r,
                    nonce: n,
                    ciphertext: &c
                }
                .to_vec()),
            (
                any::<[u8; 8]>(),
                proptest::collection::vec(any::<u8>(), MLKEM_CT_LEN),
                proptest::collection::vec(any::<u8>(), 48..3000)
            )
                .prop_map(|(k, c, m)| Blob::Envelope {
                    key_id: k,
                    ct: &c,
                    noise_msg: &m
                }
                .to_vec()),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(b in any_blob()) {
            let parsed = Blob::parse(&b).unwrap();
            prop_assert_eq!(parsed.to_vec(), b);
        }

        #[test]
        fn parse_never_panics(b in proptest::collection::vec(any::<u8>(), 0..4000)) {
            let _ = Blob::parse(&b);
        }
    }
}
