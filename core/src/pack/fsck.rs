//! `fsck`: verify every pack and every index entry, every piece stored as an object of its own,
//! and rebuild the index from the packs.

use std::collections::HashMap;
use std::sync::Arc;

use super::format::{self, Entry, RecordKind};
use super::index::{self, Change, Loc, PackId, PackInfo, PackState, Slot};
use super::{ShardPacker, index_get, join_err, pack_info};
use crate::backend::Backend;
use crate::error::{Error, Result};

/// Options of [`PieceStore::fsck`](crate::PieceStore::fsck).
#[derive(Debug, Clone, Copy, Default)]
pub struct FsckOptions {
    /// Rebuild each shard's index from its packs alone (after checking), then check again.
    pub rebuild_index: bool,
}

/// One thing fsck found wrong.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FsckProblem {
    /// The shard.
    pub shard: usize,
    /// The pack object's name, when the problem is in or about a pack.
    pub pack: Option<String>,
    /// The piece key, when one piece is concerned.
    pub key: Option<String>,
    /// What is wrong.
    pub what: String,
}

impl std::fmt::Display for FsckProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shard {}", self.shard)?;
        if let Some(p) = &self.pack {
            write!(f, ", pack {p}")?;
        }
        if let Some(k) = &self.key {
            write!(f, ", piece {k:?}")?;
        }
        write!(f, ": {}", self.what)
    }
}

/// What fsck checked and found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FsckReport {
    /// Pack objects read.
    pub packs: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Records (pieces and tombstones) verified.
    pub records: u64,
    /// Index entries checked.
    pub entries: u64,
    /// Packed pieces (index entries of pieces in packs) checked against their packs' records.
    pub packed_pieces: u64,
    /// Pieces stored as objects of their own (at least `Pack.Threshold`, or written before
    /// packing was on) read whole and verified against their checksums.
    pub objects: u64,
    /// Their bytes.
    pub object_bytes: u64,
    /// Of those objects, pieces that carry no checksum and that the index does not know
    /// either: read, but their bytes could not be verified.
    pub objects_unverified: u64,
    /// What is wrong (after the rebuild, when one ran).
    pub problems: Vec<FsckProblem>,
    /// Problems found before the rebuild, when one ran.
    pub problems_before_rebuild: Option<Vec<FsckProblem>>,
    /// Pieces indexed by the rebuild, when one ran.
    pub rebuilt_pieces: Option<u64>,
}

impl FsckReport {
    /// Whether nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// Adds another shard's report.
    pub fn add(&mut self, o: FsckReport) {
        self.packs += o.packs;
        self.bytes += o.bytes;
        self.records += o.records;
        self.entries += o.entries;
        self.packed_pieces += o.packed_pieces;
        self.objects += o.objects;
        self.object_bytes += o.object_bytes;
        self.objects_unverified += o.objects_unverified;
        self.problems.extend(o.problems);
        if let Some(b) = o.problems_before_rebuild {
            self.problems_before_rebuild
                .get_or_insert_with(Vec::new)
                .extend(b);
        }
        if let Some(n) = o.rebuilt_pieces {
            *self.rebuilt_pieces.get_or_insert(0) += n;
        }
    }
}

/// What one pack holds, as read by fsck.
pub(crate) struct Scanned {
    size: u64,
    /// Whether it has a valid footer (else: an active pack, or a damaged one).
    sealed: bool,
    /// Where its whole records end.
    end: u64,
    /// Every record (from the footer, or from a forward scan when the footer is damaged).
    entries: Vec<Entry>,
    /// Tombstone targets by record index.
    targets: HashMap<usize, u64>,
}

/// Reads packs `ids` for a rebuild: their entries (footer, or a forward scan of a pack whose
/// footer is damaged) and tombstone targets.
pub(crate) async fn scan_packs(
    backend: &Arc<Backend>,
    ids: &[(PackId, u64)],
) -> Result<HashMap<PackId, Scanned>> {
    let mut out = HashMap::new();
    for (id, _) in ids {
        let bytes = match backend.read_pack(*id).await {
            Ok(b) => b,
            Err(crate::Error::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        let (entries, sealed) = match format::parse_footer(&bytes, bytes.len() as u64) {
            Ok(f) => (f.entries, true),
            Err(_) => match format::scan(&bytes) {
                Ok(s) => (s.all_entries(), false),
                Err(_) => continue,
            },
        };
        out.insert(*id, scanned(&bytes, entries, sealed));
    }
    Ok(out)
}

fn scanned(bytes: &[u8], entries: Vec<Entry>, sealed: bool) -> Scanned {
    let targets = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind == RecordKind::Tombstone)
        .filter_map(|(i, e)| {
            let p = bytes.get(e.offset as usize..(e.offset + e.len) as usize)?;
            Some((i, format::tombstone_target(p)?))
        })
        .collect();
    let end = if sealed {
        bytes.len() as u64
    } else {
        entries
            .iter()
            .map(|e| e.offset + e.len)
            .max()
            .unwrap_or(format::PACK_MAGIC.len() as u64)
    };
    Scanned {
        size: bytes.len() as u64,
        sealed,
        end,
        entries,
        targets,
    }
}

/// Checks one shard; with `rebuild`, rebuilds its index from the packs and checks again.
pub(crate) async fn fsck_shard(
    packer: &Arc<ShardPacker>,
    backend: &Arc<Backend>,
    shard: usize,
    opts: &FsckOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<FsckReport> {
    let _one = packer.gc_lease(backend).await?;
    let mut _alone = None;
    if opts.rebuild_index {
        // Not while another process has the store open: a rebuild replaces the whole index in
        // one transaction, and would drop what that process indexes meanwhile. Processes that
        // open the store during the rebuild wait for it.
        packer.index(backend).await?;
        _alone = packer.exclusive()?;
        if _alone.is_none() {
            return Err(Error::Backend {
                op: "fsck",
                key: None,
                backend: backend.label().into(),
                message: format!(
                    "shard {shard}: another process has the store open; close it before                      rebuilding the index (a check without --rebuild-index runs alongside it)"
                ),
                retryable: true,
            });
        }
    }
    let (mut report, mut scanned) = check(packer, backend, shard, progress).await?;
    // The pieces stored as objects of their own, once: a rebuild does not touch them (its
    // index looks them up in the shard), so what is wrong with them is still wrong after it.
    let base = report.bytes;
    let objects = check_objects(packer, backend, shard, &|n| progress(base + n)).await?;
    if !opts.rebuild_index {
        report.add(objects);
        return Ok(report);
    }
    let index = packer.index(backend).await?;
    let pieces = {
        // No commit between the last look at the packs and the rebuild: a put indexed since
        // the scan is in a pack that the second listing finds, or in an active pack, read
        // again now.
        let mut stuck = packer.commits.lock().await;
        // An active pack may have grown since it was read: read it again too.
        scanned.retain(|_, s| s.sealed);
        let new: Vec<(PackId, u64)> = backend
            .list_packs()
            .await?
            .into_iter()
            .filter(|(id, _)| !scanned.contains_key(id))
            .collect();
        scanned.extend(scan_packs(backend, &new).await?);
        let (changes, pieces) = rebuild_changes(backend, &scanned).await?;
        super::apply_after(backend, &index, &mut stuck, changes, false).await?;
        pieces
    };
    packer.refresh_complete(&index)?;
    let (mut after, _) = check(packer, backend, shard, &|_| {}).await?;
    after.problems_before_rebuild = Some(std::mem::take(&mut report.problems));
    after.rebuilt_pieces = Some(pieces);
    after.add(objects);
    Ok(after)
}

async fn check(
    packer: &Arc<ShardPacker>,
    backend: &Arc<Backend>,
    shard: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(FsckReport, HashMap<PackId, Scanned>)> {
    let index = packer.index(backend).await?;
    let mut report = FsckReport::default();
    let problem = |pack: Option<PackId>, key: Option<&str>, what: String| FsckProblem {
        shard,
        pack: pack.map(index::pack_name),
        key: key.map(str::to_string),
        what,
    };
    let mut scanned: HashMap<PackId, Scanned> = HashMap::new();
    // Active packs (appended to while fsck runs) are read after the index snapshot below, so
    // that every record the snapshot knows is in what is read.
    let at_start: HashMap<PackId, PackInfo> = index.packs()?.into_iter().collect();
    // Packs without a footer that the index did not know at the start: a local active pack
    // created since (a writer sealed the last one and started another), or a damaged pack.
    // Decided once the snapshot is taken.
    let mut unfooted = Vec::new();
    for (id, _) in backend.list_packs().await? {
        if at_start
            .get(&id)
            .is_some_and(|i| i.state == PackState::Active)
        {
            continue;
        }
        let bytes = match backend.read_pack(id).await {
            Ok(b) => b,
            Err(crate::Error::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        if !at_start.contains_key(&id)
            && packer.handles.is_some()
            && format::parse_footer(&bytes, bytes.len() as u64).is_err()
        {
            unfooted.push((id, bytes));
            continue;
        }
        scan_into(&mut report, &mut scanned, shard, id, &bytes, true);
        progress(report.bytes);
    }
    // The index at one moment (writes may go on while fsck runs).
    let (packs, entries) = {
        let index = Arc::clone(&index);
        tokio::task::spawn_blocking(move || index.snapshot())
            .await
            .map_err(|e| join_err(backend, e))??
    };
    let packs: HashMap<PackId, PackInfo> = packs.into_iter().collect();
    for (id, info) in &packs {
        if scanned.contains_key(id) || matches!(info.state, PackState::Doomed { .. }) {
            continue;
        }
        // Active; or written and indexed since the listing; or missing.
        let sealed = info.state == PackState::Live;
        match backend.read_pack(*id).await {
            Ok(bytes) => {
                scan_into(&mut report, &mut scanned, shard, *id, &bytes, sealed);
                progress(report.bytes);
            }
            Err(crate::Error::NotFound { .. }) => report.problems.push(problem(
                Some(*id),
                None,
                format!(
                    "the index lists this pack ({} live pieces) but it is missing",
                    info.live_count
                ),
            )),
            Err(e) => return Err(e),
        }
    }
    for (id, bytes) in unfooted {
        if scanned.contains_key(&id) {
            continue; // the snapshot knows it (active): read again above
        }
        if index.pack(id)?.is_some() {
            // Started after the snapshot (and maybe sealed since): none of it is in the
            // snapshot this check compares with.
            continue;
        }
        scan_into(&mut report, &mut scanned, shard, id, &bytes, true);
        progress(report.bytes);
    }
    for id in scanned.keys() {
        if !packs.contains_key(id) {
            report.problems.push(problem(
                Some(*id),
                None,
                "the pack is not in the index (orphan); `fsck --rebuild-index` indexes it".into(),
            ));
        }
    }
    let mut live: HashMap<PackId, (u64, u64)> = HashMap::new();
    let at: HashMap<PackId, HashMap<u64, &Entry>> = scanned
        .iter()
        .map(|(id, s)| (*id, s.entries.iter().map(|e| (e.offset, e)).collect()))
        .collect();
    for (key, slot) in entries {
        report.entries += 1;
        let Slot::Packed(loc) = slot else { continue };
        report.packed_pieces += 1;
        let l = live.entry(loc.pack).or_default();
        l.0 += loc.len;
        l.1 += 1;
        let found = at.get(&loc.pack).and_then(|m| m.get(&loc.offset));
        let ok = found.is_some_and(|e| {
            e.key == key && e.len == loc.len && e.crc == loc.crc && e.kind == RecordKind::Piece
        });
        if !ok {
            let what = if scanned.contains_key(&loc.pack) {
                format!(
                    "dangling index entry: the pack holds no such piece at offset {}",
                    loc.offset
                )
            } else {
                "dangling index entry: its pack is missing".to_string()
            };
            report
                .problems
                .push(problem(Some(loc.pack), Some(&key), what));
        }
    }
    for (id, info) in &packs {
        let (bytes, count) = live.get(id).copied().unwrap_or_default();
        if (bytes, count) != (info.live_bytes, info.live_count) {
            report.problems.push(problem(
                Some(*id),
                None,
                format!(
                    "the index counts {} live pieces ({} bytes) in this pack, its entries say {count} ({bytes} bytes)",
                    info.live_count, info.live_bytes
                ),
            ));
        }
    }
    Ok((report, scanned))
}

/// Reads every piece of the shard stored as an object of its own and verifies it, as a get
/// does ([`Backend::get`]: against the checksum stored with it), and against what the index
/// records of it (length and CRC32C). The pieces are those the shard lists (a leftover object
/// of a key the index holds as a packed piece is not the piece, and is skipped) and those the
/// index records as objects (one it records but the shard does not hold is missing).
/// `progress` gets the object bytes read so far. The report holds the object counts and
/// problems only.
async fn check_objects(
    packer: &Arc<ShardPacker>,
    backend: &Arc<Backend>,
    shard: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<FsckReport> {
    use futures::TryStreamExt;
    let index = packer.index(backend).await?;
    let mut report = FsckReport::default();
    let mut keys: Vec<String> = backend.list("").map_ok(|m| m.key).try_collect().await?;
    // Objects the index records that the listing did not show: read too (missing, or written
    // since the listing).
    let listed: std::collections::HashSet<&str> = keys.iter().map(String::as_str).collect();
    let recorded: Vec<String> = {
        let index = Arc::clone(&index);
        tokio::task::spawn_blocking(move || index.range(""))
            .await
            .map_err(|e| join_err(backend, e))??
            .into_iter()
            .filter(|(k, s)| matches!(s, Slot::Object { .. }) && !listed.contains(k.as_str()))
            .map(|(k, _)| k)
            .collect()
    };
    keys.extend(recorded);
    for key in keys {
        let slot = index_get(&index, &key).await?;
        if matches!(slot, Some(Slot::Packed(_))) {
            continue; // a leftover of an overwrite: the piece is the packed one
        }
        let problem = |what: String| FsckProblem {
            shard,
            pack: None,
            key: Some(key.clone()),
            what,
        };
        match backend.get(&key).await {
            Ok((bytes, own)) => {
                report.objects += 1;
                report.object_bytes += bytes.len() as u64;
                progress(report.object_bytes);
                let Some(Slot::Object { len, crc, .. }) = slot else {
                    if own.is_none() {
                        report.objects_unverified += 1;
                    }
                    continue;
                };
                let actual = own.unwrap_or_else(|| crate::checksum::crc32c(&bytes));
                let size = bytes.len() as u64;
                // Unless it was overwritten since it was looked up.
                if (size, actual) != (len, crc) && index_get(&index, &key).await? == slot {
                    report.problems.push(problem(format!(
                        "the piece's object holds {size} bytes with crc32c {actual}, the index \
                         records {len} bytes with crc32c {crc}"
                    )));
                }
            }
            Err(Error::Corrupt { detail, .. }) => {
                report.objects += 1;
                report.object_bytes += slot.map_or(0, |s| s.len());
                report.problems.push(problem(format!(
                    "the piece (an object of its own) is corrupt: {detail}"
                )));
            }
            // Deleted since the listing; missing when the index still records it.
            Err(Error::NotFound { .. }) => {
                if slot.is_some() && index_get(&index, &key).await? == slot {
                    report.problems.push(problem(
                        "the index records this piece as an object of its own, but the object \
                         is missing"
                            .into(),
                    ));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(report)
}

/// Checks one pack's bytes (records, footer) into `report` and keeps what it holds in
/// `scanned`.
fn scan_into(
    report: &mut FsckReport,
    scanned: &mut HashMap<PackId, Scanned>,
    shard: usize,
    id: PackId,
    bytes: &[u8],
    expect_footer: bool,
) {
    let problem = |key: Option<&str>, what: String| FsckProblem {
        shard,
        pack: Some(index::pack_name(id)),
        key: key.map(str::to_string),
        what,
    };
    report.packs += 1;
    report.bytes += bytes.len() as u64;
    let footer = format::parse_footer(bytes, bytes.len() as u64);
    let scan = match format::scan(bytes) {
        Ok(s) => s,
        Err(why) => {
            report
                .problems
                .push(problem(None, format!("the pack {why}")));
            return;
        }
    };
    for (e, actual) in &scan.damaged {
        report.problems.push(problem(
            Some(&e.key),
            format!(
                "{} at offset {} is corrupt: crc32c is {actual}, expected {}",
                if e.kind == RecordKind::Piece {
                    "piece"
                } else {
                    "tombstone"
                },
                e.offset,
                e.crc
            ),
        ));
    }
    report.records += (scan.entries.len() + scan.damaged.len()) as u64;
    let from_scan = scan.all_entries();
    let sealed = footer.is_ok();
    let entries = match footer {
        Ok(f) => {
            let mut a: Vec<_> = f
                .entries
                .iter()
                .map(|e| (e.offset, e.len, e.crc, &e.key))
                .collect();
            let mut b: Vec<_> = from_scan
                .iter()
                .map(|e| (e.offset, e.len, e.crc, &e.key))
                .collect();
            a.sort();
            b.sort();
            if a != b {
                report
                    .problems
                    .push(problem(None, "the footer and the records disagree".into()));
            }
            f.entries
        }
        // An active pack has no footer yet (and may end in a group being written).
        Err(_) if !expect_footer => from_scan,
        Err(why) => {
            report
                .problems
                .push(problem(None, format!("the pack {why}")));
            from_scan
        }
    };
    scanned.insert(id, self::scanned(bytes, entries, sealed));
}

/// The changes that rebuild the index from the packs alone, in one transaction: everything
/// forgotten (intents and the sequence counter aside), then each pack, then each key's newest
/// write unless a newer tombstone deletes it; the counter raised past every record. Returns
/// them and the number of pieces indexed.
pub(crate) async fn rebuild_changes(
    backend: &Arc<Backend>,
    scanned: &HashMap<PackId, Scanned>,
) -> Result<(Vec<Change>, u64)> {
    let local = backend.is_local();
    let mut ids: Vec<&PackId> = scanned.keys().collect();
    ids.sort();
    let mut best: HashMap<&str, Loc> = HashMap::new();
    let mut dead: HashMap<&str, u64> = HashMap::new();
    let mut max_seq = 0;
    for id in &ids {
        let s = &scanned[id];
        for (i, e) in s.entries.iter().enumerate() {
            max_seq = max_seq.max(e.seq);
            match e.kind {
                RecordKind::Piece => {
                    let loc = Loc {
                        pack: **id,
                        offset: e.offset,
                        len: e.len,
                        crc: e.crc,
                        seq: e.seq,
                    };
                    // Equal seq: a compaction's copy, in a newer pack; the copy wins.
                    if best.get(e.key.as_str()).is_none_or(|b| b.seq <= e.seq) {
                        best.insert(&e.key, loc);
                    }
                }
                RecordKind::Tombstone => {
                    if let Some(upto) = s.targets.get(&i) {
                        let d = dead.entry(&e.key).or_default();
                        *d = (*d).max(*upto);
                    }
                }
            }
        }
    }
    let mut changes = vec![Change::Clear { intents: false }];
    for id in &ids {
        let s = &scanned[id];
        // On a local directory a pack without a footer is an active pack.
        let mut info = pack_info(s.size, &s.entries);
        if local && !s.sealed {
            info.state = PackState::Active;
            info.size = s.end;
        }
        changes.push(Change::AddPack { id: **id, info });
    }
    let mut pieces = 0;
    for (key, loc) in best {
        if dead.get(key).is_some_and(|d| *d >= loc.seq) {
            continue;
        }
        pieces += 1;
        changes.push(Change::Put {
            key: key.to_string(),
            slot: Slot::Packed(loc),
        });
    }
    changes.push(Change::BumpSeq(max_seq));
    let complete = !backend.has_objects().await?;
    changes.push(Change::SetMeta {
        name: index::META_COMPLETE,
        value: complete as u64,
    });
    Ok((changes, pieces))
}
