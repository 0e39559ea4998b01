//! Small-piece aggregation: packs, their index, compaction and checks.
//!
//! A shard's small pieces are written in *groups* (the private `writer` module): when the
//! shard's writer is idle, a put starts a write at once; puts that arrive while a write is in
//! flight form the next group (group commit, no timer on the critical path). On a bucket a
//! group is one pack object under `.piecestore/packs/`; on a local directory it is appended to
//! the shard's *active pack* and made durable with one `fdatasync` (the `active` module). Then,
//! in one transaction, the index learns where each of its pieces is; then every put of the group
//! returns. Reads of a local pack go through a bounded cache of open files (`handles`).
//!
//! The order of durability: records first, then index, then the acknowledgement. A group's
//! index commit does not wait for the disk: the packs are the log, and opening the store
//! indexes what a crash left unindexed (packs the index does not know, records past an active
//! pack's durable end, see the `recovery` module). Index commits are applied in order, one at
//! a time; a commit that fails is kept and applied before any later one, so the index never
//! skips a group. A bucket's pack whose write was reported failed is recorded as doomed (its
//! write may have happened all the same), so it is never replayed.
//!
//! Large pieces are objects of their own, recorded in the same index. An object operation is
//! recorded as an *intent* before it starts (writing an object, or deleting one), so that every
//! object of a packed shard is known to its index, even after a crash half-way; recovery, or
//! the next operation on the key, finishes or undoes it.
//!
//! Deletes append a tombstone (durable in the packs, so a rebuilt index does not resurrect the
//! piece), also for keys the index does not know. Compaction ([`gc`]) copies live pieces into
//! a new pack, makes it durable, moves each index entry with a compare-and-swap, and deletes
//! the old pack only after a grace period; a read that meets a vanished pack looks the piece
//! up again.

mod active;
pub mod format;
pub mod fsck;
pub mod gc;
mod handles;
pub mod index;
mod io;
pub(crate) mod lease;
mod reads;
mod recovery;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use self::format::{Entry, RecordKind};
use self::index::{Change, Loc, PackId, PackIndex, PackInfo, PackState, Slot, SqliteIndex};
use crate::backend::{Backend, PieceMeta};
use crate::config::PackOptions;
use crate::error::{Error, Result};

/// How long compaction and checks wait for another process's compaction of the shard.
const GC_WAIT: Duration = Duration::from_secs(60);

/// A file beside the index: `<index>.<what>`.
fn sibling(index: &std::path::Path, what: &str) -> PathBuf {
    let mut name = index.as_os_str().to_os_string();
    name.push(".");
    name.push(what);
    PathBuf::from(name)
}

/// The compaction lease of a shard ([`ShardPacker::gc_lease`]), held while alive.
pub(crate) struct GcGuard<'a> {
    _local: tokio::sync::MutexGuard<'a, ()>,
    _lease: Option<lease::Guard>,
}

/// Where a shard's index is.
#[derive(Debug, Clone)]
pub(crate) enum IndexAt {
    /// In memory (a memory store's: it holds the pieces).
    Memory,
    /// A SQLite file of this host.
    File(PathBuf),
    /// Rows of shard `ix` in the PostgreSQL database at `url`, shared by every host.
    Postgres {
        /// The database.
        url: crate::config::Secret,
        /// The shard's name in it (the same on every node).
        ix: String,
    },
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
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

/// Tasks that write on a shard's behalf (its group writer, object writes, intent resolutions):
/// `close` waits until none runs.
#[derive(Debug, Default)]
struct Tasks {
    running: AtomicUsize,
    idle: tokio::sync::Notify,
}

/// One running task of [`Tasks`]; counted out when dropped.
struct TaskGuard(Arc<Tasks>);

impl Tasks {
    fn enter(self: &Arc<Self>) -> TaskGuard {
        self.running.fetch_add(1, Ordering::SeqCst);
        TaskGuard(Arc::clone(self))
    }

    async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.running.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The packer of one shard: its writer, its index and its reads.
pub(crate) struct ShardPacker {
    shard: usize,
    opts: PackOptions,
    /// Where the index is.
    at: IndexAt,
    /// The open index; `None` before the first operation and after the last user closed.
    index: Mutex<Option<Arc<dyn PackIndex>>>,
    /// Serializes opening the index.
    opening: tokio::sync::Mutex<()>,
    /// The write path's state ([`writer`]).
    state: Mutex<writer::State>,
    /// The sequence counter (records, tombstones and objects alike): shared with the other
    /// processes of the host that open the shard ([`lease`]); raised to the index's persisted
    /// counter when the index opens, never set from the clock. Set when the index first opens.
    seq: std::sync::OnceLock<lease::SeqCounter>,
    /// This process's registration as a writer of the shard, while its index is open.
    writer: Mutex<Option<Arc<dyn lease::Members>>>,
    /// The index's `META_COMPLETE`: every object of the shard is known to it (read at open and
    /// after a rebuild, not on every put).
    complete: AtomicBool,
    /// One compaction (or fsck) per shard at a time.
    pub(crate) gc_lock: tokio::sync::Mutex<()>,
    /// Serializes index commits. Holds the changes of a commit that failed, which go first in
    /// the next one (the index never skips a change it was given).
    commits: tokio::sync::Mutex<Vec<Change>>,
    /// Tasks writing for this shard.
    tasks: Arc<Tasks>,
    /// Open stores using this packer; the index is let go when the last one closes.
    users: AtomicUsize,
    /// On a local directory: the open pack files for reads, in its `.piecestore/packs/`.
    handles: Option<handles::Handles>,
    /// On a local directory: the active pack groups are appended to ([`active`]).
    active: tokio::sync::Mutex<Option<active::ActivePack>>,
    /// Sealed packs whose `Seal` commit failed (it waits in `commits`): kept, and so locked,
    /// until the failed commits went through, so that no other process takes one for an
    /// active pack of a gone process meanwhile.
    retired: Mutex<Vec<active::ActivePack>>,
    /// Lazy (not yet durable) index commits since the last durable one.
    lazy: AtomicU64,
    /// Write groups written, their records and their payload bytes (for the metrics).
    written: [AtomicU64; 3],
    /// On a bucket: gets of one pack that arrive together share a ranged read.
    reads: reads::SharedReads,
}

impl std::fmt::Debug for ShardPacker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardPacker")
            .field("shard", &self.shard)
            .field("index", &self.at)
            .finish_non_exhaustive()
    }
}

/// A durable index commit at least every this many lazy ones (it bounds what a crash can roll back).
const LAZY_COMMITS: u64 = 256;

impl ShardPacker {
    /// The packer of shard `shard`; `packs_dir`: a local directory's `.piecestore/packs/`
    /// (write groups are appended to an active pack there, and reads keep files open).
    pub(crate) fn new(
        shard: usize,
        opts: PackOptions,
        at: IndexAt,
        packs_dir: Option<PathBuf>,
    ) -> Self {
        ShardPacker {
            shard,
            opts,
            at,
            index: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
            state: Mutex::new(writer::State::default()),
            seq: std::sync::OnceLock::new(),
            writer: Mutex::new(None),
            complete: AtomicBool::new(false),
            gc_lock: tokio::sync::Mutex::new(()),
            commits: tokio::sync::Mutex::new(Vec::new()),
            tasks: Arc::default(),
            users: AtomicUsize::new(0),
            handles: packs_dir.map(|d| handles::Handles::new(d, handles::DEFAULT_HANDLES)),
            active: tokio::sync::Mutex::new(None),
            retired: Mutex::new(Vec::new()),
            lazy: AtomicU64::new(0),
            written: Default::default(),
            reads: reads::SharedReads::default(),
        }
    }

    /// What the shard's writer wrote so far in this process (every store on the shard shares
    /// its writer): write groups (appends or pack objects), records, payload bytes; and the
    /// ranged reads of its packs that gets made on a bucket.
    pub(crate) fn written(&self) -> crate::profile::PackWrites {
        let [groups, records, bytes] = &self.written;
        let (reads, pieces_read) = self.reads.counts();
        crate::profile::PackWrites {
            groups: groups.load(Ordering::Relaxed),
            records: records.load(Ordering::Relaxed),
            bytes: bytes.load(Ordering::Relaxed),
            reads,
            pieces_read,
        }
    }

    /// Counts a write group written.
    fn count_written(&self, records: u64, bytes: u64) {
        let [groups, r, b] = &self.written;
        groups.fetch_add(1, Ordering::Relaxed);
        r.fetch_add(records, Ordering::Relaxed);
        b.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Whether the index is kept in memory (a memory store's: it holds the pieces).
    pub(crate) fn is_memory(&self) -> bool {
        matches!(self.at, IndexAt::Memory)
    }

    /// Pieces smaller than this are packed.
    pub(crate) fn threshold(&self) -> u64 {
        self.opts.threshold
    }

    /// The options.
    pub(crate) fn opts(&self) -> &PackOptions {
        &self.opts
    }

    /// A store starts using this packer.
    pub(crate) fn add_user(&self) {
        self.users.fetch_add(1, Ordering::SeqCst);
    }

    /// A store using this packer closed: when it was the last, waits for every write running
    /// for the shard, then lets go of the index: a file index so that another process may
    /// open it, a memory index (it holds the pieces of a memory store, which only that store
    /// can reach) to free its memory at once.
    pub(crate) async fn release_user(&self) {
        let last = self
            .users
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok_and(|n| n == 1);
        if !last {
            return;
        }
        self.tasks.wait_idle().await;
        // The active pack goes with the index: another process may open the store now, and
        // resumes the pack from the file as it finds it.
        self.active.lock().await.take();
        self.retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.index.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// The shard's index, opened (and recovered) on first use.
    pub(crate) async fn index(
        self: &Arc<Self>,
        backend: &Arc<Backend>,
    ) -> Result<Arc<dyn PackIndex>> {
        if let Some(i) = self.index_now() {
            return Ok(i);
        }
        let _opening = self.opening.lock().await;
        if let Some(i) = self.index_now() {
            return Ok(i);
        }
        let at = self.at.clone();
        let label = backend.label().to_string();
        type Opened = (
            Arc<dyn PackIndex>,
            Option<(lease::SeqCounter, Arc<dyn lease::Members>)>,
        );
        let (index, shared): Opened = tokio::task::spawn_blocking(move || match at {
            IndexAt::Postgres { url, ix } => {
                let db = index::postgres::Db::open(&url)?;
                let index = index::PgIndex::open(Arc::clone(&db), ix.clone())?;
                let members = index::postgres::PgMember::register(db, ix, GC_WAIT)?;
                Ok((
                    Arc::new(index) as _,
                    Some((
                        lease::SeqCounter::Clock(AtomicU64::new(0)),
                        Arc::new(members) as _,
                    )),
                ))
            }
            IndexAt::File(p) => {
                let index = SqliteIndex::open(&p)?;
                let io = |what: &str, e: std::io::Error| Error::Backend {
                    op: "open",
                    key: None,
                    backend: label.clone(),
                    message: format!("{what} beside the pack index {}: {e}", p.display()),
                    retryable: false,
                };
                let seq = lease::SharedCounter::open(&sibling(&p, "seq"))
                    .map_err(|e| io("cannot map the sequence counter", e))?;
                let writer = lease::HostMembers::register(&p, GC_WAIT)
                    .map_err(|e| io("cannot register as a writer", e))?;
                Ok((
                    Arc::new(index) as _,
                    Some((lease::SeqCounter::Shared(seq), Arc::new(writer) as _)),
                ))
            }
            IndexAt::Memory => SqliteIndex::in_memory().map(|i| (Arc::new(i) as _, None)),
        })
        .await
        .map_err(|e| join_err(backend, e))??;
        match shared {
            Some((seq, writer)) => {
                let _ = self.seq.set(seq);
                *self.writer.lock().unwrap_or_else(|p| p.into_inner()) = Some(writer);
            }
            None => {
                let _ = self.seq.set(lease::SeqCounter::default());
            }
        }
        // One process recovers the shard at a time (see `lease`).
        let recovering = self
            .take_lease(backend, "recover", "open", "recovering the pack index")
            .await?;
        recovery::recover(self, backend, &index).await?;
        self.refresh_complete(&index)?;
        let max = index.meta(index::META_MAX_SEQ)?.unwrap_or(0);
        self.seqs().observe(max);
        drop(recovering);
        *self.index.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&index));
        Ok(index)
    }

    /// Opens the shard's index ([`ShardPacker::index`]) and finishes the object operations a
    /// crash (or a failure) left half-way, so that the opened store shows none of them.
    pub(crate) async fn open(self: &Arc<Self>, backend: &Arc<Backend>) -> Result<()> {
        let index = self.index(backend).await?;
        for (key, owned) in index.intents()? {
            // Another process's operation that runs is its own to finish.
            if self.orphaned(owned.owner) {
                self.resolve_key(backend, &key).await?;
            }
        }
        Ok(())
    }

    /// This process's writer id for the shard (0 for a memory store: one process).
    pub(crate) fn writer_id(&self) -> u64 {
        self.writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, |w| w.id())
    }

    /// Whether an intent of writer `owner` may be finished or undone here: it is this
    /// process's (none of its operations holds the key, or the caller would wait for that),
    /// it predates writer ids, or its writer is gone.
    pub(crate) fn orphaned(&self, owner: u64) -> bool {
        if owner == 0 || owner == self.writer_id() {
            return true;
        }
        match self.members() {
            Some(m) => !m.alive(owner),
            None => true,
        }
    }

    /// This process's registration as a writer (none for a memory index, or while closed).
    fn members(&self) -> Option<Arc<dyn lease::Members>> {
        self.writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether a process (or node) other than this one has the shard's index open.
    pub(crate) fn other_writers(&self) -> bool {
        self.members()
            .is_some_and(|m| m.any_alive(self.writer_id()))
    }

    /// Makes this process the only one with the shard's index open while the guard lives
    /// (for a rebuild of the whole index): `Ok(None)` while another has it open (processes
    /// that open it meanwhile wait). Always granted for a memory index.
    pub(crate) fn exclusive(&self) -> Result<Option<Option<lease::Guard>>> {
        let Some(writer) = self.members() else {
            return Ok(Some(None));
        };
        writer
            .exclusive()
            .map(|g| g.map(Some))
            .map_err(|e| Error::Backend {
                op: "fsck",
                key: None,
                backend: format!("{:?}", self.at),
                message: format!("cannot lock the pack index: {e}"),
                retryable: false,
            })
    }

    /// Takes the shard's compaction lease: one compaction, check or rebuild at a time in this
    /// process, and (for a file index) across the processes of the host, waiting up to
    /// [`GC_WAIT`] for another.
    pub(crate) async fn gc_lease(&self, backend: &Backend) -> Result<GcGuard<'_>> {
        let local = self.gc_lock.lock().await;
        let lease = self
            .take_lease(backend, "gc", "gc", "compacting or checking it")
            .await?;
        Ok(GcGuard {
            _local: local,
            _lease: lease,
        })
    }

    /// Takes the shard's lease `<index>.<name>` (none for a memory index), waiting up to
    /// [`GC_WAIT`] for the process that holds it (`doing` says what that one does).
    async fn take_lease(
        &self,
        backend: &Backend,
        name: &str,
        op: &'static str,
        doing: &str,
    ) -> Result<Option<lease::Guard>> {
        let Some(members) = self.members() else {
            return Ok(None);
        };
        let err = |message: String, retryable: bool| Error::Backend {
            op,
            key: None,
            backend: backend.label().into(),
            message,
            retryable,
        };
        let lease_name = name.to_string();
        let taken = tokio::task::spawn_blocking(move || members.lease(&lease_name, GC_WAIT))
            .await
            .map_err(|e| join_err(backend, e))?
            .map_err(|e| err(format!("cannot take the {name} lease: {e}"), false))?;
        taken.map(Some).ok_or_else(|| {
            err(
                format!(
                    "shard {}: another process has been {doing} for {} s; try again when it \
                     is done",
                    self.shard,
                    GC_WAIT.as_secs()
                ),
                true,
            )
        })
    }

    /// The sequence counter.
    fn seqs(&self) -> &lease::SeqCounter {
        self.seq.get_or_init(lease::SeqCounter::default)
    }

    /// Rereads whether the index knows every object (after it was rebuilt).
    pub(crate) fn refresh_complete(&self, index: &Arc<dyn PackIndex>) -> Result<()> {
        let complete = index.meta(index::META_COMPLETE)? == Some(1);
        self.complete.store(complete, Ordering::Relaxed);
        Ok(())
    }

    fn index_now(&self) -> Option<Arc<dyn PackIndex>> {
        self.index.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The next sequence number.
    fn next_seq(&self) -> u64 {
        self.seqs().next()
    }

    /// Applies `changes` to the index in one transaction, after any earlier commit that
    /// failed (see [`ShardPacker::commits`]); returns for each change whether it took effect.
    pub(crate) async fn commit(
        self: &Arc<Self>,
        backend: &Arc<Backend>,
        changes: Vec<Change>,
    ) -> Result<Vec<bool>> {
        let index = self.index(backend).await?;
        let mut stuck = self.commits.lock().await;
        self.lazy.store(0, Ordering::Relaxed);
        apply_after(backend, &index, &mut stuck, changes, false).await
    }

    /// [`ShardPacker::commit`] without waiting for the disk, for changes that the packs can
    /// replay after a crash (a write group's records); every [`LAZY_COMMITS`]th is durable.
    pub(crate) async fn commit_lazy(
        self: &Arc<Self>,
        backend: &Arc<Backend>,
        changes: Vec<Change>,
    ) -> Result<Vec<bool>> {
        if self.lazy.fetch_add(1, Ordering::Relaxed) + 1 >= LAZY_COMMITS {
            return self.commit(backend, changes).await;
        }
        let index = self.index(backend).await?;
        let mut stuck = self.commits.lock().await;
        if stuck.is_empty()
            && let Some(remote) = index.remote()
        {
            // A round trip, awaited here (a failure is retried below, on the blocking pool).
            if let Ok(took) = remote.apply_async(&changes, false).await {
                return Ok(took);
            }
        } else if stuck.is_empty()
            && let Ok(took) = index.apply_lazy(&changes)
        {
            // Tens of microseconds of SQLite that wait for no disk: done here, where a trip
            // through the blocking pool cost more than the commit (a failed one is retried
            // there, where it may sleep).
            return Ok(took);
        }
        apply_after(backend, &index, &mut stuck, changes, true).await
    }

    /// Reads a piece: `None` when the index does not know the key as a packed piece (the caller
    /// reads the object).
    pub(crate) async fn get(
        self: &Arc<Self>,
        backend: &Arc<Backend>,
        key: &str,
    ) -> Result<Option<(Bytes, u32)>> {
        let index = self.index(backend).await?;
        let mut last = None;
        for _ in 0..2 {
            let loc = match index_get(&index, key).await? {
                Some(Slot::Packed(loc)) => loc,
                _ => return Ok(None),
            };
            if last == Some(loc) {
                break;
            }
            match self.read_packed(backend, key, &loc).await {
                Ok(bytes) => return Ok(Some((bytes, loc.crc))),
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

    /// Whether a cached copy of `key` (`len` bytes, CRC32C `crc`) is still the piece the index
    /// holds, asked of the open local index. Every process of the host shares that index, so
    /// another process's delete or overwrite shows here at once, for a lookup of microseconds.
    /// `true` when the index cannot tell: not open yet, kept in memory (no other process), remote
    /// (a round trip, which the cache is there to save), or not knowing every object of the
    /// shard (an object it does not know may be the piece).
    pub(crate) fn still_holds(&self, key: &str, len: u64, crc: Option<u32>) -> bool {
        let Some(index) = self.index_now() else {
            return true;
        };
        if self.is_memory() || index.remote().is_some() {
            return true;
        }
        match index.get(key) {
            Ok(Some(slot)) => slot.len() == len && crc.is_none_or(|c| c == slot.crc()),
            Ok(None) => !self.complete.load(Ordering::Acquire),
            Err(_) => true,
        }
    }

    /// A packed piece's metadata; `None` as for [`ShardPacker::get`].
    pub(crate) async fn head(
        self: &Arc<Self>,
        backend: &Arc<Backend>,
        key: &str,
    ) -> Result<Option<PieceMeta>> {
        let index = self.index(backend).await?;
        Ok(match index_get(&index, key).await? {
            Some(Slot::Packed(loc)) => Some(packed_meta(key, &loc)),
            _ => None,
        })
    }

    /// Whether the index holds `key` as a packed piece (its object, if one is left over from
    /// an overwrite, is not the piece).
    pub(crate) async fn holds_packed(
        self: &Arc<Self>,
        backend: &Arc<Backend>,
        key: &str,
    ) -> Result<bool> {
        let index = self.index(backend).await?;
        Ok(matches!(index.get(key)?, Some(Slot::Packed(_))))
    }

    /// Every packed piece whose key starts with `prefix`.
    pub(crate) async fn list_packed(
        self: &Arc<Self>,
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

impl ShardPacker {
    /// Reads a packed piece's bytes and verifies them: on a local directory one positioned
    /// read of a cached open file (at once when the bytes are in the page cache, else in one
    /// blocking task); elsewhere one ranged GET. A pack
    /// shorter than the index says (cut short on disk, or a truncated copy) is `Corrupt`, never
    /// a retryable error: retrying cannot bring the bytes back. A missing pack is `NotFound`
    /// (the caller looks the piece up again).
    pub(crate) async fn read_packed(
        self: &Arc<Self>,
        backend: &Backend,
        key: &str,
        loc: &Loc,
    ) -> Result<Bytes> {
        if self.handles.is_none() {
            // A memory store's reads cost no round trip: nothing to share.
            let reads = (!self.is_memory()).then_some(&self.reads);
            return read_packed_object(reads, backend, key, loc).await;
        }
        let (pack, offset, len, crc) = (loc.pack, loc.offset, loc.len, loc.crc);
        let handles = self.handles.as_ref().expect("checked");
        // Bytes in the page cache are read here, at once; else on the blocking pool.
        let read = match handles.read_cached(pack, offset, len) {
            Ok(Some(bytes)) => {
                let actual = crate::checksum::crc32c(&bytes);
                Ok((bytes, actual))
            }
            Err(e) => Err(e),
            Ok(None) => {
                let me = Arc::clone(self);
                tokio::task::spawn_blocking(move || {
                    let handles = me.handles.as_ref().expect("checked");
                    let bytes = handles.read(pack, offset, len)?;
                    let actual = crate::checksum::crc32c(&bytes);
                    Ok::<_, std::io::Error>((bytes, actual))
                })
                .await
                .map_err(|e| join_err(backend, e))?
            }
        };
        let corrupt = |detail: String| Error::Corrupt {
            key: key.into(),
            backend: backend.label().into(),
            detail,
        };
        match read {
            Ok((bytes, actual)) if actual == crc => Ok(Bytes::from(bytes)),
            Ok((_, actual)) => Err(corrupt(format!(
                "crc32c is {actual}, expected {crc} (pack {} at offset {offset})",
                index::pack_name(pack)
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::NotFound {
                key: key.into(),
                backend: backend.label().into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(corrupt(format!(
                "pack {} ends before the piece's end at byte {}: the pack is truncated",
                index::pack_name(pack),
                offset + len
            ))),
            Err(e) => Err(Error::Backend {
                op: "get",
                key: Some(key.into()),
                backend: backend.label().into(),
                message: format!("reading pack {}: {e}", index::pack_name(pack)),
                retryable: false,
            }),
        }
    }

    /// Forgets the read handle of a pack that was deleted.
    pub(crate) fn forget_pack(&self, id: PackId) {
        if let Some(h) = &self.handles {
            h.evict(id);
        }
    }
}

/// [`ShardPacker::read_packed`] on a bucket (or memory): one ranged GET, shared with the
/// other gets of the pack that arrive with it when `reads` is given ([`reads`]).
async fn read_packed_object(
    reads: Option<&reads::SharedReads>,
    backend: &Backend,
    key: &str,
    loc: &Loc,
) -> Result<Bytes> {
    let corrupt = |detail: String| Error::Corrupt {
        key: key.into(),
        backend: backend.label().into(),
        detail,
    };
    crate::runtime::yield_before_checksum(loc.len).await;
    let end = loc.offset + loc.len;
    let read = match reads {
        Some(reads) => reads.read(backend, loc.pack, loc.offset..end).await,
        None => backend.read_pack_range(loc.pack, loc.offset..end).await,
    };
    let bytes = match read {
        Ok(b) => b,
        Err(e @ Error::NotFound { .. }) => return Err(e),
        Err(e) => {
            return match backend.pack_size(loc.pack).await {
                Ok(size) if size < end => Err(corrupt(format!(
                    "pack {} is {size} bytes, but the piece ends at byte {end}: the pack is truncated",
                    index::pack_name(loc.pack)
                ))),
                _ => Err(e),
            };
        }
    };
    if bytes.len() as u64 != loc.len {
        return Err(corrupt(format!(
            "pack {} gave {} bytes at offset {}, the piece has {}: the pack is truncated",
            index::pack_name(loc.pack),
            bytes.len(),
            loc.offset,
            loc.len
        )));
    }
    let actual = crate::checksum::crc32c(&bytes);
    if actual != loc.crc {
        return Err(corrupt(format!(
            "crc32c is {actual}, expected {} (pack {} at offset {})",
            loc.crc,
            index::pack_name(loc.pack),
            loc.offset
        )));
    }
    Ok(bytes)
}

fn packed_meta(key: &str, loc: &Loc) -> PieceMeta {
    PieceMeta {
        key: key.into(),
        size: loc.len,
        crc32c: Some(loc.crc),
        last_modified: UNIX_EPOCH + Duration::from_millis(index::pack_millis(loc.pack)),
    }
}

/// Where `key` is: read here from a local index (microseconds), awaited from a remote one (a
/// round trip must not hold an async worker).
pub(crate) async fn index_get(index: &Arc<dyn PackIndex>, key: &str) -> Result<Option<Slot>> {
    match index.remote() {
        Some(remote) => remote.get_async(key).await,
        None => index.get(key),
    }
}

pub(crate) fn join_err(backend: &Backend, e: tokio::task::JoinError) -> Error {
    Error::Backend {
        op: "index",
        key: None,
        backend: backend.label().into(),
        message: e.to_string(),
        retryable: true,
    }
}

/// Applies `changes` in one transaction on the blocking pool (a commit fsyncs), with no
/// ordering: for an index nobody else writes yet (recovery) and for callers that hold the
/// commit lock.
pub(crate) async fn apply(
    backend: &Backend,
    index: &Arc<dyn PackIndex>,
    changes: Vec<Change>,
) -> Result<Vec<bool>> {
    let index = Arc::clone(index);
    tokio::task::spawn_blocking(move || index.apply(&changes))
        .await
        .map_err(|e| join_err(backend, e))?
}

/// Applies the changes of earlier failed commits (`stuck`), then `changes`, in one
/// transaction (`lazy`: without waiting for the disk), retrying a failure twice; if it still
/// fails, every change is kept in `stuck` for the next commit. Returns whether each of
/// `changes` took effect.
async fn apply_after(
    backend: &Backend,
    index: &Arc<dyn PackIndex>,
    stuck: &mut Vec<Change>,
    changes: Vec<Change>,
    lazy: bool,
) -> Result<Vec<bool>> {
    let ix = Arc::clone(index);
    let mut held = std::mem::take(stuck);
    let (result, held) = tokio::task::spawn_blocking(move || {
        let r = apply_after_blocking(&*ix, &mut held, changes, lazy);
        (r, held)
    })
    .await
    .map_err(|e| join_err(backend, e))?;
    *stuck = held;
    result
}

/// [`apply_after`] on the calling thread (for a caller already on the blocking pool).
fn apply_after_blocking(
    index: &dyn PackIndex,
    stuck: &mut Vec<Change>,
    changes: Vec<Change>,
    lazy: bool,
) -> Result<Vec<bool>> {
    let skip = stuck.len();
    let mut all = std::mem::take(stuck);
    all.extend(changes);
    let mut delay = Duration::from_millis(10);
    let mut attempt = 0;
    loop {
        let result = if lazy {
            index.apply_lazy(&all)
        } else {
            index.apply(&all)
        };
        match result {
            Ok(mut took) => return Ok(took.split_off(skip.min(took.len()))),
            Err(e) if attempt == 2 => {
                tracing::warn!(index = %index.describe(), error = %e, "an index commit failed; it will be retried before the next one");
                *stuck = all;
                return Err(e);
            }
            Err(_) => {
                attempt += 1;
                std::thread::sleep(delay);
                delay *= 4;
            }
        }
    }
}

/// The index slot of the piece record `e` of pack `id`.
pub(crate) fn packed_slot(id: PackId, e: &Entry) -> Slot {
    Slot::Packed(Loc {
        pack: id,
        offset: e.offset,
        len: e.len,
        crc: e.crc,
        seq: e.seq,
    })
}

/// The index changes that record pack `id` (whose bytes are `bytes`, records `entries`):
/// the pack, its highest sequence number, and, when `replay`, each piece (newest write wins)
/// and each tombstone.
pub(crate) fn pack_changes(
    id: PackId,
    bytes: &[u8],
    entries: &[Entry],
    replay: bool,
) -> Vec<Change> {
    let mut changes = Vec::with_capacity(entries.len() + 2);
    changes.push(Change::AddPack {
        id,
        info: pack_info(bytes.len() as u64, entries),
    });
    changes.push(Change::BumpSeq(
        entries.iter().map(|e| e.seq).max().unwrap_or(0),
    ));
    if !replay {
        return changes;
    }
    for e in entries {
        match e.kind {
            RecordKind::Piece => changes.push(Change::Put {
                key: e.key.clone(),
                slot: packed_slot(id, e),
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
