//! Operation metrics: a count, bytes, errors by kind and a latency histogram for every
//! (shard, operation), recorded by the [`PieceStore`](crate::PieceStore) facade on every call and
//! rendered as Prometheus text.
//!
//! Recording is lock-free: three relaxed atomic adds (the latency bucket, the latency sum, the
//! bytes) into cells allocated at open (no allocation, no map lookup, no lock on the hot path);
//! an operation's count is the sum of its buckets. Latency buckets are powers of two from
//! 1 µs to 2^26 µs (~67 s), so a sample's bucket is one `leading_zeros`.

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::error::ErrorKind;

/// The operations metrics are kept for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Op {
    /// `put`, `put_opts`, each piece of `put_many`.
    Put,
    /// `get`, each piece of `get_many`.
    Get,
    /// `get_range`.
    GetRange,
    /// `head`, `exists`.
    Head,
    /// `delete`, each piece `delete_prefix` removes.
    Delete,
    /// One shard's part of a `list` (recorded when the listing ends).
    List,
}

impl Op {
    /// Every operation, in the order metrics are rendered.
    pub const ALL: [Op; 6] = [
        Op::Put,
        Op::Get,
        Op::GetRange,
        Op::Head,
        Op::Delete,
        Op::List,
    ];

    /// The label value: `put`, `get`, `get_range`, `head`, `delete`, `list`.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::GetRange => "get_range",
            Op::Head => "head",
            Op::Delete => "delete",
            Op::List => "list",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Number of finite latency buckets; bucket `i` holds samples of at most `2^i` µs.
const BUCKETS: usize = 27;
const KINDS: usize = ErrorKind::ALL.len();

/// The upper bound of bucket `i`, in nanoseconds.
fn bound_ns(i: usize) -> u64 {
    1000u64 << i
}

/// The bucket of a latency: the least `i` with `ns <= 1000 * 2^i`; `BUCKETS` for larger ones.
fn bucket_of(ns: u64) -> usize {
    let us = ns.div_ceil(1000);
    if us <= 1 {
        return 0;
    }
    ((64 - (us - 1).leading_zeros()) as usize).min(BUCKETS)
}

/// One (shard, operation)'s counters.
#[derive(Debug)]
struct Cell {
    bytes: AtomicU64,
    sum_ns: AtomicU64,
    /// Non-cumulative; the last is `+Inf`.
    buckets: [AtomicU64; BUCKETS + 1],
    errors: [AtomicU64; KINDS],
}

impl Cell {
    fn new() -> Self {
        Cell {
            bytes: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// The live counters of one store (shared by its clones).
#[derive(Debug)]
pub(crate) struct Recorder {
    enabled: bool,
    /// Each shard's backend kind (`memory`, `file`, `s3`).
    backends: Vec<&'static str>,
    /// `cells[shard * ops + op]`.
    cells: Box<[Cell]>,
    /// Per shard: reads that returned a piece carrying no checksum.
    unverified: Box<[AtomicU64]>,
}

impl Recorder {
    /// Counters for shards whose backend kinds are `backends`; a disabled recorder records
    /// nothing (and [`Recorder::enabled`] tells callers to skip reading the clock).
    pub(crate) fn new(backends: Vec<&'static str>, enabled: bool) -> Self {
        let n = if enabled {
            backends.len() * Op::ALL.len()
        } else {
            0
        };
        Recorder {
            enabled,
            unverified: (0..if enabled { backends.len() } else { 0 })
                .map(|_| AtomicU64::new(0))
                .collect(),
            backends,
            cells: (0..n).map(|_| Cell::new()).collect(),
        }
    }

    /// Whether metrics are kept.
    #[inline]
    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    fn cell(&self, shard: usize, op: Op) -> Option<&Cell> {
        self.cells.get(shard * Op::ALL.len() + op as usize)
    }

    /// Records one finished operation: its latency, and its bytes or its error.
    #[inline]
    pub(crate) fn record(
        &self,
        shard: usize,
        op: Op,
        elapsed: Duration,
        outcome: Result<u64, ErrorKind>,
    ) {
        let Some(cell) = self.cell(shard, op) else {
            return;
        };
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        cell.sum_ns.fetch_add(ns, Relaxed);
        cell.buckets[bucket_of(ns)].fetch_add(1, Relaxed);
        match outcome {
            Ok(0) => {}
            Ok(bytes) => {
                cell.bytes.fetch_add(bytes, Relaxed);
            }
            Err(kind) => {
                cell.errors[kind.index()].fetch_add(1, Relaxed);
            }
        }
    }

    /// Counts a read that returned a piece carrying no checksum (`AllowUnverified`).
    pub(crate) fn unverified_read(&self, shard: usize) {
        if let Some(c) = self.unverified.get(shard) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// A consistent-enough copy of every counter (each counter is read once; counters of
    /// operations running meanwhile may be a sample apart).
    pub(crate) fn snapshot(&self) -> Metrics {
        let mut ops = Vec::with_capacity(self.cells.len());
        for (shard, backend) in self.backends.iter().enumerate() {
            for op in Op::ALL {
                let Some(c) = self.cell(shard, op) else {
                    continue;
                };
                let buckets: Vec<u64> = c.buckets.iter().map(|b| b.load(Relaxed)).collect();
                let errors = ErrorKind::ALL
                    .into_iter()
                    .zip(&c.errors)
                    .map(|(k, n)| (k, n.load(Relaxed)))
                    .filter(|(_, n)| *n > 0)
                    .collect();
                ops.push(OpMetrics {
                    backend,
                    shard,
                    op,
                    // The histogram's total, so that count == the sum of buckets in the output.
                    count: buckets.iter().sum(),
                    bytes: c.bytes.load(Relaxed),
                    errors,
                    latency: LatencyHistogram {
                        counts: buckets,
                        sum: Duration::from_nanos(c.sum_ns.load(Relaxed)),
                    },
                });
            }
        }
        Metrics {
            enabled: self.enabled,
            ops,
            unverified_reads: self
                .backends
                .iter()
                .zip(self.unverified.iter())
                .map(|(b, n)| (*b, n.load(Relaxed)))
                .collect(),
            pack_writes: Vec::new(),
            cache: None,
        }
    }
}

/// A copy of a store's metrics, from [`PieceStore::metrics`](crate::PieceStore::metrics).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use piecestore::{Config, PieceStore, profile::Op};
/// let store = PieceStore::open(Config::from_url("memory://")?).await?;
/// store.put("1_s0", &b"hello"[..]).await?;
/// let _ = store.get("missing").await;
/// let m = store.metrics();
/// assert_eq!(m.total(Op::Put).count, 1);
/// assert_eq!(m.total(Op::Put).bytes, 5);
/// assert_eq!(m.total(Op::Get).errors_of(piecestore::ErrorKind::NotFound), 1);
/// assert!(m.to_prometheus().contains(r#"piecestore_operations_total{backend="memory",shard="0",op="put"} 1"#));
/// # Ok::<_, piecestore::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    /// Whether the store keeps metrics (`Metrics = false` in the config turns them off).
    pub enabled: bool,
    /// One entry per (shard, operation), shards in order.
    pub ops: Vec<OpMetrics>,
    /// Per shard, in order (its backend kind, and the count): reads that returned a piece
    /// carrying no checksum, which `AllowUnverified` lets through unverified.
    pub unverified_reads: Vec<(&'static str, u64)>,
    /// Per shard, in order (its backend kind, and the counts): what its pack writer wrote;
    /// empty when the store does not pack.
    pub pack_writes: Vec<(&'static str, PackWrites)>,
    /// The data cache's counters and fill per tier; `None` without a cache.
    pub cache: Option<crate::cache::CacheStats>,
}

/// What a shard's pack writer wrote in this process (shared by every store open on the shard
/// in the process). `records / groups` is how many pieces (and tombstones) shared a write: one
/// append and `fdatasync` on a local directory, one PUT on a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PackWrites {
    /// Write groups written.
    pub groups: u64,
    /// Records (pieces and tombstones) in them.
    pub records: u64,
    /// Payload bytes in them.
    pub bytes: u64,
    /// On a bucket: ranged GETs of packs that gets made (gets of one pack that arrive
    /// together share one).
    pub reads: u64,
    /// Pieces those ranged GETs served (`pieces_read / reads` is how many shared a read).
    pub pieces_read: u64,
}

/// The metrics of one operation on one shard (or, from [`Metrics::total`], on all shards).
#[derive(Debug, Clone, PartialEq)]
pub struct OpMetrics {
    /// The shard's backend kind: `memory`, `file`, `s3` or `grpc` (`all` in a total).
    pub backend: &'static str,
    /// The shard index (0 in a total).
    pub shard: usize,
    /// The operation.
    pub op: Op,
    /// Operations finished, failed ones included.
    pub count: u64,
    /// Bytes stored (put) or returned (get, get_range) by successful operations.
    pub bytes: u64,
    /// Failed operations by error kind (kinds with no failures left out).
    pub errors: Vec<(ErrorKind, u64)>,
    /// How long the operations took.
    pub latency: LatencyHistogram,
}

impl OpMetrics {
    /// Failed operations of every kind.
    pub fn error_count(&self) -> u64 {
        self.errors.iter().map(|(_, n)| n).sum()
    }

    /// Failed operations of `kind`.
    pub fn errors_of(&self, kind: ErrorKind) -> u64 {
        self.errors
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(0, |(_, n)| *n)
    }
}

/// A latency histogram with power-of-two buckets from 1 µs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LatencyHistogram {
    /// Samples per bucket (not cumulative): bucket `i` holds samples in `(2^(i-1), 2^i]` µs
    /// (bucket 0: up to 1 µs); the last bucket holds everything above the last bound.
    pub counts: Vec<u64>,
    /// The sum of all samples.
    pub sum: Duration,
}

impl LatencyHistogram {
    /// The upper bounds of the finite buckets.
    pub fn bounds() -> impl Iterator<Item = Duration> {
        (0..BUCKETS).map(|i| Duration::from_nanos(bound_ns(i)))
    }

    /// An upper estimate of quantile `q` (0..=1): the bound of the bucket it falls in (`None`
    /// without samples; `Duration::MAX` when it falls past the last bound).
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total: u64 = self.counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(if i < BUCKETS {
                    Duration::from_nanos(bound_ns(i))
                } else {
                    Duration::MAX
                });
            }
        }
        Some(Duration::MAX)
    }

    /// [`LatencyHistogram::quantile`] in seconds, as bindings report it: `f64::INFINITY`
    /// past the last bound.
    pub fn quantile_secs(&self, q: f64) -> Option<f64> {
        self.quantile(q).map(|d| {
            if d == Duration::MAX {
                f64::INFINITY
            } else {
                d.as_secs_f64()
            }
        })
    }

    fn add(&mut self, other: &LatencyHistogram) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum += other.sum;
    }
}

impl Metrics {
    /// One operation summed over every shard.
    pub fn total(&self, op: Op) -> OpMetrics {
        let mut t = OpMetrics {
            backend: "all",
            shard: 0,
            op,
            count: 0,
            bytes: 0,
            errors: Vec::new(),
            latency: LatencyHistogram::default(),
        };
        for m in self.ops.iter().filter(|m| m.op == op) {
            t.count += m.count;
            t.bytes += m.bytes;
            t.latency.add(&m.latency);
            for &(kind, n) in &m.errors {
                match t.errors.iter_mut().find(|(k, _)| *k == kind) {
                    Some((_, total)) => *total += n,
                    None => t.errors.push((kind, n)),
                }
            }
        }
        t
    }

    /// The metrics in the Prometheus text exposition format (version 0.0.4):
    /// `piecestore_operations_total`, `piecestore_operation_errors_total` (by `kind`, the
    /// error codes of [`ErrorKind::as_str`]), `piecestore_operation_bytes_total` and the
    /// histogram `piecestore_operation_duration_seconds`, each labelled `backend`, `shard`
    /// and `op`; `piecestore_unverified_reads_total`, and for a packed store
    /// `piecestore_pack_writes_total`, `piecestore_pack_write_records_total`,
    /// `piecestore_pack_write_bytes_total`, `piecestore_pack_reads_total` and
    /// `piecestore_pack_read_pieces_total`, labelled `backend` and `shard`.
    pub fn to_prometheus(&self) -> String {
        let mut out = String::with_capacity(256 + self.ops.len() * 2048);
        let labels = |m: &OpMetrics| {
            format!(
                "backend=\"{}\",shard=\"{}\",op=\"{}\"",
                m.backend, m.shard, m.op
            )
        };
        // One sample line per (shard, op) and value (`kind` for errors, "" otherwise).
        let family = |out: &mut String,
                      name: &str,
                      help: &str,
                      samples: &dyn Fn(&OpMetrics) -> Vec<(String, u64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for m in &self.ops {
                for (extra, v) in samples(m) {
                    let _ = writeln!(out, "{name}{{{}{extra}}} {v}", labels(m));
                }
            }
        };
        family(
            &mut out,
            "piecestore_operations_total",
            "Operations finished, failed ones included.",
            &|m| vec![(String::new(), m.count)],
        );
        family(
            &mut out,
            "piecestore_operation_errors_total",
            "Failed operations, by error kind.",
            &|m| {
                (m.errors.iter())
                    .map(|(kind, n)| (format!(",kind=\"{kind}\""), *n))
                    .collect()
            },
        );
        family(
            &mut out,
            "piecestore_operation_bytes_total",
            "Bytes stored (put) or returned (get, get_range).",
            &|m| vec![(String::new(), m.bytes)],
        );
        let _ = writeln!(
            out,
            "# HELP piecestore_operation_duration_seconds How long operations took.\n\
             # TYPE piecestore_operation_duration_seconds histogram"
        );
        for m in &self.ops {
            let l = labels(m);
            let mut cumulative = 0;
            for (i, bound) in LatencyHistogram::bounds().enumerate() {
                cumulative += m.latency.counts.get(i).copied().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "piecestore_operation_duration_seconds_bucket{{{l},le=\"{}\"}} {cumulative}",
                    bound.as_secs_f64()
                );
            }
            let _ = writeln!(
                out,
                "piecestore_operation_duration_seconds_bucket{{{l},le=\"+Inf\"}} {}\n\
                 piecestore_operation_duration_seconds_sum{{{l}}} {}\n\
                 piecestore_operation_duration_seconds_count{{{l}}} {}",
                m.count,
                m.latency.sum.as_secs_f64(),
                m.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP piecestore_unverified_reads_total Reads that returned a piece carrying no checksum.\n\
             # TYPE piecestore_unverified_reads_total counter"
        );
        for (shard, (backend, n)) in self.unverified_reads.iter().enumerate() {
            let _ = writeln!(
                out,
                "piecestore_unverified_reads_total{{backend=\"{backend}\",shard=\"{shard}\"}} {n}"
            );
        }
        if !self.pack_writes.is_empty() {
            type Field = fn(&PackWrites) -> u64;
            let families: [(&str, &str, Field); 5] = [
                (
                    "piecestore_pack_writes_total",
                    "Pack write groups written (appends or pack objects).",
                    |w| w.groups,
                ),
                (
                    "piecestore_pack_write_records_total",
                    "Records (pieces and tombstones) in pack write groups.",
                    |w| w.records,
                ),
                (
                    "piecestore_pack_write_bytes_total",
                    "Payload bytes in pack write groups.",
                    |w| w.bytes,
                ),
                (
                    "piecestore_pack_reads_total",
                    "Ranged GETs of pack objects made by gets (shared by gets that arrive together).",
                    |w| w.reads,
                ),
                (
                    "piecestore_pack_read_pieces_total",
                    "Pieces served by ranged GETs of pack objects.",
                    |w| w.pieces_read,
                ),
            ];
            for (name, help, field) in families {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
                for (shard, (backend, w)) in self.pack_writes.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "{name}{{backend=\"{backend}\",shard=\"{shard}\"}} {}",
                        field(w)
                    );
                }
            }
        }
        if let Some(cache) = &self.cache {
            use crate::cache::CacheTierStats as T;
            type Field = fn(&T) -> u64;
            let families: [(&str, &str, &str, Field); 8] = [
                (
                    "piecestore_cache_hits_total",
                    "counter",
                    "Gets served by the tier.",
                    |t| t.hits,
                ),
                (
                    "piecestore_cache_misses_total",
                    "counter",
                    "Gets the tier could not serve.",
                    |t| t.misses,
                ),
                (
                    "piecestore_cache_inserts_total",
                    "counter",
                    "Pieces put into the tier.",
                    |t| t.inserts,
                ),
                (
                    "piecestore_cache_evictions_total",
                    "counter",
                    "Pieces evicted to keep the tier within its size.",
                    |t| t.evictions,
                ),
                (
                    "piecestore_cache_corrupt_total",
                    "counter",
                    "Damaged entries found, removed and fetched again.",
                    |t| t.corrupt,
                ),
                (
                    "piecestore_cache_bytes",
                    "gauge",
                    "Bytes the tier holds.",
                    |t| t.bytes,
                ),
                (
                    "piecestore_cache_entries",
                    "gauge",
                    "Pieces the tier holds.",
                    |t| t.entries,
                ),
                (
                    "piecestore_cache_capacity_bytes",
                    "gauge",
                    "The tier's size limit.",
                    |t| t.capacity,
                ),
            ];
            for (name, kind, help, field) in families {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for t in &cache.tiers {
                    let _ = writeln!(out, "{name}{{tier=\"{}\"}} {}", t.tier, field(t));
                }
            }
            let _ = writeln!(
                out,
                "# HELP piecestore_cache_fetches_total Fetches from the store that cache misses made.\n\
                 # TYPE piecestore_cache_fetches_total counter\npiecestore_cache_fetches_total {}\n\
                 # HELP piecestore_cache_coalesced_total Gets that waited for another get's fetch of the same key.\n\
                 # TYPE piecestore_cache_coalesced_total counter\npiecestore_cache_coalesced_total {}\n\
                 # HELP piecestore_cache_stale_total Entries dropped because the index no longer held their piece (another process deleted or replaced it).\n\
                 # TYPE piecestore_cache_stale_total counter\npiecestore_cache_stale_total {}",
                cache.fetches, cache.coalesced, cache.stale
            );
        }
        out
    }
}

impl fmt::Display for Metrics {
    /// The Prometheus text of [`Metrics::to_prometheus`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_prometheus())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_least_upper_bounds() {
        for ns in [0, 1, 999, 1000, 1001, 1999, 2000, 2001, 4000, 4001, 1 << 40] {
            let b = bucket_of(ns);
            if b < BUCKETS {
                assert!(ns <= bound_ns(b), "{ns} above bucket {b}");
            }
            if b > 0 {
                assert!(ns > bound_ns(b - 1), "{ns} fits bucket {}", b - 1);
            }
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS);
    }

    #[test]
    fn record_and_render() {
        let r = Recorder::new(vec!["memory", "s3"], true);
        r.record(1, Op::Get, Duration::from_micros(3), Ok(10));
        r.record(
            1,
            Op::Get,
            Duration::from_micros(300),
            Err(ErrorKind::NotFound),
        );
        r.record(0, Op::Put, Duration::from_secs(100), Ok(7));
        let m = r.snapshot();
        let get = m.total(Op::Get);
        assert_eq!((get.count, get.bytes, get.error_count()), (2, 10, 1));
        assert_eq!(get.latency.quantile(0.5), Some(Duration::from_micros(4)));
        assert_eq!(get.latency.quantile(1.0), Some(Duration::from_micros(512)));
        assert_eq!(m.total(Op::Put).latency.quantile(0.5), Some(Duration::MAX));
        let text = m.to_prometheus();
        assert!(text.contains(
            "piecestore_operation_errors_total{backend=\"s3\",shard=\"1\",op=\"get\",kind=\"PIECE_NOT_FOUND\"} 1"
        ));
        assert!(text.contains(
            "piecestore_operation_duration_seconds_bucket{backend=\"s3\",shard=\"1\",op=\"get\",le=\"0.000004\"} 1"
        ));
        assert!(text.contains(
            "piecestore_operation_duration_seconds_bucket{backend=\"memory\",shard=\"0\",op=\"put\",le=\"+Inf\"} 1"
        ));
        assert!(text.contains(
            "piecestore_operation_bytes_total{backend=\"memory\",shard=\"0\",op=\"put\"} 7"
        ));
    }

    #[test]
    fn disabled_records_nothing() {
        let r = Recorder::new(vec!["memory"], false);
        r.record(0, Op::Put, Duration::from_micros(3), Ok(10));
        let m = r.snapshot();
        assert!(!m.enabled && m.ops.is_empty());
        assert_eq!(m.total(Op::Put).count, 0);
    }
}
