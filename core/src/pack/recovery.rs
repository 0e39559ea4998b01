//! Opening a shard's index: bringing it up to date with the shard before any operation uses it.
//!
//! 1. Changes of commits that failed in this process go first (the index never skips one).
//! 2. An index made for other contents of the shard (the bucket or directory was wiped or
//!    recreated since: its token differs) is emptied, intents included, and rebuilt.
//! 3. Whether the index knows every object (`META_COMPLETE`) is decided once, when the index
//!    is new: only an index that started on a shard without objects knows all of them.
//! 4. Packs the index does not know are indexed: all of them, from the packs alone, when the
//!    index knows none (a new or lost index); else each, in pack order (a crash between a
//!    pack's write and its commit). A compaction's pack is recorded without its pieces (its
//!    moves never committed); a damaged pack is left for `piecestore fsck`.
//!
//! Other processes may have the shard open meanwhile: a local active pack is replayed, cut,
//! taken up or sealed only while its lock is held here (its owner is gone; see the `active`
//! module), and a rebuild of the whole index holds the compaction lease.
//!
//! Intents (object operations left half-way) are finished afterwards, when the store opens
//! ([`ShardPacker::open`]), or by the next operation on their key.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::active::ActivePack;
use super::index::{self, Change, PackId, PackIndex, PackInfo, PackState};
use super::{ShardPacker, apply, apply_after, format, fsck, pack_changes};
use crate::backend::Backend;
use crate::error::Result;

pub(super) async fn recover(
    packer: &Arc<ShardPacker>,
    backend: &Arc<Backend>,
    index: &Arc<dyn PackIndex>,
) -> Result<()> {
    {
        let mut stuck = packer.commits.lock().await;
        if !stuck.is_empty() {
            apply_after(backend, index, &mut stuck, Vec::new(), false).await?;
        }
    }
    let mut cleared = false;
    if !packer.is_memory() {
        let token = backend.contents_token().await?;
        if index.meta(index::META_TOKEN)? != Some(token) {
            let mut changes = Vec::new();
            if !index.is_empty()? || !index.packs()?.is_empty() || !index.intents()?.is_empty() {
                tracing::warn!(shard = packer.shard, index = %index.describe(), "the index was made for other contents of this shard (wiped or recreated since): rebuilding it from the packs");
                changes.push(Change::Clear { intents: true });
                cleared = true;
            }
            changes.push(Change::SetMeta {
                name: index::META_TOKEN,
                value: token,
            });
            apply(backend, index, changes).await?;
        }
    }
    if cleared || index.meta(index::META_COMPLETE)?.is_none() {
        let fresh = index.is_empty()? && index.packs()?.is_empty();
        let complete = fresh && !backend.has_objects().await?;
        apply(
            backend,
            index,
            vec![Change::SetMeta {
                name: index::META_COMPLETE,
                value: complete as u64,
            }],
        )
        .await?;
    }
    let known: HashSet<PackId> = index.packs()?.into_iter().map(|(id, _)| id).collect();
    let listed = backend.list_packs().await?;
    // A new or lost index over existing packs: rebuilt whole (replaying packs one by one would
    // skip the pieces that live only in compaction's packs). Not over the packs other processes
    // are writing: on a new directory or bucket, another writer's first pack exists before its
    // first commit, and a rebuild from it would both index records it never acknowledged and
    // wipe (`Change::Clear`) what it commits meanwhile (measured: an acknowledged delete came
    // back when four processes started on one new directory).
    let orphans = if known.is_empty() && !listed.is_empty() {
        not_being_written(packer, backend, &listed).await?
    } else {
        Vec::new()
    };
    if !orphans.is_empty() {
        // Once: another process that opened the shard at the same time may have done it.
        let _lease = packer.gc_lease(backend).await?;
        if !index.packs()?.is_empty() {
            return resume_active(packer, backend, index).await;
        }
        let listed = orphans;
        tracing::info!(
            shard = packer.shard,
            packs = listed.len(),
            "building the pack index from the packs"
        );
        let scanned = fsck::scan_packs(backend, &listed).await?;
        let (changes, _) = fsck::rebuild_changes(backend, &scanned).await?;
        apply(backend, index, changes).await?;
        return resume_active(packer, backend, index).await;
    }
    let infos: HashMap<PackId, PackInfo> = index.packs()?.into_iter().collect();
    let local = packer.handles.is_some();
    if let Some(h) = &packer.handles {
        super::active::sweep_creations(h.dir(), std::time::Duration::from_secs(60));
    }
    // On a bucket, a pack the index does not know yet, written in the last minute while other
    // processes have the index open, is most likely one of theirs between its PUT and its
    // commit: theirs to index (or, if its PUT was reported failed, to record as doomed). Left
    // for a later open. (Such a pack of a writer that died was never acknowledged: a process
    // that dies keeps its commits, which reach the shared log without waiting for the disk.)
    let young_others = !local && packer.other_writers();
    for (id, _) in listed {
        let info = infos.get(&id);
        if info.is_some_and(|i| i.state != PackState::Active) {
            continue;
        }
        if info.is_none() && young_others && written_lately(id) {
            continue;
        }
        // A local pack being written by a live process is its owner's to index.
        let _owned = match &packer.handles {
            Some(h) => match super::active::claim(&h.path(id)) {
                Ok(Some(lock)) => Some(lock),
                Ok(None) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(crate::Error::Backend {
                        op: "open",
                        key: None,
                        backend: backend.label().into(),
                        message: format!("opening the pack {}: {e}", index::pack_name(id)),
                        retryable: false,
                    });
                }
            },
            None => None,
        };
        // What the index says now that the lock is held: before, the owner may still have
        // appended to the pack, sealed it, or indexed it.
        let fresh = index.pack(id)?;
        if fresh.is_some_and(|i| i.state != PackState::Active) {
            continue;
        }
        let info = fresh.as_ref();
        let bytes = match backend.read_pack(id).await {
            Ok(bytes) => bytes,
            // Listed, then deleted: another process's compaction removed it once its records
            // had moved (the collector runs while nodes open; measured in the three-node crash
            // test). Nothing in it is left to recover.
            Err(crate::Error::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        if let Some(info) = info {
            // A local active pack: records appended since the index was last durable.
            replay_active(packer, backend, index, id, Some(info), &bytes).await?;
            continue;
        }
        let footer = match format::parse_footer(&bytes, bytes.len() as u64) {
            Ok(f) => f,
            // A pack file cut short while it was created (no whole header: nothing was ever
            // appended to it) holds nothing: removed.
            Err(_) if local && format::PACK_MAGIC.starts_with(&bytes[..]) => {
                tracing::info!(shard = packer.shard, pack = %index::pack_name(id), "removing an active pack whose creation a crash cut short");
                backend.delete_pack(id).await?;
                continue;
            }
            // On a local directory, a pack without a footer is an active pack the index did
            // not know yet (its first group's commit was not durable).
            Err(_) if local && format::scan(&bytes).is_ok() => {
                replay_active(packer, backend, index, id, None, &bytes).await?;
                continue;
            }
            Err(why) => {
                tracing::warn!(shard = packer.shard, pack = %index::pack_name(id), %why, "not indexing a damaged pack; run `piecestore fsck`");
                continue;
            }
        };
        let replay = footer.flags & format::FLAG_COMPACTED == 0;
        let changes = pack_changes(id, &bytes, &footer.entries, replay);
        tracing::info!(shard = packer.shard, pack = %index::pack_name(id), records = footer.entries.len(), "indexing a pack the index did not know");
        apply(backend, index, changes).await?;
    }
    if local {
        resume_active(packer, backend, index).await?;
    }
    Ok(())
}

/// Whether pack `id` was made in the last minute: on a bucket others have the index open, most
/// likely one of theirs between its PUT and its commit (theirs to index).
fn written_lately(id: PackId) -> bool {
    super::now_ms().saturating_sub(index::pack_millis(id)) < 60_000
}

/// The packs of `listed` no live process is writing: on a local directory, those whose lock
/// can be taken (an active pack's owner holds its lock from before its first byte until the
/// index says it is sealed); on a bucket, while other processes have the index open, those
/// older than a minute (a younger one is most likely theirs, between its PUT and its commit).
async fn not_being_written(
    packer: &Arc<ShardPacker>,
    backend: &Arc<Backend>,
    listed: &[(PackId, u64)],
) -> Result<Vec<(PackId, u64)>> {
    let Some(h) = &packer.handles else {
        if !packer.other_writers() {
            return Ok(listed.to_vec());
        }
        return Ok(listed
            .iter()
            .filter(|(id, _)| !written_lately(*id))
            .copied()
            .collect());
    };
    let paths: Vec<_> = listed.iter().map(|(id, _)| (*id, h.path(*id))).collect();
    let free = tokio::task::spawn_blocking(move || {
        paths
            .into_iter()
            .filter_map(|(id, path)| match super::active::claim(&path) {
                Ok(Some(_lock)) => Some(id),
                Ok(None) => None,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                // Not to be opened for writing here (a read-only directory): rebuilt from, as
                // before.
                Err(_) => Some(id),
            })
            .collect::<HashSet<PackId>>()
    })
    .await
    .map_err(|e| super::join_err(backend, e))?;
    Ok(listed
        .iter()
        .filter(|(id, _)| free.contains(id))
        .copied()
        .collect())
}

/// Indexes the records of a local active pack past the end its durable index knows (`info`;
/// `None`: the index does not know the pack), in order, and cuts off a torn tail: a record
/// cut by the crash, or a damaged one after the last whole record (never acknowledged).
async fn replay_active(
    packer: &Arc<ShardPacker>,
    backend: &Arc<Backend>,
    index: &Arc<dyn PackIndex>,
    id: PackId,
    info: Option<&PackInfo>,
    bytes: &[u8],
) -> Result<()> {
    let base = info.map_or(format::PACK_MAGIC.len() as u64, |i| i.size);
    let scan = format::scan_from(bytes, base);
    let last_whole = scan.entries.iter().map(|e| e.offset).max().unwrap_or(0);
    let end = scan
        .damaged
        .iter()
        .filter(|(e, _)| e.offset > last_whole)
        .map(|(e, _)| e.offset - (e.key.len() + format::RECORD_HEADER) as u64)
        .min()
        .unwrap_or(scan.end);
    let mut changes = Vec::new();
    let (mut payload, mut records, mut min_seq) =
        info.map_or((0, 0, u64::MAX), |i| (i.payload, i.records, i.min_seq));
    if info.is_none() {
        changes.push(Change::AddPack {
            id,
            info: PackInfo::new_active(base),
        });
    }
    let mut kept: Vec<_> = scan
        .entries
        .iter()
        .chain(scan.damaged.iter().map(|(e, _)| e))
        .filter(|e| e.offset < end)
        .collect();
    kept.sort_by_key(|e| e.offset);
    let mut max_seq = 0;
    for e in &kept {
        records += 1;
        min_seq = min_seq.min(e.seq);
        max_seq = max_seq.max(e.seq);
        if e.kind == format::RecordKind::Piece {
            payload += e.len;
        }
    }
    // Only whole, verified records are indexed (a damaged one is fsck's to report).
    changes.extend(
        pack_changes(id, bytes, &scan.entries, true)
            .into_iter()
            .skip(2)
            .filter(|c| match c {
                Change::Put {
                    slot: index::Slot::Packed(l),
                    ..
                } => l.offset < end,
                _ => true,
            }),
    );
    changes.push(Change::PackGrew {
        id,
        size: end,
        payload,
        records,
        min_seq,
    });
    changes.push(Change::BumpSeq(max_seq));
    if (bytes.len() as u64) > end
        && let Some(h) = &packer.handles
    {
        tracing::info!(shard = packer.shard, pack = %index::pack_name(id), at = end, "cutting a torn tail off the active pack");
        let path = h.path(id);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| {
                f.set_len(end)?;
                f.sync_all()
            })
            .map_err(|e| crate::Error::Backend {
                op: "open",
                key: None,
                backend: backend.label().into(),
                message: format!("cutting the torn tail of {}: {e}", path.display()),
                retryable: false,
            })?;
    }
    if !kept.is_empty() || info.is_none() {
        tracing::info!(shard = packer.shard, pack = %index::pack_name(id), records = kept.len(), "indexing records appended to the active pack since the index was durable");
    }
    apply(backend, index, changes).await.map(drop)
}

/// Takes up the newest active pack of a local directory whose owner is gone, so that write
/// groups go on being appended to it (and short-lived processes do not leave a pack each);
/// seals the others whose owners are gone (and a full one). Packs of live processes are
/// theirs.
async fn resume_active(
    packer: &Arc<ShardPacker>,
    backend: &Arc<Backend>,
    index: &Arc<dyn PackIndex>,
) -> Result<()> {
    let Some(h) = &packer.handles else {
        return Ok(());
    };
    let mut actives: Vec<(PackId, PackInfo)> = index
        .packs()?
        .into_iter()
        .filter(|(_, i)| i.state == PackState::Active)
        .collect();
    actives.sort_by_key(|(id, _)| std::cmp::Reverse(*id));
    let mut taken = packer.active.lock().await.is_some();
    let io = |e: std::io::Error| crate::Error::Backend {
        op: "open",
        key: None,
        backend: backend.label().into(),
        message: format!("taking up the active pack: {e}"),
        retryable: false,
    };
    for (id, _) in actives {
        let path = h.path(id);
        let claimed = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || super::active::claim(&path))
                .await
                .map_err(|e| super::join_err(backend, e))?
        };
        let lock = match claimed {
            Ok(Some(lock)) => lock,
            Ok(None) => continue, // a live process's
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(e)),
        };
        // Read with the lock held: until then its owner may have appended to it or sealed it.
        let Some(info) = index.pack(id)?.filter(|i| i.state == PackState::Active) else {
            continue;
        };
        let resume = move || {
            ActivePack::resume(
                lock,
                path,
                id,
                info.size,
                info.payload,
                info.records,
                info.min_seq,
            )
        };
        let pack = tokio::task::spawn_blocking(resume)
            .await
            .map_err(|e| super::join_err(backend, e))?
            .map_err(io)?;
        if !taken && info.size < packer.opts.target_size {
            *packer.active.lock().await = Some(pack);
            taken = true;
            continue;
        }
        let mut pack = pack;
        let (sealed, pack) = tokio::task::spawn_blocking(move || (pack.seal(), pack))
            .await
            .map_err(|e| super::join_err(backend, e))?;
        let sealed = sealed.map_err(io)?;
        apply(backend, index, vec![Change::Seal { id, size: sealed.0 }]).await?;
        drop(pack); // its lock, once the index says it is sealed
    }
    Ok(())
}
