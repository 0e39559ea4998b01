//! `PieceStore`: the core's `PieceStore` with Promise-returning methods.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use napi::bindgen_prelude::*;
use napi_derive::napi;
use piecestore::config::OptionValue;
use piecestore::{Config, PieceMeta, PutOptions};

use crate::OrNull;
use crate::buffer::{Data, Input, PieceBuf};
use crate::errors::{coded_error, to_napi};
use crate::promise::promise;

/// Puts up to this size, and gets of pieces up to this size from a memory store, run their
/// first step on the calling thread (see [`promise`]): checksumming 1 MiB takes about 20 µs.
const INLINE_MAX: usize = 1024 * 1024;

/// Options of a store, overriding its URL or config (then the environment applies, as
/// everywhere in PieceStore). Names may also be given as in `config.toml` (`MaxRetries`) or in
/// snake case; an unknown name is a `CONFIG` error. Durations are seconds (`2.5`) or strings
/// (`"1500ms"`).
#[napi(object, object_from_js = false, object_to_js = false)]
pub struct StoreOptions {
    /// Number of shards (buckets); the URL must hold `%d`.
    pub shards: Option<u32>,
    /// How keys map to shards: `"fnv-mod"` (default) or `"jump"` (jump consistent hash).
    pub placement: Option<String>,
    /// Storage kind: `"s3"`, `"minio"`, `"oss"`, `"b2"`, `"file"` or `"memory"` (normally implied by the URL).
    pub storage: Option<String>,
    /// The bucket URL (template, with `%d` when sharded).
    pub bucket_url: Option<String>,
    /// S3 access key id (better taken from the environment).
    pub access_key: Option<String>,
    /// S3 secret key (better taken from the environment).
    pub secret_key: Option<String>,
    /// S3 session token.
    pub session_token: Option<String>,
    /// Send unsigned requests (public buckets).
    pub no_sign_request: Option<bool>,
    /// Retries of a failed request.
    pub max_retries: Option<u32>,
    /// First retry delay.
    #[napi(ts_type = "number | string")]
    pub min_retry_delay: Option<String>,
    /// Accept any TLS certificate (test servers only).
    pub tls_insecure_skip_verify: Option<bool>,
    /// Credential source: `"AKSK"` (keys must be given) or `"SA"` (keys, else web identity, else the instance role).
    pub iam_type: Option<String>,
    /// S3 region.
    pub region: Option<String>,
    /// S3 endpoint, overriding the one derived from the URL.
    pub endpoint: Option<String>,
    /// Longest retry delay.
    #[napi(ts_type = "number | string")]
    pub max_retry_delay: Option<String>,
    /// Give up retrying after this long.
    #[napi(ts_type = "number | string")]
    pub retry_timeout: Option<String>,
    /// Timeout of one request.
    #[napi(ts_type = "number | string")]
    pub request_timeout: Option<String>,
    /// Timeout of connecting.
    #[napi(ts_type = "number | string")]
    pub connect_timeout: Option<String>,
    /// Use conditional writes (`If-None-Match`) to refuse overwrites.
    pub conditional_writes: Option<bool>,
    /// fsync local files before a put returns (default true).
    pub fsync: Option<bool>,
    /// Check each bucket exists (on first use) and accepts the credentials (default true).
    pub check_bucket: Option<bool>,
    /// Sign S3 requests without hashing their bodies (SigV4 `UNSIGNED-PAYLOAD`; default false).
    pub unsigned_payload: Option<bool>,
    /// Create a missing bucket when the check finds none (default true).
    pub create_bucket: Option<bool>,
    /// Keep operation metrics (`store.metrics()`; default true).
    pub metrics: Option<bool>,
    /// Return pieces that carry no checksum (written by another program) instead of failing
    /// with `CORRUPT_PIECE` (default: true in the original's layout, else false).
    pub allow_unverified: Option<bool>,
    /// Whose layout the pieces are kept in: `"piecestore"` (PieceStore's own) or `"original"`
    /// (byte for byte the original Go piecestore's; the default for a config in its layout).
    pub layout: Option<String>,
    /// Pack small pieces (default: on for directories and buckets, off for `memory://`).
    pub pack: Option<bool>,
    /// Pieces smaller than this are packed (bytes or `"512KiB"`; default 1 MiB).
    #[napi(ts_type = "number | string")]
    pub pack_threshold: Option<String>,
    /// A pack is closed at this size (default 64 MiB).
    #[napi(ts_type = "number | string")]
    pub pack_target_size: Option<String>,
    /// Accepted for configs of earlier versions; puts no longer wait for a timer (no effect).
    #[napi(ts_type = "number | string")]
    pub pack_max_age: Option<String>,
    /// Garbage collection compacts packs with at least this share of garbage (default 0.5).
    pub gc_garbage_ratio: Option<f64>,
    /// Compacted packs are deleted this long after (default `"1h"`).
    #[napi(ts_type = "number | string")]
    pub gc_grace: Option<String>,
    /// Run garbage collection in the background this often (default: never).
    #[napi(ts_type = "number | string")]
    pub gc_interval: Option<String>,
    /// Where a bucket's pack index is kept (default: the user's cache directory).
    pub index_dir: Option<String>,
    /// The PostgreSQL index several nodes share (`postgres://…`; a secret, never shown).
    pub index_url: Option<String>,
}

/// Options of a put.
#[napi(object)]
#[derive(Default)]
pub struct PutOpts {
    /// Replace an existing piece with different bytes instead of failing with `PIECE_EXISTS`.
    pub overwrite: Option<bool>,
}

impl PutOpts {
    fn core(opts: Option<PutOpts>) -> PutOptions {
        PutOptions {
            overwrite: opts.and_then(|o| o.overwrite).unwrap_or(false),
        }
    }
}

/// A piece's metadata.
#[napi(object, object_from_js = false)]
pub struct PieceInfo {
    /// The piece key.
    pub key: String,
    /// Size in bytes.
    pub size: i64,
    /// CRC32C of the bytes; `null` when not known: `list` does not fetch checksums, and a piece
    /// written by another tool has none (its reads are not verified).
    #[napi(js_name = "crc32c", ts_type = "number | null")]
    pub crc32c: OrNull<u32>,
    /// When the piece was stored.
    #[napi(ts_type = "Date")]
    pub last_modified: Timestamp,
}

impl From<PieceMeta> for PieceInfo {
    fn from(m: PieceMeta) -> Self {
        PieceInfo {
            key: m.key,
            size: m.size as i64,
            crc32c: OrNull(m.crc32c),
            last_modified: Timestamp(
                m.last_modified
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs_f64() * 1000.0)
                    .unwrap_or(0.0),
            ),
        }
    }
}

/// Milliseconds since the epoch, converted to a JavaScript `Date`.
pub struct Timestamp(f64);

impl ToNapiValue for Timestamp {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> Result<sys::napi_value> {
        let mut out = std::ptr::null_mut();
        check_status!(
            unsafe { sys::napi_create_date(env, val.0, &mut out) },
            "could not create a Date"
        )?;
        Ok(out)
    }
}

/// What `deletePrefix` removed.
#[napi(object, object_from_js = false)]
pub struct DeleteSummary {
    /// Pieces deleted.
    pub pieces: i64,
    /// Their bytes.
    pub bytes: i64,
}

/// The metrics of one operation on one shard, from `metricsSummary()`.
#[napi(object, object_from_js = false)]
pub struct OpMetrics {
    /// The shard's backend kind: `"memory"`, `"file"` or `"s3"`.
    pub backend: String,
    /// The shard index.
    pub shard: u32,
    /// The operation: `"put"`, `"get"`, `"get_range"`, `"head"`, `"delete"` or `"list"`.
    pub op: String,
    /// Operations finished, failed ones included.
    pub count: i64,
    /// Bytes stored (put) or returned (get, getRange) by successful operations.
    pub bytes: i64,
    /// Failed operations by error code (`PIECE_NOT_FOUND`, ...); codes without failures are
    /// left out.
    pub errors: HashMap<String, i64>,
    /// Total time the operations took, in seconds.
    pub latency_sum_seconds: f64,
    /// Median latency in seconds: the upper bound of its histogram bucket (powers of two from
    /// 1 µs); `null` without samples, `Infinity` past the last bucket (~67 s).
    #[napi(ts_type = "number | null")]
    pub p50_seconds: OrNull<f64>,
    /// 99th percentile latency in seconds, estimated as `p50Seconds`.
    #[napi(ts_type = "number | null")]
    pub p99_seconds: OrNull<f64>,
}

impl From<&piecestore::profile::OpMetrics> for OpMetrics {
    fn from(m: &piecestore::profile::OpMetrics) -> Self {
        OpMetrics {
            backend: m.backend.to_string(),
            shard: m.shard as u32,
            op: m.op.as_str().to_string(),
            count: m.count as i64,
            bytes: m.bytes as i64,
            errors: m
                .errors
                .iter()
                .map(|(k, n)| (k.as_str().to_string(), *n as i64))
                .collect(),
            latency_sum_seconds: m.latency.sum.as_secs_f64(),
            p50_seconds: OrNull(m.latency.quantile_secs(0.5)),
            p99_seconds: OrNull(m.latency.quantile_secs(0.99)),
        }
    }
}

/// A JavaScript option value as the core takes it (`undefined`/`null`: not set).
fn option_value(name: &str, v: Unknown<'_>) -> Result<Option<OptionValue>> {
    Ok(Some(match v.get_type()? {
        ValueType::Undefined | ValueType::Null => return Ok(None),
        ValueType::Boolean => OptionValue::Bool(unsafe { v.cast::<bool>() }?),
        ValueType::Number => number(unsafe { v.cast::<f64>() }?),
        ValueType::String => OptionValue::Str(unsafe { v.cast::<String>() }?),
        other => {
            return Err(Error::new(
                Status::InvalidArg,
                format!("option {name}: expected a boolean, number or string, got {other}"),
            ));
        }
    }))
}

/// A JavaScript number: an integer when it is one.
fn number(n: f64) -> OptionValue {
    if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
        OptionValue::Int(n as i64)
    } else {
        OptionValue::Float(n)
    }
}

fn options(options: Option<Object<'_>>) -> Result<Vec<(String, OptionValue)>> {
    let mut out = Vec::new();
    if let Some(obj) = options {
        for name in Object::keys(&obj)? {
            let v: Unknown<'_> = obj.get_named_property_unchecked(&name)?;
            if let Some(v) = option_value(&name, v)? {
                out.push((name, v));
            }
        }
    }
    Ok(out)
}

/// A JavaScript value laid out like `config.toml` as a TOML value (`None` for
/// `undefined`/`null`, which TOML cannot hold: the key is left out).
fn toml_value(v: Unknown<'_>) -> Result<Option<toml::Value>> {
    Ok(Some(match v.get_type()? {
        ValueType::Undefined | ValueType::Null => return Ok(None),
        ValueType::Boolean => toml::Value::Boolean(unsafe { v.cast::<bool>() }?),
        ValueType::Number => match number(unsafe { v.cast::<f64>() }?) {
            OptionValue::Int(i) => toml::Value::Integer(i),
            OptionValue::Float(f) => toml::Value::Float(f),
            _ => unreachable!("number() gives Int or Float"),
        },
        ValueType::String => toml::Value::String(unsafe { v.cast::<String>() }?),
        ValueType::Object if v.is_array()? => {
            let arr: Array<'_> = unsafe { v.cast() }?;
            let mut out = Vec::new();
            for i in 0..arr.len() {
                let item: Option<Unknown<'_>> = arr.get(i)?;
                if let Some(item) = item.map(toml_value).transpose()?.flatten() {
                    out.push(item);
                }
            }
            toml::Value::Array(out)
        }
        ValueType::Object => {
            let obj: Object<'_> = unsafe { v.cast() }?;
            let mut t = toml::Table::new();
            for k in Object::keys(&obj)? {
                let item: Unknown<'_> = obj.get_named_property_unchecked(&k)?;
                if let Some(item) = toml_value(item)? {
                    t.insert(k, item);
                }
            }
            toml::Value::Table(t)
        }
        other => {
            return Err(Error::new(
                Status::InvalidArg,
                format!(
                    "config values must be objects, arrays, strings, numbers or booleans, not {other}"
                ),
            ));
        }
    }))
}

/// The config a constructor argument names, with options and the environment applied.
fn config(
    env: &Env,
    store: Either<String, Object<'_>>,
    opts: Option<Object<'_>>,
) -> Result<Config> {
    let base = match store {
        Either::A(spec) => Config::from_spec(&spec),
        Either::B(obj) => match toml_value(obj.to_unknown())? {
            Some(toml::Value::Table(t)) => Config::from_table(t),
            _ => unreachable!("an object converts to a table"),
        },
    };
    finish(env, base, opts)
}

fn finish(env: &Env, base: piecestore::Result<Config>, opts: Option<Object<'_>>) -> Result<Config> {
    let opts = options(opts)?;
    base.and_then(|c| c.with_options_and_env(opts.iter().map(|(k, v)| (k.as_str(), v.clone()))))
        .map_err(|e| to_napi(env, &e))
}

/// Builds the store without network I/O (the bucket check runs on first use).
fn build(env: &Env, config: Config) -> Result<PieceStore> {
    let _rt = piecestore::runtime::handle().enter();
    let inner = piecestore::PieceStore::open_lazy(config).map_err(|e| to_napi(env, &e))?;
    Ok(PieceStore { inner })
}

/// The first error of a batch, else every value.
fn all<T>(results: Vec<piecestore::Result<T>>) -> piecestore::Result<Vec<T>> {
    results.into_iter().collect()
}

/// A rejected promise with a JavaScript error of `code` (for arguments the core never sees).
fn reject<'env, T: ToNapiValue>(
    env: &'env Env,
    code: &str,
    message: String,
    key: &str,
) -> Result<PromiseRaw<'env, T>> {
    PromiseRaw::reject(
        env,
        coded_error(env, code, message, Some(key), None, false)?,
    )
}

/// A range bound given as a JavaScript number, if it is a non-negative integer.
fn range_bound(n: f64) -> Option<u64> {
    (n.is_finite() && n >= 0.0 && n.fract() == 0.0 && n < 9.007_199_254_740_992e15)
        .then_some(n as u64)
}

/// A store of immutable pieces on memory, a local directory, or S3-compatible object storage.
///
/// Every method that touches pieces returns a Promise and never blocks the event loop. Errors
/// are `Error` objects with a stable `code` (`PIECE_NOT_FOUND`, `PIECE_EXISTS`, `INVALID_KEY`,
/// `INVALID_RANGE`, `CORRUPT_PIECE`, `CONFIG`, `UNAUTHORIZED`, `BACKEND`, `CLOSED`), plus `key`,
/// `backend` and `retryable`; messages name the key and the backend, never a secret.
#[napi]
pub struct PieceStore {
    inner: piecestore::PieceStore,
}

#[napi]
impl PieceStore {
    /// Opens the store at `store`: a URL (`memory://`, `file:///path`, `s3://bucket`,
    /// `http://127.0.0.1:9000/bucket-%d`), a path (a directory, or a `.toml` config file), or an
    /// object laid out like `config.toml`'s `[PieceStore]` table. `options` override it
    /// (`{ shards: 4, region: "us-east-1", maxRetries: 3, requestTimeout: 2.5 }`); then the
    /// environment applies. Throws a `CONFIG` error for a bad URL or option. No network I/O
    /// happens here: an S3 bucket is checked on first use (see `PieceStore.open`).
    #[napi(constructor)]
    pub fn new(
        env: &Env,
        #[napi(ts_arg_type = "string | Record<string, unknown>")] store: Either<String, Object<'_>>,
        #[napi(ts_arg_type = "StoreOptions")] options: Option<Object<'_>>,
    ) -> Result<Self> {
        let c = config(env, store, options)?;
        build(env, c)
    }

    /// Opens the store a `config.toml` describes (only its `[PieceStore]` table is read), with
    /// `options` and the environment applied on top.
    #[napi(factory)]
    pub fn from_config(
        env: &Env,
        path: String,
        #[napi(ts_arg_type = "StoreOptions")] options: Option<Object<'_>>,
    ) -> Result<Self> {
        let c = finish(env, Config::from_file(std::path::Path::new(&path)), options)?;
        build(env, c)
    }

    /// Like `new PieceStore(store, options)`, but resolves only once every S3 bucket was
    /// checked: a missing bucket or refused credentials reject here, not on first use.
    #[napi(ts_return_type = "Promise<PieceStore>")]
    pub fn open<'env>(
        env: &'env Env,
        #[napi(ts_arg_type = "string | Record<string, unknown>")] store: Either<String, Object<'_>>,
        #[napi(ts_arg_type = "StoreOptions")] options: Option<Object<'_>>,
    ) -> Result<PromiseRaw<'env, PieceStore>> {
        let store = build(env, config(env, store, options)?)?;
        promise(
            env,
            async move { store.inner.check().await.map(|()| store) },
            false,
        )
    }

    /// Stores a piece (a `Buffer`, any `Uint8Array`, or a string as UTF-8); resolves once it is
    /// durable. The same bytes again succeed; different bytes under an existing key reject with
    /// `PIECE_EXISTS` unless `{ overwrite: true }`. Do not modify the buffer until the promise
    /// settles.
    #[napi(
        ts_args_type = "key: string, data: Buffer | Uint8Array | string, options?: PutOpts",
        ts_return_type = "Promise<void>"
    )]
    pub fn put<'env>(
        &self,
        env: &'env Env,
        key: String,
        data: Data,
        options: Option<PutOpts>,
    ) -> Result<PromiseRaw<'env, ()>> {
        let input = Input::new(env, data)?;
        let inline = matches!(input, Input::Ready(_)) && input.len() <= INLINE_MAX;
        let store = self.inner.clone();
        let opts = PutOpts::core(options);
        promise(
            env,
            async move { store.put_opts(&key, input.into_bytes(), opts).await },
            inline,
        )
    }

    /// Reads a whole piece, verified against its CRC32C (`CORRUPT_PIECE` on a mismatch, never
    /// wrong bytes).
    #[napi(ts_return_type = "Promise<Buffer>")]
    pub fn get<'env>(&self, env: &'env Env, key: String) -> Result<PromiseRaw<'env, PieceBuf>> {
        let inline = self.small_enough(&key);
        let store = self.inner.clone();
        promise(
            env,
            async move { store.get(&key).await.map(PieceBuf::new) },
            inline,
        )
    }

    /// Reads `length` bytes at `offset` (verified: the whole piece is checked first).
    /// `INVALID_RANGE` when the range is not inside the piece.
    #[napi(ts_return_type = "Promise<Buffer>")]
    pub fn get_range<'env>(
        &self,
        env: &'env Env,
        key: String,
        offset: f64,
        length: f64,
    ) -> Result<PromiseRaw<'env, PieceBuf>> {
        let (Some(off), Some(len)) = (range_bound(offset), range_bound(length)) else {
            let msg = format!(
                "invalid range {offset}+{length} for piece {key:?}: offset and length must be non-negative integers"
            );
            return reject(env, "INVALID_RANGE", msg, &key);
        };
        let inline = self.small_enough(&key);
        let store = self.inner.clone();
        promise(
            env,
            async move { store.get_range(&key, off, len).await.map(PieceBuf::new) },
            inline,
        )
    }

    /// A piece's size, checksum and modification time, in one small request.
    #[napi]
    pub fn head<'env>(&self, env: &'env Env, key: String) -> Result<PromiseRaw<'env, PieceInfo>> {
        let store = self.inner.clone();
        promise(
            env,
            async move { store.head(&key).await.map(PieceInfo::from) },
            true,
        )
    }

    /// Whether a piece exists under `key`.
    #[napi]
    pub fn exists<'env>(&self, env: &'env Env, key: String) -> Result<PromiseRaw<'env, bool>> {
        let store = self.inner.clone();
        promise(env, async move { store.exists(&key).await }, true)
    }

    /// Deletes a piece; deleting a missing piece succeeds.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn delete<'env>(&self, env: &'env Env, key: String) -> Result<PromiseRaw<'env, ()>> {
        let store = self.inner.clone();
        promise(env, async move { store.delete(&key).await }, true)
    }

    /// Deletes every piece whose key starts with `prefix`, on every shard. An empty prefix is
    /// refused (`INVALID_KEY`).
    #[napi]
    pub fn delete_prefix<'env>(
        &self,
        env: &'env Env,
        prefix: String,
    ) -> Result<PromiseRaw<'env, DeleteSummary>> {
        let store = self.inner.clone();
        promise(
            env,
            async move {
                let s = store.delete_prefix(&prefix).await?;
                Ok(DeleteSummary {
                    pieces: s.pieces as i64,
                    bytes: s.bytes as i64,
                })
            },
            false,
        )
    }

    /// Stores many pieces concurrently: an array of `[key, data]` pairs, a `Map`, or an object
    /// of key to data. Every piece is attempted; rejects with the first error.
    #[napi(
        ts_args_type = "items: Iterable<[string, Buffer | Uint8Array | string]> | Record<string, Buffer | Uint8Array | string>, options?: PutOpts",
        ts_return_type = "Promise<void>"
    )]
    pub fn put_many<'env>(
        &self,
        env: &'env Env,
        items: Object<'_>,
        options: Option<PutOpts>,
    ) -> Result<PromiseRaw<'env, ()>> {
        let items: Vec<(String, Input)> = pairs(env, items)?
            .into_iter()
            .map(|(k, d)| Ok((k, Input::new(env, d)?)))
            .collect::<Result<_>>()?;
        let store = self.inner.clone();
        let opts = PutOpts::core(options);
        promise(
            env,
            async move {
                let items: Vec<(String, Bytes)> = items
                    .into_iter()
                    .map(|(k, i)| (k, i.into_bytes()))
                    .collect();
                all(store.put_many_opts(items, opts).await).map(|_| ())
            },
            false,
        )
    }

    /// Reads many pieces concurrently; resolves with their `Buffer`s in order, or rejects with
    /// the first error.
    #[napi(ts_return_type = "Promise<Buffer[]>")]
    pub fn get_many<'env>(
        &self,
        env: &'env Env,
        keys: Vec<String>,
    ) -> Result<PromiseRaw<'env, Vec<PieceBuf>>> {
        let store = self.inner.clone();
        promise(
            env,
            async move {
                Ok(all(store.get_many(keys).await)?
                    .into_iter()
                    .map(PieceBuf::new)
                    .collect())
            },
            false,
        )
    }

    /// The pieces whose keys start with `prefix` (all when omitted), on every shard, for
    /// `for await (const info of store.list(prefix))`. Order is not specified across shards.
    #[napi(ts_return_type = "AsyncIterableIterator<PieceInfo>")]
    pub fn list(&self, prefix: Option<String>) -> PieceList {
        PieceList {
            stream: Arc::new(tokio::sync::Mutex::new(
                self.inner.list(prefix.as_deref().unwrap_or("")),
            )),
        }
    }

    /// Closes the store: later calls reject with `CLOSED`. Every put that resolved is already
    /// durable, so there is nothing to flush.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close<'env>(&self, env: &'env Env) -> Result<PromiseRaw<'env, ()>> {
        let store = self.inner.clone();
        promise(
            env,
            async move {
                store.close().await;
                Ok(())
            },
            true,
        )
    }

    /// Whether `close()` was called.
    #[napi(getter)]
    pub fn closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// The number of shards (1 when not sharded).
    #[napi(getter)]
    pub fn shard_count(&self) -> u32 {
        self.inner.shard_count() as u32
    }

    /// Each shard's backend (its URL, without credentials).
    #[napi(getter)]
    pub fn shard_labels(&self) -> Vec<String> {
        self.inner.shard_labels()
    }

    /// How keys map to shards: `"fnv-mod"` (the default, as the original Go piecestore) or `"jump"`.
    #[napi(getter)]
    pub fn placement(&self) -> String {
        self.inner.placement().to_string()
    }

    /// The shard index that holds `key`.
    #[napi]
    pub fn shard_of(&self, key: String) -> u32 {
        self.inner.shard_of(&key) as u32
    }

    /// The store's operation metrics in the Prometheus text exposition format (0.0.4):
    /// `piecestore_operations_total`, `piecestore_operation_errors_total` (by `kind`, the error
    /// code), `piecestore_operation_bytes_total` and the histogram
    /// `piecestore_operation_duration_seconds`, each labelled `backend`, `shard` and `op`.
    /// A snapshot of in-memory counters (no I/O); with `{ metrics: false }` only the HELP and
    /// TYPE lines remain.
    #[napi]
    pub fn metrics(&self) -> String {
        self.inner.metrics().to_prometheus()
    }

    /// The same metrics as one object per (shard, operation); empty with `{ metrics: false }`.
    #[napi]
    pub fn metrics_summary(&self) -> Vec<OpMetrics> {
        self.inner
            .metrics()
            .ops
            .iter()
            .map(OpMetrics::from)
            .collect()
    }
}

impl PieceStore {
    /// Whether a read of `key` may run its first step on the calling thread: always, except on a
    /// memory store (which answers at once) for a piece over [`INLINE_MAX`], whose checksum and
    /// copy would hold up the event loop.
    fn small_enough(&self, key: &str) -> bool {
        // Errors (not found, bad key) are cheap to report at once.
        self.inner
            .resident_size(key)
            .is_none_or(|size| size as usize <= INLINE_MAX)
    }
}

/// The `[key, data]` pairs of `putMany`'s argument.
fn pairs(env: &Env, items: Object<'_>) -> Result<Vec<(String, Data)>> {
    let global = env.get_global()?;
    let array: Object<'_> = global.get_named_property_unchecked("Array")?;
    let is_array: Function<'_, Unknown<'_>, bool> = array.get_named_property("isArray")?;
    let list = if is_array.call(items.to_unknown())? {
        items
    } else {
        let map: Function<'_, (), Unknown<'_>> = global.get_named_property("Map")?;
        if items.instanceof(map)? {
            let from: Function<'_, Unknown<'_>, Object<'_>> = array.get_named_property("from")?;
            from.call(items.to_unknown())?
        } else {
            let mut out = Vec::new();
            for k in Object::keys(&items)? {
                let d: Data = items.get_named_property(&k)?;
                out.push((k, d));
            }
            return Ok(out);
        }
    };
    let arr: Array<'_> = unsafe { list.to_unknown().cast() }?;
    let mut out = Vec::with_capacity(arr.len() as usize);
    for i in 0..arr.len() {
        let pair: Option<(String, Data)> = arr.get(i)?;
        out.push(pair.ok_or_else(|| {
            Error::new(
                Status::InvalidArg,
                format!("putMany: item {i} is not a [key, data] pair"),
            )
        })?);
    }
    Ok(out)
}

/// The async iterator `PieceStore.list` returns.
#[napi(async_iterator)]
pub struct PieceList {
    stream: Arc<tokio::sync::Mutex<BoxStream<'static, piecestore::Result<PieceMeta>>>>,
}

/// One listed piece, or the error that ended the listing, converted on the JavaScript thread.
pub struct Listed(piecestore::Result<PieceMeta>);

impl TypeName for Listed {
    fn type_name() -> &'static str {
        "PieceInfo"
    }

    fn value_type() -> ValueType {
        ValueType::Object
    }
}

impl ToNapiValue for Listed {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> Result<sys::napi_value> {
        match val.0 {
            Ok(m) => unsafe { PieceInfo::to_napi_value(env, PieceInfo::from(m)) },
            // Failing the conversion rejects the iterator's promise with this very error object
            // (napi rethrows the referenced value), so a listing error keeps its `code`.
            Err(e) => Err(to_napi(&Env::from_raw(env), &e)),
        }
    }
}

impl AsyncGenerator for PieceList {
    type Yield = Listed;
    type Next = ();
    type Return = ();

    fn next(
        &mut self,
        _value: Option<Self::Next>,
    ) -> impl Future<Output = Result<Option<Self::Yield>>> + Send + 'static {
        let stream = Arc::clone(&self.stream);
        async move { Ok(stream.lock().await.next().await.map(Listed)) }
    }
}
