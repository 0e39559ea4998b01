//! `piecestore migrate` end to end: 10k mixed-size pieces from an unsharded S3 bucket (s3s-fs)
//! into a 4-shard file store with jump placement, killed with SIGKILL halfway and resumed.
//!
//! The migrations run 64 pieces at a time: s3s-fs answers some GETs about 40 ms late (one at a
//! time, p50 3.6 ms and p90 44 ms), so at 8 in flight the test spent minutes waiting.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use object_store::path::Path as ObjPath;
use object_store::{ObjectStoreExt, PutPayload};
use piecestore::{Config, PieceStore};
use piecestore_tests::{ServerKind, server, unique_name};

const PIECES: usize = 10_000;

fn piece(i: usize) -> (String, Vec<u8>) {
    // Mostly small pieces, some of 64-128 KiB, a few empty.
    let len = match i % 50 {
        0 => 64 * 1024 + (i * 131) % (64 * 1024),
        1 => 0,
        _ => 100 + (i * 977) % 8000,
    };
    let key = if i.is_multiple_of(2) {
        format!("s{i}_s0_v1")
    } else {
        format!("e{}_s{}_p{}_v1", i / 7, i % 7, i % 6)
    };
    let data = piecestore_tests::pseudo_random(len, i as u64 + 1);
    (key, data)
}

fn count_files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| {
            let p = e.path();
            if p.ends_with(".piecestore") {
                0 // PieceStore's own metadata (the layout marker), not pieces
            } else if p.is_dir() {
                count_files(&p)
            } else {
                usize::from(!p.to_string_lossy().contains('#'))
            }
        })
        .sum()
}

/// `piecestore migrate` with the test server's keys (`creds`: access key and secret key) in the
/// environment, as a user would give them.
fn migrate_cmd(creds: (&str, &str), from: &str, to: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_piecestore"));
    c.args(["migrate", "--from", from, "--to", to, "--concurrency", "64"])
        .args(extra);
    c.env("AWS_ACCESS_KEY_ID", creds.0)
        .env("AWS_SECRET_ACCESS_KEY", creds.1);
    c.env_remove("BUCKET_URL")
        .env_remove("MINIO_ACCESS_KEY")
        .env_remove("MINIO_SECRET_KEY");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_survives_sigkill_and_resumes_to_identical_stores() {
    let Some(s) = server(ServerKind::S3sFs) else {
        return;
    };
    let creds = (s.access_key.as_str(), s.secret_key.as_str());
    let bucket = unique_name("migrate-src");
    // The original's layout: one object per piece (and the CLI below opens this bucket too,
    // which a packed store's index, one process's, would not allow while this one is open).
    let mut source_config = s.config(&bucket, 0);
    source_config
        .set_option("Pack", piecestore::config::OptionValue::Bool(false))
        .unwrap();
    // Those pieces carry no checksum: reading them is allowed explicitly (here and, below, by
    // the source URL's `allow_unverified`); by default they are refused as corrupt.
    source_config
        .set_option(
            "AllowUnverified",
            piecestore::config::OptionValue::Bool(true),
        )
        .unwrap();
    let source = PieceStore::open(source_config).await.unwrap();
    let (keys, datas): (Vec<String>, Vec<Vec<u8>>) = (0..PIECES).map(piece).unzip();
    let results = source
        .put_many(keys.iter().cloned().zip(datas.iter().cloned()))
        .await;
    assert!(results.iter().all(Result::is_ok));
    // Twenty pieces the original wrote without a checksum.
    let raw = source.shard_object_store(0).unwrap();
    for i in 0..20 {
        raw.put(
            &ObjPath::from(format!("legacy{i}_s0")),
            PutPayload::from(vec![i as u8; 300]),
        )
        .await
        .unwrap();
    }
    let total = PIECES + 20;

    let dir = tempfile::tempdir().unwrap();
    let refused = migrate_cmd(creds, &format!("{}/{bucket}", s.endpoint), "memory://", &[])
        .output()
        .unwrap();
    let refusal = String::from_utf8_lossy(&refused.stdout).into_owned()
        + &String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && refusal.contains("AllowUnverified"),
        "unverified pieces are refused unless allowed: {refusal}"
    );
    let from = format!("{}/{bucket}?allow_unverified=true", s.endpoint);
    let to = format!(
        // One file per piece, so the test can watch pieces land and kill halfway.
        "file://{}/shard-%d?shards=4&placement=jump&pack=false",
        dir.path().display()
    );

    // Dry run: counts, copies nothing.
    let out = migrate_cmd(creds, &from, &to, &["--dry-run"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with(&format!("would copy {total} pieces")),
        "{text}"
    );
    assert_eq!(count_files(dir.path()), 0);

    // Start, and SIGKILL once a good share of the pieces has landed.
    let mut child = migrate_cmd(creds, &from, &to, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let n = count_files(dir.path());
        assert!(
            child.try_wait().unwrap().is_none(),
            "migration finished before it could be killed ({n} files)"
        );
        if n >= total * 2 / 5 {
            break;
        }
        assert!(Instant::now() < deadline, "migration made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let landed = count_files(dir.path());
    assert!(landed < total, "killed halfway: {landed} of {total}");

    // Whatever landed is whole and verified.
    let dest = PieceStore::open(Config::from_url(&to).unwrap())
        .await
        .unwrap();
    let present: Vec<String> = futures::TryStreamExt::try_collect::<Vec<_>>(dest.list(""))
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    for r in dest.get_many(&present).await {
        r.expect("every piece visible after SIGKILL reads back verified");
    }

    // Resume: the same command finishes the job, skipping what is there.
    let out = migrate_cmd(creds, &from, &to, &[]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copied: usize = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let skipped: usize = text
        .split("skipped ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        skipped >= present.len() - 8,
        "resumed, not restarted: {text}"
    );
    assert_eq!(copied + skipped, total, "{text}");
    assert!(text.contains("failed 0"), "{text}");

    // The destination holds every piece written to the source, byte for byte.
    let mut all_keys = keys.clone();
    let mut all_datas = datas.clone();
    all_keys.extend((0..20).map(|i| format!("legacy{i}_s0")));
    all_datas.extend((0..20).map(|i| vec![i as u8; 300]));
    let from_dst = dest.get_many(&all_keys).await;
    for ((k, want), got) in all_keys.iter().zip(&all_datas).zip(from_dst) {
        let got = got.unwrap_or_else(|e| panic!("{k}: {e}"));
        assert!(got.as_ref() == want.as_slice(), "{k} differs");
    }
    let in_dest = futures::TryStreamExt::try_collect::<Vec<_>>(dest.list(""))
        .await
        .unwrap()
        .len();
    assert_eq!(in_dest, total, "nothing extra at the destination");
    // Every destination shard got its share.
    for i in 0..4 {
        assert!(
            count_files(&dir.path().join(format!("shard-{i}"))) > total / 8,
            "shard {i}"
        );
    }
    // A third run finds nothing to do.
    let out = migrate_cmd(creds, &from, &to, &["--dry-run"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("would copy 0 pieces"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_concurrency_out_of_range_is_refused_with_the_cores_bounds() {
    for bad in ["0", "4097"] {
        let out = Command::new(env!("CARGO_BIN_EXE_piecestore"))
            .args(["migrate", "--from", "memory://", "--to", "memory://"])
            .args(["--concurrency", bad])
            .env_remove("BUCKET_URL")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad}: {stderr}");
        assert!(
            stderr.contains(&format!("concurrency must be from 1 to 4096, not {bad}")),
            "{bad}: {stderr}"
        );
    }
}
