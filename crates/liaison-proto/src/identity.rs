//! A node's identity (its long-term secrets and card fields), contact-card signing and
//! verification, and the checks before pinning a new contact (design §4).
//!
//! - [`Identity`]: the Ed25519 identity key, the X25519 Noise static, the direct-line hop key
//!   seed, the first-contact mailbox key, and the card fields (name, serial, created, hints).
//!   [`Identity::card`] signs `CARD_SIG_CONTEXT || bincode(CardBody)` with the identity key.
//!   No key is ever derived from another (no Ed25519 -> X25519 conversion).
//! - [`VerifiedCard`]: proof that a card was checked (design §9.4). Only [`verify_card`] (and
//!   [`parse_card_text`], which calls it) can build one.
//! - [`check_new_contact`]: refuses our own keys, keys already pinned to another contact, and
//!   keys whose X25519 exchange is not contributory (low-order points).
//!
//! Storage form of an identity ([`Identity::to_secret_bytes`], bincode through
//! `liaison_wire::codec`, at most [`IDENTITY_SECRET_MAX_LEN`] bytes), kept only inside the
//! encrypted key file: `version u8 (= 1) || name String || identity_seed [32] ||
//! noise_secret [32] || hop_seed [32] || mailbox (MailboxSecret storage form, 169 bytes) ||
//! serial u64 || created u64 || addr Option<String> || relays Vec<String>`. Loading it
//! rebuilds and re-verifies the card, so a damaged or inconsistent file is refused.

use crate::keys::{LocalKeys, NoiseSecret, RngError, Secret32, random_secret};
use crate::mailbox_key::{MailboxKeyError, MailboxSecret, StoredMailboxSecret, verify_mailbox_key};
use crate::safety;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use liaison_wire::card::{Card, CardBody, CardFormatError, MailboxKeyPub};
use liaison_wire::codec::{self, Fixed};
use liaison_wire::consts::{CARD_SIG_CONTEXT, CARD_TEXT_PREFIX, KEY_LEN, PROTOCOL_VERSION};
use serde::{Deserialize, Serialize};
use std::fmt;
use zeroize::{Zeroize, Zeroizing};

/// Lifetime of the first-contact mailbox key in a card, seconds (365 days). Senders fall back
/// to the card's key even after `not_after` when they know no newer key, so its private half is
/// kept as long as the card is current; `liaison rotate` makes a fresh one.
pub const FIRST_CONTACT_MAILBOX_LIFETIME_SECS: u64 = 365 * 86_400;

/// Largest storage form of an identity, bytes.
pub const IDENTITY_SECRET_MAX_LEN: usize = 4096;

/// Version byte of the identity storage form.
const SECRET_VERSION: u8 = 1;

/// Failures making, changing or loading our own identity (local errors).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A card field (name, address or relay hint) is out of range.
    #[error(transparent)]
    Field(#[from] CardFormatError),
    /// The stored identity is malformed, of an unknown version, or inconsistent.
    #[error("stored identity is malformed: {0}")]
    Malformed(String),
    /// Making the mailbox key failed.
    #[error(transparent)]
    Mailbox(#[from] MailboxKeyError),
    /// The system random generator failed.
    #[error(transparent)]
    Rng(#[from] RngError),
}

/// Why a contact card was refused. Every variant is a failed verification (CLI exit 3).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CardError {
    /// The card bytes or text do not parse.
    #[error(transparent)]
    Format(#[from] CardFormatError),
    /// The text holds more than one `liaison-card:` line.
    #[error("the text holds more than one contact card: give exactly one")]
    SeveralCards,
    /// The identity key is not a canonical, non-weak Ed25519 public key.
    #[error("contact card has an invalid identity key")]
    BadIdentityKey,
    /// The identity-key signature over the card does not verify.
    #[error("contact card signature does not verify: the card was altered or damaged")]
    BadSignature,
    /// The hop key is not a canonical, non-weak Ed25519 public key.
    #[error("contact card has an invalid hop key")]
    BadHopKey,
    /// The embedded mailbox key is refused.
    #[error("contact card's mailbox key is refused: {0}")]
    BadMailboxKey(#[source] MailboxKeyError),
}

/// Why a verified card cannot be pinned as a new contact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContactError {
    /// One of the card's keys is one of ours.
    #[error("this card's {which} key is one of this node's own keys: it is our own card")]
    OwnKey {
        /// Which of the card's keys (`identity`, `noise`, `hop`).
        which: &'static str,
    },
    /// One of the card's keys is already pinned.
    #[error(
        "this card's {which} key is already pinned to contact {contact:?}: remove that contact \
         first, or use --replace on it"
    )]
    AlreadyPinned {
        /// Which of the card's keys (`identity`, `noise`, `hop`).
        which: &'static str,
        /// The contact holding it.
        contact: String,
    },
    /// An X25519 key of the card is a low-order point: a DH with it is not contributory.
    #[error("this card's {which} key is a low-order point (the key exchange would be predictable)")]
    NotContributory {
        /// Which key (`noise` or `mailbox`).
        which: &'static str,
    },
}

/// This node's long-term identity: secrets and card fields.
#[derive(Clone)]
pub struct Identity {
    name: String,
    signing: SigningKey,
    noise: NoiseSecret,
    hop_seed: Secret32,
    mailbox: MailboxSecret,
    serial: u64,
    created: u64,
    addr: Option<String>,
    relays: Vec<String>,
}

impl Identity {
    /// A fresh identity named `name` (1..=64 bytes, no control characters), card serial 1.
    pub fn generate(name: &str, now_unix: u64) -> Result<Self, IdentityError> {
        liaison_wire::card::check_name(name)?;
        let seed = random_secret::<32>()?;
        let signing = SigningKey::from_bytes(&seed);
        let noise = NoiseSecret::generate()?;
        let hop_seed = random_secret::<32>()?;
        let mailbox = MailboxSecret::generate(
            &signing,
            now_unix.saturating_add(FIRST_CONTACT_MAILBOX_LIFETIME_SECS),
        )?;
        let id = Identity {
            name: name.to_owned(),
            signing,
            noise,
            hop_seed,
            mailbox,
            serial: 1,
            created: now_unix,
            addr: None,
            relays: Vec::new(),
        };
        id.card()?;
        Ok(id)
    }

    /// A rotated copy (`liaison rotate`): same identity key, name and hints; new Noise static,
    /// hop key and first-contact mailbox key; serial + 1; `created = now_unix`. `self` is left
    /// untouched so the caller can keep the old Noise static for its grace period.
    pub fn rotated(&self, now_unix: u64) -> Result<Self, IdentityError> {
        let mailbox = MailboxSecret::generate(
            &self.signing,
            now_unix.saturating_add(FIRST_CONTACT_MAILBOX_LIFETIME_SECS),
        )?;
        let id = Identity {
            name: self.name.clone(),
            signing: self.signing.clone(),
            noise: NoiseSecret::generate()?,
            hop_seed: random_secret::<32>()?,
            mailbox,
            serial: self
                .serial
                .checked_add(1)
                .ok_or_else(|| IdentityError::Malformed("card serial exhausted".into()))?,
            created: now_unix,
            addr: self.addr.clone(),
            relays: self.relays.clone(),
        };
        id.card()?;
        Ok(id)
    }

    /// Changes the address and relay hints of the card (checked), increasing the serial.
    pub fn set_hints(
        &mut self,
        addr: Option<String>,
        relays: Vec<String>,
    ) -> Result<(), IdentityError> {
        let serial = self
            .serial
            .checked_add(1)
            .ok_or_else(|| IdentityError::Malformed("card serial exhausted".into()))?;
        let mut next = self.clone();
        next.addr = addr;
        next.relays = relays;
        next.serial = serial;
        next.card()?;
        *self = next;
        Ok(())
    }

    /// Display name in the card.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Ed25519 identity signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    /// The Ed25519 identity public key.
    pub fn identity_public(&self) -> [u8; KEY_LEN] {
        self.signing.verifying_key().to_bytes()
    }

    /// The X25519 Noise static secret.
    pub fn noise_secret(&self) -> &NoiseSecret {
        &self.noise
    }

    /// The X25519 Noise static public key.
    pub fn noise_public(&self) -> [u8; KEY_LEN] {
        self.noise.public()
    }

    /// Seed of the direct-line hop key (the Ed25519 key of the TLS certificate).
    pub fn hop_seed(&self) -> &Secret32 {
        &self.hop_seed
    }

    /// Public key of the direct-line hop certificate, as pinned from the card.
    pub fn hop_public(&self) -> [u8; KEY_LEN] {
        SigningKey::from_bytes(&self.hop_seed)
            .verifying_key()
            .to_bytes()
    }

    /// The first-contact mailbox key (the one in the card).
    pub fn mailbox(&self) -> &MailboxSecret {
        &self.mailbox
    }

    /// Card serial; increases with every change of the card.
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// Unix seconds when the current card was made.
    pub fn created(&self) -> u64 {
        self.created
    }

    /// Address hint (`HOST:PORT`).
    pub fn addr(&self) -> Option<&str> {
        self.addr.as_deref()
    }

    /// Relay hints.
    pub fn relays(&self) -> &[String] {
        &self.relays
    }

    /// What a live session needs from us.
    pub fn local_keys(&self) -> LocalKeys {
        LocalKeys {
            identity: self.identity_public(),
            noise: self.noise.clone(),
        }
    }

    /// Our fingerprint: 30 digits in six groups (see [`crate::safety`]).
    pub fn fingerprint(&self) -> String {
        safety::fingerprint(&self.identity_public())
    }

    /// Our signed contact card.
    pub fn card(&self) -> Result<Card, IdentityError> {
        let body = CardBody {
            version: PROTOCOL_VERSION,
            name: self.name.clone(),
            identity_key: self.identity_public(),
            noise_static: self.noise_public(),
            hop_key: self.hop_public(),
            mailbox: self.mailbox.public().clone(),
            serial: self.serial,
            created: self.created,
            addr: self.addr.clone(),
            relays: self.relays.clone(),
        };
        let body_bytes = Card::encode_body(&body)?;
        let mut msg = Vec::with_capacity(CARD_SIG_CONTEXT.len() + body_bytes.len());
        msg.extend_from_slice(CARD_SIG_CONTEXT);
        msg.extend_from_slice(&body_bytes);
        let signature = self.signing.sign(&msg).to_bytes();
        Ok(Card {
            body,
            body_bytes,
            signature,
        })
    }

    /// Our card, checked like a peer's card would be.
    pub fn verified_card(&self) -> Result<VerifiedCard, IdentityError> {
        verify_card(self.card()?).map_err(|e| IdentityError::Malformed(e.to_string()))
    }

    /// The storage form (module documentation), for the encrypted key file.
    pub fn to_secret_bytes(&self) -> Result<Zeroizing<Vec<u8>>, IdentityError> {
        let stored = StoredIdentity {
            version: SECRET_VERSION,
            name: self.name.clone(),
            identity_seed: Fixed(self.signing.to_bytes()),
            noise_secret: Fixed(*self.noise.secret_bytes()),
            hop_seed: Fixed(*self.hop_seed),
            mailbox: self.mailbox.to_stored(),
            serial: self.serial,
            created: self.created,
            addr: self.addr.clone(),
            relays: self.relays.clone(),
        };
        codec::encode(&stored, IDENTITY_SECRET_MAX_LEN)
            .map(Zeroizing::new)
            .map_err(|e| IdentityError::Malformed(e.to_string()))
    }

    /// Loads the storage form, then rebuilds and verifies the card.
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, IdentityError> {
        match bytes.first() {
            Some(&SECRET_VERSION) => {}
            Some(v) => {
                return Err(IdentityError::Malformed(format!(
                    "unsupported identity version {v}"
                )));
            }
            None => return Err(IdentityError::Malformed("empty".into())),
        }
        let stored: StoredIdentity = codec::decode(bytes, IDENTITY_SECRET_MAX_LEN)
            .map_err(|e| IdentityError::Malformed(e.to_string()))?;
        if stored.mailbox.version != SECRET_VERSION {
            return Err(IdentityError::Malformed(
                "unsupported mailbox secret version".into(),
            ));
        }
        let id = Identity {
            name: stored.name.clone(),
            signing: SigningKey::from_bytes(&stored.identity_seed.0),
            noise: NoiseSecret::from_bytes(stored.noise_secret.0),
            hop_seed: Zeroizing::new(stored.hop_seed.0),
            mailbox: MailboxSecret::from_stored(&stored.mailbox),
            serial: stored.serial,
            created: stored.created,
            addr: stored.addr.clone(),
            relays: stored.relays.clone(),
        };
        id.verified_card()?;
        Ok(id)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field("identity", &hex(&self.identity_public()))
            .field("serial", &self.serial)
            .field("secrets", &"[redacted]")
            .finish()
    }
}

/// Storage form of an identity; secret fields wiped on drop.
#[derive(Serialize, Deserialize)]
struct StoredIdentity {
    version: u8,
    name: String,
    identity_seed: Fixed<KEY_LEN>,
    noise_secret: Fixed<KEY_LEN>,
    hop_seed: Fixed<KEY_LEN>,
    mailbox: StoredMailboxSecret,
    serial: u64,
    created: u64,
    addr: Option<String>,
    relays: Vec<String>,
}

impl Drop for StoredIdentity {
    fn drop(&mut self) {
        self.identity_seed.0.zeroize();
        self.noise_secret.0.zeroize();
        self.hop_seed.0.zeroize();
    }
}

/// A contact card whose signatures and keys were checked by [`verify_card`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedCard {
    card: Card,
}

impl VerifiedCard {
    /// The checked card.
    pub fn card(&self) -> &Card {
        &self.card
    }

    /// The checked card, by value.
    pub fn into_card(self) -> Card {
        self.card
    }

    /// The one-line text form.
    pub fn to_text(&self) -> String {
        self.card.to_text()
    }

    /// The binary form (`body || signature`), e.g. for storage; reload with
    /// `verify_card(Card::from_bytes(..)?)`.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.card.to_bytes()
    }

    /// Display name chosen by the card's owner (untrusted text: never use it as a local name
    /// without the user's say).
    pub fn name(&self) -> &str {
        &self.card.body.name
    }

    /// Ed25519 identity public key.
    pub fn identity_key(&self) -> &[u8; KEY_LEN] {
        &self.card.body.identity_key
    }

    /// X25519 Noise static public key.
    pub fn noise_static(&self) -> &[u8; KEY_LEN] {
        &self.card.body.noise_static
    }

    /// Ed25519 public key of the owner's direct-line hop certificate.
    pub fn hop_key(&self) -> &[u8; KEY_LEN] {
        &self.card.body.hop_key
    }

    /// The verified first-contact mailbox key.
    pub fn mailbox(&self) -> &MailboxKeyPub {
        &self.card.body.mailbox
    }

    /// Card serial.
    pub fn serial(&self) -> u64 {
        self.card.body.serial
    }

    /// Unix seconds when the card was made (as claimed by its owner).
    pub fn created(&self) -> u64 {
        self.card.body.created
    }

    /// Address hint.
    pub fn addr(&self) -> Option<&str> {
        self.card.body.addr.as_deref()
    }

    /// Relay hints.
    pub fn relays(&self) -> &[String] {
        &self.card.body.relays
    }

    /// The owner's fingerprint (30 digits in six groups).
    pub fn fingerprint(&self) -> String {
        safety::fingerprint(self.identity_key())
    }

    /// What this card contributes to [`check_new_contact`] once pinned as `name`.
    pub fn pinned_summary(&self, name: &str) -> PinnedSummary {
        PinnedSummary {
            name: name.to_owned(),
            identity: *self.identity_key(),
            noise: *self.noise_static(),
            hop: *self.hop_key(),
        }
    }
}

/// Checks a card: identity key canonical and not weak, `verify_strict` signature over
/// `CARD_SIG_CONTEXT || body_bytes`, hop key canonical and not weak, embedded mailbox key
/// signed by the same identity key with a correct key id and a valid ML-KEM key.
pub fn verify_card(card: Card) -> Result<VerifiedCard, CardError> {
    let vk = ed25519_public(&card.body.identity_key).ok_or(CardError::BadIdentityKey)?;
    let mut msg = Vec::with_capacity(CARD_SIG_CONTEXT.len() + card.body_bytes.len());
    msg.extend_from_slice(CARD_SIG_CONTEXT);
    msg.extend_from_slice(&card.body_bytes);
    vk.verify_strict(&msg, &Signature::from_bytes(&card.signature))
        .map_err(|_| CardError::BadSignature)?;
    ed25519_public(&card.body.hop_key).ok_or(CardError::BadHopKey)?;
    verify_mailbox_key(&card.body.mailbox, &card.body.identity_key)
        .map_err(CardError::BadMailboxKey)?;
    Ok(VerifiedCard { card })
}

/// Parses and verifies a card given as text: either the single `liaison-card:` line, or a
/// text (such as a saved `liaison id` output) holding exactly one line starting with it.
pub fn parse_card_text(text: &str) -> Result<VerifiedCard, CardError> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with(CARD_TEXT_PREFIX));
    let line = match (lines.next(), lines.next()) {
        (Some(l), None) => l,
        (Some(_), Some(_)) => return Err(CardError::SeveralCards),
        (None, _) => text,
    };
    verify_card(Card::from_text(line)?)
}

/// An Ed25519 public key that decodes, re-encodes to the same bytes and is not of small order.
fn ed25519_public(bytes: &[u8; KEY_LEN]) -> Option<VerifyingKey> {
    let vk = VerifyingKey::from_bytes(bytes).ok()?;
    (vk.to_bytes() == *bytes && !vk.is_weak()).then_some(vk)
}

/// The keys of a contact already pinned, for [`check_new_contact`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedSummary {
    /// Local name of the contact.
    pub name: String,
    /// Ed25519 identity public key.
    pub identity: [u8; KEY_LEN],
    /// X25519 Noise static public key.
    pub noise: [u8; KEY_LEN],
    /// Ed25519 hop public key.
    pub hop: [u8; KEY_LEN],
}

/// Checks before pinning `card` as a new contact: none of its keys is ours, none is already
/// pinned to a contact in `pinned` (when re-pinning with `--replace`, leave the replaced contact
/// out of `pinned`), and its Noise static and mailbox X25519 keys give a contributory DH with
/// our static (not low-order points).
pub fn check_new_contact(
    card: &VerifiedCard,
    own: &Identity,
    pinned: &[PinnedSummary],
) -> Result<(), ContactError> {
    let theirs: [(&'static str, &[u8; KEY_LEN]); 3] = [
        ("identity", card.identity_key()),
        ("noise", card.noise_static()),
        ("hop", card.hop_key()),
    ];
    let ours = [own.identity_public(), own.noise_public(), own.hop_public()];
    for (which, key) in theirs {
        if ours.iter().any(|k| k == key) {
            return Err(ContactError::OwnKey { which });
        }
    }
    for p in pinned {
        for (which, key) in theirs {
            if [&p.identity, &p.noise, &p.hop].contains(&key) {
                return Err(ContactError::AlreadyPinned {
                    which,
                    contact: p.name.clone(),
                });
            }
        }
    }
    if own.noise_secret().dh(card.noise_static()).is_none() {
        return Err(ContactError::NotContributory { which: "noise" });
    }
    if own.noise_secret().dh(&card.mailbox().x25519).is_none() {
        return Err(ContactError::NotContributory { which: "mailbox" });
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_750_000_000;

    fn alice() -> Identity {
        Identity::generate("alice", NOW).unwrap()
    }

    /// Re-signs `body` with `id`'s identity key, bypassing `Identity::card`.
    fn sign_body(id: &Identity, body: CardBody) -> Card {
        let body_bytes = Card::encode_body(&body).unwrap();
        let mut msg = CARD_SIG_CONTEXT.to_vec();
        msg.extend_from_slice(&body_bytes);
        let signature = id.signing_key().sign(&msg).to_bytes();
        Card {
            body,
            body_bytes,
            signature,
        }
    }

    #[test]
    fn generated_card_verifies_and_round_trips_as_text() {
        let a = alice();
        let card = a.card().unwrap();
        assert_eq!(card.body.serial, 1);
        assert_eq!(card.body.created, NOW);
        assert_eq!(
            card.body.mailbox.not_after,
            NOW + FIRST_CONTACT_MAILBOX_LIFETIME_SECS
        );
        let v = parse_card_text(&card.to_text()).unwrap();
        assert_eq!(v.name(), "alice");
        assert_eq!(v.identity_key(), &a.identity_public());
        assert_eq!(v.noise_static(), &a.noise_public());
        assert_eq!(v.hop_key(), &a.hop_public());
        assert_eq!(v.mailbox(), a.mailbox().public());
        assert_eq!(v.fingerprint(), a.fingerprint());
        assert_eq!(v.card(), &card);
        // a saved `liaison id` output (card line plus other lines) is accepted too
        let saved = format!("{}\nfingerprint: {}\n", card.to_text(), a.fingerprint());
        assert_eq!(parse_card_text(&saved).unwrap(), v);
        let twice = format!("{0}\n{0}\n", card.to_text());
        assert!(matches!(
            parse_card_text(&twice),
            Err(CardError::SeveralCards)
        ));
        // hop key matches the seed's Ed25519 public key
        assert_eq!(
            a.hop_public(),
            SigningKey::from_bytes(a.hop_seed())
                .verifying_key()
                .to_bytes()
        );
        assert_eq!(a.local_keys().identity, a.identity_public());
        assert!(format!("{a:?}").contains("[redacted]"));
        assert!(!format!("{a:?}").contains(&hex(a.hop_seed().as_slice())));
    }

    #[test]
    fn tampered_card_is_refused() {
        let a = alice();
        let card = a.card().unwrap();
        let mut bytes = card.to_bytes();
        // flip a bit of the first name byte: offset 1 (version) + 8 (name length)
        bytes[9] ^= 0x01;
        let tampered = Card::from_bytes(&bytes).unwrap();
        assert!(matches!(
            verify_card(tampered),
            Err(CardError::BadSignature)
        ));
        // flip a bit of the signature
        let mut bytes = card.to_bytes();
        let n = bytes.len();
        bytes[n - 1] ^= 0x80;
        assert!(matches!(
            verify_card(Card::from_bytes(&bytes).unwrap()),
            Err(CardError::BadSignature)
        ));
        // a card signed by someone else's key but claiming alice's identity
        let m = Identity::generate("mallory", NOW).unwrap();
        let forged = sign_body(&m, card.body.clone());
        assert!(matches!(verify_card(forged), Err(CardError::BadSignature)));
        // the text form is damaged
        let mut text = card.to_text();
        text.push('!');
        assert!(matches!(parse_card_text(&text), Err(CardError::Format(_))));
        assert!(matches!(
            parse_card_text("hello"),
            Err(CardError::Format(CardFormatError::MissingPrefix))
        ));
    }

    #[test]
    fn every_single_byte_flip_is_refused() {
        let a = alice();
        let bytes = a.card().unwrap().to_bytes();
        for i in (0..bytes.len()).step_by(7) {
            let mut b = bytes.clone();
            b[i] ^= 0x04;
            let r = Card::from_bytes(&b)
                .map_err(CardError::from)
                .and_then(verify_card);
            assert!(r.is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn card_with_foreign_or_bad_mailbox_key_is_refused() {
        let a = alice();
        let m = Identity::generate("mallory", NOW).unwrap();
        let mut body = a.card().unwrap().body;
        body.mailbox = m.mailbox().public().clone(); // signed by mallory, not alice
        assert!(matches!(
            verify_card(sign_body(&a, body)),
            Err(CardError::BadMailboxKey(MailboxKeyError::BadSignature))
        ));
    }

    #[test]
    fn bad_hop_and_identity_keys_are_refused() {
        let a = alice();
        let mut body = a.card().unwrap().body;
        body.hop_key = [0u8; 32]; // small-order point (weak)
        assert!(matches!(
            verify_card(sign_body(&a, body)),
            Err(CardError::BadHopKey)
        ));
        let mut body = a.card().unwrap().body;
        let mut one = [0u8; 32];
        one[0] = 1; // the identity point: weak
        body.identity_key = one;
        assert!(matches!(
            verify_card(sign_body(&a, body)),
            Err(CardError::BadIdentityKey)
        ));
    }

    #[test]
    fn secret_bytes_round_trip() {
        let mut a = alice();
        a.set_hints(
            Some("192.0.2.1:4000".into()),
            vec!["relay.example:443".into()],
        )
        .unwrap();
        assert_eq!(a.serial(), 2);
        let bytes = a.to_secret_bytes().unwrap();
        let b = Identity::from_secret_bytes(&bytes).unwrap();
        assert_eq!(b.card().unwrap(), a.card().unwrap());
        assert_eq!(
            b.noise_secret().secret_bytes(),
            a.noise_secret().secret_bytes()
        );
        assert_eq!(*b.hop_seed(), *a.hop_seed());
        assert_eq!(b.addr(), Some("192.0.2.1:4000"));
        assert_eq!(b.relays(), ["relay.example:443".to_string()]);

        // damaged: truncated, trailing, version, flipped secret byte (card no longer verifies)
        assert!(Identity::from_secret_bytes(&bytes[..bytes.len() - 1]).is_err());
        let mut v = bytes.to_vec();
        v.push(0);
        assert!(Identity::from_secret_bytes(&v).is_err());
        let mut v = bytes.to_vec();
        v[0] = 9;
        assert!(Identity::from_secret_bytes(&v).is_err());
        let mut v = bytes.to_vec();
        // the identity seed follows version (1) and the name (8 + 5)
        v[1 + 8 + 5] ^= 1;
        assert!(Identity::from_secret_bytes(&v).is_err());
        assert!(Identity::from_secret_bytes(&[]).is_err());
    }

    #[test]
    fn bad_names_and_hints_are_refused() {
        assert!(Identity::generate("", NOW).is_err());
        assert!(Identity::generate(" bob", NOW).is_err());
        assert!(Identity::generate(&"x".repeat(65), NOW).is_err());
        let mut a = alice();
        assert!(a.set_hints(None, vec!["r".into(); 5]).is_err());
        assert_eq!(a.serial(), 1, "a refused change leaves the identity alone");
    }

    #[test]
    fn rotation_keeps_identity_and_changes_the_rest() {
        let a = alice();
        let b = a.rotated(NOW + 10).unwrap();
        assert_eq!(b.identity_public(), a.identity_public());
        assert_ne!(b.noise_public(), a.noise_public());
        assert_ne!(b.hop_public(), a.hop_public());
        assert_ne!(b.mailbox().key_id(), a.mailbox().key_id());
        assert_eq!(b.serial(), 2);
        assert_eq!(b.created(), NOW + 10);
        verify_card(b.card().unwrap()).unwrap();
    }

    #[test]
    fn check_new_contact_refusals() {
        let a = alice();
        let b = Identity::generate("bob", NOW).unwrap();
        let bob_card = b.verified_card().unwrap();
        check_new_contact(&bob_card, &a, &[]).unwrap();

        // our own card
        let own = a.verified_card().unwrap();
        assert_eq!(
            check_new_contact(&own, &a, &[]),
            Err(ContactError::OwnKey { which: "identity" })
        );

        // a card reusing our noise key under another identity
        let mut body = b.card().unwrap().body;
        body.noise_static = a.noise_public();
        let c = verify_card(sign_body(&b, body)).unwrap();
        assert_eq!(
            check_new_contact(&c, &a, &[]),
            Err(ContactError::OwnKey { which: "noise" })
        );

        // bob already pinned as "robert"
        let pinned = [bob_card.pinned_summary("robert")];
        assert_eq!(
            check_new_contact(&bob_card, &a, &pinned),
            Err(ContactError::AlreadyPinned {
                which: "identity",
                contact: "robert".into()
            })
        );
        // bob's rotated card reuses only his hop key: still caught, says which
        let mut body = b.rotated(NOW + 1).unwrap().card().unwrap().body;
        let carol = Identity::generate("carol", NOW).unwrap();
        body.identity_key = carol.identity_public();
        body.mailbox = carol.mailbox().public().clone();
        body.hop_key = b.hop_public();
        let c = verify_card(sign_body(&carol, body)).unwrap();
        let err = check_new_contact(&c, &a, &pinned).unwrap_err();
        assert_eq!(
            err,
            ContactError::AlreadyPinned {
                which: "hop",
                contact: "robert".into()
            }
        );
        assert!(err.to_string().contains("robert"));

        // low-order noise key (all zeros), signed properly
        let mut body = b.card().unwrap().body;
        body.noise_static = [0u8; 32];
        let c = verify_card(sign_body(&b, body)).unwrap();
        assert_eq!(
            check_new_contact(&c, &a, &[]),
            Err(ContactError::NotContributory { which: "noise" })
        );
        // another low-order point: order 8 (0xe0eb7a7c...)
        let order8: [u8; 32] = [
            0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f,
            0xc4, 0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16,
            0x5f, 0x49, 0xb8, 0x00,
        ];
        let mut body = b.card().unwrap().body;
        body.noise_static = order8;
        let c = verify_card(sign_body(&b, body)).unwrap();
        assert_eq!(
            check_new_contact(&c, &a, &[]),
            Err(ContactError::NotContributory { which: "noise" })
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn identity_secret_round_trip(name in "[a-zA-Z0-9][a-zA-Z0-9 ]{0,40}[a-z]",
                                      addr in proptest::option::of("[a-z0-9.:]{1,40}"),
                                      relays in proptest::collection::vec("[a-z0-9.:]{1,30}", 0..=4),
                                      now in 0u64..u64::MAX / 2) {
            let mut a = Identity::generate(&name, now).unwrap();
            a.set_hints(addr, relays).unwrap();
            let b = Identity::from_secret_bytes(&a.to_secret_bytes().unwrap()).unwrap();
            prop_assert_eq!(b.card().unwrap(), a.card().unwrap());
        }

        #[test]
        fn loaders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let _ = Identity::from_secret_bytes(&bytes);
            if let Ok(card) = Card::from_bytes(&bytes) {
                let _ = verify_card(card);
            }
            let _ = parse_card_text(&String::from_utf8_lossy(&bytes));
        }
    }
}
