//! Fuzz target for sealed mailbox envelopes as a node receives them: arbitrary bytes fed to
//! `Blob::parse` and to `envelope::open` with fixed parties (alice seals, bob opens with his
//! card mailbox key). The first byte picks a mode so the fuzzer gets past the cheap checks:
//! raw bytes; an ENVELOPE header naming bob's real key id followed by fuzz bytes; a valid
//! envelope with fuzz-chosen bytes flipped; fuzz bytes sealed as a plaintext and opened again.
//! Nothing may panic, no forged or altered envelope may open, and what seals must open to the
//! same padded frames.

#![no_main]

use liaison_proto::envelope::{envelope_padded_len, open, seal};
use liaison_proto::identity::Identity;
use liaison_proto::keys::{LocalKeys, PeerKeys};
use liaison_wire::blob::Blob;
use liaison_wire::consts::*;
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

struct Fixture {
    alice: Identity,
    bob: Identity,
    alice_as_peer: PeerKeys,
    bob_as_peer: PeerKeys,
    valid: Vec<u8>,
    valid_frames: Vec<u8>,
}

fn as_peer(id: &Identity) -> PeerKeys {
    PeerKeys {
        identity: id.identity_public(),
        noise: id.noise_public(),
        pairing: None,
    }
}

static FX: LazyLock<Fixture> = LazyLock::new(|| {
    let alice = Identity::generate("alice", 1_800_000_000).expect("alice");
    let bob = Identity::generate("bob", 1_800_000_000).expect("bob");
    let alice_as_peer = as_peer(&alice);
    let bob_as_peer = as_peer(&bob);
    // ACK(5): type 0x02, len 8, delivered_upto 5
    let mut frames = vec![FRAME_ACK, 8, 0, 5, 0, 0, 0, 0, 0, 0, 0];
    frames.resize(64, 0);
    let valid = seal(
        &alice.local_keys(),
        alice.signing_key(),
        &bob_as_peer,
        bob.mailbox().public(),
        &frames,
    )
    .expect("seal");
    Fixture {
        alice,
        bob,
        alice_as_peer,
        bob_as_peer,
        valid,
        valid_frames: frames,
    }
});

fn open_as_bob(fx: &Fixture, blob: &[u8]) -> Option<Vec<u8>> {
    let bob: LocalKeys = fx.bob.local_keys();
    let mailbox = fx.bob.mailbox();
    open(
        &bob,
        &fx.alice_as_peer,
        |id| (*id == mailbox.key_id()).then_some(mailbox),
        blob,
    )
    .ok()
    .map(|o| o.frames().to_vec())
}

fuzz_target!(|data: &[u8]| {
    let fx = &*FX;
    if let Ok(Blob::Envelope { .. }) = Blob::parse(data) {
        assert_eq!(
            Blob::parse(data).map(|b| b.to_vec()).ok().as_deref(),
            Some(data)
        );
    }
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 4 {
        0 => assert!(open_as_bob(fx, rest).is_none(), "forged envelope opened"),
        1 => {
            let mut blob = vec![BLOB_ENVELOPE];
            blob.extend_from_slice(&fx.bob.mailbox().key_id());
            blob.extend_from_slice(rest);
            assert!(open_as_bob(fx, &blob).is_none(), "forged envelope opened");
        }
        2 => {
            // (position u16le, xor u8) triples applied to a valid envelope; an optional
            // truncation when the input length is not a multiple of 3
            let mut blob = fx.valid.clone();
            for t in rest.chunks(3) {
                match t {
                    [lo, hi, x] => {
                        let pos = usize::from(u16::from_le_bytes([*lo, *hi])) % blob.len();
                        if let Some(b) = blob.get_mut(pos) {
                            *b ^= *x;
                        }
                    }
                    [lo, ..] => blob.truncate(usize::from(*lo) * 8),
                    [] => {}
                }
            }
            let opened = open_as_bob(fx, &blob);
            if blob == fx.valid {
                assert_eq!(opened.as_deref(), Some(fx.valid_frames.as_slice()));
            } else {
                assert!(opened.is_none(), "altered envelope opened");
            }
        }
        _ => {
            let sealed = seal(
                &fx.alice.local_keys(),
                fx.alice.signing_key(),
                &fx.bob_as_peer,
                fx.bob.mailbox().public(),
                rest,
            );
            if let Ok(blob) = sealed {
                let mut want = rest.to_vec();
                want.resize(envelope_padded_len(rest.len()).unwrap_or(0), 0);
                assert_eq!(open_as_bob(fx, &blob), Some(want));
                assert!(blob.len() <= MAX_BLOB_LEN);
            }
        }
    }
});
