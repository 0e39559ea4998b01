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

/// A command with an empty home (no `~/.aws`) and whatever else `env` sets.
fn in_home(dir: &Path, env: &[(&str, &str)]) -> Command {
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut c = bin();
    c.current_dir(dir)
        .env("HOME", &home)
        .envs(env.iter().copied());
    c
}

#[test]
fn options_on_a_plain_path_are_options_and_bad_ones_say_what_to_write() {
    let dir = tempfile::tempdir().unwrap();
    let cmd = || in_home(dir.path(), &[]);
    let rel = "./rel?pack=false&max_retries=3";
    let out = run(
        cmd().args(["--store", rel, "put", "1_s0", "-"]),
        Some(b"one"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ok(cmd().args(["--store", rel, "get", "1_s0"])), b"one");
    // `get -o` writes a normal user file (0666 less the umask), not a temp file's 0600.
    ok(cmd().args(["--store", rel, "get", "1_s0", "-o", "copy.bin"]));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("copy.bin"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o644,
        0o644,
        "mode {mode:o} under the usual umask 022"
    );
    assert!(dir.path().join("rel").is_dir(), "the directory is ./rel");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains('?')), "{names:?}");
    // The option took effect: the piece is its own file, not in a pack.
    assert!(dir.path().join("rel/1_s0").is_file());
    let info = String::from_utf8(ok(cmd().args(["--store", rel, "info"]))).unwrap();
    assert!(info.contains("packing: off"), "{info}");
    let info = String::from_utf8(ok(cmd().args(["--store", "./packed", "info"]))).unwrap();
    assert!(
        info.contains("packing: on: pieces under 1MiB") && info.contains("deleted after 1h"),
        "{info}"
    );

    // A typo gets the nearest name, in the caller's spelling.
    let (c, err) = code(cmd().args(["--store", "./rel?max_retrys=3", "info"]));
    assert_eq!(c, 5, "{err}");
    assert!(err.contains("did you mean \"max_retries\"?"), "{err}");
    let (_, err) = code(cmd().args(["--store", "./rel?GcGrase=1s", "info"]));
    assert!(err.contains("did you mean \"GcGrace\"?"), "{err}");
    // A bad value names the option and what it takes, not the parser's type name.
    let (c, err) = code(cmd().args(["--store", "./rel?max_retries=abc", "info"]));
    assert_eq!(c, 5, "{err}");
    assert!(
        err.contains("max_retries") && err.contains("whole number") && !err.contains("u32"),
        "{err}"
    );
    let (_, err) = code(cmd().args(["--store", "./rel?placement=ring", "info"]));
    assert!(
        err.contains("\"fnv-mod\"") && err.contains("\"jump\""),
        "{err}"
    );
    let (_, err) = code(cmd().args(["--store", "./rel?gc_grace=soon", "info"]));
    assert!(
        err.contains("gc_grace") && err.contains("duration"),
        "{err}"
    );
    // `conditional_writes=true` reads as a boolean reads.
    ok(cmd().args(["--store", "./rel?conditional_writes=true", "info"]));
    let (c, err) = code(cmd().args(["--store", "?pack=false", "info"]));
    assert_eq!(c, 5, "{err}");
    assert!(err.contains("no location"), "{err}");
}

#[test]
fn no_credentials_is_said_plainly_and_an_unreachable_endpoint_is_named() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1, and no credentials anywhere: the error says so and lists
    // where it looked, instead of a 403 from the cloud's instance-metadata address.
    let (c, err) = code(in_home(dir.path(), &[]).args(["--store", "http://127.0.0.1:1/bkt", "ls"]));
    assert_eq!(c, 5, "{err}");
    for needle in [
        "no credentials found for http://127.0.0.1:1",
        "AWS_ACCESS_KEY_ID",
        "MINIO_ACCESS_KEY",
        "~/.aws/credentials",
        "AWS_PROFILE",
        "NoSignRequest",
    ] {
        assert!(err.contains(needle), "{needle:?} missing: {err}");
    }
    assert!(
        !err.contains("403") && !err.contains("UNAUTHORIZED"),
        "{err}"
    );
    // With keys: a retryable BACKEND error that names the endpoint, in plain words.
    let keys = [
        ("AWS_ACCESS_KEY_ID", "AKIDNOWHERE"),
        ("AWS_SECRET_ACCESS_KEY", "not-a-real-secret"),
    ];
    let (c, err) = code(in_home(dir.path(), &keys).args([
        "--store",
        "http://127.0.0.1:1/bkt?max_retries=1",
        "ls",
    ]));
    assert_eq!(c, 8, "{err}");
    assert!(
        err.contains("BACKEND")
            && err.contains("http://127.0.0.1:1/bkt")
            && err.contains("cannot reach the endpoint: connection refused"),
        "{err}"
    );
    assert!(
        !err.contains("tcp connect") && !err.contains("not-a-real-secret"),
        "{err}"
    );
    // IAMType AKSK without keys names the variables it read.
    std::fs::write(
        dir.path().join("aksk.toml"),
        "[PieceStore]\n[PieceStore.Store]\nStorage = \"s3\"\nBucketURL = \"s3://some-bucket\"\nIAMType = \"AKSK\"\n",
    )
    .unwrap();
    let (c, err) = code(in_home(dir.path(), &[]).args(["--config", "aksk.toml", "ls"]));
    assert_eq!(c, 5, "{err}");
    assert!(
        err.contains("AWS_ACCESS_KEY/AWS_SECRET_KEY")
            && err.contains("AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"),
        "{err}"
    );
}

#[test]
fn aws_profiles_give_keys_credential_process_region_and_endpoint() {
    let Some(s) = server(ServerKind::S3sFs) else {
        return;
    };
    let bucket = unique_name("cli-profile");
    s.create_bucket(&bucket);
    let dir = tempfile::tempdir().unwrap();
    let aws = dir.path().join("home/.aws");
    std::fs::create_dir_all(&aws).unwrap();
    // s3s-fs checks every signature: only the right keys get through.
    let script = dir.path().join("creds.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '{{\"Version\": 1, \"AccessKeyId\": \"{}\", \"SecretAccessKey\": \"{}\"}}'\n",
            s.access_key, s.secret_key
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        aws.join("config"),
        format!(
            "[default]\nregion = us-east-1\nendpoint_url = {ep}\n\
             [profile proc]\nregion = us-east-1\nendpoint_url = {ep}\ncredential_process = {}\n\
             [profile wrong]\nregion = us-east-1\nendpoint_url = {ep}\n",
            script.display(),
            ep = s.endpoint
        ),
    )
    .unwrap();
    std::fs::write(
        aws.join("credentials"),
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n\
             [wrong]\naws_access_key_id = {}\naws_secret_access_key = not-the-secret\n",
            s.access_key, s.secret_key, s.access_key
        ),
    )
    .unwrap();
    let url = format!("s3://{bucket}");
    // The default profile: keys from ~/.aws/credentials, region and endpoint from ~/.aws/config.
    let out = run(
        in_home(dir.path(), &[]).args(["--store", &url, "put", "1_s0", "-"]),
        Some(b"by profile"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        ok(in_home(dir.path(), &[]).args(["--store", &url, "get", "1_s0"])),
        b"by profile"
    );
    // credential_process, chosen by AWS_PROFILE.
    assert_eq!(
        ok(in_home(dir.path(), &[("AWS_PROFILE", "proc")]).args(["--store", &url, "get", "1_s0"])),
        b"by profile"
    );
    // A profile with the wrong secret is refused by the server (so the profile is what signs).
    let (c, err) =
        code(in_home(dir.path(), &[("AWS_PROFILE", "wrong")]).args(["--store", &url, "ls"]));
    assert_eq!(c, 7, "{err}");
    assert!(!err.contains("not-the-secret"), "{err}");
    // AWS_PROFILE naming no profile is said so.
    let (c, err) =
        code(in_home(dir.path(), &[("AWS_PROFILE", "nope")]).args(["--store", &url, "ls"]));
    assert_eq!(c, 5, "{err}");
    assert!(err.contains("AWS_PROFILE is \"nope\""), "{err}");
    // AWS_SHARED_CREDENTIALS_FILE and AWS_CONFIG_FILE move the files.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::rename(aws.join("config"), elsewhere.join("cfg")).unwrap();
    std::fs::rename(aws.join("credentials"), elsewhere.join("creds")).unwrap();
    let moved = [
        ("AWS_CONFIG_FILE", elsewhere.join("cfg")),
        ("AWS_SHARED_CREDENTIALS_FILE", elsewhere.join("creds")),
    ];
    let mut c = in_home(dir.path(), &[]);
    c.envs(moved.iter().map(|(k, v)| (*k, v.as_os_str())));
    assert_eq!(ok(c.args(["--store", &url, "get", "1_s0"])), b"by profile");
    // Keys in the environment come before the profile.
    let mut c = in_home(
        dir.path(),
        &[
            ("AWS_ACCESS_KEY_ID", s.access_key.as_str()),
            ("AWS_SECRET_ACCESS_KEY", "env-secret-wins"),
        ],
    );
    c.envs(moved.iter().map(|(k, v)| (*k, v.as_os_str())));
    let (status, err) = code(c.args(["--store", &url, "ls"]));
    assert_eq!(
        status, 7,
        "the environment's (wrong) keys were used first: {err}"
    );
}

#[test]
fn a_missing_bucket_is_named_and_created_only_when_asked() {
    let Some(s) = server(ServerKind::S3sFs) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let keys = [
        ("AWS_ACCESS_KEY_ID", s.access_key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", s.secret_key.as_str()),
    ];
    let typo = unique_name("typo-bucket");
    let url = format!("{}/{typo}", s.endpoint);
    let out = run(
        in_home(dir.path(), &keys).args(["--store", &url, "put", "1_s0", "-"]),
        Some(b"x"),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        err.contains("BUCKET_NOT_FOUND") && err.contains(&typo) && err.contains("CreateBucket"),
        "{err}"
    );
    let data_dir = s
        .data_dir
        .as_ref()
        .expect("s3s-fs keeps buckets as directories");
    assert!(
        !data_dir.join(&typo).exists(),
        "the mistyped bucket was created"
    );
    // Opting in creates it.
    let create = format!("{url}?create_bucket=true");
    let out = run(
        in_home(dir.path(), &keys).args(["--store", &create, "put", "1_s0", "-"]),
        Some(b"x"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(data_dir.join(&typo).is_dir());
    assert_eq!(
        ok(in_home(dir.path(), &keys).args(["--store", &url, "get", "1_s0"])),
        b"x"
    );
}

#[test]
fn an_unrelated_config_toml_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    // A Hugo site's config.toml in the working directory.
    std::fs::write(
        dir.path().join("config.toml"),
        "baseURL = \"https://example.org/\"\ntitle = \"My site\"\n[params]\nauthor = \"me\"\n",
    )
    .unwrap();
    let out = run(
        in_home(dir.path(), &[]).args(["put", "1_s0", "-"]),
        Some(b"site"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("data").is_dir(), "./data is used");
    let out = run(in_home(dir.path(), &[]).args(["-v", "get", "1_s0"]), None);
    assert_eq!(out.stdout, b"site");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("store ./data") && err.contains("no [PieceStore] table"),
        "{err}"
    );
    // Named explicitly, it is an error.
    let (c, err) = code(in_home(dir.path(), &[]).args(["--config", "config.toml", "ls"]));
    assert_eq!(c, 5, "{err}");
    assert!(err.contains("no [PieceStore] table"), "{err}");
    // A config.toml that is PieceStore's but broken is shown, not skipped.
    std::fs::write(dir.path().join("config.toml"), "[PieceStore\nShards = 1\n").unwrap();
    let (c, err) = code(in_home(dir.path(), &[]).arg("ls"));
    assert_eq!(c, 5, "{err}");
    assert!(err.contains("config.toml"), "{err}");
}

#[test]
fn ls_is_sorted_across_shards_and_stat_shows_rfc3339() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file://{}/s-%d?shards=4", dir.path().display());
    let mut keys: Vec<String> = (0..40)
        .map(|i| format!("k{:02}_s{}", (i * 17) % 40, i % 3))
        .collect();
    for k in &keys {
        let out = run(
            in_home(dir.path(), &[]).args(["--store", &store, "put", k, "-"]),
            Some(k.as_bytes()),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    keys.sort();
    let ls =
        String::from_utf8(ok(in_home(dir.path(), &[]).args(["--store", &store, "ls"]))).unwrap();
    assert_eq!(ls.lines().collect::<Vec<_>>(), keys);
    let mut unsorted: Vec<String> = String::from_utf8(ok(in_home(dir.path(), &[]).args([
        "--store",
        &store,
        "ls",
        "--unsorted",
    ])))
    .unwrap()
    .lines()
    .map(str::to_string)
    .collect();
    unsorted.sort();
    assert_eq!(unsorted, keys, "--unsorted lists the same keys");

    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let stat = String::from_utf8(ok(
        in_home(dir.path(), &[]).args(["--store", &store, "stat", &keys[0]])
    ))
    .unwrap();
    let line = stat
        .lines()
        .find(|l| l.starts_with("last modified:"))
        .unwrap();
    let when = line.trim_start_matches("last modified:").trim();
    let t = humantime::parse_rfc3339(when).unwrap_or_else(|e| panic!("{when:?}: {e}"));
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(
        secs <= before + 1 && before - secs < 600,
        "{when} vs now {before}"
    );
    let json = String::from_utf8(ok(
        in_home(dir.path(), &[]).args(["--store", &store, "stat", &keys[0], "--json"])
    ))
    .unwrap();
    assert!(
        json.contains(&format!("\"last_modified\":\"{when}\""))
            && json.contains(&format!("\"last_modified_unix\":{secs}")),
        "{json}"
    );
}

#[test]
fn cache_stats_and_clear_show_and_empty_the_tiers() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let store = format!("./pieces?cache_disk={}&cache_memory=1MiB", cache.display());
    let cmd = || in_home(dir.path(), &[]);
    let out = run(
        cmd().args(["--store", &store, "put", "1_s0", "-"]),
        Some(b"cached"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        ok(cmd().args(["--store", &store, "get", "1_s0"])),
        b"cached"
    );
    let info = String::from_utf8(ok(cmd().args(["--store", &store, "info"]))).unwrap();
    assert!(info.contains("cache: memory 1MiB, disk 10GiB at"), "{info}");
    // The disk tier kept the piece across processes.
    let stats = String::from_utf8(ok(
        cmd().args(["--store", &store, "cache", "stats", "--json"])
    ))
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let disk = &v["tiers"][1];
    assert_eq!(
        (disk["tier"].as_str(), disk["entries"].as_u64()),
        (Some("disk"), Some(1)),
        "{v}"
    );
    let text = String::from_utf8(ok(cmd().args(["--store", &store, "cache", "stats"]))).unwrap();
    assert!(
        text.contains("disk") && text.contains("in 1 pieces"),
        "{text}"
    );
    let cleared = String::from_utf8(ok(cmd().args(["--store", &store, "cache", "clear"]))).unwrap();
    assert!(cleared.starts_with("cache cleared"), "{cleared}");
    let v: serde_json::Value = serde_json::from_str(
        &String::from_utf8(ok(
            cmd().args(["--store", &store, "cache", "stats", "--json"])
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(v["tiers"][1]["entries"].as_u64(), Some(0), "{v}");
    // The piece itself is untouched.
    assert_eq!(
        ok(cmd().args(["--store", &store, "get", "1_s0"])),
        b"cached"
    );
    // No cache on a plain directory.
    let none = String::from_utf8(ok(cmd().args(["--store", "./plain", "cache", "stats"]))).unwrap();
    assert!(none.starts_with("no cache"), "{none}");
    // `bench --json` carries the cache's counters, as its table's cache line does.
    let report = String::from_utf8(ok(cmd().args([
        "--store",
        &store,
        "bench",
        "--op",
        "get",
        "--size",
        "1KiB",
        "--objects",
        "10",
        "-c",
        "2",
        "--count",
        "200",
        "-q",
        "--json",
        "-",
    ])))
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&report).unwrap();
    let cache = &v["cache"];
    assert!(cache["hit_ratio"].as_f64().unwrap_or(0.0) > 0.9, "{cache}");
    assert!(
        cache["hits"]["memory"].as_u64().unwrap_or(0) >= 190,
        "{cache}"
    );
    assert!(cache["fetches"].as_u64().unwrap_or(0) <= 10, "{cache}");
}

#[test]
fn serve_refuses_to_start_without_keys_or_with_a_bad_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("data");
    let out = run(
        bin()
            .env_remove("PIECESTORE_SERVE_ACCESS_KEY")
            .env_remove("PIECESTORE_SERVE_SECRET_KEY")
            .args(["--store", store.to_str().expect("utf-8"), "serve"])
            .args(["--listen", "127.0.0.1:0"]),
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("PIECESTORE_SERVE_ACCESS_KEY"), "{err}");
    // Half a key pair, a short secret, a bucket name S3 clients cannot address.
    let out = run(
        bin()
            .env("PIECESTORE_SERVE_ACCESS_KEY", "me")
            .env_remove("PIECESTORE_SERVE_SECRET_KEY")
            .args(["--store", store.to_str().expect("utf-8"), "serve"]),
        None,
    );
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("go together"));
    let out = run(
        bin()
            .env("PIECESTORE_SERVE_ACCESS_KEY", "me")
            .env("PIECESTORE_SERVE_SECRET_KEY", "short")
            .args(["--store", store.to_str().expect("utf-8"), "serve"]),
        None,
    );
    assert_eq!(out.status.code(), Some(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("shorter than 8") && !err.contains("short\""),
        "{err}"
    );
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[PieceStore.Store]\nBucketURL = \"{}\"\n[[PieceStore.Serve.Buckets]]\nName = \"Bad_Name\"\n",
            store.display()
        ),
    )
    .expect("config");
    let out = run(
        bin()
            .env("PIECESTORE_SERVE_ACCESS_KEY", "me")
            .env("PIECESTORE_SERVE_SECRET_KEY", "long-enough-secret")
            .args(["--config", config.to_str().expect("utf-8"), "serve"]),
        None,
    );
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Bad_Name"));
}

/// Secrets stay out of the logs: with `RUST_LOG=trace`, every line the CLI prints (for put,
/// get, ls, stat and rm against an S3 server, with keys and a session token) and every line
/// `piecestore serve` prints while it answers signed S3 and token-bearing gRPC calls carries
/// none of the secret key, the session token or the gRPC token.
#[test]
fn no_secret_reaches_any_log_line_at_trace() {
    use std::io::{BufRead, BufReader};
    let Some(s) = server(ServerKind::Moto) else {
        return;
    };
    let bucket = unique_name("cli-trace");
    s.create_bucket(&bucket);
    let dir = tempfile::tempdir().expect("tempdir");
    let session = "IQoJb3JpZ2luX2VjEXAMPLEsessionTOKENfortheTRACEtest0123";
    let serve_secret = "serve-secret-for-the-trace-test-0123";
    let grpc_token = "grpc-token-for-the-trace-test-456789";
    let secrets = [s.secret_key.as_str(), session, serve_secret, grpc_token];
    let mut printed = String::new();
    let mut client = |store: &str, args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>| {
        let mut c = bin();
        c.current_dir(dir.path())
            .env("RUST_LOG", "trace")
            .envs(env.iter().copied())
            .arg("--store")
            .arg(store)
            .args(args);
        let out = run(&mut c, stdin);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{args:?}: {err}");
        printed.push_str(&err);
        printed.push_str(&String::from_utf8_lossy(&out.stdout));
    };
    let aws = [
        ("AWS_ACCESS_KEY_ID", s.access_key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", s.secret_key.as_str()),
        ("AWS_SESSION_TOKEN", session),
    ];
    let url = format!("{}/{bucket}", s.endpoint);
    client(&url, &["put", "t1_s0", "-"], &aws, Some(b"traced bytes"));
    client(&url, &["get", "t1_s0"], &aws, None);
    client(&url, &["ls"], &aws, None);
    client(&url, &["stat", "t1_s0"], &aws, None);
    client(&url, &["rm", "t1_s0"], &aws, None);

    // A server with keys and a token, logging at trace, asked over S3 and gRPC.
    let log = std::fs::File::create(dir.path().join("serve.log")).expect("log");
    let mut serve = bin()
        .env("RUST_LOG", "trace")
        .env("PIECESTORE_SERVE_ACCESS_KEY", "TRACETESTACCESSKEY")
        .env("PIECESTORE_SERVE_SECRET_KEY", serve_secret)
        .env("PIECESTORE_SERVE_TOKEN", grpc_token)
        .arg("--store")
        .arg(dir.path().join("served"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn serve");
    let mut lines = BufReader::new(serve.stdout.take().expect("stdout")).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("serve printed its address")
            .expect("line");
        if let Some(rest) = line.strip_prefix("listening on http://") {
            break rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
        }
    };
    let served_keys = [
        ("AWS_ACCESS_KEY_ID", "TRACETESTACCESSKEY"),
        ("AWS_SECRET_ACCESS_KEY", serve_secret),
    ];
    let http = format!("http://{addr}/pieces?pack=false");
    client(&http, &["put", "t2_s0", "-"], &served_keys, Some(b"served"));
    client(&http, &["get", "t2_s0"], &served_keys, None);
    let grpc = format!("grpc://{addr}/pieces?pack=false");
    let token = [("PIECESTORE_GRPC_TOKEN", grpc_token)];
    client(&grpc, &["get", "t2_s0"], &token, None);
    client(&grpc, &["ls"], &token, None);
    let _ = serve.kill();
    let _ = serve.wait();
    let served = std::fs::read_to_string(dir.path().join("serve.log")).expect("serve log");

    for (who, text) in [("the CLI", &printed), ("serve", &served)] {
        assert!(
            text.lines().filter(|l| l.contains("TRACE")).count() > 20,
            "{who} did not log at trace: {}",
            &text[..text.len().min(2000)]
        );
        for secret in secrets {
            if let Some(line) = text.lines().find(|l| l.contains(secret)) {
                panic!("{who} printed a secret: {line}");
            }
        }
    }
}
