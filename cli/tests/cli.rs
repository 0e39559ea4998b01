//! The `piecestore` binary end to end: files and S3 (s3s-fs, which checks signatures), with
//! credentials from the environment and from a config.toml.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use piecestore_tests::{ServerKind, server, unique_name};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_piecestore"));
    // A clean environment for what the CLI reads, so the host's settings cannot leak in.
    for var in piecestore_tests::CLI_ENV {
        c.env_remove(var);
    }
    c
}

fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn piecestore");
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write stdin");
    }
    child.wait_with_output().expect("wait")
}

fn ok(cmd: &mut Command) -> Vec<u8> {
    let out = run(cmd, None);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn code(cmd: &mut Command) -> (i32, String) {
    let out = run(cmd, None);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// put / get / range / ls / stat / rm through the binary against `store_args`.
fn exercise(dir: &Path, args: &[&str], env: &[(&str, &str)]) {
    let cmd = || {
        let mut c = bin();
        c.current_dir(dir).args(args).envs(env.iter().copied());
        c
    };
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.join("in.bin"), &payload).unwrap();
    ok(cmd().args(["put", "42_s0", "in.bin"]));
    let out = run(cmd().args(["put", "e42_s0_p1", "-"]), Some(b"from stdin"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(cmd().args(["put", "dir/nested", "in.bin"]));

    assert!(ok(cmd().args(["get", "42_s0"])) == payload);
    ok(cmd().args(["get", "42_s0", "-o", "out.bin"]));
    assert!(std::fs::read(dir.join("out.bin")).unwrap() == payload);
    assert_eq!(ok(cmd().args(["get", "e42_s0_p1"])), b"from stdin");
    assert_eq!(
        ok(cmd().args(["get", "42_s0", "--offset", "1000", "--len", "5"])),
        &payload[1000..1005]
    );

    let ls = String::from_utf8(ok(cmd().args(["ls"]))).unwrap();
    let mut keys: Vec<&str> = ls.lines().collect();
    keys.sort();
    assert_eq!(keys, ["42_s0", "dir/nested", "e42_s0_p1"]);
    assert_eq!(
        String::from_utf8(ok(cmd().args(["ls", "e42"]))).unwrap(),
        "e42_s0_p1\n"
    );
    let long = String::from_utf8(ok(cmd().args(["ls", "-l", "42_"]))).unwrap();
    assert_eq!(
        long.split_whitespace().collect::<Vec<_>>(),
        ["300000", "42_s0"]
    );

    let stat = String::from_utf8(ok(cmd().args(["stat", "42_s0", "--json"]))).unwrap();
    let crc = piecestore::checksum::crc32c(&payload);
    assert!(
        stat.contains("\"size\":300000") && stat.contains(&format!("\"crc32c\":{crc}")),
        "{stat}"
    );
    assert!(stat.contains("\"verified\":true"), "{stat}");

    // Exit codes a script can rely on.
    assert_eq!(code(cmd().args(["get", "missing"])).0, 3);
    let (c, err) = code(cmd().args(["put", "42_s0", "-"]));
    assert_eq!(c, 4, "different bytes under an existing key: {err}");
    assert!(
        err.contains("PIECE_EXISTS") && err.contains("42_s0"),
        "{err}"
    );
    assert_eq!(code(cmd().args(["get", "../etc/passwd"])).0, 5);
    assert_eq!(
        code(cmd().args(["get", "42_s0", "--offset", "299999", "--len", "2"])).0,
        5
    );
    assert_eq!(code(cmd().args(["frobnicate"])).0, 2);

    ok(cmd().args(["rm", "42_s0", "dir/nested", "never-existed"]));
    assert_eq!(code(cmd().args(["get", "42_s0"])).0, 3);
    assert_eq!(
        String::from_utf8(ok(cmd().args(["ls"]))).unwrap(),
        "e42_s0_p1\n"
    );
    let out = String::from_utf8(ok(cmd().args(["rm", "--prefix", "e42_"]))).unwrap();
    assert_eq!(out, "deleted 1 pieces (10 bytes)\n");
    assert_eq!(String::from_utf8(ok(cmd().args(["ls"]))).unwrap(), "");
    assert_eq!(
        code(cmd().args(["rm", "--prefix", ""])).0,
        5,
        "an empty prefix is refused"
    );
}

#[test]
fn file_store_by_url_and_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file://{}/pieces", dir.path().display());
    exercise(dir.path(), &["--store", &store], &[]);
    // No --store, no config.toml: ./data, the original's default.
    let d2 = tempfile::tempdir().unwrap();
    exercise(d2.path(), &[], &[]);
    assert!(
        d2.path().join("data").is_dir(),
        "the default store is ./data"
    );
}

#[test]
fn s3_store_with_credentials_from_the_environment() {
    let Some(s) = server(ServerKind::S3sFs) else {
        return;
    };
    let bucket = unique_name("cli-env");
    s.create_bucket(&bucket);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}/{bucket}", s.endpoint);
    exercise(
        dir.path(),
        &["--store", &url],
        &[
            ("AWS_ACCESS_KEY_ID", s.access_key.as_str()),
            ("AWS_SECRET_ACCESS_KEY", s.secret_key.as_str()),
        ],
    );
    // Wrong secret: exit 7, and the secret is not printed.
    let mut c = bin();
    c.current_dir(dir.path())
        .args(["--store", &url, "ls"])
        .envs([
            ("AWS_ACCESS_KEY_ID", s.access_key.as_str()),
            ("AWS_SECRET_ACCESS_KEY", "definitely-not-the-secret"),
        ]);
    let (status, err) = code(&mut c);
    assert_eq!(status, 7, "{err}");
    assert!(
        !err.contains("definitely-not-the-secret") && !err.contains(&s.access_key),
        "{err}"
    );
}

#[test]
fn sharded_s3_store_from_an_original_style_config() {
    let Some(s) = server(ServerKind::S3sFs) else {
        return;
    };
    let name = unique_name("cli-toml");
    for i in 0..4 {
        s.create_bucket(&format!("{name}-{i}"));
    }
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[PieceStore]\nShards = 4\n\n[PieceStore.Store]\nStorage = \"minio\"\nBucketURL = \"{}/{name}-%d\"\nMaxRetries = 2\nIAMType = \"AKSK\"\n",
        s.endpoint
    );
    std::fs::write(dir.path().join("config.toml"), toml).unwrap();
    let env = [
        ("MINIO_ACCESS_KEY", s.access_key.as_str()),
        ("MINIO_SECRET_KEY", s.secret_key.as_str()),
    ];
    exercise(dir.path(), &["--config", "config.toml"], &env);
    // ./config.toml is picked up without --config.
    let info = String::from_utf8(ok(bin().current_dir(dir.path()).envs(env).arg("info"))).unwrap();
    assert!(info.starts_with("shards: 4 (placement fnv-mod)"), "{info}");
    assert!(info.contains(&format!("{name}-3")), "{info}");
    // A config error in PieceStore's own tables names the field (the original's tables ignore
    // unknown fields, as the original does).
    std::fs::write(
        dir.path().join("bad.toml"),
        "[PieceStore]\nShards = 4\n[PieceStore.Store]\nBucketUrl = \"x-%d\"\n\
         [PieceStore.Backend]\nRegon = \"x\"\n",
    )
    .unwrap();
    let (c, err) = code(
        bin()
            .current_dir(dir.path())
            .args(["--config", "bad.toml", "ls"]),
    );
    assert_eq!(c, 5);
    assert!(err.contains("Regon"), "{err}");
}

/// `ls -l` with an SP's config.toml over the original's files, some of which end in bytes that
/// look like PieceStore's checksum trailer: every file listed at its size, exit 0.
#[test]
fn ls_lists_every_file_of_the_original_whatever_it_ends_with() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut files: Vec<(String, Vec<u8>)> = (0..10)
        .map(|i| {
            (
                format!("s{i}_s0"),
                piecestore_tests::pseudo_random(100 + i * 50, i as u64),
            )
        })
        .collect();
    let mut a = piecestore_tests::pseudo_random(100, 77);
    a[84..92].copy_from_slice(&80u64.to_le_bytes());
    files.push(("e1_s0_p0".into(), a));
    let mut b = piecestore_tests::pseudo_random(200, 78);
    b.extend_from_slice(b"PSCR");
    files.push(("e1_s0_p1".into(), b));
    let mut c = piecestore_tests::pseudo_random(200, 79);
    c.extend_from_slice(b"PSCRC32C");
    files.push(("e1_s0_p2".into(), c));
    for (k, v) in &files {
        std::fs::write(data.join(k), v).unwrap();
    }
    std::fs::write(
        dir.path().join("config.toml"),
        "[PieceStore]\nShards = 0\n[PieceStore.Store]\nStorage = ''\nBucketURL = ''\nIAMType = ''\n",
    )
    .unwrap();
    let out = String::from_utf8(ok(bin().current_dir(dir.path()).args(["ls", "-l"]))).unwrap();
    assert_eq!(out.lines().count(), files.len(), "{out}");
    for (k, v) in &files {
        assert!(
            out.lines()
                .any(|l| l.contains(k.as_str()) && l.contains(&v.len().to_string())),
            "{k} ({} bytes) not listed at its size:\n{out}",
            v.len()
        );
        let got = ok(bin().current_dir(dir.path()).args(["get", k]));
        assert!(got == *v, "{k}: get gives other bytes");
    }
    let info = String::from_utf8(ok(bin().current_dir(dir.path()).arg("info"))).unwrap();
    assert!(info.contains("layout: original"), "{info}");
    assert!(
        !data.join(".piecestore").exists(),
        "no .piecestore/ in the SP's directory"
    );
}
