//! asyncio awaitables driven by the core's runtime.
//!
//! `pyo3-async-runtimes` bridges Rust futures and asyncio futures (result delivery through
//! `call_soon_threadsafe`, cancellation of the Python future dropping the Rust future). Its
//! own tokio runtime is a process-wide static that a forked child cannot use, so the bridge is
//! driven by [`CoreRuntime`], which spawns on [`piecestore::runtime`] (fork-safe) instead.

use std::future::Future;
use std::pin::Pin;

use pyo3::prelude::*;
use pyo3_async_runtimes::TaskLocals;
use pyo3_async_runtimes::generic::{ContextExt, JoinError, Runtime};

/// The core's shared runtime, as `pyo3-async-runtimes` sees a runtime.
pub struct CoreRuntime;

/// A task failure (panic or cancellation) reported by the core runtime.
pub struct TaskError(tokio::task::JoinError);

impl JoinError for TaskError {
    fn is_panic(&self) -> bool {
        self.0.is_panic()
    }
    fn into_panic(self) -> Box<dyn std::any::Any + Send + 'static> {
        self.0.into_panic()
    }
}

/// Completes when the spawned task does.
pub struct Join(tokio::task::JoinHandle<()>);

impl Future for Join {
    type Output = Result<(), TaskError>;
    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map_err(TaskError)
    }
}

tokio::task_local! {
    static LOCALS: TaskLocals;
}

impl Runtime for CoreRuntime {
    type JoinError = TaskError;
    type JoinHandle = Join;

    fn spawn<F>(fut: F) -> Join
    where
        F: Future<Output = ()> + Send + 'static,
    {
        Join(piecestore::runtime::spawn(fut))
    }

    fn spawn_blocking<F>(f: F) -> Join
    where
        F: FnOnce() + Send + 'static,
    {
        Join(piecestore::runtime::handle().spawn_blocking(f))
    }
}

impl ContextExt for CoreRuntime {
    fn scope<F, R>(locals: TaskLocals, fut: F) -> Pin<Box<dyn Future<Output = R> + Send>>
    where
        F: Future<Output = R> + Send + 'static,
    {
        Box::pin(LOCALS.scope(locals, fut))
    }

    fn get_task_locals() -> Option<TaskLocals> {
        LOCALS.try_with(|l| l.clone()).ok()
    }
}

/// An asyncio awaitable for a core future; core errors become PieceStore exceptions.
pub fn awaitable<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = piecestore::Result<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    pyo3_async_runtimes::generic::future_into_py::<CoreRuntime, _, T>(py, async move {
        fut.await.map_err(crate::errors::to_py)
    })
}

/// As [`awaitable`], for futures that already produce Python results.
pub fn awaitable_py<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    pyo3_async_runtimes::generic::future_into_py::<CoreRuntime, _, T>(py, fut)
}
