//! PieceStore's put/get against raw `object_store` doing the same calls on the same backend,
//! in one run: memory and local file (fsync on both sides), 4 KiB and 1 MiB.
//!
//! Run: `cargo bench -p piecestore-benches --bench core_vs_object_store`
//! (set `PIECESTORE_BENCH_DIR` to put the file backend on another disk).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use piecestore::{Config, PieceStore};

const SIZES: [(usize, &str); 2] = [(4 << 10, "4KiB"), (1 << 20, "1MiB")];

fn payload(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i * 31 % 251) as u8)
        .collect::<Vec<_>>()
        .into()
}

fn bench_dir() -> tempfile::TempDir {
    match std::env::var("PIECESTORE_BENCH_DIR") {
        Ok(d) => tempfile::tempdir_in(d).expect("bench dir"),
        Err(_) => tempfile::Builder::new()
            .prefix("ps-bench")
            .tempdir_in(".")
            .expect("bench dir"),
    }
}

struct Pair {
    name: &'static str,
    store: PieceStore,
    raw: Arc<dyn ObjectStore>,
    _dir: Option<tempfile::TempDir>,
}

fn pairs(rt: &tokio::runtime::Runtime) -> Vec<Pair> {
    let mem = rt
        .block_on(PieceStore::open(Config::from_url("memory://").unwrap()))
        .unwrap();
    let dir = bench_dir();
    let ps_root = dir.path().join("piecestore");
    let raw_root = dir.path().join("raw");
    std::fs::create_dir_all(&raw_root).unwrap();
    let file = rt
        .block_on(PieceStore::open(
            // One file per piece, like object_store's LocalFileSystem (packing is measured by
            // benches/packing.sh against this same setting).
            Config::from_url(&format!("file://{}?pack=false", ps_root.display())).unwrap(),
        ))
        .unwrap();
    let raw_file = LocalFileSystem::new_with_prefix(&raw_root)
        .unwrap()
        .with_fsync(true);
    vec![
        Pair {
            name: "memory",
            store: mem,
            raw: Arc::new(InMemory::new()),
            _dir: None,
        },
        Pair {
            name: "file",
            store: file,
            raw: Arc::new(raw_file),
            _dir: Some(dir),
        },
    ]
}

fn put_get(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let counter = AtomicU64::new(0);
    for pair in pairs(&rt) {
        for (len, label) in SIZES {
            let data = payload(len);
            let mut g = c.benchmark_group(format!("{}/{label}", pair.name));
            g.throughput(Throughput::Bytes(len as u64));
            if pair.name == "file" {
                g.sample_size(20).measurement_time(Duration::from_secs(8));
            }
            // put: a new key each time (pieces are immutable), create-only on both sides.
            g.bench_function(BenchmarkId::new("put", "piecestore"), |b| {
                b.to_async(&rt).iter(|| {
                    let key = format!("p{}", counter.fetch_add(1, Ordering::Relaxed));
                    let d = data.clone();
                    let s = &pair.store;
                    async move { s.put(&key, d).await.unwrap() }
                })
            });
            g.bench_function(BenchmarkId::new("put", "object_store"), |b| {
                b.to_async(&rt).iter(|| {
                    let key = Path::from(format!("p{}", counter.fetch_add(1, Ordering::Relaxed)));
                    let d = PutPayload::from(data.clone());
                    let s = &pair.raw;
                    async move {
                        s.put_opts(
                            &key,
                            d,
                            PutOptions {
                                mode: PutMode::Create,
                                ..Default::default()
                            },
                        )
                        .await
                        .unwrap()
                    }
                })
            });
            // get: the same piece again and again (page cache for files), bytes collected.
            let key = format!("get-{len}");
            let path = Path::from(key.as_str());
            rt.block_on(pair.store.put(&key, data.clone())).unwrap();
            rt.block_on(pair.raw.put(&path, PutPayload::from(data.clone())))
                .unwrap();
            g.bench_function(BenchmarkId::new("get", "piecestore"), |b| {
                b.to_async(&rt)
                    .iter(|| async { pair.store.get(&key).await.unwrap() })
            });
            g.bench_function(BenchmarkId::new("get", "object_store"), |b| {
                b.to_async(&rt)
                    .iter(|| async { pair.raw.get(&path).await.unwrap().bytes().await.unwrap() })
            });
            g.finish();
        }
    }
}

/// The checksum every put computes and every get verifies: two implementations.
fn checksum(c: &mut Criterion) {
    for (len, label) in SIZES {
        let data = payload(len);
        let mut g = c.benchmark_group(format!("crc32c/{label}"));
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function("crc32c", |b| b.iter(|| crc32c::crc32c(&data)));
        g.bench_function("crc-fast", |b| {
            b.iter(|| crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, &data))
        });
        g.finish();
    }
}

criterion_group!(benches, checksum, put_get);
criterion_main!(benches);
