//! Piece keys: the rules every key must pass, and helpers for Greenfield's key formats.
//!
//! # Key rules
//! A key is a UTF-8 string of 1 to [`MAX_KEY_LEN`] bytes, made of `/`-separated segments.
//! [`validate`] rejects, with [`Error::InvalidKey`]:
//! - the empty key and keys over 1024 bytes;
//! - a leading `/`, a trailing `/`, or an empty segment (`a//b`);
//! - `.` and `..` segments (no key can reach outside a store's root);
//! - NUL and every other control character;
//! - a segment ending in `#` and digits only (`name#12`), which the local-file backend reserves
//!   for its staging files;
//! - `.piecestore` and keys under `.piecestore/`, which PieceStore reserves for its own
//!   objects.
//!
//! # Greenfield keys
//! [`PieceKey`] encodes and parses both generations of the keys Greenfield storage providers use:
//! `{objectID}_s{segment}` and `{objectID}_s{segment}_p{ecIndex}`, and the versioned
//! `s{objectID}_s{segment}[_v{version}]` and `e{objectID}_s{segment}_p{ecIndex}[_v{version}]`.
//!
//! ```
//! use piecestore::key::PieceKey;
//! let k = PieceKey::ec(42, 3, 5).with_version(7);
//! assert_eq!(k.to_string(), "e42_s3_p5_v7");
//! assert_eq!(PieceKey::parse("e42_s3_p5_v7").unwrap(), k);
//! assert_eq!(PieceKey::segment(42, 0).to_string(), "42_s0");
//! ```

use std::fmt;

use crate::error::{Error, Result};

/// The longest key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// The prefix PieceStore reserves for its own objects (probes, packs, the index of a local
/// directory, the contents token, the layout marker).
pub const RESERVED_PREFIX: &str = ".piecestore/";

/// Checks `key` against the key rules (see the module docs).
///
/// ```
/// use piecestore::{key::validate, ErrorKind};
/// assert!(validate("e42_s3_p5").is_ok());
/// assert_eq!(validate("../etc/passwd").unwrap_err().kind(), ErrorKind::InvalidKey);
/// ```
pub fn validate(key: &str) -> Result<()> {
    let bad = |reason: &'static str| {
        let shown: String = key.chars().take(200).collect();
        Err(Error::InvalidKey { key: shown, reason })
    };
    if key.is_empty() {
        return bad("key is empty");
    }
    if key.len() > MAX_KEY_LEN {
        return bad("key is longer than 1024 bytes");
    }
    if key.starts_with('/') {
        return bad("key starts with '/'");
    }
    if key.ends_with('/') {
        return bad("key ends with '/'");
    }
    if key.chars().any(char::is_control) {
        return bad("key contains a NUL or control character");
    }
    if key.starts_with(RESERVED_PREFIX) || key == RESERVED_PREFIX.trim_end_matches('/') {
        return bad("'.piecestore' and keys under '.piecestore/' are reserved");
    }
    for seg in key.split('/') {
        match seg {
            "" => return bad("key has an empty segment ('//')"),
            "." | ".." => return bad("key has a '.' or '..' segment"),
            _ => {}
        }
        if is_staging_name(seg) {
            return bad("key segment ends in '#' and digits (reserved for staging files)");
        }
    }
    Ok(())
}

/// Whether a path segment ends in `#` and digits: the name object_store gives a local file
/// while it is being written (so no key may end a segment that way).
pub(crate) fn is_staging_name(seg: &str) -> bool {
    seg.rsplit_once('#')
        .is_some_and(|(_, tail)| !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()))
}

/// Checks a key prefix for listing: like [`validate`], but empty is allowed and a trailing
/// `/` is allowed.
pub fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        return Ok(());
    }
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    if trimmed.is_empty() {
        return Err(Error::InvalidKey {
            key: prefix.into(),
            reason: "prefix is only '/'",
        });
    }
    validate(trimmed)
}

/// A Greenfield piece key: a segment piece (no EC index) or an erasure-coded piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PieceKey {
    /// The object id.
    pub object_id: u64,
    /// The segment index within the object.
    pub segment: u32,
    /// The erasure-coding index; `None` for a segment piece.
    pub ec_index: Option<u32>,
    /// The key generation (and version, for versioned keys).
    pub format: KeyFormat,
}

/// Which generation of Greenfield's key format a [`PieceKey`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyFormat {
    /// `{objectID}_s{segment}[_p{ecIndex}]`.
    Legacy,
    /// `s{objectID}_s{segment}[_v{version}]` / `e{objectID}_s{segment}_p{ecIndex}[_v{version}]`.
    Versioned {
        /// The object version; `None` writes no `_v` suffix.
        version: Option<u64>,
    },
}

impl PieceKey {
    /// A legacy segment piece key, `{objectID}_s{segment}`.
    pub fn segment(object_id: u64, segment: u32) -> Self {
        PieceKey {
            object_id,
            segment,
            ec_index: None,
            format: KeyFormat::Legacy,
        }
    }

    /// A legacy EC piece key, `{objectID}_s{segment}_p{ecIndex}`.
    pub fn ec(object_id: u64, segment: u32, ec_index: u32) -> Self {
        PieceKey {
            object_id,
            segment,
            ec_index: Some(ec_index),
            format: KeyFormat::Legacy,
        }
    }

    /// The same piece in the versioned format, with `_v{version}`; version 0 writes no suffix,
    /// as the original does.
    pub fn with_version(self, version: u64) -> Self {
        let version = (version != 0).then_some(version);
        PieceKey {
            format: KeyFormat::Versioned { version },
            ..self
        }
    }

    /// The same piece in the versioned format, without a `_v` suffix.
    pub fn versioned(self) -> Self {
        PieceKey {
            format: KeyFormat::Versioned { version: None },
            ..self
        }
    }

    /// Parses a key in any of the four forms.
    ///
    /// Fails with [`Error::InvalidKey`] when `key` is not a Greenfield piece key.
    pub fn parse(key: &str) -> Result<Self> {
        parse_piece_key(key).ok_or_else(|| Error::InvalidKey {
            key: key.chars().take(200).collect(),
            reason: "not a Greenfield piece key",
        })
    }
}

fn num<T: std::str::FromStr>(s: &str) -> Option<T> {
    // Only plain decimal digits: no sign, no empty string.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_piece_key(key: &str) -> Option<PieceKey> {
    let (versioned_kind, rest) = match key.as_bytes().first()? {
        b's' => (Some(false), &key[1..]),
        b'e' => (Some(true), &key[1..]),
        _ => (None, key),
    };
    let mut parts = rest.split('_');
    let object_id = num(parts.next()?)?;
    let segment = num(parts.next()?.strip_prefix('s')?)?;
    let mut ec_index = None;
    let mut version = None;
    for part in parts {
        if let Some(p) = part.strip_prefix('p') {
            if ec_index.is_some() || version.is_some() {
                return None;
            }
            ec_index = Some(num(p)?);
        } else if let Some(v) = part.strip_prefix('v') {
            if version.is_some() || versioned_kind.is_none() {
                return None;
            }
            version = Some(num(v)?);
        } else {
            return None;
        }
    }
    let format = match versioned_kind {
        None => KeyFormat::Legacy,
        Some(is_ec) => {
            if is_ec != ec_index.is_some() {
                return None;
            }
            KeyFormat::Versioned { version }
        }
    };
    Some(PieceKey {
        object_id,
        segment,
        ec_index,
        format,
    })
}

impl fmt::Display for PieceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.format {
            KeyFormat::Legacy => write!(f, "{}_s{}", self.object_id, self.segment)?,
            KeyFormat::Versioned { .. } => {
                let tag = if self.ec_index.is_some() { 'e' } else { 's' };
                write!(f, "{tag}{}_s{}", self.object_id, self.segment)?
            }
        }
        if let Some(p) = self.ec_index {
            write!(f, "_p{p}")?;
        }
        if let KeyFormat::Versioned { version: Some(v) } = self.format {
            write!(f, "_v{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn every_invalid_key_class_is_rejected() {
        let long = "a".repeat(1025);
        for k in [
            "",
            long.as_str(),
            "/abs",
            "dir/",
            "a//b",
            "..",
            "a/../b",
            "./a",
            "nul\0byte",
            "tab\tkey",
            "line\nbreak",
            "del\u{7f}",
            ".piecestore/probe",
            "file#12",
        ] {
            let e = validate(k).expect_err(k);
            assert_eq!(e.kind(), ErrorKind::InvalidKey, "{k:?}");
        }
        assert!(validate(&"a".repeat(1024)).is_ok());
        for k in [
            "a",
            "42_s0",
            "dir/sub/piece",
            "a..b",
            "...",
            "x#y",
            "x#",
            "ünï ćode",
            ".hidden",
        ] {
            validate(k).unwrap_or_else(|e| panic!("{k:?}: {e}"));
        }
    }

    #[test]
    fn greenfield_keys_round_trip() {
        let cases = [
            (PieceKey::segment(1, 0), "1_s0"),
            (PieceKey::ec(123, 4, 5), "123_s4_p5"),
            (
                PieceKey::segment(u64::MAX, u32::MAX).versioned(),
                "s18446744073709551615_s4294967295",
            ),
            (PieceKey::segment(9, 2).with_version(3), "s9_s2_v3"),
            (PieceKey::ec(9, 2, 1).versioned(), "e9_s2_p1"),
        ];
        for (k, s) in cases {
            assert_eq!(k.to_string(), s);
            assert_eq!(PieceKey::parse(s).unwrap(), k, "{s}");
            validate(s).unwrap();
        }
    }

    #[test]
    fn non_piece_keys_do_not_parse() {
        // `_v0` parses (as version 0), though the original never writes it.
        assert_eq!(
            PieceKey::parse("e9_s2_p1_v0").unwrap().format,
            KeyFormat::Versioned { version: Some(0) }
        );
        assert_eq!(
            PieceKey::ec(9, 2, 1).with_version(0).to_string(),
            "e9_s2_p1"
        );
        for s in [
            "",
            "1",
            "1_",
            "1_s",
            "1_sx",
            "x1_s0",
            "1_s0_q1",
            "1_s0_p",
            "1_s0_v1",
            "s1_s0_p1",
            "e1_s0",
            "1_s-1",
            "1_s0_p1_p2",
            "s1_s0_v1_v2",
            "e1_s0_v1_p2",
            "1_s99999999999",
        ] {
            assert!(PieceKey::parse(s).is_err(), "{s:?} parsed");
        }
    }
}
