//! A store's `get` and `put` as own properties of each `PieceStore` object, called straight
//! through Node-API.
//!
//! A `#[napi]` method finds its Rust object on every call: `napi_unwrap` and a type-tag check
//! (two private-symbol lookups on the object) and napi-rs's borrow bookkeeping (a global
//! mutex-guarded map, for methods that may take `&mut self`). For a 4 KiB get from a memory
//! store that was about a tenth of the call. The functions installed here carry the core
//! store's handle as their Node-API `data` instead: no lookup, no bookkeeping, and no way to
//! be called on the wrong object (they ignore `this`, as bound functions do). The prototype
//! keeps its methods (for `PieceStore.prototype.get.call(store, key)`, and for objects whose
//! `get` or `put` is no longer the module's: a subclass's override, a stub on the prototype);
//! both run the same code ([`crate::store::get_piece`], [`crate::store::put_piece`]). A method
//! patched on the prototype after a store was made is not seen by that store.

use std::cell::RefCell;
use std::ffi::{CStr, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;

use napi::bindgen_prelude::*;
use napi::{check_status, sys};

/// The two methods made own functions, by name.
const NAMES: [&CStr; 2] = [c"get", c"put"];

thread_local! {
    /// The prototype's `get` and `put` as the module made them, for each environment on this
    /// thread (one, in practice: Node runs each worker on a thread of its own); from
    /// [`remember_methods`], until the environment's cleanup.
    static ORIGINALS: RefCell<Vec<(sys::napi_env, [sys::napi_ref; 2])>> =
        const { RefCell::new(Vec::new()) };
}

/// Keeps `PieceStore.prototype.get` and `.put` from the module's `exports`, for [`install`].
pub fn remember_methods(env: &Env, exports: &Object<'_>) -> Result<()> {
    let class: Unknown<'_> = exports.get_named_property("PieceStore")?;
    let prototype: Object<'_> = class.coerce_to_object()?.get_named_property("prototype")?;
    let raw = env.raw();
    let mut refs = [ptr::null_mut(); 2];
    for (name, r) in NAMES.iter().zip(refs.iter_mut()) {
        let method: Unknown<'_> = prototype.get_named_property(&name.to_string_lossy())?;
        let made = check_status!(unsafe { sys::napi_create_reference(raw, method.raw(), 1, r) });
        if let Err(e) = made {
            delete(raw, &refs);
            return Err(e);
        }
    }
    let hooked = check_status!(unsafe {
        sys::napi_add_env_cleanup_hook(raw, Some(forget_methods), raw.cast())
    });
    if let Err(e) = hooked {
        delete(raw, &refs);
        return Err(e);
    }
    ORIGINALS.with(|o| o.borrow_mut().push((raw, refs)));
    Ok(())
}

/// The environment's cleanup hook: drops its references of [`ORIGINALS`].
unsafe extern "C" fn forget_methods(env: *mut c_void) {
    let env = env.cast::<sys::napi_env__>();
    let _ = ORIGINALS.try_with(|o| {
        o.borrow_mut().retain(|(e, refs)| {
            if *e == env {
                delete(env, refs);
            }
            *e != env
        })
    });
}

/// Deletes the references made (null ones were not).
fn delete(env: sys::napi_env, refs: &[sys::napi_ref]) {
    for r in refs.iter().filter(|r| !r.is_null()) {
        unsafe { sys::napi_delete_reference(env, *r) };
    }
}

/// Whether `obj`'s `get` and `put` are still the prototype's own, as the module made them: a
/// subclass (`class Counted extends PieceStore`) may override them, a test may have stubbed
/// them on the prototype (`sinon.stub(PieceStore.prototype, 'get')`), and own functions would
/// shadow either.
fn unpatched(env: &Env, obj: sys::napi_value) -> Result<bool> {
    let raw = env.raw();
    let Some(refs) =
        ORIGINALS.with(|o| o.borrow().iter().find(|(e, _)| *e == raw).map(|(_, r)| *r))
    else {
        return Ok(false);
    };
    for (name, r) in NAMES.iter().zip(refs) {
        let mut original = ptr::null_mut();
        check_status!(unsafe { sys::napi_get_reference_value(raw, r, &mut original) })?;
        let mut found = ptr::null_mut();
        check_status!(unsafe {
            sys::napi_get_named_property(raw, obj, name.as_ptr(), &mut found)
        })?;
        let mut same = false;
        check_status!(unsafe { sys::napi_strict_equals(raw, original, found, &mut same) })?;
        if !same {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Gives `obj`, a new `PieceStore` object of `store`, its own `get` and `put` (writable,
/// configurable and not enumerable, as a class's methods are on its prototype), unless they
/// are no longer the module's own (see [`unpatched`]).
pub fn install(env: &Env, obj: sys::napi_value, store: &piecestore::PieceStore) -> Result<()> {
    if !unpatched(env, obj)? {
        return Ok(());
    }
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
    let properties = [property(NAMES[0], get), property(NAMES[1], put)];
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
