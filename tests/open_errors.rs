//! Bad configuration and bad backends: clear errors at open, no secret in any message.

use piecestore::config::Secret;
use piecestore::{Config, ErrorKind, PieceStore};
use piecestore_tests::{NoOk, ServerKind, server, unique_name};

#[tokio::test]
async fn unknown_scheme_and_bad_urls_are_config_errors() {
    for url in [
        "ftp://host/bucket",
        "http://127.0.0.1:1/",
        "gopher://x",
        "http://ak:hunter22@127.0.0.1/b",
    ] {
        let e = match Config::from_url(url) {
            Err(e) => e,
            Ok(c) => PieceStore::open(c).await.no_ok(),
        };
        assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{url}: {e}");
        assert!(!e.to_string().contains("hunter22"), "{e}");
    }
}

#[tokio::test]
async fn missing_bucket_is_named_at_open() {
    let Some(s) = server(ServerKind::Moto) else {
        return;
    };
    let mut c = s.config(&unique_name("exists"), 0);
    c.store.bucket_url = format!("{}/no-such-bucket-here", s.endpoint);
    c.backend.create_bucket = Some(false);
    let e = PieceStore::open(c).await.no_ok();
    assert_eq!(e.kind(), ErrorKind::BucketNotFound, "{e}");
    assert!(e.to_string().contains("no-such-bucket-here"), "{e}");
}

#[tokio::test]
async fn lazy_open_checks_the_bucket_on_first_use() {
    let Some(s) = server(ServerKind::Moto) else {
        return;
    };
    let mut c = s.config(&unique_name("lazy"), 0);
    c.store.bucket_url = format!("{}/no-such-lazy-bucket", s.endpoint);
    c.backend.create_bucket = Some(false);
    // No I/O at open: succeeds although the bucket is missing.
    let store = PieceStore::open_lazy(c).unwrap();
    // The first operation runs the check and fails with it, not with "piece not found".
    let e = store.get("1_s0").await.no_ok();
    assert_eq!(e.kind(), ErrorKind::BucketNotFound, "{e}");
    assert!(e.to_string().contains("no-such-lazy-bucket"), "{e}");
    // A failed check is not remembered.
    let e = store.put("1_s0", &b"x"[..]).await.no_ok();
    assert_eq!(e.kind(), ErrorKind::BucketNotFound, "{e}");
    // Once it passes, the store works.
    let good = s.config(&unique_name("lazyok"), 0);
    let store = PieceStore::open_lazy(good).unwrap();
    store.put("1_s0", &b"x"[..]).await.unwrap();
    assert_eq!(&store.get("1_s0").await.unwrap()[..], b"x");
}

#[tokio::test]
async fn missing_bucket_in_a_shard_names_the_shard() {
    let Some(s) = server(ServerKind::Moto) else {
        return;
    };
    let name = unique_name("shardmiss");
    let c = s.config(&name, 2);
    let mut c3 = c.clone();
    c3.shards = 3; // bucket -2 was never created
    c3.backend.create_bucket = Some(false);
    let e = PieceStore::open(c3).await.no_ok();
    assert_eq!(e.kind(), ErrorKind::BucketNotFound, "{e}");
    assert!(
        e.to_string().contains("shard 2") && e.to_string().contains(&format!("{name}-2")),
        "{e}"
    );
}

#[tokio::test]
async fn wrong_credentials_are_unauthorized_and_stay_secret() {
    let Some(s) = server(ServerKind::S3sFs) else {
        return;
    };
    let mut c = s.config(&unique_name("creds"), 0);
    let wrong = format!("{}WRONG", s.secret_key);
    c.store.secret_key = Secret::new(wrong.clone());
    let e = PieceStore::open(c.clone()).await.no_ok();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    let msg = format!("{e} {e:?}");
    assert!(
        !msg.contains(&wrong) && !msg.contains(&s.access_key),
        "secret in {msg}"
    );
    // Also on a call, when the check at open is off.
    c.backend.check_bucket = false;
    let store = PieceStore::open(c).await.unwrap();
    let e = store.get("1_s0").await.no_ok();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    assert!(!format!("{e} {e:?}").contains(&wrong));
}

#[tokio::test]
async fn unreachable_endpoint_is_a_retryable_backend_error() {
    let mut c = Config::from_url("http://127.0.0.1:9/bucket").unwrap();
    c.store.access_key = Secret::new("AKIDUNREACHABLE");
    c.store.secret_key = Secret::new("unreachable-secret");
    c.store.max_retries = 1;
    c.store.min_retry_delay = Some(std::time::Duration::from_millis(10));
    let e = PieceStore::open(c).await.no_ok();
    assert_eq!(e.kind(), ErrorKind::Backend, "{e}");
    assert!(e.is_retryable(), "{e}");
    assert!(!e.to_string().contains("unreachable-secret"));
}

#[tokio::test]
async fn flipped_byte_on_disk_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let store = PieceStore::open(
        Config::from_url(&format!("file://{}?pack=false", dir.path().display())).unwrap(),
    )
    .await
    .unwrap();
    store.put("9_s1_p2", vec![7u8; 8192]).await.unwrap();
    let path = dir.path().join("9_s1_p2");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4000] ^= 0x80;
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(
        store.get("9_s1_p2").await.no_ok().kind(),
        ErrorKind::Corrupt
    );
    // A torn file (crash mid-write by another tool) with our trailer cut off is damage too.
    std::fs::write(&path, &bytes[..8192 + 19]).unwrap();
    let e = store.get("9_s1_p2").await.no_ok();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
}

#[tokio::test]
async fn file_pieces_stay_inside_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    // One file per piece, to look for them on disk.
    let store = PieceStore::open(
        Config::from_url(&format!("file://{}?pack=false", root.display())).unwrap(),
    )
    .await
    .unwrap();
    for k in ["../escape", "a/../../escape", "/etc/passwd"] {
        assert_eq!(
            store.put(k, vec![1u8]).await.no_ok().kind(),
            ErrorKind::InvalidKey
        );
    }
    store
        .put("nested/dir/piece", vec![1u8, 2, 3])
        .await
        .unwrap();
    assert!(root.join("nested/dir/piece").is_file());
    assert!(!dir.path().join("escape").exists());
}

#[tokio::test]
async fn conditional_writes_off_still_refuses_different_bytes() {
    let Some(s) = server(ServerKind::Moto) else {
        return;
    };
    let mut c = s.config(&unique_name("condoff"), 0);
    c.backend.conditional_writes = piecestore::config::ConditionalWrites::Off;
    let store = PieceStore::open(c).await.unwrap();
    store.put("k", vec![1u8; 10]).await.unwrap();
    store.put("k", vec![1u8; 10]).await.unwrap();
    assert_eq!(
        store.put("k", vec![2u8; 10]).await.no_ok().kind(),
        ErrorKind::AlreadyExists
    );
}

#[tokio::test]
async fn a_backend_that_ignores_conditional_writes_is_detected_and_never_overwritten() {
    let Some(s) = server(ServerKind::Moto) else {
        return;
    };
    let name = unique_name("ignores-inm");
    let proxy =
        piecestore_tests::start_proxy(&s.endpoint, piecestore_tests::ProxyMode::StripIfNoneMatch);
    let mut base = s.config_through(&proxy, &name, "");
    // Conditional writes of pieces: one object per piece (packs have unique names).
    base.pack.enabled = Some(false);

    // Trusting the header here would overwrite silently: this backend really ignores it.
    let mut trusting = base.clone();
    trusting.backend.conditional_writes = piecestore::config::ConditionalWrites::On;
    let t = PieceStore::open(trusting).await.unwrap();
    t.put("trusting", vec![1u8; 8]).await.unwrap();
    t.put("trusting", vec![2u8; 8])
        .await
        .expect("the server ignored If-None-Match");
    assert_eq!(
        &t.get("trusting").await.unwrap()[..],
        &[2u8; 8],
        "overwritten: the proxy works"
    );

    // Auto (the default) probes on first write, finds out, and falls back to HEAD-before-PUT.
    let store = PieceStore::open(base).await.unwrap();
    store.put("k", vec![1u8; 8]).await.unwrap();
    store
        .put("k", vec![1u8; 8])
        .await
        .expect("same bytes: a retried put");
    assert_eq!(
        store.put("k", vec![2u8; 8]).await.no_ok().kind(),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        &store.get("k").await.unwrap()[..],
        &[1u8; 8],
        "never overwritten"
    );
    let raw = store.shard_object_store(0).unwrap();
    let mut in_bucket: Vec<String> = futures::TryStreamExt::try_collect::<Vec<_>>(raw.list(None))
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.location.to_string())
        .collect();
    in_bucket.sort();
    assert_eq!(
        in_bucket,
        ["k", "trusting"],
        "the probe objects were cleaned up"
    );
}

#[tokio::test]
async fn failed_requests_are_retried_with_backoff_as_configured() {
    use piecestore_tests::{ProxyMode, start_proxy};
    use std::time::{Duration, Instant};
    let Some(s) = server(ServerKind::Moto) else {
        return;
    };
    let name = unique_name("retry");
    let mut base = s.config(&name, 0);
    base.backend.check_bucket = false;
    base.store.min_retry_delay = Some(Duration::from_millis(50));

    // Two 503s, three retries allowed: the call succeeds, after at least 50 + 100 ms of backoff.
    let mut patient = base.clone();
    patient.store.bucket_url = format!(
        "{}/{name}",
        start_proxy(&s.endpoint, ProxyMode::FailFirst(2))
    );
    patient.store.max_retries = 3;
    let store = PieceStore::open(patient).await.unwrap();
    let started = Instant::now();
    store
        .put("retried", vec![5u8; 100])
        .await
        .expect("succeeds after two 503s");
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "backoff waited {:?}",
        started.elapsed()
    );
    assert_eq!(&store.get("retried").await.unwrap()[..], &[5u8; 100]);

    // No retries allowed: the 503 surfaces as a retryable backend error.
    let mut impatient = base;
    impatient.store.bucket_url = format!(
        "{}/{name}",
        start_proxy(&s.endpoint, ProxyMode::FailFirst(1))
    );
    impatient.store.max_retries = 0;
    let store = PieceStore::open(impatient).await.unwrap();
    let e = store.get("retried").await.no_ok();
    assert_eq!(e.kind(), ErrorKind::Backend, "{e}");
    assert!(e.is_retryable(), "{e}");
    assert!(e.to_string().contains("503"), "{e}");
}

/// A config in the original's layout creates missing buckets at open, as the original does;
/// a URL opts in with `create_bucket=true`. Elsewhere the default is not to (see above).
#[tokio::test]
async fn missing_buckets_are_created_at_open_like_the_original() {
    for (kind, original) in [
        (ServerKind::Moto, true),
        (ServerKind::S3sFs, true),
        (ServerKind::Moto, false),
    ] {
        let Some(s) = server(kind) else { continue };
        let name = unique_name("autocreate");
        // Four shards, no bucket created beforehand (the harness's config() would create them).
        let c = if original {
            let toml = format!(
                "[PieceStore]\nShards = 4\n[PieceStore.Store]\nStorage = \"minio\"\n\
                 BucketURL = \"{}/{name}-%d\"\nAccessKey = \"{}\"\nSecretKey = \"{}\"\n\
                 MaxRetries = 2\n",
                s.endpoint, s.access_key, s.secret_key
            );
            Config::from_toml(&toml).unwrap()
        } else {
            let mut c = s.config(&format!("{name}-0"), 0);
            c.store.bucket_url = format!("{}/{name}-%d?shards=4&create_bucket=true", s.endpoint);
            let opts = Config::from_url(&c.store.bucket_url).unwrap();
            c.store.bucket_url = opts.store.bucket_url;
            c.shards = opts.shards;
            c.backend.create_bucket = opts.backend.create_bucket;
            c
        };
        let store = PieceStore::open(c)
            .await
            .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        for i in 0..40 {
            store
                .put(&format!("{i}_s0"), vec![i as u8; 10])
                .await
                .unwrap();
        }
        if let Some(dir) = &s.data_dir {
            for i in 0..4 {
                assert!(
                    dir.join(format!("{name}-{i}")).is_dir(),
                    "bucket {i} was created on disk"
                );
            }
        }
        for i in 0..4 {
            let raw = store.shard_object_store(i).unwrap();
            let n = futures::TryStreamExt::try_collect::<Vec<_>>(raw.list(None))
                .await
                .unwrap()
                .len();
            assert!(n > 0, "{kind:?}: shard {i} bucket holds its pieces");
        }
    }
}

/// `Metrics = false` (here as a URL option) keeps no metrics; operations still work.
#[tokio::test]
async fn metrics_can_be_turned_off() {
    let store = PieceStore::open(Config::from_url("memory://?metrics=false").unwrap())
        .await
        .unwrap();
    store.put("1_s0", &b"x"[..]).await.unwrap();
    let m = store.metrics();
    assert!(!m.enabled && m.ops.is_empty());
    assert!(!m.to_prometheus().lines().any(|l| !l.starts_with('#')));
}

/// A get whose connection drops mid-body resumes from the last byte received (a ranged retry
/// pinned to the object's ETag, as `object_store` makes it) instead of starting over, and
/// still verifies the whole piece; a streamed get likewise. On each S3 server, and on
/// `piecestore serve`'s S3 API.
/// `GetTimeout`, `PutTimeout`, `DeleteTimeout` and `ListTimeout` each cut off their operation
/// on a server that holds it, long before `RequestTimeout` would, with a retryable error that
/// names the option; operations the server answers are not affected.
#[tokio::test]
async fn per_operation_timeouts_cut_off_a_server_that_never_answers() {
    use piecestore_tests::{Proxy, ProxyMode};
    use std::time::{Duration, Instant};
    let Some(s) = server(ServerKind::S3sFs) else {
        return;
    };
    let bucket = unique_name("deadlines");
    let mut seed = s.config(&bucket, 0);
    seed.pack.enabled = Some(false);
    PieceStore::open(seed.clone())
        .await
        .expect("open")
        .put("held_1", "stored before the server stalls")
        .await
        .expect("put held_1 directly");
    let proxy = Proxy::start(&s.endpoint, ProxyMode::Hold("held"));
    let seed_again = seed.clone();
    let mut c = seed;
    c.store.bucket_url = c.store.bucket_url.replace(&s.endpoint, &proxy.endpoint);
    // s3s-fs honours create-only puts: no probe (its clean-up is a bulk delete, held here).
    c.backend.conditional_writes = piecestore::config::ConditionalWrites::On;
    // One attempt would wait a minute; the deadlines are far shorter.
    c.backend.request_timeout = Duration::from_secs(60);
    for (name, value) in [
        ("get_timeout", "300ms"),
        ("put-timeout", "300ms"),
        ("DeleteTimeout", "300ms"),
        ("list_timeout", "300ms"),
    ] {
        c.set_option(name, piecestore::config::OptionValue::Str(value.into()))
            .expect(name);
    }
    let store = PieceStore::open(c).await.expect("open through the proxy");

    // A key the server answers for works as usual under the deadlines.
    store.put("fine_1", "answered").await.expect("put fine_1");
    assert_eq!(
        &store.get("fine_1").await.expect("get fine_1")[..],
        b"answered"
    );

    let check = |what: &str, option: &str, started: Instant, e: piecestore::Error| {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} waited {:?}: its deadline did not cut it off",
            started.elapsed()
        );
        assert_eq!(e.kind(), ErrorKind::Backend, "{what}: {e}");
        assert!(e.is_retryable(), "{what}: a timeout is retryable: {e}");
        assert!(e.to_string().contains(option), "{what}: {e}");
    };
    let t = Instant::now();
    check("get", "GetTimeout", t, store.get("held_1").await.no_ok());
    let t = Instant::now();
    check("head", "GetTimeout", t, store.head("held_1").await.no_ok());
    let t = Instant::now();
    check(
        "put",
        "PutTimeout",
        t,
        store.put("held_2", "x").await.no_ok(),
    );
    let t = Instant::now();
    check(
        "delete",
        "DeleteTimeout",
        t,
        store.delete("held_1").await.no_ok(),
    );
    let t = Instant::now();
    let listed: Vec<_> = futures::StreamExt::collect(store.list("held_")).await;
    let e = listed
        .into_iter()
        .find_map(|r| r.err())
        .expect("a held listing ends with an error");
    check("list", "ListTimeout", t, e);

    // Nothing was lost: the held piece is still there, read without the proxy.
    let direct = PieceStore::open(seed_again).await.expect("open");
    assert_eq!(
        &direct.get("held_1").await.expect("held_1 survives")[..],
        b"stored before the server stalls"
    );
}

/// The same deadlines on a packed store: a put and a delete wait for their group's pack write,
/// and a get reads its bytes from a pack; with the server holding every pack request, each
/// fails with its option named, and the piece already stored is untouched.
#[tokio::test]
async fn per_operation_timeouts_bound_packed_puts_gets_and_deletes() {
    use piecestore_tests::{Proxy, ProxyMode};
    use std::time::{Duration, Instant};
    let Some(s) = server(ServerKind::S3sFs) else {
        return;
    };
    let bucket = unique_name("deadlines-p");
    let mut seed = s.config(&bucket, 0);
    seed.pack.enabled = Some(true);
    seed.backend.conditional_writes = piecestore::config::ConditionalWrites::On;
    let store = PieceStore::open(seed.clone()).await.expect("open");
    store
        .put("1_s0", "packed before the server stalls")
        .await
        .expect("put 1_s0 directly");
    store.close().await;
    drop(store);

    // Every request for a pack object is held (once opened); listings (the prefix is
    // URL-encoded) are not.
    let proxy = Proxy::start(&s.endpoint, ProxyMode::Hold(".piecestore/packs/"));
    let mut c = seed.clone();
    c.store.bucket_url = c.store.bucket_url.replace(&s.endpoint, &proxy.endpoint);
    c.backend.request_timeout = Duration::from_secs(60);
    c.backend.get_timeout = Duration::from_millis(300);
    c.backend.put_timeout = Duration::from_millis(300);
    c.backend.delete_timeout = Duration::from_millis(300);
    // Opening reads the pack (it checks what the index may lack): forwarded, then held.
    proxy.set_holding(false);
    let store = PieceStore::open(c).await.expect("open through the proxy");
    proxy.set_holding(true);
    let started = Instant::now();
    // (A head is answered by the index, without the server.)
    let results = [
        ("get", "GetTimeout", store.get("1_s0").await.map(|_| ())),
        ("put", "PutTimeout", store.put("2_s0", "never stored").await),
        ("delete", "DeleteTimeout", store.delete("1_s0").await),
    ];
    // Bounded, not timed: each would wait a minute for its one request.
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "{:?}",
        started.elapsed()
    );
    for (what, option, result) in results {
        let e = result.no_ok();
        assert_eq!(e.kind(), ErrorKind::Backend, "{what}: {e}");
        assert!(e.is_retryable(), "{what}: {e}");
        assert!(e.to_string().contains(option), "{what}: {e}");
    }

    let direct = PieceStore::open(seed).await.expect("open");
    assert_eq!(
        &direct.get("1_s0").await.expect("1_s0 survives")[..],
        b"packed before the server stalls"
    );
    assert_eq!(
        direct.get("2_s0").await.no_ok().kind(),
        ErrorKind::NotFound,
        "a put whose pack never reached the server stored nothing"
    );
}

#[tokio::test]
async fn a_get_cut_mid_body_resumes_from_the_last_byte() {
    use futures::TryStreamExt;
    use piecestore_tests::{Proxy, ProxyMode, pseudo_random};
    use std::time::Duration;
    let cut = 1 << 20;
    for kind in [ServerKind::S3sFs, ServerKind::Moto, ServerKind::Serve] {
        let Some(s) = server(kind) else { continue };
        let name = unique_name("resume");
        let mut c = s.config(&name, 0);
        c.backend.check_bucket = false;
        c.pack.enabled = Some(false);
        c.store.min_retry_delay = Some(Duration::from_millis(10));
        c.store.max_retries = 3;
        let data = bytes::Bytes::from(pseudo_random((5 << 20) + 3, 7));
        PieceStore::open(c.clone())
            .await
            .unwrap()
            .put("big_s0", data.clone())
            .await
            .unwrap();

        // A get, then a streamed get, each through a proxy that cuts the body at 1 MiB and
        // the retry's again 1 MiB further on.
        for streamed in [false, true] {
            let proxy = Proxy::start(
                &s.endpoint,
                ProxyMode::CutBodies {
                    after: cut,
                    times: 2,
                },
            );
            let mut via = c.clone();
            via.store.bucket_url = via.store.bucket_url.replace(&s.endpoint, &proxy.endpoint);
            let store = PieceStore::open(via).await.unwrap();
            let got = if streamed {
                let piece = store.get_stream("big_s0").await.unwrap();
                let chunks: Vec<bytes::Bytes> = piece.chunks.try_collect().await.unwrap();
                chunks.concat().into()
            } else {
                store.get("big_s0").await.unwrap()
            };
            assert!(got == data, "{kind:?}, streamed {streamed}: other bytes");
            let ranges: Vec<_> = proxy
                .seen()
                .into_iter()
                .filter(|r| r.method == "GET" && r.target.contains("big_s0"))
                .map(|r| r.range)
                .collect();
            let last = data.len() - 1;
            let resumed = [
                None,
                Some(format!("bytes={cut}-{last}")),
                Some(format!("bytes={}-{last}", 2 * cut)),
            ];
            assert_eq!(ranges, resumed, "{kind:?}, streamed {streamed}");
        }
    }
}

/// What a key holds as far as its one writer knows.
#[derive(Clone)]
enum Held {
    Absent,
    Present(bytes::Bytes),
    /// A put of these bytes failed: the piece is either these bytes or nothing.
    Unknown(bytes::Bytes),
    /// A delete of these bytes failed: the piece is either these bytes or nothing, and may
    /// stay readable here although the delete took effect where it was stored (a packed
    /// store's delete record reached the bucket, its acknowledgement did not).
    DeleteFailed(bytes::Bytes),
}

/// Issue 25: a store on a flaky network. Through a proxy that faults 20 % of requests (503,
/// 500, resets, answers cut in half — a GET's body mid-way, a PUT's or DELETE's
/// acknowledgement after the server acted — and 100 ms stalls), 16 writers run puts, gets,
/// streamed gets and deletes on keys of their own, packed and unpacked, over two buckets, then
/// gc runs through the same proxy. Every failed call is a typed, retryable error; no get
/// returns other bytes; afterwards, read without the proxy, every acknowledged put is there
/// byte-exact, every acknowledged delete is gone, and fsck is clean. CI runs 1,000 operations
/// unpacked and 250 packed; `PIECESTORE_FAULT_OPS=10000` runs the full count on each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flaky_network_loses_nothing_acknowledged() {
    use futures::TryStreamExt;
    use piecestore::pack::fsck::FsckOptions;
    use piecestore::pack::gc::GcOptions;
    use piecestore_tests::{FAULT_KINDS, Proxy, ProxyMode, pseudo_random};
    use std::collections::BTreeMap;
    use std::time::Duration;
    let Some(s) = server(ServerKind::S3sFs) else {
        return;
    };
    let ops: usize = std::env::var("PIECESTORE_FAULT_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    const WRITERS: usize = 16;
    // Packed puts and deletes go through one pack writer per shard, whose group writes wait
    // out each fault in turn: the CI slice runs a quarter as many operations there.
    let full = std::env::var("PIECESTORE_FAULT_OPS").is_ok();
    for (packed, ops) in [(true, if full { ops } else { ops / 4 }), (false, ops)] {
        let name = unique_name(if packed { "faults-p" } else { "faults-u" });
        let mut c = s.config(&name, 2);
        c.backend.check_bucket = false;
        c.pack.enabled = Some(packed);
        c.store.min_retry_delay = Some(Duration::from_millis(5));
        // A request that hangs (an answer cut before the server's body ended, a stall) is
        // given up after 3 s, and retried.
        c.backend.request_timeout = Duration::from_secs(3);
        let direct = c.clone();
        let proxy = Proxy::start(
            &s.endpoint,
            ProxyMode::Faults {
                percent: 20,
                seed: 25 + u64::from(packed),
            },
        );
        c.store.bucket_url = c.store.bucket_url.replace(&s.endpoint, &proxy.endpoint);
        let started = std::time::Instant::now();
        let store = PieceStore::open(c).await.expect("open through the proxy");

        let tasks = (0..WRITERS).map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut held: BTreeMap<String, Held> = BTreeMap::new();
                let mut errors: BTreeMap<String, u64> = BTreeMap::new();
                let mut rng = (w as u64 + 1) * 0x9E37_79B9;
                let mut next = || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                for i in 0..ops / WRITERS {
                    let r = next();
                    let keys: Vec<String> = held.keys().cloned().collect();
                    let pick =
                        (!keys.is_empty()).then(|| keys[(r >> 8) as usize % keys.len()].clone());
                    let mut failed = |e: piecestore::Error, what: &str| {
                        assert!(
                            e.kind() == ErrorKind::Backend && e.is_retryable(),
                            "{what}: not a typed, retryable error: {e:?}"
                        );
                        *errors
                            .entry(format!("{what}: {}", e.kind().as_str()))
                            .or_default() += 1;
                    };
                    match (r % 10, pick) {
                        (0..=3, _) | (_, None) => {
                            let key = format!("w{w}_{i}_s0");
                            let len = match r % 97 {
                                0 => (1 << 20) + 4321,
                                1..=9 => 200_000,
                                _ => (r >> 20) as usize % 9000,
                            };
                            let d = bytes::Bytes::from(pseudo_random(len, r));
                            let state = match store.put(&key, d.clone()).await {
                                Ok(()) => Held::Present(d),
                                Err(e) => {
                                    failed(e, "put");
                                    Held::Unknown(d)
                                }
                            };
                            held.insert(key, state);
                        }
                        (4..=7, Some(key)) => {
                            let got = if r % 3 == 0 {
                                match store.get_stream(&key).await {
                                    Ok(p) => p
                                        .chunks
                                        .try_collect::<Vec<_>>()
                                        .await
                                        .map(|c| bytes::Bytes::from(c.concat())),
                                    Err(e) => Err(e),
                                }
                            } else {
                                store.get(&key).await
                            };
                            let state = held[&key].clone();
                            match (got, state) {
                                (Ok(b), Held::Present(d)) => {
                                    assert!(b == d, "get {key}: other bytes")
                                }
                                (Ok(b), Held::Unknown(d)) => {
                                    assert!(b == d, "get {key}: other bytes");
                                    held.insert(key, Held::Present(d));
                                }
                                (Ok(b), Held::DeleteFailed(d)) => {
                                    assert!(b == d, "get {key}: other bytes")
                                }
                                (Ok(_), Held::Absent) => {
                                    panic!("get {key}: a deleted piece came back")
                                }
                                (Err(e), Held::Present(_)) => failed(e, "get"),
                                (Err(e), _) if e.kind() == ErrorKind::NotFound => {}
                                (Err(e), _) => failed(e, "get"),
                            }
                        }
                        (_, Some(key)) => {
                            let state = match (store.delete(&key).await, held[&key].clone()) {
                                (Ok(()), _) => Held::Absent,
                                (
                                    Err(e),
                                    Held::Present(d) | Held::Unknown(d) | Held::DeleteFailed(d),
                                ) => {
                                    failed(e, "delete");
                                    Held::DeleteFailed(d)
                                }
                                (Err(e), Held::Absent) => {
                                    failed(e, "delete");
                                    Held::Absent
                                }
                            };
                            held.insert(key, state);
                        }
                    }
                }
                (held, errors)
            })
        });
        let mut held = BTreeMap::new();
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        for t in tasks {
            let (h, e) = t.await.expect("a writer panicked");
            held.extend(h);
            for (k, n) in e {
                *errors.entry(k).or_default() += n;
            }
        }
        let ran = started.elapsed();
        // Compaction through the same flaky network: it finishes or fails retryably.
        let gc = store
            .gc(
                GcOptions {
                    grace: Some(Duration::ZERO),
                    garbage_ratio: Some(0.0),
                    dry_run: false,
                },
                &|_| {},
            )
            .await;
        if let Err(e) = &gc {
            assert!(e.is_retryable(), "gc: {e:?}");
        }
        let collected = started.elapsed() - ran;
        store.close().await;
        let faults = proxy.faults();
        eprintln!(
            "packed {packed}: {ops} operations in {ran:.1?}, gc {collected:.1?}, {} requests, faults {:?}, errors {errors:?}, gc {:?}",
            proxy.seen().len(),
            FAULT_KINDS.iter().zip(faults).collect::<Vec<_>>(),
            gc.as_ref().map(|r| r.packs_compacted)
        );
        assert!(
            faults.iter().all(|&n| n > 0),
            "every fault kind was injected: {faults:?}"
        );

        // Read without the proxy: what was acknowledged holds.
        let reader = PieceStore::open(direct).await.expect("open directly");
        let (mut present, mut absent, mut unknown) = (0, 0, 0);
        for (key, state) in &held {
            let got = reader.get(key).await;
            match state {
                Held::Present(d) => {
                    present += 1;
                    let b = match got {
                        Ok(b) => b,
                        Err(e) => {
                            use object_store::ObjectStoreExt;
                            let raw = reader
                                .shard_object_store(reader.shard_of(key))
                                .expect("shard");
                            let there = raw
                                .head(&object_store::path::Path::from(key.as_str()))
                                .await;
                            panic!(
                                "acknowledged {key} ({} bytes) was lost: {e}; its object: {there:?}",
                                d.len()
                            )
                        }
                    };
                    assert!(b == *d, "{key}: other bytes");
                }
                Held::Absent => {
                    absent += 1;
                    assert_eq!(
                        got.map(|_| ()).unwrap_err().kind(),
                        ErrorKind::NotFound,
                        "{key}"
                    );
                }
                Held::Unknown(d) | Held::DeleteFailed(d) => {
                    unknown += 1;
                    match got {
                        Ok(b) => assert!(b == *d, "{key}: other bytes"),
                        Err(e) => assert_eq!(e.kind(), ErrorKind::NotFound, "{key}: {e}"),
                    }
                }
            }
        }
        eprintln!(
            "packed {packed}: {present} acknowledged pieces read back, {absent} deletes held, {unknown} unknown"
        );
        assert!(
            present > ops / 10,
            "too few puts were acknowledged: {present}"
        );
        if packed {
            let report = reader
                .fsck(FsckOptions::default(), &|_| {})
                .await
                .expect("fsck");
            assert!(report.is_clean(), "fsck after faults: {report:?}");
        }
    }
}
