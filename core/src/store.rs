//! The facade: [`PieceStore`], the only type a program (or a binding) needs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use tracing::Instrument;

use crate::backend::{Backend, Deadline, PieceMeta, STREAM_CHUNK};
use crate::checksum;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::key;
use crate::pack::ShardPacker;
use crate::pack::fsck::{FsckOptions, FsckReport};
use crate::pack::gc::{GcOptions, GcProgress, GcReport};
use crate::profile::inventory::{self, Inventory, InventoryOptions};
use crate::profile::metrics::{Metrics, Op, Recorder};
use crate::runtime;
use crate::shard::Placement;

/// How many operations of one `put_many`/`get_many` run at once.
const BATCH_CONCURRENCY: usize = 32;

/// What [`PieceStore::delete_prefix`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeleteSummary {
    /// Pieces deleted.
    pub pieces: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Options of [`PieceStore::put_opts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Replace an existing piece with different bytes instead of failing with `AlreadyExists`.
    pub overwrite: bool,
}

/// A store of immutable pieces over one or more backends (shards).
///
/// Cheap to clone: clones share the backends. All methods are safe to call concurrently.
#[derive(Clone)]
pub struct PieceStore {
    inner: Arc<Inner>,
}

/// Labels only: never a credential (the backends' own `Debug` would show an access key id).
impl std::fmt::Debug for PieceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PieceStore")
            .field("shards", &self.shard_labels())
            .field("placement", &self.inner.placement)
            .field("packed", &self.is_packed())
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// The backends of all shards, by shard index.
type Shards = Arc<[Arc<Backend>]>;

/// The packers of all shards, by shard index.
type Packers = Arc<[Arc<ShardPacker>]>;

struct Inner {
    shards: Vec<Arc<Backend>>,
    placement: Placement,
    closed: AtomicBool,
    /// What the shards were built from, to rebuild them in a forked child.
    config: Config,
    /// The [`runtime::fork_generation`] the shards were built in.
    generation: u64,
    /// Whether a shard holds runtime-bound state (an HTTP connection pool) that a forked child
    /// must not use.
    fork_sensitive: bool,
    /// Shards rebuilt in a forked child, with the generation they were built in.
    reborn: Mutex<Option<(u64, Shards)>>,
    /// Set once the bucket check passed (or when it is disabled).
    checked: tokio::sync::OnceCell<()>,
    /// Operation metrics, per shard and operation.
    metrics: Recorder,
    /// Each shard's packer, when small pieces are packed.
    packers: Option<Packers>,
    /// The data cache's tiers, when any is on (`[PieceStore.Cache]`).
    cache: Option<Arc<crate::cache::PieceCache>>,
    /// Packers built anew in a forked child (each opens the index itself, as a process of its
    /// own), with the generation they were built in.
    child_packers: Mutex<Option<(u64, Packers)>>,
    /// Return pieces that carry no checksum (`AllowUnverified`) instead of `Corrupt`.
    allow_unverified: bool,
    /// Other nodes a get asks when this store cannot answer ([`PieceStore::set_peers`]).
    peers: std::sync::OnceLock<Arc<dyn crate::peer::PeerTier>>,
    /// Held (shared) by every running operation; `close` takes it whole, so that it returns
    /// only when no operation of this store runs any more.
    gate: tokio::sync::RwLock<()>,
}

impl PieceStore {
    /// Opens the store `config` describes: builds each shard's backend and, unless
    /// `[PieceStore.Backend] CheckBucket = false`, checks each S3 bucket exists and accepts our
    /// credentials (a clear `InvalidConfig` or `Unauthorized` naming the shard otherwise).
    pub async fn open(config: Config) -> Result<Self> {
        let store = Self::open_lazy(config)?;
        store.check().await?;
        Ok(store)
    }

    /// Builds the store `config` describes without any network I/O, for callers that must not
    /// wait (a constructor on an event loop). Config errors are returned here; the bucket check
    /// [`PieceStore::open`] does up front runs on the first operation instead, which fails
    /// with its error. A failed check is not remembered: the next operation checks again.
    pub fn open_lazy(config: Config) -> Result<Self> {
        let generation = runtime::fork_generation();
        let shards = build_shards(&config)?;
        let checked = if config.backend.check_bucket {
            tokio::sync::OnceCell::new()
        } else {
            tokio::sync::OnceCell::new_with(Some(()))
        };
        tracing::debug!(shards = shards.len(), placement = %config.sharding.placement, "opened piece store");
        let metrics = Recorder::new(
            shards.iter().map(|b| b.kind_name()).collect(),
            config.backend.metrics,
        );
        let packers = build_packers(&config, &shards)?;
        // The default memory tier stands in front of buckets in PieceStore's own layout; a
        // config in the original's layout keeps the original's behaviour (no cache: its
        // deployments run several services on one bucket, and another process's delete does
        // not reach this one's cache) unless it sets a tier.
        let buckets = shards.iter().all(|b| !b.is_memory() && !b.is_local())
            && config.layout() == crate::config::Layout::PieceStore;
        let scope = shards
            .iter()
            .map(|b| b.label())
            .collect::<Vec<_>>()
            .join(" ");
        let cache = crate::cache::PieceCache::new(&config.cache, buckets, scope)?;
        Ok(PieceStore {
            inner: Arc::new(Inner {
                metrics,
                packers,
                cache,
                child_packers: Mutex::new(None),
                allow_unverified: config
                    .backend
                    .allow_unverified
                    .unwrap_or(config.layout() == crate::config::Layout::Original),
                gate: tokio::sync::RwLock::new(()),
                peers: std::sync::OnceLock::new(),
                fork_sensitive: shards.iter().any(|b| b.is_fork_sensitive()),
                shards,
                placement: config.sharding.placement,
                closed: AtomicBool::new(false),
                checked,
                config,
                generation,
                reborn: Mutex::new(None),
            }),
        })
    }

    /// Runs the bucket check [`PieceStore::open_lazy`] deferred, if it has not passed yet (every
    /// operation does this first; after a success it costs one atomic load). For a caller that
    /// opened lazily and wants the check's errors now.
    pub async fn check(&self) -> Result<()> {
        let inner = &self.inner;
        if inner.checked.initialized() {
            return Ok(());
        }
        inner
            .checked
            .get_or_try_init(|| async {
                let n = inner.shards.len();
                let checks = inner.shards.iter().enumerate().map(|(i, b)| async move {
                    b.check().await.map_err(|e| in_shard(e, i, n))?;
                    match inner.packers.as_ref().map(|p| &p[i]) {
                        // Open the pack index, indexing any pack a crash left unindexed.
                        Some(p) => p.open(b).await.map_err(|e| in_shard(e, i, n))?,
                        None => refuse_packed(b).await.map_err(|e| in_shard(e, i, n))?,
                    }
                    Ok::<_, Error>(())
                });
                futures::future::try_join_all(checks).await?;
                self.start_background_gc();
                Ok::<_, Error>(())
            })
            .await
            .map(|_| ())
    }

    /// With `Pack.GcInterval`, runs [`PieceStore::gc`] that often in the background while the
    /// store is open (the task holds no strong reference: it ends with the store).
    fn start_background_gc(&self) {
        let (Some(_), Some(every)) = (&self.inner.packers, self.inner.config.pack.gc_interval)
        else {
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { return };
                let store = PieceStore { inner };
                if store.is_closed() {
                    return;
                }
                match store.gc(GcOptions::default(), &|_| {}).await {
                    Ok(r) => tracing::debug!(?r, "background gc"),
                    Err(e) => tracing::warn!(error = %e, "background gc failed"),
                }
            }
        });
    }

    /// Opens a store from a URL or a path to a `config.toml`, with environment overrides
    /// (what the CLI and the bindings do). See [`Config::load`].
    pub async fn open_spec(spec: &str) -> Result<Self> {
        Self::open(Config::load(spec)?).await
    }

    fn live(&self) -> Result<&Inner> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(&self.inner)
        }
    }

    fn backend(&self, key: &str) -> Result<Arc<Backend>> {
        let inner = self.live()?;
        key::validate(key)?;
        let i = self.shard_of(key);
        if !inner.fork_sensitive || inner.generation == runtime::fork_generation() {
            return Ok(Arc::clone(&inner.shards[i]));
        }
        Ok(Arc::clone(&self.child_shards()?[i]))
    }

    /// The shards to use now: those built at open, or, in a process forked since, shards built
    /// anew from the same config (the parent's HTTP connections belong to the parent's runtime,
    /// whose threads the child does not have; using them would hang).
    fn shards_now(&self) -> Result<Shards> {
        let inner = self.live()?;
        if !inner.fork_sensitive || inner.generation == runtime::fork_generation() {
            return Ok(inner.shards.iter().cloned().collect());
        }
        self.child_shards()
    }

    fn child_shards(&self) -> Result<Shards> {
        let generation = runtime::fork_generation();
        let mut reborn = self.inner.reborn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((g, shards)) = &*reborn
            && *g == generation
        {
            return Ok(Arc::clone(shards));
        }
        tracing::debug!(generation, "rebuilding HTTP clients after fork");
        let config = &self.inner.config;
        let stores = config.shard_stores()?;
        let shards: Shards = (self.inner.shards.iter().zip(&stores).enumerate())
            .map(|(i, (b, sc))| {
                if b.is_fork_sensitive() {
                    let b = Backend::build(sc, &config.backend, config.layout())
                        .map_err(|e| in_shard(e, i, stores.len()))?;
                    Ok(Arc::new(b))
                } else {
                    // Memory and local files hold no runtime-bound state; a memory shard must
                    // even be kept, as it holds the pieces.
                    Ok(Arc::clone(b))
                }
            })
            .collect::<Result<_>>()?;
        *reborn = Some((generation, Arc::clone(&shards)));
        Ok(shards)
    }

    /// The shard (index into the configured shards) that holds `key`.
    pub fn shard_of(&self, key: &str) -> usize {
        self.inner
            .placement
            .shard(key, self.inner.shards.len() as u32) as usize
    }

    /// How keys are placed on shards.
    pub fn placement(&self) -> Placement {
        self.inner.placement
    }

    /// Number of shards (1 when not sharded).
    pub fn shard_count(&self) -> usize {
        self.inner.shards.len()
    }

    /// The backend of each shard, as a label without credentials (e.g. `http://127.0.0.1:9000/b-0`).
    pub fn shard_labels(&self) -> Vec<String> {
        self.inner
            .shards
            .iter()
            .map(|b| b.label().to_string())
            .collect()
    }

    /// The raw `object_store` store behind shard `i` (for tools that inspect a bucket directly).
    pub fn shard_object_store(&self, i: usize) -> Option<Arc<dyn object_store::ObjectStore>> {
        self.shards_now()
            .ok()?
            .get(i)
            .map(|b| Arc::clone(b.object_store()))
    }

    /// Stores a piece. Returns once it is durable on its backend (for files: data and directory
    /// entry fsync'd). Putting the same bytes again succeeds; different bytes under an existing
    /// key fail with `AlreadyExists` (see [`PieceStore::put_opts`] to overwrite).
    pub async fn put(&self, key: &str, data: impl Into<Bytes>) -> Result<()> {
        self.put_opts(key, data, PutOptions::default()).await
    }

    /// [`PieceStore::put`] with options.
    pub async fn put_opts(
        &self,
        key: &str,
        data: impl Into<Bytes>,
        opts: PutOptions,
    ) -> Result<()> {
        let data = data.into();
        let len = data.len() as u64;
        self.observe(Op::Put, key, |_| len, async {
            self.check().await?;
            let backend = self.backend(key)?;
            runtime::yield_before_checksum(len).await;
            let crc = checksum::crc32c(&data);
            if opts.overwrite
                && let Some(cache) = self.cache()
            {
                cache.invalidate(key).await;
            }
            let kept = self.cache().map(|c| (data.clone(), c.epoch()));
            match self.packer(key)? {
                None => backend.put(key, data, crc, opts.overwrite).await?,
                // Under PutTimeout as a whole: the pack writer's group write included.
                // The packed paths' futures are boxed: a group commit or an object write
                // costs far more than the allocation, and inline they would make every put's
                // future (moved by value on each call, memory stores' too) kilobytes larger.
                Some(packer) if len < packer.threshold() => {
                    let work = Box::pin(packer.put(&backend, key, data, crc, opts.overwrite));
                    backend.within(Deadline::Put, "put", key, work).await?
                }
                // A large piece: an object of its own, recorded in the index.
                Some(packer) => {
                    let work =
                        Box::pin(packer.put_object(&backend, key, data, crc, opts.overwrite));
                    backend.within(Deadline::Put, "put", key, work).await?
                }
            }
            if let (Some(cache), Some((data, epoch))) = (self.cache(), kept) {
                if opts.overwrite {
                    // Again: a get that read the old bytes while the put ran must not leave
                    // them behind (the overwrite is written through only if nothing
                    // else invalidated meanwhile; this bump keeps it out: the next get fetches).
                    cache.invalidate(key).await;
                } else {
                    cache.written(key, &data, crc, epoch).await;
                }
            }
            Ok(())
        })
        .await
    }

    /// Reads a whole piece, verified against its CRC32C (`Corrupt` on mismatch, never wrong bytes).
    /// A piece that carries no checksum (written by another tool) is returned as stored; see
    /// [`PieceStore::head`].
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        Ok(self.get_with_crc(key).await?.0)
    }

    /// Reads a whole piece, verified; also returns the checksum it was verified against
    /// (`None` for a piece stored without one, see [`PieceMeta::unverified`]): what a server
    /// sends as the piece's checksum without a second request.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let store = piecestore::PieceStore::open_spec("memory://").await.unwrap();
    /// store.put("1_s0", &b"abc"[..]).await.unwrap();
    /// let (bytes, crc) = store.get_with_crc("1_s0").await.unwrap();
    /// assert_eq!(crc, Some(piecestore::checksum::crc32c(&bytes)));
    /// # }
    /// ```
    pub async fn get_with_crc(&self, key: &str) -> Result<(Bytes, Option<u32>)> {
        self.get_timed(key, &mut None, true).await
    }

    /// [`PieceStore::get_with_crc`] from this node alone: a miss does not ask the peer tier.
    /// What a node answers its peers with, so that a request never travels on from peer to
    /// peer.
    pub async fn get_here_with_crc(&self, key: &str) -> Result<(Bytes, Option<u32>)> {
        self.get_timed(key, &mut None, false).await
    }

    /// The one recorded get: the piece, its checksum, and in `first_byte` when its first byte
    /// could be read; with `ask_peers`, through the peer tier when there is one.
    async fn get_timed(
        &self,
        key: &str,
        first_byte: &mut Option<Instant>,
        ask_peers: bool,
    ) -> Result<(Bytes, Option<u32>)> {
        self.observe(Op::Get, key, |(b, _)| b.len() as u64, async {
            self.check().await?;
            let backend = self.backend(key)?;
            // Under GetTimeout as a whole: a packed store's index catching up included.
            let work = self.get_cached(&backend, key, first_byte, ask_peers);
            backend.within(Deadline::Get, "get", key, work).await
        })
        .await
    }

    /// The piece if the data cache's memory tier holds it, at once on the calling thread (no
    /// await; on a packed store with a local index, one index lookup checks that the piece is
    /// still there), recorded as a get; `None` otherwise (then make an ordinary
    /// [`PieceStore::get`]). For a binding that answers a cache hit without leaving the
    /// caller's thread (or releasing Python's GIL).
    pub fn get_resident(&self, key: &str) -> Option<Bytes> {
        let cache = self.cache()?;
        if self.is_closed() || key::validate(key).is_err() {
            return None;
        }
        let metrics = &self.inner.metrics;
        let start = metrics.enabled().then(quanta::Instant::now);
        let packer = self.packer(key).ok()?;
        let e = cache.memory_peek(key, |e| still_held(&packer, key, e))?;
        if e.crc.is_none() {
            metrics.unverified_read(self.shard_of(key));
        }
        if let Some(start) = start {
            let len = e.bytes.len() as u64;
            metrics.record(self.shard_of(key), Op::Get, start.elapsed(), Ok(len));
        }
        Some(e.bytes)
    }

    /// [`PieceStore::get_on`] through the data cache, when there is one; then, with `peers`,
    /// through the peer tier.
    async fn get_cached(
        &self,
        backend: &Arc<Backend>,
        key: &str,
        first_byte: &mut Option<Instant>,
        peers: bool,
    ) -> Result<(Bytes, Option<u32>)> {
        let Some(cache) = self.cache() else {
            let got = self
                .get_here_or_peers(backend, key, first_byte, peers)
                .await?;
            if got.1.is_none() {
                self.inner.metrics.unverified_read(self.shard_of(key));
            }
            return Ok(got);
        };
        let mut hit = false;
        let mut fetched_first_byte = None;
        let packer = self.packer(key)?;
        let current = |e: &crate::cache::Entry| still_held(&packer, key, e);
        // Boxed: the cache's future (its tiers and the fetch on a miss) is 2 KiB that a get
        // without a cache would otherwise carry, and copy each time its future moves.
        let e = Box::pin(cache.get(key, &mut hit, current, || async {
            let (bytes, crc) = self
                .get_here_or_peers(backend, key, &mut fetched_first_byte, peers)
                .await?;
            Ok(crate::cache::Entry { bytes, crc })
        }))
        .await?;
        *first_byte = if hit {
            Some(Instant::now())
        } else {
            fetched_first_byte.or_else(|| Some(Instant::now()))
        };
        if e.crc.is_none() {
            // Every return of a piece without a checksum counts, from a tier or not.
            self.inner.metrics.unverified_read(self.shard_of(key));
        }
        Ok((e.bytes, e.crc))
    }

    /// Gives this store the peer tier: from now on a get whose piece is missing here, whose
    /// backend fails, or whose copy here is corrupt asks `peers` before it fails (the piece a
    /// peer sends is verified against its CRC32C, and kept by the data cache's tiers like any
    /// read, never written to the backend). Only the first call sets it; `false` after.
    pub fn set_peers(&self, peers: Arc<dyn crate::peer::PeerTier>) -> bool {
        self.inner.peers.set(peers).is_ok()
    }

    /// Where this node keeps its P2P identity key: `[PieceStore.Peers] IdentityFile`, else
    /// `.piecestore/p2p-identity.key` in the first shard's directory (a `file` store), else
    /// `p2p-identity.key` in `Pack.IndexDir`, else in the user's cache directory (one per
    /// store).
    pub fn peer_identity_path(&self) -> std::path::PathBuf {
        let config = &self.inner.config;
        if let Some(p) = &config.peers.identity_file {
            return p.clone();
        }
        const NAME: &str = "p2p-identity.key";
        if let Some(root) = self.inner.shards.first().and_then(|b| b.root_dir()) {
            return root.join(".piecestore").join(NAME);
        }
        if let Some(dir) = &config.pack.index_dir {
            return dir.join(NAME);
        }
        let label = self.shard_labels().join(" ");
        let index = crate::pack::index::default_index_path(None, &label, 0);
        index.with_file_name(NAME)
    }

    /// Whether [`PieceStore::set_peers`] gave this store a peer tier.
    pub fn has_peers(&self) -> bool {
        self.inner.peers.get().is_some()
    }

    /// [`PieceStore::get_on`], and when that fails in a way another node's copy would cure,
    /// the peer tier's copy.
    async fn get_here_or_peers(
        &self,
        backend: &Arc<Backend>,
        key: &str,
        first_byte: &mut Option<Instant>,
        ask_peers: bool,
    ) -> Result<(Bytes, Option<u32>)> {
        let here = self.get_on(backend, key, first_byte).await;
        let Some(peers) = self.inner.peers.get().filter(|_| ask_peers) else {
            return here;
        };
        let failure = match here {
            Err(e @ (Error::NotFound { .. } | Error::Corrupt { .. } | Error::Backend { .. })) => e,
            other => return other,
        };
        match peers.fetch(key).await {
            Ok(Some(p)) => {
                let crc = crate::checksum::crc32c(&p.bytes);
                if crc != p.crc32c {
                    // A tier must verify; this one did not. Never return its bytes.
                    tracing::warn!(key, from = %p.from, "a peer's piece failed its checksum");
                    return Err(failure);
                }
                tracing::debug!(key, from = %p.from, "read from a peer");
                *first_byte = first_byte.or_else(|| Some(Instant::now()));
                Ok((p.bytes, Some(crc)))
            }
            Ok(None) => Err(failure),
            Err(e) => {
                tracing::debug!(key, error = %e, "the peer tier failed");
                Err(failure)
            }
        }
    }

    /// Reads a piece from its pack, or else its object.
    async fn get_on(
        &self,
        backend: &Arc<Backend>,
        key: &str,
        first_byte: &mut Option<Instant>,
    ) -> Result<(Bytes, Option<u32>)> {
        let packer = self.packer(key)?;
        let mut looked = false;
        let (bytes, crc) = loop {
            // Boxed: see put_opts.
            if let Some(packer) = &packer
                && let Some((bytes, crc)) = Box::pin(packer.get(backend, key)).await?
            {
                *first_byte = Some(Instant::now());
                return Ok((bytes, Some(crc)));
            }
            match backend.get_timed(key, first_byte).await {
                // The index said "an object" (or nothing) and the object is gone: an overwrite
                // by a packed piece (in this process or another) may have replaced it since.
                // Look again, once.
                Err(Error::NotFound { .. }) if packer.is_some() && !looked => looked = true,
                other => break other?,
            }
        };
        if crc.is_none() && !self.inner.allow_unverified {
            return Err(unverifiable(key, backend));
        }
        Ok((bytes, crc))
    }

    /// Reads a whole piece as a stream of chunks of about 1 MiB, for a caller that sends it on
    /// (a server, a copy): a large piece's first bytes leave before its last are read, and it
    /// is never whole in memory.
    ///
    /// Verified as [`PieceStore::get`] is: the last chunk is held back until the piece has
    /// matched its length and CRC32C, and a mismatch ends the stream with `Corrupt` in its
    /// place, so a reader that takes the stream to its end has had either the piece, byte-exact,
    /// or an error (then it drops the chunks before it). A piece in a pack, a piece the data
    /// cache may hold (no larger than its `MaxPiece`) and a piece this store lacks but a peer
    /// may have are read whole, verified before their one chunk, as a get reads them. Recorded
    /// as one get when the stream ends.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use futures::TryStreamExt;
    /// let store = piecestore::PieceStore::open_spec("memory://").await.unwrap();
    /// store.put("1_s0", vec![7u8; 3 << 20]).await.unwrap();
    /// let piece = store.get_stream("1_s0").await.unwrap();
    /// assert_eq!(piece.meta.size, 3 << 20);
    /// let chunks: Vec<_> = piece.chunks.try_collect().await.unwrap();
    /// assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), 3 << 20);
    /// # }
    /// ```
    pub async fn get_stream(&self, key: &str) -> Result<PieceStream> {
        self.check().await?;
        let backend = self.backend(key)?;
        let packer = self.packer(key)?;
        let mut whole = match &packer {
            Some(p) => {
                let work = p.holds_packed(&backend, key);
                backend.within(Deadline::Get, "get", key, work).await?
            }
            None => false,
        };
        if !whole && let Some(cache) = self.cache() {
            whole = self
                .head_here(key)
                .await
                .map_or(true, |m| m.size <= cache.max_piece());
        }
        if !whole {
            let start = Instant::now();
            let failed = |e: Error| {
                let metrics = &self.inner.metrics;
                if metrics.enabled() {
                    metrics.record(self.shard_of(key), Op::Get, start.elapsed(), Err(e.kind()));
                }
                e
            };
            let opened = async {
                let (meta, mut chunks) = backend.get_stream(key).await?;
                if meta.crc32c.is_none() && !self.inner.allow_unverified {
                    return Err(unverifiable(key, &backend));
                }
                if meta.size <= STREAM_CHUNK as u64 {
                    // One chunk, which comes verified: its error, if any, comes now, before
                    // the caller has sent anything (an HTTP status, say).
                    chunks = match chunks.next().await {
                        Some(first) => {
                            let first = first?;
                            stream::once(async move { Ok(first) }).chain(chunks).boxed()
                        }
                        None => stream::empty().boxed(),
                    };
                }
                Ok((meta, chunks))
            };
            match opened.await {
                Ok((meta, chunks)) => {
                    let shard = self.shard_of(key);
                    if meta.crc32c.is_none() {
                        self.inner.metrics.unverified_read(shard);
                    }
                    let chunks = self.observed_get(shard, start, chunks);
                    return Ok(PieceStream { meta, chunks });
                }
                // A peer may have it; or an overwrite may have moved it into a pack since the
                // index was asked: the whole get asks both.
                Err(Error::NotFound { .. } | Error::Backend { .. } | Error::Corrupt { .. })
                    if self.has_peers() => {}
                Err(Error::NotFound { .. }) if packer.is_some() => {}
                Err(e) => return Err(failed(e)),
            }
        }
        let (got, meta) = tokio::join!(self.get_with_crc(key), self.head(key));
        let (bytes, crc) = got?;
        let last_modified = meta.map_or(std::time::SystemTime::UNIX_EPOCH, |m| m.last_modified);
        let meta = PieceMeta {
            key: key.into(),
            size: bytes.len() as u64,
            crc32c: crc,
            last_modified,
        };
        let chunks = if bytes.is_empty() {
            stream::empty().boxed()
        } else {
            stream::iter([Ok(bytes)]).boxed()
        };
        Ok(PieceStream { meta, chunks })
    }

    /// A streamed get's chunks, recorded as one get of the bytes they carried when the stream
    /// ends or is dropped (an error it ended with is the get's error).
    fn observed_get(
        &self,
        shard: usize,
        start: Instant,
        inner: BoxStream<'static, Result<Bytes>>,
    ) -> BoxStream<'static, Result<Bytes>> {
        if !self.inner.metrics.enabled() {
            return inner;
        }
        let mut recorded = StreamRecord::new(self, Op::Get, shard, start);
        inner
            .inspect(move |item| recorded.saw(item, |b| b.len() as u64))
            .boxed()
    }

    /// [`PieceStore::get`] that also returns when its first byte could be read (for the
    /// benchmark's time to first byte; `None` when the get failed before that).
    pub(crate) async fn get_first_byte(&self, key: &str) -> Result<(Bytes, Option<Instant>)> {
        let mut first = None;
        let (bytes, _) = self.get_timed(key, &mut first, true).await?;
        Ok((bytes, first))
    }

    /// Reads `len` bytes at `offset`. The whole piece is read and verified, then sliced (no
    /// copy), so a range is never returned from a corrupt piece. `InvalidRange` when the range
    /// is not inside the piece.
    pub async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes> {
        self.observe(Op::GetRange, key, |b| b.len() as u64, async {
            self.check().await?;
            let backend = self.backend(key)?;
            let mut first_byte = None;
            let work = self.get_cached(&backend, key, &mut first_byte, true);
            let (bytes, _) = backend.within(Deadline::Get, "get", key, work).await?;
            let size = bytes.len() as u64;
            match offset.checked_add(len) {
                Some(end) if end <= size => Ok(bytes.slice(offset as usize..end as usize)),
                _ => Err(Error::InvalidRange {
                    key: key.into(),
                    offset,
                    len,
                    size,
                }),
            }
        })
        .await
    }

    /// A piece's size and checksum (`crc32c: None`, `unverified()`, for a piece written without
    /// one), in one small request.
    ///
    /// With a peer tier ([`PieceStore::set_peers`]), a piece this store lacks (or cannot
    /// reach) is looked up at the peers too, as a get of it would be: `head` and
    /// [`PieceStore::exists`] say whether a get can return it.
    pub async fn head(&self, key: &str) -> Result<PieceMeta> {
        self.head_opts(key, true).await
    }

    /// [`PieceStore::head`] from this node alone (what a node answers its peers with).
    pub async fn head_here(&self, key: &str) -> Result<PieceMeta> {
        self.head_opts(key, false).await
    }

    async fn head_opts(&self, key: &str, ask_peers: bool) -> Result<PieceMeta> {
        self.observe(Op::Head, key, |_| 0, async {
            self.check().await?;
            let backend = self.backend(key)?;
            if let Some(packer) = self.packer(key)? {
                let work = packer.head(&backend, key);
                if let Some(meta) = backend.within(Deadline::Get, "head", key, work).await? {
                    return Ok(meta);
                }
            }
            let here = backend.head(key).await;
            let Some(peers) = self.inner.peers.get().filter(|_| ask_peers) else {
                return here;
            };
            match here {
                Err(e @ (Error::NotFound { .. } | Error::Backend { .. })) => {
                    match peers.head(key).await {
                        Ok(Some(meta)) => Ok(meta),
                        Ok(None) => Err(e),
                        Err(pe) => {
                            tracing::debug!(key, error = %pe, "the peer tier failed");
                            Err(e)
                        }
                    }
                }
                other => other,
            }
        })
        .await
    }

    /// Whether a piece exists under `key` (a HEAD; `NotFound` is `false`, other errors stay
    /// errors).
    pub async fn exists(&self, key: &str) -> Result<bool> {
        found(self.head(key).await)
    }

    /// [`PieceStore::exists`] in this node's own store alone, not at its peers: whether a
    /// create-only put here would find the key taken.
    pub async fn exists_here(&self, key: &str) -> Result<bool> {
        found(self.head_here(key).await)
    }

    /// Deletes a piece. Deleting a missing piece succeeds (deletes are idempotent, as on S3).
    pub async fn delete(&self, key: &str) -> Result<()> {
        self.observe(Op::Delete, key, |_| 0, async {
            self.check().await?;
            let backend = self.backend(key)?;
            if let Some(cache) = self.cache() {
                cache.invalidate(key).await;
            }
            let deleted = self.delete_on(&backend, key).await;
            if let Some(cache) = self.cache() {
                // Again: a get that began before the delete must not leave it behind.
                cache.invalidate(key).await;
            }
            deleted
        })
        .await
    }

    /// Deletes a piece on its shard's backend: a tombstone when it is packed.
    async fn delete_on(&self, backend: &Arc<Backend>, key: &str) -> Result<()> {
        match self.packer(key)? {
            Some(packer) => {
                let work = packer.delete(backend, key);
                backend.within(Deadline::Delete, "delete", key, work).await
            }
            None => backend.delete(key).await,
        }
    }

    /// The packer of `key`'s shard, when small pieces are packed.
    fn packer(&self, key: &str) -> Result<Option<Arc<ShardPacker>>> {
        Ok(self
            .packers_now()?
            .map(|p| Arc::clone(&p[self.shard_of(key)])))
    }

    /// The shards' packers to use now: those built at open, or, in a process forked since,
    /// packers built anew (the parent's hold its index connections, its active packs and its
    /// writer tasks; the child is one more process on the store, with packs of its own). A
    /// memory store's packers hold its pieces and cannot be shared across `fork()`.
    fn packers_now(&self) -> Result<Option<Packers>> {
        let inner = &self.inner;
        let Some(packers) = &inner.packers else {
            return Ok(None);
        };
        let generation = runtime::fork_generation();
        if inner.generation == generation {
            return Ok(Some(Arc::clone(packers)));
        }
        let mut reborn = inner
            .child_packers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((g, p)) = &*reborn
            && *g == generation
        {
            return Ok(Some(Arc::clone(p)));
        }
        if packers.iter().any(|p| p.is_memory()) {
            return Err(Error::config(
                "this memory store packs small pieces in the memory of the process that opened \
                 it; a forked child cannot use it (open a store in the child instead)",
            ));
        }
        let shards = self.shards_now()?;
        let fresh = build_packers(&inner.config, &shards)?
            .ok_or_else(|| Error::config("the store's packing changed in a forked child"))?;
        *reborn = Some((generation, Arc::clone(&fresh)));
        Ok(Some(fresh))
    }

    /// One shard's pieces under `prefix`: its objects, then its packed pieces.
    fn shard_list(
        &self,
        shard: usize,
        backend: &Arc<Backend>,
        prefix: &str,
    ) -> BoxStream<'static, Result<PieceMeta>> {
        let objects = backend.list(prefix);
        let Some(packers) = &self.inner.packers else {
            return self.observed_list(shard, objects);
        };
        let packer = match self.packers_now() {
            Ok(Some(p)) => Arc::clone(&p[shard]),
            Ok(None) => Arc::clone(&packers[shard]),
            Err(e) => return stream::once(async move { Err(e) }).boxed(),
        };
        let b = Arc::clone(backend);
        // An object whose key the index holds as a packed piece is not that piece (an object
        // an overwrite left, about to go): the packed piece is listed instead.
        let objects = {
            let (packer, b) = (Arc::clone(&packer), Arc::clone(&b));
            objects
                .try_filter_map(move |m| {
                    let (packer, b) = (Arc::clone(&packer), Arc::clone(&b));
                    async move { Ok((!packer.holds_packed(&b, &m.key).await?).then_some(m)) }
                })
                .boxed()
        };
        let p = prefix.to_string();
        let packed = stream::once(async move {
            let metas = packer.list_packed(&b, &p).await?;
            Ok::<_, Error>(stream::iter(metas.into_iter().map(Ok)))
        })
        .try_flatten();
        self.observed_list(shard, objects.chain(packed).boxed())
    }

    /// Lists the pieces whose keys start with `prefix` (any string prefix; "" for all) on every
    /// shard, as a stream. Order is not specified across shards.
    pub fn list(&self, prefix: &str) -> BoxStream<'static, Result<PieceMeta>> {
        if let Err(e) = key::validate_prefix(prefix) {
            return stream::once(async move { Err(e) }).boxed();
        }
        let store = self.clone();
        let prefix = prefix.to_string();
        stream::once(async move {
            store.check().await?;
            let shards = store.shards_now()?;
            Ok(stream::select_all(
                shards
                    .iter()
                    .enumerate()
                    .map(|(i, b)| store.shard_list(i, b, &prefix)),
            ))
        })
        .try_flatten()
        .boxed()
    }

    /// One shard's listing, recorded as one `list` operation when it ends (or is dropped).
    fn observed_list(
        &self,
        shard: usize,
        inner: BoxStream<'static, Result<PieceMeta>>,
    ) -> BoxStream<'static, Result<PieceMeta>> {
        if !self.inner.metrics.enabled() {
            return inner;
        }
        let mut recorded = StreamRecord::new(self, Op::List, shard, Instant::now());
        inner.inspect(move |item| recorded.saw(item, |_| 0)).boxed()
    }

    /// Enters the store for one operation: `Closed` once `close` has begun; else a share of
    /// the gate that `close` waits for.
    async fn enter(&self) -> Result<tokio::sync::RwLockReadGuard<'_, ()>> {
        let guard = self.inner.gate.read().await;
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(guard)
    }

    /// Runs one operation on `key`'s shard inside a `piecestore` tracing span, and records its
    /// latency and its bytes (`size` of the result) or its error kind.
    #[inline]
    async fn observe<T>(
        &self,
        op: Op,
        key: &str,
        size: impl FnOnce(&T) -> u64,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let shard = self.shard_of(key);
        let span = tracing::debug_span!("piecestore", op = op.as_str(), key, shard);
        // Boxed: an operation's future holds every path it may take (the pack writer's, the
        // cache's, the peers'), several KiB, and moving it by value through the span and this
        // function's own future cost more than the whole of a memory store's get (perf: half
        // of a 4 KiB get's time in memcpy). One allocation moves a pointer instead.
        let fut = Box::pin(async {
            let _entered = self.enter().await?;
            fut.await
        });
        let metrics = &self.inner.metrics;
        if !metrics.enabled() {
            return fut.instrument(span).await;
        }
        let start = quanta::Instant::now();
        let result = fut.instrument(span).await;
        let outcome = match &result {
            Ok(v) => Ok(size(v)),
            Err(e) => Err(e.kind()),
        };
        metrics.record(shard, op, start.elapsed(), outcome);
        result
    }

    /// What the store holds: pieces, bytes, sizes, per-shard balance and orphans, from one
    /// listing of every shard (`piecestore profile`). `progress` is called with the number of
    /// objects listed so far, every 1,000 objects.
    pub async fn inventory(
        &self,
        opts: InventoryOptions,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Inventory> {
        let _entered = self.enter().await?;
        self.check().await?;
        let shards = self.shards_now()?;
        let mut packed = Vec::with_capacity(shards.len());
        for (i, b) in shards.iter().enumerate() {
            packed.push(match self.packers_now()? {
                None => None,
                Some(p) => {
                    let index = p[i].index(b).await?;
                    Some(inventory::PackedShard {
                        pieces: p[i].list_packed(b, "").await?,
                        packs: index.packs()?.into_iter().map(|(_, info)| info).collect(),
                    })
                }
            });
        }
        inventory::collect(&shards, packed, self.inner.placement, &opts, progress).await
    }

    /// A copy of this store's operation metrics (count, bytes, errors by kind and latency, per
    /// shard and operation); [`Metrics::to_prometheus`] renders them as Prometheus text.
    /// Clones of a store share one set of metrics. Empty when the config says `Metrics = false`.
    pub fn metrics(&self) -> Metrics {
        let mut m = self.inner.metrics.snapshot();
        if m.enabled {
            m.cache = self.cache_stats();
        }
        if m.enabled
            && let Some(packers) = &self.inner.packers
        {
            m.pack_writes = (m.unverified_reads.iter().map(|(b, _)| *b))
                .zip(packers.iter())
                .map(|(b, p)| (b, p.written()))
                .collect();
        }
        m
    }

    /// Deletes every piece whose key starts with `prefix`, on **every** shard (object-level GC:
    /// `s{objectID}_` and `e{objectID}_` remove an object's pieces). The original Go piecestore
    /// listed only the shard the prefix itself hashes to and left the rest behind.
    ///
    /// An empty prefix is refused (`InvalidKey`): delete everything by listing explicitly.
    /// The deletes run as tasks of their own (see [`PieceStore::put_many`]).
    pub async fn delete_prefix(&self, prefix: &str) -> Result<DeleteSummary> {
        self.check().await?;
        let shards = self.shards_now()?;
        if prefix.is_empty() {
            return Err(Error::InvalidKey {
                key: String::new(),
                reason: "refusing to delete with an empty prefix (it would delete every piece)",
            });
        }
        key::validate_prefix(prefix)?;
        if let Some(cache) = self.cache() {
            cache.invalidate_prefix(prefix).await;
        }
        let per_shard = shards.iter().enumerate().map(|(i, b)| {
            let b = Arc::clone(b);
            async move {
                self.shard_list(i, &b, prefix)
                    .map(|m| {
                        let b = Arc::clone(&b);
                        let delete = m.map(|m| {
                            let s = self.clone();
                            each(async move {
                                let key = m.key.as_str();
                                s.observe(Op::Delete, key, |_| 0, s.delete_on(&b, key))
                                    .await
                                    .map(|()| m.size)
                            })
                        });
                        async move { delete?.await }
                    })
                    .buffer_unordered(BATCH_CONCURRENCY)
                    .try_fold(DeleteSummary::default(), |acc, size| async move {
                        Ok(DeleteSummary {
                            pieces: acc.pieces + 1,
                            bytes: acc.bytes + size,
                        })
                    })
                    .await
            }
        });
        let sums = futures::future::try_join_all(per_shard).await;
        if let Some(cache) = self.cache() {
            cache.invalidate_prefix(prefix).await;
        }
        Ok(sums?
            .into_iter()
            .fold(DeleteSummary::default(), |a, s| DeleteSummary {
                pieces: a.pieces + s.pieces,
                bytes: a.bytes + s.bytes,
            }))
    }

    /// Stores many pieces concurrently; one result per item, in order.
    ///
    /// On a tokio multi-thread runtime each put runs as a task of its own (aborted if this
    /// call is dropped), so that on a packed store the puts share write groups (one append and
    /// one `fdatasync` for many). Puts a caller polls together in one task of its own
    /// (`join_all` over `put`), or this call on a current-thread runtime, write a group each.
    pub async fn put_many<K, D, I>(&self, items: I) -> Vec<Result<()>>
    where
        I: IntoIterator<Item = (K, D)>,
        K: AsRef<str>,
        D: Into<Bytes>,
    {
        self.put_many_opts(items, PutOptions::default()).await
    }

    /// [`PieceStore::put_many`] with options for every piece.
    pub async fn put_many_opts<K, D, I>(&self, items: I, opts: PutOptions) -> Vec<Result<()>>
    where
        I: IntoIterator<Item = (K, D)>,
        K: AsRef<str>,
        D: Into<Bytes>,
    {
        let items: Vec<(String, Bytes)> = items
            .into_iter()
            .map(|(k, d)| (k.as_ref().to_owned(), d.into()))
            .collect();
        stream::iter(items)
            .map(|(k, d)| {
                let s = self.clone();
                each(async move { s.put_opts(&k, d, opts).await })
            })
            .buffered(BATCH_CONCURRENCY)
            .collect()
            .await
    }

    /// Reads many pieces concurrently; one result per key, in order.
    pub async fn get_many<K, I>(&self, keys: I) -> Vec<Result<Bytes>>
    where
        I: IntoIterator<Item = K>,
        K: AsRef<str>,
    {
        let keys: Vec<K> = keys.into_iter().collect();
        stream::iter(keys)
            .map(|k| async move { self.get(k.as_ref()).await })
            .buffered(BATCH_CONCURRENCY)
            .collect()
            .await
    }

    /// Whether [`PieceStore::close`] was called (on this store or a clone).
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Closes the store: later calls fail with `Closed`; calls already running are waited for,
    /// then every write is finished and durable, and the pack index is let go (another process
    /// may open the store). Every put that returned was durable already. A memory store's
    /// pieces are freed at once (nothing can reach them any more), not when the last clone
    /// of the store is dropped, and so are the pieces in the cache's memory tier (the disk
    /// tier's files stay for the next open). Closing a closed store (or a clone of one) does
    /// nothing.
    pub async fn close(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let _quiet = self.inner.gate.write().await;
        // In a forked child, the child's own packers (the parent's are the parent's).
        let packers = if self.inner.generation == runtime::fork_generation() {
            self.inner.packers.clone()
        } else {
            let child = self.inner.child_packers.lock();
            let child = child.unwrap_or_else(|p| p.into_inner());
            child.as_ref().map(|(_, p)| Arc::clone(p))
        };
        if let Some(packers) = packers {
            let _ = self.flush_packers().await;
            for p in packers.iter() {
                p.release_user().await;
            }
        }
        // (Memory backends are not rebuilt in a forked child: the ones built at open.)
        for b in self.inner.shards.iter() {
            b.release_memory();
        }
        // Nothing reads through the cache after a close: its memory tier goes now, not when
        // the last handle on the store is dropped (a binding's, at the garbage collector's
        // pace).
        if let Some(c) = self.cache() {
            c.release_memory();
        }
    }

    /// Writes every shard's open pack now instead of at its size or age, and waits until it is
    /// durable (every put already waits for its own pack; this is for a caller that wants the
    /// open packs out, e.g. before a snapshot). Nothing to do on an unpacked store.
    pub async fn flush(&self) -> Result<()> {
        let _entered = self.enter().await?;
        self.flush_packers().await
    }

    async fn flush_packers(&self) -> Result<()> {
        let Some(packers) = self.packers_now()? else {
            return Ok(());
        };
        let shards = self.shards_now()?;
        let n = shards.len();
        futures::future::try_join_all(
            packers
                .iter()
                .zip(shards.iter())
                .enumerate()
                .map(|(i, (p, b))| async move { p.flush(b).await.map_err(|e| in_shard(e, i, n)) }),
        )
        .await
        .map(|_| ())
    }

    /// The layout the store keeps its pieces in ([`crate::config::Layout`]).
    pub fn layout(&self) -> crate::config::Layout {
        self.inner.config.layout()
    }

    /// The data cache, when there is one and this is the process that opened the store: a
    /// forked child reads and writes around it (the parent's locks and entries are not the
    /// child's to use; the child is one more process on the store).
    fn cache(&self) -> Option<&Arc<crate::cache::PieceCache>> {
        let inner = &self.inner;
        inner
            .cache
            .as_ref()
            .filter(|_| inner.generation == runtime::fork_generation())
    }

    /// The data cache's counters and fill per tier (`None` when no tier is on).
    pub fn cache_stats(&self) -> Option<crate::cache::CacheStats> {
        self.cache().map(|c| c.stats())
    }

    /// Empties the data cache's tiers (the disk tier's files too); `false` when there is no
    /// cache. Never needed for correctness: pieces are immutable, and deletes in this process
    /// invalidate at once.
    pub async fn clear_cache(&self) -> bool {
        match self.cache() {
            Some(c) => {
                c.clear().await;
                true
            }
            None => false,
        }
    }

    /// The data cache's tiers in words, for `piecestore info` and `cache stats`.
    pub fn caching(&self) -> String {
        let Some(c) = self.cache() else {
            return "off".into();
        };
        let s = c.stats();
        let size = crate::bench::human_size;
        let tiers: Vec<String> = s
            .tiers
            .iter()
            .map(|t| match (t.tier, c.disk_dir()) {
                ("disk", Some(dir)) => format!("disk {} at {}", size(t.capacity), dir.display()),
                (tier, _) => format!("{tier} {}", size(t.capacity)),
            })
            .collect();
        tiers.join(", ")
    }

    /// Whether this store packs small pieces (`[PieceStore.Pack]`).
    pub fn is_packed(&self) -> bool {
        self.inner.packers.is_some()
    }

    /// Whether and how small pieces are packed, in words, for `piecestore info` and the
    /// bindings' `repr`: `"off (one object per piece)"`, or the threshold, pack size, gc
    /// settings and where the index is kept (never the index URL's password).
    pub fn packing(&self) -> String {
        if !self.is_packed() {
            return "off (one object per piece)".into();
        }
        let p = &self.inner.config.pack;
        let size = crate::bench::human_size;
        let gc = match p.gc_interval {
            Some(every) => format!("every {}", humantime::format_duration(every)),
            None => "by `piecestore gc`".into(),
        };
        let index = if !self.inner.config.index.url.is_empty() {
            format!(
                "PostgreSQL at {}",
                crate::error::redact_url(self.inner.config.index.url.expose())
            )
        } else if self.inner.shards.iter().all(|b| b.is_memory()) {
            "in memory".into()
        } else {
            "SQLite on this host".into()
        };
        format!(
            "on: pieces under {} packed into packs of {}; gc {gc} of packs over {:.0}% garbage, \
             compacted packs deleted after {}; index {index}",
            size(p.threshold),
            size(p.target_size),
            p.garbage_ratio * 100.0,
            humantime::format_duration(p.grace),
        )
    }

    /// Garbage collection of packs (`piecestore gc`): deletes compacted packs whose grace period
    /// is over, rewrites packs whose garbage passed `Pack.GarbageRatio`, and merges undersized
    /// packs (a short-lived process writes small ones). Safe while reads and writes go on.
    /// `progress` is called with the bytes of packs processed so far. An unpacked store has
    /// nothing to collect.
    pub async fn gc(
        &self,
        opts: GcOptions,
        progress: &(dyn Fn(GcProgress) + Sync),
    ) -> Result<GcReport> {
        opts.validate()?;
        let _entered = self.enter().await?;
        self.check().await?;
        let Some(packers) = self.packers_now()? else {
            return Ok(GcReport::default());
        };
        let shards = self.shards_now()?;
        let n = shards.len();
        let mut total = GcReport::default();
        for (i, (p, b)) in packers.iter().zip(shards.iter()).enumerate() {
            let r = crate::pack::gc::gc_shard(p, b, &opts, progress)
                .await
                .map_err(|e| in_shard(e, i, n))?;
            total.add(&r);
        }
        Ok(total)
    }

    /// Checks every pack and every index entry (CRCs, bounds, orphan packs, dangling
    /// entries, live-byte accounting); with `rebuild_index`, rebuilds the index from the packs
    /// alone and checks again (`piecestore fsck`). `progress` gets the bytes read so far.
    pub async fn fsck(
        &self,
        opts: FsckOptions,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<FsckReport> {
        let _entered = self.enter().await?;
        self.check().await?;
        let Some(packers) = self.packers_now()? else {
            return Ok(FsckReport::default());
        };
        let shards = self.shards_now()?;
        let n = shards.len();
        let mut total = FsckReport::default();
        for (i, (p, b)) in packers.iter().zip(shards.iter()).enumerate() {
            let r = crate::pack::fsck::fsck_shard(p, b, i, &opts, progress)
                .await
                .map_err(|e| in_shard(e, i, n))?;
            total.add(r);
        }
        Ok(total)
    }
}

fn build_shards(config: &Config) -> Result<Vec<Arc<Backend>>> {
    let stores = config.shard_stores()?;
    let mut shards = Vec::with_capacity(stores.len());
    for (i, sc) in stores.iter().enumerate() {
        let b = Backend::build(sc, &config.backend, config.layout())
            .map_err(|e| in_shard(e, i, stores.len()))?;
        shards.push(Arc::new(b));
    }
    Ok(shards)
}

/// A packer per shard when the config packs small pieces: the index of a local directory in
/// its `.piecestore/index.sqlite`, of a bucket under `Pack.IndexDir` (default: the user's cache
/// directory), of a memory store in memory.
fn build_packers(config: &Config, shards: &[Arc<Backend>]) -> Result<Option<Packers>> {
    // Packing is PieceStore's own layout: off by default for memory:// and for the original's.
    // A grpc:// store's server packs its pieces itself (and keeps no client objects).
    let all_memory = shards.iter().all(|b| b.is_memory());
    let any_grpc = shards.iter().any(|b| b.is_grpc());
    let default = !all_memory && !any_grpc && config.layout() == crate::config::Layout::PieceStore;
    if !config.pack.enabled.unwrap_or(default) {
        return Ok(None);
    }
    if any_grpc {
        return Err(Error::config(
            "Pack: a grpc:// store does not pack: the server packs the pieces it stores (leave pack unset, or set pack=false)",
        ));
    }
    config.pack.validate()?;
    let packers = shards
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let packs_dir = b.root_dir().map(|r| r.join(".piecestore").join("packs"));
            if !config.index.url.is_empty() && !b.is_memory() {
                let at = crate::pack::IndexAt::Postgres {
                    url: config.index.url.clone(),
                    ix: format!("{}#{i}", b.label()),
                };
                return shared_packer(i, &config.pack, at, packs_dir, b.label());
            }
            let path = if b.is_memory() {
                None
            } else if let Some(root) = b.root_dir() {
                Some(crate::pack::index::default_index_path(
                    Some(&root),
                    b.label(),
                    i,
                ))
            } else if let Some(dir) = &config.pack.index_dir {
                let hash = crate::shard::fnv1a32(b.label().as_bytes());
                Some(dir.join(format!("shard-{i}-{hash:08x}.sqlite")))
            } else {
                Some(crate::pack::index::default_index_path(None, b.label(), i))
            };
            match path {
                Some(path) => shared_packer(
                    i,
                    &config.pack,
                    crate::pack::IndexAt::File(path),
                    packs_dir,
                    b.label(),
                ),
                None => Ok(Arc::new(ShardPacker::new(
                    i,
                    config.pack.clone(),
                    crate::pack::IndexAt::Memory,
                    None,
                ))),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    // Counted only once every shard's packer is there (a refused one leaves no count behind).
    packers.iter().for_each(|p| p.add_user());
    Ok(Some(packers.into()))
}

/// The packer of the index at `path`, shared by every store this process opened on it (an
/// index file is one process's, and two handles on one directory must see one writer). A
/// second handle must pack as the first does: other options are refused, not ignored.
fn shared_packer(
    shard: usize,
    opts: &crate::config::PackOptions,
    at: crate::pack::IndexAt,
    packs_dir: Option<std::path::PathBuf>,
    label: &str,
) -> Result<Arc<ShardPacker>> {
    use std::collections::HashMap;
    use std::sync::Weak;
    // By fork generation too: a forked child's packers are its own.
    type Open = HashMap<(String, u64), Weak<ShardPacker>>;
    static OPEN: Mutex<Option<Open>> = Mutex::new(None);
    let key = match &at {
        crate::pack::IndexAt::File(path) => path
            .parent()
            .and_then(|d| std::fs::canonicalize(d).ok())
            .map(|d| d.join(path.file_name().unwrap_or_default()))
            .unwrap_or_else(|| path.clone())
            .display()
            .to_string(),
        // One packer per shard name and database (the same URL: one registration).
        crate::pack::IndexAt::Postgres { url, ix } => {
            format!(
                "postgres {ix} {:08x}",
                crate::shard::fnv1a32(url.expose().as_bytes())
            )
        }
        crate::pack::IndexAt::Memory => String::new(),
    };
    let key = (key, runtime::fork_generation());
    let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
    let map = open.get_or_insert_with(HashMap::new);
    map.retain(|_, w| w.strong_count() > 0);
    if let Some(p) = map.get(&key).and_then(Weak::upgrade) {
        if let Some(diff) = p.opts().packing_differs(opts) {
            return Err(Error::config(format!(
                "{label} is already open in this process with other pack options ({diff}); \
                 open it with the same [PieceStore.Pack] options, or close the other store first"
            )));
        }
        return Ok(p);
    }
    let p = Arc::new(ShardPacker::new(shard, opts.clone(), at, packs_dir));
    map.insert(key, Arc::downgrade(&p));
    Ok(p)
}

/// An unpacked store must not open a packed one: it would answer `NotFound` for every packed
/// piece. A store that was opened packed but holds no pack yet is fine; its index token goes,
/// so that the packed store, opened again, knows its index no longer knows every object.
async fn refuse_packed(b: &Arc<Backend>) -> Result<()> {
    if b.is_memory() {
        return Ok(());
    }
    let (packs, token) = b.packed_marks().await?;
    if packs {
        return Err(Error::config(format!(
            "{} holds packed pieces (.piecestore/packs/), which a store opened with Pack = false \
             cannot see; open it with packing on, or copy it into an unpacked store with \
             `piecestore migrate --from <this store> --to '<new store>?pack=false'`",
            b.label()
        )));
    }
    if token {
        tracing::info!(backend = %b.label(), "opened unpacked: forgetting the pack index token, so that a packed store opened here again rebuilds its index");
        b.forget_contents_token().await?;
    }
    Ok(())
}

fn in_shard(e: Error, i: usize, n: usize) -> Error {
    if n <= 1 {
        return e;
    }
    match e {
        Error::InvalidConfig(m) => Error::InvalidConfig(format!("shard {i}: {m}")),
        Error::BucketNotFound { bucket, backend } => Error::BucketNotFound {
            bucket,
            backend: format!("shard {i} ({backend})"),
        },
        Error::Unauthorized { backend, message } => Error::Unauthorized {
            backend: format!("shard {i} ({backend})"),
            message,
        },
        Error::Backend {
            op,
            key,
            backend,
            message,
            retryable,
        } => Error::Backend {
            op,
            key,
            backend: format!("shard {i} ({backend})"),
            message,
            retryable,
        },
        other => other,
    }
}

/// Whether a cached entry of `key` is still the piece the shard's index holds (always, without
/// a packer: no index, no other answer; the rule for other processes is in docs/config.md, `[PieceStore.Cache]`).
fn still_held(packer: &Option<Arc<ShardPacker>>, key: &str, e: &crate::cache::Entry) -> bool {
    packer
        .as_ref()
        .is_none_or(|p| p.still_holds(key, e.bytes.len() as u64, e.crc))
}

/// A head's answer as whether the piece exists (`NotFound` is `false`).
fn found(head: Result<PieceMeta>) -> Result<bool> {
    match head {
        Ok(_) => Ok(true),
        Err(Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// One streamed operation (a list, a streamed get), recorded once when its stream ends or is
/// dropped: the bytes its items carried, or the first error it met.
struct StreamRecord {
    store: PieceStore,
    op: Op,
    shard: usize,
    start: Instant,
    bytes: u64,
    failed: Option<crate::ErrorKind>,
}

impl StreamRecord {
    fn new(store: &PieceStore, op: Op, shard: usize, start: Instant) -> Self {
        StreamRecord {
            store: store.clone(),
            op,
            shard,
            start,
            bytes: 0,
            failed: None,
        }
    }

    /// Counts one item: `size` of it, or its error.
    fn saw<T>(&mut self, item: &Result<T>, size: impl Fn(&T) -> u64) {
        match item {
            Ok(t) => self.bytes += size(t),
            Err(e) => {
                self.failed.get_or_insert(e.kind());
            }
        }
    }
}

impl Drop for StreamRecord {
    fn drop(&mut self) {
        let outcome = self.failed.map_or(Ok(self.bytes), Err);
        let elapsed = self.start.elapsed();
        (self.store.inner.metrics).record(self.shard, self.op, elapsed, outcome);
    }
}

/// The error of a read of a piece that carries no checksum, on a store that reads only
/// verified pieces.
fn unverifiable(key: &str, backend: &Backend) -> Error {
    Error::Corrupt {
        key: key.into(),
        backend: backend.label().into(),
        detail: "the piece carries no checksum, so its bytes cannot be verified (written by \
                 another program, or its checksum was wiped); a store of the original Go \
                 piecestore's pieces reads them with [PieceStore.Backend] AllowUnverified = true"
            .into(),
    }
}

/// A piece read as a stream of chunks ([`PieceStore::get_stream`]).
pub struct PieceStream {
    /// The piece's key, size and checksum, known before its first byte.
    pub meta: PieceMeta,
    /// Its bytes in order, in chunks of about 1 MiB; none for an empty piece. The last chunk
    /// comes only once the piece has matched its checksum; else an error ends the stream.
    pub chunks: BoxStream<'static, Result<Bytes>>,
}

impl std::fmt::Debug for PieceStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PieceStream")
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

/// Runs one operation of a batch as a task of its own on the caller's multi-thread runtime
/// (in the caller's task otherwise). A batch's operations polled together in one task formed
/// no write groups on a packed local store: the first put led its group and wrote it before
/// the others were polled, so every put or delete paid a write and an `fdatasync` of its own
/// (`delete_prefix` deleted about 6,700 pieces/s; benches/RESULTS.md). On a current-thread
/// runtime the tasks would run one after another all the same (and never, were its thread
/// blocked waiting for them), so the operation runs in the caller's task there.
///
/// The task is aborted when the returned future is dropped: a batch cancelled (or ended by an
/// error) stops its operations where they are, as it did when it polled them itself.
fn each<T: Send + 'static>(
    op: impl Future<Output = Result<T>> + Send + 'static,
) -> impl Future<Output = Result<T>> + Send + 'static {
    let runtime = tokio::runtime::Handle::try_current()
        .ok()
        .filter(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    match runtime {
        Some(h) => {
            let mut task = AbortOnDrop(h.spawn(op.in_current_span()));
            futures::future::Either::Left(async move {
                match (&mut task.0).await {
                    Ok(r) => r,
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    // Aborted by the runtime's shutdown.
                    Err(_) => Err(Error::Closed),
                }
            })
        }
        None => futures::future::Either::Right(op),
    }
}

/// A task aborted when its handle is dropped before it ended.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
