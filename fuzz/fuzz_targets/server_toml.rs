//! The server's TOML configuration.
#![no_main]
use libfuzzer_sys::fuzz_target;

// The server's own config module, compiled here as it is: depending on the whole server
// crate would build its database, WebRTC and HTTP stacks under instrumentation for one
// TOML parser. The module needs only serde, toml and thiserror.
#[allow(dead_code)]
#[path = "../../crates/fieldlink-server/src/config.rs"]
mod config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(c) = config::Config::from_toml(text) {
            let _ = c.database_url();
        }
    }
});
