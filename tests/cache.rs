//! The data cache (`[PieceStore.Cache]`) in front of a real S3-compatible server, with every
//! request the store makes counted by a proxy: one fetch per miss, nothing on a warm get, the
//! disk tier across a restart, damaged entries refetched, bounded tiers, deletes everywhere.

use std::path::Path;

use piecestore::{Config, ErrorKind, PieceStore, PutOptions};
use piecestore_tests::{NoOk, Proxy, ProxyMode, S3Server, ServerKind, server, unique_name};

/// A store on a fresh bucket of `s`, reached through a counting proxy, with `options` as URL
/// query parameters.
fn store_through(s: &S3Server, bucket: &str, options: &str) -> (Proxy, Config) {
    let proxy = Proxy::start(&s.endpoint, ProxyMode::PassThrough);
    let c = s.config_through(&proxy.endpoint, bucket, options);
    (proxy, c)
}

/// Requests that read objects (GETs other than listings).
fn object_gets(p: &Proxy) -> usize {
    p.seen()
        .iter()
        .filter(|r| r.method == "GET" && !r.target.contains("list-type"))
        .count()
}

fn s3s() -> Option<&'static S3Server> {
    server(ServerKind::S3sFs)
}

#[tokio::test]
async fn concurrent_gets_of_a_cold_key_make_one_request_and_a_warm_get_none() {
    let Some(s) = s3s() else { return };
    for pack in [false, true] {
        let bucket = unique_name("cache-once");
        let index = tempfile::tempdir().unwrap();
        let (proxy, mut c) = store_through(s, &bucket, &format!("pack={pack}"));
        c.pack.index_dir = Some(index.path().to_path_buf());
        let store = PieceStore::open(c).await.unwrap();
        let data = piecestore_tests::pseudo_random(4096, 7);
        store.put("hot_s0", data.clone()).await.unwrap();
        store.flush().await.unwrap();
        let before = object_gets(&proxy);
        let gets = (0..64).map(|_| store.get("hot_s0"));
        for got in futures::future::join_all(gets).await {
            assert!(got.unwrap() == data);
        }
        assert_eq!(
            object_gets(&proxy) - before,
            1,
            "pack={pack}: 64 cold gets, one GET"
        );
        let all = proxy.seen().len();
        assert!(store.get("hot_s0").await.unwrap() == data);
        assert!(store.get_range("hot_s0", 100, 10).await.unwrap() == data[100..110]);
        assert_eq!(
            proxy.seen().len(),
            all,
            "pack={pack}: a warm get makes no request"
        );
        let stats = store
            .cache_stats()
            .expect("a bucket has a memory tier by default");
        assert_eq!(stats.fetches, 1);
        assert_eq!(stats.coalesced + stats.tiers[0].hits, 65, "{stats:?}");
        let prom = store.metrics().to_prometheus();
        assert!(
            prom.contains("piecestore_cache_hits_total{tier=\"memory\"}"),
            "{prom}"
        );
        assert!(prom.contains("piecestore_cache_fetches_total 1"), "{prom}");
    }
}

fn entry_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(dir).unwrap().flatten() {
        if sub.path().is_dir() {
            for f in std::fs::read_dir(sub.path()).unwrap().flatten() {
                if f.path().extension().is_some_and(|e| e == "pc") {
                    out.push(f.path());
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn a_reopened_store_reads_from_the_disk_tier_and_refetches_a_damaged_entry() {
    let Some(s) = s3s() else { return };
    let bucket = unique_name("cache-disk");
    let cache = tempfile::tempdir().unwrap();
    let opts = format!(
        "pack=false&check_bucket=false&cache_memory=0&cache_disk={}",
        cache.path().display()
    );
    let pieces: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| {
            (
                format!("{i}_s0"),
                piecestore_tests::pseudo_random(1000 + i * 100, i as u64),
            )
        })
        .collect();
    let proxy = Proxy::start(&s.endpoint, ProxyMode::PassThrough);
    let open = || PieceStore::open(s.config_through(&proxy.endpoint, &bucket, &opts));
    {
        let store = open().await.unwrap();
        for (k, v) in &pieces {
            store.put(k, v.clone()).await.unwrap();
            assert!(store.get(k).await.unwrap() == *v);
        }
        store.close().await;
    }
    assert_eq!(entry_files(cache.path()).len(), 20);
    // A restart: every piece comes from the disk tier, not one request reaches the server.
    let seen = proxy.seen().len();
    let store = open().await.unwrap();
    for (k, v) in &pieces {
        assert!(store.get(k).await.unwrap() == *v, "{k}");
    }
    assert_eq!(proxy.seen().len(), seen, "served from the disk tier");
    let disk = &store.cache_stats().unwrap().tiers[0];
    assert_eq!((disk.tier, disk.hits, disk.entries), ("disk", 20, 20));
    // The same from entry files no longer in the page cache (read on the blocking pool, not
    // at once on the calling thread).
    #[cfg(target_os = "linux")]
    {
        for f in entry_files(cache.path()) {
            piecestore_tests::evict_from_page_cache(&f);
        }
        for (k, v) in &pieces {
            assert!(store.get(k).await.unwrap() == *v, "{k}, read cold");
        }
        assert_eq!(proxy.seen().len(), seen, "served from the disk tier, cold");
        assert_eq!(store.cache_stats().unwrap().tiers[0].hits, 40);
    }
    store.close().await;

    // Flip a byte in each entry: every get fetches again and returns the right bytes.
    for f in entry_files(cache.path()) {
        let mut raw = std::fs::read(&f).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 0x40;
        std::fs::write(&f, raw).unwrap();
    }
    let gets = object_gets(&proxy);
    let store = open().await.unwrap();
    for (k, v) in &pieces {
        assert!(
            store.get(k).await.unwrap() == *v,
            "{k}: right bytes after a damaged entry"
        );
    }
    assert_eq!(
        object_gets(&proxy) - gets,
        20,
        "each damaged entry fetched once"
    );
    let disk = &store.cache_stats().unwrap().tiers[0];
    assert_eq!(disk.corrupt, 20);
    // And rewritten whole: the next run reads them from disk again.
    store.close().await;
    let gets = object_gets(&proxy);
    let store = open().await.unwrap();
    for (k, v) in &pieces {
        assert!(store.get(k).await.unwrap() == *v);
    }
    assert_eq!(object_gets(&proxy) - gets, 0);
    // Another store (another bucket) sharing the directory never sees these entries.
    let other = unique_name("cache-other");
    let store = PieceStore::open(s.config_through(&proxy.endpoint, &other, &opts))
        .await
        .unwrap();
    assert_eq!(
        store.get("0_s0").await.no_ok().kind(),
        ErrorKind::NotFound,
        "not the first store's piece"
    );
}

/// The space the entry files under `dir` take on disk (allocated blocks, not lengths).
fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    entry_files(dir)
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.blocks() * 512).unwrap_or(0))
        .sum()
}

#[tokio::test]
async fn tiers_stay_within_their_sizes_and_a_delete_reaches_every_tier() {
    let Some(s) = s3s() else { return };
    let bucket = unique_name("cache-bound");
    let cache = tempfile::tempdir().unwrap();
    let index = tempfile::tempdir().unwrap();
    let (memory, disk) = (64u64 << 10, 128u64 << 10);
    let (proxy, mut c) = store_through(
        s,
        &bucket,
        &format!(
            "cache_memory={memory}&cache_disk={}&cache_disk_size={disk}",
            cache.path().display()
        ),
    );
    c.pack.index_dir = Some(index.path().to_path_buf());
    let store = PieceStore::open(c).await.unwrap();
    // A working set ten times the disk tier (and twenty times the memory tier).
    let n = (10 * disk / 4096) as usize;
    for i in 0..n {
        store
            .put(
                &format!("w{i}_s0"),
                piecestore_tests::pseudo_random(4096, i as u64),
            )
            .await
            .unwrap();
    }
    for round in 0..2 {
        for i in 0..n {
            let got = store.get(&format!("w{i}_s0")).await.unwrap();
            assert!(
                got == piecestore_tests::pseudo_random(4096, i as u64),
                "round {round} {i}"
            );
        }
    }
    let stats = store.cache_stats().unwrap();
    let (mem, dsk) = (&stats.tiers[0], &stats.tiers[1]);
    assert!(mem.bytes <= memory && mem.bytes > 0, "{mem:?}");
    assert!(dsk.bytes <= disk && dsk.bytes > 0, "{dsk:?}");
    assert!(mem.evictions > 0 && dsk.evictions > 0, "{stats:?}");
    let on_disk = dir_bytes(cache.path());
    assert!(
        on_disk <= disk,
        "entry files take {on_disk} bytes of disk, limit {disk}"
    );

    drop(store);

    // A delete reaches every tier at once: memory, disk, and the store (tiers with room).
    let cache = tempfile::tempdir().unwrap();
    let (_proxy, mut c) = store_through(
        s,
        &bucket,
        &format!("cache_disk={}", cache.path().display()),
    );
    c.pack.index_dir = Some(index.path().to_path_buf());
    let store = PieceStore::open(c).await.unwrap();
    let key = format!("w{}_s0", n - 1);
    let holds = |dir: &Path, key: &str| {
        entry_files(dir).iter().any(|f| {
            std::fs::read(f)
                .unwrap()
                .windows(key.len())
                .any(|w| w == key.as_bytes())
        })
    };
    assert!(store.get(&key).await.is_ok());
    assert!(holds(cache.path(), &key), "the get left a disk entry");
    store.delete(&key).await.unwrap();
    assert!(
        !holds(cache.path(), &key),
        "its disk entry went with the delete"
    );
    assert_eq!(store.get(&key).await.no_ok().kind(), ErrorKind::NotFound);
    // An overwrite too.
    store.put("over_s0", &b"first"[..]).await.unwrap();
    assert_eq!(&store.get("over_s0").await.unwrap()[..], b"first");
    store
        .put_opts("over_s0", &b"second"[..], PutOptions { overwrite: true })
        .await
        .unwrap();
    assert_eq!(&store.get("over_s0").await.unwrap()[..], b"second");
    // delete_prefix too.
    assert!(store.get("w1_s0").await.is_ok());
    store.delete_prefix("w1").await.unwrap();
    assert_eq!(store.get("w1_s0").await.no_ok().kind(), ErrorKind::NotFound);
    assert!(!holds(cache.path(), "w1_s0"));
    drop(proxy);
}

#[tokio::test]
async fn written_pieces_are_read_from_the_cache_when_admit_takes_writes() {
    let Some(s) = s3s() else { return };
    let bucket = unique_name("cache-write");
    let (proxy, c) = store_through(s, &bucket, "pack=false&cache_admit=reads-and-writes");
    let store = PieceStore::open(c).await.unwrap();
    store.put("w_s0", &b"written"[..]).await.unwrap();
    let before = proxy.seen().len();
    assert_eq!(&store.get("w_s0").await.unwrap()[..], b"written");
    assert_eq!(proxy.seen().len(), before, "read from the cache");
    // Without it, the first get fetches.
    let bucket = unique_name("cache-read");
    let (proxy, c) = store_through(s, &bucket, "pack=false");
    let store = PieceStore::open(c).await.unwrap();
    store.put("w_s0", &b"written"[..]).await.unwrap();
    assert_eq!(&store.get("w_s0").await.unwrap()[..], b"written");
    assert_eq!(object_gets(&proxy), 1);
}

#[tokio::test]
async fn local_stores_have_no_cache_unless_asked_and_a_failed_fetch_is_not_shared() {
    let dir = tempfile::tempdir().unwrap();
    let store = PieceStore::open(Config::from_url(&dir.path().display().to_string()).unwrap())
        .await
        .unwrap();
    assert!(
        store.cache_stats().is_none(),
        "a directory is served by the page cache"
    );
    let mem = PieceStore::open(Config::from_url("memory://?cache_memory=1MiB").unwrap())
        .await
        .unwrap();
    // Concurrent gets of a missing key each see NotFound (no error is cached).
    let gets = (0..8).map(|_| mem.get("missing_s0"));
    for r in futures::future::join_all(gets).await {
        assert_eq!(r.no_ok().kind(), ErrorKind::NotFound);
    }
    mem.put("missing_s0", &b"now"[..]).await.unwrap();
    assert_eq!(&mem.get("missing_s0").await.unwrap()[..], b"now");
    assert!(mem.cache_stats().unwrap().tiers[0].entries >= 1);
}

/// A closed store's memory tier holds nothing: its pieces are let go at the close, not when
/// the last handle is dropped (a Python or Node object, at the garbage collector's pace).
#[tokio::test]
async fn close_lets_go_of_the_memory_tier() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}?cache_memory=1MiB", dir.path().display());
    let store = PieceStore::open(Config::from_url(&url).unwrap())
        .await
        .unwrap();
    for i in 0..10 {
        let key = format!("{i}_s0");
        store.put(&key, vec![i as u8; 4096]).await.unwrap();
        store.get(&key).await.unwrap();
    }
    let held = &store.cache_stats().unwrap().tiers[0];
    assert_eq!(held.tier, "memory");
    assert!(held.entries >= 10 && held.bytes >= 40960, "{held:?}");
    store.close().await;
    let after = &store.cache_stats().unwrap().tiers[0];
    assert_eq!((after.entries, after.bytes), (0, 0), "{after:?}");
    // The pieces themselves are on disk, for the next open.
    let again = PieceStore::open(Config::from_url(&url).unwrap())
        .await
        .unwrap();
    assert_eq!(&again.get("3_s0").await.unwrap()[..], &[3u8; 4096][..]);
}

/// Requests that wrote pack objects, and ranged GETs of them.
fn pack_requests(p: &Proxy) -> (usize, usize) {
    let seen = p.seen();
    let packs = |m: &str| {
        seen.iter()
            .filter(|r| r.method == m && r.target.contains(".piecestore/packs/"))
            .count()
    };
    (packs("PUT"), packs("GET"))
}

#[tokio::test]
async fn gets_of_different_pieces_of_one_pack_share_one_ranged_read() {
    let Some(s) = s3s() else { return };
    let bucket = unique_name("cache-shared");
    let index = tempfile::tempdir().unwrap();
    let (proxy, mut c) = store_through(s, &bucket, "pack=true");
    c.pack.index_dir = Some(index.path().to_path_buf());
    let store = PieceStore::open(c).await.unwrap();
    let pieces: Vec<(String, bytes::Bytes)> = (0..24)
        .map(|i| {
            let data = piecestore_tests::pseudo_random(3000 + i * 17, i as u64);
            (format!("obj_s{i}"), bytes::Bytes::from(data))
        })
        .collect();
    for r in store
        .put_many(pieces.iter().map(|(k, d)| (k.as_str(), d.clone())))
        .await
    {
        r.unwrap();
    }
    store.flush().await.unwrap();
    let (packs, gets_before) = pack_requests(&proxy);
    assert!((1..24).contains(&packs), "{packs} packs for 24 pieces");

    // One object's pieces, read together: one ranged GET per pack, not one per piece.
    let got = store.get_many(pieces.iter().map(|(k, _)| k.as_str())).await;
    for ((k, data), got) in pieces.iter().zip(got) {
        assert!(got.unwrap() == *data, "{k}");
    }
    let (_, gets) = pack_requests(&proxy);
    assert_eq!(gets - gets_before, packs, "one ranged read per pack");
    let m = store.metrics();
    let w = m.pack_writes[0].1;
    assert_eq!((w.reads, w.pieces_read), (packs as u64, 24));
    assert!(
        m.to_prometheus()
            .contains("piecestore_pack_read_pieces_total{backend=\"s3\",shard=\"0\"} 24"),
        "{}",
        m.to_prometheus()
    );

    // Gets from separate tasks share reads as well; each still gets its own piece.
    store.clear_cache().await;
    let (_, before) = pack_requests(&proxy);
    let tasks = pieces.iter().map(|(k, _)| {
        let (store, k) = (store.clone(), k.clone());
        tokio::spawn(async move { store.get(&k).await })
    });
    let got = futures::future::join_all(tasks).await;
    for ((k, data), got) in pieces.iter().zip(got) {
        assert!(got.unwrap().unwrap() == *data, "{k}");
    }
    let (_, after) = pack_requests(&proxy);
    assert!(after - before < 24, "{} GETs for 24 pieces", after - before);

    // A piece on its own still reads just its range; a key never put is NotFound.
    store.clear_cache().await;
    assert!(store.get("obj_s3").await.unwrap() == pieces[3].1);
    let missing = store.get("obj_none").await.unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound);

    // Packs cut short behind the store's back: a shared read comes back short, and each piece
    // past the cut is Corrupt on its own (no panic, no wrong bytes); those before it are read.
    let packs_dir = s
        .data_dir
        .as_ref()
        .expect("s3s-fs keeps its buckets in a directory")
        .join(&bucket)
        .join(".piecestore/packs");
    for f in std::fs::read_dir(&packs_dir).unwrap() {
        let f = f.unwrap().path();
        let len = std::fs::metadata(&f).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&f)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
    }
    store.clear_cache().await;
    let got = store.get_many(pieces.iter().map(|(k, _)| k.as_str())).await;
    let (mut read, mut corrupt) = (0, 0);
    for ((k, data), got) in pieces.iter().zip(got) {
        match got {
            Ok(bytes) => {
                assert!(bytes == *data, "{k}: wrong bytes from a truncated pack");
                read += 1;
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Corrupt, "{k}: {e}");
                corrupt += 1;
            }
        }
    }
    assert!(read > 0 && corrupt > 0, "{read} read, {corrupt} corrupt");
}
