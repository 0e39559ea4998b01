//! `piecestore gc` and `piecestore fsck`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::TryStreamExt;
use piecestore::pack::fsck::{FsckOptions, FsckProblem, FsckReport};
use piecestore::pack::gc::{DoomedSummary, GcOptions, GcProgress, GcReport};
use piecestore::{Error, PieceStore};

use crate::CliError;

fn bar(what: &'static str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {msg} {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(what);
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar
}

fn json_out(v: serde_json::Result<String>) -> Result<(), CliError> {
    let text = v.map_err(|e| CliError::Io("JSON".into(), std::io::Error::other(e)))?;
    println!("{text}");
    Ok(())
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

/// What `piecestore gc` does beyond a compaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GcMode {
    /// Compact (or, with `dry_run`, report what would be compacted).
    Compact {
        /// Only report what would be done.
        dry_run: bool,
    },
    /// Show the doomed packs (count, bytes, when they go) without compacting.
    Status,
    /// Compact, then wait for the doomed packs' grace period and delete them.
    Wait,
}

/// Runs a garbage collection (or shows the doomed packs, or compacts and waits for them) and
/// prints what it did.
pub(crate) async fn gc(
    store: &PieceStore,
    grace: Option<Duration>,
    garbage_ratio: Option<f64>,
    mode: GcMode,
    json: bool,
) -> Result<(), CliError> {
    if !store.is_packed() {
        eprintln!("this store does not pack small pieces (Pack = false): nothing to collect");
    }
    let dry_run = matches!(mode, GcMode::Status | GcMode::Compact { dry_run: true });
    let opts = GcOptions {
        garbage_ratio,
        grace,
        dry_run,
    };
    let r = run_gc(store, opts, "compacting").await?;
    if mode == GcMode::Status {
        if json {
            return json_out(serde_json::to_string_pretty(&r.doomed));
        }
        println!("{}", doomed_line(&r.doomed));
        return Ok(());
    }
    if mode == GcMode::Wait {
        if !json {
            print_report(&r, false, false);
        }
        let total = wait_and_delete(store, opts, r).await?;
        if json {
            return json_out(serde_json::to_string_pretty(&total));
        }
        if r.doomed.packs > 0 {
            println!(
                "after the grace period: deleted {} compacted packs ({} reclaimed); {} packs left",
                total.packs_deleted - r.packs_deleted,
                mib(total.bytes_reclaimed - r.bytes_reclaimed),
                total.packs_after
            );
        }
        if total.doomed.packs > 0 {
            println!("still {}", doomed_line(&total.doomed));
        }
        return Ok(());
    }
    if json {
        return json_out(serde_json::to_string_pretty(&r));
    }
    print_report(&r, dry_run, true);
    Ok(())
}

/// One `PieceStore::gc` with a progress bar.
async fn run_gc(
    store: &PieceStore,
    opts: GcOptions,
    what: &'static str,
) -> Result<GcReport, CliError> {
    let bar = bar(what);
    let on_progress = |p: GcProgress| {
        bar.set_length(p.total);
        bar.set_position(p.done);
    };
    let report = store.gc(opts, &on_progress).await;
    bar.finish_and_clear();
    Ok(report?)
}

/// The summary of a gc; with `hint`, how to wait for the doomed packs.
fn print_report(r: &GcReport, dry_run: bool, hint: bool) {
    let verb = if dry_run {
        "would compact"
    } else {
        "compacted"
    };
    println!(
        "packs: {} before, {} after; {verb} {}, wrote {}, deleted {} ({} reclaimed), {} waiting for their grace period",
        r.packs_before,
        r.packs_after,
        r.packs_compacted,
        r.packs_written,
        r.packs_deleted,
        mib(r.bytes_reclaimed),
        r.packs_doomed
    );
    println!(
        "pieces moved: {} ({}); tombstones dropped: {}",
        r.pieces_moved,
        mib(r.bytes_moved),
        r.tombstones_dropped
    );
    if r.doomed.packs > 0 {
        println!("{}", doomed_line(&r.doomed));
        if !dry_run && hint {
            println!(
                "  (compaction writes its new packs before the compacted ones go, so the store \
                 uses more space until then; `piecestore gc --wait` waits and deletes them, \
                 `piecestore gc --status` shows them)"
            );
        }
    }
    if r.packs_damaged > 0 {
        println!(
            "left alone: {} damaged packs (run `piecestore fsck`)",
            r.packs_damaged
        );
    }
}

/// A time as RFC 3339 and as "in 59m 58s" from now ("now" when it is past).
fn when(ms: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(ms);
    let left = at.duration_since(SystemTime::now()).unwrap_or_default();
    let rfc = humantime::format_rfc3339_seconds(at);
    if left.is_zero() {
        format!("{rfc} (now)")
    } else {
        format!("{rfc} (in {})", human(left))
    }
}

/// A duration rounded up to whole seconds, as "59m 58s".
fn human(d: Duration) -> String {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// One line on the doomed packs: how many, their bytes, and when a gc may delete them.
fn doomed_line(d: &DoomedSummary) -> String {
    let (Some(first), Some(last)) = (d.first_due_ms, d.last_due_ms) else {
        return "doomed: no compacted packs wait for deletion".into();
    };
    let grace = human(Duration::from_millis(d.grace_ms));
    let times = if first == last {
        format!("at {}", when(first))
    } else {
        format!("from {} to {}", when(first), when(last))
    };
    format!(
        "doomed: {} compacted {} ({} bytes, {}) to be freed by a gc {times}, after the grace period ({grace})",
        d.packs,
        if d.packs == 1 { "pack" } else { "packs" },
        d.bytes,
        mib(d.bytes),
    )
}

/// `gc --wait`: after the compaction `first`, waits until the doomed packs' grace period is
/// over (at most the grace period), deletes them with another gc pass, and returns what both
/// did.
async fn wait_and_delete(
    store: &PieceStore,
    opts: GcOptions,
    first: GcReport,
) -> Result<GcReport, CliError> {
    let mut total = first;
    // Packs doomed from now on are due within the grace period: never wait longer.
    let deadline = Instant::now() + Duration::from_millis(first.doomed.grace_ms);
    let mut doomed = first.doomed;
    while doomed.packs > 0 {
        let wait = doomed
            .wait()
            .min(deadline.saturating_duration_since(Instant::now()));
        eprintln!(
            "waiting {} for the grace period of {} doomed packs ({}) to end; Ctrl-C stops \
             waiting (a later gc deletes them)",
            human(wait),
            doomed.packs,
            mib(doomed.bytes)
        );
        sleep_with_bar(wait).await;
        let r = run_gc(store, opts, "deleting").await?;
        total.packs_deleted += r.packs_deleted;
        total.bytes_reclaimed += r.bytes_reclaimed;
        total.packs_compacted += r.packs_compacted;
        total.packs_written += r.packs_written;
        total.pieces_moved += r.pieces_moved;
        total.bytes_moved += r.bytes_moved;
        total.tombstones_dropped += r.tombstones_dropped;
        total.packs_damaged = total.packs_damaged.max(r.packs_damaged);
        total.packs_after = r.packs_after;
        total.packs_doomed = r.packs_doomed;
        total.doomed = r.doomed;
        doomed = r.doomed;
        // Only packs that are due (another process's clock, or a slow pass) are worth another
        // pass; packs this pass doomed wait for the next gc.
        if Instant::now() >= deadline || doomed.first_due_ms.is_none_or(|f| f > now_ms()) {
            break;
        }
    }
    Ok(total)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Sleeps `wait` (plus a little, so that the last pack is due), with a progress bar.
async fn sleep_with_bar(wait: Duration) {
    let wait = wait + Duration::from_millis(100);
    let bar = indicatif::ProgressBar::new(wait.as_millis() as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] waiting for the grace period {wide_bar} {eta} left",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    let start = Instant::now();
    loop {
        let done = start.elapsed();
        if done >= wait {
            break;
        }
        bar.set_position(done.as_millis() as u64);
        tokio::time::sleep((wait - done).min(Duration::from_millis(500))).await;
    }
    bar.finish_and_clear();
}

/// Checks the store: every pack and index entry, and every piece stored as an object of its
/// own; `Ok(false)` when damage remains.
pub(crate) async fn fsck(
    store: &PieceStore,
    rebuild_index: bool,
    json: bool,
) -> Result<bool, CliError> {
    let r = if store.is_packed() {
        let bar = bar("checking");
        let on_progress = |done: u64| bar.set_position(done);
        let report = store
            .fsck(FsckOptions { rebuild_index }, &on_progress)
            .await;
        bar.finish_and_clear();
        report?
    } else {
        if rebuild_index {
            eprintln!("this store does not pack small pieces (Pack = false): no index to rebuild");
        }
        check_unpacked(store).await?
    };
    if json {
        json_out(serde_json::to_string_pretty(&r))?;
        return Ok(r.is_clean());
    }
    println!(
        "checked {} packed pieces in {} packs ({}, {} records, {} index entries) and {} unpacked pieces ({}): {} problems",
        r.packed_pieces,
        r.packs,
        mib(r.bytes),
        r.records,
        r.entries,
        r.objects,
        mib(r.object_bytes),
        r.problems.len()
    );
    if r.objects_unverified > 0 {
        println!(
            "not verified: {} unpacked pieces carry no checksum (written by another program), \
             so only their presence was checked",
            r.objects_unverified
        );
    }
    if let Some(before) = &r.problems_before_rebuild {
        println!(
            "rebuilt the index from the packs: {} pieces ({} problems before)",
            r.rebuilt_pieces.unwrap_or(0),
            before.len()
        );
        for p in before {
            println!("  before: {p}");
        }
    }
    if r.is_clean() {
        println!("clean");
    } else {
        println!("{} problems:", r.problems.len());
        for p in &r.problems {
            println!("  {p}");
        }
    }
    Ok(r.is_clean())
}

/// A store that packs nothing: every piece is an object of its own, read and verified as `get`
/// verifies it.
async fn check_unpacked(store: &PieceStore) -> Result<FsckReport, CliError> {
    let bar = bar("checking");
    let mut r = FsckReport::default();
    let mut pieces = store.list("");
    while let Some(m) = pieces.try_next().await? {
        match store.get(&m.key).await {
            Ok(bytes) => {
                r.objects += 1;
                r.object_bytes += bytes.len() as u64;
                // A listing need not carry checksums: ask for the piece's own.
                if store.head(&m.key).await.is_ok_and(|h| h.unverified()) {
                    r.objects_unverified += 1;
                }
            }
            Err(Error::Corrupt { detail, .. }) => {
                r.objects += 1;
                r.problems.push(FsckProblem {
                    shard: store.shard_of(&m.key),
                    pack: None,
                    key: Some(m.key.clone()),
                    what: format!("the piece is corrupt: {detail}"),
                });
            }
            Err(Error::NotFound { .. }) => {} // deleted since the listing
            Err(e) => {
                bar.finish_and_clear();
                return Err(e.into());
            }
        }
        bar.set_position(r.object_bytes);
    }
    bar.finish_and_clear();
    Ok(r)
}
