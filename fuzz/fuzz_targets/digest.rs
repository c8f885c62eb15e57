//! The `Authorization: Digest ...` header of a REGISTER.
#![no_main]
use fieldlink_gb28181::DigestResponse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(d) = DigestResponse::parse(text) {
            let _ = d.verify("12345678", "REGISTER");
        }
    }
});
