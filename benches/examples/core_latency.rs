//! The Rust core's own per-operation latency, measured the way the binding benches measure
//! theirs (one operation at a time, in a loop), so a binding's overhead can be read off one run.
//!
//! Run: `cargo run --release -p piecestore-benches --example core_latency -- <store-url> <size> <n> [copy]`
//! Prints one JSON line: `{"put_us": .., "get_us": ..}` (best of 3 rounds, microseconds per op).
//!
//! By default every put hands the store the same `Bytes` (no copy: the core's best case). With
//! `copy`, every put copies the caller's bytes first (`Bytes::copy_from_slice`), as a caller
//! holding a borrowed slice must, and as a binding whose language owns its memory (Go) must.

use std::time::Instant;

use bytes::Bytes;
use piecestore::{Config, PieceStore};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (url, size, n, copy) = match args.as_slice() {
        [url, size, n] => (url, size, n, false),
        [url, size, n, mode] if mode == "copy" => (url, size, n, true),
        _ => return Err("usage: core_latency <store-url> <size-bytes> <ops> [copy]".into()),
    };
    let size: usize = size.parse()?;
    let n: usize = n.parse()?;
    let data = Bytes::from((0..size).map(|i| (i * 31 % 251) as u8).collect::<Vec<_>>());
    piecestore::runtime::block_on(async {
        let store = PieceStore::open(Config::load(url)?).await?;
        let (mut put_best, mut get_best) = (f64::MAX, f64::MAX);
        for round in 0..3 {
            let keys: Vec<String> = (0..n).map(|i| format!("{round}_s{i}")).collect();
            let t = Instant::now();
            for k in &keys {
                let piece = if copy {
                    Bytes::copy_from_slice(&data)
                } else {
                    data.clone()
                };
                store.put(k, piece).await?;
            }
            put_best = put_best.min(t.elapsed().as_secs_f64() * 1e6 / n as f64);
            let t = Instant::now();
            for k in &keys {
                std::hint::black_box(store.get(k).await?);
            }
            get_best = get_best.min(t.elapsed().as_secs_f64() * 1e6 / n as f64);
        }
        println!("{{\"put_us\": {put_best:.3}, \"get_us\": {get_best:.3}}}");
        Ok(())
    })
}
