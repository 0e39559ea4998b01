//! What lets several processes share one packed store on a host: who is alive, who compacts,
//! and one sequence counter.
//!
//! Every lock here is an `flock` on a file beside the shard's index: the kernel drops it when
//! its holder dies, however it dies, so a lease never outlives its holder and never needs a
//! timeout. (For an index shared between hosts the same roles go to the index's database.)
//!
//! - **Writers.** A process that opens a shard's index registers as a writer: it holds an
//!   exclusive lock on `<index>.writers/<id>` for as long as it has the index open. The id is
//!   recorded with each object operation it starts (an intent), so that another process
//!   finishes or undoes an intent only when its writer is gone.
//! - **Compaction.** `<index>.gc` is held by the one process that compacts (or checks, or
//!   rebuilds) the shard.
//! - **Sequence numbers.** `<index>.seq` holds the shard's sequence counter, mapped into every
//!   process that writes: one atomic add hands out a number no other process holds, higher
//!   than any handed out before on this host (so a later write of a key always has the higher
//!   number, whichever process made it).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Takes an exclusive `flock` on `file` without waiting: `Ok(false)` when another open file
/// (in this process or another) holds it.
pub(crate) fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a file descriptor the caller owns for the duration of the call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

fn open_rw(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// This process's registration as a writer of one shard: the lock on its file, released (and
/// the file removed) when dropped.
#[derive(Debug)]
pub(crate) struct Writer {
    id: u64,
    path: PathBuf,
    _file: File,
    /// The process that registered (a forked child that drops its copy must not remove the
    /// parent's file: the parent still holds the lock).
    pid: u32,
}

impl Writer {
    /// Registers a new writer in `dir` (`<index>.writers`), removing the files of writers that
    /// are gone.
    pub(crate) fn register(dir: &Path) -> io::Result<Writer> {
        std::fs::create_dir_all(dir)?;
        sweep(dir);
        loop {
            let id = (super::new_pack_id() as u64) | 1;
            let path = dir.join(format!("{id:016x}"));
            let file = match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            };
            // A sweep in another process may have taken the lock between the create and here
            // (and removed the file, taking this writer for a gone one): then another id.
            if !try_lock(&file)? || !same_file(&file, &path) {
                continue;
            }
            return Ok(Writer {
                id,
                path,
                _file: file,
                pid: std::process::id(),
            });
        }
    }

    /// Its id (never 0: 0 marks intents of releases that recorded no writer).
    pub(crate) fn id(&self) -> u64 {
        self.id
    }
}

/// Whether `path` still names the open `file`.
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.pid == std::process::id() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Whether writer `id` of `dir` is alive (holds its lock). A writer whose file is gone, or
/// whose lock can be taken, is not.
pub(crate) fn writer_alive(dir: &Path, id: u64) -> bool {
    let path = dir.join(format!("{id:016x}"));
    match std::fs::OpenOptions::new().read(true).open(&path) {
        Ok(f) => !matches!(try_lock(&f), Ok(true)),
        Err(_) => false,
    }
}

/// Removes the files of writers that are gone.
fn sweep(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(f) = std::fs::OpenOptions::new().read(true).open(entry.path()) else {
            continue;
        };
        if matches!(try_lock(&f), Ok(true)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The compaction lease of one shard: held while the file stays open.
#[derive(Debug)]
pub(crate) struct GcLease {
    _file: File,
}

impl GcLease {
    /// Takes the lease at `path`, waiting up to `wait` for another process to let it go;
    /// `Ok(None)` if it did not.
    pub(crate) fn take(path: &Path, wait: Duration) -> io::Result<Option<GcLease>> {
        let file = open_rw(path)?;
        let deadline = Instant::now() + wait;
        loop {
            if try_lock(&file)? {
                return Ok(Some(GcLease { _file: file }));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The shard's sequence counter: in this process only (a memory store), or in a file mapped
/// into every process that opens the shard.
#[derive(Debug)]
pub(crate) enum SeqCounter {
    /// One process.
    Local(AtomicU64),
    /// Shared through `<index>.seq`.
    Shared(SharedCounter),
}

impl Default for SeqCounter {
    fn default() -> Self {
        SeqCounter::Local(AtomicU64::new(0))
    }
}

impl SeqCounter {
    fn atomic(&self) -> &AtomicU64 {
        match self {
            SeqCounter::Local(a) => a,
            SeqCounter::Shared(s) => s.atomic(),
        }
    }

    /// The next number.
    pub(crate) fn next(&self) -> u64 {
        self.atomic().fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The highest number handed out.
    pub(crate) fn current(&self) -> u64 {
        self.atomic().load(Ordering::SeqCst)
    }

    /// Raises the counter to at least `n`.
    pub(crate) fn observe(&self, n: u64) {
        self.atomic().fetch_max(n, Ordering::SeqCst);
    }
}

/// A `u64` in a file mapped shared into every process that opens it.
pub(crate) struct SharedCounter {
    ptr: *mut libc::c_void,
    _file: File,
}

// SAFETY: the mapping is only ever accessed as an `AtomicU64`, which is safe to share between
// threads (and, being in a shared mapping, between processes).
unsafe impl Send for SharedCounter {}
// SAFETY: as above.
unsafe impl Sync for SharedCounter {}

const PAGE: usize = 4096;

impl std::fmt::Debug for SharedCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCounter")
            .field("value", &self.atomic().load(Ordering::Relaxed))
            .finish()
    }
}

impl SharedCounter {
    /// Maps the counter at `path` (created as zero).
    pub(crate) fn open(path: &Path) -> io::Result<SharedCounter> {
        let file = open_rw(path)?;
        if file.metadata()?.len() < PAGE as u64 {
            // Growing a file never changes the bytes it has: racing openers agree.
            file.set_len(PAGE as u64)?;
        }
        // SAFETY: a fresh shared mapping of the file's first page, which the file covers; it
        // stays valid until `munmap` in `drop`.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(SharedCounter { ptr, _file: file })
    }

    fn atomic(&self) -> &AtomicU64 {
        // SAFETY: the mapping is page-aligned (so 8-byte aligned), at least 8 bytes long, and
        // lives as long as `self`.
        unsafe { &*(self.ptr as *const AtomicU64) }
    }
}

impl Drop for SharedCounter {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping made in `open`, which no reference outlives.
        unsafe {
            libc::munmap(self.ptr, PAGE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_leases_and_the_counter() {
        let dir = tempfile::tempdir().unwrap();
        let writers = dir.path().join("w");
        let a = Writer::register(&writers).unwrap();
        let b = Writer::register(&writers).unwrap();
        assert_ne!(a.id(), b.id());
        assert!(writer_alive(&writers, a.id()));
        let gone = a.id();
        drop(a);
        assert!(!writer_alive(&writers, gone));
        assert!(writer_alive(&writers, b.id()));

        let gc = dir.path().join("gc");
        let held = GcLease::take(&gc, Duration::ZERO).unwrap();
        assert!(held.is_some());
        assert!(
            GcLease::take(&gc, Duration::from_millis(50))
                .unwrap()
                .is_none()
        );
        drop(held);
        assert!(GcLease::take(&gc, Duration::ZERO).unwrap().is_some());

        let path = dir.path().join("seq");
        let one = SeqCounter::Shared(SharedCounter::open(&path).unwrap());
        let two = SeqCounter::Shared(SharedCounter::open(&path).unwrap());
        assert_eq!(one.next(), 1);
        assert_eq!(two.next(), 2);
        two.observe(40);
        assert_eq!(one.next(), 41);
        drop(one);
        drop(two);
        let again = SeqCounter::Shared(SharedCounter::open(&path).unwrap());
        assert_eq!(again.current(), 41);
    }
}
