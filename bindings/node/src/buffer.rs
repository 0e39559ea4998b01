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

/// A new `Buffer` holding a copy of `data`.
unsafe fn copy(env: sys::napi_env, data: &[u8]) -> Result<sys::napi_value> {
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
