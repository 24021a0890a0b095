//! Mailbox key policy (design §3.4), sans-IO: which of our mailbox keys to advertise, which to
//! keep for opening envelopes and when to erase them, and which of a peer's keys to seal to.
//! Time is unix seconds passed in; nothing here reads a clock or touches a file.
//!
//! Our keys ([`MailboxRing`]):
//! - the **card key** (first-contact key in our card, `not_after` = card creation + 365 days)
//!   is kept as long as it is the card's key, whatever its `not_after` (peers fall back to it);
//!   once the card is rotated it is erased [`MAILBOX_KEY_RETAIN_SECS`] (8 days) after that;
//! - a **fresh key** is made every [`MAILBOX_KEY_ROTATE_SECS`] (1 day) with `not_after` =
//!   creation + [`MAILBOX_KEY_SEND_LIFETIME_SECS`] (2 days) and is advertised (message 2
//!   payloads, `MBOX_KEY` frames) from then on: [`MailboxRing::current_for_peers`] is the newest
//!   unexpired fresh key, else the card key;
//! - a fresh key's private half is erased [`MAILBOX_KEY_RETAIN_SECS`] after its `not_after`
//!   ([`MailboxRing::prune`] says which), so a fresh key can open envelopes for at most
//!   2 + 8 = 10 days: that bounds how long a stolen disk can read envelopes it did not see.
//!
//! A peer's keys ([`PeerMailboxKeys`]): the newest (largest `not_after`) in-band key that
//! verifies (`verify_strict` by the peer's identity key, key id, ML-KEM key validation, X25519
//! key not of low order), is not expired and is at most [`MAX_MAILBOX_KEY_AHEAD_SECS`] ahead.
//! Older, expired or replayed keys are ignored. [`PeerMailboxKeys::key_for_sending`] is that
//! key while `now ≤ not_after`, else the card's key (even an expired one).
//!
//! Storage forms (bincode through `liaison_wire::codec`, limits checked before allocating; the
//! caller keeps them in the encrypted key file / the store):
//! ```text
//! ring  = version u8 (= 1) || keys Vec<entry> (u64 count, 1..=MAX_MAILBOX_RING_KEYS)
//! entry = role u8 (0 card, 1 fresh, 2 retired card) || created u64 || retired_at u64
//!         || mailbox secret (169 bytes, `mailbox_key` storage form)
//! peer  = version u8 (= 1) || newest Option<MailboxKeyPub>
//! ```
//! Loading re-verifies every key against the owner's identity key; a ring must hold exactly
//! one card key and distinct key ids.

use crate::keys::NoiseSecret;
use crate::mailbox_key::{MailboxKeyError, MailboxSecret, StoredMailboxSecret, verify_mailbox_key};
use ed25519_dalek::SigningKey;
use liaison_wire::card::{MAILBOX_KEY_PUB_LEN, MailboxKeyPub};
use liaison_wire::codec;
use liaison_wire::consts::{
    KEY_LEN, MAILBOX_KEY_ID_LEN, MAILBOX_KEY_RETAIN_SECS, MAILBOX_KEY_ROTATE_SECS,
    MAILBOX_KEY_SEND_LIFETIME_SECS, MAX_MAILBOX_KEY_AHEAD_SECS,
};
use serde::{Deserialize, Serialize};
use std::fmt;
use zeroize::Zeroizing;

/// Most keys a ring holds: the card key, up to 11 fresh keys in normal operation (each lives
/// 2 + 8 days), retired card keys; the rest is room for clock trouble.
pub const MAX_MAILBOX_RING_KEYS: usize = 32;

const RING_VERSION: u8 = 1;
const PEER_VERSION: u8 = 1;
const ENTRY_LEN: usize = 1 + 8 + 8 + crate::mailbox_key::MAILBOX_SECRET_LEN;
/// Largest ring storage form, bytes.
pub const MAX_MAILBOX_RING_LEN: usize = 1 + 8 + MAX_MAILBOX_RING_KEYS * ENTRY_LEN;
/// Exact size of a peer's storage form holding a key, bytes.
pub const MAX_PEER_MAILBOX_LEN: usize = 1 + 1 + MAILBOX_KEY_PUB_LEN;

/// Why a mailbox key could not be added, accepted or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MailboxRingError {
    /// A key failed verification (signature, key id, ML-KEM key, low-order X25519 key).
    #[error(transparent)]
    Key(#[from] MailboxKeyError),
    /// The X25519 key of a peer's mailbox key is a low-order point.
    #[error("mailbox key has a low-order X25519 key")]
    LowOrder,
    /// The ring already holds [`MAX_MAILBOX_RING_KEYS`] keys (prune first).
    #[error("mailbox key ring is full")]
    Full,
    /// A key with this id is already in the ring.
    #[error("mailbox key already in the ring")]
    Duplicate,
    /// The storage form is malformed, of an unknown version, or inconsistent.
    #[error("stored mailbox keys are malformed: {0}")]
    Malformed(String),
}

/// What a key of ours is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyRole {
    /// The first-contact key of our current card.
    Card,
    /// A fresh (daily) key.
    Fresh,
    /// A former card key, kept for envelopes still in flight.
    RetiredCard,
}

impl KeyRole {
    fn to_u8(self) -> u8 {
        match self {
            KeyRole::Card => 0,
            KeyRole::Fresh => 1,
            KeyRole::RetiredCard => 2,
        }
    }

    fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(KeyRole::Card),
            1 => Some(KeyRole::Fresh),
            2 => Some(KeyRole::RetiredCard),
            _ => None,
        }
    }
}

#[derive(Clone)]
struct OwnKey {
    secret: MailboxSecret,
    role: KeyRole,
    created: u64,
    retired_at: u64,
}

impl OwnKey {
    /// Unix time from which the private key must be gone; `None` while it is the card key.
    fn erase_at(&self) -> Option<u64> {
        match self.role {
            KeyRole::Card => None,
            KeyRole::Fresh => Some(
                self.secret
                    .not_after()
                    .saturating_add(MAILBOX_KEY_RETAIN_SECS),
            ),
            KeyRole::RetiredCard => Some(self.retired_at.saturating_add(MAILBOX_KEY_RETAIN_SECS)),
        }
    }
}

/// Our mailbox keys: the card key, fresh keys and retired card keys (module documentation).
#[derive(Clone)]
pub struct MailboxRing {
    /// The current card key (role `Card`).
    card: OwnKey,
    /// Fresh and retired card keys.
    others: Vec<OwnKey>,
}

impl MailboxRing {
    /// A ring holding only the card key `card_key` (created at `now`).
    pub fn new(card_key: MailboxSecret, now: u64) -> Self {
        MailboxRing {
            card: OwnKey {
                secret: card_key,
                role: KeyRole::Card,
                created: now,
                retired_at: 0,
            },
            others: Vec::new(),
        }
    }

    fn all(&self) -> impl Iterator<Item = &OwnKey> {
        std::iter::once(&self.card).chain(self.others.iter())
    }

    /// The card's first-contact key.
    pub fn card_key(&self) -> &MailboxSecret {
        &self.card.secret
    }

    /// Number of keys held (the card key included, so at least 1).
    pub fn len(&self) -> usize {
        1 + self.others.len()
    }

    /// Always false: a ring holds at least its card key.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Ids and roles of the keys held, the card key first.
    pub fn key_ids(&self) -> impl Iterator<Item = ([u8; MAILBOX_KEY_ID_LEN], KeyRole)> + '_ {
        self.all().map(|k| (k.secret.key_id(), k.role))
    }

    /// The card was rotated (`liaison rotate`): `new_card_key` becomes the card key, the old one
    /// is retired at `now` and erased [`MAILBOX_KEY_RETAIN_SECS`] later.
    pub fn replace_card_key(
        &mut self,
        new_card_key: MailboxSecret,
        now: u64,
    ) -> Result<(), MailboxRingError> {
        if self.find(&new_card_key.key_id()).is_some() {
            return Err(MailboxRingError::Duplicate);
        }
        if self.len() >= MAX_MAILBOX_RING_KEYS {
            return Err(MailboxRingError::Full);
        }
        let mut old = std::mem::replace(
            &mut self.card,
            OwnKey {
                secret: new_card_key,
                role: KeyRole::Card,
                created: now,
                retired_at: 0,
            },
        );
        old.role = KeyRole::RetiredCard;
        old.retired_at = now;
        self.others.push(old);
        Ok(())
    }

    fn newest_fresh_created(&self) -> Option<u64> {
        self.others
            .iter()
            .filter(|k| k.role == KeyRole::Fresh)
            .map(|k| k.created)
            .max()
    }

    /// True when a fresh key is due: none was made in the last [`MAILBOX_KEY_ROTATE_SECS`].
    /// (A clock that went back makes no new key until it passes the newest one's creation.)
    pub fn needs_fresh_key(&self, now: u64) -> bool {
        match self.newest_fresh_created() {
            None => true,
            Some(c) => now >= c.saturating_add(MAILBOX_KEY_ROTATE_SECS),
        }
    }

    /// Makes a fresh key if one is due, signed by `signing_key` with `not_after = now +
    /// MAILBOX_KEY_SEND_LIFETIME_SECS`; returns its public key (to send in `MBOX_KEY` frames).
    /// Persist the ring before advertising the key.
    pub fn rotate(
        &mut self,
        signing_key: &SigningKey,
        now: u64,
    ) -> Result<Option<MailboxKeyPub>, MailboxRingError> {
        if !self.needs_fresh_key(now) {
            return Ok(None);
        }
        let secret = MailboxSecret::generate(
            signing_key,
            now.saturating_add(MAILBOX_KEY_SEND_LIFETIME_SECS),
        )?;
        let public = secret.public().clone();
        self.add_fresh(secret, now)?;
        Ok(Some(public))
    }

    /// Adds a fresh key made elsewhere (`created` = unix seconds it was made).
    pub fn add_fresh(
        &mut self,
        secret: MailboxSecret,
        created: u64,
    ) -> Result<(), MailboxRingError> {
        if self.find(&secret.key_id()).is_some() {
            return Err(MailboxRingError::Duplicate);
        }
        if self.len() >= MAX_MAILBOX_RING_KEYS {
            return Err(MailboxRingError::Full);
        }
        self.others.push(OwnKey {
            secret,
            role: KeyRole::Fresh,
            created,
            retired_at: 0,
        });
        Ok(())
    }

    /// The key to advertise now (message 2 payloads, `MBOX_KEY` frames): the newest fresh key
    /// with `now ≤ not_after`, else the card key.
    pub fn current_for_peers(&self, now: u64) -> &MailboxKeyPub {
        self.others
            .iter()
            .filter(|k| k.role == KeyRole::Fresh && now <= k.secret.not_after())
            .max_by_key(|k| (k.secret.not_after(), k.created))
            .unwrap_or(&self.card)
            .secret
            .public()
    }

    /// The retained secret with id `key_id`, for opening an envelope. Call
    /// [`MailboxRing::prune`] first so that erased keys are gone.
    pub fn find(&self, key_id: &[u8; MAILBOX_KEY_ID_LEN]) -> Option<&MailboxSecret> {
        self.all()
            .find(|k| k.secret.key_id() == *key_id)
            .map(|k| &k.secret)
    }

    /// Erases every key past its retention (fresh: `not_after + 8 days`; retired card key:
    /// replacement + 8 days) and returns their ids: delete them from storage (persist the
    /// ring) now. The secrets are wiped from memory here.
    pub fn prune(&mut self, now: u64) -> Vec<[u8; MAILBOX_KEY_ID_LEN]> {
        let mut gone = Vec::new();
        self.others.retain(|k| match k.erase_at() {
            Some(t) if now >= t => {
                gone.push(k.secret.key_id());
                false
            }
            _ => true,
        });
        gone
    }

    /// The next unix time at which [`MailboxRing::rotate`] or [`MailboxRing::prune`] has work:
    /// arm a timer for it.
    pub fn next_deadline(&self) -> u64 {
        let rotate = self
            .newest_fresh_created()
            .map_or(0, |c| c.saturating_add(MAILBOX_KEY_ROTATE_SECS));
        self.others
            .iter()
            .filter_map(OwnKey::erase_at)
            .fold(rotate, u64::min)
    }

    /// The storage form (module documentation), wiped on drop.
    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>, MailboxRingError> {
        let stored = StoredRing {
            version: RING_VERSION,
            keys: self
                .all()
                .map(|k| StoredOwnKey {
                    role: k.role.to_u8(),
                    created: k.created,
                    retired_at: k.retired_at,
                    secret: k.secret.to_stored(),
                })
                .collect(),
        };
        codec::encode(&stored, MAX_MAILBOX_RING_LEN)
            .map(Zeroizing::new)
            .map_err(|e| MailboxRingError::Malformed(e.to_string()))
    }

    /// Loads the storage form and re-verifies every key against `identity_pub` (ours).
    pub fn from_bytes(
        bytes: &[u8],
        identity_pub: &[u8; KEY_LEN],
    ) -> Result<Self, MailboxRingError> {
        match bytes.first() {
            Some(&RING_VERSION) => {}
            Some(v) => {
                return Err(MailboxRingError::Malformed(format!(
                    "unsupported mailbox ring version {v}"
                )));
            }
            None => return Err(MailboxRingError::Malformed("empty".into())),
        }
        let stored: StoredRing = codec::decode(bytes, MAX_MAILBOX_RING_LEN)
            .map_err(|e| MailboxRingError::Malformed(e.to_string()))?;
        if stored.keys.is_empty() || stored.keys.len() > MAX_MAILBOX_RING_KEYS {
            return Err(MailboxRingError::Malformed("key count".into()));
        }
        let mut card: Option<OwnKey> = None;
        let mut others: Vec<OwnKey> = Vec::with_capacity(stored.keys.len());
        for s in &stored.keys {
            if s.secret.version != 1 {
                return Err(MailboxRingError::Malformed(
                    "unsupported mailbox secret version".into(),
                ));
            }
            let role = KeyRole::from_u8(s.role)
                .ok_or_else(|| MailboxRingError::Malformed("unknown key role".into()))?;
            let secret = MailboxSecret::from_stored(&s.secret);
            verify_mailbox_key(secret.public(), identity_pub)?;
            if card
                .iter()
                .chain(others.iter())
                .any(|k| k.secret.key_id() == secret.key_id())
            {
                return Err(MailboxRingError::Duplicate);
            }
            let key = OwnKey {
                secret,
                role,
                created: s.created,
                retired_at: s.retired_at,
            };
            if role == KeyRole::Card {
                if card.replace(key).is_some() {
                    return Err(MailboxRingError::Malformed(
                        "a ring holds exactly one card key".into(),
                    ));
                }
            } else {
                others.push(key);
            }
        }
        let card = card.ok_or_else(|| {
            MailboxRingError::Malformed("a ring holds exactly one card key".into())
        })?;
        Ok(MailboxRing { card, others })
    }
}

impl fmt::Debug for MailboxRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut l = f.debug_list();
        for k in self.all() {
            l.entry(&(hex(&k.secret.key_id()), k.role, k.secret.not_after()));
        }
        l.finish()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Serialize, Deserialize)]
struct StoredRing {
    version: u8,
    keys: Vec<StoredOwnKey>,
}

#[derive(Serialize, Deserialize)]
struct StoredOwnKey {
    role: u8,
    created: u64,
    retired_at: u64,
    /// Wiped on drop by its own `Drop`.
    secret: StoredMailboxSecret,
}

/// What became of a peer's in-band mailbox key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerKeyOutcome {
    /// Verified and now the key to seal to.
    Accepted,
    /// The key we already use (a repeat or a replay).
    Known,
    /// `not_after` is in the past.
    Expired,
    /// Not newer (by `not_after`) than the key we hold: an old key, or a replay.
    Older,
    /// `not_after` is more than [`MAX_MAILBOX_KEY_AHEAD_SECS`] ahead.
    TooFarAhead,
}

/// A peer's newest in-band mailbox key (module documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerMailboxKeys {
    newest: Option<MailboxKeyPub>,
}

/// True if an X25519 public key is of low order: any clamped scalar (a multiple of the
/// cofactor 8) maps it to the identity, so one fixed scalar decides it.
fn x25519_low_order(public: &[u8; KEY_LEN]) -> bool {
    NoiseSecret::from_bytes([0x5c; KEY_LEN])
        .dh(public)
        .is_none()
}

impl PeerMailboxKeys {
    /// No in-band key yet: senders use the card's key.
    pub fn new() -> Self {
        Self::default()
    }

    /// The newest in-band key held, expired or not.
    pub fn newest(&self) -> Option<&MailboxKeyPub> {
        self.newest.as_ref()
    }

    /// Considers a mailbox key the peer sent in-band (message 2 payload or `MBOX_KEY`). Cheap
    /// checks first (known, expired, too far ahead, not newer: ignored without verifying),
    /// then `verify_mailbox_key` against `peer_identity` and the low-order check; an error is
    /// an anomaly (the peer sent a key it did not sign).
    pub fn accept_peer_key(
        &mut self,
        key: &MailboxKeyPub,
        peer_identity: &[u8; KEY_LEN],
        now: u64,
    ) -> Result<PeerKeyOutcome, MailboxRingError> {
        if let Some(cur) = &self.newest
            && cur.key_id == key.key_id
        {
            return Ok(PeerKeyOutcome::Known);
        }
        if key.not_after < now {
            return Ok(PeerKeyOutcome::Expired);
        }
        if key.not_after > now.saturating_add(MAX_MAILBOX_KEY_AHEAD_SECS) {
            return Ok(PeerKeyOutcome::TooFarAhead);
        }
        if let Some(cur) = &self.newest
            && key.not_after <= cur.not_after
        {
            return Ok(PeerKeyOutcome::Older);
        }
        verify_mailbox_key(key, peer_identity)?;
        if x25519_low_order(&key.x25519) {
            return Err(MailboxRingError::LowOrder);
        }
        self.newest = Some(key.clone());
        Ok(PeerKeyOutcome::Accepted)
    }

    /// The key to seal to at `now`: the newest in-band key while `now ≤ not_after`, else
    /// `card_key` (the peer's pinned card's key, used even past its `not_after`).
    pub fn key_for_sending<'a>(
        &'a self,
        now: u64,
        card_key: &'a MailboxKeyPub,
    ) -> &'a MailboxKeyPub {
        match &self.newest {
            Some(k) if now <= k.not_after => k,
            _ => card_key,
        }
    }

    /// The storage form (module documentation).
    pub fn to_bytes(&self) -> Result<Vec<u8>, MailboxRingError> {
        codec::encode(&(PEER_VERSION, &self.newest), MAX_PEER_MAILBOX_LEN)
            .map_err(|e| MailboxRingError::Malformed(e.to_string()))
    }

    /// Loads the storage form and re-verifies the key against `peer_identity`.
    pub fn from_bytes(
        bytes: &[u8],
        peer_identity: &[u8; KEY_LEN],
    ) -> Result<Self, MailboxRingError> {
        let (version, newest): (u8, Option<MailboxKeyPub>) =
            codec::decode(bytes, MAX_PEER_MAILBOX_LEN)
                .map_err(|e| MailboxRingError::Malformed(e.to_string()))?;
        if version != PEER_VERSION {
            return Err(MailboxRingError::Malformed(format!(
                "unsupported peer mailbox version {version}"
            )));
        }
        if let Some(k) = &newest {
            verify_mailbox_key(k, peer_identity)?;
            if x25519_low_order(&k.x25519) {
                return Err(MailboxRingError::LowOrder);
            }
        }
        Ok(PeerMailboxKeys { newest })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::envelope;
    use crate::keys::{LocalKeys, PeerKeys};
    use ed25519_dalek::Signer;
    use liaison_wire::codec::Fixed;
    use proptest::prelude::*;

    const DAY: u64 = 86_400;
    const T0: u64 = 1_800_000_000;

    fn signer(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    fn ring_at(t: u64) -> (SigningKey, MailboxRing) {
        let sk = signer(1);
        let card = MailboxSecret::generate(&sk, t + 365 * DAY).unwrap();
        (sk, MailboxRing::new(card, t))
    }

    #[test]
    fn thirty_days_of_virtual_time() {
        let (sk, mut ring) = ring_at(T0);
        let card_id = ring.card_key().key_id();
        // before any fresh key: the card key is advertised
        assert_eq!(ring.current_for_peers(T0).key_id, card_id);
        let mut made: Vec<(u64, [u8; 8])> = Vec::new();
        let mut erased: Vec<(u64, [u8; 8])> = Vec::new();
        // the driver wakes every hour
        let mut now = T0;
        while now <= T0 + 30 * DAY {
            erased.extend(ring.prune(now).into_iter().map(|id| (now, id)));
            if let Some(p) = ring.rotate(&sk, now).unwrap() {
                assert_eq!(p.not_after, now + 2 * DAY);
                made.push((now, p.key_id));
            }
            let cur = ring.current_for_peers(now);
            assert_ne!(cur.key_id, card_id);
            assert!(now <= cur.not_after && cur.not_after <= now + 2 * DAY);
            assert_eq!(cur.key_id, made.last().unwrap().1, "newest is advertised");
            assert!(ring.find(&card_id).is_some(), "card key is never erased");
            assert!(ring.len() <= 12, "bounded: {}", ring.len());
            assert!(ring.next_deadline() > now);
            now += 3600;
        }
        assert_eq!(made.len(), 31, "one fresh key a day");
        for w in made.windows(2) {
            assert_eq!(w[1].0 - w[0].0, DAY);
        }
        // each fresh key is erased exactly 10 days (2 of use + 8 of retention) after creation,
        // to the hour the driver woke
        for (t, id) in &made {
            match erased.iter().find(|(_, e)| e == id) {
                Some((te, _)) => assert_eq!(*te, t + 10 * DAY),
                None => {
                    assert!(t + 10 * DAY > T0 + 30 * DAY);
                    assert!(ring.find(id).is_some());
                }
            }
        }
        assert_eq!(erased.len(), 21);
    }

    #[test]
    fn keys_open_envelopes_until_erased() {
        let (sk, mut ring) = ring_at(T0);
        let k1 = ring.rotate(&sk, T0).unwrap().unwrap();
        assert!(ring.rotate(&sk, T0 + DAY - 1).unwrap().is_none());
        let k2 = ring.rotate(&sk, T0 + DAY).unwrap().unwrap();
        assert_eq!(ring.current_for_peers(T0 + DAY), &k2);
        assert!(ring.prune(k1.not_after + 8 * DAY - 1).is_empty());
        assert!(ring.find(&k1.key_id).is_some());
        assert_eq!(ring.prune(k1.not_after + 8 * DAY), vec![k1.key_id]);
        assert!(ring.find(&k1.key_id).is_none());
        assert!(ring.find(&k2.key_id).is_some());
        // after every fresh key expired (node was off): the card key is advertised again
        assert_eq!(
            ring.current_for_peers(k2.not_after + 1),
            ring.card_key().public()
        );
    }

    #[test]
    fn card_rotation_retires_the_old_card_key() {
        let (sk, mut ring) = ring_at(T0);
        let old = ring.card_key().key_id();
        let new = MailboxSecret::generate(&sk, T0 + 400 * DAY).unwrap();
        let new_id = new.key_id();
        ring.replace_card_key(new.clone(), T0 + 5 * DAY).unwrap();
        assert_eq!(ring.card_key().key_id(), new_id);
        assert!(matches!(
            ring.replace_card_key(new, T0 + 5 * DAY),
            Err(MailboxRingError::Duplicate)
        ));
        assert!(ring.prune(T0 + 13 * DAY - 1).is_empty());
        assert!(ring.find(&old).is_some());
        assert_eq!(ring.prune(T0 + 13 * DAY), vec![old]);
        assert_eq!(ring.len(), 1);
        // the current card key survives even long past its not_after
        assert!(ring.prune(T0 + 10_000 * DAY).is_empty());
        assert!(ring.find(&new_id).is_some());
    }

    #[test]
    fn clock_going_back_makes_no_burst_of_keys() {
        let (sk, mut ring) = ring_at(T0);
        ring.rotate(&sk, T0 + 10 * DAY).unwrap().unwrap();
        for t in [T0, T0 + DAY, T0 + 5 * DAY, T0 + 10 * DAY + DAY - 1] {
            assert!(ring.rotate(&sk, t).unwrap().is_none());
        }
        assert_eq!(ring.len(), 2);
    }

    #[test]
    fn ring_is_bounded() {
        let (sk, mut ring) = ring_at(T0);
        for i in 0..(MAX_MAILBOX_RING_KEYS as u64 - 1) {
            ring.rotate(&sk, T0 + i * DAY).unwrap().unwrap();
        }
        assert!(matches!(
            ring.rotate(&sk, T0 + 100 * DAY),
            Err(MailboxRingError::Full)
        ));
        ring.prune(T0 + 100 * DAY);
        assert!(ring.rotate(&sk, T0 + 100 * DAY).unwrap().is_some());
    }

    #[test]
    fn storage_round_trip_and_checks() {
        let (sk, mut ring) = ring_at(T0);
        for d in 0..5 {
            ring.rotate(&sk, T0 + d * DAY).unwrap();
        }
        let new_card = MailboxSecret::generate(&sk, T0 + 400 * DAY).unwrap();
        ring.replace_card_key(new_card, T0 + 4 * DAY).unwrap();
        let id = sk.verifying_key().to_bytes();
        let bytes = ring.to_bytes().unwrap();
        assert!(bytes.len() <= MAX_MAILBOX_RING_LEN);
        let back = MailboxRing::from_bytes(&bytes, &id).unwrap();
        assert_eq!(
            back.key_ids().collect::<Vec<_>>(),
            ring.key_ids().collect::<Vec<_>>()
        );
        assert_eq!(
            back.current_for_peers(T0 + 4 * DAY),
            ring.current_for_peers(T0 + 4 * DAY)
        );
        assert_eq!(back.next_deadline(), ring.next_deadline());
        assert_eq!(*back.to_bytes().unwrap(), *bytes);
        // another identity's ring, damaged, truncated, extended, other version
        assert!(MailboxRing::from_bytes(&bytes, &signer(2).verifying_key().to_bytes()).is_err());
        let mut b = bytes.to_vec();
        let last = b.len() - 1;
        b[last] ^= 1; // inside the last key's signature
        assert!(MailboxRing::from_bytes(&b, &id).is_err());
        assert!(MailboxRing::from_bytes(&bytes[..bytes.len() - 1], &id).is_err());
        let mut b = bytes.to_vec();
        b.push(0);
        assert!(MailboxRing::from_bytes(&b, &id).is_err());
        let mut b = bytes.to_vec();
        b[0] = 2;
        assert!(MailboxRing::from_bytes(&b, &id).is_err());
        assert!(MailboxRing::from_bytes(&[], &id).is_err());
        // a huge count is refused on the limit, not allocated
        let mut b = vec![1u8];
        b.extend(u64::MAX.to_le_bytes());
        assert!(MailboxRing::from_bytes(&b, &id).is_err());
        // zero card keys
        let stored = StoredRing {
            version: 1,
            keys: vec![StoredOwnKey {
                role: 1,
                created: T0,
                retired_at: 0,
                secret: ring.others[1].secret.to_stored(),
            }],
        };
        let b = codec::encode(&stored, MAX_MAILBOX_RING_LEN).unwrap();
        assert!(MailboxRing::from_bytes(&b, &id).is_err());
        // two card keys
        let two = |a: &OwnKey, b: &OwnKey| StoredRing {
            version: 1,
            keys: [a, b]
                .iter()
                .map(|k| StoredOwnKey {
                    role: 0,
                    created: T0,
                    retired_at: 0,
                    secret: k.secret.to_stored(),
                })
                .collect(),
        };
        let b = codec::encode(&two(&ring.card, &ring.others[1]), MAX_MAILBOX_RING_LEN).unwrap();
        assert!(MailboxRing::from_bytes(&b, &id).is_err());
        // the same key twice
        let mut b_ok = two(&ring.card, &ring.others[1]);
        b_ok.keys[1].role = 1;
        let b = codec::encode(&b_ok, MAX_MAILBOX_RING_LEN).unwrap();
        assert!(MailboxRing::from_bytes(&b, &id).is_ok());
        let b = codec::encode(&two(&ring.card, &ring.card), MAX_MAILBOX_RING_LEN).unwrap();
        assert!(matches!(
            MailboxRing::from_bytes(&b, &id),
            Err(MailboxRingError::Duplicate)
        ));
        assert!(!format!("{ring:?}").is_empty());
    }

    fn peer_key(sk: &SigningKey, not_after: u64) -> MailboxKeyPub {
        MailboxSecret::generate(sk, not_after)
            .unwrap()
            .public()
            .clone()
    }

    #[test]
    fn peer_keys_newest_unexpired_else_card() {
        let bob = signer(2);
        let bob_id = bob.verifying_key().to_bytes();
        let card = peer_key(&bob, T0 + 365 * DAY);
        let mut p = PeerMailboxKeys::new();
        assert_eq!(p.key_for_sending(T0, &card), &card);
        let k1 = peer_key(&bob, T0 + 2 * DAY);
        assert_eq!(
            p.accept_peer_key(&k1, &bob_id, T0).unwrap(),
            PeerKeyOutcome::Accepted
        );
        assert_eq!(
            p.accept_peer_key(&k1, &bob_id, T0).unwrap(),
            PeerKeyOutcome::Known
        );
        assert_eq!(p.key_for_sending(T0, &card), &k1);
        let k2 = peer_key(&bob, T0 + 3 * DAY);
        assert_eq!(
            p.accept_peer_key(&k2, &bob_id, T0 + DAY).unwrap(),
            PeerKeyOutcome::Accepted
        );
        // a replayed older key is ignored
        assert_eq!(
            p.accept_peer_key(&k1, &bob_id, T0 + DAY).unwrap(),
            PeerKeyOutcome::Older
        );
        assert_eq!(p.key_for_sending(T0 + DAY, &card), &k2);
        // expired: back to the card's key (even an expired card key)
        assert_eq!(p.key_for_sending(T0 + 3 * DAY, &card), &k2);
        assert_eq!(p.key_for_sending(T0 + 3 * DAY + 1, &card), &card);
        assert_eq!(p.key_for_sending(T0 + 1000 * DAY, &card), &card);
        let k_old = peer_key(&bob, T0);
        assert_eq!(
            p.accept_peer_key(&k_old, &bob_id, T0 + 1).unwrap(),
            PeerKeyOutcome::Expired
        );
        // a far-future key cannot hold back the next ones
        let far = peer_key(&bob, T0 + 365 * DAY);
        assert_eq!(
            p.accept_peer_key(&far, &bob_id, T0 + DAY).unwrap(),
            PeerKeyOutcome::TooFarAhead
        );
    }

    #[test]
    fn peer_keys_must_verify() {
        let bob = signer(2);
        let bob_id = bob.verifying_key().to_bytes();
        let mallory = signer(3);
        let mut p = PeerMailboxKeys::new();
        let forged = peer_key(&mallory, T0 + DAY);
        assert!(p.accept_peer_key(&forged, &bob_id, T0).is_err());
        let mut tampered = peer_key(&bob, T0 + DAY);
        tampered.not_after += 1;
        assert!(p.accept_peer_key(&tampered, &bob_id, T0).is_err());
        // properly signed, right id, but a low-order X25519 key
        let mut low = peer_key(&bob, T0 + DAY);
        low.x25519 = [0; 32];
        low.key_id = crate::mailbox_key::mailbox_key_id(&low.x25519, &low.mlkem_ek.0);
        low.signature = Fixed(bob.sign(&low.signed_bytes()).to_bytes());
        assert!(matches!(
            p.accept_peer_key(&low, &bob_id, T0),
            Err(MailboxRingError::LowOrder)
        ));
        assert_eq!(p.newest(), None);
    }

    #[test]
    fn peer_storage_round_trip() {
        let bob = signer(2);
        let bob_id = bob.verifying_key().to_bytes();
        let mut p = PeerMailboxKeys::new();
        let empty = p.to_bytes().unwrap();
        assert_eq!(empty, vec![1, 0]);
        assert_eq!(PeerMailboxKeys::from_bytes(&empty, &bob_id).unwrap(), p);
        p.accept_peer_key(&peer_key(&bob, T0 + DAY), &bob_id, T0)
            .unwrap();
        let b = p.to_bytes().unwrap();
        assert_eq!(b.len(), MAX_PEER_MAILBOX_LEN);
        assert_eq!(PeerMailboxKeys::from_bytes(&b, &bob_id).unwrap(), p);
        assert!(PeerMailboxKeys::from_bytes(&b, &signer(3).verifying_key().to_bytes()).is_err());
        assert!(PeerMailboxKeys::from_bytes(&b[..b.len() - 1], &bob_id).is_err());
        let mut v2 = b.clone();
        v2[0] = 2;
        assert!(PeerMailboxKeys::from_bytes(&v2, &bob_id).is_err());
    }

    #[test]
    fn sealing_follows_the_rotation() {
        // alice seals to what bob advertises; bob opens with his ring until the key is erased
        let alice_sk = signer(4);
        let alice = LocalKeys {
            identity: alice_sk.verifying_key().to_bytes(),
            noise: NoiseSecret::from_bytes([5; 32]),
        };
        let (bob_sk, mut ring) = ring_at(T0);
        let bob = LocalKeys {
            identity: bob_sk.verifying_key().to_bytes(),
            noise: NoiseSecret::from_bytes([6; 32]),
        };
        let peer_bob = PeerKeys {
            identity: bob.identity,
            noise: bob.noise.public(),
            pairing: None,
        };
        let peer_alice = PeerKeys {
            identity: alice.identity,
            noise: alice.noise.public(),
            pairing: None,
        };
        let card = ring.card_key().public().clone();
        let mut bobs_keys = PeerMailboxKeys::new();
        let fresh = ring.rotate(&bob_sk, T0).unwrap().unwrap();
        bobs_keys
            .accept_peer_key(&fresh, &bob.identity, T0)
            .unwrap();
        let to = bobs_keys.key_for_sending(T0 + DAY, &card);
        assert_eq!(to.key_id, fresh.key_id);
        let blob = envelope::seal(&alice, &alice_sk, &peer_bob, to, &[]).unwrap();
        let open_at = |ring: &MailboxRing| {
            envelope::open(&bob, &peer_alice, |id| ring.find(id), &blob).is_ok()
        };
        assert!(open_at(&ring));
        ring.prune(fresh.not_after + 8 * DAY - 1);
        assert!(open_at(&ring));
        ring.prune(fresh.not_after + 8 * DAY);
        assert!(!open_at(&ring));
        // after the fresh key expired alice falls back to the card key, which still opens
        let to = bobs_keys.key_for_sending(fresh.not_after + 1, &card);
        let blob = envelope::seal(&alice, &alice_sk, &peer_bob, to, &[]).unwrap();
        assert!(envelope::open(&bob, &peer_alice, |id| ring.find(id), &blob).is_ok());
    }

    proptest! {
        #[test]
        fn ring_loader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = MailboxRing::from_bytes(&bytes, &[7; 32]);
            let _ = PeerMailboxKeys::from_bytes(&bytes, &[7; 32]);
        }
    }
}
