//! Functional checks a benchmark runs first (`piecestore bench --check`), as `juicefs objbench`
//! does: does this store behave like a piece store at all? Each check is small and names what
//! it expected.

use std::time::Instant;

use bytes::Bytes;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::checksum;
use crate::error::ErrorKind;
use crate::store::{PieceStore, PutOptions};

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// What was checked, e.g. `get returns the bytes put`.
    pub name: String,
    /// Whether it behaved.
    pub passed: bool,
    /// What happened instead, when it did not.
    pub detail: Option<String>,
    /// How long it took, µs.
    pub took_us: f64,
}

fn expect_kind<T: std::fmt::Debug>(r: crate::Result<T>, kind: ErrorKind) -> Result<(), String> {
    match r {
        Err(e) if e.kind() == kind => Ok(()),
        Err(e) => Err(format!("expected {kind}, got {}: {e}", e.kind())),
        Ok(v) => Err(format!("expected {kind}, got success ({v:?})")),
    }
}

fn expect_eq(what: &str, got: &[u8], want: &[u8]) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "{what}: got {} bytes, expected {} (first difference at byte {})",
            got.len(),
            want.len(),
            got.iter()
                .zip(want)
                .position(|(a, b)| a != b)
                .unwrap_or(got.len().min(want.len()))
        ))
    }
}

/// Runs the checks under `prefix` (which must be empty of pieces), stopping at the first
/// failure; the pieces it writes are deleted at the end, whatever happened.
pub async fn run_checks(store: &PieceStore, prefix: &str) -> Vec<CheckResult> {
    let key = |name: &str| format!("{prefix}check-{name}");
    let data = Bytes::from(super::random_bytes(100 << 10, 7));
    let other = Bytes::from(super::random_bytes(100 << 10, 8));
    let (k, k_empty, k_missing) = (key("piece"), key("empty"), key("missing"));
    type Check<'a> = (
        &'static str,
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>>,
    );
    let s = store;
    let checks: Vec<Check<'_>> = vec![
        (
            "put a 100 KiB piece",
            Box::pin(async { s.put(&k, data.clone()).await.map_err(|e| e.to_string()) }),
        ),
        (
            "get returns the bytes put",
            Box::pin(async {
                let got = s.get(&k).await.map_err(|e| e.to_string())?;
                expect_eq("get", &got, &data)
            }),
        ),
        (
            "get_range returns the slice",
            Box::pin(async {
                let got = s
                    .get_range(&k, 1000, 5000)
                    .await
                    .map_err(|e| e.to_string())?;
                expect_eq("range 1000+5000", &got, &data[1000..6000])?;
                let tail = s
                    .get_range(&k, data.len() as u64 - 1, 1)
                    .await
                    .map_err(|e| e.to_string())?;
                expect_eq("last byte", &tail, &data[data.len() - 1..])
            }),
        ),
        (
            "a range past the end is INVALID_RANGE",
            Box::pin(async {
                expect_kind(
                    s.get_range(&k, data.len() as u64 - 10, 11).await,
                    ErrorKind::InvalidRange,
                )
            }),
        ),
        (
            "head gives size and checksum",
            Box::pin(async {
                let m = s.head(&k).await.map_err(|e| e.to_string())?;
                let crc = checksum::crc32c(&data);
                if m.size != data.len() as u64 || m.crc32c != Some(crc) {
                    return Err(format!(
                        "head says size {} crc {:?}, expected {} and {crc}",
                        m.size,
                        m.crc32c,
                        data.len()
                    ));
                }
                Ok(())
            }),
        ),
        (
            "an empty piece round-trips",
            Box::pin(async {
                s.put(&k_empty, Bytes::new())
                    .await
                    .map_err(|e| e.to_string())?;
                let got = s.get(&k_empty).await.map_err(|e| e.to_string())?;
                expect_eq("empty piece", &got, b"")
            }),
        ),
        (
            "list shows exactly the pieces put",
            Box::pin(async {
                let mut keys: Vec<String> = s
                    .list(prefix)
                    .map_ok(|m| m.key)
                    .try_collect()
                    .await
                    .map_err(|e| e.to_string())?;
                keys.sort();
                let mut want = vec![k_empty.clone(), k.clone()];
                want.sort();
                if keys == want {
                    Ok(())
                } else {
                    Err(format!("listed {keys:?}, expected {want:?}"))
                }
            }),
        ),
        (
            "putting the same bytes again succeeds",
            Box::pin(async { s.put(&k, data.clone()).await.map_err(|e| e.to_string()) }),
        ),
        (
            "putting other bytes is PIECE_EXISTS",
            Box::pin(async {
                expect_kind(s.put(&k, other.clone()).await, ErrorKind::AlreadyExists)?;
                let got = s.get(&k).await.map_err(|e| e.to_string())?;
                expect_eq("after a refused put", &got, &data)
            }),
        ),
        (
            "an overwrite replaces the piece",
            Box::pin(async {
                s.put_opts(&k, other.clone(), PutOptions { overwrite: true })
                    .await
                    .map_err(|e| e.to_string())?;
                let got = s.get(&k).await.map_err(|e| e.to_string())?;
                expect_eq("after overwrite", &got, &other)
            }),
        ),
        (
            "a missing key is PIECE_NOT_FOUND",
            Box::pin(async {
                expect_kind(s.get(&k_missing).await, ErrorKind::NotFound)?;
                expect_kind(s.head(&k_missing).await, ErrorKind::NotFound)?;
                match s.exists(&k_missing).await {
                    Ok(false) => Ok(()),
                    other => Err(format!("exists of a missing key gave {other:?}")),
                }
            }),
        ),
        (
            "an invalid key is INVALID_KEY",
            Box::pin(async {
                expect_kind(
                    s.put(&format!("{prefix}a//b"), Bytes::new()).await,
                    ErrorKind::InvalidKey,
                )
            }),
        ),
        (
            "delete removes the piece",
            Box::pin(async {
                s.delete(&k).await.map_err(|e| e.to_string())?;
                expect_kind(s.get(&k).await, ErrorKind::NotFound)
            }),
        ),
        (
            "deleting a missing piece succeeds",
            Box::pin(async { s.delete(&k).await.map_err(|e| e.to_string()) }),
        ),
    ];
    let mut results = Vec::new();
    for (name, check) in checks {
        let start = Instant::now();
        let outcome = check.await;
        results.push(CheckResult {
            name: name.to_string(),
            passed: outcome.is_ok(),
            detail: outcome.err(),
            took_us: start.elapsed().as_secs_f64() * 1e6,
        });
        if results.last().is_some_and(|r| !r.passed) {
            break;
        }
    }
    for k in [&k, &k_empty] {
        let _ = store.delete(k).await;
    }
    results
}
