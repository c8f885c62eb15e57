//! The committed `include/fieldlink.h` is what cbindgen makes of the crate now: a change
//! to the API that forgot the header fails here. `FIELDLINK_BLESS=1` rewrites it.

use std::path::Path;

#[test]
fn the_committed_header_is_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut made = Vec::new();
    cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen reads the crate")
        .write(&mut made);
    let path = dir.join("include/fieldlink.h");
    if std::env::var_os("FIELDLINK_BLESS").is_some() {
        std::fs::write(&path, &made).expect("writing the header");
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == made,
        "{} is stale: run FIELDLINK_BLESS=1 cargo test -p fieldlink-capi --test header \
         and commit it",
        path.display()
    );
}
