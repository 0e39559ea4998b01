//! foyer 0.22.6 next to moka for PieceStore's data-cache use case: per-get latency.
//!
//! Why PieceStore's data cache (core/src/cache) is built on `moka::sync::Cache` rather than
//! on foyer, with numbers. Each measurement stores 2,000 values of 4 KiB (keys `c{i}_s0`,
//! pseudo-random bytes) in one fill pass, then times 5 passes over every key, one get at a time
//! in a plain loop (the way a newcomer calls either crate: no batching, no concurrency), and
//! reports the per-get latency in microseconds (mean, p50, p99):
//!
//! - `moka_memory_hit`: `moka::sync::Cache<Arc<str>, Bytes>` bounded by bytes (256 MiB,
//!   weigher = value len + key len + 96, as PieceStore weighs its memory tier), gets that hit.
//! - `foyer_memory_hit`: foyer's in-memory `Cache` (`CacheBuilder`, 256 MiB, weighed by bytes),
//!   gets that hit.
//! - `foyer_hybrid_disk_hit`: a foyer `HybridCache` with a 1 MiB memory part, so most gets go to
//!   its disk part (`FsDeviceBuilder` on a temporary directory, 256 MiB, block engine
//!   `BlockEngineConfig`, default psync I/O engine), written on insertion
//!   (`HybridCachePolicy::WriteOnInsertion`). The flushers are waited for before timing, since
//!   foyer writes to disk asynchronously. The latency is that of the gets whose entry came from
//!   disk; those served by the memory part, those that returned nothing and those that returned
//!   another value (compared once the clock has stopped) are counted apart.
//! - `foyer_hybrid_reopen`: that hybrid cache closed and opened again on the same directory
//!   (`RecoverMode::Quiet`, foyer's default recovery), and how many of the 2,000 keys it still
//!   finds, with the value stored.
//!
//! It also records the process's thread count (`Threads:` of /proc/self/status) after building
//! each cache: moka's sync cache starts no thread, while foyer's disk part runs on a tokio
//! runtime and does its file I/O on tokio's blocking pool, which matters to PieceStore because
//! its Python binding forks. The tokio runtime is built only after the two memory caches, so
//! their counts are not mixed with its workers.
//!
//! The output is one JSON line. Not part of CI; run it through the script, which builds it in
//! release mode in the repository's target directory:
//!
//! ```text
//! bash benches/foyer.sh
//! ```
//!
//! The disk part goes to a temporary directory under `$TMPDIR` (or /tmp): a tmpfs there would
//! make its "disk" memory. The device is opened without O_DIRECT (foyer's default), so a disk
//! hit is a read through the page cache.

use std::{
    error::Error,
    hint::black_box,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use foyer::{
    BlockEngineConfig, Cache, CacheBuilder, DeviceBuilder, FsDeviceBuilder, HybridCache,
    HybridCacheBuilder, HybridCachePolicy, RecoverMode, Source,
};

/// The versions pinned (with `=`) in Cargo.toml, repeated in the report.
const FOYER_VERSION: &str = "0.22.6";
const MOKA_VERSION: &str = "0.12.16";

/// Values stored by each measurement.
const VALUES: usize = 2_000;
/// Size of each value.
const VALUE_LEN: usize = 4 * 1024;
/// Timed passes over every key, after the fill pass.
const TIMED_PASSES: usize = 5;
const MIB: usize = 1024 * 1024;
/// Capacity of the memory caches, and of the hybrid cache's disk part.
const CAPACITY: usize = 256 * MIB;
/// Memory part of the hybrid cache: small, so that most of its gets go to disk.
const HYBRID_MEMORY: usize = MIB;
/// Per-entry overhead PieceStore's memory tier adds to an entry's weight.
const ENTRY_OVERHEAD: usize = 96;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// The `Threads:` line of /proc/self/status: the process's thread count now.
fn threads() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The keys (`c{i}_s0`) and their values (4 KiB of xorshift64 output each).
fn dataset() -> (Vec<String>, Vec<Bytes>) {
    let keys = (0..VALUES).map(|i| format!("c{i}_s0")).collect();
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let values = (0..VALUES)
        .map(|_| {
            let mut value = Vec::with_capacity(VALUE_LEN);
            while value.len() < VALUE_LEN {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                value.extend_from_slice(&state.to_le_bytes());
            }
            Bytes::from(value)
        })
        .collect();
    (keys, values)
}

/// Mean, median and 99th percentile of a set of get latencies, in microseconds.
struct Summary {
    mean_us: f64,
    p50_us: f64,
    p99_us: f64,
}

impl Summary {
    fn of(mut samples: Vec<Duration>) -> Self {
        if samples.is_empty() {
            return Self {
                mean_us: f64::NAN,
                p50_us: f64::NAN,
                p99_us: f64::NAN,
            };
        }
        samples.sort_unstable();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let at = |q: f64| us(samples[((samples.len() - 1) as f64 * q).round() as usize]);
        let total: Duration = samples.iter().sum();
        Self {
            mean_us: us(total) / samples.len() as f64,
            p50_us: at(0.50),
            p99_us: at(0.99),
        }
    }

    /// The three figures as JSON members (`null` when there was no sample).
    fn json(&self) -> String {
        let num = |v: f64| {
            if v.is_finite() {
                format!("{v:.3}")
            } else {
                "null".to_owned()
            }
        };
        format!(
            r#""mean_us":{},"p50_us":{},"p99_us":{}"#,
            num(self.mean_us),
            num(self.p50_us),
            num(self.p99_us)
        )
    }
}

/// Times `TIMED_PASSES` passes of `get` over every key, one call at a time; returns the
/// latencies of the gets that found their value and the number of those that did not.
fn time_sync_gets(
    keys: &[String],
    mut get: impl FnMut(&str) -> Option<usize>,
) -> (Vec<Duration>, usize) {
    let mut hits = Vec::with_capacity(keys.len() * TIMED_PASSES);
    let mut misses = 0;
    for _ in 0..TIMED_PASSES {
        for key in keys {
            let start = Instant::now();
            let found = get(key);
            let elapsed = start.elapsed();
            match black_box(found) {
                Some(len) if len == VALUE_LEN => hits.push(elapsed),
                _ => misses += 1,
            }
        }
    }
    (hits, misses)
}

/// a. moka's sync cache, bounded by bytes, every get a hit.
fn moka_memory_hit(keys: &[String], values: &[Bytes]) -> String {
    let cache: moka::sync::Cache<Arc<str>, Bytes> = moka::sync::Cache::builder()
        .max_capacity(CAPACITY as u64)
        .weigher(|key: &Arc<str>, value: &Bytes| {
            u32::try_from(value.len() + key.len() + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
        })
        .build();
    let threads_after_build = threads();
    for (key, value) in keys.iter().zip(values) {
        cache.insert(Arc::from(key.as_str()), value.clone());
    }
    cache.run_pending_tasks();
    let (hits, misses) = time_sync_gets(keys, |key| cache.get(key).map(|v| v.len()));
    format!(
        r#"{{"gets":{},"hits":{},"misses":{misses},{},"threads_after_build":{threads_after_build}}}"#,
        hits.len() + misses,
        hits.len(),
        Summary::of(hits).json()
    )
}

/// b. foyer's in-memory cache, weighed by bytes, every get a hit.
fn foyer_memory_hit(keys: &[String], values: &[Bytes]) -> String {
    let cache: Cache<Arc<str>, Bytes> = CacheBuilder::new(CAPACITY)
        .with_weighter(|key: &Arc<str>, value: &Bytes| value.len() + key.len() + ENTRY_OVERHEAD)
        .build();
    let threads_after_build = threads();
    for (key, value) in keys.iter().zip(values) {
        cache.insert(Arc::from(key.as_str()), value.clone());
    }
    let (hits, misses) = time_sync_gets(keys, |key| cache.get(key).map(|e| e.value().len()));
    format!(
        r#"{{"gets":{},"hits":{},"misses":{misses},{},"threads_after_build":{threads_after_build}}}"#,
        hits.len() + misses,
        hits.len(),
        Summary::of(hits).json()
    )
}

/// Opens (creating or recovering) the hybrid cache on `dir`: 1 MiB of memory in front of a
/// 256 MiB file device, entries written to disk when inserted.
async fn open_hybrid(dir: &Path) -> Result<HybridCache<String, Bytes>> {
    let device = FsDeviceBuilder::new(dir).with_capacity(CAPACITY).build()?;
    let hybrid = HybridCacheBuilder::new()
        .with_name("foyer-peer")
        .with_policy(HybridCachePolicy::WriteOnInsertion)
        .memory(HYBRID_MEMORY)
        .with_weighter(|key: &String, value: &Bytes| value.len() + key.len() + ENTRY_OVERHEAD)
        .storage()
        .with_engine_config(BlockEngineConfig::new(device))
        .with_recover_mode(RecoverMode::Quiet)
        .build()
        .await?;
    Ok(hybrid)
}

/// c. and d.: the hybrid cache's disk hits, then how much of it survives a close and reopen.
/// Returns the two JSON objects.
async fn foyer_hybrid(dir: &Path, keys: &[String], values: &[Bytes]) -> Result<(String, String)> {
    let hybrid = open_hybrid(dir).await?;
    let threads_after_build = threads();
    for (key, value) in keys.iter().zip(values) {
        hybrid.insert(key.clone(), value.clone());
    }
    // Inserts only enqueue the disk writes; wait for the flushers to write them.
    let flush_start = Instant::now();
    hybrid.storage().wait().await;
    let flush_wait = flush_start.elapsed();

    let mut disk = Vec::with_capacity(keys.len() * TIMED_PASSES);
    let mut memory = Vec::new();
    let mut misses = 0;
    let mut wrong = 0;
    for _ in 0..TIMED_PASSES {
        for (key, value) in keys.iter().zip(values) {
            let start = Instant::now();
            let entry = hybrid.get(key.as_str()).await?;
            let elapsed = start.elapsed();
            match black_box(entry) {
                None => misses += 1,
                Some(entry) if entry.value() != value => wrong += 1,
                Some(entry) if entry.source() == Source::Disk => disk.push(elapsed),
                Some(_) => memory.push(elapsed),
            }
        }
    }
    let threads_after_gets = threads();
    let gets = disk.len() + memory.len() + misses + wrong;
    let memory_hits = memory.len();
    let memory_summary = Summary::of(memory);
    let disk_hit = format!(
        concat!(
            r#"{{"gets":{},"disk_hits":{},"memory_hits":{},"misses":{},"wrong_value":{},{},"#,
            r#""memory_hit_mean_us":{},"flush_wait_ms":{:.1},"threads_after_build":{},"#,
            r#""threads_after_gets":{}}}"#
        ),
        gets,
        disk.len(),
        memory_hits,
        misses,
        wrong,
        Summary::of(disk).json(),
        if memory_summary.mean_us.is_finite() {
            format!("{:.3}", memory_summary.mean_us)
        } else {
            "null".to_owned()
        },
        flush_wait.as_secs_f64() * 1e3,
        threads_after_build,
        threads_after_gets,
    );

    let close_start = Instant::now();
    hybrid.close().await?;
    drop(hybrid);
    let close = close_start.elapsed();
    let threads_after_close = threads();

    let open_start = Instant::now();
    let hybrid = open_hybrid(dir).await?;
    let reopen = open_start.elapsed();
    let mut found = 0;
    let mut found_on_disk = 0;
    for (key, value) in keys.iter().zip(values) {
        if let Some(entry) = hybrid.get(key.as_str()).await? {
            if entry.value() == value {
                found += 1;
                found_on_disk += usize::from(entry.source() == Source::Disk);
            }
        }
    }
    hybrid.close().await?;
    let reopen_json = format!(
        concat!(
            r#"{{"keys":{},"found":{},"found_on_disk":{},"close_ms":{:.1},"reopen_ms":{:.1},"#,
            r#""threads_after_close":{},"threads_after_reopen_and_gets":{}}}"#
        ),
        keys.len(),
        found,
        found_on_disk,
        close.as_secs_f64() * 1e3,
        reopen.as_secs_f64() * 1e3,
        threads_after_close,
        threads(),
    );
    Ok((disk_hit, reopen_json))
}

fn main() -> Result<()> {
    let threads_at_start = threads();
    let (keys, values) = dataset();

    let moka = moka_memory_hit(&keys, &values);
    let foyer_memory = foyer_memory_hit(&keys, &values);

    // foyer's disk part needs a tokio runtime (its tasks, and its pread/pwrite on the blocking
    // pool); built here, after the memory caches, so its workers show apart.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let threads_after_runtime = threads();
    let dir = tempfile::tempdir()?;
    let (disk_hit, reopen) = runtime.block_on(foyer_hybrid(dir.path(), &keys, &values))?;

    println!(
        concat!(
            r#"{{"foyer":"{}","moka":"{}","values":{},"value_bytes":{},"timed_passes":{},"#,
            r#""threads_at_start":{},"moka_memory_hit":{},"foyer_memory_hit":{},"#,
            r#""threads_after_tokio_runtime":{},"foyer_hybrid_disk_hit":{},"foyer_hybrid_reopen":{}}}"#
        ),
        FOYER_VERSION,
        MOKA_VERSION,
        VALUES,
        VALUE_LEN,
        TIMED_PASSES,
        threads_at_start,
        moka,
        foyer_memory,
        threads_after_runtime,
        disk_hit,
        reopen,
    );
    Ok(())
}
