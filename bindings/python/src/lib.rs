//! The native module of the `piecestore` Python package (`piecestore._native`).
//!
//! Conversion only: every behaviour comes from the `piecestore` core crate. Blocking methods
//! release the GIL and drive the core's futures on the core's one runtime
//! ([`piecestore::runtime`]); `*_async` methods return asyncio awaitables driven by the same
//! runtime. The Python package (`python/piecestore`) re-exports this module and defines the
//! exception classes and the `PieceInfo` dataclass that this module instantiates.
#![deny(missing_docs)]

mod asyncio;
mod buffer;
mod errors;
mod store;

use pyo3::prelude::*;

/// Sizes the shared runtime; fails once it has started (the first store call starts it).
#[pyfunction]
#[pyo3(signature = (*, worker_threads = None, max_blocking_threads = None))]
fn configure_runtime(
    worker_threads: Option<usize>,
    max_blocking_threads: Option<usize>,
) -> PyResult<()> {
    piecestore::runtime::configure(piecestore::runtime::RuntimeOptions {
        worker_threads,
        max_blocking_threads,
    })
    .map_err(errors::to_py)
}

/// Checks a piece key against the key rules; raises `InvalidKey` when it breaks one.
#[pyfunction]
fn validate_key(key: &str) -> PyResult<()> {
    piecestore::key::validate(key).map_err(errors::to_py)
}

/// The key of a Greenfield segment piece: `{object_id}_s{segment}`, or with `version` set the
/// versioned form `s{object_id}_s{segment}[_v{version}]` (version 0 writes no `_v`).
#[pyfunction]
#[pyo3(signature = (object_id, segment, *, version = None))]
fn segment_key(object_id: u64, segment: u32, version: Option<u64>) -> String {
    let k = piecestore::key::PieceKey::segment(object_id, segment);
    match version {
        Some(v) => k.with_version(v).to_string(),
        None => k.to_string(),
    }
}

/// The key of a Greenfield erasure-coded piece: `{object_id}_s{segment}_p{ec_index}`, or with
/// `version` set `e{object_id}_s{segment}_p{ec_index}[_v{version}]`.
#[pyfunction]
#[pyo3(signature = (object_id, segment, ec_index, *, version = None))]
fn ec_key(object_id: u64, segment: u32, ec_index: u32, version: Option<u64>) -> String {
    let k = piecestore::key::PieceKey::ec(object_id, segment, ec_index);
    match version {
        Some(v) => k.with_version(v).to_string(),
        None => k.to_string(),
    }
}

/// Parses a Greenfield piece key into `(object_id, segment, ec_index, version)`; `ec_index` is
/// None for a segment piece, `version` None for the legacy form (0 for versioned keys without
/// `_v`). Raises `InvalidKey` for anything else.
#[pyfunction]
fn parse_key(key: &str) -> PyResult<(u64, u32, Option<u32>, Option<u64>)> {
    use piecestore::key::{KeyFormat, PieceKey};
    let k = PieceKey::parse(key).map_err(errors::to_py)?;
    let version = match k.format {
        KeyFormat::Legacy => None,
        KeyFormat::Versioned { version } => Some(version.unwrap_or(0)),
    };
    Ok((k.object_id, k.segment, k.ec_index, version))
}

/// Whether `get` returns zero-copy buffers in this build (stable-ABI builds for 3.11+, and
/// version-specific builds).
#[pyfunction]
fn zero_copy_get() -> bool {
    buffer::ZERO_COPY
}

/// The native module.
#[pymodule(gil_used = false)]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<store::PieceStore>()?;
    m.add_class::<store::ListIterator>()?;
    m.add_class::<store::PieceReader>()?;
    m.add_class::<buffer::Buffer>()?;
    m.add_function(wrap_pyfunction!(configure_runtime, m)?)?;
    m.add_function(wrap_pyfunction!(validate_key, m)?)?;
    m.add_function(wrap_pyfunction!(segment_key, m)?)?;
    m.add_function(wrap_pyfunction!(ec_key, m)?)?;
    m.add_function(wrap_pyfunction!(parse_key, m)?)?;
    m.add_function(wrap_pyfunction!(zero_copy_get, m)?)?;
    m.add("MAX_KEY_LEN", piecestore::key::MAX_KEY_LEN)?;
    m.add("OPTION_NAMES", piecestore::config::OPTION_NAMES.to_vec())?;
    let kinds: std::collections::HashMap<&str, &str> = piecestore::config::OPTION_NAMES
        .iter()
        .filter_map(|n| Some((*n, piecestore::config::option_kind(n)?.as_str())))
        .collect();
    m.add("OPTION_KINDS", kinds)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
