//! CRC32C (Castagnoli) checksums and where a piece keeps its own.
//!
//! Every piece PieceStore writes carries the CRC32C of its bytes:
//! - on backends with object metadata (S3 family, memory) in the metadata field `Crc32c`, as
//!   the decimal of the `u32` — the layout the original Go piecestore uses, so each can read
//!   what the other wrote;
//! - on the local-file backend, which has no metadata, in a 20-byte trailer after the bytes
//!   (see [`Trailer`]).
//!
//! A piece with no checksum at all (written by another tool) is returned as-is and reported
//! as unverified; a checksum that is present but does not match is always [`Corrupt`].
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

/// The trailer a local-file piece ends with: `crc32c: u32 LE | len: u64 LE | magic: 8 bytes`.
///
/// `len` is the length of the piece's bytes (the file's length minus 20). A file counts as
/// carrying a trailer when its magic is within 8 flipped bits of [`Trailer::MAGIC`] *or* its
/// length field matches; a trailer found that way that does not agree in full is damage
/// (`Corrupt`), so one flipped bit anywhere in the trailer can never make a piece read as an
/// unverified raw file; neither can a file cut short by up to four bytes (inside the magic).
/// (Files written by PieceStore are never torn: they are fsync'd before they are linked in.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// CRC32C of the piece's bytes.
    pub crc: u32,
    /// Length of the piece's bytes.
    pub len: u64,
}

/// What the end of a local file says about its checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrailerCheck {
    /// A well-formed trailer.
    Valid(Trailer),
    /// No trailer: a raw piece written by another tool.
    Absent,
    /// Something that was a trailer, damaged.
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
        if file_len < Self::LEN as u64 || tail.len() != Self::LEN {
            return TrailerCheck::Absent;
        }
        let crc = u32::from_le_bytes(tail[0..4].try_into().unwrap_or_default());
        let len = u64::from_le_bytes(tail[4..12].try_into().unwrap_or_default());
        let magic_bits_off: u32 = tail[12..20]
            .iter()
            .zip(Self::MAGIC)
            .map(|(a, b)| (a ^ b).count_ones())
            .sum();
        let len_ok = len == file_len - Self::LEN as u64;
        // A file cut short inside its trailer ends with the first bytes of the magic.
        let cut_in_magic = (4..Self::MAGIC.len()).any(|k| tail.ends_with(&Self::MAGIC[..k]));
        match (magic_bits_off, len_ok) {
            (0, true) => TrailerCheck::Valid(Trailer { crc, len }),
            (off, ok) if off <= 8 || ok || cut_in_magic => TrailerCheck::Damaged,
            _ => TrailerCheck::Absent,
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
    fn trailer_round_trips_and_any_single_flip_is_damage() {
        let t = Trailer {
            crc: 0xdead_beef,
            len: 100,
        };
        let bytes = t.encode();
        assert_eq!(Trailer::check(&bytes, 120), TrailerCheck::Valid(t));
        for i in 0..Trailer::LEN * 8 {
            let mut b = bytes;
            b[i / 8] ^= 1 << (i % 8);
            match Trailer::check(&b, 120) {
                TrailerCheck::Absent => panic!("bit {i} flipped reads as a raw file"),
                TrailerCheck::Valid(v) => assert_ne!(v, t, "bit {i}"),
                TrailerCheck::Damaged => {}
            }
        }
        for cut in 1..=4 {
            let mut torn = vec![0u8; cut];
            torn.extend_from_slice(&bytes[..Trailer::LEN - cut]);
            assert_eq!(
                Trailer::check(&torn, 120 - cut as u64),
                TrailerCheck::Damaged,
                "cut {cut}"
            );
        }
        assert_eq!(Trailer::check(&[0u8; 20], 120), TrailerCheck::Absent);
        assert_eq!(Trailer::check(&[0u8; 3], 3), TrailerCheck::Absent);
    }
}
