//! Which shard a key lives on.
//!
//! Two placements, both frozen (changing them would lose data in place):
//! - [`Placement::FnvMod`]: FNV-1a 32-bit of the key's bytes, modulo the shard count — the
//!   layout of the original Go piecestore and of JuiceFS, so their sharded buckets read in place.
//! - [`Placement::Jump`]: Lamping and Veach's jump consistent hash over the key's 64-bit
//!   FNV-1a hash. Growing from N to N+1 shards moves about 1/(N+1) of the keys, all of them to
//!   the new shard.
//!
//! ```
//! use piecestore::shard::{fnv1a32, Placement};
//! assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
//! assert_eq!(Placement::FnvMod.shard("foobar", 4), 0xbf9c_f968 % 4);
//! assert!(Placement::Jump.shard("foobar", 4) < 4);
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

use crate::error::Error;

/// How keys are spread over shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// `fnv1a32(key) % shards`, bit-for-bit the original Go piecestore's. The default.
    #[default]
    FnvMod,
    /// Jump consistent hash: adding a shard moves ~1/(N+1) of the keys.
    Jump,
}

impl Placement {
    /// The shard (in `0..shards`) for `key`. With `shards <= 1` every key is on shard 0.
    pub fn shard(self, key: &str, shards: u32) -> u32 {
        if shards <= 1 {
            return 0;
        }
        match self {
            Placement::FnvMod => fnv1a32(key.as_bytes()) % shards,
            Placement::Jump => jump_hash(fnv1a64(key.as_bytes()), shards),
        }
    }

    /// The name used in configs: `fnv-mod` or `jump`.
    pub fn as_str(self) -> &'static str {
        match self {
            Placement::FnvMod => "fnv-mod",
            Placement::Jump => "jump",
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Placement {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "fnv-mod" | "fnvmod" | "fnv" => Ok(Placement::FnvMod),
            "jump" | "consistent" => Ok(Placement::Jump),
            other => Err(Error::config(format!(
                "Placement: unknown placement {other:?} (expected \"fnv-mod\" or \"jump\")"
            ))),
        }
    }
}

impl<'de> Deserialize<'de> for Placement {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// FNV-1a, 32 bits.
pub fn fnv1a32(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in data {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// FNV-1a, 64 bits.
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Jump consistent hash (Lamping & Veach, 2014): a bucket in `0..buckets` for `key`.
pub fn jump_hash(mut key: u64, buckets: u32) -> u32 {
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_vectors() {
        // Published FNV-1a test vectors.
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn fnv_mod_matches_the_original_on_piece_keys() {
        // Go's hash/fnv New32a over the key, `Sum32() % uint32(n)`, as the original shards.
        let vectors = [
            ("1_s0", 0xedc7_7a8a, 2, 138),
            ("123_s4_p5", 0x60eb_6d13, 3, 19),
            ("s9_s2_v3", 0xe30b_1b27, 3, 39),
            ("e42_s3_p5_v7", 0x70b2_9905, 1, 5),
            (
                "e18446744073709551615_s4294967295_p255_v1",
                0x0d3c_43ef,
                3,
                239,
            ),
        ];
        for (key, hash, mod4, mod256) in vectors {
            assert_eq!(fnv1a32(key.as_bytes()), hash, "{key}");
            assert_eq!(Placement::FnvMod.shard(key, 4), mod4, "{key}");
            assert_eq!(Placement::FnvMod.shard(key, 256), mod256, "{key}");
        }
        assert_eq!(Placement::FnvMod.shard("anything", 0), 0);
        assert_eq!(Placement::FnvMod.shard("anything", 1), 0);
    }

    #[test]
    fn jump_moves_about_one_in_n_plus_one_when_growing() {
        for n in [1u32, 3, 4, 7, 16] {
            let keys = 100_000;
            let moved = (0..keys)
                .filter(|i| {
                    let k = format!("{i}_s0_p1");
                    Placement::Jump.shard(&k, n) != Placement::Jump.shard(&k, n + 1)
                })
                .count();
            let bound = 1.3 / f64::from(n + 1) * keys as f64;
            assert!(
                (moved as f64) <= bound,
                "n={n}: {moved} moved, bound {bound}"
            );
            assert!(
                (moved as f64) >= 0.7 / f64::from(n + 1) * keys as f64,
                "n={n}: too few moved ({moved})"
            );
        }
    }

    #[test]
    fn jump_hash_reference_values() {
        // Values from the paper's reference implementation.
        assert_eq!(jump_hash(0, 1), 0);
        assert_eq!(jump_hash(256, 1024), 520);
        assert_eq!(jump_hash(0xdead_beef, 1), 0);
        for n in 1..50u32 {
            assert!(jump_hash(12345, n) < n);
        }
    }

    #[test]
    fn parse_placement_names() {
        assert_eq!("fnv-mod".parse::<Placement>().unwrap(), Placement::FnvMod);
        assert_eq!("Jump".parse::<Placement>().unwrap(), Placement::Jump);
        assert!("ring".parse::<Placement>().is_err());
    }
}
