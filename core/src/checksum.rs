//! CRC32C (Castagnoli) checksums and where a piece keeps its own.
//!
//! Every piece PieceStore writes carries the CRC32C of its bytes:
//! - on backends with object metadata (S3 family, memory) in the metadata field `Crc32c`, as
//!   the decimal of the `u32` — the layout the original Go piecestore uses, so each can read
//!   what the other wrote;
//! - on local files, in PieceStore's own layout a 20-byte trailer after the bytes (see
//!   [`Trailer`]); in the original's layout (exactly the bytes in the file) an extended
//!   attribute, `user.piecestore.crc32c`, which the original never sees.
//!
//! A piece with no checksum at all (written by another tool) is refused unless the store allows
//! unverified pieces; a checksum that is present but does not match is always [`Corrupt`].
//!
//! [`Corrupt`]: crate::Error::Corrupt

/// The metadata field name the checksum is stored under (S3: `x-amz-meta-crc32c`).
pub const METADATA_KEY: &str = "Crc32c";

/// The CRC32C of `data`.
///
/// ```
/// assert_eq!(piecestore::checksum::crc32c(b"123456789"), 0xe306_9283);
/// ```
pub fn crc32c(data: &[u8]) -> u32 {
    // crc-fast folds with carry-less multiplication: ~2x the crc32c crate's speed here
    // (benches/RESULTS.md), and object_store already builds it.
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32
}

/// The CRC32C of `parts` one after another, without joining them.
///
/// ```
/// use piecestore::checksum::{crc32c, crc32c_of_parts};
/// assert_eq!(crc32c_of_parts(&[b"1234", b"56789"]), crc32c(b"123456789"));
/// ```
pub fn crc32c_of_parts(parts: &[&[u8]]) -> u32 {
    let mut d = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
    for p in parts {
        d.update(p);
    }
    d.finalize() as u32
}

/// Parses a metadata checksum value: the decimal of a `u32`, every value, with surrounding
/// whitespace ignored. `None` when the value is not such a number.
pub fn parse_metadata(value: &str) -> Option<u32> {
    let v = value.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u32>().ok()
}

/// The trailer a local-file piece ends with in PieceStore's own layout: `crc32c: u32 LE |
/// len: u64 LE | magic: 8 bytes`.
///
/// `len` is the length of the piece's bytes (the file's length minus 20). Whether a directory's
/// files carry trailers at all is decided by the directory's layout marker, never by a file's
/// last bytes (see `backend/local.rs`); in such a directory a file whose last 8 bytes are the
/// magic carries a trailer, which is damage (`Corrupt`) when its length disagrees, and a file
/// without the magic carries no checksum. (Files written by PieceStore are never torn: they are
/// fsync'd before they are linked in.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// CRC32C of the piece's bytes.
    pub crc: u32,
    /// Length of the piece's bytes.
    pub len: u64,
}

/// What the end of a local file in PieceStore's own layout says about its checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrailerCheck {
    /// A well-formed trailer.
    Valid(Trailer),
    /// No trailer (the file carries no checksum).
    Absent,
    /// A trailer (its magic) that does not agree with the file.
    Damaged,
}

impl Trailer {
    /// Trailer length in bytes.
    pub const LEN: usize = 20;
    /// The trailer's magic.
    pub const MAGIC: [u8; 8] = *b"PSCRC32C";

    /// The trailer's bytes.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0..4].copy_from_slice(&self.crc.to_le_bytes());
        out[4..12].copy_from_slice(&self.len.to_le_bytes());
        out[12..20].copy_from_slice(&Self::MAGIC);
        out
    }

    /// Reads the trailer from the last [`Trailer::LEN`] bytes of a file of `file_len` bytes.
    pub fn check(tail: &[u8], file_len: u64) -> TrailerCheck {
        if file_len < Self::LEN as u64 || tail.len() != Self::LEN || tail[12..20] != Self::MAGIC {
            return TrailerCheck::Absent;
        }
        let crc = u32::from_le_bytes(tail[0..4].try_into().unwrap_or_default());
        let len = u64::from_le_bytes(tail[4..12].try_into().unwrap_or_default());
        if len == file_len - Self::LEN as u64 {
            TrailerCheck::Valid(Trailer { crc, len })
        } else {
            TrailerCheck::Damaged
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_values_parse_on_both_sides_of_2_pow_31() {
        assert_eq!(parse_metadata("0"), Some(0));
        assert_eq!(parse_metadata("2147483647"), Some(0x7fff_ffff));
        assert_eq!(parse_metadata("2147483648"), Some(0x8000_0000));
        assert_eq!(parse_metadata("4294967295"), Some(u32::MAX));
        assert_eq!(parse_metadata(" 12 "), Some(12));
        for bad in ["", "-1", "4294967296", "0x10", "1e3", "abc"] {
            assert_eq!(parse_metadata(bad), None, "{bad}");
        }
    }

    #[test]
    fn trailer_round_trips_and_flips_are_never_a_valid_other_piece() {
        let t = Trailer {
            crc: 0xdead_beef,
            len: 100,
        };
        let bytes = t.encode();
        assert_eq!(Trailer::check(&bytes, 120), TrailerCheck::Valid(t));
        for i in 0..Trailer::LEN * 8 {
            let mut b = bytes;
            b[i / 8] ^= 1 << (i % 8);
            let got = Trailer::check(&b, 120);
            match i / 8 {
                // The checksum: still a trailer, whose checksum then does not match.
                0..=3 => assert!(matches!(got, TrailerCheck::Valid(v) if v.crc != t.crc)),
                // The length: damage.
                4..=11 => assert_eq!(got, TrailerCheck::Damaged, "bit {i}"),
                // The magic: no trailer, so no checksum (refused unless allowed).
                _ => assert_eq!(got, TrailerCheck::Absent, "bit {i}"),
            }
        }
        assert_eq!(Trailer::check(&[0u8; 20], 120), TrailerCheck::Absent);
        assert_eq!(Trailer::check(&[0u8; 3], 3), TrailerCheck::Absent);
    }
}
