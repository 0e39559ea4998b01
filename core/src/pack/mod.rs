//! Small-piece aggregation: packs, their index, compaction and checks.
//!
//! A shard's small pieces are appended to its open pack ([`format::PackBuilder`]); the pack is
//! sealed at `TargetSize` or `MaxAge` and written as one object under `.piecestore/packs/`.
//! Then, in one transaction, the index learns where each piece is; then every put that waited
//! on the pack returns. Concurrent puts share one write (group commit).
//!
//! The order of durability: pack first, then index, then the acknowledgement. A crash between
//! the first two leaves a sealed pack the index does not know: opening the store re-indexes it
//! (its puts were never acknowledged, but nothing is half-visible either: a pack object exists
//! whole or not at all, on S3 by PUT semantics, on disk by fsync + rename).
//!
//! Deletes append a tombstone (durable in the packs, so a rebuilt index does not resurrect the
//! piece). Compaction ([`gc`]) copies live pieces into a new pack, makes it durable, moves each
//! index entry with a compare-and-swap, and deletes the old pack only after a grace period;
//! a read that meets a vanished pack looks the piece up again.

pub mod format;
pub mod fsck;
pub mod gc;
pub mod index;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::watch;

use self::format::{Entry, PackBuilder, RecordKind};
use self::index::{Change, Loc, PackId, PackIndex, PackInfo, PackState, RedbIndex, Slot};
use crate::backend::{Backend, PieceMeta};
use crate::config::PackOptions;
use crate::error::{Error, Result};

/// How long opening an index waits for another process to close it.
const INDEX_WAIT: Duration = Duration::from_secs(10);

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

/// A new pack id: the time in its top 48 bits, then 80 bits that differ between packs and
/// processes.
pub(crate) fn new_pack_id() -> PackId {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(n);
    h.write_u32(std::process::id());
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    let random = ((h.finish() as u128) << 16) | (n as u128 & 0xffff);
    ((now_ms() as u128) << 80) | (random & ((1u128 << 80) - 1))
}

/// The outcome of sealing a pack, shared by every put that waits on it.
type Outcome = Option<std::result::Result<(), (bool, String)>>;

/// A write waiting to become durable.
#[derive(Debug)]
struct Pending {
    crc: u32,
    len: u64,
    tombstone: bool,
    done: watch::Receiver<Outcome>,
    pack: PackId,
}

#[derive(Debug)]
struct OpenPack {
    id: PackId,
    builder: PackBuilder,
    done: watch::Sender<Outcome>,
}

#[derive(Debug, Default)]
struct State {
    open: Option<OpenPack>,
    /// Keys whose write is in an open or sealing pack, until the index has them.
    inflight: HashMap<String, Pending>,
}

impl State {
    /// What a put of `data` (checksum `crc`) finds, with the state locked: the same write in
    /// flight (wait for it), the same piece stored (done), a conflict (`AlreadyExists`), or
    /// nothing in its way. A delete in flight counts as the key being gone.
    fn precheck(
        &self,
        backend: &Backend,
        index: &Arc<dyn PackIndex>,
        key: &str,
        data: &[u8],
        crc: u32,
        overwrite: bool,
    ) -> Result<Precheck> {
        let len = data.len() as u64;
        match self.inflight.get(key) {
            Some(p) if p.tombstone => return Ok(Precheck::Go),
            Some(p) if p.crc == crc && p.len == len => return Ok(Precheck::Wait(p.done.clone())),
            Some(_) if !overwrite => return Err(already_exists(backend, key)),
            _ => {}
        }
        if !overwrite && let Some(slot) = index.get(key)? {
            return same_or_exists(backend, key, slot.len(), Some(slot.crc()), data, crc)
                .map(|()| Precheck::Same);
        }
        Ok(Precheck::Go)
    }
}

/// The packer of one shard: its open pack and its index.
#[derive(Debug)]
pub(crate) struct ShardPacker {
    shard: usize,
    opts: PackOptions,
    /// Where the index file is; `None`: in memory.
    index_path: Option<PathBuf>,
    /// The open index; `None` before the first operation and after `close`.
    index: Mutex<Option<Arc<dyn PackIndex>>>,
    /// Serializes opening the index.
    opening: tokio::sync::Mutex<()>,
    state: Mutex<State>,
    seq: AtomicU64,
    /// The index's `META_COMPLETE`: every piece of the shard is in it (read at open and after
    /// a rebuild, not on every put).
    complete: AtomicBool,
    /// One compaction per shard at a time.
    pub(crate) gc_lock: tokio::sync::Mutex<()>,
}

/// A key reserved while its object is written. Dropped without [`Reservation::finish`] (the
/// put was cancelled), it still frees the key and tells whoever waits.
struct Reservation {
    packer: Arc<ShardPacker>,
    id: PackId,
    done: watch::Sender<Outcome>,
}

impl Reservation {
    fn finish(self, outcome: std::result::Result<(), (bool, String)>) {
        self.packer.lock().inflight.retain(|_, p| p.pack != self.id);
        let _ = self.done.send(Some(outcome));
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.done.borrow().is_none() {
            self.packer.lock().inflight.retain(|_, p| p.pack != self.id);
            let _ = self
                .done
                .send(Some(Err((true, "the put was cancelled".to_string()))));
        }
    }
}

/// What a put finds before it writes (`State::precheck`).
enum Precheck {
    /// Already stored with the same bytes (a retried put).
    Same,
    /// The same write is in flight: wait for it.
    Wait(watch::Receiver<Outcome>),
    /// Nothing in the way: go ahead.
    Go,
}

impl ShardPacker {
    pub(crate) fn new(shard: usize, opts: PackOptions, index_path: Option<PathBuf>) -> Self {
        ShardPacker {
            shard,
            opts,
            index_path,
            index: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
            state: Mutex::new(State::default()),
            seq: AtomicU64::new(0),
            complete: AtomicBool::new(false),
            gc_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Pieces smaller than this are packed.
    pub(crate) fn threshold(&self) -> u64 {
        self.opts.threshold
    }

    /// The options.
    pub(crate) fn opts(&self) -> &PackOptions {
        &self.opts
    }

    /// The shard's index, opened (and recovered) on first use.
    pub(crate) async fn index(&self, backend: &Arc<Backend>) -> Result<Arc<dyn PackIndex>> {
        if let Some(i) = self.index_now() {
            return Ok(i);
        }
        let _opening = self.opening.lock().await;
        if let Some(i) = self.index_now() {
            return Ok(i);
        }
        let path = self.index_path.clone();
        let index: Arc<dyn PackIndex> = tokio::task::spawn_blocking(move || match path {
            Some(p) => RedbIndex::open(&p, INDEX_WAIT).map(|i| Arc::new(i) as _),
            None => RedbIndex::in_memory().map(|i| Arc::new(i) as _),
        })
        .await
        .map_err(|e| join_err(backend, e))??;
        self.recover(backend, &index).await?;
        self.refresh_complete(&index)?;
        let max = index.meta(index::META_MAX_SEQ)?.unwrap_or(0);
        self.seq.fetch_max(max, Ordering::Relaxed);
        *self.index.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&index));
        Ok(index)
    }

    /// Rereads whether the index knows every piece (after it was rebuilt).
    pub(crate) fn refresh_complete(&self, index: &Arc<dyn PackIndex>) -> Result<()> {
        let complete = index.meta(index::META_COMPLETE)? == Some(1);
        self.complete.store(complete, Ordering::Relaxed);
        Ok(())
    }

    fn index_now(&self) -> Option<Arc<dyn PackIndex>> {
        self.index.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Lets go of a file index (on `close`), so another store (or process) may open it. A
    /// memory index is kept: it holds the pieces.
    pub(crate) fn release(&self) {
        if self.index_path.is_some() {
            self.index.lock().unwrap_or_else(|p| p.into_inner()).take();
        }
    }

    /// Brings a freshly opened index up to date with the shard: marks whether it knows every
    /// piece, and indexes sealed packs it does not know (a crash after a pack was written and
    /// before its index commit).
    async fn recover(&self, backend: &Arc<Backend>, index: &Arc<dyn PackIndex>) -> Result<()> {
        if self.index_path.is_some() {
            let token = backend.contents_token().await?;
            if index.meta(index::META_TOKEN)? != Some(token) {
                if !index.is_empty()? || !index.packs()?.is_empty() {
                    tracing::warn!(shard = self.shard, index = %index.describe(), "the index was made for other contents of this shard (wiped or recreated since): rebuilding it from the packs");
                    index.clear()?;
                }
                commit(
                    backend,
                    index,
                    vec![Change::SetMeta {
                        name: index::META_TOKEN,
                        value: token,
                    }],
                )
                .await?;
            }
        }
        if index.meta(index::META_COMPLETE)?.is_none() {
            let fresh = index.is_empty()? && index.packs()?.is_empty();
            let complete = fresh && !backend.has_objects().await?;
            commit(
                backend,
                index,
                vec![Change::SetMeta {
                    name: index::META_COMPLETE,
                    value: complete as u64,
                }],
            )
            .await?;
        }
        let known: std::collections::HashSet<PackId> =
            index.packs()?.into_iter().map(|(id, _)| id).collect();
        let listed = backend.list_packs().await?;
        if known.is_empty() && !listed.is_empty() {
            // A new or lost index over existing packs: rebuild it whole (replaying packs one
            // by one would skip the pieces that live only in compaction's packs).
            tracing::info!(
                shard = self.shard,
                packs = listed.len(),
                "building the pack index from the packs"
            );
            let scanned = fsck::scan_packs(backend, &listed).await?;
            fsck::rebuild(backend, index, &scanned).await?;
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
                    tracing::warn!(shard = self.shard, pack = %index::pack_name(id), %why, "not indexing a damaged pack; run `piecestore fsck`");
                    continue;
                }
            };
            let replay = footer.flags & format::FLAG_COMPACTED == 0;
            let changes = pack_changes(id, &bytes, &footer.entries, replay);
            tracing::info!(shard = self.shard, pack = %index::pack_name(id), records = footer.entries.len(), "indexing a pack the index did not know");
            commit(backend, index, changes).await?;
        }
        Ok(())
    }

    fn next_seq(&self) -> u64 {
        let now = now_micros();
        let mut cur = self.seq.load(Ordering::Relaxed);
        loop {
            let next = now.max(cur + 1);
            match self
                .seq
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(c) => cur = c,
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a small piece in a pack; returns once the pack is durable and indexed.
    pub(crate) async fn put(
        self: &Arc<Self>,
        backend: &Arc<Backend>,
        key: &str,
        data: Bytes,
        crc: u32,
        overwrite: bool,
    ) -> Result<()> {
        let index = self.index(backend).await?;
        // A key the index does not know may still be an object written before packing.
        let mut standalone = None;
        if !self.complete.load(Ordering::Relaxed) && index.get(key)?.is_none() {
            match backend.head(key).await {
                Ok(m) => standalone = Some(m),
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(m) = &standalone
            && !overwrite
        {
            return same_or_exists(backend, key, m.size, m.crc32c, &data, crc);
        }
        let Some(rx) = self.enqueue(backend, &index, key, &data, crc, overwrite)? else {
            return Ok(()); // already stored with these bytes
        };
        wait(backend, key, rx).await?;
        if standalone.is_some() {
            // Overwritten: the packed piece is durable, the old object goes.
            backend.delete(key).await?;
        }
        Ok(())
    }

    /// Appends a small piece to the open pack; `None` when the same piece is stored already,
    /// else what to wait on until it is durable.
    fn enqueue(
        self: &Arc<Self>,
        backend: &Arc<Backend>,
        index: &Arc<dyn PackIndex>,
        key: &str,
        data: &[u8],
        crc: u32,
        overwrite: bool,
    ) -> Result<Option<watch::Receiver<Outcome>>> {
        let len = data.len() as u64;
        let mut st = self.lock();
        match st.precheck(backend, index, key, data, crc, overwrite)? {
            Precheck::Go => {}
            Precheck::Same => return Ok(None),
            Precheck::Wait(rx) => return Ok(Some(rx)),
        }
        let seq = self.next_seq();
        let open = self.open_pack(&mut st, backend);
        open.builder.push_piece(key, seq, data, crc);
        let pending = Pending {
            crc,
            len,
            tombstone: false,
            done: open.done.subscribe(),
            pack: open.id,
        };
        let rx = pending.done.clone();
        st.inflight.insert(key.to_string(), pending);
        self.seal_if_full(&mut st, backend);
        Ok(Some(rx))
    }

    /// The open pack, opened now if there is none (with a timer that seals it at `MaxAge`).
    fn open_pack<'a>(
        self: &Arc<Self>,
        st: &'a mut State,
        backend: &Arc<Backend>,
    ) -> &'a mut OpenPack {
        if st.open.is_none() {
            let id = new_pack_id();
            let (done, _) = watch::channel(None);
            st.open = Some(OpenPack {
                id,
                builder: PackBuilder::new(),
                done,
            });
            let me = Arc::clone(self);
            let backend = Arc::clone(backend);
            let age = self.opts.max_age;
            tokio::spawn(async move {
                tokio::time::sleep(age).await;
                let taken = {
                    let mut st = me.lock();
                    match &st.open {
                        Some(p) if p.id == id => st.open.take(),
                        _ => None,
                    }
                };
                if let Some(pack) = taken {
                    me.seal(backend, pack).await;
                }
            });
        }
        st.open.as_mut().expect("just opened")
    }

    fn seal_if_full(self: &Arc<Self>, st: &mut State, backend: &Arc<Backend>) {
        if st
            .open
            .as_ref()
            .is_some_and(|p| p.builder.len() >= self.opts.target_size)
        {
            let pack = st.open.take().expect("checked");
            let me = Arc::clone(self);
            let backend = Arc::clone(backend);
            tokio::spawn(async move { me.seal(backend, pack).await });
        }
    }

    /// Seals the open pack now (`flush`), and waits until it is durable.
    pub(crate) async fn flush(self: &Arc<Self>, backend: &Arc<Backend>) -> Result<()> {
        let taken = self.lock().open.take();
        if let Some(pack) = taken {
            let rx = pack.done.subscribe();
            let me = Arc::clone(self);
            let b = Arc::clone(backend);
            tokio::spawn(async move { me.seal(b, pack).await });
            wait(backend, "", rx).await?;
        }
        Ok(())
    }

    /// Writes a pack, indexes it, and tells its waiters. Runs as its own task, so a put that
    /// is cancelled does not cancel the write other puts wait on.
    async fn seal(self: Arc<Self>, backend: Arc<Backend>, pack: OpenPack) {
        let id = pack.id;
        let (bytes, entries) = pack.builder.finish();
        let result = async {
            let index = self.index(&backend).await?;
            backend.put_pack(id, bytes.clone()).await?;
            let changes = pack_changes(id, &bytes, &entries, true);
            commit(&backend, &index, changes).await.map(|_| ())
        }
        .await;
        {
            let mut st = self.lock();
            st.inflight.retain(|_, p| p.pack != id);
        }
        let outcome = match result {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(shard = self.shard, pack = %index::pack_name(id), error = %e, "writing a pack failed");
                Err((e.is_retryable(), e.to_string()))
            }
        };
        let _ = pack.done.send(Some(outcome));
    }

    /// Reads a piece: `None` when the index does not know the key (the caller reads the
    /// object), or when it is an object of its own.
    pub(crate) async fn get(
        &self,
        backend: &Arc<Backend>,
        key: &str,
    ) -> Result<Option<(Bytes, u32)>> {
        let index = self.index(backend).await?;
        let mut last = None;
        for _ in 0..2 {
            let loc = match index.get(key)? {
                Some(Slot::Packed(loc)) => loc,
                _ => return Ok(None),
            };
            if last == Some(loc) {
                break;
            }
            match backend
                .read_pack_range(loc.pack, loc.offset..loc.offset + loc.len)
                .await
            {
                Ok(bytes) => {
                    let actual = crate::checksum::crc32c(&bytes);
                    if actual != loc.crc || bytes.len() as u64 != loc.len {
                        return Err(Error::Corrupt {
                            key: key.into(),
                            backend: backend.label().into(),
                            detail: format!(
                                "crc32c is {actual}, expected {} (pack {} at offset {})",
                                loc.crc,
                                index::pack_name(loc.pack),
                                loc.offset
                            ),
                        });
                    }
                    return Ok(Some((bytes, loc.crc)));
                }
                // Compacted and deleted since we looked: look again, once.
                Err(Error::NotFound { .. }) => last = Some(loc),
                Err(e) => return Err(e),
            }
        }
        let pack = last.map(|l| index::pack_name(l.pack)).unwrap_or_default();
        Err(Error::Corrupt {
            key: key.into(),
            backend: backend.label().into(),
            detail: format!(
                "the index points at pack {pack}, which is missing; run `piecestore fsck`"
            ),
        })
    }

    /// A packed piece's metadata; `None` as for [`ShardPacker::get`].
    pub(crate) async fn head(
        &self,
        backend: &Arc<Backend>,
        key: &str,
    ) -> Result<Option<PieceMeta>> {
        let index = self.index(backend).await?;
        Ok(match index.get(key)? {
            Some(Slot::Packed(loc)) => Some(packed_meta(key, &loc)),
            _ => None,
        })
    }

    /// Deletes a piece: a tombstone for a packed one (returns once durable), the object for
    /// any other.
    pub(crate) async fn delete(self: &Arc<Self>, backend: &Arc<Backend>, key: &str) -> Result<()> {
        let index = self.index(backend).await?;
        let rx = {
            let mut st = self.lock();
            match st.inflight.get(key) {
                Some(p) if p.tombstone => Some(p.done.clone()),
                _ => match index.get(key)? {
                    Some(Slot::Packed(loc)) => {
                        let seq = self.next_seq();
                        let open = self.open_pack(&mut st, backend);
                        open.builder.push_tombstone(key, seq, loc.seq);
                        let pending = Pending {
                            crc: 0,
                            len: 0,
                            tombstone: true,
                            done: open.done.subscribe(),
                            pack: open.id,
                        };
                        let rx = pending.done.clone();
                        st.inflight.insert(key.to_string(), pending);
                        self.seal_if_full(&mut st, backend);
                        Some(rx)
                    }
                    _ => None,
                },
            }
        };
        if let Some(rx) = rx {
            return wait(backend, key, rx).await;
        }
        backend.delete(key).await?;
        if let Some(slot @ Slot::Object { .. }) = index.get(key)? {
            commit(
                backend,
                &index,
                vec![Change::Delete {
                    key: key.into(),
                    upto_seq: slot.seq(),
                }],
            )
            .await?;
        }
        Ok(())
    }

    /// Stores a large piece as an object of its own and records it in the index. The key is
    /// reserved while the object is written, so a packed put of the same key racing it either
    /// waits for it (same bytes) or fails with `AlreadyExists`, and the other way round.
    pub(crate) async fn put_object(
        self: &Arc<Self>,
        backend: &Arc<Backend>,
        key: &str,
        data: Bytes,
        crc: u32,
        overwrite: bool,
    ) -> Result<()> {
        let index = self.index(backend).await?;
        let len = data.len() as u64;
        // A put of the same bytes in flight is waited for; if it fails or is cancelled, this
        // one tries itself (a few times: each failure is another writer's).
        for _ in 0..4 {
            let reservation = {
                let mut st = self.lock();
                match st.precheck(backend, &index, key, &data, crc, overwrite)? {
                    Precheck::Same => return Ok(()),
                    Precheck::Wait(rx) => Err(rx),
                    Precheck::Go => {
                        let id = new_pack_id();
                        let (done, rx) = watch::channel(None);
                        st.inflight.insert(
                            key.to_string(),
                            Pending {
                                crc,
                                len,
                                tombstone: false,
                                done: rx,
                                pack: id,
                            },
                        );
                        Ok(Reservation {
                            packer: Arc::clone(self),
                            id,
                            done,
                        })
                    }
                }
            };
            let reservation = match reservation {
                Ok(r) => r,
                Err(rx) => match wait(backend, key, rx).await {
                    Ok(()) => return Ok(()),
                    Err(_) => continue,
                },
            };
            let result = async {
                backend.put(key, data, crc, overwrite).await?;
                self.record_object(backend, key, len, crc).await
            }
            .await;
            reservation.finish(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err((e.is_retryable(), e.to_string())),
            });
            return result;
        }
        Err(Error::Backend {
            op: "put",
            key: Some(key.into()),
            backend: backend.label().into(),
            message: "concurrent puts of this key kept failing".into(),
            retryable: true,
        })
    }

    /// Records a large piece written as an object of its own, after the object is durable.
    /// Replaces (and, in the packs, deletes with a tombstone) a packed piece it overwrote.
    pub(crate) async fn record_object(
        self: &Arc<Self>,
        backend: &Arc<Backend>,
        key: &str,
        len: u64,
        crc: u32,
    ) -> Result<()> {
        let index = self.index(backend).await?;
        if let Some(Slot::Packed(_)) = index.get(key)? {
            self.delete(backend, key).await?;
        }
        let seq = self.next_seq();
        commit(
            backend,
            &index,
            vec![Change::Put {
                key: key.into(),
                slot: Slot::Object { len, crc, seq },
            }],
        )
        .await
        .map(|_| ())
    }

    /// Every packed piece whose key starts with `prefix`.
    pub(crate) async fn list_packed(
        &self,
        backend: &Arc<Backend>,
        prefix: &str,
    ) -> Result<Vec<PieceMeta>> {
        let index = self.index(backend).await?;
        let prefix = prefix.to_string();
        let entries = tokio::task::spawn_blocking(move || index.range(&prefix))
            .await
            .map_err(|e| join_err(backend, e))??;
        Ok(entries
            .into_iter()
            .filter_map(|(k, s)| match s {
                Slot::Packed(loc) => Some(packed_meta(&k, &loc)),
                Slot::Object { .. } => None,
            })
            .collect())
    }
}

fn packed_meta(key: &str, loc: &Loc) -> PieceMeta {
    PieceMeta {
        key: key.into(),
        size: loc.len,
        crc32c: Some(loc.crc),
        last_modified: UNIX_EPOCH + Duration::from_millis(index::pack_millis(loc.pack)),
    }
}

fn already_exists(backend: &Backend, key: &str) -> Error {
    Error::AlreadyExists {
        key: key.into(),
        backend: backend.label().into(),
    }
}

fn same_or_exists(
    backend: &Backend,
    key: &str,
    len: u64,
    crc: Option<u32>,
    data: &[u8],
    data_crc: u32,
) -> Result<()> {
    if len == data.len() as u64 && crc.is_none_or(|c| c == data_crc) {
        Ok(())
    } else {
        Err(already_exists(backend, key))
    }
}

async fn wait(backend: &Backend, key: &str, mut rx: watch::Receiver<Outcome>) -> Result<()> {
    let outcome = rx.wait_for(|o| o.is_some()).await.map(|o| o.clone());
    match outcome {
        Ok(Some(Ok(()))) => Ok(()),
        Ok(Some(Err((retryable, message)))) => Err(Error::Backend {
            op: "put",
            key: (!key.is_empty()).then(|| key.to_string()),
            backend: backend.label().into(),
            message: format!("the pack holding this write was not stored: {message}"),
            retryable,
        }),
        _ => Err(Error::Backend {
            op: "put",
            key: (!key.is_empty()).then(|| key.to_string()),
            backend: backend.label().into(),
            message: "the pack holding this write was abandoned (runtime shut down)".into(),
            retryable: true,
        }),
    }
}

fn join_err(backend: &Backend, e: tokio::task::JoinError) -> Error {
    Error::Backend {
        op: "index",
        key: None,
        backend: backend.label().into(),
        message: e.to_string(),
        retryable: true,
    }
}

/// Applies index changes on the blocking pool (a commit fsyncs).
pub(crate) async fn commit(
    backend: &Backend,
    index: &Arc<dyn PackIndex>,
    changes: Vec<Change>,
) -> Result<Vec<bool>> {
    let index = Arc::clone(index);
    tokio::task::spawn_blocking(move || index.apply(&changes))
        .await
        .map_err(|e| join_err(backend, e))?
}

/// The index changes that record pack `id` (whose bytes are `bytes`, records `entries`):
/// the pack, and, when `replay`, each piece (newest write wins) and each tombstone.
pub(crate) fn pack_changes(
    id: PackId,
    bytes: &[u8],
    entries: &[Entry],
    replay: bool,
) -> Vec<Change> {
    let mut changes = Vec::with_capacity(entries.len() + 1);
    changes.push(Change::AddPack {
        id,
        info: pack_info(bytes.len() as u64, entries),
    });
    if !replay {
        return changes;
    }
    for e in entries {
        match e.kind {
            RecordKind::Piece => changes.push(Change::Put {
                key: e.key.clone(),
                slot: Slot::Packed(Loc {
                    pack: id,
                    offset: e.offset,
                    len: e.len,
                    crc: e.crc,
                    seq: e.seq,
                }),
            }),
            RecordKind::Tombstone => {
                let payload = bytes.get(e.offset as usize..(e.offset + e.len) as usize);
                if let Some(upto) = payload.and_then(format::tombstone_target) {
                    changes.push(Change::Delete {
                        key: e.key.clone(),
                        upto_seq: upto,
                    });
                }
            }
        }
    }
    changes
}

/// What the index records of a pack of `size` bytes holding `entries`.
pub(crate) fn pack_info(size: u64, entries: &[Entry]) -> PackInfo {
    PackInfo {
        size,
        payload: entries
            .iter()
            .filter(|e| e.kind == RecordKind::Piece)
            .map(|e| e.len)
            .sum(),
        live_bytes: 0,
        live_count: 0,
        records: entries.len() as u64,
        min_seq: entries.iter().map(|e| e.seq).min().unwrap_or(u64::MAX),
        state: PackState::Live,
    }
}
