//! MANSCDP XML bodies (keepalive, Catalog, DeviceInfo, ...), any declared encoding.
#![no_main]
use fieldlink_gb28181::manscdp::{self, Manscdp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = manscdp::decode(data);
    let _ = Manscdp::parse(data);
});
