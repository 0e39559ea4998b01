//! The one error type of PieceStore, with kinds a caller can match on.
//!
//! Messages name the key and the backend (its redacted endpoint), never a secret: every
//! message that comes from a backend is passed through the store's [`Redactor`] first.

use std::fmt;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, as a caller matches it. Bindings map these to their native idioms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No piece under that key.
    NotFound,
    /// A different piece already exists under that key.
    AlreadyExists,
    /// The key breaks the key rules (see [`crate::key::validate`]).
    InvalidKey,
    /// The range lies (partly) outside the piece.
    InvalidRange,
    /// The configuration is invalid.
    InvalidConfig,
    /// The stored bytes do not match their checksum.
    Corrupt,
    /// The backend refused our credentials.
    Unauthorized,
    /// The backend failed; see [`Error::is_retryable`].
    Backend,
    /// The store was closed.
    Closed,
    /// The bucket the store names does not exist (and `CreateBucket` is off).
    BucketNotFound,
}

impl ErrorKind {
    /// Every kind, in declaration order (what metrics count errors by).
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::NotFound,
        ErrorKind::AlreadyExists,
        ErrorKind::InvalidKey,
        ErrorKind::InvalidRange,
        ErrorKind::InvalidConfig,
        ErrorKind::Corrupt,
        ErrorKind::Unauthorized,
        ErrorKind::Backend,
        ErrorKind::Closed,
        ErrorKind::BucketNotFound,
    ];

    /// The kind's position in [`ErrorKind::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The kind whose [`ErrorKind::as_str`] is `code`.
    pub fn from_code(code: &str) -> Option<ErrorKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == code)
    }

    /// A stable, upper-snake-case name for the kind (used by the CLI and bindings).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "PIECE_NOT_FOUND",
            ErrorKind::AlreadyExists => "PIECE_EXISTS",
            ErrorKind::InvalidKey => "INVALID_KEY",
            ErrorKind::InvalidRange => "INVALID_RANGE",
            ErrorKind::InvalidConfig => "CONFIG",
            ErrorKind::Corrupt => "CORRUPT_PIECE",
            ErrorKind::Unauthorized => "UNAUTHORIZED",
            ErrorKind::Backend => "BACKEND",
            ErrorKind::Closed => "CLOSED",
            ErrorKind::BucketNotFound => "BUCKET_NOT_FOUND",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of every PieceStore operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No piece under `key`.
    #[error("piece {key:?} not found on {backend}")]
    NotFound {
        /// The piece key.
        key: String,
        /// The backend (redacted endpoint) that was asked.
        backend: String,
    },
    /// A piece with different bytes already exists under `key`.
    #[error("piece {key:?} already exists on {backend} with different content")]
    AlreadyExists {
        /// The piece key.
        key: String,
        /// The backend that holds it.
        backend: String,
    },
    /// The key breaks a key rule.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The offending key (truncated to 200 characters).
        key: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The requested range is not inside the piece.
    #[error("invalid range {offset}+{len} for piece {key:?} of {size} bytes")]
    InvalidRange {
        /// The piece key.
        key: String,
        /// Requested start.
        offset: u64,
        /// Requested length.
        len: u64,
        /// The piece's size.
        size: u64,
    },
    /// The configuration is invalid.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// The stored bytes do not match their checksum; the bytes are never returned.
    #[error("piece {key:?} on {backend} is corrupt: {detail}")]
    Corrupt {
        /// The piece key.
        key: String,
        /// The backend that holds it.
        backend: String,
        /// What did not match.
        detail: String,
    },
    /// The backend rejected the credentials (or has none to accept).
    #[error("unauthorized on {backend}: {message}")]
    Unauthorized {
        /// The backend.
        backend: String,
        /// What the backend said (secrets redacted).
        message: String,
    },
    /// Any other backend failure.
    #[error("{op} failed on {backend}{}: {message}", key.as_deref().map(|k| format!(" for {k:?}")).unwrap_or_default())]
    Backend {
        /// The operation (`put`, `get`, ...).
        op: &'static str,
        /// The piece key, if the operation had one.
        key: Option<String>,
        /// The backend.
        backend: String,
        /// What failed (secrets redacted).
        message: String,
        /// Whether trying again later may succeed (timeouts, 5xx, throttling).
        retryable: bool,
    },
    /// The store was closed with [`crate::PieceStore::close`].
    #[error("store is closed")]
    Closed,
    /// The bucket a store (or one of its shards) names does not exist, and `CreateBucket` is
    /// off (the default outside the original's config layout).
    #[error(
        "bucket {bucket:?} does not exist on {backend}: check its name, or set CreateBucket = true \
         (option create_bucket) to create it at open"
    )]
    BucketNotFound {
        /// The bucket's name.
        bucket: String,
        /// The backend (redacted endpoint) that was asked.
        backend: String,
    },
}

impl Error {
    /// The kind of this error, for matching.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            Error::InvalidKey { .. } => ErrorKind::InvalidKey,
            Error::InvalidRange { .. } => ErrorKind::InvalidRange,
            Error::InvalidConfig(_) => ErrorKind::InvalidConfig,
            Error::Corrupt { .. } => ErrorKind::Corrupt,
            Error::Unauthorized { .. } => ErrorKind::Unauthorized,
            Error::Backend { .. } => ErrorKind::Backend,
            Error::Closed => ErrorKind::Closed,
            Error::BucketNotFound { .. } => ErrorKind::BucketNotFound,
        }
    }

    /// Whether the same call may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Backend {
                retryable: true,
                ..
            }
        )
    }

    /// The piece key the error is about, if any (bindings expose it as an attribute).
    pub fn key(&self) -> Option<&str> {
        match self {
            Error::NotFound { key, .. }
            | Error::AlreadyExists { key, .. }
            | Error::InvalidKey { key, .. }
            | Error::InvalidRange { key, .. }
            | Error::Corrupt { key, .. } => Some(key),
            Error::Backend { key, .. } => key.as_deref(),
            Error::InvalidConfig(_)
            | Error::Unauthorized { .. }
            | Error::Closed
            | Error::BucketNotFound { .. } => None,
        }
    }

    /// The backend (its endpoint, without credentials) the error comes from, if any.
    pub fn backend(&self) -> Option<&str> {
        match self {
            Error::NotFound { backend, .. }
            | Error::AlreadyExists { backend, .. }
            | Error::Corrupt { backend, .. }
            | Error::Unauthorized { backend, .. }
            | Error::Backend { backend, .. }
            | Error::BucketNotFound { backend, .. } => Some(backend),
            Error::InvalidKey { .. }
            | Error::InvalidRange { .. }
            | Error::InvalidConfig(_)
            | Error::Closed => None,
        }
    }

    pub(crate) fn config(msg: impl Into<String>) -> Self {
        Error::InvalidConfig(msg.into())
    }
}

/// Removes known secret values from text that may reach a log or an error message.
///
/// Backends sometimes echo credentials (S3 echoes the access key id in `InvalidAccessKeyId`
/// responses); every backend message passes through here before it becomes an [`Error`].
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// A redactor for these secret values (empty ones are ignored).
    pub fn new<I, S>(secrets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let secrets = secrets
            .into_iter()
            .map(Into::into)
            .filter(|s: &String| s.len() >= 4)
            .collect();
        Redactor { secrets }
    }

    /// `text` with every secret replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

/// `text` with the userinfo of a URL in it (`scheme://user:password@host`) shown as `***`:
/// for text echoed in an error that may hold a URL somewhere (a store spec's options).
pub fn redact_userinfo(text: &str) -> String {
    if let Some(i) = text.find("://") {
        let rest = &text[i + 3..];
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some(at) = rest[..end].rfind('@') {
            return format!("{}://***@{}", &text[..i], &rest[at + 1..]);
        }
    }
    text.to_string()
}

/// Removes userinfo and the query from a URL for display.
pub fn redact_url(url: &str) -> String {
    let no_query = url.split('?').next().unwrap_or("");
    match no_query.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority
                .rsplit_once('@')
                .map(|(_, h)| h)
                .unwrap_or(authority);
            format!("{scheme}://{host}{path}")
        }
        None => no_query.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redactor_hides_secrets_and_debug_hides_them_too() {
        let r = Redactor::new(["AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG", ""]);
        let msg = r.redact("InvalidAccessKeyId: AKIDEXAMPLE with wJalrXUtnFEMI/K7MDENG");
        assert_eq!(msg, "InvalidAccessKeyId: *** with ***");
        assert!(!format!("{r:?}").contains("AKID"));
    }

    #[test]
    fn kinds_are_stable() {
        let e = Error::NotFound {
            key: "k".into(),
            backend: "memory://".into(),
        };
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(e.kind().as_str(), "PIECE_NOT_FOUND");
        assert_eq!(e.to_string(), "piece \"k\" not found on memory://");
        let b = Error::Backend {
            op: "get",
            key: Some("k".into()),
            backend: "s3://b".into(),
            message: "timeout".into(),
            retryable: true,
        };
        assert!(b.is_retryable());
        assert_eq!(b.to_string(), "get failed on s3://b for \"k\": timeout");
    }
}
