//! Local reads of pieces whose bytes are not in the kernel's page cache. A local get reads a
//! cached piece at once on the calling thread and leaves any other read to the blocking pool
//! (core/src/page_cache.rs). A test that has just written its pieces always finds them cached,
//! so here the files are evicted first (fsync'd, then `posix_fadvise(DONTNEED)`, checked with
//! `mincore`): the same gets must return the same bytes, and a flipped byte must still be
//! caught, on both paths, in both local layouts (a file per piece, and packs).
#![cfg(target_os = "linux")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use piecestore::{Config, ErrorKind, PieceStore};
use piecestore_tests::NoOk;

/// Every regular file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect()
}

/// Evicts the store's piece files (or packs) and checks that none of their pages is left.
fn evict_pieces(dir: &Path) {
    let data: Vec<PathBuf> = files(dir)
        .into_iter()
        .filter(|p| {
            !p.starts_with(dir.join(".piecestore")) || p.to_string_lossy().contains("/packs/")
        })
        .collect();
    assert!(!data.is_empty(), "no piece files under {}", dir.display());
    for p in &data {
        piecestore_tests::evict_from_page_cache(p);
    }
}

/// Pieces from 100 bytes to 300 KiB (past the 256 KiB that is ever read inline).
fn pieces() -> BTreeMap<String, Bytes> {
    (0..60u64)
        .map(|i| {
            let len = match i {
                0 => 300 << 10,
                1 => 256 << 10,
                _ => 100 + (i * 7919) % 20_000,
            };
            let bytes = piecestore_tests::pseudo_random(len as usize, i);
            (format!("cold/{i:03}"), Bytes::from(bytes))
        })
        .collect()
}

async fn read_back(store: &PieceStore, pieces: &BTreeMap<String, Bytes>, when: &str) {
    for (k, want) in pieces {
        let got = store
            .get(k)
            .await
            .unwrap_or_else(|e| panic!("{when}: get {k}: {e}"));
        assert!(got == *want, "{when}: {k} reads other bytes");
        let range = store
            .get_range(k, 10, 50)
            .await
            .unwrap_or_else(|e| panic!("{when}: get_range {k}: {e}"));
        assert_eq!(range, want.slice(10..60), "{when}: a range of {k}");
    }
}

async fn cold_and_warm_reads_agree(url_suffix: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}{url_suffix}", dir.path().display());
    let pieces = pieces();
    let store = PieceStore::open(Config::load(&url).expect("config"))
        .await
        .expect("open");
    for (k, v) in &pieces {
        store.put(k, v.clone()).await.expect("put");
    }
    store.flush().await.expect("flush");
    read_back(&store, &pieces, "warm").await;
    // Evicted with the store open (a packed store keeps its packs open), then read cold.
    evict_pieces(dir.path());
    read_back(&store, &pieces, "cold, store open").await;
    read_back(&store, &pieces, "warm again").await;
    store.close().await;

    // A byte flipped in place (as bit rot would), read cold and warm by the open store, then
    // cold by a store that has not opened the file yet.
    let victim = "cold/007";
    let store = PieceStore::open(Config::load(&url).expect("config"))
        .await
        .expect("reopen");
    read_back(&store, &pieces, "reopened").await;
    flip_in_place(dir.path(), victim, 3);
    for when in ["cold", "warm"] {
        if when == "cold" {
            evict_pieces(dir.path());
        }
        let e = store.get(victim).await.no_ok();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{when} get of {victim}: {e}");
        assert!(
            e.to_string().contains(victim),
            "the error names the piece: {e}"
        );
    }
    store.close().await;
    let store = PieceStore::open(Config::load(&url).expect("config"))
        .await
        .expect("reopen");
    evict_pieces(dir.path());
    let e = store.get(victim).await.no_ok();
    assert_eq!(
        e.kind(),
        ErrorKind::Corrupt,
        "cold get of {victim}, reopened: {e}"
    );
    let others: BTreeMap<String, Bytes> = pieces.into_iter().filter(|(k, _)| k != victim).collect();
    read_back(&store, &others, "the others, after the flip").await;
    store.close().await;
}

/// Flips byte `at` of piece `key` where it lies on disk (its own file, or its record in a
/// pack), in place: an open file sees the change, as it would see bit rot.
fn flip_in_place(dir: &Path, key: &str, at: u64) {
    use std::os::unix::fs::FileExt;
    let own = dir.join(key);
    let (path, offset) = if own.exists() {
        (own, at)
    } else {
        files(&dir.join(".piecestore/packs"))
            .into_iter()
            .find_map(|p| {
                let bytes = std::fs::read(&p).expect("read pack");
                let scan = piecestore::pack::format::scan(&bytes).expect("scan pack");
                let e = scan.entries.iter().rev().find(|e| e.key == key)?;
                Some((p, e.offset + at))
            })
            .unwrap_or_else(|| panic!("{key} is in no pack"))
    };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open for the flip");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).expect("read the byte");
    b[0] ^= 0x01;
    f.write_all_at(&b, offset).expect("write the byte");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_per_piece_reads_the_same_cold_and_warm() {
    cold_and_warm_reads_agree("?pack=false").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packs_read_the_same_cold_and_warm() {
    cold_and_warm_reads_agree("").await;
}
