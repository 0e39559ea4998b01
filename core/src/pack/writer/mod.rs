//! The write path of a shard: group commit of packed records, one operation per key at a time,
//! and objects of their own with their intents.
//!
//! **Groups.** Records (pieces and tombstones) are appended to the *forming* group. When the
//! shard's writer task is idle, the first record starts it and the write begins at once.
//! Records that arrive while a write is in flight form the next group, so batching comes from
//! concurrency, never from a timer.
//! A group reaching `TargetSize` is closed and the next record starts another. Groups are
//! written and committed one at a time, in order: a tombstone is never indexed before the
//! piece it deletes.
//!
//! **Keys.** While a put or delete of a key runs, the key is held ([`State::inflight`]): a put
//! of the same bytes joins it, a put of other bytes is `AlreadyExists` (or, to overwrite, waits
//! for it), anything else waits for it and looks again. A packed record holds its key until its
//! group is indexed (or failed), so a caller cancelled while it waits changes nothing.
//!
//! **Same bytes** means the same bytes: the length and the CRC32C reject quickly, then the
//! stored piece is read and compared.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use super::active::{ActivePack, Appended};
use super::format::{self, Entry, RecordKind};
use super::index::{Change, Intent, PackId, PackIndex, PackInfo, PackState, Slot};
use super::{ShardPacker, join_err, new_pack_id, now_ms, pack_info};
use crate::backend::{Backend, PieceMeta};
use crate::error::{Error, Result};

mod group;

/// How often an operation looks again after waiting for another operation on its key.
const ATTEMPTS: usize = 16;

/// How long an operation waits for another process's object operation on its key (a large
/// piece's upload) before it reports the key busy.
const FOREIGN_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The outcome of a write, shared by everyone waiting on it: `(retryable, message)` on failure.
pub(super) type Outcome = Option<std::result::Result<(), (bool, String)>>;

/// What holds a key.
#[derive(Debug)]
enum Holder {
    /// A put of these bytes.
    Put(Bytes),
    /// A delete, or another operation that is not a put (an intent being finished).
    Other,
}

/// A key's running operation.
#[derive(Debug)]
struct Pending {
    what: Holder,
    /// The group (or reservation) whose end frees the key.
    ticket: u64,
    done: watch::Receiver<Outcome>,
}

/// One record of a group: the caller's bytes, not a copy.
#[derive(Debug)]
struct GroupRecord {
    key: String,
    kind: RecordKind,
    seq: u64,
    payload: Bytes,
    crc: u32,
    /// A new key's piece: indexed only if no other write of the key (in another process)
    /// got there first ([`Change::Insert`]).
    fresh: bool,
}

/// Records waiting to be written together.
#[derive(Debug)]
struct Group {
    ticket: u64,
    records: Vec<GroupRecord>,
    /// Their size in a pack.
    bytes: u64,
    /// Index changes to commit with the group's records.
    extra: Vec<Change>,
    done: watch::Sender<Outcome>,
}

/// The write path's state (behind the packer's mutex; never held across an await).
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Groups to write, oldest first; records go into the last one.
    forming: VecDeque<Group>,
    /// Whether the writer task runs.
    writing: bool,
    /// The outcome of the group being written.
    current: Option<watch::Receiver<Outcome>>,
    /// Keys whose operation runs.
    inflight: HashMap<String, Pending>,
    /// A caller started the idle writer and is about to write the first group itself.
    leader: bool,
    /// Records of the last group that ended: more than one, and the caller that leads the
    /// next group lets the others run first ([`ShardPacker::lead`]).
    last_group: u64,
    /// The outcome channels of the groups that ended since a group was last taken, kept to
    /// see whether the callers they woke have run on ([`ShardPacker::let_woken_queue`]).
    woken: Vec<watch::Sender<Outcome>>,
    /// The last ticket handed out.
    tickets: u64,
    /// Sequence numbers of new keys' records that another process's write of the key beat
    /// to the index: the put that wrote it finds out there, and reports what is stored.
    lost: std::collections::HashSet<u64>,
}

impl State {
    fn ticket(&mut self) -> u64 {
        self.tickets += 1;
        self.tickets
    }

    /// Takes the oldest group formed, as the one being written.
    fn take_group(&mut self) -> Option<Group> {
        let group = self.forming.pop_front()?;
        self.current = Some(group.done.subscribe());
        self.woken.clear();
        Some(group)
    }
}

/// A record to append.
enum Record<'a> {
    Piece {
        key: &'a str,
        data: &'a Bytes,
        crc: u32,
        /// A new key (see [`GroupRecord::fresh`]).
        fresh: bool,
    },
    Tombstone {
        key: &'a str,
        /// The sequence number of the write it deletes (and of anything older).
        upto: u64,
    },
}

/// What an operation on a key finds, with the state locked.
enum Look {
    /// Nothing runs on the key; this is its slot in the index.
    Free(Option<Slot>),
    /// The same put runs: its outcome is ours.
    Join(watch::Receiver<Outcome>),
    /// Another operation runs: wait for it, then look again.
    After(watch::Receiver<Outcome>),
    /// An object operation was left half-way: finish it, then look again.
    Resolve,
    /// A new key as far as this process can tell without asking the index (nothing of this
    /// process runs on it, and on a local directory no file of its own holds it): a put queues
    /// it as an insert that takes effect only if the index holds nothing for the key.
    Unlooked,
}

/// A key held by an operation that is not a packed record (object writes and deletes, intent
/// resolutions). Dropped without [`Reservation::finish`], it still frees the key.
struct Reservation {
    packer: Arc<ShardPacker>,
    key: String,
    ticket: u64,
    done: watch::Sender<Outcome>,
}

impl Reservation {
    fn finish(self, result: &Result<()>) {
        self.release(match result {
            Ok(()) => Ok(()),
            Err(e) => Err((e.is_retryable(), e.to_string())),
        });
    }

    fn release(&self, outcome: std::result::Result<(), (bool, String)>) {
        {
            let mut st = self.packer.lock();
            if st
                .inflight
                .get(&self.key)
                .is_some_and(|p| p.ticket == self.ticket)
            {
                st.inflight.remove(&self.key);
            }
        }
        self.done.send_if_modified(|o| {
            let first = o.is_none();
            if first {
                *o = Some(outcome);
            }
            first
        });
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.done.borrow().is_none() {
            self.release(Err((true, "the operation was abandoned".into())));
        }
    }
}

/// What is stored under a key, compared with the bytes of a put.
enum Stored {
    Same,
    Other,
    /// The slot's object is gone (a crash between deleting it and its slot, or a delete behind
    /// the store's back): a put may take the key.
    Gone,
}

impl ShardPacker {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a put of a key the index does not know must look for an object first: always
    /// on local files (a file that another program, such as the original Go piecestore, wrote
    /// costs a `stat` to find), and on other backends until the index knows every object.
    fn must_probe(&self, backend: &Backend) -> bool {
        backend.is_local() || !self.complete.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What holds `key` now: an operation of this process, an intent, a slot, or nothing.
    /// `(overwrite, first)`: the put may replace the key; this is its first attempt.
    fn look(
        &self,
        st: &State,
        index: &Arc<dyn PackIndex>,
        backend: &Backend,
        key: &str,
        data: Option<&Bytes>,
        (overwrite, first): (bool, bool),
    ) -> Result<Look> {
        if let Some(p) = st.inflight.get(key) {
            return match (&p.what, data) {
                (Holder::Put(held), Some(d)) if held == d => Ok(Look::Join(p.done.clone())),
                (Holder::Put(_), Some(_)) if !overwrite => Err(already_exists(backend, key)),
                _ => Ok(Look::After(p.done.clone())),
            };
        }
        // A put of a key this process holds nothing of skips the lookup on its first attempt,
        // on an index a round trip away and on a local directory's (where another process's
        // commit had made every lookup re-read its pages: perf, 4 processes × 16 puts): its
        // write group's insert takes effect only if the key holds nothing, and a put that loses
        // it looks again (`after_lost`). On a local directory a file of the key's own (an
        // object, or the original's layout) is looked for first, with one `stat`. The price: a
        // put of a key already held appends its bytes before it learns so (garbage for gc).
        if first && data.is_some() && !overwrite {
            let unlooked = if backend.is_local() {
                backend.local_file_absent(key) == Some(true)
            } else {
                index.remote().is_some() && !self.must_probe(backend)
            };
            if unlooked {
                return Ok(Look::Unlooked);
            }
        }
        let (slot, intent) = index.lookup(key)?;
        if intent.is_some() {
            return Ok(Look::Resolve);
        }
        Ok(Look::Free(slot))
    }

    /// Holds `key` for an operation that is not a packed record.
    fn reserve(self: &Arc<Self>, st: &mut State, key: &str, what: Holder) -> Reservation {
        let ticket = st.ticket();
        let (done, rx) = watch::channel(None);
        st.inflight.insert(
            key.to_string(),
            Pending {
                what,
                ticket,
                done: rx,
            },
        );
        Reservation {
            packer: Arc::clone(self),
            key: key.to_string(),
            ticket,
            done,
        }
    }

    /// Appends a record to the forming group (making the caller its leader, who then calls
    /// [`ShardPacker::lead`], when the writer is idle); with
    /// `holder`, the key is held until the group is indexed. Returns the group's outcome and
    /// the record's sequence number.
    fn enqueue(
        self: &Arc<Self>,
        st: &mut State,
        record: Record<'_>,
        extra: Vec<Change>,
        holder: Option<Holder>,
    ) -> (watch::Receiver<Outcome>, u64) {
        let full = st
            .forming
            .back()
            .is_none_or(|g| g.bytes >= self.opts.target_size);
        if full {
            let ticket = st.ticket();
            st.forming.push_back(Group {
                ticket,
                records: Vec::new(),
                bytes: 0,
                extra: Vec::new(),
                done: watch::channel(None).0,
            });
        }
        let seq = self.next_seq();
        let group = st.forming.back_mut().expect("a forming group");
        let (key, kind, payload, crc, fresh) = match record {
            Record::Piece {
                key,
                data,
                crc,
                fresh,
            } => (key, RecordKind::Piece, data.clone(), crc, fresh),
            Record::Tombstone { key, upto } => {
                let payload = Bytes::copy_from_slice(&format::tombstone_payload(upto));
                let crc = crate::checksum::crc32c(&payload);
                (key, RecordKind::Tombstone, payload, crc, false)
            }
        };
        group.bytes += (format::RECORD_HEADER + key.len() + payload.len()) as u64;
        group.records.push(GroupRecord {
            key: key.to_string(),
            kind,
            seq,
            payload,
            crc,
            fresh,
        });
        group.extra.extend(extra);
        let rx = group.done.subscribe();
        if let Some(what) = holder {
            let ticket = group.ticket;
            st.inflight.insert(
                key.to_string(),
                Pending {
                    what,
                    ticket,
                    done: rx.clone(),
                },
            );
        }
        if !st.writing {
            // The caller writes this group itself ([`ShardPacker::lead`]).
            st.writing = true;
            st.leader = true;
        }
        (rx, seq)
    }

    /// Records the new keys' records of a committed group that lost their key to another
    /// process's write ([`lost_inserts`]).
    fn note_lost(&self, lost: Vec<u64>) {
        if !lost.is_empty() {
            self.lock().lost.extend(lost);
        }
    }

    /// After a fresh record's group was indexed: whether another process's write of the key
    /// won (then what is stored decides the put's outcome).
    fn take_lost(&self, seq: u64) -> bool {
        self.lock().lost.remove(&seq)
    }

    /// The outcome of a put whose new key another process wrote first: Ok when it stored the
    /// same bytes, `AlreadyExists` for other bytes; `None` to look again (the key was deleted
    /// meanwhile, or has an operation of its own running).
    async fn after_lost(
        self: &Arc<Self>,
        backend: &Arc<Backend>,
        key: &str,
        data: &Bytes,
        crc: u32,
    ) -> Result<Option<()>> {
        let index = self.index(backend).await?;
        let Some(slot) = index.get(key)? else {
            return Ok(None);
        };
        match self.stored(backend, key, &slot, data, crc).await? {
            Stored::Same => Ok(Some(())),
            Stored::Other => Err(already_exists(backend, key)),
            Stored::Gone => Ok(None),
        }
    }

    /// Stores a small piece in a pack; returns once the pack is durable and indexed.
    pub(crate) async fn put(
        self: &Arc<Self>,
        backend: &Arc<Backend>,
        key: &str,
        data: Bytes,
        crc: u32,
        overwrite: bool,
    ) -> Result<()> {
        let index = self.index(backend).await?;
        for attempt in 0..ATTEMPTS {
            let look = {
                let mut st = self.lock();
                let look = self.look(
                    &st,
                    &index,
                    backend,
                    key,
                    Some(&data),
                    (overwrite, attempt == 0),
                )?;
                // The common case, a new key (no slot, and no object: on a local directory a
                // `stat` says so), is enqueued at once, under the same lock.
                let new_key = match &look {
                    Look::Unlooked => true,
                    Look::Free(None) => {
                        !self.must_probe(backend) || backend.local_file_absent(key) == Some(true)
                    }
                    _ => false,
                };
                if new_key {
                    let queued = self.enqueue(
                        &mut st,
                        Record::Piece {
                            key,
                            data: &data,
                            crc,
                            fresh: !overwrite,
                        },
                        Vec::new(),
                        Some(Holder::Put(data.clone())),
                    );
                    Err(queued)
                } else {
                    Ok(look)
                }
            };
            let look = match look {
                Ok(look) => look,
                Err((rx, seq)) => {
                    self.lead(backend).await;
                    wait(backend, key, rx).await?;
                    if !self.take_lost(seq) {
                        return Ok(());
                    }
                    match self.after_lost(backend, key, &data, crc).await? {
                        Some(()) => return Ok(()),
                        None => continue,
                    }
                }
            };
            let slot = match look {
                Look::Join(rx) => match wait(backend, key, rx).await {
                    // The put joined may have lost its new key to another process's put of
                    // other bytes: what is indexed decides.
                    Ok(()) => match index.get(key)? {
                        Some(s) if s.len() != data.len() as u64 || s.crc() != crc => {
                            return Err(already_exists(backend, key));
                        }
                        _ => return Ok(()),
                    },
                    Err(_) => continue,
                },
                Look::After(rx) => {
                    let _ = wait(backend, key, rx).await;
                    continue;
                }
                Look::Resolve => {
                    self.resolve_key(backend, key).await?;
                    continue;
                }
                Look::Free(slot) => slot,
                // Queued above, always; were it not, the index is asked on the next attempt.
                Look::Unlooked => continue,
            };
            // What is stored, checked without the lock; looked at again before enqueueing.
            let mut stale_object = None;
            match slot {
                Some(s) if !overwrite => match self.stored(backend, key, &s, &data, crc).await? {
                    Stored::Same => return Ok(()),
                    Stored::Other => return Err(already_exists(backend, key)),
                    Stored::Gone => {}
                },
                // Overwriting an object: it goes once the packed piece is indexed.
                Some(Slot::Object { seq, .. }) => stale_object = Some(seq),
                Some(Slot::Packed(_)) => {}
                // A local file that is not there costs one `stat`, done here (no trip
                // through the blocking pool for the common case of a new key).
                None if backend.local_file_absent(key) == Some(true) => {}
                None if self.must_probe(backend) => match backend.head(key).await {
                    Ok(meta) if !overwrite => {
                        return if backend.stored_same(key, &meta, &data, crc).await? {
                            Ok(())
                        } else {
                            Err(already_exists(backend, key))
                        };
                    }
                    Ok(_) => stale_object = Some(0),
                    Err(Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                },
                None => {}
            }
            let (rx, seq) = {
                let mut st = self.lock();
                if st.inflight.contains_key(key)
                    || index.intent(key)?.is_some()
                    || index.get(key)? != slot
                {
                    continue; // someone else got there meanwhile: look again
                }
                let extra = stale_object
                    .map(|upto_seq| {
                        vec![Change::SetIntent {
                            key: key.into(),
                            intent: Intent::DeleteObject { upto_seq },
                            owner: self.writer_id(),
                        }]
                    })
                    .unwrap_or_default();
                let fresh = slot.is_none() && extra.is_empty() && !overwrite;
                self.enqueue(
                    &mut st,
                    Record::Piece {
                        key,
                        data: &data,
                        crc,
                        fresh,
                    },
                    extra,
                    Some(Holder::Put(data.clone())),
                )
            };
            self.lead(backend).await;
            wait(backend, key, rx).await?;
            if self.take_lost(seq) {
                match self.after_lost(backend, key, &data, crc).await? {
                    Some(()) => return Ok(()),
                    None => continue,
                }
            }
            if stale_object.is_some() {
                // The packed piece is indexed; the overwritten object goes (if this is cut
                // short, its intent makes recovery or the next operation finish it).
                self.resolve_key(backend, key).await?;
            }
            return Ok(());
        }
        Err(busy(backend, key, "put"))
    }

    /// Stores a large piece as an object of its own, recorded in the index: the intent first,
    /// then the object, then its slot. Runs as a task of its own, so a caller that is
    /// cancelled leaves no object the index does not know.
    pub(crate) async fn put_object(
        self: &Arc<Self>,
        backend: &Arc<Backend>,
        key: &str,
        data: Bytes,
        crc: u32,
        overwrite: bool,
    ) -> Result<()> {
        let index = self.index(backend).await?;
        for _ in 0..ATTEMPTS {
            let look = {
                let mut st = self.lock();
                match self.look(&st, &index, backend, key, Some(&data), (overwrite, false))? {
                    Look::Free(slot) => {
                        Ok((self.reserve(&mut st, key, Holder::Put(data.clone())), slot))
                    }
                    other => Err(other),
                }
            };
            let (reservation, slot) = match look {
                Ok(free) => free,
                Err(Look::Join(rx)) => match wait(backend, key, rx).await {
                    Ok(()) => return Ok(()),
                    Err(_) => continue,
                },
                Err(Look::After(rx)) => {
                    let _ = wait(backend, key, rx).await;
                    continue;
                }
                Err(_) => {
                    self.resolve_key(backend, key).await?;
                    continue;
                }
            };
            let me = Arc::clone(self);
            let backend2 = Arc::clone(backend);
            let key2 = key.to_string();
            let body = data.clone();
            let task = self.tasks.enter();
            let handle = tokio::spawn(async move {
                let _task = task;
                let r = me
                    .write_object(&backend2, &key2, body, crc, overwrite, slot)
                    .await;
                reservation.finish(&r);
                r
            });
            match handle.await.map_err(|e| join_err(backend, e))? {
                // Another process's intent came first: nothing was written; look again.
                Err(e) if is_foreign(&e) => continue,
                r => return r,
            }
        }
        Err(busy(backend, key, "put"))
    }

    async fn write_object(
        self: &Arc<Self>,
        backend: &Arc<Backend>,
        key: &str,
        data: Bytes,
        crc: u32,
        overwrite: bool,
        slot: Option<Slot>,
    ) -> Result<()> {
        let len = data.len() as u64;
        if !overwrite && let Some(s) = &slot {
            match self.stored(backend, key, s, &data, crc).await? {
                Stored::Same => return Ok(()),
                Stored::Other => return Err(already_exists(backend, key)),
                Stored::Gone => {}
            }
        }
        let seq = self.next_seq();
        self.set_intent(backend, key, Intent::PutObject { len, crc, seq })
            .await?;
        // With the intent in the index no other process's new piece can take the key
        // (`Insert` refuses a key with an intent); one may have taken it before: then look
        // again (and compare bytes) rather than write over it.
        if self.index(backend).await?.get(key)? != slot {
            self.clear_intent(backend, key).await?;
            return Err(foreign_intent(backend, key));
        }
        match backend.put(key, data, crc, overwrite).await {
            Ok(()) => self.record_object(backend, key, len, crc, seq).await,
            // Did the write happen although it was reported failed?
            Err(e) if e.is_retryable() => match backend.head(key).await {
                Ok(m) if m.size == len && m.crc32c == Some(crc) => {
                    self.record_object(backend, key, len, crc, seq).await
                }
                Ok(_) | Err(Error::NotFound { .. }) => {
                    self.clear_intent(backend, key).await?;
                    Err(e)
                }
                Err(_) => Err(e), // the intent stays: recovery decides
            },
            Err(e) => {
                self.clear_intent(backend, key).await?;
                Err(e)
            }
        }
    }

    /// Records this writer's `intent` on `key`, durably; [`foreign_intent`]'s error when
    /// another live writer's intent is there (nothing was done: look again).
    async fn set_intent(
        self: &Arc<Self>,
        backend: &Arc<Backend>,
        key: &str,
        intent: Intent,
    ) -> Result<()> {
        let took = self
            .commit(
                backend,
                vec![Change::SetIntent {
                    key: key.into(),
                    intent,
                    owner: self.writer_id(),
                }],
            )
            .await?;
        if took != [true] {
            return Err(foreign_intent(backend, key));
        }
        Ok(())
    }

    async fn clear_intent(self: &Arc<Self>, backend: &Arc<Backend>, key: &str) -> Result<()> {
        self.commit(
            backend,
            vec![Change::ClearIntent {
                key: key.into(),
                owner: self.writer_id(),
            }],
        )
        .await
        .map(drop)
    }

    /// Makes a durable object the key's slot and forgets its intent; a packed piece it
    /// replaces gets a tombstone in the packs (so that a rebuilt index does not bring it back),
    /// committed together with the slot.
    async fn record_object(
        self: &Arc<Self>,
        backend: &Arc<Backend>,
        key: &str,
        len: u64,
        crc: u32,
        seq: u64,
    ) -> Result<()> {
        let index = self.index(backend).await?;
        let finish = vec![
            Change::Put {
                key: key.into(),
                slot: Slot::Object { len, crc, seq },
            },
            Change::ClearIntent {
                key: key.into(),
                owner: self.writer_id(),
            },
        ];
        match index.get(key)? {
            Some(Slot::Packed(loc)) if loc.seq < seq => {
                let rx = {
                    let mut st = self.lock();
                    let record = Record::Tombstone { key, upto: loc.seq };
                    self.enqueue(&mut st, record, finish, None).0
                };
                self.lead(backend).await;
                wait(backend, key, rx).await
            }
            // Lazily: the intent is durable, and the object is written whole with its
            // checksum, so should this commit be lost, the intent finishes it on recovery (the
            // object is there with its length and checksum: it becomes the key's slot).
            _ => self.commit_lazy(backend, finish).await.map(drop),
        }
    }

    /// What is stored in `slot`, compared with `data`.
    async fn stored(
        self: &Arc<Self>,
        backend: &Arc<Backend>,
        key: &str,
        slot: &Slot,
        data: &Bytes,
        crc: u32,
    ) -> Result<Stored> {
        if slot.len() != data.len() as u64 || slot.crc() != crc {
            return Ok(Stored::Other);
        }
        let stored = match slot {
            // Through the index: compaction may have moved the piece since the slot was read.
            Slot::Packed(_) => match self.get(backend, key).await? {
                Some((b, _)) => Ok(b),
                None => return Ok(Stored::Gone),
            },
            Slot::Object { .. } => backend.get(key).await.map(|(b, _)| b),
        };
        match stored {
            Ok(b) if b == *data => Ok(Stored::Same),
            Ok(_) => Ok(Stored::Other),
            Err(Error::NotFound { .. }) => Ok(Stored::Gone),
            Err(e) => Err(e),
        }
    }

    /// Deletes a piece: a tombstone for a packed one, the object (after its intent) for an
    /// object of its own, and for a key the index does not know both a tombstone (a pack the
    /// index missed may hold it) and a delete of any object under it. Returns once durable.
    pub(crate) async fn delete(self: &Arc<Self>, backend: &Arc<Backend>, key: &str) -> Result<()> {
        let index = self.index(backend).await?;
        for _ in 0..ATTEMPTS {
            enum Step {
                Wait(watch::Receiver<Outcome>),
                Resolve,
                Tombstone(watch::Receiver<Outcome>),
                Object(Reservation, u64),
                Unknown(Reservation),
            }
            let step = {
                let mut st = self.lock();
                match self.look(&st, &index, backend, key, None, (false, false))? {
                    Look::Join(rx) | Look::After(rx) => Step::Wait(rx),
                    Look::Resolve => Step::Resolve,
                    Look::Free(Some(Slot::Packed(loc))) => {
                        let record = Record::Tombstone { key, upto: loc.seq };
                        Step::Tombstone(
                            self.enqueue(&mut st, record, Vec::new(), Some(Holder::Other))
                                .0,
                        )
                    }
                    Look::Free(Some(Slot::Object { seq, .. })) => {
                        Step::Object(self.reserve(&mut st, key, Holder::Other), seq)
                    }
                    Look::Free(None) | Look::Unlooked => {
                        Step::Unknown(self.reserve(&mut st, key, Holder::Other))
                    }
                }
            };
            let (reservation, object_seq) = match step {
                Step::Wait(rx) => {
                    let _ = wait(backend, key, rx).await;
                    continue;
                }
                Step::Resolve => {
                    self.resolve_key(backend, key).await?;
                    continue;
                }
                Step::Tombstone(rx) => {
                    self.lead(backend).await;
                    return wait(backend, key, rx).await;
                }
                Step::Object(r, seq) => (r, Some(seq)),
                Step::Unknown(r) => (r, None),
            };
            let me = Arc::clone(self);
            let backend2 = Arc::clone(backend);
            let key2 = key.to_string();
            let task = self.tasks.enter();
            let handle = tokio::spawn(async move {
                let _task = task;
                let r = match object_seq {
                    Some(upto_seq) => {
                        me.delete_object(&backend2, &key2, Intent::DeleteObject { upto_seq })
                            .await
                    }
                    None => me.delete_unknown(&backend2, &key2).await,
                };
                reservation.finish(&r);
                r
            });
            match handle.await.map_err(|e| join_err(backend, e))? {
                Err(e) if is_foreign(&e) => continue,
                r => return r,
            }
        }
        Err(busy(backend, key, "delete"))
    }

    /// Deletes the object of an object slot: the intent, the object, then the slot.
    async fn delete_object(
        self: &Arc<Self>,
        backend: &Arc<Backend>,
        key: &str,
        intent: Intent,
    ) -> Result<()> {
        self.set_intent(backend, key, intent).await?;
        self.finish_intent(backend, key, intent).await
    }

    /// Deletes a key the index does not know: any object under it (written before packing,
    /// or by another program), and a tombstone for any record of it a pack may hold.
    async fn delete_unknown(self: &Arc<Self>, backend: &Arc<Backend>, key: &str) -> Result<()> {
        let mut extra = Vec::new();
        if backend.local_file_absent(key) != Some(true) {
            // An intent first, so that another process's object write of the key (whose
            // intent is in the index) is not deleted under it: refused while that one runs.
            self.set_intent(backend, key, Intent::DeleteObject { upto_seq: 0 })
                .await?;
            backend.delete(key).await?;
            extra.push(Change::ClearIntent {
                key: key.into(),
                owner: self.writer_id(),
            });
        }
        let rx = {
            let mut st = self.lock();
            // Deletes every write older than the tombstone itself.
            let upto = self.seqs().current();
            self.enqueue(&mut st, Record::Tombstone { key, upto }, extra, None)
                .0
        };
        self.lead(backend).await;
        wait(backend, key, rx).await
    }

    /// Finishes (or undoes) an object operation left half-way on `key`, holding the key.
    pub(super) async fn resolve_key(
        self: &Arc<Self>,
        backend: &Arc<Backend>,
        key: &str,
    ) -> Result<()> {
        let index = self.index(backend).await?;
        let deadline = tokio::time::Instant::now() + FOREIGN_WAIT;
        let mut attempts = 0;
        while attempts < ATTEMPTS {
            let step = {
                let mut st = self.lock();
                match st.inflight.get(key) {
                    Some(p) => Err(Some(p.done.clone())),
                    None => match index.intent(key)? {
                        None => return Ok(()),
                        Some(owned) if !self.orphaned(owned.owner) => Err(None),
                        Some(owned) => Ok((self.reserve(&mut st, key, Holder::Other), owned)),
                    },
                }
            };
            let (reservation, owned) = match step {
                Ok(held) => held,
                Err(Some(rx)) => {
                    attempts += 1;
                    let _ = wait(backend, key, rx).await;
                    continue;
                }
                // Another process's operation on the key runs: it finishes it.
                Err(None) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    continue;
                }
                Err(None) => return Err(foreign_intent(backend, key)),
            };
            // A gone writer's intent is taken over first: of several processes that found
            // it, exactly one carries it through (and clears it as its own).
            let me = self.writer_id();
            if owned.owner != me {
                let took = self
                    .commit(
                        backend,
                        vec![Change::TakeIntent {
                            key: key.into(),
                            from: owned.owner,
                            to: me,
                        }],
                    )
                    .await;
                let took = took.map(|t| t == [true]);
                if !matches!(took, Ok(true)) {
                    // Another process took it (and may have finished it): look again; or
                    // the commit failed.
                    let r = took.map(drop);
                    reservation.finish(&r);
                    r?;
                    attempts += 1;
                    continue;
                }
            }
            let r = self.finish_intent(backend, key, owned.intent).await;
            reservation.finish(&r);
            return r;
        }
        Err(busy(backend, key, "resolve"))
    }

    /// Carries an intent through: a written object becomes the key's slot (one that is not
    /// there, or holds other bytes, was never written: the intent goes); an object to delete
    /// is deleted, then its slot and intent go.
    async fn finish_intent(
        self: &Arc<Self>,
        backend: &Arc<Backend>,
        key: &str,
        intent: Intent,
    ) -> Result<()> {
        match intent {
            Intent::PutObject { len, crc, seq } => match backend.head(key).await {
                Ok(m) if m.size == len && m.crc32c == Some(crc) => {
                    self.record_object(backend, key, len, crc, seq).await
                }
                Ok(m) => self.settle_object(backend, key, m, (len, crc, seq)).await,
                Err(Error::NotFound { .. }) => self.clear_intent(backend, key).await,
                Err(e) => Err(e),
            },
            Intent::DeleteObject { upto_seq } => {
                backend.delete(key).await?;
                self.commit(
                    backend,
                    vec![
                        Change::Delete {
                            key: key.into(),
                            upto_seq,
                        },
                        Change::ClearIntent {
                            key: key.into(),
                            owner: self.writer_id(),
                        },
                    ],
                )
                .await
                .map(drop)
            }
        }
    }

    /// An object put whose intent is left, and whose object's metadata says neither "the new
    /// piece" nor nothing: decided by the object's bytes. A server that keeps an object's
    /// metadata apart from its bytes and stops work on a request when its client goes away
    /// (s3s-fs does both) can leave a killed put's new bytes without their checksum, or under
    /// the old one. The new bytes are stored again with their checksum and recorded; the
    /// key's earlier object is kept (its checksum restored the same way); anything else is
    /// not a piece anyone was told is stored, and is deleted with the key's slot.
    async fn settle_object(
        self: &Arc<Self>,
        backend: &Arc<Backend>,
        key: &str,
        meta: PieceMeta,
        (len, crc, seq): (u64, u32, u64),
    ) -> Result<()> {
        let index = self.index(backend).await?;
        let earlier = match index.get(key)? {
            Some(Slot::Object { len, crc, seq }) => Some((len, crc, seq)),
            _ => None,
        };
        let bytes = match backend.get_unverified(key).await {
            Ok(b) => b,
            Err(Error::NotFound { .. }) => return self.clear_intent(backend, key).await,
            Err(e) => return Err(e),
        };
        let actual = (bytes.len() as u64, crate::checksum::crc32c(&bytes));
        if actual == (len, crc) {
            tracing::info!(
                shard = self.shard,
                key,
                "storing again an object a put left without its checksum"
            );
            backend.put(key, bytes, crc, true).await?;
            return self.record_object(backend, key, len, crc, seq).await;
        }
        if let Some((len, crc, _)) = earlier
            && actual == (len, crc)
        {
            if meta.crc32c != Some(crc) {
                backend.put(key, bytes, crc, true).await?;
            }
            return self.clear_intent(backend, key).await;
        }
        tracing::warn!(
            shard = self.shard,
            key,
            "deleting an object an unfinished put left behind"
        );
        backend.delete(key).await?;
        let mut changes = vec![Change::ClearIntent {
            key: key.into(),
            owner: self.writer_id(),
        }];
        if let Some((_, _, upto_seq)) = earlier {
            changes.push(Change::Delete {
                key: key.into(),
                upto_seq,
            });
        }
        self.commit(backend, changes).await.map(drop)
    }

    /// Seals the shard's active pack when its garbage share reached `ratio` (for gc: an active
    /// pack is never compacted, since it is still being written; sealed, it is a pack like any
    /// other). Returns whether it sealed one.
    pub(crate) async fn seal_active_for_gc(
        self: &Arc<Self>,
        backend: &Arc<Backend>,
        ratio: f64,
    ) -> Result<bool> {
        let index = self.index(backend).await?;
        let mut slot = self.active.lock().await;
        let Some(id) = slot.as_ref().map(|p| p.id) else {
            return Ok(false);
        };
        let due = index
            .packs()?
            .into_iter()
            .find(|(p, _)| *p == id)
            .is_some_and(|(_, i)| i.payload > 0 && i.garbage_ratio() >= ratio);
        if !due {
            return Ok(false);
        }
        let Some(mut pack) = slot.take() else {
            return Ok(false);
        };
        // The pack (and its lock) is kept until the index says it is sealed.
        let (sealed, pack) = tokio::task::spawn_blocking(move || (pack.seal(), pack))
            .await
            .map_err(|e| join_err(backend, e))?;
        // Should sealing fail, the pack stays active in the index (the next open seals it)
        // and the next group starts another.
        let (size, _) = sealed.map_err(|e| Error::Backend {
            op: "gc",
            key: None,
            backend: backend.label().into(),
            message: format!(
                "sealing the active pack {}: {e}",
                super::index::pack_name(id)
            ),
            retryable: false,
        })?;
        if let Err(e) = self.commit(backend, vec![Change::Seal { id, size }]).await {
            // Kept (locked) until the failed commit goes through with a later one.
            self.retired
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(pack);
            return Err(e);
        }
        drop(pack);
        Ok(true)
    }

    /// Starts writing whatever is waiting now, and waits until everything written before this
    /// call is durable (every put already waits for its own group; this is for a caller that
    /// wants all of them out, e.g. before a snapshot).
    pub(crate) async fn flush(self: &Arc<Self>, backend: &Arc<Backend>) -> Result<()> {
        let last = {
            let st = self.lock();
            st.forming
                .back()
                .map(|g| g.done.subscribe())
                .or_else(|| st.current.clone())
        };
        if let Some(rx) = last {
            wait(backend, "", rx).await?;
        }
        // Everything committed lazily becomes durable.
        self.commit(backend, Vec::new()).await.map(drop)
    }
}

/// The positions and sequence numbers of the [`Change::Insert`]s among `changes`.
fn insert_seqs(changes: &[Change]) -> Vec<(usize, u64)> {
    changes
        .iter()
        .enumerate()
        .filter_map(|(i, c)| match c {
            Change::Insert { slot, .. } => Some((i, slot.seq())),
            _ => None,
        })
        .collect()
}

/// The sequence numbers of the inserts ([`insert_seqs`]) that did not take effect (`took`:
/// the commit's outcome of each change).
fn lost_inserts(inserts: &[(usize, u64)], took: &[bool]) -> Vec<u64> {
    inserts
        .iter()
        .filter(|(i, _)| took.get(*i) == Some(&false))
        .map(|(_, seq)| *seq)
        .collect()
}

/// Another process has an object operation running on `key` (its intent is in the index).
fn foreign_intent(backend: &Backend, key: &str) -> Error {
    Error::Backend {
        op: "put",
        key: Some(key.into()),
        backend: backend.label().into(),
        message: FOREIGN.into(),
        retryable: true,
    }
}

const FOREIGN: &str = "another process is writing or deleting this piece; try again";

/// Whether `e` is [`foreign_intent`]'s: nothing was done, and the operation may look again.
fn is_foreign(e: &Error) -> bool {
    matches!(e, Error::Backend { message, .. } if message == FOREIGN)
}

fn already_exists(backend: &Backend, key: &str) -> Error {
    Error::AlreadyExists {
        key: key.into(),
        backend: backend.label().into(),
    }
}

fn busy(backend: &Backend, key: &str, op: &'static str) -> Error {
    Error::Backend {
        op,
        key: Some(key.into()),
        backend: backend.label().into(),
        message: "other operations on this key kept running into this one".into(),
        retryable: true,
    }
}

/// Waits for a write's outcome.
pub(super) async fn wait(
    backend: &Backend,
    key: &str,
    mut rx: watch::Receiver<Outcome>,
) -> Result<()> {
    let outcome = rx.wait_for(|o| o.is_some()).await.map(|o| o.clone());
    match outcome {
        Ok(Some(Ok(()))) => Ok(()),
        Ok(Some(Err((retryable, message)))) => Err(Error::Backend {
            op: "write",
            key: (!key.is_empty()).then(|| key.to_string()),
            backend: backend.label().into(),
            message: format!("the write this call waited for failed: {message}"),
            retryable,
        }),
        _ => Err(Error::Backend {
            op: "write",
            key: (!key.is_empty()).then(|| key.to_string()),
            backend: backend.label().into(),
            message: "the write this call waited for was abandoned (runtime shut down)".into(),
            retryable: true,
        }),
    }
}
