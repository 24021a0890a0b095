//! Test vectors from fixed keys, checked against the hex blocks in `docs/protocol.md`.
//!
//! Every value below is recomputed from fixed seeds (Ed25519 signatures and X25519 are
//! deterministic; Noise ephemerals are fixed with snow's testing hook; ML-KEM uses a fixed
//! seed and deterministic encapsulation). The test fails if the document and the code
//! disagree, so the document stays exact. `LIAISON_PRINT_VECTORS=1 cargo test -p
//! liaison-proto vectors` prints the blocks to paste after an intentional protocol change.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use crate::handshake::{self, Tai64N};
use crate::keys::{LocalKeys, NoiseSecret, PeerKeys};
use crate::pq::{self, KemPair};
use crate::safety::safety_number;
use ed25519_dalek::{Signer, SigningKey};
use liaison_wire::blob::Blob;
use liaison_wire::card::{Card, CardBody, MailboxKeyPub};
use liaison_wire::codec::Fixed;
use liaison_wire::consts::*;
use liaison_wire::frame::{FrameWriter, MSG_KIND_TEXT, MessageContent, fragment};
use liaison_wire::hop::HopFrame;
use std::time::Instant;
use zeroize::Zeroizing;

const DOC: &str = include_str!("../../../docs/protocol.md");

struct Party {
    sign: SigningKey,
    noise: NoiseSecret,
    hop: SigningKey,
    mbox_x: NoiseSecret,
    mbox_kem: KemPair,
}

fn party(base: u8) -> Party {
    let mut seed64 = [0u8; 64];
    seed64.fill(base + 5);
    Party {
        sign: SigningKey::from_bytes(&[base + 1; 32]),
        noise: NoiseSecret::from_bytes([base + 2; 32]),
        hop: SigningKey::from_bytes(&[base + 3; 32]),
        mbox_x: NoiseSecret::from_bytes([base + 4; 32]),
        mbox_kem: KemPair::from_seed(&seed64),
    }
}

fn card(p: &Party, name: &str, addr: Option<&str>) -> Card {
    let x = p.mbox_x.public();
    let ek = *p.mbox_kem.ek();
    let key_id = crate::mailbox_key::mailbox_key_id(&x, &ek);
    let mut mailbox = MailboxKeyPub {
        key_id,
        x25519: x,
        mlkem_ek: Fixed(ek),
        not_after: 1_831_536_000,
        signature: Fixed([0; 64]),
    };
    mailbox.signature = Fixed(p.sign.sign(&mailbox.signed_bytes()).to_bytes());
    let body = CardBody {
        version: PROTOCOL_VERSION,
        name: name.into(),
        identity_key: p.sign.verifying_key().to_bytes(),
        noise_static: p.noise.public(),
        hop_key: p.hop.verifying_key().to_bytes(),
        mailbox,
        serial: 1,
        created: 1_800_000_000,
        addr: addr.map(str::to_string),
        relays: vec![],
    };
    let body_bytes = Card::encode_body(&body).unwrap();
    let mut msg = CARD_SIG_CONTEXT.to_vec();
    msg.extend_from_slice(&body_bytes);
    let signature = p.sign.sign(&msg).to_bytes();
    Card {
        body,
        body_bytes,
        signature,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// All vectors: (name, value). Byte values are hex; text values are as-is.
fn compute() -> Vec<(&'static str, String)> {
    let now = Instant::now();
    let a = party(0x10);
    let b = party(0x20);
    // sealed envelopes and inbox ids (docs/protocol.md §11-§12)
    let mut v: Vec<(&'static str, String)> = crate::envelope::envelope_vectors();

    // keys
    v.push((
        "alice_identity_public",
        hex(&a.sign.verifying_key().to_bytes()),
    ));
    v.push(("alice_noise_public", hex(&a.noise.public())));
    v.push((
        "bob_identity_public",
        hex(&b.sign.verifying_key().to_bytes()),
    ));
    v.push(("bob_noise_public", hex(&b.noise.public())));

    // card
    let ca = card(&a, "alice", Some("127.0.0.1:7700"));
    let vc = crate::identity::verify_card(ca.clone()).unwrap();
    v.push(("alice_card_body", hex(&ca.body_bytes)));
    v.push(("alice_card_signature", hex(&ca.signature)));
    v.push(("alice_card_text", ca.to_text()));
    v.push(("alice_fingerprint", vc.fingerprint()));
    v.push((
        "safety_number_alice_bob",
        safety_number(
            &a.sign.verifying_key().to_bytes(),
            &b.sign.verifying_key().to_bytes(),
        ),
    ));

    // handshake alice -> bob, no pairing secret, then with one
    for (pairing, names) in [
        (
            None,
            [
                "hs_init",
                "hs_psk2",
                "hs_resp",
                "hs_handshake_hash",
                "data_keepalive_alice",
                "data_msg_bob",
            ],
        ),
        (
            Some([0x77u8; 32]),
            [
                "paired_hs_init",
                "paired_hs_psk2",
                "paired_hs_resp",
                "paired_hs_handshake_hash",
                "paired_data_keepalive_alice",
                "paired_data_msg_bob",
            ],
        ),
    ] {
        let la = LocalKeys {
            identity: a.sign.verifying_key().to_bytes(),
            noise: a.noise.clone(),
        };
        let lb = LocalKeys {
            identity: b.sign.verifying_key().to_bytes(),
            noise: b.noise.clone(),
        };
        let pb = PeerKeys {
            identity: lb.identity,
            noise: b.noise.public(),
            pairing: pairing.map(Zeroizing::new),
        };
        let pa = PeerKeys {
            identity: la.identity,
            noise: a.noise.public(),
            pairing: pairing.map(Zeroizing::new),
        };
        let kem = KemPair::from_seed(&[0x17; 64]);
        let ek = *kem.ek();
        let ts = Tai64N::from_unix(1_800_000_000, 0);
        let (mut init, init_blob) =
            handshake::initiate_with(&la, &pb, 0x0403_0201, ts, now, kem, Some(&[0x16; 32]))
                .unwrap();
        v.push((names[0], hex(&init_blob)));
        let Blob::HsInit { sender_idx, msg1 } = Blob::parse(&init_blob).unwrap() else {
            panic!()
        };
        let incoming =
            handshake::read_init_with(&lb, &pa, sender_idx, msg1, Some(&[0x26; 32])).unwrap();
        assert_eq!(incoming.ts(), ts);
        let m = [0x27u8; 32];
        let (ct, ss) = pq::encapsulate_deterministic(&ek, &m).unwrap();
        let psk = pq::derive_psk(pairing.as_ref(), &ss, PQ_PSK_INFO, &[&ek, &ct[..]]);
        v.push((names[1], hex(&*psk)));
        let (mut sb, resp_blob) = incoming
            .reply_deterministic(0x0d0c_0b0a, &[], now, &m)
            .unwrap();
        v.push((names[2], hex(&resp_blob)));
        let Blob::HsResp {
            sender_idx,
            receiver_idx,
            ct,
            msg2,
        } = Blob::parse(&resp_blob).unwrap()
        else {
            panic!()
        };
        let (mut sa, payload) = init
            .finish(sender_idx, receiver_idx, ct, msg2, now)
            .unwrap();
        assert!(payload.is_empty());
        assert_eq!(sa.handshake_hash(), sb.handshake_hash());
        v.push((names[3], hex(sa.handshake_hash())));
        // alice's key-confirmation keepalive: 64 zero bytes of padding, nonce 0
        let mut ka = Vec::new();
        sa.seal_into(now, &FrameWriter::default().finish(), &mut ka)
            .unwrap();
        v.push((names[4], hex(&ka)));
        let Blob::Data {
            nonce, ciphertext, ..
        } = Blob::parse(&ka).unwrap()
        else {
            panic!()
        };
        let mut pt = Vec::new();
        sb.open_into(now, nonce, ciphertext, &mut pt).unwrap();
        // bob's first message: ACK(0) + MSG seq 1 "hello, alice"
        let content = message_content();
        let enc = content.encode().unwrap();
        let mut w = FrameWriter::default();
        assert!(w.ack(0, &[0; 16]));
        assert!(w.msg(1, 0, 1, fragment(&enc, 0)));
        let mut d = Vec::new();
        sb.seal_into(now, &w.finish(), &mut d).unwrap();
        v.push((names[5], hex(&d)));
    }
    let content = message_content();
    v.push(("message_content_hello", hex(&content.encode().unwrap())));
    let mut w = FrameWriter::default();
    w.ack(0, &[0; 16]);
    w.msg(1, 0, 1, &content.encode().unwrap());
    v.push(("plaintext_ack_msg", hex(&w.finish())));
    // message 2's payload as the engine writes it: bob's high-water mark (nothing received
    // yet: ACK(0) with a zero digest) and his current mailbox key (here his card's), padded
    let bob_mbox = card(&b, "bob", None).body.mailbox;
    v.push((
        "hs_resp_payload_bob",
        hex(&crate::conn::session_start_frames(
            0,
            &[0; 16],
            Some(&bob_mbox),
        )),
    ));
    // the goodbye: CLOSE(bye) alone, padded
    let mut w = FrameWriter::default();
    assert!(w.raw(FRAME_CLOSE, &[liaison_wire::frame::close_reason::BYE]));
    v.push(("plaintext_close_bye", hex(&w.finish())));
    v.push((
        "hop_hello_ready",
        hex(&[
            HopFrame::Hello {
                version: PROTOCOL_VERSION,
            }
            .to_vec(),
            HopFrame::Ready {
                version: PROTOCOL_VERSION,
            }
            .to_vec(),
        ]
        .concat()),
    ));
    v.push((
        "alice_hop_spki",
        hex(&{
            let mut s = vec![
                0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
            ];
            s.extend_from_slice(&a.hop.verifying_key().to_bytes());
            s
        }),
    ));
    v
}

fn message_content() -> MessageContent {
    MessageContent {
        kind: MSG_KIND_TEXT,
        sent_at_ms: 1_800_000_000_123,
        salt: [0x5a; MSG_SALT_LEN],
        name: None,
        body: b"hello, alice".to_vec(),
    }
}

/// The ```vector NAME blocks of the document, whitespace removed.
fn doc_vectors() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in DOC.lines() {
        let t = line.trim();
        if let Some((name, body)) = current.as_mut() {
            if t == "```" {
                out.push((name.clone(), body.clone()));
                current = None;
            } else {
                body.extend(t.chars().filter(|c| !c.is_whitespace()));
            }
        } else if let Some(name) = t.strip_prefix("```vector ") {
            current = Some((name.trim().to_string(), String::new()));
        }
    }
    out
}

fn wrap(s: &str) -> String {
    s.as_bytes()
        .chunks(96)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn protocol_document_vectors_match_the_code() {
    let computed = compute();
    if std::env::var_os("LIAISON_PRINT_VECTORS").is_some() {
        for (n, v) in &computed {
            println!("```vector {n}\n{}\n```\n", wrap(v));
        }
    }
    let doc = doc_vectors();
    for (name, value) in &computed {
        let found = doc.iter().find(|(n, _)| n == name);
        let Some((_, d)) = found else {
            panic!("docs/protocol.md lacks vector {name}");
        };
        let want: String = value.split_whitespace().collect();
        assert_eq!(
            d, &want,
            "docs/protocol.md vector {name} differs from the code"
        );
    }
    for (name, _) in &doc {
        assert!(
            computed.iter().any(|(n, _)| n == name),
            "docs/protocol.md has vector {name} that no test computes"
        );
    }
}

#[test]
fn vectors_are_deterministic_and_sizes_match_the_spec() {
    let a = compute();
    let b = compute();
    assert_eq!(a, b);
    let get = |n: &str| a.iter().find(|(k, _)| *k == n).unwrap().1.len() / 2;
    assert_eq!(get("hs_init"), HS_INIT_BLOB_LEN);
    assert_eq!(get("hs_resp"), HS_RESP_HEADER_LEN + HS_MSG2_MIN_LEN);
    assert_eq!(
        get("data_keepalive_alice"),
        DATA_HEADER_LEN + 64 + NOISE_TAG_LEN
    );
    // docs/protocol.md §7.3: the message 2 payload and the HS_RESP that carries it
    assert_eq!(get("hs_resp_payload_bob"), 2048);
    assert!(
        a.iter()
            .find(|(k, _)| *k == "hs_resp_payload_bob")
            .unwrap()
            .1
            .starts_with("021800")
    );
    assert_eq!(HS_RESP_HEADER_LEN + HS_MSG2_MIN_LEN + 2048, 3193);
    // §9: the goodbye plaintext and the MSG limits stated there
    assert_eq!(get("plaintext_close_bye"), 64);
    assert_eq!(MAX_FRAGMENTS, 262);
    assert_eq!(MAX_REASSEMBLY_BYTES, 33_556_480);
    assert_eq!(liaison_wire::card::MAILBOX_KEY_PUB_LEN, 1296);
    // the two handshakes differ only through the psk: message 1 is identical
    assert_eq!(get("hs_init"), get("paired_hs_init"));
    assert_eq!(
        a.iter().find(|(k, _)| *k == "hs_init").unwrap().1,
        a.iter().find(|(k, _)| *k == "paired_hs_init").unwrap().1
    );
    assert_ne!(
        a.iter().find(|(k, _)| *k == "hs_resp").unwrap().1,
        a.iter().find(|(k, _)| *k == "paired_hs_resp").unwrap().1
    );
}
