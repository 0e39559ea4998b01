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
//! - **Recovery.** `<index>.recover` is held while a process brings the index up to date with
//!   the shard on open: processes starting together (after a power loss, say) recover one
//!   after another, and each takes its sequence numbers from the counter only once every
//!   record recovered before it is counted.
//! - **Sequence numbers.** `<index>.seq` holds the shard's sequence counter, mapped into every
//!   process that writes: one atomic add hands out a number no other process holds, higher
//!   than any handed out before on this host (so a later write of a key always has the higher
//!   number, whichever process made it).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A file this process holds an exclusive `flock` on (a writer registration, an active pack,
/// the compaction lease). An `flock` belongs to the open file, which `fork()` shares with the
/// child: a child that kept its copy would keep the lock after the parent let go of it or died.
/// So every such file is listed, and a forked child lets go of its copies at once
/// ([`release_in_child`]).
pub(crate) struct Locked(File);

impl Locked {
    /// Takes the lock on `file` without waiting; gives the file back when another open file
    /// (in this process or another) holds it.
    pub(crate) fn take(file: File) -> io::Result<Result<Locked, File>> {
        if !flock(&file, libc::LOCK_EX)? {
            return Ok(Err(file));
        }
        remember(file.as_raw_fd());
        Ok(Ok(Locked(file)))
    }

    /// [`Locked::take`] with a shared lock (others may hold shared locks too).
    pub(crate) fn take_shared(file: File) -> io::Result<Result<Locked, File>> {
        if !flock(&file, libc::LOCK_SH)? {
            return Ok(Err(file));
        }
        remember(file.as_raw_fd());
        Ok(Ok(Locked(file)))
    }

    /// Turns a shared lock into an exclusive one without waiting: `Ok(false)` while another
    /// holds a lock too (the shared lock is kept).
    pub(crate) fn make_exclusive(&self) -> io::Result<bool> {
        flock(&self.0, libc::LOCK_EX)
    }

    /// Turns an exclusive lock back into a shared one.
    pub(crate) fn make_shared(&self) -> io::Result<bool> {
        flock(&self.0, libc::LOCK_SH)
    }
}

impl std::ops::Deref for Locked {
    type Target = File;
    fn deref(&self) -> &File {
        &self.0
    }
}

impl std::fmt::Debug for Locked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Locked").field(&self.0.as_raw_fd()).finish()
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        forget(self.0.as_raw_fd());
    }
}

/// The descriptors of [`Locked`] files (-1: a free slot). Lock-free, since a fork handler must
/// not take a lock.
static LOCKED_FDS: [AtomicI32; 512] = [const { AtomicI32::new(-1) }; 512];

fn remember(fd: i32) {
    for slot in &LOCKED_FDS {
        if slot
            .compare_exchange(-1, fd, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return;
        }
    }
    tracing::warn!(
        fd,
        "more than 512 locked files: a forked child would keep this one's lock"
    );
}

fn forget(fd: i32) {
    for slot in &LOCKED_FDS {
        if slot
            .compare_exchange(fd, -1, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return;
        }
    }
}

/// In a child just made by `fork()` (from the runtime's fork handler; async-signal-safe: atomics
/// and three system calls): every [`Locked`] descriptor is pointed at `/dev/null`, so that the
/// child holds none of the parent's locks (closing them would do the same, but the parent's
/// objects in the child's memory still name them; unlocking would release the parent's lock).
pub(crate) fn release_in_child() {
    // SAFETY: open, dup3 and close are async-signal-safe; the descriptors named are the
    // child's copies of the parent's locked files, which nothing in the child uses.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null < 0 {
            return;
        }
        for slot in &LOCKED_FDS {
            let fd = slot.swap(-1, Ordering::SeqCst);
            if fd >= 0 {
                libc::dup3(null, fd, libc::O_CLOEXEC);
            }
        }
        libc::close(null);
    }
}

/// Takes an exclusive `flock` on `file` without waiting: `Ok(false)` when another open file
/// (in this process or another) holds it. (For a lock kept beyond a moment, [`Locked`].)
fn try_lock(file: &File) -> io::Result<bool> {
    flock(file, libc::LOCK_EX)
}

/// `flock(file, how | LOCK_NB)`: `Ok(false)` when another open file's lock is in the way.
fn flock(file: &File, how: i32) -> io::Result<bool> {
    // SAFETY: flock on a file descriptor the caller owns for the duration of the call.
    if unsafe { libc::flock(file.as_raw_fd(), how | libc::LOCK_NB) } == 0 {
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
    _file: Locked,
    /// A shared lock on `<index>.open`, held by every process with the index open; a rebuild
    /// of the whole index makes its own exclusive ([`Writer::exclusive`]).
    open: Locked,
    /// The process that registered (a forked child that drops its copy must not remove the
    /// parent's file: the parent still holds the lock).
    pid: u32,
}

impl Writer {
    /// Registers a new writer in `dir` (`<index>.writers`), removing the files of writers that
    /// are gone, with a shared lock on `open` (`<index>.open`), waiting up to `wait` while a
    /// rebuild of the index holds it exclusively.
    pub(crate) fn register(dir: &Path, open: &Path, wait: Duration) -> io::Result<Writer> {
        let mut file = open_rw(open)?;
        let deadline = Instant::now() + wait;
        let open = loop {
            file = match Locked::take_shared(file)? {
                Ok(locked) => break locked,
                Err(file) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                    file
                }
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        "another process has been rebuilding the pack index for too long",
                    ));
                }
            };
        };
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
            let Ok(file) = Locked::take(file)? else {
                continue;
            };
            if !same_file(&file, &path) {
                continue;
            }
            return Ok(Writer {
                id,
                path,
                _file: file,
                open,
                pid: std::process::id(),
            });
        }
    }

    /// Its id (never 0: 0 marks intents of releases that recorded no writer).
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Makes this the only process with the index open while the guard lives (for a rebuild
    /// of the whole index): `None` while another process has it open. Processes that open it
    /// meanwhile wait.
    pub(crate) fn exclusive(self: &std::sync::Arc<Self>) -> io::Result<Option<Exclusive>> {
        if self.open.make_exclusive()? {
            return Ok(Some(Exclusive(std::sync::Arc::clone(self))));
        }
        // A conversion that fails has let go of the shared lock (flock(2) drops the old lock
        // before it tries the new one): take it again.
        self.open.make_shared()?;
        Ok(None)
    }
}

/// [`Writer::exclusive`]'s guard: back to a shared lock when dropped.
pub(crate) struct Exclusive(std::sync::Arc<Writer>);

impl Drop for Exclusive {
    fn drop(&mut self) {
        let _ = self.0.open.make_shared();
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

/// Whether any writer of `dir` but `except` is alive.
pub(crate) fn any_alive(dir: &Path, except: u64) -> bool {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries.flatten().any(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| u64::from_str_radix(n, 16).ok())
                    .is_some_and(|id| id != except && writer_alive(dir, id))
            })
        })
        .unwrap_or(false)
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

/// A lease of one shard (compaction: `<index>.gc`; recovery: `<index>.recover`): held while
/// it lives.
#[derive(Debug)]
pub(crate) struct Lease {
    _file: Locked,
}

impl Lease {
    /// Takes the lease at `path`, waiting up to `wait` for another process to let it go;
    /// `Ok(None)` if it did not.
    pub(crate) fn take(path: &Path, wait: Duration) -> io::Result<Option<Lease>> {
        let mut file = open_rw(path)?;
        let deadline = Instant::now() + wait;
        loop {
            file = match Locked::take(file)? {
                Ok(locked) => return Ok(Some(Lease { _file: locked })),
                Err(file) => file,
            };
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A held lease or lock of a shard (of [`Members`]): let go when dropped.
pub(crate) type Guard = Box<dyn Send>;

/// The writers of one shard: which are alive, and the shard's leases. On one host they are
/// files beside the index ([`HostMembers`]); with a PostgreSQL index, advisory locks of each
/// node's connection (`index::postgres`).
pub(crate) trait Members: Send + Sync + std::fmt::Debug {
    /// This writer's id (never 0: 0 marks intents of releases that recorded no writer).
    fn id(&self) -> u64;
    /// Whether writer `id` is alive.
    fn alive(&self, id: u64) -> bool;
    /// Whether any writer but `except` is alive.
    fn any_alive(&self, except: u64) -> bool;
    /// Makes this the only writer with the index open while the guard lives (for a rebuild
    /// of the whole index): `None` while another has it open.
    fn exclusive(self: std::sync::Arc<Self>) -> io::Result<Option<Guard>>;
    /// Takes the shard's lease `name` (`gc`, `recover`), waiting up to `wait` for the writer
    /// that holds it; `None` if it did not let go.
    fn lease(self: std::sync::Arc<Self>, name: &str, wait: Duration) -> io::Result<Option<Guard>>;
}

/// The writers of a shard whose index is a file of this host: `<index>.writers/<id>` files
/// and `<index>.<lease>` locks beside it.
#[derive(Debug)]
pub(crate) struct HostMembers {
    writer: std::sync::Arc<Writer>,
    index: PathBuf,
}

impl HostMembers {
    /// Registers this process as a writer of the index at `index`, waiting up to `wait`
    /// while a rebuild holds it alone.
    pub(crate) fn register(index: &Path, wait: Duration) -> io::Result<HostMembers> {
        let writer = Writer::register(
            &super::sibling(index, "writers"),
            &super::sibling(index, "open"),
            wait,
        )?;
        Ok(HostMembers {
            writer: std::sync::Arc::new(writer),
            index: index.to_path_buf(),
        })
    }
}

impl Members for HostMembers {
    fn id(&self) -> u64 {
        self.writer.id()
    }
    fn alive(&self, id: u64) -> bool {
        writer_alive(&super::sibling(&self.index, "writers"), id)
    }
    fn any_alive(&self, except: u64) -> bool {
        any_alive(&super::sibling(&self.index, "writers"), except)
    }
    fn exclusive(self: std::sync::Arc<Self>) -> io::Result<Option<Guard>> {
        Ok(self.writer.exclusive()?.map(|g| Box::new(g) as Guard))
    }
    fn lease(self: std::sync::Arc<Self>, name: &str, wait: Duration) -> io::Result<Option<Guard>> {
        Ok(Lease::take(&super::sibling(&self.index, name), wait)?.map(|l| Box::new(l) as Guard))
    }
}

/// The shard's sequence counter: in this process only (a memory store), in a file mapped
/// into every process that opens the shard, or a clock for an index shared by hosts.
#[derive(Debug)]
pub(crate) enum SeqCounter {
    /// One process.
    Local(AtomicU64),
    /// Shared through `<index>.seq`.
    Shared(SharedCounter),
    /// A hybrid logical clock, for an index several hosts share: the next number is above
    /// both the last one and the wall clock's milliseconds (shifted by [`CLOCK_SHIFT`]), and
    /// the counter observes every number the index shows, so that a write made after
    /// another's was acknowledged (on any host whose clock is within that interval of this
    /// one's) gets a higher number.
    Clock(AtomicU64),
}

/// Sequence numbers of a [`SeqCounter::Clock`] per millisecond.
pub(crate) const CLOCK_SHIFT: u32 = 12;

impl Default for SeqCounter {
    fn default() -> Self {
        SeqCounter::Local(AtomicU64::new(0))
    }
}

impl SeqCounter {
    fn atomic(&self) -> &AtomicU64 {
        match self {
            SeqCounter::Local(a) | SeqCounter::Clock(a) => a,
            SeqCounter::Shared(s) => s.atomic(),
        }
    }

    /// The next number.
    pub(crate) fn next(&self) -> u64 {
        if let SeqCounter::Clock(a) = self {
            let now = super::now_ms() << CLOCK_SHIFT;
            let mut cur = a.load(Ordering::SeqCst);
            loop {
                let next = (cur + 1).max(now);
                match a.compare_exchange_weak(cur, next, Ordering::SeqCst, Ordering::SeqCst) {
                    Ok(_) => return next,
                    Err(seen) => cur = seen,
                }
            }
        }
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
        let open = dir.path().join("open");
        let wait = Duration::from_millis(100);
        let a = std::sync::Arc::new(Writer::register(&writers, &open, wait).unwrap());
        let b = std::sync::Arc::new(Writer::register(&writers, &open, wait).unwrap());
        // Not exclusive while another has the index open.
        assert!(a.exclusive().unwrap().is_none());
        assert_ne!(a.id(), b.id());
        assert!(writer_alive(&writers, a.id()));
        let gone = a.id();
        drop(a);
        assert!(!writer_alive(&writers, gone));
        assert!(writer_alive(&writers, b.id()));
        {
            let only = b.exclusive().unwrap();
            assert!(only.is_some(), "the only writer left");
            // A process opening meanwhile waits, then gives up.
            assert!(Writer::register(&writers, &open, wait).is_err());
        }
        assert!(Writer::register(&writers, &open, wait).is_ok());

        let gc = dir.path().join("gc");
        let held = Lease::take(&gc, Duration::ZERO).unwrap();
        assert!(held.is_some());
        assert!(
            Lease::take(&gc, Duration::from_millis(50))
                .unwrap()
                .is_none()
        );
        drop(held);
        assert!(Lease::take(&gc, Duration::ZERO).unwrap().is_some());

        // A forked child does not keep the parent's locks: once the parent lets go of the
        // lease, another may take it while the child lives on.
        crate::runtime::fork_generation(); // installs the fork handler
        let lease = Lease::take(&gc, Duration::ZERO).unwrap().expect("free");
        // SAFETY: the child only sleeps and exits (async-signal-safe).
        let child = unsafe { libc::fork() };
        if child == 0 {
            unsafe {
                libc::usleep(3_000_000);
                libc::_exit(0);
            }
        }
        assert!(child > 0, "fork failed");
        drop(lease);
        let again = Lease::take(&gc, Duration::from_millis(500)).unwrap();
        // SAFETY: our own child.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
        assert!(again.is_some(), "the forked child kept the parent's lock");

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
