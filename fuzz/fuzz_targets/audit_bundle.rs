//! Fuzz target for the audit bundle decoder: arbitrary bytes go to `Bundle::decode` and, when
//! they decode, through the offline checker (alone, and against itself as a second party) and
//! back through the encoder, which must reproduce them exactly. The same bytes also go to the
//! inner-line audit message decoder. Nothing may panic, hang or allocate beyond the input's
//! size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use liaison_audit::{AuditMessage, Bundle, check};

fuzz_target!(|data: &[u8]| {
    if let Ok(bundle) = Bundle::decode(data) {
        assert_eq!(bundle.encode(), data, "decode/encode must round-trip");
        let _ = check(std::slice::from_ref(&bundle));
        let _ = check(&[bundle.clone(), bundle]);
    }
    if let Ok(msg) = AuditMessage::decode(data) {
        let _ = AuditMessage::decode(&msg.encode());
    }
});
