//! Fuzz target for the inner plaintext of DATA blobs and message 2 payloads: frame parsing,
//! message contents, and reassembly of MSG fragments. Nothing may panic, memory stays bounded,
//! and a MessageContent that decodes re-encodes to the same bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use liaison_proto::delivery::Receiver;
use liaison_wire::frame::{Frame, Frames, MessageContent};

fuzz_target!(|data: &[u8]| {
    let mut receiver = Receiver::new(0, [0; 16], []);
    for f in Frames::new(data) {
        match f {
            Ok(Frame::Msg {
                seq,
                frag_index,
                frag_count,
                chunk,
            }) => {
                if let Ok(liaison_proto::delivery::FragmentOutcome::Complete { seq, encoded }) =
                    receiver.on_fragment(seq, frag_index, frag_count, chunk)
                {
                    if let Ok(c) = MessageContent::decode(&encoded) {
                        assert_eq!(c.encode().ok().as_deref(), Some(encoded.as_slice()));
                    }
                    receiver.mark_stored(seq);
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
        assert!(receiver.buffered_bytes() <= liaison_wire::consts::MAX_REASSEMBLY_BYTES);
    }
    if let Ok(c) = MessageContent::decode(data) {
        assert_eq!(c.encode().ok().as_deref(), Some(data));
    }
});
