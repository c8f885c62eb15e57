//! The field device's config.json checker (`fieldlink field --check`).
#![no_main]
use fieldlink_proto::field_config::{check, Outside};
use libfuzzer_sys::fuzz_target;

/// Every file and camera is fine: the checker's own logic is what is fuzzed.
struct Anything;
impl Outside for Anything {
    fn file(&self, _: &str) -> Option<String> {
        None
    }
    fn certificate(&self, _: &str) -> Option<String> {
        None
    }
    fn rtsp(&self, _: &str) -> Option<String> {
        None
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        for problem in check(&v, &Anything) {
            assert!(problem.starts_with('$'), "{problem}");
        }
    }
});
