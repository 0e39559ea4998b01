//! The object-storage benchmark behind `piecestore bench`: a load generator in the manner of
//! MinIO warp and `juicefs objbench`, over any [`PieceStore`] (raw backends or sharded).
//!
//! A run has four phases:
//! 1. **prepare**: for workloads that read, stat, delete or list, `objects` pieces are written
//!    first (under a fresh prefix `bench-<random>/`), split between the workers;
//! 2. **warm-up**: the workload runs for `warmup`, unmeasured (connections, caches);
//! 3. **measure**: the workload runs for `duration` or `count` operations; each worker keeps
//!    its own HDR histograms (no shared lock on the hot path), merged at the end;
//! 4. **cleanup**: everything under the prefix is deleted, unless `keep`.
//!
//! Every operation goes through the store's public API, so gets are verified against their
//! checksums as a user's would be; the report counts every operation issued per phase
//! ([`Issued`]), so a server's request log can be checked against it.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::time::Duration;
//! use piecestore::{Config, PieceStore};
//! use piecestore::bench::{BenchOptions, run};
//! let store = PieceStore::open(Config::from_url("memory://")?).await?;
//! let opts = BenchOptions {
//!     workload: "get".parse()?,
//!     sizes: "4KiB".parse()?,
//!     concurrency: 4,
//!     duration: None,
//!     count: Some(1000),
//!     warmup: Duration::ZERO,
//!     objects: 100,
//!     ..Default::default()
//! };
//! let report = run(&store, &opts, &|_| {}).await?;
//! assert_eq!(report.ops[0].count, 1000);
//! assert_eq!(report.issued.prepare["put"], 100);
//! assert_eq!(report.cleanup.as_ref().unwrap().pieces, 100);
//! # Ok::<_, piecestore::Error>(())
//! # }).unwrap();
//! ```

mod check;
mod report;
mod spec;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use hdrhistogram::Histogram;

pub use self::check::{CheckResult, run_checks};
pub use self::report::{
    CacheReport, Cleanup, Issued, Latency, OpReport, REPORT_VERSION, Report, Second, Totals,
    compare, human_rate, human_us,
};
pub use self::spec::{BenchOp, MAX_OBJECT_SIZE, SizeSpec, Workload, human_size, parse_size};
use crate::error::{Error, Result};
use crate::store::PieceStore;

/// What a benchmark does.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The operations, one or a mix.
    pub workload: Workload,
    /// Object sizes.
    pub sizes: SizeSpec,
    /// Workers issuing operations at once.
    pub concurrency: usize,
    /// Measure for this long (ignored when `count` is set).
    pub duration: Option<Duration>,
    /// Measure this many operations in all.
    pub count: Option<u64>,
    /// Run unmeasured for this long first.
    pub warmup: Duration,
    /// Pieces to write before measuring get, head, delete, list or a mix.
    pub objects: u64,
    /// Run the functional checks first, and stop on a failure.
    pub check: bool,
    /// Leave the pieces written in place.
    pub keep: bool,
    /// The key prefix of the run; `None` makes a fresh `bench-<random>/`.
    pub prefix: Option<String>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            workload: Workload::single(BenchOp::Put),
            sizes: SizeSpec::Fixed(4096),
            concurrency: 16,
            duration: Some(Duration::from_secs(10)),
            count: None,
            warmup: Duration::from_secs(1),
            objects: 1000,
            check: false,
            keep: false,
            prefix: None,
        }
    }
}

/// Where a run is, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The functional checks.
    Check,
    /// Writing the pieces the workload needs.
    Prepare,
    /// Running unmeasured.
    Warmup,
    /// Measuring.
    Measure,
    /// Deleting what the run wrote.
    Cleanup,
}

impl Phase {
    /// `check`, `prepare`, `warm-up`, `measure` or `cleanup`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Check => "check",
            Phase::Prepare => "prepare",
            Phase::Warmup => "warm-up",
            Phase::Measure => "measure",
            Phase::Cleanup => "cleanup",
        }
    }
}

/// A progress update, about four times a second.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// The phase.
    pub phase: Phase,
    /// Time in this phase.
    pub elapsed: Duration,
    /// The phase's planned length, when it is time-bound.
    pub planned: Option<Duration>,
    /// Operations done in this phase (failed ones included).
    pub done: u64,
    /// Operations planned in this phase, when it is count-bound.
    pub planned_ops: Option<u64>,
    /// Failed operations in this phase.
    pub errors: u64,
    /// Operations per second over the last update interval.
    pub ops_per_s: f64,
}

/// Deterministic pseudo-random bytes (xorshift), the payload of every put.
pub(crate) fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

fn random_token() -> String {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        ^ (u64::from(std::process::id()) << 32);
    let mut rng = Rng(seed | 1);
    (0..8)
        .map(|_| b"abcdefghijklmnopqrstuvwxyz0123456789"[(rng.next() % 36) as usize] as char)
        .collect()
}

const PHASE_PREPARE: u8 = 0;
const PHASE_WARMUP: u8 = 1;
const PHASE_MEASURE: u8 = 2;
const PHASE_DONE: u8 = 3;

/// What the workers share: the phase, the stop flag, the count tickets and live counters.
struct Shared {
    phase: AtomicU8,
    stop: AtomicBool,
    tickets: AtomicU64,
    /// Operations and errors of the current phase (for progress).
    done: AtomicU64,
    errors: AtomicU64,
    /// Workers that ran out of pieces to delete.
    exhausted: AtomicU64,
    measure_start: std::sync::OnceLock<Instant>,
    /// Latency histograms: one per worker up to [`HIST_STRIPES`] workers, beyond that worker
    /// `w` shares stripe `w % HIST_STRIPES` (a histogram of 1 ns to 1 hour at 3 significant
    /// digits is ~270 KB: one per worker would take 9 GB at 32,768 workers).
    hists: Vec<std::sync::Mutex<Hists>>,
}

/// The most latency histograms a run keeps (see [`Shared::hists`]).
const HIST_STRIPES: usize = 64;

/// Latency histograms of some workers, per operation, and their gets' time to first byte.
struct Hists {
    latency: Vec<Option<Histogram<u64>>>,
    ttfb: Option<Histogram<u64>>,
}

impl Hists {
    fn new() -> Self {
        Hists {
            latency: (0..5).map(|_| None).collect(),
            ttfb: None,
        }
    }
}

/// One worker's results.
struct WorkerStats {
    count: [u64; 5],
    bytes: [u64; 5],
    errors: [BTreeMap<&'static str, u64>; 5],
    issued_warmup: [u64; 5],
    issued_measure: [u64; 5],
    timeline: Vec<SecondAcc>,
    last_end: Option<Instant>,
}

#[derive(Default, Clone)]
struct SecondAcc {
    ops: [u64; 5],
    errors: u64,
    bytes: u64,
    latency_ns: u64,
}

fn histogram() -> Histogram<u64> {
    // 1 ns .. 1 hour at 3 significant digits; values are clamped into range.
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

impl WorkerStats {
    fn new() -> Self {
        WorkerStats {
            count: [0; 5],
            bytes: [0; 5],
            errors: Default::default(),
            issued_warmup: [0; 5],
            issued_measure: [0; 5],
            timeline: Vec::new(),
            last_end: None,
        }
    }
}

/// A worker's pieces: what it prepared or put, for it to read and delete (no other worker
/// touches them, so a mix never reads a piece another worker just deleted).
struct Pool {
    pieces: Vec<(String, u64)>,
    next_seq: u64,
}

/// Runs the benchmark `opts` describes on `store`. `progress` is called about four times a
/// second. Fails only when the run cannot start (bad options, or the preparation's writes
/// fail); failed operations while measuring are counted in the report, not returned. When a
/// functional check fails (`check`), no load runs: the report has the checks and says why in
/// [`Report::stopped_early`] (see [`Report::check_failed`]).
pub async fn run(
    store: &PieceStore,
    opts: &BenchOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Report> {
    if opts.concurrency == 0 {
        return Err(Error::config("concurrency must be at least 1"));
    }
    if opts.count == Some(0) {
        return Err(Error::config("count must be at least 1"));
    }
    if opts.count.is_none() && opts.duration.is_none_or(|d| d.is_zero()) {
        return Err(Error::config("give a duration above zero or a count"));
    }
    let needs_pool = opts
        .workload
        .weights()
        .iter()
        .any(|(op, _)| *op != BenchOp::Put);
    if needs_pool && opts.objects == 0 && !opts.workload.is_mixed() {
        return Err(Error::config(format!(
            "the {} workload needs objects to work on (objects must be at least 1)",
            opts.workload
        )));
    }
    let prefix = match &opts.prefix {
        Some(p) => {
            crate::key::validate_prefix(p)?;
            p.clone()
        }
        None => format!("bench-{}/", random_token()),
    };
    store.check().await?;
    let started_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);

    let mut checks = Vec::new();
    if opts.check {
        progress(Progress {
            phase: Phase::Check,
            elapsed: Duration::ZERO,
            planned: None,
            done: 0,
            planned_ops: None,
            errors: 0,
            ops_per_s: 0.0,
        });
        checks = run_checks(store, &prefix).await;
        if let Some(failed) = checks.iter().find(|c| !c.passed) {
            let why = format!(
                "functional check {:?} failed: {}",
                failed.name,
                failed.detail.as_deref().unwrap_or("")
            );
            let mut report = merge(
                Vec::new(),
                Vec::new(),
                opts,
                Duration::ZERO,
                &mut Issued::default(),
            );
            report.started_at = started_at;
            report.store = store.shard_labels();
            report.stopped_early = Some(why);
            report.checks = checks;
            return Ok(report);
        }
    }

    // One payload buffer; each put sends a slice of it at a varying offset.
    let max = opts.sizes.max() as usize;
    let payload = Bytes::from(random_bytes(max + 4096, started_at | 1));

    let shared = Arc::new(Shared {
        phase: AtomicU8::new(PHASE_PREPARE),
        stop: AtomicBool::new(false),
        tickets: AtomicU64::new(0),
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        exhausted: AtomicU64::new(0),
        measure_start: std::sync::OnceLock::new(),
        hists: (0..opts.concurrency.clamp(1, HIST_STRIPES))
            .map(|_| std::sync::Mutex::new(Hists::new()))
            .collect(),
    });

    // Prepare.
    let mut pools: Vec<Pool> = (0..opts.concurrency)
        .map(|_| Pool {
            pieces: Vec::new(),
            next_seq: 0,
        })
        .collect();
    let mut issued = Issued::default();
    let prepared = if needs_pool { opts.objects } else { 0 };
    if prepared > 0 {
        let prepare_start = Instant::now();
        let plan: Vec<(usize, String, u64)> = (0..prepared)
            .map(|i| {
                let w = (i % opts.concurrency as u64) as usize;
                let seq = i / opts.concurrency as u64;
                let size = opts
                    .sizes
                    .pick(Rng(i.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1).next());
                (w, format!("{prefix}{w}/p{seq}"), size)
            })
            .collect();
        let done = &shared.done;
        let ticker = ticker(progress, &shared, Phase::Prepare, None, Some(prepared));
        let results: Vec<Result<(usize, String, u64)>> = futures::stream::iter(plan)
            .map(|(w, key, size)| {
                let data = slice_of(&payload, size, w as u64);
                async move {
                    let r = store.put(&key, data).await;
                    done.fetch_add(1, Ordering::Relaxed);
                    r.map(|()| (w, key, size))
                }
            })
            .buffer_unordered(opts.concurrency.max(8))
            .collect()
            .await;
        drop(ticker);
        issued.prepare.insert("put".into(), prepared);
        for r in results {
            match r {
                Ok((w, key, size)) => pools[w].pieces.push((key, size)),
                Err(e) => {
                    let _ = cleanup(store, &prefix, &mut issued).await;
                    return Err(e);
                }
            }
        }
        tracing::debug!(objects = prepared, took = ?prepare_start.elapsed(), "bench: prepared");
    }

    // Warm-up and measurement: the workers run through both; the phase flag tells them
    // which one an operation starts in.
    shared.done.store(0, Ordering::Relaxed);
    let warmup = opts.warmup;
    shared.phase.store(
        if warmup.is_zero() {
            PHASE_MEASURE
        } else {
            PHASE_WARMUP
        },
        Ordering::Release,
    );
    let run_start = Instant::now();
    if warmup.is_zero() {
        let _ = shared.measure_start.set(run_start);
    }
    let workers: Vec<_> = pools
        .into_iter()
        .enumerate()
        .map(|(w, pool)| {
            let store = store.clone();
            let shared = Arc::clone(&shared);
            let payload = payload.clone();
            let opts = opts.clone();
            let prefix = prefix.clone();
            tokio::spawn(
                async move { worker(w, &store, &shared, &opts, &prefix, payload, pool).await },
            )
        })
        .collect();

    // The coordinator: switches phases, stops the run, reports progress.
    let measure_planned = if opts.count.is_some() {
        None
    } else {
        opts.duration
    };
    let mut last = (Instant::now(), 0u64);
    let mut phase_start = run_start;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = Instant::now();
        let phase = shared.phase.load(Ordering::Acquire);
        if phase == PHASE_WARMUP && now.duration_since(run_start) >= warmup {
            shared.done.store(0, Ordering::Relaxed);
            shared.errors.store(0, Ordering::Relaxed);
            let _ = shared.measure_start.set(now);
            shared.phase.store(PHASE_MEASURE, Ordering::Release);
            phase_start = now;
            last = (now, 0);
            continue;
        }
        if phase == PHASE_MEASURE
            && let (Some(d), None) = (opts.duration, opts.count)
            && now.duration_since(phase_start) >= d
        {
            shared.stop.store(true, Ordering::Release);
        }
        let done = shared.done.load(Ordering::Relaxed);
        let rate = (done.saturating_sub(last.1)) as f64
            / now.duration_since(last.0).as_secs_f64().max(1e-9);
        last = (now, done);
        progress(Progress {
            phase: if phase == PHASE_WARMUP {
                Phase::Warmup
            } else {
                Phase::Measure
            },
            elapsed: now.duration_since(phase_start),
            planned: if phase == PHASE_WARMUP {
                Some(warmup)
            } else {
                measure_planned
            },
            done,
            planned_ops: if phase == PHASE_WARMUP {
                None
            } else {
                opts.count
            },
            errors: shared.errors.load(Ordering::Relaxed),
            ops_per_s: rate,
        });
        if shared.stop.load(Ordering::Acquire) || workers.iter().all(|h| h.is_finished()) {
            break;
        }
    }
    shared.stop.store(true, Ordering::Release);
    let mut stats = Vec::with_capacity(workers.len());
    for h in workers {
        match h.await {
            Ok(s) => stats.push(s),
            Err(e) => {
                return Err(Error::Backend {
                    op: "bench",
                    key: None,
                    backend: "benchmark worker".into(),
                    message: e.to_string(),
                    retryable: false,
                });
            }
        }
    }
    shared.phase.store(PHASE_DONE, Ordering::Release);
    let measure_start = shared.measure_start.get().copied().unwrap_or(run_start);
    let measure_end = stats
        .iter()
        .filter_map(|s| s.last_end)
        .max()
        .unwrap_or_else(Instant::now)
        .max(measure_start);
    let duration = measure_end.duration_since(measure_start);
    let stopped_early = if shared.exhausted.load(Ordering::Relaxed) == opts.concurrency as u64 {
        Some(format!(
            "every worker ran out of pieces to delete ({} prepared; raise --objects)",
            prepared
        ))
    } else {
        None
    };

    let hists = shared
        .hists
        .iter()
        .map(|h| {
            std::mem::replace(
                &mut *h.lock().unwrap_or_else(|p| p.into_inner()),
                Hists::new(),
            )
        })
        .collect();
    let mut report = merge(stats, hists, opts, duration, &mut issued);
    report.started_at = started_at;
    report.store = store.shard_labels();
    report.prepared_objects = prepared;
    report.warmup_s = if warmup.is_zero() {
        0.0
    } else {
        measure_start.duration_since(run_start).as_secs_f64()
    };
    report.stopped_early = stopped_early;
    report.checks = checks;
    report.cleanup = if opts.keep {
        None
    } else {
        let _ticker = ticker(progress, &shared, Phase::Cleanup, None, None);
        Some(cleanup(store, &prefix, &mut issued).await)
    };
    report.issued = issued;
    report.cache = store.cache_stats().as_ref().map(CacheReport::of);
    Ok(report)
}

/// Deletes every piece under `prefix`, counting what it issued.
async fn cleanup(store: &PieceStore, prefix: &str, issued: &mut Issued) -> Cleanup {
    issued
        .cleanup
        .insert("list".into(), store.shard_count() as u64);
    let before = store.metrics().total(crate::profile::Op::Delete).count;
    let r = store.delete_prefix(prefix).await;
    let deletes = store
        .metrics()
        .total(crate::profile::Op::Delete)
        .count
        .saturating_sub(before);
    match r {
        Ok(s) => {
            issued.cleanup.insert("delete".into(), s.pieces);
            Cleanup {
                pieces: s.pieces,
                bytes: s.bytes,
                error: None,
            }
        }
        Err(e) => {
            issued.cleanup.insert("delete".into(), deletes);
            Cleanup {
                pieces: 0,
                bytes: 0,
                error: Some(e.to_string()),
            }
        }
    }
}

/// Reports progress of a phase with no workers of its own (prepare, cleanup) until dropped.
fn ticker<'a>(
    progress: &'a (dyn Fn(Progress) + Sync),
    shared: &'a Arc<Shared>,
    phase: Phase,
    planned: Option<Duration>,
    planned_ops: Option<u64>,
) -> impl Drop + 'a {
    struct Tick<'a> {
        progress: &'a (dyn Fn(Progress) + Sync),
        shared: &'a Arc<Shared>,
        phase: Phase,
        planned: Option<Duration>,
        planned_ops: Option<u64>,
        start: Instant,
    }
    impl Drop for Tick<'_> {
        fn drop(&mut self) {
            (self.progress)(Progress {
                phase: self.phase,
                elapsed: self.start.elapsed(),
                planned: self.planned,
                done: self.shared.done.load(Ordering::Relaxed),
                planned_ops: self.planned_ops,
                errors: self.shared.errors.load(Ordering::Relaxed),
                ops_per_s: 0.0,
            });
        }
    }
    let t = Tick {
        progress,
        shared,
        phase,
        planned,
        planned_ops,
        start: Instant::now(),
    };
    (t.progress)(Progress {
        phase,
        elapsed: Duration::ZERO,
        planned,
        done: 0,
        planned_ops,
        errors: 0,
        ops_per_s: 0.0,
    });
    t
}

/// `size` bytes of the payload, at an offset that varies with `n` (so pieces differ).
fn slice_of(payload: &Bytes, size: u64, n: u64) -> Bytes {
    let size = size as usize;
    let room = payload.len() - size;
    let offset = if room == 0 {
        0
    } else {
        (n.wrapping_mul(4099) % room as u64) as usize
    };
    payload.slice(offset..offset + size)
}

async fn worker(
    w: usize,
    store: &PieceStore,
    shared: &Shared,
    opts: &BenchOptions,
    prefix: &str,
    payload: Bytes,
    mut pool: Pool,
) -> WorkerStats {
    let mut stats = WorkerStats::new();
    let mut rng = Rng((w as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let single = !opts.workload.is_mixed();
    loop {
        // A memory store's operations never wait: without this, workers would never give
        // their threads back, and the timers that end the run would never fire.
        tokio::task::consume_budget().await;
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        let phase = shared.phase.load(Ordering::Acquire);
        let measured = phase == PHASE_MEASURE;
        if measured
            && let Some(count) = opts.count
            && shared.tickets.fetch_add(1, Ordering::Relaxed) >= count
        {
            shared.stop.store(true, Ordering::Release);
            break;
        }
        let mut op = opts.workload.pick(rng.next());
        // A mix reads and deletes only this worker's own pieces; with none left, it puts.
        if !single && op != BenchOp::Put && op != BenchOp::List && pool.pieces.is_empty() {
            op = BenchOp::Put;
        }
        if single && op == BenchOp::Delete && pool.pieces.is_empty() {
            shared.exhausted.fetch_add(1, Ordering::Relaxed);
            break;
        }
        let start = Instant::now();
        let mut first_byte = None;
        let outcome: Result<u64> = match op {
            BenchOp::Put => {
                let size = opts.sizes.pick(rng.next());
                let key = format!("{prefix}{w}/{}", pool.next_seq);
                pool.next_seq += 1;
                let data = slice_of(&payload, size, rng.next());
                let r = store.put(&key, data).await.map(|()| size);
                if r.is_ok() && !single {
                    pool.pieces.push((key, size));
                }
                r
            }
            BenchOp::Get => {
                let (key, size) = &pool.pieces[(rng.next() % pool.pieces.len() as u64) as usize];
                match store.get_first_byte(key).await {
                    Ok((b, fb)) if b.len() as u64 == *size => {
                        first_byte = fb;
                        Ok(*size)
                    }
                    Ok((b, _)) => Err(Error::Corrupt {
                        key: key.clone(),
                        backend: "benchmark".into(),
                        detail: format!("read {} bytes, wrote {size}", b.len()),
                    }),
                    Err(e) => Err(e),
                }
            }
            BenchOp::Head => {
                let (key, _) = &pool.pieces[(rng.next() % pool.pieces.len() as u64) as usize];
                store.head(key).await.map(|_| 0)
            }
            BenchOp::Delete => {
                let i = (rng.next() % pool.pieces.len() as u64) as usize;
                let (key, _) = pool.pieces.swap_remove(i);
                store.delete(&key).await.map(|()| 0)
            }
            BenchOp::List => store
                .list(prefix)
                .try_for_each(|_| futures::future::ready(Ok(())))
                .await
                .map(|()| 0),
        };
        let end = Instant::now();
        let i = op.index();
        shared.done.fetch_add(1, Ordering::Relaxed);
        if !measured {
            stats.issued_warmup[i] += 1;
            if outcome.is_err() {
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        }
        stats.issued_measure[i] += 1;
        stats.last_end = Some(end);
        let since = shared
            .measure_start
            .get()
            .map_or(Duration::ZERO, |s| end.saturating_duration_since(*s));
        let second = since.as_secs() as usize;
        if stats.timeline.len() <= second {
            stats.timeline.resize(second + 1, SecondAcc::default());
        }
        let sec = &mut stats.timeline[second];
        let ns = end
            .duration_since(start)
            .as_nanos()
            .min(u128::from(u64::MAX)) as u64;
        match outcome {
            Ok(bytes) => {
                stats.count[i] += 1;
                stats.bytes[i] += bytes;
                sec.ops[i] += 1;
                sec.bytes += bytes;
                sec.latency_ns += ns;
                // With at most HIST_STRIPES workers each has its own: the lock is never
                // contended; beyond, a few workers share one.
                let mut h = shared.hists[w % shared.hists.len()]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                h.latency[i]
                    .get_or_insert_with(histogram)
                    .saturating_record(ns.max(1));
                if let Some(fb) = first_byte {
                    let t = fb.saturating_duration_since(start).as_nanos() as u64;
                    h.ttfb
                        .get_or_insert_with(histogram)
                        .saturating_record(t.max(1));
                }
            }
            Err(e) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                *stats.errors[i].entry(e.kind().as_str()).or_default() += 1;
                sec.errors += 1;
                tracing::debug!(op = op.as_str(), error = %e, "bench: operation failed");
            }
        }
    }
    stats
}

fn latency_of(h: &Histogram<u64>) -> Latency {
    let us = |ns: u64| ns as f64 / 1000.0;
    let q = |p: f64| us(h.value_at_quantile(p));
    let percentiles = [
        0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0, 97.0, 98.0,
        99.0, 99.5, 99.9, 99.95, 99.99, 100.0,
    ]
    .into_iter()
    .map(|p| (p, q(p / 100.0)))
    .collect();
    // A log-scale histogram: 10 buckets per decade (bucket b holds values up to 10^(b/10) ns),
    // every bucket from the fastest sample's to the slowest's.
    let mut bins: BTreeMap<i32, u64> = BTreeMap::new();
    for v in h.iter_recorded() {
        let value = v.value_iterated_to().max(1) as f64;
        let b = (value.log10() * 10.0 - 1e-9).ceil() as i32;
        *bins.entry(b).or_default() += v.count_at_value();
    }
    let histogram = match (bins.keys().next(), bins.keys().next_back()) {
        (Some(&lo), Some(&hi)) => (lo..=hi)
            .map(|b| {
                let bound = 10f64.powf(f64::from(b) / 10.0) / 1000.0;
                (bound, bins.get(&b).copied().unwrap_or(0))
            })
            .collect(),
        _ => Vec::new(),
    };
    Latency {
        min_us: us(h.min()),
        mean_us: h.mean() / 1000.0,
        p50_us: q(0.5),
        p90_us: q(0.9),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: us(h.max()),
        percentiles,
        histogram,
    }
}

/// Merges the workers' results into a report (the caller fills in what it knows).
fn merge(
    stats: Vec<WorkerStats>,
    hists: Vec<Hists>,
    opts: &BenchOptions,
    duration: Duration,
    issued: &mut Issued,
) -> Report {
    let secs = duration.as_secs_f64().max(1e-9);
    let mut latency: Vec<Option<Histogram<u64>>> = (0..5).map(|_| None).collect();
    let mut ttfb: Option<Histogram<u64>> = None;
    let mut count = [0u64; 5];
    let mut bytes = [0u64; 5];
    let mut errors: [BTreeMap<String, u64>; 5] = Default::default();
    let mut timeline: Vec<SecondAcc> = Vec::new();
    let mut warm = [0u64; 5];
    let mut meas = [0u64; 5];
    for s in hists {
        for (i, h) in s.latency.into_iter().enumerate() {
            if let Some(h) = h {
                match &mut latency[i] {
                    Some(acc) => {
                        let _ = acc.add(&h);
                    }
                    slot => *slot = Some(h),
                }
            }
        }
        if let Some(h) = s.ttfb {
            match &mut ttfb {
                Some(acc) => {
                    let _ = acc.add(&h);
                }
                slot => *slot = Some(h),
            }
        }
    }
    for s in stats {
        for i in 0..5 {
            count[i] += s.count[i];
            bytes[i] += s.bytes[i];
            warm[i] += s.issued_warmup[i];
            meas[i] += s.issued_measure[i];
            for (k, n) in &s.errors[i] {
                *errors[i].entry((*k).to_string()).or_default() += n;
            }
        }
        if timeline.len() < s.timeline.len() {
            timeline.resize(s.timeline.len(), SecondAcc::default());
        }
        for (acc, sec) in timeline.iter_mut().zip(&s.timeline) {
            for i in 0..5 {
                acc.ops[i] += sec.ops[i];
            }
            acc.errors += sec.errors;
            acc.bytes += sec.bytes;
            acc.latency_ns += sec.latency_ns;
        }
    }
    let mut ops = Vec::new();
    let mut total = Totals::default();
    for op in BenchOp::ALL {
        let i = op.index();
        if !opts.workload.has(op) && count[i] == 0 && errors[i].is_empty() {
            continue;
        }
        let r = OpReport {
            op: op.as_str().to_string(),
            count: count[i],
            errors: errors[i].clone(),
            bytes: bytes[i],
            ops_per_s: count[i] as f64 / secs,
            bytes_per_s: bytes[i] as f64 / secs,
            latency: latency[i].as_ref().map(latency_of).unwrap_or_default(),
            ttfb: if op == BenchOp::Get {
                ttfb.as_ref().map(latency_of)
            } else {
                None
            },
        };
        total.count += r.count;
        total.bytes += r.bytes;
        for (k, n) in &r.errors {
            total.errors += n;
            *total.errors_by_kind.entry(k.clone()).or_default() += n;
        }
        ops.push(r);
    }
    total.ops_per_s = total.count as f64 / secs;
    total.bytes_per_s = total.bytes as f64 / secs;
    let names = BenchOp::ALL.map(|o| o.as_str().to_string());
    let to_map = |a: [u64; 5]| -> BTreeMap<String, u64> {
        names
            .iter()
            .zip(a)
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (k.clone(), n))
            .collect()
    };
    issued.warmup = to_map(warm);
    issued.measure = to_map(meas);
    let timeline = timeline
        .into_iter()
        .enumerate()
        .map(|(t, s)| {
            let n: u64 = s.ops.iter().sum();
            Second {
                t: t as u32,
                ops: to_map(s.ops),
                errors: s.errors,
                bytes: s.bytes,
                mean_latency_us: if n == 0 {
                    0.0
                } else {
                    s.latency_ns as f64 / n as f64 / 1000.0
                },
                span_s: (duration.as_secs_f64() - t as f64).clamp(0.0, 1.0),
            }
        })
        .collect();
    Report {
        version: REPORT_VERSION,
        tool: format!("piecestore {}", env!("CARGO_PKG_VERSION")),
        started_at: 0,
        store: Vec::new(),
        workload: opts.workload.to_string(),
        sizes: opts.sizes.to_string(),
        concurrency: opts.concurrency,
        prepared_objects: 0,
        warmup_s: 0.0,
        duration_s: duration.as_secs_f64(),
        stopped_early: None,
        ops,
        total,
        timeline,
        issued: Issued::default(),
        checks: Vec::new(),
        cleanup: None,
        cache: None,
    }
}
