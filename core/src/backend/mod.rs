//! Backends: an `object_store` store built from a [`StoreConfig`], and the piece-level
//! operations on it (checksum placement, create-only puts, error mapping).

pub(crate) mod aws_profile;
pub(crate) mod grpc;
mod local;
use local::Walked;
mod memory;
mod s3;
mod streamed;
mod url;

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    Attribute, AttributeValue, Attributes, GetOptions, ObjectStore, ObjectStoreExt, PutMode,
    PutOptions, PutPayload,
};
use tokio::sync::OnceCell;

use self::local::FileFormat;
use self::s3::Diagnosis;
pub(crate) use self::streamed::CHUNK as STREAM_CHUNK;
pub use self::url::{Location, S3Location};
use crate::checksum;
use crate::config::{BackendOptions, ConditionalWrites, Layout, StorageKind, StoreConfig};
pub use crate::error::redact_url;
use crate::error::{Error, Redactor, Result};
use crate::key::RESERVED_PREFIX;
use crate::reserved::{INDEX_FILE, TOKEN_FILE};

/// What a piece's metadata says: its size and, if it carries one, its checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PieceMeta {
    /// The piece key.
    pub key: String,
    /// The piece's size in bytes (without any checksum trailer).
    pub size: u64,
    /// The piece's CRC32C; `None` for a raw piece written by another tool (unverified).
    pub crc32c: Option<u32>,
    /// When the piece was stored, as the backend reports it.
    pub last_modified: SystemTime,
}

impl PieceMeta {
    /// True when the piece carries no checksum, so reads of it cannot be verified.
    pub fn unverified(&self) -> bool {
        self.crc32c.is_none()
    }
}

/// What kind of store a backend is; everything that differs between kinds follows from it.
#[derive(Debug)]
enum Kind {
    /// In process memory: checksum beside the bytes (shown as metadata through the raw
    /// store), sorted listings; puts, reads, heads and deletes of pieces on their map entry
    /// ([`memory`]).
    Memory(Arc<memory::Memory>),
    /// A local directory, one file per piece in either layout ([`local`]): unsorted listings;
    /// puts, reads and heads of its own, each in one blocking task.
    File {
        fs: Arc<LocalFileSystem>,
        format: FileFormat,
    },
    /// An S3-compatible bucket: checksum in metadata, sorted listings.
    S3 {
        /// Set when a missing bucket may be created at open (signed requests, `CreateBucket`).
        creator: Option<Box<BucketCreator>>,
        /// The bucket's name, for a `BucketNotFound` error.
        bucket: String,
    },
    /// A bucket of a remote `piecestore serve` over gRPC: checksum from the server, listings
    /// in key order by string prefix.
    Grpc(grpc::GrpcStore),
}

/// What creating a missing bucket needs.
#[derive(Debug)]
struct BucketCreator {
    s3: Arc<AmazonS3>,
    location: S3Location,
    opts: BackendOptions,
    /// The empty object the original's bucket check leaves (see [`Backend::build`]).
    empty_object: Option<String>,
}

impl Kind {
    /// Whether listings come back in key order, so a prefix listing may stop early.
    fn sorted_listing(&self) -> bool {
        !matches!(self, Kind::File { .. })
    }
}

/// One backend store (one shard).
pub(crate) struct Backend {
    label: String,
    store: Arc<dyn ObjectStore>,
    kind: Kind,
    conditional: ConditionalWrites,
    /// fsync local files and their directories before a put returns.
    fsync: bool,
    /// Whether create-only puts are honoured; probed once on first write in `Auto` mode.
    honours_create: OnceCell<bool>,
    redactor: Redactor,
    /// Per-operation deadlines (`GetTimeout`, ...); all off by default.
    deadlines: Deadlines,
}

/// The deadlines of whole operations, retries included (`[PieceStore.Backend]`
/// `GetTimeout`, `PutTimeout`, `DeleteTimeout`, `ListTimeout`); `None`: none.
#[derive(Debug, Clone, Copy, Default)]
struct Deadlines {
    get: Option<std::time::Duration>,
    put: Option<std::time::Duration>,
    delete: Option<std::time::Duration>,
    list: Option<std::time::Duration>,
}

impl Deadlines {
    fn from_options(opts: &BackendOptions) -> Self {
        let some = |d: std::time::Duration| (!d.is_zero()).then_some(d);
        Deadlines {
            get: some(opts.get_timeout),
            put: some(opts.put_timeout),
            delete: some(opts.delete_timeout),
            list: some(opts.list_timeout),
        }
    }
}

/// Which deadline an operation runs under.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Deadline {
    Get,
    Put,
    Delete,
}

impl Deadline {
    /// The option that sets it, for the error a timed-out operation gets.
    fn option(self) -> &'static str {
        match self {
            Deadline::Get => "GetTimeout",
            Deadline::Put => "PutTimeout",
            Deadline::Delete => "DeleteTimeout",
        }
    }
}

/// The error of an operation cut off by its deadline: retryable (the next attempt may be
/// faster), naming the option that set it.
fn deadline_error(
    op: &'static str,
    key: Option<&str>,
    backend: &str,
    option: &str,
    limit: std::time::Duration,
) -> Error {
    Error::Backend {
        op,
        key: key.map(str::to_string),
        backend: backend.to_string(),
        message: format!(
            "did not finish within {limit:?} ({option}); it was cancelled, and may be tried again"
        ),
        retryable: true,
    }
}

/// Labels only: the wrapped store's own `Debug` shows credentials (object_store's
/// `AwsCredential` prints its key id).
impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("label", &self.label)
            .field("kind", &self.kind_name())
            .finish_non_exhaustive()
    }
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

impl Backend {
    /// Builds the backend for one shard, in `layout` (the config's [`Config::layout`]).
    ///
    /// [`Config::layout`]: crate::Config::layout
    pub(crate) fn build(
        store: &StoreConfig,
        opts: &BackendOptions,
        layout: Layout,
    ) -> Result<Self> {
        let kind = store.storage_kind();
        let original = layout == Layout::Original;
        let url = match kind {
            StorageKind::Minio if original => url::original_minio_url(store.url())?,
            _ => store.url().to_string(),
        };
        let mut location =
            url::parse(&url, kind, opts.region.as_deref(), opts.endpoint.as_deref())?;
        // The original's S3 client keeps a non-AWS endpoint's path, bucket included, and adds
        // the bucket again: its pieces are `bucket/<key>` inside the bucket, beside the empty
        // object its bucket check creates at `bucket`.
        let mut empty_object = None;
        if let Location::S3(s3) = &mut location
            && original
            && kind == StorageKind::S3
            && !s3.virtual_hosted
            && !s3.endpoint.contains(".amazonaws.com")
        {
            s3.prefix = if s3.prefix.is_empty() {
                s3.bucket.clone()
            } else {
                format!("{}/{}", s3.prefix, s3.bucket)
            };
            empty_object = Some(s3.prefix.clone());
        }
        let label = location.label();
        let redactor = Redactor::new([
            store.access_key.expose(),
            store.secret_key.expose(),
            store.session_token.expose(),
        ]);
        let (object_store, kind): (Arc<dyn ObjectStore>, _) = match &location {
            Location::Memory => {
                let m = Arc::new(memory::Memory::default());
                (Arc::clone(&m) as Arc<dyn ObjectStore>, Kind::Memory(m))
            }
            Location::File { root } => {
                std::fs::create_dir_all(root).map_err(|e| {
                    Error::config(format!(
                        "cannot create the store directory {}: {e}",
                        root.display()
                    ))
                })?;
                let format = local::decide_format(root, original, opts.layout.is_some())
                    .map_err(Error::config)?;
                let fs = LocalFileSystem::new_with_prefix(root)
                    .map_err(|e| Error::config(format!("store directory {}: {e}", root.display())))?
                    .with_fsync(opts.fsync);
                let fs = Arc::new(fs);
                (
                    Arc::clone(&fs) as Arc<dyn ObjectStore>,
                    Kind::File { fs, format },
                )
            }
            Location::Grpc(g) => {
                let grpc = grpc::GrpcStore::new(g.clone(), store.secret_key.expose())?;
                (
                    Arc::new(grpc.clone()) as Arc<dyn ObjectStore>,
                    Kind::Grpc(grpc),
                )
            }
            Location::S3(s3) => {
                let built = Arc::new(
                    s3::build_s3(s3, store, opts)
                        .map_err(|e| Error::config(redactor.redact(&e)))?,
                );
                let create = opts.create_bucket.unwrap_or(original);
                let creator = (create && !store.no_sign_request).then(|| {
                    Box::new(BucketCreator {
                        s3: Arc::clone(&built),
                        location: s3.clone(),
                        opts: opts.clone(),
                        empty_object: empty_object.clone(),
                    })
                });
                let inner: Arc<dyn ObjectStore> = if s3.prefix.is_empty() {
                    built
                } else {
                    Arc::new(PrefixStore::new(built, s3.prefix.as_str()))
                };
                (
                    inner,
                    Kind::S3 {
                        creator,
                        bucket: s3.bucket.clone(),
                    },
                )
            }
        };
        Ok(Backend {
            label,
            store: object_store,
            kind,
            conditional: opts.conditional_writes,
            fsync: opts.fsync,
            honours_create: OnceCell::new(),
            redactor,
            deadlines: Deadlines::from_options(opts),
        })
    }

    /// Runs one whole operation (all its requests and retries) under its deadline, if one is
    /// set; past it the operation is dropped (cancelled) and fails with [`deadline_error`].
    ///
    /// Not an `async fn`: one would hold `work` in its state and again inside the timeout (and
    /// every operation's future holds this one), so a 4 KiB get's future was twice the size of
    /// its work, and moving it cost more than the get (perf: memcpy). This holds `work` once.
    pub(crate) fn within<'a, T: 'a>(
        &'a self,
        which: Deadline,
        op: &'static str,
        key: &'a str,
        work: impl std::future::Future<Output = Result<T>> + 'a,
    ) -> impl std::future::Future<Output = Result<T>> + 'a {
        use futures::FutureExt;
        use futures::future::Either;
        let limit = match which {
            Deadline::Get => self.deadlines.get,
            Deadline::Put => self.deadlines.put,
            Deadline::Delete => self.deadlines.delete,
        };
        match limit {
            None => Either::Left(work),
            Some(limit) => Either::Right(tokio::time::timeout(limit, work).map(move |r| {
                r.unwrap_or_else(|_| {
                    Err(deadline_error(
                        op,
                        Some(key),
                        &self.label,
                        which.option(),
                        limit,
                    ))
                })
            })),
        }
    }

    /// A listing whose every next entry must come within `ListTimeout`, if one is set; past it
    /// the listing ends with [`deadline_error`].
    fn listing_within<'a, T: Send + 'a>(
        &self,
        listing: BoxStream<'a, Result<T>>,
    ) -> BoxStream<'a, Result<T>> {
        let Some(limit) = self.deadlines.list else {
            return listing;
        };
        let label = self.label.clone();
        stream::unfold(Some(listing), move |state| {
            let label = label.clone();
            async move {
                let mut listing = state?;
                match tokio::time::timeout(limit, listing.next()).await {
                    Ok(Some(item)) => Some((item, Some(listing))),
                    Ok(None) => None,
                    Err(_) => Some((
                        Err(deadline_error("list", None, &label, "ListTimeout", limit)),
                        None,
                    )),
                }
            }
        })
        .boxed()
    }

    /// Whether this backend holds state bound to the runtime that built it (an HTTP client's
    /// connection pool), which a forked child must rebuild.
    pub(crate) fn is_fork_sensitive(&self) -> bool {
        matches!(self.kind, Kind::S3 { .. } | Kind::Grpc(_))
    }

    /// Whether this is an in-process memory store (it keeps the `Bytes` a put hands it).
    pub(crate) fn is_memory(&self) -> bool {
        matches!(self.kind, Kind::Memory(_))
    }

    /// Lets go of a memory backend's objects at once (its store is being closed, and nothing
    /// else can reach them: every open of `memory://` has a store of its own); does nothing
    /// for any other backend.
    pub(crate) fn release_memory(&self) {
        if let Kind::Memory(m) = &self.kind {
            m.clear();
        }
    }

    /// Whether local files are fsync'd before a put returns (`Backend.Fsync`).
    pub(crate) fn fsync(&self) -> bool {
        self.fsync
    }

    /// On a local directory, whether no file of `key` exists, by one `stat` on the calling
    /// thread (it costs microseconds); `None` elsewhere, or when it cannot tell.
    pub(crate) fn local_file_absent(&self, key: &str) -> Option<bool> {
        let Kind::File { fs, .. } = &self.kind else {
            return None;
        };
        let path = fs.path_to_filesystem(&Path::parse(key).ok()?).ok()?;
        match std::fs::symlink_metadata(path) {
            Ok(_) => Some(false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(true),
            Err(_) => None,
        }
    }

    /// Whether this is a bucket of a remote `piecestore serve` (`grpc://`).
    pub(crate) fn is_grpc(&self) -> bool {
        matches!(self.kind, Kind::Grpc(_))
    }

    /// Whether this is a local directory.
    pub(crate) fn is_local(&self) -> bool {
        matches!(self.kind, Kind::File { .. })
    }

    /// The backend kind, as a metrics label: `memory`, `file`, `s3` or `grpc`.
    pub(crate) fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Memory(_) => "memory",
            Kind::File { .. } => "file",
            Kind::S3 { .. } => "s3",
            Kind::Grpc(_) => "grpc",
        }
    }

    /// The label used in messages (URL without credentials).
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// The wrapped `object_store` store.
    pub(crate) fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Checks that the bucket exists and the credentials work (one LIST of one page).
    pub(crate) async fn check(&self) -> Result<()> {
        let Kind::S3 { creator, .. } = &self.kind else {
            return Ok(());
        };
        let probe = Path::from(RESERVED_PREFIX.trim_end_matches('/'));
        let first = self.store.list(Some(&probe)).next().await;
        let err = match first {
            None | Some(Ok(_)) => {
                self.leave_the_originals_empty_object().await;
                return Ok(());
            }
            Some(Err(e)) => e,
        };
        let missing = Diagnosis::of(&err).code.as_deref() == Some("NoSuchBucket");
        match creator {
            Some(c) if missing => {
                s3::create_bucket(&c.s3, &c.location, &c.opts)
                    .await
                    .map_err(|why| {
                        Error::config(format!(
                            "bucket {:?} of {} does not exist and could not be created: {}",
                            c.location.bucket,
                            self.label,
                            self.redactor.redact(&why)
                        ))
                    })?;
                tracing::info!(backend = %self.label, "created missing bucket");
                match self.store.list(Some(&probe)).next().await {
                    None | Some(Ok(_)) => {
                        self.leave_the_originals_empty_object().await;
                        Ok(())
                    }
                    Some(Err(e)) => Err(self.map_err("open", None, e)),
                }
            }
            _ => Err(self.map_err("open", None, err)),
        }
    }

    /// Creates the empty object the original's bucket check leaves when its endpoint keeps
    /// the bucket in its path (see [`Backend::build`]), so that the bucket holds what it
    /// would hold had the original opened it. Cosmetic: a failure is only logged.
    async fn leave_the_originals_empty_object(&self) {
        let Kind::S3 {
            creator: Some(c), ..
        } = &self.kind
        else {
            return;
        };
        let Some(name) = &c.empty_object else { return };
        let path = Path::from(name.as_str());
        if c.s3.head(&path).await.is_ok() {
            return;
        }
        if let Err(e) = c.s3.put(&path, PutPayload::new()).await {
            tracing::warn!(backend = %self.label, error = %self.redactor.redact(&e.to_string()), "could not create the empty object the original keeps at {name:?}");
        }
    }

    fn path(&self, key: &str) -> Result<Path> {
        Path::parse(key).map_err(|_| invalid_path(key))
    }

    fn map_err(&self, op: &'static str, key: Option<&str>, e: object_store::Error) -> Error {
        use object_store::Error as E;
        let backend = self.label.clone();
        let diag = Diagnosis::of(&e);
        if diag.code.as_deref() == Some("NoSuchBucket") {
            let bucket = match &self.kind {
                Kind::S3 { bucket, .. } => bucket.clone(),
                _ => String::new(),
            };
            return Error::BucketNotFound { bucket, backend };
        }
        let message = self.redactor.redact(&diag.message());
        match e {
            E::NotFound { .. } if key.is_some() => Error::NotFound {
                key: key.unwrap_or_default().to_string(),
                backend,
            },
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
                Error::Unauthorized { backend, message }
            }
            _ if matches!(diag.status, Some(401 | 403))
                || matches!(
                    diag.code.as_deref(),
                    Some(
                        "InvalidAccessKeyId"
                            | "SignatureDoesNotMatch"
                            | "AccessDenied"
                            | "ExpiredToken"
                            | "InvalidToken"
                    )
                ) =>
            {
                Error::Unauthorized { backend, message }
            }
            other => {
                let retryable = match diag.status {
                    Some(s) => s >= 500 || s == 429 || s == 408,
                    None => matches!(other, E::Generic { .. } | E::JoinError { .. }),
                };
                Error::Backend {
                    op,
                    key: key.map(str::to_string),
                    backend,
                    message,
                    retryable,
                }
            }
        }
    }

    /// The checksum in a piece's metadata: `None` when it carries none, `Corrupt` when the value
    /// is not a `u32`.
    fn metadata_crc(&self, key: &str, attrs: &Attributes) -> Result<Option<u32>> {
        for (k, v) in attrs {
            if let Attribute::Metadata(name) = k
                && name.eq_ignore_ascii_case(checksum::METADATA_KEY)
            {
                let value: &str = v.as_ref();
                return match checksum::parse_metadata(value) {
                    Some(c) => Ok(Some(c)),
                    None => {
                        let shown: String = value.chars().take(32).collect();
                        Err(self.corrupt(key, format!("checksum metadata {shown:?} is not a u32")))
                    }
                };
            }
        }
        Ok(None)
    }

    fn corrupt(&self, key: &str, detail: String) -> Error {
        Error::Corrupt {
            key: key.to_string(),
            backend: self.label.clone(),
            detail,
        }
    }

    /// Whether a create-only put (`If-None-Match: *`) is honoured here (probed once on S3).
    pub(crate) async fn honours_create(&self) -> bool {
        match self.conditional {
            ConditionalWrites::On => true,
            ConditionalWrites::Off => false,
            ConditionalWrites::Auto if !matches!(self.kind, Kind::S3 { .. }) => true, // memory and local files are atomic
            // A probe that could not write at all (403, 503) decides nothing: this put goes
            // ahead create-only and meets the backend's error itself; the next put probes again.
            ConditionalWrites::Auto => self
                .honours_create
                .get_or_try_init(|| self.probe_create())
                .await
                .copied()
                .unwrap_or(true),
        }
    }

    /// Writes a probe object twice with create-only semantics: a backend that honours
    /// `If-None-Match: *` refuses the second. `Err` when the first write failed.
    async fn probe_create(&self) -> std::result::Result<bool, ()> {
        let path = Path::from(format!(
            "{RESERVED_PREFIX}probe/{}-{}",
            std::process::id(),
            now_nanos()
        ));
        let create = || PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let first = self
            .store
            .put_opts(&path, PutPayload::from_static(b"probe"), create())
            .await;
        let honoured = match first {
            Ok(_) => matches!(
                self.store
                    .put_opts(&path, PutPayload::from_static(b"probe"), create())
                    .await,
                Err(object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. })
            ),
            Err(_) => return Err(()),
        };
        let _ = self.store.delete(&path).await;
        if !honoured {
            tracing::warn!(
                backend = %self.label,
                "backend ignores conditional writes (If-None-Match); falling back to HEAD-before-PUT, \
                 which cannot stop two writers racing on one new key"
            );
        }
        Ok(honoured)
    }

    /// Stores `data` under `key`. Without `overwrite`, an existing piece with the same bytes is
    /// success (a retried put) and one with different bytes is `AlreadyExists`.
    pub(crate) async fn put(
        &self,
        key: &str,
        data: Bytes,
        crc: u32,
        overwrite: bool,
    ) -> Result<()> {
        let work = self.put_now(key, data, crc, overwrite);
        self.within(Deadline::Put, "put", key, work).await
    }

    /// [`Backend::put`] without its deadline.
    async fn put_now(&self, key: &str, data: Bytes, crc: u32, overwrite: bool) -> Result<()> {
        if let Kind::Memory(m) = &self.kind {
            if !memory::is_object_path(key) {
                return Err(invalid_path(key));
            }
            let Err(refused) = m.put_piece(key, data, crc, overwrite) else {
                return Ok(());
            };
            // A create-only put of a key it holds, settled as on every backend (boxed: rare).
            let (held, data) = *refused;
            let existing = self.memory_meta(key, &held)?;
            return Box::pin(self.same_or_exists(key, &data, crc, existing)).await;
        }
        let path = self.path(key)?;
        if let Kind::File { fs, format } = &self.kind {
            // Boxed, as the conflict paths below: rare or slow next to the object store's own
            // put, and held inline they made every put's future (moved by value on each call)
            // kilobytes larger.
            return Box::pin(self.put_local(fs, *format, key, &path, data, crc, overwrite)).await;
        }
        let make = |mode: PutMode| {
            let mut attributes = Attributes::new();
            attributes.insert(
                Attribute::Metadata(checksum::METADATA_KEY.into()),
                AttributeValue::from(crc.to_string()),
            );
            (
                PutPayload::from(data.clone()),
                PutOptions {
                    mode,
                    attributes,
                    ..Default::default()
                },
            )
        };
        let overwrite_put = || async {
            let (p, o) = make(PutMode::Overwrite);
            let r = self.store.put_opts(&path, p, o).await;
            r.map(|_| ()).map_err(|e| self.map_err("put", Some(key), e))
        };
        if overwrite {
            return overwrite_put().await;
        }
        let honours = self.honours_create().await;
        for _ in 0..3 {
            if !honours {
                match Box::pin(self.head(key)).await {
                    Ok(existing) => {
                        return Box::pin(self.same_or_exists(key, &data, crc, existing)).await;
                    }
                    Err(Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
                return overwrite_put().await;
            }
            let (p, o) = make(PutMode::Create);
            match self.store.put_opts(&path, p, o).await {
                Ok(_) => return Ok(()),
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ) => {
                    match Box::pin(self.head(key)).await {
                        Ok(existing) => {
                            return Box::pin(self.same_or_exists(key, &data, crc, existing)).await;
                        }
                        // A concurrent writer's conflicting put that did not land: try again.
                        Err(Error::NotFound { .. }) => continue,
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(self.map_err("put", Some(key), e)),
            }
        }
        Err(Error::Backend {
            op: "put",
            key: Some(key.into()),
            backend: self.label.clone(),
            message: "create-only put kept conflicting with another writer".into(),
            retryable: true,
        })
    }

    /// A memory store's piece, or `NotFound`.
    fn memory_piece(&self, m: &memory::Memory, key: &str) -> Result<memory::Piece> {
        m.piece(key).ok_or_else(|| Error::NotFound {
            key: key.into(),
            backend: self.label.clone(),
        })
    }

    /// What a memory store's piece's metadata says (its checksum kept beside its bytes, or in
    /// the metadata of an object put past the store).
    fn memory_meta(&self, key: &str, piece: &memory::Piece) -> Result<PieceMeta> {
        Ok(PieceMeta {
            key: key.into(),
            size: piece.data.len() as u64,
            crc32c: self.memory_crc(key, piece)?,
            last_modified: piece.modified,
        })
    }

    /// A memory store's piece's checksum (`None`: stored without one).
    fn memory_crc(&self, key: &str, piece: &memory::Piece) -> Result<Option<u32>> {
        match piece.crc {
            Some(c) => Ok(Some(c)),
            None => self.metadata_crc(key, &piece.attributes),
        }
    }

    /// A local piece file, written whole by [`local::write_piece`] in one blocking task.
    #[allow(clippy::too_many_arguments)]
    async fn put_local(
        &self,
        fs: &LocalFileSystem,
        format: FileFormat,
        key: &str,
        path: &Path,
        data: Bytes,
        crc: u32,
        overwrite: bool,
    ) -> Result<()> {
        let file = fs
            .path_to_filesystem(path)
            .map_err(|e| self.map_err("put", Some(key), e))?;
        let fsync = self.fsync;
        for _ in 0..3 {
            let (file, data2) = (file.clone(), data.clone());
            let written = tokio::task::spawn_blocking(move || {
                local::write_piece(&file, &data2, crc, format, !overwrite, fsync)
            })
            .await
            .map_err(|e| self.io_err("put", key, std::io::Error::other(e)))?
            .map_err(|e| self.io_err("put", key, e))?;
            if written == local::Written::Done {
                return Ok(());
            }
            match Box::pin(self.head(key)).await {
                Ok(existing) => {
                    return Box::pin(self.same_or_exists(key, &data, crc, existing)).await;
                }
                // Deleted since: try again.
                Err(Error::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Backend {
            op: "put",
            key: Some(key.into()),
            backend: self.label.clone(),
            message: "create-only put kept conflicting with another writer".into(),
            retryable: true,
        })
    }

    fn io_err(&self, op: &'static str, key: &str, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::NotFound {
            return Error::NotFound {
                key: key.into(),
                backend: self.label.clone(),
            };
        }
        Error::Backend {
            op,
            key: Some(key.into()),
            backend: self.label.clone(),
            retryable: matches!(
                e.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::TimedOut
            ),
            message: e.to_string(),
        }
    }

    async fn same_or_exists(
        &self,
        key: &str,
        data: &Bytes,
        crc: u32,
        existing: PieceMeta,
    ) -> Result<()> {
        if self.stored_same(key, &existing, data, crc).await? {
            Ok(())
        } else {
            Err(Error::AlreadyExists {
                key: key.into(),
                backend: self.label.clone(),
            })
        }
    }

    /// Whether the piece stored under `key` (whose metadata is `existing`) holds exactly
    /// `data` (checksum `crc`): a different length or checksum says no at once; otherwise the
    /// stored bytes are read and compared (a checksum match alone proves nothing: CRC32C
    /// collisions are easy to make). The one rule every "same bytes again" decision uses.
    pub(crate) async fn stored_same(
        &self,
        key: &str,
        existing: &PieceMeta,
        data: &Bytes,
        crc: u32,
    ) -> Result<bool> {
        if existing.size != data.len() as u64 || existing.crc32c.is_some_and(|c| c != crc) {
            return Ok(false);
        }
        match self.get(key).await {
            Ok((stored, _)) => Ok(stored == *data),
            // Gone since it was looked at: not the same bytes (the caller looks again or fails).
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Reads the whole piece and verifies it. Returns the bytes and the checksum they were
    /// verified against (`None`: the piece carries none).
    pub(crate) async fn get(&self, key: &str) -> Result<(Bytes, Option<u32>)> {
        self.get_timed(key, &mut None).await
    }

    /// [`Backend::get`] that also notes when the first byte could be read (the response's
    /// headers arrived, or the file was opened) in `first_byte`: a benchmark's time to first
    /// byte.
    pub(crate) async fn get_timed(
        &self,
        key: &str,
        first_byte: &mut Option<Instant>,
    ) -> Result<(Bytes, Option<u32>)> {
        let work = self.get_timed_now(key, first_byte);
        self.within(Deadline::Get, "get", key, work).await
    }

    /// [`Backend::get_timed`] without its deadline.
    async fn get_timed_now(
        &self,
        key: &str,
        first_byte: &mut Option<Instant>,
    ) -> Result<(Bytes, Option<u32>)> {
        if let Kind::Memory(m) = &self.kind {
            let piece = self.memory_piece(m, key)?;
            let expected = self.memory_crc(key, &piece)?;
            *first_byte = Some(Instant::now());
            crate::runtime::yield_before_checksum(piece.data.len() as u64).await;
            if expected.is_some() {
                self.verify(key, checksum::crc32c(&piece.data), expected)?;
            }
            return Ok((piece.data, expected));
        }
        let path = self.path(key)?;
        if let Kind::File { fs, format } = &self.kind {
            // Boxed: a blocking-pool hop already; inline it made every get's future larger.
            return Box::pin(self.get_local(fs, *format, key, &path, first_byte)).await;
        }
        let result = self
            .store
            .get_opts(&path, GetOptions::default())
            .await
            .map_err(|e| self.map_err("get", Some(key), e))?;
        *first_byte = Some(Instant::now());
        let expected = self.metadata_crc(key, &result.attributes)?;
        let size = result.range.end - result.range.start;
        crate::runtime::yield_before_checksum(size).await;
        // Boxed: a network read's stream, 512 bytes of state every get would carry inline.
        let (bytes, actual) = Box::pin(collect_checked(result.into_stream(), size))
            .await
            .map_err(|e| self.map_err("get", Some(key), e))?;
        self.verify(key, actual, expected)?;
        Ok((bytes, expected))
    }

    /// `Corrupt` when a piece's bytes hash to `actual` and it carries another checksum.
    fn verify(&self, key: &str, actual: u32, expected: Option<u32>) -> Result<()> {
        match expected {
            Some(expected) if actual != expected => {
                Err(self.corrupt(key, format!("crc32c is {actual}, expected {expected}")))
            }
            _ => Ok(()),
        }
    }

    /// A local piece: open, read, check its checksum and verify, at once when the file is in
    /// the page cache (see [`crate::page_cache`]), else in one blocking task (object_store's
    /// own get takes two hops through the blocking pool, and the checksum would then run on an
    /// async worker).
    async fn get_local(
        &self,
        fs: &LocalFileSystem,
        format: FileFormat,
        key: &str,
        path: &Path,
        first_byte: &mut Option<Instant>,
    ) -> Result<(Bytes, Option<u32>)> {
        let file_path = fs
            .path_to_filesystem(path)
            .map_err(|e| self.map_err("get", Some(key), e))?;
        // A file in the page cache is read here, at once; else on the blocking pool.
        let cached =
            local::read_piece_cached(&file_path, format).map_err(|e| self.io_err("get", key, e))?;
        let (read, opened) = match cached {
            Some(read) => read,
            None => tokio::task::spawn_blocking(move || local::read_piece(&file_path, format))
                .await
                .map_err(|e| self.io_err("get", key, std::io::Error::other(e)))?
                .map_err(|e| self.io_err("get", key, e))?,
        };
        *first_byte = Some(opened);
        match read {
            local::Read::Unverified(buf) => Ok((Bytes::from(buf), None)),
            local::Read::Verified(buf, crc) => Ok((Bytes::from(buf), Some(crc))),
            local::Read::DamagedTrailer => Err(self.corrupt(key, damaged(format))),
            local::Read::Mismatch { expected, actual } => {
                Err(self.corrupt(key, format!("crc32c is {actual}, expected {expected}")))
            }
        }
    }

    /// A piece opened for a streamed read: its metadata, from the one request that opened it,
    /// and its bytes in chunks of [`STREAM_CHUNK`], verified as [`streamed`] says. A local
    /// piece's first chunk is read with its open; each further chunk is one positioned read in
    /// the blocking pool, one ahead of the reader.
    pub(crate) async fn get_stream(
        self: &Arc<Self>,
        key: &str,
    ) -> Result<(PieceMeta, BoxStream<'static, Result<Bytes>>)> {
        self.within(Deadline::Get, "get", key, self.get_stream_now(key))
            .await
    }

    /// [`Backend::get_stream`] without its deadline (which bounds the opening only: each
    /// chunk after it is one request's, under `RequestTimeout`).
    async fn get_stream_now(
        self: &Arc<Self>,
        key: &str,
    ) -> Result<(PieceMeta, BoxStream<'static, Result<Bytes>>)> {
        let path = self.path(key)?;
        let (meta, raw) = if let Kind::File { fs, format } = &self.kind {
            let format = *format;
            let file_path = fs
                .path_to_filesystem(&path)
                .map_err(|e| self.map_err("get", Some(key), e))?;
            let (file, head, first) = tokio::task::spawn_blocking(move || {
                let (f, head) = local::open_piece(&file_path, format)?;
                let first = match &head {
                    Some(h) => local::read_chunk(&f, 0, h.size.min(STREAM_CHUNK as u64) as usize)?,
                    None => Vec::new(),
                };
                std::io::Result::Ok((f, head, first))
            })
            .await
            .map_err(|e| self.io_err("get", key, std::io::Error::other(e)))?
            .map_err(|e| self.io_err("get", key, e))?;
            let head = head.ok_or_else(|| self.corrupt(key, damaged(format)))?;
            let size = head.size;
            let meta = PieceMeta {
                key: key.into(),
                size,
                crc32c: head.crc,
                last_modified: head.modified,
            };
            let (file, backend, k) = (Arc::new(file), Arc::clone(self), key.to_string());
            let rest = stream::iter((STREAM_CHUNK as u64..size).step_by(STREAM_CHUNK))
                .map(move |at| {
                    let (f, backend, k) = (Arc::clone(&file), Arc::clone(&backend), k.clone());
                    let n = (size - at).min(STREAM_CHUNK as u64) as usize;
                    async move {
                        tokio::task::spawn_blocking(move || local::read_chunk(&f, at, n))
                            .await
                            .map_err(|e| backend.io_err("get", &k, std::io::Error::other(e)))?
                            .map(Bytes::from)
                            .map_err(|e| backend.io_err("get", &k, e))
                    }
                })
                .buffered(2);
            let first = stream::once(async move { Ok(Bytes::from(first)) });
            (meta, first.chain(rest).boxed())
        } else {
            let result = self
                .store
                .get_opts(&path, GetOptions::default())
                .await
                .map_err(|e| self.map_err("get", Some(key), e))?;
            let meta = PieceMeta {
                key: key.into(),
                size: result.meta.size,
                crc32c: self.metadata_crc(key, &result.attributes)?,
                last_modified: result.meta.last_modified.into(),
            };
            let (backend, k) = (Arc::clone(self), key.to_string());
            let raw = result
                .into_stream()
                .map(move |r| r.map_err(|e| backend.map_err("get", Some(&k), e)));
            (meta, raw.boxed())
        };
        let chunks = streamed::verified(Arc::clone(self), key, meta.size, meta.crc32c, raw);
        Ok((meta, chunks))
    }

    /// The stored bytes of a piece, not checked against its metadata's checksum (for a caller
    /// that decides by the bytes themselves what a put left behind). A local piece is read as
    /// [`Backend::get`] reads it: its checksum is written with its bytes, in one rename.
    pub(crate) async fn get_unverified(&self, key: &str) -> Result<Bytes> {
        self.within(Deadline::Get, "get", key, self.get_unverified_now(key))
            .await
    }

    /// [`Backend::get_unverified`] without its deadline.
    async fn get_unverified_now(&self, key: &str) -> Result<Bytes> {
        if let Kind::File { .. } = &self.kind {
            return self.get(key).await.map(|(b, _)| b);
        }
        if let Kind::Memory(m) = &self.kind {
            return self.memory_piece(m, key).map(|p| p.data);
        }
        let path = self.path(key)?;
        self.store
            .get_opts(&path, GetOptions::default())
            .await
            .map_err(|e| self.map_err("get", Some(key), e))?
            .bytes()
            .await
            .map_err(|e| self.map_err("get", Some(key), e))
    }

    /// The piece's metadata, in one small request.
    pub(crate) async fn head(&self, key: &str) -> Result<PieceMeta> {
        self.within(Deadline::Get, "head", key, self.head_now(key))
            .await
    }

    /// [`Backend::head`] without its deadline.
    async fn head_now(&self, key: &str) -> Result<PieceMeta> {
        if let Kind::Memory(m) = &self.kind {
            let piece = self.memory_piece(m, key)?;
            return self.memory_meta(key, &piece);
        }
        let path = self.path(key)?;
        if let Kind::File { fs, format } = &self.kind {
            let (file, format) = (
                fs.path_to_filesystem(&path)
                    .map_err(|e| self.map_err("head", Some(key), e))?,
                *format,
            );
            let head = tokio::task::spawn_blocking(move || local::head_piece(&file, format))
                .await
                .map_err(|e| self.io_err("head", key, std::io::Error::other(e)))?
                .map_err(|e| self.io_err("head", key, e))?
                .ok_or_else(|| self.corrupt(key, damaged(format)))?;
            return Ok(PieceMeta {
                key: key.into(),
                size: head.size,
                crc32c: head.crc,
                last_modified: head.modified,
            });
        }
        let opts = GetOptions {
            head: true,
            ..Default::default()
        };
        let r = self
            .store
            .get_opts(&path, opts)
            .await
            .map_err(|e| self.map_err("head", Some(key), e))?;
        let crc32c = self.metadata_crc(key, &r.attributes)?;
        Ok(PieceMeta {
            key: key.into(),
            size: r.meta.size,
            crc32c,
            last_modified: r.meta.last_modified.into(),
        })
    }

    /// Deletes a piece; deleting a missing piece succeeds.
    pub(crate) async fn delete(&self, key: &str) -> Result<()> {
        self.within(Deadline::Delete, "delete", key, self.delete_now(key))
            .await
    }

    /// [`Backend::delete`] without its deadline.
    async fn delete_now(&self, key: &str) -> Result<()> {
        if let Kind::Memory(m) = &self.kind {
            m.remove(key);
            return Ok(());
        }
        let path = self.path(key)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.map_err("delete", Some(key), e)),
        }
    }

    /// Lists the keys that start with `prefix` (a plain string prefix, not only whole
    /// segments), with their stored sizes; PieceStore's own objects are left out.
    pub(crate) fn list(self: &Arc<Self>, prefix: &str) -> BoxStream<'static, Result<PieceMeta>> {
        self.listing_within(self.list_now(prefix))
    }

    /// [`Backend::list`] without its deadline.
    fn list_now(self: &Arc<Self>, prefix: &str) -> BoxStream<'static, Result<PieceMeta>> {
        let prefix = prefix.to_string();
        // object_store lists whole segments: list the directory part of the prefix, filter the rest.
        let dir = prefix
            .rfind('/')
            .and_then(|i| Path::parse(&prefix[..i]).ok());
        let raw = match (&self.kind, prefix.is_empty()) {
            // The server lists by any string prefix, in key order.
            (Kind::Grpc(g), _) => self.objects(g.list_prefix(&prefix)),
            (kind, false) if kind.sorted_listing() => {
                // Sorted backends: start just before the prefix and stop once past it.
                let mut start = prefix.clone();
                start.pop();
                let start = Path::parse(&start).unwrap_or_default();
                self.objects(self.store.list_with_offset(dir.as_ref(), &start))
            }
            _ => self.raw_list(dir.as_ref()),
        };
        let me = Arc::clone(self);
        let sorted = self.kind.sorted_listing();
        let p2 = prefix.clone();
        let stream = raw
            // A local file no key reaches is no piece (profile and fsck report it).
            .try_filter_map(|w| {
                futures::future::ready(Ok(match w {
                    Walked::File {
                        location,
                        size,
                        last_modified,
                    } => Some((location, size, last_modified)),
                    Walked::BadName { .. } => None,
                }))
            })
            .try_take_while(move |(location, ..)| {
                let k = location.as_ref();
                let keep_going = !sorted || k.starts_with(&p2) || k < p2.as_str();
                futures::future::ready(Ok(keep_going))
            })
            .try_filter(move |(location, ..)| {
                let k = location.as_ref();
                futures::future::ready(
                    k.starts_with(&prefix)
                        && !k.starts_with(RESERVED_PREFIX)
                        && !is_foreign_temp_file(k),
                )
            });
        match self.kind {
            Kind::Memory(_)
            | Kind::S3 { .. }
            | Kind::Grpc(_)
            | Kind::File {
                format: FileFormat::Raw,
                ..
            } => stream
                .map_ok(|(location, size, last_modified)| PieceMeta {
                    key: location.to_string(),
                    size,
                    crc32c: None,
                    last_modified,
                })
                .boxed(),
            // Sizes on disk include the trailer: read each one's trailer. A piece deleted
            // since the directory was read is left out, as if listed after the delete.
            Kind::File {
                format: FileFormat::Trailer,
                ..
            } => stream
                .map_ok(move |(location, size, last_modified)| {
                    let me = Arc::clone(&me);
                    async move {
                        match me.head(location.as_ref()).await {
                            Ok(meta) => Ok(Some(meta)),
                            Err(Error::NotFound { .. }) => Ok(None),
                            // A listing never stops at one piece's content: a damaged
                            // trailer is listed as the file is (a read says Corrupt).
                            Err(Error::Corrupt { .. }) => Ok(Some(PieceMeta {
                                key: location.to_string(),
                                size,
                                crc32c: None,
                                last_modified,
                            })),
                            Err(e) => Err(e),
                        }
                    }
                })
                .try_buffered(32)
                .try_filter_map(|m| futures::future::ready(Ok(m)))
                .boxed(),
        }
    }
}

/// Plain operations on PieceStore's own objects (`path` from the shard's root, under
/// `.piecestore/`): no piece checksum, no key rules. The pack layer builds its pack and token
/// I/O on them (`pack/io.rs`).
///
/// Only [`Backend::get_reserved_range`] (a packed piece's bytes, for a get) runs under a
/// per-operation deadline. The rest are maintenance: whole packs read at open, by gc and by
/// fsck, and written by gc, whose size no piece deadline is meant for. A packed put or delete
/// is bounded as a whole, around its pack writer, by the store.
impl Backend {
    /// Writes an object whole; `create`: create-only (`If-None-Match: *`), so that `Ok(false)`
    /// says it existed already. Durable when it returns (files: data and directory fsync'd).
    pub(crate) async fn put_reserved(
        &self,
        path: &str,
        payload: PutPayload,
        create: bool,
    ) -> Result<bool> {
        let opts = PutOptions {
            mode: if create {
                PutMode::Create
            } else {
                PutMode::Overwrite
            },
            ..Default::default()
        };
        match self.store.put_opts(&Path::from(path), payload, opts).await {
            Ok(_) => Ok(true),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) if create => Ok(false),
            Err(e) => Err(self.map_err("put", Some(path), e)),
        }
    }

    /// Reads an object whole. A missing one is `NotFound` naming `path`.
    pub(crate) async fn get_reserved(&self, path: &str) -> Result<Bytes> {
        let r = self
            .store
            .get_opts(&Path::from(path), GetOptions::default())
            .await
            .map_err(|e| self.map_err("get", Some(path), e))?;
        r.bytes()
            .await
            .map_err(|e| self.map_err("get", Some(path), e))
    }

    /// Reads `range` of an object (one ranged GET).
    pub(crate) async fn get_reserved_range(
        &self,
        path: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes> {
        let work = self.get_reserved_range_now(path, range);
        self.within(Deadline::Get, "get", path, work).await
    }

    /// [`Backend::get_reserved_range`] without its deadline.
    async fn get_reserved_range_now(
        &self,
        path: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        self.store
            .get_range(&Path::from(path), range)
            .await
            .map_err(|e| self.map_err("get", Some(path), e))
    }

    /// An object's size in bytes.
    pub(crate) async fn head_reserved(&self, path: &str) -> Result<u64> {
        self.store
            .head(&Path::from(path))
            .await
            .map(|m| m.size)
            .map_err(|e| self.map_err("head", Some(path), e))
    }

    /// Deletes an object; a missing one is success.
    pub(crate) async fn delete_reserved(&self, path: &str) -> Result<()> {
        match self.store.delete(&Path::from(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.map_err("delete", Some(path), e)),
        }
    }

    /// The objects under `prefix` (a directory, ending in `/`): `(path, size)`, in the
    /// backend's order.
    pub(crate) fn list_reserved(&self, prefix: &str) -> BoxStream<'_, Result<(String, u64)>> {
        let dir = Path::from(prefix.trim_end_matches('/'));
        self.raw_objects(Some(&dir))
            .map_err(|e| self.list_failure(e))
            .try_filter_map(|w| {
                futures::future::ready(Ok(match w {
                    Walked::File { location, size, .. } => Some((location.to_string(), size)),
                    // Not a name PieceStore writes.
                    Walked::BadName { .. } => None,
                }))
            })
            .boxed()
    }

    /// Every object under `dir` (all when `None`), in the backend's order: object_store's
    /// listing, except on a local shard, whose own walk reports a file no key reaches and goes
    /// on, where object_store's listing would end in an error ([`local::walk`]).
    fn raw_list(self: &Arc<Self>, dir: Option<&Path>) -> BoxStream<'static, Result<Walked>> {
        let me = Arc::clone(self);
        self.raw_objects(dir)
            .map_err(move |e| me.list_failure(e))
            .boxed()
    }

    /// [`Backend::raw_list`] with its errors not yet mapped.
    fn raw_objects(
        &self,
        dir: Option<&Path>,
    ) -> BoxStream<'static, std::result::Result<Walked, ListFailure>> {
        match (&self.kind, self.root_dir()) {
            (Kind::File { .. }, Some(root)) => {
                local::walk(root, dir).map_err(ListFailure::Walk).boxed()
            }
            _ => store_objects(self.store.list(dir)),
        }
    }

    /// An object_store listing as [`Backend::raw_list`] items, errors mapped.
    fn objects(
        self: &Arc<Self>,
        list: BoxStream<'static, object_store::Result<object_store::ObjectMeta>>,
    ) -> BoxStream<'static, Result<Walked>> {
        let me = Arc::clone(self);
        store_objects(list)
            .map_err(move |e| me.list_failure(e))
            .boxed()
    }

    /// The error of a failed listing (it names no key).
    fn list_failure(&self, e: ListFailure) -> Error {
        match e {
            ListFailure::Store(e) => self.map_err("list", None, e),
            ListFailure::Walk(e) => Error::Backend {
                op: "list",
                key: None,
                backend: self.label.clone(),
                retryable: matches!(
                    e.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::TimedOut
                ),
                message: e.to_string(),
            },
        }
    }

    /// The directory of a local-file shard.
    pub(crate) fn root_dir(&self) -> Option<std::path::PathBuf> {
        match &self.kind {
            Kind::File { fs, .. } => fs
                .path_to_filesystem(&Path::from("x"))
                .ok()?
                .parent()
                .map(|p| p.to_path_buf()),
            _ => None,
        }
    }

    /// Free bytes on a local-file shard's filesystem (`None` elsewhere).
    pub(crate) fn free_space(&self) -> Option<u64> {
        let root = self.root_dir()?;
        let c = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()).ok()?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a NUL-terminated path and `st` a writable statvfs.
        let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
        (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
    }

    /// Whether this shard holds any piece object (packs and PieceStore's own objects aside).
    pub(crate) async fn has_objects(self: &Arc<Self>) -> Result<bool> {
        match self.list("").next().await {
            None => Ok(false),
            Some(Ok(_)) => Ok(true),
            Some(Err(e)) => Err(e),
        }
    }
}

/// Why a raw listing failed: a local walk's I/O error, or object_store's.
enum ListFailure {
    Walk(std::io::Error),
    Store(object_store::Error),
}

/// An object_store listing as raw listing items.
fn store_objects(
    list: BoxStream<'static, object_store::Result<object_store::ObjectMeta>>,
) -> BoxStream<'static, std::result::Result<Walked, ListFailure>> {
    list.map(|r| {
        r.map(|m| Walked::File {
            location: m.location,
            size: m.size,
            last_modified: m.last_modified.into(),
        })
        .map_err(ListFailure::Store)
    })
    .boxed()
}

/// One object of a raw listing ([`Backend::list_all`]), classified.
#[derive(Debug, Clone)]
pub(crate) enum Listed {
    /// A piece under a valid key (size without any checksum trailer).
    Piece(PieceMeta),
    /// PieceStore's own object under `.piecestore/` (e.g. a conditional-write probe, the index).
    Internal { key: String, size: u64 },
    /// A pack of small pieces, the pack index, or PieceStore's other metadata of the store
    /// (counted from the index, or not at all).
    Pack,
    /// An unfinished write's temp file: the original's `.name.tmpN`, or a `name#N` staging
    /// file of a local write that did not finish.
    Temp { key: String, size: u64 },
    /// An object whose name is not a valid piece key.
    Foreign { key: String, size: u64 },
}

impl Backend {
    /// Lists every object of this backend, pieces and everything else, classified (what a data
    /// profile or a consistency check needs; [`Backend::list`] shows pieces only).
    pub(crate) fn list_all(self: &Arc<Self>) -> BoxStream<'static, Result<Listed>> {
        self.listing_within(self.list_all_now())
    }

    /// [`Backend::list_all`] without its deadline.
    fn list_all_now(self: &Arc<Self>) -> BoxStream<'static, Result<Listed>> {
        let me = Arc::clone(self);
        let trailer = matches!(
            self.kind,
            Kind::File {
                format: FileFormat::Trailer,
                ..
            }
        );
        self.raw_list(None)
            .map_ok(move |w| {
                let me = Arc::clone(&me);
                async move {
                    let (location, size, last_modified) = match w {
                        Walked::File {
                            location,
                            size,
                            last_modified,
                        } => (location, size, last_modified),
                        Walked::BadName { name, size } => {
                            return Ok(Listed::Foreign { key: name, size });
                        }
                    };
                    let key = location.to_string();
                    if crate::reserved::is_pack_path(&key) {
                        return Ok(Listed::Pack);
                    }
                    if key.starts_with(INDEX_FILE)
                        || key == TOKEN_FILE
                        || key == local::LAYOUT_MARKER
                    {
                        return Ok(Listed::Pack);
                    }
                    if key.starts_with(RESERVED_PREFIX) {
                        return Ok(Listed::Internal { key, size });
                    }
                    let name = key.rsplit('/').next().unwrap_or(&key);
                    if is_foreign_temp_file(&key) || crate::key::is_staging_name(name) {
                        return Ok(Listed::Temp { key, size });
                    }
                    if crate::key::validate(&key).is_err() {
                        return Ok(Listed::Foreign { key, size });
                    }
                    if !trailer {
                        return Ok(Listed::Piece(PieceMeta {
                            key,
                            size,
                            crc32c: None,
                            last_modified,
                        }));
                    }
                    match me.head(&key).await {
                        Ok(meta) => Ok(Listed::Piece(meta)),
                        // Deleted since it was listed.
                        Err(Error::NotFound { .. }) => Ok(Listed::Temp { key, size: 0 }),
                        // A damaged trailer: the file as it is (a read says Corrupt).
                        Err(Error::Corrupt { .. }) => Ok(Listed::Piece(PieceMeta {
                            key,
                            size,
                            crc32c: None,
                            last_modified,
                        })),
                        Err(e) => Err(e),
                    }
                }
            })
            .try_buffered(32)
            .boxed()
    }
}

/// What a damaged checksum of a local piece file is called.
/// A body's bytes, joined (a body of one frame is not copied), and their CRC32C, computed
/// frame by frame as they arrive rather than in a second pass over the whole piece.
async fn collect_checked(
    mut body: BoxStream<'static, object_store::Result<Bytes>>,
    size: u64,
) -> object_store::Result<(Bytes, u32)> {
    let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
    let first = body.next().await.transpose()?.unwrap_or_default();
    digest.update(&first);
    let Some(second) = body.next().await.transpose()? else {
        return Ok((first, digest.finalize() as u32));
    };
    let mut buf = Vec::with_capacity((size as usize).max(first.len() + second.len()));
    buf.extend_from_slice(&first);
    drop(first);
    let mut next = Some(second);
    while let Some(frame) = next {
        digest.update(&frame);
        buf.extend_from_slice(&frame);
        next = body.next().await.transpose()?;
    }
    Ok((buf.into(), digest.finalize() as u32))
}

fn damaged(format: FileFormat) -> String {
    match format {
        FileFormat::Trailer => "checksum trailer is damaged".into(),
        FileFormat::Raw => "checksum attribute user.piecestore.crc32c is not a u32".into(),
    }
}

/// The original Go piecestore's in-flight temp files (`dir/.{name}.tmp{N}`): not pieces.
fn is_foreign_temp_file(key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    name.starts_with('.')
        && name.rsplit_once(".tmp").is_some_and(|(head, n)| {
            head.len() > 1 && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
        })
}

/// The `Path` of a key as a store lists it: parsed, not encoded again (`%2F` stays `%2F`).
fn path_as_listed(key: &str) -> Path {
    Path::parse(key).unwrap_or_else(|_| Path::from(key))
}

/// `InvalidKey` for a key that is no object path.
fn invalid_path(key: &str) -> Error {
    Error::InvalidKey {
        key: key.chars().take(200).collect(),
        reason: "not a valid object path",
    }
}

/// A key-ordered listing under `base` (a prefix ending in `/`, or empty for the root) as
/// `list_with_delimiter` answers it: the objects directly under `base`, and each directory
/// below it once.
fn delimited(base: &str, all: Vec<object_store::ObjectMeta>) -> object_store::ListResult {
    let mut objects = Vec::new();
    let mut common_prefixes: Vec<Path> = Vec::new();
    for m in all {
        let rest = m.location.as_ref().get(base.len()..).unwrap_or_default();
        match rest.split_once('/') {
            Some((dir, _)) => {
                let p = path_as_listed(&format!("{base}{dir}"));
                if common_prefixes.last() != Some(&p) {
                    common_prefixes.push(p);
                }
            }
            None => objects.push(m),
        }
    }
    object_store::ListResult {
        common_prefixes,
        objects,
        extensions: Default::default(),
    }
}
