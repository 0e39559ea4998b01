//! Promises over core futures, without a thread hop when the answer is already there.

use std::future::Future;
use std::task::Poll;

use napi::bindgen_prelude::*;

use crate::errors::{js_error, to_napi};

/// A promise for `fut`'s outcome, settled with `T` converted on the JavaScript thread, or
/// rejected with the core error as a JavaScript error (see [`crate::errors`]).
///
/// When `inline` is true the future is first polled once right here, inside the runtime's
/// context: an operation that completes without waiting (a memory store, a key that fails
/// validation, a closed store) gives an already-settled promise, with no trip through the
/// runtime's threads. Otherwise (or when that poll is pending) the future runs on the core's
/// runtime and the promise settles on a later turn of the event loop. Callers pass
/// `inline = false` for work that could take long on the CPU (checksumming a large put), so the
/// event loop is never held up.
pub fn promise<'env, T, F>(env: &'env Env, fut: F, inline: bool) -> Result<PromiseRaw<'env, T>>
where
    T: ToNapiValue + Send + 'static,
    F: Future<Output = piecestore::Result<T>> + Send + 'static,
{
    let mut fut = Box::pin(fut);
    if inline {
        // Tried at once on the event loop, which the store must not block (a packed put's
        // disk write is handed to the runtime).
        let polled = piecestore::runtime::poll_without_blocking(fut.as_mut());
        // A pending future re-registers its wakers when the runtime first polls the task.
        match polled {
            Poll::Ready(Ok(v)) => return PromiseRaw::resolve(env, v),
            Poll::Ready(Err(e)) => return PromiseRaw::reject(env, js_error(env, &e)?),
            Poll::Pending => {}
        }
    }
    env.spawn_future_with_callback(async move { Ok(fut.await) }, |env, out| {
        out.map_err(|e| to_napi(env, &e))
    })
}
