//! Promises over core futures, without a thread hop when the answer is already there, and
//! settled through one threadsafe function per environment when it is not.
//!
//! napi-rs's own future-to-promise bridge (`Env::spawn_future_with_callback`) creates, for
//! every promise, a threadsafe function (a libuv handle opened and closed on the event loop),
//! a JavaScript `Error` with its stack trace (for a rejection's trace) and an environment
//! cleanup hook. For a 4 KiB read from a local disk that bookkeeping cost more than the read.
//! Here a pending operation costs one `napi_create_promise` on the event loop and one call of
//! its environment's [`Bridge`] from the runtime when it is done.

use std::cell::RefCell;
use std::ffi::c_void;
use std::future::Future;
use std::pin::Pin;
use std::ptr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use napi::bindgen_prelude::*;
use napi::{check_status, sys};

use crate::errors::{js_error, to_napi};

/// A promise for `fut`'s outcome, settled with `T` converted on the JavaScript thread, or
/// rejected with the core error as a JavaScript error (see [`crate::errors`]).
///
/// When `inline` is true the future is first polled once right here, inside the runtime's
/// context, where the store must not block: an operation that completes without waiting (a
/// memory store, a key that fails validation, a closed store) gives an already-settled
/// promise, with no trip through the runtime's threads. One that waits (a read from a local
/// disk on the runtime's blocking pool, a packed put's group commit) is polled once more
/// here, on the event loop, when it wakes: a 4 KiB local read then costs one thread hand-off
/// each way, as it does inside the runtime, not four. If that second poll still waits (a
/// response streaming in), or if the operation has CPU-heavy work next (checksumming a large
/// piece), it goes on on the core's runtime, and the promise settles on a later turn of the
/// event loop. Callers pass `inline = false` for work that could take long on the CPU
/// (checksumming a large put) to run it on the runtime from the start.
pub fn promise<'env, T, F>(env: &'env Env, fut: F, inline: bool) -> Result<PromiseRaw<'env, T>>
where
    T: ToNapiValue + Send + 'static,
    F: Future<Output = piecestore::Result<T>> + Send + 'static,
{
    let raw_env = env.raw();
    let mut fut = Box::pin(fut);
    let mut resume = None;
    if inline {
        let r = Arc::new(Resume {
            bridge: bridge(raw_env)?,
            state: AtomicU8::new(POLLING),
            parked: Mutex::new(None),
        });
        let waker = Waker::from(r.clone());
        let polled = piecestore::runtime::poll_without_blocking_with(
            fut.as_mut(),
            &mut Context::from_waker(&waker),
        );
        match polled {
            Poll::Ready(out) => {
                r.state.store(DONE, Ordering::Release);
                return match out {
                    Ok(v) => PromiseRaw::resolve(env, v),
                    Err(e) => PromiseRaw::reject(env, js_error(env, &e)?),
                };
            }
            Poll::Pending => resume = Some(r),
        }
    }
    let mut deferred = ptr::null_mut();
    let mut value = ptr::null_mut();
    check_status!(unsafe { sys::napi_create_promise(raw_env, &mut deferred, &mut value) })?;
    let settle = Settle {
        bridge: begin(raw_env)?,
        deferred: Some(Deferred(deferred)),
    };
    match resume {
        // Woken while it was polled: it has work that must not run on the event loop (or its
        // wait ended at once); the runtime goes on with it.
        Some(r) if r.state.fetch_and(!POLLING, Ordering::AcqRel) & WOKEN == 0 => {
            // Its wake queues `Resume::resume` for this thread, which runs only after this
            // call has returned: the future is parked by then.
            *r.parked.lock().unwrap_or_else(PoisonError::into_inner) = Some((fut, settle));
        }
        Some(r) => {
            r.state.store(DONE, Ordering::Release);
            on_runtime(fut, settle);
        }
        None => on_runtime(fut, settle),
    }
    Ok(PromiseRaw::new(raw_env, value))
}

/// Goes on polling `fut` on the core's runtime; `settle` settles its promise once it is done.
fn on_runtime<T, F>(fut: Pin<Box<F>>, settle: Settle)
where
    T: ToNapiValue + Send + 'static,
    F: Future<Output = piecestore::Result<T>> + Send + 'static,
{
    drop(piecestore::runtime::spawn(async move {
        let out = fut.await;
        settle.with(out);
    }));
}

/// [`Resume::state`]: the event loop is polling the future.
const POLLING: u8 = 1;
/// [`Resume::state`]: the future was woken (since its last poll began).
const WOKEN: u8 = 2;
/// [`Resume::state`]: the event loop is done with the future (it finished, or the runtime
/// has it): wakes are ignored.
const DONE: u8 = 4;

/// The waker of an operation first polled on the event loop: its first wake polls it once more
/// there (through the environment's [`Bridge`]).
struct Resume<F> {
    bridge: Arc<Bridge>,
    state: AtomicU8,
    /// The pending future and the settling of its promise, until the event loop resumes it.
    parked: Mutex<Option<(Pin<Box<F>>, Settle)>>,
}

impl<T, F> Resume<F>
where
    T: ToNapiValue + Send + 'static,
    F: Future<Output = piecestore::Result<T>> + Send + 'static,
{
    /// On the JavaScript thread, after a wake: polls the future once more (where blocking is
    /// not allowed); settles its promise at once if it is done, else hands it to the runtime.
    fn resume(self: Arc<Self>, env: sys::napi_env) {
        let parked = self
            .parked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some((mut fut, settle)) = parked else {
            return;
        };
        self.state.store(POLLING, Ordering::Release);
        let waker = Waker::from(self.clone());
        let polled = piecestore::runtime::poll_without_blocking_with(
            fut.as_mut(),
            &mut Context::from_waker(&waker),
        );
        self.state.store(DONE, Ordering::Release);
        match polled {
            Poll::Ready(out) => settle.now(env, out),
            // The runtime's first poll of the task registers its own wakers.
            Poll::Pending => on_runtime(fut, settle),
        }
    }
}

impl<T, F> Wake for Resume<F>
where
    T: ToNapiValue + Send + 'static,
    F: Future<Output = piecestore::Result<T>> + Send + 'static,
{
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Only the first wake after a poll on the event loop queues a resume; one during that
        // poll is seen by the poller when the poll returns.
        if self.state.fetch_or(WOKEN, Ordering::AcqRel) & (POLLING | WOKEN | DONE) == 0 {
            let me = Arc::clone(self);
            self.bridge.post(Box::new(move |env| me.resume(env)));
        }
    }
}

/// A promise's `napi_deferred`, carried to the runtime and back: it is only ever used on its
/// environment's JavaScript thread (in a [`Bridge`] job).
struct Deferred(sys::napi_deferred);

// SAFETY: the pointer is never dereferenced off the JavaScript thread that created it; the
// runtime only carries it to the job that the bridge runs on that thread.
unsafe impl Send for Deferred {}

/// The settling of one promise, made exactly once: with the outcome, or, if the runtime drops
/// the operation before it is done (a panic in the core), with an error, so that no promise
/// is left pending and no environment kept alive by it.
struct Settle {
    bridge: Arc<Bridge>,
    /// `None` once sent.
    deferred: Option<Deferred>,
}

impl Settle {
    /// Sends `out` to the JavaScript thread, where it settles the promise.
    fn with<T: ToNapiValue + Send + 'static>(mut self, out: piecestore::Result<T>) {
        if let Some(d) = self.deferred.take() {
            self.bridge.post(Box::new(move |env| unsafe {
                settle(env, d, Outcome::Done(out))
            }));
        }
    }

    /// Settles the promise with `out` here, on the JavaScript thread of `env`.
    fn now<T: ToNapiValue>(mut self, env: sys::napi_env, out: piecestore::Result<T>) {
        if let Some(d) = self.deferred.take() {
            unsafe { settle(env, d, Outcome::Done(out)) };
        }
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        if let Some(d) = self.deferred.take() {
            self.bridge.post(Box::new(move |env| unsafe {
                settle::<()>(env, d, Outcome::Dropped)
            }));
        }
    }
}

/// What a promise settles with.
enum Outcome<T> {
    /// The operation's result.
    Done(piecestore::Result<T>),
    /// The operation was dropped unfinished.
    Dropped,
}

/// Resolves or rejects `deferred` on its JavaScript thread, then lets the environment's
/// event loop end once nothing else is in flight.
///
/// # Safety
/// `env` is the live environment that created `deferred`, on its JavaScript thread, and
/// `deferred` has not been settled.
unsafe fn settle<T: ToNapiValue>(env: sys::napi_env, deferred: Deferred, out: Outcome<T>) {
    let e = Env::from_raw(env);
    let value: Result<sys::napi_value> = match out {
        Outcome::Done(Ok(v)) => unsafe { T::to_napi_value(env, v) },
        Outcome::Done(Err(err)) => Err(to_napi(&e, &err)),
        Outcome::Dropped => Err(napi::Error::new(
            Status::GenericFailure,
            "the operation stopped before it finished (an internal error in PieceStore)",
        )),
    };
    unsafe {
        match value {
            Ok(v) => sys::napi_resolve_deferred(env, deferred.0, v),
            Err(err) => {
                sys::napi_reject_deferred(env, deferred.0, JsError::from(err).into_value(env))
            }
        };
    }
    finish(env);
}

/// A job the bridge runs on its environment's JavaScript thread (with `null` when the
/// environment is gone: then it must only be dropped).
type Job = Box<dyn FnOnce(sys::napi_env) + Send>;

/// One environment's threadsafe function, shared by all of its pending promises.
struct Bridge {
    /// `None` once the environment is torn down: then jobs are dropped unrun.
    tsfn: Mutex<Option<Tsfn>>,
}

/// A `napi_threadsafe_function`: callable from any thread while its environment lives.
struct Tsfn(sys::napi_threadsafe_function);

// SAFETY: Node-API allows `napi_call_threadsafe_function` from any thread; the bridge's mutex
// keeps every call before the release in the environment's cleanup hook.
unsafe impl Send for Tsfn {}

impl Bridge {
    /// Queues `job` for the JavaScript thread (never blocking the caller); drops it unrun when
    /// the environment is gone.
    fn post(&self, job: Job) {
        let tsfn = self.tsfn.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(Tsfn(f)) = tsfn.as_ref() else {
            return;
        };
        let data = Box::into_raw(Box::new(job));
        let status = unsafe {
            sys::napi_call_threadsafe_function(
                *f,
                data.cast(),
                sys::ThreadsafeFunctionCallMode::nonblocking,
            )
        };
        if status != sys::Status::napi_ok {
            // The environment is closing: the job never runs.
            drop(unsafe { Box::from_raw(data) });
        }
    }
}

/// Runs a job on the JavaScript thread (`env` is null while the threadsafe function is being
/// finalized: the job is then only dropped).
unsafe extern "C" fn call_job(
    env: sys::napi_env,
    _js_callback: sys::napi_value,
    _context: *mut c_void,
    data: *mut c_void,
) {
    let job = unsafe { Box::from_raw(data.cast::<Job>()) };
    if !env.is_null() {
        job(env);
    }
}

/// This thread's environment's bridge and how many of its promises are pending (the
/// threadsafe function keeps the event loop alive only while one is).
struct Local {
    env: sys::napi_env,
    bridge: Arc<Bridge>,
    tsfn: sys::napi_threadsafe_function,
    pending: std::cell::Cell<usize>,
}

thread_local! {
    /// The bridges of the environments on this thread (one, in practice: Node runs each
    /// worker on a thread of its own).
    static LOCAL: RefCell<Vec<Rc<Local>>> = const { RefCell::new(Vec::new()) };
}

fn local(env: sys::napi_env) -> Option<Rc<Local>> {
    LOCAL
        .try_with(|l| l.borrow().iter().find(|b| b.env == env).cloned())
        .ok()
        .flatten()
}

/// `env`'s bridge and count, created on first use.
fn local_or_create(env: sys::napi_env) -> Result<Rc<Local>> {
    match local(env) {
        Some(l) => Ok(l),
        None => create(env),
    }
}

/// `env`'s bridge (created on first use).
fn bridge(env: sys::napi_env) -> Result<Arc<Bridge>> {
    Ok(local_or_create(env)?.bridge.clone())
}

/// Counts one more pending promise of `env` and returns its bridge (created on first use).
fn begin(env: sys::napi_env) -> Result<Arc<Bridge>> {
    let l = local_or_create(env)?;
    if l.pending.get() == 0 {
        check_status!(unsafe { sys::napi_ref_threadsafe_function(env, l.tsfn) })?;
    }
    l.pending.set(l.pending.get() + 1);
    Ok(l.bridge.clone())
}

/// One pending promise of `env` fewer; with none left, the event loop may end.
fn finish(env: sys::napi_env) {
    if let Some(l) = local(env) {
        let left = l.pending.get().saturating_sub(1);
        l.pending.set(left);
        if left == 0 {
            unsafe { sys::napi_unref_threadsafe_function(env, l.tsfn) };
        }
    }
}

/// Creates `env`'s bridge: its threadsafe function (unreferenced until a promise is pending)
/// and the cleanup hook that closes it with the environment.
fn create(env: sys::napi_env) -> Result<Rc<Local>> {
    let e = Env::from_raw(env);
    let name = e.create_string("piecestore")?;
    let mut tsfn = ptr::null_mut();
    check_status!(unsafe {
        sys::napi_create_threadsafe_function(
            env,
            ptr::null_mut(),
            ptr::null_mut(),
            name.raw(),
            0,
            1,
            ptr::null_mut(),
            None,
            ptr::null_mut(),
            Some(call_job),
            &mut tsfn,
        )
    })?;
    check_status!(unsafe { sys::napi_unref_threadsafe_function(env, tsfn) })?;
    let bridge = Arc::new(Bridge {
        tsfn: Mutex::new(Some(Tsfn(tsfn))),
    });
    let l = Rc::new(Local {
        env,
        bridge: bridge.clone(),
        tsfn,
        pending: std::cell::Cell::new(0),
    });
    // Runs before Node finalizes the threadsafe function (hooks run in reverse order of
    // registration, and Node registered the function's own at its creation).
    let arg = Arc::into_raw(bridge).cast_mut().cast::<c_void>();
    let hooked = check_status!(unsafe { sys::napi_add_env_cleanup_hook(env, Some(teardown), arg) });
    if let Err(e) = hooked {
        unsafe { teardown(arg) };
        return Err(e);
    }
    LOCAL.with(|v| v.borrow_mut().push(l.clone()));
    Ok(l)
}

/// The environment's cleanup hook: no job is queued after this, and the threadsafe function
/// is released (Node then drops the jobs still queued, unrun).
unsafe extern "C" fn teardown(arg: *mut c_void) {
    let bridge = unsafe { Arc::from_raw(arg.cast_const().cast::<Bridge>()) };
    let tsfn = bridge
        .tsfn
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some(Tsfn(f)) = tsfn {
        unsafe {
            sys::napi_release_threadsafe_function(f, sys::ThreadsafeFunctionReleaseMode::abort)
        };
    }
    // (Skipped when this thread's locals are already gone: then so is the list.)
    let _ = LOCAL.try_with(|v| v.borrow_mut().retain(|l| !Arc::ptr_eq(&l.bridge, &bridge)));
}
