//! asyncio awaitables driven by the core's runtime, without a runtime thread ever touching
//! Python.
//!
//! A bridge that resolves asyncio futures from runtime threads (`call_soon_threadsafe`, as
//! `pyo3-async-runtimes` does) must take the GIL on those threads. At interpreter exit that
//! races with finalization: the main thread can finish while a runtime thread waits to retake
//! the GIL (`call_soon_threadsafe` releases it in its `send()`), and CPython then ends that
//! foreign thread mid-Rust: a crash at exit in about half the runs of a short script.
//!
//! Here a finished task only pushes its outcome onto its event loop's queue and writes one byte
//! to a pipe; the loop watches the pipe (`add_reader`) and, on its own thread with the GIL it
//! already holds, converts the outcomes and resolves the futures. Cancelling the Python future
//! aborts the task, which drops the core future: the core's operations are safe to drop at any
//! point (a put either lands whole or not at all).

use std::future::Future;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use pyo3::IntoPyObjectExt;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

/// Turns a finished task's value into a Python object, on the loop's thread.
type Outcome = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;

/// The loop's side of the pipe and the finished tasks waiting for it.
struct Shared {
    read_fd: RawFd,
    write_fd: RawFd,
    done: Mutex<Vec<(Py<PyAny>, Outcome)>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: both descriptors were opened by `Waker::new` and are closed only here.
        unsafe {
            libc::close(self.read_fd);
            libc::close(self.write_fd);
        }
    }
}

impl Shared {
    /// Called on a runtime thread: no GIL, no Python.
    fn complete(&self, future: Py<PyAny>, outcome: Outcome) {
        self.done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((future, outcome));
        // A full pipe already holds a pending wake-up, so EAGAIN is fine.
        // SAFETY: writes one byte from a valid buffer to our own non-blocking pipe.
        unsafe {
            libc::write(self.write_fd, b"x".as_ptr().cast(), 1);
        }
    }
}

/// One per event loop: receives finished tasks and resolves their futures on the loop.
#[pyclass(frozen, module = "piecestore")]
pub struct Waker {
    shared: Arc<Shared>,
}

#[pymethods]
impl Waker {
    /// Called by the event loop when the pipe is readable.
    fn drain(&self, py: Python<'_>) -> PyResult<()> {
        let mut buf = [0u8; 256];
        // SAFETY: reads into a valid buffer from our own non-blocking pipe.
        while unsafe { libc::read(self.shared.read_fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
        let done = std::mem::take(&mut *self.shared.done.lock().unwrap_or_else(|p| p.into_inner()));
        for (future, outcome) in done {
            let future = future.bind(py);
            if future.call_method0("cancelled")?.is_truthy()? {
                continue;
            }
            match outcome(py) {
                Ok(value) => future.call_method1("set_result", (value,))?,
                Err(e) => future.call_method1("set_exception", (e.into_value(py),))?,
            };
        }
        Ok(())
    }
}

impl Waker {
    fn new() -> PyResult<Self> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 returns.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(Waker {
            shared: Arc::new(Shared {
                read_fd: fds[0],
                write_fd: fds[1],
                done: Mutex::new(Vec::new()),
            }),
        })
    }
}

/// Event loop → its waker (weakly keyed: a closed, collected loop drops its waker and pipe).
static WAKERS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn waker_for(py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<Arc<Shared>> {
    let wakers = WAKERS
        .get_or_try_init(py, || {
            py.import("weakref")?
                .getattr("WeakKeyDictionary")?
                .call0()
                .map(Bound::unbind)
        })?
        .bind(py);
    let existing = wakers.call_method1("get", (event_loop,))?;
    if let Ok(w) = existing.cast::<Waker>() {
        return Ok(Arc::clone(&w.get().shared));
    }
    let waker = Bound::new(py, Waker::new()?)?;
    event_loop.call_method1(
        "add_reader",
        (waker.get().shared.read_fd, waker.getattr("drain")?),
    )?;
    wakers.set_item(event_loop, &waker)?;
    Ok(Arc::clone(&waker.get().shared))
}

/// Aborts the task when its Python future is cancelled (a done-callback).
#[pyclass(frozen, module = "piecestore")]
pub struct AbortOnCancel(tokio::task::AbortHandle);

#[pymethods]
impl AbortOnCancel {
    fn __call__(&self, future: &Bound<'_, PyAny>) -> PyResult<()> {
        if future.call_method0("cancelled")?.is_truthy()? {
            self.0.abort();
        }
        Ok(())
    }
}

/// An asyncio future for `fut`, resolved on the running loop; `convert` runs on the loop's
/// thread (with the GIL) to turn the task's result into a Python value or exception.
fn spawn<'py, F, T, C>(py: Python<'py>, fut: F, convert: C) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
    C: FnOnce(Python<'_>, T) -> PyResult<Py<PyAny>> + Send + 'static,
{
    let event_loop = py.import("asyncio")?.call_method0("get_running_loop")?;
    let shared = waker_for(py, &event_loop)?;
    let future = event_loop.call_method0("create_future")?;
    let target = future.clone().unbind();
    let task = piecestore::runtime::spawn(async move {
        let value = fut.await;
        shared.complete(target, Box::new(move |py| convert(py, value)));
    });
    future.call_method1(
        "add_done_callback",
        (Bound::new(py, AbortOnCancel(task.abort_handle()))?,),
    )?;
    Ok(future)
}

/// An asyncio awaitable for a core future; core errors become PieceStore exceptions.
pub fn awaitable<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = piecestore::Result<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    spawn(py, fut, |py, r| match r {
        Ok(v) => to_object(py, v),
        Err(e) => Err(crate::errors::to_py_with(py, e)),
    })
}

/// As [`awaitable`], for futures whose errors are already Python exceptions (built lazily,
/// without the GIL, e.g. `PyStopAsyncIteration::new_err`).
pub fn awaitable_py<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = Result<T, PyErrLazy>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    spawn(py, fut, |py, r| match r {
        Ok(v) => to_object(py, v),
        Err(e) => Err(e.into_py_err()),
    })
}

/// An error decided on a runtime thread and turned into a Python exception on the loop.
pub enum PyErrLazy {
    /// A core error.
    Core(piecestore::Error),
    /// End of an async iteration.
    StopAsyncIteration,
}

impl PyErrLazy {
    fn into_py_err(self) -> PyErr {
        match self {
            PyErrLazy::Core(e) => crate::errors::to_py(e),
            PyErrLazy::StopAsyncIteration => pyo3::exceptions::PyStopAsyncIteration::new_err(()),
        }
    }
}

fn to_object<T: for<'a> IntoPyObject<'a>>(py: Python<'_>, v: T) -> PyResult<Py<PyAny>> {
    v.into_py_any(py)
}
