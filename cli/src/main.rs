//! `piecestore`: the command-line front end over one `PieceStore`.

mod bench;
mod html;
mod pack;
mod peers;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use futures::TryStreamExt;
use piecestore::{Config, Error, ErrorKind, PieceStore, PutOptions};

const AFTER_HELP: &str = "\
Which store:
  --store URL        memory://, file:///path, ./path, s3://bucket/prefix?region=R,
                     https://s3.REGION.amazonaws.com/BUCKET, https://BUCKET.s3.REGION.amazonaws.com,
                     http://127.0.0.1:9000/BUCKET (MinIO, Ceph RGW), https://BUCKET.oss-REGION.aliyuncs.com,
                     https://s3.REGION.backblazeb2.com/BUCKET, grpc://HOST:PORT/BUCKET (a bucket of
                     another node's `piecestore serve`; grpcs:// with TLS); add ?shards=N with %d in
                     the URL to shard.
  --config FILE      a config.toml with a [PieceStore] table (the original Go piecestore's layout).
  neither            ./config.toml if it has a [PieceStore] table, else the local directory ./data
                     (--verbose says which).
  BUCKET_URL in the environment replaces the configured bucket URL. Credentials come from the
  config or the environment (AWS_ACCESS_KEY / AWS_SECRET_KEY / AWS_SESSION_TOKEN, MINIO_*,
  ALIBABA_CLOUD_*, B2_*, or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY); see docs/config.md.

Exit codes:
  0 success   1 other error   2 usage   3 piece not found   4 piece exists with other bytes
  5 invalid key, range or config, or a missing bucket   6 corrupt piece   7 unauthorized
  8 backend failure   9 a functional check of `bench --check` failed   10 `fsck` found damage

Examples:
  piecestore put 42_s0 segment.bin            store a file as piece 42_s0 in ./data
  echo hello | piecestore put greeting -      store standard input
  piecestore get 42_s0 -o copy.bin            read it back (verified against its CRC32C)
  piecestore get 42_s0 --offset 100 --len 16  read 16 bytes at offset 100
  piecestore --store s3://my-bucket?region=eu-west-1 ls e42_
  piecestore --config config.toml stat e42_s0_p1 --json
  piecestore rm 42_s0 greeting
  piecestore --config config.toml rm --prefix e42_   delete object 42's EC pieces on every shard
  piecestore migrate --from old.toml --to 'file:///srv/pieces-%d?shards=4&placement=jump' --dry-run
  piecestore --store http://127.0.0.1:9000/b bench --op get --size 4KiB -c 16 --duration 30s --html r.html
  piecestore bench compare before.json after.json
  piecestore --config node.toml peers         this node's P2P id, and its peers ([PieceStore.Peers])
  piecestore --config node.toml replicate --prefix e42_ --to /ip4/10.0.0.9/tcp/9830/p2p/12D3KooW...
  piecestore --config config.toml profile --json
  piecestore gc --grace 0s                    compact packs now, delete compacted packs at once
  piecestore gc --status                      compacted packs waiting for their grace period, and when
  piecestore gc --wait                        compact, wait for the grace period, delete the compacted packs
  piecestore fsck                             verify every pack, index entry and unpacked piece
  piecestore fsck --rebuild-index             verify everything; rebuild the index from the packs
  PIECESTORE_SERVE_ACCESS_KEY=me PIECESTORE_SERVE_SECRET_KEY=long-secret piecestore serve
                                              S3 API on http://127.0.0.1:9820, bucket `pieces` over ./data";

/// Store, read and manage immutable pieces on memory, local disk or any S3-compatible store.
#[derive(Parser, Debug)]
#[command(name = "piecestore", version, about, after_help = AFTER_HELP)]
struct Cli {
    /// Store URL: memory://, ./path, s3://bucket/prefix, http://host:9000/bucket, ...
    ///
    /// Forms: memory://, file:///path or ./path, s3://bucket/prefix?region=R,
    /// http://host:9000/bucket (MinIO, Ceph RGW), AWS, OSS and B2 https:// URLs,
    /// grpc://host:port/bucket (another node's `piecestore serve`); add ?shards=N
    /// with %d in the URL to shard. Without --store or --config: ./config.toml if it has a
    /// [PieceStore] table, else ./data. `piecestore --help` lists every URL form.
    #[arg(
        long,
        global = true,
        env = "PIECESTORE_STORE",
        conflicts_with = "config"
    )]
    store: Option<String>,
    /// Path to a config.toml.
    #[arg(long, global = true, env = "PIECESTORE_CONFIG")]
    config: Option<PathBuf>,
    /// Say which store is used and why, and log at info level (RUST_LOG overrides).
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Store a piece from FILE, or from standard input when FILE is "-" or absent.
    Put {
        /// The piece key.
        key: String,
        /// The file to store ("-" = standard input).
        file: Option<PathBuf>,
        /// Replace an existing piece with different bytes.
        #[arg(long)]
        overwrite: bool,
    },
    /// Write a piece (or a range of it) to standard output or to a file.
    Get {
        /// The piece key.
        key: String,
        /// Write to this file instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Start of a range.
        #[arg(long, requires = "len")]
        offset: Option<u64>,
        /// Length of a range.
        #[arg(long)]
        len: Option<u64>,
    },
    /// Delete pieces (deleting a missing piece succeeds), or every piece under a prefix.
    Rm {
        /// The piece keys.
        #[arg(required_unless_present = "prefix")]
        keys: Vec<String>,
        /// Delete every piece whose key starts with PREFIX, on every shard (e.g. `s42_` and
        /// `e42_` for object 42); prints how many pieces and bytes were removed.
        #[arg(long, conflicts_with = "keys")]
        prefix: Option<String>,
    },
    /// List pieces whose keys start with PREFIX (all when absent), on every shard, sorted by
    /// key.
    Ls {
        /// Key prefix (any string).
        #[arg(default_value = "")]
        prefix: String,
        /// Show size and key.
        #[arg(short, long)]
        long: bool,
        /// Print keys as the shards return them, without sorting (starts at once and holds no
        /// listing in memory: for stores with millions of pieces).
        #[arg(long)]
        unsorted: bool,
    },
    /// Show a piece's size, checksum and shard.
    Stat {
        /// The piece key.
        key: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the store's shards and placement.
    Info,
    /// The data cache: its tiers' fill and counters, or empty it.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
    /// Copy every piece from one store to another, verifying each; run again to resume.
    ///
    /// Pieces already at the destination with the same size and checksum are skipped, so an
    /// interrupted migration (Ctrl-C, a crash, SIGKILL) is resumed by running the same command.
    /// Typical uses: from the original's unsharded bucket into a sharded store, or from fnv-mod
    /// to jump placement (a new set of buckets).
    Migrate {
        /// Source: a store URL or a config.toml.
        #[arg(long)]
        from: String,
        /// Destination: a store URL or a config.toml.
        #[arg(long)]
        to: String,
        /// Count only: what would be copied and what is already there.
        #[arg(long)]
        dry_run: bool,
        /// Pieces in flight at once: 1 to 4096.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Benchmark the store: put/get/head/delete/list or a mix, with latency percentiles.
    ///
    /// Writes its pieces under a fresh prefix `bench-<random>/` and deletes them at the end
    /// (unless --keep). Reads, heads, deletes and lists work on --objects pieces written first.
    /// `piecestore bench compare A.json B.json` sets two runs' JSON side by side.
    #[command(args_conflicts_with_subcommands = true, after_help = bench::AFTER_HELP)]
    Bench {
        #[command(subcommand)]
        compare: Option<bench::BenchCommand>,
        #[command(flatten)]
        args: bench::BenchArgs,
    },
    /// Compact packs: rewrite those whose garbage passed the threshold, merge undersized ones,
    /// delete compacted packs whose grace period is over. Safe while others read and write.
    ///
    /// Compaction writes its new packs first and deletes the compacted ("doomed") ones only
    /// after the grace period, so the store uses more space until a later gc deletes them: the
    /// summary says how many bytes wait and when they are freed. `--status` shows them
    /// without compacting; `--wait` compacts, waits for their grace period and deletes them.
    Gc {
        /// Delete compacted packs this long after compaction (default: the config's
        /// Pack.Grace, 1h). `0s` deletes them at once: only when no reader could still be using
        /// them.
        #[arg(long, value_parser = humantime::parse_duration)]
        grace: Option<std::time::Duration>,
        /// Compact packs with at least this share of garbage, 0.0 to 1.0 (default: the
        /// config's Pack.GarbageRatio, 0.5).
        #[arg(long)]
        garbage_ratio: Option<f64>,
        /// Only report what would be done.
        #[arg(long)]
        dry_run: bool,
        /// Show the doomed packs (compacted, waiting for their grace period): how many, their
        /// bytes, and when a gc may delete them. Compacts nothing.
        #[arg(long, conflicts_with_all = ["dry_run", "wait", "garbage_ratio"])]
        status: bool,
        /// After compacting, wait until the doomed packs' grace period is over (at most the
        /// grace period; it prints how long) and delete them.
        #[arg(long, conflicts_with = "dry_run")]
        wait: bool,
        /// Print JSON (with --status: the doomed packs' summary only).
        #[arg(long)]
        json: bool,
    },
    /// Verify every pack (CRCs, bounds, footers), every index entry (dangling entries, orphan
    /// packs, live-byte accounting) and every piece stored as an object of its own (read whole,
    /// CRC verified). Exit code 10 when damage remains.
    Fsck {
        /// Rebuild the index from the packs alone (after checking), then check again.
        #[arg(long)]
        rebuild_index: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve the store over the S3 protocol: any S3 client (aws CLI, boto3, rclone, minio-go,
    /// PieceStore's own S3 backend) puts, gets, lists and deletes pieces over HTTP.
    ///
    /// One bucket `pieces` over the store (or the buckets of [PieceStore.Serve]); object keys
    /// are piece keys. Clients sign with a key from PIECESTORE_SERVE_ACCESS_KEY and
    /// PIECESTORE_SERVE_SECRET_KEY or [[PieceStore.Serve.Keys]]. Prints `listening on URL`
    /// once it accepts connections; SIGTERM or Ctrl-C lets requests in flight finish and
    /// flushes open packs. /healthz, /readyz and /metrics (Prometheus) are served as well.
    /// See docs/serve.md.
    Serve {
        /// The address to listen on (default: [PieceStore.Serve] Listen, else
        /// 127.0.0.1:9820; port 0 picks a free one).
        #[arg(long)]
        listen: Option<String>,
    },
    #[command(flatten)]
    Peer(peers::PeerCommand),
    /// Report what the store holds: pieces, bytes, size histogram, per-shard balance and skew,
    /// orphans (objects no get can reach) and, once packing is on, pack fill and garbage.
    Profile {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// How many orphan keys to name.
        #[arg(long, default_value_t = 20)]
        orphan_samples: usize,
    },
}

/// Exit code of `fsck` when damage remains.
const EXIT_DAMAGE: u8 = 10;

/// Exit code of `bench --check` when a functional check failed.
const EXIT_CHECK_FAILED: u8 = 9;

fn exit_code(e: &Error) -> u8 {
    match e.kind() {
        ErrorKind::NotFound => 3,
        ErrorKind::AlreadyExists => 4,
        ErrorKind::InvalidKey
        | ErrorKind::InvalidRange
        | ErrorKind::InvalidConfig
        | ErrorKind::BucketNotFound => 5,
        ErrorKind::Corrupt => 6,
        ErrorKind::Unauthorized => 7,
        ErrorKind::Backend => 8,
        _ => 1,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match (cli.verbose, matches!(cli.command, Command::Serve { .. })) {
        // s3s logs every client error (a 404, a bad signature) at ERROR level: `serve` logs
        // its requests itself (5xx at WARN, each request at DEBUG).
        (false, true) => "warn,s3s=off",
        (true, true) => "info,s3s=off",
        (false, false) => "warn",
        (true, false) => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Exit(code)) => ExitCode::from(code),
        Err(CliError::Store(e)) => {
            eprintln!("error[{}]: {e}", e.kind());
            ExitCode::from(exit_code(&e))
        }
        Err(CliError::Io(what, e)) => {
            // A closed pipe (`piecestore get k | head`) is not an error worth a message.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {what}: {e}");
            ExitCode::from(1)
        }
    }
}

pub(crate) enum CliError {
    Store(Error),
    Io(String, std::io::Error),
    /// Exit with this code; the message was printed already.
    Exit(u8),
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        CliError::Store(e)
    }
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CliError {
    let what = what.into();
    move |e| CliError::Io(what, e)
}

fn load_config(cli: &Cli) -> Result<Config, Error> {
    let say = |what: &str| {
        if cli.verbose {
            eprintln!("piecestore: {what}");
        }
    };
    if let Some(url) = &cli.store {
        say(&format!(
            "store {} (--store)",
            piecestore::error::redact_url(url)
        ));
        return Config::load(url);
    }
    let path = match &cli.config {
        Some(p) => {
            say(&format!("config {} (--config)", p.display()));
            p.clone()
        }
        None if Config::is_piecestore_file("config.toml") => {
            say("config ./config.toml (it has a [PieceStore] table)");
            PathBuf::from("config.toml")
        }
        None => {
            if std::path::Path::new("config.toml").is_file() {
                say("store ./data (./config.toml has no [PieceStore] table: not PieceStore's)");
            } else {
                say("store ./data (no --store, --config or ./config.toml)");
            }
            return Config::load("./data");
        }
    };
    Config::load_file(path)
}

/// `piecestore serve`: binds, says where, serves until SIGTERM or Ctrl-C.
async fn serve_store(
    store: PieceStore,
    options: piecestore::config::ServeOptions,
    listen: Option<String>,
    node: Option<piecestore_server::p2p::PeerNode>,
) -> Result<(), CliError> {
    use piecestore_server::{ServeError, Server, Setup};
    let mut setup = Setup::new(store, options);
    setup.listen = listen;
    setup.peer_stats = node.as_ref().map(|n| n.stats());
    let server = match Server::bind(setup).await {
        Ok(s) => s,
        Err(ServeError::Store { source, bucket }) => {
            eprintln!("error[{}]: bucket {bucket}: {source}", source.kind());
            return Err(CliError::Exit(exit_code(&source)));
        }
        Err(e @ ServeError::Config(_)) => {
            eprintln!("error[INVALID_CONFIG]: {e}");
            return Err(CliError::Exit(5));
        }
        Err(e) => {
            eprintln!("error: {e}");
            return Err(CliError::Exit(1));
        }
    };
    // Before saying where it listens: a SIGHUP sent by whoever waits for that line must
    // find the handler (the default action ends the process).
    #[cfg(unix)]
    reload_tls_on_sighup(server.tls_reloader());
    let scheme = if server.is_tls() { "https" } else { "http" };
    println!(
        "listening on {scheme}://{} (buckets: {})",
        server.local_addr(),
        server.bucket_names().join(", ")
    );
    if let Some(node) = &node {
        let addrs = node.listen_addrs(std::time::Duration::from_secs(5)).await;
        if addrs.is_empty() {
            println!(
                "p2p: peer id {} (asks its peers, answers none: no Listen)",
                node.peer_id()
            );
        }
        for a in addrs {
            println!("p2p: listening on {a}");
        }
    }
    let _ = std::io::stdout().flush();
    server
        .run(shutdown_signal())
        .await
        .map_err(|e| CliError::Io("serving".into(), std::io::Error::other(e.to_string())))?;
    eprintln!("piecestore: stopped (requests in flight finished, packs flushed)");
    Ok(())
}

/// On each SIGHUP, reads TLSCert and TLSKey again (a renewed certificate, no restart). A pair
/// that does not load is reported and the server keeps the one it has. Without TLS, SIGHUP is
/// caught too (and has nothing to reload), so that a reload request never stops the server.
#[cfg(unix)]
fn reload_tls_on_sighup(reloader: Option<piecestore_server::TlsReloader>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("piecestore: SIGHUP cannot be caught ({e}): TLS reload is off");
            return;
        }
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match reloader.as_ref().map(|r| r.reload()) {
                None => eprintln!("piecestore: SIGHUP: no TLS, nothing to reload"),
                Some(Ok(())) => eprintln!("piecestore: SIGHUP: TLS certificate and key reloaded"),
                Some(Err(e)) => eprintln!(
                    "piecestore: SIGHUP: TLS reload failed, keeping the certificate in use: {e}"
                ),
            }
        }
    });
}

/// SIGTERM or Ctrl-C (SIGINT).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `piecestore cache …`.
#[derive(Subcommand, Debug)]
enum CacheAction {
    /// Show each tier's size, fill and counters (a disk tier keeps its fill across runs).
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Empty every tier (the disk tier's files too).
    Clear,
}

async fn run(cli: Cli) -> Result<(), CliError> {
    if let Command::Migrate {
        from,
        to,
        dry_run,
        concurrency,
    } = &cli.command
    {
        return migrate(from, to, *dry_run, *concurrency).await;
    }
    if let Command::Bench {
        compare: Some(bench::BenchCommand::Compare { a, b }),
        ..
    } = &cli.command
    {
        return bench::compare_files(a, b);
    }
    let mut config = load_config(&cli)?;
    if matches!(cli.command, Command::Bench { .. })
        && config.cache.memory.is_none()
        && config.cache.disk.is_none()
    {
        // A load generator measures the backend: the default memory tier would serve the
        // gets of a working set that fits. Setting a tier (cache_memory=…) measures it.
        config.cache.memory = Some(0);
    }
    let serve = config.serve.clone();
    let peer_options = config.peers.clone();
    let store = PieceStore::open(config).await?;
    let node = match &cli.command {
        Command::Peer(_) => None,
        // A stat reads through the peers as a get does, so that the two agree.
        Command::Serve { .. } | Command::Get { .. } | Command::Stat { .. } => {
            peers::start(
                &store,
                &peer_options,
                matches!(cli.command, Command::Serve { .. }),
            )
            .await?
        }
        _ => None,
    };
    match cli.command {
        Command::Serve { listen } => return serve_store(store, serve, listen, node).await,
        Command::Peer(cmd) => return peers::run(&store, &peer_options, cmd).await,
        Command::Bench { args, .. } => bench::run(&store, args).await?,
        Command::Profile {
            json,
            orphan_samples,
        } => bench::profile(&store, json, orphan_samples).await?,
        Command::Gc {
            grace,
            garbage_ratio,
            dry_run,
            status,
            wait,
            json,
        } => {
            let mode = if status {
                pack::GcMode::Status
            } else if wait {
                pack::GcMode::Wait
            } else {
                pack::GcMode::Compact { dry_run }
            };
            pack::gc(&store, grace, garbage_ratio, mode, json).await?
        }
        Command::Fsck {
            rebuild_index,
            json,
        } => {
            let clean = pack::fsck(&store, rebuild_index, json).await?;
            store.close().await;
            if !clean {
                return Err(CliError::Exit(EXIT_DAMAGE));
            }
            return Ok(());
        }
        Command::Put {
            key,
            file,
            overwrite,
        } => {
            let data = match file.as_deref() {
                None => read_stdin()?,
                Some(p) if p.as_os_str() == "-" => read_stdin()?,
                Some(p) => std::fs::read(p).map_err(io(format!("cannot read {}", p.display())))?,
            };
            store.put_opts(&key, data, PutOptions { overwrite }).await?;
        }
        Command::Get {
            key,
            output,
            offset,
            len,
        } => {
            let bytes = match (offset, len) {
                (Some(o), Some(l)) => store.get_range(&key, o, l).await?,
                (None, Some(l)) => store.get_range(&key, 0, l).await?,
                _ => store.get(&key).await?,
            };
            match output {
                Some(path) => write_file(&path, &bytes)?,
                None => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&bytes)
                        .and_then(|_| out.flush())
                        .map_err(io("writing to standard output"))?;
                }
            }
        }
        Command::Rm { keys, prefix } => {
            if let Some(prefix) = prefix {
                let d = store.delete_prefix(&prefix).await?;
                println!("deleted {} pieces ({} bytes)", d.pieces, d.bytes);
            }
            for key in keys {
                store.delete(&key).await?;
            }
        }
        Command::Ls {
            prefix,
            long,
            unsorted,
        } => {
            let mut pieces = store.list(&prefix);
            let mut out = std::io::stdout().lock();
            let mut print = |m: &piecestore::PieceMeta| {
                let line = if long {
                    format!("{:>12} {}\n", m.size, m.key)
                } else {
                    format!("{}\n", m.key)
                };
                out.write_all(line.as_bytes())
                    .map_err(io("writing to standard output"))
            };
            if unsorted {
                while let Some(m) = pieces.try_next().await? {
                    print(&m)?;
                }
            } else {
                let mut all: Vec<_> = pieces.try_collect().await?;
                all.sort_unstable_by(|a, b| a.key.cmp(&b.key));
                for m in &all {
                    print(m)?;
                }
            }
        }
        Command::Stat { key, json } => {
            let m = store.head(&key).await?;
            let shard = store.shard_of(&key);
            let modified = humantime::format_rfc3339_seconds(m.last_modified).to_string();
            let unix = m
                .last_modified
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            if json {
                let crc = m
                    .crc32c
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "null".into());
                println!(
                    "{{\"key\":{:?},\"size\":{},\"crc32c\":{crc},\"verified\":{},\"shard\":{shard},\"last_modified\":{modified:?},\"last_modified_unix\":{unix}}}",
                    m.key,
                    m.size,
                    !m.unverified()
                );
            } else {
                println!("key:           {}", m.key);
                println!("size:          {}", m.size);
                match m.crc32c {
                    Some(c) => println!("crc32c:        {c} (0x{c:08x})"),
                    None => {
                        println!("crc32c:        none (unverified: written without a checksum)")
                    }
                }
                println!("shard:         {shard} ({})", store.shard_labels()[shard]);
                println!("last modified: {modified}");
            }
        }
        Command::Migrate { .. } => unreachable!("handled above"),
        Command::Cache { action } => cache_command(&store, action).await?,
        Command::Info => {
            println!(
                "shards: {} (placement {})",
                store.shard_count(),
                store.placement()
            );
            println!("layout: {}", store.layout().as_str());
            println!("packing: {}", store.packing());
            println!("cache: {}", store.caching());
            for (i, label) in store.shard_labels().iter().enumerate() {
                println!("  {i}: {label}");
            }
        }
    }
    store.close().await;
    Ok(())
}

async fn cache_command(store: &PieceStore, action: CacheAction) -> Result<(), CliError> {
    match action {
        CacheAction::Clear => {
            let before = store.cache_stats();
            if store.clear_cache().await {
                let freed: u64 = before
                    .iter()
                    .flat_map(|s| &s.tiers)
                    .filter(|t| t.tier == "disk")
                    .map(|t| t.bytes)
                    .sum();
                println!("cache cleared ({freed} bytes of disk tier removed)");
            } else {
                println!("no cache on this store (see [PieceStore.Cache] in docs/config.md)");
            }
        }
        CacheAction::Stats { json } => {
            let Some(s) = store.cache_stats() else {
                if json {
                    println!("null");
                } else {
                    println!("no cache on this store (see [PieceStore.Cache] in docs/config.md)");
                }
                return Ok(());
            };
            if json {
                let tiers: Vec<serde_json::Value> = s
                    .tiers
                    .iter()
                    .map(|t| {
                        serde_json::json!({
                            "tier": t.tier, "capacity": t.capacity, "bytes": t.bytes,
                            "entries": t.entries, "hits": t.hits, "misses": t.misses,
                            "inserts": t.inserts, "evictions": t.evictions, "corrupt": t.corrupt,
                        })
                    })
                    .collect();
                let v = serde_json::json!({
                    "tiers": tiers, "fetches": s.fetches, "coalesced": s.coalesced, "stale": s.stale,
                    "hit_ratio": s.hit_ratio(),
                });
                println!("{v}");
            } else {
                println!("cache: {}", store.caching());
                for t in &s.tiers {
                    println!(
                        "  {:<6} {} of {} in {} pieces; {} hits, {} misses, {} evictions{}",
                        t.tier,
                        piecestore::bench::human_size(t.bytes),
                        piecestore::bench::human_size(t.capacity),
                        t.entries,
                        t.hits,
                        t.misses,
                        t.evictions,
                        if t.corrupt > 0 {
                            format!(", {} damaged entries removed", t.corrupt)
                        } else {
                            String::new()
                        }
                    );
                }
            }
        }
    }
    Ok(())
}

async fn migrate(from: &str, to: &str, dry_run: bool, concurrency: usize) -> Result<(), CliError> {
    let source = PieceStore::open(Config::load(from)?).await?;
    let dest = PieceStore::open(Config::load(to)?).await?;
    copy_with_progress(&source, &dest, "", dry_run, concurrency, "destination").await
}

/// `migrate` and `replicate`: copies `source`'s pieces under `prefix` to `dest` with a
/// progress bar, then says what was copied, skipped and failed (`what` names `dest`).
pub(crate) async fn copy_with_progress(
    source: &PieceStore,
    dest: &dyn piecestore::migrate::Destination,
    prefix: &str,
    dry_run: bool,
    concurrency: usize,
    what: &str,
) -> Result<(), CliError> {
    use piecestore::migrate::{MigrateOptions, MigrateProgress};
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} pieces {msg} ({eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let on_progress = |p: &MigrateProgress| {
        bar.set_length(p.total_pieces);
        bar.set_position(p.done_pieces);
        bar.set_message(format!(
            "{} copied, {} skipped, {} failed, {}/{} MiB",
            p.copied,
            p.skipped,
            p.failed,
            p.done_bytes >> 20,
            p.total_bytes >> 20
        ));
    };
    let summary = source
        .copy_to(
            dest,
            prefix,
            MigrateOptions {
                dry_run,
                concurrency,
            },
            &on_progress,
        )
        .await?;
    bar.finish_and_clear();
    let p = summary.progress;
    let verb = if dry_run { "would copy" } else { "copied" };
    println!(
        "{verb} {} pieces ({} bytes), skipped {} already present, failed {}, of {} pieces ({} bytes)",
        p.copied, p.copied_bytes, p.skipped, p.failed, p.total_pieces, p.total_bytes
    );
    for (key, e) in summary.failures.iter().take(20) {
        eprintln!("failed {key}: {e}");
    }
    if let Some((_, e)) = summary.failures.first() {
        return Err(CliError::Store(Error::Backend {
            op: "copy",
            key: None,
            backend: what.into(),
            message: format!("{} pieces failed; first: {e}", summary.failures.len()),
            retryable: e.is_retryable(),
        }));
    }
    Ok(())
}

fn read_stdin() -> Result<Vec<u8>, CliError> {
    let mut buf = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut buf)
        .map_err(io("reading standard input"))?;
    Ok(buf)
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a failed write never
/// leaves a partial file under the name.
pub(crate) fn write_file(path: &std::path::Path, bytes: &[u8]) -> Result<(), CliError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let mut builder = tempfile::Builder::new();
    builder.prefix(".piecestore-out");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // A normal user file (0666 minus the umask, as open(2) applies it), not the private
        // 0600 of a temp file: `get -o`, reports and JSON are files to share.
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder
        .tempfile_in(dir)
        .map_err(io(format!("cannot write in {}", dir.display())))?;
    tmp.write_all(bytes)
        .map_err(io(format!("cannot write {}", path.display())))?;
    tmp.persist(path)
        .map_err(|e| CliError::Io(format!("cannot write {}", path.display()), e.error))?;
    Ok(())
}
