//! Fuzz target: hop frames and the relay's handling of them.
//!
//! Feeds arbitrary bytes to `HopFrame::parse` (and checks that whatever parses re-encodes to
//! bytes that parse to the same frame), to the relay's request parser, to the relay's
//! stream splitter (length prefixes checked before anything is read), and to the relay card
//! decoders. None may panic or allocate beyond the protocol's limits.
#![no_main]

use liaison_relay::request::{parse_request, split_frames};
use liaison_wire::hop::HopFrame;
use liaison_wire::relay_card::RelayCard;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // one frame body (`type || body`)
    if let Ok(frame) = HopFrame::parse(data) {
        let encoded = frame.to_vec();
        let body = encoded.get(4..).unwrap_or_default();
        assert_eq!(
            HopFrame::parse(body),
            Ok(frame),
            "re-encoding changed the frame"
        );
        assert_eq!(body, data, "hop frames have one encoding");
    }
    let _ = parse_request(data);

    // a stream of length-prefixed frames, as the relay reads a client's stream
    let (frames, rest) = split_frames(data);
    assert!(rest.len() <= data.len());
    for frame in frames.into_iter().flatten() {
        let _ = parse_request(frame);
    }

    // relay cards, binary and text
    if let Ok(card) = RelayCard::from_bytes(data) {
        assert_eq!(card.to_bytes().ok().as_deref(), Some(data));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = liaison_relay::verify_relay_card(text);
    }
});
