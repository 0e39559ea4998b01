//! `piecestore.PieceStore`: the core's `PieceStore`, blocking and asyncio.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use piecestore::config::OptionValue;
use piecestore::profile::OpMetrics;
use piecestore::runtime::block_on;
use piecestore::{Config, PieceMeta, PutOptions};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyMapping, PyString};

use crate::asyncio::{PyErrLazy, awaitable, awaitable_py};
use crate::buffer::{self, Piece};
use crate::errors::{to_py, to_py_with};

static TYPES: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn types(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    Ok(TYPES
        .get_or_try_init(py, || py.import("piecestore._types").map(Bound::unbind))?
        .bind(py))
}

/// A piece's metadata, converted to `piecestore.PieceInfo`.
struct Info(PieceMeta);

impl<'py> IntoPyObject<'py> for Info {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let m = self.0;
        let ts = m
            .last_modified
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        types(py)?
            .getattr("_piece_info")?
            .call1((m.key, m.size, m.crc32c, ts))
    }
}

/// What `delete_prefix` removed, converted to `piecestore.DeleteSummary`.
struct Summary(piecestore::DeleteSummary);

impl<'py> IntoPyObject<'py> for Summary {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        types(py)?
            .getattr("DeleteSummary")?
            .call1((self.0.pieces, self.0.bytes))
    }
}

/// A `gc` or `fsck` report: the JSON object `piecestore gc --json` / `fsck --json` prints, as a
/// dict (`piecestore.GcReport` / `piecestore.FsckReport`). One encoding of the core's report,
/// no field list to keep in step here.
struct Report(Result<String, String>);

impl Report {
    fn of(r: &impl serde::Serialize) -> Self {
        Report(serde_json::to_string(r).map_err(|e| e.to_string()))
    }
}

impl<'py> IntoPyObject<'py> for Report {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let text = self.0.map_err(|e| {
            pyo3::exceptions::PyRuntimeError::new_err(format!("report not encodable: {e}"))
        })?;
        py.import("json")?.call_method1("loads", (text,))
    }
}

/// `migrate_to`'s options, checked by the core (`concurrency` from 1 to 4096): a bad one is a
/// `ConfigError` (a `ValueError`) before anything is copied.
fn migrate_options(
    py: Python<'_>,
    dry_run: bool,
    concurrency: usize,
) -> PyResult<piecestore::migrate::MigrateOptions> {
    let opts = piecestore::migrate::MigrateOptions {
        dry_run,
        concurrency,
    };
    opts.check().map_err(|e| to_py_with(py, e))?;
    Ok(opts)
}

/// `gc`'s options from its keyword arguments: `grace` in seconds (a number or a
/// `datetime.timedelta`), `garbage_ratio` from 0 to 1.
fn gc_options(
    grace: Option<&Bound<'_, PyAny>>,
    garbage_ratio: Option<f64>,
    dry_run: bool,
) -> PyResult<piecestore::pack::gc::GcOptions> {
    let grace = match grace {
        None => None,
        Some(g) => {
            let secs: f64 = if g.hasattr("total_seconds")? {
                g.call_method0("total_seconds")?.extract()?
            } else {
                g.extract().map_err(|_| {
                    PyTypeError::new_err("grace must be seconds (a number) or a datetime.timedelta")
                })?
            };
            if !(secs.is_finite() && secs >= 0.0) {
                return Err(pyo3::exceptions::PyValueError::new_err(format!(
                    "grace must be 0 or more seconds, not {secs}"
                )));
            }
            Some(std::time::Duration::from_secs_f64(secs))
        }
    };
    if let Some(r) = garbage_ratio
        && !(0.0..=1.0).contains(&r)
    {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "garbage_ratio must be from 0 to 1, not {r}"
        )));
    }
    Ok(piecestore::pack::gc::GcOptions {
        garbage_ratio,
        grace,
        dry_run,
    })
}

/// Calls a progress callback from whichever thread the core reports on. An exception in it
/// cannot stop the operation: it is reported the way Python reports exceptions it cannot raise
/// (`sys.unraisablehook`), and the operation goes on.
fn progress(cb: &Option<Py<PyAny>>, args: (u64, u64)) {
    if let Some(cb) = cb {
        Python::attach(|py| {
            if let Err(e) = cb.call1(py, args) {
                e.write_unraisable(py, Some(cb.bind(py)));
            }
        });
    }
}

/// One entry of `metrics_summary`.
fn op_metrics<'py>(py: Python<'py>, m: &OpMetrics) -> PyResult<Bound<'py, PyDict>> {
    let errors = PyDict::new(py);
    for (kind, n) in &m.errors {
        errors.set_item(kind.as_str(), n)?;
    }
    let d = PyDict::new(py);
    d.set_item("backend", m.backend)?;
    d.set_item("shard", m.shard)?;
    d.set_item("op", m.op.as_str())?;
    d.set_item("count", m.count)?;
    d.set_item("bytes", m.bytes)?;
    d.set_item("errors", errors)?;
    d.set_item("latency_sum_s", m.latency.sum.as_secs_f64())?;
    d.set_item("p50_s", m.latency.quantile_secs(0.5))?;
    d.set_item("p99_s", m.latency.quantile_secs(0.99))?;
    Ok(d)
}

/// A Python value given as an option, as the core takes it.
fn option_value(name: &str, v: &Bound<'_, PyAny>) -> PyResult<Option<OptionValue>> {
    if v.is_none() {
        return Ok(None);
    }
    // bool before int: Python's bool is an int.
    if let Ok(b) = v.cast::<PyBool>() {
        return Ok(Some(OptionValue::Bool(b.is_true())));
    }
    if v.is_instance_of::<PyInt>() {
        return Ok(Some(OptionValue::Int(v.extract()?)));
    }
    if v.is_instance_of::<PyFloat>() {
        return Ok(Some(OptionValue::Float(v.extract()?)));
    }
    if v.is_instance_of::<PyString>() {
        return Ok(Some(OptionValue::Str(v.extract()?)));
    }
    if v.hasattr("total_seconds")? {
        // datetime.timedelta
        return Ok(Some(OptionValue::Float(
            v.call_method0("total_seconds")?.extract()?,
        )));
    }
    if let Ok(p) = v.py().import("os")?.getattr("fspath")?.call1((v,)) {
        return Ok(Some(OptionValue::Str(p.extract()?)));
    }
    Err(PyTypeError::new_err(format!(
        "option {name}: expected bool, int, float, str or timedelta, got {}",
        v.get_type().name()?
    )))
}

fn options(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Vec<(String, OptionValue)>> {
    let mut out = Vec::new();
    if let Some(kwargs) = kwargs {
        for (k, v) in kwargs.iter() {
            let name: String = k.extract()?;
            if let Some(v) = option_value(&name, &v)? {
                out.push((name, v));
            }
        }
    }
    Ok(out)
}

/// A Python mapping (the layout of `config.toml`) as a TOML value.
fn toml_value(v: &Bound<'_, PyAny>) -> PyResult<toml::Value> {
    if let Ok(b) = v.cast::<PyBool>() {
        return Ok(toml::Value::Boolean(b.is_true()));
    }
    if v.is_instance_of::<PyInt>() {
        return Ok(toml::Value::Integer(v.extract()?));
    }
    if v.is_instance_of::<PyFloat>() {
        return Ok(toml::Value::Float(v.extract()?));
    }
    if v.is_instance_of::<PyString>() {
        return Ok(toml::Value::String(v.extract()?));
    }
    if let Ok(m) = v.cast::<PyMapping>() {
        let mut t = toml::Table::new();
        for item in m.items()?.iter() {
            let (k, v): (String, Bound<'_, PyAny>) = item.extract()?;
            t.insert(k, toml_value(&v)?);
        }
        return Ok(toml::Value::Table(t));
    }
    if let Ok(l) = v.cast::<PyList>() {
        return Ok(toml::Value::Array(
            l.iter().map(|x| toml_value(&x)).collect::<PyResult<_>>()?,
        ));
    }
    Err(PyTypeError::new_err(format!(
        "config values must be dicts, lists, str, int, float or bool, not {}",
        v.get_type().name()?
    )))
}

/// Runs one core call for Python. It is first polled once right here, holding the GIL, where
/// the store must not wait for a disk or the network (see
/// [`piecestore::runtime::poll_without_blocking`]): a call that is done at once (a memory store,
/// a piece in the page cache, an invalid key) then costs no release and retaking of the GIL.
/// One that must wait goes on with the GIL released, so other Python threads run meanwhile.
fn run<F>(py: Python<'_>, fut: F) -> F::Output
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    let mut fut = std::pin::pin!(fut);
    if let std::task::Poll::Ready(out) = piecestore::runtime::poll_without_blocking(fut.as_mut()) {
        return out;
    }
    py.detach(|| block_on(fut))
}

fn open(py: Python<'_>, config: Config) -> PyResult<PieceStore> {
    let inner = py
        .detach(|| block_on(piecestore::PieceStore::open(config)))
        .map_err(|e| to_py_with(py, e))?;
    Ok(PieceStore { inner })
}

fn finish(
    config: piecestore::Result<Config>,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<Config> {
    let opts = options(kwargs)?;
    config
        .and_then(|c| c.with_options_and_env(opts.iter().map(|(k, v)| (k.as_str(), v.clone()))))
        .map_err(to_py)
}

/// The pieces of `put_many`'s argument: a mapping or an iterable of `(key, data)` pairs.
fn items(items: &Bound<'_, PyAny>) -> PyResult<Vec<(String, Bytes)>> {
    let iter = if let Ok(m) = items.cast::<PyMapping>() {
        m.items()?.into_any().try_iter()?
    } else {
        items.try_iter()?
    };
    iter.map(|item| {
        let item = item?;
        let (k, v): (String, Bound<'_, PyAny>) = item.extract()?;
        Ok((k, buffer::from_py(&v)?))
    })
    .collect()
}

fn keys(keys: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if keys.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(
            "get_many takes an iterable of keys, not one str",
        ));
    }
    keys.try_iter()?.map(|k| k?.extract()).collect()
}

/// The first error of a batch, else every value.
fn all<T>(results: Vec<piecestore::Result<T>>) -> piecestore::Result<Vec<T>> {
    results.into_iter().collect()
}

/// A store of immutable pieces (see the package docstring for the full guide).
#[pyclass(frozen, name = "PieceStore", module = "piecestore", subclass)]
pub struct PieceStore {
    inner: piecestore::PieceStore,
}

#[pymethods]
impl PieceStore {
    /// Opens the store at `store`: a URL (`memory://`, `file:///path`, `s3://bucket`,
    /// `http://127.0.0.1:9000/bucket-%d`), a path (a directory, or a `.toml` config file), or a
    /// dict laid out like `config.toml`'s `[PieceStore]` table. Keyword options override it
    /// (`shards=4`, `region="us-east-1"`, `access_key=...`, `max_retries=3`,
    /// `request_timeout=2.5`); then the environment applies, as everywhere in PieceStore.
    #[new]
    #[pyo3(signature = (store, /, **options))]
    fn new(
        py: Python<'_>,
        store: &Bound<'_, PyAny>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let base = if let Ok(m) = store.cast::<PyMapping>() {
            match toml_value(m.as_any())? {
                toml::Value::Table(t) => Config::from_table(t),
                _ => unreachable!("a mapping converts to a table"),
            }
        } else {
            let spec: String = py
                .import("os")?
                .getattr("fspath")?
                .call1((store,))
                .map_err(|_| {
                    PyTypeError::new_err(
                        "store must be a URL, a path, or a dict laid out like config.toml",
                    )
                })?
                .extract()?;
            Config::from_spec(&spec)
        };
        let config = finish(base, options)?;
        open(py, config)
    }

    /// Opens the store a `config.toml` describes (any file name; only its `[PieceStore]` table
    /// is read), with keyword options and the environment applied on top.
    #[classmethod]
    #[pyo3(signature = (path, /, **options))]
    fn from_config(
        _cls: &Bound<'_, pyo3::types::PyType>,
        py: Python<'_>,
        path: std::path::PathBuf,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let config = finish(Config::from_file(&path), options)?;
        open(py, config)
    }

    /// Stores a piece; returns once it is durable. The same bytes again succeed; different bytes
    /// under an existing key raise `PieceExists` unless `overwrite=True`.
    #[pyo3(signature = (key, data, /, *, overwrite = false))]
    fn put(
        &self,
        py: Python<'_>,
        key: PyBackedStr,
        data: &Bound<'_, PyAny>,
        overwrite: bool,
    ) -> PyResult<()> {
        let data = buffer::from_py(data)?;
        let store = &self.inner;
        // A large piece's checksum waits for the second poll, with the GIL released (the core
        // does not checksum more than 1 MiB where it must not block).
        run(py, store.put_opts(&key, data, PutOptions { overwrite })).map_err(|e| to_py_with(py, e))
    }

    /// The piece's bytes, checksum-verified, as a zero-copy `Buffer`.
    fn get(&self, py: Python<'_>, key: PyBackedStr) -> PyResult<Piece> {
        let store = &self.inner;
        // A memory-tier hit is answered here, without releasing the GIL.
        if let Some(bytes) = store.get_resident(&key) {
            return Ok(Piece(bytes));
        }
        run(py, store.get(&key))
            .map(Piece)
            .map_err(|e| to_py_with(py, e))
    }

    /// The piece as a stream, for a caller that passes a large piece on: a `PieceReader` whose
    /// `info` is known at once and whose bytes come in chunks of about 1 MiB (`for` or `async
    /// for`), never all in memory. Verified as `get` is: the last chunk comes only once the
    /// piece has matched its length and CRC32C; else `CorruptPiece` is raised in its place.
    fn get_stream(&self, py: Python<'_>, key: PyBackedStr) -> PyResult<PieceReader> {
        let store = &self.inner;
        py.detach(|| block_on(store.get_stream(&key)))
            .map(PieceReader::new)
            .map_err(|e| to_py_with(py, e))
    }

    /// `length` bytes from `offset` of the piece (the whole piece is verified first).
    fn get_range(
        &self,
        py: Python<'_>,
        key: PyBackedStr,
        offset: u64,
        length: u64,
    ) -> PyResult<Piece> {
        let store = &self.inner;
        run(py, store.get_range(&key, offset, length))
            .map(Piece)
            .map_err(|e| to_py_with(py, e))
    }

    /// The piece's metadata, as a `PieceInfo`.
    fn head<'py>(&self, py: Python<'py>, key: PyBackedStr) -> PyResult<Bound<'py, PyAny>> {
        let store = &self.inner;
        let m = run(py, store.head(&key)).map_err(|e| to_py_with(py, e))?;
        Info(m).into_pyobject(py)
    }

    /// Whether a piece exists under `key`.
    fn exists(&self, py: Python<'_>, key: PyBackedStr) -> PyResult<bool> {
        let store = &self.inner;
        run(py, store.exists(&key)).map_err(|e| to_py_with(py, e))
    }

    /// Deletes a piece; deleting a missing piece succeeds.
    fn delete(&self, py: Python<'_>, key: PyBackedStr) -> PyResult<()> {
        let store = &self.inner;
        run(py, store.delete(&key)).map_err(|e| to_py_with(py, e))
    }

    /// Deletes every piece whose key starts with `prefix`, on every shard.
    fn delete_prefix<'py>(
        &self,
        py: Python<'py>,
        prefix: PyBackedStr,
    ) -> PyResult<Bound<'py, PyAny>> {
        let store = &self.inner;
        let s = py
            .detach(|| block_on(store.delete_prefix(&prefix)))
            .map_err(|e| to_py_with(py, e))?;
        Summary(s).into_pyobject(py)
    }

    /// Writes every shard's open pack now and waits until it is durable. Each `put` already
    /// waits for its own pack; this is for a caller that wants the open packs out (before a
    /// snapshot of the directory). Nothing to do for an unpacked store.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let store = &self.inner;
        py.detach(|| block_on(store.flush()))
            .map_err(|e| to_py_with(py, e))
    }

    /// Empties the pieces cache's tiers (memory, and the disk tier's files), as `piecestore
    /// cache clear` does; the pieces stay in the store. `False` when the store has no cache.
    /// Never needed for correctness: pieces are immutable, and deletes invalidate at once.
    fn clear_cache(&self, py: Python<'_>) -> bool {
        let store = &self.inner;
        py.detach(|| block_on(store.clear_cache()))
    }

    /// Garbage collection of a packed store (`piecestore gc`): deletes compacted packs whose
    /// grace period is over, rewrites packs with at least `garbage_ratio` garbage and merges
    /// undersized ones; safe while other threads and processes read and write. `grace` (seconds
    /// or a `timedelta`) and `garbage_ratio` default to the store's `Pack.Grace` and
    /// `Pack.GarbageRatio`; `dry_run` only reports. `progress(done, total)` is called with the
    /// bytes of packs processed so far, from a thread of the library. Returns a `GcReport`
    /// dict; an unpacked store has nothing to collect (all counts 0).
    #[pyo3(signature = (*, grace = None, garbage_ratio = None, dry_run = false, progress = None))]
    fn gc<'py>(
        &self,
        py: Python<'py>,
        grace: Option<&Bound<'py, PyAny>>,
        garbage_ratio: Option<f64>,
        dry_run: bool,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let opts = gc_options(grace, garbage_ratio, dry_run)?;
        let store = &self.inner;
        let r = py
            .detach(|| block_on(store.gc(opts, &|p| self::progress(&progress, (p.done, p.total)))))
            .map_err(|e| to_py_with(py, e))?;
        Report::of(&r).into_pyobject(py)
    }

    /// Checks a packed store (`piecestore fsck`): every pack's records against their CRCs,
    /// every index entry against its pack, orphan packs, dangling entries and live-byte
    /// accounting. With `rebuild_index`, rebuilds each shard's index from its packs alone,
    /// then checks again. `progress(bytes_read, 0)` is called as packs are read. Returns a
    /// `FsckReport` dict: problems found are in its `problems` list, not raised.
    #[pyo3(signature = (*, rebuild_index = false, progress = None))]
    fn fsck<'py>(
        &self,
        py: Python<'py>,
        rebuild_index: bool,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let opts = piecestore::pack::fsck::FsckOptions { rebuild_index };
        let store = &self.inner;
        let r = py
            .detach(|| block_on(store.fsck(opts, &|n| self::progress(&progress, (n, 0)))))
            .map_err(|e| to_py_with(py, e))?;
        Report::of(&r).into_pyobject(py)
    }

    /// Copies every piece of this store into `dest` (`piecestore migrate`), verifying each:
    /// the source read against its CRC32C, and afterwards the destination's size and
    /// checksum. Pieces already at `dest` with the same size and checksum are skipped, so an
    /// interrupted run resumes by running again. `dry_run` only counts; `concurrency` pieces
    /// (1 to 4096) are in flight at once. `progress(done_pieces, total_pieces)` is called
    /// after every piece, from a thread of the library. A piece that fails is counted and
    /// listed in the report's `failures` (`key`, `code`, `message`) and the run goes on;
    /// failing to list the source raises. Returns a dict (`copied`, `copied_bytes`,
    /// `skipped`, `failed`, ...).
    #[pyo3(signature = (dest, *, dry_run = false, concurrency = 16, progress = None))]
    fn migrate_to<'py>(
        &self,
        py: Python<'py>,
        dest: PyRef<'py, PieceStore>,
        dry_run: bool,
        concurrency: usize,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let opts = migrate_options(py, dry_run, concurrency)?;
        let (store, dest) = (&self.inner, dest.inner.clone());
        let r = py
            .detach(|| {
                block_on(store.migrate_to(&dest, opts, &|p| {
                    self::progress(&progress, (p.done_pieces, p.total_pieces))
                }))
            })
            .map_err(|e| to_py_with(py, e))?;
        Report::of(&r).into_pyobject(py)
    }

    /// What the store holds (`piecestore profile`): pieces, bytes, sizes by power-of-two
    /// bucket, each shard's share and the skew between shards, orphan objects (up to
    /// `max_orphan_samples` of them named) and, for a packed store, pack fill and garbage. One
    /// listing of every shard; `progress(objects_listed, 0)` is called every 1,000 objects.
    /// Returns a dict with the fields of `piecestore profile --json`.
    #[pyo3(signature = (*, max_orphan_samples = 20, progress = None))]
    fn inventory<'py>(
        &self,
        py: Python<'py>,
        max_orphan_samples: usize,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let opts = piecestore::profile::InventoryOptions { max_orphan_samples };
        let store = &self.inner;
        let r = py
            .detach(|| block_on(store.inventory(opts, &|n| self::progress(&progress, (n, 0)))))
            .map_err(|e| to_py_with(py, e))?;
        Report::of(&r).into_pyobject(py)
    }

    /// The pieces whose keys start with `prefix`, as an iterator (`for`) that is also an
    /// async iterator (`async for`).
    #[pyo3(signature = (prefix = ""))]
    fn list(&self, prefix: &str) -> ListIterator {
        ListIterator {
            stream: Arc::new(tokio::sync::Mutex::new(self.inner.list(prefix))),
        }
    }

    /// Stores many pieces concurrently: a mapping or an iterable of `(key, data)`. Raises the
    /// first failure; the others are stored (puts are idempotent, so retrying is safe).
    #[pyo3(signature = (items, /, *, overwrite = false))]
    fn put_many(&self, py: Python<'_>, items: &Bound<'_, PyAny>, overwrite: bool) -> PyResult<()> {
        let items = self::items(items)?;
        let store = &self.inner;
        all(py.detach(|| block_on(store.put_many_opts(items, PutOptions { overwrite }))))
            .map(drop)
            .map_err(|e| to_py_with(py, e))
    }

    /// Reads many pieces concurrently, in order; raises the first failure.
    fn get_many(&self, py: Python<'_>, keys: &Bound<'_, PyAny>) -> PyResult<Vec<Piece>> {
        let keys = self::keys(keys)?;
        let store = &self.inner;
        all(py.detach(|| block_on(store.get_many(keys))))
            .map(|v| v.into_iter().map(Piece).collect())
            .map_err(|e| to_py_with(py, e))
    }

    /// Closes the store; later calls raise `StoreClosed`. Every put that returned is durable.
    /// A `memory://` store's pieces are freed at once, not when this object is collected.
    fn close(&self, py: Python<'_>) {
        let store = &self.inner;
        py.detach(|| block_on(store.close()))
    }

    /// Whether the store was closed.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// Number of shards (1 when not sharded).
    #[getter]
    fn shard_count(&self) -> usize {
        self.inner.shard_count()
    }

    /// Each shard's backend, as a label without credentials.
    #[getter]
    fn shard_labels(&self) -> Vec<String> {
        self.inner.shard_labels()
    }

    /// How keys are placed on shards: `fnv-mod` or `jump`.
    #[getter]
    fn placement(&self) -> String {
        self.inner.placement().to_string()
    }

    /// How small pieces are packed, as one line: `off`, or the threshold, pack size, gc
    /// settings and where the index is kept.
    #[getter]
    fn packing(&self) -> String {
        self.inner.packing()
    }

    /// The shard index that holds `key`.
    fn shard_of(&self, key: &str) -> usize {
        self.inner.shard_of(key)
    }

    /// The store's operation metrics in the Prometheus text exposition format (0.0.4):
    /// `piecestore_operations_total`, `piecestore_operation_errors_total` (by `kind`, the error
    /// codes), `piecestore_operation_bytes_total` and the histogram
    /// `piecestore_operation_duration_seconds`, each labelled `backend`, `shard` and `op`.
    /// A snapshot of in-memory counters (no I/O); with `metrics=False` only the HELP and TYPE
    /// lines remain.
    fn metrics(&self) -> String {
        self.inner.metrics().to_prometheus()
    }

    /// The same metrics as a list of dicts, one per (shard, operation): `backend`, `shard`,
    /// `op`, `count`, `bytes`, `errors` (`{code: n}`), `latency_sum_s`, and `p50_s`/`p99_s`
    /// (upper bounds of the latency buckets; `None` without samples, `inf` past the last
    /// bucket). Empty with `metrics=False`.
    fn metrics_summary<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        self.inner
            .metrics()
            .ops
            .iter()
            .map(|m| op_metrics(py, m))
            .collect()
    }

    // ----- asyncio -----

    /// `put`, as an awaitable.
    #[pyo3(signature = (key, data, /, *, overwrite = false))]
    fn put_async<'py>(
        &self,
        py: Python<'py>,
        key: String,
        data: &Bound<'py, PyAny>,
        overwrite: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let data = buffer::from_py(data)?;
        let store = self.inner.clone();
        awaitable(py, async move {
            store.put_opts(&key, data, PutOptions { overwrite }).await
        })
    }

    /// `get`, as an awaitable.
    fn get_async<'py>(&self, py: Python<'py>, key: String) -> PyResult<Bound<'py, PyAny>> {
        let store = self.inner.clone();
        awaitable(py, async move { store.get(&key).await.map(Piece) })
    }

    /// `get_stream`, as an awaitable (its reader is then iterated with `async for`).
    fn get_stream_async<'py>(&self, py: Python<'py>, key: String) -> PyResult<Bound<'py, PyAny>> {
        let store = self.inner.clone();
        awaitable(py, async move {
            store.get_stream(&key).await.map(PieceReader::new)
        })
    }

    /// `get_range`, as an awaitable.
    fn get_range_async<'py>(
        &self,
        py: Python<'py>,
        key: String,
        offset: u64,
        length: u64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let store = self.inner.clone();
        awaitable(py, async move {
            store.get_range(&key, offset, length).await.map(Piece)
        })
    }

    /// `head`, as an awaitable.
    fn head_async<'py>(&self, py: Python<'py>, key: String) -> PyResult<Bound<'py, PyAny>> {
        let store = self.inner.clone();
        awaitable(py, async move { store.head(&key).await.map(Info) })
    }

    /// `exists`, as an awaitable.
    fn exists_async<'py>(&self, py: Python<'py>, key: String) -> PyResult<Bound<'py, PyAny>> {
        let store = self.inner.clone();
        awaitable(py, async move { store.exists(&key).await })
    }

    /// `delete`, as an awaitable.
    fn delete_async<'py>(&self, py: Python<'py>, key: String) -> PyResult<Bound<'py, PyAny>> {
        let store = self.inner.clone();
        awaitable(py, async move { store.delete(&key).await })
    }

    /// `delete_prefix`, as an awaitable.
    fn delete_prefix_async<'py>(
        &self,
        py: Python<'py>,
        prefix: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let store = self.inner.clone();
        awaitable(py, async move {
            store.delete_prefix(&prefix).await.map(Summary)
        })
    }

    /// `put_many`, as an awaitable.
    #[pyo3(signature = (items, /, *, overwrite = false))]
    fn put_many_async<'py>(
        &self,
        py: Python<'py>,
        items: &Bound<'py, PyAny>,
        overwrite: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let items = self::items(items)?;
        let store = self.inner.clone();
        awaitable(py, async move {
            all(store.put_many_opts(items, PutOptions { overwrite }).await).map(drop)
        })
    }

    /// `get_many`, as an awaitable.
    fn get_many_async<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let keys = self::keys(keys)?;
        let store = self.inner.clone();
        awaitable(py, async move {
            all(store.get_many(keys).await).map(|v| v.into_iter().map(Piece).collect::<Vec<_>>())
        })
    }

    /// `flush`, as an awaitable.
    fn flush_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let store = self.inner.clone();
        awaitable(py, async move { store.flush().await })
    }

    /// `clear_cache`, as an awaitable.
    fn clear_cache_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let store = self.inner.clone();
        awaitable(py, async move { Ok(store.clear_cache().await) })
    }

    /// `gc`, as an awaitable (`progress` is called from a thread of the library).
    #[pyo3(signature = (*, grace = None, garbage_ratio = None, dry_run = false, progress = None))]
    fn gc_async<'py>(
        &self,
        py: Python<'py>,
        grace: Option<&Bound<'py, PyAny>>,
        garbage_ratio: Option<f64>,
        dry_run: bool,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let opts = gc_options(grace, garbage_ratio, dry_run)?;
        let store = self.inner.clone();
        awaitable(py, async move {
            let r = store
                .gc(opts, &|p| self::progress(&progress, (p.done, p.total)))
                .await?;
            Ok(Report::of(&r))
        })
    }

    /// `fsck`, as an awaitable (`progress` is called from a thread of the library).
    #[pyo3(signature = (*, rebuild_index = false, progress = None))]
    fn fsck_async<'py>(
        &self,
        py: Python<'py>,
        rebuild_index: bool,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let opts = piecestore::pack::fsck::FsckOptions { rebuild_index };
        let store = self.inner.clone();
        awaitable(py, async move {
            let r = store
                .fsck(opts, &|n| self::progress(&progress, (n, 0)))
                .await?;
            Ok(Report::of(&r))
        })
    }

    /// `inventory`, as an awaitable (`progress` is called from a thread of the library).
    #[pyo3(signature = (*, max_orphan_samples = 20, progress = None))]
    fn inventory_async<'py>(
        &self,
        py: Python<'py>,
        max_orphan_samples: usize,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let opts = piecestore::profile::InventoryOptions { max_orphan_samples };
        let store = self.inner.clone();
        awaitable(py, async move {
            let r = store
                .inventory(opts, &|n| self::progress(&progress, (n, 0)))
                .await?;
            Ok(Report::of(&r))
        })
    }

    /// `migrate_to`, as an awaitable (`progress` is called from a thread of the library).
    #[pyo3(signature = (dest, *, dry_run = false, concurrency = 16, progress = None))]
    fn migrate_to_async<'py>(
        &self,
        py: Python<'py>,
        dest: PyRef<'py, PieceStore>,
        dry_run: bool,
        concurrency: usize,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let opts = migrate_options(py, dry_run, concurrency)?;
        let (store, dest) = (self.inner.clone(), dest.inner.clone());
        awaitable(py, async move {
            let r = store
                .migrate_to(&dest, opts, &|p| {
                    self::progress(&progress, (p.done_pieces, p.total_pieces))
                })
                .await?;
            Ok(Report::of(&r))
        })
    }

    /// `close`, as an awaitable.
    fn close_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let store = self.inner.clone();
        awaitable(py, async move {
            store.close().await;
            Ok(())
        })
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close(py);
        false
    }

    fn __aenter__<'py>(slf: Py<Self>, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        awaitable_py(py, async move { Ok(slf) })
    }

    #[pyo3(signature = (*_args))]
    fn __aexit__<'py>(
        &self,
        py: Python<'py>,
        _args: &Bound<'py, pyo3::types::PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let store = self.inner.clone();
        awaitable(py, async move {
            store.close().await;
            Ok(false)
        })
    }

    fn __repr__(&self) -> String {
        let labels = self.inner.shard_labels();
        let state = if self.inner.is_closed() {
            ", closed"
        } else {
            ""
        };
        let packing = format!("packing={:?}", self.inner.packing());
        match labels.as_slice() {
            [one] => format!("PieceStore({one:?}, {packing}{state})"),
            many => format!(
                "PieceStore({:?}, shards={}, placement={:?}, {packing}{state})",
                many.first().map(String::as_str).unwrap_or(""),
                many.len(),
                self.inner.placement().to_string()
            ),
        }
    }
}

/// A piece read as a stream (`PieceStore.get_stream`): `info`, then its bytes as `Buffer`
/// chunks of about 1 MiB with `for` or `async for`.
#[pyclass(frozen, name = "PieceReader", module = "piecestore")]
pub struct PieceReader {
    meta: PieceMeta,
    chunks: Arc<tokio::sync::Mutex<BoxStream<'static, piecestore::Result<Bytes>>>>,
}

impl PieceReader {
    fn new(piece: piecestore::PieceStream) -> Self {
        PieceReader {
            meta: piece.meta,
            chunks: Arc::new(tokio::sync::Mutex::new(piece.chunks)),
        }
    }
}

#[pymethods]
impl PieceReader {
    /// The piece's `PieceInfo` (key, size, checksum), known before its first byte.
    #[getter]
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Info(self.meta.clone()).into_pyobject(py)
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Piece>> {
        let chunks = &self.chunks;
        match py.detach(|| block_on(async { chunks.lock().await.next().await })) {
            None => Ok(None),
            Some(Ok(b)) => Ok(Some(Piece(b))),
            Some(Err(e)) => Err(to_py_with(py, e)),
        }
    }

    fn __aiter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let chunks = Arc::clone(&self.chunks);
        awaitable_py(py, async move {
            match chunks.lock().await.next().await {
                None => Err(PyErrLazy::StopAsyncIteration),
                Some(Ok(b)) => Ok(Piece(b)),
                Some(Err(e)) => Err(PyErrLazy::Core(e)),
            }
        })
    }
}

/// The pieces of `PieceStore.list`: iterate with `for` or `async for`.
#[pyclass(frozen, name = "ListIterator", module = "piecestore")]
pub struct ListIterator {
    stream: Arc<tokio::sync::Mutex<BoxStream<'static, piecestore::Result<PieceMeta>>>>,
}

#[pymethods]
impl ListIterator {
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let stream = &self.stream;
        match py.detach(|| block_on(async { stream.lock().await.next().await })) {
            None => Ok(None),
            Some(Ok(m)) => Ok(Some(Info(m).into_pyobject(py)?)),
            Some(Err(e)) => Err(to_py_with(py, e)),
        }
    }

    fn __aiter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let stream = Arc::clone(&self.stream);
        awaitable_py(py, async move {
            match stream.lock().await.next().await {
                None => Err(PyErrLazy::StopAsyncIteration),
                Some(Ok(m)) => Ok(Info(m)),
                Some(Err(e)) => Err(PyErrLazy::Core(e)),
            }
        })
    }
}
