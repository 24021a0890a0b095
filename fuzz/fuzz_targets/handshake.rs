//! Fuzz target for handshake and transport blobs as a node receives them: arbitrary bytes fed
//! to a responder's `Line::handle_blob` (blob parsing, Noise message 1 and 2 reading, payload
//! and ML-KEM key validation, DATA lookup and the replay window). The first byte picks a blob
//! kind so that the fuzzer reaches past the length checks quickly. Nothing may panic, and no
//! forged input may produce a plaintext.

#![no_main]

use libfuzzer_sys::fuzz_target;
use liaison_proto::handshake::Tai64N;
use liaison_proto::keys::{LocalKeys, NoiseSecret, PeerKeys};
use liaison_proto::line::{Line, Received};
use liaison_wire::consts::*;
use std::time::Instant;

fn keys(seed: u8) -> (LocalKeys, [u8; 32]) {
    let noise = NoiseSecret::from_bytes([seed; 32]);
    let public = noise.public();
    (
        LocalKeys {
            identity: [seed.wrapping_add(100); 32],
            noise,
        },
        public,
    )
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let (bob, _) = keys(2);
    let (alice, alice_pub) = keys(1);
    let peer = PeerKeys {
        identity: alice.identity,
        noise: alice_pub,
        pairing: None,
    };
    let mut line = Line::new(bob, peer, Tai64N::default(), Tai64N::default());
    let mut blob = Vec::new();
    match sel % 4 {
        0 => {
            blob.push(BLOB_HS_INIT);
            blob.extend_from_slice(rest);
            blob.resize(HS_INIT_BLOB_LEN, 0);
        }
        1 => {
            blob.push(BLOB_HS_RESP);
            blob.extend_from_slice(rest);
            if blob.len() < HS_RESP_HEADER_LEN + HS_MSG2_MIN_LEN {
                blob.resize(HS_RESP_HEADER_LEN + HS_MSG2_MIN_LEN, 0);
            }
        }
        2 => {
            blob.push(BLOB_DATA);
            blob.extend_from_slice(rest);
        }
        _ => blob.extend_from_slice(rest),
    }
    let mut pt = Vec::new();
    let now = Instant::now();
    assert_eq!(line.handle_blob(now, &blob, &mut pt), Received::Nothing);
    while line.poll_event().is_some() {}
});
