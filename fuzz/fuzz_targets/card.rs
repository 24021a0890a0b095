//! Fuzz target for contact cards: arbitrary bytes as card text (`parse_card_text`) and as the
//! binary form (`Card::from_bytes` then `verify_card`). Nothing may panic, and whatever parses
//! must be canonical: re-encoding a parsed body gives back exactly the signed bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use liaison_proto::identity::{parse_card_text, verify_card};
use liaison_wire::Card;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(card) = parse_card_text(&text) {
        // a verified card survives its own text form
        assert_eq!(parse_card_text(&card.to_text()).ok(), Some(card));
    }

    if let Ok(card) = Card::from_bytes(data) {
        assert_eq!(card.to_bytes(), data);
        assert_eq!(
            Card::encode_body(&card.body).ok().as_deref(),
            Some(card.body_bytes.as_slice()),
            "card body encoding is not canonical"
        );
        let _ = verify_card(card);
    }
});
