//! The native addon of the `piecestore` npm package: the core's `PieceStore` for Node.js.
//!
//! Conversion only: every operation is the core's. Methods return Promises and run on the
//! core's tokio runtime (registered as napi-rs's async backend, see [`runtime`]); a call that
//! can answer at once (a memory store, an invalid key) settles without leaving the JavaScript
//! thread.

#![deny(missing_docs)]

mod args;
mod buffer;
mod errors;
mod fast;
mod maintenance;
mod promise;
mod runtime;
mod store;

use napi::bindgen_prelude::*;
use napi_derive::napi;
use piecestore::key::{self, PieceKey};

use crate::args::{Args, U32_LIMIT, U64_LIMIT};

pub use maintenance::{
    DoomedSummary, FsckOpts, FsckProblem, FsckReport, GcOpts, GcReport, Inventory, InventoryOpts,
    MigrateFailure, MigrateOpts, MigrateReport, OrphanSample, Orphans, PackStats, ShardInventory,
    SizeBucket,
};
pub use store::{
    DeleteSummary, OpMetrics, PieceInfo, PieceList, PieceStore, PutOpts, StoreOptions,
};

#[napi_derive::module_init]
fn init() {
    runtime::install();
}

/// Runs once the module's exports are made (in each environment that loads it). Should the
/// prototype's methods not be found, stores are made without own `get` and `put`: slower,
/// never broken (node/test/roundtrip.test.mjs checks that they have them).
#[napi(module_exports)]
pub fn exports(exports: Object<'_>, env: Env) -> Result<()> {
    if fast::remember_methods(&env, &exports).is_err() {
        // Nothing of it may be left thrown at the code that loaded the module.
        let mut pending = std::ptr::null_mut();
        unsafe { napi::sys::napi_get_and_clear_last_exception(env.raw(), &mut pending) };
    }
    Ok(())
}

/// The longest key a piece may have, in bytes.
#[napi]
pub const MAX_KEY_LEN: u32 = key::MAX_KEY_LEN as u32;

/// The names `options` accepts, as in `config.toml` (camelCase and snake_case work too).
#[napi]
pub fn option_names() -> Vec<&'static str> {
    piecestore::config::OPTION_NAMES.to_vec()
}

/// How to size the process's one runtime (see `configureRuntime`).
#[napi(object, object_from_js = false, object_to_js = false)]
pub struct RuntimeOptions {
    /// Threads that run async work (default: one per core).
    pub worker_threads: Option<u32>,
    /// Most threads for blocking file I/O at once.
    pub max_blocking_threads: Option<u32>,
}

/// Sizes the process's one runtime, shared by every store (and every binding in the process).
/// Call it before the first store is used; afterwards it throws a `CONFIG` error.
/// `PIECESTORE_RUNTIME_THREADS` in the environment also sets the worker count.
#[napi]
pub fn configure_runtime(
    env: &Env,
    #[napi(ts_arg_type = "RuntimeOptions")] options: Unknown<'_>,
) -> Result<()> {
    let a = Args::new(env, "configureRuntime");
    let options = a.object(options, "options", "an object (RuntimeOptions)")?;
    let mut o = piecestore::runtime::options();
    let count = |name: &str| -> Result<Option<usize>> {
        let v = options.get(name)?;
        let n = a.opt_integer(v, format_args!("options.{name}"), U32_LIMIT)?;
        // Below 2^32: fits a usize on every target Node runs on.
        Ok(n.map(|n| n as usize))
    };
    if let Some(n) = count("workerThreads")? {
        o.worker_threads = Some(n);
    }
    if let Some(n) = count("maxBlockingThreads")? {
        o.max_blocking_threads = Some(n);
    }
    piecestore::runtime::configure(o).map_err(|e| errors::to_napi(env, &e))
}

/// Throws an `INVALID_KEY` error if `key` breaks a key rule.
#[napi]
pub fn validate_key(env: &Env, #[napi(ts_arg_type = "string")] key: Unknown<'_>) -> Result<()> {
    let key = Args::new(env, "validateKey").string(key, "key")?;
    key::validate(&key).map_err(|e| errors::to_napi(env, &e))
}

/// The key of a Greenfield segment piece: `{objectId}_s{segment}`, or with `version` given the
/// versioned form `s{objectId}_s{segment}[_v{version}]` (version 0 writes no `_v`). Every
/// number must be a non-negative integer (a `RangeError` otherwise).
#[napi]
pub fn segment_key(
    env: &Env,
    #[napi(ts_arg_type = "number")] object_id: Unknown<'_>,
    #[napi(ts_arg_type = "number")] segment: Unknown<'_>,
    #[napi(ts_arg_type = "number | undefined | null")] version: Option<Unknown<'_>>,
) -> Result<String> {
    let a = Args::new(env, "segmentKey");
    let k = PieceKey::segment(
        a.integer(object_id, "objectId", U64_LIMIT)?,
        a.integer(segment, "segment", U32_LIMIT)? as u32,
    );
    versioned(a, k, version)
}

/// The key of a Greenfield erasure-coded piece: `{objectId}_s{segment}_p{ecIndex}`, or with
/// `version` given `e{objectId}_s{segment}_p{ecIndex}[_v{version}]`. Every number must be a
/// non-negative integer (a `RangeError` otherwise).
#[napi]
pub fn ec_key(
    env: &Env,
    #[napi(ts_arg_type = "number")] object_id: Unknown<'_>,
    #[napi(ts_arg_type = "number")] segment: Unknown<'_>,
    #[napi(ts_arg_type = "number")] ec_index: Unknown<'_>,
    #[napi(ts_arg_type = "number | undefined | null")] version: Option<Unknown<'_>>,
) -> Result<String> {
    let a = Args::new(env, "ecKey");
    let k = PieceKey::ec(
        a.integer(object_id, "objectId", U64_LIMIT)?,
        a.integer(segment, "segment", U32_LIMIT)? as u32,
        a.integer(ec_index, "ecIndex", U32_LIMIT)? as u32,
    );
    versioned(a, k, version)
}

/// A Greenfield piece key, parsed.
#[napi(object, object_from_js = false)]
pub struct ParsedKey {
    /// The object id.
    pub object_id: i64,
    /// The segment index.
    pub segment: u32,
    /// The erasure-coding index; `null` for a segment piece.
    #[napi(ts_type = "number | null")]
    pub ec_index: OrNull<u32>,
    /// The version; `null` for the legacy form, 0 for a versioned key without `_v`.
    #[napi(ts_type = "number | null")]
    pub version: OrNull<i64>,
}

/// Parses a Greenfield piece key; throws an `INVALID_KEY` error for anything else.
#[napi]
pub fn parse_key(env: &Env, #[napi(ts_arg_type = "string")] key: Unknown<'_>) -> Result<ParsedKey> {
    let key = Args::new(env, "parseKey").string(key, "key")?;
    let k = PieceKey::parse(&key).map_err(|e| errors::to_napi(env, &e))?;
    let version = match k.format {
        key::KeyFormat::Legacy => None,
        key::KeyFormat::Versioned { version } => Some(version.unwrap_or(0) as i64),
    };
    Ok(ParsedKey {
        object_id: k.object_id as i64,
        segment: k.segment,
        ec_index: OrNull(k.ec_index),
        version: OrNull(version),
    })
}

/// An optional value that is `null` in JavaScript when absent (the property always exists;
/// napi leaves `None` fields out).
pub struct OrNull<T>(pub Option<T>);

impl<T: ToNapiValue> ToNapiValue for OrNull<T> {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> Result<sys::napi_value> {
        match val.0 {
            Some(v) => unsafe { T::to_napi_value(env, v) },
            None => unsafe { Null::to_napi_value(env, Null) },
        }
    }
}

fn versioned(a: Args<'_>, k: PieceKey, version: Option<Unknown<'_>>) -> Result<String> {
    Ok(match a.opt_integer(version, "version", U64_LIMIT)? {
        Some(v) => k.with_version(v).to_string(),
        None => k.to_string(),
    })
}
