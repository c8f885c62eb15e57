//! The SDP of a GB28181 device's INVITE answer (or its own INVITE).
#![no_main]
use fieldlink_gb28181::sdp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = sdp::media(&text);
    for line in text.lines() {
        let _ = sdp::MediaMode::parse(line);
    }
});
