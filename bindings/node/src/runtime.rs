//! The core's tokio runtime as napi-rs's async backend.
//!
//! napi-rs would otherwise start a tokio runtime of its own. Registering the core's runtime
//! (`piecestore::runtime`) instead keeps one runtime per process, shared with every other
//! binding and sized once with `configureRuntime` or `PIECESTORE_RUNTIME_THREADS`.

use std::future::Future;
use std::pin::Pin;

use napi::bindgen_prelude::{
    AsyncRuntime, AsyncRuntimeRejection, AsyncRuntimeTask, register_async_runtime,
    retain_current_module_for_unload_safety,
};

/// napi-rs's backend: every task napi spawns (async iterators) runs on the core's runtime.
struct CoreRuntime;

// SAFETY: the runtime's threads live for the whole process and run this image's code, so the
// image must never be unloaded: `install` pins it before the runtime can start. `shutdown`
// therefore has nothing to quiesce, and tasks still running when an environment (a worker)
// goes away settle their promises through napi's threadsafe functions, which napi closes safely.
unsafe impl AsyncRuntime for CoreRuntime {
    fn spawn(&self, task: AsyncRuntimeTask) -> Result<(), AsyncRuntimeRejection<AsyncRuntimeTask>> {
        drop(piecestore::runtime::spawn(task));
        Ok(())
    }

    fn block_on(&self, future: Pin<&mut dyn Future<Output = ()>>) -> napi::Result<()> {
        piecestore::runtime::block_on(future);
        Ok(())
    }

    fn shutdown(&self) -> napi::Result<()> {
        // The runtime is process-wide (other environments, e.g. worker threads, may still use
        // it, and a later one may start): it is never shut down with an environment.
        Ok(())
    }
}

/// Pins the addon image and registers the core's runtime with napi-rs (once per process,
/// before any environment uses it).
pub fn install() {
    retain_current_module_for_unload_safety();
    register_async_runtime(CoreRuntime);
}
