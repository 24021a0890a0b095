//! Relay inbox ids (design §3.3): per pair, per direction and per day, derived from the pair's
//! Noise static keys and never exchanged.
//!
//! ```text
//! e               = floor(unix_seconds / 86400)                       (INBOX_EPOCH_SECS)
//! inbox(from→to, e) = HKDF-SHA256(salt = "liaison/1 inbox",
//!                                 ikm  = X25519(s_self, s_peer),      (the same on both sides)
//!                                 info = id_from (32) || id_to (32) || u32be(e))  [..16]
//! ```
//! `id_from` / `id_to` are the Ed25519 identity public keys of the sender and the receiver of
//! the blobs posted to that inbox. A sender posts to `inbox(self→peer, e_now)`; a receiver
//! subscribes to `inbox(peer→self, e)` for every `e` in `[e_now − INBOX_PAST_EPOCHS,
//! e_now + INBOX_FUTURE_EPOCHS]` (clock skew, and envelopes that waited at a relay), and knows
//! from the inbox which pinned contact a blob is from. Only the two parties (who hold one of
//! the two static secrets) can compute or link the ids; the relay sees unrelated random-looking
//! ids each day.

use crate::keys::{LocalKeys, PeerKeys, Secret32};
use hkdf::Hkdf;
use liaison_wire::consts::{
    INBOX_EPOCH_SECS, INBOX_FUTURE_EPOCHS, INBOX_ID_LEN, INBOX_PAST_EPOCHS, INBOX_SALT, KEY_LEN,
};
use sha2::Sha256;
use std::fmt;
use std::ops::RangeInclusive;

/// A relay inbox id.
pub type InboxId = [u8; INBOX_ID_LEN];

/// The inbox epoch of a unix time: `floor(unix_secs / 86400)`, saturating at `u32::MAX`.
pub fn inbox_epoch(unix_secs: u64) -> u32 {
    u32::try_from(unix_secs / INBOX_EPOCH_SECS).unwrap_or(u32::MAX)
}

/// `HKDF-SHA256(salt = INBOX_SALT, ikm = dh, info = id_from || id_to || u32be(epoch))`,
/// expanded to 16 bytes (the first 16 bytes of the 32-byte expansion).
pub fn inbox_id(
    dh: &[u8; 32],
    id_from: &[u8; KEY_LEN],
    id_to: &[u8; KEY_LEN],
    epoch: u32,
) -> InboxId {
    let hk = Hkdf::<Sha256>::new(Some(INBOX_SALT), dh);
    let mut info = [0u8; 2 * KEY_LEN + 4];
    let (from, rest) = info.split_at_mut(KEY_LEN);
    let (to, e) = rest.split_at_mut(KEY_LEN);
    from.copy_from_slice(id_from);
    to.copy_from_slice(id_to);
    e.copy_from_slice(&epoch.to_be_bytes());
    let mut out = [0u8; INBOX_ID_LEN];
    // 16 bytes is always a valid HKDF-SHA256 output length (≤ 255 × 32)
    if hk.expand(&info, &mut out).is_err() {
        out.fill(0);
    }
    out
}

/// The epochs a receiver subscribes to at `unix_now`: `[e − INBOX_PAST_EPOCHS,
/// e + INBOX_FUTURE_EPOCHS]`, clipped to the `u32` range.
pub fn recv_epochs(unix_now: u64) -> RangeInclusive<u32> {
    let e = inbox_epoch(unix_now);
    e.saturating_sub(INBOX_PAST_EPOCHS)..=e.saturating_add(INBOX_FUTURE_EPOCHS)
}

/// What a node needs to compute the inbox ids of one contact, both directions.
#[derive(Clone)]
pub struct InboxKeys {
    dh: Secret32,
    local_id: [u8; KEY_LEN],
    peer_id: [u8; KEY_LEN],
}

impl InboxKeys {
    /// The inbox keys of the pair `local`–`peer`. `None` if the static DH is not contributory
    /// (the peer's Noise key is a low-order point: the ids would be predictable).
    pub fn new(local: &LocalKeys, peer: &PeerKeys) -> Option<Self> {
        let dh = local.noise.dh(&peer.noise)?;
        Some(InboxKeys {
            dh,
            local_id: local.identity,
            peer_id: peer.identity,
        })
    }

    /// The peer's identity public key.
    pub fn peer_identity(&self) -> &[u8; KEY_LEN] {
        &self.peer_id
    }

    /// The inbox we post to (`self→peer`) in `epoch`.
    pub fn send_inbox_at(&self, epoch: u32) -> InboxId {
        inbox_id(&self.dh, &self.local_id, &self.peer_id, epoch)
    }

    /// The inbox the peer posts to for us (`peer→self`) in `epoch`.
    pub fn recv_inbox_at(&self, epoch: u32) -> InboxId {
        inbox_id(&self.dh, &self.peer_id, &self.local_id, epoch)
    }

    /// The inbox to post to now: `self→peer` in the current epoch.
    pub fn send_inbox(&self, unix_now: u64) -> InboxId {
        self.send_inbox_at(inbox_epoch(unix_now))
    }

    /// The inboxes to subscribe to now, oldest epoch first (normally 10 ids).
    pub fn recv_inboxes(&self, unix_now: u64) -> Vec<InboxId> {
        recv_epochs(unix_now)
            .map(|e| self.recv_inbox_at(e))
            .collect()
    }

    /// The epoch of `inbox` if it is one of ours from this peer at `unix_now`.
    pub fn recv_epoch_of(&self, inbox: &InboxId, unix_now: u64) -> Option<u32> {
        recv_epochs(unix_now).find(|&e| self.recv_inbox_at(e) == *inbox)
    }

    /// True if `inbox` is one this peer may post to for us at `unix_now`.
    pub fn matches_recv(&self, inbox: &InboxId, unix_now: u64) -> bool {
        self.recv_epoch_of(inbox, unix_now).is_some()
    }
}

impl fmt::Debug for InboxKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboxKeys")
            .field("peer", &hex4(&self.peer_id))
            .field("dh", &"[redacted]")
            .finish()
    }
}

fn hex4(b: &[u8]) -> String {
    b.iter().take(4).map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::keys::NoiseSecret;

    fn keys(seed: u8) -> (LocalKeys, PeerKeys) {
        let noise = NoiseSecret::from_bytes([seed; 32]);
        let public = noise.public();
        let identity = [seed.wrapping_add(0x80); 32];
        (
            LocalKeys { identity, noise },
            PeerKeys {
                identity,
                noise: public,
                pairing: None,
            },
        )
    }

    const NOW: u64 = 1_800_000_000; // epoch 20,833

    #[test]
    fn both_sides_agree_per_direction() {
        let (la, pa) = keys(1);
        let (lb, pb) = keys(2);
        let a = InboxKeys::new(&la, &pb).unwrap();
        let b = InboxKeys::new(&lb, &pa).unwrap();
        assert_eq!(inbox_epoch(NOW), 20_833);
        assert_eq!(a.send_inbox(NOW), b.recv_inbox_at(20_833));
        assert_eq!(b.send_inbox(NOW), a.recv_inbox_at(20_833));
        assert!(b.matches_recv(&a.send_inbox(NOW), NOW));
        assert!(a.matches_recv(&b.send_inbox(NOW), NOW));
        // directions differ, and a node never matches its own sending inbox
        assert_ne!(a.send_inbox(NOW), b.send_inbox(NOW));
        assert!(!a.matches_recv(&a.send_inbox(NOW), NOW));
        assert_eq!(b.recv_epoch_of(&a.send_inbox(NOW), NOW), Some(20_833));
    }

    #[test]
    fn epochs_differ_and_window_is_e_minus_8_to_e_plus_1() {
        let (la, _) = keys(1);
        let (lb, pb) = keys(2);
        let (_, pa) = keys(1);
        let a = InboxKeys::new(&la, &pb).unwrap();
        let b = InboxKeys::new(&lb, &pa).unwrap();
        let ids = b.recv_inboxes(NOW);
        assert_eq!(ids.len(), 10);
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 10, "every epoch gives a different id");
        assert_eq!(ids[0], b.recv_inbox_at(20_825), "oldest first");
        assert_eq!(ids[9], b.recv_inbox_at(20_834));
        // a sender 8 days behind or 1 day ahead still reaches the receiver; 9 / 2 do not
        let day = INBOX_EPOCH_SECS;
        assert!(b.matches_recv(&a.send_inbox(NOW - 8 * day), NOW));
        assert!(b.matches_recv(&a.send_inbox(NOW + day), NOW));
        assert!(!b.matches_recv(&a.send_inbox(NOW - 9 * day), NOW));
        assert!(!b.matches_recv(&a.send_inbox(NOW + 2 * day), NOW));
        // the epoch changes at midnight UTC, not 24 h after some other point
        let midnight = 20_834 * day;
        assert_eq!(a.send_inbox(midnight - 1), a.send_inbox_at(20_833));
        assert_eq!(a.send_inbox(midnight), a.send_inbox_at(20_834));
    }

    #[test]
    fn third_party_gets_other_ids() {
        let (la, pa) = keys(1);
        let (lb, pb) = keys(2);
        let (lc, pc) = keys(3);
        let ab = InboxKeys::new(&la, &pb).unwrap();
        let cb = InboxKeys::new(&lc, &pb).unwrap();
        let ca = InboxKeys::new(&lc, &pa).unwrap();
        let bc = InboxKeys::new(&lb, &pc).unwrap();
        assert_ne!(ab.send_inbox(NOW), cb.send_inbox(NOW));
        assert_ne!(ab.send_inbox(NOW), ca.send_inbox(NOW));
        assert!(!bc.matches_recv(&ab.send_inbox(NOW), NOW));
        // claiming alice's identity without her static key gives other ids
        let forged = InboxKeys::new(
            &LocalKeys {
                identity: la.identity,
                noise: lc.noise.clone(),
            },
            &pb,
        )
        .unwrap();
        assert_ne!(forged.send_inbox(NOW), ab.send_inbox(NOW));
    }

    #[test]
    fn edges_and_low_order() {
        let (la, _) = keys(1);
        let (_, mut pb) = keys(2);
        assert_eq!(recv_epochs(0), 0..=1);
        assert_eq!(recv_epochs(u64::MAX), u32::MAX - 8..=u32::MAX);
        assert_eq!(inbox_epoch(u64::MAX), u32::MAX);
        let k = InboxKeys::new(&la, &pb).unwrap();
        assert_eq!(k.recv_inboxes(0).len(), 2);
        assert!(format!("{k:?}").contains("[redacted]"));
        pb.noise = [0; 32];
        assert!(InboxKeys::new(&la, &pb).is_none());
    }
}
