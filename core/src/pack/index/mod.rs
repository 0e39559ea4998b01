//! The pack index: key → where the piece is, and pack → how much of it is live.
//!
//! The index is a cache of the packs (`fsck --rebuild-index` rebuilds it from them). It sits
//! behind [`PackIndex`] so a shared database can hold it when several nodes serve one bucket;
//! [`SqliteIndex`] is the embedded default (one SQLite database per shard in WAL mode: a
//! commit appends to its log without waiting for the disk unless it must be durable), shared
//! by the processes of one host; [`PgIndex`] keeps it in PostgreSQL for several hosts.

mod codec;
pub(crate) mod postgres;
mod sqlite;

pub use self::postgres::PgIndex;
pub use self::sqlite::SqliteIndex;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::Result;

pub use crate::reserved::{PackId, pack_millis, pack_name, parse_pack_name};

/// Where a packed piece's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    /// The pack.
    pub pack: PackId,
    /// Offset of the bytes in the pack.
    pub offset: u64,
    /// Length of the piece.
    pub len: u64,
    /// The piece's CRC32C.
    pub crc: u32,
    /// The write's sequence number.
    pub seq: u64,
}

/// Where a piece is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// In a pack.
    Packed(Loc),
    /// An object of its own (a large piece), written while packing was on.
    Object {
        /// Its length.
        len: u64,
        /// Its CRC32C.
        crc: u32,
        /// The write's sequence number.
        seq: u64,
    },
}

impl Slot {
    /// The piece's length.
    pub fn len(&self) -> u64 {
        match self {
            Slot::Packed(l) => l.len,
            Slot::Object { len, .. } => *len,
        }
    }
    /// Whether the piece is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The piece's CRC32C.
    pub fn crc(&self) -> u32 {
        match self {
            Slot::Packed(l) => l.crc,
            Slot::Object { crc, .. } => *crc,
        }
    }
    /// The write's sequence number.
    pub fn seq(&self) -> u64 {
        match self {
            Slot::Packed(l) => l.seq,
            Slot::Object { seq, .. } => *seq,
        }
    }
}

/// Whether a pack is in use or waiting to be deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackState {
    /// Sealed (footer written); its live pieces are read from it.
    Live,
    /// A local directory's active pack: write groups are appended to it; no footer yet; never
    /// compacted. Its `size` is the end of its records the index knows.
    Active,
    /// Compacted: its pieces moved; delete the object after the grace period that started at
    /// `since_ms` (Unix milliseconds).
    Doomed {
        /// When it was compacted.
        since_ms: u64,
    },
}

/// What the index knows of one pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackInfo {
    /// The pack object's size.
    pub size: u64,
    /// Bytes of piece payloads in it, live or not.
    pub payload: u64,
    /// Bytes of its pieces the index still points at.
    pub live_bytes: u64,
    /// Number of those pieces.
    pub live_count: u64,
    /// Number of records (pieces and tombstones).
    pub records: u64,
    /// The lowest sequence number of its records (a tombstone may be dropped only when no pack
    /// could still hold the record it deletes).
    pub min_seq: u64,
    /// Live or doomed.
    pub state: PackState,
}

impl PackInfo {
    /// A new active pack of `size` bytes (its header) that holds no record yet.
    pub fn new_active(size: u64) -> PackInfo {
        PackInfo {
            size,
            payload: 0,
            live_bytes: 0,
            live_count: 0,
            records: 0,
            min_seq: u64::MAX,
            state: PackState::Active,
        }
    }

    /// The share of the pack's payload that is garbage, 0.0 to 1.0.
    pub fn garbage_ratio(&self) -> f64 {
        if self.payload == 0 {
            return if self.live_count == 0 { 1.0 } else { 0.0 };
        }
        1.0 - (self.live_bytes as f64 / self.payload as f64)
    }
}

/// An object operation in progress on a key, recorded before it starts so that a crash or a
/// failure half-way leaves the key known to the index (see `docs/pack-format.md`, "Objects of
/// their own"): recovery, or the next operation on the key, finishes or undoes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// A large piece's object is being written: once an object with this length and checksum is
    /// found under the key, it becomes the key's slot (`Object`, with this `seq`).
    PutObject {
        /// The piece's length.
        len: u64,
        /// Its CRC32C.
        crc: u32,
        /// The write's sequence number.
        seq: u64,
    },
    /// The object under the key is to be deleted (it was deleted, or replaced by a packed
    /// piece); its slot goes too if it is still an `Object` with a sequence number of at most
    /// `upto_seq`.
    DeleteObject {
        /// The sequence number of the object slot to remove (0: none).
        upto_seq: u64,
    },
}

/// An [`Intent`] with the writer that recorded it (see the packer's `lease` module): only that
/// writer carries it out while it lives; once it is gone, anyone finishes or undoes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnedIntent {
    /// The operation.
    pub intent: Intent,
    /// The writer's id; 0 for an intent recorded by a release that kept no writer id.
    pub owner: u64,
}

/// One change of an [`PackIndex::apply`] batch. Live-byte accounting follows from the slot
/// changes: the index does it, so no caller can get it wrong.
#[derive(Debug, Clone)]
pub enum Change {
    /// Forgets every piece and pack, and with `intents` every intent (never the sequence
    /// counter): the first change of a rebuild, so that the rebuild is one transaction.
    Clear {
        /// Forget the intents too (an index made for other contents of the shard).
        intents: bool,
    },
    /// Records a new pack (its live counts start at 0 and grow with the `Put`s that follow).
    /// A pack the index already has is left as it is.
    AddPack {
        /// The pack.
        id: PackId,
        /// Its size, payload bytes, record count and lowest sequence number.
        info: PackInfo,
    },
    /// Points `key` at `slot` only if the key holds nothing (no slot, no intent), or already
    /// exactly this slot: a new piece's first write wins, whichever process made it (a put of
    /// the same key racing in another process then finds the winner, and reports it).
    Insert {
        /// The piece key.
        key: String,
        /// Where it now is.
        slot: Slot,
    },
    /// Points `key` at `slot`, unless the key already holds a write with a sequence number
    /// at least as high (a newer write wins; replaying an old pack changes nothing).
    Put {
        /// The piece key.
        key: String,
        /// Where it now is.
        slot: Slot,
    },
    /// Removes `key` if its write's sequence number is at most `upto_seq` (a tombstone).
    Delete {
        /// The piece key.
        key: String,
        /// The sequence number of the write the tombstone deletes.
        upto_seq: u64,
    },
    /// Points `key` at `to` only if it is still at `from` (compaction's compare-and-swap; a
    /// piece deleted or rewritten meanwhile stays as it is).
    Move {
        /// The piece key.
        key: String,
        /// Where compaction copied it from.
        from: Loc,
        /// Where it copied it to.
        to: Loc,
    },
    /// An active pack grew: its records now end at `size`, with `payload` bytes of pieces in
    /// `records` records, the lowest sequence number `min_seq` (its totals, not increments: a
    /// replay applies it again harmlessly). Ignored unless `size` is past what the index has.
    PackGrew {
        /// The pack.
        id: PackId,
        /// Where its records end.
        size: u64,
        /// Payload bytes of its pieces.
        payload: u64,
        /// Its records.
        records: u64,
        /// The lowest sequence number of its records.
        min_seq: u64,
    },
    /// An active pack was sealed (its footer written): live, `size` bytes.
    Seal {
        /// The pack.
        id: PackId,
        /// Its size with the footer and trailer.
        size: u64,
    },
    /// Marks a pack compacted at `since_ms`.
    Doom {
        /// The pack.
        id: PackId,
        /// Unix milliseconds.
        since_ms: u64,
    },
    /// Forgets a pack (its object was deleted).
    RemovePack {
        /// The pack.
        id: PackId,
    },
    /// Records an object operation about to start on `key`, unless the key has an intent of
    /// another writer (then nothing changes and the change reports `false`: that writer's
    /// operation runs, or must be finished first).
    SetIntent {
        /// The piece key.
        key: String,
        /// What is about to happen.
        intent: Intent,
        /// The writer that carries it out.
        owner: u64,
    },
    /// Hands `key`'s intent from writer `from` (gone) to writer `to`, who then finishes or
    /// undoes it; nothing changes (and the change reports `false`) unless the intent is still
    /// `from`'s, so of several processes that find one orphaned intent exactly one takes it.
    TakeIntent {
        /// The piece key.
        key: String,
        /// The writer that recorded it.
        from: u64,
        /// The writer that takes it.
        to: u64,
    },
    /// Forgets `key`'s intent (the operation finished, or was undone), if it is `owner`'s.
    ClearIntent {
        /// The piece key.
        key: String,
        /// The writer whose intent it is.
        owner: u64,
    },
    /// Raises the sequence counter ([`META_MAX_SEQ`]) to at least this (every record's
    /// sequence number, tombstones included, goes through it).
    BumpSeq(u64),
    /// Sets a number in the index's metadata.
    SetMeta {
        /// The name.
        name: &'static str,
        /// The value.
        value: u64,
    },
}

/// Metadata: the highest sequence number used by any record (piece, tombstone or object), so
/// the next write gets a higher one whatever the clock says.
pub const META_MAX_SEQ: &str = "max_seq";
/// Metadata: 1 when every piece of the shard was written through this index (so a key that
/// is not in it is not stored anywhere), 0 when the shard held objects before.
pub const META_COMPLETE: &str = "complete";
/// Metadata: the token of the shard contents the index was made for.
pub const META_TOKEN: &str = "token";
/// Metadata: the index layout version.
pub const META_VERSION: &str = "version";

/// Every pack and every piece of an index, read at one moment ([`PackIndex::snapshot`]).
pub type Snapshot = (Vec<(PackId, PackInfo)>, Vec<(String, Slot)>);

/// The index of one shard's packs. Implementations must apply a batch atomically and durably.
pub trait PackIndex: Send + Sync + fmt::Debug {
    /// Where `key` is.
    fn get(&self, key: &str) -> Result<Option<Slot>>;
    /// Every key starting with `prefix`, in key order.
    fn range(&self, prefix: &str) -> Result<Vec<(String, Slot)>>;
    /// Applies `changes` in one atomic, durable transaction; returns for each change whether
    /// it took effect.
    fn apply(&self, changes: &[Change]) -> Result<Vec<bool>>;
    /// [`PackIndex::apply`] without waiting for the disk: visible at once, made durable by the
    /// next durable commit, lost in a crash before it (for changes the packs can replay).
    fn apply_lazy(&self, changes: &[Change]) -> Result<Vec<bool>> {
        self.apply(changes)
    }
    /// [`PackIndex::apply_lazy`] only if the index can be written at once: `Ok(None)`, with
    /// nothing applied, when another writer (another process) holds it. A writer that finds
    /// it taken appends the write groups that formed meanwhile and commits them all at once
    /// (write groups of many processes batch as one process's would). An index without such
    /// a lock applies at once.
    fn try_apply_lazy(&self, changes: &[Change]) -> Result<Option<Vec<bool>>> {
        self.apply_lazy(changes).map(Some)
    }
    /// A pack's record.
    fn pack(&self, id: PackId) -> Result<Option<PackInfo>>;
    /// Every pack, by id.
    fn packs(&self) -> Result<Vec<(PackId, PackInfo)>>;
    /// Every pack and every piece, read at one moment (what a check compares with the packs
    /// while writes go on).
    fn snapshot(&self) -> Result<Snapshot>;
    /// The object operation in progress on `key`, if any.
    fn intent(&self, key: &str) -> Result<Option<OwnedIntent>>;
    /// Where `key` is and the object operation in progress on it, read together.
    fn lookup(&self, key: &str) -> Result<(Option<Slot>, Option<OwnedIntent>)> {
        Ok((self.get(key)?, self.intent(key)?))
    }
    /// Every key with an object operation in progress.
    fn intents(&self) -> Result<Vec<(String, OwnedIntent)>>;
    /// A metadata number.
    fn meta(&self, name: &str) -> Result<Option<u64>>;
    /// Number of keys.
    fn len(&self) -> Result<u64>;
    /// Whether the index holds no key.
    fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Where it lives, for messages.
    fn describe(&self) -> String;
    /// The asynchronous calls of an index a round trip away (a database server, not
    /// microseconds on this host), awaited on the caller's runtime, holding no thread while the
    /// server works; `None` for a local one. A put of a new key on a remote index skips its
    /// lookup (the insert of its write group decides, [`Change::Insert`]).
    fn remote(&self) -> Option<&dyn RemoteIndex> {
        None
    }
}

/// A future of a [`RemoteIndex`] call.
pub type IndexFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>> + Send>>;

/// The hot calls of an index on a server, as futures: a piece's read and a write group's
/// commit.
pub trait RemoteIndex: Send + Sync {
    /// [`PackIndex::get`].
    fn get_async(&self, key: &str) -> IndexFuture<Option<Slot>>;
    /// [`PackIndex::apply_lazy`] (or, `durable`, [`PackIndex::apply`]).
    fn apply_async(&self, changes: &[Change], durable: bool) -> IndexFuture<Vec<bool>>;
}

/// Records layout version `layout` in a new index, or checks that an existing one has it.
fn check_layout(index: &dyn PackIndex, layout: u64) -> Result<()> {
    match index.meta(META_VERSION)? {
        None => index
            .apply(&[Change::SetMeta {
                name: META_VERSION,
                value: layout,
            }])
            .map(drop),
        Some(v) if v == layout => Ok(()),
        Some(v) => Err(crate::error::Error::config(format!(
            "pack index {} has layout version {v}; this build reads version {layout}",
            index.describe()
        ))),
    }
}

/// Where the index of a store is kept when the config does not say: next to the packs for a
/// local directory, else in the user's cache directory, one file per bucket and shard.
pub fn default_index_path(root_dir: Option<&Path>, label: &str, shard: usize) -> PathBuf {
    if let Some(root) = root_dir {
        return root.join(".piecestore").join("index.sqlite");
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    let hash = crate::shard::fnv1a32(label.as_bytes());
    let safe: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect();
    base.join("piecestore")
        .join("index")
        .join(format!("{safe}-{hash:08x}"))
        .join(format!("shard-{shard}.sqlite"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(pack: PackId, offset: u64, seq: u64) -> Loc {
        Loc {
            pack,
            offset,
            len: 10,
            crc: 7,
            seq,
        }
    }

    fn info() -> PackInfo {
        PackInfo {
            size: 100,
            payload: 20,
            live_bytes: 0,
            live_count: 0,
            records: 2,
            min_seq: 1,
            state: PackState::Live,
        }
    }

    #[test]
    fn seq_rules_and_accounting() {
        let ix = SqliteIndex::in_memory().unwrap();
        let a = loc(1, 40, 1);
        let b = loc(1, 80, 2);
        ix.apply(&[
            Change::AddPack {
                id: 1,
                info: info(),
            },
            Change::Put {
                key: "k".into(),
                slot: Slot::Packed(a),
            },
            Change::Put {
                key: "j".into(),
                slot: Slot::Packed(b),
            },
        ])
        .unwrap();
        assert_eq!(ix.pack(1).unwrap().unwrap().live_bytes, 20);
        // An older write does not replace a newer one.
        let r = ix
            .apply(&[Change::Put {
                key: "j".into(),
                slot: Slot::Packed(loc(1, 40, 1)),
            }])
            .unwrap();
        assert_eq!(r, vec![false]);
        // A move only happens from where the piece still is.
        ix.apply(&[Change::AddPack {
            id: 2,
            info: info(),
        }])
        .unwrap();
        let moved = ix
            .apply(&[
                Change::Move {
                    key: "k".into(),
                    from: a,
                    to: loc(2, 40, 1),
                },
                Change::Move {
                    key: "j".into(),
                    from: a,
                    to: loc(2, 60, 2),
                },
            ])
            .unwrap();
        assert_eq!(moved, vec![true, false]);
        assert_eq!(ix.pack(1).unwrap().unwrap().live_count, 1);
        assert_eq!(ix.pack(2).unwrap().unwrap().live_count, 1);
        // A tombstone deletes only what it names or older.
        assert_eq!(
            ix.apply(&[Change::Delete {
                key: "j".into(),
                upto_seq: 1
            }])
            .unwrap(),
            vec![false]
        );
        assert_eq!(
            ix.apply(&[Change::Delete {
                key: "j".into(),
                upto_seq: 2
            }])
            .unwrap(),
            vec![true]
        );
        assert_eq!(ix.pack(1).unwrap().unwrap().live_count, 0);
        assert_eq!(ix.range("").unwrap().len(), 1);
        assert_eq!(ix.meta(META_MAX_SEQ).unwrap(), Some(2));
    }

    #[test]
    fn intents_counter_and_clear() {
        let ix = SqliteIndex::in_memory().unwrap();
        let put = Intent::PutObject {
            len: 5,
            crc: 9,
            seq: 40,
        };
        ix.apply(&[
            Change::AddPack {
                id: 1,
                info: info(),
            },
            Change::Put {
                key: "k".into(),
                slot: Slot::Packed(loc(1, 40, 3)),
            },
            Change::SetIntent {
                key: "big".into(),
                intent: put,
                owner: 5,
            },
            // A tombstone's own seq counts too.
            Change::BumpSeq(77),
        ])
        .unwrap();
        assert_eq!(
            ix.intent("big").unwrap(),
            Some(OwnedIntent {
                intent: put,
                owner: 5
            })
        );
        // Another writer's intent is not replaced; the owner's is.
        let other = Change::SetIntent {
            key: "big".into(),
            intent: Intent::DeleteObject { upto_seq: 1 },
            owner: 6,
        };
        assert_eq!(ix.apply(&[other]).unwrap(), vec![false]);
        let mine = Change::SetIntent {
            key: "big".into(),
            intent: put,
            owner: 5,
        };
        assert_eq!(ix.apply(&[mine]).unwrap(), vec![true]);
        // Another writer's intent is neither cleared nor taken but from its owner.
        let clear = |owner| Change::ClearIntent {
            key: "big".into(),
            owner,
        };
        assert_eq!(ix.apply(&[clear(6)]).unwrap(), vec![false]);
        let take = |from, to| Change::TakeIntent {
            key: "big".into(),
            from,
            to,
        };
        assert_eq!(ix.apply(&[take(6, 7)]).unwrap(), vec![false]);
        assert_eq!(
            ix.apply(&[take(5, 7), take(5, 8)]).unwrap(),
            vec![true, false]
        );
        assert_eq!(ix.intent("big").unwrap().map(|o| o.owner), Some(7));
        assert_eq!(ix.apply(&[clear(5), clear(7)]).unwrap(), vec![false, true]);
        ix.apply(&[Change::SetIntent {
            key: "big".into(),
            intent: put,
            owner: 5,
        }])
        .unwrap();
        assert_eq!(ix.meta(META_MAX_SEQ).unwrap(), Some(77));
        // A pack the index has is left as it is (its live counts too).
        assert_eq!(
            ix.apply(&[Change::AddPack {
                id: 1,
                info: info()
            }])
            .unwrap(),
            vec![false]
        );
        assert_eq!(ix.pack(1).unwrap().unwrap().live_count, 1);
        // A rebuild's clear keeps intents and the counter; a clear for other contents does not.
        ix.apply(&[Change::Clear { intents: false }]).unwrap();
        assert!(ix.is_empty().unwrap() && ix.packs().unwrap().is_empty());
        assert_eq!(ix.intents().unwrap().len(), 1);
        assert_eq!(ix.meta(META_MAX_SEQ).unwrap(), Some(77));
        ix.apply(&[Change::Clear { intents: true }]).unwrap();
        assert!(ix.intents().unwrap().is_empty());
        let del = Intent::DeleteObject { upto_seq: 12 };
        ix.apply(&[Change::SetIntent {
            key: "x".into(),
            intent: del,
            owner: 0,
        }])
        .unwrap();
        assert_eq!(ix.intent("x").unwrap().map(|o| o.intent), Some(del));
        assert_eq!(
            ix.apply(&[
                Change::ClearIntent {
                    key: "x".into(),
                    owner: 0
                },
                Change::ClearIntent {
                    key: "x".into(),
                    owner: 0
                }
            ])
            .unwrap(),
            vec![true, false]
        );
    }
}
