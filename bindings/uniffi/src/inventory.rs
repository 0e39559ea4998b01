//! The records of `PieceStore::inventory` (`piecestore profile`) and `migrate_to`
//! (`piecestore migrate`), converted from the core's reports.

use piecestore::profile::Inventory as Core;

/// Pieces of `min` to `max` bytes.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SizeBucket {
    /// The smallest size in the bucket.
    pub min: u64,
    /// The largest size in the bucket (0 or a power of two).
    pub max: u64,
    /// Pieces in the bucket.
    pub pieces: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// One shard's share of a store.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ShardInventory {
    /// The shard index.
    pub shard: u64,
    /// The shard's backend, as a label without credentials.
    pub backend: String,
    /// Pieces that belong here.
    pub pieces: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Orphans found on this shard.
    pub orphans: u64,
}

/// One orphan object.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct OrphanSample {
    /// The shard it is on.
    pub shard: u64,
    /// Its key (object name).
    pub key: String,
    /// Why no get reaches it.
    pub why: String,
}

/// Objects no get can reach, by why.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Orphans {
    /// Valid piece keys on a shard other than the one the placement gives them.
    pub misplaced: u64,
    /// Their bytes.
    pub misplaced_bytes: u64,
    /// Temp files of writes that never finished.
    pub temp: u64,
    /// Objects whose names are not valid piece keys.
    pub foreign: u64,
    /// PieceStore's own leftovers under `.piecestore/`.
    pub internal: u64,
    /// Bytes of temp, foreign and internal objects.
    pub other_bytes: u64,
    /// Some of them (up to `max_orphan_samples`).
    pub samples: Vec<OrphanSample>,
}

/// Pack fill and garbage of a store that packs small pieces.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct PackStats {
    /// Pack objects.
    pub packs: u64,
    /// Of which compacted, waiting for their grace period to end.
    pub doomed: u64,
    /// Pieces in packs.
    pub pieces: u64,
    /// Pack bytes.
    pub bytes: u64,
    /// Bytes of live pieces in packs.
    pub live_bytes: u64,
    /// Live bytes over pack bytes.
    pub fill: f64,
    /// Dead bytes over pack bytes.
    pub garbage_ratio: f64,
}

/// What a store holds (`piecestore profile`).
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Inventory {
    /// Pieces on the shard their key belongs to (what get can read).
    pub pieces: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The smallest piece (0 without pieces).
    pub min_size: u64,
    /// The largest piece.
    pub max_size: u64,
    /// Pieces by size: power-of-two buckets, only non-empty ones, smallest first.
    pub sizes: Vec<SizeBucket>,
    /// Each shard's share.
    pub shards: Vec<ShardInventory>,
    /// The fullest shard's bytes over the mean (1 = balanced; 0 without pieces).
    pub bytes_skew: f64,
    /// The fullest shard's piece count over the mean.
    pub pieces_skew: f64,
    /// Objects no get can reach.
    pub orphans: Orphans,
    /// Pack fill and garbage; null when the store does not pack small pieces.
    pub packs: Option<PackStats>,
}

impl From<Core> for Inventory {
    fn from(r: Core) -> Self {
        let o = r.orphans;
        Inventory {
            pieces: r.pieces,
            bytes: r.bytes,
            min_size: r.min_size,
            max_size: r.max_size,
            sizes: r
                .sizes
                .into_iter()
                .map(|b| SizeBucket {
                    min: b.min,
                    max: b.max,
                    pieces: b.pieces,
                    bytes: b.bytes,
                })
                .collect(),
            shards: r
                .shards
                .into_iter()
                .map(|s| ShardInventory {
                    shard: s.shard as u64,
                    backend: s.backend,
                    pieces: s.pieces,
                    bytes: s.bytes,
                    orphans: s.orphans,
                })
                .collect(),
            bytes_skew: r.bytes_skew,
            pieces_skew: r.pieces_skew,
            orphans: Orphans {
                misplaced: o.misplaced,
                misplaced_bytes: o.misplaced_bytes,
                temp: o.temp,
                foreign: o.foreign,
                internal: o.internal,
                other_bytes: o.other_bytes,
                samples: o
                    .samples
                    .into_iter()
                    .map(|(shard, key, why)| OrphanSample {
                        shard: shard as u64,
                        key,
                        why,
                    })
                    .collect(),
            },
            packs: r.packs.map(|p| PackStats {
                packs: p.packs,
                doomed: p.doomed,
                pieces: p.pieces,
                bytes: p.bytes,
                live_bytes: p.live_bytes,
                fill: p.fill,
                garbage_ratio: p.garbage_ratio,
            }),
        }
    }
}

/// One piece `migrate_to` could not copy.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct MigrateFailure {
    /// The piece key.
    pub key: String,
    /// The error's stable code (`PIECE_NOT_FOUND`, `PIECE_EXISTS`, ...).
    pub code: String,
    /// What went wrong.
    pub message: String,
}

/// What `migrate_to` did.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct MigrateReport {
    /// Pieces in the source.
    pub total_pieces: u64,
    /// Their bytes.
    pub total_bytes: u64,
    /// Pieces handled (copied, skipped or failed).
    pub done_pieces: u64,
    /// Their bytes.
    pub done_bytes: u64,
    /// Pieces copied (or, in a dry run, that would be).
    pub copied: u64,
    /// Bytes copied (or that would be).
    pub copied_bytes: u64,
    /// Pieces already at the destination with the same size and checksum.
    pub skipped: u64,
    /// Pieces that failed.
    pub failed: u64,
    /// Each failed piece.
    pub failures: Vec<MigrateFailure>,
}

impl From<piecestore::migrate::MigrateSummary> for MigrateReport {
    fn from(r: piecestore::migrate::MigrateSummary) -> Self {
        let p = r.progress;
        MigrateReport {
            total_pieces: p.total_pieces,
            total_bytes: p.total_bytes,
            done_pieces: p.done_pieces,
            done_bytes: p.done_bytes,
            copied: p.copied,
            copied_bytes: p.copied_bytes,
            skipped: p.skipped,
            failed: p.failed,
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
