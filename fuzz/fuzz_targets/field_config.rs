//! The field device's config.json checker (`fieldlink field --check`).
#![no_main]
use fieldlink_proto::field_config::{check, ShapeOnly};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        for problem in check(&v, &ShapeOnly) {
            assert!(problem.starts_with('$'), "{problem}");
        }
    }
});
