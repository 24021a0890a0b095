//! The audit messages the node carries, opaquely, inside the encrypted line.
//!
//! Byte layout (all integers big-endian; every message starts `version (0x01) || type`):
//!
//! | type   | message          | body                                                                  |
//! |--------|------------------|-----------------------------------------------------------------------|
//! | `0x01` | `CheckpointOffer`| binding (160) · note_len u16 · note · from_size u64 · n u8 · n × 32    |
//! | `0x02` | `Cosignature`    | binding (160) · size u64 · root (32) · timestamp u64 · signature (64)  |
//! | `0x03` | `Resync`         | size u64 · root (32)                                                  |
//! | `0x04` | `Receipt`        | note_len u16 · note · leaf_index u64 · leaf_len u8 · leaf · n u8 · n × 32 |
//!
//! *binding* is the sender's [`KeyBinding`] (identity, log key, witness key, identity signature);
//! *note* a signed checkpoint (≤ 4096 bytes); `n` ≤ 65 proof hashes; `leaf_len` ≤ 122. Messages
//! are at most [`MAX_MESSAGE_LEN`] bytes, trailing bytes are refused.
//!
//! Flow: after each group commit that signed a checkpoint the log owner sends
//! `CheckpointOffer` (its new checkpoint and a consistency proof from `from_size`, the size the
//! peer last cosigned, 0 for none). The peer's witness answers `Cosignature` — at once, or
//! for a new checkpoint offered within `COSIGN_INTERVAL_MS` of its last cosignature while it
//! logged nothing else, up to that long later ([`crate::line`]) — or `Resync` carrying the size
//! and root it actually holds when `from_size` is not that size (the owner then re-offers with a
//! proof from there). Once a cosignature arrives, the owner sends one `Receipt` per `msg_recv`
//! entry the cosigned checkpoint newly covers.

use crate::Hash;
use crate::checkpoint::SignedCheckpoint;
use crate::codec::{DecodeError, Put, Reader};
use crate::cosig::Cosignature;
use crate::keys::KeyBinding;
use crate::receipt::Receipt;

/// Version byte of every message.
pub const WIRE_VERSION: u8 = 0x01;
/// Largest message, in bytes.
pub const MAX_MESSAGE_LEN: usize = 8192;
/// Type byte of [`CheckpointOffer`].
pub const TYPE_OFFER: u8 = 0x01;
/// Type byte of [`CosignatureMsg`].
pub const TYPE_COSIGNATURE: u8 = 0x02;
/// Type byte of [`Resync`].
pub const TYPE_RESYNC: u8 = 0x03;
/// Type byte of [`Receipt`].
pub const TYPE_RECEIPT: u8 = 0x04;

/// The owner's signed checkpoint with a consistency proof from the size the peer last cosigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointOffer {
    /// The owner's key binding.
    pub binding: KeyBinding,
    /// The new checkpoint.
    pub checkpoint: SignedCheckpoint,
    /// Size the proof starts from (0: none, the witness holds nothing yet).
    pub from_size: u64,
    /// Consistency proof `from_size` → checkpoint size.
    pub proof: Vec<Hash>,
}

/// The witness's cosignature of the owner's checkpoint `(size, root)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CosignatureMsg {
    /// The witness's key binding.
    pub binding: KeyBinding,
    /// Cosigned tree size.
    pub size: u64,
    /// Cosigned root.
    pub root: Hash,
    /// The cosignature.
    pub cosignature: Cosignature,
}

/// The witness's actual state, sent when an offer's proof starts elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resync {
    /// Largest size of the owner's log the witness has cosigned.
    pub size: u64,
    /// Its root.
    pub root: Hash,
}

/// One audit message.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditMessage {
    /// Owner → witness.
    Offer(CheckpointOffer),
    /// Witness → owner.
    Cosignature(CosignatureMsg),
    /// Witness → owner.
    Resync(Resync),
    /// Receiver → sender.
    Receipt(Receipt),
}

impl AuditMessage {
    /// Encodes the message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        out.put_u8(WIRE_VERSION);
        match self {
            AuditMessage::Offer(o) => {
                out.put_u8(TYPE_OFFER);
                out.put(&o.binding.to_bytes());
                out.put_checkpoint(&o.checkpoint);
                out.put_u64(o.from_size);
                out.put_proof(&o.proof);
            }
            AuditMessage::Cosignature(c) => {
                out.put_u8(TYPE_COSIGNATURE);
                out.put(&c.binding.to_bytes());
                out.put_u64(c.size);
                out.put(&c.root);
                out.put_u64(c.cosignature.timestamp);
                out.put(&c.cosignature.signature.to_bytes());
            }
            AuditMessage::Resync(r) => {
                out.put_u8(TYPE_RESYNC);
                out.put_u64(r.size);
                out.put(&r.root);
            }
            AuditMessage::Receipt(r) => {
                out.put_u8(TYPE_RECEIPT);
                r.encode_into(&mut out);
            }
        }
        out
    }

    /// Decodes a message from untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(DecodeError::TooLong {
                what: "audit message",
                len: bytes.len() as u64,
                max: MAX_MESSAGE_LEN as u64,
            });
        }
        let mut r = Reader::new(bytes);
        let v = r.u8("version")?;
        if v != WIRE_VERSION {
            return Err(DecodeError::Version(v));
        }
        let msg = match r.u8("type")? {
            TYPE_OFFER => AuditMessage::Offer(CheckpointOffer {
                binding: r.binding("offer binding")?,
                checkpoint: r.checkpoint("offer checkpoint")?,
                from_size: r.u64("offer from_size")?,
                proof: r.proof("offer proof")?,
            }),
            TYPE_COSIGNATURE => AuditMessage::Cosignature(CosignatureMsg {
                binding: r.binding("cosignature binding")?,
                size: r.u64("cosignature size")?,
                root: r.hash("cosignature root")?,
                cosignature: Cosignature {
                    timestamp: r.u64("cosignature timestamp")?,
                    signature: ed25519_dalek::Signature::from_bytes(&r.array::<64>("cosignature")?),
                },
            }),
            TYPE_RESYNC => AuditMessage::Resync(Resync {
                size: r.u64("resync size")?,
                root: r.hash("resync root")?,
            }),
            TYPE_RECEIPT => AuditMessage::Receipt(Receipt::decode_from(&mut r)?),
            t => return Err(DecodeError::UnknownType(t)),
        };
        r.finish()?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]

    use super::*;
    use crate::checkpoint::Checkpoint;
    use crate::keys::{LocalKeys, generate_signing_key, log_origin};
    use proptest::prelude::*;

    fn sample() -> Vec<AuditMessage> {
        let id = generate_signing_key().unwrap();
        let keys = LocalKeys::generate(&id).unwrap();
        let cp = Checkpoint::new(log_origin(&[1; 32], &keys.binding().log_key), 9, [2; 32]);
        let signed = SignedCheckpoint::sign(cp.clone(), keys.log_signer()).unwrap();
        let cosig = Cosignature::sign(keys.witness_signer(), &cp, 1234).unwrap();
        vec![
            AuditMessage::Offer(CheckpointOffer {
                binding: keys.binding().clone(),
                checkpoint: signed.clone(),
                from_size: 5,
                proof: vec![[3; 32], [4; 32]],
            }),
            AuditMessage::Cosignature(CosignatureMsg {
                binding: keys.binding().clone(),
                size: 9,
                root: [2; 32],
                cosignature: cosig,
            }),
            AuditMessage::Resync(Resync {
                size: 5,
                root: [6; 32],
            }),
            AuditMessage::Receipt(Receipt {
                checkpoint: signed,
                leaf_index: 3,
                leaf: vec![1; 122],
                proof: vec![[7; 32]],
            }),
        ]
    }

    #[test]
    fn round_trips_and_rejects_truncation_and_trailing_bytes() {
        for m in sample() {
            let b = m.encode();
            assert!(b.len() <= MAX_MESSAGE_LEN);
            assert_eq!(AuditMessage::decode(&b).unwrap(), m);
            for cut in 0..b.len() {
                assert!(AuditMessage::decode(&b[..cut]).is_err(), "cut at {cut}");
            }
            let mut longer = b.clone();
            longer.push(0);
            assert!(matches!(
                AuditMessage::decode(&longer),
                Err(DecodeError::TrailingBytes { count: 1 })
            ));
        }
    }

    #[test]
    fn resync_golden_bytes() {
        let b = AuditMessage::Resync(Resync {
            size: 258,
            root: [0xee; 32],
        })
        .encode();
        assert_eq!(
            hex::encode(b),
            format!("01030000000000000102{}", "ee".repeat(32))
        );
    }

    #[test]
    fn refuses_unknown_versions_types_and_oversize() {
        assert_eq!(AuditMessage::decode(&[2, 1]), Err(DecodeError::Version(2)));
        assert_eq!(
            AuditMessage::decode(&[1, 9]),
            Err(DecodeError::UnknownType(9))
        );
        assert!(matches!(
            AuditMessage::decode(&vec![1; MAX_MESSAGE_LEN + 1]),
            Err(DecodeError::TooLong { .. })
        ));
        let mut offer = sample()[0].encode();
        // Proof count 66 > 65.
        let n = offer.len() - 2 * 32 - 1;
        offer[n] = 66;
        assert!(AuditMessage::decode(&offer).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
            let _ = AuditMessage::decode(&bytes);
        }

        #[test]
        fn decode_never_panics_on_mutations(idx in any::<usize>(), val in any::<u8>(), which in 0usize..4) {
            let mut b = sample()[which].encode();
            let i = idx % b.len();
            b[i] = val;
            if let Ok(m) = AuditMessage::decode(&b) {
                prop_assert_eq!(AuditMessage::decode(&m.encode()).unwrap(), m);
            }
        }
    }
}
