//! `pack-writer DIR SEED [--gc | --gc-only | --race N --at MILLIS] [--url URL]`: writes pieces
//! into the packed store at `DIR` (or,
//! with `--url`, in the bucket at `URL` with its index in `DIR`; the keys in the environment
//! variables `PACK_WRITER_ACCESS_KEY` and `PACK_WRITER_SECRET_KEY`, and the PostgreSQL index
//! in `PACK_WRITER_INDEX_URL` if set) from 32 concurrent tasks
//! until it is killed, for the crash test (`tests/pack_crash.rs`). Most pieces
//! are small (packed); one in eight is large (an object of its own, recorded in the index).
//! With `--gc`, a task also runs garbage collection (grace 0, garbage ratio 0.3) in a loop, so
//! the kill also lands inside compactions.
//!
//! Keys are `w{SEED}_{task}_{i}`; a key's bytes follow from the key and its version alone
//! ([`piece_v`]), so the checker recomputes them. Each task also overwrites some of its earlier
//! acknowledged keys with a new version (small over large, large over small, either over its
//! own kind) and deletes some. One line per event goes to stdout, flushed before the writer
//! goes on:
//!
//! - `R` once the store is open;
//! - `P key` after a put of `key` (version 0) returned `Ok`;
//! - `o key v` before an overwrite of `key` with version `v` is issued, `O key v` after it
//!   returned `Ok` (a killed writer leaves the key at the old or the new version);
//! - `d key` before a delete of `key` is issued (the delete may be durable before it returns,
//!   so a killed writer leaves such a key either present or gone);
//! - `D key` after that delete returned `Ok`.
//!
//! A key is never put again once deleted. Any error ends the writer with exit status 1 and the
//! error on stderr: the crash test then fails, as the writer must never see an error here.
//!
//! With `--gc-only` the process only runs garbage collection in a loop (the collector of the
//! tests where several writer processes share one store).
//!
//! With `--race N --at MILLIS` the process waits until the Unix time `MILLIS`, then puts
//! `race_{i}` (bytes of its own: they follow from the key and `SEED`) and `same_{i}` (bytes every
//! racer shares) for i in 0..N, one at a time, and says `W key` for each put that returned `Ok`
//! and `X key` for each `AlreadyExists`; it then exits. Several racers started together on one
//! store put every key at about the same moment.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use piecestore::config::OptionValue;
use piecestore::{Config, PieceStore};
use piecestore_tests::XorShift as Rng;

/// Concurrent writer tasks.
const TASKS: u64 = 32;

/// FNV-1a, 64 bits: the key's hash, from which its length and bytes follow.
pub fn key_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The bytes the writer puts under `key` at `version`, determined by both: 1 to 8192 of them
/// (packed), or one time in eight 16 to 48 KiB (an object of its own; the threshold is
/// 16 KiB).
pub fn piece_v(key: &str, version: u32) -> Vec<u8> {
    let h = key_hash(key) ^ u64::from(version).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let len = if h.is_multiple_of(8) {
        (16 << 10) + ((h >> 8) % (32 << 10)) as usize
    } else {
        1 + (h % 8192) as usize
    };
    piecestore_tests::pseudo_random(len, h)
}

/// A bucket the writer writes to: its URL and keys.
#[derive(Clone)]
pub struct Bucket {
    /// `http://127.0.0.1:PORT/bucket`.
    pub url: String,
    /// Its access key.
    pub access_key: String,
    /// Its secret key.
    pub secret_key: String,
    /// The PostgreSQL index the writers share (`PACK_WRITER_INDEX_URL`); none: each host's
    /// SQLite index in the writer's directory.
    pub index_url: Option<String>,
}

/// The store config both the writer and the checker use: the directory `dir`, or `bucket`
/// with its index in `dir`.
pub fn config(dir: &str, bucket: Option<&Bucket>) -> piecestore::Result<Config> {
    let mut c = match bucket {
        None => Config::from_url(&format!("file://{dir}"))?,
        Some(b) => {
            let mut c = Config::from_url(&b.url)?;
            c.store.access_key = piecestore::config::Secret::new(&b.access_key);
            c.store.secret_key = piecestore::config::Secret::new(&b.secret_key);
            c.store.max_retries = 2;
            c.set_option("IndexDir", OptionValue::Str(dir.into()))?;
            if let Some(url) = &b.index_url {
                c.set_option("IndexUrl", OptionValue::Str(url.clone()))?;
            }
            c
        }
    };
    c.set_option("Pack", OptionValue::Bool(true))?;
    c.set_option("PackThreshold", OptionValue::Int(16 << 10))?;
    c.set_option("PackTargetSize", OptionValue::Int(256 << 10))?;
    Ok(c)
}

/// Writes one event line and flushes it (a line is written whole: it is far shorter than a
/// pipe's atomic write size).
fn say(event: char, what: &str) -> std::io::Result<()> {
    let line = format!("{event} {what}\n");
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.flush()
}

/// Puts `w{seed}_{t}_{i}` for i = 0, 1, ..., overwrites and deletes some of them, until
/// killed.
async fn task(store: PieceStore, seed: u64, t: u64) -> Result<(), String> {
    let mut rng = Rng(key_hash(&format!("rng {seed} {t}")) | 1);
    // Acknowledged keys and their versions.
    let mut acked: Vec<(String, u32)> = Vec::new();
    for i in 0u64.. {
        let key = format!("w{seed}_{t}_{i}");
        store
            .put(&key, piece_v(&key, 0))
            .await
            .map_err(|e| format!("put {key}: {e}"))?;
        say('P', &key).map_err(|e| format!("stdout: {e}"))?;
        acked.push((key, 0));
        // About one overwrite per eight puts, of a random earlier acknowledged key.
        if rng.next() & 7 == 0 {
            let at = (rng.next() % acked.len() as u64) as usize;
            let (k, v) = &mut acked[at];
            let next = *v + 1;
            say('o', &format!("{k} {next}")).map_err(|e| format!("stdout: {e}"))?;
            store
                .put_opts(
                    k,
                    piece_v(k, next),
                    piecestore::PutOptions { overwrite: true },
                )
                .await
                .map_err(|e| format!("overwrite {k}: {e}"))?;
            *v = next;
            say('O', &format!("{k} {next}")).map_err(|e| format!("stdout: {e}"))?;
        }
        // About one delete per four puts, of a random earlier acknowledged key.
        if rng.next() & 3 == 0 {
            let at = (rng.next() % acked.len() as u64) as usize;
            let (victim, _) = acked.swap_remove(at);
            say('d', &victim).map_err(|e| format!("stdout: {e}"))?;
            store
                .delete(&victim)
                .await
                .map_err(|e| format!("delete {victim}: {e}"))?;
            say('D', &victim).map_err(|e| format!("stdout: {e}"))?;
        }
    }
    Ok(())
}

/// Garbage collection in a loop, racing the writers.
async fn collect(store: PieceStore) -> Result<(), String> {
    let opts = piecestore::pack::gc::GcOptions {
        grace: Some(Duration::ZERO),
        garbage_ratio: Some(0.3),
        dry_run: false,
    };
    loop {
        match store.gc(opts, &|_| {}).await {
            Ok(_) => {}
            // Refused on a nearly full disk: by design; the writers go on.
            Err(piecestore::Error::Backend {
                op: "gc", message, ..
            }) if message.starts_with("not compacting") => {}
            Err(e) => return Err(format!("gc: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The bytes racer `seed` puts under `race_{i}` (`seed` = `None`: under `same_{i}`, the
/// bytes all racers share): one in eight is an object of its own.
pub fn race_piece(key: &str, seed: Option<u64>) -> Vec<u8> {
    let h = key_hash(key);
    let len = if h.is_multiple_of(8) {
        (16 << 10) + (h % 4096) as usize
    } else {
        1 + (h % 2048) as usize
    };
    piecestore_tests::pseudo_random(len, h ^ seed.map_or(0, |s| s.wrapping_add(1) << 20))
}

/// Races the other racers on `race_{i}` and `same_{i}` (see the module's doc).
async fn race(store: PieceStore, seed: u64, n: u64, at_ms: u64) -> Result<(), String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(at_ms.saturating_sub(now))).await;
    for i in 0..n {
        for (key, data) in [(format!("race_{i}"), None), (format!("same_{i}"), Some(()))] {
            let bytes = race_piece(&key, data.map_or(Some(seed), |()| None));
            match store.put(&key, bytes).await {
                Ok(()) => say('W', &key),
                Err(e) if e.kind() == piecestore::ErrorKind::AlreadyExists => say('X', &key),
                Err(e) => return Err(format!("put {key}: {e}")),
            }
            .map_err(|e| format!("stdout: {e}"))?;
        }
    }
    store.close().await;
    Ok(())
}

/// What the process does.
enum Mode {
    /// Writer tasks, and with `gc` a collector.
    Write { gc: bool },
    /// A collector only.
    GcOnly,
    /// A racer: `n` keys, at Unix milliseconds `at`.
    Race { n: u64, at: u64 },
}

async fn run(dir: String, bucket: Option<Bucket>, seed: u64, mode: Mode) -> Result<(), String> {
    let cfg = config(&dir, bucket.as_ref()).map_err(|e| format!("config: {e}"))?;
    let store = PieceStore::open(cfg)
        .await
        .map_err(|e| format!("open {dir}: {e}"))?;
    say('R', "").map_err(|e| format!("stdout: {e}"))?;
    let mut tasks: Vec<_> = Vec::new();
    match mode {
        Mode::Race { n, at } => return race(store, seed, n, at).await,
        Mode::GcOnly => tasks.push(tokio::spawn(collect(store.clone()))),
        Mode::Write { gc } => {
            tasks.extend((0..TASKS).map(|t| tokio::spawn(task(store.clone(), seed, t))));
            if gc {
                tasks.push(tokio::spawn(collect(store.clone())));
            }
        }
    }
    // The tasks run until the writer is killed: any end is an error.
    let (ended, _, _) = futures::future::select_all(tasks).await;
    match ended {
        Ok(Err(e)) => Err(e),
        Ok(Ok(())) => Err("a writer task ended".into()),
        Err(e) => Err(format!("a writer task panicked: {e}")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(seed)) = (args.get(1), args.get(2).and_then(|s| s.parse().ok())) else {
        eprintln!("usage: pack-writer DIR SEED [--gc] [--url URL]");
        return ExitCode::from(2);
    };
    let (mut mode, mut bucket) = (Mode::Write { gc: false }, None);
    let mut race_n = None;
    let mut rest = args[3..].iter();
    while let Some(arg) = rest.next() {
        let value = rest.as_slice().first().and_then(|v| v.parse::<u64>().ok());
        match (arg.as_str(), rest.as_slice().first()) {
            ("--gc", _) => mode = Mode::Write { gc: true },
            ("--gc-only", _) => mode = Mode::GcOnly,
            ("--race", Some(_)) if value.is_some() => {
                race_n = value;
                rest.next();
            }
            ("--at", Some(_)) if value.is_some() => {
                mode = Mode::Race {
                    n: race_n.unwrap_or(0),
                    at: value.unwrap_or(0),
                };
                rest.next();
            }
            ("--url", Some(url)) => {
                let key = |name: &str| std::env::var(name).unwrap_or_default();
                bucket = Some(Bucket {
                    url: url.clone(),
                    access_key: key("PACK_WRITER_ACCESS_KEY"),
                    secret_key: key("PACK_WRITER_SECRET_KEY"),
                    index_url: std::env::var("PACK_WRITER_INDEX_URL").ok(),
                });
                rest.next();
            }
            (other, _) => {
                eprintln!("pack-writer: unknown argument {other:?}");
                return ExitCode::from(2);
            }
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pack-writer: runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(dir.clone(), bucket, seed, mode)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pack-writer: {e}");
            ExitCode::from(1)
        }
    }
}
