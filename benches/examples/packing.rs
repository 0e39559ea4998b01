//! Small-piece packing against one object per piece, on local files and on a real
//! S3-compatible server, in one run: durable 4 KiB puts, then reading every piece back.
//!
//! Run: `cargo run --release -p piecestore-benches --example packing` (s3s-fs on `PATH` or in
//! `~/.cargo/bin`). Prints progress, then a Markdown table and the targets met or missed.
//!
//! 1. The disk: sequential durable write bandwidth of the filesystem the stores live on,
//!    `dd if=/dev/zero bs=1M count=512 conv=fsync` and the same in Rust (512 × 1 MiB writes, one
//!    fsync), twice each; the best dd run is the reference.
//! 2. Local files: 4 KiB puts, one file per piece (`Pack = false`, `Fsync = true`: data and
//!    directory fsync'd per put) at each of `PACKING_FILE_CONC` in flight, against packed
//!    (default options: group commit, 64 MiB packs) with `PACKING_PACKED_CONC` in flight; then gets
//!    of every piece; then packing with only the peer's in-flight count.
//! 3. S3: s3s-fs on 127.0.0.1 behind the test harness's counting proxy (one connection per
//!    request); 4 KiB puts unpacked (one PUT per piece) and packed at the same `PACKING_S3_CONC`
//!    in flight, unpacked also at 64 (its best); the requests the server saw; gets of every piece.
//!
//! Every put is awaited by a worker task; `N in flight` is the number of workers. CPU time is the
//! whole process's (the proxy runs in it; s3s-fs does not).
//!
//! Settings (environment; defaults in brackets): `PACKING_FILE_N` [100000],
//! `PACKING_FILE_CONC` ["64,256"; "0": none], `PACKING_PACKED_CONC` [32768], `PACKING_PACKED_LOW_N`
//! [10000], `PACKING_GET_CONC` [256], `PACKING_S3_N` (packed) [100000],
//! `PACKING_S3_UNPACKED_N` [20000], `PACKING_S3_UNPACKED_LOW_N` (at 64 in flight) [10000],
//! `PACKING_S3_CONC` [4096], `PACKING_S3_GET_CONC` [256], `PACKING_DD_MIB` [512],
//! `PACKING_DIR` (file stores and disk test) [the temp directory]. For investigating:
//! `PACKING_SKIP_FILE=1`, `PACKING_SKIP_S3=1`, `PACKING_SKIP_GETS=1`, `PACKING_S3_DIRECT=1` (no
//! proxy: requests are not counted), `PACKING_MAX_AGE` and `PACKING_TARGET_SIZE` (pack options;
//! the recorded figures use the defaults).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use piecestore::config::OptionValue;
use piecestore::{Config, PieceStore};
use piecestore_tests::{Proxy, ProxyMode, ServerKind};

const PIECE: usize = 4096;
const MB: f64 = 1e6;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        // "0": none.
        .map(|v| v.into_iter().filter(|&c| c > 0).collect())
        .unwrap_or_else(|| default.to_vec())
}

/// Piece `i`: 4 KiB of a fixed pattern, its index in the first 8 bytes (checked on read).
fn piece(i: usize) -> Bytes {
    static PATTERN: std::sync::LazyLock<Vec<u8>> =
        std::sync::LazyLock::new(|| (0..PIECE).map(|j| (j * 31 % 251) as u8).collect());
    let mut v = PATTERN.clone();
    v[..8].copy_from_slice(&(i as u64).to_le_bytes());
    Bytes::from(v)
}

fn key(i: usize) -> String {
    format!("{i}_s0")
}

/// CPU seconds (user, system) this process has used, from `/proc/self/stat`.
fn cpu_secs() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state;
    // in clock ticks (100 per second on Linux).
    let tick = 100.0;
    (
        f.get(11).copied().unwrap_or(0.0) / tick,
        f.get(12).copied().unwrap_or(0.0) / tick,
    )
}

/// One timed phase: `n` operations, `conc` in flight.
#[derive(Debug, Clone)]
struct Run {
    n: usize,
    conc: usize,
    secs: f64,
    /// CPU seconds the process used meanwhile (user + system), of 2 × `secs` on 2 cores.
    cpu: f64,
    errors: usize,
    first_error: Option<String>,
    /// Per-operation latency, sorted (µs).
    lat_us: Vec<u32>,
}

impl Run {
    fn ops(&self) -> f64 {
        self.n as f64 / self.secs
    }
    fn pct(&self, p: f64) -> f64 {
        if self.lat_us.is_empty() {
            return 0.0;
        }
        let i = ((self.lat_us.len() - 1) as f64 * p).round() as usize;
        self.lat_us[i] as f64 / 1000.0
    }
    fn show(&self, what: &str) {
        let err = match &self.first_error {
            Some(e) => format!(", {} errors, first: {e}", self.errors),
            None => String::new(),
        };
        println!(
            "  {what}: {} ops in {:.2} s, {} in flight: {:.0} ops/s, latency p50 {:.1} ms, p99 {:.1} ms, CPU {:.2} s ({:.1} µs/op){err}",
            self.n,
            self.secs,
            self.conc,
            self.ops(),
            self.pct(0.5),
            self.pct(0.99),
            self.cpu,
            self.cpu * 1e6 / self.n as f64
        );
    }
}

/// Runs `op(0..n)` with `conc` workers, each taking the next index when its last one finished.
async fn drive<F, Fut>(n: usize, conc: usize, op: F) -> Run
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let cpu0 = cpu_secs();
    let start = Instant::now();
    let workers: Vec<_> = (0..conc.min(n).max(1))
        .map(|_| {
            let (op, next) = (Arc::clone(&op), Arc::clone(&next));
            tokio::spawn(async move {
                let (mut lat, mut errors, mut first) = (Vec::new(), 0usize, None);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let t = Instant::now();
                    let r = op(i).await;
                    lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    if let Err(e) = r {
                        errors += 1;
                        first.get_or_insert(e);
                    }
                }
                (lat, errors, first)
            })
        })
        .collect();
    let mut run = Run {
        n,
        conc,
        secs: 0.0,
        cpu: 0.0,
        errors: 0,
        first_error: None,
        lat_us: Vec::with_capacity(n),
    };
    for w in workers {
        let (lat, errors, first) = w.await.expect("worker panicked");
        run.lat_us.extend(lat);
        run.errors += errors;
        if run.first_error.is_none() {
            run.first_error = first;
        }
    }
    run.secs = start.elapsed().as_secs_f64();
    let cpu1 = cpu_secs();
    run.cpu = (cpu1.0 - cpu0.0) + (cpu1.1 - cpu0.1);
    run.lat_us.sort_unstable();
    run
}

async fn puts(store: &PieceStore, n: usize, conc: usize) -> Run {
    let store = store.clone();
    drive(n, conc, move |i| {
        let store = store.clone();
        async move {
            store
                .put(&key(i), piece(i))
                .await
                .map_err(|e| e.to_string())
        }
    })
    .await
}

async fn gets(store: &PieceStore, n: usize, conc: usize) -> Run {
    if std::env::var("PACKING_SKIP_GETS").is_ok_and(|v| v == "1") {
        return drive(0, 1, |_| async { Ok(()) }).await;
    }
    let store = store.clone();
    drive(n, conc, move |i| {
        let store = store.clone();
        async move {
            let b = store.get(&key(i)).await.map_err(|e| e.to_string())?;
            if b.len() != PIECE || b[..8] != (i as u64).to_le_bytes() {
                return Err(format!("{}: wrong bytes back", key(i)));
            }
            Ok(())
        }
    })
    .await
}

/// `dd if=/dev/zero of=DIR/ddtest bs=1M count=MIB conv=fsync`: MB/s, from its byte count and
/// seconds (`None` when dd is missing or says something else).
fn dd_bandwidth(dir: &Path, mib: usize) -> Option<(f64, String)> {
    let target = dir.join("ddtest");
    let out = std::process::Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", target.display()))
        .args(["bs=1M", &format!("count={mib}"), "conv=fsync"])
        .output()
        .ok()?;
    let _ = std::fs::remove_file(&target);
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    let line = text.lines().find(|l| l.contains("copied"))?.to_string();
    let bytes: f64 = line.split_whitespace().next()?.parse().ok()?;
    let secs: f64 = line
        .split(", ")
        .find(|p| p.ends_with(" s"))?
        .trim_end_matches(" s")
        .trim()
        .parse()
        .ok()?;
    Some((bytes / secs / MB, line))
}

/// The same in Rust: `mib` writes of 1 MiB (not zeros), one fsync; MB/s.
fn rust_bandwidth(dir: &Path, mib: usize) -> std::io::Result<f64> {
    use std::io::Write;
    let target = dir.join("fsynctest");
    let chunk: Vec<u8> = (0..1 << 20).map(|j: usize| (j * 7 % 253) as u8).collect();
    let t = Instant::now();
    let mut f = std::fs::File::create(&target)?;
    for _ in 0..mib {
        f.write_all(&chunk)?;
    }
    f.sync_all()?;
    let secs = t.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&target)?;
    Ok(mib as f64 * (1 << 20) as f64 / secs / MB)
}

/// Files and bytes under `dir`.
fn du(dir: &Path) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                let (f, b) = du(&e.path());
                files += f;
                bytes += b;
            } else {
                files += 1;
                bytes += m.len();
            }
        }
    }
    (files, bytes)
}

fn file_store(dir: &Path, pack: bool) -> Result<Config, BoxError> {
    let mut c = Config::from_url(&format!("file://{}", dir.display()))?;
    c.set_option("Pack", OptionValue::Bool(pack))?;
    c.set_option("Fsync", OptionValue::Bool(true))?;
    pack_overrides(&mut c)?;
    Ok(c)
}

/// `PACKING_MAX_AGE` and `PACKING_TARGET_SIZE` (for investigating; the benchmark's figures use
/// the defaults).
fn pack_overrides(c: &mut Config) -> Result<(), BoxError> {
    if let Ok(v) = std::env::var("PACKING_MAX_AGE") {
        c.set_option("PackMaxAge", OptionValue::Str(v))?;
    }
    if let Ok(v) = std::env::var("PACKING_TARGET_SIZE") {
        c.set_option("PackTargetSize", OptionValue::Str(v))?;
    }
    Ok(())
}

/// Requests the proxy saw since `from`, by method.
fn requests_since(proxy: &Proxy, from: usize) -> (usize, Vec<(String, usize)>) {
    let seen = proxy.seen();
    let mut by: Vec<(String, usize)> = Vec::new();
    for r in seen.iter().skip(from) {
        match by.iter_mut().find(|(m, _)| *m == r.method) {
            Some((_, n)) => *n += 1,
            None => by.push((r.method.clone(), 1)),
        }
    }
    by.sort();
    (seen.len(), by)
}

fn count(by: &[(String, usize)], method: &str) -> usize {
    by.iter()
        .find(|(m, _)| m == method)
        .map(|(_, n)| *n)
        .unwrap_or(0)
}

fn show_by(by: &[(String, usize)]) -> String {
    by.iter()
        .map(|(m, n)| format!("{m} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the run does (from the environment; see the module docs).
struct Settings {
    file_n: usize,
    s3_n: usize,
    s3_unpacked_n: usize,
    s3_unpacked_low_n: usize,
    s3_get_conc: usize,
    file_conc: Vec<usize>,
    packed_conc: usize,
    packed_low_n: usize,
    s3_conc: usize,
    get_conc: usize,
    dd_mib: usize,
    skip_file: bool,
    skip_s3: bool,
}

impl Settings {
    fn from_env() -> Self {
        let flag = |name: &str| std::env::var(name).is_ok_and(|v| v == "1");
        let s3_n = env_usize("PACKING_S3_N", 100_000);
        Settings {
            file_n: env_usize("PACKING_FILE_N", 100_000),
            s3_n,
            s3_unpacked_n: env_usize("PACKING_S3_UNPACKED_N", 20_000),
            s3_unpacked_low_n: env_usize("PACKING_S3_UNPACKED_LOW_N", 10_000),
            s3_get_conc: env_usize("PACKING_S3_GET_CONC", 256),
            file_conc: env_list("PACKING_FILE_CONC", &[64, 256]),
            packed_conc: env_usize("PACKING_PACKED_CONC", 32_768),
            packed_low_n: env_usize("PACKING_PACKED_LOW_N", 10_000),
            s3_conc: env_usize("PACKING_S3_CONC", 4096),
            get_conc: env_usize("PACKING_GET_CONC", 256),
            dd_mib: env_usize("PACKING_DD_MIB", 512),
            skip_file: flag("PACKING_SKIP_FILE"),
            skip_s3: flag("PACKING_SKIP_S3"),
        }
    }
}

/// One line of the final table.
struct Row {
    section: &'static str,
    what: String,
    run: Run,
    note: String,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    verdicts: Vec<String>,
}

impl Report {
    fn row(&mut self, section: &'static str, what: impl Into<String>, run: &Run, note: String) {
        self.rows.push(Row {
            section,
            what: what.into(),
            run: run.clone(),
            note,
        });
    }

    fn verdict(&mut self, target: &str, met: bool, detail: String) {
        let v = if met { "MET" } else { "MISSED" };
        self.verdicts.push(format!("{target}: {detail}: **{v}**"));
    }

    fn print(&self, disk: &Disk) {
        println!();
        println!(
            "| section | operation | pieces | in flight | s | ops/s | p50 ms | p99 ms | CPU µs/op | errors | notes |"
        );
        println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
        for r in &self.rows {
            println!(
                "| {} | {} | {} | {} | {:.2} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {} |",
                r.section,
                r.what,
                r.run.n,
                r.run.conc,
                r.run.secs,
                r.run.ops(),
                r.run.pct(0.5),
                r.run.pct(0.99),
                r.run.cpu * 1e6 / r.run.n as f64,
                r.run.errors,
                r.note
            );
        }
        println!();
        println!(
            "disk, same filesystem: dd conv=fsync best {:.0} MB/s (runs: {}); Rust write+fsync best {:.0} MB/s",
            disk.dd_best,
            disk.dd_runs
                .iter()
                .map(|m| format!("{m:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
            disk.rust_best
        );
        for v in &self.verdicts {
            println!("- {v}");
        }
    }
}

/// Sequential durable write bandwidth of the stores' filesystem.
struct Disk {
    dd_runs: Vec<f64>,
    dd_best: f64,
    rust_best: f64,
}

/// dd twice and the Rust loop twice, alternating (the first large write on this VM is often
/// slower: it pays for reclaiming page cache). The best dd run is the reference (the stricter
/// target); without dd, the best Rust run.
fn measure_disk(dir: &Path, mib: usize) -> Result<Disk, BoxError> {
    println!("== disk: {} ==", dir.display());
    let (mut dd_runs, mut rust_best) = (Vec::new(), 0f64);
    for _ in 0..2 {
        match dd_bandwidth(dir, mib) {
            Some((mbs, line)) => {
                println!("  dd if=/dev/zero bs=1M count={mib} conv=fsync: {mbs:.0} MB/s ({line})");
                dd_runs.push(mbs);
            }
            None => println!("  dd: not available"),
        }
        let r = rust_bandwidth(dir, mib)?;
        println!("  Rust: {mib} × 1 MiB write + fsync: {r:.0} MB/s");
        rust_best = rust_best.max(r);
    }
    let dd_best = dd_runs.iter().copied().fold(0.0, f64::max);
    Ok(Disk {
        dd_best: if dd_runs.is_empty() {
            rust_best
        } else {
            dd_best
        },
        dd_runs,
        rust_best,
    })
}

async fn file_section(
    set: &Settings,
    work: &Path,
    disk: &Disk,
    rep: &mut Report,
) -> Result<(), BoxError> {
    let n = set.file_n;
    println!("== file backend: {n} × 4 KiB durable puts, then {n} gets ==");
    let mut peer: Option<Run> = None;
    for (round, &conc) in set.file_conc.iter().enumerate() {
        let dir = work.join(format!("perfile-{conc}"));
        let store = PieceStore::open(file_store(&dir, false)?).await?;
        let run = puts(&store, n, conc).await;
        run.show(&format!(
            "put, one file per piece + fsync, {conc} in flight"
        ));
        rep.row(
            "file",
            "put: one file per piece + fsync (Pack=false)",
            &run,
            String::new(),
        );
        if round + 1 == set.file_conc.len() {
            let g = gets(&store, n, set.get_conc).await;
            g.show("get, one file per piece");
            rep.row("file", "get: one file per piece", &g, String::new());
        }
        store.close().await;
        drop(store);
        std::fs::remove_dir_all(&dir)?;
        if peer.as_ref().is_none_or(|b| run.ops() > b.ops()) {
            peer = Some(run);
        }
    }

    let dir = work.join("packed");
    let store = PieceStore::open(file_store(&dir, true)?).await?;
    let run = puts(&store, n, set.packed_conc).await;
    run.show(&format!(
        "put, packed (default options), {} in flight",
        set.packed_conc
    ));
    let (files, bytes) = du(&dir.join(".piecestore"));
    let payload_mbs = (n * PIECE) as f64 / run.secs / MB;
    let written_mbs = bytes as f64 / run.secs / MB;
    println!(
        "  {files} files under .piecestore ({:.1} MB: packs + index); payload {payload_mbs:.0} MB/s, all bytes {written_mbs:.0} MB/s",
        bytes as f64 / MB
    );
    let share = payload_mbs / disk.dd_best;
    let mut note = format!(
        "payload {payload_mbs:.0} MB/s = {:.0}% of dd ({files} files, {:.0} MB written)",
        share * 100.0,
        bytes as f64 / MB
    );
    if let Some(peer) = &peer {
        let ratio = run.ops() / peer.ops();
        note = format!(
            "{ratio:.1}× one file per piece ({} in flight); {note}",
            peer.conc
        );
        rep.verdict(
            "file: packed ≥ 50× one file per piece + fsync",
            ratio >= 50.0,
            format!(
                "{ratio:.1}× ({:.0} ops/s, {} in flight, vs {:.0} ops/s, {} in flight: the peer's best)",
                run.ops(),
                run.conc,
                peer.ops(),
                peer.conc
            ),
        );
    }
    rep.verdict(
        "file: packed payload ≥ 50% of dd bandwidth",
        share >= 0.5,
        format!(
            "{payload_mbs:.0} of {:.0} MB/s = {:.0}%",
            disk.dd_best,
            share * 100.0
        ),
    );
    rep.row("file", "put: packed (default options)", &run, note);
    let g = gets(&store, n, set.get_conc).await;
    g.show("get, packed");
    rep.row("file", "get: packed", &g, String::new());
    store.close().await;
    drop(store);
    std::fs::remove_dir_all(&dir)?;

    // Packing at the peer's concurrency (before issue 18 a put waited for its pack's MaxAge
    // here; with group commit it does not).
    if let Some(&conc) = set.file_conc.last()
        && set.packed_low_n > 0
    {
        let dir = work.join("packed-low");
        let store = PieceStore::open(file_store(&dir, true)?).await?;
        let low = puts(&store, set.packed_low_n, conc).await;
        low.show(&format!("put, packed, only {conc} in flight"));
        let peer_same = rep
            .rows
            .iter()
            .find(|r| r.section == "file" && r.run.conc == conc && r.what.contains("one file"))
            .map(|r| r.run.ops());
        let note = peer_same
            .map(|p| {
                format!(
                    "{:.2}× one file per piece at the same {conc} in flight",
                    low.ops() / p
                )
            })
            .unwrap_or_default();
        rep.row(
            "file",
            format!("put: packed, the peer's {conc} in flight"),
            &low,
            note,
        );
        store.close().await;
        drop(store);
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

async fn s3_section(set: &Settings, work: &Path, rep: &mut Report) -> Result<(), BoxError> {
    println!("== S3: s3s-fs on 127.0.0.1 behind a counting proxy; 4 KiB puts, then gets ==");
    let Some(server) = piecestore_tests::server(ServerKind::S3sFs) else {
        return Err("s3s-fs is not installed (cargo install s3s-fs --features binary)".into());
    };
    let proxy = Proxy::start(&server.endpoint, ProxyMode::PassThrough);
    let direct = std::env::var("PACKING_S3_DIRECT").is_ok_and(|v| v == "1");
    let index_dir = work.join("s3-index");
    // (packed, pieces, in flight, read back): the peer at the same concurrency as packing, the
    // peer at its own best concurrency (64: more in flight does not help it), packing.
    let mut cases = vec![(false, set.s3_unpacked_n, set.s3_conc, true)];
    if set.s3_unpacked_low_n > 0 {
        cases.push((false, set.s3_unpacked_low_n, 64, false));
    }
    cases.push((true, set.s3_n, set.s3_conc, true));
    let mut same: Option<Run> = None;
    let mut best_peer: Option<Run> = None;
    let mut packed: Option<(Run, f64)> = None;
    for (pack, n, conc, read) in cases {
        let name = if pack { "packed" } else { "unpacked" };
        let label = if pack {
            "packed (default options)"
        } else {
            "one S3 PUT per piece (Pack=false)"
        };
        let prefix = piecestore_tests::unique_name(&format!("packing-{name}"));
        let mut c = server.config(&prefix, 0);
        if !direct {
            c.store.bucket_url = c
                .store
                .bucket_url
                .replace(&server.endpoint, &proxy.endpoint);
        }
        c.set_option("Pack", OptionValue::Bool(pack))?;
        c.set_option(
            "IndexDir",
            OptionValue::Str(index_dir.display().to_string()),
        )?;
        pack_overrides(&mut c)?;
        let store = PieceStore::open(c).await?;
        let (from, _) = requests_since(&proxy, 0);
        let run = puts(&store, n, conc).await;
        let (mid, by) = requests_since(&proxy, from);
        run.show(&format!("put, {label}, {conc} in flight"));
        let put_reqs = count(&by, "PUT");
        let per100 = put_reqs as f64 * 100.0 / n as f64;
        println!(
            "  requests during the puts: {} ({}); PUTs per 100 pieces: {per100:.3}",
            mid - from,
            show_by(&by)
        );
        rep.row(
            "s3",
            format!("put: {label}"),
            &run,
            format!(
                "{per100:.3} PUTs per 100 pieces (requests: {})",
                show_by(&by)
            ),
        );
        if read {
            let g = gets(&store, n, set.s3_get_conc).await;
            let (_, gby) = requests_since(&proxy, mid);
            g.show(&format!("get, {name}"));
            println!("  requests during the gets: {}", show_by(&gby));
            rep.row(
                "s3",
                format!("get: {name}"),
                &g,
                format!("requests: {}", show_by(&gby)),
            );
        }
        store.close().await;
        if let Some(d) = &server.data_dir {
            let _ = std::fs::remove_dir_all(d.join(&prefix));
        }
        if pack {
            packed = Some((run, per100));
        } else {
            if conc == set.s3_conc {
                same = Some(run.clone());
            }
            if best_peer.as_ref().is_none_or(|b| run.ops() > b.ops()) {
                best_peer = Some(run);
            }
        }
    }
    let (Some((packed, per100)), Some(same), Some(best)) = (packed, same, best_peer) else {
        return Ok(());
    };
    rep.verdict(
        "s3: PUT requests per 100 small pieces ≤ 1 (packed)",
        per100 <= 1.0,
        format!("{per100:.3}"),
    );
    let ratio = packed.ops() / same.ops();
    rep.verdict(
        "s3: packed ≥ 10× one S3 PUT per piece, same concurrency",
        ratio >= 10.0,
        format!(
            "{ratio:.1}× ({:.0} vs {:.0} ops/s, both {} in flight)",
            packed.ops(),
            same.ops(),
            packed.conc
        ),
    );
    if best.conc != same.conc {
        let ratio = packed.ops() / best.ops();
        rep.verdict(
            "s3: packed ≥ 10× one S3 PUT per piece at the peer's best concurrency",
            ratio >= 10.0,
            format!(
                "{ratio:.1}× ({:.0} ops/s, {} in flight, vs {:.0} ops/s, {} in flight)",
                packed.ops(),
                packed.conc,
                best.ops(),
                best.conc
            ),
        );
    }
    if let Some(d) = &server.data_dir {
        let _ = std::fs::remove_dir_all(d);
    }
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let set = Settings::from_env();
    let base: PathBuf = std::env::var_os("PACKING_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let work = tempfile::Builder::new()
        .prefix("piecestore-packing-")
        .tempdir_in(&base)?;
    let total = Instant::now();
    let disk = measure_disk(work.path(), set.dd_mib)?;
    let mut rep = Report::default();
    piecestore::runtime::block_on(async {
        if !set.skip_file {
            file_section(&set, work.path(), &disk, &mut rep).await?;
        }
        if !set.skip_s3 {
            s3_section(&set, work.path(), &mut rep).await?;
        }
        Ok::<(), BoxError>(())
    })?;
    rep.print(&disk);
    println!("total {:.0} s", total.elapsed().as_secs_f64());
    Ok(())
}
