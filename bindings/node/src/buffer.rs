//! Bytes across the boundary: JavaScript `Buffer`/`Uint8Array`/`string` in, `Buffer` out.

use std::ptr;

use bytes::Bytes;
use napi::bindgen_prelude::*;

/// At or below this size a piece is copied rather than shared: for small buffers a copy is
/// cheaper than keeping a reference to the other side's memory (and releasing it later).
const SHARE_MIN: usize = 64 * 1024;

/// The data of a put: a `Buffer` or any `Uint8Array`, or a string (stored as UTF-8).
pub type Data = Either<Uint8Array, String>;

/// The bytes of `data` for the core.
///
/// A large `Uint8Array` is shared, not copied: the core holds a reference to it until the put
/// completes (the JavaScript object stays alive that long, and napi releases the reference on
/// the JavaScript thread). `must_copy` forces a copy, for a store that keeps the bytes after the
/// put returns (a memory store): the caller may reuse its buffer once the promise settles.
pub fn bytes_of(data: Data, must_copy: bool) -> Bytes {
    match data {
        Either::A(a) if must_copy || a.len() <= SHARE_MIN => Bytes::copy_from_slice(&a),
        Either::A(a) => Bytes::from_owner(a),
        Either::B(s) => Bytes::from(s),
    }
}

/// A piece's bytes, converted to a `Buffer` on the JavaScript thread.
///
/// A large piece the core owns alone (read from a file or over the network) becomes an
/// external `Buffer` over the same memory, without a copy. Small pieces, and pieces whose bytes
/// are shared with the store (a memory store), are copied: JavaScript may write into a
/// `Buffer`, and that must never change a stored piece.
pub struct PieceBuf(pub Bytes);

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
