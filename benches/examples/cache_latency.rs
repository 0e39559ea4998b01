//! Latency of the data cache's hits through the Rust API, one get at a time in a loop: the
//! memory tier, the disk tier, and (the peer of a disk-tier hit) a plain local-file get of the
//! same size, on a store with no cache.
//!
//! Run: `cargo run --release -p piecestore-benches --example cache_latency -- <store-url> <size> <n>`
//! where `<store-url>` is the store behind the cache (a bucket, e.g. on s3s-fs, with keys in
//! the environment). Prints one JSON line of per-get microseconds (mean, p50, p99) for each.
//!
//! With `packed <other-bucket-url>` after them it measures `<store-url>` packed (`pack=true`,
//! the index in a local directory; the URLs without a query) instead: a memory-tier hit that first asks the shared index
//! whether the piece is still there (so other processes' deletes are seen), against the same
//! hit with no index (`pack=false`, on the other bucket); and a `get_many` of one object's 16 pieces with the cache
//! off, one call at a time, packed (the pieces' gets share ranged reads of their pack) against
//! unpacked (one GET per piece), with the GETs each made.

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
    let (url, size, n, unpacked) = match args.as_slice() {
        [url, size, n] => (url, size, n, None),
        [url, size, n, p, other] if p == "packed" => (url, size, n, Some(other)),
        _ => {
            return Err(
                "usage: cache_latency <store-url> <size-bytes> <pieces> [packed <other-bucket-url>]"
                    .into(),
            );
        }
    };
    let size: usize = size.parse()?;
    let n: usize = n.parse()?;
    let data = Bytes::from((0..size).map(|i| (i * 31 % 251) as u8).collect::<Vec<_>>());
    let tmp = tempfile::tempdir()?;
    let sep = if url.contains('?') { '&' } else { '?' };
    if let Some(other) = unpacked {
        return piecestore::runtime::block_on(packed_rows(url, other, &data, n, tmp.path()));
    }
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

/// The packed rows: a memory-tier hit checked against the local index, against one with no
/// index; then `get_many` of one object's pieces with the cache off, packed against unpacked.
async fn packed_rows(
    url: &str,
    other: &str,
    data: &Bytes,
    n: usize,
    tmp: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let index = tmp.join("index");
    let keys: Vec<String> = (0..n).map(|i| format!("p{i}_s0")).collect();
    let mut hits = Vec::new();
    let url_of = |pack: bool| if pack { url } else { other };
    for (pack, prefix) in [(true, "p"), (false, "u")] {
        let u = format!(
            "{}?pack={pack}&index_dir={}&cache_memory=256MiB",
            url_of(pack),
            index.display()
        );
        let store = PieceStore::open(Config::load(&u)?).await?;
        let keys: Vec<String> = keys.iter().map(|k| format!("{prefix}{k}")).collect();
        for r in store
            .put_many(keys.iter().map(|k| (k.as_str(), data.clone())))
            .await
        {
            r?;
        }
        timed_gets(&store, &keys, 1).await; // the misses fill it
        hits.push(quantiles(timed_gets(&store, &keys, 5).await));
        store.close().await;
    }
    // Objects of 16 pieces, each object's pieces put together (one write group, mostly one
    // pack), then read back with one get_many per object, one object at a time.
    let objects = 50;
    let mut reads = Vec::new();
    for pack in [true, false] {
        let u = format!(
            "{}?pack={pack}&index_dir={}&cache_memory=0",
            url_of(pack),
            index.display()
        );
        let store = PieceStore::open(Config::load(&u)?).await?;
        let object_keys =
            |o: usize| -> Vec<String> { (0..16).map(|i| format!("o{pack}{o}_s{i}")).collect() };
        for o in 0..objects {
            let keys = object_keys(o);
            for r in store
                .put_many(keys.iter().map(|k| (k.as_str(), data.clone())))
                .await
            {
                r?;
            }
        }
        store.flush().await?;
        let before = store.metrics().total(piecestore::profile::Op::Get).count;
        let reads_before = pack_reads(&store);
        let mut us = Vec::new();
        for o in 0..objects {
            let keys = object_keys(o);
            let t = Instant::now();
            for r in store.get_many(&keys).await {
                std::hint::black_box(r?);
            }
            us.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let gets = store.metrics().total(piecestore::profile::Op::Get).count - before;
        // Packed: the ranged reads its packs took; unpacked: one GET per get.
        let requests = if pack {
            pack_reads(&store) - reads_before
        } else {
            gets
        };
        reads.push(format!(
            "{{\"latency\": {}, \"requests_per_object\": {:.2}}}",
            quantiles(us),
            requests as f64 / objects as f64
        ));
        store.close().await;
    }
    println!(
        "{{\"memory_hit_packed_index_checked\": {}, \"memory_hit_unpacked\": {}, \"get_many_16_packed\": {}, \"get_many_16_unpacked\": {}}}",
        hits[0], hits[1], reads[0], reads[1]
    );
    Ok(())
}

/// Ranged reads of packs the store's gets made.
fn pack_reads(store: &PieceStore) -> u64 {
    store
        .metrics()
        .pack_writes
        .iter()
        .map(|(_, w)| w.reads)
        .sum()
}
