//! Test harness: real S3-compatible servers on 127.0.0.1, and fixtures for the behavior suite.
//!
//! Servers are started by the harness itself, once per test binary, and die with it:
//! - `moto_server` (pip `moto[server]`): faithful S3 semantics, checks no signatures;
//! - `s3s-fs` (cargo `s3s-fs`): checks SigV4, stores real files;
//! - `piecestore serve` (this workspace's `piecestore` binary, built by `cargo test
//!   --workspace`): buckets `shard-0..3`, each over a local directory, so that the suite runs
//!   over PieceStore's own S3 service as well;
//! - any other server given by `PIECESTORE_TEST_S3_ENDPOINT` (+ `PIECESTORE_TEST_S3_ACCESS_KEY`,
//!   `PIECESTORE_TEST_S3_SECRET_KEY`); its buckets `PIECESTORE_TEST_S3_BUCKET_PREFIX`-0..3 must exist,
//!   unless the server accepts unsigned bucket creation.
//!
//! A server whose binary is missing is skipped with a message, except under `CI=true`, where
//! that is a failure: CI must run the suite on both.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use piecestore::{Config, PieceStore};

/// The S3-compatible servers the suite runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// moto_server.
    Moto,
    /// s3s-fs.
    S3sFs,
    /// `piecestore serve`, buckets `shard-0..3` over local directories.
    Serve,
    /// The server named by `PIECESTORE_TEST_S3_ENDPOINT`.
    External,
}

/// A running (or external) S3-compatible server.
#[derive(Clone)]
pub struct S3Server {
    /// Which server.
    pub kind: ServerKind,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Its access key (generated per run; not a fixture).
    pub access_key: String,
    /// Its secret key (generated per run).
    pub secret_key: String,
    /// s3s-fs's data directory, where a bucket is a directory.
    pub data_dir: Option<PathBuf>,
    /// Whether its create-only put is atomic between racing writers.
    pub atomic_create: bool,
}

fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

fn random_token(len: usize) -> String {
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7)
        ^ (u64::from(std::process::id()) << 32);
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            b"abcdefghijklmnopqrstuvwxyz0123456789"[(seed % 36) as usize] as char
        })
        .collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening: {status}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not listen on 127.0.0.1:{port} within 60s");
}

fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
        dirs.push(Path::new(&home).join(".local/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Spawns a server from a thread that lives as long as the process, so that the child's
/// parent-death signal fires when the test binary exits, not when one test's thread does.
fn spawn_owned(mut cmd: Command) -> std::io::Result<Child> {
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(cmd.spawn());
        loop {
            std::thread::park();
        }
    });
    rx.recv()
        .unwrap_or_else(|_| Err(std::io::Error::other("spawner thread died")))
}

fn start_moto() -> Option<S3Server> {
    let bin = find_binary("moto_server")?;
    let port = free_port();
    let mut cmd = Command::new(bin);
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = spawn_owned(cmd).expect("spawn moto_server");
    wait_for_port(port, &mut child, "moto_server");
    std::mem::forget(child);
    Some(S3Server {
        kind: ServerKind::Moto,
        endpoint: format!("http://127.0.0.1:{port}"),
        access_key: random_token(20).to_uppercase(),
        secret_key: random_token(40),
        data_dir: None,
        atomic_create: true,
    })
}

fn start_s3s_fs() -> Option<S3Server> {
    let (server, child) = spawn_s3s_fs()?;
    std::mem::forget(child);
    Some(server)
}

/// Starts an s3s-fs on a free port with fresh credentials and data directory; `None` when it
/// is not installed.
fn spawn_s3s_fs() -> Option<(S3Server, Child)> {
    let bin = find_binary("s3s-fs")?;
    let port = free_port();
    remove_dead_servers_dirs();
    let dir = tempfile::Builder::new()
        .prefix(&format!("s3s-fs-{}-", std::process::id()))
        .tempdir()
        .expect("tempdir")
        .keep();
    let (ak, sk) = (random_token(20).to_uppercase(), random_token(40));
    let mut cmd = Command::new(bin);
    cmd.args([
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--access-key",
        &ak,
        "--secret-key",
        &sk,
    ])
    .arg(&dir)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let mut child = spawn_owned(cmd).expect("spawn s3s-fs");
    wait_for_port(port, &mut child, "s3s-fs");
    let server = S3Server {
        kind: ServerKind::S3sFs,
        endpoint: format!("http://127.0.0.1:{port}"),
        access_key: ak,
        secret_key: sk,
        data_dir: Some(dir),
        atomic_create: false,
    };
    Some((server, child))
}

/// The `piecestore` binary `cargo test --workspace` built next to this test binary
/// (`target/<profile>/piecestore`).
pub fn piecestore_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // target/<profile>/deps/<test binary>
    let profile_dir = exe.parent()?.parent()?;
    let bin = profile_dir.join("piecestore");
    bin.is_file().then_some(bin)
}

/// The buckets of the shared `piecestore serve`.
pub const SERVE_BUCKETS: u32 = 4;

fn start_serve() -> Option<S3Server> {
    let (server, child) = spawn_serve()?;
    std::mem::forget(child);
    Some(server)
}

/// Starts `piecestore serve` on a free port: buckets `shard-0..3`, each over a directory of a
/// fresh temporary directory, fresh keys; `None` when the binary is not built. The buckets
/// allow overwrites: the store under test decides immutability with its conditional puts, as
/// it does on any S3 server.
pub fn spawn_serve() -> Option<(S3Server, Child)> {
    let bin = piecestore_binary()?;
    let port = free_port();
    remove_dead_dirs("piecestore-serve-");
    let dir = tempfile::Builder::new()
        .prefix(&format!("piecestore-serve-{}-", std::process::id()))
        .tempdir()
        .expect("tempdir")
        .keep();
    let mut toml = format!(
        "[PieceStore.Store]\nBucketURL = \"file://{0}/default\"\n[PieceStore.Serve]\nListen = \"127.0.0.1:{port}\"\nUploadDir = \"{0}/uploads\"\n",
        dir.display()
    );
    for i in 0..SERVE_BUCKETS {
        toml.push_str(&format!(
            "[[PieceStore.Serve.Buckets]]\nName = \"shard-{i}\"\nStore = \"file://{}/shard-{i}\"\nAllowOverwrite = true\n",
            dir.display()
        ));
    }
    let config = dir.join("serve.toml");
    std::fs::write(&config, toml).expect("write serve.toml");
    let (ak, sk) = (random_token(20).to_uppercase(), random_token(40));
    let log = std::fs::File::create(dir.join("serve.log")).expect("serve.log");
    let mut cmd = Command::new(bin);
    for v in CLI_ENV {
        cmd.env_remove(v);
    }
    cmd.arg("--config")
        .arg(&config)
        .arg("serve")
        .env("PIECESTORE_SERVE_ACCESS_KEY", &ak)
        .env("PIECESTORE_SERVE_SECRET_KEY", &sk)
        // The gRPC API's bearer token: the same random secret.
        .env("PIECESTORE_SERVE_TOKEN", &sk)
        .stdout(Stdio::null())
        .stderr(log);
    let mut child = spawn_owned(cmd).expect("spawn piecestore serve");
    wait_for_port(port, &mut child, "piecestore serve");
    let server = S3Server {
        kind: ServerKind::Serve,
        endpoint: format!("http://127.0.0.1:{port}"),
        access_key: ak,
        secret_key: sk,
        data_dir: None,
        atomic_create: true,
    };
    Some((server, child))
}

/// Removes the data directories of s3s-fs servers started by test processes that are gone.
/// A shared server lives as long as its test process, which never drops it, so its directory
/// (named `s3s-fs-<pid>-…`) is swept by a later run instead of piling up in the temp dir.
fn remove_dead_servers_dirs() {
    remove_dead_dirs("s3s-fs-");
}

fn external() -> Option<S3Server> {
    let endpoint = std::env::var("PIECESTORE_TEST_S3_ENDPOINT").ok()?;
    Some(S3Server {
        kind: ServerKind::External,
        endpoint: endpoint.trim_end_matches('/').to_string(),
        access_key: std::env::var("PIECESTORE_TEST_S3_ACCESS_KEY").unwrap_or_default(),
        secret_key: std::env::var("PIECESTORE_TEST_S3_SECRET_KEY").unwrap_or_default(),
        data_dir: None,
        atomic_create: std::env::var("PIECESTORE_TEST_S3_ATOMIC_CREATE")
            .map(|v| v == "1")
            .unwrap_or(true),
    })
}

/// The shared server of `kind` for this test binary, started on first use. `None` (with a
/// message) when it is not installed and we are not in CI.
pub fn server(kind: ServerKind) -> Option<&'static S3Server> {
    static MOTO: OnceLock<Option<S3Server>> = OnceLock::new();
    static S3S: OnceLock<Option<S3Server>> = OnceLock::new();
    static EXT: OnceLock<Option<S3Server>> = OnceLock::new();
    static SERVE: OnceLock<Option<S3Server>> = OnceLock::new();
    let (cell, start, what): (_, fn() -> Option<S3Server>, _) = match kind {
        ServerKind::Moto => (
            &MOTO,
            start_moto,
            "moto_server (pip install 'moto[server]==5.2.5')",
        ),
        ServerKind::S3sFs => (
            &S3S,
            start_s3s_fs,
            "s3s-fs (cargo install s3s-fs --version 0.14.1 --features binary --locked)",
        ),
        ServerKind::Serve => (
            &SERVE,
            start_serve,
            "the piecestore binary (cargo build -p piecestore-cli; cargo test --workspace builds it)",
        ),
        ServerKind::External => (&EXT, external, ""),
    };
    let s = cell.get_or_init(start).as_ref();
    if s.is_none() && kind != ServerKind::External {
        assert!(!in_ci(), "CI=true but {what} is not installed");
        eprintln!("SKIPPED: {what} is not installed");
    }
    s
}

impl S3Server {
    /// Creates a bucket (s3s-fs: a directory; others: an unsigned `PUT /bucket`, which moto
    /// accepts). An existing bucket is fine.
    pub fn create_bucket(&self, name: &str) {
        if self.kind == ServerKind::Serve {
            // Its buckets are configured (`shard-0..3`); tests get a prefix in them instead.
            return;
        }
        if let Some(dir) = &self.data_dir {
            std::fs::create_dir_all(dir.join(name)).expect("create s3s-fs bucket dir");
            return;
        }
        let host = self.endpoint.trim_start_matches("http://");
        let mut s = TcpStream::connect(host).expect("connect to S3 server");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        write!(
            s,
            "PUT /{name} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        let status = resp.split_whitespace().nth(1).unwrap_or("");
        assert!(
            status == "200" || status == "409" || self.kind == ServerKind::External,
            "creating bucket {name} failed: {}",
            resp.lines().next().unwrap_or("")
        );
    }

    /// A config for `shards` buckets named `{bucket_prefix}-{i}` on this server (created here),
    /// or one bucket `{bucket_prefix}` when `shards` is 0.
    ///
    /// `piecestore serve` has configured buckets: there `bucket_prefix` is a key prefix in
    /// buckets `shard-0..N`.
    pub fn config(&self, bucket_prefix: &str, shards: u32) -> Config {
        if self.kind == ServerKind::Serve {
            assert!(
                shards <= SERVE_BUCKETS,
                "piecestore serve has {SERVE_BUCKETS} buckets"
            );
            let url = if shards == 0 {
                format!("{}/shard-0/{bucket_prefix}", self.endpoint)
            } else {
                format!("{}/shard-%d/{bucket_prefix}?shards={shards}", self.endpoint)
            };
            return self.config_for_url(&url);
        }
        let url = if shards == 0 {
            self.create_bucket(bucket_prefix);
            format!("{}/{bucket_prefix}", self.endpoint)
        } else {
            for i in 0..shards {
                self.create_bucket(&format!("{bucket_prefix}-{i}"));
            }
            format!("{}/{bucket_prefix}-%d?shards={shards}", self.endpoint)
        };
        self.config_for_url(&url)
    }

    /// A config for bucket `bucket` of this server (created here) reached through `proxy` (a
    /// [`Proxy`]'s or [`start_proxy`]'s endpoint), with `options` as URL query parameters
    /// (`""` for none).
    pub fn config_through(&self, proxy: &str, bucket: &str, options: &str) -> Config {
        self.create_bucket(bucket);
        let sep = if options.is_empty() { "" } else { "?" };
        self.config_for_url(&format!("{proxy}/{bucket}{sep}{options}"))
    }

    /// A config for `url` with this server's keys and few retries (tests fail fast).
    /// [`S3Server::config`] over `piecestore serve`'s gRPC API: `grpc://` to buckets
    /// `shard-0..N` (or `shard-0` when `shards` is 0), keys under `prefix`, the server's token
    /// as the store's `SecretKey`.
    pub fn grpc_config(&self, prefix: &str, shards: u32) -> Config {
        assert_eq!(
            self.kind,
            ServerKind::Serve,
            "only piecestore serve speaks gRPC"
        );
        let host = self.endpoint.trim_start_matches("http://");
        let url = if shards == 0 {
            format!("grpc://{host}/shard-0/{prefix}")
        } else {
            format!("grpc://{host}/shard-%d/{prefix}?shards={shards}")
        };
        let mut c = Config::from_url(&url).expect("grpc url");
        c.store.secret_key = piecestore::config::Secret::new(&self.secret_key);
        c
    }

    fn config_for_url(&self, url: &str) -> Config {
        let mut c = Config::from_url(url).expect("url");
        c.store.access_key = piecestore::config::Secret::new(&self.access_key);
        c.store.secret_key = piecestore::config::Secret::new(&self.secret_key);
        c.store.max_retries = 2;
        c
    }
}

/// The environment variables the `piecestore` binary reads, which a CLI test removes so that
/// the host's settings cannot leak in.
pub const CLI_ENV: &[&str] = &[
    "PIECESTORE_STORE",
    "PIECESTORE_INDEX_URL",
    "PIECESTORE_CONFIG",
    "BUCKET_URL",
    "AWS_ACCESS_KEY",
    "AWS_SECRET_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "MINIO_ACCESS_KEY",
    "MINIO_SECRET_KEY",
    "MINIO_REGION",
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_DEFAULT_REGION",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
];

/// Deterministic pseudo-random bytes (xorshift), for test pieces.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Runs `op` until it succeeds, fails with an error that is not retryable, or has failed
/// with retryable ones for about 30 s (a growing pause between tries, 50 ms up to 800 ms);
/// returns the last result and the number of retries.
///
/// For calls that s3s-fs may answer with a 500 through no fault of the store: it walks the
/// whole bucket's directories for every LIST, and a file deleted during the walk (gc
/// deletes packs all the while in the crash and model tests) fails the walk. Under CI's
/// load walks are slow and several in a row can fail. A server error is the server's, not a
/// wrong answer, so tests try again; a wrong answer or a typed non-retryable error still
/// fails them at once.
pub async fn retry_server_errors<T, F, Fut>(mut op: F) -> (piecestore::Result<T>, u32)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = piecestore::Result<T>>,
{
    let mut retries = 0u32;
    loop {
        match op().await {
            Err(e) if e.is_retryable() && retries < 40 => {
                retries += 1;
                let pause = 25u64 << retries.min(5);
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            }
            other => return (other, retries),
        }
    }
}

/// A unique, valid bucket-name stem for one test.
pub fn unique_name(test: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let stem: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(30)
        .collect();
    format!(
        "{}-{}-{}",
        stem.trim_matches('-'),
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Which store a behavior test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `memory://`.
    Memory,
    /// A local directory.
    File,
    /// Four local directories, sharded.
    FileSharded,
    /// moto_server, four buckets.
    Moto,
    /// s3s-fs, four buckets.
    S3sFs,
    /// The external server, four buckets.
    External,
    /// `memory://` with small pieces packed.
    MemoryPacked,
    /// A local directory, one object (file) per piece (`Pack = false`).
    FileUnpacked,
    /// s3s-fs, four buckets, one object per piece (`Pack = false`).
    S3sFsUnpacked,
    /// `piecestore serve` (itself packing into local directories), four buckets, reached by
    /// a store that does not pack (`Pack = false`: the server packs).
    Serve,
    /// The same `piecestore serve`, reached over its gRPC API (`grpc://`, four buckets).
    Grpc,
}

impl Backend {
    /// The backend without its packing choice, and that choice (`None`: the default).
    fn base(self) -> (Backend, Option<bool>) {
        match self {
            Backend::MemoryPacked => (Backend::Memory, Some(true)),
            Backend::FileUnpacked => (Backend::File, Some(false)),
            Backend::S3sFsUnpacked => (Backend::S3sFs, Some(false)),
            Backend::Serve => (Backend::Serve, Some(false)),
            b => (b, None),
        }
    }

    /// Whether pieces are stored in local files.
    pub fn is_file(self) -> bool {
        matches!(self.base().0, Backend::File | Backend::FileSharded)
    }
}

/// A store to test, and what the test needs to reach past it.
pub struct Fixture {
    /// The store under test.
    pub store: PieceStore,
    /// Its config (to reopen it).
    pub config: Config,
    /// Which backend.
    pub backend: Backend,
    /// The server, for S3 backends.
    pub server: Option<&'static S3Server>,
    /// The directory of file backends (removed on drop).
    pub dir: Option<tempfile::TempDir>,
}

impl Fixture {
    /// Opens a fresh store of `backend` for the test `name`; `None` when its server is not
    /// installed (outside CI).
    pub async fn new(backend: Backend, name: &str) -> Option<Fixture> {
        let mut dir = None;
        let mut server_ref = None;
        let (base, pack) = backend.base();
        let mut config = match base {
            Backend::Memory => Config::from_url("memory://").expect("memory"),
            Backend::File | Backend::FileSharded => {
                let d = tempfile::tempdir().expect("tempdir");
                let c = if base == Backend::File {
                    Config::from_url(&format!("file://{}/pieces", d.path().display()))
                } else {
                    Config::from_url(&format!("file://{}/shard-%d?shards=4", d.path().display()))
                };
                dir = Some(d);
                c.expect("file config")
            }
            Backend::Moto | Backend::S3sFs | Backend::External | Backend::Serve => {
                let kind = match base {
                    Backend::Moto => ServerKind::Moto,
                    Backend::S3sFs => ServerKind::S3sFs,
                    Backend::Serve => ServerKind::Serve,
                    _ => ServerKind::External,
                };
                let s = server(kind)?;
                server_ref = Some(s);
                let prefix = match kind {
                    ServerKind::External => std::env::var("PIECESTORE_TEST_S3_BUCKET_PREFIX")
                        .unwrap_or_else(|_| unique_name(name)),
                    _ => unique_name(name),
                };
                s.config(&prefix, 4)
            }
            Backend::Grpc => {
                let s = server(ServerKind::Serve)?;
                server_ref = Some(s);
                s.grpc_config(&unique_name(name), 4)
            }
            _ => unreachable!("base() resolves the variants"),
        };
        if let Some(p) = pack {
            config
                .set_option("Pack", piecestore::config::OptionValue::Bool(p))
                .expect("Pack option");
        }
        let store = PieceStore::open(config.clone())
            .await
            .unwrap_or_else(|e| panic!("open {backend:?}: {e}"));
        Some(Fixture {
            store,
            config,
            backend,
            server: server_ref,
            dir,
        })
    }

    /// Whether racing create-only puts of one key are decided atomically here.
    pub fn atomic_create(&self) -> bool {
        self.server.map(|s| s.atomic_create).unwrap_or(true)
    }
}

/// Generates one `#[tokio::test]` per (backend, test function): the same test functions over
/// every backend.
#[macro_export]
macro_rules! behavior_suite {
    ($($test:ident),* $(,)?) => {
        $crate::behavior_suite!(@backend memory, Memory, $($test),*);
        $crate::behavior_suite!(@backend file, File, $($test),*);
        $crate::behavior_suite!(@backend file_sharded, FileSharded, $($test),*);
        $crate::behavior_suite!(@backend moto_sharded, Moto, $($test),*);
        $crate::behavior_suite!(@backend s3s_fs_sharded, S3sFs, $($test),*);
        $crate::behavior_suite!(@external $($test),*);
        $crate::behavior_suite!(@backend memory_packed, MemoryPacked, $($test),*);
        $crate::behavior_suite!(@backend file_unpacked, FileUnpacked, $($test),*);
        $crate::behavior_suite!(@backend s3s_fs_unpacked, S3sFsUnpacked, $($test),*);
        $crate::behavior_suite!(@backend serve_sharded, Serve, $($test),*);
        $crate::behavior_suite!(@backend grpc_sharded, Grpc, $($test),*);
    };
    // The server named by PIECESTORE_TEST_S3_ENDPOINT: ignored unless run with `--ignored`
    // (a test that cannot run must not pass as if it had).
    (@external $($test:ident),*) => {
        mod external_sharded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs PIECESTORE_TEST_S3_ENDPOINT; run with --ignored"]
                async fn $test() {
                    let name = concat!("external_sharded-", stringify!($test));
                    let f = $crate::Fixture::new($crate::Backend::External, name)
                        .await
                        .expect("PIECESTORE_TEST_S3_ENDPOINT is not set");
                    super::$test(&f).await;
                }
            )*
        }
    };
    (@backend $module:ident, $backend:ident, $($test:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let name = concat!(stringify!($module), "-", stringify!($test));
                    if let Some(f) = $crate::Fixture::new($crate::Backend::$backend, name).await {
                        super::$test(&f).await;
                    }
                }
            )*
        }
    };
}

/// `unwrap_err` that never prints the `Ok` value (piece bytes can be megabytes).
pub trait NoOk {
    /// The error, or a panic that says only that the call succeeded.
    fn no_ok(self) -> piecestore::Error;
}

impl<T> NoOk for piecestore::Result<T> {
    #[track_caller]
    fn no_ok(self) -> piecestore::Error {
        match self {
            Ok(_) => panic!("expected an error, the call succeeded"),
            Err(e) => e,
        }
    }
}

/// What a [`start_proxy`] does to the requests it forwards.
#[derive(Debug, Clone, Copy)]
pub enum ProxyMode {
    /// Forward every request as it is (to count what a server saw: [`Proxy::seen`]).
    PassThrough,
    /// Delete the `If-None-Match` header: a server that ignores conditional writes, as some
    /// S3-compatible ones do.
    StripIfNoneMatch,
    /// Answer the first `n` requests with `503 Service Unavailable`, then forward.
    FailFirst(usize),
    /// Forward every `PUT` of the first object whose target contains the text (the first
    /// attempt and its retries), let the server store it, and answer the client `500 Internal
    /// Server Error` instead of the server's answer: a write that happened although its writer
    /// was told it failed (a lost response).
    LoseResponse(&'static str),
    /// Cut the first `times` GET responses whose body is longer than `after` bytes: forward
    /// the server's head and `after` bytes of its body, then close the connection (a network
    /// that drops mid-body). Other requests are forwarded.
    CutBodies {
        /// Body bytes that get through before the cut.
        after: usize,
        /// How many responses are cut.
        times: usize,
    },
    /// A server that never answers: every request whose target contains the text, and every
    /// bulk delete (`POST ?delete`, whose keys are in its body), is read and then held open,
    /// unanswered, for two minutes. Other requests are forwarded.
    Hold(&'static str),
    /// A flaky network and server: each request, with probability `percent` in 100 (chosen by
    /// a generator seeded with `seed`), meets one of five faults, in turn: a `503 SlowDown`
    /// answer; a `500 InternalError` answer; the connection reset before it is forwarded; the
    /// server's whole answer cut in half (a GET's body cut mid-way, a PUT's or DELETE's
    /// acknowledgement lost after the server acted); or a 100 ms stall before it is forwarded.
    /// [`Proxy::faults`] counts each.
    Faults {
        /// Percent of requests faulted.
        percent: u64,
        /// The generator's seed.
        seed: u64,
    },
}

/// The fault kinds of [`ProxyMode::Faults`], in [`Proxy::faults`]'s order.
pub const FAULT_KINDS: [&str; 5] = ["503", "500", "reset", "cut answer", "stall"];

/// Forwards the rest of a request's body from `client` to `server` (`sent` bytes of it went
/// with the head), then reads the server's whole answer; `None` when either side failed first.
async fn finish_request(
    client: &mut tokio::net::TcpStream,
    server: &mut tokio::net::TcpStream,
    head: &str,
    sent: usize,
) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body_len = head
        .lines()
        .find_map(|l| {
            let l = l.to_ascii_lowercase();
            l.strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut left = body_len.saturating_sub(sent);
    let mut chunk = [0u8; 8192];
    while left > 0 {
        let n = client.read(&mut chunk).await.ok().filter(|&n| n > 0)?;
        server.write_all(&chunk[..n]).await.ok()?;
        left = left.saturating_sub(n);
    }
    let mut answer = Vec::new();
    let _ = server.read_to_end(&mut answer).await;
    Some(answer)
}

/// splitmix64: the fault generator's step.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One request a [`Proxy`] saw: method and target (path with query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    /// `GET`, `PUT`, `HEAD`, `DELETE`, …
    pub method: String,
    /// The request target, e.g. `/bucket-0/key`.
    pub target: String,
    /// Its `Range` header, if it had one.
    pub range: Option<String>,
}

/// A running [`start_proxy`]: its endpoint and every request it received.
pub struct Proxy {
    /// `http://127.0.0.1:PORT`: use it in place of the server's endpoint.
    pub endpoint: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<SeenRequest>>>,
    faults: std::sync::Arc<[std::sync::atomic::AtomicU64; 5]>,
    holding: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    /// In [`ProxyMode::Hold`]: whether requests that match are held (from the start) or, for
    /// now, forwarded.
    pub fn set_holding(&self, on: bool) {
        self.holding.store(on, Ordering::SeqCst);
    }

    /// Every request received so far (forwarded or answered by the proxy).
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.seen.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// How many of each [`FAULT_KINDS`] a [`ProxyMode::Faults`] proxy has injected.
    pub fn faults(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.faults[i].load(Ordering::Relaxed))
    }
}

/// A proxy on 127.0.0.1 in front of an S3 server (path style), running until the test binary
/// exits. Returns its endpoint.
pub fn start_proxy(upstream: &str, mode: ProxyMode) -> String {
    Proxy::start(upstream, mode).endpoint
}

impl Proxy {
    /// [`start_proxy`], keeping the log of requests.
    pub fn start(upstream: &str, mode: ProxyMode) -> Proxy {
        use std::sync::Arc;
        use std::sync::atomic::AtomicUsize;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let seen = Arc::new(AtomicUsize::new(0));
        let lost: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let faults: Arc<[std::sync::atomic::AtomicU64; 5]> = Arc::default();
        let holding = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let proxy = Proxy {
            endpoint: format!("http://127.0.0.1:{port}"),
            seen: Arc::clone(&log),
            faults: Arc::clone(&faults),
            holding: Arc::clone(&holding),
        };
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((mut client, _)) = listener.accept().await else { continue };
                let upstream = upstream.clone();
                let seen = Arc::clone(&seen);
                let lost = Arc::clone(&lost);
                let log = Arc::clone(&log);
                let faults = Arc::clone(&faults);
                let holding = Arc::clone(&holding);
                tokio::spawn(async move {
                    // Read the request head; one request per connection (Connection: close).
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    let head_end = loop {
                        let n = match client.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                    let mut first = head.split_whitespace();
                    let range = head.split("\r\n").find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("range").then(|| value.trim().to_string())
                    });
                    if let (Some(method), Some(target), Ok(mut log)) = (first.next(), first.next(), log.lock()) {
                        log.push(SeenRequest { method: method.into(), target: target.into(), range });
                    }
                    if let ProxyMode::Hold(needle) = mode
                        && holding.load(Ordering::SeqCst)
                        && head.split_whitespace().nth(1).is_some_and(|t| {
                            t.contains(needle) || (head.starts_with("POST ") && t.contains("?delete"))
                        })
                    {
                        tokio::time::sleep(std::time::Duration::from_secs(120)).await;
                        return;
                    }
                    let mut cut_answer = false;
                    if let ProxyMode::Faults { percent, seed } = mode {
                        let r = mix(seed ^ mix(seen.fetch_add(1, Ordering::SeqCst) as u64));
                        if r % 100 < percent {
                            let kind = ((r >> 32) % 5) as usize;
                            faults[kind].fetch_add(1, Ordering::Relaxed);
                            let answer = |status: &str, code: &str| {
                                let body = format!("<Error><Code>{code}</Code></Error>");
                                format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                            };
                            match kind {
                                0 => {
                                    let _ = client.write_all(answer("503 Service Unavailable", "SlowDown").as_bytes()).await;
                                    return;
                                }
                                1 => {
                                    let _ = client.write_all(answer("500 Internal Server Error", "InternalError").as_bytes()).await;
                                    return;
                                }
                                2 => {
                                    // RST, not FIN.
                                    let _ = client.set_zero_linger();
                                    return;
                                }
                                3 => cut_answer = true,
                                _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                            }
                        }
                    }
                    if let ProxyMode::FailFirst(n) = mode
                        && seen.fetch_add(1, Ordering::SeqCst) < n
                    {
                        let body = "<Error><Code>SlowDown</Code></Error>";
                        let resp = format!(
                            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = client.write_all(resp.as_bytes()).await;
                        return;
                    }
                    let mut out = String::new();
                    for line in head.split("\r\n").filter(|l| !l.is_empty()) {
                        let lower = line.to_ascii_lowercase();
                        let strip = matches!(mode, ProxyMode::StripIfNoneMatch) && lower.starts_with("if-none-match:");
                        if strip || lower.starts_with("connection:") {
                            continue;
                        }
                        out.push_str(line);
                        out.push_str("\r\n");
                    }
                    out.push_str("Connection: close\r\n\r\n");
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else { return };
                    if server.write_all(out.as_bytes()).await.is_err() || server.write_all(&buf[head_end..]).await.is_err() {
                        return;
                    }
                    let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    if let ProxyMode::LoseResponse(needle) = mode
                        && head.starts_with("PUT ")
                        && target.contains(needle)
                        && lost.lock().map(|mut l| l.get_or_insert_with(|| target.clone()) == &target).unwrap_or(false)
                    {
                        // The rest of the body, then the server's whole answer, which is dropped.
                        let (mut from_client, mut to_server) = (client, server);
                        if finish_request(&mut from_client, &mut to_server, &head, buf.len() - head_end).await.is_none() {
                            return;
                        }
                        let body = "<Error><Code>InternalError</Code></Error>";
                        let resp = format!(
                            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = from_client.write_all(resp.as_bytes()).await;
                        return;
                    }
                    if cut_answer {
                        // The request's body, then half of the server's whole answer.
                        let Some(answer) = finish_request(&mut client, &mut server, &head, buf.len() - head_end).await else {
                            return;
                        };
                        let _ = client.write_all(&answer[..answer.len() / 2]).await;
                        let _ = client.shutdown().await;
                        return;
                    }
                    if let ProxyMode::CutBodies { after, times } = mode
                        && head.starts_with("GET ")
                    {
                        // The server's head, then `after` bytes of its body, then the cut.
                        let mut answer = Vec::new();
                        let (body_at, body_len) = loop {
                            let n = match server.read(&mut chunk).await {
                                Ok(0) | Err(_) => break (None, 0),
                                Ok(n) => n,
                            };
                            answer.extend_from_slice(&chunk[..n]);
                            if let Some(i) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
                                let len = String::from_utf8_lossy(&answer[..i])
                                    .lines()
                                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
                                    .unwrap_or(0);
                                break (Some(i + 4), len);
                            }
                        };
                        let Some(body_at) = body_at else { return };
                        if body_len > after && seen.fetch_add(1, Ordering::SeqCst) < times {
                            while answer.len() < body_at + after {
                                let n = match server.read(&mut chunk).await {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => n,
                                };
                                answer.extend_from_slice(&chunk[..n]);
                            }
                            answer.truncate(body_at + after);
                            let _ = client.write_all(&answer).await;
                            let _ = client.shutdown().await;
                            return;
                        }
                        if client.write_all(&answer).await.is_err() {
                            return;
                        }
                    }
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        });
        proxy
    }
}

/// A server started for one test alone (to stop it mid-test); killed on drop.
pub struct OwnedServer {
    /// The server.
    pub server: S3Server,
    child: Child,
}

impl OwnedServer {
    /// Kills the server (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnedServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts an s3s-fs of this test's own, which the test may kill. `None` (with a message) when
/// s3s-fs is not installed and we are not in CI.
pub fn start_owned_s3s_fs() -> Option<OwnedServer> {
    let Some((server, child)) = spawn_s3s_fs() else {
        assert!(!in_ci(), "CI=true but s3s-fs is not installed");
        eprintln!("SKIPPED: s3s-fs is not installed");
        return None;
    };
    Some(OwnedServer { server, child })
}

/// The piece keys shard `shard` of `store` holds, read past the store: its piece objects, and
/// for a packed store the pieces its packs hold (a key's newest record wins unless a newer
/// tombstone deletes it), resolved from the pack bytes alone.
pub async fn raw_piece_keys(
    store: &PieceStore,
    shard: usize,
) -> std::collections::BTreeSet<String> {
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    use piecestore::pack::format::{self, RecordKind};
    let raw = store.shard_object_store(shard).expect("shard");
    let objects: Vec<object_store::ObjectMeta> = raw.list(None).try_collect().await.expect("list");
    let mut keys = std::collections::BTreeSet::new();
    let mut newest: std::collections::HashMap<String, (u64, bool)> = Default::default();
    for m in objects {
        let name = m.location.to_string();
        if !name.starts_with(".piecestore/") {
            keys.insert(name);
            continue;
        }
        if !(name.starts_with(".piecestore/packs/") && name.ends_with(".pack")) {
            continue;
        }
        let bytes = raw
            .get(&m.location)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        let scan = format::scan(&bytes).expect("pack");
        for e in scan.entries {
            let payload = &bytes[e.offset as usize..(e.offset + e.len) as usize];
            let (seq, live) = match e.kind {
                RecordKind::Piece => (e.seq, true),
                RecordKind::Tombstone => {
                    (format::tombstone_target(payload).expect("target"), false)
                }
            };
            let slot = newest.entry(e.key).or_insert((0, false));
            // A tombstone wins over the record it names; a newer record wins over both.
            if seq > slot.0 || (seq == slot.0 && !live) {
                *slot = (seq, live);
            }
        }
    }
    keys.extend(
        newest
            .into_iter()
            .filter(|(_, (_, live))| *live)
            .map(|(k, _)| k),
    );
    keys
}

/// Drops `path`'s pages from the page cache (written back first: dirty pages would stay),
/// and checks with `mincore` that none is left: its next read must come from the disk.
#[cfg(target_os = "linux")]
pub fn evict_from_page_cache(path: &std::path::Path) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).expect("open");
    f.sync_all().expect("fsync");
    // SAFETY: a plain advice call on a file descriptor this function owns.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise on {}", path.display());
    assert_eq!(
        resident_pages(path),
        0,
        "{} is still cached",
        path.display()
    );
}

/// How many of `path`'s pages are in the page cache (`mincore` of a mapping of it).
#[cfg(target_os = "linux")]
fn resident_pages(path: &std::path::Path) -> usize {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).expect("open");
    let len = f.metadata().expect("metadata").len() as usize;
    if len == 0 {
        return 0;
    }
    // SAFETY: a private read-only mapping of `len` bytes of an open file, inspected with
    // mincore into a vector of one byte per page, then unmapped; nothing reads through it.
    unsafe {
        let page = libc::sysconf(libc::_SC_PAGESIZE) as usize;
        let map = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(map, libc::MAP_FAILED, "mmap {}", path.display());
        let mut vec = vec![0u8; len.div_ceil(page)];
        let rc = libc::mincore(map, len, vec.as_mut_ptr());
        libc::munmap(map, len);
        assert_eq!(rc, 0, "mincore {}", path.display());
        vec.iter().filter(|b| *b & 1 == 1).count()
    }
}

/// Flips the byte at `at` of `key`'s stored bytes past the store (bit rot), keeping its
/// checksum: in its object (metadata or trailer kept as they were), or in its pack.
pub async fn flip_stored_byte(store: &PieceStore, key: &str, at: usize) {
    use futures::TryStreamExt;
    use object_store::path::Path as OPath;
    use object_store::{GetOptions, PutOptions, PutPayload};
    let raw = store
        .shard_object_store(store.shard_of(key))
        .expect("shard");
    let mut targets = vec![OPath::parse(key).expect("key")];
    let packs: Vec<object_store::ObjectMeta> = raw
        .list(Some(&OPath::from(".piecestore/packs")))
        .try_collect()
        .await
        .unwrap_or_default();
    targets.extend(packs.into_iter().map(|m| m.location));
    for path in targets {
        let Ok(r) = raw.get_opts(&path, GetOptions::default()).await else {
            continue;
        };
        let attrs = r.attributes.clone();
        let mut bytes = r.bytes().await.expect("bytes").to_vec();
        let offset = if path.as_ref() == key {
            0
        } else {
            let scan = piecestore::pack::format::scan(&bytes).expect("pack");
            match scan.entries.iter().rev().find(|e| e.key == key) {
                Some(e) => e.offset as usize,
                None => continue,
            }
        };
        bytes[offset + at] ^= 0x01;
        let opts = PutOptions {
            attributes: attrs,
            ..Default::default()
        };
        raw.put_opts(&path, PutPayload::from(bytes), opts)
            .await
            .expect("rewrite");
        return;
    }
    panic!("{key} is stored nowhere");
}

/// A small deterministic xorshift generator, for randomized tests that must replay from a
/// seed (the seed must not be 0).
pub struct XorShift(pub u64);

impl XorShift {
    /// The next number.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True one time in `one_in`.
    pub fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

/// The pack files of a local directory shard (`<dir>/.piecestore/packs/*.pack`).
pub fn pack_files(dir: &Path) -> std::collections::BTreeSet<PathBuf> {
    std::fs::read_dir(dir.join(".piecestore/packs"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "pack"))
                .collect()
        })
        .unwrap_or_default()
}

/// fsck's problems, one indented line each, for an assertion message.
pub fn fsck_problems(report: &piecestore::pack::fsck::FsckReport) -> String {
    report
        .problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Other bytes of the same length and the same CRC32C as `a` (at least 8 bytes): its first byte
/// changed and its last four chosen to bring the checksum back (CRC32C is affine in its input
/// bits, so the four bytes solve a 32×32 linear system over GF(2)).
pub fn crc32c_twin(a: &[u8]) -> Vec<u8> {
    use piecestore::checksum::crc32c;
    assert!(a.len() >= 8, "crc32c_twin needs at least 8 bytes");
    let n = a.len();
    let target = crc32c(a);
    let mut b = a.to_vec();
    b[0] ^= 0xa5;
    let mut eval = |x: u32| {
        b[n - 4..].copy_from_slice(&x.to_le_bytes());
        crc32c(&b)
    };
    let f0 = eval(0);
    // basis[bit]: a combination of input bits (mask) whose output has `bit` as its top bit.
    let mut basis: [Option<(u32, u32)>; 32] = [None; 32];
    for i in 0..32 {
        let (mut v, mut m) = (eval(1 << i) ^ f0, 1u32 << i);
        for bit in (0..32).rev() {
            if v & (1 << bit) == 0 {
                continue;
            }
            match basis[bit] {
                Some((bv, bm)) => {
                    v ^= bv;
                    m ^= bm;
                }
                None => {
                    basis[bit] = Some((v, m));
                    break;
                }
            }
        }
    }
    let (mut y, mut x) = (target ^ f0, 0u32);
    for bit in (0..32).rev() {
        if y & (1 << bit) != 0 {
            let (bv, bm) = basis[bit].expect("CRC32C of the last 32 bits is a bijection");
            y ^= bv;
            x ^= bm;
        }
    }
    let mut twin = a.to_vec();
    twin[0] ^= 0xa5;
    twin[n - 4..].copy_from_slice(&x.to_le_bytes());
    assert_eq!(crc32c(&twin), target);
    assert_ne!(twin.as_slice(), a);
    twin
}

/// A throwaway PostgreSQL cluster on 127.0.0.1 (the pack index of several nodes).
pub struct PgServer {
    /// `postgres://piecestore:<password>@127.0.0.1:<port>/postgres` (the password is made
    /// per run; not a fixture).
    pub url: String,
    /// Its port.
    pub port: u16,
}

/// `initdb`, `postgres`: on the `PATH`, or in Debian's `/usr/lib/postgresql/<version>/bin`.
fn find_pg_binary(name: &str) -> Option<PathBuf> {
    if let Some(p) = find_binary(name) {
        return Some(p);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.is_file())
        .collect();
    versions.sort();
    versions.pop()
}

/// The uid and gid of the `postgres` user (PostgreSQL refuses to run as root).
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&"postgres") && f.len() > 3)
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
            .flatten()
    })
}

/// Starts a new cluster (its own data directory, a free port, a password made for the run)
/// that dies with the test binary; `None` when PostgreSQL is not installed.
fn spawn_postgres() -> Option<(PgServer, Child)> {
    let initdb = find_pg_binary("initdb")?;
    let postgres = find_pg_binary("postgres")?;
    remove_dead_dirs("pg-");
    let dir = tempfile::Builder::new()
        .prefix(&format!("pg-{}-", std::process::id()))
        .tempdir()
        .expect("tempdir")
        .keep();
    let data = dir.join("data");
    let password = random_token(24);
    let pwfile = dir.join("pw");
    std::fs::write(&pwfile, format!("{password}\n")).expect("write the password file");
    // SAFETY: geteuid has no preconditions.
    let as_user = if unsafe { libc::geteuid() } == 0 {
        let (uid, gid) = postgres_user().expect("running as root, and no `postgres` user");
        let chown = |p: &Path| {
            let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("path");
            // SAFETY: a valid C string.
            unsafe { libc::chown(c.as_ptr(), uid, gid) };
        };
        chown(&dir);
        chown(&pwfile);
        Some((uid, gid))
    } else {
        None
    };
    let user = |cmd: &mut Command| {
        if let Some((uid, gid)) = as_user {
            cmd.uid(uid).gid(gid);
        }
    };
    let mut init = Command::new(&initdb);
    init.arg("-D")
        .arg(&data)
        .args([
            "-U",
            "piecestore",
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ])
        .arg(format!("--pwfile={}", pwfile.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    user(&mut init);
    let out = init.output().expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let mut cmd = Command::new(&postgres);
    cmd.arg("-D")
        .arg(&data)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
        .arg(&dir)
        // A throwaway cluster: no fsync (tests do not pull the plug on it).
        .args(["-c", "fsync=off", "-c", "max_connections=300"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    user(&mut cmd);
    let mut child = spawn_owned(cmd).expect("spawn postgres");
    wait_for_port(port, &mut child, "postgres");
    let server = PgServer {
        url: format!("postgres://piecestore:{password}@127.0.0.1:{port}/postgres"),
        port,
    };
    Some((server, child))
}

/// Removes the temp directories `<prefix><pid>-…` of test processes that are gone.
fn remove_dead_dirs(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The shared PostgreSQL cluster of this test binary, started on first use. `None` (with a
/// message) when PostgreSQL is not installed and we are not in CI.
pub fn postgres() -> Option<&'static PgServer> {
    static PG: OnceLock<Option<PgServer>> = OnceLock::new();
    let s = PG
        .get_or_init(|| {
            spawn_postgres().map(|(server, child)| {
                std::mem::forget(child);
                server
            })
        })
        .as_ref();
    if s.is_none() {
        assert!(
            !in_ci(),
            "CI=true but PostgreSQL (initdb, postgres) is not installed"
        );
        eprintln!("SKIPPED: PostgreSQL is not installed (apt-get install postgresql)");
    }
    s
}
