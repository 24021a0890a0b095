//! Safety numbers and fingerprints (design §4): Signal's numeric fingerprint construction with
//! Liaison's own version bytes, so two people can compare keys by reading digits aloud.
//!
//! Exact construction, enough to reimplement:
//! 1. For one party with Ed25519 identity public key `K` (the raw 32 bytes, no type byte) and
//!    stable id `S = K`:
//!    `h_0 = SHA-512(0x00 0x4c || K || S)`, then for `i` in `1..=5200`:
//!    `h_i = SHA-512(h_{i-1} || K)`. Let `h = h_5200` (64 bytes).
//! 2. Take `h[0..30]` as six 5-byte chunks; read each chunk as a big-endian 40-bit integer,
//!    reduce it `mod 100000`, print it as 5 decimal digits with leading zeros. The six groups
//!    concatenated are the party's **fingerprint**: 30 digits. [`fingerprint`] prints them as
//!    six groups of five separated by single spaces (`liaison id`).
//! 3. The **safety number** of a pair is the two parties' 30-digit strings sorted
//!    lexicographically (equivalently numerically) and concatenated: 60 digits, printed as 12
//!    groups of 5 separated by single spaces. Sorting makes it identical on both sides.
//!
//! Signal uses version `0x00 0x00` and a type-prefixed Curve25519 key; the different version
//! bytes (`0x00 0x4c`, "L") keep Liaison's numbers from ever colliding with Signal's.

use sha2::{Digest, Sha512};

/// Version bytes hashed first (Signal uses `0x00 0x00`).
pub const FINGERPRINT_VERSION: [u8; 2] = [0x00, 0x4c];
/// Hash iterations after the first (Signal's value).
pub const FINGERPRINT_ITERATIONS: usize = 5200;
/// Digits per party.
pub const FINGERPRINT_DIGITS: usize = 30;

/// The 30 digits of one party's fingerprint, without spaces.
pub fn fingerprint_digits(identity_pub: &[u8; 32]) -> String {
    let mut h = Sha512::new()
        .chain_update(FINGERPRINT_VERSION)
        .chain_update(identity_pub)
        .chain_update(identity_pub) // stable id = the identity key itself
        .finalize();
    for _ in 0..FINGERPRINT_ITERATIONS {
        h = Sha512::new()
            .chain_update(h)
            .chain_update(identity_pub)
            .finalize();
    }
    let mut out = String::with_capacity(FINGERPRINT_DIGITS);
    for chunk in h.chunks_exact(5).take(6) {
        let v = chunk.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        out.push_str(&format!("{:05}", v % 100_000));
    }
    out
}

/// One party's fingerprint as six space-separated groups of five digits.
pub fn fingerprint(identity_pub: &[u8; 32]) -> String {
    group5(&fingerprint_digits(identity_pub))
}

/// The 60-digit safety number of a pair, without spaces. Symmetric in its arguments.
pub fn safety_number_digits(a: &[u8; 32], b: &[u8; 32]) -> String {
    let fa = fingerprint_digits(a);
    let fb = fingerprint_digits(b);
    if fa <= fb { fa + &fb } else { fb + &fa }
}

/// The safety number of a pair as 12 space-separated groups of five digits, identical on
/// both sides.
pub fn safety_number(a: &[u8; 32], b: &[u8; 32]) -> String {
    group5(&safety_number_digits(a, b))
}

/// Normalizes a safety number typed or pasted by a user (spaces, dashes dropped) for
/// comparison with [`safety_number_digits`].
pub fn normalize_digits(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect()
}

fn group5(digits: &str) -> String {
    let mut out = String::with_capacity(digits.len() + digits.len() / 5);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && i % 5 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    // Golden values computed independently with Python's hashlib (see the module doc for the
    // construction): key A = 32 bytes 0x01, key B = bytes 0x00..=0x1f.
    const KEY_A: [u8; 32] = [1u8; 32];
    fn key_b() -> [u8; 32] {
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = i as u8;
        }
        k
    }
    const FP_A: &str = "92612 25041 75302 31561 37153 21743";
    const FP_B: &str = "55961 04299 27422 29365 13803 18523";
    const SN_AB: &str = "55961 04299 27422 29365 13803 18523 92612 25041 75302 31561 37153 21743";

    #[test]
    fn golden() {
        assert_eq!(fingerprint(&KEY_A), FP_A);
        assert_eq!(fingerprint(&key_b()), FP_B);
        assert_eq!(safety_number(&KEY_A, &key_b()), SN_AB);
    }

    #[test]
    fn symmetric_and_shaped() {
        let a = KEY_A;
        let b = key_b();
        let s = safety_number(&a, &b);
        assert_eq!(s, safety_number(&b, &a));
        assert_eq!(s.len(), 60 + 11);
        assert_eq!(s.split(' ').count(), 12);
        assert!(
            s.split(' ')
                .all(|g| g.len() == 5 && g.bytes().all(|c| c.is_ascii_digit()))
        );
        assert_eq!(normalize_digits(&s), safety_number_digits(&a, &b));
        let f = fingerprint(&a);
        assert_eq!(f.split(' ').count(), 6);
        assert_eq!(normalize_digits(&f), fingerprint_digits(&a));
        // the pair's number contains both fingerprints
        let d = safety_number_digits(&a, &b);
        assert!(d.contains(&fingerprint_digits(&a)) && d.contains(&fingerprint_digits(&b)));
        // a different key changes it
        let mut c = b;
        c[31] ^= 1;
        assert_ne!(safety_number(&a, &c), s);
    }
}
