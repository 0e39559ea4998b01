//! The pack index: key → where the piece is, and pack → how much of it is live.
//!
//! The index is a cache of the packs (`fsck --rebuild-index` rebuilds it from them). It sits
//! behind [`PackIndex`] so a shared database can hold it when several nodes serve one bucket;
//! [`RedbIndex`] is the embedded default (one file per shard, ACID, fsync per commit).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::error::{Error, Result};

/// A pack's id: 48 bits of milliseconds since the Unix epoch, then 80 bits that make it unique,
/// so ids sort by the time the pack was opened.
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

    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(45);
        match self {
            Slot::Packed(l) => {
                v.push(0);
                v.extend_from_slice(&l.pack.to_le_bytes());
                v.extend_from_slice(&l.offset.to_le_bytes());
                v.extend_from_slice(&l.len.to_le_bytes());
                v.extend_from_slice(&l.crc.to_le_bytes());
                v.extend_from_slice(&l.seq.to_le_bytes());
            }
            Slot::Object { len, crc, seq } => {
                v.push(1);
                v.extend_from_slice(&len.to_le_bytes());
                v.extend_from_slice(&crc.to_le_bytes());
                v.extend_from_slice(&seq.to_le_bytes());
            }
        }
        v
    }

    fn decode(b: &[u8]) -> Option<Slot> {
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
        };
        let u32_at = |at: usize| -> Option<u32> {
            Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
        };
        match b.first()? {
            0 => Some(Slot::Packed(Loc {
                pack: u128::from_le_bytes(b.get(1..17)?.try_into().ok()?),
                offset: u64_at(17)?,
                len: u64_at(25)?,
                crc: u32_at(33)?,
                seq: u64_at(37)?,
            })),
            1 => Some(Slot::Object {
                len: u64_at(1)?,
                crc: u32_at(9)?,
                seq: u64_at(13)?,
            }),
            _ => None,
        }
    }
}

/// Whether a pack is in use or waiting to be deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackState {
    /// Its live pieces are read from it.
    Live,
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
    /// The share of the pack's payload that is garbage, 0.0 to 1.0.
    pub fn garbage_ratio(&self) -> f64 {
        if self.payload == 0 {
            return if self.live_count == 0 { 1.0 } else { 0.0 };
        }
        1.0 - (self.live_bytes as f64 / self.payload as f64)
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(57);
        for x in [
            self.size,
            self.payload,
            self.live_bytes,
            self.live_count,
            self.records,
            self.min_seq,
        ] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        match self.state {
            PackState::Live => v.extend_from_slice(&[0; 9]),
            PackState::Doomed { since_ms } => {
                v.push(1);
                v.extend_from_slice(&since_ms.to_le_bytes());
            }
        }
        v
    }

    fn decode(b: &[u8]) -> Option<PackInfo> {
        let u = |i: usize| -> Option<u64> {
            Some(u64::from_le_bytes(
                b.get(i * 8..i * 8 + 8)?.try_into().ok()?,
            ))
        };
        let state = match b.get(48)? {
            0 => PackState::Live,
            1 => PackState::Doomed {
                since_ms: u64::from_le_bytes(b.get(49..57)?.try_into().ok()?),
            },
            _ => return None,
        };
        Some(PackInfo {
            size: u(0)?,
            payload: u(1)?,
            live_bytes: u(2)?,
            live_count: u(3)?,
            records: u(4)?,
            min_seq: u(5)?,
            state,
        })
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

impl Intent {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(21);
        match self {
            Intent::PutObject { len, crc, seq } => {
                v.push(0);
                v.extend_from_slice(&len.to_le_bytes());
                v.extend_from_slice(&crc.to_le_bytes());
                v.extend_from_slice(&seq.to_le_bytes());
            }
            Intent::DeleteObject { upto_seq } => {
                v.push(1);
                v.extend_from_slice(&upto_seq.to_le_bytes());
            }
        }
        v
    }

    fn decode(b: &[u8]) -> Option<Intent> {
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
        };
        match b.first()? {
            0 => Some(Intent::PutObject {
                len: u64_at(1)?,
                crc: u32::from_le_bytes(b.get(9..13)?.try_into().ok()?),
                seq: u64_at(13)?,
            }),
            1 => Some(Intent::DeleteObject {
                upto_seq: u64_at(1)?,
            }),
            _ => None,
        }
    }
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
    /// Records an object operation about to start on `key` (replacing any other intent).
    SetIntent {
        /// The piece key.
        key: String,
        /// What is about to happen.
        intent: Intent,
    },
    /// Forgets `key`'s intent (the operation finished, or was undone).
    ClearIntent {
        /// The piece key.
        key: String,
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
    /// A pack's record.
    fn pack(&self, id: PackId) -> Result<Option<PackInfo>>;
    /// Every pack, by id.
    fn packs(&self) -> Result<Vec<(PackId, PackInfo)>>;
    /// Every pack and every piece, read at one moment (what a check compares with the packs
    /// while writes go on).
    fn snapshot(&self) -> Result<Snapshot>;
    /// The object operation in progress on `key`, if any.
    fn intent(&self, key: &str) -> Result<Option<Intent>>;
    /// Every key with an object operation in progress.
    fn intents(&self) -> Result<Vec<(String, Intent)>>;
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
}

const PIECES: TableDefinition<&str, &[u8]> = TableDefinition::new("pieces");
const PACKS: TableDefinition<u128, &[u8]> = TableDefinition::new("packs");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const INTENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("intents");

/// The embedded index: a redb database, in a file or in memory.
pub struct RedbIndex {
    db: Database,
    label: String,
}

impl fmt::Debug for RedbIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbIndex")
            .field("at", &self.label)
            .finish()
    }
}

impl RedbIndex {
    /// Opens (or creates) the index file at `path`. Another process holding it open is waited
    /// for up to `wait`, then refused with a clear error.
    pub fn open(path: &Path, wait: Duration) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::config(format!(
                    "cannot create the index directory {}: {e}",
                    dir.display()
                ))
            })?;
        }
        let label = path.display().to_string();
        if !path.exists() {
            create_whole(path)
                .map_err(|e| Error::config(format!("cannot create the pack index {label}: {e}")))?;
        }
        let deadline = std::time::Instant::now() + wait;
        let mut set_aside = false;
        let db = loop {
            match Database::create(path) {
                Ok(db) => break db,
                Err(redb::DatabaseError::DatabaseAlreadyOpen)
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                    return Err(Error::Backend {
                        op: "open",
                        key: None,
                        backend: label,
                        message: "the pack index is open in another process (one process at a \
                                  time may write a packed store)"
                            .into(),
                        retryable: true,
                    });
                }
                // The index is a cache of the packs: a damaged one is set aside and rebuilt
                // from them (by the caller's recovery, which finds an empty index).
                Err(e) if !set_aside => {
                    let aside = path.with_extension(format!("redb.damaged-{}", std::process::id()));
                    tracing::warn!(index = %label, error = %e, aside = %aside.display(), "the pack index cannot be opened: setting it aside and rebuilding it from the packs");
                    std::fs::rename(path, &aside)
                        .and_then(|()| create_whole(path))
                        .map_err(|io| Error::Corrupt {
                            key: String::new(),
                            backend: label.clone(),
                            detail: format!(
                                "the pack index cannot be opened ({e}) nor set aside ({io})"
                            ),
                        })?;
                    set_aside = true;
                }
                Err(e) => {
                    return Err(Error::Corrupt {
                        key: String::new(),
                        backend: label,
                        detail: format!("the pack index cannot be opened ({e})"),
                    });
                }
            }
        };
        Self::init(db, label)
    }

    /// An index held in memory (for memory stores).
    pub fn in_memory() -> Result<Self> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| Error::config(format!("in-memory index: {e}")))?;
        Self::init(db, "memory".into())
    }

    fn init(db: Database, label: String) -> Result<Self> {
        let me = RedbIndex { db, label };
        let tx = me.db.begin_write().map_err(|e| me.err(e))?;
        {
            tx.open_table(PIECES).map_err(|e| me.err(e))?;
            tx.open_table(PACKS).map_err(|e| me.err(e))?;
            tx.open_table(INTENTS).map_err(|e| me.err(e))?;
            let mut meta = tx.open_table(META).map_err(|e| me.err(e))?;
            let version = meta
                .get(META_VERSION)
                .map_err(|e| me.err(e))?
                .map(|v| v.value());
            match version {
                None => {
                    meta.insert(META_VERSION, 1).map_err(|e| me.err(e))?;
                }
                Some(1) => {}
                Some(v) => {
                    return Err(Error::config(format!(
                        "pack index {} has layout version {v}; this build reads version 1",
                        me.label
                    )));
                }
            }
        }
        tx.commit().map_err(|e| me.err(e))?;
        Ok(me)
    }

    fn err(&self, e: impl Into<redb::Error>) -> Error {
        let e: redb::Error = e.into();
        Error::Backend {
            op: "index",
            key: None,
            backend: self.label.clone(),
            message: e.to_string(),
            retryable: false,
        }
    }

    fn corrupt(&self, what: &str) -> Error {
        Error::Corrupt {
            key: what.to_string(),
            backend: self.label.clone(),
            detail: "the pack index holds an undecodable record; `piecestore fsck \
                     --rebuild-index` rebuilds it"
                .into(),
        }
    }
}

impl PackIndex for RedbIndex {
    fn get(&self, key: &str) -> Result<Option<Slot>> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(PIECES).map_err(|e| self.err(e))?;
        match t.get(key).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(v) => Slot::decode(v.value())
                .map(Some)
                .ok_or_else(|| self.corrupt(key)),
        }
    }

    fn range(&self, prefix: &str) -> Result<Vec<(String, Slot)>> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(PIECES).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in t.range(prefix..).map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let k = k.value();
            if !k.starts_with(prefix) {
                break;
            }
            let slot = Slot::decode(v.value()).ok_or_else(|| self.corrupt(k))?;
            out.push((k.to_string(), slot));
        }
        Ok(out)
    }

    fn apply(&self, changes: &[Change]) -> Result<Vec<bool>> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        let mut applied = Vec::with_capacity(changes.len());
        {
            let mut pieces = tx.open_table(PIECES).map_err(|e| self.err(e))?;
            let mut packs = tx.open_table(PACKS).map_err(|e| self.err(e))?;
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            let mut intents = tx.open_table(INTENTS).map_err(|e| self.err(e))?;
            let mut max_seq = meta
                .get(META_MAX_SEQ)
                .map_err(|e| self.err(e))?
                .map(|v| v.value())
                .unwrap_or(0);
            // Moves `len` live bytes into (+) or out of (-) a pack.
            let account = |packs: &mut redb::Table<u128, &[u8]>,
                           id: PackId,
                           len: u64,
                           add: bool|
             -> Result<()> {
                let info = packs
                    .get(id)
                    .map_err(|e| self.err(e))?
                    .map(|v| PackInfo::decode(v.value()));
                let Some(info) = info else { return Ok(()) };
                let mut info = info.ok_or_else(|| self.corrupt("pack record"))?;
                if add {
                    info.live_bytes += len;
                    info.live_count += 1;
                } else {
                    info.live_bytes = info.live_bytes.saturating_sub(len);
                    info.live_count = info.live_count.saturating_sub(1);
                }
                packs
                    .insert(id, info.encode().as_slice())
                    .map_err(|e| self.err(e))?;
                Ok(())
            };
            for change in changes {
                let took = match change {
                    Change::Clear { intents: all } => {
                        pieces.retain(|_, _| false).map_err(|e| self.err(e))?;
                        packs.retain(|_, _| false).map_err(|e| self.err(e))?;
                        if *all {
                            intents.retain(|_, _| false).map_err(|e| self.err(e))?;
                        }
                        true
                    }
                    Change::AddPack { id, .. }
                        if packs.get(*id).map_err(|e| self.err(e))?.is_some() =>
                    {
                        false
                    }
                    Change::AddPack { id, info } => {
                        let mut info = *info;
                        info.live_bytes = 0;
                        info.live_count = 0;
                        packs
                            .insert(*id, info.encode().as_slice())
                            .map_err(|e| self.err(e))?;
                        true
                    }
                    Change::Put { key, slot } => {
                        let old = pieces
                            .get(key.as_str())
                            .map_err(|e| self.err(e))?
                            .map(|v| Slot::decode(v.value()));
                        let old = match old {
                            Some(Some(s)) => Some(s),
                            Some(None) => return Err(self.corrupt(key)),
                            None => None,
                        };
                        if old.is_some_and(|o| o.seq() >= slot.seq()) {
                            false
                        } else {
                            if let Some(Slot::Packed(l)) = old {
                                account(&mut packs, l.pack, l.len, false)?;
                            }
                            if let Slot::Packed(l) = slot {
                                account(&mut packs, l.pack, l.len, true)?;
                            }
                            pieces
                                .insert(key.as_str(), slot.encode().as_slice())
                                .map_err(|e| self.err(e))?;
                            max_seq = max_seq.max(slot.seq());
                            true
                        }
                    }
                    Change::Delete { key, upto_seq } => {
                        let old = pieces
                            .get(key.as_str())
                            .map_err(|e| self.err(e))?
                            .and_then(|v| Slot::decode(v.value()));
                        match old {
                            Some(o) if o.seq() <= *upto_seq => {
                                if let Slot::Packed(l) = o {
                                    account(&mut packs, l.pack, l.len, false)?;
                                }
                                pieces.remove(key.as_str()).map_err(|e| self.err(e))?;
                                true
                            }
                            _ => false,
                        }
                    }
                    Change::Move { key, from, to } => {
                        let old = pieces
                            .get(key.as_str())
                            .map_err(|e| self.err(e))?
                            .and_then(|v| Slot::decode(v.value()));
                        if old == Some(Slot::Packed(*from)) {
                            account(&mut packs, from.pack, from.len, false)?;
                            account(&mut packs, to.pack, to.len, true)?;
                            pieces
                                .insert(key.as_str(), Slot::Packed(*to).encode().as_slice())
                                .map_err(|e| self.err(e))?;
                            true
                        } else {
                            false
                        }
                    }
                    Change::Doom { id, since_ms } => {
                        let info = packs
                            .get(*id)
                            .map_err(|e| self.err(e))?
                            .and_then(|v| PackInfo::decode(v.value()));
                        match info {
                            Some(mut info) => {
                                info.state = PackState::Doomed {
                                    since_ms: *since_ms,
                                };
                                packs
                                    .insert(*id, info.encode().as_slice())
                                    .map_err(|e| self.err(e))?;
                                true
                            }
                            None => false,
                        }
                    }
                    Change::RemovePack { id } => {
                        packs.remove(*id).map_err(|e| self.err(e))?.is_some()
                    }
                    Change::SetIntent { key, intent } => {
                        if let Intent::PutObject { seq, .. } = intent {
                            max_seq = max_seq.max(*seq);
                        }
                        intents
                            .insert(key.as_str(), intent.encode().as_slice())
                            .map_err(|e| self.err(e))?;
                        true
                    }
                    Change::ClearIntent { key } => intents
                        .remove(key.as_str())
                        .map_err(|e| self.err(e))?
                        .is_some(),
                    Change::BumpSeq(seq) => {
                        max_seq = max_seq.max(*seq);
                        true
                    }
                    Change::SetMeta { name, value } => {
                        meta.insert(*name, *value).map_err(|e| self.err(e))?;
                        true
                    }
                };
                applied.push(took);
            }
            meta.insert(META_MAX_SEQ, max_seq)
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(applied)
    }

    fn pack(&self, id: PackId) -> Result<Option<PackInfo>> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(PACKS).map_err(|e| self.err(e))?;
        match t.get(id).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(v) => PackInfo::decode(v.value())
                .map(Some)
                .ok_or_else(|| self.corrupt("pack record")),
        }
    }

    fn packs(&self) -> Result<Vec<(PackId, PackInfo)>> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(PACKS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let info = PackInfo::decode(v.value()).ok_or_else(|| self.corrupt("pack record"))?;
            out.push((k.value(), info));
        }
        Ok(out)
    }

    fn meta(&self, name: &str) -> Result<Option<u64>> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(META).map_err(|e| self.err(e))?;
        Ok(t.get(name).map_err(|e| self.err(e))?.map(|v| v.value()))
    }

    fn len(&self) -> Result<u64> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(PIECES).map_err(|e| self.err(e))?;
        t.len().map_err(|e| self.err(e))
    }

    fn snapshot(&self) -> Result<Snapshot> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(PACKS).map_err(|e| self.err(e))?;
        let mut packs = Vec::new();
        for item in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let info = PackInfo::decode(v.value()).ok_or_else(|| self.corrupt("pack record"))?;
            packs.push((k.value(), info));
        }
        let t = tx.open_table(PIECES).map_err(|e| self.err(e))?;
        let mut pieces = Vec::new();
        for item in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let slot = Slot::decode(v.value()).ok_or_else(|| self.corrupt(k.value()))?;
            pieces.push((k.value().to_string(), slot));
        }
        Ok((packs, pieces))
    }

    fn intent(&self, key: &str) -> Result<Option<Intent>> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(INTENTS).map_err(|e| self.err(e))?;
        match t.get(key).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(v) => Intent::decode(v.value())
                .map(Some)
                .ok_or_else(|| self.corrupt(key)),
        }
    }

    fn intents(&self) -> Result<Vec<(String, Intent)>> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(INTENTS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let intent = Intent::decode(v.value()).ok_or_else(|| self.corrupt(k.value()))?;
            out.push((k.value().to_string(), intent));
        }
        Ok(out)
    }

    fn describe(&self) -> String {
        self.label.clone()
    }
}

/// Creates an empty index at `path` whole or not at all: built under a temporary name, then
/// renamed (a process killed while redb creates a file leaves one it cannot open).
fn create_whole(path: &Path) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("redb.new-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let db = Database::create(&tmp).map_err(std::io::Error::other)?;
    drop(db);
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Where the index of a store is kept when the config does not say: next to the packs for a
/// local directory, else in the user's cache directory, one file per bucket and shard.
pub fn default_index_path(root_dir: Option<&Path>, label: &str, shard: usize) -> PathBuf {
    if let Some(root) = root_dir {
        return root.join(".piecestore").join("index.redb");
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
        .join(format!("shard-{shard}.redb"))
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
        let ix = RedbIndex::in_memory().unwrap();
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
        let ix = RedbIndex::in_memory().unwrap();
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
            },
            // A tombstone's own seq counts too.
            Change::BumpSeq(77),
        ])
        .unwrap();
        assert_eq!(ix.intent("big").unwrap(), Some(put));
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
        }])
        .unwrap();
        assert_eq!(ix.intent("x").unwrap(), Some(del));
        assert_eq!(
            ix.apply(&[
                Change::ClearIntent { key: "x".into() },
                Change::ClearIntent { key: "x".into() }
            ])
            .unwrap(),
            vec![true, false]
        );
    }

    #[test]
    fn pack_names_round_trip() {
        let id: PackId = (1_700_000_000_000u128 << 80) | 12345;
        assert_eq!(parse_pack_name(&pack_name(id)), Some(id));
        assert_eq!(pack_millis(id), 1_700_000_000_000);
        assert_eq!(parse_pack_name("nope.pack"), None);
    }
}
