//! Reads that never wait for a disk: a small read whose bytes are all in the kernel's caches is
//! done at once on the calling thread; any other read is left to the caller (`Ok(None)`), which
//! reads on the blocking pool as before.
//!
//! A local get otherwise hands its read to tokio's blocking pool and waits for it: two thread
//! hand-offs (each a wake-up of a sleeping thread, several microseconds on a VM) around a read
//! that itself takes a microsecond or two when its bytes are cached. On Linux the kernel can
//! say whether a read would wait: `openat2` with `RESOLVE_CACHED` opens a file only if every
//! step of its path is in the dentry cache, and `preadv2` with `RWF_NOWAIT` reads only bytes
//! already in the page cache; each fails with `EAGAIN` instead of starting to wait (the
//! interface io_uring uses to decide the same thing). So these reads are safe on any thread,
//! Node's event loop and the runtime's async workers included.
//!
//! A tmpfs (`/dev/shm`, a RAM disk) does not support `RWF_NOWAIT` (`EOPNOTSUPP` on 6.18), but
//! its bytes are memory, never a disk's: such a file is read at once with a plain `pread`.
//! Elsewhere (other systems, kernels before 5.12, other filesystems that do not support the
//! flags) every read takes the blocking pool, as before.

use std::fs::File;
use std::io;
use std::path::Path;

/// Reads longer than this always go to the blocking pool: copying 256 KiB out of the page
/// cache and checksumming it takes tens of microseconds, as long as a thread that must not
/// block should be held.
pub(crate) const INLINE_READ_MAX: u64 = 256 << 10;

/// Opens `path` for reading if its whole path is in the dentry cache; `Ok(None)` when opening
/// it would look on the disk, or when the system cannot tell. An error is the open's own (a
/// missing file is `NotFound`: a cached negative entry answers that without the disk).
pub(crate) fn open(path: &Path) -> io::Result<Option<File>> {
    imp::open(path)
}

/// The whole file at `path` (at most [`INLINE_READ_MAX`] bytes), if its path and bytes are
/// all in the kernel's caches; `Ok(None)` otherwise. A directory is `NotFound`.
pub(crate) fn read_file(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let Some(f) = open(path)? else {
        return Ok(None);
    };
    let meta = f.metadata()?;
    if meta.is_dir() {
        return Err(io::Error::from(io::ErrorKind::NotFound));
    }
    read_at(&f, 0, meta.len())
}

/// Exactly `len` bytes at `offset` of `file`, if they are all in the page cache and
/// `len <= INLINE_READ_MAX`; `Ok(None)` when some are not, when the file ends first (the
/// blocking read then reports that as it always has), or when the system cannot tell.
pub(crate) fn read_at(file: &File, offset: u64, len: u64) -> io::Result<Option<Vec<u8>>> {
    if len > INLINE_READ_MAX {
        return Ok(None);
    }
    imp::read_at(file, offset, len as usize)
}

#[cfg(target_os = "linux")]
mod imp {
    use std::fs::File;
    use std::io::{self, IoSliceMut};
    use std::path::Path;

    use rustix::fs::{CWD, Mode, OFlags, ResolveFlags, openat2};
    use rustix::io::{Errno, ReadWriteFlags, preadv2};

    /// Errors that mean "this would wait" or "this kernel or filesystem cannot tell": the
    /// caller then reads the ordinary way.
    fn cannot_tell(e: Errno) -> bool {
        matches!(
            e,
            Errno::AGAIN | Errno::NOSYS | Errno::OPNOTSUPP | Errno::INVAL | Errno::TOOBIG
        )
    }

    pub(super) fn open(path: &Path) -> io::Result<Option<File>> {
        let flags = OFlags::RDONLY | OFlags::CLOEXEC;
        match openat2(CWD, path, flags, Mode::empty(), ResolveFlags::CACHED) {
            Ok(fd) => Ok(Some(File::from(fd))),
            Err(e) if cannot_tell(e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) fn read_at(file: &File, offset: u64, len: usize) -> io::Result<Option<Vec<u8>>> {
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            let mut slice = [IoSliceMut::new(&mut buf[done..])];
            match preadv2(
                file,
                &mut slice,
                offset + done as u64,
                ReadWriteFlags::NOWAIT,
            ) {
                Ok(0) => return Ok(None),
                Ok(n) => done += n,
                Err(Errno::INTR) => {}
                Err(Errno::OPNOTSUPP) if in_memory(file) => return read_memory(file, offset, buf),
                Err(e) if cannot_tell(e) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Some(buf))
    }

    /// Whether `file` lives on a tmpfs, whose pages are memory (a read of one never waits
    /// for a disk; at worst for swap, as any memory may).
    fn in_memory(file: &File) -> bool {
        rustix::fs::fstatfs(file).is_ok_and(|s| is_tmpfs(&s))
    }

    /// Whether a filesystem's `statfs` names a tmpfs (`f_type`'s integer type differs between
    /// architectures, hence the casts).
    #[allow(clippy::unnecessary_cast)]
    pub(super) fn is_tmpfs(s: &rustix::fs::StatFs) -> bool {
        s.f_type as i64 == libc::TMPFS_MAGIC as i64
    }

    /// `buf.len()` bytes at `offset` of a tmpfs file with plain `pread`s; `Ok(None)` when the
    /// file ends first, as for a cached read.
    fn read_memory(file: &File, offset: u64, mut buf: Vec<u8>) -> io::Result<Option<Vec<u8>>> {
        use std::os::unix::fs::FileExt;
        match file.read_exact_at(&mut buf, offset) {
            Ok(()) => Ok(Some(buf)),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::fs::File;
    use std::io;
    use std::path::Path;

    pub(super) fn open(_: &Path) -> io::Result<Option<File>> {
        Ok(None)
    }

    pub(super) fn read_at(_: &File, _: u64, _: usize) -> io::Result<Option<Vec<u8>>> {
        Ok(None)
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_cached_file_reads_at_once_and_its_end_is_left_to_the_blocking_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        // Just written: the path and the bytes are in the kernel's caches.
        let f = open(&path).unwrap().expect("a cached path opens at once");
        assert_eq!(read_at(&f, 0, 10_000).unwrap().as_deref(), Some(&data[..]));
        assert_eq!(
            read_at(&f, 100, 50).unwrap().as_deref(),
            Some(&data[100..150])
        );
        // Past the end: left to the blocking read, which reports a short file.
        assert_eq!(read_at(&f, 9_990, 20).unwrap(), None);
        // Too long to hold a thread that must not block: always left to the blocking pool.
        assert_eq!(read_at(&f, 0, INLINE_READ_MAX + 1).unwrap(), None);
        // A missing file, once looked up (a cached negative entry), is NotFound at once.
        let missing = dir.path().join("missing");
        assert!(std::fs::metadata(&missing).is_err());
        let e = open(&missing).expect_err("a cached negative entry says NotFound");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_file_on_tmpfs_reads_at_once_too() {
        let shm = Path::new("/dev/shm");
        if !rustix::fs::statfs(shm).is_ok_and(|s| imp::is_tmpfs(&s)) {
            eprintln!("SKIPPED: no tmpfs at /dev/shm");
            return;
        }
        let dir = tempfile::tempdir_in(shm).unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 241) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        assert_eq!(read_file(&path).unwrap().as_deref(), Some(&data[..]));
        let f = open(&path)
            .unwrap()
            .expect("a tmpfs path is in the dentry cache");
        assert_eq!(
            read_at(&f, 4_000, 96).unwrap().as_deref(),
            Some(&data[4_000..4_096])
        );
        // Past the end: left to the blocking read, as on any other filesystem.
        assert_eq!(read_at(&f, 9_990, 20).unwrap(), None);
    }
}
