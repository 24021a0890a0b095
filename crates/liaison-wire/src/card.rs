//! Contact cards and mailbox keys as bytes: layout, limits and the one-line text form.
//!
//! Signatures are made and checked in `liaison-proto`; this module only moves bytes.
//! Binary card = `bincode(CardBody) || signature (64)`, signature by the identity key over
//! `CARD_SIG_CONTEXT || bincode(CardBody)`. Text card = `liaison-card:` + base64url (no padding)
//! of the binary card, on one line.

use crate::codec::{self, CodecError, Fixed};
use crate::consts::*;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// A public mailbox key: X25519 + ML-KEM-768, signed by the identity key.
/// The signature covers `MAILBOX_KEY_SIG_CONTEXT || key_id || x25519 || mlkem_ek || not_after`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxKeyPub {
    /// `SHA-256(x25519 || mlkem_ek)[..8]`.
    pub key_id: [u8; MAILBOX_KEY_ID_LEN],
    /// X25519 public key.
    pub x25519: [u8; KEY_LEN],
    /// ML-KEM-768 encapsulation key.
    pub mlkem_ek: Fixed<MLKEM_EK_LEN>,
    /// Unix seconds after which senders stop using this key.
    pub not_after: u64,
    /// Identity-key signature.
    pub signature: Fixed<SIG_LEN>,
}

/// Encoded size of a [`MailboxKeyPub`].
pub const MAILBOX_KEY_PUB_LEN: usize = MAILBOX_KEY_ID_LEN + KEY_LEN + MLKEM_EK_LEN + 8 + SIG_LEN;

impl MailboxKeyPub {
    /// The bytes the identity key signs.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(MAILBOX_KEY_SIG_CONTEXT.len() + MAILBOX_KEY_PUB_LEN);
        m.extend_from_slice(MAILBOX_KEY_SIG_CONTEXT);
        m.extend_from_slice(&self.key_id);
        m.extend_from_slice(&self.x25519);
        m.extend_from_slice(&self.mlkem_ek.0);
        m.extend_from_slice(&self.not_after.to_le_bytes());
        m
    }

    /// Encodes to exactly [`MAILBOX_KEY_PUB_LEN`] bytes.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        codec::encode(self, MAILBOX_KEY_PUB_LEN)
    }

    /// Decodes from exactly [`MAILBOX_KEY_PUB_LEN`] bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode(bytes, MAILBOX_KEY_PUB_LEN)
    }
}

/// The signed part of a contact card.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardBody {
    /// [`PROTOCOL_VERSION`].
    pub version: u8,
    /// Display name chosen by the owner (1..=64 bytes of UTF-8, no control characters).
    pub name: String,
    /// Ed25519 identity public key: signs this card, mailbox keys and audit key bindings.
    pub identity_key: [u8; KEY_LEN],
    /// X25519 Noise static public key.
    pub noise_static: [u8; KEY_LEN],
    /// Ed25519 public key of the direct-line hop certificate; pinned as its SPKI.
    pub hop_key: [u8; KEY_LEN],
    /// First-contact mailbox key.
    pub mailbox: MailboxKeyPub,
    /// Increases with every rotation of the card.
    pub serial: u64,
    /// Unix seconds when this card was made.
    pub created: u64,
    /// Optional `HOST:PORT` where the owner listens for direct calls.
    pub addr: Option<String>,
    /// Optional relay hints (free text such as a relay's address), at most [`MAX_RELAY_HINTS`].
    pub relays: Vec<String>,
}

/// A signed contact card.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Card {
    /// What the signature covers.
    pub body: CardBody,
    /// The bincode encoding of `body` exactly as signed.
    pub body_bytes: Vec<u8>,
    /// Ed25519 signature by `body.identity_key` over `CARD_SIG_CONTEXT || body_bytes`.
    pub signature: [u8; SIG_LEN],
}

/// Why card bytes or text were refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CardFormatError {
    /// No `liaison-card:` prefix.
    #[error("not a contact card: it must start with `{CARD_TEXT_PREFIX}`")]
    MissingPrefix,
    /// The base64url text is damaged.
    #[error("contact card text is damaged (bad base64url)")]
    BadBase64,
    /// Too long to be a card.
    #[error("contact card is longer than {MAX_CARD_LEN} bytes")]
    TooLong,
    /// The binary form does not decode.
    #[error("contact card is malformed: {0}")]
    Malformed(String),
    /// A field is out of range.
    #[error("contact card field is invalid: {0}")]
    InvalidField(&'static str),
}

impl Card {
    /// Encodes `body` for signing, after checking its fields.
    pub fn encode_body(body: &CardBody) -> Result<Vec<u8>, CardFormatError> {
        check_fields(body)?;
        codec::encode(body, MAX_CARD_LEN - SIG_LEN).map_err(|_| CardFormatError::TooLong)
    }

    /// Binary form: `body_bytes || signature`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body_bytes.len() + SIG_LEN);
        out.extend_from_slice(&self.body_bytes);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Parses the binary form. Does **not** check the signature.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CardFormatError> {
        if bytes.len() > MAX_CARD_LEN {
            return Err(CardFormatError::TooLong);
        }
        let split = bytes
            .len()
            .checked_sub(SIG_LEN)
            .ok_or_else(|| CardFormatError::Malformed("too short".into()))?;
        let (body_bytes, sig) = bytes.split_at(split);
        let body: CardBody = codec::decode(body_bytes, MAX_CARD_LEN)
            .map_err(|e| CardFormatError::Malformed(e.to_string()))?;
        check_fields(&body)?;
        let signature = <[u8; SIG_LEN]>::try_from(sig)
            .map_err(|_| CardFormatError::Malformed("signature length".into()))?;
        Ok(Card {
            body,
            body_bytes: body_bytes.to_vec(),
            signature,
        })
    }

    /// One-line text form.
    pub fn to_text(&self) -> String {
        format!(
            "{CARD_TEXT_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(self.to_bytes())
        )
    }

    /// Parses the one-line text form (surrounding whitespace ignored). Does **not** check the
    /// signature.
    pub fn from_text(text: &str) -> Result<Self, CardFormatError> {
        let text = text.trim();
        let b64 = text
            .strip_prefix(CARD_TEXT_PREFIX)
            .ok_or(CardFormatError::MissingPrefix)?;
        if b64.len() > MAX_CARD_LEN.div_ceil(3) * 4 {
            return Err(CardFormatError::TooLong);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|_| CardFormatError::BadBase64)?;
        Self::from_bytes(&bytes)
    }
}

/// Checks a name: 1..=64 bytes, no control characters, no surrounding whitespace.
pub fn check_name(name: &str) -> Result<(), CardFormatError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(CardFormatError::InvalidField("name must be 1 to 64 bytes"));
    }
    if name.chars().any(char::is_control) || name.trim() != name {
        return Err(CardFormatError::InvalidField(
            "name has control characters or surrounding spaces",
        ));
    }
    Ok(())
}

fn check_fields(body: &CardBody) -> Result<(), CardFormatError> {
    if body.version != PROTOCOL_VERSION {
        return Err(CardFormatError::InvalidField("unsupported card version"));
    }
    check_name(&body.name)?;
    if let Some(addr) = &body.addr
        && (addr.is_empty() || addr.len() > MAX_ADDR_LEN || addr.chars().any(char::is_control))
    {
        return Err(CardFormatError::InvalidField("address hint"));
    }
    if body.relays.len() > MAX_RELAY_HINTS
        || body
            .relays
            .iter()
            .any(|r| r.is_empty() || r.len() > MAX_ADDR_LEN || r.chars().any(char::is_control))
    {
        return Err(CardFormatError::InvalidField("relay hints"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample_body(name: &str, addr: Option<String>, relays: Vec<String>) -> CardBody {
        CardBody {
            version: PROTOCOL_VERSION,
            name: name.into(),
            identity_key: [1; 32],
            noise_static: [2; 32],
            hop_key: [3; 32],
            mailbox: MailboxKeyPub {
                key_id: [4; 8],
                x25519: [5; 32],
                mlkem_ek: Fixed([6; MLKEM_EK_LEN]),
                not_after: 1_800_000_000,
                signature: Fixed([7; 64]),
            },
            serial: 1,
            created: 1_700_000_000,
            addr,
            relays,
        }
    }

    #[test]
    fn text_round_trip_and_prefix() {
        let body = sample_body("alice", Some("127.0.0.1:4000".into()), vec![]);
        let body_bytes = Card::encode_body(&body).unwrap();
        let card = Card {
            body,
            body_bytes,
            signature: [9; 64],
        };
        let text = card.to_text();
        assert!(text.starts_with("liaison-card:"));
        assert!(!text.contains('\n'));
        assert_eq!(Card::from_text(&format!("  {text}\n")).unwrap(), card);
        assert!(matches!(
            Card::from_text(&text[1..]),
            Err(CardFormatError::MissingPrefix)
        ));
        assert!(matches!(
            Card::from_text(&format!("{text}!")),
            Err(CardFormatError::BadBase64)
        ));
    }

    #[test]
    fn bad_fields_refused() {
        assert!(Card::encode_body(&sample_body("", None, vec![])).is_err());
        assert!(Card::encode_body(&sample_body("a\nb", None, vec![])).is_err());
        assert!(Card::encode_body(&sample_body(&"x".repeat(65), None, vec![])).is_err());
        assert!(Card::encode_body(&sample_body("a", None, vec!["r".into(); 5])).is_err());
        let mut b = sample_body("a", None, vec![]);
        b.version = 2;
        assert!(Card::encode_body(&b).is_err());
    }

    #[test]
    fn mailbox_key_fixed_size() {
        let mk = sample_body("a", None, vec![]).mailbox;
        let bytes = mk.encode().unwrap();
        assert_eq!(bytes.len(), MAILBOX_KEY_PUB_LEN);
        assert_eq!(MailboxKeyPub::decode(&bytes).unwrap(), mk);
        assert!(MailboxKeyPub::decode(&bytes[1..]).is_err());
    }

    proptest! {
        #[test]
        fn card_round_trip(name in "[a-zA-Z0-9][a-zA-Z0-9 ]{0,40}[a-z]", serial: u64, created: u64,
                           addr in proptest::option::of("[a-z0-9.:]{1,40}"),
                           relays in proptest::collection::vec("[a-z0-9.:]{1,30}", 0..=4),
                           sig in proptest::array::uniform32(any::<u8>())) {
            let mut body = sample_body(&name, addr, relays);
            body.serial = serial;
            body.created = created;
            let body_bytes = Card::encode_body(&body).unwrap();
            let mut signature = [0u8; 64];
            signature[..32].copy_from_slice(&sig);
            let card = Card { body, body_bytes, signature };
            prop_assert_eq!(Card::from_bytes(&card.to_bytes()).unwrap(), card.clone());
            prop_assert_eq!(Card::from_text(&card.to_text()).unwrap(), card);
        }

        #[test]
        fn card_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = Card::from_bytes(&bytes);
        }
    }
}
