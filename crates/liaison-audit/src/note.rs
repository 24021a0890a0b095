//! C2SP signed-note (<https://c2sp.org/signed-note>): a UTF-8 text ending in a newline, a blank
//! line, then one or more signature lines `— <key name> <base64(key ID || signature)>`.
//!
//! * the key ID is the big-endian `uint32` of `SHA-256(key name || 0x0A || type || public key)[:4]`,
//!   type `0x01` for Ed25519 note signatures and `0x04` for timestamped Ed25519 cosignatures;
//! * Ed25519 signatures sign the note text (including its final newline);
//! * notes are at most [`MAX_NOTE_LEN`] bytes with at most [`MAX_SIGNATURES`] signatures, contain
//!   no ASCII control character other than newline, and use canonical padded standard base64.
//!
//! Parsing never verifies; verification is done against a key the caller already trusts
//! ([`verify_ed25519`]), and signatures from unknown keys are ignored, as the spec requires.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// Signature type byte of an Ed25519 note signature.
pub const ALG_ED25519: u8 = 0x01;
/// Signature type byte of a timestamped Ed25519 cosignature (c2sp.org/tlog-cosignature).
pub const ALG_COSIGNATURE_V1: u8 = 0x04;
/// Largest note accepted, in bytes (a liaison checkpoint with two signatures is under 400).
pub const MAX_NOTE_LEN: usize = 4096;
/// Most signature lines accepted in one note (the spec's minimum requirement).
pub const MAX_SIGNATURES: usize = 16;
/// Longest key name accepted, in bytes.
pub const MAX_KEY_NAME_LEN: usize = 256;
/// Start of every signature line: EM DASH (U+2014) and a space.
pub const SIGNATURE_LINE_PREFIX: &str = "\u{2014} ";

/// Why a note was refused.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// Larger than [`MAX_NOTE_LEN`].
    #[error("note longer than {MAX_NOTE_LEN} bytes")]
    TooLong,
    /// Not UTF-8.
    #[error("note is not valid UTF-8")]
    NotUtf8,
    /// Contains a control character other than newline.
    #[error("note contains a control character")]
    ControlCharacter,
    /// Text or note does not end in a newline, or is empty.
    #[error("note text must be non-empty and end with a newline")]
    BadText,
    /// No blank line separating text and signatures.
    #[error("note has no signature block")]
    NoSignatures,
    /// More than [`MAX_SIGNATURES`] signatures.
    #[error("note has more than {MAX_SIGNATURES} signatures")]
    TooManySignatures,
    /// A malformed signature line.
    #[error("malformed signature line")]
    BadSignatureLine,
    /// Key name empty, too long, or containing a space or `+`.
    #[error("invalid key name")]
    BadKeyName,
    /// No signature line with the expected key name and key ID.
    #[error("no signature by key {name}")]
    MissingSignature {
        /// Expected key name.
        name: String,
    },
    /// A signature line from the expected key that does not verify.
    #[error("signature by key {name} does not verify")]
    BadSignature {
        /// Key name.
        name: String,
    },
}

/// `SHA-256(name || 0x0A || alg || public_key)[:4]` as a big-endian `u32`.
pub fn key_id(name: &str, alg: u8, public_key: &[u8]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', alg]);
    h.update(public_key);
    let d = h.finalize();
    let mut id = [0u8; 4];
    for (dst, src) in id.iter_mut().zip(d.iter()) {
        *dst = *src;
    }
    u32::from_be_bytes(id)
}

/// True if `name` is a valid key name (non-empty, no Unicode white space, no `+`).
pub fn valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_KEY_NAME_LEN
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c == '+' || c.is_control())
}

/// Checks note text: non-empty, ends with `\n`, no control characters but `\n`.
pub fn check_text(text: &str) -> Result<(), NoteError> {
    if text.is_empty() || !text.ends_with('\n') {
        return Err(NoteError::BadText);
    }
    if text.chars().any(|c| c != '\n' && (c as u32) < 0x20) {
        return Err(NoteError::ControlCharacter);
    }
    Ok(())
}

/// One signature line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    /// Key name.
    pub name: String,
    /// Key ID (first 4 decoded bytes, big-endian).
    pub key_id: u32,
    /// The signature bytes after the key ID.
    pub signature: Vec<u8>,
}

impl NoteSignature {
    /// The line, newline included.
    pub fn line(&self) -> String {
        let mut raw = Vec::with_capacity(4 + self.signature.len());
        raw.extend_from_slice(&self.key_id.to_be_bytes());
        raw.extend_from_slice(&self.signature);
        format!("{SIGNATURE_LINE_PREFIX}{} {}\n", self.name, B64.encode(raw))
    }

    fn parse_line(line: &str) -> Result<Self, NoteError> {
        let rest = line
            .strip_prefix(SIGNATURE_LINE_PREFIX)
            .ok_or(NoteError::BadSignatureLine)?;
        let (name, b64) = rest.split_once(' ').ok_or(NoteError::BadSignatureLine)?;
        if !valid_key_name(name) {
            return Err(NoteError::BadKeyName);
        }
        let raw = B64.decode(b64).map_err(|_| NoteError::BadSignatureLine)?;
        let (id, sig) = raw
            .split_first_chunk::<4>()
            .ok_or(NoteError::BadSignatureLine)?;
        if sig.is_empty() {
            return Err(NoteError::BadSignatureLine);
        }
        Ok(Self {
            name: name.to_owned(),
            key_id: u32::from_be_bytes(*id),
            signature: sig.to_vec(),
        })
    }
}

/// A parsed (not yet verified) signed note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The signed text, final newline included.
    pub text: String,
    /// Signature lines in order.
    pub signatures: Vec<NoteSignature>,
}

impl Note {
    /// Parses a signed note, enforcing every rule of the format and the size limits.
    pub fn parse(bytes: &[u8]) -> Result<Self, NoteError> {
        if bytes.len() > MAX_NOTE_LEN {
            return Err(NoteError::TooLong);
        }
        let s = std::str::from_utf8(bytes).map_err(|_| NoteError::NotUtf8)?;
        if s.chars().any(|c| c != '\n' && (c as u32) < 0x20) {
            return Err(NoteError::ControlCharacter);
        }
        if !s.ends_with('\n') {
            return Err(NoteError::BadText);
        }
        let split = s.rfind("\n\n").ok_or(NoteError::NoSignatures)?;
        let text = s.get(..split + 1).ok_or(NoteError::BadText)?;
        let sigs = s.get(split + 2..).ok_or(NoteError::NoSignatures)?;
        check_text(text)?;
        let sigs = sigs.strip_suffix('\n').ok_or(NoteError::NoSignatures)?;
        if sigs.is_empty() {
            return Err(NoteError::NoSignatures);
        }
        let mut signatures = Vec::new();
        for line in sigs.split('\n') {
            if signatures.len() == MAX_SIGNATURES {
                return Err(NoteError::TooManySignatures);
            }
            signatures.push(NoteSignature::parse_line(line)?);
        }
        Ok(Self {
            text: text.to_owned(),
            signatures,
        })
    }

    /// The note: text, blank line, signature lines.
    pub fn encode(&self) -> String {
        let mut s = String::with_capacity(self.text.len() + 1 + 120 * self.signatures.len());
        s.push_str(&self.text);
        s.push('\n');
        for sig in &self.signatures {
            s.push_str(&sig.line());
        }
        s
    }

    /// The first signature with this name and key ID.
    pub fn find(&self, name: &str, key_id: u32) -> Option<&NoteSignature> {
        self.signatures
            .iter()
            .find(|s| s.name == name && s.key_id == key_id)
    }
}

/// Signs `text` as an Ed25519 note signature under key name `name`.
pub fn sign_ed25519(text: &str, name: &str, key: &SigningKey) -> Result<NoteSignature, NoteError> {
    check_text(text)?;
    if !valid_key_name(name) {
        return Err(NoteError::BadKeyName);
    }
    let sig = key.sign(text.as_bytes());
    Ok(NoteSignature {
        name: name.to_owned(),
        key_id: key_id(name, ALG_ED25519, key.verifying_key().as_bytes()),
        signature: sig.to_bytes().to_vec(),
    })
}

/// Finds the Ed25519 signature of (`name`, `key`) in `note` and verifies it strictly.
pub fn verify_ed25519(note: &Note, name: &str, key: &VerifyingKey) -> Result<(), NoteError> {
    let id = key_id(name, ALG_ED25519, key.as_bytes());
    let sig = note
        .find(name, id)
        .ok_or_else(|| NoteError::MissingSignature {
            name: name.to_owned(),
        })?;
    let bytes: &[u8; 64] =
        sig.signature
            .as_slice()
            .try_into()
            .map_err(|_| NoteError::BadSignature {
                name: name.to_owned(),
            })?;
    key.verify_strict(note.text.as_bytes(), &Signature::from_bytes(bytes))
        .map_err(|_| NoteError::BadSignature {
            name: name.to_owned(),
        })
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
    use proptest::prelude::*;

    /// Golden vector from the Go `golang.org/x/mod/sumdb/note` test suite: the key
    /// `PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW` and its signed
    /// note.
    #[test]
    fn go_sumdb_note_vector_verifies() {
        let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        let mut parts = vkey.split('+');
        let name = parts.next().unwrap();
        let id = u32::from_str_radix(parts.next().unwrap(), 16).unwrap();
        let raw = B64.decode(parts.next().unwrap()).unwrap();
        assert_eq!(raw[0], ALG_ED25519);
        let pk = VerifyingKey::from_bytes(raw[1..].try_into().unwrap()).unwrap();
        assert_eq!(key_id(name, ALG_ED25519, pk.as_bytes()), id);
        let msg = "If you think cryptography is the answer to your problem,\n\
                   then you don't know what your problem is.\n\
                   \n\
                   \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        let note = Note::parse(msg.as_bytes()).unwrap();
        verify_ed25519(&note, name, &pk).unwrap();
        assert_eq!(note.encode(), msg);
    }

    #[test]
    fn sign_parse_verify_round_trip() {
        let k = crate::keys::generate_signing_key().unwrap();
        let text = "example.com/log\n3\nabc\n";
        let sig = sign_ed25519(text, "example.com/log", &k).unwrap();
        let note = Note {
            text: text.into(),
            signatures: vec![sig],
        };
        let enc = note.encode();
        let back = Note::parse(enc.as_bytes()).unwrap();
        assert_eq!(back, note);
        verify_ed25519(&back, "example.com/log", &k.verifying_key()).unwrap();
        let other = crate::keys::generate_signing_key().unwrap();
        assert!(matches!(
            verify_ed25519(&back, "example.com/log", &other.verifying_key()),
            Err(NoteError::MissingSignature { .. })
        ));
        let mut tampered = back.clone();
        tampered.text = "example.com/log\n4\nabc\n".into();
        assert!(matches!(
            verify_ed25519(&tampered, "example.com/log", &k.verifying_key()),
            Err(NoteError::BadSignature { .. })
        ));
    }

    #[test]
    fn rejects_malformed_notes() {
        let k = crate::keys::generate_signing_key().unwrap();
        let good = Note {
            text: "a\n".into(),
            signatures: vec![sign_ed25519("a\n", "n", &k).unwrap()],
        }
        .encode();
        assert!(Note::parse(good.as_bytes()).is_ok());
        for bad in [
            good.trim_end_matches('\n').to_string(),
            good.replace("\u{2014} ", "- "),
            good.replace("a\n\n", "a\n"),
            good.replace("a\n", "a\t\n"),
            good.replace(" n ", " n+x "),
            good.replace('=', ""),
            "\n\n".to_string(),
            "a\n\n\n".to_string(),
        ] {
            assert!(Note::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert_eq!(
            Note::parse(&[b'a'; MAX_NOTE_LEN + 1]),
            Err(NoteError::TooLong)
        );
        assert_eq!(Note::parse(&[0xff, b'\n']), Err(NoteError::NotUtf8));
        let many = format!(
            "a\n\n{}",
            sign_ed25519("a\n", "n", &k).unwrap().line().repeat(17)
        );
        assert_eq!(
            Note::parse(many.as_bytes()),
            Err(NoteError::TooManySignatures)
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Note::parse(&bytes);
        }

        #[test]
        fn parse_never_panics_on_near_notes(text in "[a-z\n]{1,40}", name in "[a-z/]{1,10}", b in "[A-Za-z0-9+/=]{0,120}") {
            let s = format!("{text}\n\u{2014} {name} {b}\n");
            let _ = Note::parse(s.as_bytes());
        }
    }
}
