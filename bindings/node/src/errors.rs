//! Core errors as JavaScript `Error` objects with a stable `code`.

use napi::bindgen_prelude::*;

/// Builds the JavaScript error for `e`: an `Error` whose message names the key and the backend
/// (never a secret: the core redacts them), with `code` (the core's stable kind name:
/// `PIECE_NOT_FOUND`, `PIECE_EXISTS`, `INVALID_KEY`, `INVALID_RANGE`, `CONFIG`, `CORRUPT_PIECE`,
/// `UNAUTHORIZED`, `BACKEND`, `CLOSED`), `key`, `backend` and `retryable`.
pub fn js_error<'env>(env: &'env Env, e: &piecestore::Error) -> Result<Object<'env>> {
    let err = napi::Error::new(e.kind().as_str(), e.to_string());
    let mut obj = JsError::from(err).into_unknown(*env).coerce_to_object()?;
    if let Some(key) = e.key() {
        obj.set("key", key)?;
    }
    if let Some(backend) = e.backend() {
        obj.set("backend", backend)?;
    }
    obj.set("retryable", e.is_retryable())?;
    Ok(obj)
}

/// `e` as a napi error that throws (or rejects with) exactly the object [`js_error`] builds.
pub fn to_napi(env: &Env, e: &piecestore::Error) -> napi::Error {
    match js_error(env, e) {
        Ok(obj) => napi::Error::from(obj.to_unknown()),
        Err(fail) => fail,
    }
}
