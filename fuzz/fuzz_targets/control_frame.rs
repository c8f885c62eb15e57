//! The control-data frame of the data channels: what decodes re-encodes to the same bytes.
#![no_main]
use fieldlink_proto::ControlFrame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = ControlFrame::decode(data) {
        assert_eq!(f.encode().unwrap(), data);
    }
});
