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
//! Intents (object operations left half-way) are finished afterwards, when the store opens
//! ([`ShardPacker::open`]), or by the next operation on their key.

use std::collections::HashSet;
use std::sync::Arc;

use super::index::{self, Change, PackId, PackIndex};
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
            apply_after(backend, index, &mut stuck, Vec::new()).await?;
        }
    }
    let mut cleared = false;
    if packer.index_path.is_some() {
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
    if known.is_empty() && !listed.is_empty() {
        // A new or lost index over existing packs: rebuild it whole (replaying packs one by one
        // would skip the pieces that live only in compaction's packs).
        tracing::info!(
            shard = packer.shard,
            packs = listed.len(),
            "building the pack index from the packs"
        );
        let scanned = fsck::scan_packs(backend, &listed).await?;
        let (changes, _) = fsck::rebuild_changes(backend, &scanned).await?;
        apply(backend, index, changes).await?;
        return Ok(());
    }
    for (id, _) in listed {
        if known.contains(&id) {
            continue;
        }
        let bytes = backend.read_pack(id).await?;
        let footer = match format::parse_footer(&bytes, bytes.len() as u64) {
            Ok(f) => f,
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
    Ok(())
}
