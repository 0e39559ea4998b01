//! Compaction: rewrite packs whose garbage passed the threshold, merge undersized ones, and
//! delete compacted packs once their grace period is over.
//!
//! Never destroy first: live pieces are copied into a new pack, which is made durable; then,
//! in one index transaction, each piece moves with a compare-and-swap (a piece deleted or
//! rewritten meanwhile stays as it is) and the old packs are marked doomed with the time;
//! only a later step, after the grace period, deletes them. That one transaction is the only
//! switch point, so a crash anywhere leaves either the old state or the new one.
//!
//! Until that later step the storage used grows by the new packs: every report says how many
//! doomed packs are left, their bytes and when they may go ([`GcReport::doomed`], computed by
//! [`doomed_summary`]); a dry run reports the doomed packs without compacting
//! (`piecestore gc --status`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::format::{self, PackBuilder, RecordKind};
use super::index::{Change, Loc, PackId, PackInfo, PackState, Slot};
use super::{ShardPacker, new_pack_id, now_ms, pack_info};
use crate::backend::Backend;
use crate::error::{Error, Result};

/// Options of one garbage collection.
#[derive(Debug, Clone, Copy, Default)]
pub struct GcOptions {
    /// Compact packs with at least this share of garbage (default: the config's
    /// `Pack.GarbageRatio`).
    pub garbage_ratio: Option<f64>,
    /// Delete compacted packs this long after compaction (default: the config's `Pack.Grace`).
    pub grace: Option<Duration>,
    /// Only report what would be done (and the doomed packs as they are, in
    /// [`GcReport::doomed`]).
    pub dry_run: bool,
}

impl GcOptions {
    /// Refuses a garbage ratio outside 0.0..=1.0 (or NaN), as `Pack.GarbageRatio` is refused
    /// in a config. [`crate::PieceStore::gc`] checks this before any work.
    pub fn validate(&self) -> Result<()> {
        match self.garbage_ratio {
            Some(r) if !(0.0..=1.0).contains(&r) => Err(Error::config(format!(
                "gc: garbage ratio {r} is not between 0.0 and 1.0"
            ))),
            _ => Ok(()),
        }
    }
}

/// What a garbage collection did (summed over shards).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
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
    /// Bytes of storage freed by deleting packs.
    pub bytes_reclaimed: u64,
    /// Tombstones no pack needs any more, dropped.
    pub tombstones_dropped: u64,
    /// Packs left alone because they are damaged (`piecestore fsck` names them).
    pub packs_damaged: u64,
    /// The compacted packs left after this run (all of them, for a dry run): what deleting
    /// them will free, and when. Compaction writes its new packs first, so the storage used
    /// grows until these are deleted.
    pub doomed: DoomedSummary,
}

/// Compacted ("doomed") packs that wait for their grace period before a `gc` deletes them:
/// how many, their bytes, and when they may go ([`doomed_summary`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DoomedSummary {
    /// Doomed packs.
    pub packs: u64,
    /// Their bytes: the storage that deleting them frees.
    pub bytes: u64,
    /// When the first of them may be deleted: Unix milliseconds, its compaction time plus the
    /// grace period (at or before now: the next `gc` deletes it). `None` when there is none.
    pub first_due_ms: Option<u64>,
    /// When the last of them may be deleted (Unix milliseconds); `None` when there is none.
    pub last_due_ms: Option<u64>,
    /// The grace period these times were computed with, in milliseconds.
    pub grace_ms: u64,
}

impl DoomedSummary {
    /// Adds another shard's summary.
    pub fn add(&mut self, o: &DoomedSummary) {
        self.packs += o.packs;
        self.bytes += o.bytes;
        self.first_due_ms = min_some(self.first_due_ms, o.first_due_ms);
        self.last_due_ms = self.last_due_ms.max(o.last_due_ms);
        self.grace_ms = self.grace_ms.max(o.grace_ms);
    }

    /// How long until the last of them may be deleted (zero when all are due, or none is
    /// left).
    pub fn wait(&self) -> Duration {
        let now = now_ms();
        Duration::from_millis(self.last_due_ms.unwrap_or(now).saturating_sub(now))
    }
}

fn min_some(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The doomed packs among `packs` (a shard's, as its index lists them), with `grace` as the
/// grace period: how many, their bytes, and when the first and the last may be deleted.
pub fn doomed_summary(packs: &[(PackId, PackInfo)], grace: Duration) -> DoomedSummary {
    let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
    let mut s = DoomedSummary {
        grace_ms,
        ..DoomedSummary::default()
    };
    for (_, info) in packs {
        let PackState::Doomed { since_ms } = info.state else {
            continue;
        };
        let due = since_ms.saturating_add(grace_ms);
        s.packs += 1;
        s.bytes += info.size;
        s.first_due_ms = min_some(s.first_due_ms, Some(due));
        s.last_due_ms = s.last_due_ms.max(Some(due));
    }
    s
}

impl GcReport {
    /// Adds another shard's report.
    pub fn add(&mut self, o: &GcReport) {
        self.packs_before += o.packs_before;
        self.packs_after += o.packs_after;
        self.packs_compacted += o.packs_compacted;
        self.packs_written += o.packs_written;
        self.packs_deleted += o.packs_deleted;
        self.packs_doomed += o.packs_doomed;
        self.pieces_moved += o.pieces_moved;
        self.bytes_moved += o.bytes_moved;
        self.bytes_reclaimed += o.bytes_reclaimed;
        self.tombstones_dropped += o.tombstones_dropped;
        self.packs_damaged += o.packs_damaged;
        self.doomed.add(&o.doomed);
    }
}

/// Progress of a garbage collection: bytes of candidate packs read so far, of the total.
#[derive(Debug, Clone, Copy, Default)]
pub struct GcProgress {
    /// Bytes processed.
    pub done: u64,
    /// Bytes to process.
    pub total: u64,
}

/// A new pack being filled, with the moves it will commit.
struct Output {
    builder: PackBuilder,
    moves: Vec<(String, Loc, u64, u64)>, // key, from, offset in new pack, len
    sources: Vec<PackId>,
}

impl Output {
    fn new() -> Self {
        Output {
            builder: PackBuilder::compacted(),
            moves: Vec::new(),
            sources: Vec::new(),
        }
    }
}

/// One shard's garbage collection.
pub(crate) async fn gc_shard(
    packer: &Arc<ShardPacker>,
    backend: &Arc<Backend>,
    opts: &GcOptions,
    progress: &(dyn Fn(GcProgress) + Sync),
) -> Result<GcReport> {
    let _one = packer.gc_lease(backend).await?;
    let index = packer.index(backend).await?;
    let cfg = packer.opts().clone();
    let ratio = opts.garbage_ratio.unwrap_or(cfg.garbage_ratio);
    let grace = opts.grace.unwrap_or(cfg.grace);
    let mut report = GcReport::default();
    if !opts.dry_run {
        packer.seal_active_for_gc(backend, ratio).await?;
    }
    let packs = index.packs()?;
    report.packs_before = packs.len() as u64;

    report.add(&delete_doomed(packer, backend, &packs, grace, opts.dry_run).await?);

    let undersized = |i: &PackInfo| i.size < cfg.target_size / 2;
    let live: Vec<(PackId, PackInfo)> = packs
        .iter()
        .filter(|(_, i)| i.state == PackState::Live)
        .copied()
        .collect();
    let small = live.iter().filter(|(_, i)| undersized(i)).count();
    let candidates: Vec<(PackId, PackInfo)> = live
        .iter()
        .filter(|(_, i)| {
            // A pack of tombstones only (payload 0) is merged, never rewritten alone: it
            // would come out the same.
            (i.payload > 0 && i.garbage_ratio() >= ratio) || (undersized(i) && small >= 2)
        })
        .copied()
        .collect();
    if candidates.is_empty() || opts.dry_run {
        report.packs_compacted = if opts.dry_run {
            candidates.len() as u64
        } else {
            0
        };
        let after = index.packs()?;
        report.packs_after = after.len() as u64;
        report.doomed = doomed_summary(&after, grace);
        return Ok(report);
    }
    let needed: u64 = candidates.iter().map(|(_, i)| i.live_bytes).sum();
    if let Some(free) = backend.free_space() {
        let margin = 64 << 20;
        if free < needed + margin {
            return Err(Error::Backend {
                op: "gc",
                key: None,
                backend: backend.label().into(),
                message: format!(
                    "not compacting: {free} bytes free, compaction needs {needed} plus a 64 MiB margin"
                ),
                retryable: true,
            });
        }
    }
    let total: u64 = candidates.iter().map(|(_, i)| i.size).sum();
    let mut done = 0u64;
    progress(GcProgress { done, total });

    let mut out = Output::new();
    for (id, info) in &candidates {
        let bytes = match backend.read_pack(*id).await {
            Ok(b) => b,
            Err(Error::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        let footer = match format::parse_footer(&bytes, bytes.len() as u64) {
            Ok(f) => f,
            Err(why) => {
                tracing::warn!(pack = %super::index::pack_name(*id), %why, "not compacting a damaged pack; run `piecestore fsck`");
                report.packs_damaged += 1;
                continue;
            }
        };
        // Whether another pack could still hold a record a tombstone of this one deletes.
        let floor = packs
            .iter()
            .filter(|(p, _)| p != id)
            .map(|(_, i)| i.min_seq)
            .min()
            .unwrap_or(u64::MAX);
        let mut copied = Vec::new();
        let mut damaged = false;
        for e in &footer.entries {
            let payload = bytes.slice(e.offset as usize..(e.offset + e.len) as usize);
            match e.kind {
                RecordKind::Piece => {
                    let here = Loc {
                        pack: *id,
                        offset: e.offset,
                        len: e.len,
                        crc: e.crc,
                        seq: e.seq,
                    };
                    if index.get(&e.key)? != Some(Slot::Packed(here)) {
                        continue;
                    }
                    if crate::checksum::crc32c(&payload) != e.crc {
                        damaged = true;
                        break;
                    }
                    copied.push(Keep::Piece(e.key.clone(), here, payload));
                }
                RecordKind::Tombstone => {
                    let Some(upto) = format::tombstone_target(&payload) else {
                        continue;
                    };
                    if floor <= upto {
                        copied.push(Keep::Tombstone(e.key.clone(), e.seq, upto));
                    } else {
                        report.tombstones_dropped += 1;
                    }
                }
            }
        }
        if damaged {
            tracing::warn!(pack = %super::index::pack_name(*id), "not compacting a pack with a damaged live piece; run `piecestore fsck`");
            report.packs_damaged += 1;
            continue;
        }
        for keep in copied {
            match keep {
                Keep::Tombstone(key, seq, upto) => {
                    out.builder.push_tombstone(&key, seq, upto);
                }
                Keep::Piece(key, from, payload) => {
                    let e = out.builder.push_piece(&key, from.seq, &payload, from.crc);
                    let (offset, len) = (e.offset, e.len);
                    out.moves.push((key, from, offset, len));
                    report.pieces_moved += 1;
                    report.bytes_moved += len;
                }
            }
        }
        out.sources.push(*id);
        report.packs_compacted += 1;
        done += info.size;
        progress(GcProgress { done, total });
        if out.builder.len() >= cfg.target_size {
            write_output(packer, backend, std::mem::replace(&mut out, Output::new())).await?;
            report.packs_written += 1;
        }
    }
    if !out.sources.is_empty() {
        if !out.builder.is_empty() {
            report.packs_written += 1;
        }
        write_output(packer, backend, out).await?;
    }
    if grace.is_zero() {
        let packs = index.packs()?;
        let again = delete_doomed(packer, backend, &packs, grace, false).await?;
        report.packs_deleted += again.packs_deleted;
        report.bytes_reclaimed += again.bytes_reclaimed;
        report.packs_doomed = again.packs_doomed;
    } else {
        report.packs_doomed = index
            .packs()?
            .iter()
            .filter(|(_, i)| matches!(i.state, PackState::Doomed { .. }))
            .count() as u64;
    }
    let after = index.packs()?;
    report.packs_after = after.len() as u64;
    report.doomed = doomed_summary(&after, grace);
    Ok(report)
}

/// A record of a compacted pack that goes into the new pack.
enum Keep {
    /// A live piece: its key, where it is now, its bytes.
    Piece(String, Loc, Bytes),
    /// A tombstone still needed: its key, its seq, and the seq it deletes.
    Tombstone(String, u64, u64),
}

/// Writes a compaction output (if it holds anything), then commits the moves and dooms its
/// sources in one transaction.
async fn write_output(
    packer: &Arc<ShardPacker>,
    backend: &Arc<Backend>,
    out: Output,
) -> Result<()> {
    let mut changes = Vec::new();
    if !out.builder.is_empty() {
        let id = new_pack_id();
        let (bytes, entries) = out.builder.finish();
        backend.put_pack(id, bytes.clone()).await?;
        changes.push(Change::AddPack {
            id,
            info: pack_info(bytes.len() as u64, &entries),
        });
        for (key, from, offset, len) in out.moves {
            changes.push(Change::Move {
                key,
                from,
                to: Loc {
                    pack: id,
                    offset,
                    len,
                    crc: from.crc,
                    seq: from.seq,
                },
            });
        }
    }
    let since_ms = now_ms();
    for id in out.sources {
        changes.push(Change::Doom { id, since_ms });
    }
    packer.commit(backend, changes).await?;
    Ok(())
}

/// Deletes doomed packs whose grace period is over: the object first, then its record (a
/// crash between the two leaves a record whose object is gone; the next run removes it).
async fn delete_doomed(
    packer: &Arc<ShardPacker>,
    backend: &Arc<Backend>,
    packs: &[(PackId, PackInfo)],
    grace: Duration,
    dry_run: bool,
) -> Result<GcReport> {
    let mut report = GcReport::default();
    let now = now_ms();
    for (id, info) in packs {
        let PackState::Doomed { since_ms } = info.state else {
            continue;
        };
        if now.saturating_sub(since_ms) < grace.as_millis() as u64 {
            report.packs_doomed += 1;
            continue;
        }
        if !dry_run {
            backend.delete_pack(*id).await?;
            packer.forget_pack(*id);
            packer
                .commit(backend, vec![Change::RemovePack { id: *id }])
                .await?;
        }
        report.packs_deleted += 1;
        report.bytes_reclaimed += info.size;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::GcOptions;
    use crate::ErrorKind;

    #[test]
    fn a_garbage_ratio_outside_0_to_1_is_refused() {
        for r in [-0.1, 1.5, f64::NAN] {
            let o = GcOptions {
                garbage_ratio: Some(r),
                ..Default::default()
            };
            let e = o.validate().expect_err("refused");
            assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
        }
        for r in [None, Some(0.0), Some(0.5), Some(1.0)] {
            let o = GcOptions {
                garbage_ratio: r,
                ..Default::default()
            };
            assert!(o.validate().is_ok(), "{r:?}");
        }
    }
}
