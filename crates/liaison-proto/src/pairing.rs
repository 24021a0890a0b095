//! Pairing secrets (design §3.2): 32 random bytes carried in person and mixed into every hybrid
//! psk as the HKDF salt, adding post-quantum authentication to a line.
//!
//! Text form: RFC 4648 base32 (alphabet `A-Z2-7`, uppercase, no `=` padding) of
//! `secret (32) || checksum (2)`, where `checksum = SHA-256("liaison/1 pairing" || secret)[..2]`.
//! The 34 bytes give 55 characters (the last one carries 2 data bits followed by 3 zero bits),
//! written in groups of 4 separated by `-`: 13 groups of 4 and a final group of 3, e.g.
//! `ABCD-EFGH-…-XYZ`. [`PairingSecret::parse`] ignores case, spaces and dashes, and refuses a
//! wrong length, a character outside the alphabet, non-zero padding bits, or a bad checksum
//! (a typo has a 1 in 65,536 chance of passing the checksum).

use crate::keys::{RngError, Secret32, random_secret};
use liaison_wire::consts::PAIRING_SECRET_LEN;
use sha2::{Digest, Sha256};
use std::fmt;
use zeroize::Zeroizing;

/// Domain separation of the checksum.
pub const PAIRING_CHECKSUM_LABEL: &[u8] = b"liaison/1 pairing";
/// Checksum length, bytes.
pub const PAIRING_CHECKSUM_LEN: usize = 2;
/// Characters of base32 in the text form (dashes and spaces excluded).
pub const PAIRING_TEXT_CHARS: usize = ((PAIRING_SECRET_LEN + PAIRING_CHECKSUM_LEN) * 8).div_ceil(5);

/// Why pairing-secret text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PairingError {
    /// Not the right number of characters.
    #[error(
        "a pairing secret has {PAIRING_TEXT_CHARS} letters and digits (dashes and spaces \
         ignored), this has {got}: check that it was copied completely"
    )]
    BadLength {
        /// Characters found.
        got: usize,
    },
    /// A character outside `A-Z`, `2-7`.
    #[error(
        "a pairing secret uses only the letters A-Z and digits 2-7, found {0:?} (0, 1, 8 and 9 \
         never occur: 0 is probably O, 1 is probably I or L, 8 is probably B)"
    )]
    BadCharacter(char),
    /// The text decodes but its checksum does not match: a typo.
    #[error("pairing secret checksum does not match: there is a typo, compare it again")]
    BadChecksum,
}

/// A pairing secret (wiped on drop, printed as `[redacted]`).
#[derive(Clone, PartialEq, Eq)]
pub struct PairingSecret(Secret32);

impl PairingSecret {
    /// A fresh random secret.
    pub fn generate() -> Result<Self, RngError> {
        Ok(PairingSecret(random_secret()?))
    }

    /// Wraps known bytes.
    pub fn from_bytes(bytes: [u8; PAIRING_SECRET_LEN]) -> Self {
        PairingSecret(Zeroizing::new(bytes))
    }

    /// The secret bytes.
    pub fn as_bytes(&self) -> &[u8; PAIRING_SECRET_LEN] {
        &self.0
    }

    /// The secret as [`crate::keys::PeerKeys::pairing`] holds it.
    pub fn to_secret(&self) -> Secret32 {
        self.0.clone()
    }

    /// The text form (see the module documentation).
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut raw = Zeroizing::new([0u8; PAIRING_SECRET_LEN + PAIRING_CHECKSUM_LEN]);
        for (out, b) in raw
            .iter_mut()
            .zip(self.0.iter().chain(checksum(&self.0).iter()))
        {
            *out = *b;
        }
        let b32 = Zeroizing::new(base32_encode(raw.as_slice()));
        let mut text = Zeroizing::new(String::with_capacity(b32.len() + b32.len() / 4));
        for (i, c) in b32.chars().enumerate() {
            if i > 0 && i % 4 == 0 {
                text.push('-');
            }
            text.push(c);
        }
        text
    }

    /// Parses the text form: case-insensitive, spaces and dashes ignored, checksum checked.
    pub fn parse(text: &str) -> Result<Self, PairingError> {
        let clean: Zeroizing<String> = Zeroizing::new(
            text.chars()
                .filter(|c| !c.is_whitespace() && *c != '-')
                .map(|c| c.to_ascii_uppercase())
                .collect(),
        );
        if let Some(bad) = clean.chars().find(|c| base32_value(*c).is_none()) {
            return Err(PairingError::BadCharacter(bad));
        }
        let got = clean.chars().count();
        if got != PAIRING_TEXT_CHARS {
            return Err(PairingError::BadLength { got });
        }
        let raw = base32_decode(&clean).ok_or(PairingError::BadChecksum)?;
        let (secret, sum) = raw.split_at(PAIRING_SECRET_LEN.min(raw.len()));
        let secret: [u8; PAIRING_SECRET_LEN] = secret
            .try_into()
            .map_err(|_| PairingError::BadLength { got })?;
        let secret = Zeroizing::new(secret);
        if sum != checksum(&secret).as_slice() {
            return Err(PairingError::BadChecksum);
        }
        Ok(PairingSecret(secret))
    }
}

impl fmt::Debug for PairingSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PairingSecret([redacted])")
    }
}

fn checksum(secret: &[u8; PAIRING_SECRET_LEN]) -> [u8; PAIRING_CHECKSUM_LEN] {
    let d = Sha256::new()
        .chain_update(PAIRING_CHECKSUM_LABEL)
        .chain_update(secret)
        .finalize();
    let mut out = [0u8; PAIRING_CHECKSUM_LEN];
    for (o, b) in out.iter_mut().zip(d.iter()) {
        *o = *b;
    }
    out
}

const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// The base32 character of the low 5 bits of `v`.
fn base32_char(v: u32) -> char {
    ALPHABET
        .get((v & 31) as usize)
        .map_or('A', |b| char::from(*b))
}

fn base32_value(c: char) -> Option<u8> {
    match c {
        'A'..='Z' => Some(c as u8 - b'A'),
        '2'..='7' => Some(c as u8 - b'2' + 26),
        _ => None,
    }
}

/// RFC 4648 base32, uppercase, without padding.
fn base32_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity((data.len() * 8).div_ceil(5));
    let mut acc: u32 = 0;
    let mut bits: u32 = 0;
    for b in data {
        acc = (acc << 8) | u32::from(*b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(base32_char(acc >> bits));
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(base32_char(acc << (5 - bits)));
    }
    out
}

/// Decodes unpadded uppercase RFC 4648 base32. `None` on a character outside the alphabet, an
/// impossible length (1, 3 or 6 characters mod 8), or non-zero trailing bits (non-canonical).
fn base32_decode(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    if matches!(text.len() % 8, 1 | 3 | 6) {
        return None;
    }
    let mut out = Zeroizing::new(Vec::with_capacity(text.len() * 5 / 8));
    let mut acc: u32 = 0;
    let mut bits: u32 = 0;
    for c in text.chars() {
        acc = (acc << 5) | u32::from(base32_value(c)?);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    if acc != 0 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc4648_vectors() {
        // RFC 4648 §10, without padding
        let v = [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ];
        for (plain, enc) in v {
            assert_eq!(base32_encode(plain.as_bytes()), enc);
            assert_eq!(base32_decode(enc).unwrap().as_slice(), plain.as_bytes());
        }
        assert!(base32_decode("MZ1").is_none());
        assert!(base32_decode("MZ").is_none()); // non-zero trailing bits
        assert!(base32_decode("M").is_none()); // impossible length
    }

    #[test]
    fn golden_text() {
        // computed independently with Python's hashlib and base64.b32encode
        let v = [
            (
                [0u8; 32],
                "AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAB-CQI",
            ),
            (
                core::array::from_fn(|i| i as u8),
                "AAAQ-EAYE-AUDA-OCAJ-BIFQ-YDIO-B4IB-CEQT-CQKR-MFYY-DENB-WHA5-DYP2-5WA",
            ),
        ];
        for (bytes, want) in v {
            let s = PairingSecret::from_bytes(bytes);
            assert_eq!(s.to_text().as_str(), want);
            assert_eq!(PairingSecret::parse(want).unwrap(), s);
        }
    }

    #[test]
    fn text_shape_and_forgiving_parse() {
        let s = PairingSecret::generate().unwrap();
        let text = s.to_text();
        let groups: Vec<&str> = text.split('-').collect();
        assert_eq!(groups.len(), 14);
        assert!(groups[..13].iter().all(|g| g.len() == 4));
        assert_eq!(groups[13].len(), 3);
        let sloppy = format!(" {} ", text.to_lowercase().replace('-', " "));
        assert_eq!(PairingSecret::parse(&sloppy).unwrap(), s);
        assert_eq!(format!("{s:?}"), "PairingSecret([redacted])");
    }

    #[test]
    fn typos_are_caught() {
        let s = PairingSecret::from_bytes([0x5a; 32]);
        let text = s.to_text().replace('-', "");
        // change one character anywhere: caught (by the checksum or the padding bits)
        for i in 0..text.len() {
            let mut t: Vec<char> = text.chars().collect();
            t[i] = if t[i] == 'A' { 'B' } else { 'A' };
            let t: String = t.into_iter().collect();
            assert!(PairingSecret::parse(&t).is_err(), "typo at {i} not caught");
        }
        assert_eq!(
            PairingSecret::parse(&text[1..]),
            Err(PairingError::BadLength { got: 54 })
        );
        let mut bad = text.clone();
        bad.replace_range(0..1, "0");
        assert_eq!(
            PairingSecret::parse(&bad),
            Err(PairingError::BadCharacter('0'))
        );
        // swap two adjacent different characters
        let mut t: Vec<char> = text.chars().collect();
        let i = (0..t.len() - 2).find(|&i| t[i] != t[i + 1]).unwrap();
        t.swap(i, i + 1);
        assert!(PairingSecret::parse(&t.into_iter().collect::<String>()).is_err());
    }

    proptest! {
        #[test]
        fn base32_round_trip(data in proptest::collection::vec(any::<u8>(), 0..100)) {
            let enc = base32_encode(&data);
            prop_assert_eq!(enc.len(), (data.len() * 8).div_ceil(5));
            let dec = base32_decode(&enc).unwrap();
            prop_assert_eq!(dec.as_slice(), data.as_slice());
        }

        #[test]
        fn pairing_text_round_trip(bytes in proptest::array::uniform32(any::<u8>())) {
            let s = PairingSecret::from_bytes(bytes);
            let text = s.to_text();
            prop_assert_eq!(text.len(), PAIRING_TEXT_CHARS + 13);
            prop_assert_eq!(PairingSecret::parse(&text).unwrap(), s);
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,80}") {
            let _ = PairingSecret::parse(&text);
        }
    }
}
