//! Bytes across the boundary: JavaScript `Buffer`/`Uint8Array`/`string` in, `Buffer` out.

use std::cell::RefCell;
use std::ptr;
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;
use napi::bindgen_prelude::*;

/// Above this size a piece read is handed to JavaScript without a copy, and a put's data is
/// copied off the JavaScript thread; at or below it, copying right away is cheaper.
const SHARE_MIN: usize = 64 * 1024;

/// The data of a put: a `Buffer` or any `Uint8Array`, or a string (stored as UTF-8).
pub type Data = Either<Uint8Array, String>;

/// A put's data on its way to the core.
pub enum Input {
    /// Ready bytes: a string, or a small array copied on the calling thread.
    Ready(Bytes),
    /// A large array, copied on a runtime thread (see [`Lent`]).
    Lent(Lent),
}

impl Input {
    /// Takes `data` for the core. Up to [`SHARE_MIN`] bytes are copied here; larger arrays
    /// are copied later, off the JavaScript thread (a 64 MiB copy would stall the event loop).
    pub fn new(env: &Env, data: Data) -> Result<Self> {
        Ok(match data {
            Either::A(a) if a.len() <= SHARE_MIN => Input::Ready(Bytes::copy_from_slice(&a)),
            Either::A(a) => Input::Lent(Lent::new(env, a)?),
            Either::B(s) => Input::Ready(Bytes::from(s)),
        })
    }

    /// The size in bytes.
    pub fn len(&self) -> usize {
        match self {
            Input::Ready(b) => b.len(),
            Input::Lent(l) => l.array.len(),
        }
    }

    /// The bytes, owned by the core (the copy of a lent array happens here, on the calling
    /// thread, and then the array is given back).
    pub fn into_bytes(self) -> Bytes {
        match self {
            Input::Ready(b) => b,
            Input::Lent(l) => Bytes::copy_from_slice(&l.array),
        }
    }
}

/// A JavaScript array read from a runtime thread.
///
/// A reference keeps the array alive while JavaScript runs, but not past its environment:
/// when a worker thread terminates, V8 frees the worker's array memory whatever references
/// native code holds. So every `Lent` is counted per JavaScript thread, and an environment
/// cleanup hook waits, when the environment goes away, until none is left. That wait is
/// bounded: a `Lent` is only held for the copy in [`Input::into_bytes`], never across I/O.
pub struct Lent {
    array: Uint8Array,
    _guard: LoanGuard,
}

impl Lent {
    fn new(env: &Env, array: Uint8Array) -> Result<Self> {
        Ok(Lent {
            array,
            _guard: LoanGuard::new(env)?,
        })
    }
}

/// The loans of one JavaScript thread's environment.
#[derive(Default)]
struct Loans {
    open: Mutex<usize>,
    returned: Condvar,
}

thread_local! {
    /// This thread's environment's loans, once it has lent anything.
    static LOANS: RefCell<Option<Arc<Loans>>> = const { RefCell::new(None) };
}

/// One open loan; dropping it (on any thread) returns it.
struct LoanGuard(Arc<Loans>);

impl LoanGuard {
    fn new(env: &Env) -> Result<Self> {
        let loans = LOANS.with(|slot| -> Result<Arc<Loans>> {
            let mut slot = slot.borrow_mut();
            if let Some(l) = &*slot {
                return Ok(Arc::clone(l));
            }
            let loans = Arc::new(Loans::default());
            // Runs when this environment is torn down (a worker ends, the process exits),
            // before V8 frees its arrays.
            env.add_env_cleanup_hook(Arc::clone(&loans), |loans| {
                let mut open = loans.open.lock().unwrap_or_else(|p| p.into_inner());
                while *open > 0 {
                    open = loans.returned.wait(open).unwrap_or_else(|p| p.into_inner());
                }
                LOANS.with(|slot| slot.borrow_mut().take());
            })?;
            *slot = Some(Arc::clone(&loans));
            Ok(loans)
        })?;
        *loans.open.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        Ok(LoanGuard(loans))
    }
}

impl Drop for LoanGuard {
    fn drop(&mut self) {
        let mut open = self.0.open.lock().unwrap_or_else(|p| p.into_inner());
        *open -= 1;
        if *open == 0 {
            self.0.returned.notify_all();
        }
    }
}

/// A piece's bytes, converted to a `Buffer` on the JavaScript thread.
///
/// A large piece the core owns alone (read from a file or over the network) becomes an
/// external `Buffer` over the same memory, without a copy. Small pieces, and pieces whose bytes
/// are shared with the store (a memory store), are copied: JavaScript may write into a
/// `Buffer`, and that must never change a stored piece.
pub struct PieceBuf(Bytes);

impl PieceBuf {
    /// Wraps a piece read by the core. A large piece whose bytes the store shares (a memory
    /// store) is copied here, on the thread running the read (a runtime thread, unless the read
    /// was small enough to run inline), so that the JavaScript thread only wraps memory.
    pub fn new(bytes: Bytes) -> Self {
        if bytes.len() <= SHARE_MIN {
            return PieceBuf(bytes);
        }
        match bytes.try_into_mut() {
            Ok(owned) => PieceBuf(owned.freeze()),
            Err(shared) => PieceBuf(Bytes::from(shared.to_vec())),
        }
    }
}

impl TypeName for PieceBuf {
    fn type_name() -> &'static str {
        "Buffer"
    }

    fn value_type() -> ValueType {
        ValueType::Object
    }
}

impl ToNapiValue for PieceBuf {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> Result<sys::napi_value> {
        let bytes = val.0;
        if bytes.len() > SHARE_MIN {
            match bytes.try_into_mut() {
                // `Buffer` from a `Vec` is an external buffer that frees the Vec when collected.
                Ok(owned) => return unsafe { Buffer::to_napi_value(env, Vec::from(owned).into()) },
                Err(shared) => return unsafe { copy(env, &shared) },
            }
        }
        unsafe { copy(env, &bytes) }
    }
}

/// Pieces up to this size are copied into a slice of a shared slab (see [`Pool`]).
const POOLED_MAX: usize = 4 * 1024;

/// The size of one slab: room for eight pooled pieces of the largest pooled size.
const SLAB: usize = 32 * 1024;

/// Small read pieces share `ArrayBuffer`s, as Node's own `Buffer.allocUnsafe` pool does.
///
/// A fresh `Buffer` per small get costs more than the get itself on a memory store: a
/// `malloc`, an `ArrayBuffer` that V8's sweeper thread tracks and later frees (taking the
/// allocator's lock the JavaScript thread is allocating under), for 4 KiB of bytes. Here up to
/// [`POOLED_MAX`] bytes are copied into the next free, 8-byte-aligned slice of a
/// [`SLAB`]-byte `ArrayBuffer` and handed out as a `Buffer` over that slice
/// (`Buffer.from(arrayBuffer, byteOffset, length)`); a new slab is made when one is full.
///
/// The trade is Node's own: a piece kept alive keeps its whole slab alive (at most 32 KiB for
/// one piece; `Buffer.from(piece)` copies one out to keep). Every slab is marked
/// untransferable (`worker_threads.markAsUntransferable`), as Node marks its pool, so that no
/// `postMessage` can detach the memory other pieces are views of; where that function cannot
/// be reached (a Node without `process.getBuiltinModule`), pieces are not pooled. The slab's
/// address is asked of V8 before every copy, never remembered.
struct Pool {
    /// `Buffer`, the receiver of `from`.
    buffer: sys::napi_ref,
    /// `Buffer.from`, captured once.
    from: sys::napi_ref,
    /// `worker_threads.markAsUntransferable`.
    mark: sys::napi_ref,
    /// The slab being filled, if any, and how many of its bytes are handed out.
    slab: Option<(sys::napi_ref, usize)>,
}

/// This thread's pool: not tried yet, unavailable, or ready (one JavaScript environment per
/// thread, as Node runs them; turned off by a cleanup hook when the environment goes away).
enum PoolState {
    Untried,
    Off,
    On(sys::napi_env, Pool),
}

thread_local! {
    static POOL: RefCell<PoolState> = const { RefCell::new(PoolState::Untried) };
}

/// A new `Buffer` holding a copy of `data`: a slice of a pooled slab for small pieces, a
/// `Buffer` of its own otherwise.
unsafe fn copy(env: sys::napi_env, data: &[u8]) -> Result<sys::napi_value> {
    if !data.is_empty() && data.len() <= POOLED_MAX {
        let pooled = POOL
            .try_with(|p| {
                // Busy only if JavaScript this pool called (a patched `Buffer.from`) reads a
                // piece itself: that read gets a `Buffer` of its own.
                let Ok(mut p) = p.try_borrow_mut() else {
                    return None;
                };
                if matches!(*p, PoolState::Untried) {
                    *p = match unsafe { Pool::new(env) } {
                        Some(pool) => PoolState::On(env, pool),
                        None => PoolState::Off,
                    };
                }
                match &mut *p {
                    PoolState::On(e, pool) if *e == env => unsafe { pool.copy(env, data) },
                    _ => None,
                }
            })
            .ok()
            .flatten();
        if let Some(out) = pooled {
            return Ok(out);
        }
    }
    unsafe { copy_alone(env, data) }
}

/// A new `Buffer` of its own holding a copy of `data`.
unsafe fn copy_alone(env: sys::napi_env, data: &[u8]) -> Result<sys::napi_value> {
    let mut out = ptr::null_mut();
    check_status!(
        unsafe {
            sys::napi_create_buffer_copy(
                env,
                data.len(),
                data.as_ptr().cast(),
                ptr::null_mut(),
                &mut out,
            )
        },
        "could not allocate a Buffer of {} bytes",
        data.len()
    )?;
    Ok(out)
}

/// `Ok` for `napi_ok`, else `None` (with any exception the call left cleared).
unsafe fn ok(env: sys::napi_env, status: sys::napi_status) -> Option<()> {
    if status == sys::Status::napi_ok {
        return Some(());
    }
    let mut pending = false;
    unsafe { sys::napi_is_exception_pending(env, &mut pending) };
    if pending {
        let mut e = ptr::null_mut();
        unsafe { sys::napi_get_and_clear_last_exception(env, &mut e) };
    }
    None
}

/// `object[name]`.
unsafe fn property(
    env: sys::napi_env,
    object: sys::napi_value,
    name: &std::ffi::CStr,
) -> Option<sys::napi_value> {
    let mut out = ptr::null_mut();
    unsafe {
        ok(
            env,
            sys::napi_get_named_property(env, object, name.as_ptr(), &mut out),
        )?
    };
    Some(out)
}

/// Whether `value` is a function.
unsafe fn is_function(env: sys::napi_env, value: sys::napi_value) -> bool {
    let mut t = 0;
    let status = unsafe { sys::napi_typeof(env, value, &mut t) };
    status == sys::Status::napi_ok && t == sys::ValueType::napi_function
}

/// A strong reference to `value`.
unsafe fn reference(env: sys::napi_env, value: sys::napi_value) -> Option<sys::napi_ref> {
    let mut out = ptr::null_mut();
    unsafe { ok(env, sys::napi_create_reference(env, value, 1, &mut out))? };
    Some(out)
}

/// The value a reference holds.
unsafe fn value(env: sys::napi_env, r: sys::napi_ref) -> Option<sys::napi_value> {
    let mut out = ptr::null_mut();
    unsafe { ok(env, sys::napi_get_reference_value(env, r, &mut out))? };
    (!out.is_null()).then_some(out)
}

/// Calls `f` with `this` and `args`.
unsafe fn call(
    env: sys::napi_env,
    this: sys::napi_value,
    f: sys::napi_value,
    args: &[sys::napi_value],
) -> Option<sys::napi_value> {
    let mut out = ptr::null_mut();
    unsafe {
        ok(
            env,
            sys::napi_call_function(env, this, f, args.len(), args.as_ptr(), &mut out),
        )?
    };
    Some(out)
}

impl Pool {
    /// Finds `Buffer.from` and `markAsUntransferable`; `None` where either is missing.
    unsafe fn new(env: sys::napi_env) -> Option<Pool> {
        unsafe {
            let mut global = ptr::null_mut();
            ok(env, sys::napi_get_global(env, &mut global))?;
            let buffer = property(env, global, c"Buffer")?;
            let from = property(env, buffer, c"from")?;
            let process = property(env, global, c"process")?;
            let builtin = property(env, process, c"getBuiltinModule")?;
            if !is_function(env, from) || !is_function(env, builtin) {
                return None;
            }
            let mut name = ptr::null_mut();
            let module = "worker_threads";
            ok(
                env,
                sys::napi_create_string_utf8(
                    env,
                    module.as_ptr().cast(),
                    module.len() as isize,
                    &mut name,
                ),
            )?;
            let threads = call(env, process, builtin, &[name])?;
            let mark = property(env, threads, c"markAsUntransferable")?;
            if !is_function(env, mark) {
                return None;
            }
            let pool = Pool {
                buffer: reference(env, buffer)?,
                from: reference(env, from)?,
                mark: reference(env, mark)?,
                slab: None,
            };
            // The references die with the environment; forget them before it goes.
            let hook: unsafe extern "C" fn(*mut std::ffi::c_void) = forget_pool;
            ok(
                env,
                sys::napi_add_env_cleanup_hook(env, Some(hook), ptr::null_mut()),
            )?;
            Some(pool)
        }
    }

    /// `data` copied into the current slab (or a new one) and handed out as a `Buffer` over
    /// its slice; `None` if any step failed (the caller then copies into a `Buffer` of its own).
    unsafe fn copy(&mut self, env: sys::napi_env, data: &[u8]) -> Option<sys::napi_value> {
        unsafe {
            let (slab, at, base) = match self.current(env, data.len()) {
                Some(found) => found,
                None => self.fresh(env)?,
            };
            ptr::copy_nonoverlapping(data.as_ptr(), base.add(at), data.len());
            let mut offset = ptr::null_mut();
            let mut length = ptr::null_mut();
            ok(env, sys::napi_create_uint32(env, at as u32, &mut offset))?;
            ok(
                env,
                sys::napi_create_uint32(env, data.len() as u32, &mut length),
            )?;
            let buffer = value(env, self.buffer)?;
            let from = value(env, self.from)?;
            let out = call(env, buffer, from, &[slab, offset, length])?;
            if let Some((_, used)) = &mut self.slab {
                // The next slice starts 8-byte aligned, as in Node's pool.
                *used = (at + data.len()).next_multiple_of(8);
            }
            Some(out)
        }
    }

    /// The current slab, the offset `len` bytes would go at and the slab's memory, if it is
    /// still whole (not detached) and has room.
    unsafe fn current(
        &self,
        env: sys::napi_env,
        len: usize,
    ) -> Option<(sys::napi_value, usize, *mut u8)> {
        let (r, used) = self.slab?;
        if used + len > SLAB {
            return None;
        }
        unsafe {
            let slab = value(env, r)?;
            let mut base = ptr::null_mut();
            let mut size = 0;
            ok(
                env,
                sys::napi_get_arraybuffer_info(env, slab, &mut base, &mut size),
            )?;
            (!base.is_null() && size == SLAB).then_some((slab, used, base.cast()))
        }
    }

    /// A new, empty slab, marked untransferable, replacing the current one.
    unsafe fn fresh(&mut self, env: sys::napi_env) -> Option<(sys::napi_value, usize, *mut u8)> {
        unsafe {
            let mut slab = ptr::null_mut();
            let mut base = ptr::null_mut();
            ok(
                env,
                sys::napi_create_arraybuffer(env, SLAB, &mut base, &mut slab),
            )?;
            let mark = value(env, self.mark)?;
            let mut undefined = ptr::null_mut();
            ok(env, sys::napi_get_undefined(env, &mut undefined))?;
            call(env, undefined, mark, &[slab])?;
            let r = reference(env, slab)?;
            if let Some((old, _)) = self.slab.replace((r, 0)) {
                sys::napi_delete_reference(env, old);
            }
            Some((slab, 0, base.cast()))
        }
    }
}

/// The environment's cleanup hook: its references are freed with it, so only forget them
/// (and pool no more on this thread: nothing may be set up in an environment going away).
unsafe extern "C" fn forget_pool(_: *mut std::ffi::c_void) {
    let _ = POOL.try_with(|p| {
        if let Ok(mut p) = p.try_borrow_mut() {
            *p = PoolState::Off;
        }
    });
}
