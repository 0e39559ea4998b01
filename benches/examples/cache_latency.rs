//! Latency of the data cache's hits through the Rust API, one get at a time in a loop: the
//! memory tier, the disk tier, and (the peer of a disk-tier hit) a plain local-file get of the
//! same size, on a store with no cache.
//!
//! Run: `cargo run --release -p piecestore-benches --example cache_latency -- <store-url> <size> <n>`
//! where `<store-url>` is the store behind the cache (a bucket, e.g. on s3s-fs, with keys in
//! the environment). Prints one JSON line of per-get microseconds (mean, p50, p99) for each.

use std::time::Instant;

use bytes::Bytes;
use piecestore::{Config, PieceStore};

fn quantiles(mut us: Vec<f64>) -> String {
    us.sort_by(f64::total_cmp);
    let at = |q: f64| us[((us.len() as f64 * q) as usize).min(us.len() - 1)];
    let mean = us.iter().sum::<f64>() / us.len() as f64;
    format!(
        "{{\"mean_us\": {mean:.2}, \"p50_us\": {:.2}, \"p99_us\": {:.2}}}",
        at(0.5),
        at(0.99)
    )
}

/// Gets every key `rounds` times, one at a time; the per-get microseconds.
async fn timed_gets(store: &PieceStore, keys: &[String], rounds: usize) -> Vec<f64> {
    let mut us = Vec::with_capacity(keys.len() * rounds);
    for _ in 0..rounds {
        for k in keys {
            let t = Instant::now();
            std::hint::black_box(store.get(k).await.expect("get"));
            us.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    us
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, size, n] = args.as_slice() else {
        return Err("usage: cache_latency <store-url> <size-bytes> <pieces>".into());
    };
    let size: usize = size.parse()?;
    let n: usize = n.parse()?;
    let data = Bytes::from((0..size).map(|i| (i * 31 % 251) as u8).collect::<Vec<_>>());
    let tmp = tempfile::tempdir()?;
    let sep = if url.contains('?') { '&' } else { '?' };
    piecestore::runtime::block_on(async {
        let keys: Vec<String> = (0..n).map(|i| format!("c{i}_s0")).collect();
        // Memory tier: the default one in front of a bucket.
        let store = PieceStore::open(Config::load(url)?).await?;
        for k in &keys {
            store.put(k, data.clone()).await?;
        }
        timed_gets(&store, &keys, 1).await; // the misses fill it
        let memory = quantiles(timed_gets(&store, &keys, 5).await);
        store.close().await;
        // Disk tier only: filled by a first pass, then read back.
        let disk_url = format!(
            "{url}{sep}cache_memory=0&cache_disk={}",
            tmp.path().join("cache").display()
        );
        let store = PieceStore::open(Config::load(&disk_url)?).await?;
        timed_gets(&store, &keys, 1).await;
        let disk = quantiles(timed_gets(&store, &keys, 5).await);
        store.close().await;
        // The peer of a disk-tier hit: a local directory store (no cache), same pieces.
        let dir = tmp.path().join("plain");
        let local =
            PieceStore::open(Config::load(&format!("{}?pack=false", dir.display()))?).await?;
        for k in &keys {
            local.put(k, data.clone()).await?;
        }
        timed_gets(&local, &keys, 1).await;
        let file = quantiles(timed_gets(&local, &keys, 5).await);
        println!("{{\"memory_hit\": {memory}, \"disk_hit\": {disk}, \"local_file_get\": {file}}}");
        Ok::<_, piecestore::Error>(())
    })?;
    Ok(())
}
