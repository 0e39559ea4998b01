//! Crash consistency of packed writes: a writer process (`pack-writer`) is SIGKILLed again and
//! again at random moments on one store directory, and after every kill the store, reopened
//! here, must hold every acknowledged put and overwrite, none of the acknowledged deletes,
//! nothing half-visible, exactly what the previous check saw of earlier rounds, and pass
//! `fsck`. The writer puts small (packed) and large pieces (objects of their own), overwrites
//! either kind with either kind, and deletes both.
//! Every other writer also runs gc, so kills land inside compactions; every fifth round the
//! index is rebuilt from the packs (`fsck --rebuild-index`) and must say the same.
//!
//! Several processes share one store too: four writers and a collector run on one directory
//! while this process reads what they acknowledge, then round after round one of the writers
//! is killed at random; racers in several processes put the same keys at the same moment.
//!
//! `PIECESTORE_CRASH_ROUNDS` sets the number of rounds (default 20; a nightly run uses more),
//! `PIECESTORE_CRASH_SEED` the seed of the kill times (printed, to replay a run).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use piecestore::{ErrorKind, PieceStore};

#[allow(dead_code)]
#[path = "bin/pack_writer.rs"]
mod pack_writer;

use pack_writer::{Bucket, piece_v};
use piecestore_tests::XorShift as Rng;

/// A writer process, killed when dropped (a failing test leaves no writer behind).
struct Writer(Child);

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_writer(dir: &str, bucket: Option<&Bucket>, seed: u64, gc: bool) -> Writer {
    spawn_with(dir, bucket, seed, if gc { &["--gc"] } else { &[] })
}

/// A `pack-writer` with `args` after its directory and seed.
fn spawn_with(dir: &str, bucket: Option<&Bucket>, seed: u64, args: &[&str]) -> Writer {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pack-writer"));
    cmd.arg(dir).arg(seed.to_string()).args(args);
    if let Some(b) = bucket {
        cmd.arg("--url").arg(&b.url);
        cmd.env("PACK_WRITER_ACCESS_KEY", &b.access_key);
        cmd.env("PACK_WRITER_SECRET_KEY", &b.secret_key);
        if let Some(url) = &b.index_url {
            cmd.env("PACK_WRITER_INDEX_URL", url);
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: prctl is async-signal-safe; the writer dies with this test process.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    Writer(cmd.spawn().expect("spawn pack-writer"))
}

/// A new bucket on `server` for the writers (with the PostgreSQL index at `index_url`).
fn new_bucket(server: &piecestore_tests::S3Server, name: &str, index_url: Option<&str>) -> Bucket {
    let name = piecestore_tests::unique_name(name);
    server.create_bucket(&name);
    Bucket {
        url: format!("{}/{name}", server.endpoint),
        access_key: server.access_key.clone(),
        secret_key: server.secret_key.clone(),
        index_url: index_url.map(str::to_string),
    }
}

/// `PIECESTORE_CRASH_SEED`, or the clock.
fn crash_seed() -> u64 {
    env_u64("PIECESTORE_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    })
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// What the writers acknowledged, over all rounds.
#[derive(Default)]
struct Ledger {
    /// Put (or overwrite) acknowledged, no delete issued: must read back at this version.
    live: BTreeMap<String, u32>,
    /// Overwrite issued, not acknowledged: the old version or the new one.
    overwriting: BTreeMap<String, (u32, u32)>,
    /// Delete issued, not acknowledged: present at this version, or gone.
    maybe_deleted: BTreeMap<String, u32>,
    /// Delete acknowledged: must be gone.
    deleted: BTreeSet<String>,
    /// Each key's events, in order (`P`, `o1`, `O1`, `d`, `D`), for failure messages.
    history: BTreeMap<String, String>,
    puts: u64,
    overwrites: u64,
    deletes: u64,
}

impl Ledger {
    fn apply(&mut self, line: &str) {
        let mut parts = line.split(' ');
        let (event, key) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let version = || -> u32 {
            line.split(' ')
                .nth(2)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("writer wrote a malformed line {line:?}"))
        };
        if event != "R" {
            let h = self.history.entry(key.to_string()).or_default();
            h.push_str(if h.is_empty() { "" } else { " " });
            h.push_str(event);
            h.push_str(line.split(' ').nth(2).unwrap_or(""));
        }
        match event {
            "R" => {}
            "P" => {
                assert!(
                    !self.deleted.contains(key) && !self.maybe_deleted.contains_key(key),
                    "the writer put {key} again after deleting it"
                );
                assert!(
                    self.live.insert(key.to_string(), 0).is_none(),
                    "{key} acknowledged twice"
                );
                self.puts += 1;
            }
            "o" => {
                let old = self
                    .live
                    .remove(key)
                    .unwrap_or_else(|| panic!("the writer overwrites {key}, which is not live"));
                self.overwriting.insert(key.to_string(), (old, version()));
            }
            "O" => {
                let (_, new) = self
                    .overwriting
                    .remove(key)
                    .unwrap_or_else(|| panic!("{key}: O without o"));
                assert_eq!(new, version(), "{key}: O names another version than o");
                self.live.insert(key.to_string(), new);
                self.overwrites += 1;
            }
            "d" => {
                let v = self.live.remove(key).unwrap_or_else(|| {
                    panic!("the writer deletes {key}, which it never acknowledged")
                });
                self.maybe_deleted.insert(key.to_string(), v);
            }
            "D" => {
                assert!(
                    self.maybe_deleted.remove(key).is_some(),
                    "{key}: D without d"
                );
                self.deleted.insert(key.to_string());
                self.deletes += 1;
            }
            _ => panic!("writer wrote an unknown line {line:?}"),
        }
    }

    /// What the writers said of `key`, for a failure message.
    fn story(&self, key: &str) -> &str {
        self.history.get(key).map_or("nothing", String::as_str)
    }

    /// The versions `key` may read as (a key the ledger does not know: its first put was in
    /// flight at a kill, so version 0).
    fn versions(&self, key: &str) -> Vec<u32> {
        if let Some(v) = self.live.get(key).or(self.maybe_deleted.get(key)) {
            return vec![*v];
        }
        if let Some((old, new)) = self.overwriting.get(key) {
            return vec![*old, *new];
        }
        vec![0]
    }
}

/// For a failure message on a local directory: where the index puts `key`, and every record
/// of it in the directory's pack files, with what the index says of each pack.
fn explain(dir: &str, key: &str) -> String {
    use piecestore::pack::index::PackIndex;
    use piecestore::pack::{format, index};
    let root = std::path::Path::new(dir).join(".piecestore");
    let ix = match index::SqliteIndex::open(&root.join("index.sqlite")) {
        Ok(ix) => ix,
        Err(e) => return format!("the index does not open: {e}"),
    };
    let packs: BTreeMap<_, _> = ix.packs().unwrap_or_default().into_iter().collect();
    let mut out = format!("index slot {:?}", ix.get(key));
    let mut names: Vec<_> = std::fs::read_dir(root.join("packs"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    names.sort();
    for name in names {
        let name = name.to_string_lossy().into_owned();
        let Some(id) = index::parse_pack_name(&name) else {
            continue;
        };
        let Ok(bytes) = std::fs::read(root.join("packs").join(&name)) else {
            continue;
        };
        let Ok(scan) = format::scan(&bytes) else {
            continue;
        };
        for e in scan.entries.iter().filter(|e| e.key == key) {
            let payload = &bytes[e.offset as usize..(e.offset + e.len) as usize];
            out.push_str(&format!(
                "; pack {name} ({:?}): {:?} seq {} len {} at {} upto {:?}",
                packs.get(&id),
                e.kind,
                e.seq,
                e.len,
                e.offset,
                (e.kind == format::RecordKind::Tombstone)
                    .then(|| format::tombstone_target(payload))
            ));
        }
    }
    out
}

/// Reads one writer's complete stdout lines (a line cut by the kill is dropped) and its stderr.
fn read_output(w: &mut Writer) -> (mpsc::Receiver<String>, mpsc::Receiver<String>) {
    let stdout = w.0.stdout.take().expect("stdout");
    let mut stderr = w.0.stderr.take().expect("stderr");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) if buf.last() == Some(&b'\n') => {
                    let line = String::from_utf8_lossy(&buf[..buf.len() - 1]).into_owned();
                    if tx.send(line).is_err() {
                        return;
                    }
                }
                Ok(_) => return, // torn last line
            }
        }
    });
    let (etx, err) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        let _ = etx.send(s);
    });
    (lines, err)
}

/// Everything on `rx` until its sender is gone, or panics after `limit`.
fn drain(rx: &mpsc::Receiver<String>, limit: Duration, what: &str) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => out.push(l),
            Err(mpsc::RecvTimeoutError::Disconnected) => return out,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("{what} did not end within {limit:?} after the writer was killed")
            }
        }
    }
}

/// Reopens the store and checks it against the ledger. `before`: the keys of earlier rounds
/// the previous check saw, with the version each read as; returns what this check saw.
async fn verify(
    dir: &str,
    bucket: Option<&Bucket>,
    round: u64,
    rounds: u64,
    ledger: &Ledger,
    before: &BTreeMap<String, u32>,
) -> BTreeMap<String, u32> {
    verify_seeds(dir, bucket, round, rounds, ledger, before, &[round]).await
}

/// [`verify`], for a round whose writers had the seeds `seeds`.
async fn verify_seeds(
    dir: &str,
    bucket: Option<&Bucket>,
    round: u64,
    rounds: u64,
    ledger: &Ledger,
    before: &BTreeMap<String, u32>,
    seeds: &[u64],
) -> BTreeMap<String, u32> {
    let t0 = Instant::now();
    let store = PieceStore::open(pack_writer::config(dir, bucket).expect("config"))
        .await
        .unwrap_or_else(|e| panic!("round {round}: reopening after the kill: {e}"));

    // Nothing half-visible: every listed key reads back with the bytes its key determines.
    let metas: Vec<piecestore::PieceMeta> = store
        .list("")
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("round {round}: list: {e}"));
    let mut listed = BTreeSet::new();
    for m in &metas {
        assert!(
            listed.insert(m.key.clone()),
            "round {round}: list shows {} twice",
            m.key
        );
        assert!(
            m.key.starts_with('w'),
            "round {round}: list shows {:?}, which no writer wrote",
            m.key
        );
        assert!(
            !ledger.deleted.contains(&m.key),
            "round {round}: {}, whose delete was acknowledged, is listed again with the size {} (the writer said: {}; {})",
            m.key,
            m.size,
            ledger.story(&m.key),
            if bucket.is_none() {
                explain(dir, &m.key)
            } else {
                String::new()
            }
        );
        let sizes: Vec<u64> = (ledger.versions(&m.key).iter())
            .map(|v| piece_v(&m.key, *v).len() as u64)
            .collect();
        assert!(
            sizes.contains(&m.size),
            "round {round}: list gives {} the size {}, not one of {sizes:?} (the writer said: {})",
            m.key,
            m.size,
            ledger.story(&m.key)
        );
    }
    let seen = check_bytes(&store, round, ledger, listed.iter().cloned(), false).await;

    // Every acknowledged put (not deleted since) is listed, so it was just read back.
    let missing: Vec<&String> = (ledger.live.keys())
        .chain(ledger.overwriting.keys())
        .filter(|k| !listed.contains(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "round {round}: {} acknowledged puts are not listed, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    // A delete in flight at the kill: the piece is whole or gone (whole ones were listed).
    check_bytes(
        &store,
        round,
        ledger,
        ledger.maybe_deleted.keys().cloned(),
        true,
    )
    .await;
    // Every acknowledged delete is gone, from the listing and from reads.
    let resurrected: Vec<&String> = ledger.deleted.intersection(&listed).collect();
    assert!(
        resurrected.is_empty(),
        "round {round}: {} acknowledged deletes are listed again, e.g. {:?}",
        resurrected.len(),
        &resurrected[..resurrected.len().min(5)]
    );
    let gone = futures::stream::iter(ledger.deleted.iter().cloned())
        .map(|k| {
            let store = store.clone();
            async move { (store.get(&k).await.map(|_| ()), store.head(&k).await, k) }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    for (get, head, k) in gone {
        match get {
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => panic!("round {round}: deleted {k}: get failed with {e}, not NotFound"),
            Ok(()) => panic!("round {round}: deleted {k} reads back"),
        }
        match head {
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            other => panic!("round {round}: deleted {k}: head gave {other:?}"),
        }
    }

    // What an earlier check saw of earlier rounds' keys stays exactly so: later crashes and
    // recoveries neither lose nor resurrect anything.
    let this_round: Vec<String> = seeds.iter().map(|s| format!("w{s}_")).collect();
    let older: BTreeMap<String, u32> = seen
        .iter()
        .filter(|(k, _)| !this_round.iter().any(|p| k.starts_with(p)))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    if older != *before {
        let changed: Vec<_> = before
            .iter()
            .filter(|(k, v)| older.get(*k) != Some(v))
            .take(5)
            .collect();
        let new: Vec<_> = older
            .keys()
            .filter(|k| !before.contains_key(*k))
            .take(5)
            .collect();
        panic!(
            "round {round}: earlier rounds' pieces changed since the last check: lost or changed e.g. {changed:?}, appeared e.g. {new:?}"
        );
    }

    let report = store
        .fsck(piecestore::pack::fsck::FsckOptions::default(), &|_| {})
        .await
        .unwrap_or_else(|e| panic!("round {round}: fsck: {e}"));
    assert!(
        report.is_clean(),
        "round {round}: fsck found {} problems:\n{}",
        report.problems.len(),
        piecestore_tests::fsck_problems(&report)
    );

    // Every fifth round and the last: the index is a cache of the packs; rebuilt from the
    // packs alone it must say the same.
    if round % 5 == 4 || round + 1 == rounds {
        let report = store
            .fsck(
                piecestore::pack::fsck::FsckOptions {
                    rebuild_index: true,
                },
                &|_| {},
            )
            .await
            .unwrap_or_else(|e| panic!("round {round}: fsck --rebuild-index: {e}"));
        assert!(
            report.is_clean(),
            "round {round}: fsck --rebuild-index leaves problems:\n{}",
            piecestore_tests::fsck_problems(&report)
        );
        let rebuilt: BTreeSet<String> = store
            .list("")
            .map_ok(|m| m.key)
            .try_collect()
            .await
            .unwrap_or_else(|e| panic!("round {round}: list after the rebuild: {e}"));
        if rebuilt != listed {
            let lost: Vec<_> = listed.difference(&rebuilt).take(5).collect();
            let back: Vec<_> = rebuilt.difference(&listed).take(5).collect();
            panic!(
                "round {round}: the index rebuilt from the packs differs: lost {} (e.g. {lost:?}), brought back {} (e.g. {back:?})",
                listed.difference(&rebuilt).count(),
                rebuilt.difference(&listed).count()
            );
        }
        let again = check_bytes(&store, round, ledger, rebuilt.into_iter(), false).await;
        assert_eq!(
            again, seen,
            "round {round}: the rebuilt index reads other versions"
        );
    }
    store.close().await;
    eprintln!(
        "round {round}: reopened, read {} pieces back and ran fsck in {:?}",
        listed.len(),
        t0.elapsed()
    );
    seen
}

/// Reads `keys` and compares each with the bytes one of the versions the ledger allows
/// determines; `may_be_gone`: a missing key is fine too. Returns the version each read as.
async fn check_bytes(
    store: &PieceStore,
    round: u64,
    ledger: &Ledger,
    keys: impl Iterator<Item = String>,
    may_be_gone: bool,
) -> BTreeMap<String, u32> {
    let results = futures::stream::iter(keys)
        .map(|k| {
            let store = store.clone();
            async move { (store.get(&k).await, k) }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let mut seen = BTreeMap::new();
    for (got, k) in results {
        match got {
            Ok(b) => {
                let versions = ledger.versions(&k);
                let Some(v) = versions.iter().find(|v| b == piece_v(&k, **v)) else {
                    panic!(
                        "round {round}: {k} reads back {} bytes that are none of its versions {versions:?} (the writer said: {})",
                        b.len(),
                        ledger.story(&k)
                    );
                };
                seen.insert(k, *v);
            }
            Err(e) if may_be_gone && e.kind() == ErrorKind::NotFound => {}
            Err(e) => panic!("round {round}: get {k}: {e}"),
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_packed_writes_survive_sigkill() {
    crash_rounds("file", None).await;
}

/// The crash test on a real S3-compatible server: packs are create-only PUTs of one write
/// group each, and the index (in a local `IndexDir`) learns of the ones it missed on open.
async fn crash_rounds_on(kind: piecestore_tests::ServerKind) {
    let Some(server) = piecestore_tests::server(kind) else {
        return;
    };
    let bucket = new_bucket(server, "crash", None);
    crash_rounds(&format!("{kind:?}"), Some(&bucket)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_packed_writes_survive_sigkill_on_s3s_fs() {
    crash_rounds_on(piecestore_tests::ServerKind::S3sFs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_packed_writes_survive_sigkill_on_moto() {
    crash_rounds_on(piecestore_tests::ServerKind::Moto).await;
}

/// Kills a writer `PIECESTORE_CRASH_ROUNDS` times on one store (a directory, or `bucket` with
/// its index in a directory) and checks the store after each kill.
async fn crash_rounds(name: &str, bucket: Option<&Bucket>) {
    let rounds = env_u64("PIECESTORE_CRASH_ROUNDS").unwrap_or(20);
    let seed = crash_seed();
    eprintln!("pack_crash {name}: {rounds} rounds, PIECESTORE_CRASH_SEED={seed}");
    let mut rng = Rng(seed | 1);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("store").display().to_string();
    let mut ledger = Ledger::default();
    let mut seen = BTreeMap::new();
    for round in 0..rounds {
        // Every other writer also runs gc, so kills land inside compactions too.
        let gc = round % 2 == 1;
        let mut w = spawn_writer(&dir, bucket, round, gc);
        let (lines, errors) = read_output(&mut w);
        let after = Duration::from_millis(50 + rng.next() % 351);
        tokio::time::sleep(after).await;
        if let Ok(Some(status)) = w.0.try_wait() {
            let stderr = errors
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_default();
            panic!(
                "round {round}: the writer exited by itself ({status}) before the kill:\n{stderr}"
            );
        }
        let pid = w.0.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child, which has not been reaped (try_wait said running).
        let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
        let status = w.0.wait().expect("wait for the writer");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "round {round}: the writer ended with {status}, not by the kill"
        );
        let output = drain(&lines, Duration::from_secs(30), "the writer's stdout");
        let (p0, o0, d0) = (ledger.puts, ledger.overwrites, ledger.deletes);
        for line in &output {
            ledger.apply(line);
        }
        eprintln!(
            "{name} round {round}: killed after {after:?}{}: {} puts, {} overwrites, {} deletes acknowledged",
            if gc { " (writer running gc)" } else { "" },
            ledger.puts - p0,
            ledger.overwrites - o0,
            ledger.deletes - d0,
        );
        let check = verify(&dir, bucket, round, rounds, &ledger, &seen);
        seen = tokio::time::timeout(Duration::from_secs(300), check)
            .await
            .unwrap_or_else(|_| panic!("round {round}: checking took over 300s"));
    }
    // The test means something only if the writers got work acknowledged.
    assert!(
        ledger.puts > 0 && ledger.overwrites > 0 && ledger.deletes > 0,
        "the writers acknowledged {} puts, {} overwrites and {} deletes in {rounds} rounds: nothing was tested",
        ledger.puts,
        ledger.overwrites,
        ledger.deletes
    );
}

/// A writer killed while it creates a new store's pack index (its first few dozen
/// milliseconds) must leave a store that opens, with its acknowledged writes. (redb writes a
/// new database file's magic number last; the index is created whole under another name and
/// renamed, and a damaged one is set aside and rebuilt.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_while_the_index_is_created_leaves_a_store_that_opens() {
    let seed = env_u64("PIECESTORE_CRASH_SEED").unwrap_or(7);
    let mut rng = Rng(seed | 1);
    for attempt in 0..40u64 {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("store").display().to_string();
        let mut w = spawn_writer(&dir, None, 0, false);
        let (lines, _errors) = read_output(&mut w);
        tokio::time::sleep(Duration::from_millis(5 + rng.next() % 56)).await;
        // Killed, or already dead of its own (then the checks below say why it matters).
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(w.0.id() as libc::pid_t, libc::SIGKILL) };
        w.0.wait().expect("wait for the writer");
        let mut ledger = Ledger::default();
        for line in drain(&lines, Duration::from_secs(30), "the writer's stdout") {
            ledger.apply(&line);
        }
        eprintln!("attempt {attempt}: {} puts acknowledged", ledger.puts);
        let none = BTreeMap::new();
        let check = verify(&dir, None, 0, 1, &ledger, &none);
        tokio::time::timeout(Duration::from_secs(120), check)
            .await
            .unwrap_or_else(|_| panic!("attempt {attempt}: checking took over 120s"));
    }
}

/// Kills `w` (SIGKILL) and waits for it; panics if it had ended by itself (with its stderr).
fn kill(w: &mut Writer, errors: &mpsc::Receiver<String>, what: &str) {
    if let Ok(Some(status)) = w.0.try_wait() {
        let stderr = errors
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_default();
        panic!("{what} exited by itself ({status}) before the kill:\n{stderr}");
    }
    // SAFETY: kill(2) on our own child, which has not been reaped (try_wait said running).
    let rc = unsafe { libc::kill(w.0.id() as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    w.0.wait().expect("wait for the process");
}

/// Four writer processes and a collector (gc with grace 0 in a loop) on one directory. In the
/// first round they run for a while, and this process reads every piece a writer acknowledged
/// as soon as it sees the acknowledgement (another process's put is visible once it returned);
/// then all are killed. In each later round one writer is killed at a random moment while the
/// others go on (they must see no error), then the rest. After every round the store, reopened,
/// holds every acknowledged write of every process and none of the acknowledged deletes, and
/// passes fsck (every fifth round also after rebuilding its index).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_and_a_collector_share_one_directory() {
    let rounds = env_u64("PIECESTORE_CRASH_ROUNDS").unwrap_or(20) + 1;
    shared_rounds("shared directory", None, rounds).await;
}

/// The same with three "nodes" on an S3-compatible server (s3s-fs) sharing the PostgreSQL
/// index: each process (writers, collector, this test's reader) has a cache directory of its
/// own, so nothing but the bucket and the database is shared. The reader reads every piece a
/// node acknowledged as soon as it sees the acknowledgement. Fewer rounds by default (each
/// costs more: every piece is read back over HTTP after each round): 2 kill rounds, or
/// `PIECESTORE_NODE_ROUNDS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_and_a_collector_share_a_bucket_through_postgres() {
    let Some(pg) = piecestore_tests::postgres() else {
        return;
    };
    let Some(server) = piecestore_tests::server(piecestore_tests::ServerKind::S3sFs) else {
        return;
    };
    let bucket = new_bucket(server, "nodes", Some(&pg.url));
    let rounds = env_u64("PIECESTORE_NODE_ROUNDS").unwrap_or(2) + 1;
    shared_rounds("three nodes", Some(&bucket), rounds).await;
}

/// Writer processes (four on a directory; three "nodes", each with its own directory, on a
/// bucket with the PostgreSQL index) and a collector, for `rounds` rounds (see
/// [`four_processes_and_a_collector_share_one_directory`]).
async fn shared_rounds(name: &str, bucket: Option<&Bucket>, rounds: u64) {
    let seed = crash_seed();
    eprintln!("{name}: {rounds} rounds, PIECESTORE_CRASH_SEED={seed}");
    let mut rng = Rng(seed | 1);
    let tmp = tempfile::tempdir().expect("tempdir");
    let shared_dir = tmp.path().join("store").display().to_string();
    // A node's own directory (its index cache), or the one shared directory.
    let dir_of = |who: &str| match bucket {
        Some(_) => tmp.path().join(who).display().to_string(),
        None => shared_dir.clone(),
    };
    let n_writers: u64 = if bucket.is_some() { 3 } else { 4 };
    let dir = dir_of("checker");
    let mut ledger = Ledger::default();
    let mut seen = BTreeMap::new();
    let (mut read_live, mut read_gone) = (0u64, Vec::new());
    for round in 0..rounds {
        let seeds: Vec<u64> = (0..n_writers)
            .map(|i| 1000 + round * n_writers + i)
            .collect();
        let mut collector = spawn_with(&dir_of("collector"), bucket, 999, &["--gc-only"]);
        let (_, collector_errors) = read_output(&mut collector);
        let mut writers: Vec<(Writer, mpsc::Receiver<String>, mpsc::Receiver<String>)> = seeds
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut w = spawn_writer(&dir_of(&format!("node{i}")), bucket, *s, false);
                let (lines, errors) = read_output(&mut w);
                (w, lines, errors)
            })
            .collect();
        let mut lines: Vec<Vec<String>> = vec![Vec::new(); writers.len()];
        // The round starts once every writer has the store open (on a bucket, opening lists
        // its packs, which takes a while once there are many).
        for (i, (_, rx, errors)) in writers.iter().enumerate() {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(line) => {
                        let ready = line.trim() == "R";
                        lines[i].push(line);
                        if ready {
                            break;
                        }
                    }
                    Err(e) => {
                        let stderr = errors.recv_timeout(Duration::from_secs(5));
                        panic!(
                            "{name} round {round}: writer {i} did not open the store ({e}); its stderr: {}",
                            stderr.unwrap_or_default()
                        )
                    }
                }
            }
        }
        if round == 0 {
            // Read every acknowledged put from here while the writers go on.
            let reader = dir_of("reader");
            let open = || async {
                // s3s-fs answers a LIST 500 now and then when a file it lists is deleted under
                // it (the collector deletes packs all the while): a retryable error, which an
                // open may meet after its own retries too. Tried again (see the helper).
                let (opened, retries) = piecestore_tests::retry_server_errors(|| async {
                    let config = pack_writer::config(&reader, bucket).expect("config");
                    PieceStore::open(config).await
                })
                .await;
                if retries > 0 {
                    eprintln!("{name}: opening the shared store here took {retries} retries");
                }
                opened.unwrap_or_else(|e| panic!("open the shared store here: {e:?}"))
            };
            let mut store = open().await;
            // The window lasts 2.5 s, or longer (up to 20 s) until enough pieces of the others
            // were read: on a loaded machine an open of a bucket with many packs takes most
            // of a second, and a window spent reopening proves nothing.
            let start = Instant::now();
            let wanted = if bucket.is_some() { 60 } else { 300 };
            let until = |read: u64| {
                let spent = start.elapsed();
                spent < Duration::from_millis(2500)
                    || (read < wanted && spent < Duration::from_secs(20))
            };
            // Opened again now and then: an open's recovery runs while the others write
            // and collect (as a CLI call does next to a running server). A fresh opening
            // first reads a few pieces, so that reopening never starves the reads.
            let mut reopen = Instant::now() + Duration::from_millis(300);
            let mut read_since_open = 0u64;
            while until(read_live) {
                if Instant::now() >= reopen && read_since_open >= 10 {
                    store.close().await;
                    store = open().await;
                    reopen = Instant::now() + Duration::from_millis(300);
                    read_since_open = 0;
                }
                let mut any = false;
                for (i, (_, rx, _)) in writers.iter().enumerate() {
                    // Bounded by the deadline too: a reader slower than the writers would
                    // never see the channel empty.
                    while until(read_live)
                        && let Ok(line) = rx.try_recv()
                    {
                        any = true;
                        if let Some(key) = line.strip_prefix("P ") {
                            match store.get(key).await {
                                Ok(b) => {
                                    assert!(
                                        (0..64).any(|v| b == piece_v(key, v)),
                                        "{key}, acknowledged by another process, reads other bytes"
                                    );
                                    read_live += 1;
                                    read_since_open += 1;
                                }
                                // Deleted since by its writer (checked against the ledger below).
                                Err(e) if e.kind() == ErrorKind::NotFound => {
                                    read_gone.push(key.to_string())
                                }
                                Err(e) => panic!("get {key} from another process: {e}"),
                            }
                        }
                        lines[i].push(line);
                    }
                }
                if !any {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            store.close().await;
        } else {
            tokio::time::sleep(Duration::from_millis(100 + rng.next() % 400)).await;
            let victim = (rng.next() % writers.len() as u64) as usize;
            let (w, _, errors) = &mut writers[victim];
            kill(w, errors, &format!("round {round}: writer {victim}"));
            // The others go on without a hitch after one of them died.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for (i, (w, _, errors)) in writers.iter_mut().enumerate() {
            if w.0.try_wait().ok().flatten().is_none() {
                kill(w, errors, &format!("round {round}: writer {i}"));
            }
        }
        kill(
            &mut collector,
            &collector_errors,
            &format!("round {round}: the collector"),
        );
        let (p0, o0, d0) = (ledger.puts, ledger.overwrites, ledger.deletes);
        for (i, (_, rx, errors)) in writers.iter().enumerate() {
            lines[i].extend(drain(rx, Duration::from_secs(30), "a writer's stdout"));
            if let Ok(e) = errors.try_recv()
                && !e.is_empty()
            {
                panic!("round {round}: writer {i} said on stderr: {e}");
            }
            for line in &lines[i] {
                ledger.apply(line);
            }
        }
        eprintln!(
            "{name} round {round}: {} puts, {} overwrites, {} deletes acknowledged by {n_writers} processes",
            ledger.puts - p0,
            ledger.overwrites - o0,
            ledger.deletes - d0,
        );
        let check = verify_seeds(&dir, bucket, round, rounds, &ledger, &seen, &seeds);
        seen = tokio::time::timeout(Duration::from_secs(300), check)
            .await
            .unwrap_or_else(|_| panic!("round {round}: checking took over 300s"));
    }
    for key in &read_gone {
        assert!(
            ledger.deleted.contains(key) || ledger.maybe_deleted.contains_key(key),
            "{key} was acknowledged by another process, yet not found here (and never deleted)"
        );
    }
    // Over HTTP from a loaded 2-core machine a get of another node's piece takes tens of
    // milliseconds: fewer reads fit in the window than from a local directory.
    let enough = if bucket.is_some() { 20 } else { 100 };
    assert!(
        read_live > enough && ledger.deletes > 0 && ledger.overwrites > 0,
        "too little happened: {read_live} pieces of other processes read, {} deletes, {} overwrites",
        ledger.deletes,
        ledger.overwrites
    );
}

/// Four processes put the same keys at the same moment: for each key with other bytes in
/// each process, exactly one put returns Ok, the others `AlreadyExists`, and the store holds
/// the winner's bytes; keys with the same bytes everywhere are Ok for all. Small (packed) and
/// large (objects of their own) pieces both; on a directory and on a bucket whose index the
/// processes share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_processes_one_key_exactly_one_wins() {
    race_on("file", None).await;
    if let Some(server) = piecestore_tests::server(piecestore_tests::ServerKind::Moto) {
        let bucket = new_bucket(server, "race", None);
        race_on("moto", Some(&bucket)).await;
    }
}

/// The race across "nodes": processes with their own directories on s3s-fs (whose
/// create-only put is not atomic, so only the index decides) sharing the PostgreSQL index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_nodes_one_key_exactly_one_wins_through_postgres() {
    let Some(pg) = piecestore_tests::postgres() else {
        return;
    };
    let Some(server) = piecestore_tests::server(piecestore_tests::ServerKind::S3sFs) else {
        return;
    };
    let bucket = new_bucket(server, "race-pg", Some(&pg.url));
    race_on("s3s-fs+postgres", Some(&bucket)).await;
}

async fn race_on(name: &str, bucket: Option<&Bucket>) {
    const RACERS: u64 = 4;
    const KEYS: u64 = 150;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("store").display().to_string();
    // Created first, so that the racers do not race to create the store itself.
    let store = PieceStore::open(pack_writer::config(&dir, bucket).expect("config"))
        .await
        .expect("open");
    store.close().await;
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
        + 2000;
    let (n, at) = (KEYS.to_string(), at.to_string());
    let mut racers: Vec<_> = (0..RACERS)
        .map(|seed| {
            // Nodes of a PostgreSQL index: each with a directory of its own.
            let own = match bucket {
                Some(b) if b.index_url.is_some() => format!("{dir}-node{seed}"),
                _ => dir.clone(),
            };
            let mut w = spawn_with(&own, bucket, seed, &["--race", &n, "--at", &at]);
            let (lines, errors) = read_output(&mut w);
            (w, lines, errors)
        })
        .collect();
    let mut said: Vec<Vec<String>> = Vec::new();
    for (seed, (w, lines, errors)) in racers.iter_mut().enumerate() {
        let out = drain(lines, Duration::from_secs(120), "a racer's stdout");
        let status = w.0.wait().expect("wait for a racer");
        let stderr = errors
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_default();
        assert!(
            status.success(),
            "{name}: racer {seed} failed ({status}): {stderr}"
        );
        said.push(out);
    }
    let store = PieceStore::open(pack_writer::config(&dir, bucket).expect("config"))
        .await
        .expect("reopen");
    for i in 0..KEYS {
        let key = format!("race_{i}");
        let winners: Vec<u64> = (0..RACERS)
            .filter(|s| said[*s as usize].contains(&format!("W {key}")))
            .collect();
        let losers = (0..RACERS)
            .filter(|s| said[*s as usize].contains(&format!("X {key}")))
            .count();
        assert_eq!(
            winners.len(),
            1,
            "{name}: {key}: {} racers were told their bytes are stored",
            winners.len()
        );
        assert_eq!(
            losers as u64,
            RACERS - 1,
            "{name}: {key}: not every loser was told"
        );
        let got = store.get(&key).await.expect("get a raced key");
        assert!(
            got == pack_writer::race_piece(&key, Some(winners[0])),
            "{name}: {key} holds other bytes than its winner's"
        );
        let key = format!("same_{i}");
        for s in 0..RACERS {
            assert!(
                said[s as usize].contains(&format!("W {key}")),
                "{name}: {key}: racer {s}'s put of the same bytes was refused"
            );
        }
        assert!(store.get(&key).await.expect("get") == pack_writer::race_piece(&key, None));
    }
    let report = store
        .fsck(piecestore::pack::fsck::FsckOptions::default(), &|_| {})
        .await
        .expect("fsck");
    assert!(
        report.is_clean(),
        "{name}: fsck after the race:\n{}",
        piecestore_tests::fsck_problems(&report)
    );
    store.close().await;
    eprintln!("{name}: {KEYS} keys raced by {RACERS} processes, one winner each");
}
