//! What the metrics cost: put, get and head of 4 KiB on the memory backend (where an
//! operation is a microsecond or two, so a per-call cost shows most) with metrics on and off,
//! in one run, interleaved per operation.
//!
//! Run: `cargo bench -p piecestore-benches --bench metrics_overhead`

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use piecestore::{Config, PieceStore};

fn overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let data = Bytes::from((0..4096).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>());
    let open = |url: &str| {
        rt.block_on(PieceStore::open(Config::from_url(url).unwrap()))
            .unwrap()
    };
    let stores = [
        ("metrics on", open("memory://")),
        ("metrics off", open("memory://?metrics=false")),
    ];
    for (_, s) in &stores {
        rt.block_on(s.put("get-me", data.clone())).unwrap();
    }
    let counter = AtomicU64::new(0);
    for op in ["put", "get", "head"] {
        let mut g = c.benchmark_group(format!("memory/4KiB/{op}"));
        g.throughput(Throughput::Elements(1))
            .measurement_time(Duration::from_secs(6))
            .sample_size(60);
        for (name, store) in &stores {
            g.bench_function(BenchmarkId::from_parameter(name), |b| match op {
                "put" => b.to_async(&rt).iter(|| {
                    let key = format!("p{}", counter.fetch_add(1, Ordering::Relaxed));
                    let d = data.clone();
                    async move { store.put(&key, d).await.unwrap() }
                }),
                "get" => b
                    .to_async(&rt)
                    .iter(|| async { store.get("get-me").await.unwrap() }),
                _ => b
                    .to_async(&rt)
                    .iter(|| async { store.head("get-me").await.unwrap() }),
            });
        }
        g.finish();
    }
}

criterion_group!(benches, overhead);
criterion_main!(benches);
