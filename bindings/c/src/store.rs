//! The store's operations over the C ABI.

use std::ffi::{CStr, c_char, c_void};
use std::future::Future;
use std::pin::pin;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use piecestore::config::OptionValue;
use piecestore::runtime::block_on;
use piecestore::{Config, PieceMeta, PutOptions};
use tokio::sync::Notify;

use crate::error::{Failure, PsError, PsStatus, call, free_box};

/// An open store. Safe to use from many threads at once.
pub struct PsStore(piecestore::PieceStore);

/// A listing in progress (see [`ps_list_open`]). One thread at a time.
pub struct PsList {
    stream: BoxStream<'static, piecestore::Result<PieceMeta>>,
    /// The key of the entry last returned, which that entry's `key` points into.
    key: String,
}

/// A cancellation token: [`ps_cancel`] makes every call running with it return
/// `PS_CANCELLED`, and every later call with it fail at once.
pub struct PsCancel {
    cancelled: AtomicBool,
    notify: Notify,
}

impl PsCancel {
    async fn cancelled(&self) {
        loop {
            let mut wake = pin!(self.notify.notified());
            // Registered before the flag is read, so a cancel in between is not missed.
            wake.as_mut().enable();
            if self.cancelled.load(Ordering::Acquire) {
                return;
            }
            wake.await;
        }
    }
}

/// Bytes read from the store, borrowed from the library: `data[0..len]` stays valid until
/// [`ps_bytes_free`]. `owner` is the library's; do not touch it.
#[repr(C)]
pub struct PsBytes {
    /// The first byte (never NULL; dangling when `len` is 0).
    pub data: *const u8,
    /// How many bytes.
    pub len: usize,
    /// The buffer that owns the bytes.
    pub owner: *mut c_void,
}

/// A piece's metadata.
#[repr(C)]
pub struct PsPieceInfo {
    /// The key (UTF-8, not NUL-terminated): from [`ps_list_next`], valid until the next call on
    /// that list or its free; NULL from [`ps_head`], whose caller knows the key.
    pub key: *const u8,
    /// The key's length in bytes.
    pub key_len: usize,
    /// The piece's size in bytes.
    pub size: u64,
    /// The piece's CRC32C, when `has_crc32c`.
    pub crc32c: u32,
    /// False for a raw piece written by another tool, which reads cannot verify.
    pub has_crc32c: bool,
    /// When the piece was stored, in nanoseconds since the Unix epoch.
    pub last_modified_unix_ns: i64,
}

impl PsPieceInfo {
    fn new(m: &PieceMeta, key: *const u8, key_len: usize) -> Self {
        let ns = m
            .last_modified
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        PsPieceInfo {
            key,
            key_len,
            size: m.size,
            crc32c: m.crc32c.unwrap_or(0),
            has_crc32c: m.crc32c.is_some(),
            last_modified_unix_ns: ns,
        }
    }
}

/// A progress callback of a long call ([`ps_gc`], [`ps_fsck`], [`ps_migrate_to`],
/// [`ps_inventory`]): `call(ctx, done, total)`, where `ctx` is the caller's own value passed
/// back (a handle, or a pointer cast to `size_t`). What `done` and `total` count is each
/// call's (its documentation says). `call` runs on a library thread, possibly two at once
/// (a migration's pieces are copied concurrently), while the call it reports on runs; it must
/// return promptly and must not call back into the library on the same store. A NULL
/// `PsProgress *`, or a NULL `call`, reports nothing.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PsProgress {
    /// The function called with progress, or NULL.
    pub call: Option<unsafe extern "C" fn(ctx: usize, done: u64, total: u64)>,
    /// Passed back as `call`'s first argument.
    pub ctx: usize,
}

impl PsProgress {
    /// The callback `p` points to, as the core's progress function (a no-op for NULL).
    fn of(p: *const PsProgress) -> impl Fn(u64, u64) + Sync {
        // SAFETY: the caller passes NULL or a readable `PsProgress` (the ABI's contract); it
        // is copied here, so it need not outlive this line.
        let p = unsafe { p.as_ref() }.copied();
        move |done, total| {
            if let Some(PsProgress { call: Some(f), ctx }) = p {
                // SAFETY: the caller's function, with the caller's own context (its contract).
                unsafe { f(ctx, done, total) }
            }
        }
    }
}

/// Runs `op` on the core's runtime from the calling thread, until done or cancelled.
fn run<T>(
    cancel: *const PsCancel,
    op: impl Future<Output = piecestore::Result<T>>,
) -> Result<T, Failure> {
    // SAFETY: the caller passes NULL or a live token (the ABI's contract).
    match unsafe { cancel.as_ref() } {
        None => block_on(op).map_err(Failure::from),
        Some(c) => block_on(async {
            tokio::select! {
                biased;
                () = c.cancelled() => Err(Failure::Cancelled),
                r = op => r.map_err(Failure::from),
            }
        }),
    }
}

fn store<'a>(p: *const PsStore) -> Result<&'a piecestore::PieceStore, Failure> {
    // SAFETY: the caller passes NULL or a live store (the ABI's contract).
    unsafe { p.as_ref() }
        .map(|s| &s.0)
        .ok_or_else(|| Failure::Argument("store is NULL".into()))
}

fn out<'a, T>(p: *mut T, what: &str) -> Result<&'a mut T, Failure> {
    // SAFETY: the caller passes NULL or a writable slot (the ABI's contract).
    unsafe { p.as_mut() }.ok_or_else(|| Failure::Argument(format!("{what} is NULL")))
}

/// `len` bytes at `p` (NULL allowed when `len` is 0).
fn slice<'a>(p: *const u8, len: usize, what: &str) -> Result<&'a [u8], Failure> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Failure::Argument(format!(
            "{what} is NULL but its length is {len}"
        )));
    }
    // SAFETY: the caller passes `len` readable bytes at `p` (the ABI's contract).
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// A key or prefix: UTF-8 text, else the core's `InvalidKey`.
fn key<'a>(p: *const u8, len: usize) -> Result<&'a str, Failure> {
    let b = slice(p, len, "key")?;
    std::str::from_utf8(b).map_err(|_| {
        Failure::Core(piecestore::Error::InvalidKey {
            key: String::from_utf8_lossy(b).chars().take(200).collect(),
            reason: "is not UTF-8",
        })
    })
}

/// A NUL-terminated string argument.
fn c_str<'a>(p: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if p.is_null() {
        return Err(Failure::Argument(format!("{what} is NULL")));
    }
    // SAFETY: the caller passes a NUL-terminated string (the ABI's contract).
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| Failure::Argument(format!("{what} is not UTF-8")))
}

/// The library's version, NUL-terminated and static.
#[unsafe(no_mangle)]
pub extern "C" fn ps_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// Opens a store and stores its handle in `*out`.
///
/// `spec` is a URL (`memory://`, `file:///var/lib/pieces`, `s3://bucket/prefix?region=...`,
/// `http://127.0.0.1:9000/bucket-%d?shards=4`) or the path of a directory or of a `.toml`
/// config file. `names[i]` = `values[i]` (`n_options` of them, NUL-terminated; NULL arrays when
/// `n_options` is 0) are options as every binding takes them (`shards`, `region`, `access_key`,
/// `pack`, `max_retries`, `request_timeout` = `"2.5s"`, ...); then the environment applies
/// (`BUCKET_URL`, `AWS_ACCESS_KEY`, ...).
///
/// # Safety
/// Pointers are NULL or valid as described; `out` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ps_open(
    spec: *const c_char,
    names: *const *const c_char,
    values: *const *const c_char,
    n_options: usize,
    out: *mut *mut PsStore,
    err: *mut *mut PsError,
) -> PsStatus {
    call(err, || {
        let out = self::out(out, "out")?;
        let spec = c_str(spec, "spec")?;
        let mut options = Vec::with_capacity(n_options);
        if n_options > 0 {
            if names.is_null() || values.is_null() {
                return Err(Failure::Argument("option arrays are NULL".into()));
            }
            for i in 0..n_options {
                // SAFETY: the caller passes `n_options` entries in each array.
                let (n, v) = unsafe { (*names.add(i), *values.add(i)) };
                options.push((c_str(n, "option name")?, c_str(v, "option value")?));
            }
        }
        let config = Config::load_with(
            spec,
            options
                .iter()
                .map(|(n, v)| (*n, OptionValue::from_option_text(n, v))),
        )?;
        let store = block_on(piecestore::PieceStore::open(config))?;
        *out = Box::into_raw(Box::new(PsStore(store)));
        Ok(())
    })
}

/// Frees a store's handle (after [`ps_close`], or without it: puts that returned are durable
/// either way). NULL is a no-op.
///
/// # Safety
/// `store` is NULL or a live store on which no call is running; it is not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ps_store_free(store: *mut PsStore) {
    // SAFETY: per the contract above: the box `ps_open` leaked, or NULL.
    unsafe { free_box(store) }
}

/// Closes the store: writes open packs, releases the pack index, and makes later calls fail
/// with `PS_CLOSED`. The handle must still be freed.
///
/// # Safety
/// `store` is NULL or a live store.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ps_close(store: *const PsStore, err: *mut *mut PsError) -> PsStatus {
    call(err, || {
        let s = self::store(store)?;
        block_on(s.close());
        Ok(())
    })
}

/// Stores `data[0..data_len]` under `key`; returns once it is durable. The same bytes again
/// succeed; different bytes under an existing key fail with `PS_ALREADY_EXISTS` unless
/// `overwrite`. The bytes are copied before the call returns.
///
/// # Safety
/// Pointers are NULL or valid for their lengths; `cancel` is NULL or a live token.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ps_put(
    store: *const PsStore,
    key: *const u8,
    key_len: usize,
    data: *const u8,
    data_len: usize,
    overwrite: bool,
    cancel: *const PsCancel,
    err: *mut *mut PsError,
) -> PsStatus {
    call(err, || {
        let s = self::store(store)?;
        let key = self::key(key, key_len)?;
        let data = Bytes::copy_from_slice(slice(data, data_len, "data")?);
        run(cancel, s.put_opts(key, data, PutOptions { overwrite }))
    })
}

/// `n` items packed end to end in one buffer: item `i` is `buf[offsets[i]..offsets[i + 1]]`
/// (`offsets` has `n + 1` entries, non-decreasing, the last at most `buf_len`).
fn packed<'a>(
    buf: *const u8,
    buf_len: usize,
    offsets: *const usize,
    n: usize,
    what: &str,
) -> Result<(&'a [u8], &'a [usize]), Failure> {
    let buf = slice(buf, buf_len, what)?;
    if offsets.is_null() {
        return Err(Failure::Argument(format!("{what} offsets is NULL")));
    }
    let count = n
        .checked_add(1)
        .ok_or_else(|| Failure::Argument(format!("{n} items are too many")))?;
    // SAFETY: the caller passes `n + 1` readable offsets (the ABI's contract).
    let offsets = unsafe { std::slice::from_raw_parts(offsets, count) };
    let ordered = offsets.windows(2).all(|w| w[0] <= w[1]);
    if !ordered || offsets[n] > buf.len() {
        return Err(Failure::Argument(format!(
            "{what} offsets are not ascending within the {} bytes given",
            buf.len()
        )));
    }
    Ok((buf, offsets))
}

/// Stores `n` pieces concurrently (the core's `put_many`, which bounds how many run at once)
/// and returns once every one is durable or has failed; the first failure, in item order, is
/// the call's (the others are stored: puts are idempotent, so the whole call may be retried).
/// Keys and data are packed end to end: key `i` is `keys[key_offsets[i]..key_offsets[i + 1]]`
/// and its data `data[data_offsets[i]..data_offsets[i + 1]]` (each offsets array holds
/// `n + 1` ascending entries). The bytes are copied before the call returns.
///
/// # Safety
/// `keys` and `data` are NULL or valid for their lengths; each offsets array is valid for
/// `n + 1` entries; `cancel` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ps_put_many(
    store: *const PsStore,
    keys: *const u8,
    keys_len: usize,
    key_offsets: *const usize,
    data: *const u8,
    data_len: usize,
    data_offsets: *const usize,
    n: usize,
    overwrite: bool,
    cancel: *const PsCancel,
    err: *mut *mut PsError,
) -> PsStatus {
    call(err, || {
        let s = self::store(store)?;
        let (keys, ko) = packed(keys, keys_len, key_offsets, n, "keys")?;
        let (data, dof) = packed(data, data_len, data_offsets, n, "data")?;
        // One copy of all the data; each piece is a slice of it.
        let all = Bytes::copy_from_slice(&data[..dof[n]]);
        let mut items = Vec::with_capacity(n);
        for i in 0..n {
            let key = self::key(keys[ko[i]..].as_ptr(), ko[i + 1] - ko[i])?;
            items.push((key, all.slice(dof[i]..dof[i + 1])));
        }
        let results = run(cancel, async {
            Ok(s.put_many_opts(items, PutOptions { overwrite }).await)
        })?;
        results
            .into_iter()
            .collect::<piecestore::Result<Vec<()>>>()
            .map(drop)
            .map_err(Failure::from)
    })
}

/// Reads `n` pieces concurrently (the core's `get_many`), each checksum-verified, into
/// `out[0..n]` (free each with [`ps_bytes_free`]). Keys are packed as in [`ps_put_many`].
/// The first failure, in key order, is the call's, and then no `out` entry is filled.
///
/// # Safety
/// `keys` is NULL or valid for `keys_len` bytes; `key_offsets` for `n + 1` entries; `out` is
/// writable for `n` entries; `cancel` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ps_get_many(
    store: *const PsStore,
    keys: *const u8,
    keys_len: usize,
    key_offsets: *const usize,
    n: usize,
    cancel: *const PsCancel,
    out: *mut PsBytes,
    err: *mut *mut PsError,
) -> PsStatus {
    call(err, || {
        let s = self::store(store)?;
        let (keys, ko) = packed(keys, keys_len, key_offsets, n, "keys")?;
        if out.is_null() && n > 0 {
            return Err(Failure::Argument("out is NULL".into()));
        }
        let mut list = Vec::with_capacity(n);
        for i in 0..n {
            list.push(self::key(keys[ko[i]..].as_ptr(), ko[i + 1] - ko[i])?);
        }
        let results = run(cancel, async { Ok(s.get_many(list).await) })?;
        let pieces = results
            .into_iter()
            .collect::<piecestore::Result<Vec<Bytes>>>()
            .map_err(Failure::from)?;
        for (i, b) in pieces.into_iter().enumerate() {
            // SAFETY: `out` is writable for `n` entries (the ABI's contract); i < n.
            fill(unsafe { &mut *out.add(i) }, b);
        }
        Ok(())
    })
}

fn fill(out: &mut PsBytes, b: Bytes) {
    out.data = b.as_ptr();
    out.len = b.len();
    out.owner = Box::into_raw(Box::new(b)).cast();
}

/// Reads the piece under `key`, checksum-verified, into `*out` (borrowed; free it with
/// [`ps_bytes_free`]).
///
/// # Safety
/// Pointers are NULL or valid for their lengths; `out` is writable; `cancel` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ps_get(
    store: *const PsStore,
    key: *const u8,
    key_len: usize,
    cancel: *const PsCancel,
    out: *mut PsBytes,
    err: *mut *mut PsError,
) -> PsStatus {
    call(err, || {
        let (s, out) = (self::store(store)?, self::out(out, "out")?);
        let key = self::key(key, key_len)?;
        fill(out, run(cancel, s.get(key))?);
        Ok(())
    })
}

/// Reads `length` bytes from `offset` of the piece under `key` (the piece is verified) into
/// `*out`. A range outside the piece fails with `PS_INVALID_RANGE`.
///
/// # Safety
/// As [`ps_get`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ps_get_range(
    store: *const PsStore,
    key: *const u8,
    key_len: usize,
    offset: u64,
    length: u64,
    cancel: *const PsCancel,
    out: *mut PsBytes,
    err: *mut *mut PsError,
) -> PsStatus {
    call(err, || {
        let (s, out) = (self::store(store)?, self::out(out, "out")?);
        let key = self::key(key, key_len)?;
        fill(out, run(cancel, s.get_range(key, offset, length))?);
        Ok(())
    })
}

/// Reads the piece under `key`, checksum-verified, into the caller's buffer `buf[0..cap]`, and
/// sets `*size` to the piece's size. A piece larger than `cap` is not copied: the call fails
/// with `PS_INVALID_ARGUMENT` and `*size` still says how large a buffer it needs. One call and one
/// copy, with no buffer of the library's to free (unlike [`ps_get`]).
///
/// # Safety
/// As [`ps_get`]; `buf` is NULL (only with `cap` 0) or writable for `cap` bytes; `size` is
/// writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ps_get_into(
    store: *const PsStore,
    key: *const u8,
    key_len: usize,
    buf: *mut u8,
    cap: usize,
    cancel: *const PsCancel,
    size: *mut u64,
    err: *mut *mut PsError,
) -> PsStatus {
    call(err, || {
        let (s, size) = (self::store(store)?, self::out(size, "size")?);
        let key = self::key(key, key_len)?;
        if buf.is_null() && cap > 0 {
            return Err(Failure::Argument(format!(
                "buf is NULL but its capacity is {cap}"
            )));
        }
        let b = run(cancel, s.get(key))?;
        *size = b.len() as u64;
        if b.len() > cap {
            return Err(Failure::Argument(format!(
                "buffer too small for {key:?}: the piece has {} bytes, the buffer holds {cap}",
                b.len()
            )));
        }
        if !b.is_empty() {
            // SAFETY: `buf` is writable for `cap` >= `b.len()` bytes (checked non-NULL above),
            // and the library's buffer cannot overlap the caller's.
            unsafe { ptr::copy_nonoverlapping(b.as_ptr(), buf, b.len()) };
        }
        Ok(())
    })
}

/// Releases the bytes of a read and zeroes `*bytes`. NULL, or a `PsBytes` this call already
/// released (and zeroed), is a no-op; releasing a by-value copy of a released `PsBytes` frees
/// twice.
///
/// # Safety
/// `bytes` is NULL or a `PsBytes` filled by this library (or zeroed).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ps_bytes_free(bytes: *mut PsBytes) {
    // SAFETY: per the contract above.
    let Some(b) = (unsafe { bytes.as_mut() }) else {
        return;
    };
    if !b.owner.is_null() {
        // SAFETY: `owner` is the box `fill` leaked, released once (zeroed below).
        drop(unsafe { Box::from_raw(b.owner.cast::<Bytes>()) });
    }
    *b = PsBytes {
        data: ptr::null(),
        len: 0,
        owner: ptr::null_mut(),
    };
}

/// The metadata of the piece under `key`, into `*out` (its `key` is NULL).
///
/// # Safety
/// As [`ps_get`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ps_head(
    store: *const PsStore,
    key: *const u8,
    key_len: usize,
    cancel: *const PsCancel,
    out: *mut PsPieceInfo,
    err: *mut *mut PsError,
) -> PsStatus {
    call(err, || {
        let (s, out) = (self::store(store)?, self::out(out, "out")?);
        let key = self::key(key, key_len)?;
        let m = run(cancel, s.head(key))?;
        *out = PsPieceInfo::new(&m, ptr::null(), 0);
        Ok(())
    })
}

/// Whether a piece exists under `key`, into `*out`.
///
/// # Safety
/// As [`ps_get`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ps_exists(
    store: *const PsStore,
    key: *const u8,
    key_len: usize,
    cancel: *const PsCancel,
    out: *mut bool,
    err: *mut *mut PsError,
) -> PsStatus {
    call(err, || {
        let (s, out) = (self::store(store)?, self::out(out, "out")?);
        let key = self::key(key, key_len)?;
        *out = run(cancel, s.exists(key))?;
        Ok(())
    })
}

/// Deletes the piece under `key`; deleting a missing piece succeeds.
///
/// # Safety
/// As [`ps_get`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ps_delete(
    store: *const PsStore,
    key: *const u8,
    key_len: usize,
    cancel: *const PsCancel,
    err: *mut *mut PsError,
) -> PsStatus {
    call(err, || {
        let s = self::store(store)?;
        let key = self::key(key, key_len)?;
        run(cancel, s.delete(key))
    })
}

/// Deletes every piece whose key starts with `prefix`, on every shard; how many pieces and
/// bytes went into `*pieces` and `*bytes` (either may be NULL).
///
/// # Safety
/// As [`ps_get`]; `pieces` and `bytes` are NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ps_delete_prefix(
    store: *const PsStore,
    prefix: *const u8,
    prefix_len: usize,
    cancel: *const PsCancel,
    pieces: *mut u64,
    bytes: *mut u64,
    err: *mut *mut PsError,
) -> PsStatus {
    call(err, || {
        let s = self::store(store)?;
        let prefix = key(prefix, prefix_len)?;
        let summary = run(cancel, s.delete_prefix(prefix))?;
        // SAFETY: NULL or writable, per the contract above.
        unsafe {
            if let Some(p) = pieces.as_mut() {
                *p = summary.pieces;
            }
            if let Some(b) = bytes.as_mut() {
                *b = summary.bytes;
            }
        }
        Ok(())
    })
}

/// Writes every shard's open pack now and waits until it is durable (puts already wait for
/// their own pack; this is for a caller that wants the open packs out).
///
/// # Safety
/// `store` is NULL or live; `cancel` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ps_flush(
    store: *const PsStore,
    cancel: *const PsCancel,
    err: *mut *mut PsError,
) -> PsStatus {
    call(err, || run(cancel, self::store(store)?.flush()))
}

/// The store's operation metrics in the Prometheus text exposition format (0.0.4), into
/// `*out` (free it with [`ps_bytes_free`]): `piecestore_operations_total`,
/// `piecestore_operation_errors_total` (by `kind`, the error codes),
/// `piecestore_operation_bytes_total` and the histogram `piecestore_operation_duration_seconds`,
/// each labelled `backend`, `shard` and `op`. A snapshot of in-memory counters (no I/O; also
/// after [`ps_close`]); with the option `metrics=false` only the HELP and TYPE lines remain.
///
/// # Safety
/// `store` is NULL or live; `out` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ps_metrics(
    store: *const PsStore,
    out: *mut PsBytes,
    err: *mut *mut PsError,
) -> PsStatus {
    call(err, || {
        let (s, out) = (self::store(store)?, self::out(out, "out")?);
        fill(out, Bytes::from(s.metrics().to_prometheus()));
        Ok(())
    })
}

/// Garbage collection of a packed store's packs (`piecestore gc`): deletes compacted packs
/// whose grace period is over, rewrites packs with at least `garbage_ratio` garbage and merges
/// undersized ones. Safe while other calls (and other processes) read and write. `grace_ms`
/// below 0 and `garbage_ratio` below 0 (or NaN) take the store's `Pack.Grace` and
/// `Pack.GarbageRatio`; `dry_run` only reports. `progress` (NULL: none) is told the bytes
/// processed and the bytes to process. The report goes to `*out` as a JSON object (the fields
/// of `piecestore gc --json`; free it with [`ps_bytes_free`]). An unpacked store has nothing
/// to collect: all counts are 0.
///
/// # Safety
/// `store` is NULL or live; `progress` and `cancel` are NULL or live; `out` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ps_gc(
    store: *const PsStore,
    grace_ms: i64,
    garbage_ratio: f64,
    dry_run: bool,
    progress: *const PsProgress,
    cancel: *const PsCancel,
    out: *mut PsBytes,
    err: *mut *mut PsError,
) -> PsStatus {
    call(err, || {
        let (s, out) = (self::store(store)?, self::out(out, "out")?);
        let opts = piecestore::pack::gc::GcOptions {
            garbage_ratio: (garbage_ratio >= 0.0).then_some(garbage_ratio),
            grace: u64::try_from(grace_ms)
                .ok()
                .map(std::time::Duration::from_millis),
            dry_run,
        };
        let progress = PsProgress::of(progress);
        let report = run(cancel, s.gc(opts, &|p| progress(p.done, p.total)))?;
        fill(out, json(&report)?);
        Ok(())
    })
}

/// Checks a packed store (`piecestore fsck`): every pack's records against their CRCs, every
/// index entry against its pack, orphan packs, dangling entries and live-byte accounting; with
/// `rebuild_index`, rebuilds each shard's index from its packs alone, then checks again. The
/// report goes to `*out` as a JSON object (the fields of `piecestore fsck --json`, `problems`
/// empty when the store is clean; free it with [`ps_bytes_free`]). Problems found are the
/// report's, not a failure: the call fails only when the check itself cannot run. `progress`
/// (NULL: none) is told the bytes read so far as packs are read (`total` is 0: unknown).
///
/// # Safety
/// `store` is NULL or live; `progress` and `cancel` are NULL or live; `out` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ps_fsck(
    store: *const PsStore,
    rebuild_index: bool,
    progress: *const PsProgress,
    cancel: *const PsCancel,
    out: *mut PsBytes,
    err: *mut *mut PsError,
) -> PsStatus {
    call(err, || {
        let (s, out) = (self::store(store)?, self::out(out, "out")?);
        let opts = piecestore::pack::fsck::FsckOptions { rebuild_index };
        let progress = PsProgress::of(progress);
        let report = run(cancel, s.fsck(opts, &|n| progress(n, 0)))?;
        fill(out, json(&report)?);
        Ok(())
    })
}

/// Copies every piece of `store` into `dest` (`piecestore migrate`), verifying each: the
/// source read against its CRC32C, and afterwards the destination's size and checksum. Pieces
/// already at `dest` with the same size and checksum are skipped, so an interrupted run
/// resumes by running again; `dry_run` only counts; `concurrency` pieces (0: 16, at most 4096) are in
/// flight at once. The report goes to `*out` as a JSON object (`total_pieces`,
/// `total_bytes`, `done_pieces`, `done_bytes`, `copied`, `copied_bytes`, `skipped`,
/// `failed`, and `failures`: `{key, code, message}` each; free it with [`ps_bytes_free`]). A
/// piece that fails is in the report; the call fails only when the source cannot be listed.
/// `progress` (NULL: none) is told the pieces handled and the pieces in the source after
/// every piece.
///
/// # Safety
/// `store` and `dest` are NULL or live; `progress` and `cancel` are NULL or live; `out` is
/// writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ps_migrate_to(
    store: *const PsStore,
    dest: *const PsStore,
    dry_run: bool,
    concurrency: usize,
    progress: *const PsProgress,
    cancel: *const PsCancel,
    out: *mut PsBytes,
    err: *mut *mut PsError,
) -> PsStatus {
    call(err, || {
        let (s, out) = (self::store(store)?, self::out(out, "out")?);
        // SAFETY: the caller passes NULL or a live store (the ABI's contract).
        let dest = unsafe { dest.as_ref() }
            .map(|d| &d.0)
            .ok_or_else(|| Failure::Argument("dest is NULL".into()))?;
        let mut opts = piecestore::migrate::MigrateOptions {
            dry_run,
            ..Default::default()
        };
        if concurrency > 0 {
            opts.concurrency = concurrency;
        }
        let progress = PsProgress::of(progress);
        let report = run(
            cancel,
            s.migrate_to(dest, opts, &|p| progress(p.done_pieces, p.total_pieces)),
        )?;
        fill(out, json(&report)?);
        Ok(())
    })
}

/// What the store holds (`piecestore profile`), from one listing of every shard, as a JSON
/// object into `*out` (the fields of `piecestore profile --json`; free it with
/// [`ps_bytes_free`]): pieces, bytes and size buckets, each shard's share and the skew between
/// them, orphan objects no get can reach (up to `max_orphan_samples` named; 0 means 20), and a
/// packed store's pack fill and garbage (`null` when it does not pack). `progress` (NULL:
/// none) is told the objects listed so far, every 1,000 (`total` is 0: unknown).
///
/// # Safety
/// `store` is NULL or live; `progress` and `cancel` are NULL or live; `out` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ps_inventory(
    store: *const PsStore,
    max_orphan_samples: usize,
    progress: *const PsProgress,
    cancel: *const PsCancel,
    out: *mut PsBytes,
    err: *mut *mut PsError,
) -> PsStatus {
    call(err, || {
        let (s, out) = (self::store(store)?, self::out(out, "out")?);
        let opts = piecestore::profile::InventoryOptions { max_orphan_samples };
        let progress = PsProgress::of(progress);
        let report = run(cancel, s.inventory(opts, &|n| progress(n, 0)))?;
        fill(out, json(&report)?);
        Ok(())
    })
}

/// How the store is laid out, as a JSON object into `*out` (free it with [`ps_bytes_free`]):
/// `shard_count`, `shard_labels` (each shard's backend without credentials, e.g.
/// `http://127.0.0.1:9000/b-0`), `placement` (`fnv-mod`, the original Go piecestore's, or
/// `jump`) and `packing` (whether and how small pieces are packed, in words). No I/O; also
/// after [`ps_close`].
///
/// # Safety
/// `store` is NULL or live; `out` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ps_describe(
    store: *const PsStore,
    out: *mut PsBytes,
    err: *mut *mut PsError,
) -> PsStatus {
    call(err, || {
        let (s, out) = (self::store(store)?, self::out(out, "out")?);
        let description = serde_json::json!({
            "shard_count": s.shard_count(),
            "shard_labels": s.shard_labels(),
            "placement": s.placement().as_str(),
            "packing": s.packing(),
        });
        fill(out, json(&description)?);
        Ok(())
    })
}

/// The shard (0-based) that holds `key`, by the store's placement, into `*out`. Any UTF-8
/// string is placed (it need not be a valid piece key); no I/O.
///
/// # Safety
/// `store` is NULL or live; `key` is NULL or valid for `key_len` bytes; `out` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ps_shard_of(
    store: *const PsStore,
    key: *const u8,
    key_len: usize,
    out: *mut usize,
    err: *mut *mut PsError,
) -> PsStatus {
    call(err, || {
        let (s, out) = (self::store(store)?, self::out(out, "out")?);
        *out = s.shard_of(self::key(key, key_len)?);
        Ok(())
    })
}

/// Empties the pieces cache's tiers (memory, and the disk tier's files), as `piecestore cache
/// clear` does; the pieces stay in the store. `*out` is false when the store has no cache.
/// Never needed for correctness: pieces are immutable, and deletes invalidate at once.
///
/// # Safety
/// `store` is NULL or live; `cancel` is NULL or live; `out` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ps_clear_cache(
    store: *const PsStore,
    cancel: *const PsCancel,
    out: *mut bool,
    err: *mut *mut PsError,
) -> PsStatus {
    call(err, || {
        let (s, out) = (self::store(store)?, self::out(out, "out")?);
        *out = run(cancel, async { Ok(s.clear_cache().await) })?;
        Ok(())
    })
}

/// A report as the JSON bytes the CLI's `--json` prints.
fn json(report: &impl serde::Serialize) -> Result<Bytes, Failure> {
    serde_json::to_vec(report)
        .map(Bytes::from)
        .map_err(|e| Failure::Argument(format!("report could not be encoded: {e}")))
}

/// Starts listing the pieces whose key starts with `prefix` (empty: all), in no particular
/// order across shards; read them with [`ps_list_next`], free the listing with
/// [`ps_list_free`]. The listing holds its own reference to the store's backends, so it may
/// outlive the store's handle.
///
/// # Safety
/// As [`ps_get`]; `out` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ps_list_open(
    store: *const PsStore,
    prefix: *const u8,
    prefix_len: usize,
    out: *mut *mut PsList,
    err: *mut *mut PsError,
) -> PsStatus {
    call(err, || {
        let (s, out) = (self::store(store)?, self::out(out, "out")?);
        let prefix = key(prefix, prefix_len)?;
        *out = Box::into_raw(Box::new(PsList {
            stream: s.list(prefix),
            key: String::new(),
        }));
        Ok(())
    })
}

/// The next piece of a listing into `*out`, with `*has_item` = true; at the end, `*has_item` =
/// false. `out->key` stays valid until the next call on this listing or its free.
///
/// # Safety
/// `list` is NULL or a live listing used by no other thread; `out` and `has_item` writable;
/// `cancel` NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ps_list_next(
    list: *mut PsList,
    cancel: *const PsCancel,
    out: *mut PsPieceInfo,
    has_item: *mut bool,
    err: *mut *mut PsError,
) -> PsStatus {
    call(err, || {
        let list = self::out(list, "list")?;
        let (out, has_item) = (self::out(out, "out")?, self::out(has_item, "has_item")?);
        *has_item = false;
        let next = run(cancel, async { list.stream.next().await.transpose() })?;
        if let Some(m) = next {
            *out = PsPieceInfo::new(&m, ptr::null(), 0);
            list.key = m.key;
            out.key = list.key.as_ptr();
            out.key_len = list.key.len();
            *has_item = true;
        }
        Ok(())
    })
}

/// Frees a listing. NULL is a no-op.
///
/// # Safety
/// `list` is NULL or a live listing; it is not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ps_list_free(list: *mut PsList) {
    // SAFETY: per the contract above: the box `ps_list_open` leaked, or NULL.
    unsafe { free_box(list) }
}

/// A new cancellation token (free it with [`ps_cancel_free`] once no call uses it).
#[unsafe(no_mangle)]
pub extern "C" fn ps_cancel_new() -> *mut PsCancel {
    Box::into_raw(Box::new(PsCancel {
        cancelled: AtomicBool::new(false),
        notify: Notify::new(),
    }))
}

/// Cancels every call running with `cancel` (they return `PS_CANCELLED`) and every later one.
/// Callable from any thread. NULL is a no-op.
///
/// # Safety
/// `cancel` is NULL or a live token.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ps_cancel(cancel: *const PsCancel) {
    // SAFETY: per the contract above.
    if let Some(c) = unsafe { cancel.as_ref() } {
        c.cancelled.store(true, Ordering::Release);
        c.notify.notify_waiters();
    }
}

/// Frees a token. NULL is a no-op.
///
/// # Safety
/// `cancel` is NULL or a live token that no running call uses; it is not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ps_cancel_free(cancel: *mut PsCancel) {
    // SAFETY: per the contract above: the box `ps_cancel_new` leaked, or NULL.
    unsafe { free_box(cancel) }
}
