//! Damaged packs: a flipped payload byte is never returned (the read names the piece), `fsck`
//! names the piece and its pack, and compaction does not launder it; a torn (truncated) pack is
//! reported by `fsck`, and `fsck --rebuild-index` keeps every other piece readable. On a local
//! directory, and (flip) on the real S3-compatible server s3s-fs when it is installed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path as OPath;
use piecestore::config::OptionValue;
use piecestore::pack::format::{self, Entry};
use piecestore::pack::fsck::{FsckOptions, FsckReport};
use piecestore::pack::gc::GcOptions;
use piecestore::{Config, ErrorKind, PieceStore};
use piecestore_tests::{NoOk, ServerKind, server, unique_name};

fn packed(mut c: Config, max_age: &str) -> Config {
    for (opt, v) in [
        ("Pack", OptionValue::Bool(true)),
        ("PackThreshold", OptionValue::Int(16 << 10)),
        ("PackTargetSize", OptionValue::Int(32 << 10)),
        ("PackMaxAge", OptionValue::Str(max_age.into())),
    ] {
        c.set_option(opt, v).expect(opt);
    }
    c
}

/// `n` small pieces with distinct keys and sizes from 100 to about 3 KB.
fn pieces(n: u64) -> BTreeMap<String, Bytes> {
    (0..n)
        .map(|i| {
            let key = format!("p/{i:04}");
            let len = 100 + (i * 7919) % 2900;
            (key, piecestore_tests::pseudo_random(len as usize, i).into())
        })
        .collect()
}

async fn put_all(store: &PieceStore, pieces: &BTreeMap<String, Bytes>) {
    let results = store
        .put_many(pieces.iter().map(|(k, v)| (k.clone(), v.clone())))
        .await;
    for ((k, _), r) in pieces.iter().zip(results) {
        r.unwrap_or_else(|e| panic!("put {k}: {e}"));
    }
}

/// Every pack of `shard`, read past the store: object name (as fsck names packs) → records,
/// as a forward scan finds them.
async fn raw_packs(store: &PieceStore, shard: usize) -> BTreeMap<String, Vec<Entry>> {
    let raw = store.shard_object_store(shard).expect("shard");
    let metas: Vec<object_store::ObjectMeta> = raw
        .list(Some(&OPath::from(".piecestore/packs")))
        .try_collect()
        .await
        .expect("list packs");
    let mut out = BTreeMap::new();
    for m in metas {
        let name = m.location.filename().unwrap_or_default().to_string();
        if !name.ends_with(".pack") {
            continue; // a staging file
        }
        let bytes = raw
            .get(&m.location)
            .await
            .expect("get pack")
            .bytes()
            .await
            .expect("pack bytes");
        let scan = format::scan(&bytes).expect("scan");
        let mut entries = scan.entries;
        entries.extend(scan.damaged.into_iter().map(|(e, _)| e));
        out.insert(name, entries);
    }
    out
}

/// The pack that holds `key`'s newest record.
async fn pack_of(store: &PieceStore, key: &str) -> (String, Vec<Entry>) {
    raw_packs(store, store.shard_of(key))
        .await
        .into_iter()
        .filter(|(_, entries)| entries.iter().any(|e| e.key == key))
        .max_by_key(|(name, _)| name.clone())
        .unwrap_or_else(|| panic!("no pack holds {key}"))
}

async fn fsck(store: &PieceStore, rebuild_index: bool) -> FsckReport {
    store
        .fsck(FsckOptions { rebuild_index }, &|_| {})
        .await
        .unwrap_or_else(|e| panic!("fsck (rebuild_index {rebuild_index}): {e}"))
}

async fn read_back(store: &PieceStore, pieces: &BTreeMap<String, Bytes>, when: &str) {
    let results = store.get_many(pieces.keys()).await;
    for ((k, want), got) in pieces.iter().zip(results) {
        let got = got.unwrap_or_else(|e| panic!("{when}: get {k}: {e}"));
        assert!(got == *want, "{when}: {k} reads other bytes");
    }
}

/// Flips one payload byte of one piece in its pack and checks that reads and fsck name it;
/// returns the victim and its pack.
async fn flip_and_check(store: &PieceStore, pieces: &BTreeMap<String, Bytes>) -> (String, String) {
    let victim = pieces
        .keys()
        .nth(pieces.len() / 2)
        .expect("a piece")
        .clone();
    let (pack, _) = pack_of(store, &victim).await;
    let at = pieces[&victim].len() / 3;
    piecestore_tests::flip_stored_byte(store, &victim, at).await;

    for (what, r) in [
        ("get", store.get(&victim).await.map(|_| ())),
        (
            "get_range",
            store.get_range(&victim, 0, 1).await.map(|_| ()),
        ),
    ] {
        let e = r.no_ok();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{what} {victim}: {e}");
        assert!(
            e.to_string().contains(&victim),
            "{what}: the error does not name the piece: {e}"
        );
    }
    let others: BTreeMap<String, Bytes> = pieces
        .iter()
        .filter(|(k, _)| **k != victim)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    read_back(store, &others, "after the flip").await;

    let report = fsck(store, false).await;
    assert!(
        !report.is_clean(),
        "fsck finds nothing after a flipped byte"
    );
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.key.as_deref() == Some(victim.as_str())
                && p.pack.as_deref() == Some(pack.as_str())),
        "fsck does not name piece {victim} in pack {pack}:\n{}",
        piecestore_tests::fsck_problems(&report)
    );
    assert!(
        report
            .problems
            .iter()
            .all(|p| p.key.as_deref() == Some(victim.as_str())),
        "fsck reports problems beyond the flipped piece {victim}:\n{}",
        piecestore_tests::fsck_problems(&report)
    );
    (victim, pack)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_a_pack_is_named_by_reads_and_fsck_and_not_compacted_away() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}/pieces", dir.path().display());
    let store = PieceStore::open(packed(Config::from_url(&url).expect("url"), "5ms"))
        .await
        .expect("open");
    let all = pieces(300);
    put_all(&store, &all).await;
    let (victim, pack) = flip_and_check(&store, &all).await;

    // Delete every other piece of the victim's pack: its garbage passes any ratio, so gc
    // takes it up, must find the damaged live piece, and leave the pack alone rather than copy
    // the bad bytes under the good checksum.
    let (_, entries) = pack_of(&store, &victim).await;
    let neighbours: BTreeSet<String> = entries
        .iter()
        .map(|e| e.key.clone())
        .filter(|k| *k != victim)
        .collect();
    assert!(
        !neighbours.is_empty(),
        "the victim's pack {pack} holds no other piece"
    );
    for k in &neighbours {
        store
            .delete(k)
            .await
            .unwrap_or_else(|e| panic!("delete {k}: {e}"));
    }
    let report = store
        .gc(
            GcOptions {
                grace: Some(Duration::ZERO),
                garbage_ratio: Some(0.3),
                dry_run: false,
            },
            &|_| {},
        )
        .await
        .expect("gc");
    assert!(
        report.packs_damaged >= 1,
        "gc did not notice the damaged pack: {report:?}"
    );
    let e = store.get(&victim).await.no_ok();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "after gc: get {victim}: {e}");
    let left: BTreeMap<String, Bytes> = all
        .iter()
        .filter(|(k, _)| **k != victim && !neighbours.contains(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    read_back(&store, &left, "after gc").await;
    for k in &neighbours {
        let e = store.get(k).await.no_ok();
        assert_eq!(e.kind(), ErrorKind::NotFound, "deleted {k}: {e}");
    }
    let report = fsck(&store, false).await;
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.key.as_deref() == Some(victim.as_str())),
        "after gc, fsck no longer names {victim}:\n{}",
        piecestore_tests::fsck_problems(&report)
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_pack_is_reported_and_rebuild_index_keeps_every_other_piece() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("pieces");
    let url = format!("file://{}", root.display());
    let config = packed(Config::from_url(&url).expect("url"), "20ms");
    let store = PieceStore::open(config.clone()).await.expect("open");
    let all = pieces(300);
    put_all(&store, &all).await;
    let packs = raw_packs(&store, 0).await;
    assert!(packs.len() >= 3, "only {} packs", packs.len());
    // Tear the oldest pack of at least 4 pieces: cut inside the payload of its middle
    // record, as a crash while writing it in place would.
    let (torn, entries) = packs
        .iter()
        .find(|(_, e)| e.len() >= 4)
        .map(|(n, e)| (n.clone(), e.clone()))
        .expect("a pack of 4 pieces");
    let mut by_offset = entries.clone();
    by_offset.sort_by_key(|e| e.offset);
    // Some deletes, whose tombstones (in newer packs) the rebuild must honour: of pieces in
    // other packs, and of the torn pack's first piece, which the tear keeps.
    let in_torn: BTreeSet<&String> = entries.iter().map(|e| &e.key).collect();
    let mut deleted: BTreeSet<String> = all
        .keys()
        .filter(|k| !in_torn.contains(k))
        .step_by(10)
        .cloned()
        .collect();
    deleted.insert(by_offset[0].key.clone());
    for k in &deleted {
        store
            .delete(k)
            .await
            .unwrap_or_else(|e| panic!("delete {k}: {e}"));
    }
    store.close().await;
    let middle = &by_offset[by_offset.len() / 2];
    let cut = middle.offset + middle.len / 2;
    let lost: BTreeSet<String> = by_offset[by_offset.len() / 2..]
        .iter()
        .map(|e| e.key.clone())
        .collect();
    let path = root.join(".piecestore/packs").join(&torn);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open the pack file");
    f.set_len(cut).expect("truncate");
    drop(f);

    let store = PieceStore::open(config.clone()).await.expect("reopen");
    let report = fsck(&store, false).await;
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.pack.as_deref() == Some(torn.as_str()) && p.key.is_none()),
        "fsck does not report the torn pack {torn}:\n{}",
        piecestore_tests::fsck_problems(&report)
    );
    for k in &lost {
        assert!(
            report.problems.iter().any(|p| p.key.as_deref() == Some(k)),
            "fsck does not name {k}, which the torn pack lost:\n{}",
            piecestore_tests::fsck_problems(&report)
        );
        // Never bytes from a torn pack. (The piece cut in two is `Corrupt`; those past the
        // cut are a `Backend` error today, the range read failing.)
        let _ = store.get(k).await.no_ok();
    }

    let report = fsck(&store, true).await;
    let before = report
        .problems_before_rebuild
        .as_ref()
        .expect("problems before the rebuild");
    assert!(
        before
            .iter()
            .any(|p| p.pack.as_deref() == Some(torn.as_str())),
        "the rebuild's first check does not report {torn}"
    );
    // What remains wrong is the torn pack itself, not any index entry.
    assert!(
        report
            .problems
            .iter()
            .all(|p| p.pack.as_deref() == Some(torn.as_str()) && p.key.is_none()),
        "after the rebuild fsck reports:\n{}",
        piecestore_tests::fsck_problems(&report)
    );
    let kept: BTreeMap<String, Bytes> = all
        .iter()
        .filter(|(k, _)| !deleted.contains(*k) && !lost.contains(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(
        report.rebuilt_pieces,
        Some(kept.len() as u64),
        "the rebuild indexed another number of pieces"
    );
    read_back(&store, &kept, "after the rebuild").await;
    for k in deleted.union(&lost) {
        let e = store.get(k).await.no_ok();
        assert_eq!(e.kind(), ErrorKind::NotFound, "after the rebuild: {k}: {e}");
    }
    let listed: BTreeSet<String> = store
        .list("")
        .map_ok(|m| m.key)
        .try_collect()
        .await
        .expect("list");
    assert_eq!(
        listed,
        kept.keys().cloned().collect::<BTreeSet<_>>(),
        "the listing after the rebuild"
    );
    store.close().await;
    // The rebuilt index is durable: a new process sees the same.
    let store = PieceStore::open(config)
        .await
        .expect("reopen after the rebuild");
    read_back(&store, &kept, "reopened after the rebuild").await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_a_pack_on_s3s_fs_is_named_by_reads_and_fsck() {
    let Some(s) = server(ServerKind::S3sFs) else {
        return;
    };
    let index_dir = tempfile::tempdir().expect("tempdir");
    let mut config = packed(s.config(&unique_name("pack-corruption"), 4), "5ms");
    config
        .set_option(
            "IndexDir",
            OptionValue::Str(index_dir.path().display().to_string()),
        )
        .expect("IndexDir");
    let store = PieceStore::open(config).await.expect("open");
    let all = pieces(200);
    put_all(&store, &all).await;
    flip_and_check(&store, &all).await;
    store.close().await;
}
