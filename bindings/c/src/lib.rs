//! The C ABI of PieceStore: what the Go module (`bindings/go`) and C programs call.
//!
//! Thin by design: every function converts its arguments, runs one core operation on the
//! core's shared runtime ([`piecestore::runtime::block_on`]) and converts the result. The rules
//! of the ABI, which the generated header `include/piecestore.h` repeats:
//!
//! - **Status codes.** Every fallible call returns a [`PsStatus`] (`PS_OK` = 0). On failure it
//!   stores a [`PsError`] in `*err` when `err` is not NULL (and `*err` is left alone on
//!   success); its accessors give the message, the key, the backend and whether a retry may
//!   succeed. Errors are values, not thread-local state, so a caller may switch threads
//!   between calls (Go goroutines do).
//! - **Opaque handles, explicit frees.** [`PsStore`], [`PsList`], [`PsCancel`] and [`PsError`]
//!   are created by this library and freed by their `ps_*_free`. Passing NULL to a free is a
//!   no-op.
//! - **Borrowed read buffers.** A read fills a [`PsBytes`] whose `data` points into the
//!   library's own buffer (no copy); it stays valid until [`ps_bytes_free`].
//! - **Strings.** Keys and prefixes are pointer + length (UTF-8, no NUL needed); the store spec
//!   and options are NUL-terminated.
//! - **Cancellation.** Operations take an optional [`PsCancel`]; [`ps_cancel`] from another
//!   thread makes the running call return `PS_CANCELLED` promptly. Whether a cancelled put was
//!   stored is unknown (as for any interrupted write); repeating it is safe.
//! - **Threads.** A [`PsStore`] may be used from many threads at once; it must not be freed
//!   while a call on it runs. A [`PsList`] must be used by one thread at a time.
//! - **Panics** never cross the boundary: they become `PS_PANIC`.

mod error;
mod store;

pub use error::{
    PsError, PsStatus, ps_error_backend, ps_error_free, ps_error_key, ps_error_message,
    ps_error_retryable, ps_error_status,
};
pub use store::{
    PsBytes, PsCancel, PsList, PsPieceInfo, PsProgress, PsStore, ps_bytes_free, ps_cancel,
    ps_cancel_free, ps_cancel_new, ps_close, ps_delete, ps_delete_prefix, ps_exists, ps_flush,
    ps_get, ps_get_range, ps_head, ps_list_free, ps_list_next, ps_list_open, ps_open, ps_put,
    ps_store_free, ps_version,
};
