//! Fuzz target for the line engine (`liaison_proto::conn::Conn`) as it receives from the
//! network: bob's engine, with a live session to alice, takes a sequence of inputs the fuzzer
//! chooses. Each op is one byte, then a length byte and that many bytes:
//!
//! - `0`: raw bytes on the direct path (`handle_blob`): unauthenticated garbage;
//! - `1`: the bytes as inner frames sealed on alice's session (what an authentic but hostile
//!   or broken peer sends: any ACK, MSG numbering, CLOSE, AUDIT, MBOX_KEY…), delivered to bob;
//! - `2`: raw bytes delivered by a relay as a stored envelope (`handle_relay_deliver`);
//! - `3`: time passes (the op's first byte, in seconds) and the timers run.
//!
//! Bob answers every event as a node does (durable at once). Nothing may panic, memory stays
//! bounded, and nothing is reported delivered that alice did not send.

#![no_main]

use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use liaison_proto::conn::{Conn, ConnConfig, Event, Now, PathKind};
use liaison_proto::handshake::Tai64N;
use liaison_proto::keys::{LocalKeys, NoiseSecret, PeerKeys};
use liaison_proto::mailbox_ring::PeerMailboxKeys;
use liaison_wire::hop::HopFrame;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn party(seed: u8) -> (SigningKey, LocalKeys) {
    let sign = SigningKey::from_bytes(&[seed; 32]);
    let local = LocalKeys {
        identity: sign.verifying_key().to_bytes(),
        noise: NoiseSecret::from_bytes([seed.wrapping_add(1); 32]),
    };
    (sign, local)
}

fn conn(me: u8, peer: u8) -> Conn {
    let (sign, local) = party(me);
    let (_, p) = party(peer);
    Conn::new(ConnConfig {
        local,
        signing: sign,
        peer: PeerKeys {
            identity: p.identity,
            noise: p.noise.public(),
            pairing: None,
        },
        card_mailbox: None,
        peer_mailbox: PeerMailboxKeys::default(),
        own_mailbox: None,
        live_only: false,
        hs_sent_ts: Tai64N::default(),
        hs_accepted_ts: Tai64N::default(),
        next_seq: 1,
        acked_upto: 0,
        unacked: Vec::new(),
        delivered_upto: 0,
        delivered_digest: [0; 16],
        stored_ahead: Vec::new(),
        posted: Vec::new(),
    })
}

/// Answers events as a node would; returns what was delivered.
fn answer(c: &mut Conn, now: Now, delivered: &mut Vec<u64>) {
    for _ in 0..10_000 {
        let Some(ev) = c.poll_event() else { return };
        match ev {
            Event::PersistHandshake { token, .. } => c.persisted(token),
            Event::Store { messages, .. } => {
                let seqs: Vec<u64> = messages.iter().map(|m| m.seq).collect();
                c.stored(now, &seqs);
            }
            Event::Deliver { seq } => delivered.push(seq),
            Event::Acked { upto } => c.ack_committed(now, upto),
            Event::Renumber { token, .. } => c.renumbered(now, token),
            Event::PeerLost { peer_holds, .. } => c.resend(now, peer_holds, Vec::new()),
            _ => {}
        }
    }
}

/// Moves frames between the two until quiet (bounded).
fn pump(a: &mut Conn, b: &mut Conn, now: Now, da: &mut Vec<u64>, db: &mut Vec<u64>) {
    for _ in 0..20 {
        answer(a, now, da);
        answer(b, now, db);
        let mut moved = false;
        while let Some(t) = a.poll_transmit(now) {
            moved = true;
            if let Some(Ok(HopFrame::Blob(blob))) = t.frame.get(4..).map(HopFrame::parse) {
                b.handle_blob(now, 1, blob);
            }
            answer(b, now, db);
        }
        while let Some(t) = b.poll_transmit(now) {
            moved = true;
            if let Some(Ok(HopFrame::Blob(blob))) = t.frame.get(4..).map(HopFrame::parse) {
                a.handle_blob(now, 1, blob);
            }
            answer(a, now, da);
        }
        if !moved {
            return;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut t = 0u64;
    let at = |t: u64| Now {
        at: start + Duration::from_secs(t),
        unix_ms: 1_800_000_000_000 + t * 1000,
    };
    let mut alice = conn(1, 2);
    let mut bob = conn(2, 1);
    let (mut da, mut db) = (Vec::new(), Vec::new());
    let n = at(t);
    alice.path_up(n, 1, PathKind::Direct);
    bob.path_up(n, 1, PathKind::Direct);
    alice.submit(n, 1, Arc::from(&b"\x01"[..]));
    pump(&mut alice, &mut bob, n, &mut da, &mut db);
    let mut rest = data;
    while let [op, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (bytes, next) = tail.split_at(len);
        rest = next;
        let n = at(t);
        match op % 4 {
            0 => bob.handle_blob(n, 1, bytes),
            1 => {
                if let Some(blob) = alice.seal_plaintext_for_fuzzing(n, bytes) {
                    bob.handle_blob(n, 1, &blob);
                }
            }
            2 => bob.handle_relay_deliver(n, 2, Some([7; 16]), bytes, |_| None),
            _ => {
                t += u64::from(bytes.first().copied().unwrap_or(1));
                let n = at(t);
                alice.handle_timeout(n);
                bob.handle_timeout(n);
            }
        }
        pump(&mut alice, &mut bob, at(t), &mut da, &mut db);
        let s = bob.status(at(t));
        assert!(s.unacked <= 1);
    }
    // whatever a hostile alice sealed, bob delivered each seq at most once and in order
    assert!(db.windows(2).all(|w| w[0] < w[1]), "{db:?}");
});
