//! The AUDIT message examples of `docs/audit.md` §4.3 (the ```` ```vector NAME ```` blocks),
//! recomputed from fixed keys with the code that builds and answers the messages, then read
//! back from the document and checked the way a peer would. If the document and the code
//! disagree, this fails. `LIAISON_PRINT_VECTORS=1 cargo test -p liaison-audit --test
//! wire_vectors -- --nocapture` prints the blocks to paste after an intentional change.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use ed25519_dalek::SigningKey;
use liaison_audit::checkpoint::{Checkpoint, SignedCheckpoint};
use liaison_audit::entry::{Entry, Event, commitment};
use liaison_audit::keys::{LocalKeys, channel_id, log_origin};
use liaison_audit::merkle::{MerkleTree, leaf_hash, verify_consistency};
use liaison_audit::receipt::Receipt;
use liaison_audit::wire::{AuditMessage, CheckpointOffer};
use liaison_audit::witness::{Witness, WitnessOutcome};

const DOC: &str = include_str!("../../../docs/audit.md");

/// The ```` ```vector NAME ```` blocks of the document: each line trimmed, every line ending
/// in a newline.
fn doc_blocks() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in DOC.lines() {
        let t = line.trim();
        if let Some((name, body)) = current.as_mut() {
            if t == "```" {
                out.push((name.clone(), body.clone()));
                current = None;
            } else {
                body.push_str(t);
                body.push('\n');
            }
        } else if let Some(name) = t.strip_prefix("```vector ") {
            current = Some((name.trim().to_string(), String::new()));
        }
    }
    assert!(
        current.is_none(),
        "docs/audit.md: unterminated vector block"
    );
    out
}

fn no_space(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

/// A block as bytes: hex with the whitespace removed.
fn doc_bytes(name: &str) -> Vec<u8> {
    let blocks = doc_blocks();
    let (_, b) = blocks.iter().find(|(n, _)| n == name).unwrap();
    hex::decode(no_space(b)).unwrap()
}

/// The one text block: a signed note, compared byte for byte.
const NOTE_VECTOR: &str = "audit_checkpoint_2";

struct Example {
    /// (name, value) in document order: hex, or text for notes.
    vectors: Vec<(&'static str, String)>,
    channel: [u8; 32],
    alice_log: SigningKey,
    bob_witness: SigningKey,
    root1: [u8; 32],
    checkpoint2: Checkpoint,
    messages: Vec<(&'static str, AuditMessage)>,
}

/// alice (identity 01…01, log key 03…03, witness 04…04) keeps a two-entry log of her line with
/// bob (identity 02…02, log key 06…06, witness 05…05); bob's witness has cosigned its first
/// checkpoint (size 1).
fn example() -> Example {
    let alice_id = SigningKey::from_bytes(&[1; 32]);
    let bob_id = SigningKey::from_bytes(&[2; 32]);
    let alice_log = SigningKey::from_bytes(&[3; 32]);
    let alice = LocalKeys::from_identity(
        &alice_id,
        alice_log.clone(),
        SigningKey::from_bytes(&[4; 32]),
    )
    .unwrap();
    let bob_witness = SigningKey::from_bytes(&[5; 32]);
    let bob = LocalKeys::from_identity(
        &bob_id,
        SigningKey::from_bytes(&[6; 32]),
        bob_witness.clone(),
    )
    .unwrap();
    let channel = channel_id(&alice_id.verifying_key(), &bob_id.verifying_key());
    let origin = log_origin(&channel, &alice_log.verifying_key());

    // entry 0: the msg_sent of docs/audit.md §4.1; entry 1: bob's seq 1 received
    let e0 = Entry {
        index: 0,
        prev: [0; 32],
        time_ms: 1_700_000_000_000,
        event: Event::MsgSent {
            seq: 1,
            commitment: commitment(&[0x11; 32], b"hello"),
            ciphertext_hash: [0x22; 32],
        },
    }
    .to_leaf();
    let e1 = Entry {
        index: 1,
        prev: leaf_hash(&e0),
        time_ms: 1_700_000_000_500,
        event: Event::MsgReceived {
            seq: 1,
            commitment: commitment(&[0x33; 32], b"hi"),
            ciphertext_hash: [0x44; 32],
        },
    }
    .to_leaf();
    let tree = MerkleTree::from_leaf_hashes([leaf_hash(&e0), leaf_hash(&e1)]);
    let root1 = tree.root_at(1).unwrap();
    let cp1 =
        SignedCheckpoint::sign(Checkpoint::new(origin.clone(), 1, root1), &alice_log).unwrap();
    let checkpoint2 = Checkpoint::new(origin, 2, tree.root());
    let cp2 = SignedCheckpoint::sign(checkpoint2.clone(), &alice_log).unwrap();

    // alice offers size 2 with a proof from size 1, the size bob last cosigned
    let offer = CheckpointOffer {
        binding: alice.binding().clone(),
        checkpoint: cp2.clone(),
        from_size: 1,
        proof: tree.consistency_proof(1, 2).unwrap(),
    };
    // bob's witness, holding the size-1 checkpoint, answers it at 1,700,000,001 s ...
    let witness = Witness::new(
        channel,
        alice_id.verifying_key(),
        Some(cp1),
        std::iter::empty(),
    );
    let now_ms = 1_700_000_001_000;
    let WitnessOutcome::Cosign(accept) = witness
        .check_offer(&offer, None, &bob, now_ms, &|_| None)
        .unwrap()
    else {
        panic!("the example offer must be cosigned");
    };
    // ... and answers an offer whose proof starts at 0 with the size it holds
    let stale = CheckpointOffer {
        from_size: 0,
        proof: Vec::new(),
        ..offer.clone()
    };
    let WitnessOutcome::Resync(resync) = witness
        .check_offer(&stale, None, &bob, now_ms, &|_| None)
        .unwrap()
    else {
        panic!("an offer from the wrong size must be answered with a resync");
    };
    // once cosigned, alice sends bob a receipt for the msg_recv entry 1
    let receipt = Receipt {
        checkpoint: cp2.clone(),
        leaf_index: 1,
        leaf: e1.clone(),
        proof: tree.inclusion_proof(1, 2).unwrap(),
    };

    let messages = vec![
        ("audit_offer", AuditMessage::Offer(offer)),
        ("audit_cosignature", AuditMessage::Cosignature(accept.reply)),
        ("audit_resync", AuditMessage::Resync(resync)),
        ("audit_receipt", AuditMessage::Receipt(receipt)),
    ];
    let mut vectors = vec![
        ("audit_entry_1", hex::encode(&e1)),
        ("audit_checkpoint_2", cp2.to_note()),
    ];
    for (name, m) in &messages {
        vectors.push((name, hex::encode(m.encode())));
    }
    Example {
        vectors,
        channel,
        alice_log,
        bob_witness,
        root1,
        checkpoint2,
        messages,
    }
}

fn wrap(s: &str) -> String {
    if s.contains('\n') {
        return s.trim_end().to_string();
    }
    s.as_bytes()
        .chunks(96)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn audit_document_vectors_match_the_code() {
    let ex = example();
    if std::env::var_os("LIAISON_PRINT_VECTORS").is_some() {
        for (n, v) in &ex.vectors {
            println!("```vector {n}\n{}\n```", wrap(v));
        }
    }
    let doc = doc_blocks();
    for (name, value) in &ex.vectors {
        let Some((_, d)) = doc.iter().find(|(n, _)| n == name) else {
            panic!("docs/audit.md lacks vector {name}");
        };
        if *name == NOTE_VECTOR {
            assert_eq!(d, value, "docs/audit.md note {name} differs from the code");
        } else {
            assert_eq!(
                no_space(d),
                no_space(value),
                "docs/audit.md vector {name} differs from the code"
            );
        }
    }
    for (name, _) in &doc {
        assert!(
            ex.vectors.iter().any(|(n, _)| n == name),
            "docs/audit.md has vector {name} that no test computes"
        );
    }
}

/// What a peer does with the document's bytes: decode each message (exactly, nothing left
/// over) and check it.
#[test]
fn audit_document_messages_decode_and_verify() {
    let ex = example();
    let bytes = doc_bytes;
    for (name, m) in &ex.messages {
        let b = bytes(name);
        let decoded = AuditMessage::decode(&b).unwrap();
        assert_eq!(&decoded, m, "{name} decodes to another message");
        assert_eq!(
            decoded.encode(),
            b,
            "{name} does not re-encode to the same bytes"
        );
        assert_eq!(b[0], 0x01, "{name}: version byte");
    }
    // the sizes and offsets of the layout tables in §4.3
    let offer_b = bytes("audit_offer");
    let n = usize::from(u16::from_be_bytes([offer_b[162], offer_b[163]]));
    assert_eq!(n, 341, "the document says n = 341");
    assert_eq!(offer_b.len(), 173 + n + 32 * usize::from(offer_b[172 + n]));
    assert_eq!(bytes("audit_cosignature").len(), 274);
    assert_eq!(bytes("audit_resync").len(), 42);
    let receipt_b = bytes("audit_receipt");
    assert_eq!(
        usize::from(u16::from_be_bytes([receipt_b[2], receipt_b[3]])),
        n
    );
    let l = usize::from(receipt_b[12 + n]);
    assert_eq!(l, 122);
    assert_eq!(
        receipt_b.len(),
        14 + n + l + 32 * usize::from(receipt_b[13 + n + l])
    );
    let alice_log = ex.alice_log.verifying_key();
    let AuditMessage::Offer(offer) = AuditMessage::decode(&bytes("audit_offer")).unwrap() else {
        panic!()
    };
    offer.binding.verify().unwrap();
    offer.checkpoint.verify(&ex.channel, &alice_log).unwrap();
    verify_consistency(
        offer.from_size,
        offer.checkpoint.size(),
        &offer.proof,
        &ex.root1,
        offer.checkpoint.root(),
    )
    .unwrap();
    // the note printed on its own is the one inside the offer (and the receipt), and verifies
    let blocks = doc_blocks();
    let (_, note) = blocks.iter().find(|(n, _)| n == NOTE_VECTOR).unwrap();
    let parsed = SignedCheckpoint::parse(note.as_bytes()).unwrap();
    parsed.verify(&ex.channel, &alice_log).unwrap();
    assert_eq!(parsed, offer.checkpoint);
    let AuditMessage::Cosignature(c) = AuditMessage::decode(&bytes("audit_cosignature")).unwrap()
    else {
        panic!()
    };
    c.binding.verify().unwrap();
    assert_eq!(c.binding.witness_key, ex.bob_witness.verifying_key());
    assert_eq!((c.size, c.root), (2, ex.checkpoint2.root));
    assert_eq!(c.cosignature.timestamp, 1_700_000_001);
    c.cosignature
        .verify(&c.binding.witness_key, &ex.checkpoint2)
        .unwrap();
    let AuditMessage::Resync(r) = AuditMessage::decode(&bytes("audit_resync")).unwrap() else {
        panic!()
    };
    assert_eq!((r.size, r.root), (1, ex.root1));
    let AuditMessage::Receipt(rc) = AuditMessage::decode(&bytes("audit_receipt")).unwrap() else {
        panic!()
    };
    let v = rc.verify(&ex.channel, &alice_log).unwrap();
    assert_eq!((v.seq, v.leaf_index, v.size), (1, 1, 2));
    assert_eq!(v.commitment, commitment(&[0x33; 32], b"hi"));
    assert_eq!(rc.leaf, bytes("audit_entry_1"));
    assert_eq!(rc.checkpoint, offer.checkpoint);
}
