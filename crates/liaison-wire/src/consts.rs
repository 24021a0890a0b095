//! Every wire constant of protocol version 1, with its unit and the reason for its value.
//!
//! `docs/protocol.md` uses the same names. Changing any value here changes the protocol.

use std::time::Duration;

/// Protocol version carried in cards and hop `READY` frames.
pub const PROTOCOL_VERSION: u8 = 1;

/// QUIC ALPN of every hop (node to node, node to relay). TLS 1.3 only.
pub const ALPN: &[u8] = b"liaison/1";

/// TLS server name every hop uses. Names are never checked: peers are pinned by SPKI.
pub const HOP_SERVER_NAME: &str = "liaison.invalid";

/// Noise protocol of live sessions.
pub const NOISE_PARAMS: &str = "Noise_KKpsk2_25519_ChaChaPoly_SHA256";

/// Noise protocol of sealed mailbox envelopes.
pub const MAILBOX_NOISE_PARAMS: &str = "Noise_Kpsk0_25519_ChaChaPoly_SHA256";

/// Name of the post-quantum KEM mixed into every handshake (FIPS 203).
pub const PQ_KEM_NAME: &str = "ML-KEM-768";

/// First bytes of the live-session prologue:
/// `"liaison/1" || NOISE_PARAMS || PQ_KEM_NAME || id_initiator || id_responder`.
pub const PROLOGUE_LABEL: &[u8] = b"liaison/1";

/// HKDF info label of the hybrid psk2 (followed by `ek || ct`).
pub const PQ_PSK_INFO: &[u8] = b"liaison/1 pq-psk";

/// Domain separation for card signatures (followed by the encoded card body).
pub const CARD_SIG_CONTEXT: &[u8] = b"liaison/1 card";

/// Domain separation for mailbox key signatures.
pub const MAILBOX_KEY_SIG_CONTEXT: &[u8] = b"liaison/1 mailbox-key";

/// Prefix of a card's one-line text form.
pub const CARD_TEXT_PREFIX: &str = "liaison-card:";

/// Prefix of a relay card's one-line text form.
pub const RELAY_CARD_TEXT_PREFIX: &str = "liaison-relay:";

/// Domain separation for relay card signatures (followed by the encoded relay card body).
pub const RELAY_CARD_SIG_CONTEXT: &[u8] = b"liaison/1 relay-card";

/// Largest relay card (binary form), bytes: version, hop key, an address of at most
/// [`MAX_ADDR_LEN`] bytes with its u64 length, created, signature (1 + 32 + 8 + 255 + 8 + 64 =
/// 368), rounded up.
pub const MAX_RELAY_CARD_LEN: usize = 512;

/// Ed25519 / X25519 public key length, bytes.
pub const KEY_LEN: usize = 32;
/// Ed25519 signature length, bytes.
pub const SIG_LEN: usize = 64;
/// ML-KEM-768 encapsulation key length, bytes (FIPS 203 table 3).
pub const MLKEM_EK_LEN: usize = 1184;
/// ML-KEM-768 ciphertext length, bytes.
pub const MLKEM_CT_LEN: usize = 1088;
/// ML-KEM decapsulation key seed (d || z), bytes.
pub const MLKEM_SEED_LEN: usize = 64;
/// Mailbox key id: `SHA-256(x25519_pub || ek)[..8]`.
pub const MAILBOX_KEY_ID_LEN: usize = 8;
/// Length of a pairing secret, bytes.
pub const PAIRING_SECRET_LEN: usize = 32;

/// Largest Noise message, bytes, tag included (Noise spec §3).
pub const NOISE_MAX_MSG: usize = 65_535;
/// ChaChaPoly tag, bytes.
pub const NOISE_TAG_LEN: usize = 16;
/// Largest plaintext of one Noise transport message, bytes.
pub const MAX_PLAINTEXT: usize = NOISE_MAX_MSG - NOISE_TAG_LEN;
/// Noise ephemeral public key length, bytes.
pub const NOISE_DH_LEN: usize = 32;

/// TAI64N timestamp length (8 bytes seconds + 4 bytes nanoseconds, big-endian), bytes.
pub const TAI64N_LEN: usize = 12;
/// Message 1 payload: `ek (1184) || ts TAI64N (12)`.
pub const HS_INIT_PAYLOAD_LEN: usize = MLKEM_EK_LEN + TAI64N_LEN;
/// Noise message 1 of KKpsk2: `e (32) || encrypted payload (1196 + 16)`.
pub const HS_MSG1_LEN: usize = NOISE_DH_LEN + HS_INIT_PAYLOAD_LEN + NOISE_TAG_LEN;
/// Largest message 2 payload (inner frames, e.g. a mailbox key), bytes.
pub const MAX_HS_RESP_PAYLOAD: usize = 4096;
/// Smallest Noise message 2: `e (32) || tag (16)`.
pub const HS_MSG2_MIN_LEN: usize = NOISE_DH_LEN + NOISE_TAG_LEN;
/// Largest Noise message 2.
pub const HS_MSG2_MAX_LEN: usize = HS_MSG2_MIN_LEN + MAX_HS_RESP_PAYLOAD;

/// Blob kinds (first byte of every blob).
pub const BLOB_HS_INIT: u8 = 0x01;
/// Handshake response blob.
pub const BLOB_HS_RESP: u8 = 0x02;
/// Transport data blob.
pub const BLOB_DATA: u8 = 0x03;
/// Sealed mailbox envelope blob.
pub const BLOB_ENVELOPE: u8 = 0x04;

/// `HS_INIT` blob: `0x01 || sender_idx u32 || msg1`.
pub const HS_INIT_BLOB_LEN: usize = 1 + 4 + HS_MSG1_LEN;
/// `HS_RESP` header: `0x02 || sender_idx u32 || receiver_idx u32 || ct`.
pub const HS_RESP_HEADER_LEN: usize = 1 + 4 + 4 + MLKEM_CT_LEN;
/// `DATA` header: `0x03 || receiver_idx u32 || nonce u64`.
pub const DATA_HEADER_LEN: usize = 1 + 4 + 8;
/// `ENVELOPE` header: `0x04 || key_id (8) || mlkem_ct (1088)`.
pub const ENVELOPE_HEADER_LEN: usize = 1 + MAILBOX_KEY_ID_LEN + MLKEM_CT_LEN;
/// Largest blob of any kind, bytes (an envelope carrying a full Noise message).
pub const MAX_BLOB_LEN: usize = ENVELOPE_HEADER_LEN + NOISE_MAX_MSG;

/// Hop frame header: `len u32 (of type + body) || type u8`.
pub const HOP_HEADER_LEN: usize = 5;
/// Largest hop frame body (type byte included), bytes: a DELIVER carrying the largest blob.
pub const MAX_HOP_FRAME_LEN: usize = 1 + 16 + 16 + MAX_BLOB_LEN;
/// Most inbox ids in one `SUBSCRIBE` frame.
pub const MAX_SUBSCRIBE_INBOXES: usize = 1024;
/// Inbox id length, bytes.
pub const INBOX_ID_LEN: usize = 16;
/// Envelope id length (`SHA-256(blob)[..16]`), bytes.
pub const ENVELOPE_ID_LEN: usize = 16;
/// Inbox epoch length: inbox ids change daily.
pub const INBOX_EPOCH_SECS: u64 = 86_400;
/// Receivers subscribe to epochs `[e - INBOX_PAST_EPOCHS, e + INBOX_FUTURE_EPOCHS]`.
pub const INBOX_PAST_EPOCHS: u32 = 8;
/// See [`INBOX_PAST_EPOCHS`].
pub const INBOX_FUTURE_EPOCHS: u32 = 1;

/// Inner frame header: `type u8 || len u16`.
pub const FRAME_HEADER_LEN: usize = 3;
/// Inner frame types. 0x00 starts padding: every following byte must be zero.
pub const FRAME_PAD: u8 = 0x00;
/// A fragment of a user message.
pub const FRAME_MSG: u8 = 0x01;
/// Cumulative acknowledgement.
pub const FRAME_ACK: u8 = 0x02;
/// A signed mailbox key.
pub const FRAME_MBOX_KEY: u8 = 0x03;
/// A rotated contact card.
pub const FRAME_CARD: u8 = 0x04;
/// Closing the session with a coarse reason.
pub const FRAME_CLOSE: u8 = 0x05;
/// An opaque audit-log message (checkpoints, cosignatures, receipts).
pub const FRAME_AUDIT: u8 = 0x06;
/// Digest of one message's encoded content, bytes: `SHA-256(MSG_DIGEST_CONTEXT || encoded)[..16]`.
/// `ACK` carries the digest of the message it names, so a sender whose store was rolled back
/// (restored from a backup) sees that the peer holds *other* messages under those sequence
/// numbers instead of taking them as delivered.
pub const MSG_DIGEST_LEN: usize = 16;
/// Domain separation of [`MSG_DIGEST_LEN`] digests (ASCII, 20 bytes).
pub const MSG_DIGEST_CONTEXT: &[u8] = b"liaison/1 msg-digest";
/// `ACK` body: `delivered_upto u64le || digest (16)` (zeros when `delivered_upto` is 0),
/// bytes.
pub const ACK_BODY_LEN: usize = 8 + MSG_DIGEST_LEN;
/// `MSG` frame header: `seq u64 || frag_index u32 || frag_count u32`.
pub const MSG_FRAME_HEADER_LEN: usize = 16;
/// Size of every fragment but a message's last, bytes (64,078): the largest MSG chunk that fits
/// both a DATA plaintext and a sealed envelope ([`MAX_ENVELOPE_FRAGMENT`]), so a message's
/// fragments are the same whichever path carries each of them.
pub const MAX_FRAGMENT: usize = MAX_ENVELOPE_FRAGMENT;

/// Largest message body (text or file), bytes.
pub const MAX_MESSAGE_BODY: usize = 16 * 1024 * 1024;
/// Largest file name carried with a file, bytes.
pub const MAX_FILE_NAME: usize = 255;
/// Largest encoded message (body plus its header), bytes.
pub const MAX_MESSAGE_ENCODED: usize = MAX_MESSAGE_BODY + 1024;
/// Most fragments of one message.
pub const MAX_FRAGMENTS: u32 = MAX_MESSAGE_ENCODED.div_ceil(MAX_FRAGMENT) as u32;
/// Salt of a message's audit commitment, bytes.
pub const MSG_SALT_LEN: usize = 32;

/// Plaintext sizes are padded up to the smallest of these buckets, bytes.
pub const PAD_BUCKETS: &[usize] = &[
    64,
    128,
    256,
    512,
    1024,
    2048,
    4096,
    8192,
    16384,
    32768,
    MAX_PLAINTEXT,
];

/// Largest card (binary form), bytes.
pub const MAX_CARD_LEN: usize = 4096;
/// Largest card name, bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 64;
/// Largest address hint, bytes.
pub const MAX_ADDR_LEN: usize = 255;
/// Most relay hints in a card.
pub const MAX_RELAY_HINTS: usize = 4;

/// WireGuard timers (whitepaper §6.1), applied to live sessions.
/// The current initiator starts a new handshake once a session is this old.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// No message is sent or accepted on a session older than this.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// A new handshake starts after this many messages on a session.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// No message is sent or accepted past this nonce.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);
/// A handshake without an answer is retried after this long.
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// A handshake is abandoned (the peer is away) after trying this long.
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// Idle sessions send a keepalive after this long without sending.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many sessions per contact (previous, current, next).
pub const MAX_SESSIONS_PER_CONTACT: usize = 3;
/// At most this many message 1s accepted per contact per second.
pub const MAX_HS_INIT_PER_SEC: u32 = 50;
/// An outstanding handshake tries at most this many message 2s that fail to authenticate
/// (each costs an ML-KEM decapsulation); later ones are ignored until the retry timer starts a
/// fresh initiation. A relay sees `sender_idx` and can forge answers at will: they neither
/// cancel the handshake nor cost unbounded work.
pub const MAX_REFUSED_RESPONSES: u32 = 8;
/// Width of the per-session anti-replay window, in nonces.
pub const REPLAY_WINDOW: u64 = 8192;

/// Retransmission timeout of unacknowledged messages: starts here... Hops are reliable QUIC
/// streams, so this only covers what a relay lost between its subscribers (a path that goes
/// silent is replaced instead, and every new path gets everything unacknowledged again): 3 s
/// leaves a lossy path's slow acknowledgements room before anything is sent twice.
pub const RTO_INITIAL: Duration = Duration::from_secs(3);
/// ...and doubles up to this.
pub const RTO_MAX: Duration = Duration::from_secs(30);
/// Receiver holds at most this many bytes of incomplete or out-of-order messages per contact.
pub const MAX_REASSEMBLY_BYTES: usize = 2 * MAX_MESSAGE_ENCODED;
/// Receiver accepts messages at most this far ahead of its delivered sequence number.
pub const MAX_SEQ_AHEAD: u64 = 4096;

/// A rotated static key stays valid for inbound message 1s this long.
pub const OLD_STATIC_GRACE: Duration = Duration::from_secs(600);

// ---------------------------------------------------------------------------------------------
// Relay inbox ids, sealed mailbox envelopes and mailbox key lifetimes (design §3.3, §3.4;
// `docs/protocol-envelopes.md`). Added with `liaison-proto`'s `inbox`, `envelope` and
// `mailbox_ring` modules.
// ---------------------------------------------------------------------------------------------

/// HKDF-SHA256 salt of relay inbox ids (ASCII, 15 bytes):
/// `inbox(from→to, e) = HKDF(salt, ikm = X25519(s_self, s_peer), info = id_from || id_to ||
/// u32be(e))[..16]`. Domain separation from every other use of the pair's static DH.
pub const INBOX_SALT: &[u8] = b"liaison/1 inbox";

/// Domain separation of the channel id (ASCII, 17 bytes):
/// `channel_id = SHA-256(CHANNEL_ID_CONTEXT || min(id_a, id_b) || max(id_a, id_b))`, the same
/// value the audit log names a line by.
pub const CHANNEL_ID_CONTEXT: &[u8] = b"liaison/1 channel";

/// First bytes of the envelope prologue (ASCII, 17 bytes):
/// `prologue = MAILBOX_PROLOGUE_LABEL || channel_id (32) || key_id (8)`.
pub const MAILBOX_PROLOGUE_LABEL: &[u8] = b"liaison/1 mailbox";

/// Envelope prologue length, bytes: label (17) + channel id (32) + mailbox key id (8). Fixed, so
/// the signed envelope message (prologue || e || ct || hash, 1,209 bytes) can never be read as
/// another identity-key signature (`liaison/1 mailbox-key` messages are 1,253 bytes).
pub const MAILBOX_PROLOGUE_LEN: usize = MAILBOX_PROLOGUE_LABEL.len() + 32 + MAILBOX_KEY_ID_LEN;

/// HKDF info label of an envelope's psk0 (followed by `key_id || ek || ct`).
pub const MAILBOX_PSK_INFO: &[u8] = b"liaison/1 mailbox-psk";

/// Largest envelope plaintext (padded inner frames), bytes: the Noise message (≤ 65,535) also
/// holds the ephemeral key (32), the AEAD tag (16) and the sender's Ed25519 signature (64).
pub const MAX_ENVELOPE_PLAINTEXT: usize = NOISE_MAX_MSG - NOISE_DH_LEN - NOISE_TAG_LEN - SIG_LEN;

/// Envelope plaintexts are padded to one of these sizes, bytes: [`PAD_BUCKETS`] with the top
/// bucket lowered to [`MAX_ENVELOPE_PLAINTEXT`] (what still fits one Noise message).
pub const ENVELOPE_PAD_BUCKETS: &[usize] = &[
    64,
    128,
    256,
    512,
    1024,
    2048,
    4096,
    8192,
    16384,
    32768,
    MAX_ENVELOPE_PLAINTEXT,
];

/// Smallest envelope Noise message, bytes: e (32) + smallest bucket (64) + signature (64) +
/// tag (16). Shorter ones are refused before any cryptography.
pub const MIN_ENVELOPE_NOISE_MSG: usize = NOISE_DH_LEN + 64 + SIG_LEN + NOISE_TAG_LEN;

/// Room every envelope keeps for the sender's `ACK` and `MBOX_KEY` frames, bytes (1,326):
/// `(3 + ACK_BODY_LEN) + (3 + MAILBOX_KEY_PUB_LEN)`. Every envelope carries the sender's current
/// mailbox key, so two parties who meet only through relays keep moving to fresh keys.
pub const ENVELOPE_RESERVED: usize =
    (FRAME_HEADER_LEN + ACK_BODY_LEN) + (FRAME_HEADER_LEN + crate::card::MAILBOX_KEY_PUB_LEN);

/// Largest MSG chunk an envelope holds beside the reserved frames, bytes (64,078):
/// [`MAX_ENVELOPE_PLAINTEXT`] minus the MSG frame header (3), the MSG header (16) and
/// [`ENVELOPE_RESERVED`]. [`MAX_FRAGMENT`] equals it.
pub const MAX_ENVELOPE_FRAGMENT: usize =
    MAX_ENVELOPE_PLAINTEXT - FRAME_HEADER_LEN - MSG_FRAME_HEADER_LEN - ENVELOPE_RESERVED;

/// A node makes a fresh mailbox key this often, seconds (one day), and advertises it in message
/// 2 payloads and `MBOX_KEY` frames: an envelope's forward secrecy lasts about a key's life.
pub const MAILBOX_KEY_ROTATE_SECS: u64 = 86_400;

/// `not_after` of a fresh mailbox key = its creation + this, seconds (two days): one rotation
/// period of use plus one of overlap, so a peer that learned the key late, or whose clock is a
/// little behind, still seals to a valid key when the next one has not reached it yet.
pub const MAILBOX_KEY_SEND_LIFETIME_SECS: u64 = 2 * 86_400;

/// A mailbox private key is erased this long after its `not_after`, seconds (eight days, as
/// many as the [`INBOX_PAST_EPOCHS`] a receiver still subscribes to): an envelope sealed just
/// before `not_after` may wait that long at a relay. A card key that is replaced is erased this
/// long after its replacement.
pub const MAILBOX_KEY_RETAIN_SECS: u64 = 8 * 86_400;

/// A peer's in-band (`MBOX_KEY`) mailbox key is ignored when its `not_after` is further than
/// this in the receiver's future, seconds (seven days): fresh keys live two days, so this
/// leaves five days of clock skew, and a wrong or hostile far-future key cannot hold back the
/// peer's later keys (keys are ordered by `not_after`) for more than a week.
pub const MAX_MAILBOX_KEY_AHEAD_SECS: u64 = 7 * 86_400;
