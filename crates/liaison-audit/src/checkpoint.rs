//! C2SP tlog-checkpoint (<https://c2sp.org/tlog-checkpoint>): the signed tree head of a log.
//!
//! The note text is
//!
//! ```text
//! <origin>\n
//! <tree size in decimal, no leading zeroes>\n
//! <base64 of the 32-byte RFC 9162 root hash>\n
//! [<extension line>\n ...]
//! ```
//!
//! signed (C2SP signed-note, Ed25519, type byte `0x01`) by the node's log key under the key name
//! equal to the origin. Liaison emits no extension lines; it parses and keeps them (they are
//! signed) but gives them no meaning. A [`SignedCheckpoint`] holds exactly one log signature;
//! other signature lines (cosignatures) travel separately, see [`crate::cosig`].

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};

use crate::Hash;
use crate::keys::{log_origin, parse_origin};
use crate::note::{self, ALG_ED25519, Note, NoteError, NoteSignature};

/// Most extension lines accepted.
pub const MAX_EXTENSION_LINES: usize = 8;

/// Why a checkpoint was refused.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The signed-note envelope is malformed.
    #[error("checkpoint note: {0}")]
    Note(#[from] NoteError),
    /// The body does not follow tlog-checkpoint.
    #[error("malformed checkpoint body: {0}")]
    Body(&'static str),
    /// The note does not carry exactly one signature by the log key name (the origin).
    #[error("checkpoint must carry exactly one signature named after its origin")]
    Signatures,
    /// The origin is for another line.
    #[error("checkpoint origin {found} is not this line's ({expected})")]
    ForeignOrigin {
        /// Origin found.
        found: String,
        /// Origin expected.
        expected: String,
    },
    /// The checkpoint is for this line but another log key, or the key ID is not the key's.
    #[error("checkpoint is signed by another key than the log key bound to the identity")]
    WrongKey,
    /// The signature does not verify.
    #[error("checkpoint signature does not verify")]
    BadSignature,
}

/// A checkpoint body.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Checkpoint {
    /// Origin line.
    pub origin: String,
    /// Tree size.
    pub size: u64,
    /// Root hash of the first `size` leaves.
    pub root: Hash,
    /// Extension lines (without newlines); Liaison writes none.
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// A checkpoint without extension lines.
    pub fn new(origin: String, size: u64, root: Hash) -> Self {
        Self {
            origin,
            size,
            root,
            extensions: Vec::new(),
        }
    }

    /// The note text: `origin\nsize\nbase64(root)\n` and any extension lines.
    pub fn body(&self) -> String {
        let mut s = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        );
        for e in &self.extensions {
            s.push_str(e);
            s.push('\n');
        }
        s
    }

    /// Parses a body, strictly: non-empty origin, canonical decimal size, canonical base64 of
    /// exactly 32 bytes, non-empty extension lines.
    pub fn parse_body(text: &str) -> Result<Self, CheckpointError> {
        let body = text
            .strip_suffix('\n')
            .ok_or(CheckpointError::Body("no final newline"))?;
        let mut lines = body.split('\n');
        let origin = lines.next().ok_or(CheckpointError::Body("no origin"))?;
        let size = lines.next().ok_or(CheckpointError::Body("no size"))?;
        let root_b64 = lines.next().ok_or(CheckpointError::Body("no root hash"))?;
        if origin.is_empty() {
            return Err(CheckpointError::Body("empty origin"));
        }
        if size.is_empty()
            || !size.bytes().all(|b| b.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return Err(CheckpointError::Body(
                "tree size is not a canonical decimal",
            ));
        }
        let size: u64 = size
            .parse()
            .map_err(|_| CheckpointError::Body("tree size out of range"))?;
        let raw = B64
            .decode(root_b64)
            .map_err(|_| CheckpointError::Body("root hash is not base64"))?;
        let root: Hash = raw
            .as_slice()
            .try_into()
            .map_err(|_| CheckpointError::Body("root hash is not 32 bytes"))?;
        if B64.encode(root) != root_b64 {
            return Err(CheckpointError::Body("root hash is not canonical base64"));
        }
        let mut extensions = Vec::new();
        for e in lines {
            if e.is_empty() {
                return Err(CheckpointError::Body("empty extension line"));
            }
            if extensions.len() == MAX_EXTENSION_LINES {
                return Err(CheckpointError::Body("too many extension lines"));
            }
            extensions.push(e.to_owned());
        }
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        })
    }
}

/// A checkpoint with its log signature (Ed25519 over the body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// The checkpoint.
    pub checkpoint: Checkpoint,
    /// Key ID in the signature line.
    pub key_id: u32,
    /// The Ed25519 signature.
    pub signature: Signature,
}

impl SignedCheckpoint {
    /// Signs `checkpoint` with the log key (key name = origin).
    pub fn sign(checkpoint: Checkpoint, log_key: &SigningKey) -> Result<Self, CheckpointError> {
        let body = checkpoint.body();
        let sig = note::sign_ed25519(&body, &checkpoint.origin, log_key)?;
        let bytes: &[u8; 64] = sig
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| CheckpointError::BadSignature)?;
        Ok(Self {
            checkpoint,
            key_id: sig.key_id,
            signature: Signature::from_bytes(bytes),
        })
    }

    /// The signed note (body, blank line, one signature line).
    pub fn to_note(&self) -> String {
        self.note().encode()
    }

    /// The signature line.
    pub fn signature_line(&self) -> String {
        self.note_signature().line()
    }

    fn note_signature(&self) -> NoteSignature {
        NoteSignature {
            name: self.checkpoint.origin.clone(),
            key_id: self.key_id,
            signature: self.signature.to_bytes().to_vec(),
        }
    }

    fn note(&self) -> Note {
        Note {
            text: self.checkpoint.body(),
            signatures: vec![self.note_signature()],
        }
    }

    /// Parses a signed checkpoint note carrying exactly one signature, named after the origin
    /// (not verified: see [`SignedCheckpoint::verify`]).
    pub fn parse(bytes: &[u8]) -> Result<Self, CheckpointError> {
        let note = Note::parse(bytes)?;
        let checkpoint = Checkpoint::parse_body(&note.text)?;
        let [sig] = note.signatures.as_slice() else {
            return Err(CheckpointError::Signatures);
        };
        if sig.name != checkpoint.origin {
            return Err(CheckpointError::Signatures);
        }
        let bytes: &[u8; 64] = sig
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| CheckpointError::Signatures)?;
        Ok(Self {
            checkpoint,
            key_id: sig.key_id,
            signature: Signature::from_bytes(bytes),
        })
    }

    /// Verifies that this checkpoint is for line `channel` and signed by `log_key`:
    /// the origin must be `log_origin(channel, log_key)` (another channel is
    /// [`CheckpointError::ForeignOrigin`], another key [`CheckpointError::WrongKey`]), the key ID
    /// must be the key's, and the signature must verify strictly.
    pub fn verify(&self, channel: &Hash, log_key: &VerifyingKey) -> Result<(), CheckpointError> {
        let expected = log_origin(channel, log_key);
        if self.checkpoint.origin != expected {
            return Err(match parse_origin(&self.checkpoint.origin) {
                Some(p) if p.channel == *channel => CheckpointError::WrongKey,
                _ => CheckpointError::ForeignOrigin {
                    found: self.checkpoint.origin.clone(),
                    expected,
                },
            });
        }
        if self.key_id != note::key_id(&expected, ALG_ED25519, log_key.as_bytes()) {
            return Err(CheckpointError::WrongKey);
        }
        log_key
            .verify_strict(self.checkpoint.body().as_bytes(), &self.signature)
            .map_err(|_| CheckpointError::BadSignature)
    }

    /// Tree size.
    pub fn size(&self) -> u64 {
        self.checkpoint.size
    }

    /// Root hash.
    pub fn root(&self) -> &Hash {
        &self.checkpoint.root
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
    use crate::keys::generate_signing_key;
    use proptest::prelude::*;

    #[test]
    fn body_is_byte_exact() {
        let cp = Checkpoint::new("example.com/behind-the-sofa".into(), 20852163, {
            let mut r = [0u8; 32];
            r.copy_from_slice(
                &B64.decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
                    .unwrap(),
            );
            r
        });
        assert_eq!(
            cp.body(),
            "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
        );
        assert_eq!(Checkpoint::parse_body(&cp.body()).unwrap(), cp);
    }

    #[test]
    fn malformed_bodies_are_refused() {
        let r = B64.encode([0u8; 32]);
        for bad in [
            format!("o\n07\n{r}\n"),
            "o\n7\n".to_string(),
            "o\n7\nAAAA\n".to_string(),
            format!("o\n7\n{r}\n\next\n"),
            format!("o\n7\n{r}"),
            format!("\n7\n{r}\n"),
            format!("o\n-7\n{r}\n"),
            format!("o\n18446744073709551616\n{r}\n"),
            format!("o\n7\n{}\n", r.trim_end_matches('=')),
        ] {
            assert!(Checkpoint::parse_body(&bad).is_err(), "{bad:?}");
        }
        assert!(Checkpoint::parse_body(&format!("o\n0\n{r}\next\n")).is_ok());
    }

    #[test]
    fn sign_parse_verify() {
        let k = generate_signing_key().unwrap();
        let ch = [7u8; 32];
        let cp = Checkpoint::new(log_origin(&ch, &k.verifying_key()), 5, [9u8; 32]);
        let s = SignedCheckpoint::sign(cp, &k).unwrap();
        let back = SignedCheckpoint::parse(s.to_note().as_bytes()).unwrap();
        assert_eq!(back, s);
        back.verify(&ch, &k.verifying_key()).unwrap();
        // Other line.
        assert!(matches!(
            back.verify(&[8u8; 32], &k.verifying_key()),
            Err(CheckpointError::ForeignOrigin { .. })
        ));
        // Other key for the same line.
        let other = generate_signing_key().unwrap();
        assert_eq!(
            back.verify(&ch, &other.verifying_key()),
            Err(CheckpointError::WrongKey)
        );
        // Altered size.
        let mut altered = back.clone();
        altered.checkpoint.size = 6;
        assert_eq!(
            altered.verify(&ch, &k.verifying_key()),
            Err(CheckpointError::BadSignature)
        );
    }

    #[test]
    fn parse_requires_one_origin_named_signature() {
        let k = generate_signing_key().unwrap();
        let cp = Checkpoint::new(log_origin(&[1; 32], &k.verifying_key()), 1, [2; 32]);
        let s = SignedCheckpoint::sign(cp, &k).unwrap();
        let two = format!("{}{}", s.to_note(), s.signature_line());
        assert_eq!(
            SignedCheckpoint::parse(two.as_bytes()),
            Err(CheckpointError::Signatures)
        );
        let renamed = s
            .to_note()
            .replacen("\u{2014} liaison", "\u{2014} xliaison", 1);
        assert_eq!(
            SignedCheckpoint::parse(renamed.as_bytes()),
            Err(CheckpointError::Signatures)
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = SignedCheckpoint::parse(&bytes);
            if let Ok(s) = std::str::from_utf8(&bytes) { let _ = Checkpoint::parse_body(s); }
        }
    }
}
