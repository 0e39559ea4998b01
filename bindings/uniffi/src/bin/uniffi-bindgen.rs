//! `uniffi-bindgen` at this crate's UniFFI version: generates the Swift, Kotlin and Python
//! sources from the built library (`generate --library target/debug/libpiecestore_uniffi.so`).

fn main() {
    uniffi::uniffi_bindgen_main()
}
