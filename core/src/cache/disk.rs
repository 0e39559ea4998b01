//! The disk tier: one file per piece under a directory that survives restarts.
//!
//! A piece's file is `<dir>/<hh>/<h16>.pc`, where `h16` is the FNV-1a 64-bit hash of its key in
//! hex and `hh` its first two digits. The file holds a header (magic, key length, data length,
//! the data's CRC32C, whether the piece carried a checksum), the key, then the bytes. It is
//! written to a temporary name and renamed into place, so a reader sees a whole file or none; a
//! file torn by a crash fails its CRC and is removed. Every hit reads the whole file and checks
//! the magic, the key and the CRC before the bytes are returned.
//!
//! The tier is bounded by bytes through an index of its files (hash → size, a `moka` cache
//! whose evictions delete the files), rebuilt at open from the directory's listing. A file
//! weighs what it takes on disk, its length rounded up to whole 4 KiB blocks (a 100-byte piece
//! takes a block), so many small pieces cannot take several times the bound. File reads,
//! writes, checks and deletes run in blocking tasks, never on an async worker.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::Entry;
use crate::checksum::crc32c;
use crate::error::{Error, Result};
use crate::page_cache;

const MAGIC: &[u8; 8] = b"PSCACHE1";
/// magic, key length (u32), data length (u64), data CRC32C (u32), has a piece checksum (u8).
const HEADER: usize = 8 + 4 + 8 + 4 + 1;
const SUFFIX: &str = "pc";
/// The allocation unit a file's size is rounded up to (ext4's and XFS's usual block).
const BLOCK: u64 = 4096;

/// What a file of `len` bytes takes on disk.
fn on_disk(len: u64) -> u64 {
    len.div_ceil(BLOCK).max(1) * BLOCK
}

/// What a disk lookup found.
pub(crate) enum Lookup {
    /// The piece, verified.
    Hit(Entry),
    /// No entry for the key.
    Miss,
    /// An entry that failed verification (now removed), and why.
    Corrupt(String),
}

/// The disk tier of one store.
pub(crate) struct DiskTier {
    dir: PathBuf,
    capacity: u64,
    index: moka::sync::Cache<u64, u64>,
    /// The store's identity (its shards' labels): entries are named and keyed by it and the
    /// piece key, so two stores sharing a directory never serve each other's pieces.
    scope: String,
}

fn hash(key: &str) -> u64 {
    crate::shard::fnv1a64(key.as_bytes())
}

fn path_of(dir: &Path, h: u64) -> PathBuf {
    let name = format!("{h:016x}");
    dir.join(&name[..2]).join(format!("{name}.{SUFFIX}"))
}

fn encode(key: &str, e: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + key.len() + e.bytes.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(&(e.bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(&e.crc.unwrap_or_else(|| crc32c(&e.bytes)).to_le_bytes());
    out.push(u8::from(e.crc.is_some()));
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&e.bytes);
    out
}

/// The entry in `raw` if it is whole, is `key`'s and matches its CRC: `Ok(None)` for another
/// key's entry (a hash collision), `Err` for a damaged one.
fn decode(key: &str, raw: Vec<u8>) -> std::result::Result<Option<Entry>, String> {
    if raw.len() < HEADER || &raw[..8] != MAGIC {
        return Err("not a cache entry (bad magic or too short)".into());
    }
    let u32_at = |i: usize| u32::from_le_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
    let key_len = u32_at(8) as usize;
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&raw[12..20]);
    let data_len = u64::from_le_bytes(len8) as usize;
    let crc = u32_at(20);
    let has_crc = raw[24] == 1;
    if HEADER
        .checked_add(key_len)
        .and_then(|n| n.checked_add(data_len))
        != Some(raw.len())
    {
        return Err(format!(
            "length {} does not match its header ({key_len}-byte key, {data_len} bytes)",
            raw.len()
        ));
    }
    if &raw[HEADER..HEADER + key_len] != key.as_bytes() {
        return Ok(None);
    }
    let start = HEADER + key_len;
    let bytes = Bytes::from(raw).slice(start..);
    let actual = crc32c(&bytes);
    if actual != crc {
        return Err(format!(
            "CRC32C {actual:#010x} of its bytes is not the stored {crc:#010x}"
        ));
    }
    Ok(Some(Entry {
        bytes,
        crc: has_crc.then_some(crc),
    }))
}

impl DiskTier {
    /// Opens (creating) the tier at `dir`, bounded to `capacity` bytes; lists the files there
    /// (removing unfinished temporary ones) so that the bound covers what earlier runs left.
    pub(crate) fn open(
        dir: &Path,
        capacity: u64,
        evictions: Arc<AtomicU64>,
        scope: String,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::config(format!(
                "[PieceStore.Cache] Disk {}: cannot create it: {e}",
                dir.display()
            ))
        })?;
        let files = dir.to_path_buf();
        let index = moka::sync::Cache::builder()
            .max_capacity(capacity)
            .weigher(|_: &u64, size: &u64| u32::try_from(on_disk(*size)).unwrap_or(u32::MAX))
            .eviction_listener(move |h: Arc<u64>, _, cause| {
                use moka::notification::RemovalCause;
                if cause == RemovalCause::Replaced {
                    return;
                }
                if cause.was_evicted() {
                    evictions.fetch_add(1, Ordering::Relaxed);
                }
                let _ = std::fs::remove_file(path_of(&files, *h));
            })
            .build();
        let tier = DiskTier {
            dir: dir.to_path_buf(),
            capacity,
            index,
            scope,
        };
        tier.scan();
        Ok(tier)
    }

    /// Indexes the files already there; removes temporary files left by a crash.
    fn scan(&self) {
        let Ok(subdirs) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for sub in subdirs.flatten() {
            let Ok(files) = std::fs::read_dir(sub.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(".tmp") {
                    let _ = std::fs::remove_file(f.path());
                    continue;
                }
                let Some(h) = name
                    .strip_suffix(&format!(".{SUFFIX}"))
                    .and_then(|h| u64::from_str_radix(h, 16).ok())
                else {
                    continue;
                };
                if let Ok(m) = f.metadata() {
                    self.index.insert(h, m.len());
                }
            }
        }
        self.index.run_pending_tasks();
    }

    /// The directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The size limit.
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes held (as the files take them on disk, in whole blocks) and files.
    pub(crate) fn fill(&self) -> (u64, u64) {
        self.index.run_pending_tasks();
        (self.index.weighted_size(), self.index.entry_count())
    }

    /// The name an entry is stored under: the store's scope and the piece key.
    fn scoped(&self, key: &str) -> String {
        format!("{}\u{0}{key}", self.scope)
    }

    /// Looks `key` up, verifying what it finds; a damaged entry is removed.
    pub(crate) async fn get(&self, key: &str) -> Lookup {
        let key = self.scoped(key);
        let h = hash(&key);
        let path = path_of(&self.dir, h);
        // A file in the page cache is read here, at once, and so is a miss the kernel knows;
        // anything else, and a damaged entry (removed there), on the blocking pool.
        match page_cache::read_file(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Lookup::Miss,
            Ok(Some(raw)) => {
                let size = raw.len() as u64;
                match decode(&key, raw) {
                    Ok(Some(e)) => {
                        if self.index.get(&h).is_none() {
                            self.index.insert(h, size);
                        }
                        return Lookup::Hit(e);
                    }
                    Ok(None) => return Lookup::Miss,
                    Err(_) => {}
                }
            }
            _ => {}
        }
        let index = self.index.clone();
        let found = tokio::task::spawn_blocking(move || {
            let raw = match std::fs::read(&path) {
                Ok(raw) => raw,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Lookup::Miss,
                Err(e) => return Lookup::Corrupt(format!("{}: {e}", path.display())),
            };
            let size = raw.len() as u64;
            match decode(&key, raw) {
                Ok(Some(e)) => {
                    // Counts the hit for eviction; indexes a file another process wrote.
                    if index.get(&h).is_none() {
                        index.insert(h, size);
                    }
                    Lookup::Hit(e)
                }
                Ok(None) => Lookup::Miss,
                Err(why) => {
                    index.invalidate(&h);
                    let _ = std::fs::remove_file(&path);
                    Lookup::Corrupt(format!("{}: {why}", path.display()))
                }
            }
        })
        .await;
        found.unwrap_or_else(|e| Lookup::Corrupt(format!("read task failed: {e}")))
    }

    /// Writes `key`'s entry (a temporary file renamed into place).
    pub(crate) async fn put(&self, key: &str, e: &Entry) -> std::result::Result<(), String> {
        let key = &self.scoped(key);
        let h = hash(key);
        let path = path_of(&self.dir, h);
        let data = encode(key, e);
        let size = data.len() as u64;
        if size > self.capacity {
            return Ok(());
        }
        // The index's evictions delete files: they run here too, off the async workers.
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write;
            let parent = path.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(parent)?;
            let mut tmp = tempfile::Builder::new()
                .prefix(".tmp")
                .tempfile_in(parent)?;
            tmp.write_all(&data)?;
            tmp.persist(&path).map_err(|e| e.error)?;
            index.insert(h, size);
            index.run_pending_tasks();
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Removes `key`'s entry.
    pub(crate) async fn remove(&self, key: &str) {
        let h = hash(&self.scoped(key));
        let (index, path) = (self.index.clone(), path_of(&self.dir, h));
        let _ = tokio::task::spawn_blocking(move || {
            index.invalidate(&h);
            let _ = std::fs::remove_file(path);
        })
        .await;
    }

    /// Removes every entry whose key starts with `prefix` (reads each file's header and key,
    /// not its bytes).
    pub(crate) async fn remove_prefix(&self, prefix: &str) {
        let dir = self.dir.clone();
        let prefix = self.scoped(prefix);
        let index = self.index.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for f in walk(&dir) {
                if !key_starts_with(&f, prefix.as_bytes()) {
                    continue;
                }
                if let Some(h) = f
                    .file_stem()
                    .and_then(|s| u64::from_str_radix(&s.to_string_lossy(), 16).ok())
                {
                    index.invalidate(&h);
                }
                let _ = std::fs::remove_file(f);
            }
        })
        .await;
    }

    /// Removes every entry.
    pub(crate) async fn clear(&self) {
        self.index.invalidate_all();
        self.index.run_pending_tasks();
        let dir = self.dir.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for f in walk(&dir) {
                let _ = std::fs::remove_file(f);
            }
        })
        .await;
    }
}

/// Whether the entry file at `path` holds a key starting with `prefix` (its header and key
/// are read; a file too short to hold them is not).
fn key_starts_with(path: &Path, prefix: &[u8]) -> bool {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let mut header = [0u8; HEADER];
    if f.read_exact(&mut header).is_err() || &header[..8] != MAGIC {
        return false;
    }
    let key_len = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
    if key_len < prefix.len() {
        return false;
    }
    let mut start = vec![0u8; prefix.len()];
    f.read_exact(&mut start).is_ok() && start == prefix
}

/// The entry files under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(subdirs) = std::fs::read_dir(dir) else {
        return out;
    };
    for sub in subdirs.flatten() {
        let Ok(files) = std::fs::read_dir(sub.path()) else {
            continue;
        };
        out.extend(
            files
                .flatten()
                .map(|f| f.path())
                .filter(|p| p.extension().is_some_and(|e| e == SUFFIX)),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_weigh_whole_blocks_and_prefixes_are_read_from_headers() {
        assert_eq!(on_disk(0), BLOCK);
        assert_eq!(on_disk(100), BLOCK);
        assert_eq!(on_disk(BLOCK), BLOCK);
        assert_eq!(on_disk(BLOCK + 1), 2 * BLOCK);
        let dir = tempfile::tempdir().unwrap();
        let e = Entry {
            bytes: Bytes::from_static(b"piece bytes"),
            crc: Some(crc32c(b"piece bytes")),
        };
        let path = dir.path().join("x.pc");
        std::fs::write(&path, encode("s\u{0}obj1_s0", &e)).unwrap();
        assert!(key_starts_with(&path, b"s\0obj1"));
        assert!(key_starts_with(&path, b"s\0obj1_s0"));
        assert!(!key_starts_with(&path, b"s\0obj2"));
        assert!(!key_starts_with(&path, b"s\0obj1_s0 and more"));
        std::fs::write(&path, b"short").unwrap();
        assert!(!key_starts_with(&path, b"s"));
    }

    #[test]
    fn entries_round_trip_and_damage_is_caught() {
        let e = Entry {
            bytes: Bytes::from_static(b"piece bytes"),
            crc: Some(crc32c(b"piece bytes")),
        };
        let raw = encode("1_s0", &e);
        let back = decode("1_s0", raw.clone()).unwrap().unwrap();
        assert_eq!(back.bytes, e.bytes);
        assert_eq!(back.crc, e.crc);
        assert!(
            decode("2_s0", raw.clone()).unwrap().is_none(),
            "another key's entry"
        );
        let mut flipped = raw.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(decode("1_s0", flipped).is_err());
        assert!(
            decode("1_s0", raw[..raw.len() - 1].to_vec()).is_err(),
            "torn"
        );
        let unverified = Entry {
            bytes: Bytes::from_static(b"x"),
            crc: None,
        };
        assert_eq!(
            decode("k", encode("k", &unverified)).unwrap().unwrap().crc,
            None
        );
    }
}
