//! Core errors as JavaScript `Error` objects with a stable `code`.

use napi::bindgen_prelude::*;

/// Builds the JavaScript error for `e`: an `Error` whose message names the key and the backend
/// (never a secret: the core redacts them), with `code` (the core's stable kind name:
/// `PIECE_NOT_FOUND`, `PIECE_EXISTS`, `INVALID_KEY`, `INVALID_RANGE`, `CONFIG`, `CORRUPT_PIECE`,
/// `UNAUTHORIZED`, `BACKEND`, `CLOSED`, `BUCKET_NOT_FOUND`), `key`, `backend` and `retryable`.
pub fn js_error<'env>(env: &'env Env, e: &piecestore::Error) -> Result<Object<'env>> {
    coded_error(
        env,
        e.kind().as_str(),
        e.to_string(),
        e.key(),
        e.backend(),
        e.is_retryable(),
    )
}

/// An `Error` with `code`, `message` and the other properties of [`js_error`] (also for
/// arguments the core never sees, such as a negative range bound).
pub fn coded_error<'env>(
    env: &'env Env,
    code: &str,
    message: String,
    key: Option<&str>,
    backend: Option<&str>,
    retryable: bool,
) -> Result<Object<'env>> {
    let mut obj = JsError::from(napi::Error::new(code, message))
        .into_unknown(*env)
        .coerce_to_object()?;
    if let Some(key) = key {
        obj.set("key", key)?;
    }
    if let Some(backend) = backend {
        obj.set("backend", backend)?;
    }
    obj.set("retryable", retryable)?;
    Ok(obj)
}

/// `e` as a napi error that throws (or rejects with) exactly the object [`js_error`] builds.
pub fn to_napi(env: &Env, e: &piecestore::Error) -> napi::Error {
    match js_error(env, e) {
        Ok(obj) => napi::Error::from(obj.to_unknown()),
        Err(fail) => fail,
    }
}
