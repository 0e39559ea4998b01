//! `piecestore gc` and `piecestore fsck`.

use std::time::Duration;

use piecestore::PieceStore;
use piecestore::pack::fsck::FsckOptions;
use piecestore::pack::gc::{GcOptions, GcProgress};

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

/// Runs a garbage collection and prints what it did.
pub(crate) async fn gc(
    store: &PieceStore,
    grace: Option<Duration>,
    garbage_ratio: Option<f64>,
    dry_run: bool,
    json: bool,
) -> Result<(), CliError> {
    if let Some(r) = garbage_ratio
        && !(0.0..=1.0).contains(&r)
    {
        return Err(CliError::Store(piecestore::Error::InvalidConfig(format!(
            "--garbage-ratio {r} is not between 0.0 and 1.0"
        ))));
    }
    if !store.is_packed() {
        eprintln!("this store does not pack small pieces (Pack = false): nothing to collect");
    }
    let bar = bar("compacting");
    let on_progress = |p: GcProgress| {
        bar.set_length(p.total);
        bar.set_position(p.done);
    };
    let opts = GcOptions {
        garbage_ratio,
        grace,
        dry_run,
    };
    let report = store.gc(opts, &on_progress).await;
    bar.finish_and_clear();
    let r = report?;
    if json {
        return json_out(serde_json::to_string_pretty(&r));
    }
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
    if r.packs_damaged > 0 {
        println!(
            "left alone: {} damaged packs (run `piecestore fsck`)",
            r.packs_damaged
        );
    }
    Ok(())
}

/// Checks the store's packs and index; `Ok(false)` when damage remains.
pub(crate) async fn fsck(
    store: &PieceStore,
    rebuild_index: bool,
    json: bool,
) -> Result<bool, CliError> {
    let bar = bar("checking");
    let on_progress = |done: u64| bar.set_position(done);
    let report = store
        .fsck(FsckOptions { rebuild_index }, &on_progress)
        .await;
    bar.finish_and_clear();
    let r = report?;
    if json {
        json_out(serde_json::to_string_pretty(&r))?;
        return Ok(r.is_clean());
    }
    if !store.is_packed() {
        println!("this store does not pack small pieces (Pack = false): no packs to check");
        return Ok(true);
    }
    println!(
        "checked {} packs ({}), {} records, {} index entries",
        r.packs,
        mib(r.bytes),
        r.records,
        r.entries
    );
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
