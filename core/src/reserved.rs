//! The names of PieceStore's own objects in a shard, under [`RESERVED_PREFIX`]: packs, the
//! pack index of a local directory, the token naming a shard's contents.
//!
//! A leaf module: the backends list and classify objects by these names, and the pack layer
//! reads and writes the objects (through the backends' plain object operations), so neither
//! needs the other for a name.

pub use crate::key::RESERVED_PREFIX;

/// Where a shard keeps its packs.
pub(crate) const PACKS_PREFIX: &str = ".piecestore/packs/";

/// The pack index of a local-directory shard (with its `-wal`, `-shm` and `.lock` files).
pub(crate) const INDEX_FILE: &str = ".piecestore/index.sqlite";

/// The token that names a packed shard's contents (16 hex digits and a newline).
pub(crate) const TOKEN_FILE: &str = ".piecestore/index-token";

/// A pack's id: the milliseconds since the Unix epoch when it was opened (the high 48 bits),
/// then 80 bits that make it unique.
pub type PackId = u128;

/// The object name of a pack, under the shard's `.piecestore/packs/`.
pub fn pack_name(id: PackId) -> String {
    format!("{id:032x}.pack")
}

/// The pack id in an object name made by [`pack_name`].
pub fn parse_pack_name(name: &str) -> Option<PackId> {
    let hex = name.strip_suffix(".pack")?;
    (hex.len() == 32)
        .then(|| u128::from_str_radix(hex, 16).ok())
        .flatten()
}

/// When a pack was opened, in milliseconds since the Unix epoch.
pub fn pack_millis(id: PackId) -> u64 {
    (id >> 80) as u64
}

/// A pack's path from the shard's root (`.piecestore/packs/<id>.pack`).
pub(crate) fn pack_path(id: PackId) -> String {
    format!("{PACKS_PREFIX}{}", pack_name(id))
}

/// Whether `path` (from the shard's root) is a pack.
pub(crate) fn is_pack_path(path: &str) -> bool {
    path.strip_prefix(PACKS_PREFIX)
        .is_some_and(|name| parse_pack_name(name).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_names_round_trip_and_sort_by_time() {
        let id: PackId = (1_700_000_000_000u128 << 80) | 0x0123_4567_89ab_cdef_0123;
        let name = pack_name(id);
        assert_eq!(name, "018bcfe568000123456789abcdef0123.pack");
        assert_eq!(parse_pack_name(&name), Some(id));
        assert_eq!(pack_millis(id), 1_700_000_000_000);
        assert!(is_pack_path(&pack_path(id)));
        assert!(!is_pack_path(&format!("{PACKS_PREFIX}{name}#12")));
        assert!(!is_pack_path(&name));
        assert_eq!(parse_pack_name("0123.pack"), None);
        assert_eq!(
            parse_pack_name("zz8bcfe568000123456789abcdef0123.pack"),
            None
        );
        assert!(pack_name(id) < pack_name(id + (1 << 80)));
    }
}
