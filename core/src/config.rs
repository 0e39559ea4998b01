//! Configuration: a bare URL, a `config.toml` in the original Go piecestore's layout, and
//! environment overrides. See `docs/config.md` for the full reference.
//!
//! ```
//! use piecestore::Config;
//! let c = Config::from_url("memory://").unwrap();
//! assert_eq!(c.shard_stores().unwrap().len(), 1);
//!
//! let c = Config::from_toml(r#"
//!     [PieceStore]
//!     Shards = 4
//!     [PieceStore.Store]
//!     Storage = "minio"
//!     BucketURL = "http://127.0.0.1:9000/pieces-%d"
//! "#).unwrap();
//! let shards = c.shard_stores().unwrap();
//! assert_eq!(shards[3].bucket_url, "http://127.0.0.1:9000/pieces-3");
//! ```

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::error::{Error, Result};
use crate::shard::Placement;

/// The most shards a store may have (the original's limit).
pub const MAX_SHARDS: u32 = 256;

/// A whole PieceStore configuration: the `[PieceStore]` table of a `config.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Number of shards; 0 or 1 = no sharding. With N > 1, `Store.BucketURL` must contain `%d`,
    /// replaced by `0..N`.
    #[serde(rename = "Shards", default)]
    pub shards: u32,
    /// The backend (the original's `[PieceStore.Store]`).
    #[serde(rename = "Store", default)]
    pub store: StoreConfig,
    /// Explicit per-shard stores (`[[PieceStore.ShardStores]]`), for shards in different regions
    /// or on different providers. When given, these are the shards and `Store` is not used.
    #[serde(rename = "ShardStores", default)]
    pub shard_stores: Vec<StoreConfig>,
    /// PieceStore's own sharding settings (`[PieceStore.Sharding]`).
    #[serde(rename = "Sharding", default)]
    pub sharding: ShardingConfig,
    /// PieceStore's own backend settings (`[PieceStore.Backend]`).
    #[serde(rename = "Backend", default)]
    pub backend: BackendOptions,
    /// Small-piece packing and garbage collection (`[PieceStore.Pack]`).
    #[serde(rename = "Pack", default)]
    pub pack: PackOptions,
    /// Where the pack index is kept, when not on this host (`[PieceStore.Index]`).
    #[serde(rename = "Index", default)]
    pub index: IndexOptions,
    /// `[PieceStore.Cache]`: the data cache's memory and disk tiers.
    #[serde(rename = "Cache", default)]
    pub cache: CacheOptions,
    /// `[PieceStore.Serve]`: what `piecestore serve` (the `piecestore-server` crate) listens on
    /// and serves. A store opened by a binding or the other commands does not read it.
    #[serde(rename = "Serve", default)]
    pub serve: ServeOptions,
    /// `[PieceStore.Peers]`: the other nodes this one exchanges pieces with over the P2P
    /// network (`piecestore serve` answers them; a get that misses here asks them).
    #[serde(rename = "Peers", default)]
    pub peers: PeersOptions,
    /// Whether this config is in the original Go piecestore's layout and nothing else: read
    /// from a `config.toml` whose `[PieceStore]` holds only `Shards` and `[PieceStore.Store]`.
    /// Such a store's defaults follow the original (its file pieces carry no checksum, so
    /// `AllowUnverified` defaults to true).
    #[serde(skip)]
    pub original_layout: bool,
    /// Whether a `%d` in a one-shard `BucketURL` is kept as written, as the original keeps it
    /// (a config file's `Shards` of 1 or less), instead of being refused as a likely mistake
    /// (a URL's `?shards=1`).
    #[serde(skip)]
    pub literal_bucket_url: bool,
}

/// What kind of backend a store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StorageKind {
    /// AWS S3 or any S3-compatible endpoint.
    S3,
    /// MinIO (S3-compatible, path style; `MINIO_*` credentials).
    Minio,
    /// Aliyun OSS through its S3-compatible API (virtual-hosted; `ALIBABA_CLOUD_*` credentials).
    Oss,
    /// Backblaze B2 through its S3-compatible API (`B2_*` credentials).
    B2,
    /// A local directory. The default.
    #[default]
    File,
    /// In process memory.
    Memory,
    /// A bucket of a remote `piecestore serve`, over gRPC (`grpc://host:port/bucket`).
    Grpc,
}

impl StorageKind {
    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            StorageKind::S3 => "s3",
            StorageKind::Minio => "minio",
            StorageKind::Oss => "oss",
            StorageKind::B2 => "b2",
            StorageKind::File => "file",
            StorageKind::Memory => "memory",
            StorageKind::Grpc => "grpc",
        }
    }

    /// Whether this is one of the S3 family.
    pub fn is_s3_family(self) -> bool {
        !matches!(
            self,
            StorageKind::File | StorageKind::Memory | StorageKind::Grpc
        )
    }
}

impl FromStr for StorageKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "s3" | "ceph" | "rgw" => StorageKind::S3,
            "minio" => StorageKind::Minio,
            "oss" => StorageKind::Oss,
            "b2" => StorageKind::B2,
            "file" => StorageKind::File,
            "memory" => StorageKind::Memory,
            "grpc" => StorageKind::Grpc,
            other => {
                return Err(Error::config(format!(
                    "Storage: unknown storage {other:?} (expected s3, minio, oss, b2, file, memory or grpc)"
                )));
            }
        })
    }
}

impl<'de> Deserialize<'de> for StorageKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// How credentials are found when no keys are given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IamType {
    /// Access key and secret key (config or environment) must be given.
    Aksk,
    /// Service account: keys if given, else web identity (`AWS_ROLE_ARN` +
    /// `AWS_WEB_IDENTITY_TOKEN_FILE`), else the instance's IAM role. The default.
    #[default]
    Sa,
}

impl<'de> Deserialize<'de> for IamType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "AKSK" => Ok(IamType::Aksk),
            "SA" => Ok(IamType::Sa),
            other => Err(serde::de::Error::custom(format!(
                "IAMType: {other:?} is not \"AKSK\" or \"SA\""
            ))),
        }
    }
}

/// A secret string: never shown by `Debug` or `Display`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself: pass it only to the code that signs requests.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Whether it is empty (unset).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

/// One backend: the original's `[PieceStore.Store]` table.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `s3`, `minio`, `oss`, `b2`, `file`, `memory` or `grpc`; inferred from `BucketURL` when unset.
    #[serde(rename = "Storage", default)]
    pub storage: Option<StorageKind>,
    /// Where the pieces live (see `docs/config.md` for every URL form). Default `./data`.
    #[serde(rename = "BucketURL", default)]
    pub bucket_url: String,
    /// Access key id (else from the environment).
    #[serde(rename = "AccessKey", default)]
    pub access_key: Secret,
    /// Secret access key (else from the environment).
    #[serde(rename = "SecretKey", default)]
    pub secret_key: Secret,
    /// Session token of temporary credentials (else from the environment).
    #[serde(rename = "SessionToken", default)]
    pub session_token: Secret,
    /// Send unsigned requests (public buckets).
    #[serde(rename = "NoSignRequest", default)]
    pub no_sign_request: bool,
    /// How often a failed request is retried. Default 5; in `config.toml` 0 also means 5, as
    /// the original's SP reads it (set 0 retries by name: `max_retries=0`).
    #[serde(rename = "MaxRetries", default = "default_max_retries")]
    pub max_retries: u32,
    /// First retry delay (later ones grow exponentially, with jitter), at least 1 ms: in
    /// `config.toml` an integer counts nanoseconds, as in the original (0 meaning 1 ns, the
    /// SP's default); by name (URL, binding option) an integer counts seconds; either way a
    /// duration string (`"200ms"`, `"1s"`) is what it says. Default 100ms.
    #[serde(rename = "MinRetryDelay", default, deserialize_with = "de_opt_delay")]
    pub min_retry_delay: Option<Duration>,
    /// Accept any TLS certificate (testing only).
    #[serde(rename = "TLSInsecureSkipVerify", default)]
    pub tls_insecure_skip_verify: bool,
    /// `AKSK` or `SA` (default).
    #[serde(rename = "IAMType", default)]
    pub iam_type: IamType,
}

/// Shows `BucketURL` as errors do, without a userinfo (`user:password@`) or query: a URL is
/// kept as given until the store opens, and may hold a password then.
impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Every field named, so that a new one can't be left out unnoticed.
        let StoreConfig {
            storage,
            bucket_url,
            access_key,
            secret_key,
            session_token,
            no_sign_request,
            max_retries,
            min_retry_delay,
            tls_insecure_skip_verify,
            iam_type,
        } = self;
        f.debug_struct("StoreConfig")
            .field("storage", storage)
            .field("bucket_url", &crate::error::redact_url(bucket_url))
            .field("access_key", access_key)
            .field("secret_key", secret_key)
            .field("session_token", session_token)
            .field("no_sign_request", no_sign_request)
            .field("max_retries", max_retries)
            .field("min_retry_delay", min_retry_delay)
            .field("tls_insecure_skip_verify", tls_insecure_skip_verify)
            .field("iam_type", iam_type)
            .finish()
    }
}

fn default_max_retries() -> u32 {
    5
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            storage: None,
            bucket_url: String::new(),
            access_key: Secret::default(),
            secret_key: Secret::default(),
            session_token: Secret::default(),
            no_sign_request: false,
            max_retries: default_max_retries(),
            min_retry_delay: None,
            tls_insecure_skip_verify: false,
            iam_type: IamType::default(),
        }
    }
}

impl StoreConfig {
    /// A store at `url` with default settings.
    pub fn from_url(url: impl Into<String>) -> Self {
        StoreConfig {
            bucket_url: url.into(),
            ..Default::default()
        }
    }

    /// The storage kind: as configured, else inferred from the URL.
    pub fn storage_kind(&self) -> StorageKind {
        self.storage
            .unwrap_or_else(|| infer_storage(&self.bucket_url))
    }

    /// The bucket URL, with the default `./data` when empty.
    pub fn url(&self) -> &str {
        if self.bucket_url.is_empty() {
            match self.storage_kind() {
                StorageKind::Memory => "memory://",
                _ => "./data",
            }
        } else {
            &self.bucket_url
        }
    }
}

/// Infers the storage kind from a bucket URL.
pub fn infer_storage(url: &str) -> StorageKind {
    let lower = url.to_ascii_lowercase();
    let host = lower
        .split_once("://")
        .map(|(_, r)| r.split(['/', '?']).next().unwrap_or(""));
    if lower.starts_with("memory:") {
        StorageKind::Memory
    } else if lower.starts_with("grpc://") || lower.starts_with("grpcs://") {
        StorageKind::Grpc
    } else if lower.starts_with("s3://") || lower.starts_with("s3a://") {
        StorageKind::S3
    } else if lower.starts_with("oss://") {
        StorageKind::Oss
    } else if lower.starts_with("b2://") {
        StorageKind::B2
    } else if lower.starts_with("http://") || lower.starts_with("https://") {
        let host = host.unwrap_or("");
        if host.ends_with(".aliyuncs.com") {
            StorageKind::Oss
        } else if host.ends_with(".backblazeb2.com") {
            StorageKind::B2
        } else if host.contains(".amazonaws.com") {
            StorageKind::S3
        } else {
            StorageKind::Minio
        }
    } else {
        StorageKind::File
    }
}

/// `[PieceStore.Sharding]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardingConfig {
    /// `fnv-mod` (default; the original's layout) or `jump` (consistent).
    #[serde(rename = "Placement", default)]
    pub placement: Placement,
}

/// Whether create-only writes use the backend's conditional put (`If-None-Match: *`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConditionalWrites {
    /// Probe the backend on first write; fall back (with a warning) where it ignores them.
    #[default]
    Auto,
    /// Always use conditional writes.
    On,
    /// Never: check with a HEAD before each write (racy between writers of one key).
    Off,
}

impl<'de> Deserialize<'de> for ConditionalWrites {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match String::deserialize(d)?.to_ascii_lowercase().as_str() {
            "auto" => Ok(ConditionalWrites::Auto),
            "on" | "true" => Ok(ConditionalWrites::On),
            "off" | "false" => Ok(ConditionalWrites::Off),
            other => Err(serde::de::Error::custom(format!(
                "ConditionalWrites: {other:?} is not \"auto\", \"on\" or \"off\""
            ))),
        }
    }
}

/// Whose layout a store keeps its pieces in: `[PieceStore.Backend] Layout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Layout {
    /// PieceStore's own: small pieces packed (by default), local files with a checksum
    /// trailer (a directory marked by `.piecestore/layout`).
    #[serde(rename = "piecestore", alias = "PieceStore")]
    PieceStore,
    /// The original Go piecestore's, byte for byte, so that each reads what the other wrote:
    /// one object or file per piece holding exactly its bytes (S3 metadata `Crc32c`; on local
    /// files PieceStore's checksum in an extended attribute), no packs unless asked for, its
    /// key layout for every URL form it accepts.
    #[serde(rename = "original", alias = "Original")]
    Original,
}

impl Layout {
    /// `piecestore` or `original`.
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::PieceStore => "piecestore",
            Layout::Original => "original",
        }
    }
}

/// `[PieceStore.Backend]`: PieceStore's own backend settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendOptions {
    /// Signing region; overrides the URL's and the environment's.
    #[serde(rename = "Region", default)]
    pub region: Option<String>,
    /// Endpoint for `s3://` URLs (e.g. a Ceph RGW); else `AWS_ENDPOINT_URL`.
    #[serde(rename = "Endpoint", default)]
    pub endpoint: Option<String>,
    /// Longest retry delay. Default 10s.
    #[serde(
        rename = "MaxRetryDelay",
        default = "d_10s",
        deserialize_with = "de_delay"
    )]
    pub max_retry_delay: Duration,
    /// Give up retrying a request after this long. Default 60s.
    #[serde(
        rename = "RetryTimeout",
        default = "d_60s",
        deserialize_with = "de_delay"
    )]
    pub retry_timeout: Duration,
    /// Timeout of one request. Default 60s.
    #[serde(
        rename = "RequestTimeout",
        default = "d_60s",
        deserialize_with = "de_delay"
    )]
    pub request_timeout: Duration,
    /// Timeout of one connect. Default 5s.
    #[serde(
        rename = "ConnectTimeout",
        default = "d_5s",
        deserialize_with = "de_delay"
    )]
    pub connect_timeout: Duration,
    /// Deadline of one whole read of a piece or of a pack's bytes (get, range get, head,
    /// exists; a streamed get until it opens), all its attempts and retries included. `0s`
    /// (the default): none, each attempt is bounded by `RequestTimeout` and retrying by
    /// `RetryTimeout`. A timed-out read fails with a retryable backend error naming this option.
    #[serde(rename = "GetTimeout", default, deserialize_with = "de_delay")]
    pub get_timeout: Duration,
    /// Deadline of one whole put, retries included (for a packed piece, the wait for its
    /// group's pack write too). `0s` (the default): none. A timed-out put may still have stored its bytes: pieces are immutable, so
    /// putting the same bytes again is safe and succeeds.
    #[serde(rename = "PutTimeout", default, deserialize_with = "de_delay")]
    pub put_timeout: Duration,
    /// Deadline of one whole delete, retries included. `0s` (the default): none.
    #[serde(rename = "DeleteTimeout", default, deserialize_with = "de_delay")]
    pub delete_timeout: Duration,
    /// Longest wait for the next entry of a listing (one page from a bucket), retries
    /// included. `0s` (the default): none.
    #[serde(rename = "ListTimeout", default, deserialize_with = "de_delay")]
    pub list_timeout: Duration,
    /// `auto` (default), `on` or `off`.
    #[serde(rename = "ConditionalWrites", default)]
    pub conditional_writes: ConditionalWrites,
    /// fsync files and directories on the file backend. Default true.
    #[serde(rename = "Fsync", default = "d_true")]
    pub fsync: bool,
    /// Check at open that each shard's bucket exists and is reachable. Default true.
    #[serde(rename = "CheckBucket", default = "d_true")]
    pub check_bucket: bool,
    /// Create a shard's missing bucket at open (with `CheckBucket`), as the original does.
    /// Default: true for a config in the original's layout (its deployments expect it), false
    /// otherwise, where a missing bucket is a [`crate::ErrorKind::BucketNotFound`] error that
    /// names it (a mistyped name is not created silently).
    #[serde(rename = "CreateBucket", default)]
    pub create_bucket: Option<bool>,
    /// Keep operation metrics ([`PieceStore::metrics`](crate::PieceStore::metrics)). Default true;
    /// their cost is a clock read and a few atomic adds per operation.
    #[serde(rename = "Metrics", default = "d_true")]
    pub metrics: bool,
    /// Sign S3 requests without hashing their bodies (SigV4 `UNSIGNED-PAYLOAD`, as minio-go
    /// with `DisableContentSha256` and the AWS SDKs over TLS do). Saves a SHA-256 pass over
    /// every piece put; each piece keeps its CRC32C, which every read verifies. Default false.
    #[serde(rename = "UnsignedPayload", default)]
    pub unsigned_payload: bool,
    /// Return pieces that carry no checksum (written by another tool, such as the original Go
    /// piecestore, whose local files have none) instead of failing with `Corrupt`; such reads
    /// are counted in the metrics (`piecestore_unverified_reads_total`). Default: true for a
    /// config in the original's layout, false otherwise.
    #[serde(rename = "AllowUnverified", default)]
    pub allow_unverified: Option<bool>,
    /// Whose layout the store keeps its pieces in (see [`Layout`]). Default: `original` for a
    /// config in the original's layout, `piecestore` otherwise.
    #[serde(rename = "Layout", default)]
    pub layout: Option<Layout>,
}

fn d_true() -> bool {
    true
}
fn d_5s() -> Duration {
    Duration::from_secs(5)
}
fn d_10s() -> Duration {
    Duration::from_secs(10)
}
fn d_60s() -> Duration {
    Duration::from_secs(60)
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            region: None,
            endpoint: None,
            max_retry_delay: d_10s(),
            retry_timeout: d_60s(),
            request_timeout: d_60s(),
            connect_timeout: d_5s(),
            get_timeout: Duration::ZERO,
            put_timeout: Duration::ZERO,
            delete_timeout: Duration::ZERO,
            list_timeout: Duration::ZERO,
            conditional_writes: ConditionalWrites::Auto,
            fsync: true,
            check_bucket: true,
            create_bucket: None,
            metrics: true,
            unsigned_payload: false,
            allow_unverified: None,
            layout: None,
        }
    }
}

/// Small-piece packing and its garbage collection: `[PieceStore.Pack]`.
///
/// Pieces smaller than `Threshold` are written in groups, as puts arrive (group commit, no
/// timer): on a local directory appended to the shard's active pack file, sealed at
/// `TargetSize`; on a bucket one pack object per group. The pack index (SQLite) says where each
/// piece is. `piecestore gc` compacts packs whose garbage passes `GarbageRatio` and merges
/// undersized ones. See `docs/pack-format.md`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackOptions {
    /// Pack small pieces. Default: on for local directories and S3-family buckets, off for
    /// `memory://`.
    #[serde(rename = "Enabled", default)]
    pub enabled: Option<bool>,
    /// Pieces smaller than this many bytes are packed; larger ones stay objects of their own.
    /// Default 1 MiB. Takes a number of bytes or text such as `"512KiB"`.
    #[serde(rename = "Threshold", default = "d_1mib", deserialize_with = "de_size")]
    pub threshold: u64,
    /// A pack is closed once it holds this many bytes (a local active pack is sealed, a
    /// bucket's write group is put). Default 64 MiB.
    #[serde(
        rename = "TargetSize",
        default = "d_64mib",
        deserialize_with = "de_size"
    )]
    pub target_size: u64,
    /// Kept for configs written for earlier versions, where a put waited up to this long for
    /// its pack; puts no longer wait for a timer (a put that finds the pack writer idle is
    /// written at once, and puts that arrive while a write is in flight share the next one),
    /// so this has no effect. Default 0.
    #[serde(rename = "MaxAge", default, deserialize_with = "de_delay")]
    pub max_age: Duration,
    /// Compaction rewrites packs with at least this share of garbage, 0.0 to 1.0. Default 0.5.
    #[serde(rename = "GarbageRatio", default = "d_half")]
    pub garbage_ratio: f64,
    /// A compacted pack is deleted this long after its pieces moved, so a read that looked it
    /// up just before still gets its bytes. Default 1h.
    #[serde(rename = "Grace", default = "d_1h", deserialize_with = "de_delay")]
    pub grace: Duration,
    /// Run garbage collection (with the options above) in the background this often while
    /// the store is open. Default: never (run `piecestore gc`).
    #[serde(rename = "GcInterval", default, deserialize_with = "de_opt_delay")]
    pub gc_interval: Option<Duration>,
    /// Where the index of an S3-family store is kept (one file per shard). Default: the user's
    /// cache directory (`$XDG_CACHE_HOME/piecestore/index/…`). A local directory store keeps
    /// its index in `.piecestore/index.sqlite` inside the directory.
    #[serde(rename = "IndexDir", default)]
    pub index_dir: Option<std::path::PathBuf>,
}

/// What a read-through cache keeps: `Admit` in `[PieceStore.Cache]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Admit {
    /// Pieces read (the default).
    #[default]
    Reads,
    /// Pieces read and pieces written (write-through: a piece just put is read from the cache).
    ReadsAndWrites,
}

impl<'de> Deserialize<'de> for Admit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match String::deserialize(d)?.to_ascii_lowercase().as_str() {
            "reads" => Ok(Admit::Reads),
            "reads-and-writes" | "reads_and_writes" | "writes" | "all" => Ok(Admit::ReadsAndWrites),
            other => Err(serde::de::Error::custom(format!(
                "Admit: {other:?} is not \"reads\" or \"reads-and-writes\""
            ))),
        }
    }
}

/// The data cache: `[PieceStore.Cache]`. Read-through tiers keyed by piece key, memory first,
/// then a local directory, then the store; see `docs/config.md#pieces-cache`.
///
/// ```toml
/// [PieceStore.Cache]
/// Memory = "512MiB"
/// Disk = "/var/cache/piecestore"
/// DiskSize = "50GiB"
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheOptions {
    /// The memory tier's size in bytes (pieces' bytes and keys); `0` turns it off. Default:
    /// 256 MiB when every shard is a bucket in PieceStore's own layout; off for `memory://`,
    /// local directories (whose reads the page cache already serves) and a config in the
    /// original's layout (which keeps the original's behaviour).
    #[serde(rename = "Memory", default, deserialize_with = "de_opt_size")]
    pub memory: Option<u64>,
    /// The disk tier's directory (created if missing; it survives restarts). Default: none.
    #[serde(rename = "Disk", default)]
    pub disk: Option<std::path::PathBuf>,
    /// The disk tier's size in bytes. Default 10 GiB.
    #[serde(rename = "DiskSize", default, deserialize_with = "de_opt_size")]
    pub disk_size: Option<u64>,
    /// What goes in: `"reads"` (default) or `"reads-and-writes"`.
    #[serde(rename = "Admit", default)]
    pub admit: Admit,
    /// Pieces larger than this are not cached. Default 4 MiB.
    #[serde(rename = "MaxPiece", default, deserialize_with = "de_opt_size")]
    pub max_piece: Option<u64>,
}

impl CacheOptions {
    /// The memory tier's size for a store whose shards are all buckets (`buckets`) or not.
    pub fn memory_bytes(&self, buckets: bool) -> u64 {
        self.memory
            .unwrap_or(if buckets { DEFAULT_CACHE_MEMORY } else { 0 })
    }
    /// The disk tier's size.
    pub fn disk_bytes(&self) -> u64 {
        self.disk_size.unwrap_or(10 << 30)
    }
    /// The largest piece cached.
    pub fn max_piece_bytes(&self) -> u64 {
        self.max_piece.unwrap_or(4 << 20)
    }
}

/// The memory tier's default size in front of buckets.
pub const DEFAULT_CACHE_MEMORY: u64 = 256 << 20;

/// `[PieceStore.Serve]`: the S3-compatible HTTP service of `piecestore serve`; see
/// `docs/serve.md`.
///
/// ```toml
/// [PieceStore.Serve]
/// Listen = "127.0.0.1:9820"
/// MaxObjectSize = "256MiB"
///
/// [[PieceStore.Serve.Keys]]
/// AccessKey = "pieces-admin"
/// SecretKey = "change-me-please"
///
/// [[PieceStore.Serve.Buckets]]
/// Name = "pieces"                 # the store this config describes
///
/// [[PieceStore.Serve.Buckets]]
/// Name = "public"
/// Store = "file:///srv/public"    # a store URL or a config.toml of its own
/// PublicRead = true
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeOptions {
    /// The address to listen on (`host:port`). Default `127.0.0.1:9820`; `--listen` overrides.
    #[serde(rename = "Listen", default)]
    pub listen: Option<String>,
    /// The domain names the service is reached by, for virtual-hosted-style requests: with
    /// `s3.example.com` here, a request to `pieces.s3.example.com` addresses bucket `pieces`.
    /// Requests to any other host (an IP address, `localhost`, a domain itself) are
    /// path-style. Default: none, path-style only.
    #[serde(rename = "Domains", default)]
    pub domains: Vec<String>,
    /// The access keys whose SigV4 signatures are accepted. The environment's
    /// `PIECESTORE_SERVE_ACCESS_KEY` and `PIECESTORE_SERVE_SECRET_KEY` add one more.
    #[serde(rename = "Keys", default)]
    pub keys: Vec<ServeKey>,
    /// The bearer tokens the gRPC API accepts (`authorization: Bearer TOKEN`), each at least
    /// 16 characters. The environment's `PIECESTORE_SERVE_TOKEN` adds one more.
    #[serde(rename = "Tokens", default)]
    pub tokens: Vec<Secret>,
    /// The buckets served, each over a store. Default: one bucket `pieces` over the store
    /// this config describes.
    #[serde(rename = "Buckets", default)]
    pub buckets: Vec<ServeBucket>,
    /// A PEM certificate chain: with `TLSKey`, the service speaks HTTPS only.
    #[serde(rename = "TLSCert", default)]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of `TLSCert`.
    #[serde(rename = "TLSKey", default)]
    pub tls_key: Option<std::path::PathBuf>,
    /// The largest object a PUT may store (the request is refused with `EntityTooLarge`
    /// before its body is read). Default 256 MiB.
    #[serde(
        rename = "MaxObjectSize",
        default = "d_256mib",
        deserialize_with = "de_size"
    )]
    pub max_object_size: u64,
    /// Requests served at once; more wait for a turn. Default 256.
    #[serde(rename = "Concurrency", default = "d_256")]
    pub concurrency: usize,
    /// How long a client may take to send a request's headers. Default 10 s.
    #[serde(
        rename = "HeaderTimeout",
        default = "d_10s",
        deserialize_with = "de_delay"
    )]
    pub header_timeout: Duration,
    /// How long a request body may go without a byte arriving. Default 30 s.
    #[serde(
        rename = "BodyTimeout",
        default = "d_30s",
        deserialize_with = "de_delay"
    )]
    pub body_timeout: Duration,
    /// On SIGTERM or Ctrl-C, how long requests in flight may take to finish before the
    /// connections are closed (open packs are flushed either way). Default 30 s.
    #[serde(
        rename = "ShutdownTimeout",
        default = "d_30s",
        deserialize_with = "de_delay"
    )]
    pub shutdown_timeout: Duration,
    /// Where multipart uploads stage their parts (fsync'd files, one directory per upload).
    /// Default `$XDG_CACHE_HOME/piecestore/serve-uploads` (else `~/.cache/…`).
    #[serde(rename = "UploadDir", default)]
    pub upload_dir: Option<std::path::PathBuf>,
    /// A multipart upload neither completed nor aborted this long after it began is removed
    /// with its parts. Default 24 h.
    #[serde(
        rename = "UploadExpiry",
        default = "d_24h",
        deserialize_with = "de_delay"
    )]
    pub upload_expiry: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            listen: None,
            domains: Vec::new(),
            keys: Vec::new(),
            tokens: Vec::new(),
            buckets: Vec::new(),
            tls_cert: None,
            tls_key: None,
            max_object_size: d_256mib(),
            concurrency: d_256(),
            header_timeout: d_10s(),
            body_timeout: d_30s(),
            shutdown_timeout: d_30s(),
            upload_dir: None,
            upload_expiry: d_24h(),
        }
    }
}

/// `[PieceStore.Peers]`: piece exchange with other nodes over rust-libp2p (TCP, noise,
/// yamux; protocol `/piecestore/piece/1`). See docs/serve.md.
///
/// ```toml
/// [PieceStore.Peers]
/// Listen = ["/ip4/0.0.0.0/tcp/9830"]          # where `piecestore serve` answers peers
/// Bootstrap = ["/ip4/10.0.0.7/tcp/9830/p2p/12D3KooW…"]  # peers to ask for pieces
/// Allow = ["12D3KooW…"]                         # who may fetch from and push to this node
/// ```
///
/// With peers configured, a get that this store cannot answer (no such piece, a failing
/// backend, a corrupt copy) asks the peers before it fails; what a peer sends is verified
/// against its CRC32C. The node's identity (an ed25519 key, hence its peer id) is created
/// once and kept in `IdentityFile` (mode 0600).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeersOptions {
    /// Multiaddrs `piecestore serve` listens on for peers (`/ip4/127.0.0.1/tcp/0` picks a
    /// free port). Default: none, `serve` does not answer peers.
    #[serde(rename = "Listen", default)]
    pub listen: Vec<String>,
    /// Peers to ask for pieces, as multiaddrs that end in `/p2p/PEER_ID`.
    #[serde(rename = "Bootstrap", default)]
    pub bootstrap: Vec<String>,
    /// The peer ids allowed to fetch pieces from this node and push pieces to it; `"*"`
    /// allows any peer (a trusted network only). Default: none, every request is refused.
    #[serde(rename = "Allow", default)]
    pub allow: Vec<String>,
    /// Find peers on the local network by mDNS as well (they still need the allow-list).
    /// Default false.
    #[serde(rename = "Mdns", default)]
    pub mdns: bool,
    /// The node's identity key (created on first use, mode 0600). Default: `.piecestore/
    /// p2p-identity.key` in a `file` store's directory, else `p2p-identity.key` in the
    /// pack index's directory (`Pack.IndexDir`, default the user's cache directory).
    #[serde(rename = "IdentityFile", default)]
    pub identity_file: Option<std::path::PathBuf>,
    /// Announce the pieces this node serves in the Kademlia DHT (provider records), so that
    /// nodes that do not know it as a peer can find it through the peers they know: at start
    /// (up to 100,000 pieces) and for each piece a peer pushes. One DHT query per piece, so
    /// off by default.
    #[serde(rename = "Provide", default)]
    pub provide: bool,
    /// How long one request to a peer may take (dial, send, answer). Default 30 s.
    #[serde(rename = "Timeout", default = "d_30s", deserialize_with = "de_delay")]
    pub timeout: Duration,
}

impl Default for PeersOptions {
    fn default() -> Self {
        PeersOptions {
            listen: Vec::new(),
            bootstrap: Vec::new(),
            allow: Vec::new(),
            mdns: false,
            identity_file: None,
            provide: false,
            timeout: d_30s(),
        }
    }
}

impl PeersOptions {
    /// Whether this node has any peer to ask (bootstrap peers or mDNS).
    pub fn has_peers(&self) -> bool {
        !self.bootstrap.is_empty() || self.mdns
    }
}

/// The default address of `piecestore serve`.
pub const DEFAULT_SERVE_LISTEN: &str = "127.0.0.1:9820";

/// One access key of `piecestore serve` (`[[PieceStore.Serve.Keys]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeKey {
    /// The access key id clients sign with.
    #[serde(rename = "AccessKey")]
    pub access_key: String,
    /// Its secret (never shown).
    #[serde(rename = "SecretKey")]
    pub secret_key: Secret,
}

/// One bucket of `piecestore serve` (`[[PieceStore.Serve.Buckets]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeBucket {
    /// The bucket's name, as clients address it (3 to 63 characters: lowercase letters,
    /// digits, `-` and `.`).
    #[serde(rename = "Name")]
    pub name: String,
    /// The store behind it: a store URL or the path of a config.toml. Default: the store the
    /// serving config describes.
    #[serde(rename = "Store", default)]
    pub store: Option<String>,
    /// Anyone may read (GET, HEAD, list) without signing; writes still need a key.
    #[serde(rename = "PublicRead", default)]
    pub public_read: bool,
    /// A PUT of other bytes under an existing key replaces the piece instead of failing
    /// with 409 `PieceExists`.
    #[serde(rename = "AllowOverwrite", default)]
    pub allow_overwrite: bool,
}

fn d_256mib() -> u64 {
    256 << 20
}
fn d_256() -> usize {
    256
}
fn d_24h() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn d_30s() -> Duration {
    Duration::from_secs(30)
}

/// `[PieceStore.Index]`: a pack index shared by several hosts.
///
/// ```toml
/// [PieceStore.Index]
/// Url = "postgres://piecestore:secret@db.internal:5432/piecestore"
/// ```
///
/// Without it each host keeps the index of a packed store in a SQLite file (shared by the
/// processes of that host, see [`PackOptions::index_dir`]). With `Url`, every node that opens
/// the store with the same `Url` uses one index in that PostgreSQL database (tables
/// `piecestore_*`, created on first use), so that any node reads a piece as soon as another
/// node's put of it returned. The option `IndexUrl` (binding option `index_url`, URL query
/// `?index_url=…`) and the environment variable `PIECESTORE_INDEX_URL` set it too.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexOptions {
    /// `postgres://user:password@host:port/database` (any libpq-style URL or key=value
    /// string; `host=/path` for a unix socket). A secret: it may hold a password, and is
    /// never shown.
    #[serde(rename = "Url", default)]
    pub url: Secret,
}

fn d_1mib() -> u64 {
    1 << 20
}
fn d_64mib() -> u64 {
    64 << 20
}
fn d_half() -> f64 {
    0.5
}
fn d_1h() -> Duration {
    Duration::from_secs(3600)
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            enabled: None,
            threshold: d_1mib(),
            target_size: d_64mib(),
            max_age: Duration::ZERO,
            garbage_ratio: d_half(),
            grace: d_1h(),
            gc_interval: None,
            index_dir: None,
        }
    }
}

impl PackOptions {
    /// Whether a store of `kind` packs, after the default.
    pub fn enabled_for(&self, kind: StorageKind) -> bool {
        self.enabled.unwrap_or(!matches!(kind, StorageKind::Memory))
    }

    /// How these options pack differently from `other`, naming the fields; `None` when they
    /// pack alike (`Enabled`, `GcInterval` and `IndexDir` aside, which are each handle's own).
    pub fn packing_differs(&self, other: &PackOptions) -> Option<String> {
        let mut diff = Vec::new();
        let mut field = |name: &str, a: String, b: String| {
            if a != b {
                diff.push(format!("{name} {a}, not {b}"));
            }
        };
        field(
            "Threshold",
            self.threshold.to_string(),
            other.threshold.to_string(),
        );
        field(
            "TargetSize",
            self.target_size.to_string(),
            other.target_size.to_string(),
        );
        field(
            "MaxAge",
            format!("{:?}", self.max_age),
            format!("{:?}", other.max_age),
        );
        field(
            "GarbageRatio",
            self.garbage_ratio.to_string(),
            other.garbage_ratio.to_string(),
        );
        field(
            "Grace",
            format!("{:?}", self.grace),
            format!("{:?}", other.grace),
        );
        (!diff.is_empty()).then(|| diff.join(", "))
    }

    /// Checks the values are usable.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.garbage_ratio) || self.garbage_ratio.is_nan() {
            return Err(Error::config(format!(
                "Pack.GarbageRatio {} is not between 0.0 and 1.0",
                self.garbage_ratio
            )));
        }
        if self.threshold > 64 << 20 {
            return Err(Error::config(format!(
                "Pack.Threshold {} is over 64 MiB; larger pieces belong in objects of their own",
                self.threshold
            )));
        }
        if self.target_size < self.threshold || self.target_size > 4 << 30 {
            return Err(Error::config(format!(
                "Pack.TargetSize {} must be at least Pack.Threshold ({}) and at most 4 GiB",
                self.target_size, self.threshold
            )));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeRepr {
    Bytes(u64),
    Text(String),
}

/// Parses `"64MiB"`, `"512 KiB"`, `"1MB"`, `"4096"`.
fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 4096, \"512KiB\" or \"64MiB\""))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "{text:?}: unknown size unit {unit:?} (use KiB, MiB or GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?} is too large"))
}

fn de_opt_size<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<u64>, D::Error> {
    de_size(d).map(Some)
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
    match SizeRepr::deserialize(d)? {
        SizeRepr::Bytes(n) => Ok(n),
        SizeRepr::Text(t) => parse_size(&t).map_err(serde::de::Error::custom),
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DelayRepr {
    Seconds(u64),
    FractionalSeconds(f64),
    Text(String),
}

fn parse_delay(r: DelayRepr) -> std::result::Result<Duration, String> {
    match r {
        DelayRepr::Seconds(s) => Ok(Duration::from_secs(s)),
        DelayRepr::FractionalSeconds(s) => {
            Duration::try_from_secs_f64(s).map_err(|_| format!("{s} is not a duration in seconds"))
        }
        DelayRepr::Text(t) => humantime::parse_duration(t.trim())
            .map_err(|e| format!("{t:?} is not a duration like \"200ms\" or \"2s\": {e}")),
    }
}

fn de_delay<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    parse_delay(DelayRepr::deserialize(d)?).map_err(serde::de::Error::custom)
}

fn de_opt_delay<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Duration>, D::Error> {
    de_delay(d).map(Some)
}

/// A value given to [`Config::set_option`]: what a binding converts its language's values to.
#[derive(Debug, Clone, PartialEq)]
pub enum OptionValue {
    /// A boolean.
    Bool(bool),
    /// An integer (counts; durations in seconds).
    Int(i64),
    /// A fractional number (durations in seconds).
    Float(f64),
    /// Text (URLs, names, durations such as `"200ms"`).
    Str(String),
}

impl OptionValue {
    /// Reads a value written as text (a URL query parameter, an environment variable, a
    /// binding's string option): `true` and `false` are booleans, integers are integers,
    /// decimals such as `2.5` are fractional numbers (seconds, for a duration), anything else
    /// is text.
    ///
    /// ```
    /// use piecestore::config::OptionValue;
    /// assert_eq!(OptionValue::from_text("3"), OptionValue::Int(3));
    /// assert_eq!(OptionValue::from_text("2.5"), OptionValue::Float(2.5));
    /// assert_eq!(OptionValue::from_text("200ms"), OptionValue::Str("200ms".into()));
    /// assert_eq!(OptionValue::from_text("1e3"), OptionValue::Str("1e3".into()));
    /// ```
    pub fn from_text(text: &str) -> Self {
        let decimal = |t: &str| {
            let digits = t.strip_prefix('-').unwrap_or(t);
            digits.contains('.')
                && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
                && digits.chars().any(|c| c.is_ascii_digit())
        };
        match text {
            "true" => OptionValue::Bool(true),
            "false" => OptionValue::Bool(false),
            t => match (t.parse::<i64>(), t.parse::<f64>()) {
                (Ok(i), _) => OptionValue::Int(i),
                (_, Ok(f)) if decimal(t) => OptionValue::Float(f),
                _ => OptionValue::Str(t.to_string()),
            },
        }
    }

    /// Reads option `name`'s value written as text, as [`OptionValue::from_text`] does, except
    /// that options whose value is text (keys, secrets, region, endpoint, paths, names) keep it
    /// as given: a secret key `"12345678"` or `"007"` stays that string. What the bindings that
    /// take options as strings (C, Go, Swift, Kotlin) call.
    ///
    /// ```
    /// use piecestore::config::OptionValue;
    /// assert_eq!(OptionValue::from_option_text("secret_key", "007"), OptionValue::Str("007".into()));
    /// assert_eq!(OptionValue::from_option_text("max_retries", "3"), OptionValue::Int(3));
    /// ```
    pub fn from_option_text(name: &str, text: &str) -> Self {
        let textual = matches!(
            option_kind(name),
            Some(OptionKind::Text | OptionKind::Choice)
        );
        if textual {
            OptionValue::Str(text.to_string())
        } else {
            OptionValue::from_text(text)
        }
    }

    fn into_toml(self) -> toml::Value {
        match self {
            OptionValue::Bool(b) => toml::Value::Boolean(b),
            OptionValue::Int(i) => toml::Value::Integer(i),
            OptionValue::Float(f) => toml::Value::Float(f),
            OptionValue::Str(s) => toml::Value::String(s),
        }
    }
}

impl fmt::Display for OptionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionValue::Bool(b) => write!(f, "{b}"),
            OptionValue::Int(i) => write!(f, "{i}"),
            OptionValue::Float(x) => write!(f, "{x}"),
            OptionValue::Str(s) => write!(f, "{s:?}"),
        }
    }
}

struct OptionField {
    /// The `config.toml` field name.
    name: &'static str,
    secret: bool,
}

/// Every option name [`Config::set_option`] takes (their `config.toml` spelling).
pub const OPTION_NAMES: &[&str] = &[
    "Shards",
    "Placement",
    "Storage",
    "BucketURL",
    "AccessKey",
    "SecretKey",
    "SessionToken",
    "NoSignRequest",
    "MaxRetries",
    "MinRetryDelay",
    "TLSInsecureSkipVerify",
    "IAMType",
    "Region",
    "Endpoint",
    "MaxRetryDelay",
    "RetryTimeout",
    "RequestTimeout",
    "ConnectTimeout",
    "GetTimeout",
    "PutTimeout",
    "DeleteTimeout",
    "ListTimeout",
    "ConditionalWrites",
    "Fsync",
    "CheckBucket",
    "UnsignedPayload",
    "AllowUnverified",
    "Layout",
    "CreateBucket",
    "Metrics",
    "Pack",
    "PackThreshold",
    "PackTargetSize",
    "PackMaxAge",
    "GcGarbageRatio",
    "GcGrace",
    "GcInterval",
    "IndexDir",
    "IndexUrl",
    "CacheMemory",
    "CacheDisk",
    "CacheDiskSize",
    "CacheAdmit",
    "CacheMaxPiece",
];

/// `name` without `_` and `-`, in lower case: how option names are compared.
fn fold_option_name(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_' && *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The `config.toml` spelling (one of [`OPTION_NAMES`]) of an option named in any case, with
/// or without `_`/`-` (`maxRetries`, `max_retries`, `MaxRetries`); `None` for no option.
///
/// ```
/// assert_eq!(piecestore::config::option_name("max-retries"), Some("MaxRetries"));
/// assert_eq!(piecestore::config::option_name("maxRetrys"), None);
/// ```
pub fn option_name(name: &str) -> Option<&'static str> {
    let folded = fold_option_name(name);
    OPTION_NAMES
        .iter()
        .find(|n| n.to_ascii_lowercase() == folded)
        .copied()
}

fn option_field(name: &str) -> Option<OptionField> {
    option_name(name).map(|name| OptionField {
        name,
        secret: matches!(
            name,
            "AccessKey" | "SecretKey" | "SessionToken" | "IndexUrl"
        ),
    })
}

/// `name` (a `config.toml` spelling) as the caller wrote `like`: snake_case for a name with
/// `_` or all lower case, kebab-case for one with `-`, else as in `config.toml`.
fn spelled_like(name: &str, like: &str) -> String {
    let sep = if like.contains('-') {
        '-'
    } else if like.contains('_') || like == like.to_ascii_lowercase() {
        '_'
    } else {
        return name.to_string();
    };
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        let starts_word = i > 0
            && c.is_ascii_uppercase()
            && (!chars[i - 1].is_ascii_uppercase()
                || chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase()));
        if starts_word {
            out.push(sep);
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// The error for an option name that is none of [`OPTION_NAMES`]: the nearest name, spelled
/// as the caller spells names, when one is near enough.
fn unknown_option(name: &str) -> Error {
    let fold = fold_option_name;
    let folded = fold(name);
    let len = folded.chars().count();
    let nearest = OPTION_NAMES
        .iter()
        .filter_map(|n| {
            let candidate = fold(n);
            // The score is 1 - distance / longer length, and the distance is at least the
            // difference in length: a name less than 0.6 times the other's length can't
            // reach 0.6, so its quadratic distance isn't worth working out (a name pasted
            // by mistake can be long).
            let (short, long) = {
                let other = candidate.chars().count();
                (len.min(other), len.max(other))
            };
            (short * 5 >= long * 3).then(|| {
                (
                    strsim::normalized_damerau_levenshtein(&folded, &candidate),
                    *n,
                )
            })
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .filter(|(score, _)| *score >= 0.6);
    match nearest {
        Some((_, n)) => Error::config(format!(
            "unknown option {name:?}: did you mean {:?}? (every option: docs/config.md)",
            spelled_like(n, name)
        )),
        None => Error::config(format!(
            "unknown option {name:?} (every option: docs/config.md; in config.toml spelling: {})",
            OPTION_NAMES.join(", ")
        )),
    }
}

/// What a value of an option is, as every binding checks and converts it: one table for the
/// core's parsing of text values, its error messages and the bindings' type checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OptionKind {
    /// `true` or `false`.
    Bool,
    /// A number (a count or a fraction).
    Number,
    /// A duration: seconds as a number, or text such as `"200ms"`.
    Duration,
    /// A size: bytes as a whole number, or text such as `"64KiB"`.
    Size,
    /// Text kept as given (keys, secrets, URLs, paths): `"007"` stays a string.
    Text,
    /// One of a few names (text).
    Choice,
    /// `"auto"`, `"on"` or `"off"`, or a boolean (`ConditionalWrites`).
    ConditionalWrites,
}

impl OptionKind {
    /// The kind as a stable lower-case name (`bool`, `number`, `duration`, `size`, `text`,
    /// `choice`, `conditional-writes`), for bindings that publish the table.
    pub fn as_str(self) -> &'static str {
        match self {
            OptionKind::Bool => "bool",
            OptionKind::Number => "number",
            OptionKind::Duration => "duration",
            OptionKind::Size => "size",
            OptionKind::Text => "text",
            OptionKind::Choice => "choice",
            OptionKind::ConditionalWrites => "conditional-writes",
        }
    }
}

/// What option `name` (in any spelling [`option_name`] takes) is; `None` for no option.
///
/// ```
/// use piecestore::config::{OptionKind, option_kind};
/// assert_eq!(option_kind("cache_memory"), Some(OptionKind::Size));
/// assert_eq!(option_kind("secretKey"), Some(OptionKind::Text));
/// assert_eq!(option_kind("nope"), None);
/// ```
pub fn option_kind(name: &str) -> Option<OptionKind> {
    option_name(name).map(|n| option_spec(n).0)
}

/// An option's kind, and what it accepts as an error message says it.
fn option_spec(name: &str) -> (OptionKind, &'static str) {
    use OptionKind::*;
    const DURATION: &str =
        "a duration: seconds as a number (2.5) or text such as \"200ms\", \"30s\", \"1h\"";
    const SIZE: &str = "a size: bytes as a whole number or text such as \"64KiB\", \"16MiB\"";
    match name {
        "Shards" => (Number, "a whole number of shards (0 or 1: one store)"),
        "Placement" => (
            Choice,
            "\"fnv-mod\" (the original's, the default) or \"jump\"",
        ),
        "Storage" => (
            Choice,
            "\"s3\", \"minio\", \"oss\", \"b2\", \"file\", \"memory\" or \"grpc\"",
        ),
        "IAMType" => (
            Choice,
            "\"AKSK\" (keys from the config or environment) or \"SA\" (the default credential chain)",
        ),
        "Layout" => (Choice, "\"piecestore\" or \"original\""),
        "ConditionalWrites" => (
            ConditionalWrites,
            "\"auto\", \"on\" or \"off\" (or true/false)",
        ),
        "MaxRetries" => (Number, "a whole number of retries, 0 or more"),
        "MinRetryDelay" | "MaxRetryDelay" | "RetryTimeout" | "RequestTimeout"
        | "ConnectTimeout" | "GetTimeout" | "PutTimeout" | "DeleteTimeout" | "ListTimeout"
        | "PackMaxAge" | "GcGrace" | "GcInterval" => (Duration, DURATION),
        "CacheAdmit" => (Choice, "\"reads\" or \"reads-and-writes\""),
        "CacheDisk" | "IndexDir" => (Text, "a directory path"),
        "PackThreshold" | "PackTargetSize" | "CacheMemory" | "CacheDiskSize" | "CacheMaxPiece" => {
            (Size, SIZE)
        }
        "GcGarbageRatio" => (Number, "a fraction between 0 and 1, such as 0.3"),
        "NoSignRequest"
        | "TLSInsecureSkipVerify"
        | "Fsync"
        | "CheckBucket"
        | "UnsignedPayload"
        | "AllowUnverified"
        | "CreateBucket"
        | "Metrics"
        | "Pack" => (Bool, "true or false"),
        _ => (Text, "text"),
    }
}

/// What option `name` accepts, as an error message says it.
fn option_accepts(name: &str) -> &'static str {
    option_spec(name).1
}

/// Whether a `[PieceStore]` table holds only what the original Go piecestore's does.
///
/// `[PieceStore.Serve]` and `[PieceStore.Peers]` do not count: they say how the store is
/// served and which other nodes it asks, not how it reads or writes its own pieces, so a
/// Greenfield SP's config with such a table keeps the original's defaults.
fn is_original_layout(table: &toml::Table) -> bool {
    table
        .keys()
        .all(|k| k == "Shards" || k == "Store" || k == "Serve" || k == "Peers")
}

/// The original's fields of `[PieceStore]`.
const ORIGINAL_TOP: &[&str] = &["Shards", "Store"];
/// PieceStore's own tables in `[PieceStore]`, read strictly.
const OWN_TABLES: &[&str] = &[
    "ShardStores",
    "Sharding",
    "Backend",
    "Pack",
    "Index",
    "Cache",
    "Serve",
    "Peers",
];
/// The fields of `[PieceStore.Store]` (the original's, and PieceStore's credentials).
const STORE_FIELDS: &[&str] = &[
    "Storage",
    "BucketURL",
    "AccessKey",
    "SecretKey",
    "SessionToken",
    "NoSignRequest",
    "MaxRetries",
    "MinRetryDelay",
    "TLSInsecureSkipVerify",
    "IAMType",
];

/// Renames `table`'s keys that match one of `names` in another case to that spelling, and
/// drops (with a warning naming them) those that match none, as the original's TOML reader
/// (go-toml v2: the exact name, else any case; unknown fields ignored) does; `own` names are
/// kept as they are.
fn fold_keys(table: &mut toml::Table, where_: &str, names: &[&str], own: &[&str]) -> Result<()> {
    let keys: Vec<String> = table.keys().cloned().collect();
    for k in keys {
        if names.contains(&k.as_str()) || own.contains(&k.as_str()) {
            continue;
        }
        let value = table.remove(&k).expect("a key of the table");
        if let Some(name) = names.iter().find(|n| n.eq_ignore_ascii_case(&k)) {
            if table.contains_key(*name) {
                return Err(Error::config(format!("{where_}: {k} repeats {name}")));
            }
            table.insert(name.to_string(), value);
        } else if let Some(name) = own.iter().find(|n| n.eq_ignore_ascii_case(&k)) {
            return Err(Error::config(format!(
                "{where_}: PieceStore's own table {k:?} must be spelled {name:?}"
            )));
        } else {
            tracing::warn!(
                "config: {where_}: ignoring the unknown field {k:?}, as the original Go \
                 piecestore does"
            );
        }
    }
    Ok(())
}

/// Reads the original's tables, `[PieceStore]` and `[PieceStore.Store]`, as the original Go
/// piecestore (with its storage provider's defaults) reads them: field names in any case,
/// unknown fields ignored (with a warning), empty `Storage` and `IAMType` meaning the
/// defaults, `MaxRetries = 0` meaning 5, an integer `MinRetryDelay` counting nanoseconds (0
/// meaning the SP's 1 ns), and a `Shards` of 1 or less (even negative) meaning one store whose
/// `BucketURL` is taken as written. PieceStore's own tables stay strict. Returns whether the
/// bucket URL is to be taken as written.
fn read_as_the_original(table: &mut toml::Table) -> Result<bool> {
    fold_keys(table, "[PieceStore]", ORIGINAL_TOP, OWN_TABLES)?;
    let mut literal = true;
    if let Some(toml::Value::Integer(n)) = table.get("Shards") {
        literal = *n <= 1;
        if *n < 0 {
            table.insert("Shards".into(), toml::Value::Integer(0));
        }
    }
    let Some(toml::Value::Table(store)) = table.get_mut("Store") else {
        return Ok(literal);
    };
    fold_keys(store, "[PieceStore.Store]", STORE_FIELDS, &[])?;
    for field in ["Storage", "IAMType"] {
        if store
            .get(field)
            .is_some_and(|v| v.as_str().is_some_and(str::is_empty))
        {
            store.remove(field);
        }
    }
    match store.get("MaxRetries") {
        Some(toml::Value::Integer(n)) if *n < 0 => {
            return Err(Error::config(format!(
                "[PieceStore.Store]: MaxRetries {n} is negative"
            )));
        }
        Some(toml::Value::Integer(0)) => {
            store.insert("MaxRetries".into(), toml::Value::Integer(5));
        }
        _ => {}
    }
    if let Some(toml::Value::Integer(n)) = store.get("MinRetryDelay") {
        let ns = match *n {
            n if n < 0 => {
                return Err(Error::config(format!(
                    "[PieceStore.Store]: MinRetryDelay {n} is negative"
                )));
            }
            0 => 1,
            n => n,
        };
        store.insert(
            "MinRetryDelay".into(),
            toml::Value::String(format!("{ns}ns")),
        );
    }
    Ok(literal)
}

/// The environment variables a store of `kind` reads its key pair from, in order: the
/// provider's own (`AWS_ACCESS_KEY`, `MINIO_ACCESS_KEY`…), then the standard AWS names. Each is
/// `[access key, secret key, session token]`.
pub(crate) fn credential_env(kind: StorageKind) -> &'static [[&'static str; 3]] {
    const STANDARD: [&str; 3] = [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    ];
    match kind {
        StorageKind::S3 => &[
            ["AWS_ACCESS_KEY", "AWS_SECRET_KEY", "AWS_SESSION_TOKEN"],
            STANDARD,
        ],
        StorageKind::Minio => &[
            [
                "MINIO_ACCESS_KEY",
                "MINIO_SECRET_KEY",
                "MINIO_SESSION_TOKEN",
            ],
            STANDARD,
        ],
        StorageKind::Oss => &[
            [
                "ALIBABA_CLOUD_ACCESS_KEY",
                "ALIBABA_CLOUD_SECRET_KEY",
                "ALIBABA_CLOUD_SESSION_TOKEN",
            ],
            STANDARD,
        ],
        StorageKind::B2 => &[
            ["B2_ACCESS_KEY", "B2_SECRET_KEY", "B2_SESSION_TOKEN"],
            STANDARD,
        ],
        StorageKind::File | StorageKind::Memory | StorageKind::Grpc => &[],
    }
}

/// Reads an environment variable; `None` when unset or empty.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, as an [`EnvLookup`].
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Config {
    /// The layout the store keeps its pieces in: `Layout` if set, else the original's for a
    /// config in the original's layout.
    pub fn layout(&self) -> Layout {
        self.backend.layout.unwrap_or(if self.original_layout {
            Layout::Original
        } else {
            Layout::PieceStore
        })
    }

    /// A configuration for one store at `url` (no environment applied).
    ///
    /// Query parameters set options: `?shards=N`, `&placement=jump`, `&region=...`,
    /// `&endpoint=...`. A plain directory path takes them as a `file://` URL does
    /// (`./data?pack=false`): a `?` always starts the options. Everything else comes from the
    /// defaults.
    pub fn from_url(url: &str) -> Result<Self> {
        let config = Self::parse_url(url)?;
        config.shard_stores()?;
        Ok(config)
    }

    /// [`Config::from_url`] without the sharding checks (options may still fix what they find).
    fn parse_url(url: &str) -> Result<Self> {
        let mut config = Config::default();
        // A plain directory path takes options as `file://` does: `./data?pack=false`.
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (url, None),
        };
        if base.is_empty() {
            // The query as given, but no credential's value (they do not belong there, and
            // an error message is no place to repeat one).
            let shown: Vec<String> = query
                .unwrap_or("")
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if option_field(k).is_some_and(|f| f.secret) => format!("{k}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            // Nor the password of a URL given as a value (`?endpoint=http://u:pw@host`).
            let shown = crate::error::redact_userinfo(&shown.join("&"));
            return Err(Error::config(format!(
                "store \"?{shown}\" has options but no location: write ./data?{shown}, file:///path?… or s3://bucket?…"
            )));
        }
        config.store.bucket_url = base.to_string();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if option_field(k).is_some_and(|f| f.secret) {
                return Err(Error::config(format!(
                    "URL parameter {k:?}: credentials do not belong in a URL; use config.toml or the environment"
                )));
            }
            config
                .set_option(k, OptionValue::from_text(v))
                .map_err(|e| match e {
                    Error::InvalidConfig(m) => Error::config(format!("URL parameter: {m}")),
                    other => other,
                })?;
        }
        Ok(config)
    }

    /// Sets one option by name, as bindings (`PieceStore("s3://b", region="…")`) and URL query
    /// parameters do. Names are the `config.toml` field names of `[PieceStore]`,
    /// `[PieceStore.Store]`, `[PieceStore.Sharding]` and `[PieceStore.Backend]`, in any case and
    /// with or without `_`/`-`: `Shards`, `shards`, `max_retries`, `MaxRetries`,
    /// `request-timeout`… (the list: [`OPTION_NAMES`]). `Store` fields apply to every shard
    /// store. Durations take seconds (integer or fractional) or text such as `"200ms"`.
    ///
    /// ```
    /// use piecestore::config::{Config, OptionValue};
    /// let mut c = Config::from_url("memory://").unwrap();
    /// c.set_option("shards", OptionValue::Int(1)).unwrap();
    /// c.set_option("request_timeout", OptionValue::Float(2.5)).unwrap();
    /// assert_eq!(c.backend.request_timeout.as_millis(), 2500);
    /// assert!(c.set_option("shardz", OptionValue::Int(1)).is_err());
    /// ```
    pub fn set_option(&mut self, name: &str, value: OptionValue) -> Result<()> {
        let field = option_field(name).ok_or_else(|| unknown_option(name))?;
        let shown = if field.secret {
            "\"***\"".to_string()
        } else {
            value.to_string()
        };
        // The message names the option as the caller spelled it and what it accepts; the
        // parser's own wording ("expected u32") is left out unless it says more than that.
        let accepts = option_accepts(field.name);
        let bad = |e: String| {
            let detail = if e.starts_with("invalid type") || e.contains("expected") {
                String::new()
            } else {
                format!(" ({e})")
            };
            Error::config(format!(
                "option {name}: {shown} is not valid{detail}; {name} takes {accepts}"
            ))
        };
        let value = match (field.name, value) {
            // `conditional_writes=true` is "on", as a boolean reads.
            ("ConditionalWrites", OptionValue::Bool(b)) => {
                OptionValue::Str(if b { "on" } else { "off" }.into())
            }
            (_, v) => v,
        };
        let v = value.into_toml();
        fn de<T: serde::de::DeserializeOwned>(v: toml::Value) -> std::result::Result<T, String> {
            T::deserialize(v).map_err(|e| e.to_string().trim_end().to_string())
        }
        fn delay(v: toml::Value) -> std::result::Result<Duration, String> {
            de_delay(v).map_err(|e| e.to_string().trim_end().to_string())
        }
        fn size(v: toml::Value) -> std::result::Result<u64, String> {
            de_size(v).map_err(|e| e.to_string().trim_end().to_string())
        }
        let stores = std::iter::once(&mut self.store).chain(self.shard_stores.iter_mut());
        match field.name {
            "Shards" => self.shards = de(v).map_err(bad)?,
            "Placement" => self.sharding.placement = de(v).map_err(bad)?,
            "Region" => self.backend.region = Some(de(v).map_err(bad)?),
            "Endpoint" => self.backend.endpoint = Some(de(v).map_err(bad)?),
            "MaxRetryDelay" => self.backend.max_retry_delay = delay(v).map_err(bad)?,
            "RetryTimeout" => self.backend.retry_timeout = delay(v).map_err(bad)?,
            "RequestTimeout" => self.backend.request_timeout = delay(v).map_err(bad)?,
            "ConnectTimeout" => self.backend.connect_timeout = delay(v).map_err(bad)?,
            "GetTimeout" => self.backend.get_timeout = delay(v).map_err(bad)?,
            "PutTimeout" => self.backend.put_timeout = delay(v).map_err(bad)?,
            "DeleteTimeout" => self.backend.delete_timeout = delay(v).map_err(bad)?,
            "ListTimeout" => self.backend.list_timeout = delay(v).map_err(bad)?,
            "ConditionalWrites" => self.backend.conditional_writes = de(v).map_err(bad)?,
            "Fsync" => self.backend.fsync = de(v).map_err(bad)?,
            "CheckBucket" => self.backend.check_bucket = de(v).map_err(bad)?,
            "UnsignedPayload" => self.backend.unsigned_payload = de(v).map_err(bad)?,
            "AllowUnverified" => self.backend.allow_unverified = Some(de(v).map_err(bad)?),
            "Layout" => self.backend.layout = Some(de(v).map_err(bad)?),
            "CreateBucket" => self.backend.create_bucket = Some(de(v).map_err(bad)?),
            "Metrics" => self.backend.metrics = de(v).map_err(bad)?,
            "Pack" => self.pack.enabled = Some(de(v).map_err(bad)?),
            "PackThreshold" => self.pack.threshold = size(v).map_err(bad)?,
            "PackTargetSize" => self.pack.target_size = size(v).map_err(bad)?,
            "PackMaxAge" => self.pack.max_age = delay(v).map_err(bad)?,
            "GcGarbageRatio" => {
                // A URL gives text ("0.3"); a binding or TOML a number.
                let r = match &v {
                    toml::Value::String(t) => t.trim().parse::<f64>().map_err(|e| e.to_string()),
                    _ => de::<f64>(v.clone()),
                };
                self.pack.garbage_ratio = r.map_err(bad)?
            }
            "GcGrace" => self.pack.grace = delay(v).map_err(bad)?,
            "GcInterval" => self.pack.gc_interval = Some(delay(v).map_err(bad)?),
            "IndexDir" => self.pack.index_dir = Some(de(v).map_err(bad)?),
            "CacheMemory" => self.cache.memory = Some(size(v).map_err(bad)?),
            "CacheDisk" => self.cache.disk = Some(de(v).map_err(bad)?),
            "CacheDiskSize" => self.cache.disk_size = Some(size(v).map_err(bad)?),
            "CacheAdmit" => self.cache.admit = de(v).map_err(bad)?,
            "CacheMaxPiece" => self.cache.max_piece = Some(size(v).map_err(bad)?),
            "IndexUrl" => {
                self.index.url =
                    Secret::new(de::<String>(v).map_err(|_| bad("not a string".into()))?)
            }
            "BucketURL" => self.store.bucket_url = de(v).map_err(bad)?,
            "Storage" => {
                let kind: StorageKind = de(v).map_err(bad)?;
                stores.for_each(|s| s.storage = Some(kind));
            }
            "AccessKey" | "SecretKey" | "SessionToken" => {
                let secret = Secret::new(de::<String>(v).map_err(|_| bad("not a string".into()))?);
                for s in stores {
                    match field.name {
                        "AccessKey" => s.access_key = secret.clone(),
                        "SecretKey" => s.secret_key = secret.clone(),
                        _ => s.session_token = secret.clone(),
                    }
                }
            }
            "NoSignRequest" => {
                let b: bool = de(v).map_err(bad)?;
                stores.for_each(|s| s.no_sign_request = b);
            }
            "MaxRetries" => {
                let n: u32 = de(v).map_err(bad)?;
                stores.for_each(|s| s.max_retries = n);
            }
            "MinRetryDelay" => {
                let d = delay(v).map_err(bad)?;
                stores.for_each(|s| s.min_retry_delay = Some(d));
            }
            "TLSInsecureSkipVerify" => {
                let b: bool = de(v).map_err(bad)?;
                stores.for_each(|s| s.tls_insecure_skip_verify = b);
            }
            "IAMType" => {
                let t: IamType = de(v).map_err(bad)?;
                stores.for_each(|s| s.iam_type = t);
            }
            other => unreachable!("option {other} has a field but no setter"),
        }
        Ok(())
    }

    /// A store from `spec` (as [`Config::load`]: a URL or a `.toml` path), then `options`
    /// ([`Config::set_option`]), then the environment. What every binding's constructor calls.
    pub fn load_with<'a>(
        spec: &str,
        options: impl IntoIterator<Item = (&'a str, OptionValue)>,
    ) -> Result<Self> {
        Self::from_spec(spec)?.with_options_and_env(options)
    }

    /// A URL, or a path to a `.toml` file (no environment applied).
    ///
    /// The sharding rules are checked by [`Config::with_options_and_env`] (or at open), so that
    /// options can still complete the config: `from_spec("/data/s-%d")` then `shards = 4`.
    pub fn from_spec(spec: &str) -> Result<Self> {
        if spec.ends_with(".toml") && !spec.contains("://") {
            Self::read_file(spec.as_ref())
        } else {
            Self::parse_url(spec)
        }
    }

    /// Applies `options` ([`Config::set_option`]), then the environment ([`Config::apply_env`]).
    pub fn with_options_and_env<'a>(
        mut self,
        options: impl IntoIterator<Item = (&'a str, OptionValue)>,
    ) -> Result<Self> {
        for (name, value) in options {
            self.set_option(name, value)?;
        }
        self.apply_env(&process_env)?;
        Ok(self)
    }

    /// A configuration from a parsed TOML table: either a whole document with a `PieceStore`
    /// table, or the `[PieceStore]` table itself (what a binding builds from a dict or object).
    /// Like [`Config::from_spec`], the sharding rules are checked later.
    ///
    /// ```
    /// let t: toml::Table = toml::from_str("Shards = 2\n[Store]\nBucketURL = \"/tmp/p-%d\"").unwrap();
    /// let c = piecestore::Config::from_table(t).unwrap();
    /// assert_eq!(c.shards, 2);
    /// ```
    pub fn from_table(mut table: toml::Table) -> Result<Self> {
        let inner = match table.remove("PieceStore") {
            Some(toml::Value::Table(t)) => t,
            Some(_) => return Err(Error::config("PieceStore must be a table")),
            None => table,
        };
        Self::from_inner_table(inner)
    }

    /// Parses the `[PieceStore]` table of a TOML document (no environment applied).
    ///
    /// Other top-level tables are ignored, so a Greenfield SP's whole `config.toml` can be
    /// given; unknown fields inside `[PieceStore]` are an error that names them.
    pub fn from_toml(text: &str) -> Result<Self> {
        let config = Self::parse_toml(text)?;
        config.shard_stores()?;
        Ok(config)
    }

    fn parse_toml(text: &str) -> Result<Self> {
        let mut file: toml::Table = toml::from_str(text)
            .map_err(|e| Error::config(format!("config.toml: {}", e.to_string().trim_end())))?;
        match file.remove("PieceStore") {
            Some(toml::Value::Table(t)) => Self::from_inner_table(t).map_err(|e| match e {
                Error::InvalidConfig(m) => Error::config(format!("config.toml: [PieceStore]: {m}")),
                other => other,
            }),
            Some(_) => Err(Error::config("config.toml: PieceStore must be a table")),
            None => Err(Error::config("config.toml has no [PieceStore] table")),
        }
    }

    /// The `[PieceStore]` table's contents: the original's tables read as the original reads
    /// them ([`read_as_the_original`]), PieceStore's own strictly; noting whether the config is
    /// in the original's layout.
    fn from_inner_table(mut table: toml::Table) -> Result<Self> {
        let literal = read_as_the_original(&mut table)?;
        let original = is_original_layout(&table);
        let mut config = Config::deserialize(table)
            .map_err(|e| Error::config(e.to_string().trim_end().to_string()))?;
        config.original_layout = original;
        config.literal_bucket_url = literal;
        Ok(config)
    }

    /// Whether the file at `path` is meant for PieceStore: TOML with a `[PieceStore]` table (or
    /// text that mentions one but does not parse, so that its error is shown rather than the
    /// file skipped). What the CLI asks of a `./config.toml` it was not pointed at: another
    /// tool's `config.toml` (a Hugo site's) is not PieceStore's.
    pub fn is_piecestore_file(path: impl AsRef<Path>) -> bool {
        let Ok(text) = std::fs::read_to_string(path) else {
            return false;
        };
        match toml::from_str::<toml::Table>(&text) {
            Ok(t) => t.contains_key("PieceStore"),
            Err(_) => text.contains("[PieceStore"),
        }
    }

    /// Reads and parses a TOML file (no environment applied).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let config = Self::read_file(path.as_ref())?;
        config.shard_stores()?;
        Ok(config)
    }

    fn read_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::config(format!("cannot read {}: {e}", path.display())))?;
        Self::parse_toml(&text).map_err(|e| match e {
            Error::InvalidConfig(m) => Error::config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// What the CLI and every binding call: a path to a `.toml` file or a store URL, then the
    /// process environment ([`Config::apply_env`]).
    pub fn load(spec: &str) -> Result<Self> {
        Self::load_with(spec, [])
    }

    /// A `config.toml` at `path` (any file name), then the process environment.
    pub fn load_file(path: impl AsRef<Path>) -> Result<Self> {
        let mut config = Self::from_file(path)?;
        config.apply_env(&process_env)?;
        Ok(config)
    }

    /// Applies environment overrides: `BUCKET_URL` replaces `Store.BucketURL`,
    /// `PIECESTORE_INDEX_URL` gives `[PieceStore.Index] Url` when the config has none, and credentials,
    /// region and endpoint that the config leaves empty are taken from the provider's variables
    /// (see `docs/config.md`).
    pub fn apply_env(&mut self, env: EnvLookup<'_>) -> Result<()> {
        if let Some(url) = env("BUCKET_URL") {
            self.store.bucket_url = url;
        }
        if self.index.url.is_empty()
            && let Some(url) = env("PIECESTORE_INDEX_URL")
        {
            self.index.url = Secret::new(url);
        }
        if self.backend.endpoint.is_none() {
            self.backend.endpoint = env("AWS_ENDPOINT_URL");
        }
        let region_override = self.backend.region.clone();
        for store in std::iter::once(&mut self.store).chain(self.shard_stores.iter_mut()) {
            store.fill_credentials_from_env(env);
        }
        if region_override.is_none() {
            let kind = self.store.storage_kind();
            let vars: &[&str] = match kind {
                StorageKind::Minio => &["MINIO_REGION", "AWS_REGION"],
                StorageKind::Oss => &["ALIBABA_CLOUD_OSS_REGION"],
                StorageKind::S3 | StorageKind::B2 => &["AWS_REGION", "AWS_DEFAULT_REGION"],
                _ => &[],
            };
            self.backend.region = vars.iter().find_map(|v| env(v));
        }
        self.apply_aws_profile(env);
        self.shard_stores()?;
        Ok(())
    }

    /// For an `s3://` bucket, the AWS profile's `region` and `endpoint_url` where the config,
    /// the options and the environment give none (`AWS_PROFILE`, else `default`, in
    /// `~/.aws/config`; see `docs/config.md`). The profile's credentials are read when the
    /// store is built, after the config's and the environment's keys.
    fn apply_aws_profile(&mut self, env: EnvLookup<'_>) {
        let s3_urls = std::iter::once(&self.store)
            .chain(&self.shard_stores)
            .all(|s| s.storage_kind() == StorageKind::S3 && s.bucket_url.starts_with("s3://"));
        if !s3_urls || (self.backend.region.is_some() && self.backend.endpoint.is_some()) {
            return;
        }
        let profile = match crate::backend::aws_profile::load(env) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!("not reading the AWS profile's region and endpoint: {e}");
                return;
            }
        };
        if self.backend.region.is_none() {
            self.backend.region = profile.region;
        }
        if self.backend.endpoint.is_none() {
            self.backend.endpoint = profile.endpoint_url;
        }
    }

    /// The stores, one per shard, with `%d` expanded; checks the sharding rules.
    pub fn shard_stores(&self) -> Result<Vec<StoreConfig>> {
        if self.shards > MAX_SHARDS {
            return Err(Error::config(format!(
                "Shards: too many shards: {} (at most {MAX_SHARDS})",
                self.shards
            )));
        }
        if !self.shard_stores.is_empty() {
            if self.shards > 1 && self.shards as usize != self.shard_stores.len() {
                return Err(Error::config(format!(
                    "Shards is {} but {} ShardStores are given",
                    self.shards,
                    self.shard_stores.len()
                )));
            }
            if self.shard_stores.len() > MAX_SHARDS as usize {
                return Err(Error::config(format!(
                    "ShardStores: more than {MAX_SHARDS} shards"
                )));
            }
            return Ok(self.shard_stores.clone());
        }
        let url = self.store.url();
        if self.shards <= 1 {
            if url.contains("%d") && !self.literal_bucket_url {
                return Err(Error::config(format!(
                    "BucketURL {:?} contains %d but Shards is {}: set Shards to the number of buckets",
                    crate::error::redact_url(url),
                    self.shards
                )));
            }
            return Ok(vec![self.store.clone()]);
        }
        if url.matches("%d").count() != 1 {
            return Err(Error::config(format!(
                "BucketURL {:?} must contain %d exactly once when Shards is {}",
                crate::error::redact_url(url),
                self.shards
            )));
        }
        Ok((0..self.shards)
            .map(|i| StoreConfig {
                bucket_url: url.replace("%d", &i.to_string()),
                ..self.store.clone()
            })
            .collect())
    }
}

impl StoreConfig {
    fn fill_credentials_from_env(&mut self, env: EnvLookup<'_>) {
        if !self.access_key.is_empty() || !self.secret_key.is_empty() {
            return; // the config's own keys win, whole
        }
        // Take a key pair from the provider's variables, else from the standard ones: never a
        // key from one and a secret from the other.
        for names in credential_env(self.storage_kind()) {
            if let Some(ak) = env(names[0]) {
                self.access_key = Secret::new(ak);
                self.secret_key = Secret::new(env(names[1]).unwrap_or_default());
                if self.session_token.is_empty() {
                    self.session_token = Secret::new(env(names[2]).unwrap_or_default());
                }
                break;
            }
        }
        if self.access_key.expose() == "NoSignRequest" {
            // The original's spelling of an anonymous client.
            self.no_sign_request = true;
            self.access_key = Secret::default();
            self.secret_key = Secret::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::ErrorKind;

    #[test]
    fn every_option_has_a_kind_of_its_own_not_the_fallback() {
        // The options whose value is free text; a new option must be added to the table
        // (option_spec), or here if it really is free text.
        const FREE_TEXT: &[&str] = &[
            "BucketURL",
            "AccessKey",
            "SecretKey",
            "SessionToken",
            "Region",
            "Endpoint",
            "IndexUrl",
        ];
        for name in OPTION_NAMES {
            let (kind, accepts) = option_spec(name);
            let fallback = (kind, accepts) == (OptionKind::Text, "text");
            assert_eq!(
                fallback,
                FREE_TEXT.contains(name),
                "{name}: {kind:?}, {accepts}"
            );
            assert_eq!(option_kind(&name.to_ascii_lowercase()), Some(kind));
        }
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn pack_options_from_toml_and_url() {
        let c = Config::from_toml(
            "[PieceStore.Pack]\nEnabled = true\nThreshold = \"512KiB\"\nTargetSize = 16777216\nMaxAge = \"20ms\"\nGarbageRatio = 0.3\nGrace = \"0s\"\n",
        )
        .unwrap();
        assert_eq!(c.pack.enabled, Some(true));
        assert_eq!(c.pack.threshold, 512 << 10);
        assert_eq!(c.pack.target_size, 16 << 20);
        assert_eq!(c.pack.max_age, Duration::from_millis(20));
        assert_eq!(c.pack.grace, Duration::ZERO);
        let u = Config::from_url("memory://?pack=true&gc_garbage_ratio=0.25&pack_threshold=4KiB")
            .unwrap();
        assert_eq!(u.pack.garbage_ratio, 0.25);
        assert_eq!(u.pack.threshold, 4096);
        assert!(Config::from_url("memory://?pack_threshold=4XB").is_err());
        assert!(
            Config::from_toml("[PieceStore.Pack]\nThreshold = \"2GiB\"\n")
                .unwrap()
                .pack
                .validate()
                .is_err()
        );
        assert!(
            Config::from_toml("[PieceStore.Pack]\nGarbageRatio = 1.5\n")
                .unwrap()
                .pack
                .validate()
                .is_err()
        );
    }

    #[test]
    fn serve_table_parses_strictly_and_keeps_the_original_layout() {
        let c = Config::from_toml(
            r#"
            [PieceStore]
            Shards = 0
            [PieceStore.Store]
            BucketURL = "/srv/pieces"
            [PieceStore.Serve]
            Listen = "0.0.0.0:9820"
            MaxObjectSize = "64MiB"
            HeaderTimeout = "2s"
            [[PieceStore.Serve.Keys]]
            AccessKey = "ak"
            SecretKey = "a-secret-to-keep"
            [[PieceStore.Serve.Buckets]]
            Name = "public"
            Store = "file:///srv/public"
            PublicRead = true
            "#,
        )
        .unwrap();
        assert!(
            c.original_layout,
            "a Serve table does not change how the store reads"
        );
        assert_eq!(c.serve.listen.as_deref(), Some("0.0.0.0:9820"));
        assert_eq!(c.serve.max_object_size, 64 << 20);
        assert_eq!(c.serve.header_timeout, Duration::from_secs(2));
        assert_eq!(c.serve.body_timeout, Duration::from_secs(30), "default");
        assert_eq!(c.serve.concurrency, 256, "default");
        assert_eq!(c.serve.keys[0].secret_key.expose(), "a-secret-to-keep");
        assert!(c.serve.buckets[0].public_read && !c.serve.buckets[0].allow_overwrite);
        assert!(!format!("{c:?}").contains("a-secret-to-keep"));
        let e = Config::from_toml("[PieceStore.Serve]\nListn = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("Listn"), "{e}");
        let e = Config::from_toml("[PieceStore.Serve]\nMaxObjectSize = \"big\"\n").unwrap_err();
        assert!(e.to_string().contains("big"), "{e}");
    }

    #[test]
    fn original_layout_parses_with_defaults() {
        let c = Config::from_toml(
            r#"
            [Chain]
            ChainID = "greenfield_1017-1"
            [PieceStore]
            Shards = 0
            [PieceStore.Store]
            Storage = "s3"
            BucketURL = "https://s3.us-east-1.amazonaws.com/my-bucket"
            MaxRetries = 3
            MinRetryDelay = 2000000000
            TLSInsecureSkipVerify = false
            IAMType = "AKSK"
            "#,
        )
        .unwrap();
        assert!(c.original_layout);
        assert_eq!(c.store.storage, Some(StorageKind::S3));
        assert_eq!(c.store.max_retries, 3);
        // An integer is nanoseconds, as in the original.
        assert_eq!(c.store.min_retry_delay, Some(Duration::from_secs(2)));
        assert_eq!(c.store.iam_type, IamType::Aksk);
        let d = Config::from_toml("[PieceStore]\n").unwrap();
        assert_eq!(d.store.storage_kind(), StorageKind::File);
        assert_eq!(d.store.url(), "./data");
        assert_eq!(d.store.max_retries, 5);
        assert_eq!(d.store.iam_type, IamType::Sa);
    }

    #[test]
    fn unknown_and_invalid_fields_are_named() {
        for (toml, needle) in [
            // PieceStore's own tables are strict (the original's ignore unknown fields).
            ("[PieceStore.Backend]\nRegon = \"x\"\n", "Regon"),
            ("[PieceStore.pack]\nThreshold = 1\n", "Pack"),
            ("[PieceStore.Store]\nStorage = \"ftp\"\n", "Storage"),
            ("[PieceStore.Store]\nIAMType = \"KEY\"\n", "IAMType"),
            ("[PieceStore.Store]\nMinRetryDelay = \"soon\"\n", "soon"),
            (
                "[PieceStore.Backend]\nConditionalWrites = \"maybe\"\n",
                "ConditionalWrites",
            ),
            ("[PieceStore.Sharding]\nPlacement = \"ring\"\n", "Placement"),
            (
                "[PieceStore]\nShards = 300\n[PieceStore.Store]\nBucketURL=\"b-%d\"\n",
                "Shards",
            ),
            (
                "[PieceStore]\nShards = 4\n[PieceStore.Store]\nBucketURL = \"memory://\"\n",
                "%d",
            ),
            ("[Other]\nx = 1\n", "[PieceStore]"),
            ("[PieceStore.Store]\nMaxRetries = -1\n", "MaxRetries"),
            (
                "[PieceStore.Store]\nTLSInsecureSkipVerify = \"yes\"\n",
                "TLSInsecureSkipVerify",
            ),
            ("[PieceStore.Store]\nNoSignRequest = 1\n", "NoSignRequest"),
            ("[PieceStore.Store]\nBucketURL = 5\n", "BucketURL"),
            ("[PieceStore]\nShards = \"4\"\n", "Shards"),
            (
                "[PieceStore.Backend]\nRequestTimeout = \"fast\"\n",
                "RequestTimeout",
            ),
        ] {
            let e = Config::from_toml(toml).expect_err(toml);
            assert_eq!(e.kind(), ErrorKind::InvalidConfig);
            assert!(e.to_string().contains(needle), "{toml:?} -> {e}");
        }
    }

    #[test]
    fn per_operation_timeouts_are_off_unless_set() {
        let c = Config::from_toml("[PieceStore.Store]\nBucketURL = \"memory://\"\n").unwrap();
        assert!(c.backend.get_timeout.is_zero() && c.backend.put_timeout.is_zero());
        assert!(c.backend.delete_timeout.is_zero() && c.backend.list_timeout.is_zero());
        let c = Config::from_toml(
            "[PieceStore.Store]\nBucketURL = \"memory://\"\n[PieceStore.Backend]\n\
             GetTimeout = \"250ms\"\nPutTimeout = 3\nDeleteTimeout = \"1s\"\nListTimeout = 0.5\n",
        )
        .unwrap();
        assert_eq!(c.backend.get_timeout, Duration::from_millis(250));
        assert_eq!(c.backend.put_timeout, Duration::from_secs(3));
        assert_eq!(c.backend.delete_timeout, Duration::from_secs(1));
        assert_eq!(c.backend.list_timeout, Duration::from_millis(500));
        let c = Config::from_url("memory://?get_timeout=2s&list-timeout=100ms").unwrap();
        assert_eq!(c.backend.get_timeout, Duration::from_secs(2));
        assert_eq!(c.backend.list_timeout, Duration::from_millis(100));
        let e = Config::from_url("memory://?put_timeout=soon").unwrap_err();
        assert!(
            e.to_string().contains("put_timeout takes a duration"),
            "{e}"
        );
    }

    #[test]
    fn shards_expand_the_template_from_zero() {
        let c = Config::from_url("http://127.0.0.1:9000/b-%d?shards=3&placement=jump").unwrap();
        let s = c.shard_stores().unwrap();
        let urls: Vec<_> = s.iter().map(|s| s.bucket_url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "http://127.0.0.1:9000/b-0",
                "http://127.0.0.1:9000/b-1",
                "http://127.0.0.1:9000/b-2"
            ]
        );
        assert_eq!(c.sharding.placement, Placement::Jump);
        assert!(Config::from_url("memory://?color=red").is_err());
        assert!(
            Config::from_url("http://h/b-%d").is_err(),
            "%d without shards"
        );
    }

    #[test]
    fn env_overrides_and_credential_precedence() {
        let mut c = Config::from_url("s3://bucket").unwrap();
        c.apply_env(&env_of(&[
            ("AWS_ACCESS_KEY", "AKORIG"),
            ("AWS_SECRET_KEY", "sorig"),
            ("AWS_ACCESS_KEY_ID", "AKSTD"),
            ("AWS_SECRET_ACCESS_KEY", "sstd"),
            ("AWS_REGION", "eu-west-1"),
        ]))
        .unwrap();
        assert_eq!(c.store.access_key.expose(), "AKORIG");
        assert_eq!(c.store.secret_key.expose(), "sorig");
        assert_eq!(c.backend.region.as_deref(), Some("eu-west-1"));

        let mut c = Config::from_url("http://127.0.0.1:9000/b").unwrap();
        c.apply_env(&env_of(&[
            ("MINIO_ACCESS_KEY", "mk"),
            ("MINIO_SECRET_KEY", "ms"),
            ("MINIO_REGION", "local"),
            ("BUCKET_URL", "http://127.0.0.1:9001/other"),
        ]))
        .unwrap();
        assert_eq!(c.store.bucket_url, "http://127.0.0.1:9001/other");
        assert_eq!(c.store.access_key.expose(), "mk");
        assert_eq!(c.backend.region.as_deref(), Some("local"));

        let mut c = Config::from_url("s3://b").unwrap();
        c.apply_env(&env_of(&[("AWS_ACCESS_KEY", "NoSignRequest")]))
            .unwrap();
        assert!(c.store.no_sign_request);
        assert!(c.store.access_key.is_empty());
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let mut c = Config::from_url("s3://bucket").unwrap();
        c.apply_env(&env_of(&[
            ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "s3cr3tv4lue"),
        ]))
        .unwrap();
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("AKIAEXAMPLE") && !dbg.contains("s3cr3tv4lue"),
            "{dbg}"
        );
        assert!(dbg.contains("***"));
    }

    /// Found by the `config` fuzz target: a URL is checked when the store opens, so until then
    /// `Debug` showed it as given, the password of a `user:password@` included.
    #[test]
    fn a_urls_password_never_shows_in_debug() {
        for url in [
            "s3://AKIAEXAMPLE:pw-0123456789abc@bucket/prefix",
            "http://minio:pw-0123456789abc@127.0.0.1:9000/pieces?region=local",
            "ftp://user:pw-0123456789abc@host/b",
            "://'\0,88\t:[=pw-0123456789abc,,,@88\t:[=[s5",
        ] {
            let c = Config::from_url(url).unwrap();
            let dbg = format!("{c:?}");
            assert!(!dbg.contains("pw-0123456789abc"), "{url}: {dbg}");
            assert_eq!(c.store.bucket_url, url.split('?').next().unwrap());
        }
        // What is not a secret is still shown.
        let c = Config::from_url("s3://bucket/prefix").unwrap();
        assert!(format!("{c:?}").contains("bucket_url: \"s3://bucket/prefix\""));
    }

    /// Found by the `config` fuzz target: a store spec of options only was quoted whole in
    /// its error, credentials included.
    #[test]
    fn a_spec_without_a_location_does_not_repeat_its_credentials() {
        // Found by the fuzzer too: a URL's password in an option's value.
        let e = Config::from_url("?endpoint=http://u:hunter2hunter2@h/&shards=2")
            .unwrap_err()
            .to_string();
        assert!(
            !e.contains("hunter2hunter2") && e.contains("http://***@h/"),
            "{e}"
        );
        for spec in [
            "?secret_key=hunter2hunter2&shards=2",
            "?SessionToken=hunter2hunter2",
        ] {
            let e = Config::from_url(spec).unwrap_err().to_string();
            assert!(!e.contains("hunter2hunter2"), "{e}");
            assert!(e.contains("no location") && e.contains("=***"), "{e}");
        }
    }

    #[test]
    fn unknown_options_suggest_the_nearest_name_in_the_callers_spelling() {
        let msg = |name: &str| unknown_option(name).to_string();
        assert!(msg("max_retrys").contains("did you mean \"max_retries\"?"));
        assert!(msg("MaxRetrys").contains("did you mean \"MaxRetries\"?"));
        assert!(msg("request-timout").contains("did you mean \"request-timeout\"?"));
        assert!(msg("tls_insecure_skip_verfy").contains("\"tls_insecure_skip_verify\""));
        assert!(msg("bucketurl").contains("\"bucket_url\""));
        // Nothing near: the list, not a wild guess.
        let far = msg("zzzzzz");
        assert!(
            !far.contains("did you mean") && far.contains("MaxRetries"),
            "{far}"
        );
        // Skipping names too short or too long to be near changes no answer.
        for name in [
            "",
            "m",
            "tls",
            "maxretr",
            "max_retries_",
            "gc",
            "gcgarbage",
            "garbageratio",
            "bucket_url_and_then_some",
            "x".repeat(300).as_str(),
            "iam",
            "pack_target",
        ] {
            let folded = fold_option_name(name);
            let best = OPTION_NAMES
                .iter()
                .map(|n| {
                    let score =
                        strsim::normalized_damerau_levenshtein(&folded, &fold_option_name(n));
                    (score, *n)
                })
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .filter(|(score, _)| *score >= 0.6);
            let want = match best {
                Some((_, n)) => format!("did you mean {:?}?", spelled_like(n, name)),
                None => "every option: docs/config.md; in config.toml spelling".to_string(),
            };
            assert!(msg(name).contains(&want), "{name}: {}", msg(name));
        }
        assert_eq!(spelled_like("IAMType", "x_y"), "iam_type");
        assert_eq!(spelled_like("GcGarbageRatio", "a-b"), "gc-garbage-ratio");
        assert_eq!(spelled_like("BucketURL", "Foo"), "BucketURL");
    }

    #[test]
    fn a_plain_path_takes_options_like_a_file_url() {
        let c = Config::from_url("./data?pack=false&shards=0").unwrap();
        assert_eq!(c.store.bucket_url, "./data");
        assert_eq!(c.pack.enabled, Some(false));
        let e = Config::from_url("./data?pak=false").unwrap_err();
        assert!(e.to_string().contains("did you mean \"pack\"?"), "{e}");
        assert!(Config::from_url("?pack=false").is_err());
    }

    #[test]
    fn options_by_name_and_in_urls() {
        let c = Config::from_url(
            "http://127.0.0.1:9000/b-%d?shards=4&placement=jump&max_retries=2&request_timeout=1500ms&fsync=false",
        )
        .unwrap();
        assert_eq!(c.shards, 4);
        assert_eq!(c.sharding.placement, Placement::Jump);
        assert_eq!(c.store.max_retries, 2);
        assert_eq!(c.backend.request_timeout, Duration::from_millis(1500));
        assert!(!c.backend.fsync);
        // credentials never travel in a URL, and the message does not echo them
        let e = Config::from_url("s3://b?secret_key=hunter2").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.to_string().contains("credentials"), "{e}");
        let e = Config::from_url("s3://b?shardz=1").unwrap_err();
        assert!(e.to_string().contains("shardz"), "{e}");

        let mut c = Config::from_url("s3://b").unwrap();
        c.set_option("SecretKey", OptionValue::Int(5)).unwrap_err();
        c.set_option("secret-key", OptionValue::Str("hunter2".into()))
            .unwrap();
        assert_eq!(c.store.secret_key.expose(), "hunter2");
        let e = c
            .set_option("shards", OptionValue::Str("four".into()))
            .unwrap_err();
        assert!(
            e.to_string().contains("shards") && e.to_string().contains("whole number"),
            "{e}"
        );
        c.set_option("connect_timeout", OptionValue::Int(3))
            .unwrap();
        assert_eq!(c.backend.connect_timeout, Duration::from_secs(3));
        assert!(
            c.set_option("retry_timeout", OptionValue::Float(-1.0))
                .is_err()
        );
        // every listed name has a setter
        for name in OPTION_NAMES {
            let _ = Config::default().set_option(name, OptionValue::Bool(true));
        }
    }
}

#[cfg(test)]
mod peers_tests {
    use super::*;

    #[test]
    fn a_peers_table_is_read_and_keeps_the_originals_layout() {
        let c = Config::from_toml(
            r#"
[PieceStore]
Shards = 0
[PieceStore.Store]
Storage = "file"
BucketURL = "/srv/pieces"
[PieceStore.Peers]
Listen = ["/ip4/0.0.0.0/tcp/9830"]
Bootstrap = ["/ip4/10.0.0.7/tcp/9830/p2p/12D3KooWLxvDtBoyEpxiwo5WYQDhLqGeTiSLYgCuBTW72N9sQSeC"]
Allow = ["*"]
Timeout = "5s"
"#,
        )
        .expect("config");
        assert!(c.original_layout, "a Peers table changed the layout");
        assert_eq!(c.peers.listen, ["/ip4/0.0.0.0/tcp/9830"]);
        assert_eq!(c.peers.bootstrap.len(), 1);
        assert_eq!(c.peers.allow, ["*"]);
        assert_eq!(c.peers.timeout, Duration::from_secs(5));
        assert!(c.peers.has_peers());
        assert!(!Config::default().peers.has_peers());

        let err = Config::from_toml("[PieceStore.Peers]\nListn = []\n").unwrap_err();
        assert!(err.to_string().contains("Listn"), "{err}");
    }
}
