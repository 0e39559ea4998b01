//! A benchmark's results: what `--json` writes and `bench compare` reads, with the text table
//! and the side-by-side comparison.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::check::CheckResult;

/// The JSON format's version; `bench compare` refuses reports of another major version.
pub const REPORT_VERSION: u32 = 1;

/// Everything one benchmark run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// [`REPORT_VERSION`].
    pub version: u32,
    /// `piecestore <version>`.
    pub tool: String,
    /// Unix time (seconds) the run started.
    pub started_at: u64,
    /// Each shard's backend, as a label without credentials.
    pub store: Vec<String>,
    /// The workload (`put`, `mixed:put=15,get=45,…`).
    pub workload: String,
    /// The object sizes (`4KiB`, `4KiB,1MiB`, `1KiB..1MiB`).
    pub sizes: String,
    /// Workers issuing operations at once.
    pub concurrency: usize,
    /// Pieces written before the measurement for reads, heads, deletes and lists.
    pub prepared_objects: u64,
    /// Seconds of warm-up (not measured).
    pub warmup_s: f64,
    /// Seconds measured (from the first measured operation's start to the last one's end).
    pub duration_s: f64,
    /// Why the run ended before its duration or count, if it did.
    pub stopped_early: Option<String>,
    /// Per operation, measured phase only.
    pub ops: Vec<OpReport>,
    /// All operations of the measured phase together.
    pub total: Totals,
    /// The measured phase second by second.
    pub timeline: Vec<Second>,
    /// Every operation issued (succeeded or failed) per phase, by operation: what the backend
    /// was asked to do.
    pub issued: Issued,
    /// The functional checks run before the load (`--check`).
    pub checks: Vec<CheckResult>,
    /// What the cleanup removed (`None` when `--keep` left the pieces).
    pub cleanup: Option<Cleanup>,
    /// The data cache over the run (warm-up and prefill included), when the store has one.
    #[serde(default)]
    pub cache: Option<CacheReport>,
}

/// The data cache's counters over a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheReport {
    /// The share of gets that made no request of their own (`None` without gets).
    pub hit_ratio: Option<f64>,
    /// Hits per tier (`memory`, `disk`).
    pub hits: BTreeMap<String, u64>,
    /// Fetches from the store that misses made.
    pub fetches: u64,
    /// Gets that waited for another get's fetch of the same key.
    pub coalesced: u64,
}

impl CacheReport {
    /// The report of a store's cache counters.
    pub fn of(s: &crate::cache::CacheStats) -> CacheReport {
        CacheReport {
            hit_ratio: s.hit_ratio(),
            hits: s
                .tiers
                .iter()
                .map(|t| (t.tier.to_string(), t.hits))
                .collect(),
            fetches: s.fetches,
            coalesced: s.coalesced,
        }
    }
}

/// The results of one operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpReport {
    /// The operation.
    pub op: String,
    /// Operations that succeeded.
    pub count: u64,
    /// Failed operations by error code (`PIECE_NOT_FOUND`, `BACKEND`, …).
    pub errors: BTreeMap<String, u64>,
    /// Bytes written (put) or read (get).
    pub bytes: u64,
    /// Successful operations per second.
    pub ops_per_s: f64,
    /// Bytes per second.
    pub bytes_per_s: f64,
    /// Latency of successful operations.
    pub latency: Latency,
    /// Time to first byte (gets only).
    pub ttfb: Option<Latency>,
}

/// Latency statistics from an HDR histogram (3 significant digits), in microseconds.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Latency {
    /// Fastest.
    pub min_us: f64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Slowest.
    pub max_us: f64,
    /// `(percentile, latency µs)` points of the whole distribution, for plots.
    pub percentiles: Vec<(f64, f64)>,
    /// `(upper bound µs, operations)`: a log-scale histogram, for plots.
    pub histogram: Vec<(f64, u64)>,
}

/// The measured phase's totals.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Totals {
    /// Successful operations.
    pub count: u64,
    /// Failed operations.
    pub errors: u64,
    /// Failed operations by error code.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Bytes moved.
    pub bytes: u64,
    /// Successful operations per second.
    pub ops_per_s: f64,
    /// Bytes per second.
    pub bytes_per_s: f64,
}

/// One second of the measured phase.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Second {
    /// Seconds since the measurement started (this second covers `[t, t+1)`).
    pub t: u32,
    /// Successful operations finished in this second, by operation.
    pub ops: BTreeMap<String, u64>,
    /// Failed operations finished in this second.
    pub errors: u64,
    /// Bytes moved in this second.
    pub bytes: u64,
    /// Mean latency of this second's successful operations, µs.
    pub mean_latency_us: f64,
    /// How much of the second the run covered (1.0, but less for the last one): divide by it
    /// for a rate.
    #[serde(default = "one")]
    pub span_s: f64,
}

fn one() -> f64 {
    1.0
}

/// Operations issued per phase, by operation name.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Issued {
    /// Writing the pieces the workload reads.
    pub prepare: BTreeMap<String, u64>,
    /// The warm-up.
    pub warmup: BTreeMap<String, u64>,
    /// The measurement.
    pub measure: BTreeMap<String, u64>,
    /// Deleting what the run wrote: one listing per shard and a delete per piece.
    pub cleanup: BTreeMap<String, u64>,
}

impl Issued {
    /// The sum over every phase of one operation.
    pub fn total(&self, op: &str) -> u64 {
        [&self.prepare, &self.warmup, &self.measure, &self.cleanup]
            .iter()
            .map(|m| m.get(op).copied().unwrap_or(0))
            .sum()
    }
}

/// What the cleanup did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cleanup {
    /// Pieces deleted.
    pub pieces: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Why it failed, if it did (the pieces under the run's prefix are then left behind).
    pub error: Option<String>,
}

/// `12.3µs`, `4.56ms`, `1.20s`.
pub fn human_us(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.1}µs")
    } else if us < 1_000_000.0 {
        format!("{:.2}ms", us / 1000.0)
    } else {
        format!("{:.2}s", us / 1_000_000.0)
    }
}

/// `1.5 MiB/s`.
pub fn human_rate(bytes_per_s: f64) -> String {
    let mib = bytes_per_s / (1u64 << 20) as f64;
    if mib >= 1.0 {
        format!("{mib:.1} MiB/s")
    } else {
        format!("{:.1} KiB/s", bytes_per_s / 1024.0)
    }
}

impl Report {
    /// Whether a functional check failed (then no load ran).
    pub fn check_failed(&self) -> bool {
        self.checks.iter().any(|c| !c.passed)
    }

    /// The human-readable summary `piecestore bench` prints.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} | {} | sizes {} | concurrency {} | {:.1}s measured (+{:.1}s warm-up) | {}",
            self.tool,
            self.workload,
            self.sizes,
            self.concurrency,
            self.duration_s,
            self.warmup_s,
            summary_of_store(&self.store)
        );
        if let Some(why) = &self.stopped_early {
            let _ = writeln!(out, "stopped early: {why}");
        }
        let _ = writeln!(
            out,
            "{:<7}{:>10}{:>12}{:>13}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>8}",
            "op",
            "ops",
            "ops/s",
            "throughput",
            "mean",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
            "errors"
        );
        let row = |out: &mut String, name: &str, r: &OpReport, l: &Latency| {
            let errors: u64 = r.errors.values().sum();
            let _ = writeln!(
                out,
                "{:<7}{:>10}{:>12.1}{:>13}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>8}",
                name,
                r.count,
                r.ops_per_s,
                human_rate(r.bytes_per_s),
                human_us(l.mean_us),
                human_us(l.p50_us),
                human_us(l.p90_us),
                human_us(l.p99_us),
                human_us(l.p999_us),
                human_us(l.max_us),
                errors
            );
        };
        for r in &self.ops {
            row(&mut out, &r.op, r, &r.latency);
            if let Some(t) = &r.ttfb {
                row(&mut out, "  ttfb", r, t);
            }
        }
        let t = &self.total;
        let _ = writeln!(
            out,
            "{:<7}{:>10}{:>12.1}{:>13}{:>60}",
            "total",
            t.count,
            t.ops_per_s,
            human_rate(t.bytes_per_s),
            t.errors
        );
        if !t.errors_by_kind.is_empty() {
            let kinds: Vec<String> = t
                .errors_by_kind
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            let _ = writeln!(out, "errors by kind: {}", kinds.join(", "));
        }
        if let Some(c) = &self.cleanup {
            match &c.error {
                None => {
                    let _ = writeln!(
                        out,
                        "cleanup: deleted {} pieces ({} bytes)",
                        c.pieces, c.bytes
                    );
                }
                Some(e) => {
                    let _ = writeln!(out, "cleanup failed after {} pieces: {e}", c.pieces);
                }
            }
        }
        out
    }
}

fn summary_of_store(store: &[String]) -> String {
    match store {
        [] => "no store".into(),
        [one] => one.clone(),
        [first, ..] => format!("{} shards ({first}, …)", store.len()),
    }
}

/// `b` against `a`, side by side: ops/s, throughput and latency percentiles per operation,
/// with the change in percent (for latency, negative is better).
pub fn compare(a: &Report, b: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "A: {} | {} | {} | c{} | {:.1}s\nB: {} | {} | {} | c{} | {:.1}s",
        a.workload,
        a.sizes,
        summary_of_store(&a.store),
        a.concurrency,
        a.duration_s,
        b.workload,
        b.sizes,
        summary_of_store(&b.store),
        b.concurrency,
        b.duration_s
    );
    let _ = writeln!(
        out,
        "{:<7}{:<11}{:>14}{:>14}{:>10}",
        "op", "metric", "A", "B", "change"
    );
    let delta = |x: f64, y: f64| {
        if x == 0.0 {
            "-".to_string()
        } else {
            format!("{:+.1}%", (y - x) / x * 100.0)
        }
    };
    let mut names: Vec<&str> = a.ops.iter().map(|r| r.op.as_str()).collect();
    for r in &b.ops {
        if !names.contains(&r.op.as_str()) {
            names.push(&r.op);
        }
    }
    for name in names {
        let (ra, rb) = (
            a.ops.iter().find(|r| r.op == name),
            b.ops.iter().find(|r| r.op == name),
        );
        let (Some(ra), Some(rb)) = (ra, rb) else {
            let only = if ra.is_some() { "A" } else { "B" };
            let _ = writeln!(out, "{name:<7}only in {only}");
            continue;
        };
        let mut line = |metric: &str, x: f64, y: f64, fmt: &dyn Fn(f64) -> String| {
            let _ = writeln!(
                out,
                "{:<7}{:<11}{:>14}{:>14}{:>10}",
                name,
                metric,
                fmt(x),
                fmt(y),
                delta(x, y)
            );
        };
        let plain = |v: f64| format!("{v:.1}");
        line("ops/s", ra.ops_per_s, rb.ops_per_s, &plain);
        line("throughput", ra.bytes_per_s, rb.bytes_per_s, &human_rate);
        line("p50", ra.latency.p50_us, rb.latency.p50_us, &human_us);
        line("p90", ra.latency.p90_us, rb.latency.p90_us, &human_us);
        line("p99", ra.latency.p99_us, rb.latency.p99_us, &human_us);
        line("p99.9", ra.latency.p999_us, rb.latency.p999_us, &human_us);
        line("max", ra.latency.max_us, rb.latency.max_us, &human_us);
        let (ea, eb) = (
            ra.errors.values().sum::<u64>() as f64,
            rb.errors.values().sum::<u64>() as f64,
        );
        line("errors", ea, eb, &|v| format!("{v:.0}"));
    }
    out
}
