//! The pack layer's integrity rules, one test per way a review found to lose, resurrect or
//! misreport a piece, or to leak a credential: an overwrite that leaves the old object behind,
//! an index that thinks it knows every object, an index entry that outlives its object, "same
//! bytes" decided by a checksum, a truncated pack read as a retryable error, a lost write
//! response that brings deleted keys back, unverified bytes, credentials in `Debug`, `close`
//! racing running writes, `fsck --rebuild-index` racing puts, two handles with other options,
//! sequence numbers from the clock, and an unpacked open of a packed store.
//!
//! Each runs on a local directory, and where it matters on a real S3-compatible server (moto,
//! started by the harness on 127.0.0.1).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as OPath;
use object_store::{ObjectStoreExt, PutPayload};
use piecestore::config::OptionValue;
use piecestore::pack::fsck::FsckOptions;
use piecestore::{Config, ErrorKind, PieceStore, PutOptions};
use piecestore_tests::pack_files;
use piecestore_tests::{NoOk, ProxyMode, ServerKind, crc32c_twin, pseudo_random, server};

/// Pieces below this are packed in these tests.
const THRESHOLD: i64 = 16 << 10;

fn bytes(len: usize, seed: u64) -> Bytes {
    Bytes::from(pseudo_random(len, seed))
}

fn packed(mut c: Config) -> Config {
    for (opt, v) in [
        ("Pack", OptionValue::Bool(true)),
        ("PackThreshold", OptionValue::Int(THRESHOLD)),
        ("PackTargetSize", OptionValue::Int(64 << 10)),
        ("PackMaxAge", OptionValue::Str("1ms".into())),
    ] {
        c.set_option(opt, v).expect(opt);
    }
    c
}

fn file_config(dir: &Path) -> Config {
    packed(Config::from_url(&format!("file://{}", dir.display())).expect("url"))
}

/// A packed config on moto (one bucket of its own, its index in `index_dir`), or `None` when
/// moto is not installed outside CI.
fn moto_config(name: &str, index_dir: &Path) -> Option<Config> {
    let s = server(ServerKind::Moto)?;
    let mut c = packed(s.config(&piecestore_tests::unique_name(name), 0));
    c.set_option(
        "IndexDir",
        OptionValue::Str(index_dir.display().to_string()),
    )
    .expect("IndexDir");
    Some(c)
}

async fn listed(store: &PieceStore) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = store
        .list("")
        .map_ok(|m| (m.key, m.size))
        .try_collect()
        .await
        .expect("list");
    v.sort();
    v
}

/// Whether an object named `key` (not a pack) exists in `store`'s shard, looked at past the
/// store.
async fn raw_object_exists(store: &PieceStore, key: &str) -> bool {
    let raw = store
        .shard_object_store(store.shard_of(key))
        .expect("shard");
    raw.head(&OPath::parse(key).expect("path")).await.is_ok()
}

/// The pack files and their sizes (an active pack grows in place).
fn pack_sizes(dir: &Path) -> Vec<(PathBuf, u64)> {
    pack_files(dir)
        .into_iter()
        .map(|p| {
            let n = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            (p, n)
        })
        .collect()
}

/// Overwriting a large piece (an object of its own) with a small one (packed) leaves one piece:
/// listed once, the old object gone, and after a delete nothing to fall back to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_overwrite_of_a_large_piece_leaves_no_old_object() {
    let dir = tempfile::tempdir().expect("tempdir");
    let idx = tempfile::tempdir().expect("tempdir");
    let mut configs = vec![("file", file_config(dir.path()))];
    configs.push((
        "memory",
        packed(Config::from_url("memory://").expect("url")),
    ));
    if let Some(c) = moto_config("small-overwrite", idx.path()) {
        configs.push(("moto", c));
    }
    for (name, config) in configs {
        let store = PieceStore::open(config).await.expect("open");
        let large = bytes(4 * THRESHOLD as usize, 1);
        let small = bytes(100, 2);
        store.put("k1", large.clone()).await.expect("large put");
        store
            .put_opts("k1", small.clone(), PutOptions { overwrite: true })
            .await
            .expect("small overwrite");
        assert!(
            store.get("k1").await.expect("get") == small,
            "{name}: reads the new bytes"
        );
        assert_eq!(
            listed(&store).await,
            vec![("k1".to_string(), 100)],
            "{name}: listed once, as the small piece"
        );
        assert!(
            !raw_object_exists(&store, "k1").await,
            "{name}: the overwritten object is still stored"
        );
        store.delete("k1").await.expect("delete");
        assert_eq!(
            store.get("k1").await.no_ok().kind(),
            ErrorKind::NotFound,
            "{name}: a deleted piece reads back"
        );
        assert!(
            listed(&store).await.is_empty(),
            "{name}: listed after delete"
        );
        store.close().await;
    }
}

/// An object the index does not know (written by the original Go piecestore, or by an unpacked
/// handle) is never shadowed by a small put of other bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_the_index_does_not_know_is_never_shadowed() {
    // The original writes raw files into the directory of a packed store.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = PieceStore::open(file_config(dir.path()))
        .await
        .expect("open");
    store.put("p0", bytes(10, 0)).await.expect("put");
    std::fs::write(dir.path().join("foreign"), pseudo_random(300, 3)).expect("raw write");
    assert_eq!(
        store.put("foreign", bytes(200, 4)).await.no_ok().kind(),
        ErrorKind::AlreadyExists,
        "file: a small put shadowed a file the original wrote"
    );
    store.close().await;

    // An unpacked handle writes objects while the packed store is closed; the packed store
    // opened again must know that its index no longer knows every object.
    let idx = tempfile::tempdir().expect("tempdir");
    let Some(config) = moto_config("unknown-object", idx.path()) else {
        return;
    };
    let store = PieceStore::open(config.clone()).await.expect("open");
    store
        .put("big", bytes(2 * THRESHOLD as usize, 5))
        .await
        .expect("put");
    store.close().await;
    drop(store);
    let mut unpacked = config.clone();
    unpacked
        .set_option("Pack", OptionValue::Bool(false))
        .expect("Pack");
    let u = PieceStore::open(unpacked).await.expect("open unpacked");
    u.put("theirs", bytes(300, 6)).await.expect("unpacked put");
    u.close().await;
    let store = PieceStore::open(config).await.expect("reopen packed");
    assert_eq!(
        store.put("theirs", bytes(200, 7)).await.no_ok().kind(),
        ErrorKind::AlreadyExists,
        "moto: a small put shadowed an object an unpacked handle wrote"
    );
    assert!(store.get("theirs").await.expect("get") == bytes(300, 6));
    store.close().await;
}

/// A large put cancelled at any moment leaves either no object, or an object that the store
/// knows: a small put of other bytes afterwards must then fail, never shadow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_large_put_never_leaves_an_object_a_small_put_can_shadow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = PieceStore::open(file_config(dir.path()))
        .await
        .expect("open");
    let data = bytes(8 << 20, 9);
    let t0 = std::time::Instant::now();
    store.put("probe", data.clone()).await.expect("put");
    let full = t0.elapsed();
    let mut landed = 0;
    for i in 0..40u32 {
        let key = format!("big{i}");
        // Cancel somewhere between half and all of a whole put's time.
        let after = full.mul_f64(0.5 + f64::from(i) / 60.0);
        let _ = tokio::time::timeout(after, store.put(&key, data.clone())).await;
        // Let a write that goes on without its caller finish.
        store.flush().await.expect("flush");
        tokio::time::sleep(Duration::from_millis(20)).await;
        if !raw_object_exists(&store, &key).await {
            continue;
        }
        landed += 1;
        match store.put(&key, bytes(100, u64::from(i))).await {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            other => panic!(
                "{key}: the object landed, and a small put of other bytes gave {:?}",
                other.map_err(|e| e.to_string())
            ),
        }
        assert!(store.get(&key).await.expect("get") == data, "{key}");
    }
    eprintln!("{landed} of 40 cancelled puts left their object");
    store.close().await;
}

/// An index entry whose object is gone (a crash between deleting the object and the entry,
/// or an object removed behind the store's back) does not make a put of the same bytes a
/// no-op: the put stores them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_entry_without_its_object_does_not_swallow_a_put() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = PieceStore::open(file_config(dir.path()))
        .await
        .expect("open");
    let data = bytes(3 * THRESHOLD as usize, 11);
    store.put("obj", data.clone()).await.expect("put");
    std::fs::remove_file(dir.path().join("obj")).expect("remove the object file");
    store.put("obj", data.clone()).await.expect("put again");
    assert!(
        store.get("obj").await.expect("the piece put again reads") == data,
        "reads other bytes"
    );
    store.close().await;
}

/// "Same bytes" means the same bytes: a put of other bytes with the same length and the same
/// CRC32C is `AlreadyExists` everywhere a piece can be (packed, in flight, an object of its
/// own, an unpacked store, an object with no checksum).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_length_and_crc32c_is_not_the_same_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = PieceStore::open(file_config(dir.path()))
        .await
        .expect("open");
    let small = bytes(300, 21);
    let small_twin = Bytes::from(crc32c_twin(&small));
    store.put("packed", small.clone()).await.expect("put");
    assert_eq!(
        store.put("packed", small_twin.clone()).await.no_ok().kind(),
        ErrorKind::AlreadyExists,
        "packed"
    );
    assert!(store.get("packed").await.expect("get") == small);

    // Both in flight at once: one wins, the other is refused.
    for i in 0..20 {
        let key = format!("race{i}");
        let (a, b) = tokio::join!(
            store.put(&key, small.clone()),
            store.put(&key, small_twin.clone())
        );
        let got = store.get(&key).await.expect("get");
        match (a, b) {
            (Ok(()), Err(e)) if e.kind() == ErrorKind::AlreadyExists => assert!(got == small),
            (Err(e), Ok(())) if e.kind() == ErrorKind::AlreadyExists => {
                assert!(got == small_twin)
            }
            (a, b) => panic!(
                "{key}: racing twins gave {:?} and {:?}",
                a.map_err(|e| e.to_string()),
                b.map_err(|e| e.to_string())
            ),
        }
    }

    let large = bytes(2 * THRESHOLD as usize, 22);
    store.put("large", large.clone()).await.expect("put");
    assert_eq!(
        store
            .put("large", Bytes::from(crc32c_twin(&large)))
            .await
            .no_ok()
            .kind(),
        ErrorKind::AlreadyExists,
        "an object of its own"
    );

    // A raw file of the original (no checksum) of the same length.
    std::fs::write(dir.path().join("raw"), &small).expect("raw write");
    assert_eq!(
        store.put("raw", bytes(300, 23)).await.no_ok().kind(),
        ErrorKind::AlreadyExists,
        "an object without a checksum and of the same length"
    );
    store.close().await;

    // Unpacked stores: a file and an S3 object.
    let unpacked_dir = tempfile::tempdir().expect("tempdir");
    let mut configs = vec![
        Config::from_url(&format!(
            "file://{}?pack=false",
            unpacked_dir.path().display()
        ))
        .expect("url"),
    ];
    if let Some(s) = server(ServerKind::Moto) {
        let mut c = s.config(&piecestore_tests::unique_name("twin-unpacked"), 0);
        c.set_option("Pack", OptionValue::Bool(false))
            .expect("Pack");
        configs.push(c);
    }
    for config in configs {
        let label = config.store.bucket_url.clone();
        let store = PieceStore::open(config).await.expect("open");
        store.put("u", small.clone()).await.expect("put");
        assert_eq!(
            store.put("u", small_twin.clone()).await.no_ok().kind(),
            ErrorKind::AlreadyExists,
            "{label}"
        );
        assert!(store.get("u").await.expect("get") == small, "{label}");
        store.close().await;
    }
}

/// A pack cut short (a damaged disk, a truncated copy) is `Corrupt`, which callers do not
/// retry, never a retryable backend error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_pack_reads_as_corrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = PieceStore::open(file_config(dir.path()))
        .await
        .expect("open");
    let keys: Vec<String> = (0..20).map(|i| format!("t{i:02}")).collect();
    let results = store
        .put_many(keys.iter().map(|k| (k.clone(), bytes(1000, 7))))
        .await;
    assert!(results.iter().all(|r| r.is_ok()));
    store.flush().await.expect("flush");
    // Cut every pack in half.
    for p in pack_files(dir.path()) {
        let len = std::fs::metadata(&p).expect("meta").len();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .expect("open pack");
        f.set_len(len / 2).expect("truncate");
    }
    let mut cut = 0;
    for k in &keys {
        match store.get(k).await {
            Ok(b) => assert!(b == bytes(1000, 7), "{k} reads other bytes"),
            Err(e) => {
                assert_eq!(
                    e.kind(),
                    ErrorKind::Corrupt,
                    "{k}: a truncated pack gave {e} (retryable: {})",
                    e.is_retryable()
                );
                cut += 1;
            }
        }
    }
    assert!(cut > 0, "no piece was in a cut part");
    store.close().await;
}

/// A pack whose write was reported failed, but that the server stored (a lost response), does
/// not bring back keys deleted since: not in this process, not after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_write_reported_failed_does_not_resurrect_deleted_keys() {
    let Some(s) = server(ServerKind::Moto) else {
        return;
    };
    let idx = tempfile::tempdir().expect("tempdir");
    let proxy =
        piecestore_tests::start_proxy(&s.endpoint, ProxyMode::LoseResponse(".piecestore/packs/"));
    let bucket = piecestore_tests::unique_name("lost-response");
    let mut config = packed(s.config_through(&proxy, &bucket, ""));
    config
        .set_option(
            "IndexDir",
            OptionValue::Str(idx.path().display().to_string()),
        )
        .expect("IndexDir");
    let store = PieceStore::open(config.clone()).await.expect("open");
    let err = store.put("lost", bytes(100, 1)).await.no_ok();
    eprintln!("the put whose response was lost: {err}");
    store.delete("lost").await.expect("delete");
    assert_eq!(store.get("lost").await.no_ok().kind(), ErrorKind::NotFound);
    store.put("other", bytes(50, 2)).await.expect("a later put");
    store.close().await;
    drop(store);
    let again = PieceStore::open(config).await.expect("reopen");
    assert_eq!(
        again.get("lost").await.no_ok().kind(),
        ErrorKind::NotFound,
        "a deleted key came back after a reopen"
    );
    assert_eq!(listed(&again).await, vec![("other".to_string(), 50)]);
    let report = again
        .fsck(
            FsckOptions {
                rebuild_index: true,
            },
            &|_| {},
        )
        .await
        .expect("fsck --rebuild-index");
    eprintln!("{}", piecestore_tests::fsck_problems(&report));
    assert_eq!(
        again.get("lost").await.no_ok().kind(),
        ErrorKind::NotFound,
        "a deleted key came back after fsck --rebuild-index"
    );
    again.close().await;
}

/// A piece without its checksum is refused (`Corrupt`) unless the store allows unverified
/// pieces (the original Go piecestore's files): a wiped trailer never passes garbage through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unverified_pieces_are_refused_unless_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}?pack=false", dir.path().display());
    let store = PieceStore::open(Config::from_url(&url).expect("url"))
        .await
        .expect("open");
    let data = bytes(5000, 31);
    store.put("wiped", data.clone()).await.expect("put");
    // Zero the 20-byte trailer.
    let path = dir.path().join("wiped");
    let mut raw = std::fs::read(&path).expect("read");
    let n = raw.len();
    raw[n - 20..].fill(0);
    std::fs::write(&path, &raw).expect("write");
    let e = store.get("wiped").await.no_ok();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "a wiped trailer gave {e}");
    assert_eq!(
        store.get_range("wiped", 0, 10).await.no_ok().kind(),
        ErrorKind::Corrupt
    );
    // A raw file as the original writes it.
    std::fs::write(dir.path().join("orig"), pseudo_random(700, 32)).expect("write");
    assert_eq!(store.get("orig").await.no_ok().kind(), ErrorKind::Corrupt);
    assert!(store.head("orig").await.expect("head").unverified());
    store.close().await;

    let mut allowing = Config::from_url(&url).expect("url");
    allowing
        .set_option("AllowUnverified", OptionValue::Bool(true))
        .expect("AllowUnverified");
    let store = PieceStore::open(allowing).await.expect("open");
    assert!(store.get("orig").await.expect("allowed") == pseudo_random(700, 32));
    let m = store.metrics();
    assert!(
        m.to_prometheus()
            .contains("piecestore_unverified_reads_total{backend=\"file\",shard=\"0\"} 1"),
        "{}",
        m.to_prometheus()
    );
    store.close().await;

    // The original's own config layout allows them: its file pieces carry no checksum.
    let toml = format!(
        "[PieceStore]\nShards = 0\n[PieceStore.Store]\nStorage = \"file\"\nBucketURL = \"{}\"\n",
        dir.path().display()
    );
    let original = Config::from_toml(&toml).expect("toml");
    let store = PieceStore::open(original).await.expect("open");
    assert!(store.get("orig").await.expect("the original's layout") == pseudo_random(700, 32));
    store.close().await;

    // S3: an object without `Crc32c` metadata.
    let Some(s) = server(ServerKind::Moto) else {
        return;
    };
    let mut c = s.config(&piecestore_tests::unique_name("unverified"), 0);
    c.set_option("Pack", OptionValue::Bool(false))
        .expect("Pack");
    let store = PieceStore::open(c.clone()).await.expect("open");
    let raw = store.shard_object_store(0).expect("shard");
    raw.put(
        &OPath::from("nocrc"),
        PutPayload::from(pseudo_random(99, 1)),
    )
    .await
    .expect("raw put");
    assert_eq!(store.get("nocrc").await.no_ok().kind(), ErrorKind::Corrupt);
    c.set_option("AllowUnverified", OptionValue::Bool(true))
        .expect("AllowUnverified");
    let store = PieceStore::open(c).await.expect("open");
    assert!(store.get("nocrc").await.expect("allowed") == pseudo_random(99, 1));
}

/// `Debug` of a store, its config and its errors never shows a credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_output_holds_no_credential() {
    let key_id = "AKIAQUITEUNIQUEKEYID7";
    let secret = "s3cr3t/VeryUniqueSecretValue+42";
    let token = "SessionTokenQuiteUnique99";
    let mut c = Config::from_url("s3://some-bucket/pieces?region=eu-west-1").expect("url");
    c.set_option("AccessKey", OptionValue::Str(key_id.into()))
        .expect("AccessKey");
    c.set_option("SecretKey", OptionValue::Str(secret.into()))
        .expect("SecretKey");
    c.set_option("SessionToken", OptionValue::Str(token.into()))
        .expect("SessionToken");
    c.set_option("Endpoint", OptionValue::Str("http://127.0.0.1:1".into()))
        .expect("Endpoint");
    let shown_config = format!("{c:?} {c:#?}");
    let store = PieceStore::open_lazy(c).expect("open_lazy");
    let shown = format!("{store:?} {store:#?} {shown_config}");
    for s in [key_id, secret, token] {
        assert!(!shown.contains(s), "Debug shows {s:?}:\n{shown}");
    }
    assert!(
        shown.contains("some-bucket"),
        "Debug still names the bucket"
    );
}

/// `close` returns only when every write it could see has finished: no pack appears after it
/// returned, and no put is still running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_waits_for_running_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = file_config(dir.path());
    config
        .set_option("PackTargetSize", OptionValue::Int(THRESHOLD))
        .expect("target");
    config
        .set_option("PackMaxAge", OptionValue::Str("1h".into()))
        .expect("max age");
    for round in 0..5 {
        let store = PieceStore::open(config.clone()).await.expect("open");
        let puts: Vec<_> = (0..300)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(
                    async move { store.put(&format!("r{round}_{i}"), bytes(4000, i)).await },
                )
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(5 + round * 10)).await;
        store.close().await;
        let at_close = pack_sizes(dir.path());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            pack_sizes(dir.path()),
            at_close,
            "round {round}: packs were written after close returned"
        );
        for p in puts {
            let _ = p.await;
        }
        drop(store);
    }
}

/// `fsck --rebuild-index` while puts go on loses none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_index_keeps_puts_made_while_it_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = PieceStore::open(file_config(dir.path()))
        .await
        .expect("open");
    let base: Vec<(String, Bytes)> = (0..3000)
        .map(|i| (format!("base{i}"), bytes(2000, i)))
        .collect();
    assert!(store.put_many(base.clone()).await.iter().all(|r| r.is_ok()));
    for round in 0..3 {
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..400u64 {
                    let key = format!("live{round}_{i}");
                    store
                        .put(&key, bytes(500, i))
                        .await
                        .unwrap_or_else(|e| panic!("put {key}: {e}"));
                    acked.push((key, i));
                }
                acked
            })
        };
        let report = store
            .fsck(
                FsckOptions {
                    rebuild_index: true,
                },
                &|_| {},
            )
            .await
            .expect("fsck --rebuild-index");
        assert!(
            report.is_clean(),
            "{}",
            piecestore_tests::fsck_problems(&report)
        );
        let acked = writer.await.expect("writer");
        for (key, i) in acked {
            match store.get(&key).await {
                Ok(b) => assert!(b == bytes(500, i), "{key} reads other bytes"),
                Err(e) => panic!("round {round}: {key} was acknowledged, then: {e}"),
            }
        }
    }
    store.close().await;
}

/// Two handles on one directory in one process share its packer, so they must agree on the
/// packing options: a second one with other options is refused, not silently given the first
/// one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_handle_with_other_pack_options_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = PieceStore::open(file_config(dir.path()))
        .await
        .expect("open");
    let mut other = file_config(dir.path());
    other
        .set_option("PackThreshold", OptionValue::Int(THRESHOLD / 2))
        .expect("threshold");
    let e = PieceStore::open(other).await.no_ok();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
    assert!(e.to_string().contains("Threshold"), "{e}");
    // The same options are fine.
    let same = PieceStore::open(file_config(dir.path()))
        .await
        .expect("same options");
    same.close().await;
    first.close().await;
}

/// Sequence numbers count records, not the clock: after a rebuild over records written when
/// the clock was ahead (a later step backwards), a new put is newer than every old tombstone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_after_a_clock_step_back_is_newer_than_old_tombstones() {
    use piecestore::pack::format::PackBuilder;
    let dir = tempfile::tempdir().expect("tempdir");
    // A tombstone of "k" written eleven days ahead of now.
    let ahead = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros() as u64)
        + 11 * 86_400 * 1_000_000;
    let mut b = PackBuilder::new();
    b.push_tombstone("k", ahead, ahead - 1);
    let (pack, _) = b.finish();
    let packs = dir.path().join(".piecestore/packs");
    std::fs::create_dir_all(&packs).expect("mkdir");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis();
    let id: u128 = (now_ms << 80) | 0x1234;
    std::fs::write(packs.join(piecestore::pack::index::pack_name(id)), &pack).expect("write");

    let store = PieceStore::open(file_config(dir.path()))
        .await
        .expect("open");
    store.put("k", bytes(10, 1)).await.expect("put");
    store.flush().await.expect("flush");
    let report = store
        .fsck(
            FsckOptions {
                rebuild_index: true,
            },
            &|_| {},
        )
        .await
        .expect("rebuild");
    assert!(
        report.is_clean(),
        "{}",
        piecestore_tests::fsck_problems(&report)
    );
    assert!(
        store
            .get("k")
            .await
            .expect("the put after the old tombstone")
            == bytes(10, 1),
        "reads other bytes"
    );
    store.close().await;
}

/// A store that holds packs refuses to open unpacked (it would answer NotFound for every
/// packed piece), and says how to convert it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpacked_open_of_a_packed_store_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = PieceStore::open(file_config(dir.path()))
        .await
        .expect("open");
    store.put("small", bytes(10, 1)).await.expect("put");
    store.close().await;
    drop(store);
    let url = format!("file://{}?pack=false", dir.path().display());
    let e = PieceStore::open(Config::from_url(&url).expect("url"))
        .await
        .no_ok();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
    assert!(e.to_string().contains("piecestore migrate"), "{e}");
}

/// Compaction's grace period survives a reopen: a compacted pack stays until its grace is
/// over, then the next gc deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_grace_holds_across_a_reopen() {
    use piecestore::pack::gc::GcOptions;
    let dir = tempfile::tempdir().expect("tempdir");
    // Small packs, so that they seal (an active pack is never compacted).
    let mut config = file_config(dir.path());
    config
        .set_option("PackTargetSize", OptionValue::Int(THRESHOLD))
        .expect("target");
    let store = PieceStore::open(config.clone()).await.expect("open");
    let items: Vec<(String, Bytes)> = (0..40).map(|i| (format!("g{i}"), bytes(1500, i))).collect();
    assert!(
        store
            .put_many(items.clone())
            .await
            .iter()
            .all(|r| r.is_ok())
    );
    store.flush().await.expect("flush");
    for (k, _) in items.iter().skip(5) {
        store.delete(k).await.expect("delete");
    }
    store.flush().await.expect("flush");
    let before = pack_files(dir.path());
    let grace = Duration::from_secs(2);
    let opts = GcOptions {
        grace: Some(grace),
        garbage_ratio: Some(0.3),
        dry_run: false,
    };
    let r = store.gc(opts, &|_| {}).await.expect("gc");
    assert!(r.packs_compacted > 0 && r.packs_doomed > 0, "{r:?}");
    store.close().await;
    drop(store);
    let store = PieceStore::open(config.clone()).await.expect("reopen");
    let r = store.gc(opts, &|_| {}).await.expect("gc within grace");
    assert_eq!(r.packs_deleted, 0, "deleted within its grace: {r:?}");
    assert!(
        before.iter().all(|p| p.exists()),
        "a compacted pack went before its grace was over"
    );
    tokio::time::sleep(grace + Duration::from_millis(200)).await;
    let r = store.gc(opts, &|_| {}).await.expect("gc after grace");
    assert!(r.packs_deleted > 0, "{r:?}");
    assert!(
        before.iter().any(|p| !p.exists()),
        "no compacted pack was deleted after its grace"
    );
    for (k, v) in items.iter().take(5) {
        assert!(store.get(k).await.expect("get") == *v);
    }
    store.close().await;
}

/// `GcInterval` runs compaction in the background while the store is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_interval_compacts_in_the_background() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = file_config(dir.path());
    for (opt, v) in [
        ("PackTargetSize", OptionValue::Int(THRESHOLD)),
        ("GcInterval", OptionValue::Str("100ms".into())),
        ("GcGrace", OptionValue::Str("0s".into())),
        ("GcGarbageRatio", OptionValue::Float(0.3)),
    ] {
        config.set_option(opt, v).expect(opt);
    }
    let store = PieceStore::open(config).await.expect("open");
    let items: Vec<(String, Bytes)> = (0..40).map(|i| (format!("b{i}"), bytes(1500, i))).collect();
    assert!(
        store
            .put_many(items.clone())
            .await
            .iter()
            .all(|r| r.is_ok())
    );
    store.flush().await.expect("flush");
    for (k, _) in items.iter().skip(5) {
        store.delete(k).await.expect("delete");
    }
    store.flush().await.expect("flush");
    let before = pack_files(dir.path());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while before.iter().all(|p| p.exists()) {
        assert!(
            std::time::Instant::now() < deadline,
            "no pack was compacted away in the background within 20s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (k, v) in items.iter().take(5) {
        assert!(store.get(k).await.expect("get") == *v);
    }
    store.close().await;
}
