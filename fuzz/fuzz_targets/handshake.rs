//! Fuzz target for handshake and transport blobs as a node receives them: arbitrary bytes fed
//! to a responder's `Line::handle_blob` (blob parsing, Noise message 1 and 2 reading, payload
//! and ML-KEM key validation, DATA lookup and the replay window). The first byte picks a blob
//! kind so that the fuzzer reaches past the length checks quickly. Nothing may panic, and no
//! forged input may produce a plaintext.
//!
//! Random bytes never get past Noise's authentication, so three more modes reach the parsers
//! behind it: the ML-KEM encapsulation key of a message 1 payload (validation and
//! encapsulation of arbitrary bytes), an authentic handshake whose message 2 payload is the
//! fuzzer's bytes (it must come out unchanged and parse, or fail to parse, as inner frames
//! without a panic), and an authentic message 1 or 2 with one byte flipped where the fuzzer
//! says (it must be refused).

#![no_main]

use libfuzzer_sys::fuzz_target;
use liaison_proto::handshake::Tai64N;
use liaison_proto::keys::{LocalKeys, NoiseSecret, PeerKeys};
use liaison_proto::line::{Line, LineEvent, Received};
use liaison_proto::pq;
use liaison_wire::frame::Frames;
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

fn transmitted(line: &mut Line) -> Option<Vec<u8>> {
    let mut out = None;
    while let Some(ev) = line.poll_event() {
        if let LineEvent::Transmit(b) = ev {
            out = Some(b);
        }
    }
    out
}

fn wall() -> Tai64N {
    Tai64N::from_unix(1_800_000_000, 0)
}

/// An authentic handshake between fixed keys; `resp` is bob's message 2 payload and `flip`
/// (message, offset, xor) alters one byte of message 1 or 2 on the way.
fn authentic(resp: &[u8], flip: Option<(bool, usize, u8)>) {
    let (alice, alice_pub) = keys(1);
    let (bob, bob_pub) = keys(2);
    let alice_as_peer = PeerKeys {
        identity: alice.identity,
        noise: alice_pub,
        pairing: None,
    };
    let bob_as_peer = PeerKeys {
        identity: bob.identity,
        noise: bob_pub,
        pairing: None,
    };
    let now = Instant::now();
    let mut a = Line::new(alice, bob_as_peer, Tai64N::default(), Tai64N::default());
    let mut b = Line::new(bob, alice_as_peer, Tai64N::default(), Tai64N::default());
    b.set_start_frames(resp.to_vec());
    a.connect(now, wall());
    let Some(mut msg1) = transmitted(&mut a) else {
        panic!("no message 1");
    };
    let mut pt = Vec::new();
    if let Some((false, at, x)) = flip {
        let i = at % msg1.len();
        msg1[i] ^= x.max(1);
        assert_eq!(b.handle_blob(now, &msg1, &mut pt), Received::Nothing);
        // only the sender's index is outside Noise's authentication (as in WireGuard):
        // changing it misdirects the answer, which is no more than dropping it
        let answered = transmitted(&mut b).is_some();
        assert_eq!(answered, (1..5).contains(&i), "flipped byte {i} of message 1");
        return;
    }
    assert_eq!(b.handle_blob(now, &msg1, &mut pt), Received::Nothing);
    let Some(mut msg2) = transmitted(&mut b) else {
        // a payload too large for message 2 is refused by the responder
        assert!(resp.len() > MAX_HS_RESP_PAYLOAD);
        return;
    };
    if let Some((true, at, x)) = flip {
        let i = at % msg2.len();
        msg2[i] ^= x.max(1);
        assert_eq!(a.handle_blob(now, &msg2, &mut pt), Received::Nothing);
        // the responder's own index is unauthenticated too: a changed one leaves the
        // initiator a session whose DATA the responder cannot place (a denial of service)
        assert_eq!(a.is_ready(now), (1..5).contains(&i), "flipped byte {i} of message 2");
        return;
    }
    let got = a.handle_blob(now, &msg2, &mut pt);
    if resp.is_empty() {
        assert_eq!(got, Received::Nothing);
    } else {
        assert_eq!(got, Received::Plaintext);
        assert_eq!(pt.as_slice(), resp, "the payload arrives unchanged");
        for f in Frames::new(&pt) {
            if f.is_err() {
                break;
            }
        }
    }
    assert!(a.is_ready(now));
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 8 {
        4 => {
            // a message 1 payload's ML-KEM key, as the responder checks and uses it
            if pq::validate_ek(rest).is_ok() {
                assert!(pq::encapsulate(rest).is_ok());
            } else {
                assert!(pq::encapsulate(rest).is_err());
            }
            return;
        }
        5 => return authentic(rest, None),
        6 | 7 => {
            let (at, x) = match rest {
                [a, b, x, ..] => (usize::from(*a) << 8 | usize::from(*b), *x),
                _ => (0, 1),
            };
            return authentic(&[], Some((sel % 8 == 7, at, x)));
        }
        _ => {}
    }
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
