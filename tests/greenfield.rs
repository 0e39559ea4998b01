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
            Storage = "s3"
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
            ("AWS_ACCESS_KEY", s.access_key.as_str()),
            ("AWS_SECRET_KEY", s.secret_key.as_str()),
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

        // A piece with no checksum at all reads as-is and is reported unverified.
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
