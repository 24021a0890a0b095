//! Liaison wire formats: every byte layout, limit and constant of protocol version 1, and the
//! one bincode configuration. No cryptography lives here, so the relay can depend on this crate
//! alone and the dependency graph shows that it cannot read a session.
//!
//! Layers, outermost first (see `docs/protocol.md` for the exact bytes):
//! - [`hop`]: frames on a QUIC stream of a hop (`READY`, `BLOB`, relay `SUBSCRIBE`/`POST`/...).
//! - [`blob`]: what a session puts in a hop frame (`HS_INIT`, `HS_RESP`, `DATA`, `ENVELOPE`).
//! - [`frame`]: the plaintext inside a `DATA` blob: `MSG` fragments, `ACK`, padding.
//! - [`card`]: contact cards and mailbox keys, and their text form.
//! - [`codec`]: bincode 1.3.3 with fixed-width integers, limits and no trailing bytes.
//! - [`consts`]: all constants, in one place.

pub mod blob;
pub mod card;
pub mod codec;
pub mod consts;
pub mod frame;
pub mod hop;
pub mod relay_card;

pub use blob::{Blob, BlobError};
pub use card::{Card, CardBody, CardFormatError, MailboxKeyPub};
pub use codec::{CodecError, Fixed};
pub use frame::{Frame, FrameError, FrameWriter, Frames, MessageContent};
pub use hop::{HopError, HopFrame};
