//! A local directory's active pack: the file every write group of a shard is appended to.
//!
//! On a local directory a write group is not a pack object of its own (a new file, its fsync, a
//! directory fsync and an index commit per group): its records are appended to the shard's
//! **active pack** with one vectored positioned write, made durable with one `fdatasync`, and
//! the group's index changes are committed without waiting for the disk. The packs are the
//! truth: records describe themselves (header CRC, payload CRC), so after a crash the index is
//! brought up to date by scanning each active pack from the end its durable index knows
//! ([`PackInfo::size`](super::index::PackInfo)) and applying the records found there, in order;
//! a torn tail (a group cut by the crash, never acknowledged) ends the scan and is cut off.
//!
//! What makes an acknowledged put findable after a crash: its record was appended and
//! `fdatasync`'d before the put returned, the pack file's directory entry was made durable when
//! the file was created, and recovery scans every active pack from its durable index end. (On
//! buckets a group is one create-only PUT, durable by itself; recovery replays the packs the
//! durable index does not know.)
//!
//! **Owners.** Every process that writes a directory has active packs of its own. The process
//! that appends to an active pack holds an exclusive `flock` on it from before its first byte
//! is written (it is created under a temporary name, locked, then renamed) until it lets go of
//! it; recovery in another process replays, cuts, takes up or seals only an active pack whose
//! lock it can take, that is, one whose owner is gone.
//!
//! A failed append is cut off again (`ftruncate` to where the group began), so no failed group
//! stays in the stream. An active pack is sealed at `TargetSize`: its footer and trailer are
//! appended (the same immutable, self-listing form as a bucket's pack) and it is never
//! written again.

use std::fs::File;
use std::io::{self, IoSlice};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::format::{self, Entry};
use super::index::PackId;

/// The open active pack of a shard (owned by its writer).
#[derive(Debug)]
pub(crate) struct ActivePack {
    /// Its id.
    pub id: PackId,
    /// Its path.
    pub path: PathBuf,
    file: super::lease::Locked,
    /// Bytes of whole records (and the header): where the next group goes.
    pub end: u64,
    /// Payload bytes of its piece records.
    pub payload: u64,
    /// Its record count.
    pub records: u64,
    /// The lowest sequence number of its records.
    pub min_seq: u64,
    /// Its records, as appended by this process (`None` for a pack taken up from an earlier
    /// one: sealing reads them back).
    entries: Option<Vec<Entry>>,
}

/// The temporary name a new active pack is made under.
fn creating(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".new");
    PathBuf::from(name)
}

/// Opens the active pack at `path` and takes its lock: `None` when another process owns it.
pub(crate) fn claim(path: &Path) -> io::Result<Option<super::lease::Locked>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    Ok(super::lease::Locked::take(file)?.ok())
}

/// Removes the temporary files of pack creations that a crash cut short: unlocked, and older
/// than `age` (a creation takes milliseconds; a younger file may be one whose creator has not
/// locked it yet).
pub(crate) fn sweep_creations(dir: &Path, age: std::time::Duration) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|e| e >= age);
        if old
            && entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.ends_with(".pack.new"))
            && matches!(claim(&entry.path()), Ok(Some(_)))
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// One record to append: its header with the key, then its payload (the caller's bytes).
pub(crate) struct Appended {
    /// The 32-byte record header followed by the key ([`format::record_head`]).
    pub head: Vec<u8>,
    /// The payload.
    pub payload: Bytes,
}

impl ActivePack {
    /// Creates the active pack `id` in `dir`, owned by this process: made under a temporary
    /// name and locked, the pack header written and made durable, then renamed and the
    /// directory entry made durable (once per pack, so that every later `fdatasync` of the
    /// file makes its appended records findable).
    pub fn create(dir: &Path, id: PackId) -> io::Result<ActivePack> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(super::index::pack_name(id));
        let temp = creating(&path);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&temp)?;
        let made = (|| {
            let file = super::lease::Locked::take(file)?
                .map_err(|_| io::Error::other("a new pack file is locked by another process"))?;
            file.write_all_at(&format::PACK_MAGIC, 0)?;
            file.sync_all()?;
            std::fs::rename(&temp, &path)?;
            File::open(dir)?.sync_all()?;
            Ok(file)
        })();
        let file = match made {
            Ok(file) => file,
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                return Err(e);
            }
        };
        Ok(ActivePack {
            id,
            path,
            file,
            end: format::PACK_MAGIC.len() as u64,
            payload: 0,
            records: 0,
            min_seq: u64::MAX,
            entries: Some(Vec::new()),
        })
    }

    /// Takes up an existing active pack whose whole records end at `end` (found by
    /// recovery's scan), cutting off anything after it (a torn tail). `file` is the pack,
    /// opened and locked by [`claim`] (the caller read `end` from the index after taking the
    /// lock: before, the pack's owner could still have appended to it, or sealed it).
    pub fn resume(
        file: super::lease::Locked,
        path: PathBuf,
        id: PackId,
        end: u64,
        payload: u64,
        records: u64,
        min_seq: u64,
    ) -> io::Result<ActivePack> {
        if file.metadata()?.len() != end {
            file.set_len(end)?;
            file.sync_all()?;
        }
        Ok(ActivePack {
            id,
            path,
            file,
            end,
            payload,
            records,
            min_seq,
            entries: None,
        })
    }

    /// Appends `records` at the end with vectored positioned writes and one `fdatasync`;
    /// returns the offset of the first record. On failure the file is cut back to where the
    /// group began (so a failed group never stays), and the error returned; if even that
    /// fails, the error says so and the pack must not be written again.
    pub fn append(&mut self, records: &[Appended], fsync: bool) -> io::Result<u64> {
        let start = self.end;
        let total: u64 = records
            .iter()
            .map(|r| (r.head.len() + r.payload.len()) as u64)
            .sum();
        let written = write_all_vectored_at(&self.file, records, start)
            .and_then(|()| if fsync { self.file.sync_data() } else { Ok(()) });
        if let Err(e) = written {
            return Err(match self.file.set_len(start) {
                Ok(()) => e,
                Err(cut) => io::Error::other(format!(
                    "{e}; and cutting the failed write off the pack failed too ({cut}): the \
                     pack is left as it is"
                )),
            });
        }
        self.end = start + total;
        Ok(start)
    }

    /// Accounts for records appended (what the index records of the pack).
    pub fn note(&mut self, entries: &[Entry]) {
        if let Some(all) = &mut self.entries {
            all.extend_from_slice(entries);
        }
        for e in entries {
            self.records += 1;
            if e.kind == format::RecordKind::Piece {
                self.payload += e.len;
            }
            self.min_seq = self.min_seq.min(e.seq);
        }
    }

    /// Seals the pack: the footer and trailer of its records appended and made durable (the
    /// records as this process appended them, or, for a pack taken up from an earlier process,
    /// read back and listed by a forward scan). Returns the sealed pack's size and entries.
    /// Nothing may be appended afterwards; the caller keeps the pack (and so its lock) until
    /// the index says it is sealed: another process that took the lock earlier would find an
    /// active pack in the index and cut the footer off as a torn tail.
    pub fn seal(&mut self) -> io::Result<(u64, Vec<Entry>)> {
        if let Some(entries) = self.entries.take() {
            return self.seal_with(entries);
        }
        let mut bytes = vec![0u8; self.end as usize];
        self.file.read_exact_at(&mut bytes, 0)?;
        let scan = format::scan(&bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        if scan.end != self.end || !scan.damaged.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the active pack's records end at {} (with {} damaged), not at {}: not sealing it",
                    scan.end,
                    scan.damaged.len(),
                    self.end
                ),
            ));
        }
        self.seal_with(scan.all_entries())
    }

    fn seal_with(&mut self, entries: Vec<Entry>) -> io::Result<(u64, Vec<Entry>)> {
        let tail = format::footer_and_trailer(&entries, 0);
        self.file.write_all_at(&tail, self.end)?;
        self.file.sync_data()?;
        Ok((self.end + tail.len() as u64, entries))
    }
}

/// `pwritev` until every slice is written.
fn write_all_vectored_at(file: &File, records: &[Appended], mut at: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(records.len() * 2);
    for r in records {
        slices.push(IoSlice::new(&r.head));
        if !r.payload.is_empty() {
            slices.push(IoSlice::new(&r.payload));
        }
    }
    let mut rest: &mut [IoSlice<'_>] = &mut slices;
    while !rest.is_empty() {
        let n = rest.len().min(1024); // IOV_MAX
        // SAFETY: `IoSlice` is ABI-compatible with `iovec`; the slices outlive the call.
        let wrote = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                rest.as_ptr().cast(),
                n as libc::c_int,
                at as libc::off_t,
            )
        };
        if wrote < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if wrote == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "pwritev wrote nothing",
            ));
        }
        at += wrote as u64;
        IoSlice::advance_slices(&mut rest, wrote as usize);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::crc32c;

    fn record(key: &str, seq: u64, data: &[u8]) -> Appended {
        Appended {
            head: format::record_head(
                key,
                format::RecordKind::Piece,
                seq,
                data.len() as u64,
                crc32c(data),
            ),
            payload: Bytes::copy_from_slice(data),
        }
    }

    #[test]
    fn appends_resume_and_seal_into_a_pack_a_reader_lists() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = ActivePack::create(dir.path(), 7).unwrap();
        let at = a
            .append(&[record("a", 1, b"one"), record("b", 2, b"")], true)
            .unwrap();
        assert_eq!(at, 8);
        let end = a.end;
        let path = dir.path().join(super::super::index::pack_name(7));
        // Its owner holds it: nobody else claims (takes up, seals or sweeps) it.
        assert!(claim(&path).unwrap().is_none());
        drop(a);
        // A torn tail after the records is cut off on resume.
        let mut torn = std::fs::read(&path).unwrap();
        torn.extend_from_slice(b"PSR1 half a record");
        std::fs::write(&path, &torn).unwrap();
        let lock = claim(&path).unwrap().expect("its owner is gone");
        let mut a = ActivePack::resume(lock, path.clone(), 7, end, 3, 2, 1).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), end);
        // No temporary file is left, and a stale one of a gone creator is swept.
        let stale = dir.path().join("00000000000000000000000000000009.pack.new");
        std::fs::write(&stale, b"PSPK").unwrap();
        sweep_creations(dir.path(), std::time::Duration::from_secs(60));
        assert!(
            stale.exists(),
            "a new one may be one whose creator has not locked it yet"
        );
        sweep_creations(dir.path(), std::time::Duration::ZERO);
        assert!(!stale.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        a.append(&[record("c", 3, b"three")], true).unwrap();
        let (size, entries) = a.seal().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, size);
        let footer = format::parse_footer(&bytes, size).unwrap();
        assert_eq!(footer.entries.len(), 3);
        assert_eq!(entries.len(), 3);
        let c = footer.entries.iter().find(|e| e.key == "c").unwrap();
        assert_eq!(
            &bytes[c.offset as usize..(c.offset + c.len) as usize],
            b"three"
        );
    }
}
