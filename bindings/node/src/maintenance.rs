//! A store's upkeep from JavaScript: `flush`, `gc`, `fsck`, `clearCache` and `inventory`, their
//! options, reports and progress callbacks. The work is the core's (`PieceStore::gc`,
//! `PieceStore::fsck`, `PieceStore::inventory`).

use std::time::Duration;

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{
    ThreadsafeCallContext, ThreadsafeFunction, ThreadsafeFunctionCallMode,
};
use napi_derive::napi;
use piecestore::pack::fsck::{FsckOptions, FsckProblem as CoreProblem, FsckReport as CoreFsck};
use piecestore::pack::gc::{DoomedSummary as CoreDoomed, GcOptions, GcReport as CoreGc};
use piecestore::profile::{Inventory as CoreInventory, InventoryOptions};

use crate::OrNull;
use crate::args::Args;
use crate::promise::promise;
use crate::store::{PieceStore, Timestamp};

/// Options of `gc()`.
#[napi(object, object_from_js = false, object_to_js = false)]
pub struct GcOpts {
    /// Seconds compacted packs wait before they are deleted (default: the store's
    /// `Pack.Grace`); readers that looked a piece up before the compaction may still read them.
    pub grace: Option<f64>,
    /// Compact packs with at least this share of garbage, from 0 to 1 (default: the store's
    /// `Pack.GarbageRatio`).
    pub garbage_ratio: Option<f64>,
    /// Only report what would be done.
    pub dry_run: Option<bool>,
    /// Called with the bytes of packs processed so far and the total, as gc goes.
    #[napi(ts_type = "(done: number, total: number) => void")]
    pub on_progress: Option<()>,
}

/// Options of `fsck()`.
#[napi(object, object_from_js = false, object_to_js = false)]
pub struct FsckOpts {
    /// Rebuild each shard's index from its packs alone (after checking), then check again.
    pub rebuild_index: Option<bool>,
    /// Called with the bytes read so far, as fsck goes.
    #[napi(ts_type = "(bytesRead: number) => void")]
    pub on_progress: Option<()>,
}

/// The compacted packs that wait for their grace period (`GcReport.doomed`).
#[napi(object, object_from_js = false)]
pub struct DoomedSummary {
    /// How many.
    pub packs: i64,
    /// Their bytes: the storage that deleting them frees.
    pub bytes: i64,
    /// When the first may be deleted; `null` when none waits.
    #[napi(ts_type = "Date | null")]
    pub first_due: OrNull<Timestamp>,
    /// When the last may be deleted; `null` when none waits.
    #[napi(ts_type = "Date | null")]
    pub last_due: OrNull<Timestamp>,
    /// The grace period these times were computed with, in seconds.
    pub grace_seconds: f64,
}

/// What `gc()` did, summed over shards (the fields of `piecestore gc --json`).
#[napi(object, object_from_js = false)]
pub struct GcReport {
    /// Packs before.
    pub packs_before: i64,
    /// Packs after (live and doomed).
    pub packs_after: i64,
    /// Packs whose live pieces were copied out.
    pub packs_compacted: i64,
    /// New packs written.
    pub packs_written: i64,
    /// Compacted packs deleted (grace over).
    pub packs_deleted: i64,
    /// Compacted packs still waiting for their grace period.
    pub packs_doomed: i64,
    /// Pieces copied into new packs.
    pub pieces_moved: i64,
    /// Their bytes.
    pub bytes_moved: i64,
    /// Storage freed by deleting packs.
    pub bytes_reclaimed: i64,
    /// Tombstones no pack needs any more, dropped.
    pub tombstones_dropped: i64,
    /// Packs left alone because they are damaged (`fsck()` names them).
    pub packs_damaged: i64,
    /// The compacted packs left after this run.
    pub doomed: DoomedSummary,
}

/// One thing `fsck()` found wrong.
#[napi(object, object_from_js = false)]
pub struct FsckProblem {
    /// The shard.
    pub shard: u32,
    /// The pack object, when the problem is in or about a pack.
    #[napi(ts_type = "string | null")]
    pub pack: OrNull<String>,
    /// The piece key, when one piece is concerned.
    #[napi(ts_type = "string | null")]
    pub key: OrNull<String>,
    /// What is wrong.
    pub what: String,
}

/// What `fsck()` found, summed over shards (the fields of `piecestore fsck --json`).
#[napi(object, object_from_js = false)]
pub struct FsckReport {
    /// Pack objects read.
    pub packs: i64,
    /// Their bytes.
    pub bytes: i64,
    /// Records (pieces and tombstones) verified.
    pub records: i64,
    /// Index entries checked.
    pub entries: i64,
    /// Packed pieces checked against their packs' records.
    pub packed_pieces: i64,
    /// Pieces stored as objects of their own, read whole and verified.
    pub objects: i64,
    /// Their bytes.
    pub object_bytes: i64,
    /// Of those, pieces with no checksum anywhere: read, but not verifiable.
    pub objects_unverified: i64,
    /// What is wrong (after the rebuild, when one ran); empty when the store is clean.
    pub problems: Vec<FsckProblem>,
    /// Problems found before the rebuild; `null` without one.
    #[napi(ts_type = "FsckProblem[] | null")]
    pub problems_before_rebuild: OrNull<Vec<FsckProblem>>,
    /// Pieces indexed by the rebuild; `null` without one.
    #[napi(ts_type = "number | null")]
    pub rebuilt_pieces: OrNull<i64>,
}

/// Options of `inventory()`.
#[napi(object, object_from_js = false, object_to_js = false)]
pub struct InventoryOpts {
    /// How many orphan objects to name in `orphans.samples` (all are counted; default 20).
    pub max_orphan_samples: Option<u32>,
    /// Called with the number of objects listed so far, every 1,000 objects.
    #[napi(ts_type = "(objectsListed: number) => void")]
    pub on_progress: Option<()>,
}

/// Pieces of `min` to `max` bytes (`Inventory.sizes`).
#[napi(object, object_from_js = false)]
pub struct SizeBucket {
    /// The smallest size in the bucket.
    pub min: i64,
    /// The largest size in the bucket (0 or a power of two).
    pub max: i64,
    /// Pieces in the bucket.
    pub pieces: i64,
    /// Their bytes.
    pub bytes: i64,
}

/// One shard's share of a store (`Inventory.shards`).
#[napi(object, object_from_js = false)]
pub struct ShardInventory {
    /// The shard index.
    pub shard: u32,
    /// The shard's backend, as a label without credentials.
    pub backend: String,
    /// Pieces that belong here.
    pub pieces: i64,
    /// Their bytes.
    pub bytes: i64,
    /// Orphans found on this shard.
    pub orphans: i64,
}

/// One orphan object named in `Orphans.samples`.
#[napi(object, object_from_js = false)]
pub struct OrphanSample {
    /// The shard it is on.
    pub shard: u32,
    /// Its key (object name).
    pub key: String,
    /// Why no get reaches it.
    pub why: String,
}

/// Objects no `get` can reach, by why (`Inventory.orphans`).
#[napi(object, object_from_js = false)]
pub struct Orphans {
    /// Valid piece keys on a shard other than the one the placement gives them.
    pub misplaced: i64,
    /// Their bytes.
    pub misplaced_bytes: i64,
    /// Temp files of writes that never finished.
    pub temp: i64,
    /// Objects whose names are not valid piece keys.
    pub foreign: i64,
    /// PieceStore's own leftovers under `.piecestore/`.
    pub internal: i64,
    /// Bytes of temp, foreign and internal objects.
    pub other_bytes: i64,
    /// Some of them (up to `maxOrphanSamples`).
    pub samples: Vec<OrphanSample>,
}

/// Pack fill and garbage of a store that packs small pieces (`Inventory.packs`).
#[napi(object, object_from_js = false)]
pub struct PackStats {
    /// Pack objects.
    pub packs: i64,
    /// Of which compacted, waiting for their grace period to end.
    pub doomed: i64,
    /// Pieces in packs.
    pub pieces: i64,
    /// Pack bytes.
    pub bytes: i64,
    /// Bytes of live pieces in packs.
    pub live_bytes: i64,
    /// Live bytes over pack bytes.
    pub fill: f64,
    /// Dead bytes over pack bytes.
    pub garbage_ratio: f64,
}

/// What a store holds (`inventory()`; the fields of `piecestore profile --json`).
#[napi(object, object_from_js = false)]
pub struct Inventory {
    /// Pieces on the shard their key belongs to (what `get` can read).
    pub pieces: i64,
    /// Their bytes.
    pub bytes: i64,
    /// The smallest piece (0 without pieces).
    pub min_size: i64,
    /// The largest piece.
    pub max_size: i64,
    /// Pieces by size: power-of-two buckets, only non-empty ones, smallest first.
    pub sizes: Vec<SizeBucket>,
    /// Each shard's share.
    pub shards: Vec<ShardInventory>,
    /// The fullest shard's bytes over the mean (1 = balanced; 0 without pieces).
    pub bytes_skew: f64,
    /// The fullest shard's piece count over the mean.
    pub pieces_skew: f64,
    /// Objects no `get` can reach.
    pub orphans: Orphans,
    /// Pack fill and garbage; `null` when the store does not pack small pieces.
    #[napi(ts_type = "PackStats | null")]
    pub packs: OrNull<PackStats>,
}

impl From<CoreInventory> for Inventory {
    fn from(r: CoreInventory) -> Self {
        let o = r.orphans;
        Inventory {
            pieces: n(r.pieces),
            bytes: n(r.bytes),
            min_size: n(r.min_size),
            max_size: n(r.max_size),
            sizes: r
                .sizes
                .into_iter()
                .map(|b| SizeBucket {
                    min: n(b.min),
                    max: n(b.max),
                    pieces: n(b.pieces),
                    bytes: n(b.bytes),
                })
                .collect(),
            shards: r
                .shards
                .into_iter()
                .map(|s| ShardInventory {
                    shard: u32::try_from(s.shard).unwrap_or(u32::MAX),
                    backend: s.backend,
                    pieces: n(s.pieces),
                    bytes: n(s.bytes),
                    orphans: n(s.orphans),
                })
                .collect(),
            bytes_skew: r.bytes_skew,
            pieces_skew: r.pieces_skew,
            orphans: Orphans {
                misplaced: n(o.misplaced),
                misplaced_bytes: n(o.misplaced_bytes),
                temp: n(o.temp),
                foreign: n(o.foreign),
                internal: n(o.internal),
                other_bytes: n(o.other_bytes),
                samples: o
                    .samples
                    .into_iter()
                    .map(|(shard, key, why)| OrphanSample {
                        shard: u32::try_from(shard).unwrap_or(u32::MAX),
                        key,
                        why,
                    })
                    .collect(),
            },
            packs: OrNull(r.packs.map(|p| PackStats {
                packs: n(p.packs),
                doomed: n(p.doomed),
                pieces: n(p.pieces),
                bytes: n(p.bytes),
                live_bytes: n(p.live_bytes),
                fill: p.fill,
                garbage_ratio: p.garbage_ratio,
            })),
        }
    }
}

/// Options of `migrateTo()`.
#[napi(object, object_from_js = false, object_to_js = false)]
pub struct MigrateOpts {
    /// Only count: list the source and look each piece up at the destination, copy nothing.
    pub dry_run: Option<bool>,
    /// Pieces in flight at once: 1 to 4096 (default 16).
    pub concurrency: Option<u32>,
    /// Called after every piece with the pieces handled so far and the total.
    #[napi(ts_type = "(donePieces: number, totalPieces: number) => void")]
    pub on_progress: Option<()>,
}

/// One piece `migrateTo()` could not copy.
#[napi(object, object_from_js = false)]
pub struct MigrateFailure {
    /// The piece key.
    pub key: String,
    /// The error's stable code (`PIECE_NOT_FOUND`, `PIECE_EXISTS`, ...).
    pub code: String,
    /// What went wrong.
    pub message: String,
}

/// What `migrateTo()` did.
#[napi(object, object_from_js = false)]
pub struct MigrateReport {
    /// Pieces in the source.
    pub total_pieces: i64,
    /// Their bytes.
    pub total_bytes: i64,
    /// Pieces handled (copied, skipped or failed).
    pub done_pieces: i64,
    /// Their bytes.
    pub done_bytes: i64,
    /// Pieces copied (or, in a dry run, that would be).
    pub copied: i64,
    /// Bytes copied (or that would be).
    pub copied_bytes: i64,
    /// Pieces already at the destination with the same size and checksum.
    pub skipped: i64,
    /// Pieces that failed.
    pub failed: i64,
    /// Each failed piece.
    pub failures: Vec<MigrateFailure>,
}

impl From<piecestore::migrate::MigrateSummary> for MigrateReport {
    fn from(r: piecestore::migrate::MigrateSummary) -> Self {
        let p = r.progress;
        MigrateReport {
            total_pieces: n(p.total_pieces),
            total_bytes: n(p.total_bytes),
            done_pieces: n(p.done_pieces),
            done_bytes: n(p.done_bytes),
            copied: n(p.copied),
            copied_bytes: n(p.copied_bytes),
            skipped: n(p.skipped),
            failed: n(p.failed),
            failures: r
                .failure_reports()
                .into_iter()
                .map(|f| MigrateFailure {
                    key: f.key,
                    code: f.code.into(),
                    message: f.message,
                })
                .collect(),
        }
    }
}

fn n(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn due(ms: Option<u64>) -> OrNull<Timestamp> {
    OrNull(ms.map(|ms| Timestamp(ms as f64)))
}

impl From<CoreGc> for GcReport {
    fn from(r: CoreGc) -> Self {
        let d: CoreDoomed = r.doomed;
        GcReport {
            packs_before: n(r.packs_before),
            packs_after: n(r.packs_after),
            packs_compacted: n(r.packs_compacted),
            packs_written: n(r.packs_written),
            packs_deleted: n(r.packs_deleted),
            packs_doomed: n(r.packs_doomed),
            pieces_moved: n(r.pieces_moved),
            bytes_moved: n(r.bytes_moved),
            bytes_reclaimed: n(r.bytes_reclaimed),
            tombstones_dropped: n(r.tombstones_dropped),
            packs_damaged: n(r.packs_damaged),
            doomed: DoomedSummary {
                packs: n(d.packs),
                bytes: n(d.bytes),
                first_due: due(d.first_due_ms),
                last_due: due(d.last_due_ms),
                grace_seconds: d.grace_ms as f64 / 1000.0,
            },
        }
    }
}

impl From<CoreProblem> for FsckProblem {
    fn from(p: CoreProblem) -> Self {
        FsckProblem {
            shard: u32::try_from(p.shard).unwrap_or(u32::MAX),
            pack: OrNull(p.pack),
            key: OrNull(p.key),
            what: p.what,
        }
    }
}

fn problems(v: Vec<CoreProblem>) -> Vec<FsckProblem> {
    v.into_iter().map(FsckProblem::from).collect()
}

impl From<CoreFsck> for FsckReport {
    fn from(r: CoreFsck) -> Self {
        FsckReport {
            packs: n(r.packs),
            bytes: n(r.bytes),
            records: n(r.records),
            entries: n(r.entries),
            packed_pieces: n(r.packed_pieces),
            objects: n(r.objects),
            object_bytes: n(r.object_bytes),
            objects_unverified: n(r.objects_unverified),
            problems: problems(r.problems),
            problems_before_rebuild: OrNull(r.problems_before_rebuild.map(problems)),
            rebuilt_pieces: OrNull(r.rebuilt_pieces.map(n)),
        }
    }
}

/// A progress callback called from the core's threads: each call is queued to the event loop
/// (never blocking the work), so calls may still arrive after the promise settles.
type Progress<A> = ThreadsafeFunction<A, Unknown<'static>, FnArgs<A>, Status, false>;

/// The `onProgress` member of an options object, as a function callable from any thread.
fn on_progress<A: 'static>(a: Args<'_>, o: &Object<'_>, what: &str) -> Result<Option<Progress<A>>>
where
    FnArgs<A>: JsValuesTupleIntoVec,
{
    let v: Option<Unknown<'_>> = o.get("onProgress")?;
    let Some(v) = v else { return Ok(None) };
    match v.get_type()? {
        ValueType::Undefined | ValueType::Null => Ok(None),
        ValueType::Function => {
            // SAFETY: the value is a function.
            let f: Function<'_, FnArgs<A>, Unknown<'static>> = unsafe { v.cast() }?;
            // `FnArgs`: the tuple's members become the call's arguments (a bare tuple would be
            // passed as one array).
            Ok(Some(
                f.build_threadsafe_function::<A>()
                    .callee_handled::<false>()
                    .build_callback(|cx: ThreadsafeCallContext<A>| Ok(FnArgs::from(cx.value)))?,
            ))
        }
        _ => Err(a.type_error(what, "a function", &v)),
    }
}

#[napi]
impl PieceStore {
    /// Writes every shard's open pack now and waits until it is durable. Each `put` already
    /// waits for its own pack; this is for a caller that wants the open packs out (before a
    /// snapshot of the directory). Nothing to do for an unpacked store.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn flush<'env>(&self, env: &'env Env) -> Result<PromiseRaw<'env, ()>> {
        let store = self.inner.clone();
        promise(env, async move { store.flush().await }, false)
    }

    /// Empties the pieces cache's tiers (memory, and the disk tier's files), as `piecestore
    /// cache clear` does; the pieces stay in the store. Resolves `false` when the store has no
    /// cache. Never needed for correctness: pieces are immutable, and deletes invalidate at once.
    #[napi(ts_return_type = "Promise<boolean>")]
    pub fn clear_cache<'env>(&self, env: &'env Env) -> Result<PromiseRaw<'env, bool>> {
        let store = self.inner.clone();
        promise(env, async move { Ok(store.clear_cache().await) }, false)
    }

    /// Garbage collection of a packed store (`piecestore gc`): deletes compacted packs whose
    /// grace period is over, rewrites packs with at least `garbageRatio` garbage and merges
    /// undersized ones; safe while other calls and processes read and write. An unpacked store
    /// has nothing to collect (all counts 0).
    #[napi(
        ts_args_type = "options?: GcOpts",
        ts_return_type = "Promise<GcReport>"
    )]
    pub fn gc<'env>(
        &self,
        env: &'env Env,
        options: Option<Unknown<'_>>,
    ) -> Result<PromiseRaw<'env, GcReport>> {
        let a = Args::new(env, "gc");
        let mut opts = GcOptions::default();
        let mut progress: Option<Progress<(f64, f64)>> = None;
        if let Some(o) = a.opt_object(options, "options", "an object such as { grace: 0 }")? {
            if let Some(v) = o.get::<Unknown<'_>>("grace")?
                && !crate::args::is_nullish(&v)?
            {
                let secs = a.number(v, "options.grace")?;
                if !(secs.is_finite() && secs >= 0.0) {
                    return Err(a.range_error("options.grace", "0 or more seconds", secs));
                }
                opts.grace = Some(Duration::from_secs_f64(secs));
            }
            if let Some(v) = o.get::<Unknown<'_>>("garbageRatio")?
                && !crate::args::is_nullish(&v)?
            {
                let r = a.number(v, "options.garbageRatio")?;
                if !(0.0..=1.0).contains(&r) {
                    return Err(a.range_error("options.garbageRatio", "from 0 to 1", r));
                }
                opts.garbage_ratio = Some(r);
            }
            opts.dry_run = a
                .opt_bool(o.get("dryRun")?, "options.dryRun")?
                .unwrap_or(false);
            progress = on_progress(a, &o, "options.onProgress")?;
        }
        let store = self.inner.clone();
        promise(
            env,
            async move {
                let report = store
                    .gc(opts, &|p| {
                        if let Some(f) = &progress {
                            f.call(
                                (p.done as f64, p.total as f64),
                                ThreadsafeFunctionCallMode::NonBlocking,
                            );
                        }
                    })
                    .await?;
                Ok(GcReport::from(report))
            },
            false,
        )
    }

    /// Checks a packed store (`piecestore fsck`): every pack's records against their CRCs,
    /// every index entry against its pack, orphan packs, dangling entries and live-byte
    /// accounting; with `rebuildIndex`, rebuilds each shard's index from its packs alone, then
    /// checks again. Problems found are in the report's `problems`, not a rejection.
    #[napi(
        ts_args_type = "options?: FsckOpts",
        ts_return_type = "Promise<FsckReport>"
    )]
    pub fn fsck<'env>(
        &self,
        env: &'env Env,
        options: Option<Unknown<'_>>,
    ) -> Result<PromiseRaw<'env, FsckReport>> {
        let a = Args::new(env, "fsck");
        let mut opts = FsckOptions::default();
        let mut progress: Option<Progress<(f64,)>> = None;
        if let Some(o) = a.opt_object(
            options,
            "options",
            "an object such as { rebuildIndex: true }",
        )? {
            opts.rebuild_index = a
                .opt_bool(o.get("rebuildIndex")?, "options.rebuildIndex")?
                .unwrap_or(false);
            progress = on_progress(a, &o, "options.onProgress")?;
        }
        let store = self.inner.clone();
        promise(
            env,
            async move {
                let report = store
                    .fsck(opts, &|bytes| {
                        if let Some(f) = &progress {
                            f.call((bytes as f64,), ThreadsafeFunctionCallMode::NonBlocking);
                        }
                    })
                    .await?;
                Ok(FsckReport::from(report))
            },
            false,
        )
    }

    /// What the store holds (`piecestore profile`): pieces, bytes and sizes, each shard's
    /// share and the skew between them, orphan objects no get can reach (misplaced, temp,
    /// foreign), and a packed store's fill and garbage, from one listing of every shard.
    #[napi(
        ts_args_type = "options?: InventoryOpts",
        ts_return_type = "Promise<Inventory>"
    )]
    pub fn inventory<'env>(
        &self,
        env: &'env Env,
        options: Option<Unknown<'_>>,
    ) -> Result<PromiseRaw<'env, Inventory>> {
        let a = Args::new(env, "inventory");
        let mut opts = InventoryOptions::default();
        let mut progress: Option<Progress<(f64,)>> = None;
        if let Some(o) = a.opt_object(
            options,
            "options",
            "an object such as { maxOrphanSamples: 5 }",
        )? {
            if let Some(v) = o.get::<Unknown<'_>>("maxOrphanSamples")?
                && !crate::args::is_nullish(&v)?
            {
                let max = a.number(v, "options.maxOrphanSamples")?;
                if !(max.is_finite() && max >= 1.0 && max.fract() == 0.0 && max <= 1e6) {
                    return Err(a.range_error(
                        "options.maxOrphanSamples",
                        "a whole number from 1 to 1000000",
                        max,
                    ));
                }
                opts.max_orphan_samples = max as usize;
            }
            progress = on_progress(a, &o, "options.onProgress")?;
        }
        let store = self.inner.clone();
        promise(
            env,
            async move {
                let report = store
                    .inventory(opts, &|listed| {
                        if let Some(f) = &progress {
                            f.call((listed as f64,), ThreadsafeFunctionCallMode::NonBlocking);
                        }
                    })
                    .await?;
                Ok(Inventory::from(report))
            },
            false,
        )
    }

    /// Copies every piece of this store into `dest` (`piecestore migrate`), verifying each:
    /// the source read against its CRC32C, and afterwards the destination's size and
    /// checksum. Pieces already at `dest` with the same size and checksum are skipped, so an
    /// interrupted run resumes by running again. A piece that fails is listed in the report's
    /// `failures` and the run goes on; failing to list the source rejects.
    #[napi(
        ts_args_type = "dest: PieceStore, options?: MigrateOpts",
        ts_return_type = "Promise<MigrateReport>"
    )]
    pub fn migrate_to<'env>(
        &self,
        env: &'env Env,
        dest: &PieceStore,
        options: Option<Unknown<'_>>,
    ) -> Result<PromiseRaw<'env, MigrateReport>> {
        let a = Args::new(env, "migrateTo");
        let mut opts = piecestore::migrate::MigrateOptions::default();
        let mut progress: Option<Progress<(f64, f64)>> = None;
        if let Some(o) = a.opt_object(options, "options", "an object such as { dryRun: true }")? {
            opts.dry_run = a
                .opt_bool(o.get("dryRun")?, "options.dryRun")?
                .unwrap_or(false);
            if let Some(v) = o.get::<Unknown<'_>>("concurrency")?
                && !crate::args::is_nullish(&v)?
            {
                // A whole number, then the core's own check (MigrateOptions::check) decides
                // the bounds; either failing is a RangeError thrown here, synchronously.
                let c = a.number(v, "options.concurrency")?;
                let whole = c.is_finite() && c >= 0.0 && c.fract() == 0.0;
                // `as` saturates: a number past usize::MAX still fails the core's check.
                opts.concurrency = c as usize;
                if !whole || opts.check().is_err() {
                    let max = piecestore::migrate::MigrateOptions::MAX_CONCURRENCY;
                    return Err(a.range_error(
                        "options.concurrency",
                        &format!("a whole number from 1 to {max}"),
                        c,
                    ));
                }
            }
            progress = on_progress(a, &o, "options.onProgress")?;
        }
        let (store, dest) = (self.inner.clone(), dest.inner.clone());
        promise(
            env,
            async move {
                let report = store
                    .migrate_to(&dest, opts, &|p| {
                        if let Some(f) = &progress {
                            f.call(
                                (p.done_pieces as f64, p.total_pieces as f64),
                                ThreadsafeFunctionCallMode::NonBlocking,
                            );
                        }
                    })
                    .await?;
                Ok(MigrateReport::from(report))
            },
            false,
        )
    }
}
