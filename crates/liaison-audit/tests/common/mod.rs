//! Shared helpers of the integration tests: parties with stable keys, a message pump between
//! two lines, message exchange, and bundle surgery.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use ed25519_dalek::{SigningKey, VerifyingKey};
use liaison_audit::bundle::Bundle;
use liaison_audit::entry::{ciphertext_hash, commitment};
use liaison_audit::keys::{LocalKeys, generate_signing_key};
use liaison_audit::line::{Line, LineStorage};
use liaison_audit::{Event, Hash};

/// A plausible "now" (Unix ms).
pub const T0: u64 = 1_700_000_000_000;

/// A party whose keys can be rebuilt (LocalKeys owns its private keys).
pub struct Party {
    pub id: SigningKey,
    log_seed: [u8; 32],
    witness_seed: [u8; 32],
}

impl Party {
    pub fn new() -> Self {
        Self {
            id: generate_signing_key().unwrap(),
            log_seed: generate_signing_key().unwrap().to_bytes(),
            witness_seed: generate_signing_key().unwrap().to_bytes(),
        }
    }

    /// The same audit keys every time.
    pub fn keys(&self) -> LocalKeys {
        LocalKeys::from_identity(
            &self.id,
            SigningKey::from_bytes(&self.log_seed),
            SigningKey::from_bytes(&self.witness_seed),
        )
        .unwrap()
    }

    /// The private log key (to forge signatures in tamper tests).
    pub fn log_key(&self) -> SigningKey {
        SigningKey::from_bytes(&self.log_seed)
    }

    pub fn vk(&self) -> VerifyingKey {
        self.id.verifying_key()
    }
}

/// Commits both sides and delivers every audit message until nothing is left, cosignatures
/// the rate bound held back included (released when due, at the time they are due).
pub fn pump<S1: LineStorage, S2: LineStorage>(a: &mut Line<S1>, b: &mut Line<S2>, now: u64) {
    let mut to_b: Vec<Vec<u8>> = a.commit(now).unwrap().into_iter().collect();
    let mut to_a: Vec<Vec<u8>> = b.commit(now).unwrap().into_iter().collect();
    for _ in 0..16 {
        if to_a.is_empty() && to_b.is_empty() {
            release_held_back(a, b, now, &mut to_a, &mut to_b);
        }
        if to_a.is_empty() && to_b.is_empty() {
            return;
        }
        let mut next_a = Vec::new();
        let mut next_b = Vec::new();
        for m in to_b.drain(..) {
            next_a.extend(b.handle_message(&m, now).unwrap());
        }
        for m in to_a.drain(..) {
            next_b.extend(a.handle_message(&m, now).unwrap());
        }
        to_a = next_a;
        to_b = next_b;
    }
    panic!("audit messages did not settle");
}

/// Cosigns what the rate bound held back on either side (at its due time, or `now`).
pub fn release_held_back<S1: LineStorage, S2: LineStorage>(
    a: &mut Line<S1>,
    b: &mut Line<S2>,
    now: u64,
    to_a: &mut Vec<Vec<u8>>,
    to_b: &mut Vec<Vec<u8>>,
) {
    if let Some(t) = a.poll_timeout() {
        to_b.extend(a.handle_timeout(t.max(now)).unwrap());
    }
    if let Some(t) = b.poll_timeout() {
        to_a.extend(b.handle_timeout(t.max(now)).unwrap());
    }
}

/// `from` sends message `seq` to `to`: logged as sent, received (made durable before the
/// ack, as the node does) and acknowledged. Returns the salt.
pub fn send<S1: LineStorage, S2: LineStorage>(
    from: &mut Line<S1>,
    to: &mut Line<S2>,
    seq: u64,
    text: &str,
    now: u64,
) -> [u8; 32] {
    let salt = liaison_audit::entry::new_salt().unwrap();
    let c = commitment(&salt, text.as_bytes());
    let ct: Hash = ciphertext_hash(format!("ciphertext of {text}").as_bytes());
    from.append(
        Event::MsgSent {
            seq,
            commitment: c,
            ciphertext_hash: ct,
        },
        now,
    );
    to.append(
        Event::MsgReceived {
            seq,
            commitment: c,
            ciphertext_hash: ct,
        },
        now + 1,
    );
    to.persist(now + 1).unwrap();
    from.append(Event::MsgAcked { seq }, now + 2);
    salt
}

pub fn leaves(b: &Bundle) -> Vec<Vec<u8>> {
    b.leaves().map(<[u8]>::to_vec).collect()
}

pub fn rebuild(b: &Bundle, leaves: &[Vec<u8>]) -> Bundle {
    Bundle::from_parts(b.meta.clone(), leaves.iter().map(Vec::as_slice)).unwrap()
}
