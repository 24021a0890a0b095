//! C2SP tlog-cosignature v1 (<https://c2sp.org/tlog-cosignature>): the peer's witness statement
//! that it verified a checkpoint's consistency.
//!
//! * key ID: `SHA-256(<witness name> || 0x0A || 0x04 || witness public key)[:4]`;
//! * signature line: `— <witness name> base64(key ID (4) || timestamp (u64 BE, 8) || Ed25519
//!   signature (64))`;
//! * signed message: `"cosignature/v1\n" || "time <timestamp>\n" || checkpoint body`, the
//!   timestamp in POSIX seconds, ASCII decimal without leading zeroes, at most 2^63 − 1.
//!
//! The witness name is `liaison/1/witness/<hex first 8 bytes of the witness key>`
//! ([`crate::keys::witness_name`]).

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::checkpoint::{Checkpoint, SignedCheckpoint};
use crate::keys::witness_name;
use crate::note::{self, ALG_COSIGNATURE_V1, NoteSignature};

/// First line of every cosigned message.
pub const COSIGNATURE_HEADER: &str = "cosignature/v1\n";
/// Largest timestamp allowed by the specification.
pub const MAX_TIMESTAMP: u64 = i64::MAX as u64;

/// Why a cosignature was refused.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CosigError {
    /// Timestamp above 2^63 − 1.
    #[error("cosignature timestamp out of range")]
    Timestamp,
    /// Signature line not from this witness (name or key ID), or not 72 bytes.
    #[error("cosignature is not from this witness key")]
    WrongKey,
    /// The signature does not verify.
    #[error("cosignature does not verify")]
    BadSignature,
}

/// The exact bytes a witness signs.
pub fn signed_message(timestamp: u64, checkpoint: &Checkpoint) -> Vec<u8> {
    let body = checkpoint.body();
    let mut m = Vec::with_capacity(COSIGNATURE_HEADER.len() + 26 + body.len());
    m.extend_from_slice(COSIGNATURE_HEADER.as_bytes());
    m.extend_from_slice(format!("time {timestamp}\n").as_bytes());
    m.extend_from_slice(body.as_bytes());
    m
}

/// Key ID of a witness key (type byte `0x04`).
pub fn cosigner_key_id(witness_key: &VerifyingKey) -> u32 {
    note::key_id(
        &witness_name(witness_key),
        ALG_COSIGNATURE_V1,
        witness_key.as_bytes(),
    )
}

/// A timestamped Ed25519 cosignature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cosignature {
    /// POSIX seconds at which the witness signed.
    pub timestamp: u64,
    /// Ed25519 signature over [`signed_message`].
    pub signature: Signature,
}

impl Cosignature {
    /// Cosigns `checkpoint` at `timestamp` (POSIX seconds).
    pub fn sign(
        witness: &SigningKey,
        checkpoint: &Checkpoint,
        timestamp: u64,
    ) -> Result<Self, CosigError> {
        if timestamp > MAX_TIMESTAMP {
            return Err(CosigError::Timestamp);
        }
        let signature = witness.sign(&signed_message(timestamp, checkpoint));
        Ok(Self {
            timestamp,
            signature,
        })
    }

    /// Verifies strictly against `witness_key`.
    pub fn verify(
        &self,
        witness_key: &VerifyingKey,
        checkpoint: &Checkpoint,
    ) -> Result<(), CosigError> {
        if self.timestamp > MAX_TIMESTAMP {
            return Err(CosigError::Timestamp);
        }
        witness_key
            .verify_strict(&signed_message(self.timestamp, checkpoint), &self.signature)
            .map_err(|_| CosigError::BadSignature)
    }

    /// The signature line's content as a [`NoteSignature`].
    pub fn note_signature(&self, witness_key: &VerifyingKey) -> NoteSignature {
        let mut sig = Vec::with_capacity(72);
        sig.extend_from_slice(&self.timestamp.to_be_bytes());
        sig.extend_from_slice(&self.signature.to_bytes());
        NoteSignature {
            name: witness_name(witness_key),
            key_id: cosigner_key_id(witness_key),
            signature: sig,
        }
    }

    /// The signature line (newline included).
    pub fn line(&self, witness_key: &VerifyingKey) -> String {
        self.note_signature(witness_key).line()
    }

    /// Reads a cosignature from a signature line, which must carry this witness's name and key
    /// ID (not verified: call [`Cosignature::verify`]).
    pub fn from_note_signature(
        sig: &NoteSignature,
        witness_key: &VerifyingKey,
    ) -> Result<Self, CosigError> {
        if sig.name != witness_name(witness_key) || sig.key_id != cosigner_key_id(witness_key) {
            return Err(CosigError::WrongKey);
        }
        let (ts, s) = sig
            .signature
            .split_first_chunk::<8>()
            .ok_or(CosigError::WrongKey)?;
        let s: &[u8; 64] = s.try_into().map_err(|_| CosigError::WrongKey)?;
        Ok(Self {
            timestamp: u64::from_be_bytes(*ts),
            signature: Signature::from_bytes(s),
        })
    }
}

/// The checkpoint as a note carrying the log signature followed by cosignature lines.
pub fn cosigned_note(signed: &SignedCheckpoint, cosigs: &[(VerifyingKey, Cosignature)]) -> String {
    let mut s = signed.to_note();
    for (k, c) in cosigs {
        s.push_str(&c.line(k));
    }
    s
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
    use crate::keys::{generate_signing_key, log_origin};
    use crate::note::Note;

    #[test]
    fn message_layout_is_exact() {
        let cp = Checkpoint::new("example.com/behind-the-sofa".into(), 20852163, [0; 32]);
        let m = signed_message(1679315147, &cp);
        assert_eq!(
            String::from_utf8(m).unwrap(),
            format!("cosignature/v1\ntime 1679315147\n{}", cp.body())
        );
    }

    #[test]
    fn sign_verify_and_round_trip_through_a_note() {
        let log = generate_signing_key().unwrap();
        let w = generate_signing_key().unwrap();
        let ch = [3u8; 32];
        let cp = Checkpoint::new(log_origin(&ch, &log.verifying_key()), 10, [4; 32]);
        let signed = SignedCheckpoint::sign(cp.clone(), &log).unwrap();
        let c = Cosignature::sign(&w, &cp, 1_700_000_000).unwrap();
        c.verify(&w.verifying_key(), &cp).unwrap();
        let note = cosigned_note(&signed, &[(w.verifying_key(), c)]);
        let parsed = Note::parse(note.as_bytes()).unwrap();
        assert_eq!(parsed.signatures.len(), 2);
        let line = &parsed.signatures[1];
        assert_eq!(line.signature.len(), 72);
        let back = Cosignature::from_note_signature(line, &w.verifying_key()).unwrap();
        assert_eq!(back, c);
        // The log signature line is not a cosignature of this witness.
        assert_eq!(
            Cosignature::from_note_signature(&parsed.signatures[0], &w.verifying_key()),
            Err(CosigError::WrongKey)
        );
        // Another checkpoint, time or key does not verify.
        let mut cp2 = cp.clone();
        cp2.size = 11;
        assert_eq!(
            c.verify(&w.verifying_key(), &cp2),
            Err(CosigError::BadSignature)
        );
        let mut c2 = c;
        c2.timestamp += 1;
        assert_eq!(
            c2.verify(&w.verifying_key(), &cp),
            Err(CosigError::BadSignature)
        );
        assert_eq!(
            c.verify(&log.verifying_key(), &cp),
            Err(CosigError::BadSignature)
        );
        assert_eq!(
            Cosignature::sign(&w, &cp, u64::MAX),
            Err(CosigError::Timestamp)
        );
    }
}
