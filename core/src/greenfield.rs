//! Greenfield's piece arithmetic, as storage providers call it.
//!
//! The formulas are the original Go piecestore's (`GfSpPieceOp`), with its holes closed: a
//! payload of 0 bytes has 0 segments (the original's segment size wraps for it), an index past
//! the last segment is `None` (the original returns the full segment size), and a zero segment
//! size or chunk count is `None` (the original divides by zero).
//!
//! ```
//! use piecestore::greenfield::*;
//! let mib = 1 << 20;
//! assert_eq!(segment_count(40 * mib, DEFAULT_MAX_SEGMENT_SIZE), Some(3));
//! assert_eq!(segment_size(40 * mib, 2, DEFAULT_MAX_SEGMENT_SIZE), Some(8 * mib));
//! assert_eq!(ec_piece_size(40 * mib, 2, DEFAULT_MAX_SEGMENT_SIZE, DEFAULT_DATA_CHUNKS), Some(2 * mib));
//! assert_eq!(challenge_piece_key(7, 1, -1, 0), "s7_s1");
//! assert_eq!(challenge_piece_key(7, 1, 4, 2), "e7_s1_p4_v2");
//! ```

use crate::error::Result;
use crate::key::{KeyFormat, PieceKey};

/// Greenfield's default maximum segment size: 16 MiB.
pub const DEFAULT_MAX_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;
/// Greenfield's default number of erasure-coding data chunks.
pub const DEFAULT_DATA_CHUNKS: u32 = 4;
/// Greenfield's default number of erasure-coding parity chunks.
pub const DEFAULT_PARITY_CHUNKS: u32 = 2;

/// Number of segments of an object of `payload` bytes: `ceil(payload / max_segment)`.
/// `None` when `max_segment` is 0 or the count does not fit a `u32`.
pub fn segment_count(payload: u64, max_segment: u64) -> Option<u32> {
    if max_segment == 0 {
        return None;
    }
    u32::try_from(payload.div_ceil(max_segment)).ok()
}

/// Size of segment `index`: `max_segment`, except the last, which holds the rest.
/// `None` when `index` is not a segment of the object.
pub fn segment_size(payload: u64, index: u32, max_segment: u64) -> Option<u64> {
    let count = segment_count(payload, max_segment)?;
    if index >= count {
        return None;
    }
    if index == count - 1 {
        Some(payload - u64::from(count - 1) * max_segment)
    } else {
        Some(max_segment)
    }
}

/// The largest segment of the object: `min(payload, max_segment)`.
pub fn max_segment_size(payload: u64, max_segment: u64) -> u64 {
    payload.min(max_segment)
}

/// Size of each erasure-coded piece of segment `index`: the segment's size divided by
/// `data_chunks`, rounded up. `None` for a bad index or `data_chunks == 0`.
pub fn ec_piece_size(payload: u64, index: u32, max_segment: u64, data_chunks: u32) -> Option<u64> {
    if data_chunks == 0 {
        return None;
    }
    Some(segment_size(payload, index, max_segment)?.div_ceil(u64::from(data_chunks)))
}

/// The key a challenge for (object, segment, redundancy index) reads: the segment piece key
/// when `redundancy_index` is negative (−1: the primary SP's segment), else the EC piece key.
/// Versioned keys; `version` 0 writes no `_v` suffix, as the original does.
pub fn challenge_piece_key(
    object_id: u64,
    segment: u32,
    redundancy_index: i32,
    version: u64,
) -> String {
    let key = match u32::try_from(redundancy_index) {
        Ok(ec) => PieceKey::ec(object_id, segment, ec),
        Err(_) => PieceKey::segment(object_id, segment),
    };
    key.with_version(version).to_string()
}

/// The segment index of a segment or EC piece key (any generation).
pub fn parse_segment_index(key: &str) -> Result<u32> {
    Ok(PieceKey::parse(key)?.segment)
}

/// The (segment, redundancy) indexes of a key as a challenge sees it: redundancy −1 for a
/// segment piece key, the EC index for an EC piece key.
pub fn parse_challenge_index(key: &str) -> Result<(u32, i32)> {
    let k = PieceKey::parse(key)?;
    let redundancy = match k.ec_index {
        None => -1,
        Some(i) => i32::try_from(i).map_err(|_| crate::Error::InvalidKey {
            key: key.chars().take(200).collect(),
            reason: "EC index does not fit an i32",
        })?,
    };
    Ok((k.segment, redundancy))
}

/// Whether `key` uses the versioned (`s…`/`e…`) generation of keys.
pub fn is_versioned_key(key: &str) -> bool {
    matches!(
        PieceKey::parse(key).map(|k| k.format),
        Ok(KeyFormat::Versioned { .. })
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn segment_arithmetic_matches_the_original() {
        // The original's own test cases: (payload, max) -> count.
        assert_eq!(segment_count(3, 1), Some(3));
        assert_eq!(segment_count(33 * MIB, 16 * MIB), Some(3));
        assert_eq!(segment_count(16 * MIB, 16 * MIB), Some(1));
        assert_eq!(segment_size(33 * MIB, 0, 16 * MIB), Some(16 * MIB));
        assert_eq!(segment_size(33 * MIB, 2, 16 * MIB), Some(MIB));
        assert_eq!(segment_size(100, 0, 16 * MIB), Some(100));
        assert_eq!(max_segment_size(100, 16 * MIB), 100);
        assert_eq!(max_segment_size(40 * MIB, 16 * MIB), 16 * MIB);
        // ceil(15 / 4) = 4, the original's comment's example.
        assert_eq!(ec_piece_size(15, 0, 16 * MIB, 4), Some(4));
        assert_eq!(ec_piece_size(16, 0, 16 * MIB, 4), Some(4));
        assert_eq!(ec_piece_size(33 * MIB, 2, 16 * MIB, 4), Some(MIB / 4));
    }

    #[test]
    fn where_the_original_goes_wrong_we_say_none() {
        assert_eq!(
            segment_count(0, 16 * MIB),
            Some(0),
            "empty payload: no segments"
        );
        assert_eq!(
            segment_size(0, 0, 16 * MIB),
            None,
            "the original returns 16 MiB here"
        );
        assert_eq!(
            ec_piece_size(0, 0, 16 * MIB, 4),
            None,
            "the original returns 4 MiB here"
        );
        assert_eq!(
            segment_size(3, 3, 1),
            None,
            "past the end (the original returns 1)"
        );
        assert_eq!(segment_count(1, 0), None, "the original divides by zero");
        assert_eq!(ec_piece_size(1, 0, 1, 0), None);
        assert_eq!(segment_count(u64::MAX, 1), None, "count overflows u32");
    }

    #[test]
    fn challenge_keys_and_indexes() {
        assert_eq!(challenge_piece_key(3, 1, -1, 0), "s3_s1");
        assert_eq!(challenge_piece_key(1, 3, 2, 0), "e1_s3_p2");
        assert_eq!(challenge_piece_key(1, 3, 2, 9), "e1_s3_p2_v9");
        assert_eq!(challenge_piece_key(1, 3, -7, 9), "s1_s3_v9");
        assert_eq!(parse_challenge_index("s3_s1").unwrap(), (1, -1));
        assert_eq!(parse_challenge_index("e1_s3_p2_v9").unwrap(), (3, 2));
        assert_eq!(parse_challenge_index("1_s3_p2").unwrap(), (3, 2));
        assert_eq!(parse_segment_index("e1_s7_p2").unwrap(), 7);
        assert!(
            parse_segment_index("s1_").is_err(),
            "the original panics here"
        );
        assert!(
            parse_challenge_index("").is_err(),
            "the original panics here"
        );
        assert!(parse_challenge_index("e1_s3_p4294967295").is_err());
        assert!(is_versioned_key("e1_s3_p2") && !is_versioned_key("1_s3_p2"));
    }
}
