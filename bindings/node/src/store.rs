//! `PieceStore`: the core's `PieceStore` with Promise-returning methods.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use napi::bindgen_prelude::*;
use napi_derive::napi;
use piecestore::config::{OptionKind, OptionValue};
use piecestore::{Config, PieceMeta, PutOptions};

use crate::OrNull;
use crate::args::{self, Args};
use crate::buffer::{Data, Input, PieceBuf};
use crate::errors::{coded_error, to_napi};
use crate::promise::promise;

/// Puts up to this size run their first step on the calling thread (see [`promise`]):
/// checksumming 1 MiB takes about 20 µs. (Gets always do: the core hands a larger piece's
/// checksum to its runtime.)
const INLINE_MAX: usize = 1024 * 1024;

/// Options of a store, overriding its URL or config (then the environment applies, as
/// everywhere in PieceStore). Names may also be given as in `config.toml` (`MaxRetries`) or in
/// snake case; an unknown name or a bad value is a `CONFIG` error, a value of the wrong type
/// a `TypeError`. `undefined` and `null` leave an option unset. Durations are seconds (`2.5`)
/// or strings (`"1500ms"`); sizes are bytes or strings (`"512KiB"`).
#[napi(object, object_from_js = false, object_to_js = false)]
pub struct StoreOptions {
    /// Number of shards (buckets); the URL must hold `%d`.
    pub shards: Option<u32>,
    /// How keys map to shards: `"fnv-mod"` (default) or `"jump"` (jump consistent hash).
    #[napi(ts_type = "'fnv-mod' | 'jump'")]
    pub placement: Option<String>,
    /// Storage kind: `"s3"`, `"minio"`, `"oss"`, `"b2"`, `"file"`, `"memory"` or `"grpc"` (normally implied by the URL).
    #[napi(ts_type = "'s3' | 'minio' | 'oss' | 'b2' | 'file' | 'memory' | 'grpc'")]
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
    #[napi(ts_type = "'AKSK' | 'SA'")]
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
    /// Deadline of one whole read (get, head, exists), retries included (default 0: none).
    #[napi(ts_type = "number | string")]
    pub get_timeout: Option<String>,
    /// Deadline of one whole put, retries included (default 0: none). A timed-out put may
    /// still have stored its bytes; putting the same bytes again succeeds.
    #[napi(ts_type = "number | string")]
    pub put_timeout: Option<String>,
    /// Deadline of one whole delete, retries included (default 0: none).
    #[napi(ts_type = "number | string")]
    pub delete_timeout: Option<String>,
    /// Longest wait for the next page of a listing, retries included (default 0: none).
    #[napi(ts_type = "number | string")]
    pub list_timeout: Option<String>,
    /// Whether create-only writes use the backend's conditional put (`If-None-Match: *`):
    /// `"auto"` (the default: probe the backend on the first write, and check with a HEAD
    /// before each write where it ignores them), `"on"` (always) or `"off"` (always HEAD
    /// first). `true` and `false` mean `"on"` and `"off"`.
    #[napi(ts_type = "'auto' | 'on' | 'off' | boolean")]
    pub conditional_writes: Option<String>,
    /// fsync local files before a put returns (default true).
    pub fsync: Option<bool>,
    /// Check each bucket exists (on first use) and accepts the credentials (default true).
    pub check_bucket: Option<bool>,
    /// Sign S3 requests without hashing their bodies (SigV4 `UNSIGNED-PAYLOAD`; default false).
    pub unsigned_payload: Option<bool>,
    /// Create a missing bucket when the check finds none (default: true for a config in the
    /// original's layout; otherwise false, and a missing bucket is a `BUCKET_NOT_FOUND` error).
    pub create_bucket: Option<bool>,
    /// Keep operation metrics (`store.metrics()`; default true).
    pub metrics: Option<bool>,
    /// Return pieces that carry no checksum (written by another program) instead of failing
    /// with `CORRUPT_PIECE` (default: true in the original's layout, else false).
    pub allow_unverified: Option<bool>,
    /// Whose layout the pieces are kept in: `"piecestore"` (PieceStore's own) or `"original"`
    /// (byte for byte the original Go piecestore's; the default for a config in its layout).
    #[napi(ts_type = "'piecestore' | 'original'")]
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
    /// The data cache's memory tier in bytes (or `"512MiB"`); `0` turns it off (default:
    /// 256 MiB in front of buckets, off for directories and `memory://`).
    #[napi(ts_type = "number | string")]
    pub cache_memory: Option<String>,
    /// The data cache's disk tier: a directory that survives restarts (default: none).
    pub cache_disk: Option<String>,
    /// The disk tier's size (default 10 GiB).
    #[napi(ts_type = "number | string")]
    pub cache_disk_size: Option<String>,
    /// What the cache takes in: `"reads"` (default) or `"reads-and-writes"`.
    #[napi(ts_type = "'reads' | 'reads-and-writes'")]
    pub cache_admit: Option<String>,
    /// Pieces larger than this are not cached (default 4 MiB).
    #[napi(ts_type = "number | string")]
    pub cache_max_piece: Option<String>,
}

/// Options of a put.
#[napi(object, object_from_js = false, object_to_js = false)]
pub struct PutOpts {
    /// Replace an existing piece with different bytes instead of failing with `PIECE_EXISTS`.
    pub overwrite: Option<bool>,
}

impl PutOpts {
    /// The core's options from a put's `options` argument (`undefined`/`null`: the defaults).
    fn core(a: Args<'_>, opts: Option<Unknown<'_>>) -> Result<PutOptions> {
        let overwrite =
            match a.opt_object(opts, "options", "an object such as { overwrite: true }")? {
                Some(o) => a.opt_bool(o.get("overwrite")?, "options.overwrite")?,
                None => None,
            };
        Ok(PutOptions {
            overwrite: overwrite.unwrap_or(false),
        })
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
pub struct Timestamp(pub(crate) f64);

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
    /// The median latency's histogram bucket, in seconds: not the median itself but the upper
    /// bound of the bucket holding it, the same `le` bound `metrics()` shows. Buckets are
    /// powers of two from 1 µs, so the median is above half this value and at most this value.
    /// `null` without samples; `Infinity` when it is past the last bound (~67 s).
    #[napi(ts_type = "number | null")]
    pub p50_seconds: OrNull<f64>,
    /// The 99th percentile latency's histogram bucket, in seconds: the upper bound of the
    /// bucket holding it, as for `p50Seconds` (the percentile is above half this value and at
    /// most this value).
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

/// The JavaScript types an option takes: what its `StoreOptions` field declares. Values of
/// the right type go to the core, which checks them (a `CONFIG` error); others are a
/// `TypeError` here.
#[derive(Clone, Copy)]
enum Kind {
    /// `boolean`.
    Bool,
    /// `number` (counts, ratios).
    Number,
    /// `string` (names, URLs, keys).
    Text,
    /// `number | string`: seconds, or a duration such as `"1500ms"`.
    Duration,
    /// `number | string`: bytes, or a size such as `"512KiB"`.
    Size,
    /// `'auto' | 'on' | 'off' | boolean` (`true`: `"on"`, `false`: `"off"`).
    ConditionalWrites,
    /// An option the core does not know (it names it in a `CONFIG` error): anything, for it
    /// to judge.
    Any,
}

impl Kind {
    /// The kind of option `name`, in any spelling the core accepts (`maxRetries`,
    /// `max_retries`, `MaxRetries`): the core's [`OptionKind`] as JavaScript types.
    fn of(name: &str) -> Kind {
        match piecestore::config::option_kind(name) {
            Some(OptionKind::Bool) => Kind::Bool,
            Some(OptionKind::Number) => Kind::Number,
            Some(OptionKind::Text | OptionKind::Choice) => Kind::Text,
            Some(OptionKind::Duration) => Kind::Duration,
            Some(OptionKind::Size) => Kind::Size,
            Some(OptionKind::ConditionalWrites) => Kind::ConditionalWrites,
            // Unknown (the core names it in a CONFIG error), or a kind newer than this table.
            _ => Kind::Any,
        }
    }

    /// What the option accepts, as an error message says it.
    fn expected(self) -> &'static str {
        match self {
            Kind::Bool => "a boolean",
            Kind::Number => "a number",
            Kind::Text => "a string",
            Kind::Duration => "a number of seconds or a duration string such as \"1500ms\"",
            Kind::Size => "a number of bytes or a size string such as \"512KiB\"",
            Kind::ConditionalWrites => "a boolean or one of the strings \"auto\", \"on\", \"off\"",
            Kind::Any => "a boolean, number or string",
        }
    }
}

/// A JavaScript option value as the core takes it (`undefined`/`null`: not set).
fn option_value(a: Args<'_>, name: &str, v: Unknown<'_>) -> Result<Option<OptionValue>> {
    let kind = Kind::of(name);
    let ty = v.get_type()?;
    // SAFETY (every cast): `ty` is the value's type.
    let value = match (kind, ty) {
        (_, ValueType::Undefined | ValueType::Null) => return Ok(None),
        // (The core reads `conditionalWrites: true` as "on".)
        (Kind::Bool | Kind::ConditionalWrites | Kind::Any, ValueType::Boolean) => {
            OptionValue::Bool(unsafe { v.cast() }?)
        }
        (Kind::Number | Kind::Duration | Kind::Size | Kind::Any, ValueType::Number) => {
            number(unsafe { v.cast() }?)
        }
        (
            Kind::Text | Kind::Duration | Kind::Size | Kind::ConditionalWrites | Kind::Any,
            ValueType::String,
        ) => OptionValue::Str(unsafe { v.cast() }?),
        _ => {
            return Err(a.type_error(format_args!("option {name}"), kind.expected(), &v));
        }
    };
    Ok(Some(value))
}

/// A JavaScript number: an integer when it is one.
fn number(n: f64) -> OptionValue {
    if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
        OptionValue::Int(n as i64)
    } else {
        OptionValue::Float(n)
    }
}

/// The options a `StoreOptions` argument sets (`undefined`/`null`: none).
fn options(a: Args<'_>, options: Option<Unknown<'_>>) -> Result<Vec<(String, OptionValue)>> {
    let mut out = Vec::new();
    if let Some(obj) = a.opt_object(options, "options", "an object (StoreOptions)")? {
        for name in Object::keys(&obj)? {
            let v: Unknown<'_> = obj.get_named_property_unchecked(&name)?;
            if let Some(v) = option_value(a, &name, v)? {
                out.push((name, v));
            }
        }
    }
    Ok(out)
}

/// What a value in a config object may be, as error messages say it.
const CONFIG_VALUE: &str = "an object, array, string, number or boolean";

/// A JavaScript value laid out like `config.toml` as a TOML value (`None` for
/// `undefined`/`null`, which TOML cannot hold: the key is left out). `path` names the value in
/// errors (`store.Backend.Metrics`).
fn toml_value(a: Args<'_>, v: Unknown<'_>, path: &str) -> Result<Option<toml::Value>> {
    // SAFETY (every cast): the value's type was checked.
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
                let item = args::item(&arr, i)?;
                if let Some(item) = toml_value(a, item, &format!("{path}[{i}]"))? {
                    out.push(item);
                }
            }
            toml::Value::Array(out)
        }
        ValueType::Object => toml::Value::Table(toml_table(a, unsafe { v.cast() }?, path)?),
        _ => return Err(a.type_error(path, CONFIG_VALUE, &v)),
    }))
}

/// A JavaScript object laid out like `config.toml` as a TOML table.
fn toml_table(a: Args<'_>, obj: Object<'_>, path: &str) -> Result<toml::Table> {
    let mut t = toml::Table::new();
    for k in Object::keys(&obj)? {
        let item: Unknown<'_> = obj.get_named_property_unchecked(&k)?;
        if let Some(item) = toml_value(a, item, &format!("{path}.{k}"))? {
            t.insert(k, item);
        }
    }
    Ok(t)
}

/// What a constructor's `store` argument accepts, as error messages say it.
const STORE: &str = "a URL or path string, or an object laid out like config.toml";

/// The config a constructor argument names, with options and the environment applied.
fn config(a: Args<'_>, store: Unknown<'_>, opts: Option<Unknown<'_>>) -> Result<Config> {
    let base = match store.get_type()? {
        // SAFETY: the value is a string.
        ValueType::String => Config::from_spec(&unsafe { store.cast::<String>() }?),
        _ => Config::from_table(toml_table(a, a.object(store, "store", STORE)?, "store")?),
    };
    finish(a, base, opts)
}

/// `base` with the options of a `StoreOptions` argument and the environment applied.
fn finish(
    a: Args<'_>,
    base: piecestore::Result<Config>,
    opts: Option<Unknown<'_>>,
) -> Result<Config> {
    let opts = options(a, opts)?;
    base.and_then(|c| c.with_options_and_env(opts.iter().map(|(k, v)| (k.as_str(), v.clone()))))
        .map_err(|e| to_napi(a.env(), &e))
}

/// Builds the store without network I/O (the bucket check runs on first use).
fn build(env: &Env, config: Config) -> Result<PieceStore> {
    let _rt = piecestore::runtime::handle().enter();
    let inner = piecestore::PieceStore::open_lazy(config).map_err(|e| to_napi(env, &e))?;
    Ok(PieceStore { inner })
}

/// `get(key)` on `store`: the prototype's method and each object's own (see [`crate::fast`]).
pub(crate) fn get_piece<'env>(
    env: &'env Env,
    store: &piecestore::PieceStore,
    key: Unknown<'_>,
) -> Result<PromiseRaw<'env, PieceBuf>> {
    let key = Args::new(env, "get").string(key, "key")?;
    let store = store.clone();
    // At once on this thread: the core hands a large piece's checksum to its runtime.
    promise(
        env,
        async move { store.get(&key).await.map(PieceBuf::new) },
        true,
    )
}

/// `put(key, data, options)` on `store`: the prototype's method and each object's own.
pub(crate) fn put_piece<'env>(
    env: &'env Env,
    store: &piecestore::PieceStore,
    key: Unknown<'_>,
    data: Unknown<'_>,
    options: Option<Unknown<'_>>,
) -> Result<PromiseRaw<'env, ()>> {
    let a = Args::new(env, "put");
    let key = a.string(key, "key")?;
    let input = Input::new(env, a.data(data, "data")?)?;
    let opts = PutOpts::core(a, options)?;
    let inline = matches!(input, Input::Ready(_)) && input.len() <= INLINE_MAX;
    let store = store.clone();
    promise(
        env,
        async move { store.put_opts(&key, input.into_bytes(), opts).await },
        inline,
    )
}

/// `store` as a new JavaScript `PieceStore` object, with its own `get` and `put` (see
/// [`crate::fast`]).
fn instance(env: &Env, store: PieceStore) -> Result<ClassInstance<'_, PieceStore>> {
    let handle = store.inner.clone();
    let obj = store.into_instance(env)?;
    crate::fast::install(env, obj.raw(), &handle)?;
    Ok(obj)
}

/// A `PieceStore` a promise resolves with: made into its object as [`instance`] does.
pub struct Opened(PieceStore);

impl ToNapiValue for Opened {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> Result<sys::napi_value> {
        instance(&Env::from_raw(env), val.0).map(|obj| obj.raw())
    }
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
/// `INVALID_RANGE`, `CORRUPT_PIECE`, `CONFIG`, `UNAUTHORIZED`, `BACKEND`, `CLOSED`,
/// `BUCKET_NOT_FOUND`), plus `key`, `backend` and `retryable`; messages name the key and the
/// backend, never a secret. An argument of the wrong type throws a `TypeError` at once (code
/// `ERR_INVALID_ARG_TYPE`) whose message names the call, the argument and what it accepts:
/// `put: key must be a string, got number`.
#[napi]
pub struct PieceStore {
    pub(crate) inner: piecestore::PieceStore,
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
        this: This<'_>,
        #[napi(ts_arg_type = "string | Record<string, unknown>")] store: Unknown<'_>,
        #[napi(ts_arg_type = "StoreOptions")] options: Option<Unknown<'_>>,
    ) -> Result<Self> {
        let c = config(Args::new(env, "PieceStore"), store, options)?;
        let store = build(env, c)?;
        crate::fast::install(env, this.object.raw(), &store.inner)?;
        Ok(store)
    }

    /// Opens the store a `config.toml` describes (only its `[PieceStore]` table is read), with
    /// `options` and the environment applied on top.
    #[napi(ts_return_type = "PieceStore")]
    pub fn from_config<'env>(
        env: &'env Env,
        #[napi(ts_arg_type = "string")] path: Unknown<'_>,
        #[napi(ts_arg_type = "StoreOptions")] options: Option<Unknown<'_>>,
    ) -> Result<ClassInstance<'env, PieceStore>> {
        let a = Args::new(env, "PieceStore.fromConfig");
        let path = a.string(path, "path")?;
        let c = finish(a, Config::from_file(std::path::Path::new(&path)), options)?;
        instance(env, build(env, c)?)
    }

    /// Like `new PieceStore(store, options)`, but resolves only once every S3 bucket was
    /// checked: a missing bucket or refused credentials reject here, not on first use.
    #[napi(ts_return_type = "Promise<PieceStore>")]
    pub fn open<'env>(
        env: &'env Env,
        #[napi(ts_arg_type = "string | Record<string, unknown>")] store: Unknown<'_>,
        #[napi(ts_arg_type = "StoreOptions")] options: Option<Unknown<'_>>,
    ) -> Result<PromiseRaw<'env, Opened>> {
        let store = build(
            env,
            config(Args::new(env, "PieceStore.open"), store, options)?,
        )?;
        promise(
            env,
            async move { store.inner.check().await.map(|()| Opened(store)) },
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
        key: Unknown<'_>,
        data: Unknown<'_>,
        options: Option<Unknown<'_>>,
    ) -> Result<PromiseRaw<'env, ()>> {
        put_piece(env, &self.inner, key, data, options)
    }

    /// Reads a whole piece, verified against its CRC32C (`CORRUPT_PIECE` on a mismatch, never
    /// wrong bytes). A piece of up to 4 KiB comes as a slice of a shared 32 KiB `ArrayBuffer`
    /// (as `Buffer.allocUnsafe`'s pool), a larger one as a `Buffer` of its own.
    #[napi(ts_return_type = "Promise<Buffer>")]
    pub fn get<'env>(
        &self,
        env: &'env Env,
        #[napi(ts_arg_type = "string")] key: Unknown<'_>,
    ) -> Result<PromiseRaw<'env, PieceBuf>> {
        get_piece(env, &self.inner, key)
    }

    /// Reads `length` bytes at `offset` (verified: the whole piece is checked first).
    /// `INVALID_RANGE` when the range is not inside the piece, or `offset` or `length` is not a
    /// non-negative integer.
    #[napi(ts_return_type = "Promise<Buffer>")]
    pub fn get_range<'env>(
        &self,
        env: &'env Env,
        #[napi(ts_arg_type = "string")] key: Unknown<'_>,
        #[napi(ts_arg_type = "number")] offset: Unknown<'_>,
        #[napi(ts_arg_type = "number")] length: Unknown<'_>,
    ) -> Result<PromiseRaw<'env, PieceBuf>> {
        let a = Args::new(env, "getRange");
        let key = a.string(key, "key")?;
        let offset = a.number(offset, "offset")?;
        let length = a.number(length, "length")?;
        let (Some(off), Some(len)) = (range_bound(offset), range_bound(length)) else {
            let msg = format!(
                "invalid range {offset}+{length} for piece {key:?}: offset and length must be non-negative integers"
            );
            return reject(env, "INVALID_RANGE", msg, &key);
        };
        let store = self.inner.clone();
        promise(
            env,
            async move { store.get_range(&key, off, len).await.map(PieceBuf::new) },
            true,
        )
    }

    /// A piece's size, checksum and modification time, in one small request.
    #[napi]
    pub fn head<'env>(
        &self,
        env: &'env Env,
        #[napi(ts_arg_type = "string")] key: Unknown<'_>,
    ) -> Result<PromiseRaw<'env, PieceInfo>> {
        let key = Args::new(env, "head").string(key, "key")?;
        let store = self.inner.clone();
        promise(
            env,
            async move { store.head(&key).await.map(PieceInfo::from) },
            true,
        )
    }

    /// Whether a piece exists under `key`.
    #[napi]
    pub fn exists<'env>(
        &self,
        env: &'env Env,
        #[napi(ts_arg_type = "string")] key: Unknown<'_>,
    ) -> Result<PromiseRaw<'env, bool>> {
        let key = Args::new(env, "exists").string(key, "key")?;
        let store = self.inner.clone();
        promise(env, async move { store.exists(&key).await }, true)
    }

    /// Deletes a piece; deleting a missing piece succeeds.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn delete<'env>(
        &self,
        env: &'env Env,
        #[napi(ts_arg_type = "string")] key: Unknown<'_>,
    ) -> Result<PromiseRaw<'env, ()>> {
        let key = Args::new(env, "delete").string(key, "key")?;
        let store = self.inner.clone();
        promise(env, async move { store.delete(&key).await }, true)
    }

    /// Deletes every piece whose key starts with `prefix`, on every shard. An empty prefix is
    /// refused (`INVALID_KEY`).
    #[napi]
    pub fn delete_prefix<'env>(
        &self,
        env: &'env Env,
        #[napi(ts_arg_type = "string")] prefix: Unknown<'_>,
    ) -> Result<PromiseRaw<'env, DeleteSummary>> {
        let prefix = Args::new(env, "deletePrefix").string(prefix, "prefix")?;
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

    /// Stores many pieces concurrently: an array (or any iterable, such as a `Map`) of
    /// `[key, data]` pairs, or an object of key to data. Every piece is attempted; rejects with
    /// the first error.
    #[napi(
        ts_args_type = "items: Iterable<[string, Buffer | Uint8Array | string]> | Record<string, Buffer | Uint8Array | string>, options?: PutOpts",
        ts_return_type = "Promise<void>"
    )]
    pub fn put_many<'env>(
        &self,
        env: &'env Env,
        items: Unknown<'_>,
        options: Option<Unknown<'_>>,
    ) -> Result<PromiseRaw<'env, ()>> {
        let a = Args::new(env, "putMany");
        let items: Vec<(String, Input)> = pairs(a, items)?
            .into_iter()
            .map(|(k, d)| Ok((k, Input::new(env, d)?)))
            .collect::<Result<_>>()?;
        let opts = PutOpts::core(a, options)?;
        let store = self.inner.clone();
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
        #[napi(ts_arg_type = "Array<string>")] keys: Unknown<'_>,
    ) -> Result<PromiseRaw<'env, Vec<PieceBuf>>> {
        let keys = Args::new(env, "getMany").strings(keys, "keys")?;
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

    /// Reads a piece as a stream, for a caller that passes a large piece on: resolves with a
    /// `PieceReader` once the piece's `info` is known, whose bytes then come in chunks of about
    /// 1 MiB (`for await (const chunk of reader)`), never all in memory. Verified as `get` is:
    /// the last chunk comes only once the piece has matched its length and CRC32C, else the
    /// iteration rejects with `CORRUPT_PIECE` in its place.
    #[napi(ts_return_type = "Promise<PieceReader>")]
    pub fn get_stream<'env>(
        &self,
        env: &'env Env,
        #[napi(ts_arg_type = "string")] key: Unknown<'_>,
    ) -> Result<PromiseRaw<'env, PieceReader>> {
        let key = Args::new(env, "getStream").string(key, "key")?;
        let store = self.inner.clone();
        promise(
            env,
            async move {
                let piece = store.get_stream(&key).await?;
                Ok(PieceReader {
                    meta: piece.meta,
                    chunks: Arc::new(tokio::sync::Mutex::new(piece.chunks)),
                })
            },
            false,
        )
    }

    /// The pieces whose keys start with `prefix` (all when omitted), on every shard, for
    /// `for await (const info of store.list(prefix))`. Order is not specified across shards.
    #[napi(ts_return_type = "AsyncIterableIterator<PieceInfo>")]
    pub fn list(
        &self,
        env: &Env,
        #[napi(ts_arg_type = "string | undefined | null")] prefix: Option<Unknown<'_>>,
    ) -> Result<PieceList> {
        let prefix = Args::new(env, "list").opt_string(prefix, "prefix")?;
        Ok(PieceList {
            stream: Arc::new(tokio::sync::Mutex::new(
                self.inner.list(prefix.as_deref().unwrap_or("")),
            )),
        })
    }

    /// Closes the store: later calls reject with `CLOSED`. Every put that resolved is already
    /// durable, so there is nothing to flush. A `memory://` store's pieces are freed at once,
    /// not when this object is garbage-collected.
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

    /// Whether and how small pieces are packed, in words: `"off (one object per piece)"`, or
    /// the threshold, pack size, gc settings and where the index is kept.
    #[napi(getter)]
    pub fn packing(&self) -> String {
        self.inner.packing()
    }

    /// A one-line description, as `console.log` and string conversion show the store: its
    /// first shard, shard count, placement and packing.
    #[napi(js_name = "toString")]
    pub fn to_js_string(&self) -> String {
        let labels = self.inner.shard_labels();
        format!(
            "PieceStore({}, shards={}, placement={}, packing={:?}{})",
            labels.first().map(String::as_str).unwrap_or(""),
            labels.len(),
            self.inner.placement(),
            self.inner.packing(),
            if self.inner.is_closed() {
                ", closed"
            } else {
                ""
            }
        )
    }

    /// The shard index that holds `key`.
    #[napi]
    pub fn shard_of(
        &self,
        env: &Env,
        #[napi(ts_arg_type = "string")] key: Unknown<'_>,
    ) -> Result<u32> {
        let key = Args::new(env, "shardOf").string(key, "key")?;
        Ok(self.inner.shard_of(&key) as u32)
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
    /// Its latency percentiles are histogram bucket bounds, not interpolated values (see
    /// `OpMetrics.p50Seconds`).
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

/// What `putMany`'s `items` accepts, as error messages say it.
const ITEMS: &str = "an array or iterable of [key, data] pairs, or an object of key to data";

/// The `[key, data]` pairs of `putMany`'s argument.
fn pairs<'v>(a: Args<'_>, items: Unknown<'v>) -> Result<Vec<(String, Data)>> {
    if items.get_type()? != ValueType::Object {
        return Err(a.type_error("items", ITEMS, &items));
    }
    let list = if items.is_array()? {
        items
    } else {
        // SAFETY: the value is an object.
        let obj: Object<'v> = unsafe { items.cast() }?;
        let global = a.env().get_global()?;
        let symbol: Object<'_> = global.get_named_property_unchecked("Symbol")?;
        let iterator: Unknown<'_> = symbol.get_named_property_unchecked("iterator")?;
        if !obj.has_property_js(iterator)? {
            let mut out = Vec::new();
            for k in Object::keys(&obj)? {
                let d: Unknown<'_> = obj.get_named_property_unchecked(&k)?;
                out.push((k.clone(), a.data(d, format_args!("items[{k:?}]"))?));
            }
            return Ok(out);
        }
        // An iterable (a `Map`, a generator): its pairs, as `Array.from` lists them.
        let array: Object<'_> = global.get_named_property_unchecked("Array")?;
        let from: Function<'_, Unknown<'_>, Unknown<'_>> = array.get_named_property("from")?;
        from.apply(array, items)?
    };
    let arr = a.array(list, "items", ITEMS)?;
    let mut out = Vec::with_capacity(arr.len() as usize);
    for i in 0..arr.len() {
        let pair = a.array(
            args::item(&arr, i)?,
            format_args!("items[{i}]"),
            "a [key, data] pair",
        )?;
        let key = a.string(args::item(&pair, 0)?, format_args!("the key of items[{i}]"))?;
        let data = a.data(
            args::item(&pair, 1)?,
            format_args!("the data of items[{i}]"),
        )?;
        out.push((key, data));
    }
    Ok(out)
}

/// A piece being read as a stream (`PieceStore.getStream`): its `info`, and its bytes as an
/// async iterator of `Buffer` chunks.
#[napi(async_iterator)]
pub struct PieceReader {
    meta: PieceMeta,
    chunks: Arc<tokio::sync::Mutex<BoxStream<'static, piecestore::Result<Bytes>>>>,
}

#[napi]
impl PieceReader {
    /// The piece's key, size and checksum, known before its first byte.
    #[napi(getter)]
    pub fn info(&self) -> PieceInfo {
        PieceInfo::from(self.meta.clone())
    }
}

/// One chunk of a streamed piece, or the error that ended the stream.
pub struct Chunk(piecestore::Result<Bytes>);

impl TypeName for Chunk {
    fn type_name() -> &'static str {
        "Buffer"
    }

    fn value_type() -> ValueType {
        ValueType::Object
    }
}

impl ToNapiValue for Chunk {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> Result<sys::napi_value> {
        match val.0 {
            Ok(b) => unsafe { PieceBuf::to_napi_value(env, PieceBuf::new(b)) },
            // As `Listed`: the iterator's promise rejects with this error, its `code` kept.
            Err(e) => Err(to_napi(&Env::from_raw(env), &e)),
        }
    }
}

impl AsyncGenerator for PieceReader {
    type Yield = Chunk;
    type Next = ();
    type Return = ();

    fn next(
        &mut self,
        _value: Option<Self::Next>,
    ) -> impl Future<Output = Result<Option<Self::Yield>>> + Send + 'static {
        let chunks = Arc::clone(&self.chunks);
        async move { Ok(chunks.lock().await.next().await.map(Chunk)) }
    }
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
