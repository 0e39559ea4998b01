//! Greenfield storage providers' data in place: stores laid out exactly as the original Go
//! piecestore lays them out, opened with an original-style config.

use std::collections::{BTreeMap, HashMap};

use object_store::path::Path;
use object_store::{Attribute, Attributes, PutOptions, PutPayload};
use piecestore::checksum::crc32c;
use piecestore::shard::fnv1a32;
use piecestore::{Config, ErrorKind, PieceStore};
use piecestore_tests::{NoOk, ServerKind, server, unique_name};

fn bytes_for(key: &str, len: usize) -> Vec<u8> {
    piecestore_tests::pseudo_random(len, u64::from(fnv1a32(key.as_bytes())))
}

/// Writes `key` as the original does: the raw bytes, metadata `Crc32c` = decimal of the uint32
/// (`None`: no metadata, as pieces from other tools).
async fn put_like_the_original(store: &PieceStore, key: &str, data: &[u8], crc: Option<u32>) {
    let shard = (fnv1a32(key.as_bytes()) % 4) as usize; // the original's placement, by hand
    let raw = store.shard_object_store(shard).unwrap();
    let mut attributes = Attributes::new();
    if let Some(c) = crc {
        attributes.insert(Attribute::Metadata("Crc32c".into()), c.to_string().into());
    }
    raw.put_opts(
        &Path::parse(key).unwrap(),
        PutPayload::from(data.to_vec()),
        PutOptions {
            attributes,
            ..Default::default()
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn an_original_sharded_s3_store_reads_in_place_and_verifies_every_checksum() {
    for kind in [ServerKind::Moto, ServerKind::S3sFs] {
        let Some(s) = server(kind) else { continue };
        let name = unique_name("greenfield");
        for i in 0..4 {
            s.create_bucket(&format!("{name}-{i}"));
        }
        // The original's config file, as an SP has it (other sections included).
        let toml = format!(
            r#"
            [SpAccount]
            SpOperatorAddress = "0x0000000000000000000000000000000000000001"

            [PieceStore]
            Shards = 4

            [PieceStore.Store]
            Storage = "minio"
            BucketURL = "{}/{name}-%d"
            MaxRetries = 5
            MinRetryDelay = 0
            TLSInsecureSkipVerify = false
            IAMType = "AKSK"
            "#,
            s.endpoint
        );
        let mut config = Config::from_toml(&toml).unwrap();
        let env: HashMap<&str, &str> = [
            ("MINIO_ACCESS_KEY", s.access_key.as_str()),
            ("MINIO_SECRET_KEY", s.secret_key.as_str()),
        ]
        .into();
        config
            .apply_env(&|k| env.get(k).map(|v| v.to_string()))
            .unwrap();
        let store = PieceStore::open(config).await.unwrap();

        // Objects 1..=12: segment pieces s{id}_s{seg} and EC pieces e{id}_s{seg}_p{i}.
        let mut written = BTreeMap::new();
        for id in 1..=12u64 {
            for seg in 0..2u32 {
                let mut keys = vec![format!("s{id}_s{seg}")];
                keys.extend((0..6).map(|p| format!("e{id}_s{seg}_p{p}")));
                for key in keys {
                    let data =
                        bytes_for(&key, 1000 + (id as usize * 37 + seg as usize * 11) % 3000);
                    let crc = crc32c(&data);
                    put_like_the_original(&store, &key, &data, Some(crc)).await;
                    written.insert(key, (data, crc));
                }
            }
        }
        let high = written.values().filter(|(_, c)| *c >= 1 << 31).count();
        assert!(
            high > 10 && high < written.len() - 10,
            "checksums on both sides of 2^31: {high}/{}",
            written.len()
        );

        for (key, (data, crc)) in &written {
            let got = store
                .get(key)
                .await
                .unwrap_or_else(|e| panic!("{kind:?} {key}: {e}"));
            assert!(got == *data, "{key}");
            let meta = store.head(key).await.unwrap();
            assert_eq!(
                (meta.size, meta.crc32c),
                (data.len() as u64, Some(*crc)),
                "{key}"
            );
        }
        let listed: Vec<_> = futures::TryStreamExt::try_collect::<Vec<_>>(store.list(""))
            .await
            .unwrap();
        assert_eq!(listed.len(), written.len());

        // Tampered pieces, one with a checksum below 2^31 and one above (the original's parser
        // skips the check for the latter): both Corrupt.
        for want_high in [false, true] {
            let (key, (data, crc)) = written
                .iter()
                .find(|(_, (_, c))| (*c >= 1 << 31) == want_high)
                .unwrap();
            let mut bad = data.clone();
            bad[data.len() / 2] ^= 0x20;
            put_like_the_original(&store, key, &bad, Some(*crc)).await;
            let e = store.get(key).await.no_ok();
            assert_eq!(
                e.kind(),
                ErrorKind::Corrupt,
                "{kind:?} {key} (crc {crc}): {e}"
            );
        }

        // A piece with no checksum at all reads as-is (the original's layout allows
        // unverified pieces) and is reported unverified.
        put_like_the_original(&store, "s99_s0", b"no checksum", None).await;
        assert_eq!(&store.get("s99_s0").await.unwrap()[..], b"no checksum");
        assert!(store.head("s99_s0").await.unwrap().unverified());
    }
}

#[tokio::test]
async fn an_original_file_store_reads_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("bucket");
    std::fs::create_dir_all(&root).unwrap();
    // The original writes root/{key} through a temp file `.{key}.tmp{N}` and a rename; a crash
    // can leave such a temp file behind.
    let pieces: Vec<(String, Vec<u8>)> = (1..=5)
        .map(|i| (format!("s{i}_s0"), bytes_for(&format!("f{i}"), 500 * i)))
        .collect();
    for (k, d) in &pieces {
        std::fs::write(root.join(k), d).unwrap();
    }
    std::fs::write(root.join(".s6_s0.tmp5577006791947779410"), b"half a piece").unwrap();

    let toml = format!(
        "[PieceStore]\n[PieceStore.Store]\nStorage = \"file\"\nBucketURL = \"{}\"\n",
        root.display()
    );
    let store = PieceStore::open(Config::from_toml(&toml).unwrap())
        .await
        .unwrap();
    for (k, d) in &pieces {
        assert!(store.get(k).await.unwrap() == *d, "{k}");
        let m = store.head(k).await.unwrap();
        assert_eq!(m.size, d.len() as u64);
        assert!(m.unverified(), "the original stores no checksum for files");
    }
    let mut keys: Vec<String> = futures::TryStreamExt::try_collect::<Vec<_>>(store.list(""))
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        pieces.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        "temp files are not pieces"
    );
    // New pieces written next to them carry a checksum.
    store.put("s7_s0", b"new".to_vec()).await.unwrap();
    assert!(!store.head("s7_s0").await.unwrap().unverified());
}

/// A config in the original's layout, with the environment given (not the process's).
fn original_config(toml: &str, env: &[(&str, &str)]) -> Config {
    let mut config = Config::from_toml(toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    config
        .apply_env(&|k| env.get(k).cloned())
        .unwrap_or_else(|e| panic!("{e}\n{toml}"));
    config
}

/// The checksum PieceStore keeps in a file's extended attribute, where the filesystem has them.
fn xattr_crc(path: &std::path::Path) -> Option<u32> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let name = c"user.piecestore.crc32c";
    let mut buf = [0u8; 32];
    // SAFETY: NUL-terminated path and name; `buf` is writable for its length.
    let n = unsafe {
        libc::getxattr(
            p.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n > 0).then(|| std::str::from_utf8(&buf[..n as usize]).ok()?.parse().ok())?
}

fn file_names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// In compatibility mode (a config in the original's layout) a directory holds exactly what the
/// original writes: one file per piece holding exactly its bytes, nothing else (no trailer, no
/// packs, no `.piecestore/`); PieceStore's checksum is in an extended attribute the original
/// never sees, and every read verifies it.
#[tokio::test]
async fn compatibility_mode_writes_exactly_the_originals_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("bucket");
    let toml = format!(
        "[PieceStore]\nShards = 0\n[PieceStore.Store]\nStorage = \"file\"\nBucketURL = \"{}\"\n\
         IAMType = \"\"\n",
        root.display()
    );
    let store = PieceStore::open(original_config(&toml, &[])).await.unwrap();
    assert!(!store.is_packed(), "no packing in compatibility mode");
    let sizes = [0usize, 1, 20, 100, 4096, 1 << 20, (1 << 20) + 1, 3 << 20];
    let pieces: Vec<(String, Vec<u8>)> = sizes
        .iter()
        .enumerate()
        .map(|(i, n)| (format!("s{i}_s0"), bytes_for(&format!("c{i}"), *n)))
        .collect();
    for (k, d) in &pieces {
        store.put(k, d.clone()).await.unwrap();
    }
    store.close().await;
    let mut keys: Vec<String> = pieces.iter().map(|(k, _)| k.clone()).collect();
    keys.sort();
    assert_eq!(file_names(&root), keys, "one file per piece, nothing else");
    let xattrs = xattr_crc(&root.join(&pieces[0].0)).is_some();
    for (k, d) in &pieces {
        assert!(
            std::fs::read(root.join(k)).unwrap() == *d,
            "{k}: the file holds other bytes"
        );
        if xattrs {
            assert_eq!(xattr_crc(&root.join(k)), Some(crc32c(d)), "{k}");
        }
    }
    eprintln!("extended attributes kept here: {xattrs}");

    let store = PieceStore::open(original_config(&toml, &[])).await.unwrap();
    for (k, d) in &pieces {
        assert!(store.get(k).await.unwrap() == *d, "{k}");
        let m = store.head(k).await.unwrap();
        assert_eq!(m.size, d.len() as u64, "{k}");
        assert_eq!(m.unverified(), !xattrs, "{k}");
    }
    if xattrs {
        // A flipped byte, its checksum kept: the read refuses it.
        let path = root.join(&pieces[4].0);
        let mut b = std::fs::read(&path).unwrap();
        b[100] ^= 1;
        let crc = xattr_crc(&path).unwrap();
        std::fs::write(&path, &b).unwrap();
        assert_eq!(
            xattr_crc(&path),
            Some(crc),
            "rewriting in place keeps the attribute"
        );
        assert_eq!(
            store.get(&pieces[4].0).await.no_ok().kind(),
            ErrorKind::Corrupt
        );
    }
}

/// The original's files are its raw bytes, whatever they end with: endings that look like a
/// PieceStore checksum trailer (or are one) read byte-exact, and a listing shows every file.
#[tokio::test]
async fn the_originals_files_read_byte_exact_whatever_they_end_with() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("bucket");
    std::fs::create_dir_all(&root).unwrap();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..7 {
        files.push((
            format!("s{i}_s0"),
            bytes_for(&format!("plain{i}"), 50 + i * 300),
        ));
    }
    // 100 bytes whose bytes -16..-8 hold their length minus 20 (a trailer's length field).
    let mut a = bytes_for("a", 100);
    a[84..92].copy_from_slice(&80u64.to_le_bytes());
    files.push(("e1_s0_p0".into(), a));
    let mut b = bytes_for("b", 300);
    b.extend_from_slice(b"PSCR");
    files.push(("e1_s0_p1".into(), b));
    let mut c = bytes_for("c", 300);
    c.extend_from_slice(b"PSCRC32C");
    files.push(("e1_s0_p2".into(), c));
    // A whole, valid trailer for its first bytes: still the original's bytes here.
    let mut d = bytes_for("d", 300);
    let crc = crc32c(&d);
    d.extend_from_slice(&crc.to_le_bytes());
    d.extend_from_slice(&300u64.to_le_bytes());
    d.extend_from_slice(b"PSCRC32C");
    files.push(("e1_s0_p3".into(), d));
    files.push(("e1_s0_p4".into(), vec![0u8; 20]));
    files.push(("e1_s0_p5".into(), Vec::new()));
    for (k, v) in &files {
        std::fs::write(root.join(k), v).unwrap();
    }
    let toml = format!(
        "[PieceStore]\n[PieceStore.Store]\nStorage = \"file\"\nBucketURL = \"{}\"\n",
        root.display()
    );
    let store = PieceStore::open(original_config(&toml, &[])).await.unwrap();
    for (k, v) in &files {
        let got = store
            .get(k)
            .await
            .unwrap_or_else(|e| panic!("{k} ({} bytes): {e}", v.len()));
        assert!(
            got == *v,
            "{k}: read {} bytes, the file has {}",
            got.len(),
            v.len()
        );
        assert_eq!(store.head(k).await.unwrap().size, v.len() as u64, "{k}");
    }
    let mut listed: Vec<(String, u64)> =
        futures::TryStreamExt::try_collect::<Vec<_>>(store.list(""))
            .await
            .unwrap()
            .into_iter()
            .map(|m| (m.key, m.size))
            .collect();
    listed.sort();
    let mut want: Vec<(String, u64)> = files
        .iter()
        .map(|(k, v)| (k.clone(), v.len() as u64))
        .collect();
    want.sort();
    assert_eq!(listed, want, "every file listed, at its size");
}

/// The original's config forms open: its `config.dump` template (empty strings and zeros, which
/// the SP fills with its defaults), field names in any case (go-toml matches them so), old
/// spellings and fields it ignores, `Shards = -1`, and `Shards = 1` with a literal `%d`.
/// PieceStore's own tables stay strict.
#[tokio::test]
async fn the_originals_config_forms_open() {
    // The template `config.dump` writes.
    let dump = "[PieceStore]\nShards = 0\n[PieceStore.Store]\nStorage = ''\nBucketURL = ''\n\
                MaxRetries = 0\nMinRetryDelay = 0\nTLSInsecureSkipVerify = false\nIAMType = ''\n";
    let c = Config::from_toml(dump).unwrap();
    assert_eq!(
        c.store.storage_kind(),
        piecestore::config::StorageKind::File
    );
    assert_eq!(c.store.url(), "./data");
    assert_eq!(c.store.iam_type, piecestore::config::IamType::Sa);
    assert_eq!(c.store.max_retries, 5, "the SP turns MaxRetries = 0 into 5");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = PieceStore::open(original_config(
        dump,
        &[("BUCKET_URL", data.to_str().unwrap())],
    ))
    .await
    .unwrap();
    store.put("s1_s0", b"dump".to_vec()).await.unwrap();
    assert_eq!(std::fs::read(data.join("s1_s0")).unwrap(), b"dump");

    // Names in another case, an older spelling, a field the original ignores.
    let cased = format!(
        "[PieceStore]\nshards = 0\n[PieceStore.store]\nstorage = \"file\"\nbucketurl = \"{}\"\n\
         IamType = \"AKSK\"\nTlsInsecureSkipVerify = true\nTestMode = true\nmaxretries = 2\n\
         MinRetryDelay = 1500000000\n",
        dir.path().join("cased").display()
    );
    let c = original_config(&cased, &[]);
    assert_eq!(c.store.iam_type, piecestore::config::IamType::Aksk);
    assert!(c.store.tls_insecure_skip_verify);
    assert_eq!(c.store.max_retries, 2);
    assert_eq!(
        c.store.min_retry_delay,
        Some(std::time::Duration::from_millis(1500)),
        "an integer MinRetryDelay is nanoseconds, as in the original"
    );
    let store = PieceStore::open(c).await.unwrap();
    store.put("s2_s0", b"cased".to_vec()).await.unwrap();

    // Shards = -1: one store. Shards = 1 with %d: one store, the %d kept as written.
    let minus = format!(
        "[PieceStore]\nShards = -1\n[PieceStore.Store]\nStorage = \"file\"\nBucketURL = \"{}\"\n",
        dir.path().join("minus").display()
    );
    let store = PieceStore::open(original_config(&minus, &[]))
        .await
        .unwrap();
    assert_eq!(store.shard_count(), 1);
    let one = format!(
        "[PieceStore]\nShards = 1\n[PieceStore.Store]\nStorage = \"file\"\nBucketURL = \"{}\"\n",
        dir.path().join("p-%d").display()
    );
    let store = PieceStore::open(original_config(&one, &[])).await.unwrap();
    assert_eq!(store.shard_count(), 1);
    store.put("s3_s0", b"literal".to_vec()).await.unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("p-%d/s3_s0")).unwrap(),
        b"literal"
    );

    // PieceStore's own tables stay strict.
    let strict = format!("{minus}[PieceStore.Pack]\nThreshhold = 1\n");
    let e = Config::from_toml(&strict).no_ok();
    assert!(e.to_string().contains("Threshhold"), "{e}");
}

/// `Storage = "s3"` with a non-AWS endpoint `http://host:port/bucket`: the original keeps the
/// bucket in its SDK endpoint's path, so its pieces are `bucket/<key>` inside the bucket, next
/// to an empty object named after the bucket. PieceStore reads and writes the same objects.
#[tokio::test]
async fn s3_with_a_non_aws_endpoint_uses_the_originals_keys() {
    let Some(s) = server(ServerKind::Moto) else {
        return;
    };
    let bucket = unique_name("gf-s3-path");
    s.create_bucket(&bucket);
    let toml = format!(
        "[PieceStore]\n[PieceStore.Store]\nStorage = \"s3\"\nBucketURL = \"{}/{bucket}\"\n\
         IAMType = \"AKSK\"\n",
        s.endpoint
    );
    let env = [
        ("AWS_ACCESS_KEY", s.access_key.as_str()),
        ("AWS_SECRET_KEY", s.secret_key.as_str()),
    ];
    let store = PieceStore::open(original_config(&toml, &env))
        .await
        .unwrap();
    store.put("s1_s0", b"ours".to_vec()).await.unwrap();
    // What the original wrote: `bucket/<key>`, with its Crc32c.
    let plain = {
        let mut c = s.config(&bucket, 0);
        c.set_option("Pack", piecestore::config::OptionValue::Bool(false))
            .unwrap();
        PieceStore::open(c).await.unwrap()
    };
    let raw = plain.shard_object_store(0).unwrap();
    let theirs = b"theirs".to_vec();
    let mut attributes = Attributes::new();
    attributes.insert(
        Attribute::Metadata("Crc32c".into()),
        crc32c(&theirs).to_string().into(),
    );
    raw.put_opts(
        &Path::from(format!("{bucket}/s2_s0")),
        PutPayload::from(theirs.clone()),
        PutOptions {
            attributes,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(&store.get("s2_s0").await.unwrap()[..], b"theirs");
    let mut keys: Vec<String> = futures::TryStreamExt::try_collect::<Vec<_>>(raw.list(None))
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.location.to_string())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            bucket.clone(),
            format!("{bucket}/s1_s0"),
            format!("{bucket}/s2_s0")
        ]
    );
    let mut listed: Vec<String> = futures::TryStreamExt::try_collect::<Vec<_>>(store.list(""))
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    listed.sort();
    assert_eq!(listed, ["s1_s0", "s2_s0"]);
}

/// The MinIO URL forms the original parses: no scheme (http), a `/minio/` prefix it strips, and
/// path segments after the bucket, which it ignores. Each names the bucket, pieces at its root.
#[tokio::test]
async fn the_originals_minio_url_forms_open() {
    let Some(s) = server(ServerKind::Moto) else {
        return;
    };
    let bucket = unique_name("gf-minio");
    s.create_bucket(&bucket);
    let host = s.endpoint.trim_start_matches("http://");
    let env = [
        ("MINIO_ACCESS_KEY", s.access_key.as_str()),
        ("MINIO_SECRET_KEY", s.secret_key.as_str()),
    ];
    let forms = [
        format!("{host}/{bucket}"),
        format!("http://{host}/minio/{bucket}"),
        format!("http://{host}/{bucket}/extra/segments"),
    ];
    for (i, url) in forms.iter().enumerate() {
        let toml = format!(
            "[PieceStore]\n[PieceStore.Store]\nStorage = \"minio\"\nBucketURL = \"{url}\"\n\
             IAMType = \"AKSK\"\n"
        );
        let store = PieceStore::open(original_config(&toml, &env))
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        store
            .put(&format!("s{i}_s0"), vec![i as u8; 10])
            .await
            .unwrap();
    }
    let mut c = s.config(&bucket, 0);
    c.set_option("Pack", piecestore::config::OptionValue::Bool(false))
        .unwrap();
    let plain = PieceStore::open(c).await.unwrap();
    let mut keys: Vec<String> = futures::TryStreamExt::try_collect::<Vec<_>>(plain.list(""))
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    keys.sort();
    assert_eq!(keys, ["s0_s0", "s1_s0", "s2_s0"]);
}

/// `MinRetryDelay = 0` (what `config.dump` writes) with retries: a 503 is retried, never a panic;
/// and `MaxRetries = 0` means the SP's 5.
#[tokio::test]
async fn a_zero_retry_delay_retries_without_panicking() {
    use piecestore_tests::{ProxyMode, start_proxy};
    let Some(s) = server(ServerKind::Moto) else {
        return;
    };
    let bucket = unique_name("gf-retry");
    s.create_bucket(&bucket);
    let proxy = start_proxy(&s.endpoint, ProxyMode::FailFirst(4));
    let toml = format!(
        "[PieceStore]\n[PieceStore.Store]\nStorage = \"minio\"\nBucketURL = \"{proxy}/{bucket}\"\n\
         MaxRetries = 0\nMinRetryDelay = 0\nIAMType = \"AKSK\"\n"
    );
    let env = [
        ("MINIO_ACCESS_KEY", s.access_key.as_str()),
        ("MINIO_SECRET_KEY", s.secret_key.as_str()),
    ];
    let store = PieceStore::open(original_config(&toml, &env))
        .await
        .expect("four 503s are retried (MaxRetries = 0 is 5)");
    store.put("s1_s0", b"after 503s".to_vec()).await.unwrap();
    assert_eq!(&store.get("s1_s0").await.unwrap()[..], b"after 503s");
}
