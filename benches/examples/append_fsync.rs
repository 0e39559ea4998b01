//! The floor a packed put on local files is measured against: a plain loop of 4 KiB appends to
//! one file, each made durable with `fdatasync`, one at a time, for a while. No store, no
//! checksum, no index: what the disk gives one writer.
//!
//! Run: `cargo run --release -p piecestore-benches --example append_fsync -- DIR [SECONDS]
//! [SIZE]` (defaults: 5 seconds, 4096 bytes). Prints appends per second and MB/s as JSON.

use std::io::Write;
use std::time::{Duration, Instant};

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).map(String::as_str).unwrap_or(".");
    let secs: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let size: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(4096);
    let path = std::path::Path::new(dir).join(format!("append-fsync-{}.bin", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let block = vec![0x5au8; size];
    let run = Duration::from_secs_f64(secs);
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < run {
        f.write_all(&block)?;
        f.sync_data()?;
        n += 1;
    }
    let el = t0.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    println!(
        "{{\"appends\": {n}, \"seconds\": {el:.3}, \"appends_per_sec\": {:.1}, \"mb_per_sec\": {:.2}}}",
        n as f64 / el,
        n as f64 * size as f64 / el / 1e6
    );
    Ok(())
}
