//! Golden vectors from fixed keys: the examples printed in `docs/audit.md`. If the code and the
//! document disagree, this fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use ed25519_dalek::SigningKey;
use liaison_audit::checkpoint::{Checkpoint, SignedCheckpoint};
use liaison_audit::cosig::{Cosignature, cosigned_note};
use liaison_audit::entry::{Entry, Event, commitment};
use liaison_audit::keys::{KeyBinding, channel_id, log_origin, witness_name};
use liaison_audit::merkle::leaf_hash;
use liaison_audit::note::Note;

const CHANNEL: &str = "d8dbe0ea58ac5996d97139f14926f49090500ccc5c3d2281ef9358f570b06573";
const ORIGIN: &str = "liaison/1/audit/d8dbe0ea58ac5996d97139f14926f49090500ccc5c3d2281ef9358f570b06573/ed4928c628d1c2c6";
const BINDING: &str = "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5ced4928c628d1c2c6eae90338905995612959273a5c63f93636c14614ac8737d1ca93ac1705187071d67b83c7ff0efe8108e8ec4530575d7726879333dbdabe7c4239fc5a99196d356f6325b2a8e79fef5ef340ccd34a8b753fcf701940c1dbf3b793c86fcc1319667e59217670a560d512aae9853012deae01dc3ab345acb709";
const COMMITMENT: &str = "e43dd3d3275c3f38cbe17f5740ef683df497bfa4767ee776f3069ef9f830c682";
const LEAF: &str = "0110000000000000000000000000000000000000000000000000000000000000000000000000000000000000018bcfe568000000000000000001e43dd3d3275c3f38cbe17f5740ef683df497bfa4767ee776f3069ef9f830c6822222222222222222222222222222222222222222222222222222222222222222";
const LEAF_HASH: &str = "e59bf9000d2f536c3d6493d731c518c0a2117b20d80e929460caed630b9352d6";
const COSIGNED: &str = "liaison/1/audit/d8dbe0ea58ac5996d97139f14926f49090500ccc5c3d2281ef9358f570b06573/ed4928c628d1c2c6
1
5Zv5AA0vU2w9ZJPXMcUYwKIReyDYDpKUYMrtYwuTUtY=

\u{2014} liaison/1/audit/d8dbe0ea58ac5996d97139f14926f49090500ccc5c3d2281ef9358f570b06573/ed4928c628d1c2c6 6q7x2zQUQC40/IsAO+ZfBrv2J+WXDuqRaWn05vjia0rgChtQI2nCm1AIR2yDDcJ4X8VfkTyLdXTf1jhJXb9DtrVoRAw=
\u{2014} liaison/1/witness/6e7a1cdd29b0b78f xiv1hwAAAABlU/EA/ofOVCljFpldh3GD70avVgn3YKusor+Yx99ZKwRwSLMNI/WqRgeLG4+nsR+fYRUjZuIJ01Z37M407Q6/7RYJBw==
";

#[test]
fn fixed_key_examples_match_the_document() {
    let ida = SigningKey::from_bytes(&[1; 32]);
    let idb = SigningKey::from_bytes(&[2; 32]);
    let log = SigningKey::from_bytes(&[3; 32]);
    let wit = SigningKey::from_bytes(&[4; 32]);
    let peer_witness = SigningKey::from_bytes(&[5; 32]);

    let binding = KeyBinding::sign(&ida, &log.verifying_key(), &wit.verifying_key());
    assert_eq!(hex::encode(binding.to_bytes()), BINDING);
    binding.verify().unwrap();

    let ch = channel_id(&ida.verifying_key(), &idb.verifying_key());
    assert_eq!(hex::encode(ch), CHANNEL);
    assert_eq!(log_origin(&ch, &log.verifying_key()), ORIGIN);
    assert_eq!(
        witness_name(&peer_witness.verifying_key()),
        "liaison/1/witness/6e7a1cdd29b0b78f"
    );

    let c = commitment(&[0x11; 32], b"hello");
    assert_eq!(hex::encode(c), COMMITMENT);
    let e = Entry {
        index: 0,
        prev: [0; 32],
        time_ms: 1_700_000_000_000,
        event: Event::MsgSent {
            seq: 1,
            commitment: c,
            ciphertext_hash: [0x22; 32],
        },
    };
    let leaf = e.to_leaf();
    assert_eq!(hex::encode(&leaf), LEAF);
    assert_eq!(hex::encode(leaf_hash(&leaf)), LEAF_HASH);

    let cp = Checkpoint::new(ORIGIN.into(), 1, leaf_hash(&leaf));
    let signed = SignedCheckpoint::sign(cp.clone(), &log).unwrap();
    let cosig = Cosignature::sign(&peer_witness, &cp, 1_700_000_000).unwrap();
    let note = cosigned_note(&signed, &[(peer_witness.verifying_key(), cosig)]);
    assert_eq!(note, COSIGNED);

    // And the document's note verifies on its own.
    let parsed = Note::parse(COSIGNED.as_bytes()).unwrap();
    liaison_audit::note::verify_ed25519(&parsed, ORIGIN, &log.verifying_key()).unwrap();
    let line = &parsed.signatures[1];
    let c = Cosignature::from_note_signature(line, &peer_witness.verifying_key()).unwrap();
    assert_eq!(c.timestamp, 1_700_000_000);
    c.verify(&peer_witness.verifying_key(), &cp).unwrap();
}
