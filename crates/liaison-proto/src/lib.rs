//! Liaison protocol, sans-IO: no tokio, no sockets, no files, no clock reads. Time is passed
//! in (`Instant` for timers, unix time for timestamps), bytes go in through `handle_*` and come
//! out of `poll_*`, so loss, replay, reordering and rekeys are tested in memory.
//!
//! - [`keys`]: key types and the random source.
//! - [`identity`], [`mailbox_key`], [`safety`], [`pairing`]: our identity and contact cards,
//!   mailbox keys, safety numbers, pairing secrets.
//! - [`handshake`]: `Noise_KKpsk2_25519_ChaChaPoly_SHA256` with the ML-KEM-768 hybrid psk.
//! - [`session`]: stateless transport with explicit nonces and a replay window.
//! - [`line`](mod@line): per-contact session management (indices, confirmation, selection,
//!   simultaneous initiation, WireGuard timers, handshake replay protection).
//! - [`delivery`]: sequence numbers, cumulative acks, retransmission, fragmentation.
//! - [`conn`]: the line engine — one object per line owning sessions, delivery, envelopes,
//!   timers and the call, driven by the node, the simulator and the bench alike.

pub mod conn;
pub mod delivery;
pub mod envelope;
pub mod handshake;
pub mod identity;
pub mod inbox;
pub mod keys;
pub mod line;
pub mod mailbox_key;
pub mod mailbox_ring;
pub mod pairing;
pub mod pq;
pub mod safety;
pub mod session;

#[cfg(test)]
mod vectors;
