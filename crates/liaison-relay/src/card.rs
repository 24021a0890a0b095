//! Signing and verifying relay cards (`liaison-relay:` lines).
//!
//! The layout lives in [`liaison_wire::relay_card`]; this module adds the Ed25519 signature by
//! the relay's hop key over `RELAY_CARD_SIG_CONTEXT || body`, checked with `verify_strict` and
//! refusing weak (small-order) keys. It uses only `liaison-wire` and `ed25519-dalek`, so a
//! node can call [`verify_relay_card`] without touching any server code.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use liaison_wire::consts::PROTOCOL_VERSION;
pub use liaison_wire::relay_card::{RelayCard, RelayCardFormatError};

/// Why a relay card was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayCardError {
    /// The text or bytes are not a well-formed relay card.
    #[error(transparent)]
    Format(#[from] RelayCardFormatError),
    /// The hop key is not a valid Ed25519 public key (or is a weak one).
    #[error("relay card carries an invalid hop key")]
    BadKey,
    /// The signature does not verify: the card was altered or not made by its key.
    #[error("relay card signature does not verify (altered or forged card)")]
    BadSignature,
}

/// Makes a signed relay card for the hop key with this 32-byte seed.
pub fn sign_relay_card(
    seed: &[u8; 32],
    addr: &str,
    created: u64,
) -> Result<RelayCard, RelayCardError> {
    let signing = SigningKey::from_bytes(seed);
    let mut card = RelayCard {
        version: PROTOCOL_VERSION,
        hop_key: signing.verifying_key().to_bytes(),
        addr: addr.to_string(),
        created,
        signature: [0; 64],
    };
    card.signature = signing.sign(&card.signed_bytes()?).to_bytes();
    Ok(card)
}

/// Checks the signature of an already parsed relay card.
pub fn verify_relay_card_signature(card: &RelayCard) -> Result<(), RelayCardError> {
    let key = VerifyingKey::from_bytes(&card.hop_key).map_err(|_| RelayCardError::BadKey)?;
    if key.is_weak() {
        return Err(RelayCardError::BadKey);
    }
    let sig = Signature::from_bytes(&card.signature);
    key.verify_strict(&card.signed_bytes()?, &sig)
        .map_err(|_| RelayCardError::BadSignature)
}

/// Parses a `liaison-relay:` line and verifies its signature. Nodes pin the returned card's
/// `hop_key` as its SPKI (`liaison_hop::ed25519_spki`) and dial `addr`.
pub fn verify_relay_card(text: &str) -> Result<RelayCard, RelayCardError> {
    let card = RelayCard::from_text(text)?;
    verify_relay_card_signature(&card)?;
    Ok(card)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use liaison_wire::relay_card::RelayCard;

    #[test]
    fn sign_verify_and_tamper() {
        let card = sign_relay_card(&[5; 32], "127.0.0.1:4433", 1_700_000_000).unwrap();
        let text = card.to_text().unwrap();
        assert_eq!(verify_relay_card(&text).unwrap(), card);
        // deterministic: the same key, address and time give the same line
        let again = sign_relay_card(&[5; 32], "127.0.0.1:4433", 1_700_000_000).unwrap();
        assert_eq!(again.to_text().unwrap(), text);

        let mut moved = card.clone();
        moved.addr = "10.0.0.1:4433".into();
        assert!(matches!(
            verify_relay_card(&moved.to_text().unwrap()),
            Err(RelayCardError::BadSignature)
        ));
        let mut other_key = card.clone();
        other_key.hop_key = sign_relay_card(&[6; 32], "x:1", 0).unwrap().hop_key;
        assert!(matches!(
            verify_relay_card(&other_key.to_text().unwrap()),
            Err(RelayCardError::BadSignature)
        ));
        let mut sig = card.clone();
        sig.signature[3] ^= 1;
        assert!(verify_relay_card(&sig.to_text().unwrap()).is_err());
        // the identity point is a weak key
        let mut weak = card.clone();
        weak.hop_key = [0; 32];
        weak.hop_key[0] = 1;
        assert!(matches!(
            verify_relay_card(&weak.to_text().unwrap()),
            Err(RelayCardError::BadKey)
        ));
        assert!(matches!(
            verify_relay_card("liaison-card:AAAA"),
            Err(RelayCardError::Format(_))
        ));
        assert!(RelayCard::from_text(&text).is_ok());
    }
}
