//! The embedded index: one SQLite database per shard, in WAL mode.
//!
//! Why SQLite (measured on this project's machine, 3 rows a commit, 10,000 commits): a commit
//! that does not wait for the disk costs about 15 µs (redb, the earlier index: about 60 µs,
//! which was 40% of a packed put on a local disk); LMDB costs 2–5 µs but limits keys to 511
//! bytes (piece keys may have 1,024) and can be corrupted by a power loss without its syncs.
//! In WAL mode with `synchronous = NORMAL` a commit appends to the log without an `fsync` and
//! a power loss can only roll back the newest commits, never corrupt the database; a durable
//! commit switches to `FULL` for that commit, which makes every earlier one durable too.
//! Readers never wait for the writer, and several processes open one database at once (each
//! writes packs of its own; see the packer's `lease` module for what they share).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::{
    Change, Intent, META_MAX_SEQ, OwnedIntent, PackId, PackIndex, PackInfo, PackState, Slot,
    Snapshot,
};
use crate::error::{Error, Result};

/// How long a commit waits for another connection's (process's) write to end.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The layout of the database this build writes and reads.
const LAYOUT: u64 = 2;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS pieces (key TEXT PRIMARY KEY, slot BLOB NOT NULL) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS packs (id BLOB PRIMARY KEY, info BLOB NOT NULL) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS intents (key TEXT PRIMARY KEY, intent BLOB NOT NULL) WITHOUT ROWID;
";

/// The index of one shard in SQLite: a file (with its `-wal` and `-shm`), or memory.
pub struct SqliteIndex {
    label: String,
    writer: Mutex<Connection>,
    /// The sequence counter as lazy commits raised it; written with the next durable commit
    /// (after a crash, recovery raises it again from the records it replays).
    max_seq: std::sync::atomic::AtomicU64,
    readers: Mutex<Vec<Connection>>,
    /// How to open another reading connection.
    target: Target,
    /// The writers' turn: held by the process whose commit runs ([`Turn`]; none in memory).
    turn: Option<Turn>,
    /// Checkpoints the log in a thread of its own (none in memory).
    checkpoints: Option<Checkpointer>,
}

enum Target {
    File(PathBuf),
    Memory,
}

impl fmt::Debug for SqliteIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteIndex")
            .field("at", &self.label)
            .finish()
    }
}

fn pack_key(id: PackId) -> [u8; 16] {
    id.to_be_bytes()
}

impl SqliteIndex {
    /// Opens (or creates) the index at `path`; other processes may have it open too. A
    /// database that is damaged (not a database, or corrupt) is set aside
    /// (`<path>.damaged-<pid>`) and a new one created: the index is a cache of the packs, and
    /// the caller's recovery rebuilds it from them. Any other failure (a lock another process
    /// holds for longer than the busy timeout, a full disk) is returned as it is.
    pub fn open(path: &Path) -> Result<Self> {
        let label = path.display().to_string();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::config(format!(
                    "cannot create the index directory {}: {e}",
                    dir.display()
                ))
            })?;
        }
        // The index of releases before this one (redb): a cache, rebuilt from the packs.
        let old = path.with_extension("redb");
        if old.exists() {
            tracing::info!(old = %old.display(), "removing the pack index of an earlier release (the packs rebuild it)");
            let _ = std::fs::remove_file(&old);
        }
        let open = || -> rusqlite::Result<Connection> {
            let c = Connection::open(path)?;
            c.busy_timeout(Duration::from_secs(10))?;
            c.pragma_update(None, "journal_mode", "WAL")?;
            c.pragma_update(None, "synchronous", "NORMAL")?;
            tune(&c)?;
            c.execute_batch(SCHEMA)?;
            Ok(c)
        };
        // A database several processes create at once answers some of them "busy" without
        // waiting out the busy timeout (turning on WAL, or a schema read that must become a
        // write once another process wrote first): such an open is tried again.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut pause = Duration::from_millis(2);
        let first = loop {
            match open() {
                Err(e) if busy(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                r => break r,
            }
        };
        let writer = match first {
            Ok(c) => c,
            Err(e) if !damaged(&e) => {
                return Err(Error::Backend {
                    op: "open",
                    key: None,
                    backend: label,
                    message: format!(
                        "the pack index cannot be opened: {e}{}",
                        read_only_hint(path)
                    ),
                    retryable: busy(&e),
                });
            }
            // Other processes using it would go on with the damaged file, apart from everyone
            // who opens it from now on: refused while any of them lives.
            Err(e) if crate::pack::lease::any_alive(&super::super::sibling(path, "writers"), 0) => {
                return Err(Error::Corrupt {
                    key: String::new(),
                    backend: label,
                    detail: format!(
                        "the pack index cannot be opened ({e}), and other processes have it \
                         open; stop them, then open the store again (the index is rebuilt from \
                         the packs)"
                    ),
                });
            }
            Err(e) => {
                let aside = path.with_extension(format!("sqlite.damaged-{}", std::process::id()));
                tracing::warn!(index = %label, error = %e, aside = %aside.display(), "the pack index cannot be opened: setting it aside and rebuilding it from the packs");
                for suffix in ["", "-wal", "-shm"] {
                    let from = PathBuf::from(format!("{}{suffix}", path.display()));
                    if from.exists() {
                        let to = PathBuf::from(format!("{}{suffix}", aside.display()));
                        std::fs::rename(&from, &to).map_err(|io| Error::Corrupt {
                            key: String::new(),
                            backend: label.clone(),
                            detail: format!(
                                "the pack index cannot be opened ({e}) nor set aside ({io})"
                            ),
                        })?;
                    }
                }
                open().map_err(|e| Error::Corrupt {
                    key: String::new(),
                    backend: label.clone(),
                    detail: format!("the pack index cannot be opened ({e})"),
                })?
            }
        };
        Self::init(writer, Target::File(path.to_path_buf()), label)
    }

    /// An index held in memory (for memory stores).
    pub fn in_memory() -> Result<Self> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let uri = format!(
            "file:piecestore-index-{}-{}?mode=memory",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let writer = open_memory(&uri)
            .and_then(|c| c.execute_batch(SCHEMA).map(|()| c))
            .map_err(|e| Error::config(format!("in-memory index: {e}")))?;
        Self::init(writer, Target::Memory, "memory".into())
    }

    fn init(writer: Connection, target: Target, label: String) -> Result<Self> {
        let (turn, checkpoints) = match &target {
            Target::File(p) => {
                let checkpoints = Checkpointer::start(p.clone(), label.clone());
                match checkpoints {
                    Some(_) => writer.wal_hook(Some(note_wal_frames)),
                    // Without the thread, the commits checkpoint, as SQLite does by default.
                    None => writer
                        .pragma_update(None, "wal_autocheckpoint", CHECKPOINT_FRAMES)
                        .map_err(|e| Error::config(format!("index {label}: {e}")))?,
                }
                (Turn::open(p), checkpoints)
            }
            Target::Memory => (None, None),
        };
        let me = SqliteIndex {
            label,
            writer: Mutex::new(writer),
            max_seq: std::sync::atomic::AtomicU64::new(0),
            turn,
            checkpoints,
            readers: Mutex::new(Vec::new()),
            target,
        };
        super::check_layout(&me, LAYOUT)?;
        Ok(me)
    }

    fn err(&self, e: rusqlite::Error) -> Error {
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

    /// Runs `f` on a reading connection of the pool (one is opened when none is free). An
    /// in-memory database (shared cache, table locks) is read through its one connection.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        if let Target::Memory = self.target {
            let conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            return f(&conn).map_err(|e| self.err(e));
        }
        let taken = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match taken {
            Some(c) => c,
            None => match &self.target {
                Target::File(p) => Connection::open_with_flags(
                    p,
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .and_then(|c| {
                    c.busy_timeout(Duration::from_secs(10))?;
                    tune(&c)?;
                    Ok(c)
                }),
                Target::Memory => unreachable!("read through the writer"),
            }
            .map_err(|e| self.err(e))?,
        };
        let out = f(&conn).map_err(|e| self.err(e));
        let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < 64 {
            pool.push(conn);
        }
        out
    }

    fn apply_with(&self, changes: &[Change], durable: bool) -> Result<Vec<bool>> {
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        // The usual busy handler, whatever an interrupted `try_apply_lazy` left.
        conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| self.err(e))?;
        if durable {
            conn.pragma_update(None, "synchronous", "FULL")
                .map_err(|e| self.err(e))?;
        }
        let result = match &self.turn {
            Some(turn) => self.apply_in_turn(&mut conn, turn, changes, durable),
            None => self
                .apply_in(&mut conn, changes, durable, true)
                .map(Option::unwrap_or_default),
        };
        if durable {
            conn.pragma_update(None, "synchronous", "NORMAL")
                .map_err(|e| self.err(e))?;
        }
        result
    }

    /// [`SqliteIndex::apply_in`], waiting for the index by the writers' [`Turn`] rather than
    /// SQLite's busy handler: that one sleeps 1, 2, 5, 10 ms… between tries while another
    /// process's commit holds the index for about 100 µs, so a process that found the index
    /// taken slept with all its puts waiting (on 4 processes × 16 puts in flight the machine
    /// was a fifth idle, p99 19 ms); the turn wakes it the moment that commit ends.
    fn apply_in_turn(
        &self,
        conn: &mut Connection,
        turn: &Turn,
        changes: &[Change],
        durable: bool,
    ) -> Result<Vec<bool>> {
        conn.busy_timeout(Duration::ZERO).map_err(|e| self.err(e))?;
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        let mut unheld = 0u32;
        let result = loop {
            match self.apply_in(conn, changes, durable, false) {
                Ok(Some(took)) => break Ok(took),
                Ok(None) if std::time::Instant::now() < deadline => {
                    if turn.wait() {
                        unheld = 0;
                    } else {
                        // Taken by something that holds no turn (a process of an earlier
                        // release, a recovery, a checkpoint that restarts the log): tried
                        // again after pauses that grow, 50 µs to 3.2 ms.
                        unheld = (unheld + 1).min(64);
                        std::thread::sleep(Duration::from_micros(50 * u64::from(unheld)));
                    }
                }
                Ok(None) => {
                    break Err(Error::Backend {
                        op: "index",
                        key: None,
                        backend: self.label.clone(),
                        message: format!(
                            "the index stayed locked by another process for {}s",
                            BUSY_TIMEOUT.as_secs()
                        ),
                        retryable: true,
                    });
                }
                Err(e) => break Err(e),
            }
        };
        conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| self.err(e))?;
        result
    }

    /// Applies `changes` in one transaction; when told not to `wait`, `Ok(None)` if another
    /// connection holds the write lock (nothing applied).
    fn apply_in(
        &self,
        conn: &mut Connection,
        changes: &[Change],
        durable: bool,
        wait: bool,
    ) -> Result<Option<Vec<bool>>> {
        use std::sync::atomic::Ordering;
        let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) if !wait && busy(&e) => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        // Held until the transaction ended (declared after it, dropped before it only on an
        // error, when a waiter that wakes early tries once more).
        let _turn = self.turn.as_ref().and_then(Turn::hold);
        let mut t = Tables {
            tx: &tx,
            me: self,
            packs: HashMap::new(),
        };
        let mut max_seq = t
            .meta(META_MAX_SEQ)?
            .unwrap_or(0)
            .max(self.max_seq.load(Ordering::SeqCst));
        let mut applied = Vec::with_capacity(changes.len());
        for change in changes {
            let took = match change {
                Change::Clear { intents } => {
                    t.exec("DELETE FROM pieces", [])?;
                    t.exec("DELETE FROM packs", [])?;
                    t.packs.clear();
                    if *intents {
                        t.exec("DELETE FROM intents", [])?;
                    }
                    true
                }
                Change::AddPack { id, info } => {
                    if t.pack(*id)?.is_some() {
                        false
                    } else {
                        let mut info = *info;
                        info.live_bytes = 0;
                        info.live_count = 0;
                        t.packs.insert(*id, Some(info));
                        true
                    }
                }
                Change::PackGrew {
                    id,
                    size,
                    payload,
                    records,
                    min_seq,
                } => match t.pack(*id)? {
                    Some(mut info) if info.size < *size => {
                        info.size = *size;
                        info.payload = *payload;
                        info.records = *records;
                        info.min_seq = *min_seq;
                        t.packs.insert(*id, Some(info));
                        true
                    }
                    _ => false,
                },
                Change::Seal { id, size } => match t.pack(*id)? {
                    Some(mut info) if info.state == PackState::Active => {
                        info.state = PackState::Live;
                        info.size = *size;
                        t.packs.insert(*id, Some(info));
                        true
                    }
                    _ => false,
                },
                Change::Insert { key, slot } => {
                    let old = t.piece(key)?;
                    if old == Some(*slot) {
                        true
                    } else if old.is_some() || t.intent(key)?.is_some() {
                        false
                    } else {
                        t.set_piece(key, None, slot)?;
                        max_seq = max_seq.max(slot.seq());
                        true
                    }
                }
                Change::Put { key, slot } => {
                    let old = t.piece(key)?;
                    if old.is_some_and(|o| o.seq() >= slot.seq()) {
                        false
                    } else {
                        t.set_piece(key, old, slot)?;
                        max_seq = max_seq.max(slot.seq());
                        true
                    }
                }
                Change::Delete { key, upto_seq } => match t.piece(key)? {
                    Some(o) if o.seq() <= *upto_seq => {
                        if let Slot::Packed(l) = o {
                            t.account(l.pack, l.len, false)?;
                        }
                        t.exec("DELETE FROM pieces WHERE key = ?1", params![key])?;
                        true
                    }
                    _ => false,
                },
                Change::Move { key, from, to } => {
                    if t.piece(key)? == Some(Slot::Packed(*from)) {
                        t.account(from.pack, from.len, false)?;
                        t.account(to.pack, to.len, true)?;
                        t.exec(
                            "INSERT OR REPLACE INTO pieces (key, slot) VALUES (?1, ?2)",
                            params![key, Slot::Packed(*to).encode()],
                        )?;
                        true
                    } else {
                        false
                    }
                }
                Change::Doom { id, since_ms } => match t.pack(*id)? {
                    Some(mut info) => {
                        info.state = PackState::Doomed {
                            since_ms: *since_ms,
                        };
                        t.packs.insert(*id, Some(info));
                        true
                    }
                    None => false,
                },
                Change::RemovePack { id } => {
                    let had = t.pack(*id)?.is_some();
                    t.packs.insert(*id, None);
                    had
                }
                Change::SetIntent { key, intent, owner } => {
                    if t.intent(key)?.is_some_and(|o| o.owner != *owner) {
                        false
                    } else {
                        if let Intent::PutObject { seq, .. } = intent {
                            max_seq = max_seq.max(*seq);
                        }
                        let owned = OwnedIntent {
                            intent: *intent,
                            owner: *owner,
                        };
                        t.exec(
                            "INSERT OR REPLACE INTO intents (key, intent) VALUES (?1, ?2)",
                            params![key, owned.encode()],
                        )?;
                        true
                    }
                }
                Change::TakeIntent { key, from, to } => match t.intent(key)? {
                    Some(o) if o.owner == *from => {
                        let owned = OwnedIntent {
                            intent: o.intent,
                            owner: *to,
                        };
                        t.exec(
                            "INSERT OR REPLACE INTO intents (key, intent) VALUES (?1, ?2)",
                            params![key, owned.encode()],
                        )?;
                        true
                    }
                    _ => false,
                },
                Change::ClearIntent { key, owner } => match t.intent(key)? {
                    Some(o) if o.owner == *owner => {
                        t.exec("DELETE FROM intents WHERE key = ?1", params![key])?;
                        true
                    }
                    _ => false,
                },
                Change::BumpSeq(seq) => {
                    max_seq = max_seq.max(*seq);
                    true
                }
                Change::SetMeta { name, value } => {
                    t.set_meta(name, *value)?;
                    true
                }
            };
            applied.push(took);
        }
        if durable {
            t.set_meta(META_MAX_SEQ, max_seq)?;
        }
        t.flush_packs()?;
        drop(t);
        tx.commit().map_err(|e| self.err(e))?;
        self.max_seq.fetch_max(max_seq, Ordering::SeqCst);
        if let Some(c) = &self.checkpoints
            && WAL_FRAMES.replace(0) >= CHECKPOINT_FRAMES
        {
            c.due();
        }
        Ok(Some(applied))
    }
}

/// One transaction's tables, with the pack records it touches cached until its end (a group
/// of many pieces in one pack updates that pack's counters once).
struct Tables<'a> {
    tx: &'a rusqlite::Transaction<'a>,
    me: &'a SqliteIndex,
    /// Packs read or changed: `None` removed.
    packs: HashMap<PackId, Option<PackInfo>>,
}

impl Tables<'_> {
    fn exec(&self, sql: &str, p: impl rusqlite::Params) -> Result<usize> {
        self.tx
            .prepare_cached(sql)
            .and_then(|mut s| s.execute(p))
            .map_err(|e| self.me.err(e))
    }

    fn piece(&self, key: &str) -> Result<Option<Slot>> {
        let raw: Option<Vec<u8>> = self
            .tx
            .prepare_cached("SELECT slot FROM pieces WHERE key = ?1")
            .and_then(|mut s| s.query_row(params![key], |r| r.get(0)).optional())
            .map_err(|e| self.me.err(e))?;
        raw.map(|b| Slot::decode(&b).ok_or_else(|| self.me.corrupt(key)))
            .transpose()
    }

    fn intent(&self, key: &str) -> Result<Option<OwnedIntent>> {
        let raw: Option<Vec<u8>> = self
            .tx
            .prepare_cached("SELECT intent FROM intents WHERE key = ?1")
            .and_then(|mut s| s.query_row(params![key], |r| r.get(0)).optional())
            .map_err(|e| self.me.err(e))?;
        raw.map(|b| OwnedIntent::decode(&b).ok_or_else(|| self.me.corrupt(key)))
            .transpose()
    }

    fn pack(&mut self, id: PackId) -> Result<Option<PackInfo>> {
        if let Some(p) = self.packs.get(&id) {
            return Ok(*p);
        }
        let raw: Option<Vec<u8>> = self
            .tx
            .prepare_cached("SELECT info FROM packs WHERE id = ?1")
            .and_then(|mut s| s.query_row(params![pack_key(id)], |r| r.get(0)).optional())
            .map_err(|e| self.me.err(e))?;
        let info = raw
            .map(|b| PackInfo::decode(&b).ok_or_else(|| self.me.corrupt("pack record")))
            .transpose()?;
        self.packs.insert(id, info);
        Ok(info)
    }

    /// Points `key` (which held `old`) at `slot`, moving the live bytes between packs.
    fn set_piece(&mut self, key: &str, old: Option<Slot>, slot: &Slot) -> Result<()> {
        if let Some(Slot::Packed(l)) = old {
            self.account(l.pack, l.len, false)?;
        }
        if let Slot::Packed(l) = slot {
            self.account(l.pack, l.len, true)?;
        }
        self.exec(
            "INSERT OR REPLACE INTO pieces (key, slot) VALUES (?1, ?2)",
            params![key, slot.encode()],
        )
        .map(drop)
    }

    /// Moves `len` live bytes into (+) or out of (-) a pack.
    fn account(&mut self, id: PackId, len: u64, add: bool) -> Result<()> {
        let Some(mut info) = self.pack(id)? else {
            return Ok(());
        };
        if add {
            info.live_bytes += len;
            info.live_count += 1;
        } else {
            info.live_bytes = info.live_bytes.saturating_sub(len);
            info.live_count = info.live_count.saturating_sub(1);
        }
        self.packs.insert(id, Some(info));
        Ok(())
    }

    fn flush_packs(&mut self) -> Result<()> {
        for (id, info) in std::mem::take(&mut self.packs) {
            match info {
                Some(info) => self.exec(
                    "INSERT OR REPLACE INTO packs (id, info) VALUES (?1, ?2)",
                    params![pack_key(id), info.encode()],
                )?,
                None => self.exec("DELETE FROM packs WHERE id = ?1", params![pack_key(id)])?,
            };
        }
        Ok(())
    }

    fn meta(&self, name: &str) -> Result<Option<u64>> {
        self.tx
            .prepare_cached("SELECT value FROM meta WHERE name = ?1")
            .and_then(|mut s| {
                s.query_row(params![name], |r| r.get::<_, i64>(0))
                    .optional()
            })
            .map(|v| v.map(|v| v as u64))
            .map_err(|e| self.me.err(e))
    }

    fn set_meta(&self, name: &str, value: u64) -> Result<()> {
        self.exec(
            "INSERT OR REPLACE INTO meta (name, value) VALUES (?1, ?2)",
            params![name, value as i64],
        )
        .map(drop)
    }
}

/// Why an index beside `path` cannot be written, when its directory is on a read-only
/// filesystem (a packed store writes its index, leases and packs there, even to read).
fn read_only_hint(path: &Path) -> &'static str {
    let Some(dir) = path.parent() else {
        return "";
    };
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return "";
    };
    // SAFETY: `c` is a NUL-terminated path.
    let rc = unsafe { libc::access(c.as_ptr(), libc::W_OK) };
    if rc == 0 {
        return "";
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EROFS) => {
            " (its directory is on a read-only filesystem: a packed store writes its index \
             there, even to read; remount it read-write)"
        }
        Some(libc::EACCES) => " (its directory is not writable by this user)",
        _ => "",
    }
}

/// The writers' turn on a shard's index: a file lock (`<index>.commit`) a process's commit
/// holds exclusively from the moment it has the index until its transaction ended; a writer
/// that found the index taken waits for a shared hold of it, which the kernel grants the
/// moment that commit ends (or its process dies). Only a wake-up: SQLite's own lock is what
/// keeps commits apart, so a process without a turn (an earlier release) is still safe.
struct Turn(std::fs::File);

/// The turn held by a commit, let go when dropped.
struct TurnHeld<'a>(&'a std::fs::File);

impl Drop for TurnHeld<'_> {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

impl Turn {
    /// Opens (creates) the turn of the index at `path`; none where it cannot be created (a
    /// read-only directory: the index cannot be written there either), and the busy handler
    /// waits.
    fn open(path: &Path) -> Option<Turn> {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(super::super::sibling(path, "commit"))
            .inspect_err(|e| tracing::debug!(index = %path.display(), error = %e, "no commit turn file: waiting for the index by polling"))
            .ok()
            .map(Turn)
    }

    /// Takes the turn (the index is this connection's already, so only another writer's
    /// brief shared hold can delay it).
    fn hold(&self) -> Option<TurnHeld<'_>> {
        self.0.lock().ok().map(|()| TurnHeld(&self.0))
    }

    /// Waits until no commit holds the turn; whether one held it.
    fn wait(&self) -> bool {
        let held = match self.0.try_lock_shared() {
            Ok(()) => false,
            Err(std::fs::TryLockError::WouldBlock) if self.0.lock_shared().is_ok() => true,
            Err(_) => return false,
        };
        let _ = self.0.unlock();
        held
    }
}

/// Log frames past which a commit asks for a checkpoint: SQLite's own default is 1,000; a
/// larger log is checkpointed less often, each checkpoint copying a page the commits wrote
/// many times once.
const CHECKPOINT_FRAMES: i32 = 4096;

thread_local! {
    /// The log's length in frames after the last commit on this thread ([`note_wal_frames`]).
    static WAL_FRAMES: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
}

/// The writer's log hook: notes the log's length after a commit, for the committer to decide
/// whether to ask for a checkpoint once its transaction has ended.
fn note_wal_frames(_: &rusqlite::hooks::Wal, frames: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.set(frames);
    Ok(())
}

/// Checkpoints a shard's log (copies its pages into the database, so that the log can start
/// over) in a thread of its own, on a connection of its own, never in a commit.
///
/// With SQLite's automatic checkpoints the commit that took the log past the limit copied
/// it, and, while other processes' readers kept it from starting over, every commit after
/// it checkpointed again, each with two `fsync`s, holding up that process's next write group
/// and leaving other processes' writers asleep in the busy handler. Measured on 4 processes
/// × 16 puts in flight on ext4: 760 `fsync`s a second (benches/RESULTS.md, "Checkpoints off
/// the commit path").
struct Checkpointer {
    due: std::sync::mpsc::SyncSender<()>,
}

impl Checkpointer {
    /// Starts the thread (none if it cannot be started); it ends once the index (this
    /// sender) is dropped.
    fn start(path: PathBuf, label: String) -> Option<Self> {
        let (due, asked) = std::sync::mpsc::sync_channel::<()>(1);
        let run = move || {
            let mut conn = None;
            while asked.recv().is_ok() {
                if conn.is_none() {
                    conn = Connection::open_with_flags(
                        &path,
                        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )
                    .and_then(|c| {
                        tune(&c)?;
                        // How long a restart waits for the commit that holds the index.
                        c.busy_timeout(Duration::from_millis(100))?;
                        Ok(c)
                    })
                    .inspect_err(|e| tracing::warn!(index = %label, error = %e, "opening the index to checkpoint it failed"))
                    .ok();
                }
                if let Some(c) = &conn {
                    checkpoint(c, &label);
                }
                // At most one checkpoint per pause: while readers keep the log from starting
                // over, the commits ask for one after every write.
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        match std::thread::Builder::new()
            .name("piecestore-checkpoint".into())
            .spawn(run)
        {
            Ok(_) => Some(Checkpointer { due }),
            Err(e) => {
                tracing::warn!(error = %e, "starting the index's checkpoint thread failed: its commits checkpoint the log");
                None
            }
        }
    }

    /// Asks for a checkpoint (one asked already and not started yet covers this one).
    fn due(&self) {
        let _ = self.due.try_send(());
    }
}

/// One checkpoint of the log on `c` (the checkpoint thread's connection): passive first (it
/// copies what no reader still needs and waits for no one: the bulk of the work, while
/// commits go on); then, if the log is still past the threshold (commits came meanwhile, so
/// the next writer would not start it over, and it would only grow), a restart, which holds
/// the index for the few pages left and until the readers of the log are done, so that the
/// next commit writes the log from its start again. A checkpoint another process runs at the
/// same moment makes this one answer busy, and it is left to that one.
fn checkpoint(c: &Connection, label: &str) {
    let run = |mode: &str| -> rusqlite::Result<i64> {
        c.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| r.get(1))
    };
    let result = run("PASSIVE").and_then(|frames| {
        if frames >= i64::from(CHECKPOINT_FRAMES) {
            run("RESTART")?;
        }
        Ok(())
    });
    if let Err(e) = result
        && !busy(&e)
    {
        tracing::warn!(index = %label, error = %e, "checkpointing the index failed");
    }
}

/// Settings of every connection: pages are read with `pread`, not through a memory map, and
/// no commit checkpoints the log ([`Checkpointer`] does).
///
/// No memory map (`mmap_size` 0, SQLite's own default) because the index is shared by many
/// processes: whenever another connection has changed the database, SQLite unmaps the whole
/// map at the start of the next read transaction, so with writers in other processes every
/// read paid an `munmap`, the page faults to map it again and the TLB shootdowns on every
/// core. With a 1 GiB map, 4 processes × 16 puts in flight ran at about 25,000 puts/s; without
/// one, about 32,000 (+30%); a single process reading alone lost about 5% on gets
/// (benches/RESULTS.md, "Many processes on one packed store").
fn tune(c: &Connection) -> rusqlite::Result<()> {
    c.pragma_update(None, "mmap_size", 0i64)?;
    c.pragma_update(None, "wal_autocheckpoint", 0)?;
    c.pragma_update(None, "temp_store", "MEMORY")
}

fn open_memory(uri: &str) -> rusqlite::Result<Connection> {
    Connection::open_with_flags(
        uri,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
}

/// Whether a failure means another connection holds the lock the call needed.
fn busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Whether an open failure means the database file is damaged (set aside and rebuilt), not
/// that it is busy or the disk is full.
fn damaged(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
    )
}

impl PackIndex for SqliteIndex {
    fn get(&self, key: &str) -> Result<Option<Slot>> {
        let raw: Option<Vec<u8>> = self.read(|c| {
            c.prepare_cached("SELECT slot FROM pieces WHERE key = ?1")?
                .query_row(params![key], |r| r.get(0))
                .optional()
        })?;
        raw.map(|b| Slot::decode(&b).ok_or_else(|| self.corrupt(key)))
            .transpose()
    }

    fn lookup(&self, key: &str) -> Result<(Option<Slot>, Option<OwnedIntent>)> {
        type Raw = (Option<Vec<u8>>, Option<Vec<u8>>);
        let (slot, intent): Raw = self.read(|c| {
            c.prepare_cached(
                "SELECT (SELECT slot FROM pieces WHERE key = ?1), \
                        (SELECT intent FROM intents WHERE key = ?1)",
            )?
            .query_row(params![key], |r| Ok((r.get(0)?, r.get(1)?)))
        })?;
        let slot = slot
            .map(|b| Slot::decode(&b).ok_or_else(|| self.corrupt(key)))
            .transpose()?;
        let intent = intent
            .map(|b| OwnedIntent::decode(&b).ok_or_else(|| self.corrupt(key)))
            .transpose()?;
        Ok((slot, intent))
    }

    fn range(&self, prefix: &str) -> Result<Vec<(String, Slot)>> {
        let rows: Vec<(String, Vec<u8>)> = self.read(|c| {
            let mut s =
                c.prepare_cached("SELECT key, slot FROM pieces WHERE key >= ?1 ORDER BY key")?;
            let mut out = Vec::new();
            let mut rows = s.query(params![prefix])?;
            while let Some(r) = rows.next()? {
                let k: String = r.get(0)?;
                if !k.starts_with(prefix) {
                    break;
                }
                out.push((k, r.get(1)?));
            }
            Ok(out)
        })?;
        rows.into_iter()
            .map(|(k, b)| {
                let slot = Slot::decode(&b).ok_or_else(|| self.corrupt(&k))?;
                Ok((k, slot))
            })
            .collect()
    }

    fn apply(&self, changes: &[Change]) -> Result<Vec<bool>> {
        self.apply_with(changes, true)
    }

    fn apply_lazy(&self, changes: &[Change]) -> Result<Vec<bool>> {
        self.apply_with(changes, false)
    }

    fn try_apply_lazy(&self, changes: &[Change]) -> Result<Option<Vec<bool>>> {
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(self.target, Target::Memory) {
            return self.apply_in(&mut conn, changes, false, true);
        }
        // No busy handler for the one try (SQLite answers "busy" at once), then the usual one.
        conn.busy_timeout(Duration::ZERO).map_err(|e| self.err(e))?;
        let result = self.apply_in(&mut conn, changes, false, false);
        // What the commit did stands; a failure to set the handler back is set right by the
        // next blocking commit.
        if let Err(e) = conn.busy_timeout(BUSY_TIMEOUT) {
            tracing::warn!(index = %self.label, error = %e, "restoring the index's busy handler failed");
        }
        result
    }

    fn pack(&self, id: PackId) -> Result<Option<PackInfo>> {
        let raw: Option<Vec<u8>> = self.read(|c| {
            c.prepare_cached("SELECT info FROM packs WHERE id = ?1")?
                .query_row(params![pack_key(id)], |r| r.get(0))
                .optional()
        })?;
        raw.map(|b| PackInfo::decode(&b).ok_or_else(|| self.corrupt("pack record")))
            .transpose()
    }

    fn packs(&self) -> Result<Vec<(PackId, PackInfo)>> {
        self.snapshot_parts(false).map(|(p, _)| p)
    }

    fn snapshot(&self) -> Result<Snapshot> {
        self.snapshot_parts(true)
    }

    fn intent(&self, key: &str) -> Result<Option<OwnedIntent>> {
        let raw: Option<Vec<u8>> = self.read(|c| {
            c.prepare_cached("SELECT intent FROM intents WHERE key = ?1")?
                .query_row(params![key], |r| r.get(0))
                .optional()
        })?;
        raw.map(|b| OwnedIntent::decode(&b).ok_or_else(|| self.corrupt(key)))
            .transpose()
    }

    fn intents(&self) -> Result<Vec<(String, OwnedIntent)>> {
        let rows: Vec<(String, Vec<u8>)> = self.read(|c| {
            let mut s = c.prepare_cached("SELECT key, intent FROM intents ORDER BY key")?;
            let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })?;
        rows.into_iter()
            .map(|(k, b)| {
                let i = OwnedIntent::decode(&b).ok_or_else(|| self.corrupt(&k))?;
                Ok((k, i))
            })
            .collect()
    }

    fn meta(&self, name: &str) -> Result<Option<u64>> {
        let stored = self
            .read(|c| {
                c.prepare_cached("SELECT value FROM meta WHERE name = ?1")?
                    .query_row(params![name], |r| r.get::<_, i64>(0))
                    .optional()
            })?
            .map(|v| v as u64);
        if name == META_MAX_SEQ {
            let lazy = self.max_seq.load(std::sync::atomic::Ordering::SeqCst);
            return Ok(stored.max((lazy > 0).then_some(lazy)));
        }
        Ok(stored)
    }

    fn len(&self) -> Result<u64> {
        self.read(|c| {
            c.prepare_cached("SELECT count(*) FROM pieces")?
                .query_row([], |r| r.get::<_, i64>(0))
        })
        .map(|n| n as u64)
    }

    fn describe(&self) -> String {
        self.label.clone()
    }
}

/// A row as stored: its key (a pack id's bytes, or a piece key) and its encoded value.
type RawRow<K> = (K, Vec<u8>);

impl SqliteIndex {
    /// Every pack (and, with `pieces`, every piece), read in one transaction.
    fn snapshot_parts(&self, pieces: bool) -> Result<Snapshot> {
        let (packs, slots): (Vec<RawRow<Vec<u8>>>, Vec<RawRow<String>>) = self.read(|c| {
            c.execute_batch("BEGIN")?;
            let read = (|| {
                let mut s = c.prepare_cached("SELECT id, info FROM packs ORDER BY id")?;
                let packs: Vec<(Vec<u8>, Vec<u8>)> = s
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?;
                let slots = if pieces {
                    let mut s = c.prepare_cached("SELECT key, slot FROM pieces ORDER BY key")?;
                    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect::<rusqlite::Result<_>>()?
                } else {
                    Vec::new()
                };
                Ok((packs, slots))
            })();
            c.execute_batch("COMMIT")?;
            read
        })?;
        let packs = packs
            .into_iter()
            .map(|(k, v)| {
                let id = <[u8; 16]>::try_from(k.as_slice())
                    .map(u128::from_be_bytes)
                    .map_err(|_| self.corrupt("pack id"))?;
                let info = PackInfo::decode(&v).ok_or_else(|| self.corrupt("pack record"))?;
                Ok((id, info))
            })
            .collect::<Result<_>>()?;
        let slots = slots
            .into_iter()
            .map(|(k, b)| {
                let slot = Slot::decode(&b).ok_or_else(|| self.corrupt(&k))?;
                Ok((k, slot))
            })
            .collect::<Result<_>>()?;
        Ok((packs, slots))
    }
}
