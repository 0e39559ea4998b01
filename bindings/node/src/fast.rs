//! A store's `get` and `put` as own properties of each `PieceStore` object, called straight
//! through Node-API.
//!
//! A `#[napi]` method finds its Rust object on every call: `napi_unwrap` and a type-tag check
//! (two private-symbol lookups on the object) and napi-rs's borrow bookkeeping (a global
//! mutex-guarded map, for methods that may take `&mut self`). For a 4 KiB get from a memory
//! store that was about a tenth of the call. The functions installed here carry the core
//! store's handle as their Node-API `data` instead: no lookup, no bookkeeping, and no way to
//! be called on the wrong object (they ignore `this`, as bound functions do). The prototype
//! keeps its methods (for `PieceStore.prototype.get.call(store, key)`, and for the objects of
//! a subclass, whose own methods must not be shadowed); both run the same code
//! ([`crate::store::get_piece`], [`crate::store::put_piece`]).

use std::cell::RefCell;
use std::ffi::{CStr, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;

use napi::bindgen_prelude::*;
use napi::{check_status, sys};

thread_local! {
    /// `PieceStore.prototype` of each environment on this thread (one, in practice: Node runs
    /// each worker on a thread of its own), from [`remember_prototype`].
    static PROTOTYPES: RefCell<Vec<(sys::napi_env, sys::napi_ref)>> = const { RefCell::new(Vec::new()) };
}

/// Keeps `PieceStore.prototype` from the module's `exports` for [`is_plain`] (until `env` is
/// torn down).
pub fn remember_prototype(env: &Env, exports: &Object<'_>) -> Result<()> {
    let class: Unknown<'_> = exports.get_named_property("PieceStore")?;
    let prototype: Object<'_> = class.coerce_to_object()?.get_named_property("prototype")?;
    let raw = env.raw();
    let mut r = ptr::null_mut();
    check_status!(unsafe { sys::napi_create_reference(raw, prototype.raw(), 1, &mut r) })?;
    PROTOTYPES.with(|p| p.borrow_mut().push((raw, r)));
    check_status!(unsafe {
        sys::napi_add_env_cleanup_hook(raw, Some(forget_prototype), raw.cast())
    })
}

/// The environment's cleanup hook: drops its entry of [`PROTOTYPES`] (Node frees the reference).
unsafe extern "C" fn forget_prototype(env: *mut c_void) {
    let env = env.cast::<sys::napi_env__>();
    let _ = PROTOTYPES.try_with(|p| p.borrow_mut().retain(|(e, _)| *e != env));
}

/// Whether `obj`, made by `PieceStore`'s constructor, is a plain `PieceStore`: one of a
/// subclass (`class Logged extends PieceStore`) may override `get` or `put`, and own functions
/// would shadow its methods.
pub fn is_plain(env: &Env, obj: sys::napi_value) -> Result<bool> {
    let raw = env.raw();
    let Some(r) = PROTOTYPES.with(|p| p.borrow().iter().find(|(e, _)| *e == raw).map(|(_, r)| *r))
    else {
        return Ok(false);
    };
    let mut prototype = ptr::null_mut();
    check_status!(unsafe { sys::napi_get_reference_value(raw, r, &mut prototype) })?;
    let mut actual = ptr::null_mut();
    check_status!(unsafe { sys::napi_get_prototype(raw, obj, &mut actual) })?;
    let mut same = false;
    check_status!(unsafe { sys::napi_strict_equals(raw, prototype, actual, &mut same) })?;
    Ok(same)
}

/// Gives `obj`, a new `PieceStore` object of `store`, its own `get` and `put` (writable,
/// configurable and not enumerable, as a class's methods are on its prototype).
pub fn install(env: &Env, obj: sys::napi_value, store: &piecestore::PieceStore) -> Result<()> {
    let get = function(env, c"get", get, store)?;
    let put = function(env, c"put", put, store)?;
    let property = |name: &CStr, value| sys::napi_property_descriptor {
        utf8name: name.as_ptr(),
        name: ptr::null_mut(),
        method: None,
        getter: None,
        setter: None,
        value,
        attributes: sys::PropertyAttributes::writable | sys::PropertyAttributes::configurable,
        data: ptr::null_mut(),
    };
    let properties = [property(c"get", get), property(c"put", put)];
    check_status!(unsafe {
        sys::napi_define_properties(env.raw(), obj, properties.len(), properties.as_ptr())
    })
}

/// A JavaScript function `name` that runs `cb` with a handle of `store` as its `data`.
fn function(
    env: &Env,
    name: &CStr,
    cb: unsafe extern "C" fn(sys::napi_env, sys::napi_callback_info) -> sys::napi_value,
    store: &piecestore::PieceStore,
) -> Result<sys::napi_value> {
    let raw = env.raw();
    let data = Box::into_raw(Box::new(store.clone())).cast::<c_void>();
    let mut f = ptr::null_mut();
    let made = check_status!(unsafe {
        sys::napi_create_function(
            raw,
            name.as_ptr(),
            name.count_bytes() as isize,
            Some(cb),
            data,
            &mut f,
        )
    })
    .and_then(|()| {
        // From here the function owns the handle: it is dropped when the function is
        // collected (or its environment torn down).
        check_status!(unsafe {
            sys::napi_add_finalizer(
                raw,
                f,
                data,
                Some(release),
                ptr::null_mut(),
                ptr::null_mut(),
            )
        })
    });
    match made {
        Ok(()) => Ok(f),
        Err(e) => {
            drop(unsafe { Box::from_raw(data.cast::<piecestore::PieceStore>()) });
            Err(e)
        }
    }
}

/// The installed `get(key)`.
unsafe extern "C" fn get(env: sys::napi_env, info: sys::napi_callback_info) -> sys::napi_value {
    unsafe {
        call(env, info, |e, store, [key]| {
            crate::store::get_piece(e, store, key).map(|p| p.raw())
        })
    }
}

/// The installed `put(key, data, options)`.
unsafe extern "C" fn put(env: sys::napi_env, info: sys::napi_callback_info) -> sys::napi_value {
    unsafe {
        call(env, info, |e, store, [key, data, options]| {
            crate::store::put_piece(e, store, key, data, Some(options)).map(|p| p.raw())
        })
    }
}

/// Runs `body` with the call's first `N` arguments (`undefined` for those not given) and the
/// store the function was made for; throws its error (or a panic, as an error) into
/// JavaScript.
///
/// # Safety
/// A Node-API callback's `env` and `info`, of a function [`function`] made.
unsafe fn call<const N: usize>(
    env: sys::napi_env,
    info: sys::napi_callback_info,
    body: impl FnOnce(&Env, &piecestore::PieceStore, [Unknown<'_>; N]) -> Result<sys::napi_value>,
) -> sys::napi_value {
    let called = catch_unwind(AssertUnwindSafe(|| {
        let mut argc = N;
        let mut argv = [ptr::null_mut(); N];
        let mut data = ptr::null_mut();
        check_status!(unsafe {
            sys::napi_get_cb_info(
                env,
                info,
                &mut argc,
                argv.as_mut_ptr(),
                ptr::null_mut(),
                &mut data,
            )
        })?;
        // SAFETY: `data` is the handle `function` gave this function; its finalizer frees it
        // only once the function is collected, so never during a call. Node-API fills the
        // arguments not given with `undefined`.
        let store = unsafe { &*data.cast::<piecestore::PieceStore>() };
        let args = argv.map(|v| unsafe { Unknown::from_raw_unchecked(env, v) });
        body(&Env::from_raw(env), store, args)
    }));
    match called.map_err(panic_to_error).and_then(|r| r) {
        Ok(v) => v,
        Err(err) => {
            unsafe { JsError::from(err).throw_into(env) };
            ptr::null_mut()
        }
    }
}

/// Drops the store handle of a collected `get`.
unsafe extern "C" fn release(_env: sys::napi_env, data: *mut c_void, _hint: *mut c_void) {
    drop(unsafe { Box::from_raw(data.cast::<piecestore::PieceStore>()) });
}
