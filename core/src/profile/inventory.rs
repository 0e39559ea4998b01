//! The data profile: what a store holds, from one listing of every shard — piece count and
//! bytes, a size histogram, per-shard balance and its skew, and orphans (objects no `get` can
//! reach). Behind `piecestore profile` and [`PieceStore::inventory`](crate::PieceStore::inventory).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, Listed};
use crate::error::Result;
use crate::pack::index::{PackInfo, PackState};
use crate::shard::Placement;

/// What [`PieceStore::inventory`](crate::PieceStore::inventory) looks at.
#[derive(Debug, Clone, Default)]
pub struct InventoryOptions {
    /// How many orphan keys to name in the report (all are counted). Default 0 means 20.
    pub max_orphan_samples: usize,
}

/// What a store holds.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use piecestore::{Config, PieceStore};
/// let store = PieceStore::open(Config::from_url("memory://?shards=1")?).await?;
/// store.put("1_s0", vec![0u8; 1000]).await?;
/// store.put("2_s0", vec![0u8; 3000]).await?;
/// let inv = store.inventory(Default::default(), &|_| {}).await?;
/// assert_eq!((inv.pieces, inv.bytes), (2, 4000));
/// assert_eq!(inv.sizes.iter().map(|b| b.pieces).sum::<u64>(), 2);
/// # Ok::<_, piecestore::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    /// Pieces on the shard their key belongs to (what `get` can read).
    pub pieces: u64,
    /// Their bytes (without checksum trailers).
    pub bytes: u64,
    /// The smallest piece (0 without pieces).
    pub min_size: u64,
    /// The largest piece.
    pub max_size: u64,
    /// Pieces by size: power-of-two buckets, only non-empty ones, smallest first.
    pub sizes: Vec<SizeBucket>,
    /// Each shard's share.
    pub shards: Vec<ShardInventory>,
    /// The fullest shard's bytes over the mean (1.0 = perfectly balanced; 0 without pieces).
    pub bytes_skew: f64,
    /// The fullest shard's piece count over the mean.
    pub pieces_skew: f64,
    /// Objects no `get` can reach.
    pub orphans: Orphans,
    /// Pack fill and garbage; `None` while the store does not pack small pieces.
    pub packs: Option<PackStats>,
}

/// One bucket of [`Inventory::sizes`]: pieces of `min..=max` bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeBucket {
    /// The smallest size in the bucket (0, 1, 2, 3, 5, 9, …: one more than the previous max).
    pub min: u64,
    /// The largest size in the bucket (0 or a power of two).
    pub max: u64,
    /// Pieces in the bucket.
    pub pieces: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// One shard's share of a store.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ShardInventory {
    /// The shard index.
    pub shard: usize,
    /// The shard's backend, as a label without credentials.
    pub backend: String,
    /// Pieces that belong here.
    pub pieces: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Orphans found on this shard.
    pub orphans: u64,
}

/// Objects no `get` can reach, by why.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Orphans {
    /// Valid piece keys stored on a shard other than the one the placement gives them (left
    /// by a changed shard count or placement: `piecestore migrate` moves them).
    pub misplaced: u64,
    /// Their bytes.
    pub misplaced_bytes: u64,
    /// Temp files of writes that never finished (the original's `.name.tmpN`).
    pub temp: u64,
    /// Objects whose names are not valid piece keys.
    pub foreign: u64,
    /// PieceStore's own leftovers under `.piecestore/` (a probe an interrupted open left).
    pub internal: u64,
    /// Bytes of temp, foreign and internal objects.
    pub other_bytes: u64,
    /// Up to [`InventoryOptions::max_orphan_samples`] of them, as `(shard, key, why)`.
    pub samples: Vec<(usize, String, String)>,
}

impl Orphans {
    /// Every orphan.
    pub fn total(&self) -> u64 {
        self.misplaced + self.temp + self.foreign + self.internal
    }
}

/// Pack statistics of a store that packs small pieces (from its index).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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

/// The size bucket of `size`: `(min, max)` with `max` the next power of two (0 for 0).
fn size_bucket(size: u64) -> (u64, u64) {
    match size {
        0 => (0, 0),
        1 => (1, 1),
        s => {
            let max = s.checked_next_power_of_two().unwrap_or(u64::MAX);
            (max / 2 + 1, max)
        }
    }
}

/// Lists every shard and tallies what it holds. `progress` is called with the number of
/// objects seen so far, every 1,000 objects.
pub(crate) async fn collect(
    shards: &[Arc<Backend>],
    packed: Vec<Option<PackedShard>>,
    placement: Placement,
    opts: &InventoryOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Inventory> {
    let samples = if opts.max_orphan_samples == 0 {
        20
    } else {
        opts.max_orphan_samples
    };
    let n = shards.len() as u32;
    let seen = AtomicU64::new(0);
    let per_shard = shards
        .iter()
        .zip(packed)
        .enumerate()
        .map(|(i, (b, packed))| {
            let seen = &seen;
            async move {
                let mut shard = ShardTally {
                    inv: ShardInventory {
                        shard: i,
                        backend: b.label().to_string(),
                        pieces: 0,
                        bytes: 0,
                        orphans: 0,
                    },
                    ..Default::default()
                };
                let mut listing = b.list_all();
                while let Some(entry) = listing.try_next().await? {
                    if (seen.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(1000) {
                        progress(seen.load(Ordering::Relaxed));
                    }
                    shard.add(i, n, placement, entry, samples);
                }
                if let Some(p) = packed {
                    let stats = shard.packs.get_or_insert_with(PackStats::default);
                    for info in &p.packs {
                        stats.packs += 1;
                        stats.bytes += info.size;
                        stats.live_bytes += info.live_bytes;
                        stats.doomed += matches!(info.state, PackState::Doomed { .. }) as u64;
                        shard.pack_payload += info.payload;
                    }
                    stats.pieces += p.pieces.len() as u64;
                    for m in p.pieces {
                        shard.add(i, n, placement, Listed::Piece(m), samples);
                    }
                }
                Ok::<_, crate::Error>(shard)
            }
        });
    let tallies = futures::future::try_join_all(per_shard).await?;
    let mut inv = Inventory {
        pieces: 0,
        bytes: 0,
        min_size: u64::MAX,
        max_size: 0,
        sizes: Vec::new(),
        shards: Vec::new(),
        bytes_skew: 0.0,
        pieces_skew: 0.0,
        orphans: Orphans::default(),
        packs: None,
    };
    let mut sizes: BTreeMap<(u64, u64), (u64, u64)> = BTreeMap::new();
    let mut payload = 0u64;
    for t in tallies {
        if let Some(p) = &t.packs {
            let s = inv.packs.get_or_insert_with(PackStats::default);
            s.packs += p.packs;
            s.doomed += p.doomed;
            s.pieces += p.pieces;
            s.bytes += p.bytes;
            s.live_bytes += p.live_bytes;
            payload += t.pack_payload;
        }
        inv.pieces += t.inv.pieces;
        inv.bytes += t.inv.bytes;
        if t.inv.pieces > 0 {
            // A shard without pieces has no smallest piece (its 0 is no size).
            inv.min_size = inv.min_size.min(t.min_size);
        }
        inv.max_size = inv.max_size.max(t.max_size);
        for (k, (p, b)) in t.sizes {
            let e = sizes.entry(k).or_default();
            e.0 += p;
            e.1 += b;
        }
        let o = &mut inv.orphans;
        o.misplaced += t.orphans.misplaced;
        o.misplaced_bytes += t.orphans.misplaced_bytes;
        o.temp += t.orphans.temp;
        o.foreign += t.orphans.foreign;
        o.internal += t.orphans.internal;
        o.other_bytes += t.orphans.other_bytes;
        o.samples.extend(t.orphans.samples);
        inv.shards.push(t.inv);
    }
    inv.orphans.samples.truncate(samples);
    if let Some(s) = &mut inv.packs {
        s.fill = if s.bytes == 0 {
            0.0
        } else {
            s.live_bytes as f64 / s.bytes as f64
        };
        s.garbage_ratio = if payload == 0 {
            0.0
        } else {
            1.0 - s.live_bytes as f64 / payload as f64
        };
    }
    if inv.pieces == 0 {
        inv.min_size = 0;
    }
    inv.sizes = sizes
        .into_iter()
        .map(|((min, max), (pieces, bytes))| SizeBucket {
            min,
            max,
            pieces,
            bytes,
        })
        .collect();
    let skew = |values: Vec<u64>| {
        let total: u64 = values.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let mean = total as f64 / values.len() as f64;
        values.into_iter().max().unwrap_or(0) as f64 / mean
    };
    inv.bytes_skew = skew(inv.shards.iter().map(|s| s.bytes).collect());
    inv.pieces_skew = skew(inv.shards.iter().map(|s| s.pieces).collect());
    Ok(inv)
}

/// What a packed shard's index says: its packed pieces and its packs.
pub(crate) struct PackedShard {
    /// Every packed piece.
    pub(crate) pieces: Vec<crate::PieceMeta>,
    /// Every pack.
    pub(crate) packs: Vec<PackInfo>,
}

#[derive(Default)]
struct ShardTally {
    packs: Option<PackStats>,
    pack_payload: u64,
    inv: ShardInventory,
    min_size: u64,
    max_size: u64,
    sizes: BTreeMap<(u64, u64), (u64, u64)>,
    orphans: Orphans,
}

impl ShardTally {
    fn add(&mut self, shard: usize, n: u32, placement: Placement, entry: Listed, samples: usize) {
        let (key, size, why) = match entry {
            Listed::Piece(m) if placement.shard(&m.key, n) as usize == shard => {
                if self.inv.pieces == 0 {
                    self.min_size = m.size;
                }
                self.inv.pieces += 1;
                self.inv.bytes += m.size;
                self.min_size = self.min_size.min(m.size);
                self.max_size = self.max_size.max(m.size);
                let e = self.sizes.entry(size_bucket(m.size)).or_default();
                e.0 += 1;
                e.1 += m.size;
                return;
            }
            Listed::Piece(m) => {
                self.orphans.misplaced += 1;
                self.orphans.misplaced_bytes += m.size;
                let home = placement.shard(&m.key, n);
                (m.key, 0, format!("misplaced: belongs on shard {home}"))
            }
            Listed::Temp { key, size } => {
                self.orphans.temp += 1;
                (key, size, "temp file of an unfinished write".to_string())
            }
            Listed::Foreign { key, size } => {
                self.orphans.foreign += 1;
                (key, size, "not a valid piece key".to_string())
            }
            // Packs are counted from the index.
            Listed::Pack => return,
            Listed::Internal { key, size } => {
                self.orphans.internal += 1;
                (key, size, "PieceStore leftover".to_string())
            }
        };
        self.inv.orphans += 1;
        self.orphans.other_bytes += size;
        if self.orphans.samples.len() < samples {
            self.orphans.samples.push((shard, key, why));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::size_bucket;

    #[tokio::test]
    async fn an_empty_shard_does_not_make_the_smallest_piece_zero() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/s-%d?shards=4", dir.path().display());
        let store = crate::PieceStore::open(crate::Config::from_url(&url).unwrap())
            .await
            .unwrap();
        store.put("1_s0", vec![1u8; 700]).await.unwrap();
        let inv = store.inventory(Default::default(), &|_| {}).await.unwrap();
        assert!(inv.shards.iter().filter(|s| s.pieces == 0).count() == 3);
        assert_eq!((inv.min_size, inv.max_size), (700, 700));
    }

    #[test]
    fn size_buckets_tile_the_sizes() {
        assert_eq!(size_bucket(0), (0, 0));
        assert_eq!(size_bucket(1), (1, 1));
        assert_eq!(size_bucket(2), (2, 2));
        assert_eq!(size_bucket(3), (3, 4));
        assert_eq!(size_bucket(4096), (2049, 4096));
        assert_eq!(size_bucket(4097), (4097, 8192));
        for s in 0..5000u64 {
            let (min, max) = size_bucket(s);
            assert!(min <= s && s <= max, "{s} not in {min}..={max}");
        }
    }
}
