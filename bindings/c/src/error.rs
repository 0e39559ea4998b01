//! Status codes and error values of the C ABI.

use std::any::Any;
use std::ffi::{CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;

use piecestore::ErrorKind;

/// The result of a call: `PS_OK`, or why it failed. The codes after `PS_OK` are the core's
/// error kinds, then the ABI's own.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PsStatus {
    /// Success.
    PsOk = 0,
    /// No piece under that key.
    PsNotFound = 1,
    /// A different piece already exists under that key.
    PsAlreadyExists = 2,
    /// The key breaks the key rules (empty, too long, `..` segments, not UTF-8, ...).
    PsInvalidKey = 3,
    /// The range lies (partly) outside the piece.
    PsInvalidRange = 4,
    /// The store spec or an option is invalid.
    PsInvalidConfig = 5,
    /// The stored bytes do not match their checksum.
    PsCorrupt = 6,
    /// The backend refused the credentials.
    PsUnauthorized = 7,
    /// The backend failed; `ps_error_retryable` says whether a retry may succeed.
    PsBackend = 8,
    /// The store was closed.
    PsClosed = 9,
    /// The call was cancelled through its `PsCancel`.
    PsCancelled = 10,
    /// An argument was invalid (a NULL pointer where one is required, a string that is not
    /// UTF-8).
    PsInvalidArgument = 11,
    /// The library panicked (a bug): the message says where.
    PsPanic = 12,
    /// A core error of a kind this ABI version does not know.
    PsOther = 13,
    /// The bucket the store names does not exist (and `CreateBucket` is off).
    PsBucketNotFound = 14,
}

impl PsStatus {
    fn of(kind: ErrorKind) -> PsStatus {
        match kind {
            ErrorKind::NotFound => PsStatus::PsNotFound,
            ErrorKind::AlreadyExists => PsStatus::PsAlreadyExists,
            ErrorKind::InvalidKey => PsStatus::PsInvalidKey,
            ErrorKind::InvalidRange => PsStatus::PsInvalidRange,
            ErrorKind::InvalidConfig => PsStatus::PsInvalidConfig,
            ErrorKind::Corrupt => PsStatus::PsCorrupt,
            ErrorKind::Unauthorized => PsStatus::PsUnauthorized,
            ErrorKind::Backend => PsStatus::PsBackend,
            ErrorKind::Closed => PsStatus::PsClosed,
            ErrorKind::BucketNotFound => PsStatus::PsBucketNotFound,
            _ => PsStatus::PsOther,
        }
    }
}

/// A failed call's details. Read it with the `ps_error_*` accessors; free it with
/// [`ps_error_free`]. Its strings live as long as it does.
pub struct PsError {
    status: PsStatus,
    message: CString,
    key: Option<CString>,
    backend: Option<CString>,
    retryable: bool,
}

/// Why a call failed, before it becomes a [`PsError`].
pub(crate) enum Failure {
    Core(piecestore::Error),
    Cancelled,
    Argument(String),
}

impl From<piecestore::Error> for Failure {
    fn from(e: piecestore::Error) -> Self {
        Failure::Core(e)
    }
}

/// A C string of `s`, with any NUL (never expected in a message) replaced.
fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', "\u{FFFD}")).unwrap_or_default()
}

impl PsError {
    fn new(status: PsStatus, message: &str) -> Self {
        PsError {
            status,
            message: c_string(message),
            key: None,
            backend: None,
            retryable: false,
        }
    }

    fn from_failure(f: Failure) -> Self {
        match f {
            Failure::Core(e) => PsError {
                status: PsStatus::of(e.kind()),
                // The core's messages name the key and the backend, never a secret.
                message: c_string(&e.to_string()),
                key: e.key().map(c_string),
                backend: e.backend().map(c_string),
                retryable: e.is_retryable(),
            },
            Failure::Cancelled => PsError::new(PsStatus::PsCancelled, "the call was cancelled"),
            Failure::Argument(m) => PsError::new(PsStatus::PsInvalidArgument, &m),
        }
    }
}

fn panic_message(p: Box<dyn Any + Send>) -> String {
    let what = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    format!("piecestore panicked (a bug, please report it): {what}")
}

/// Runs one ABI call: `PS_OK`, or the failure stored in `*err` (when `err` is not NULL) and
/// its status returned. A panic becomes `PS_PANIC`.
pub(crate) fn call(err: *mut *mut PsError, f: impl FnOnce() -> Result<(), Failure>) -> PsStatus {
    let e = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => return PsStatus::PsOk,
        Ok(Err(failure)) => PsError::from_failure(failure),
        Err(p) => PsError::new(PsStatus::PsPanic, &panic_message(p)),
    };
    let status = e.status;
    if !err.is_null() {
        // SAFETY: the caller passes a writable `PsError *` slot or NULL (checked).
        unsafe { *err = Box::into_raw(Box::new(e)) };
    }
    status
}

/// The status of `err` (`PS_INVALID_ARGUMENT` for NULL).
///
/// # Safety
/// `err` is NULL or an error from this library, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ps_error_status(err: *const PsError) -> PsStatus {
    // SAFETY: per the contract above.
    unsafe { err.as_ref() }.map_or(PsStatus::PsInvalidArgument, |e| e.status)
}

/// The message of `err`, NUL-terminated; valid until `ps_error_free(err)`. It names the key and
/// the backend when known, never a secret.
///
/// # Safety
/// `err` is NULL (then the result is NULL) or an error from this library, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ps_error_message(err: *const PsError) -> *const c_char {
    // SAFETY: per the contract above.
    unsafe { err.as_ref() }.map_or(ptr::null(), |e| e.message.as_ptr())
}

/// The piece key the error concerns, or NULL; valid until `ps_error_free(err)`.
///
/// # Safety
/// `err` is NULL or an error from this library, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ps_error_key(err: *const PsError) -> *const c_char {
    // SAFETY: per the contract above.
    unsafe { err.as_ref() }
        .and_then(|e| e.key.as_ref())
        .map_or(ptr::null(), |k| k.as_ptr())
}

/// The backend (shard) the error concerns, or NULL; valid until `ps_error_free(err)`.
///
/// # Safety
/// `err` is NULL or an error from this library, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ps_error_backend(err: *const PsError) -> *const c_char {
    // SAFETY: per the contract above.
    unsafe { err.as_ref() }
        .and_then(|e| e.backend.as_ref())
        .map_or(ptr::null(), |b| b.as_ptr())
}

/// Whether the same call may succeed if repeated (a timeout, a throttled or unavailable
/// backend).
///
/// # Safety
/// `err` is NULL (false) or an error from this library, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ps_error_retryable(err: *const PsError) -> bool {
    // SAFETY: per the contract above.
    unsafe { err.as_ref() }.is_some_and(|e| e.retryable)
}

/// Drops a box this library leaked to the caller (`Box::into_raw`); NULL is a no-op.
///
/// # Safety
/// `p` is NULL or came from `Box::into_raw` of a `Box<T>`, not yet freed.
pub(crate) unsafe fn free_box<T>(p: *mut T) {
    if !p.is_null() {
        // SAFETY: per the contract above.
        drop(unsafe { Box::from_raw(p) });
    }
}

/// Frees `err`. NULL is a no-op.
///
/// # Safety
/// `err` is NULL or an error from this library, not yet freed; it is not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ps_error_free(err: *mut PsError) {
    // SAFETY: per the contract above.
    unsafe { free_box(err) }
}
