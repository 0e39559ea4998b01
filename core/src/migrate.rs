//! Copying every piece from one store to another: verified, resumable, with progress.
//!
//! Resuming needs no state file: pieces are immutable and puts idempotent, so a second run
//! looks each piece up at the destination (one HEAD) and skips it when its size and checksum
//! already match. A run killed at any moment leaves only whole, verified pieces behind.

use std::sync::Mutex;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};

use crate::backend::PieceMeta;
use crate::error::{Error, Result};
use crate::store::PieceStore;

/// Where [`PieceStore::copy_to`] copies pieces: another store (what `migrate` does), or a
/// node reached over the network (what `piecestore replicate` does with a peer).
pub trait Destination: Send + Sync {
    /// The size and checksum of the piece `key` there (`NotFound` when it has none).
    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<PieceMeta>>;
    /// Stores `bytes` as `key` there, create-only: the same bytes again succeed, other bytes
    /// under an existing key fail with `AlreadyExists`.
    fn put<'a>(&'a self, key: &'a str, bytes: Bytes) -> BoxFuture<'a, Result<()>>;
}

impl Destination for PieceStore {
    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<PieceMeta>> {
        Box::pin(PieceStore::head(self, key))
    }

    fn put<'a>(&'a self, key: &'a str, bytes: Bytes) -> BoxFuture<'a, Result<()>> {
        Box::pin(PieceStore::put(self, key, bytes))
    }
}

/// Options of [`PieceStore::migrate_to`].
#[derive(Debug, Clone, Copy)]
pub struct MigrateOptions {
    /// Only count: list the source and look each piece up at the destination, copy nothing.
    pub dry_run: bool,
    /// Pieces in flight at once.
    pub concurrency: usize,
}

impl MigrateOptions {
    /// The most pieces a migration keeps in flight: each holds a whole piece in memory, so an
    /// unbounded count would read a whole store into memory at once.
    pub const MAX_CONCURRENCY: usize = 4096;

    /// Checks the options, as [`PieceStore::migrate_to`] does before it starts: `concurrency`
    /// from 1 to [`MigrateOptions::MAX_CONCURRENCY`]. The CLI, Python, C, Go and UniFFI pass
    /// their user's number through (C, Go and UniFFI read 0 as the default first) and get this
    /// error; Node calls it up front and throws its failure as a synchronous `RangeError`.
    pub fn check(&self) -> Result<()> {
        if (1..=Self::MAX_CONCURRENCY).contains(&self.concurrency) {
            Ok(())
        } else {
            Err(Error::InvalidConfig(format!(
                "migrate concurrency must be from 1 to {}, not {}",
                Self::MAX_CONCURRENCY,
                self.concurrency
            )))
        }
    }
}

impl Default for MigrateOptions {
    fn default() -> Self {
        MigrateOptions {
            dry_run: false,
            concurrency: 16,
        }
    }
}

/// Where a migration stands (passed to the progress callback after every piece).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MigrateProgress {
    /// Pieces in the source.
    pub total_pieces: u64,
    /// Their bytes.
    pub total_bytes: u64,
    /// Pieces handled so far (copied + skipped + failed).
    pub done_pieces: u64,
    /// Bytes of the pieces handled so far.
    pub done_bytes: u64,
    /// Pieces copied (or, in a dry run, that would be).
    pub copied: u64,
    /// Bytes copied (or that would be).
    pub copied_bytes: u64,
    /// Pieces already at the destination with the same size and checksum.
    pub skipped: u64,
    /// Pieces that failed.
    pub failed: u64,
}

/// The outcome of a migration.
#[derive(Debug, Default)]
pub struct MigrateSummary {
    /// The final counts.
    pub progress: MigrateProgress,
    /// Each failed piece's key and error.
    pub failures: Vec<(String, Error)>,
}

/// One failed piece of a [`MigrateSummary`] as bindings report it: its key, the error
/// kind's stable code (e.g. `PIECE_NOT_FOUND`) and the message (which names no secret).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrateFailure {
    /// The piece key.
    pub key: String,
    /// The error kind's stable code.
    pub code: &'static str,
    /// What went wrong.
    pub message: String,
}

impl MigrateSummary {
    /// [`MigrateSummary::failures`] as reports: one conversion every binding shares.
    pub fn failure_reports(&self) -> Vec<MigrateFailure> {
        self.failures
            .iter()
            .map(|(key, e)| MigrateFailure {
                key: key.clone(),
                code: e.kind().as_str(),
                message: e.to_string(),
            })
            .collect()
    }
}

/// The report bindings hand their callers: the final counts' fields, then `failures` as a
/// list of [`MigrateFailure`].
impl serde::Serialize for MigrateSummary {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let p = &self.progress;
        let mut m = ser.serialize_map(Some(9))?;
        m.serialize_entry("total_pieces", &p.total_pieces)?;
        m.serialize_entry("total_bytes", &p.total_bytes)?;
        m.serialize_entry("done_pieces", &p.done_pieces)?;
        m.serialize_entry("done_bytes", &p.done_bytes)?;
        m.serialize_entry("copied", &p.copied)?;
        m.serialize_entry("copied_bytes", &p.copied_bytes)?;
        m.serialize_entry("skipped", &p.skipped)?;
        m.serialize_entry("failed", &p.failed)?;
        m.serialize_entry("failures", &self.failure_reports())?;
        m.end()
    }
}

enum Outcome {
    Copied,
    Skipped,
}

impl PieceStore {
    /// Copies every piece of this store into `dest`, verifying each one: the source read is
    /// checked against the piece's CRC32C, and afterwards the destination must report the
    /// same size and CRC32C. Pieces already at `dest` with the same size and checksum are
    /// skipped, so an interrupted run is resumed by running it again.
    ///
    /// Errors listing the source end the run (`Err`); a piece that fails is counted and
    /// reported in [`MigrateSummary::failures`], and the run goes on.
    pub async fn migrate_to(
        &self,
        dest: &PieceStore,
        opts: MigrateOptions,
        on_progress: &(dyn Fn(&MigrateProgress) + Sync),
    ) -> Result<MigrateSummary> {
        self.copy_to(dest, "", opts, on_progress).await
    }

    /// [`PieceStore::migrate_to`] for the pieces whose keys start with `prefix`, into any
    /// [`Destination`] (another store, a peer): verified, resumable, with progress.
    pub async fn copy_to(
        &self,
        dest: &dyn Destination,
        prefix: &str,
        opts: MigrateOptions,
        on_progress: &(dyn Fn(&MigrateProgress) + Sync),
    ) -> Result<MigrateSummary> {
        opts.check()?;
        let pieces: Vec<(String, u64)> = self
            .list(prefix)
            .map_ok(|m| (m.key, m.size))
            .try_collect()
            .await?;
        let progress = Mutex::new(MigrateProgress {
            total_pieces: pieces.len() as u64,
            total_bytes: pieces.iter().map(|(_, s)| s).sum(),
            ..Default::default()
        });
        let failures = Mutex::new(Vec::new());
        on_progress(&progress.lock().map(|p| *p).unwrap_or_default());
        futures::stream::iter(pieces)
            .for_each_concurrent(opts.concurrency, |(key, size)| {
                let (progress, failures) = (&progress, &failures);
                async move {
                    let outcome = self.migrate_one(dest, &key, opts.dry_run).await;
                    let snapshot = {
                        let Ok(mut p) = progress.lock() else { return };
                        p.done_pieces += 1;
                        p.done_bytes += size;
                        match outcome {
                            Ok(Outcome::Copied) => {
                                p.copied += 1;
                                p.copied_bytes += size;
                            }
                            Ok(Outcome::Skipped) => p.skipped += 1,
                            Err(e) => {
                                p.failed += 1;
                                if let Ok(mut f) = failures.lock() {
                                    f.push((key, e));
                                }
                            }
                        }
                        *p
                    };
                    on_progress(&snapshot);
                }
            })
            .await;
        Ok(MigrateSummary {
            progress: progress.into_inner().unwrap_or_default(),
            failures: failures.into_inner().unwrap_or_default(),
        })
    }

    async fn migrate_one(
        &self,
        dest: &dyn Destination,
        key: &str,
        dry_run: bool,
    ) -> Result<Outcome> {
        let there = match dest.head(key).await {
            Ok(m) => Some(m),
            Err(Error::NotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        let mut bytes = None;
        if let Some(there) = there {
            // Already there? Compare size and checksum; a source piece stored without a
            // checksum (the original's file backend stores none) is compared by its bytes.
            let source = self.head(key).await?;
            let crc = match source.crc32c {
                Some(c) => c,
                None => {
                    let (b, _) = self.get_with_crc(key).await?;
                    let c = crate::checksum::crc32c(&b);
                    bytes = Some(b);
                    c
                }
            };
            if there.size == source.size && there.crc32c == Some(crc) {
                return Ok(Outcome::Skipped);
            }
        }
        if dry_run {
            return Ok(Outcome::Copied);
        }
        let bytes = match bytes.take() {
            Some(b) => b,
            None => self.get_with_crc(key).await?.0, // verified against the source checksum
        };
        let (size, crc) = (bytes.len() as u64, crate::checksum::crc32c(&bytes));
        // Create-only: a different piece already under this key at the destination fails.
        dest.put(key, bytes).await?;
        let after = dest.head(key).await?;
        if after.crc32c != Some(crc) || after.size != size {
            return Err(Error::Corrupt {
                key: key.into(),
                backend: "destination".into(),
                detail: format!(
                    "after copy: size {} crc32c {:?}, expected {size} {crc}",
                    after.size, after.crc32c
                ),
            });
        }
        Ok(Outcome::Copied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[tokio::test]
    async fn a_concurrency_out_of_range_is_refused_before_anything_is_copied() {
        let src = PieceStore::open_spec("memory://").await.unwrap();
        let dest = PieceStore::open_spec("memory://").await.unwrap();
        src.put("1_s0", b"piece".to_vec()).await.unwrap();
        for concurrency in [0, MigrateOptions::MAX_CONCURRENCY + 1, usize::MAX] {
            let opts = MigrateOptions {
                concurrency,
                ..Default::default()
            };
            let e = src.migrate_to(&dest, opts, &|_| {}).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{concurrency}: {e}");
            assert!(
                e.to_string().contains("from 1 to 4096") && e.to_string().contains("concurrency"),
                "{e}"
            );
            assert_eq!(
                dest.head("1_s0").await.unwrap_err().kind(),
                ErrorKind::NotFound
            );
        }
        let opts = MigrateOptions {
            concurrency: MigrateOptions::MAX_CONCURRENCY,
            ..Default::default()
        };
        let done = src.migrate_to(&dest, opts, &|_| {}).await.unwrap();
        assert_eq!(done.progress.copied, 1);
        assert_eq!(dest.get("1_s0").await.unwrap(), &b"piece"[..]);
    }
}
