//! Open pack files of a local directory, kept for reads: a packed read is one positioned read
//! of an already open file (no open and close per read): at once when its bytes are in the page
//! cache, else in one blocking task.
//!
//! The cache holds at most its bound of files, and forgets the least recently used one first.
//! A pack that compaction deleted while a handle to it was cached still reads right: its
//! records are immutable, and the open file keeps them until the handle goes (compaction evicts
//! the handles of the packs it deletes, so their space is freed).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::index::{self, PackId};
use crate::page_cache;

/// How many pack files a shard keeps open for reads.
pub(crate) const DEFAULT_HANDLES: usize = 64;

/// Every this many reads, the open files of deleted packs are let go.
const SWEEP_EVERY: u64 = 4096;

/// The open pack files of one shard's directory.
#[derive(Debug)]
pub(crate) struct Handles {
    dir: PathBuf,
    bound: usize,
    open: Mutex<HashMap<PackId, (Arc<File>, u64)>>,
    tick: AtomicU64,
}

impl Handles {
    /// A cache for the packs under `dir`, of at most `bound` open files.
    pub fn new(dir: PathBuf, bound: usize) -> Self {
        Handles {
            dir,
            bound: bound.max(1),
            open: Mutex::new(HashMap::new()),
            tick: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PackId, (Arc<File>, u64)>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pack's path.
    pub fn path(&self, id: PackId) -> PathBuf {
        self.dir.join(index::pack_name(id))
    }

    /// The packs directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// An open file of pack `id` (opened now if not cached; `NotFound` if the pack is gone).
    fn file(&self, id: PackId) -> io::Result<Arc<File>> {
        let now = self.tick();
        if let Some(f) = self.cached(id, now) {
            return Ok(f);
        }
        let f = Arc::new(File::open(self.path(id))?);
        let mut open = self.lock();
        if open.len() >= self.bound && !open.contains_key(&id) {
            let oldest = open
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                open.remove(&k);
            }
        }
        open.insert(id, (Arc::clone(&f), now));
        Ok(f)
    }

    /// Reads `len` bytes at `offset` of pack `id`: `UnexpectedEof` when the pack is shorter.
    /// Blocking: call it from a blocking task.
    pub fn read(&self, id: PackId, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let f = self.file(id)?;
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// [`Handles::read`] at once on the calling thread, when pack `id` is open already and the
    /// bytes are all in the page cache (see [`crate::page_cache`]); `Ok(None)` otherwise (then
    /// call [`Handles::read`] on the blocking pool).
    pub fn read_cached(&self, id: PackId, offset: u64, len: u64) -> io::Result<Option<Vec<u8>>> {
        if len > page_cache::INLINE_READ_MAX {
            return Ok(None);
        }
        let now = self.tick();
        match self.cached(id, now) {
            Some(f) => page_cache::read_at(&f, offset, len),
            None => Ok(None),
        }
    }

    /// The next use's number; every [`SWEEP_EVERY`] uses, first lets go of deleted packs'
    /// files (an `fstat` of each open file: no disk).
    fn tick(&self) -> u64 {
        let now = self.tick.fetch_add(1, Ordering::Relaxed);
        if now % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.forget_deleted();
        }
        now
    }

    /// Pack `id`'s open file if the cache holds it, marked used at `now`.
    fn cached(&self, id: PackId, now: u64) -> Option<Arc<File>> {
        let mut open = self.lock();
        let (f, used) = open.get_mut(&id)?;
        *used = now;
        Some(Arc::clone(f))
    }

    /// Forgets pack `id`'s handle (its file was deleted).
    pub fn evict(&self, id: PackId) {
        self.lock().remove(&id);
    }

    /// Lets go of the files of packs that were deleted (by compaction, maybe in another
    /// process): an open file keeps a deleted pack's disk space allocated.
    fn forget_deleted(&self) {
        use std::os::unix::fs::MetadataExt;
        self.lock()
            .retain(|_, (f, _)| f.metadata().map(|m| m.nlink() > 0).unwrap_or(false));
    }

    /// How many files are open now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_least_recently_used_and_reads_a_deleted_file() {
        let dir = tempfile::tempdir().unwrap();
        let h = Handles::new(dir.path().to_path_buf(), 3);
        for id in 0..5u128 {
            std::fs::write(h.path(id), vec![id as u8; 10]).unwrap();
        }
        for id in 0..5u128 {
            assert_eq!(h.read(id, 2, 3).unwrap(), vec![id as u8; 3]);
            assert!(h.len() <= 3);
        }
        // A cached pack deleted since still reads its bytes; an evicted one is gone.
        std::fs::remove_file(h.path(4)).unwrap();
        assert_eq!(h.read(4, 0, 10).unwrap(), vec![4u8; 10]);
        h.evict(4);
        assert_eq!(h.read(4, 0, 1).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(
            h.read(3, 5, 10).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        // A pack deleted behind the cache's back (compaction in another process) is let go
        // within SWEEP_EVERY reads, so its disk space is not held.
        std::fs::remove_file(h.path(2)).unwrap();
        assert!(h.lock().contains_key(&2));
        for _ in 0..SWEEP_EVERY {
            h.read(3, 0, 1).unwrap();
        }
        assert!(
            !h.lock().contains_key(&2),
            "a deleted pack's file is still held"
        );
        assert!(h.lock().contains_key(&3));
    }
}
