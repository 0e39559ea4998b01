//! Local directories with one file per piece, in either of two layouts, decided per directory
//! by a marker, never by guessing from a file's last bytes:
//!
//! - **PieceStore's own layout** (the directory holds `.piecestore/layout`): a file is the
//!   piece's bytes followed by a 20-byte [`Trailer`] (its CRC32C, its length, a magic).
//! - **The original's layout** (no marker): a file is exactly the piece's bytes, as the original
//!   Go piecestore writes and reads them. PieceStore keeps the CRC32C beside the bytes, in the
//!   extended attribute `user.piecestore.crc32c` (its decimal), which the original never sees;
//!   every read that finds it verifies it. On a filesystem that keeps no extended attributes the
//!   piece is stored without a checksum (the original's own files have none either), and reads
//!   of it are unverified.
//!
//! Writes go to a staging file in the same directory (`name#N`), which is fsync'd, then linked
//! into place (create-only: a hard link, which fails if the name exists) or renamed over
//! (overwrite), and the directory is fsync'd: a crash never leaves a partial piece under its
//! name.

use std::ffi::CStr;
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use crate::checksum::{self, Trailer, TrailerCheck};
use crate::page_cache;

/// The marker of a directory in PieceStore's own layout (under the store's root).
pub(crate) const LAYOUT_MARKER: &str = ".piecestore/layout";

/// What the marker holds.
const MARKER_TEXT: &str = "piecestore-files-with-trailer 1\n";

/// The extended attribute that holds a piece's CRC32C in the original's layout.
const XATTR: &CStr = c"user.piecestore.crc32c";

/// How the files of a local store hold their pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileFormat {
    /// PieceStore's own: bytes, then a checksum trailer.
    Trailer,
    /// The original's: exactly the bytes (checksum in an extended attribute, where kept).
    Raw,
}

/// What reading a piece file found.
pub(crate) enum Read {
    /// The bytes, verified against this checksum.
    Verified(Vec<u8>, u32),
    /// The bytes; the file carries no checksum.
    Unverified(Vec<u8>),
    /// A trailer that is ours (its magic) but does not agree with the file.
    DamagedTrailer,
    /// The bytes do not match the checksum.
    Mismatch {
        /// The checksum the file carries.
        expected: u32,
        /// The bytes' checksum.
        actual: u32,
    },
}

/// A piece file's metadata.
pub(crate) struct Head {
    /// The piece's size.
    pub size: u64,
    /// Its checksum, if it carries one.
    pub crc: Option<u32>,
    /// When it was written.
    pub modified: SystemTime,
}

/// The outcome of [`write_piece`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Written {
    /// The piece is in place, durable.
    Done,
    /// Create-only, and a file of that name exists (nothing was changed).
    Exists,
}

/// The checksum in a file's extended attribute: `None` when it has none (or the filesystem
/// keeps none). A value that is not a `u32` counts as a damaged checksum.
fn read_xattr(file: &std::fs::File) -> io::Result<Option<Result<u32, ()>>> {
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 16];
    // SAFETY: a valid open fd, a NUL-terminated name, and a buffer writable for its length.
    let n = unsafe {
        libc::fgetxattr(
            file.as_raw_fd(),
            XATTR.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA | libc::ENOTSUP | libc::ERANGE) => Ok(None),
            _ => Err(e),
        };
    }
    let text = std::str::from_utf8(&buf[..n as usize]).unwrap_or("");
    Ok(Some(checksum::parse_metadata(text).ok_or(())))
}

/// Sets a file's checksum attribute; `false` when the filesystem keeps no extended attributes
/// (warned once per process).
fn write_xattr(file: &std::fs::File, crc: u32) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    static WARNED: std::sync::Once = std::sync::Once::new();
    let value = crc.to_string();
    // SAFETY: a valid open fd, a NUL-terminated name, and a value of the given length.
    let rc = unsafe {
        libc::fsetxattr(
            file.as_raw_fd(),
            XATTR.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOTSUP | libc::EPERM) => {
            WARNED.call_once(|| {
                tracing::warn!("this filesystem keeps no extended attributes: pieces in the original's layout are stored without a checksum, and reads of them are unverified");
            });
            Ok(false)
        }
        _ => Err(e),
    }
}

/// Reads a whole piece file (`opened`: when it was opened, for a time to first byte).
pub(crate) fn read_piece(path: &Path, format: FileFormat) -> io::Result<(Read, Instant)> {
    let mut f = std::fs::File::open(path)?;
    let meta = f.metadata()?;
    if meta.is_dir() {
        return Err(io::Error::from(io::ErrorKind::NotFound));
    }
    let opened = Instant::now();
    let mut buf = Vec::with_capacity(meta.len() as usize);
    f.read_to_end(&mut buf)?;
    let read = match format {
        FileFormat::Raw => match read_xattr(&f)? {
            None => Read::Unverified(buf),
            Some(Err(())) => Read::DamagedTrailer,
            Some(Ok(expected)) => verified(buf, expected),
        },
        FileFormat::Trailer => with_trailer(buf),
    };
    Ok((read, opened))
}

/// [`read_piece`] at once on the calling thread when that cannot wait for the disk: the file's
/// path and bytes are all in the kernel's caches and it is at most
/// [`page_cache::INLINE_READ_MAX`] bytes long. `Ok(None)` otherwise: then call [`read_piece`]
/// on the blocking pool. PieceStore's own layout only: the original's keeps its checksum in an
/// extended attribute, whose read may wait for the disk.
pub(crate) fn read_piece_cached(
    path: &Path,
    format: FileFormat,
) -> io::Result<Option<(Read, Instant)>> {
    if format != FileFormat::Trailer {
        return Ok(None);
    }
    let opened = Instant::now();
    Ok(page_cache::read_file(path)?.map(|buf| (with_trailer(buf), opened)))
}

/// A whole file of PieceStore's own layout, checked against its trailer.
fn with_trailer(mut buf: Vec<u8>) -> Read {
    let total = buf.len() as u64;
    match Trailer::check(&buf[buf.len().saturating_sub(Trailer::LEN)..], total) {
        TrailerCheck::Absent => Read::Unverified(buf),
        TrailerCheck::Damaged => Read::DamagedTrailer,
        TrailerCheck::Valid(t) => {
            buf.truncate(t.len as usize);
            verified(buf, t.crc)
        }
    }
}

fn verified(buf: Vec<u8>, expected: u32) -> Read {
    let actual = checksum::crc32c(&buf);
    if actual == expected {
        Read::Verified(buf, actual)
    } else {
        Read::Mismatch { expected, actual }
    }
}

/// A piece file's size and checksum, without reading its bytes (a trailer read, or an
/// attribute). `Ok(None)`: a damaged trailer or attribute.
pub(crate) fn head_piece(path: &Path, format: FileFormat) -> io::Result<Option<Head>> {
    open_piece(path, format).map(|(_, head)| head)
}

/// Opens a piece file and reads its head: the open file (for reads of its bytes) and its size
/// and checksum (`None`: a damaged trailer or attribute).
pub(crate) fn open_piece(
    path: &Path,
    format: FileFormat,
) -> io::Result<(std::fs::File, Option<Head>)> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path)?;
    let meta = f.metadata()?;
    if meta.is_dir() {
        return Err(io::Error::from(io::ErrorKind::NotFound));
    }
    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let len = meta.len();
    let (size, crc) = match format {
        FileFormat::Raw => match read_xattr(&f)? {
            None => (len, None),
            Some(Err(())) => return Ok((f, None)),
            Some(Ok(c)) => (len, Some(c)),
        },
        FileFormat::Trailer => {
            let mut tail = [0u8; Trailer::LEN];
            let n = (Trailer::LEN as u64).min(len) as usize;
            f.read_exact_at(&mut tail[..n], len - n as u64)?;
            match Trailer::check(&tail[..n], len) {
                TrailerCheck::Absent => (len, None),
                TrailerCheck::Damaged => return Ok((f, None)),
                TrailerCheck::Valid(t) => (t.len, Some(t.crc)),
            }
        }
    };
    let head = Head {
        size,
        crc,
        modified,
    };
    Ok((f, Some(head)))
}

/// `len` bytes of an open piece file at `offset` (a short file is `UnexpectedEof`).
pub(crate) fn read_chunk(f: &std::fs::File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

/// A staging name next to `path` that no key can have (`name#digits`).
fn staging(path: &Path) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!("#{}{n:06}", std::process::id()));
    path.with_file_name(name)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Writes a piece file whole: staging file, checksum (trailer or attribute), fsync, then into
/// place (create-only: fails with [`Written::Exists`] when the name is taken), then the
/// directory fsync'd. Missing parent directories are created.
pub(crate) fn write_piece(
    path: &Path,
    data: &[u8],
    crc: u32,
    format: FileFormat,
    create_only: bool,
    fsync: bool,
) -> io::Result<Written> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "a path without a parent"))?;
    let tmp = staging(path);
    let open = |tmp: &Path| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(tmp)
    };
    let mut f = match open(&tmp) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)?;
            open(&tmp)?
        }
        other => other?,
    };
    let written = (|| {
        f.write_all(data)?;
        match format {
            FileFormat::Trailer => f.write_all(
                &Trailer {
                    crc,
                    len: data.len() as u64,
                }
                .encode(),
            )?,
            FileFormat::Raw => {
                write_xattr(&f, crc)?;
            }
        }
        if fsync {
            f.sync_all()?;
        }
        drop(f);
        if create_only {
            match std::fs::hard_link(&tmp, path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(Written::Exists),
                Err(e) => return Err(e),
            }
            std::fs::remove_file(&tmp)?;
        } else {
            std::fs::rename(&tmp, path)?;
        }
        if fsync {
            sync_dir(dir)?;
        }
        Ok(Written::Done)
    })();
    if !matches!(written, Ok(Written::Done)) || create_only {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Which layout a local store at `root` has, deciding it for a new one.
///
/// - A directory with the marker is in PieceStore's own layout, whatever the config says.
/// - Without one: with `original` (a config in the original's layout, or `Layout =
///   "original"`), the original's layout; else PieceStore's own, and the marker is written
///   first, unless the directory already holds pieces (the original's files, or those of a
///   PieceStore release before the marker): that is refused, unless `explicit` (the config
///   names the layout), which marks it.
pub(crate) fn decide_format(
    root: &Path,
    original: bool,
    explicit: bool,
) -> Result<FileFormat, String> {
    let marker = root.join(LAYOUT_MARKER);
    if marker.exists() {
        if original && explicit {
            tracing::warn!(root = %root.display(), "the directory is in PieceStore's own layout (it holds .piecestore/layout): its files carry a checksum trailer, which the original Go piecestore cannot read; reading and writing it in that layout");
        }
        return Ok(FileFormat::Trailer);
    }
    if original {
        return Ok(FileFormat::Raw);
    }
    let own_dir = root.join(".piecestore").is_dir();
    if !explicit && !own_dir && holds_pieces(root).map_err(|e| e.to_string())? {
        return Err(format!(
            "{} holds pieces but not the marker of PieceStore's own layout (.piecestore/layout): \
             if they are the original Go piecestore's, open the directory with its config.toml \
             or with `?layout=original` (PieceStore then reads and writes them as the original \
             does); if they were written by a PieceStore release before the marker, open it once \
             with `?layout=piecestore` to mark it",
            root.display()
        ));
    }
    write_marker(root)
        .map_err(|e| format!("cannot write the layout marker {}: {e}", marker.display()))?;
    Ok(FileFormat::Trailer)
}

/// Whether `root` holds any piece file (anything but PieceStore's own directory and temp files).
fn holds_pieces(root: &Path) -> io::Result<bool> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    for e in entries {
        let name = e?.file_name();
        let name = name.to_string_lossy();
        if name != ".piecestore" && !name.starts_with('.') && !name.contains('#') {
            return Ok(true);
        }
    }
    Ok(false)
}

fn write_marker(root: &Path) -> io::Result<()> {
    let path = root.join(LAYOUT_MARKER);
    let dir = path.parent().unwrap_or(root);
    std::fs::create_dir_all(dir)?;
    let tmp = staging(&path);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(MARKER_TEXT.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, &path)?;
    sync_dir(dir)?;
    sync_dir(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_layouts_round_trip_and_refuse_to_overwrite_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        for format in [FileFormat::Trailer, FileFormat::Raw] {
            let path = dir.path().join(format!("sub/{format:?}"));
            let data = b"piece bytes".to_vec();
            let crc = checksum::crc32c(&data);
            assert_eq!(
                write_piece(&path, &data, crc, format, true, true).unwrap(),
                Written::Done
            );
            assert_eq!(
                write_piece(&path, b"other", 1, format, true, true).unwrap(),
                Written::Exists
            );
            match read_piece(&path, format).unwrap().0 {
                Read::Verified(b, c) => assert_eq!((b, c), (data.clone(), crc)),
                _ => panic!("{format:?}: not verified"),
            }
            let h = head_piece(&path, format).unwrap().unwrap();
            assert_eq!((h.size, h.crc), (data.len() as u64, Some(crc)));
            let on_disk = std::fs::read(&path).unwrap();
            match format {
                FileFormat::Raw => assert_eq!(on_disk, data, "exactly the bytes"),
                FileFormat::Trailer => assert_eq!(on_disk.len(), data.len() + Trailer::LEN),
            }
            write_piece(&path, b"new", checksum::crc32c(b"new"), format, false, true).unwrap();
            assert!(
                matches!(read_piece(&path, format).unwrap().0, Read::Verified(b, _) if b == b"new")
            );
        }
        // No staging file is left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
    }

    #[test]
    fn the_layout_is_decided_by_the_marker() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // A new directory: PieceStore's own, marked.
        assert_eq!(
            decide_format(root, false, false).unwrap(),
            FileFormat::Trailer
        );
        assert!(root.join(LAYOUT_MARKER).exists());
        // Marked: own, even for an original-layout config.
        assert_eq!(
            decide_format(root, true, false).unwrap(),
            FileFormat::Trailer
        );
        // The original's directory: raw with an original-layout config; refused otherwise,
        // unless the layout is named.
        let orig = tempfile::tempdir().unwrap();
        std::fs::write(orig.path().join("s1_s0"), b"x").unwrap();
        assert_eq!(
            decide_format(orig.path(), true, false).unwrap(),
            FileFormat::Raw
        );
        assert!(!orig.path().join(".piecestore").exists());
        let e = decide_format(orig.path(), false, false).unwrap_err();
        assert!(e.contains("layout=original"), "{e}");
        assert_eq!(
            decide_format(orig.path(), false, true).unwrap(),
            FileFormat::Trailer
        );
    }
}

/// One file of a local shard's directory walk ([`walk`]).
#[derive(Debug)]
pub(crate) enum Walked {
    /// A file whose path under the root is a valid object path.
    File {
        location: object_store::path::Path,
        size: u64,
        last_modified: SystemTime,
    },
    /// A file whose name no key can reach: a control character (macOS's `Icon\r`, say), bytes
    /// that are not UTF-8, a `.` or `..` segment. Its path under the root (bytes that are not
    /// UTF-8 shown as U+FFFD).
    BadName { name: String, size: u64 },
}

/// The files under `root` (under `root/dir` when given), in directory order, streamed from one
/// blocking task a bounded batch ahead of the reader.
///
/// object_store's own local listing ends at the first file whose name is not a valid object
/// path, so one stray file would fail every listing (and so `ls`, `fsck`, `profile`) of the
/// whole store; this walk reports such a file and goes on. Like object_store's, it follows
/// symbolic links, leaves out broken ones and files deleted while it runs, and leaves out the
/// `name#N` staging files of unfinished object_store writes.
pub(crate) fn walk(
    root: PathBuf,
    dir: Option<&object_store::path::Path>,
) -> futures::stream::BoxStream<'static, io::Result<Walked>> {
    use futures::StreamExt as _;
    const AHEAD: usize = 1024;
    let start = match dir {
        Some(d) if !d.as_ref().is_empty() => root.join(d.as_ref()),
        _ => root.clone(),
    };
    futures::stream::once(async move {
        let (tx, rx) = tokio::sync::mpsc::channel(AHEAD);
        tokio::task::spawn_blocking(move || {
            for entry in walkdir::WalkDir::new(&start)
                .min_depth(1)
                .follow_links(true)
            {
                let item = match entry {
                    Ok(e) => match walked(&root, e.path()) {
                        Ok(Some(w)) => Ok(w),
                        Ok(None) => continue,
                        Err(e) => Err(e),
                    },
                    // The start directory does not exist (yet), or an entry went away.
                    Err(e)
                        if e.io_error().map(io::Error::kind) == Some(io::ErrorKind::NotFound) =>
                    {
                        continue;
                    }
                    Err(e) => Err(io::Error::from(e)),
                };
                let failed = item.is_err();
                // A closed channel: the reader stopped listening.
                if tx.blocking_send(item).is_err() || failed {
                    return;
                }
            }
        });
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) })
    })
    .flatten()
    .boxed()
}

/// What the walk makes of the entry at `path` (`None`: not a file, or gone).
fn walked(root: &Path, path: &Path) -> io::Result<Option<Walked>> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !meta.is_file() {
        return Ok(None);
    }
    let rel = path.strip_prefix(root).map_err(|_| {
        io::Error::other(format!("{} is outside {}", path.display(), root.display()))
    })?;
    let size = meta.len();
    let parsed = rel
        .to_str()
        .and_then(|s| object_store::path::Path::parse(s).ok());
    let Some(location) = parsed else {
        let name = rel.to_string_lossy().into_owned();
        return Ok(Some(Walked::BadName { name, size }));
    };
    if is_object_store_staging(&location) {
        return Ok(None);
    }
    Ok(Some(Walked::File {
        location,
        size,
        last_modified: meta.modified()?,
    }))
}

/// object_store's own staging file of an unfinished write: `name#N`, N all digits.
fn is_object_store_staging(p: &object_store::path::Path) -> bool {
    p.filename()
        .and_then(|f| f.split_once('#'))
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}
