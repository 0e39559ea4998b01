//! `include/piecestore.h` is what cbindgen makes of `src/`: this test fails when the committed
//! header is stale. `PIECESTORE_BLESS=1 cargo test -p piecestore-c --test header` rewrites it.

use std::path::Path;

#[test]
fn committed_header_is_up_to_date() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("UTF-8 header");
    let path = dir.join("include/piecestore.h");
    if std::env::var_os("PIECESTORE_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write the header");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "bindings/c/include/piecestore.h is stale: run \
         `PIECESTORE_BLESS=1 cargo test -p piecestore-c --test header` and commit it"
    );
}
