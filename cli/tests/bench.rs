//! `piecestore bench`, `bench compare` and `profile` end to end, through the binary: on
//! memory, files and real S3-compatible servers (behind a proxy that logs what the server saw,
//! and one the test stops mid-run), and the HTML report rendered in headless Chromium.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use piecestore::{Config, PieceStore};
use piecestore_tests::{Proxy, ProxyMode, ServerKind, server, start_owned_s3s_fs, unique_name};
use serde_json::Value;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_piecestore"));
    for var in piecestore_tests::CLI_ENV {
        c.env_remove(var);
    }
    c.stdin(Stdio::null());
    c
}

fn output(cmd: &mut Command) -> Output {
    cmd.output().expect("run piecestore")
}

#[track_caller]
fn ok_json(cmd: &mut Command) -> Value {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({:?}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a u64: {v}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn op<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["ops"]
        .as_array()
        .expect("ops")
        .iter()
        .find(|o| o["op"] == name)
        .unwrap_or_else(|| panic!("no {name} in {}", report["ops"]))
}

fn issued(report: &Value, phase: &str, op: &str) -> u64 {
    report["issued"][phase][op].as_u64().unwrap_or(0)
}

fn issued_total(report: &Value, op: &str) -> u64 {
    ["prepare", "warmup", "measure", "cleanup"]
        .iter()
        .map(|p| issued(report, p, op))
        .sum()
}

/// Checks what every healthy report must satisfy, and returns the total successful ops.
#[track_caller]
fn assert_sane(r: &Value) -> u64 {
    assert_eq!(r["version"], 1);
    assert!(f(&r["duration_s"]) > 0.0, "{r}");
    assert_eq!(
        u(&r["total"]["errors"]),
        0,
        "a healthy store gave errors: {}",
        r["total"]
    );
    let mut total = 0;
    for o in r["ops"].as_array().expect("ops") {
        let name = o["op"].as_str().expect("op name");
        let count = u(&o["count"]);
        total += count;
        assert!(o["errors"].as_object().expect("errors").is_empty(), "{o}");
        // Every measured operation that was issued succeeded.
        assert_eq!(
            issued(r, "measure", name),
            count,
            "{name}: issued vs counted"
        );
        if count == 0 {
            continue;
        }
        let l = &o["latency"];
        let order = ["min_us", "p50_us", "p90_us", "p99_us", "p999_us", "max_us"].map(|k| f(&l[k]));
        assert!(
            order.windows(2).all(|w| w[0] <= w[1]),
            "{name}: percentiles out of order {order:?}"
        );
        assert!(order[0] > 0.0, "{name}: a zero latency");
        let mean = f(&l["mean_us"]);
        assert!(
            order[0] <= mean && mean <= order[5],
            "{name}: mean {mean} outside {order:?}"
        );
        let hist: u64 = l["histogram"]
            .as_array()
            .expect("histogram")
            .iter()
            .map(|b| u(&b[1]))
            .sum();
        assert_eq!(hist, count, "{name}: the histogram holds every operation");
        let rate = count as f64 / f(&r["duration_s"]);
        assert!(
            (f(&o["ops_per_s"]) - rate).abs() < 1e-6 * rate.max(1.0),
            "{name}: ops/s"
        );
    }
    // The timeline adds up to the totals.
    let timeline: u64 = r["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .flat_map(|s| s["ops"].as_object().expect("ops").values().map(u))
        .sum();
    assert_eq!(timeline, total, "the timeline adds up");
    assert_eq!(u(&r["total"]["count"]), total);
    total
}

#[test]
fn bench_on_memory_counts_exactly_and_cleans_up() {
    let r = ok_json(bin().args([
        "--store",
        "memory://",
        "bench",
        "--op",
        "get",
        "--count",
        "3000",
        "--warmup",
        "0s",
        "--objects",
        "64",
        "-c",
        "4",
        "--size",
        "4KiB",
        "--json",
        "-q",
    ]));
    assert_eq!(assert_sane(&r), 3000);
    let get = op(&r, "get");
    assert_eq!(u(&get["count"]), 3000);
    assert_eq!(u(&get["bytes"]), 3000 * 4096);
    assert!(
        get["ttfb"]["p50_us"].as_f64().is_some(),
        "gets report time to first byte"
    );
    assert!(f(&get["ttfb"]["p50_us"]) <= f(&get["latency"]["p50_us"]));
    assert_eq!(issued(&r, "prepare", "put"), 64);
    assert_eq!(u(&r["cleanup"]["pieces"]), 64);
    assert_eq!(u(&r["cleanup"]["bytes"]), 64 * 4096);
    assert!(r["stopped_early"].is_null());
}

#[test]
fn bench_on_files_mixed_sizes_with_check_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/s-%d?shards=3", dir.path().display());
    let r = ok_json(bin().args([
        "--store",
        &url,
        "bench",
        "--op",
        "mixed:put=2,get=5,head=2,delete=1,list=0",
        "--size",
        "1KiB..64KiB",
        "--duration",
        "2s",
        "--warmup",
        "300ms",
        "--objects",
        "200",
        "-c",
        "8",
        "--check",
        "--json",
        "-q",
    ]));
    let total = assert_sane(&r);
    assert!(total > 100, "only {total} operations in 2 s");
    let checks = r["checks"].as_array().expect("checks");
    assert!(
        checks.len() >= 10 && checks.iter().all(|c| c["passed"] == true),
        "{checks:?}"
    );
    for name in ["put", "get", "head", "delete"] {
        assert!(u(&op(&r, name)["count"]) > 0, "no {name} ran");
    }
    let put = op(&r, "put");
    let mean = u(&put["bytes"]) as f64 / u(&put["count"]) as f64;
    assert!(
        (1024.0..=65536.0).contains(&mean),
        "put sizes within the range, mean {mean}"
    );
    assert!(
        f(&r["warmup_s"]) >= 0.3 && issued(&r, "warmup", "get") > 0,
        "the warm-up ran"
    );
    // Cleanup deleted every piece: the prepared ones and the puts, less the deletes.
    let left = issued(&r, "prepare", "put") + issued(&r, "warmup", "put") + u(&put["count"])
        - issued(&r, "warmup", "delete")
        - u(&op(&r, "delete")["count"]);
    assert_eq!(u(&r["cleanup"]["pieces"]), left);
    let profile = ok_json(bin().args(["--store", &url, "profile", "--json"]));
    assert_eq!(
        u(&profile["pieces"]),
        0,
        "bench left pieces behind: {profile}"
    );
    assert_eq!(u(&profile["orphans"]["temp"]), 0);
}

/// The report's counts match the requests the S3 server received, and the store's own
/// Prometheus metrics agree with both.
#[test]
fn bench_counts_match_what_the_server_saw() {
    let Some(s) = server(ServerKind::Moto) else {
        return;
    };
    let proxy = Proxy::start(&s.endpoint, ProxyMode::PassThrough);
    let stem = unique_name("bench-counts");
    for i in 0..2 {
        s.create_bucket(&format!("{stem}-{i}"));
    }
    let dir = tempfile::tempdir().unwrap();
    let prom = dir.path().join("metrics.txt");
    // One object per piece: each piece operation is one request to count (packed puts
    // share one PUT; `cli/tests/pack.rs` and benches/RESULTS.md count those).
    let url = format!("{}/{stem}-%d?shards=2&pack=false", proxy.endpoint);
    let r = ok_json(
        bin()
            .args([
                "--store",
                &url,
                "bench",
                "--op",
                "mixed:put=3,get=4,head=2,delete=1",
                "--size",
                "4KiB",
                "--count",
                "400",
                "--warmup",
                "0s",
                "--objects",
                "40",
                "-c",
                "4",
                "--json",
                "-q",
                "--prometheus",
            ])
            .arg(&prom)
            .envs([
                ("AWS_ACCESS_KEY_ID", s.access_key.as_str()),
                ("AWS_SECRET_ACCESS_KEY", s.secret_key.as_str()),
            ]),
    );
    assert_eq!(assert_sane(&r), 400);
    // What the server saw, by method, for piece objects (not PieceStore's own probe objects
    // under .piecestore/, nor bucket-level requests such as listings).
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    for req in proxy.seen() {
        let path = req.target.split('?').next().unwrap_or("");
        let is_piece = path
            .trim_start_matches('/')
            .split_once('/')
            .is_some_and(|(_, k)| !k.is_empty() && !k.starts_with(".piecestore"));
        let what = if is_piece {
            req.method.clone()
        } else if req.method == "POST" && req.target.ends_with("?delete") {
            // object_store deletes one piece through S3's multi-object delete, one key a request.
            "DELETE".into()
        } else if req.method == "GET" && req.target.contains("list-type=2") {
            "LIST".into()
        } else {
            continue;
        };
        *seen.entry(what).or_default() += 1;
    }
    // Each shard's conditional-write probe: two PUTs under .piecestore/probe/ (left out above)
    // and one multi-object delete, which the proxy cannot tell from a piece's.
    let probes = proxy
        .seen()
        .iter()
        .filter(|r| r.method == "PUT" && r.target.contains(".piecestore/probe"))
        .count() as u64
        / 2;
    assert_eq!(probes, 2, "one probe per shard");
    *seen.entry("DELETE".into()).or_default() -= probes;
    for (method, name) in [
        ("PUT", "put"),
        ("GET", "get"),
        ("HEAD", "head"),
        ("DELETE", "delete"),
    ] {
        assert_eq!(
            seen.get(method).copied().unwrap_or(0),
            issued_total(&r, name),
            "{method} requests seen vs {name} issued; seen {seen:?}, report {}",
            r["issued"]
        );
    }
    // Cleanup lists each shard at least once (more pages for big listings).
    assert!(seen.get("LIST").copied().unwrap_or(0) >= issued(&r, "cleanup", "list"));
    // The store's metrics saw the same operations.
    let text = std::fs::read_to_string(&prom).unwrap();
    for name in ["put", "get", "head", "delete"] {
        let counted: u64 = text
            .lines()
            .filter(|l| {
                l.starts_with("piecestore_operations_total{")
                    && l.contains(&format!("op=\"{name}\""))
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(
            counted,
            issued_total(&r, name),
            "metrics vs report for {name}"
        );
    }
    assert!(text.contains("backend=\"s3\",shard=\"1\""), "{text}");
}

/// A server that dies mid-run: failed operations are counted by kind, the run still ends on
/// time with a report, and the failed cleanup says so.
#[test]
fn bench_counts_errors_when_the_server_stops_mid_run() {
    let Some(mut owned) = start_owned_s3s_fs() else {
        return;
    };
    let s = owned.server.clone();
    s.create_bucket("stopping");
    let url = format!(
        "{}/stopping?max_retries=0&connect_timeout=1s&request_timeout=2s",
        s.endpoint
    );
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let child = bin()
        .args([
            "--store",
            &url,
            "bench",
            "--op",
            "mixed:put=1,get=1",
            "--duration",
            "4s",
            "--warmup",
            "0s",
            "--objects",
            "20",
            "-c",
            "4",
            "-q",
            "--json",
        ])
        .arg(&json)
        .envs([
            ("AWS_ACCESS_KEY_ID", s.access_key.as_str()),
            ("AWS_SECRET_ACCESS_KEY", s.secret_key.as_str()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    owned.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let r: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let ok: u64 = r["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| u(&o["count"]))
        .sum();
    let errors = u(&r["total"]["errors"]);
    assert!(
        ok > 0,
        "operations before the stop succeeded: {}",
        r["total"]
    );
    assert!(
        errors > 0,
        "operations after the stop failed: {}",
        r["total"]
    );
    assert_eq!(
        u(&r["total"]["errors_by_kind"]["BACKEND"]),
        errors,
        "{}",
        r["total"]
    );
    let by_op: u64 = r["ops"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|o| o["errors"].as_object().unwrap().values().map(u))
        .sum();
    assert_eq!(by_op, errors);
    let failed_seconds = r["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| u(&s["errors"]) > 0)
        .count();
    assert!(failed_seconds >= 1);
    assert!(
        f(&r["duration_s"]) < 12.0,
        "the run ended near its duration"
    );
    assert!(r["cleanup"]["error"].is_string(), "{}", r["cleanup"]);
    assert!(stderr.contains("cleanup failed"), "{stderr}");
    assert!(!stderr.contains(&s.secret_key));
}

#[test]
fn bench_check_stops_on_a_failing_store() {
    let Some(s) = server(ServerKind::S3sFs) else {
        return;
    };
    let bucket = unique_name("bench-check");
    s.create_bucket(&bucket);
    // Wrong secret, and no bucket check at open: the first check (a put) fails.
    let url = format!("{}/{bucket}?check_bucket=false&max_retries=0", s.endpoint);
    let out = output(
        bin()
            .args([
                "--store",
                &url,
                "bench",
                "--check",
                "-q",
                "--duration",
                "1s",
            ])
            .envs([
                ("AWS_ACCESS_KEY_ID", s.access_key.as_str()),
                ("AWS_SECRET_ACCESS_KEY", "not-the-secret-key"),
            ]),
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(9), "{stdout}{stderr}");
    assert!(
        stdout.contains("check FAIL put a 100 KiB piece"),
        "{stdout}"
    );
    assert!(stderr.contains("unauthorized"), "{stdout}{stderr}");
    assert!(
        !stderr.contains("ignores conditional writes"),
        "a failed probe is no verdict: {stderr}"
    );
    assert!(
        !stdout.contains("ops/s")
            && !stdout.contains("not-the-secret-key")
            && !stderr.contains("not-the-secret-key")
    );
}

#[test]
fn bench_compare_sets_two_runs_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, size: &str| {
        let path = dir.path().join(name);
        let out = output(
            bin()
                .args([
                    "--store",
                    "memory://",
                    "bench",
                    "--op",
                    "put",
                    "--count",
                    "500",
                    "--warmup",
                    "0s",
                    "-c",
                    "2",
                    "-q",
                    "--size",
                    size,
                    "--json",
                ])
                .arg(&path),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let table = String::from_utf8_lossy(&out.stdout);
        assert!(
            table.contains("ops/s") && table.contains("put"),
            "the table still prints: {table}"
        );
        path
    };
    let (a, b) = (run("a.json", "4KiB"), run("b.json", "64KiB"));
    let out = output(bin().arg("bench").arg("compare").arg(&a).arg(&b));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for metric in ["ops/s", "throughput", "p50", "p99", "p99.9", "errors"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("put") && l.contains(metric)),
            "{metric}: {text}"
        );
    }
    assert!(text.contains("4KiB") && text.contains("64KiB"), "{text}");
    assert!(text.contains('%'), "{text}");
    // A file that is not a report: exit 5, naming the file.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"version\": 1}").unwrap();
    let out = output(bin().arg("bench").arg("compare").arg(&a).arg(&bad));
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.json"));
}

#[test]
fn bench_rejects_bad_options_clearly() {
    for (args, needle) in [
        (&["--op", "copy"][..], "unknown operation"),
        (&["--size", "4XB"], "size"),
        (&["--op", "mixed:get=0"], "zero"),
        (&["--op", "get", "--objects", "0"], "objects"),
        (&["-c", "0"], "concurrency"),
    ] {
        let out = output(
            bin()
                .args(["--store", "memory://", "bench", "-q"])
                .args(args),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

fn chromium() -> Option<PathBuf> {
    for p in [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ] {
        if Path::new(p).exists() {
            return Some(PathBuf::from(p));
        }
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "CI=true but chromium is not installed (apt-get install chromium)"
    );
    eprintln!("SKIPPED: chromium is not installed");
    None
}

/// How many pixels of the screenshot have (about) this colour.
fn pixels_of(png_path: &Path, rgb: (u8, u8, u8)) -> usize {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(png_path).unwrap(),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    buf[..info.buffer_size()]
        .chunks(channels)
        .filter(|p| {
            p.len() >= 3
                && p[0].abs_diff(rgb.0) <= 12
                && p[1].abs_diff(rgb.1) <= 12
                && p[2].abs_diff(rgb.2) <= 12
        })
        .count()
}

/// The HTML report, rendered by a real browser, shows the plots: the screenshot holds many
/// pixels of each operation's line colour. The screenshot is kept in target/ to look at.
#[test]
fn html_report_renders_its_plots_in_headless_chromium() {
    let Some(chrome) = chromium() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("report.html");
    let url = format!("file://{}/pieces", dir.path().display());
    let out = output(
        bin()
            .args([
                "--store",
                &url,
                "bench",
                "--op",
                "mixed:put=1,get=3",
                "--duration",
                "3s",
                "--warmup",
                "0s",
                "--objects",
                "100",
                "-c",
                "4",
                "-q",
                "--html",
            ])
            .arg(&html),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.matches("<svg").count() >= 3, "three plots");
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-report.png");
    let _ = std::fs::remove_file(&shot);
    let profile = dir.path().join("chromium-profile");
    let status = Command::new(chrome)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1280,2400",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", html.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(
        status.success() && shot.exists(),
        "chromium made no screenshot"
    );
    let put = pixels_of(&shot, (0x1f, 0x77, 0xb4));
    let get = pixels_of(&shot, (0x2c, 0xa0, 0x2c));
    // Three plots of two-pixel lines hundreds of pixels long, plus the legend swatches.
    assert!(
        put > 1000,
        "only {put} pixels of put's colour: the plots are missing ({})",
        shot.display()
    );
    assert!(
        get > 1000,
        "only {get} pixels of get's colour ({})",
        shot.display()
    );
    eprintln!(
        "screenshot: {} ({put} put pixels, {get} get pixels)",
        shot.display()
    );
}

/// The `(name, colour)` swatches of the HTML report's summary table, in order.
fn summary_swatches(page: &str) -> Vec<(String, String)> {
    let summary = page
        .split("<h2>Summary</h2>")
        .nth(1)
        .and_then(|s| s.split("</table>").next())
        .expect("a summary table");
    summary
        .split("<span class=\"sw\" style=\"background:")
        .skip(1)
        .map(|s| {
            let (colour, rest) = s.split_once("\"></span>").expect("a swatch");
            let name = rest.split('<').next().unwrap_or("");
            (name.to_string(), colour.to_ascii_lowercase())
        })
        .collect()
}

/// The summary row of an operation, as its cells' text.
fn summary_row(page: &str, name: &str) -> Vec<String> {
    let summary = page.split("<h2>Summary</h2>").nth(1).expect("a summary");
    let row = summary
        .split("<tr>")
        .find(|r| r.contains(&format!("</span>{name}</td>")))
        .unwrap_or_else(|| panic!("no summary row for {name}"));
    row.split("<td>")
        .skip(1)
        .map(|c| c.split("</td>").next().unwrap_or("").to_string())
        .collect()
}

/// The HTML report (as written by the binary): every series has a colour of its own, in the
/// table and in the plots (get and its time to first byte included); operations without a
/// payload show no throughput; the page is written like any file the user creates (0666 less
/// the umask, not a temporary file's 0600).
#[test]
fn html_report_series_colours_throughput_and_file_mode() {
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("report.html");
    let out = output(
        bin()
            .args([
                "--store",
                "memory://",
                "bench",
                "--op",
                "mixed:put=1,get=2,head=1,delete=1,list=1",
                "--count",
                "600",
                "--warmup",
                "0s",
                "--objects",
                "200",
                "-c",
                "4",
                "-q",
                "--html",
            ])
            .arg(&html),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = std::fs::read_to_string(&html).unwrap();

    // One colour per series, each used in the plots.
    let swatches = summary_swatches(&page);
    let names: Vec<&str> = swatches.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["put", "get", "get ttfb", "head", "delete", "list"],
        "{swatches:?}"
    );
    let colours: std::collections::BTreeSet<&str> =
        swatches.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(
        colours.len(),
        swatches.len(),
        "shared colours: {swatches:?}"
    );
    let svgs: Vec<String> = page
        .split("<svg")
        .skip(1)
        .map(|s| s.split("</svg>").next().unwrap().to_ascii_lowercase())
        .collect();
    assert_eq!(svgs.len(), 3, "three plots");
    let latency = &svgs[1];
    for (name, colour) in &swatches {
        assert!(
            latency.contains(&format!("stroke=\"{colour}\"")),
            "the latency distribution draws no {name} line in {colour}"
        );
    }
    // The legends sit right of the plotting area (of every tick label), where they hide no
    // line's end.
    for svg in &svgs {
        let texts: Vec<(f64, String)> = svg
            .split("<text")
            .skip(1)
            .map(|t| {
                let x = t.split_once("x=\"").unwrap().1.split('"').next().unwrap();
                let body = t
                    .split_once('>')
                    .unwrap()
                    .1
                    .split("</text>")
                    .next()
                    .unwrap();
                (x.parse().unwrap(), body.trim().to_string())
            })
            .collect();
        let (legend, others): (Vec<_>, Vec<_>) = texts
            .iter()
            .partition(|(_, t)| names.contains(&t.as_str()) || t == "errors");
        assert!(legend.len() >= 2, "no legend: {texts:?}");
        let legend_x = legend.iter().map(|t| t.0).fold(f64::INFINITY, f64::min);
        let plot_x = others.iter().map(|t| t.0).fold(0.0, f64::max);
        assert!(
            legend_x > plot_x + 20.0,
            "legend at x={legend_x}, plot labels up to x={plot_x}"
        );
    }

    // No made-up zero throughput for operations that move no payload.
    assert!(
        !page.contains("<td>0.0 KiB/s</td>"),
        "a zero throughput is shown"
    );
    for name in ["head", "delete", "list"] {
        let row = summary_row(&page, name);
        assert_eq!(row[3], "\u{2014}", "{name}'s throughput: {row:?}");
        assert!(
            row[2].parse::<f64>().unwrap() > 0.0,
            "{name}'s ops/s: {row:?}"
        );
    }
    for name in ["put", "get"] {
        let row = summary_row(&page, name);
        assert!(row[3].ends_with("iB/s"), "{name}'s throughput: {row:?}");
    }

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        // What this process's umask makes of a new file: the mode the report must have.
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"x").unwrap();
        assert_eq!(mode(&html), mode(&plain), "report mode {:o}", mode(&html));
        if mode(&plain) == 0o644 {
            assert_eq!(mode(&html), 0o644);
        }
        // Written again over an existing file: the same.
        let out = output(
            bin()
                .args(["--store", "memory://", "bench", "-n", "10", "-q", "--html"])
                .arg(&html),
        );
        assert!(out.status.success());
        assert_eq!(mode(&html), mode(&plain));
    }
}

/// `profile` on a store seeded with known sizes over 4 shards, plus orphans of each kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_reports_what_a_seeded_store_holds() {
    let dir = tempfile::tempdir().unwrap();
    // One file per piece: the orphans below are made by copying piece files.
    let url = format!(
        "file://{}/shard-%d?shards=4&pack=false",
        dir.path().display()
    );
    let store = PieceStore::open(Config::from_url(&url).unwrap())
        .await
        .unwrap();
    let sizes: Vec<usize> = (0..60)
        .map(|i| [0, 1, 100, 4096, 5000, 70_000][i % 6] + i)
        .collect();
    let mut per_shard = [(0u64, 0u64); 4];
    for (i, len) in sizes.iter().enumerate() {
        let key = format!("{i}_s0");
        store.put(&key, vec![7u8; *len]).await.unwrap();
        let s = store.shard_of(&key);
        per_shard[s].0 += 1;
        per_shard[s].1 += *len as u64;
    }
    // A piece on the wrong shard, a temp file of the original, and a leftover probe.
    let home = store.shard_of("0_s0");
    let wrong = (home + 1) % 4;
    std::fs::copy(
        dir.path().join(format!("shard-{home}/0_s0")),
        dir.path().join(format!("shard-{wrong}/0_s0")),
    )
    .unwrap();
    std::fs::write(dir.path().join("shard-2/.5_s0.tmp3"), b"half").unwrap();
    std::fs::create_dir_all(dir.path().join("shard-3/.piecestore/probe")).unwrap();
    std::fs::write(dir.path().join("shard-3/.piecestore/probe/1-2"), b"probe").unwrap();

    let p = ok_json(bin().args(["--store", &url, "profile", "--json"]));
    let total: u64 = sizes.iter().map(|s| *s as u64).sum();
    assert_eq!(u(&p["pieces"]), 60);
    assert_eq!(u(&p["bytes"]), total);
    assert_eq!(u(&p["min_size"]), 0);
    assert_eq!(u(&p["max_size"]), *sizes.iter().max().unwrap() as u64);
    let buckets = p["sizes"].as_array().unwrap();
    assert_eq!(buckets.iter().map(|b| u(&b["pieces"])).sum::<u64>(), 60);
    assert_eq!(buckets.iter().map(|b| u(&b["bytes"])).sum::<u64>(), total);
    for b in buckets {
        let (min, max) = (u(&b["min"]), u(&b["max"]));
        let want = sizes
            .iter()
            .filter(|s| (min..=max).contains(&(**s as u64)))
            .count() as u64;
        assert_eq!(u(&b["pieces"]), want, "bucket {min}..={max}");
    }
    for (i, s) in p["shards"].as_array().unwrap().iter().enumerate() {
        assert_eq!((u(&s["pieces"]), u(&s["bytes"])), per_shard[i], "shard {i}");
    }
    let max_bytes = per_shard.iter().map(|s| s.1).max().unwrap() as f64;
    assert!((f(&p["bytes_skew"]) - max_bytes / (total as f64 / 4.0)).abs() < 1e-9);
    let o = &p["orphans"];
    assert_eq!(
        (u(&o["misplaced"]), u(&o["temp"]), u(&o["internal"])),
        (1, 1, 1),
        "{o}"
    );
    assert_eq!(u(&o["misplaced_bytes"]), sizes[0] as u64);
    assert!(p["packs"].is_null());
    // The table names the same numbers.
    let out = output(bin().args(["--store", &url, "profile"]));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(&format!("pieces: 60 ({total} bytes")),
        "{table}"
    );
    assert!(table.contains("misplaced: belongs on shard"), "{table}");
}

/// `profile` over a sharded S3 store: the same counts as what was put.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_on_a_sharded_s3_store() {
    let Some(s) = server(ServerKind::Moto) else {
        return;
    };
    let stem = unique_name("profile-s3");
    let config = s.config(&stem, 3);
    let store = PieceStore::open(config).await.unwrap();
    let mut bytes = 0;
    for i in 0..30u64 {
        let len = (i * 977) as usize;
        bytes += len as u64;
        store.put(&format!("{i}_s1"), vec![1u8; len]).await.unwrap();
    }
    let inv = store.inventory(Default::default(), &|_| {}).await.unwrap();
    assert_eq!((inv.pieces, inv.bytes), (30, bytes));
    assert_eq!(inv.shards.iter().map(|s| s.pieces).sum::<u64>(), 30);
    assert_eq!(inv.orphans.total(), 0, "{:?}", inv.orphans);
    assert!(inv.shards.iter().all(|s| s.backend.contains(&stem)));
}
