//! The `PieceStore` object: the core's store, every operation async and blocking.
//!
//! Each operation is written once, in [`op`], as a `'static` future over a clone of the core
//! store; the async method spawns it on the core's shared runtime ([`spawned`]) and the
//! blocking twin runs it on the calling thread ([`blocking`]).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use piecestore::config::OptionValue;
use piecestore::{Config, PieceMeta};

use crate::error::PieceStoreError;
use crate::inventory::{Inventory, MigrateReport};

type Result<T, E = PieceStoreError> = std::result::Result<T, E>;

/// A piece's metadata.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct PieceInfo {
    /// The piece key.
    pub key: String,
    /// The piece's size in bytes.
    pub size: u64,
    /// The piece's CRC32C; `null`/`nil` for a raw piece written by another tool, whose reads
    /// cannot be verified.
    pub crc32c: Option<u32>,
    /// When the piece was stored, as the backend reports it.
    pub last_modified: SystemTime,
}

/// One piece for `put_many`.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct PieceItem {
    /// The piece key.
    pub key: String,
    /// Its bytes.
    pub data: Vec<u8>,
}

impl From<PieceMeta> for PieceInfo {
    fn from(m: PieceMeta) -> Self {
        PieceInfo {
            key: m.key,
            size: m.size,
            crc32c: m.crc32c,
            last_modified: m.last_modified,
        }
    }
}

/// What `deletePrefix` removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct DeleteSummary {
    /// Pieces deleted.
    pub pieces: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl From<piecestore::DeleteSummary> for DeleteSummary {
    fn from(s: piecestore::DeleteSummary) -> Self {
        DeleteSummary {
            pieces: s.pieces,
            bytes: s.bytes,
        }
    }
}

/// The compacted packs that wait for their grace period (`GcReport.doomed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct DoomedSummary {
    /// How many.
    pub packs: u64,
    /// Their bytes: the storage that deleting them frees.
    pub bytes: u64,
    /// When the first may be deleted, in Unix milliseconds; `null`/`nil` when none waits.
    pub first_due_ms: Option<u64>,
    /// When the last may be deleted, in Unix milliseconds; `null`/`nil` when none waits.
    pub last_due_ms: Option<u64>,
    /// The grace period these times were computed with, in milliseconds.
    pub grace_ms: u64,
}

/// What `gc` did, summed over shards (the fields of `piecestore gc --json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct GcReport {
    /// Packs before.
    pub packs_before: u64,
    /// Packs after (live and doomed).
    pub packs_after: u64,
    /// Packs whose live pieces were copied out.
    pub packs_compacted: u64,
    /// New packs written.
    pub packs_written: u64,
    /// Compacted packs deleted (grace over).
    pub packs_deleted: u64,
    /// Compacted packs still waiting for their grace period.
    pub packs_doomed: u64,
    /// Pieces copied into new packs.
    pub pieces_moved: u64,
    /// Their bytes.
    pub bytes_moved: u64,
    /// Storage freed by deleting packs.
    pub bytes_reclaimed: u64,
    /// Tombstones no pack needs any more, dropped.
    pub tombstones_dropped: u64,
    /// Packs left alone because they are damaged (`fsck` names them).
    pub packs_damaged: u64,
    /// The compacted packs left after this run.
    pub doomed: DoomedSummary,
}

impl From<piecestore::pack::gc::GcReport> for GcReport {
    fn from(r: piecestore::pack::gc::GcReport) -> Self {
        let d = r.doomed;
        GcReport {
            packs_before: r.packs_before,
            packs_after: r.packs_after,
            packs_compacted: r.packs_compacted,
            packs_written: r.packs_written,
            packs_deleted: r.packs_deleted,
            packs_doomed: r.packs_doomed,
            pieces_moved: r.pieces_moved,
            bytes_moved: r.bytes_moved,
            bytes_reclaimed: r.bytes_reclaimed,
            tombstones_dropped: r.tombstones_dropped,
            packs_damaged: r.packs_damaged,
            doomed: DoomedSummary {
                packs: d.packs,
                bytes: d.bytes,
                first_due_ms: d.first_due_ms,
                last_due_ms: d.last_due_ms,
                grace_ms: d.grace_ms,
            },
        }
    }
}

/// One thing `fsck` found wrong.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct FsckProblem {
    /// The shard.
    pub shard: u64,
    /// The pack object, when the problem is in or about a pack.
    pub pack: Option<String>,
    /// The piece key, when one piece is concerned.
    pub key: Option<String>,
    /// What is wrong.
    pub what: String,
}

/// What `fsck` found, summed over shards (the fields of `piecestore fsck --json`).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct FsckReport {
    /// Pack objects read.
    pub packs: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Records (pieces and tombstones) verified.
    pub records: u64,
    /// Index entries checked.
    pub entries: u64,
    /// Packed pieces checked against their packs' records.
    pub packed_pieces: u64,
    /// Pieces stored as objects of their own, read whole and verified.
    pub objects: u64,
    /// Their bytes.
    pub object_bytes: u64,
    /// Of those, pieces with no checksum anywhere: read, but not verifiable.
    pub objects_unverified: u64,
    /// What is wrong (after the rebuild, when one ran); empty when the store is clean.
    pub problems: Vec<FsckProblem>,
    /// Problems found before the rebuild; `null`/`nil` without one.
    pub problems_before_rebuild: Option<Vec<FsckProblem>>,
    /// Pieces indexed by the rebuild; `null`/`nil` without one.
    pub rebuilt_pieces: Option<u64>,
}

fn problems(v: Vec<piecestore::pack::fsck::FsckProblem>) -> Vec<FsckProblem> {
    v.into_iter()
        .map(|p| FsckProblem {
            shard: p.shard as u64,
            pack: p.pack,
            key: p.key,
            what: p.what,
        })
        .collect()
}

impl From<piecestore::pack::fsck::FsckReport> for FsckReport {
    fn from(r: piecestore::pack::fsck::FsckReport) -> Self {
        FsckReport {
            packs: r.packs,
            bytes: r.bytes,
            records: r.records,
            entries: r.entries,
            packed_pieces: r.packed_pieces,
            objects: r.objects,
            object_bytes: r.object_bytes,
            objects_unverified: r.objects_unverified,
            problems: problems(r.problems),
            problems_before_rebuild: r.problems_before_rebuild.map(problems),
            rebuilt_pieces: r.rebuilt_pieces,
        }
    }
}

/// `gc`'s options: `grace_ms` and `garbage_ratio` unset take the store's config (the core
/// checks the ratio).
fn gc_options(
    grace_ms: Option<u64>,
    garbage_ratio: Option<f64>,
    dry_run: bool,
) -> piecestore::pack::gc::GcOptions {
    piecestore::pack::gc::GcOptions {
        garbage_ratio,
        grace: grace_ms.map(std::time::Duration::from_millis),
        dry_run,
    }
}

/// Runs `op` on the core's shared runtime; the returned future (awaiting a tokio `JoinHandle`)
/// is polled by the foreign language's executor, so no second runtime is ever started.
/// Cancelling the foreign call (a Kotlin coroutine, a Swift task) drops this future, which
/// aborts the operation: its requests are dropped and their connections closed, instead of
/// running on to their timeouts with no one waiting.
async fn spawned<T, F>(op: F) -> Result<T>
where
    T: Send + 'static,
    F: Future<Output = piecestore::Result<T>> + Send + 'static,
{
    let task = piecestore::runtime::spawn(op);
    let _abort = AbortOnDrop(task.abort_handle());
    task.await
        .map_err(PieceStoreError::task)?
        .map_err(Into::into)
}

/// Aborts a spawned operation when the future awaiting it is dropped unfinished (a no-op once
/// the operation has finished).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `op` to completion on the calling thread, with the shared runtime's timers and I/O.
fn blocking<T>(op: impl Future<Output = piecestore::Result<T>>) -> Result<T> {
    piecestore::runtime::block_on(op).map_err(Into::into)
}

/// The configuration of `spec` with `options` (values as text) and then the environment.
fn config(base: piecestore::Result<Config>, options: &HashMap<String, String>) -> Result<Config> {
    let options = options
        .iter()
        .map(|(k, v)| (k.as_str(), OptionValue::from_option_text(k, v)));
    Ok(base.and_then(|c| c.with_options_and_env(options))?)
}

/// Every operation once, as a `'static` future over a clone of the core store.
mod op {
    use futures::TryStreamExt;
    use piecestore::{PieceStore as Core, PutOptions, Result};

    use piecestore::pack::fsck::FsckOptions;
    use piecestore::pack::gc::GcOptions;

    use super::{Listener, tell};

    use std::sync::Arc;

    use super::{
        DeleteSummary, FsckReport, GcReport, Inventory, MigrateReport, PieceInfo, PieceItem,
        PieceReader,
    };

    pub async fn put(s: Core, key: String, data: Vec<u8>, overwrite: bool) -> Result<()> {
        s.put_opts(&key, data, PutOptions { overwrite }).await
    }

    pub async fn get(s: Core, key: String) -> Result<Vec<u8>> {
        s.get(&key).await.map(Vec::from)
    }

    pub async fn get_range(s: Core, key: String, offset: u64, length: u64) -> Result<Vec<u8>> {
        s.get_range(&key, offset, length).await.map(Vec::from)
    }

    pub async fn head(s: Core, key: String) -> Result<PieceInfo> {
        s.head(&key).await.map(PieceInfo::from)
    }

    pub async fn exists(s: Core, key: String) -> Result<bool> {
        s.exists(&key).await
    }

    pub async fn delete(s: Core, key: String) -> Result<()> {
        s.delete(&key).await
    }

    pub async fn list(s: Core, prefix: String) -> Result<Vec<PieceInfo>> {
        s.list(&prefix).map_ok(PieceInfo::from).try_collect().await
    }

    pub async fn delete_prefix(s: Core, prefix: String) -> Result<DeleteSummary> {
        s.delete_prefix(&prefix).await.map(DeleteSummary::from)
    }

    pub async fn flush(s: Core) -> Result<()> {
        s.flush().await
    }

    pub async fn get_stream(s: Core, key: String) -> Result<Arc<PieceReader>> {
        let piece = s.get_stream(&key).await?;
        Ok(Arc::new(PieceReader {
            meta: piece.meta,
            chunks: Arc::new(tokio::sync::Mutex::new(piece.chunks)),
        }))
    }

    pub async fn put_many(s: Core, items: Vec<PieceItem>, overwrite: bool) -> Result<()> {
        let items = items.into_iter().map(|i| (i.key, i.data));
        let results = s.put_many_opts(items, PutOptions { overwrite }).await;
        results.into_iter().collect::<Result<Vec<()>>>().map(drop)
    }

    pub async fn get_many(s: Core, keys: Vec<String>) -> Result<Vec<Vec<u8>>> {
        let results = s.get_many(keys).await;
        results.into_iter().map(|r| r.map(Vec::from)).collect()
    }

    pub async fn migrate_to(
        s: Core,
        dest: Core,
        dry_run: bool,
        concurrency: u32,
        progress: Listener,
    ) -> Result<MigrateReport> {
        let mut opts = piecestore::migrate::MigrateOptions {
            dry_run,
            ..Default::default()
        };
        if concurrency > 0 {
            opts.concurrency = concurrency as usize;
        }
        let report = |p: &piecestore::migrate::MigrateProgress| {
            tell(&progress, p.done_pieces, p.total_pieces)
        };
        s.migrate_to(&dest, opts, &report)
            .await
            .map(MigrateReport::from)
    }

    pub async fn inventory(
        s: Core,
        max_orphan_samples: u32,
        progress: Listener,
    ) -> Result<Inventory> {
        let opts = piecestore::profile::InventoryOptions {
            max_orphan_samples: max_orphan_samples as usize,
        };
        s.inventory(opts, &|n| tell(&progress, n, 0))
            .await
            .map(Inventory::from)
    }

    pub async fn clear_cache(s: Core) -> Result<bool> {
        Ok(s.clear_cache().await)
    }

    pub async fn gc(s: Core, opts: GcOptions, progress: Listener) -> Result<GcReport> {
        s.gc(opts, &|p| tell(&progress, p.done, p.total))
            .await
            .map(GcReport::from)
    }

    pub async fn fsck(s: Core, rebuild_index: bool, progress: Listener) -> Result<FsckReport> {
        let opts = FsckOptions { rebuild_index };
        s.fsck(opts, &|n| tell(&progress, n, 0))
            .await
            .map(FsckReport::from)
    }

    pub async fn close(s: Core) -> Result<()> {
        s.close().await;
        Ok(())
    }
}

/// Told how a long call (`gc`, `fsck`, `migrate_to`, `inventory`) is going. Implemented in
/// Kotlin or Swift and passed as the call's `progress`. `on_progress` is called on a thread of
/// the library while the call runs, possibly from two threads at once (a migration copies
/// pieces concurrently), so it must be thread-safe and return promptly; `total` is 0 when
/// unknown. What `done` and `total` count is each call's (its documentation says).
#[uniffi::export(with_foreign)]
pub trait ProgressListener: Send + Sync {
    /// `done` of `total` (0: unknown) so far.
    fn on_progress(&self, done: u64, total: u64);
}

/// A call's optional progress listener.
type Listener = Option<Arc<dyn ProgressListener>>;

/// Tells `listener`, if any.
fn tell(listener: &Listener, done: u64, total: u64) {
    if let Some(l) = listener {
        l.on_progress(done, total);
    }
}

/// A piece being read as a stream (`PieceStore.getStream`): `info` at once, then its bytes
/// in chunks of about 1 MiB from `nextChunk`, never all in memory. Verified as `get` is: the
/// last chunk comes only once the piece has matched its length and CRC32C; else `Corrupt` is
/// thrown in its place.
#[derive(uniffi::Object)]
pub struct PieceReader {
    meta: PieceMeta,
    chunks: Arc<tokio::sync::Mutex<Chunks>>,
}

type Chunks = futures::stream::BoxStream<'static, piecestore::Result<bytes::Bytes>>;

async fn next_chunk(
    chunks: Arc<tokio::sync::Mutex<Chunks>>,
) -> piecestore::Result<Option<Vec<u8>>> {
    use futures::StreamExt;
    chunks
        .lock()
        .await
        .next()
        .await
        .transpose()
        .map(|c| c.map(Vec::from))
}

#[uniffi::export]
impl PieceReader {
    /// The piece's key, size and checksum, known before its first byte.
    pub fn info(&self) -> PieceInfo {
        PieceInfo::from(self.meta.clone())
    }

    /// The next chunk of the piece, in order; `null`/`nil` once the piece has been read whole.
    pub async fn next_chunk(&self) -> Result<Option<Vec<u8>>> {
        spawned(next_chunk(Arc::clone(&self.chunks))).await
    }

    /// `nextChunk`, blocking the calling thread.
    pub fn next_chunk_blocking(&self) -> Result<Option<Vec<u8>>> {
        blocking(next_chunk(Arc::clone(&self.chunks)))
    }
}

/// A listing in progress (`PieceStore.listStream`): pieces come in batches as the backend lists
/// them, so a listing of millions never sits in memory at once. Kotlin's `listFlow` and a
/// Swift `AsyncSequence` are built on `nextBatch`. Safe to share; batches go to one caller at a
/// time.
#[derive(uniffi::Object)]
pub struct PieceList {
    stream: Arc<tokio::sync::Mutex<Listing>>,
}

type Listing = futures::stream::BoxStream<'static, piecestore::Result<PieceMeta>>;

/// The next up to `max` pieces of a listing (fewer at its end; none once it is done).
async fn next_batch(
    stream: Arc<tokio::sync::Mutex<Listing>>,
    max: u32,
) -> piecestore::Result<Vec<PieceInfo>> {
    use futures::StreamExt;
    let mut stream = stream.lock().await;
    let max = max.clamp(1, 100_000) as usize;
    let mut out = Vec::with_capacity(max.min(1024));
    while out.len() < max {
        match stream.next().await {
            Some(m) => out.push(PieceInfo::from(m?)),
            None => break,
        }
    }
    Ok(out)
}

#[uniffi::export]
impl PieceList {
    /// The next up to `max` pieces (1 to 100,000; default 1,000), in the backend's order; an
    /// empty list once the listing is done. An error (a backend that fails mid-listing) ends
    /// the listing.
    #[uniffi::method(default(max = 1000))]
    pub async fn next_batch(&self, max: u32) -> Result<Vec<PieceInfo>> {
        spawned(next_batch(Arc::clone(&self.stream), max)).await
    }

    /// `nextBatch`, blocking the calling thread.
    #[uniffi::method(default(max = 1000))]
    pub fn next_batch_blocking(&self, max: u32) -> Result<Vec<PieceInfo>> {
        blocking(next_batch(Arc::clone(&self.stream), max))
    }
}

/// A store of immutable pieces over memory, local disk or S3-compatible object stores.
///
/// Every operation comes twice: async (Kotlin `suspend`, Swift `async`) and `…Blocking` (for
/// Java callers and plain threads; never call those from a coroutine dispatcher or actor that
/// must not block). Both run on the same shared runtime of the core. Safe to use from many
/// threads at once.
#[derive(Clone, uniffi::Object)]
#[uniffi::export(Display)]
pub struct PieceStore {
    inner: piecestore::PieceStore,
}

impl PieceStore {
    fn core(&self) -> piecestore::PieceStore {
        self.inner.clone()
    }

    fn opened(config: Config) -> Result<Arc<Self>> {
        let inner = blocking(piecestore::PieceStore::open(config))?;
        Ok(Arc::new(PieceStore { inner }))
    }
}

impl fmt::Display for PieceStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels = self.inner.shard_labels();
        let closed = if self.inner.is_closed() {
            ", closed"
        } else {
            ""
        };
        match labels.as_slice() {
            [one] => write!(f, "PieceStore({one:?}{closed})"),
            many => write!(
                f,
                "PieceStore({:?}, shards={}{closed})",
                many.first().map(String::as_str).unwrap_or(""),
                many.len()
            ),
        }
    }
}

#[uniffi::export]
impl PieceStore {
    /// Opens the store at `spec`: a URL (`memory://`, `file:///path`, `s3://bucket/prefix`,
    /// `http://127.0.0.1:9000/bucket`), a directory path, or a path to a `.toml` config file.
    /// `options` override it, values as text (`{"shards": "4", "region": "us-east-1",
    /// "max_retries": "3", "request_timeout": "2s"}`); then the environment applies
    /// (`BUCKET_URL`, `AWS_ACCESS_KEY_ID`, ...), as everywhere in PieceStore. Blocking.
    #[uniffi::constructor(default(options))]
    pub fn open(spec: String, options: HashMap<String, String>) -> Result<Arc<Self>> {
        Self::opened(config(Config::from_spec(&spec), &options)?)
    }

    /// Opens the store a TOML document describes (its `[PieceStore]` table), with `options`
    /// and then the environment applied on top. Blocking.
    #[uniffi::constructor(default(options))]
    pub fn from_toml(text: String, options: HashMap<String, String>) -> Result<Arc<Self>> {
        Self::opened(config(Config::from_toml(&text), &options)?)
    }

    /// `open`, async: for stores whose opening checks a remote bucket.
    #[uniffi::constructor(default(options))]
    pub async fn open_async(spec: String, options: HashMap<String, String>) -> Result<Arc<Self>> {
        let config = config(Config::from_spec(&spec), &options)?;
        let inner = spawned(piecestore::PieceStore::open(config)).await?;
        Ok(Arc::new(PieceStore { inner }))
    }

    /// Stores a piece; returns once it is durable. The same bytes again succeed; different
    /// bytes under an existing key fail with `AlreadyExists` unless `overwrite` is true.
    #[uniffi::method(default(overwrite = false))]
    pub async fn put(&self, key: String, data: Vec<u8>, overwrite: bool) -> Result<()> {
        spawned(op::put(self.core(), key, data, overwrite)).await
    }

    /// The piece's bytes, verified against its checksum (`Corrupt`, never wrong bytes).
    pub async fn get(&self, key: String) -> Result<Vec<u8>> {
        spawned(op::get(self.core(), key)).await
    }

    /// `length` bytes of the piece from `offset` (`InvalidRange` if they are not all inside it).
    pub async fn get_range(&self, key: String, offset: u64, length: u64) -> Result<Vec<u8>> {
        spawned(op::get_range(self.core(), key, offset, length)).await
    }

    /// The piece's metadata (`NotFound` if there is none).
    pub async fn head(&self, key: String) -> Result<PieceInfo> {
        spawned(op::head(self.core(), key)).await
    }

    /// Whether a piece exists under `key`.
    pub async fn exists(&self, key: String) -> Result<bool> {
        spawned(op::exists(self.core(), key)).await
    }

    /// Deletes a piece; deleting a missing piece succeeds.
    pub async fn delete(&self, key: String) -> Result<()> {
        spawned(op::delete(self.core(), key)).await
    }

    /// The metadata of every piece whose key starts with `prefix` (all pieces for `""`).
    #[uniffi::method(default(prefix = ""))]
    pub async fn list(&self, prefix: String) -> Result<Vec<PieceInfo>> {
        spawned(op::list(self.core(), prefix)).await
    }

    /// Reads a piece as a stream, for a caller that passes a large piece on: a `PieceReader`
    /// whose `info` is known at once and whose chunks (about 1 MiB each) come from
    /// `nextChunk`, verified as `get` is.
    pub async fn get_stream(&self, key: String) -> Result<Arc<PieceReader>> {
        spawned(op::get_stream(self.core(), key)).await
    }

    /// `get_stream`, blocking the calling thread.
    pub fn get_stream_blocking(&self, key: String) -> Result<Arc<PieceReader>> {
        blocking(op::get_stream(self.core(), key))
    }

    /// The pieces whose key starts with `prefix`, as a listing read in batches
    /// (`PieceList.nextBatch`; in Kotlin, `listFlow` makes it a `Flow`) instead of one list of
    /// everything. Nothing is listed until the first batch is asked for.
    #[uniffi::method(default(prefix = ""))]
    pub fn list_stream(&self, prefix: String) -> Arc<PieceList> {
        Arc::new(PieceList {
            stream: Arc::new(tokio::sync::Mutex::new(self.inner.list(&prefix))),
        })
    }

    /// Deletes every piece whose key starts with `prefix`, on every shard.
    pub async fn delete_prefix(&self, prefix: String) -> Result<DeleteSummary> {
        spawned(op::delete_prefix(self.core(), prefix)).await
    }

    /// Writes the open packs of a packing store now and waits until they are durable (every
    /// put already waits for its own data; nothing to do on an unpacked store).
    pub async fn flush(&self) -> Result<()> {
        spawned(op::flush(self.core())).await
    }

    /// Garbage collection of a packed store (`piecestore gc`): deletes compacted packs whose
    /// grace period is over, rewrites packs with at least `garbage_ratio` garbage and merges
    /// undersized ones; safe while other calls and processes read and write. `grace_ms` and
    /// `garbage_ratio` unset take the store's `Pack.Grace` and `Pack.GarbageRatio`; `dry_run`
    /// only reports. An unpacked store has nothing to collect (all counts 0). `progress` is
    /// told the bytes processed and the bytes to process.
    #[uniffi::method(default(
        grace_ms = None,
        garbage_ratio = None,
        dry_run = false,
        progress = None
    ))]
    pub async fn gc(
        &self,
        grace_ms: Option<u64>,
        garbage_ratio: Option<f64>,
        dry_run: bool,
        progress: Listener,
    ) -> Result<GcReport> {
        let opts = gc_options(grace_ms, garbage_ratio, dry_run);
        spawned(op::gc(self.core(), opts, progress)).await
    }

    /// Checks a packed store (`piecestore fsck`): every pack's records against their CRCs,
    /// every index entry against its pack, orphan packs and dangling entries; with
    /// `rebuild_index`, rebuilds each shard's index from its packs alone, then checks again.
    /// Problems found are in the report's `problems`, not an error. `progress` is told the
    /// bytes read so far as packs are read (`total` 0: unknown).
    #[uniffi::method(default(rebuild_index = false, progress = None))]
    pub async fn fsck(&self, rebuild_index: bool, progress: Listener) -> Result<FsckReport> {
        spawned(op::fsck(self.core(), rebuild_index, progress)).await
    }

    /// The store's operation metrics in the Prometheus text exposition format (0.0.4):
    /// `piecestore_operations_total`, `piecestore_operation_errors_total` (by `kind`),
    /// `piecestore_operation_bytes_total` and the histogram
    /// `piecestore_operation_duration_seconds`, each labelled `backend`, `shard` and `op`. A
    /// snapshot of in-memory counters (no I/O, also after `close`); with the option
    /// `metrics=false` only the HELP and TYPE lines remain.
    pub fn metrics(&self) -> String {
        self.inner.metrics().to_prometheus()
    }

    /// Stores many pieces concurrently (the core bounds how many run at once) and returns once
    /// each is durable or has failed. The first failure in item order is thrown; the others
    /// are stored (puts are idempotent: retrying the whole call is safe). `overwrite` applies
    /// to every item.
    #[uniffi::method(default(overwrite = false))]
    pub async fn put_many(&self, items: Vec<PieceItem>, overwrite: bool) -> Result<()> {
        spawned(op::put_many(self.core(), items, overwrite)).await
    }

    /// `put_many`, blocking the calling thread.
    #[uniffi::method(default(overwrite = false))]
    pub fn put_many_blocking(&self, items: Vec<PieceItem>, overwrite: bool) -> Result<()> {
        blocking(op::put_many(self.core(), items, overwrite))
    }

    /// Reads many pieces concurrently, each verified, in the order of `keys`. The first failure
    /// in key order is thrown (`NotFound` for a missing piece), and then no piece.
    pub async fn get_many(&self, keys: Vec<String>) -> Result<Vec<Vec<u8>>> {
        spawned(op::get_many(self.core(), keys)).await
    }

    /// `get_many`, blocking the calling thread.
    pub fn get_many_blocking(&self, keys: Vec<String>) -> Result<Vec<Vec<u8>>> {
        blocking(op::get_many(self.core(), keys))
    }

    /// Copies every piece of this store into `dest` (`piecestore migrate`), verifying each:
    /// the source read against its CRC32C, and afterwards the destination's size and
    /// checksum. Pieces already at `dest` with the same size and checksum are skipped, so an
    /// interrupted run resumes by running again. `dry_run` only counts; `concurrency` pieces
    /// are in flight at once (0: 16, at most 4096). A piece that fails is listed in the
    /// report's `failures` and the run goes on; failing to list the source throws. `progress`
    /// is told the pieces handled and the pieces in the source, after every piece.
    #[uniffi::method(default(dry_run = false, concurrency = 0, progress = None))]
    pub async fn migrate_to(
        &self,
        dest: Arc<PieceStore>,
        dry_run: bool,
        concurrency: u32,
        progress: Listener,
    ) -> Result<MigrateReport> {
        spawned(op::migrate_to(
            self.core(),
            dest.core(),
            dry_run,
            concurrency,
            progress,
        ))
        .await
    }

    /// `migrate_to`, blocking the calling thread.
    #[uniffi::method(default(dry_run = false, concurrency = 0, progress = None))]
    pub fn migrate_to_blocking(
        &self,
        dest: Arc<PieceStore>,
        dry_run: bool,
        concurrency: u32,
        progress: Listener,
    ) -> Result<MigrateReport> {
        blocking(op::migrate_to(
            self.core(),
            dest.core(),
            dry_run,
            concurrency,
            progress,
        ))
    }

    /// What the store holds (`piecestore profile`), from one listing of every shard: pieces,
    /// bytes and sizes, each shard's share, orphan objects no get can reach (up to
    /// `max_orphan_samples` named; 0 means 20) and a packed store's fill and garbage.
    /// `progress` is told the objects listed so far, every 1,000 (`total` 0: unknown).
    #[uniffi::method(default(max_orphan_samples = 0, progress = None))]
    pub async fn inventory(
        &self,
        max_orphan_samples: u32,
        progress: Listener,
    ) -> Result<Inventory> {
        spawned(op::inventory(self.core(), max_orphan_samples, progress)).await
    }

    /// `inventory`, blocking the calling thread.
    #[uniffi::method(default(max_orphan_samples = 0, progress = None))]
    pub fn inventory_blocking(
        &self,
        max_orphan_samples: u32,
        progress: Listener,
    ) -> Result<Inventory> {
        blocking(op::inventory(self.core(), max_orphan_samples, progress))
    }

    /// Empties the pieces cache's tiers (memory, and the disk tier's files), as `piecestore
    /// cache clear` does; the pieces stay in the store. `false` when the store has no cache.
    /// Never needed for correctness: pieces are immutable, and deletes invalidate at once.
    pub async fn clear_cache(&self) -> Result<bool> {
        spawned(op::clear_cache(self.core())).await
    }

    /// The shard (0-based) that holds `key`, by the store's placement.
    pub fn shard_of(&self, key: String) -> u32 {
        self.inner.shard_of(&key) as u32
    }

    /// The number of shards (1 when the store is not sharded).
    pub fn shard_count(&self) -> u32 {
        self.inner.shard_count() as u32
    }

    /// Each shard's backend as a label without credentials (`http://127.0.0.1:9000/b-0`).
    pub fn shard_labels(&self) -> Vec<String> {
        self.inner.shard_labels()
    }

    /// How keys are placed on shards: `fnv-mod` (the original Go piecestore's) or `jump`.
    pub fn placement(&self) -> String {
        self.inner.placement().to_string()
    }

    /// Whether and how small pieces are packed, in words: `off (one object per piece)`, or
    /// the threshold, pack size, gc settings and where the index is kept.
    pub fn packing(&self) -> String {
        self.inner.packing()
    }

    /// Closes the store: later calls fail with `Closed`. Every put that returned is already
    /// durable. (Kotlin: `closeStore`, since `close` is `AutoCloseable`'s, which frees the
    /// native handle.)
    pub async fn close(&self) -> Result<()> {
        spawned(op::close(self.core())).await
    }

    /// Whether the store was closed (by this object or another handle to the same store).
    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// `put`, blocking the calling thread.
    #[uniffi::method(default(overwrite = false))]
    pub fn put_blocking(&self, key: String, data: Vec<u8>, overwrite: bool) -> Result<()> {
        blocking(op::put(self.core(), key, data, overwrite))
    }

    /// `get`, blocking the calling thread.
    pub fn get_blocking(&self, key: String) -> Result<Vec<u8>> {
        blocking(op::get(self.core(), key))
    }

    /// `getRange`, blocking the calling thread.
    pub fn get_range_blocking(&self, key: String, offset: u64, length: u64) -> Result<Vec<u8>> {
        blocking(op::get_range(self.core(), key, offset, length))
    }

    /// `head`, blocking the calling thread.
    pub fn head_blocking(&self, key: String) -> Result<PieceInfo> {
        blocking(op::head(self.core(), key))
    }

    /// `exists`, blocking the calling thread.
    pub fn exists_blocking(&self, key: String) -> Result<bool> {
        blocking(op::exists(self.core(), key))
    }

    /// `delete`, blocking the calling thread.
    pub fn delete_blocking(&self, key: String) -> Result<()> {
        blocking(op::delete(self.core(), key))
    }

    /// `list`, blocking the calling thread.
    #[uniffi::method(default(prefix = ""))]
    pub fn list_blocking(&self, prefix: String) -> Result<Vec<PieceInfo>> {
        blocking(op::list(self.core(), prefix))
    }

    /// `deletePrefix`, blocking the calling thread.
    pub fn delete_prefix_blocking(&self, prefix: String) -> Result<DeleteSummary> {
        blocking(op::delete_prefix(self.core(), prefix))
    }

    /// `flush`, blocking the calling thread.
    pub fn flush_blocking(&self) -> Result<()> {
        blocking(op::flush(self.core()))
    }

    /// `clear_cache`, blocking the calling thread.
    pub fn clear_cache_blocking(&self) -> Result<bool> {
        blocking(op::clear_cache(self.core()))
    }

    /// `gc`, blocking the calling thread.
    #[uniffi::method(default(
        grace_ms = None,
        garbage_ratio = None,
        dry_run = false,
        progress = None
    ))]
    pub fn gc_blocking(
        &self,
        grace_ms: Option<u64>,
        garbage_ratio: Option<f64>,
        dry_run: bool,
        progress: Listener,
    ) -> Result<GcReport> {
        let opts = gc_options(grace_ms, garbage_ratio, dry_run);
        blocking(op::gc(self.core(), opts, progress))
    }

    /// `fsck`, blocking the calling thread.
    #[uniffi::method(default(rebuild_index = false, progress = None))]
    pub fn fsck_blocking(&self, rebuild_index: bool, progress: Listener) -> Result<FsckReport> {
        blocking(op::fsck(self.core(), rebuild_index, progress))
    }

    /// `close`, blocking the calling thread.
    pub fn close_blocking(&self) -> Result<()> {
        blocking(op::close(self.core()))
    }
}
