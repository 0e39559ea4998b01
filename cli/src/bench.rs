//! `piecestore bench`, `bench compare` and `profile`: the command-line side of
//! [`piecestore::bench`] and [`PieceStore::inventory`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use piecestore::bench::{self, BenchOptions, Phase, Progress, Report, SizeSpec, Workload};
use piecestore::profile::InventoryOptions;
use piecestore::{Error, PieceStore};

use crate::{CliError, EXIT_CHECK_FAILED, io, write_file};

pub(crate) const AFTER_HELP: &str = "\
Which store (global options, given before or after `bench`):
  --store URL        memory://, file:///path, ./path, s3://bucket/prefix?region=R,
                     http://127.0.0.1:9000/BUCKET (MinIO, Ceph RGW), an AWS, OSS or B2 https://
                     URL; add ?shards=N with %d in the URL to shard, and options as query
                     parameters (?pack=false&max_retries=0&request_timeout=2s).
  --config FILE      a config.toml with a [PieceStore] table.
  neither            ./config.toml if it has a [PieceStore] table, else the local directory
                     ./data (--verbose says which).
  Credentials come from the config or the environment (`piecestore --help`, docs/config.md).

Cache: the benchmark measures the backend, so a bucket's default memory cache is off here;
  set a tier (?cache_memory=256MiB, ?cache_disk=DIR) to measure the cache, and the report
  ends with its hit ratio.

Packing: on a directory or bucket (not memory://) pieces under 1 MiB are packed by default, and
  concurrent puts share one pack write; add ?pack=false to the URL to measure one object per
  piece. Cleanup deletes the run's pieces, which leaves garbage in their packs until
  `piecestore gc` (or Pack.GcInterval) reclaims it.

Workloads (--op):
  put, get, head, delete, list     one operation
  mixed                            get 45%, head 30%, put 15%, delete 10% (warp's mix)
  mixed:get=60,put=30,delete=10    your own weights

Sizes (--size): 4KiB | 4KiB,64KiB,1MiB (picked at random) | 1KiB..1MiB (log-uniform).
  KiB/MiB/GiB (or K/M/G) are powers of 1024; KB/MB/GB of 1000.

Output: a table on standard output; --json [FILE] for JSON (standard output without FILE);
  --html FILE for a page with plots of throughput over time and the latency distribution;
  --prometheus FILE for the store's own metrics after the run (Prometheus text).

Examples:
  piecestore bench                                   put 4 KiB for 10 s at concurrency 16 on ./data
  piecestore --store memory:// bench --op get --count 100000 --warmup 0s
  piecestore --store 'http://127.0.0.1:9000/b-%d?shards=4' bench --op mixed --size 4KiB..1MiB \\
      --duration 1m --json run.json --html run.html
  piecestore bench --check --op get                  check the store behaves, then benchmark
  piecestore bench compare before.json after.json";

#[derive(Subcommand, Debug)]
pub(crate) enum BenchCommand {
    /// Set two runs' JSON reports side by side: ops/s, throughput and latency, with the change.
    Compare {
        /// The baseline (`--json` output of a run).
        a: PathBuf,
        /// The run to compare with it.
        b: PathBuf,
    },
}

#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    /// Operation: put, get, head, delete, list, mixed or mixed:OP=W,… (see below).
    #[arg(long = "op", default_value = "put")]
    workload: String,
    /// Object size(s): 4KiB, a list 4KiB,1MiB or a range 1KiB..1MiB.
    #[arg(long, default_value = "4KiB")]
    size: String,
    /// Operations in flight at once.
    #[arg(short, long, default_value_t = 16)]
    concurrency: usize,
    /// How long to measure (e.g. 10s, 1m30s).
    #[arg(short, long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Measure this many operations instead of a duration.
    #[arg(short = 'n', long)]
    count: Option<u64>,
    /// Run this long unmeasured first.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Pieces to write first for get, head, delete, list and mixed.
    #[arg(long, default_value_t = 1000)]
    objects: u64,
    /// Check first that the store behaves (put/get/range/head/list/overwrite/missing/delete);
    /// stop with exit code 9 on a failure.
    #[arg(long)]
    check: bool,
    /// Keep the pieces the run wrote.
    #[arg(long)]
    keep: bool,
    /// Key prefix for the run's pieces (default: a fresh bench-<random>/).
    #[arg(long)]
    prefix: Option<String>,
    /// Write the report as JSON to FILE, or to standard output instead of the table.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    json: Option<PathBuf>,
    /// Write a self-contained HTML report with plots.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Write the store's metrics after the run, as Prometheus text.
    #[arg(long, value_name = "FILE")]
    prometheus: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

fn progress_bar(quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {prefix:>8} [{elapsed_precise}] {wide_bar} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

fn show(bar: &indicatif::ProgressBar, p: Progress) {
    bar.set_prefix(p.phase.as_str());
    match (p.planned, p.planned_ops) {
        (_, Some(n)) => {
            bar.set_length(n);
            bar.set_position(p.done.min(n));
        }
        (Some(d), None) => {
            bar.set_length(d.as_millis() as u64);
            bar.set_position((p.elapsed.as_millis() as u64).min(d.as_millis() as u64));
        }
        (None, None) => {
            bar.set_length(0);
        }
    }
    let msg = match p.phase {
        Phase::Warmup | Phase::Measure => format!(
            "{} ops, {:.0} ops/s, {} errors",
            p.done, p.ops_per_s, p.errors
        ),
        Phase::Prepare => format!("{} pieces written", p.done),
        Phase::Check => "functional checks".into(),
        Phase::Cleanup => "deleting the run's pieces".into(),
    };
    bar.set_message(msg);
}

pub(crate) async fn run(store: &PieceStore, a: BenchArgs) -> Result<(), CliError> {
    let workload: Workload = a.workload.parse()?;
    let sizes: SizeSpec = a.size.parse()?;
    let opts = BenchOptions {
        workload,
        sizes,
        concurrency: a.concurrency,
        duration: Some(a.duration),
        count: a.count,
        warmup: a.warmup,
        objects: a.objects,
        check: a.check,
        keep: a.keep,
        prefix: a.prefix,
    };
    let bar = progress_bar(a.quiet);
    let report = bench::run(store, &opts, &|p| show(&bar, p)).await;
    bar.finish_and_clear();
    let report = report?;
    let json_to_stdout = a.json.as_deref().is_some_and(|p| p.as_os_str() == "-");
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| CliError::Io("encoding the report".into(), e.into()))?;
        if json_to_stdout {
            println!("{text}");
        } else {
            write_file(path, text.as_bytes())?;
        }
    }
    if let Some(path) = &a.html {
        crate::html::write(path, &report)?;
    }
    if let Some(path) = &a.prometheus {
        write_file(path, store.metrics().to_prometheus().as_bytes())?;
    }
    let mut out: Box<dyn Write> = if json_to_stdout {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    if !report.checks.is_empty() {
        for c in &report.checks {
            let mark = if c.passed { "ok  " } else { "FAIL" };
            let detail = c
                .detail
                .as_deref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default();
            writeln!(out, "check {mark} {}{detail}", c.name).map_err(io("writing the report"))?;
        }
    }
    if report.check_failed() {
        eprintln!(
            "error: {}",
            report
                .stopped_early
                .as_deref()
                .unwrap_or("a functional check failed")
        );
        return Err(CliError::Exit(EXIT_CHECK_FAILED));
    }
    if !json_to_stdout {
        write!(out, "{}", report.to_table()).map_err(io("writing the report"))?;
        if let Some(line) = cache_line(store) {
            writeln!(out, "{line}").map_err(io("writing the report"))?;
        }
    }
    if let Some(c) = &report.cleanup
        && let Some(e) = &c.error
    {
        eprintln!("warning: cleanup failed, pieces are left under the run's prefix: {e}");
    }
    Ok(())
}

/// The data cache's hit ratio over the run (and the warm-up and prefill before it), when the
/// store has a cache.
pub(crate) fn cache_line(store: &PieceStore) -> Option<String> {
    let s = store.cache_stats()?;
    let ratio = s
        .hit_ratio()
        .map(|r| format!("{:.1}% of gets made no request of their own", r * 100.0))
        .unwrap_or_else(|| "no gets".into());
    let tiers: Vec<String> = s
        .tiers
        .iter()
        .map(|t| format!("{} {} hits", t.tier, t.hits))
        .collect();
    Some(format!(
        "cache: {ratio} ({}; {} fetches from the store, {} gets shared another's fetch)",
        tiers.join(", "),
        s.fetches,
        s.coalesced
    ))
}

fn read_report(path: &Path) -> Result<Report, CliError> {
    let text =
        std::fs::read_to_string(path).map_err(io(format!("cannot read {}", path.display())))?;
    let report: Report = serde_json::from_str(&text).map_err(|e| {
        CliError::Store(Error::InvalidConfig(format!(
            "{} is not a piecestore bench report: {e}",
            path.display()
        )))
    })?;
    if report.version != bench::REPORT_VERSION {
        return Err(CliError::Store(Error::InvalidConfig(format!(
            "{} is a version {} report; this piecestore reads version {}",
            path.display(),
            report.version,
            bench::REPORT_VERSION
        ))));
    }
    Ok(report)
}

pub(crate) fn compare_files(a: &Path, b: &Path) -> Result<(), CliError> {
    let (ra, rb) = (read_report(a)?, read_report(b)?);
    print!("{}", bench::compare(&ra, &rb));
    Ok(())
}

pub(crate) async fn profile(
    store: &PieceStore,
    json: bool,
    samples: usize,
) -> Result<(), CliError> {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar.set_message("listing every shard");
    let inv = store
        .inventory(
            InventoryOptions {
                max_orphan_samples: samples.max(1),
            },
            &|n| bar.set_message(format!("{n} objects listed")),
        )
        .await;
    bar.finish_and_clear();
    let inv = inv?;
    if json {
        let text = serde_json::to_string_pretty(&inv)
            .map_err(|e| CliError::Io("encoding the profile".into(), e.into()))?;
        println!("{text}");
        return Ok(());
    }
    let mut o = String::new();
    use std::fmt::Write as _;
    let mean = inv.bytes.checked_div(inv.pieces).unwrap_or(0);
    let _ = writeln!(
        o,
        "pieces: {} ({} bytes, {})\nsizes:  min {}, mean {}, max {}",
        inv.pieces,
        inv.bytes,
        bench::human_size(inv.bytes),
        bench::human_size(inv.min_size),
        bench::human_size(mean),
        bench::human_size(inv.max_size)
    );
    let _ = writeln!(
        o,
        "\nsize histogram:\n{:>21} {:>10} {:>12}  share of pieces",
        "size", "pieces", "bytes"
    );
    let most = inv.sizes.iter().map(|b| b.pieces).max().unwrap_or(1).max(1);
    for b in &inv.sizes {
        let range = if b.min == b.max {
            bench::human_size(b.max)
        } else {
            format!("{}..{}", bench::human_size(b.min), bench::human_size(b.max))
        };
        let bar = "#".repeat(((b.pieces * 30).div_ceil(most)) as usize);
        let _ = writeln!(o, "{range:>21} {:>10} {:>12}  {bar}", b.pieces, b.bytes);
    }
    let _ = writeln!(
        o,
        "\nshards: {} (skew, fullest over mean: bytes {:.2}x, pieces {:.2}x)",
        inv.shards.len(),
        inv.bytes_skew,
        inv.pieces_skew
    );
    for s in &inv.shards {
        let share = if inv.bytes == 0 {
            0.0
        } else {
            s.bytes as f64 * 100.0 / inv.bytes as f64
        };
        let _ = writeln!(
            o,
            "  {:>3}  {:>10} pieces {:>14} bytes {:>6.1}%  {} orphans  {}",
            s.shard, s.pieces, s.bytes, share, s.orphans, s.backend
        );
    }
    let or = &inv.orphans;
    let _ = writeln!(
        o,
        "\norphans: {} (misplaced {} with {} bytes, temp {}, foreign {}, leftovers {}; {} other bytes)",
        or.total(),
        or.misplaced,
        or.misplaced_bytes,
        or.temp,
        or.foreign,
        or.internal,
        or.other_bytes
    );
    for (shard, key, why) in &or.samples {
        let _ = writeln!(o, "  shard {shard}: {key:?}: {why}");
    }
    match &inv.packs {
        None => {
            let _ = writeln!(o, "packs:   none (small-piece packing is not enabled)");
        }
        Some(p) => {
            let _ = writeln!(
                o,
                "packs:   {} ({} bytes), fill {:.1}%, garbage {:.1}%",
                p.packs,
                p.bytes,
                p.fill * 100.0,
                p.garbage_ratio * 100.0
            );
        }
    }
    if let Some(s) = store.cache_stats() {
        let _ = writeln!(o, "\ncache: {}", store.caching());
        for t in &s.tiers {
            let _ = writeln!(
                o,
                "  {}: {} in {} pieces (of {})",
                t.tier,
                bench::human_size(t.bytes),
                t.entries,
                bench::human_size(t.capacity)
            );
        }
        if let Some(line) = cache_line(store) {
            let _ = writeln!(o, "{line}");
        }
    }
    print!("{o}");
    Ok(())
}
