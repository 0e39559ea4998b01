//! Nodes that exchange pieces, as users run them: `piecestore serve` processes that answer
//! their peers over P2P (`/piecestore/piece/1`), and other `piecestore` processes that read
//! through their peer tier, fetch, replicate, and list their peers. Everything on 127.0.0.1,
//! each wait bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use piecestore::{PieceMeta, PieceStore};
use piecestore_server::p2p::{self, PeerNode, Responder};

const TOKEN: &str = "nodes-test-token-0123456789";
const ACCESS: &str = "NODESTESTACCESSKEY";
const SECRET: &str = "nodes-test-secret-not-a-real-one";

/// A node's directory and config: a packed store in `data/` (PieceStore's own layout), or the
/// original Go piecestore's layout with `original`.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new(original: bool, listen: bool, bootstrap: &[String], allow: &[String]) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = Node { dir };
        node.write_config(original, listen, bootstrap, allow);
        node
    }

    fn write_config(&self, original: bool, listen: bool, bootstrap: &[String], allow: &[String]) {
        self.write_config_with(original, listen, bootstrap, allow, "");
    }

    /// [`Node::write_config`] with `extra` lines in `[PieceStore.Peers]`.
    fn write_config_with(
        &self,
        original: bool,
        listen: bool,
        bootstrap: &[String],
        allow: &[String],
        extra: &str,
    ) {
        let list = |v: &[String]| {
            v.iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut toml = format!(
            "[PieceStore.Store]\nStorage = \"file\"\nBucketURL = \"{}\"\n",
            self.dir.path().join("data").display()
        );
        if !original {
            toml.push_str("[PieceStore.Pack]\nEnabled = true\n");
        }
        toml.push_str(&format!(
            "[PieceStore.Peers]\nListen = [{}]\nBootstrap = [{}]\nAllow = [{}]\nTimeout = \"10s\"\n{extra}\n",
            if listen { "\"/ip4/127.0.0.1/tcp/0\"" } else { "" },
            list(bootstrap),
            list(allow)
        ));
        std::fs::write(self.config(), toml).expect("write config");
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_piecestore"));
        c.arg("--config").arg(self.config());
        c.env_remove("BUCKET_URL")
            .env("PIECESTORE_SERVE_TOKEN", TOKEN)
            .env("PIECESTORE_SERVE_ACCESS_KEY", ACCESS)
            .env("PIECESTORE_SERVE_SECRET_KEY", SECRET);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run piecestore")
    }

    fn put(&self, key: &str, data: &[u8]) {
        let mut child = self
            .cmd()
            .args(["put", key, "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn put");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(data)
            .expect("write stdin");
        let status = child.wait().expect("wait put");
        assert!(status.success(), "put {key} failed");
    }

    fn get(&self, key: &str) -> Output {
        self.run(&["get", key])
    }

    /// This node's peer id (creating its identity key on first use).
    fn peer_id(&self) -> String {
        let out = self.run(&["peers", "--json"]);
        assert!(out.status.success(), "peers --json: {}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("peers JSON");
        v["id"].as_str().expect("id").to_string()
    }

    fn serve(&self) -> Served {
        let mut child = self
            .cmd()
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (mut http, mut p2p) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(60);
        while http.is_none() || p2p.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("serve never said where it listens; stderr: {err}");
            };
            if let Some(rest) = line.strip_prefix("listening on http://") {
                http = rest.split_whitespace().next().map(str::to_string);
            }
            if let Some(rest) = line.strip_prefix("p2p: listening on ") {
                p2p = Some(rest.trim().to_string());
            } else if line.starts_with("p2p: peer id ") {
                // A node that only asks its peers.
                p2p = Some(String::new());
            }
        }
        Served {
            child,
            http: http.unwrap_or_default(),
            p2p: p2p.unwrap_or_default(),
        }
    }
}

/// A running `piecestore serve` with its P2P listener.
struct Served {
    child: Child,
    http: String,
    /// Its full P2P address, `/ip4/127.0.0.1/tcp/PORT/p2p/ID`.
    p2p: String,
}

impl Served {
    /// The whole HTTP response (status line, headers, body) to `GET path`.
    fn http_get(&self, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(&self.http).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).ok();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.http
        )
        .expect("send");
        let mut response = String::new();
        s.read_to_string(&mut response).expect("read the response");
        response
    }

    /// The value of the sample `name` (with its labels) in the server's `/metrics`.
    fn metric(&self, sample: &str) -> u64 {
        self.http_get("/metrics")
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
            .unwrap_or(0)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill();
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn pieces(n: usize, seed: u64) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let len = match i % 10 {
                0 => 3 << 20,
                1 => 0,
                _ => 100 + (i * 977) % 20_000,
            };
            (
                format!("e{i}_s{}_p1", i % 6),
                piecestore_tests::pseudo_random(len, seed + i as u64),
            )
        })
        .collect()
}

/// C reads A's pieces through its peer tier (B, first in C's list, has none of them), byte for
/// byte, whole and in ranges; C keeps none of them; a key no peer has is NotFound; a node not
/// on A's allow-list is refused; A's /metrics counts what it served.
#[test]
fn a_node_reads_its_peers_pieces_through_the_peer_tier() {
    let c = Node::new(false, false, &[], &[]);
    let c_id = c.peer_id();
    // The identity stays: the same id on the next run, in a 0600 file.
    assert_eq!(c.peer_id(), c_id);
    let key_file = c.dir.path().join("data/.piecestore/p2p-identity.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file)
            .expect("identity key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "identity key mode {mode:o}");
    }

    let a = Node::new(false, true, &[], std::slice::from_ref(&c_id));
    let b = Node::new(true, true, &[], std::slice::from_ref(&c_id));
    let data = pieces(12, 1);
    for (k, d) in &data {
        a.put(k, d);
    }
    let a_srv = a.serve();
    let b_srv = b.serve();
    c.write_config(false, false, &[b_srv.p2p.clone(), a_srv.p2p.clone()], &[]);

    for (k, d) in &data {
        let out = c.get(k);
        assert!(out.status.success(), "get {k}: {}", text(&out.stderr));
        assert!(
            out.stdout == *d,
            "get {k}: wrong bytes through the peer tier"
        );
    }
    // A range of a piece only A has.
    let (k, d) = &data[0];
    let out = c.run(&["get", k, "--offset", "1000", "--len", "5000"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, d[1000..6000]);
    // A stat through the peer tier: A's size, checksum and time of writing (not 1970).
    let stat = |node: &Node| -> serde_json::Value {
        let out = node.run(&["stat", k, "--json"]);
        assert!(out.status.success(), "stat {k}: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("stat JSON")
    };
    let (at_a, via_c) = (stat(&a), stat(&c));
    for field in ["size", "crc32c", "last_modified_unix"] {
        assert_eq!(at_a[field], via_c[field], "{field}: A {at_a} / C {via_c}");
    }
    assert!(
        at_a["last_modified_unix"].as_u64() > Some(1_700_000_000),
        "{at_a}"
    );
    // Read through, not copied: C's own store is still empty.
    let out = c.run(&["ls"]);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        "",
        "C stored what it read from peers"
    );
    // No peer has it.
    let out = c.get("e999_s0_p1");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));

    // `peers` names both, with what they serve.
    let out = c.run(&["peers"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains(&format!("this node: {c_id}")), "{said}");
    assert!(said.contains("serving file://"), "{said}");

    // D is not on A's allow-list: its peer tier gets nothing, its fetch is refused.
    let d_node = Node::new(false, false, std::slice::from_ref(&a_srv.p2p), &[]);
    let out = d_node.get(&data[2].0);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let out = d_node.run(&["fetch", &data[2].0, "--from", &a_srv.p2p]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("allow-list"),
        "{}",
        text(&out.stderr)
    );

    // `fetch` pulls a piece into C's own store.
    let out = c.run(&["fetch", &data[3].0, "--from", &a_srv.p2p]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = c.run(&["ls"]);
    assert_eq!(text(&out.stdout).trim(), data[3].0);

    // C as a server: its gRPC API's gets go through its peer tier too.
    let c_srv = c.serve();
    assert!(c_srv.p2p.is_empty(), "C listens for peers without Listen");
    let out = Command::new(env!("CARGO_BIN_EXE_piecestore"))
        .arg("--store")
        .arg(format!("grpc://{}/pieces", c_srv.http))
        .args(["get", &data[4].0])
        .env("PIECESTORE_GRPC_TOKEN", TOKEN)
        .output()
        .expect("get over grpc");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        out.stdout == data[4].1,
        "C's gRPC API did not read through its peers"
    );
    let fetched = c_srv.metric("piecestore_peer_fetches_total{outcome=\"ok\"}");
    assert_eq!(fetched, 1, "C's /metrics counts its fetch from A");
    drop(c_srv);

    let ok = a_srv.metric("piecestore_peer_requests_served_total{outcome=\"ok\"}");
    assert!(ok > data.len() as u64, "A served {ok} pieces");
    let denied = a_srv.metric("piecestore_peer_requests_served_total{outcome=\"denied\"}");
    assert!(denied >= 2, "A refused {denied} requests");
    let missing = b_srv.metric("piecestore_peer_requests_served_total{outcome=\"not_found\"}");
    assert!(
        missing >= data.len() as u64,
        "B said not found {missing} times"
    );
    let sent = a_srv.metric("piecestore_peer_sent_bytes_total");
    let total: usize = data.iter().map(|(_, d)| d.len()).sum();
    assert!(sent >= total as u64, "A sent {sent} bytes of {total}");
}

/// A peer's answers, made up by the test: bytes that do not match the checksum it sends, or a
/// get that waits (until the node is shut down under it).
struct Fake {
    real: Vec<(String, Vec<u8>)>,
    lie: bool,
    called: std::sync::Mutex<Option<mpsc::Sender<()>>>,
}

impl Responder for Fake {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, piecestore::Result<(Bytes, u32)>> {
        Box::pin(async move {
            let d = self
                .real
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, d)| d.clone())
                .unwrap_or_default();
            if let Some(tx) = self.called.lock().ok().and_then(|g| g.clone()) {
                let _ = tx.send(());
            }
            if !self.lie {
                // Held: the test shuts the node down while this waits.
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            let crc = piecestore::checksum::crc32c(&d);
            let mut wrong = d;
            if let Some(b) = wrong.first_mut() {
                *b ^= 0xff;
            }
            Ok((Bytes::from(wrong), crc))
        })
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, piecestore::Result<PieceMeta>> {
        Box::pin(async move {
            Err(piecestore::Error::NotFound {
                key: key.into(),
                backend: "fake".into(),
            })
        })
    }

    fn put<'a>(&'a self, _: &'a str, _: Bytes) -> BoxFuture<'a, piecestore::Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn describe(&self) -> String {
        "a fake peer".into()
    }
}

/// A fake peer in this process, listening on 127.0.0.1, allowing anyone.
fn fake_peer(rt: &tokio::runtime::Runtime, fake: Fake) -> (PeerNode, String) {
    rt.block_on(async {
        let options = piecestore::config::PeersOptions {
            listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            allow: vec!["*".into()],
            ..Default::default()
        };
        let key = libp2p_key();
        let node = PeerNode::start(&options, key, Some(Arc::new(fake)))
            .await
            .expect("start the fake peer");
        let addr = node.listen_addrs(Duration::from_secs(10)).await;
        let addr = addr.first().expect("a listen address").to_string();
        (node, addr)
    })
}

fn libp2p_key() -> p2p::Keypair {
    let dir = tempfile::tempdir().expect("tempdir");
    p2p::load_or_create_identity(&dir.path().join("k")).expect("identity")
}

/// A peer that sends bytes that do not match their checksum is skipped for the next peer; a
/// peer that dies while C waits for its answer is too; with no honest peer left the get fails
/// (NotFound), never with wrong or partial bytes.
#[test]
fn a_lying_or_dying_peer_is_skipped_and_never_yields_wrong_bytes() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let data = pieces(3, 7);
    let (liar, liar_addr) = fake_peer(
        &rt,
        Fake {
            real: data.clone(),
            lie: true,
            called: std::sync::Mutex::new(None),
        },
    );
    let (called_tx, called_rx) = mpsc::channel();
    let (staller, staller_addr) = fake_peer(
        &rt,
        Fake {
            real: data.clone(),
            lie: false,
            called: std::sync::Mutex::new(Some(called_tx)),
        },
    );
    let c = Node::new(false, false, &[], &[]);
    let c_id = c.peer_id();
    let a = Node::new(false, true, &[], std::slice::from_ref(&c_id));
    for (k, d) in &data {
        a.put(k, d);
    }
    let a_srv = a.serve();

    // Only the liar: nothing comes back, and surely not its bytes.
    c.write_config(false, false, std::slice::from_ref(&liar_addr), &[]);
    let out = c.get(&data[2].0);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    assert!(
        text(&out.stderr).contains("CRC32C") || text(&out.stderr).contains("not found"),
        "{}",
        text(&out.stderr)
    );

    // The liar, then A: A's bytes.
    c.write_config(false, false, &[liar_addr.clone(), a_srv.p2p.clone()], &[]);
    let out = c.get(&data[2].0);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout == data[2].1, "wrong bytes after a lying peer");

    // The staller, then A: C waits on the staller, which is shut down mid-request.
    c.write_config(false, false, &[staller_addr, a_srv.p2p.clone()], &[]);
    let child = c
        .cmd()
        .args(["get", &data[0].0])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn get");
    called_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("C never asked the stalling peer");
    staller.shutdown();
    let out = child.wait_with_output().expect("get");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout == data[0].1, "wrong bytes after a dying peer");
    drop(liar);
}

/// A real `serve` process killed while C's request to it is in flight (stopped first, so that
/// the request is surely under way when the kill lands): C falls back to B, whole and exact.
#[cfg(unix)]
#[test]
fn killing_a_peer_mid_request_falls_back_to_the_next() {
    let c = Node::new(false, false, &[], &[]);
    let c_id = c.peer_id();
    let a = Node::new(false, true, &[], std::slice::from_ref(&c_id));
    let b = Node::new(false, true, &[], std::slice::from_ref(&c_id));
    let big = piecestore_tests::pseudo_random(24 << 20, 99);
    a.put("e1_s0_p1", &big);
    b.put("e1_s0_p1", &big);
    let mut a_srv = a.serve();
    let b_srv = b.serve();
    c.write_config(false, false, &[a_srv.p2p.clone(), b_srv.p2p.clone()], &[]);
    // Freeze A: C's connection is accepted by the kernel, and its request waits.
    let pid = a_srv.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let out_file = c.dir.path().join("out.bin");
    let child = c
        .cmd()
        .args(["get", "e1_s0_p1", "-o"])
        .arg(&out_file)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn get");
    std::thread::sleep(Duration::from_millis(700));
    a_srv.kill();
    let out = child.wait_with_output().expect("get");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got = std::fs::read(&out_file).expect("output");
    assert!(
        got == big,
        "wrong or partial bytes: {} of {}",
        got.len(),
        big.len()
    );
    let from_b = b_srv.metric("piecestore_peer_requests_served_total{outcome=\"ok\"}");
    assert!(from_b >= 1, "B served nothing: C did not fall back");
}

/// `replicate` pushes a prefix to B, is killed with SIGKILL at about 40 %, and a rerun ends
/// with every piece at B, byte for byte, skipping those already there.
#[test]
fn replicate_killed_at_forty_percent_and_rerun_leaves_every_piece_at_the_peer() {
    const N: usize = 600;
    let a = Node::new(false, false, &[], &[]);
    let a_id = a.peer_id();
    let b = Node::new(false, true, &[], std::slice::from_ref(&a_id));
    // Pieces go into A in-process (one open, not N processes); other keys stay behind.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let data: Vec<(String, Vec<u8>)> = (0..N)
        .map(|i| {
            (
                format!("r{i}_s0"),
                piecestore_tests::pseudo_random(200 + (i * 331) % 9000, i as u64),
            )
        })
        .collect();
    rt.block_on(async {
        let store =
            PieceStore::open(piecestore::Config::load(a.config().to_str().unwrap()).unwrap())
                .await
                .expect("open A");
        for (k, d) in &data {
            store.put(k, d.clone()).await.expect("put");
        }
        store
            .put("other_1", &b"not replicated"[..])
            .await
            .expect("put");
        store.close().await;
    });
    let b_srv = b.serve();
    let mut run = a
        .cmd()
        .args([
            "replicate",
            "--prefix",
            "r",
            "--to",
            &b_srv.p2p,
            "--concurrency",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn replicate");
    // Each piece is a HEAD (not found), a PUT, and a HEAD that checks it at B: 40 % of the
    // pieces is 1.2 N answers.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let answered = b_srv.metric("piecestore_peer_requests_served_total{outcome=\"ok\"}")
            + b_srv.metric("piecestore_peer_requests_served_total{outcome=\"not_found\"}");
        if answered >= (N as u64 * 12) / 10 {
            break;
        }
        assert!(
            run.try_wait().expect("try_wait").is_none(),
            "replicate ended before 40 %"
        );
        assert!(Instant::now() < deadline, "replicate made no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    run.kill().expect("SIGKILL replicate");
    let _ = run.wait();

    let out = a.run(&["replicate", "--prefix", "r", "--to", &b_srv.p2p]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    let skipped: u64 = said
        .split("skipped ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no 'skipped N' in {said:?}"));
    assert!(
        skipped >= (N as u64 * 35) / 100 && skipped < N as u64,
        "the rerun skipped {skipped} of {N}: {said}"
    );
    assert!(said.contains("failed 0"), "{said}");

    // Every piece at B, exact; nothing outside the prefix.
    rt.block_on(async {
        let store =
            PieceStore::open(piecestore::Config::load(b.config().to_str().unwrap()).unwrap())
                .await
                .expect("open B");
        for (k, d) in &data {
            let got = store
                .get(k)
                .await
                .unwrap_or_else(|e| panic!("{k} at B: {e}"));
            assert!(got == d.as_slice(), "{k} differs at B");
        }
        assert!(!store.exists("other_1").await.expect("exists"));
        store.close().await;
    });
}

/// A `grpc://` store over a served *packed* directory: its open, `ls` and get work (the
/// client never lists the server's `.piecestore/`, which a packed store refuses to list).
#[test]
fn a_grpc_store_fronts_a_served_packed_directory() {
    let a = Node::new(false, true, &[], &[]);
    a.put("g1_s0", b"over grpc");
    let srv = a.serve();
    let url = format!("grpc://{}/pieces", srv.http);
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_piecestore"))
            .arg("--store")
            .arg(&url)
            .args(args)
            .env("PIECESTORE_GRPC_TOKEN", TOKEN)
            .output()
            .expect("run")
    };
    let out = run(&["ls"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "g1_s0");
    let out = run(&["get", "g1_s0"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, b"over grpc");
}

/// A piece a peer holds is not this node's: a create-only S3 put (`If-None-Match: *`, what
/// PieceStore's own S3 client sends) of it to B is stored at B, not refused as existing
/// because B's peer tier can read it from A.
#[test]
fn a_create_only_put_is_decided_by_this_nodes_store_not_its_peers() {
    let a = Node::new(false, true, &[], &["*".to_string()]);
    a.put("cp1_s0", b"held by a");
    let a_srv = a.serve();
    let b = Node::new(false, true, std::slice::from_ref(&a_srv.p2p), &[]);
    let b_srv = b.serve();
    let s3 = |args: &[&str], stdin: &[u8]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_piecestore"))
            .arg("--store")
            .arg(format!("http://{}/pieces?pack=false", b_srv.http))
            .args(args)
            .env_remove("BUCKET_URL")
            .env("AWS_ACCESS_KEY_ID", ACCESS)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin)
            .expect("stdin");
        child.wait_with_output().expect("wait")
    };
    // B answers for the piece through its peer tier...
    let out = s3(&["get", "cp1_s0"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, b"held by a");
    // ...but it is not B's: the put stores it there.
    let out = s3(&["put", "cp1_s0", "-"], b"held by a");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = b.run(&["ls"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "cp1_s0", "B's own store");
    // Other bytes for a key B now holds: refused, as ever.
    let out = s3(&["put", "cp1_s0", "-"], b"other bytes");
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
}

/// Kademlia: A announces its pieces (`Provide = true`) through B, the one peer it knows; C
/// knows only B, which has none of them, and finds A through the DHT's provider records.
#[test]
fn a_node_finds_a_piece_holder_it_does_not_know_through_the_dht() {
    let b = Node::new(false, true, &[], &["*".to_string()]);
    let b_srv = b.serve();
    let a = Node::new(false, true, &[], &[]);
    a.write_config_with(
        false,
        true,
        std::slice::from_ref(&b_srv.p2p),
        &["*".to_string()],
        "Provide = true",
    );
    let data = pieces(3, 21);
    for (k, d) in &data {
        a.put(k, d);
    }
    let _a_srv = a.serve();
    let c = Node::new(false, false, std::slice::from_ref(&b_srv.p2p), &[]);
    // A announces in the background: give it a few seconds.
    let deadline = Instant::now() + Duration::from_secs(30);
    let key = &data[2].0;
    let out = loop {
        let out = c.get(key);
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        out.status.success(),
        "C never found A's piece: {}",
        text(&out.stderr)
    );
    assert!(out.stdout == data[2].1, "wrong bytes through the DHT");
    // B holds none of them: C's bytes came from A.
    let out = b.run(&["ls"]);
    assert_eq!(text(&out.stdout).trim(), "");
}

/// `/readyz` checks this node's own store: a frozen peer (SIGSTOP: its connections hang) does
/// not make a node with the peer tier look unready.
#[cfg(unix)]
#[test]
fn readyz_does_not_wait_on_a_frozen_peer() {
    let a = Node::new(false, true, &[], &["*".to_string()]);
    let mut a_srv = a.serve();
    let c = Node::new(false, true, std::slice::from_ref(&a_srv.p2p), &[]);
    let c_srv = c.serve();
    let pid = a_srv.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let t = Instant::now();
    let response = c_srv.http_get("/readyz");
    a_srv.kill();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "readyz took {:?}",
        t.elapsed()
    );
}
