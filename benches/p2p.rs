//! P2P piece exchange (`/piecestore/piece/1` over libp2p TCP + noise + yamux) against the gRPC
//! API of `piecestore serve`, fetching the same pieces of the same store, in one run.
//!
//! Run: `cargo bench -p piecestore-benches --bench p2p` (set `PIECESTORE_BENCH_DIR` to put the
//! store elsewhere than /dev/shm; `P2P_BENCH_QUICK=1` for 2,000 small and 64 large pieces).
//!
//! Node A is a packed file store answering peers (and gRPC); node C asks, in this process,
//! over 127.0.0.1. Rows: 10,000 pieces of 4 KiB fetched one at a time (a newcomer's loop) and
//! 64 in flight; 1 GiB of 4 MiB pieces one at a time and 4 in flight. The gRPC rows fetch the
//! same keys with `PieceStore::get` on a `grpc://` store (its cache off), the same work with a
//! verified piece at the end. Prints Markdown rows for benches/RESULTS.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use piecestore::config::{PeersOptions, ServeOptions};
use piecestore::{Config, PieceStore};
use piecestore_server::p2p::{self, PeerNode};
use piecestore_server::{Server, Setup};

const TOKEN: &str = "p2p-bench-token-0123456789";

fn payload(len: usize, seed: u64) -> Bytes {
    piecestore_tests::pseudo_random(len, seed).into()
}

fn main() {
    // `cargo bench` passes --bench; a plain run passes nothing.
    let quick = std::env::var_os("P2P_BENCH_QUICK").is_some();
    let (small_n, large_n) = if quick { (2_000, 64) } else { (10_000, 256) };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(run(small_n, large_n));
}

async fn run(small_n: usize, large_n: usize) {
    let base = std::env::var("PIECESTORE_BENCH_DIR").unwrap_or_else(|_| "/dev/shm".into());
    let dir = tempfile::Builder::new()
        .prefix("ps-p2p-bench")
        .tempdir_in(&base)
        .expect("bench dir");
    let a = PieceStore::open(
        Config::from_url(&format!("file://{}/a", dir.path().display())).expect("url"),
    )
    .await
    .expect("open A");
    let small: Vec<String> = (0..small_n).map(|i| format!("s{i}_s0")).collect();
    let large: Vec<String> = (0..large_n).map(|i| format!("l{i}_s0")).collect();
    let put = |keys: Vec<String>, len: usize| {
        let a = a.clone();
        async move {
            futures::stream::iter(keys.into_iter().enumerate())
                .for_each_concurrent(16, |(i, k)| {
                    let a = a.clone();
                    async move { a.put(&k, payload(len, i as u64)).await.expect("put") }
                })
                .await;
        }
    };
    put(small.clone(), 4 << 10).await;
    put(large.clone(), 4 << 20).await;
    a.flush().await.expect("flush");

    // Node A answers anyone; node C asks.
    let key_a = p2p::load_or_create_identity(&dir.path().join("a.key")).expect("key");
    let key_c = p2p::load_or_create_identity(&dir.path().join("c.key")).expect("key");
    let node_a = PeerNode::start(
        &PeersOptions {
            listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            allow: vec!["*".into()],
            ..Default::default()
        },
        key_a,
        Some(Arc::new(a.clone())),
    )
    .await
    .expect("node A");
    let addr = node_a.listen_addrs(Duration::from_secs(10)).await;
    let peer = p2p::parse_peer_addr(&addr.first().expect("address").to_string()).expect("addr");
    let node_c = PeerNode::start(&PeersOptions::default(), key_c, None)
        .await
        .expect("node C");

    // The gRPC API of the same store.
    let mut setup = Setup::new(a.clone(), ServeOptions::default());
    setup.listen = Some("127.0.0.1:0".into());
    setup.env_keys = false;
    setup.options.tokens = vec![piecestore::config::Secret::new(TOKEN)];
    let server = Server::bind(setup).await.expect("bind serve");
    let grpc_addr = server.local_addr();
    tokio::spawn(server.run(futures::future::pending()));
    let mut grpc_config =
        Config::from_url(&format!("grpc://{grpc_addr}/pieces?pack=false")).expect("grpc url");
    grpc_config.store.secret_key = piecestore::config::Secret::new(TOKEN);
    grpc_config.cache.memory = Some(0);
    let grpc = PieceStore::open(grpc_config).await.expect("open grpc://");

    println!(
        "# P2P vs gRPC, fetching from one node, {} cores, store in {base}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!("| path | pieces | in flight | pieces/s | MB/s | p50 µs | p99 µs |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for (keys, label, flights) in [(&small, "4 KiB", [1usize, 64]), (&large, "4 MiB", [1, 4])] {
        for c in flights {
            let node_c = node_c.clone();
            let peer = peer.clone();
            row("P2P", label, keys, c, move |k| {
                let node_c = node_c.clone();
                let peer = peer.clone();
                async move {
                    let (b, _) = node_c
                        .fetch(&peer, &k)
                        .await
                        .expect("fetch")
                        .expect("piece there");
                    b.len()
                }
            })
            .await;
            let grpc = grpc.clone();
            row("gRPC", label, keys, c, move |k| {
                let grpc = grpc.clone();
                async move { grpc.get(&k).await.expect("grpc get").len() }
            })
            .await;
        }
    }
}

/// Fetches every key of `keys` with `c` in flight, and prints its row.
async fn row<F, Fut>(path: &str, label: &str, keys: &[String], c: usize, fetch: F)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let start = Instant::now();
    let mut lat: Vec<Duration> = Vec::with_capacity(keys.len());
    let bytes: usize = futures::stream::iter(keys.iter().cloned())
        .map(|k| {
            let f = fetch(k);
            async move {
                let t = Instant::now();
                let n = f.await;
                (n, t.elapsed())
            }
        })
        .buffer_unordered(c)
        .map(|(n, t)| {
            lat.push(t);
            n
        })
        .fold(0usize, |acc, n| async move { acc + n })
        .await;
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_micros();
    println!(
        "| {path} | {} × {label} | {c} | {:.0} | {:.0} | {} | {} |",
        keys.len(),
        keys.len() as f64 / secs,
        bytes as f64 / secs / 1e6,
        pct(0.5),
        pct(0.99)
    );
}
