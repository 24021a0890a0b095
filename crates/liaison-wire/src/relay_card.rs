//! Relay cards as bytes: layout, limits and the one-line text form.
//!
//! A relay card tells a node how to reach a relay and which hop key to pin for it. Signing and
//! verification live in `liaison-relay` (this crate has no crypto); this module only moves bytes.
//!
//! ```text
//! body        = version u8 || hop_key (32) || addr (u64le length || UTF-8) || created u64le
//! binary card = body || signature (64)
//! signature   = Ed25519 by hop_key over RELAY_CARD_SIG_CONTEXT || body
//! text card   = "liaison-relay:" || base64url-no-padding(binary card)
//! ```
//! The body is the protocol's bincode encoding of [`RelayCard`]'s first four fields, which is
//! canonical for these types; [`RelayCard::from_bytes`] checks that re-encoding the decoded
//! body gives back exactly the bytes read, so a signature always covers what was parsed.

use crate::codec::{self, CodecError};
use crate::consts::*;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// A relay card: the relay's hop key and public address, signed by that hop key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayCard {
    /// [`PROTOCOL_VERSION`].
    pub version: u8,
    /// Ed25519 public key of the relay's TLS certificate; nodes pin it as its SPKI.
    pub hop_key: [u8; KEY_LEN],
    /// Public `HOST:PORT` where the relay listens (UDP).
    pub addr: String,
    /// Unix seconds when the relay's key was made.
    pub created: u64,
    /// Ed25519 signature by `hop_key` over [`RelayCard::signed_bytes`].
    pub signature: [u8; SIG_LEN],
}

/// The signed part, in wire order.
#[derive(Serialize, Deserialize)]
struct Body<'a> {
    version: u8,
    hop_key: [u8; KEY_LEN],
    addr: std::borrow::Cow<'a, str>,
    created: u64,
}

/// Why relay card bytes or text were refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayCardFormatError {
    /// No `liaison-relay:` prefix.
    #[error("not a relay card: it must start with `{RELAY_CARD_TEXT_PREFIX}`")]
    MissingPrefix,
    /// The base64url text is damaged.
    #[error("relay card text is damaged (bad base64url)")]
    BadBase64,
    /// Too long to be a relay card.
    #[error("relay card is longer than {MAX_RELAY_CARD_LEN} bytes")]
    TooLong,
    /// The binary form does not decode.
    #[error("relay card is malformed: {0}")]
    Malformed(String),
    /// A field is out of range.
    #[error("relay card field is invalid: {0}")]
    InvalidField(&'static str),
}

impl From<CodecError> for RelayCardFormatError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::TooLong { .. } => RelayCardFormatError::TooLong,
            other => RelayCardFormatError::Malformed(other.to_string()),
        }
    }
}

/// Checks a relay address: `HOST:PORT`, 1..=[`MAX_ADDR_LEN`] bytes, no control characters or
/// spaces, a non-empty host and a non-zero decimal port.
pub fn check_relay_addr(addr: &str) -> Result<(), RelayCardFormatError> {
    let bad = RelayCardFormatError::InvalidField("address must be HOST:PORT");
    if addr.is_empty()
        || addr.len() > MAX_ADDR_LEN
        || addr.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(bad);
    }
    let (host, port) = addr.rsplit_once(':').ok_or(bad)?;
    let port_ok = !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|p| p != 0);
    if host.is_empty() || !port_ok {
        return Err(RelayCardFormatError::InvalidField(
            "address must be HOST:PORT",
        ));
    }
    Ok(())
}

impl RelayCard {
    fn body(&self) -> Body<'_> {
        Body {
            version: self.version,
            hop_key: self.hop_key,
            addr: std::borrow::Cow::Borrowed(&self.addr),
            created: self.created,
        }
    }

    fn check_fields(&self) -> Result<(), RelayCardFormatError> {
        if self.version != PROTOCOL_VERSION {
            return Err(RelayCardFormatError::InvalidField(
                "unsupported relay card version",
            ));
        }
        check_relay_addr(&self.addr)
    }

    /// The encoded body (what follows the signature context), after checking the fields.
    pub fn body_bytes(&self) -> Result<Vec<u8>, RelayCardFormatError> {
        self.check_fields()?;
        Ok(codec::encode(&self.body(), MAX_RELAY_CARD_LEN - SIG_LEN)?)
    }

    /// The bytes the hop key signs: `RELAY_CARD_SIG_CONTEXT || body`.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, RelayCardFormatError> {
        let body = self.body_bytes()?;
        let mut m = Vec::with_capacity(RELAY_CARD_SIG_CONTEXT.len() + body.len());
        m.extend_from_slice(RELAY_CARD_SIG_CONTEXT);
        m.extend_from_slice(&body);
        Ok(m)
    }

    /// Binary form: `body || signature`.
    pub fn to_bytes(&self) -> Result<Vec<u8>, RelayCardFormatError> {
        let mut out = self.body_bytes()?;
        out.extend_from_slice(&self.signature);
        Ok(out)
    }

    /// Parses the binary form. Does **not** check the signature.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, RelayCardFormatError> {
        if bytes.len() > MAX_RELAY_CARD_LEN {
            return Err(RelayCardFormatError::TooLong);
        }
        let split = bytes
            .len()
            .checked_sub(SIG_LEN)
            .ok_or_else(|| RelayCardFormatError::Malformed("too short".into()))?;
        let (body_bytes, sig) = bytes.split_at(split);
        let body: Body<'_> = codec::decode(body_bytes, MAX_RELAY_CARD_LEN - SIG_LEN)?;
        let signature = <[u8; SIG_LEN]>::try_from(sig)
            .map_err(|_| RelayCardFormatError::Malformed("signature length".into()))?;
        let card = RelayCard {
            version: body.version,
            hop_key: body.hop_key,
            addr: body.addr.into_owned(),
            created: body.created,
            signature,
        };
        if card.body_bytes()? != body_bytes {
            return Err(RelayCardFormatError::Malformed(
                "non-canonical encoding".into(),
            ));
        }
        Ok(card)
    }

    /// One-line text form.
    pub fn to_text(&self) -> Result<String, RelayCardFormatError> {
        Ok(format!(
            "{RELAY_CARD_TEXT_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(self.to_bytes()?)
        ))
    }

    /// Parses the one-line text form (surrounding whitespace ignored). Does **not** check the
    /// signature.
    pub fn from_text(text: &str) -> Result<Self, RelayCardFormatError> {
        let b64 = text
            .trim()
            .strip_prefix(RELAY_CARD_TEXT_PREFIX)
            .ok_or(RelayCardFormatError::MissingPrefix)?;
        if b64.len() > MAX_RELAY_CARD_LEN.div_ceil(3) * 4 {
            return Err(RelayCardFormatError::TooLong);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|_| RelayCardFormatError::BadBase64)?;
        Self::from_bytes(&bytes)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;

    fn sample(addr: &str) -> RelayCard {
        RelayCard {
            version: PROTOCOL_VERSION,
            hop_key: [0x11; 32],
            addr: addr.into(),
            created: 0x0102_0304_0506_0708,
            signature: [0x22; 64],
        }
    }

    #[test]
    fn golden_layout() {
        let card = sample("relay.example:4433");
        let mut want = vec![1u8];
        want.extend([0x11; 32]);
        want.extend(18u64.to_le_bytes());
        want.extend(b"relay.example:4433");
        want.extend(0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(card.body_bytes().unwrap(), want);
        let mut signed = b"liaison/1 relay-card".to_vec();
        signed.extend(&want);
        assert_eq!(card.signed_bytes().unwrap(), signed);
        want.extend([0x22; 64]);
        assert_eq!(card.to_bytes().unwrap(), want);
        assert_eq!(
            hex::encode(&want[..9]),
            "011111111111111111",
            "version then key"
        );
    }

    #[test]
    fn text_round_trip_and_refusals() {
        let card = sample("[::1]:4000");
        let text = card.to_text().unwrap();
        assert!(text.starts_with("liaison-relay:"));
        assert_eq!(RelayCard::from_text(&format!(" {text}\n")).unwrap(), card);
        assert!(matches!(
            RelayCard::from_text(&text[1..]),
            Err(RelayCardFormatError::MissingPrefix)
        ));
        assert!(matches!(
            RelayCard::from_text(&format!("{text}=")),
            Err(RelayCardFormatError::BadBase64)
        ));
        let long = format!("liaison-relay:{}", "A".repeat(1000));
        assert!(matches!(
            RelayCard::from_text(&long),
            Err(RelayCardFormatError::TooLong)
        ));
        let bytes = card.to_bytes().unwrap();
        assert!(RelayCard::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        assert!(RelayCard::from_bytes(&bytes[..10]).is_err());
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert!(matches!(
            RelayCard::from_bytes(&v2),
            Err(RelayCardFormatError::InvalidField(_))
        ));
    }

    #[test]
    fn addresses() {
        for good in ["127.0.0.1:1", "[::1]:65535", "relay.example.org:4433"] {
            check_relay_addr(good).unwrap();
        }
        for bad in [
            "",
            "host",
            ":4433",
            "host:",
            "host:0",
            "host:65536",
            "host:+1",
            "a b:1",
            "h\n:1",
        ] {
            assert!(check_relay_addr(bad).is_err(), "{bad:?}");
        }
        assert!(check_relay_addr(&format!("{}:1", "h".repeat(300))).is_err());
        assert!(sample("nope").to_bytes().is_err());
    }

    proptest! {
        #[test]
        fn round_trip(key: [u8; 32], created: u64, host in "[a-z0-9.]{1,60}", port in 1u16..,
                      sig in proptest::array::uniform32(any::<u8>())) {
            let mut card = sample("x:1");
            card.hop_key = key;
            card.created = created;
            card.addr = format!("{host}:{port}");
            card.signature[32..].copy_from_slice(&sig);
            prop_assert_eq!(RelayCard::from_bytes(&card.to_bytes().unwrap()).unwrap(), card.clone());
            prop_assert_eq!(RelayCard::from_text(&card.to_text().unwrap()).unwrap(), card);
        }

        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = RelayCard::from_bytes(&bytes);
        }
    }
}
