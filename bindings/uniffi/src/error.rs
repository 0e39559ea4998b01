//! `piecestore::Error` → `PieceStoreError`, one variant per error kind.

/// Declares [`PieceStoreError`] (every variant with the same fields) and its conversion from
/// the core's error by kind, so that a variant and its mapping cannot drift apart.
macro_rules! errors {
    ($( $(#[doc = $doc:expr])* $variant:ident => $kind:pat, )*) => {
        /// The error of every PieceStore operation: one variant per kind of the core's error
        /// (Kotlin: subclasses of `PieceStoreException`; Swift: cases of `PieceStoreError`).
        ///
        /// Every variant carries the same fields. The message names the key and the backend,
        /// never a secret.
        #[derive(Debug, thiserror::Error, uniffi::Error)]
        pub enum PieceStoreError {
            $(
                $(#[doc = $doc])*
                #[error("{detail}")]
                $variant {
                    /// The core's message (also the Rust `Display` of the error).
                    detail: String,
                    /// The piece key the error is about, if any.
                    key: Option<String>,
                    /// The backend (its endpoint, without credentials) the error comes from,
                    /// if any.
                    backend: Option<String>,
                    /// Whether the same call may succeed if tried again later (only backend
                    /// failures such as timeouts, 5xx and throttling).
                    retryable: bool,
                },
            )*
        }

        impl From<piecestore::Error> for PieceStoreError {
            fn from(e: piecestore::Error) -> Self {
                let detail = e.to_string();
                let key = e.key().map(str::to_owned);
                let backend = e.backend().map(str::to_owned);
                let retryable = e.is_retryable();
                match e.kind() {
                    $( $kind => PieceStoreError::$variant { detail, key, backend, retryable }, )*
                }
            }
        }
    };
}

use piecestore::ErrorKind as K;

errors! {
    /// No piece under that key.
    NotFound => K::NotFound,
    /// A piece with different bytes already exists under that key (putting the same bytes
    /// again succeeds; pass `overwrite = true` to replace it).
    AlreadyExists => K::AlreadyExists,
    /// The key breaks the key rules: empty, over 1024 bytes, a leading or trailing `/`, an
    /// empty, `.` or `..` segment, a control character, or under `.piecestore/`.
    InvalidKey => K::InvalidKey,
    /// The range lies (partly) outside the piece.
    InvalidRange => K::InvalidRange,
    /// The configuration is invalid (a bad URL or option).
    InvalidConfig => K::InvalidConfig,
    /// The bucket the store names does not exist, and `create_bucket` is off (the default
    /// outside the original's config layout).
    BucketNotFound => K::BucketNotFound,
    /// The stored bytes do not match their checksum; the bytes are never returned.
    Corrupt => K::Corrupt,
    /// The backend refused the credentials (or has none to accept).
    Unauthorized => K::Unauthorized,
    /// Any other backend failure; see `retryable`.
    Backend => K::Backend,
    /// The store was closed.
    Closed => K::Closed,
    /// An error of a kind this binding does not know yet, or an internal failure of the
    /// binding (a task of the shared runtime that panicked).
    Other => _,
}

impl PieceStoreError {
    /// A task of the shared runtime that did not complete (it panicked).
    pub(crate) fn task(e: impl std::fmt::Display) -> Self {
        PieceStoreError::Other {
            detail: format!("piecestore task failed: {e}"),
            key: None,
            backend: None,
            retryable: false,
        }
    }
}
