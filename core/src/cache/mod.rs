//! The data cache (ARCHITECTURE §6): read-through tiers keyed by piece key, memory first, then
//! a local directory, then the store.
//!
//! - **Memory tier**: a `moka` cache bounded by bytes (each entry weighs its piece, its key and a
//!   fixed overhead). Entries are copies, so a piece sliced out of a larger read never keeps
//!   that read alive.
//! - **Disk tier** ([`disk::DiskTier`]): one file per piece (written to a temporary name, then
//!   renamed), each carrying its key and CRC32C; every hit is verified, and a bad entry is
//!   removed and fetched again, never returned. It survives restarts and is bounded by bytes.
//! - **One fetch per miss**: concurrent gets of one missing key share one fetch (the others wait
//!   for it); if it fails, each waiter tries on its own, so every caller sees its own error.
//! - Pieces are immutable, so a delete (or an overwrite) is the only invalidation, immediate in
//!   this process. A fetch that a delete overtook is not cached.

pub(crate) mod disk;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::OnceCell;

use crate::config::{Admit, CacheOptions};
use crate::error::Result;

/// What a fixed entry costs beyond its bytes and key (moka's node, our struct).
const ENTRY_OVERHEAD: u64 = 96;

/// One cached piece: its bytes and the checksum they were verified against.
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) bytes: Bytes,
    pub(crate) crc: Option<u32>,
}

type Flight = Arc<OnceCell<Entry>>;

/// Removes a get's flight from the map when the get ends, if it ran the fetch (however it
/// ended: done, failed or dropped part-way) or the flight is done; a waiter dropped while
/// another get fetches leaves it to that get. A flight another flight replaced after an
/// invalidation is left alone.
struct EndFlight<'a> {
    flights: &'a Mutex<HashMap<String, Flight>>,
    key: &'a str,
    flight: &'a Flight,
    fetching: &'a std::sync::atomic::AtomicBool,
}

impl Drop for EndFlight<'_> {
    fn drop(&mut self) {
        if !self.fetching.load(Ordering::Relaxed) && !self.flight.initialized() {
            return;
        }
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if flights
            .get(self.key)
            .is_some_and(|f| Arc::ptr_eq(f, self.flight))
        {
            flights.remove(self.key);
        }
    }
}

/// Counters of one tier.
#[derive(Default)]
struct TierCounters {
    hits: AtomicU64,
    misses: AtomicU64,
    inserts: AtomicU64,
    evictions: Arc<AtomicU64>,
    corrupt: AtomicU64,
}

/// The tiers in front of one store (all its shards).
pub(crate) struct PieceCache {
    memory: Option<moka::sync::Cache<Arc<str>, Entry>>,
    memory_capacity: u64,
    disk: Option<disk::DiskTier>,
    flights: Mutex<HashMap<String, Flight>>,
    /// Bumped by every invalidation: a fetch that saw it change does not insert.
    invalidations: AtomicU64,
    admit_writes: bool,
    max_piece: u64,
    mem: TierCounters,
    dsk: TierCounters,
    fetches: AtomicU64,
    coalesced: AtomicU64,
    stale: AtomicU64,
}

/// A snapshot of one tier's counters, as [`crate::profile::Metrics::cache`] reports them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CacheTierStats {
    /// `memory` or `disk`.
    pub tier: &'static str,
    /// Gets served by this tier.
    pub hits: u64,
    /// Gets this tier could not serve (they went on to the next tier or the store).
    pub misses: u64,
    /// Pieces put into this tier.
    pub inserts: u64,
    /// Pieces evicted to keep the tier within its size.
    pub evictions: u64,
    /// Entries found damaged (disk tier: a CRC or key mismatch), removed and fetched again.
    pub corrupt: u64,
    /// Bytes held now.
    pub bytes: u64,
    /// Pieces held now.
    pub entries: u64,
    /// The tier's size limit in bytes.
    pub capacity: u64,
}

/// The cache's counters: per tier, and the fetches its misses made.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// The memory tier then the disk tier, those configured.
    pub tiers: Vec<CacheTierStats>,
    /// Fetches from the store that misses made (one per missing key, however many gets
    /// waited for it).
    pub fetches: u64,
    /// Gets that waited for another get's fetch of the same key instead of fetching.
    pub coalesced: u64,
    /// Entries dropped because the store's index no longer held the piece they copied:
    /// another process on the host deleted or replaced it.
    pub stale: u64,
}

impl CacheStats {
    /// The share of gets that made no request of their own, 0.0 to 1.0: served by a tier, or
    /// sharing another get's fetch of the same key (`None` before any get).
    pub fn hit_ratio(&self) -> Option<f64> {
        let hits: u64 = self.tiers.iter().map(|t| t.hits).sum();
        let gets = hits + self.fetches + self.coalesced;
        (gets > 0).then(|| (hits + self.coalesced) as f64 / gets as f64)
    }
}

impl PieceCache {
    /// The largest piece the cache keeps (`Cache.MaxPiece`).
    pub(crate) fn max_piece(&self) -> u64 {
        self.max_piece
    }

    /// The tiers `opts` asks for in front of a store whose shards are all buckets (`buckets`);
    /// `None` when no tier is on.
    /// `scope` names the store (its shards' labels), so that stores sharing a disk tier's
    /// directory keep apart.
    pub(crate) fn new(
        opts: &CacheOptions,
        buckets: bool,
        scope: String,
    ) -> Result<Option<Arc<PieceCache>>> {
        let memory_capacity = opts.memory_bytes(buckets);
        let mem = TierCounters::default();
        let memory = (memory_capacity > 0).then(|| {
            let evictions = Arc::clone(&mem.evictions);
            moka::sync::Cache::builder()
                .max_capacity(memory_capacity)
                .weigher(|k: &Arc<str>, e: &Entry| {
                    let w = e.bytes.len() as u64 + k.len() as u64 + ENTRY_OVERHEAD;
                    u32::try_from(w).unwrap_or(u32::MAX)
                })
                .eviction_listener(move |_, _, cause| {
                    if cause.was_evicted() {
                        evictions.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .build()
        });
        let dsk = TierCounters::default();
        let disk = match &opts.disk {
            Some(dir) => Some(disk::DiskTier::open(
                dir,
                opts.disk_bytes(),
                Arc::clone(&dsk.evictions),
                scope,
            )?),
            None => None,
        };
        if memory.is_none() && disk.is_none() {
            return Ok(None);
        }
        Ok(Some(Arc::new(PieceCache {
            memory,
            memory_capacity,
            disk,
            flights: Mutex::new(HashMap::new()),
            invalidations: AtomicU64::new(0),
            admit_writes: opts.admit == Admit::ReadsAndWrites,
            max_piece: opts.max_piece_bytes(),
            mem,
            dsk,
            fetches: AtomicU64::new(0),
            coalesced: AtomicU64::new(0),
            stale: AtomicU64::new(0),
        })))
    }

    /// The piece from the memory tier, at once: `Err(())` for an entry `current` refused
    /// (counted as a miss, like the disk tier's), for the caller to drop.
    fn memory_get(
        &self,
        key: &str,
        current: &impl Fn(&Entry) -> bool,
    ) -> std::result::Result<Option<Entry>, ()> {
        let Some(memory) = self.memory.as_ref() else {
            return Ok(None);
        };
        match memory.get(key) {
            Some(e) if current(&e) => {
                self.mem.hits.fetch_add(1, Ordering::Relaxed);
                Ok(Some(e))
            }
            found => {
                self.mem.misses.fetch_add(1, Ordering::Relaxed);
                if found.is_some() { Err(()) } else { Ok(None) }
            }
        }
    }

    /// The piece from the memory tier, counted as a hit, if `current` accepts it; `None` (not
    /// counted as a miss) otherwise, for a caller that then makes an ordinary get (which
    /// drops an entry `current` refused).
    pub(crate) fn memory_peek(&self, key: &str, current: impl Fn(&Entry) -> bool) -> Option<Entry> {
        let e = self.memory.as_ref()?.get(key).filter(|e| current(e))?;
        self.mem.hits.fetch_add(1, Ordering::Relaxed);
        Some(e)
    }

    /// Drops an entry that the store's index says is no longer the piece (another process
    /// deleted or replaced it).
    async fn drop_stale(&self, key: &str) {
        tracing::debug!(
            key,
            "cache: the index no longer holds the cached piece; dropped"
        );
        self.stale.fetch_add(1, Ordering::Relaxed);
        self.invalidate(key).await;
    }

    /// The invalidation count now: an insert is kept only if it has not moved by the time
    /// the insert is done ([`PieceCache::admit`]).
    pub(crate) fn epoch(&self) -> u64 {
        self.invalidations.load(Ordering::Acquire)
    }

    /// The piece from the disk tier (verified), promoted to the memory tier unless an
    /// invalidation came since `epoch`.
    async fn disk_get(
        &self,
        key: &str,
        epoch: u64,
        current: &impl Fn(&Entry) -> bool,
    ) -> Option<Entry> {
        let disk = self.disk.as_ref()?;
        match disk.get(key).await {
            disk::Lookup::Hit(e) if !current(&e) => {
                self.dsk.misses.fetch_add(1, Ordering::Relaxed);
                self.stale.fetch_add(1, Ordering::Relaxed);
                disk.remove(key).await;
                None
            }
            disk::Lookup::Hit(e) => {
                self.dsk.hits.fetch_add(1, Ordering::Relaxed);
                self.put_memory(key, &e);
                if self.epoch() != epoch {
                    self.undo(key).await;
                }
                Some(e)
            }
            disk::Lookup::Miss => {
                self.dsk.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
            disk::Lookup::Corrupt(why) => {
                tracing::warn!(key, "cache: disk entry removed, fetching again: {why}");
                self.dsk.corrupt.fetch_add(1, Ordering::Relaxed);
                self.dsk.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Gets of keys under way (for a test that cancelled gets leave none behind).
    #[cfg(test)]
    fn flights_under_way(&self) -> usize {
        self.flights.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn put_memory(&self, key: &str, e: &Entry) {
        if let Some(memory) = &self.memory {
            memory.insert(Arc::from(key), e.clone());
            self.mem.inserts.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes back an insert that an invalidation overtook (without counting one itself).
    async fn undo(&self, key: &str) {
        if let Some(memory) = &self.memory {
            memory.invalidate(key);
        }
        if let Some(disk) = &self.disk {
            disk.remove(key).await;
        }
    }

    /// Puts a piece into every tier (copied, so it holds no larger buffer alive), unless an
    /// invalidation came since `epoch`: checked before and again after the inserts (a delete
    /// that ran while they were under way finds nothing to remove, so they are taken back).
    async fn admit(&self, key: &str, e: &Entry, epoch: u64) {
        if e.bytes.len() as u64 > self.max_piece || self.epoch() != epoch {
            return;
        }
        let e = Entry {
            bytes: Bytes::copy_from_slice(&e.bytes),
            crc: e.crc,
        };
        self.put_memory(key, &e);
        // A piece without a checksum stays in memory only: the disk tier outlives this store's
        // `AllowUnverified` setting.
        if let Some(disk) = self.disk.as_ref().filter(|_| e.crc.is_some()) {
            match disk.put(key, &e).await {
                Ok(()) => {
                    self.dsk.inserts.fetch_add(1, Ordering::Relaxed);
                }
                Err(why) => tracing::warn!(key, "cache: not written to the disk tier: {why}"),
            }
        }
        if self.epoch() != epoch {
            self.undo(key).await;
        }
    }

    /// The piece under `key`: from a tier if `current` accepts the entry there (the store's
    /// index still holds that piece), else from `fetch` (once for all concurrent callers of
    /// one key), then admitted. `hit` is set when a tier (or another caller's fetch) served it.
    pub(crate) async fn get<F, Fut>(
        &self,
        key: &str,
        hit: &mut bool,
        current: impl Fn(&Entry) -> bool,
        fetch: F,
    ) -> Result<Entry>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Entry>>,
    {
        match self.memory_get(key, &current) {
            Ok(Some(e)) => {
                *hit = true;
                return Ok(e);
            }
            Ok(None) => {}
            Err(()) => self.drop_stale(key).await,
        }
        let flight = {
            let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(flights.entry(key.to_string()).or_default())
        };
        // The flight ends with its first success (later callers find the tiers) or its first
        // failure (those still waiting on it try on their own; a new get starts a new one),
        // or when its get is dropped part-way (a cancelled request leaves no entry behind).
        let fetching = std::sync::atomic::AtomicBool::new(false);
        let _ending = EndFlight {
            flights: &self.flights,
            key,
            flight: &flight,
            fetching: &fetching,
        };
        let mut fetched = false;
        let mut from_disk = false;
        let result = flight
            .get_or_try_init(|| async {
                fetched = true;
                fetching.store(true, Ordering::Relaxed);
                let epoch = self.epoch();
                if let Some(e) = self.disk_get(key, epoch, &current).await {
                    from_disk = true;
                    return Ok(e);
                }
                self.fetches.fetch_add(1, Ordering::Relaxed);
                let e = fetch().await?;
                self.admit(key, &e, epoch).await;
                Ok(e)
            })
            .await
            .cloned();
        if !fetched && result.is_ok() {
            self.coalesced.fetch_add(1, Ordering::Relaxed);
        }
        *hit = result.is_ok() && (from_disk || !fetched);
        result
    }

    /// A piece just written, when `Admit` takes writes: `epoch` is [`PieceCache::epoch`] from
    /// before the write, so a delete or overwrite of the key that ran meanwhile keeps it out.
    pub(crate) async fn written(&self, key: &str, bytes: &Bytes, crc: u32, epoch: u64) {
        if self.admit_writes {
            let e = Entry {
                bytes: bytes.clone(),
                crc: Some(crc),
            };
            self.admit(key, &e, epoch).await;
        }
    }

    /// Removes `key` from every tier (a delete or an overwrite), and keeps fetches under way
    /// from caching what they read.
    pub(crate) async fn invalidate(&self, key: &str) {
        self.invalidations.fetch_add(1, Ordering::AcqRel);
        // A get that starts now must not join a fetch that began before the delete.
        self.flights
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        if let Some(memory) = &self.memory {
            memory.invalidate(key);
        }
        if let Some(disk) = &self.disk {
            disk.remove(key).await;
        }
    }

    /// Removes every key under `prefix` from every tier.
    pub(crate) async fn invalidate_prefix(&self, prefix: &str) {
        self.invalidations.fetch_add(1, Ordering::AcqRel);
        self.flights
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| !k.starts_with(prefix));
        if let Some(memory) = &self.memory {
            let keys: Vec<Arc<str>> = memory
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(k, _)| Arc::clone(&*k))
                .collect();
            for k in keys {
                memory.invalidate(&k);
            }
        }
        if let Some(disk) = &self.disk {
            disk.remove_prefix(prefix).await;
        }
    }

    /// Lets go of the memory tier's pieces at once (the store is being closed; the disk tier's
    /// files stay, for the next open).
    pub(crate) fn release_memory(&self) {
        self.invalidations.fetch_add(1, Ordering::AcqRel);
        if let Some(memory) = &self.memory {
            memory.invalidate_all();
            memory.run_pending_tasks();
        }
    }

    /// Empties every tier (the disk tier's files too).
    pub(crate) async fn clear(&self) {
        self.release_memory();
        if let Some(disk) = &self.disk {
            disk.clear().await;
        }
    }

    /// The counters and fill of each tier.
    pub(crate) fn stats(&self) -> CacheStats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut tiers = Vec::new();
        if let Some(memory) = &self.memory {
            memory.run_pending_tasks();
            tiers.push(CacheTierStats {
                tier: "memory",
                hits: load(&self.mem.hits),
                misses: load(&self.mem.misses),
                inserts: load(&self.mem.inserts),
                evictions: load(&self.mem.evictions),
                corrupt: 0,
                bytes: memory.weighted_size(),
                entries: memory.entry_count(),
                capacity: self.memory_capacity,
            });
        }
        if let Some(disk) = &self.disk {
            let (bytes, entries) = disk.fill();
            tiers.push(CacheTierStats {
                tier: "disk",
                hits: load(&self.dsk.hits),
                misses: load(&self.dsk.misses),
                inserts: load(&self.dsk.inserts),
                evictions: load(&self.dsk.evictions),
                corrupt: load(&self.dsk.corrupt),
                bytes,
                entries,
                capacity: disk.capacity(),
            });
        }
        CacheStats {
            tiers,
            fetches: load(&self.fetches),
            coalesced: load(&self.coalesced),
            stale: load(&self.stale),
        }
    }

    /// The disk tier's directory, if there is one.
    pub(crate) fn disk_dir(&self) -> Option<&std::path::Path> {
        self.disk.as_ref().map(|d| d.dir())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cancelled_get_leaves_no_flight_and_waiters_still_get_the_piece() {
        let opts = CacheOptions {
            memory: Some(1 << 20),
            ..CacheOptions::default()
        };
        let cache = PieceCache::new(&opts, true, "scope".into())
            .expect("cache")
            .expect("a memory tier");
        // A get whose fetch never finishes, dropped part-way.
        let mut hit = false;
        let stuck = cache.get("k", &mut hit, |_| true, std::future::pending);
        let timed_out = tokio::time::timeout(std::time::Duration::from_millis(20), stuck).await;
        assert!(timed_out.is_err());
        assert_eq!(
            cache.flights_under_way(),
            0,
            "the cancelled get's flight is gone"
        );
        // The next get fetches on its own and is served.
        let got = cache
            .get(
                "k",
                &mut hit,
                |_| true,
                || async {
                    Ok(Entry {
                        bytes: Bytes::from_static(b"piece"),
                        crc: Some(crate::checksum::crc32c(b"piece")),
                    })
                },
            )
            .await
            .expect("get");
        assert_eq!(&got.bytes[..], b"piece");
        assert_eq!(cache.flights_under_way(), 0);
    }
}

#[cfg(test)]
mod flight_tests {
    use super::*;

    #[tokio::test]
    async fn a_cancelled_waiter_leaves_the_fetch_shared() {
        let opts = CacheOptions {
            memory: Some(1 << 20),
            ..CacheOptions::default()
        };
        let cache = PieceCache::new(&opts, true, "scope".into())
            .expect("cache")
            .expect("a memory tier");
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let fetches = AtomicU64::new(0);
        let fetch = || async {
            fetches.fetch_add(1, Ordering::Relaxed);
            let _ = released.await;
            Ok(Entry {
                bytes: Bytes::from_static(b"piece"),
                crc: Some(crate::checksum::crc32c(b"piece")),
            })
        };
        let (mut h1, mut h2, mut h3) = (false, false, false);
        let leader = cache.get("k", &mut h1, |_| true, fetch);
        let waiter = cache.get(
            "k",
            &mut h2,
            |_| true,
            || async { unreachable!("the waiter shares the leader's fetch") },
        );
        tokio::pin!(leader);
        // The leader starts its fetch; the waiter joins it and is dropped part-way.
        assert!(futures::poll!(&mut leader).is_pending());
        {
            tokio::pin!(waiter);
            assert!(futures::poll!(&mut waiter).is_pending());
        }
        assert_eq!(cache.flights_under_way(), 1, "the leader's flight stays");
        let late = cache.get(
            "k",
            &mut h3,
            |_| true,
            || async { unreachable!("a get that comes later joins the fetch under way") },
        );
        tokio::pin!(late);
        assert!(futures::poll!(&mut late).is_pending());
        release.send(()).expect("leader waits");
        assert_eq!(&leader.await.expect("leader").bytes[..], b"piece");
        assert_eq!(&late.await.expect("late").bytes[..], b"piece");
        assert_eq!(fetches.load(Ordering::Relaxed), 1);
        assert_eq!(cache.flights_under_way(), 0);
    }
}
