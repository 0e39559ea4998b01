//! Writing groups: the leader (the put that found the writer idle) writes the first group
//! itself, a writer task writes the groups that form meanwhile, one at a time, in order; a
//! group is an append to the active pack on a local directory and one pack object on a bucket.

use super::*;

impl ShardPacker {
    /// Starts the writer: on a local directory a task that writes groups one after another
    /// until none is left, each in `block_in_place` ([`ShardPacker::run_local_writer`]; on a
    /// current-thread runtime, which cannot do that, a blocking task); on a bucket an async
    /// task (a group is a network request).
    fn spawn_writer(self: &Arc<Self>, backend: &Arc<Backend>) {
        let me = Arc::clone(self);
        let backend = Arc::clone(backend);
        let task = self.tasks.enter();
        if self.handles.is_some() && on_multi_thread_runtime() {
            tokio::spawn(async move {
                let _task = task;
                me.run_local_writer(&backend).await
            });
        } else if self.handles.is_some() {
            tokio::task::spawn_blocking(move || {
                let _task = task;
                me.drain_local(&backend)
            });
        } else {
            tokio::spawn(async move {
                let _task = task;
                me.run_writer(backend, false).await
            });
        }
    }

    /// Takes the next group to write (and marks it the one being written), or, when none is
    /// left, marks the writer idle.
    fn next_group(&self) -> Option<Group> {
        let mut st = self.lock();
        let group = st.take_group();
        if group.is_none() {
            st.writing = false;
            st.current = None;
        }
        group
    }

    /// The local writer's loop on a blocking thread (a current-thread runtime's): appends
    /// groups until none is left.
    fn drain_local(self: &Arc<Self>, backend: &Arc<Backend>) {
        let mut idle = Idle(self, false);
        let Some(index) = self.index_now() else {
            return; // the guard fails the groups: the index was let go
        };
        loop {
            let Some(group) = self.next_group() else {
                idle.1 = true;
                return;
            };
            let locks = (self.active.blocking_lock(), self.commits.blocking_lock());
            self.append_group(backend, &*index, locks, group);
        }
    }

    /// The local writer's loop as a task of a multi-thread runtime: appends groups until none
    /// is left, each in `block_in_place` (as the leader does), and before it takes a group,
    /// lets the callers the last one's end woke run on ([`ShardPacker::let_woken_queue`]), so
    /// that those that put again queue their next records into it (a thread of its own took
    /// the next group at once, while they were still waking: 4 processes x 16 puts in flight
    /// wrote groups of 12.2 records that way; after one yield, of 13.9; waiting for them, of
    /// 17.6, merges included: benches/RESULTS.md).
    async fn run_local_writer(self: &Arc<Self>, backend: &Arc<Backend>) {
        let mut idle = Idle(self, false);
        let Some(index) = self.index_now() else {
            return; // the guard fails the groups: the index was let go
        };
        loop {
            // The locks first: a group taken is never held across an await (dropped there, on
            // a runtime's shutdown, its waiters would hear nothing; the guard fails the groups
            // still forming).
            let locks = (self.active.lock().await, self.commits.lock().await);
            let wrote = tokio::task::block_in_place(|| {
                self.let_woken_queue();
                let group = self.next_group()?;
                self.append_group(backend, &*index, locks, group);
                Some(())
            });
            if wrote.is_none() {
                idle.1 = true;
                return;
            }
        }
    }

    /// Appends `group` to the active pack, commits it (after the changes of earlier failed
    /// commits), lets go of both, then ends the group (so that a waiter it wakes can lead the
    /// next one).
    fn append_group(
        &self,
        backend: &Backend,
        index: &dyn PackIndex,
        (mut slot, mut stuck): (
            tokio::sync::MutexGuard<'_, Option<ActivePack>>,
            tokio::sync::MutexGuard<'_, Vec<Change>>,
        ),
        group: Group,
    ) {
        let Group {
            ticket,
            records,
            extra,
            done,
            ..
        } = group;
        let size = group_size(&records);
        let job = self.append_job(backend, &mut slot, records, extra);
        let Ran {
            kept: pack,
            committed: result,
            unsealed,
            merged,
        } = job.run(index, &mut stuck, &mut |room| self.take_to_merge(room));
        let flushed = stuck.is_empty();
        *slot = pack;
        drop((slot, stuck));
        {
            let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
            match unsealed {
                Some(p) => retired.push(p),
                None if flushed => retired.clear(),
                None => {}
            }
        }
        let result = result.map(|lost| self.note_lost(lost));
        let outcome = self.outcome_of(append_result(backend, result));
        self.end_group(size, ticket, done, outcome.clone());
        for m in merged {
            let outcome = match m.failed {
                Some(e) => self.outcome_of(append_result(backend, Err(e))),
                None => outcome.clone(),
            };
            self.end_group(m.size, m.ticket, m.done, outcome);
        }
    }

    /// The next group formed, to append and commit with the one being written
    /// ([`AppendJob::run`]): only one of lazy changes alone that fits in the `room` left in
    /// the active pack.
    fn take_to_merge(&self, room: u64) -> Option<Group> {
        let mut st = self.lock();
        let next = st.forming.front()?;
        if !next.extra.is_empty() || next.bytes >= room {
            return None;
        }
        st.take_group()
    }

    /// Writes the group a caller started on an idle writer in the caller's own task (group
    /// commit's leader: a lone put costs one write and one commit, and no hand-off to another
    /// thread), then hands whatever groups formed meanwhile to a writer task.
    ///
    /// On a local directory the append is synchronous (no await point), so a caller cancelled
    /// afterwards cannot leave a group unwritten; when the locks it needs are taken,
    /// everything goes to the writer task. On a bucket the PUT is awaited in the caller's task
    /// inside a [`Detach`], which, should the caller be dropped, lets it finish in a task of
    /// its own.
    ///
    /// On a local directory, after a group of several records, the leader first yields once,
    /// so that the puts that group's end woke join the group it leads (dropped right there,
    /// it leaves the group to a writer task: [`LeadLater`]), and on a multi-thread runtime
    /// waits in its `block_in_place` for those the runtime handed to other workers
    /// ([`ShardPacker::let_woken_queue`]).
    pub(super) async fn lead(self: &Arc<Self>, backend: &Arc<Backend>) {
        if self.handles.is_some() && crate::runtime::may_block() {
            let others = {
                let st = self.lock();
                st.leader && st.last_group > 1
            };
            if others {
                // The puts the last group's end woke are about to queue their next records:
                // let them run before taking the group, or it holds this put alone and they
                // wait a whole write for the next one. A lone put, whose last group held
                // one record, goes on at once (a yield cost it a fifth of its rate).
                let mut later = LeadLater(self, backend, true);
                tokio::task::yield_now().await;
                later.2 = false;
            }
        }
        {
            let mut st = self.lock();
            if !st.leader {
                return; // no group waits for a leader (or another caller took it)
            }
            st.leader = false;
        }
        if self.handles.is_none() {
            let me = Arc::clone(self);
            let backend = Arc::clone(backend);
            let task = self.tasks.enter();
            return Detach(Some(Box::pin(async move {
                let _task = task;
                me.run_writer(backend, true).await
            })))
            .await;
        }
        let inline = (|| {
            // A put that a binding polls once on a thread that must not wait (Node's event
            // loop: `runtime::poll_without_blocking`) hands its group to the writer task, and
            // that thread is free to issue the next put.
            crate::runtime::may_block().then_some(())?;
            let index = self.index_now()?;
            let slot = self.active.try_lock().ok()?;
            let stuck = self.commits.try_lock().ok()?;
            Some((index, slot, stuck))
        })();
        if let Some((index, slot, stuck)) = inline {
            let write = || {
                let group = self.lock().take_group();
                if let Some(group) = group {
                    self.append_group(backend, &*index, (slot, stuck), group);
                }
            };
            // The write waits for the disk (an fdatasync). On a multi-thread runtime's
            // worker, block_in_place first hands the worker's other tasks to another thread:
            // otherwise a server with one worker per core stops reading requests for every
            // commit (measured: `serve` on one core took 1 put per group and 1.9k puts/s).
            // There the woken callers run on while this thread waits for them.
            if on_multi_thread_runtime() {
                tokio::task::block_in_place(|| {
                    self.let_woken_queue();
                    write()
                });
            } else {
                write();
            }
        }
        let mut st = self.lock();
        if st.forming.is_empty() {
            st.writing = false;
            st.current = None;
        } else {
            drop(st);
            self.spawn_writer(backend);
        }
    }

    /// Ends a group of `size` (records, payload bytes): its keys freed, its waiters told.
    fn finish_group(
        &self,
        size: (u64, u64),
        ticket: u64,
        done: watch::Sender<Outcome>,
        result: Result<()>,
    ) {
        let outcome = self.outcome_of(result);
        self.end_group(size, ticket, done, outcome);
    }

    /// What a group's waiters are told of `result` (a failure is logged).
    fn outcome_of(&self, result: Result<()>) -> std::result::Result<(), (bool, String)> {
        result.map_err(|e| {
            tracing::warn!(shard = self.shard, error = %e, "writing a pack failed");
            (e.is_retryable(), e.to_string())
        })
    }

    /// Ends a group of `size` with `outcome`: its keys freed, its waiters told.
    fn end_group(
        &self,
        size: (u64, u64),
        ticket: u64,
        done: watch::Sender<Outcome>,
        outcome: std::result::Result<(), (bool, String)>,
    ) {
        if outcome.is_ok() {
            self.count_written(size.0, size.1);
        }
        {
            let mut st = self.lock();
            st.inflight.retain(|_, p| p.ticket != ticket);
            st.last_group = size.0;
        }
        let _ = done.send(Some(outcome));
        let mut st = self.lock();
        // Over: no longer the group being written (its callers are counted without it).
        if st
            .current
            .as_ref()
            .is_some_and(|c| c.same_channel(&done.subscribe()))
        {
            st.current = None;
        }
        st.woken.push(done);
    }

    /// Before the next group is taken, in a thread that may block (the leader's or the
    /// writer's `block_in_place`, whose worker's other tasks another thread runs meanwhile):
    /// waits, for at most [`WOKEN_WAIT`], until every caller that the groups ended since the
    /// last one was taken woke has run on, so that those that put again have queued their
    /// next records into the group about to be taken. A caller holds its group's outcome
    /// channel until its wait returns; the wait here ends when none does.
    ///
    /// A `yield_now` did this while the woken callers ran on the writer's own worker; the
    /// runtime hands some of them to its other workers, whose threads, with several processes
    /// on few cores, wait for a core, and the group was taken without them. Polled every
    /// 10 µs (a sleep, which leaves the core to them), not woken by the last caller: the
    /// writer then took the group before that caller's next put (measured, 4 processes x 16
    /// in flight: groups of 15.1 records that way, 17.6 so; 43.4k against 45.6k puts/s).
    fn let_woken_queue(&self) {
        let woken = std::mem::take(&mut self.lock().woken);
        let start = std::time::Instant::now();
        while still_waiting(&woken) && start.elapsed() < WOKEN_WAIT {
            std::thread::sleep(std::time::Duration::from_micros(10));
        }
    }

    /// A bucket writer's [`ShardPacker::let_woken_queue`], in its task: yields until every
    /// caller that the groups ended since the last take woke has returned from its wait, for
    /// at most [`WOKEN_WAIT`]. One yield let only the callers on the writer's own worker
    /// queue their next puts; the runtime runs the others on its other workers (measured, 3
    /// nodes x 16 puts in flight on one bucket: groups of 14.7 pieces with one yield, 15.9
    /// so, of 16 at most).
    async fn yield_to_woken(&self) {
        // Taken, not looked at under the lock on every turn: the callers take that lock to
        // queue their next puts (no group ends meanwhile; this writer ends them).
        let woken = std::mem::take(&mut self.lock().woken);
        let start = std::time::Instant::now();
        loop {
            tokio::task::yield_now().await;
            if !still_waiting(&woken) || start.elapsed() >= WOKEN_WAIT {
                break;
            }
        }
    }

    /// A bucket's writer: writes groups one after another (each one pack object) until none
    /// is left; as a caller's leader (`leader`), only the first, and then hands the groups
    /// that formed meanwhile to a writer task.
    async fn run_writer(self: Arc<Self>, backend: Arc<Backend>, leader: bool) {
        let mut idle = Idle(&self, false);
        // The index commit of the group before, which runs while the next group's pack is
        // PUT when a full group waits (a commit waits for a round trip to the index; the PUT
        // for the bucket); otherwise the next group waits for it. Commits stay in order: the
        // next starts once this one ended. A group's keys are held until
        // its commit ended, so no two groups in flight hold one key.
        let mut pending: Option<
            std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>,
        > = None;
        for round in 0.. {
            if leader && round == 1 {
                if let Some(p) = pending.take() {
                    p.await;
                }
                let mut st = self.lock();
                st.current = None;
                if st.forming.is_empty() {
                    st.writing = false;
                } else {
                    drop(st);
                    self.spawn_writer(&backend);
                }
                idle.1 = true;
                return;
            }
            let full = || {
                self.lock()
                    .forming
                    .front()
                    .is_some_and(|g| g.bytes >= self.opts.target_size)
            };
            if let Some(p) = pending.take_if(|_| !full()) {
                // Unless a full group waits, the next PUT waits for the last commit, and the
                // puts it woke queue their next records first (`yield_to_woken`): the next
                // group then holds them, not the few that arrived during the PUT. With
                // callers that each wait for their put, overlapping the commit with the next
                // PUT split them into two groups, twice the PUTs and commits for the same
                // pieces, and it cost more than it hid (benches/RESULTS.md, "A bucket's next
                // group waits for the last commit").
                p.await;
                self.yield_to_woken().await;
            }
            let group = if pending.is_some() {
                self.next_group_while_busy()
            } else {
                self.next_group()
            };
            let Some(Group {
                ticket,
                records,
                extra,
                done,
                ..
            }) = group
            else {
                match pending.take() {
                    // Groups may form while the last commit runs: look again after it.
                    Some(p) => {
                        p.await;
                        continue;
                    }
                    None => {
                        idle.1 = true;
                        return;
                    }
                }
            };
            let size = group_size(&records);
            let put = self.put_pack_of(&backend, &records);
            let put = match pending.take() {
                Some(p) => futures::join!(put, p).0,
                None => put.await,
            };
            match put {
                Ok(changes) => {
                    let me = &self;
                    let backend = &backend;
                    pending = Some(Box::pin(async move {
                        let result = me.commit_group(backend, changes, extra).await;
                        me.finish_group(size, ticket, done, result);
                    }));
                }
                Err(e) => self.finish_group(size, ticket, done, Err(e)),
            }
        }
    }

    /// [`ShardPacker::next_group`] while the writer is still busy (a commit runs): `None`
    /// when no group waits, and the writer stays marked as writing.
    fn next_group_while_busy(&self) -> Option<Group> {
        self.lock().take_group()
    }

    /// A group as one pack object: a create-only PUT whose body is the callers' bytes between
    /// record headers (no copy); returns the index changes that record it, for a lazy commit
    /// (a crash before the index is durable leaves a pack recovery replays).
    async fn put_pack_of(
        self: &Arc<Self>,
        backend: &Arc<Backend>,
        records: &[GroupRecord],
    ) -> Result<Vec<Change>> {
        let id = new_pack_id();
        let mut chunks = Vec::with_capacity(records.len() * 2 + 2);
        chunks.push(Bytes::from_static(&format::PACK_MAGIC));
        let mut at = format::PACK_MAGIC.len() as u64;
        let mut entries = Vec::with_capacity(records.len());
        for r in records {
            let head = format::record_head(&r.key, r.kind, r.seq, r.payload.len() as u64, r.crc);
            at += head.len() as u64;
            entries.push(entry_of(r, at));
            at += r.payload.len() as u64;
            chunks.push(Bytes::from(head));
            chunks.push(r.payload.clone());
        }
        let tail = format::footer_and_trailer(&entries, 0);
        let size = at + tail.len() as u64;
        chunks.push(Bytes::from(tail));
        let max_seq = records.iter().map(|r| r.seq).max().unwrap_or(0);
        match backend
            .put_pack(id, object_store::PutPayload::from_iter(chunks))
            .await
        {
            Ok(()) => {
                let mut changes = vec![
                    Change::AddPack {
                        id,
                        info: pack_info(size, &entries),
                    },
                    Change::BumpSeq(max_seq),
                ];
                changes.extend(record_changes(id, records, &entries));
                Ok(changes)
            }
            Err(e) => {
                // The write may have happened all the same (a lost response): the pack is
                // recorded as doomed, so that recovery never replays what its puts were told
                // failed, and gc deletes it.
                let mut info = pack_info(size, &entries);
                info.state = PackState::Doomed { since_ms: now_ms() };
                let _ = self
                    .commit(
                        backend,
                        vec![Change::AddPack { id, info }, Change::BumpSeq(max_seq)],
                    )
                    .await;
                Err(e)
            }
        }
    }

    /// A group to append to the active pack in `slot` (taken out of it; the job gives it
    /// back), committed lazily unless it carries other changes or is due a durable commit.
    fn append_job(
        &self,
        backend: &Backend,
        slot: &mut Option<ActivePack>,
        records: Vec<GroupRecord>,
        extra: Vec<Change>,
    ) -> AppendJob {
        let lazy = extra.is_empty()
            && self.lazy.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
                < crate::pack::LAZY_COMMITS;
        if !lazy {
            self.lazy.store(0, std::sync::atomic::Ordering::Relaxed);
        }
        AppendJob {
            dir: self
                .handles
                .as_ref()
                .expect("a local packer")
                .dir()
                .to_path_buf(),
            pack: slot.take(),
            records,
            extra,
            fsync: backend.fsync(),
            target: self.opts.target_size,
            lazy,
            shard: self.shard,
        }
    }

    /// Commits a group's index changes: lazily, unless the group carries other changes (an
    /// intent must be durable before the operation it announces goes on). A group with a
    /// record that lost its new key to another process is made durable before its puts
    /// return (so that no replay of the packs ever prefers the loser).
    async fn commit_group(
        self: &Arc<Self>,
        backend: &Arc<Backend>,
        mut changes: Vec<Change>,
        extra: Vec<Change>,
    ) -> Result<()> {
        let inserts = insert_seqs(&changes);
        let lazy = extra.is_empty();
        changes.extend(extra);
        let took = if lazy {
            self.commit_lazy(backend, changes).await?
        } else {
            self.commit(backend, changes).await?
        };
        let lost = lost_inserts(&inserts, &took);
        if !lost.is_empty() && lazy {
            self.commit(backend, Vec::new()).await?;
        }
        self.note_lost(lost);
        Ok(())
    }
}

/// A future that, dropped before it finished, goes on in a task of its own: a write group a
/// caller leads must reach its end (its pack recorded, its waiters told) whether or not that
/// caller still waits.
struct Detach(Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>);

impl std::future::Future for Detach {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let Some(f) = self.0.as_mut() else {
            return std::task::Poll::Ready(());
        };
        let r = f.as_mut().poll(cx);
        if r.is_ready() {
            self.0 = None;
        }
        r
    }
}

impl Drop for Detach {
    fn drop(&mut self) {
        if let Some(f) = self.0.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            // (Without a runtime the future is dropped: its writer's guard fails the groups.)
            rt.spawn(f);
        }
    }
}

/// A leader dropped while it let others run first (its caller cancelled): a writer task
/// writes the group it was to lead (with no runtime left, the groups fail).
struct LeadLater<'a>(&'a Arc<ShardPacker>, &'a Arc<Backend>, bool);

impl Drop for LeadLater<'_> {
    fn drop(&mut self) {
        if !self.2 {
            return;
        }
        {
            let mut st = self.0.lock();
            if !st.leader {
                return;
            }
            st.leader = false;
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            self.0.spawn_writer(self.1);
        } else {
            drop(Idle(self.0, false));
        }
    }
}

/// Marks the writer idle when it ends: normally (`.1` set), or on a panic or a runtime
/// shutdown, when the groups left are failed, so that no put waits forever and the next one
/// starts a writer again.
struct Idle<'a>(&'a ShardPacker, bool);

impl Drop for Idle<'_> {
    fn drop(&mut self) {
        if self.1 {
            return;
        }
        let mut st = self.0.lock();
        st.writing = false;
        st.current = None;
        for g in std::mem::take(&mut st.forming) {
            st.inflight.retain(|_, p| p.ticket != g.ticket);
            let _ = g
                .done
                .send(Some(Err((true, "the pack writer stopped".into()))));
        }
    }
}

/// Whether a caller woken by one of these ended groups has not yet returned from its wait
/// (each holds its group's outcome receiver until then).
fn still_waiting(woken: &[watch::Sender<Outcome>]) -> bool {
    woken.iter().any(|tx| tx.receiver_count() > 0)
}

/// How long a writer waits at most for the callers a group's end woke
/// ([`ShardPacker::let_woken_queue`]): a caller whose task is not polled again (a put future
/// held but no longer awaited) delays each group by no more than this.
const WOKEN_WAIT: std::time::Duration = std::time::Duration::from_micros(500);

/// What this says of a commit that failed after its group's records reached the pack: the
/// writes are durable, and the index takes them in first thing on its next commit (or when
/// the store opens again), so the caller must not take the error for "nothing happened".
const IN_PACK_NOT_INDEXED: &str = "this write is in its pack, and takes effect once \
     the index can be written (at the latest when the store opens again)";

fn in_pack_not_indexed(mut e: Error) -> Error {
    if let Error::Backend { message, .. } = &mut e {
        message.push_str("; ");
        message.push_str(IN_PACK_NOT_INDEXED);
    }
    e
}

/// What an append's error is, as the store says it.
fn append_result(backend: &Backend, result: std::result::Result<(), AppendError>) -> Result<()> {
    result.map_err(|e| match e {
        AppendError::Index(e) => e,
        AppendError::Io(what, e) => Error::Backend {
            op: "put",
            key: None,
            backend: backend.label().into(),
            message: format!("{what}: {e}"),
            retryable: false,
        },
    })
}

/// A write group to append ([`ShardPacker::drain_local`], [`ShardPacker::lead`]).
struct AppendJob {
    dir: std::path::PathBuf,
    pack: Option<ActivePack>,
    records: Vec<GroupRecord>,
    extra: Vec<Change>,
    fsync: bool,
    target: u64,
    /// Commit without waiting for the disk (every [`crate::pack::LAZY_COMMITS`]th job is
    /// durable; groups merged into a job do not count: what a crash can cost stays bounded by
    /// the active pack, which recovery replays).
    lazy: bool,
    shard: usize,
}

enum AppendError {
    Io(&'static str, std::io::Error),
    Index(Error),
}

impl AppendJob {
    /// Appends the group and commits its index changes (after `stuck`, the changes of earlier
    /// failed commits). When the index is taken by another writer (another process) at that
    /// moment, the groups that formed meanwhile (`more`, given the room left in the pack) are
    /// appended too and committed with it in one transaction: one commit per busy spell, not
    /// per group, so that processes sharing an index do not each pay a commit for a few records.
    fn run(
        self,
        index: &dyn PackIndex,
        stuck: &mut Vec<Change>,
        more: &mut dyn FnMut(u64) -> Option<Group>,
    ) -> Ran {
        let AppendJob {
            dir,
            pack,
            records,
            extra,
            fsync,
            target,
            lazy,
            shard,
        } = self;
        let mut changes = Vec::new();
        let mut pack = match pack {
            Some(p) => p,
            None => match ActivePack::create(&dir, new_pack_id()) {
                Ok(p) => {
                    changes.push(Change::AddPack {
                        id: p.id,
                        info: PackInfo::new_active(p.end),
                    });
                    p
                }
                Err(e) => {
                    return Ran::failed(None, AppendError::Io("creating an active pack", e));
                }
            },
        };
        if let Err(e) = append_records(&mut pack, &records, fsync, &mut changes) {
            // Cut back (a failed group never stays), unless even that failed: then this pack
            // is left as it is and the next group starts another.
            let keep = cut_back(&pack);
            if !changes.is_empty()
                && let Err(ie) = crate::pack::apply_after_blocking(index, stuck, changes, false)
            {
                return Ran::failed(keep.then_some(pack), AppendError::Index(ie));
            }
            return Ran::failed(
                keep.then_some(pack),
                AppendError::Io("appending to the active pack", e),
            );
        }
        changes.extend(extra);
        let mut lazy = lazy;
        let mut merged = Vec::new();
        let mut took_now = None;
        // A pack sealed (or that failed to seal) is let go only after the commit: its lock
        // keeps other processes off it until the index says what it is.
        let mut retired = None;
        let kept = if pack.end >= target {
            let id = pack.id;
            match pack.seal() {
                Ok((size, _)) => {
                    changes.push(Change::Seal { id, size });
                    lazy = false;
                }
                // The records are durable; the pack stays active in the index, and the next
                // open seals it. The next group starts another pack.
                Err(e) => {
                    tracing::warn!(shard, pack = %crate::pack::index::pack_name(id), error = %e, "sealing the active pack failed")
                }
            }
            retired = Some(pack);
            None
        } else {
            let mut usable = true;
            if lazy {
                (took_now, merged, usable) =
                    merge_while_taken(index, stuck, &mut pack, &mut changes, more, target, fsync);
            }
            if usable {
                Some(pack)
            } else {
                // Not written again, but let go only after the commit, like a sealed pack.
                retired = Some(pack);
                None
            }
        };
        let inserts = insert_seqs(&changes);
        let committed = match took_now {
            Some(took) => Ok(took),
            None => crate::pack::apply_after_blocking(index, stuck, changes, lazy),
        }
        .and_then(|took| {
            let lost = lost_inserts(&inserts, &took);
            if !lost.is_empty() && lazy {
                crate::pack::apply_after_blocking(index, stuck, Vec::new(), false)?;
            }
            Ok(lost)
        })
        .map_err(|e| AppendError::Index(in_pack_not_indexed(e)));
        let unsealed = if committed.is_err() { retired } else { None };
        Ran {
            kept,
            committed,
            unsealed,
            merged,
        }
    }
}

/// What [`AppendJob::run`] did.
struct Ran {
    /// The active pack to keep (none when it was sealed, or cannot be written again).
    kept: Option<ActivePack>,
    /// The sequence numbers of new keys' records that lost their key to another process's
    /// write (the commit is then durable), or why the group failed.
    committed: std::result::Result<Vec<u64>, AppendError>,
    /// A pack it sealed whose commit failed (to keep, locked, until that commit goes through).
    unsealed: Option<ActivePack>,
    /// Groups appended after the first and committed with it.
    merged: Vec<Merged>,
}

impl Ran {
    fn failed(kept: Option<ActivePack>, e: AppendError) -> Self {
        Ran {
            kept,
            committed: Err(e),
            unsealed: None,
            merged: Vec::new(),
        }
    }
}

/// A group appended after the first one of a job and committed with it.
struct Merged {
    size: (u64, u64),
    ticket: u64,
    done: watch::Sender<Outcome>,
    /// Its append failed (its records were cut off again): it ends with this error.
    failed: Option<AppendError>,
}

/// Whether a pack whose append failed has its old length again (a failed append cuts itself
/// off): only then is it written again.
fn cut_back(pack: &ActivePack) -> bool {
    pack.end == std::fs::metadata(&pack.path).map(|m| m.len()).unwrap_or(0)
}

/// Commits `changes` (a lazy job's, on `pack`) if the index can be written at once; while
/// another writer holds it, appends the groups that formed meanwhile (`more`, given the room
/// left in the pack) and their changes, and tries again. Returns what the commit took (none:
/// not committed yet, the caller waits for the index), the groups merged, and whether the pack
/// can be written again (a merged group's failed append could not be cut off).
fn merge_while_taken(
    index: &dyn PackIndex,
    stuck: &[Change],
    pack: &mut ActivePack,
    changes: &mut Vec<Change>,
    more: &mut dyn FnMut(u64) -> Option<Group>,
    target: u64,
    fsync: bool,
) -> (Option<Vec<bool>>, Vec<Merged>, bool) {
    let mut merged = Vec::new();
    // Earlier failed commits go first, through the caller's retrying commit.
    if !stuck.is_empty() {
        return (None, merged, true);
    }
    loop {
        match index.try_apply_lazy(changes) {
            Ok(Some(took)) => return (Some(took), merged, true),
            Ok(None) => {}
            // Reported (and retried) by the caller's commit.
            Err(_) => return (None, merged, true),
        }
        // Taken: append what formed meanwhile, then try again; with nothing formed, wait for
        // the index (SQLite's busy handler) and commit what there is.
        let Some(group) = more(target.saturating_sub(pack.end)) else {
            return (None, merged, true);
        };
        let size = group_size(&group.records);
        let failed = append_records(pack, &group.records, fsync, changes)
            .map(|()| changes.extend(group.extra))
            .err();
        let usable = failed.is_none() || cut_back(pack);
        let stop = failed.is_some();
        merged.push(Merged {
            size,
            ticket: group.ticket,
            done: group.done,
            failed: failed.map(|e| AppendError::Io("appending to the active pack", e)),
        });
        if stop {
            return (None, merged, usable);
        }
    }
}

/// Appends `records` to `pack` (made durable when `fsync`), then adds their index changes to
/// `changes`: the pack's new size and counts, the sequence counter, a slot or delete for each
/// record (nothing when the append failed).
fn append_records(
    pack: &mut ActivePack,
    records: &[GroupRecord],
    fsync: bool,
    changes: &mut Vec<Change>,
) -> std::io::Result<()> {
    let appended: Vec<Appended> = records
        .iter()
        .map(|r| Appended {
            head: format::record_head(&r.key, r.kind, r.seq, r.payload.len() as u64, r.crc),
            payload: r.payload.clone(),
        })
        .collect();
    let start = pack.append(&appended, fsync)?;
    let id = pack.id;
    let mut at = start;
    let mut entries = Vec::with_capacity(records.len());
    for (r, a) in records.iter().zip(&appended) {
        at += a.head.len() as u64;
        entries.push(entry_of(r, at));
        at += r.payload.len() as u64;
    }
    pack.note(&entries);
    changes.reserve(records.len() + 2);
    changes.push(Change::PackGrew {
        id,
        size: pack.end,
        payload: pack.payload,
        records: pack.records,
        min_seq: pack.min_seq,
    });
    changes.push(Change::BumpSeq(
        records.iter().map(|r| r.seq).max().unwrap_or(0),
    ));
    changes.extend(record_changes(id, records, &entries));
    Ok(())
}

/// A group's records and payload bytes.
fn group_size(records: &[GroupRecord]) -> (u64, u64) {
    let bytes = records.iter().map(|r| r.payload.len() as u64).sum();
    (records.len() as u64, bytes)
}

/// The pack entry of a group record whose payload is at `offset`.
fn entry_of(r: &GroupRecord, offset: u64) -> Entry {
    Entry {
        key: r.key.clone(),
        kind: r.kind,
        seq: r.seq,
        offset,
        len: r.payload.len() as u64,
        crc: r.crc,
    }
}

/// The index changes of a group's records in pack `id`: a slot for each piece, a delete for
/// each tombstone (newest write wins, as in a replay).
fn record_changes(id: PackId, records: &[GroupRecord], entries: &[Entry]) -> Vec<Change> {
    records
        .iter()
        .zip(entries)
        .map(|(r, e)| match r.kind {
            RecordKind::Piece if r.fresh => Change::Insert {
                key: r.key.clone(),
                slot: crate::pack::packed_slot(id, e),
            },
            RecordKind::Piece => Change::Put {
                key: r.key.clone(),
                slot: crate::pack::packed_slot(id, e),
            },
            RecordKind::Tombstone => Change::Delete {
                key: r.key.clone(),
                upto_seq: format::tombstone_target(&r.payload).unwrap_or(0),
            },
        })
        .collect()
}

/// Whether the caller runs on a multi-thread tokio runtime, where
/// [`tokio::task::block_in_place`] is allowed.
fn on_multi_thread_runtime() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}
