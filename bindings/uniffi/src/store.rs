//! The `PieceStore` object: the core's store, every operation async and blocking.
//!
//! Each operation is written once, in [`op`], as a `'static` future over a clone of the core
//! store; the async method spawns it on the core's shared runtime ([`spawned`]) and the
//! blocking twin runs it on the calling thread ([`blocking`]).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use piecestore::config::OptionValue;
use piecestore::{Config, PieceMeta};

use crate::error::PieceStoreError;

type Result<T, E = PieceStoreError> = std::result::Result<T, E>;

/// A piece's metadata.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct PieceInfo {
    /// The piece key.
    pub key: String,
    /// The piece's size in bytes.
    pub size: u64,
    /// The piece's CRC32C; `null`/`nil` for a raw piece written by another tool, whose reads
    /// cannot be verified.
    pub crc32c: Option<u32>,
    /// When the piece was stored, as the backend reports it.
    pub last_modified: SystemTime,
}

impl From<PieceMeta> for PieceInfo {
    fn from(m: PieceMeta) -> Self {
        PieceInfo {
            key: m.key,
            size: m.size,
            crc32c: m.crc32c,
            last_modified: m.last_modified,
        }
    }
}

/// What `deletePrefix` removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct DeleteSummary {
    /// Pieces deleted.
    pub pieces: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl From<piecestore::DeleteSummary> for DeleteSummary {
    fn from(s: piecestore::DeleteSummary) -> Self {
        DeleteSummary {
            pieces: s.pieces,
            bytes: s.bytes,
        }
    }
}

/// Runs `op` on the core's shared runtime; the returned future (awaiting a tokio `JoinHandle`)
/// is polled by the foreign language's executor, so no second runtime is ever started.
/// Cancelling the foreign call does not stop the operation.
async fn spawned<T, F>(op: F) -> Result<T>
where
    T: Send + 'static,
    F: Future<Output = piecestore::Result<T>> + Send + 'static,
{
    piecestore::runtime::spawn(op)
        .await
        .map_err(PieceStoreError::task)?
        .map_err(Into::into)
}

/// Runs `op` to completion on the calling thread, with the shared runtime's timers and I/O.
fn blocking<T>(op: impl Future<Output = piecestore::Result<T>>) -> Result<T> {
    piecestore::runtime::block_on(op).map_err(Into::into)
}

/// The configuration of `spec` with `options` (values as text) and then the environment.
fn config(base: piecestore::Result<Config>, options: &HashMap<String, String>) -> Result<Config> {
    let options = options
        .iter()
        .map(|(k, v)| (k.as_str(), OptionValue::from_option_text(k, v)));
    Ok(base.and_then(|c| c.with_options_and_env(options))?)
}

/// Every operation once, as a `'static` future over a clone of the core store.
mod op {
    use futures::TryStreamExt;
    use piecestore::{PieceStore as Core, PutOptions, Result};

    use super::{DeleteSummary, PieceInfo};

    pub async fn put(s: Core, key: String, data: Vec<u8>, overwrite: bool) -> Result<()> {
        s.put_opts(&key, data, PutOptions { overwrite }).await
    }

    pub async fn get(s: Core, key: String) -> Result<Vec<u8>> {
        s.get(&key).await.map(Vec::from)
    }

    pub async fn get_range(s: Core, key: String, offset: u64, length: u64) -> Result<Vec<u8>> {
        s.get_range(&key, offset, length).await.map(Vec::from)
    }

    pub async fn head(s: Core, key: String) -> Result<PieceInfo> {
        s.head(&key).await.map(PieceInfo::from)
    }

    pub async fn exists(s: Core, key: String) -> Result<bool> {
        s.exists(&key).await
    }

    pub async fn delete(s: Core, key: String) -> Result<()> {
        s.delete(&key).await
    }

    pub async fn list(s: Core, prefix: String) -> Result<Vec<PieceInfo>> {
        s.list(&prefix).map_ok(PieceInfo::from).try_collect().await
    }

    pub async fn delete_prefix(s: Core, prefix: String) -> Result<DeleteSummary> {
        s.delete_prefix(&prefix).await.map(DeleteSummary::from)
    }

    pub async fn flush(s: Core) -> Result<()> {
        s.flush().await
    }

    pub async fn close(s: Core) -> Result<()> {
        s.close().await;
        Ok(())
    }
}

/// A store of immutable pieces over memory, local disk or S3-compatible object stores.
///
/// Every operation comes twice: async (Kotlin `suspend`, Swift `async`) and `…Blocking` (for
/// Java callers and plain threads; never call those from a coroutine dispatcher or actor that
/// must not block). Both run on the same shared runtime of the core. Safe to use from many
/// threads at once.
#[derive(Clone, uniffi::Object)]
#[uniffi::export(Display)]
pub struct PieceStore {
    inner: piecestore::PieceStore,
}

impl PieceStore {
    fn core(&self) -> piecestore::PieceStore {
        self.inner.clone()
    }

    fn opened(config: Config) -> Result<Arc<Self>> {
        let inner = blocking(piecestore::PieceStore::open(config))?;
        Ok(Arc::new(PieceStore { inner }))
    }
}

impl fmt::Display for PieceStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels = self.inner.shard_labels();
        let closed = if self.inner.is_closed() {
            ", closed"
        } else {
            ""
        };
        match labels.as_slice() {
            [one] => write!(f, "PieceStore({one:?}{closed})"),
            many => write!(
                f,
                "PieceStore({:?}, shards={}{closed})",
                many.first().map(String::as_str).unwrap_or(""),
                many.len()
            ),
        }
    }
}

#[uniffi::export]
impl PieceStore {
    /// Opens the store at `spec`: a URL (`memory://`, `file:///path`, `s3://bucket/prefix`,
    /// `http://127.0.0.1:9000/bucket`), a directory path, or a path to a `.toml` config file.
    /// `options` override it, values as text (`{"shards": "4", "region": "us-east-1",
    /// "max_retries": "3", "request_timeout": "2s"}`); then the environment applies
    /// (`BUCKET_URL`, `AWS_ACCESS_KEY_ID`, ...), as everywhere in PieceStore. Blocking.
    #[uniffi::constructor(default(options))]
    pub fn open(spec: String, options: HashMap<String, String>) -> Result<Arc<Self>> {
        Self::opened(config(Config::from_spec(&spec), &options)?)
    }

    /// Opens the store a TOML document describes (its `[PieceStore]` table), with `options`
    /// and then the environment applied on top. Blocking.
    #[uniffi::constructor(default(options))]
    pub fn from_toml(text: String, options: HashMap<String, String>) -> Result<Arc<Self>> {
        Self::opened(config(Config::from_toml(&text), &options)?)
    }

    /// `open`, async: for stores whose opening checks a remote bucket.
    #[uniffi::constructor(default(options))]
    pub async fn open_async(spec: String, options: HashMap<String, String>) -> Result<Arc<Self>> {
        let config = config(Config::from_spec(&spec), &options)?;
        let inner = spawned(piecestore::PieceStore::open(config)).await?;
        Ok(Arc::new(PieceStore { inner }))
    }

    /// Stores a piece; returns once it is durable. The same bytes again succeed; different
    /// bytes under an existing key fail with `AlreadyExists` unless `overwrite` is true.
    #[uniffi::method(default(overwrite = false))]
    pub async fn put(&self, key: String, data: Vec<u8>, overwrite: bool) -> Result<()> {
        spawned(op::put(self.core(), key, data, overwrite)).await
    }

    /// The piece's bytes, verified against its checksum (`Corrupt`, never wrong bytes).
    pub async fn get(&self, key: String) -> Result<Vec<u8>> {
        spawned(op::get(self.core(), key)).await
    }

    /// `length` bytes of the piece from `offset` (`InvalidRange` if they are not all inside it).
    pub async fn get_range(&self, key: String, offset: u64, length: u64) -> Result<Vec<u8>> {
        spawned(op::get_range(self.core(), key, offset, length)).await
    }

    /// The piece's metadata (`NotFound` if there is none).
    pub async fn head(&self, key: String) -> Result<PieceInfo> {
        spawned(op::head(self.core(), key)).await
    }

    /// Whether a piece exists under `key`.
    pub async fn exists(&self, key: String) -> Result<bool> {
        spawned(op::exists(self.core(), key)).await
    }

    /// Deletes a piece; deleting a missing piece succeeds.
    pub async fn delete(&self, key: String) -> Result<()> {
        spawned(op::delete(self.core(), key)).await
    }

    /// The metadata of every piece whose key starts with `prefix` (all pieces for `""`).
    #[uniffi::method(default(prefix = ""))]
    pub async fn list(&self, prefix: String) -> Result<Vec<PieceInfo>> {
        spawned(op::list(self.core(), prefix)).await
    }

    /// Deletes every piece whose key starts with `prefix`, on every shard.
    pub async fn delete_prefix(&self, prefix: String) -> Result<DeleteSummary> {
        spawned(op::delete_prefix(self.core(), prefix)).await
    }

    /// Writes the open packs of a packing store now and waits until they are durable (every
    /// put already waits for its own data; nothing to do on an unpacked store).
    pub async fn flush(&self) -> Result<()> {
        spawned(op::flush(self.core())).await
    }

    /// Closes the store: later calls fail with `Closed`. Every put that returned is already
    /// durable. (Kotlin: `closeStore`, since `close` is `AutoCloseable`'s, which frees the
    /// native handle.)
    pub async fn close(&self) -> Result<()> {
        spawned(op::close(self.core())).await
    }

    /// Whether the store was closed (by this object or another handle to the same store).
    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// `put`, blocking the calling thread.
    #[uniffi::method(default(overwrite = false))]
    pub fn put_blocking(&self, key: String, data: Vec<u8>, overwrite: bool) -> Result<()> {
        blocking(op::put(self.core(), key, data, overwrite))
    }

    /// `get`, blocking the calling thread.
    pub fn get_blocking(&self, key: String) -> Result<Vec<u8>> {
        blocking(op::get(self.core(), key))
    }

    /// `getRange`, blocking the calling thread.
    pub fn get_range_blocking(&self, key: String, offset: u64, length: u64) -> Result<Vec<u8>> {
        blocking(op::get_range(self.core(), key, offset, length))
    }

    /// `head`, blocking the calling thread.
    pub fn head_blocking(&self, key: String) -> Result<PieceInfo> {
        blocking(op::head(self.core(), key))
    }

    /// `exists`, blocking the calling thread.
    pub fn exists_blocking(&self, key: String) -> Result<bool> {
        blocking(op::exists(self.core(), key))
    }

    /// `delete`, blocking the calling thread.
    pub fn delete_blocking(&self, key: String) -> Result<()> {
        blocking(op::delete(self.core(), key))
    }

    /// `list`, blocking the calling thread.
    #[uniffi::method(default(prefix = ""))]
    pub fn list_blocking(&self, prefix: String) -> Result<Vec<PieceInfo>> {
        blocking(op::list(self.core(), prefix))
    }

    /// `deletePrefix`, blocking the calling thread.
    pub fn delete_prefix_blocking(&self, prefix: String) -> Result<DeleteSummary> {
        blocking(op::delete_prefix(self.core(), prefix))
    }

    /// `flush`, blocking the calling thread.
    pub fn flush_blocking(&self) -> Result<()> {
        blocking(op::flush(self.core()))
    }

    /// `close`, blocking the calling thread.
    pub fn close_blocking(&self) -> Result<()> {
        blocking(op::close(self.core()))
    }
}
