//! Signalling JSON as the server reads it from devices and the SDK reads it from the
//! server: whatever parses must serialize and parse back to the same message.
#![no_main]
use fieldlink_proto::{ClientMsg, ServerMsg};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = serde_json::from_slice::<ClientMsg>(data) {
        let again: ClientMsg = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(again, m);
    }
    if let Ok(m) = serde_json::from_slice::<ServerMsg>(data) {
        let _ = serde_json::to_string(&m).unwrap();
    }
});
