//! Model-based randomized test of packed stores: thousands of random operations, issued in
//! concurrent batches, against a `HashMap` oracle, while a background task runs `gc` (grace
//! 0, garbage ratio 0.3) in a loop, racing every read and write. Packs are small (16 to 64
//! KiB, sealed after 1 ms) so there are many of them and compaction really moves pieces.
//!
//! The operations of one batch touch distinct keys, so the oracle knows each one's outcome;
//! a listing checks the keys the batch does not touch. `PIECESTORE_MODEL_SEED` replays a run
//! (the seed is printed), `PIECESTORE_MODEL_OPS` sets the number of operations (default
//! 12,000).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use piecestore::checksum::crc32c;
use piecestore::config::OptionValue;
use piecestore::pack::fsck::FsckOptions;
use piecestore::pack::gc::{GcOptions, GcReport};
use piecestore::{Config, ErrorKind, PieceStore};
use piecestore_tests::XorShift as Rng;

/// Pieces below this many bytes are packed; the model also writes some larger ones, which
/// are objects of their own, recorded in the same index.
const THRESHOLD: i64 = 8 << 10;
/// Key prefixes (and so the prefixes listings use).
const PREFIXES: [&str; 4] = ["a/", "b_", "c/d/", "e"];
/// Keys per prefix.
const KEYS_PER_PREFIX: u64 = 400;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// A piece of a random size: mostly small, some near a pack's size, a few large enough to be
/// objects of their own.
fn random_piece(rng: &mut Rng) -> Bytes {
    let len = match rng.below(20) {
        0 => THRESHOLD as u64 + rng.below(12 << 10),
        1..=3 => 2048 + rng.below(THRESHOLD as u64 - 2048),
        4 => 0,
        _ => 1 + rng.below(2048),
    };
    Bytes::from(piecestore_tests::pseudo_random(len as usize, rng.next()))
}

/// Bytes that differ from `old`.
fn different_piece(rng: &mut Rng, old: &Bytes) -> Bytes {
    loop {
        let b = random_piece(rng);
        if b != *old {
            return b;
        }
    }
}

/// One random operation.
#[derive(Debug, Clone)]
enum Op {
    /// A put of a key the store does not hold.
    PutNew(String, Bytes),
    /// A put of the bytes the key already holds (succeeds, changes nothing).
    PutSame(String, Bytes),
    /// A put of other bytes under a held key: `AlreadyExists`, nothing changes.
    PutDifferent(String, Bytes),
    /// Two concurrent puts of different bytes (both packed, or both objects of their own)
    /// under a new key: one wins, the other gets `AlreadyExists`, and the key then reads as
    /// the winner.
    RacePut(String, Bytes, Bytes),
    Get(String),
    GetRange(String, u64, u64),
    Head(String),
    Delete(String),
    List(String),
    Flush,
}

/// What an operation did to the store, for the oracle.
enum Effect {
    None,
    Insert(String, Bytes),
    Remove(String),
}

/// Shows a piece's size and checksum, not its bytes.
fn show(b: &Bytes) -> String {
    format!("{} bytes, crc32c {:08x}", b.len(), crc32c(b))
}

fn expect_kind<T>(r: piecestore::Result<T>, kind: ErrorKind, what: &str) -> Result<(), String> {
    match r {
        Err(e) if e.kind() == kind => Ok(()),
        Err(e) => Err(format!("{what}: expected {kind:?}, got error {e}")),
        Ok(_) => Err(format!("{what}: expected {kind:?}, the call succeeded")),
    }
}

/// Runs `op` and checks its outcome against `expected` (the oracle's value of its key before
/// the batch).
async fn run_op(store: PieceStore, op: Op, expected: Option<Bytes>) -> Result<Effect, String> {
    match op {
        Op::PutNew(k, d) => {
            store
                .put(&k, d.clone())
                .await
                .map_err(|e| format!("put new {k} ({}): {e}", show(&d)))?;
            Ok(Effect::Insert(k, d))
        }
        Op::PutSame(k, d) => {
            store
                .put(&k, d.clone())
                .await
                .map_err(|e| format!("put of the same bytes again {k} ({}): {e}", show(&d)))?;
            Ok(Effect::None)
        }
        Op::PutDifferent(k, d) => {
            let r = store.put(&k, d.clone()).await;
            expect_kind(r, ErrorKind::AlreadyExists, &format!("put other bytes {k}"))?;
            Ok(Effect::None)
        }
        Op::RacePut(k, a, b) => {
            let (ra, rb) = tokio::join!(store.put(&k, a.clone()), store.put(&k, b.clone()));
            let winner = match (ra, rb) {
                (Ok(()), Err(e)) if e.kind() == ErrorKind::AlreadyExists => a,
                (Err(e), Ok(())) if e.kind() == ErrorKind::AlreadyExists => b,
                (ra, rb) => {
                    return Err(format!(
                        "racing puts of {k} ({} / {}): expected one Ok and one AlreadyExists, got {:?} / {:?}",
                        show(&a),
                        show(&b),
                        ra.map_err(|e| e.to_string()),
                        rb.map_err(|e| e.to_string())
                    ));
                }
            };
            let got = store
                .get(&k)
                .await
                .map_err(|e| format!("get {k} after racing puts: {e}"))?;
            if got != winner {
                return Err(format!(
                    "racing puts of {k}: the winner put {}, the key reads {}",
                    show(&winner),
                    show(&got)
                ));
            }
            Ok(Effect::Insert(k, winner))
        }
        Op::Get(k) => {
            let r = store.get(&k).await;
            match expected {
                Some(want) => {
                    let got = r.map_err(|e| format!("get {k}: {e}"))?;
                    if got != want {
                        return Err(format!(
                            "get {k}: read {}, want {}",
                            show(&got),
                            show(&want)
                        ));
                    }
                }
                None => expect_kind(r, ErrorKind::NotFound, &format!("get missing {k}"))?,
            }
            Ok(Effect::None)
        }
        Op::GetRange(k, off, len) => {
            let r = store.get_range(&k, off, len).await;
            let what = format!("get_range {k} {off}+{len}");
            match expected {
                Some(want) if off + len <= want.len() as u64 => {
                    let got = r.map_err(|e| format!("{what}: {e}"))?;
                    if got != want.slice(off as usize..(off + len) as usize) {
                        return Err(format!("{what}: wrong bytes"));
                    }
                }
                Some(_) => expect_kind(r, ErrorKind::InvalidRange, &what)?,
                None => expect_kind(r, ErrorKind::NotFound, &what)?,
            }
            Ok(Effect::None)
        }
        Op::Head(k) => {
            let r = store.head(&k).await;
            match expected {
                Some(want) => {
                    let m = r.map_err(|e| format!("head {k}: {e}"))?;
                    if m.size != want.len() as u64 || m.crc32c != Some(crc32c(&want)) {
                        return Err(format!(
                            "head {k}: size {} crc32c {:?}, want {}",
                            m.size,
                            m.crc32c,
                            show(&want)
                        ));
                    }
                }
                None => expect_kind(r, ErrorKind::NotFound, &format!("head missing {k}"))?,
            }
            Ok(Effect::None)
        }
        Op::Delete(k) => {
            store
                .delete(&k)
                .await
                .map_err(|e| format!("delete {k}: {e}"))?;
            Ok(Effect::Remove(k))
        }
        Op::List(_) | Op::Flush => unreachable!("run by the batch"),
    }
}

/// Lists `prefix` and compares it with the oracle, ignoring the keys in `touched` (changed
/// by operations running at the same time); returns a failure.
async fn check_list(
    store: &PieceStore,
    prefix: &str,
    oracle: &HashMap<String, Bytes>,
    touched: &HashSet<String>,
) -> Result<(), String> {
    // s3s-fs answers a LIST 500 when gc deletes a file during its walk: retried (see the
    // helper); only a wrong answer or a non-retryable error fails the test.
    let (listed, retries) =
        piecestore_tests::retry_server_errors(|| store.list(prefix).try_collect::<Vec<_>>()).await;
    let metas: Vec<piecestore::PieceMeta> =
        listed.map_err(|e| format!("list {prefix:?} (after {retries} retries): {e}"))?;
    let mut got = BTreeSet::new();
    for m in metas {
        if !got.insert(m.key.clone()) {
            return Err(format!("list {prefix:?} shows {} twice", m.key));
        }
        if !m.key.starts_with(prefix) {
            return Err(format!("list {prefix:?} shows {}", m.key));
        }
        if touched.contains(&m.key) {
            continue;
        }
        match oracle.get(&m.key) {
            None => {
                return Err(format!(
                    "list {prefix:?} shows {}, which is not stored",
                    m.key
                ));
            }
            // A piece stored as an object of its own may be listed without its checksum
            // (a metadata store's listing does not return it); a packed one has it.
            Some(want)
                if m.size != want.len() as u64
                    || m.crc32c.is_some_and(|c| c != crc32c(want))
                    || (m.crc32c.is_none() && want.len() < THRESHOLD as usize) =>
            {
                return Err(format!(
                    "list {prefix:?}: {} has size {} crc32c {:?}, want {}",
                    m.key,
                    m.size,
                    m.crc32c,
                    show(want)
                ));
            }
            Some(_) => {}
        }
    }
    let missing: Vec<&String> = oracle
        .keys()
        .filter(|k| k.starts_with(prefix) && !touched.contains(*k) && !got.contains(*k))
        .take(5)
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "list {prefix:?} misses stored keys, e.g. {missing:?}"
        ));
    }
    Ok(())
}

/// A `gc` loop in the background.
struct Collector {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<(GcReport, u64), String>>,
}

impl Collector {
    fn start(store: &PieceStore) -> Collector {
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let store = store.clone();
        let task = tokio::spawn(async move {
            let mut total = GcReport::default();
            let mut runs = 0u64;
            let opts = GcOptions {
                grace: Some(Duration::ZERO),
                garbage_ratio: Some(0.3),
                dry_run: false,
            };
            while !s.load(Ordering::Relaxed) {
                match store.gc(opts, &|_| {}).await {
                    Ok(r) => total.add(&r),
                    // Refused on a nearly full disk: by design, not a failure (the check at
                    // the end still wants compaction to have happened).
                    Err(piecestore::Error::Backend {
                        op: "gc", message, ..
                    }) if message.starts_with("not compacting") => {
                        eprintln!("gc run {runs}: {message}");
                    }
                    Err(e) => return Err(format!("gc run {runs} failed: {e}")),
                }
                runs += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok((total, runs))
        });
        Collector { stop, task }
    }

    async fn stop(self) -> (GcReport, u64) {
        self.stop.store(true, Ordering::Relaxed);
        match self.task.await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => panic!("{e}"),
            Err(e) => panic!("the gc task panicked: {e}"),
        }
    }
}

async fn fsck_clean(store: &PieceStore, when: &str) {
    let report = store
        .fsck(FsckOptions::default(), &|_| {})
        .await
        .unwrap_or_else(|e| panic!("fsck {when}: {e}"));
    assert!(
        report.is_clean(),
        "fsck {when} found {} problems:\n{}",
        report.problems.len(),
        piecestore_tests::fsck_problems(&report)
    );
}

/// Compares the whole store with the oracle.
async fn check_all(store: &PieceStore, oracle: &HashMap<String, Bytes>, when: &str) {
    check_list(store, "", oracle, &HashSet::new())
        .await
        .unwrap_or_else(|e| panic!("{when}: {e}"));
    for (k, want) in oracle {
        let got = store
            .get(k)
            .await
            .unwrap_or_else(|e| panic!("{when}: get {k}: {e}"));
        assert!(
            got == *want,
            "{when}: {k} reads {}, want {}",
            show(&got),
            show(want)
        );
    }
}

/// Runs the model on the store `config` opens (packing options set here); `reopen`: also close
/// and reopen it now and then (a store that keeps its pieces across opens).
async fn model(name: &str, mut config: Config, reopen: bool) {
    let seed = env_u64("PIECESTORE_MODEL_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let ops_wanted = env_u64("PIECESTORE_MODEL_OPS").unwrap_or(12_000);
    let mut rng = Rng(seed | 1);
    let target = (16 << 10) + rng.below(48 << 10) as i64;
    eprintln!(
        "{name}: PIECESTORE_MODEL_SEED={seed}, {ops_wanted} operations, PackTargetSize {target}"
    );
    for (opt, v) in [
        ("Pack", OptionValue::Bool(true)),
        ("PackThreshold", OptionValue::Int(THRESHOLD)),
        ("PackTargetSize", OptionValue::Int(target)),
        ("PackMaxAge", OptionValue::Str("1ms".into())),
        ("GcGrace", OptionValue::Str("0s".into())),
        ("GcGarbageRatio", OptionValue::Float(0.3)),
    ] {
        config.set_option(opt, v).expect(opt);
    }
    let mut store = PieceStore::open(config.clone()).await.expect("open");
    assert!(store.is_packed(), "{name}: the store does not pack");
    let mut gc = Collector::start(&store);
    let mut gc_total = GcReport::default();
    let mut gc_runs = 0;
    let pool: Vec<String> = PREFIXES
        .iter()
        .flat_map(|p| (0..KEYS_PER_PREFIX).map(move |i| format!("{p}{i}")))
        .collect();
    let list_prefixes = [
        "", "a/", "a/1", "b_", "b_3", "c/", "c/d/", "c/d/2", "e", "e1",
    ];
    let mut oracle: HashMap<String, Bytes> = HashMap::new();
    let mut done = 0u64;
    let mut batches = 0u64;
    let mut reopens = 0u64;
    let mut counts: HashMap<&'static str, u64> = HashMap::new();
    while done < ops_wanted {
        batches += 1;
        if reopen && rng.chance(100) {
            let (r, n) = gc.stop().await;
            gc_total.add(&r);
            gc_runs += n;
            fsck_clean(&store, &format!("before reopen {reopens}")).await;
            store.close().await;
            // Dropped first, so the new store builds its own packer (a process shares one per
            // directory while a store on it is alive).
            drop(store);
            store = PieceStore::open(config.clone())
                .await
                .unwrap_or_else(|e| panic!("{name}: reopen {reopens}: {e}"));
            reopens += 1;
            gc = Collector::start(&store);
            *counts.entry("reopen").or_default() += 1;
            done += 1;
            continue;
        }
        // A batch of operations on distinct keys, run concurrently.
        let size = 1 + rng.below(24);
        let mut touched: HashSet<String> = HashSet::new();
        let mut keyed: Vec<(Op, Option<Bytes>)> = Vec::new();
        let mut lists: Vec<String> = Vec::new();
        let mut flushes = 0;
        for _ in 0..size {
            // A key not yet used in this batch, present or not as `present` asks (a few
            // tries; `None` when none was found).
            let mut pick = |rng: &mut Rng, present: Option<bool>| -> Option<String> {
                for _ in 0..32 {
                    let k = &pool[rng.below(pool.len() as u64) as usize];
                    if touched.contains(k) || present.is_some_and(|p| oracle.contains_key(k) != p) {
                        continue;
                    }
                    touched.insert(k.clone());
                    return Some(k.clone());
                }
                None
            };
            let roll = rng.below(100);
            let op = match roll {
                0..=24 => {
                    pick(&mut rng, Some(false)).map(|k| Op::PutNew(k, random_piece(&mut rng)))
                }
                25..=29 => {
                    pick(&mut rng, Some(true)).map(|k| Op::PutSame(k.clone(), oracle[&k].clone()))
                }
                30..=34 => pick(&mut rng, Some(true)).map(|k| {
                    let d = different_piece(&mut rng, &oracle[&k]);
                    Op::PutDifferent(k, d)
                }),
                35..=37 => pick(&mut rng, Some(false)).map(|k| {
                    // Both packed or both objects of their own: a packed put racing an
                    // object put is `racing_packed_and_object_puts_of_one_key` below.
                    let a = random_piece(&mut rng);
                    let b = loop {
                        let b = different_piece(&mut rng, &a);
                        if (b.len() >= THRESHOLD as usize) == (a.len() >= THRESHOLD as usize) {
                            break b;
                        }
                    };
                    Op::RacePut(k, a, b)
                }),
                38..=54 => pick(&mut rng, None).map(Op::Get),
                55..=64 => pick(&mut rng, None).map(|k| {
                    let len = oracle.get(&k).map_or(64, |b| b.len() as u64);
                    // Mostly inside the piece, sometimes past its end.
                    let off = rng.below(len + 1);
                    let n = if rng.chance(8) {
                        len - off + 1 + rng.below(4)
                    } else {
                        rng.below(len - off + 1)
                    };
                    Op::GetRange(k, off, n)
                }),
                65..=72 => pick(&mut rng, None).map(Op::Head),
                73..=89 => {
                    // Mostly keys that are stored; deleting a missing key succeeds too.
                    let present = !rng.chance(10);
                    pick(&mut rng, Some(present)).map(Op::Delete)
                }
                90..=97 => Some(Op::List(
                    list_prefixes[rng.below(list_prefixes.len() as u64) as usize].to_string(),
                )),
                _ => Some(Op::Flush),
            };
            let Some(op) = op else { continue };
            let kind = match &op {
                Op::PutNew(..) => "put new",
                Op::PutSame(..) => "put same",
                Op::PutDifferent(..) => "put different",
                Op::RacePut(..) => "racing puts",
                Op::Get(_) => "get",
                Op::GetRange(..) => "get_range",
                Op::Head(_) => "head",
                Op::Delete(_) => "delete",
                Op::List(_) => "list",
                Op::Flush => "flush",
            };
            *counts.entry(kind).or_default() += 1;
            done += 1;
            match op {
                Op::List(p) => lists.push(p),
                Op::Flush => flushes += 1,
                op => {
                    let key = match &op {
                        Op::PutNew(k, _)
                        | Op::PutSame(k, _)
                        | Op::PutDifferent(k, _)
                        | Op::RacePut(k, _, _)
                        | Op::Get(k)
                        | Op::GetRange(k, _, _)
                        | Op::Head(k)
                        | Op::Delete(k) => k,
                        Op::List(_) | Op::Flush => unreachable!(),
                    };
                    let expected = oracle.get(key).cloned();
                    keyed.push((op, expected));
                }
            }
        }
        let tasks: Vec<_> = keyed
            .iter()
            .cloned()
            .map(|(op, expected)| tokio::spawn(run_op(store.clone(), op, expected)))
            .collect();
        let list_tasks: Vec<_> = lists
            .iter()
            .map(|p| {
                let (store, p) = (store.clone(), p.clone());
                let (oracle, touched) = (oracle.clone(), touched.clone());
                tokio::spawn(async move { check_list(&store, &p, &oracle, &touched).await })
            })
            .collect();
        let flush_tasks: Vec<_> = (0..flushes)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.flush().await.map_err(|e| format!("flush: {e}")) })
            })
            .collect();
        let results = futures::future::join_all(tasks).await;
        let fail = |what: String| -> ! {
            panic!("{name}: seed {seed}, batch {batches}, after {done} operations: {what}")
        };
        for ((op, _), r) in keyed.iter().zip(results) {
            match r {
                Ok(Ok(Effect::None)) => {}
                Ok(Ok(Effect::Insert(k, d))) => {
                    oracle.insert(k, d);
                }
                Ok(Ok(Effect::Remove(k))) => {
                    oracle.remove(&k);
                }
                Ok(Err(e)) => fail(e),
                Err(e) => fail(format!("{op:?} panicked: {e}")),
            }
        }
        for r in futures::future::join_all(list_tasks)
            .await
            .into_iter()
            .chain(futures::future::join_all(flush_tasks).await)
        {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => fail(e),
                Err(e) => fail(format!("a task panicked: {e}")),
            }
        }
    }
    let (r, n) = gc.stop().await;
    gc_total.add(&r);
    gc_runs += n;
    store.flush().await.expect("flush");
    check_all(&store, &oracle, &format!("{name}: at the end")).await;
    fsck_clean(&store, &format!("{name}: at the end")).await;
    if reopen {
        store.close().await;
        drop(store);
        let again = PieceStore::open(config.clone()).await.expect("reopen");
        check_all(&again, &oracle, &format!("{name}: reopened at the end")).await;
        fsck_clean(&again, &format!("{name}: reopened at the end")).await;
        again.close().await;
    }
    eprintln!(
        "{name}: {done} operations in {batches} batches, {reopens} reopens; {} pieces stored at the end; \
         gc: {gc_runs} runs, {} packs compacted, {} pieces moved, {} packs deleted, {} tombstones dropped; ops: {counts:?}",
        oracle.len(),
        gc_total.packs_compacted,
        gc_total.pieces_moved,
        gc_total.packs_deleted,
        gc_total.tombstones_dropped,
    );
    // The background collection must have raced the operations, or this tested little.
    assert!(
        gc_total.packs_compacted > 0 && gc_total.pieces_moved > 0 && gc_total.packs_deleted > 0,
        "{name}: gc never compacted anything ({gc_total:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_memory_store_matches_the_model_while_gc_races() {
    model("memory", Config::from_url("memory://").expect("url"), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_file_store_matches_the_model_while_gc_races_and_reopens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}/pieces", dir.path().display());
    model("file", Config::from_url(&url).expect("url"), true).await;
}

/// The model on a real S3-compatible server: packs are objects of one create-only PUT per
/// write group, the index lives in a local `IndexDir`, and the store is reopened now and then.
async fn model_on_s3(kind: piecestore_tests::ServerKind, name: &str) {
    let Some(server) = piecestore_tests::server(kind) else {
        return;
    };
    let index = tempfile::tempdir().expect("tempdir");
    let mut config = server.config(&piecestore_tests::unique_name(name), 2);
    config
        .set_option(
            "IndexDir",
            OptionValue::Str(index.path().display().to_string()),
        )
        .expect("IndexDir");
    model(name, config, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_s3s_fs_store_matches_the_model_while_gc_races_and_reopens() {
    model_on_s3(piecestore_tests::ServerKind::S3sFs, "s3s-fs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_moto_store_matches_the_model_while_gc_races_and_reopens() {
    model_on_s3(piecestore_tests::ServerKind::Moto, "moto").await;
}

/// The model with the PostgreSQL index (a throwaway cluster on 127.0.0.1): on a local
/// directory, reopened now and then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_file_store_with_the_postgres_index_matches_the_model() {
    let Some(pg) = piecestore_tests::postgres() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}/pieces", dir.path().display());
    let mut config = Config::from_url(&url).expect("url");
    config
        .set_option("IndexUrl", OptionValue::Str(pg.url.clone()))
        .expect("IndexUrl");
    model("file+postgres", config, true).await;
}

/// The model with the PostgreSQL index on s3s-fs (packs are objects; two shards).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_s3s_fs_store_with_the_postgres_index_matches_the_model() {
    let Some(pg) = piecestore_tests::postgres() else {
        return;
    };
    let Some(server) = piecestore_tests::server(piecestore_tests::ServerKind::S3sFs) else {
        return;
    };
    let mut config = server.config(&piecestore_tests::unique_name("s3s-pg"), 2);
    config
        .set_option("IndexUrl", OptionValue::Str(pg.url.clone()))
        .expect("IndexUrl");
    model("s3s-fs+postgres", config, true).await;
}

/// The PostgreSQL index's apply function has three ways through a batch: one statement for
/// a bucket's write group (its new pack first, then the sequence counter and new keys' pieces
/// in that pack), a few set-based statements for other batches of new keys, and a statement
/// per change for the rest; and a node sends a write group to the group function instead, as
/// arrays. The same batches, sent each of the four ways (the pack moved behind the counter, a
/// change of another kind added, or a write group as the group function's arrays), must
/// answer alike and leave the same rows: sent again, into a pack recorded already, against a
/// key taken with other bytes or announced by an intent, with two packs or into another pack,
/// lazily and durably.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_apply_function_answers_alike_on_each_of_its_paths() {
    let Some(pg) = piecestore_tests::postgres() else {
        return;
    };
    // Opening a store with the index creates its tables and function.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config =
        Config::from_url(&format!("file://{}/pieces", dir.path().display())).expect("url");
    config
        .set_option("IndexUrl", OptionValue::Str(pg.url.clone()))
        .expect("IndexUrl");
    drop(PieceStore::open(config).await.expect("open"));
    let (client, connection) = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);

    let pack = |id: &str| {
        format!(
            r#"{{"t":"add_pack","id":"{id}","size":900,"payload":500,"records":3,"min_seq":1,"state":0,"since":0}}"#
        )
    };
    let insert = |key: &str, slot: &str, seq: u64, pack: &str, len: u64| {
        format!(
            r#"{{"t":"insert","key":"{key}","slot":"{slot}","seq":{seq},"pack":"{pack}","len":{len}}}"#
        )
    };
    let bump = |seq: u64| format!(r#"{{"t":"bump_seq","seq":{seq}}}"#);
    let group = vec![
        pack("bb01"),
        bump(9),
        insert("n1", "11", 5, "bb01", 5),
        insert("n2", "12", 6, "bb01", 7),
    ];
    // (changes, durable); each batch's first change is its pack.
    let batches: Vec<(Vec<String>, bool)> = vec![
        (group.clone(), false),
        (group, false),
        (
            vec![pack("bb01"), insert("n3", "13", 7, "bb01", 100)],
            false,
        ),
        (
            vec![
                pack("bb02"),
                insert("n1", "99", 8, "bb02", 5),
                insert("n4", "14", 9, "bb02", 1),
            ],
            true,
        ),
        (vec![pack("bb03"), insert("n5", "15", 10, "bb03", 3)], false),
        (
            vec![
                pack("aa01"),
                pack("aa02"),
                insert("k1", "01", 11, "aa01", 10),
                insert("k2", "02", 12, "aa02", 20),
            ],
            false,
        ),
        (
            vec![pack("aa03"), bump(40), insert("k3", "03", 13, "aa01", 30)],
            true,
        ),
        (
            vec![pack("cc01"), bump(50), insert("k4", "04", 14, "cc01", 8)],
            true,
        ),
    ];
    let mut seen: Vec<(String, Vec<Vec<bool>>, Vec<String>)> = Vec::new();
    // Whether a batch is a write group as a node sends the group function (its one pack
    // first, then counter raises and pieces in that pack).
    let shaped = |sent: &[String]| {
        let Some(id) = sent[0]
            .strip_prefix(r#"{"t":"add_pack","id":""#)
            .and_then(|r| r.split('"').next())
        else {
            return false;
        };
        sent[1..].iter().all(|c| {
            c.starts_with(r#"{"t":"bump_seq""#)
                || (c.starts_with(r#"{"t":"insert""#) && c.contains(&format!(r#""pack":"{id}""#)))
        })
    };
    let mut grouped = Vec::new();
    for way in ["one statement", "set-based", "per change", "arrays"] {
        let ix = piecestore_tests::unique_name("apply");
        // A key announced by an intent is taken by no insert.
        client
            .execute(
                "INSERT INTO piecestore_intents VALUES ($1, 'n5', '\\x00', 1)",
                &[&ix],
            )
            .await
            .expect("intent");
        let mut answers = Vec::new();
        // Rows of `piecestore_packs` each batch updated: the one-statement path inserts a new
        // pack's row with its counts and updates none.
        let mut updates = Vec::new();
        for (changes, durable) in &batches {
            let mut sent = changes.clone();
            match way {
                "set-based" => sent.rotate_left(1), // the pack no longer first
                "per change" => sent.push(r#"{"t":"set_meta","name":"other","value":1}"#.into()),
                _ => {}
            }
            let json = format!("[{}]", sent.join(","));
            // Counted within the transaction (the counters of finished ones are flushed now
            // and then).
            let packs_updated = async || -> i64 {
                client
                    .query_one(
                        "SELECT coalesce(sum(n_tup_upd), 0)::bigint \
                         FROM pg_stat_xact_user_tables WHERE relname = 'piecestore_packs'",
                        &[],
                    )
                    .await
                    .expect("pg_stat_xact_user_tables")
                    .get(0)
            };
            client.batch_execute("BEGIN").await.expect("begin");
            let before = packs_updated().await;
            let arrays = way == "arrays" && shaped(&sent);
            if arrays {
                grouped.push(answers.len());
            }
            let row = if arrays {
                // The JSON's fields as the group function's arguments.
                client
                    .query_one(
                        "WITH b AS (SELECT $2::text::jsonb AS b), \
                         e AS (SELECT e, k FROM b, jsonb_array_elements(b.b) \
                               WITH ORDINALITY AS j(e, k)) \
                         SELECT piecestore_group_v1($1, decode(b->0->>'id', 'hex'), \
                           (b->0->>'size')::bigint, (b->0->>'payload')::bigint, \
                           (b->0->>'records')::bigint, (b->0->>'min_seq')::bigint, \
                           (b->0->>'state')::smallint, (b->0->>'since')::bigint, \
                           (SELECT coalesce(max((e->>'seq')::bigint), 0) FROM e \
                             WHERE e->>'t' = 'bump_seq'), \
                           ARRAY(SELECT e->>'key' FROM e WHERE e->>'t' = 'insert' ORDER BY k), \
                           ARRAY(SELECT decode(e->>'slot', 'hex') FROM e \
                                 WHERE e->>'t' = 'insert' ORDER BY k), \
                           ARRAY(SELECT (e->>'seq')::bigint FROM e \
                                 WHERE e->>'t' = 'insert' ORDER BY k), \
                           ARRAY(SELECT (e->>'len')::bigint FROM e \
                                 WHERE e->>'t' = 'insert' ORDER BY k), $3) FROM b",
                        &[&ix, &json, durable],
                    )
                    .await
            } else {
                client
                    .query_one(
                        "SELECT piecestore_apply_v1($1, $2::text::jsonb, $3)",
                        &[&ix, &json, durable],
                    )
                    .await
            }
            .unwrap_or_else(|e| panic!("{way}: {json}: {e:?}"));
            let updated = packs_updated().await - before;
            client.batch_execute("COMMIT").await.expect("commit");
            updates.push(updated);
            let mut took: Vec<bool> = row.get(0);
            if arrays {
                // Whether the pack is new, then each piece's answer: back to one a change.
                let all = std::mem::take(&mut took);
                let mut pieces = all[1..].iter();
                took = sent
                    .iter()
                    .enumerate()
                    .map(|(i, c)| match i {
                        0 => all[0],
                        _ if c.starts_with(r#"{"t":"bump_seq""#) => true,
                        _ => *pieces.next().expect("an answer a piece"),
                    })
                    .collect();
                assert!(pieces.next().is_none(), "{way}: an answer too many: {json}");
            }
            assert_eq!(took.len(), sent.len(), "{way}: {json}");
            match way {
                "set-based" => took.rotate_right(1),
                "per change" => {
                    took.pop();
                }
                _ => {}
            }
            answers.push(took);
        }
        let rows = |sql: &'static str| {
            let client = &client;
            let ix = ix.clone();
            async move {
                client
                    .query(sql, &[&ix])
                    .await
                    .expect(sql)
                    .iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<Vec<_>>()
            }
        };
        let mut state = rows(
            "SELECT concat_ws(' ', key, encode(slot, 'hex'), seq, encode(pack, 'hex'), len) \
             FROM piecestore_pieces WHERE ix = $1 ORDER BY key",
        )
        .await;
        state.extend(
            rows(
                "SELECT concat_ws(' ', encode(id, 'hex'), size, payload, live_bytes, live_count, \
                 records, min_seq, state, since_ms) FROM piecestore_packs WHERE ix = $1 ORDER BY id",
            )
            .await,
        );
        state.extend(
            rows(
                "SELECT concat_ws(' ', name, value) FROM piecestore_meta \
                 WHERE ix = $1 AND name = 'max_seq'",
            )
            .await,
        );
        match way {
            // Batches of a new pack and its pieces took the one statement; a pack recorded
            // already, two packs, a piece in another pack took other paths.
            "one statement" | "arrays" => {
                for i in [0, 3, 4, 7] {
                    assert_eq!(updates[i], 0, "batch {i} updated a pack: not one statement");
                }
                for i in [2, 5, 6] {
                    assert!(updates[i] > 0, "batch {i} counted into no pack");
                }
            }
            _ => assert!(
                updates[0] > 0,
                "{way}: the first batch took the one statement"
            ),
        }
        seen.push((way.to_string(), answers, state));
    }
    // Batches of one pack and its pieces went to the group function, the others not.
    assert_eq!(grouped, [0, 1, 2, 3, 4, 7], "batches sent as arrays");
    let (_, answers, state) = &seen[0];
    // What the batches must do, whichever way: a group sent again takes its keys again
    // (not its pack); a key taken with other bytes or announced is not taken; pieces count
    // into the pack they are in.
    assert_eq!(answers[0], [true; 4]);
    assert_eq!(answers[1], [false, true, true, true]);
    assert_eq!(answers[2], [false, true]);
    assert_eq!(answers[3], [true, false, true]);
    assert_eq!(answers[4], [true, false]);
    for want in [
        "n1 11 5 bb01 5",
        "n3 13 7 bb01 100",
        "bb01 900 500 112 3 3 1 0 0",
        "bb02 900 500 1 1 3 1 0 0",
        "bb03 900 500 0 0 3 1 0 0",
        "aa01 900 500 40 2 3 1 0 0",
        "max_seq 50",
    ] {
        assert!(state.iter().any(|s| s == want), "no {want:?} in {state:#?}");
    }
    for (way, a, s) in &seen[1..] {
        assert_eq!(a, answers, "answers, one statement against {way}");
        assert_eq!(s, state, "rows, one statement against {way}");
    }
}

/// A packed put (small piece) racing an object put (large piece) of one new key, with
/// different bytes: exactly one may succeed, and the key must then read as that one (a key
/// is held by one write at a time, packed or not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_packed_and_object_puts_of_one_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in [
        "memory://".to_string(),
        format!("file://{}/pieces", dir.path().display()),
    ] {
        let mut config = Config::from_url(&url).expect("url");
        config
            .set_option("Pack", OptionValue::Bool(true))
            .expect("Pack");
        config
            .set_option("PackThreshold", OptionValue::Int(THRESHOLD))
            .expect("PackThreshold");
        config
            .set_option("PackMaxAge", OptionValue::Str("1ms".into()))
            .expect("PackMaxAge");
        let store = PieceStore::open(config).await.expect("open");
        let mut both_ok = Vec::new();
        for i in 0..50u64 {
            let key = format!("race{i}");
            let small = Bytes::from(piecestore_tests::pseudo_random(100, i));
            let large = Bytes::from(piecestore_tests::pseudo_random(2 * THRESHOLD as usize, i));
            let (rs, rl) = tokio::join!(
                store.put(&key, small.clone()),
                store.put(&key, large.clone())
            );
            let got = store.get(&key).await.expect("get");
            match (rs, rl) {
                (Ok(()), Ok(())) => both_ok.push(format!(
                    "{key}: both Ok, reads the {} one",
                    if got == small {
                        "small"
                    } else if got == large {
                        "large"
                    } else {
                        "neither"
                    }
                )),
                (Ok(()), Err(e)) if e.kind() == ErrorKind::AlreadyExists => {
                    assert!(
                        got == small,
                        "{url} {key}: the small put won, the key reads {}",
                        show(&got)
                    )
                }
                (Err(e), Ok(())) if e.kind() == ErrorKind::AlreadyExists => {
                    assert!(
                        got == large,
                        "{url} {key}: the large put won, the key reads {}",
                        show(&got)
                    )
                }
                (rs, rl) => panic!(
                    "{url} {key}: {:?} / {:?}",
                    rs.map_err(|e| e.to_string()),
                    rl.map_err(|e| e.to_string())
                ),
            }
        }
        assert!(
            both_ok.is_empty(),
            "{url}: {} of 50 races acknowledged both puts: {both_ok:#?}",
            both_ok.len()
        );
        store.close().await;
    }
}

/// A large put cancelled while its object is written frees its key: the same put again
/// succeeds (it used to wait forever on, then fail with, the cancelled put's reservation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_object_put_frees_its_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}/pieces", dir.path().display());
    let store = PieceStore::open(Config::from_url(&url).expect("config"))
        .await
        .expect("open");
    assert!(store.is_packed());
    let data = Bytes::from(piecestore_tests::pseudo_random(32 << 20, 5));
    let mut cancelled = 0;
    for i in 0..5 {
        let key = format!("big{i}");
        let put = store.put(&key, data.clone());
        if tokio::time::timeout(Duration::from_micros(200), put)
            .await
            .is_err()
        {
            cancelled += 1;
        }
        store
            .put(&key, data.clone())
            .await
            .expect("the same put again");
        assert!(store.get(&key).await.expect("get") == data);
        assert_eq!(
            store
                .put(&key, Bytes::from_static(b"other"))
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::AlreadyExists
        );
    }
    assert!(cancelled > 0, "no put was cancelled mid-way");
}
