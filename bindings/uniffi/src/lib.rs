//! Swift and Kotlin bindings of PieceStore, generated with [UniFFI](https://mozilla.github.io/uniffi-rs).
//!
//! A thin layer over the core crate `piecestore`: conversions only, every rule lives in the
//! core. Async operations run on the core's one shared tokio runtime (never a second one),
//! and so do their blocking twins. See `bindings/uniffi/README.md` for building, generating
//! and linking the Swift and Kotlin sources.

uniffi::setup_scaffolding!();

mod error;
mod inventory;
mod store;

pub use error::PieceStoreError;
pub use store::{DeleteSummary, PieceInfo, PieceList, PieceStore};

/// Sizes the one runtime that runs the I/O of every store in this process. Call it before the
/// first store is opened; afterwards (and for a count of 0) it fails with `InvalidConfig`.
/// Defaults: `worker_threads` from `PIECESTORE_RUNTIME_THREADS`, else one per core;
/// `max_blocking_threads` (local-file I/O) 512.
#[uniffi::export(default(worker_threads = None, max_blocking_threads = None))]
pub fn configure_runtime(
    worker_threads: Option<u32>,
    max_blocking_threads: Option<u32>,
) -> Result<(), PieceStoreError> {
    let count = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
    piecestore::runtime::configure(piecestore::runtime::RuntimeOptions {
        worker_threads: worker_threads.map(count),
        max_blocking_threads: max_blocking_threads.map(count),
    })?;
    Ok(())
}

/// The version of PieceStore this library was built from.
#[uniffi::export]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}
