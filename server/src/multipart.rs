//! Multipart uploads: parts staged durably on local disk, one directory per upload, joined into
//! one piece by CompleteMultipartUpload.
//!
//! `UploadDir/<upload id>/meta` names the bucket and key; `part-NNNNN` holds a part, written to
//! a temporary name, fsync'd and renamed (a part uploaded again replaces the old one whole).
//! Complete checks every listed part's ETag (its CRC32C, as for objects) and order, joins them
//! and stores the piece with a put like any other, then removes the directory; Abort removes
//! it. Uploads older than `UploadExpiry` are swept at start and every hour.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use s3s::{S3Error, S3ErrorCode, S3Result, s3_error};

/// The most parts an upload may have (S3's limit).
pub(crate) const MAX_PARTS: i32 = 10_000;

/// The staging area of multipart uploads.
pub(crate) struct Uploads {
    dir: PathBuf,
    expiry: Duration,
}

fn internal(what: &str, e: std::io::Error) -> S3Error {
    S3Error::with_message(S3ErrorCode::InternalError, format!("{what}: {e}"))
}

fn no_such_upload() -> S3Error {
    s3_error!(
        NoSuchUpload,
        "no such upload: it was completed, aborted or has expired"
    )
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> S3Result<T> + Send + 'static,
) -> S3Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| S3Error::with_message(S3ErrorCode::InternalError, e.to_string()))?
}

impl Uploads {
    /// The staging area at `dir` (created if missing), sweeping uploads older than `expiry`.
    pub(crate) fn open(dir: PathBuf, expiry: Duration) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let u = Uploads { dir, expiry };
        u.sweep();
        Ok(u)
    }

    /// The default staging directory.
    pub(crate) fn default_dir() -> PathBuf {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir)
            .join("piecestore")
            .join("serve-uploads")
    }

    /// Removes uploads older than the expiry; returns how many.
    pub(crate) fn sweep(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut removed = 0;
        for e in entries.flatten() {
            let old = e
                .path()
                .join("meta")
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_none_or(|age| age > self.expiry);
            if old && std::fs::remove_dir_all(e.path()).is_ok() {
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(removed, "expired multipart uploads removed");
        }
        removed
    }

    /// Begins an upload of `key` in `bucket`; returns its id.
    pub(crate) async fn create(&self, bucket: &str, key: &str) -> S3Result<String> {
        let id = random_id().map_err(|e| internal("an upload id", e))?;
        let dir = self.dir.join(&id);
        let meta = format!("{bucket}\n{key}\n");
        let root = self.dir.clone();
        blocking(move || {
            std::fs::create_dir(&dir).map_err(|e| internal("the upload's directory", e))?;
            let mut f = std::fs::File::create(dir.join("meta"))
                .map_err(|e| internal("the upload's meta", e))?;
            f.write_all(meta.as_bytes())
                .and_then(|_| f.sync_all())
                .and_then(|_| fsync_dir(&dir))
                .and_then(|_| fsync_dir(&root))
                .map_err(|e| internal("the upload's meta", e))
        })
        .await?;
        Ok(id)
    }

    /// The directory of upload `id`, which must be of `key` in `bucket`.
    fn upload(&self, id: &str, bucket: &str, key: &str) -> S3Result<PathBuf> {
        // Ours are 32 hex digits: anything else (a path, `..`) is no upload of ours.
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(no_such_upload());
        }
        let dir = self.dir.join(id);
        let meta = std::fs::read_to_string(dir.join("meta")).map_err(|_| no_such_upload())?;
        if meta != format!("{bucket}\n{key}\n") {
            return Err(no_such_upload());
        }
        Ok(dir)
    }

    /// Stores part `n` of upload `id` durably; returns its CRC32C.
    pub(crate) async fn put_part(
        &self,
        id: &str,
        bucket: &str,
        key: &str,
        n: i32,
        data: Bytes,
    ) -> S3Result<u32> {
        if !(1..=MAX_PARTS).contains(&n) {
            return Err(s3_error!(
                InvalidArgument,
                "partNumber must be from 1 to 10000"
            ));
        }
        let dir = self.upload(id, bucket, key)?;
        let crc = piecestore::checksum::crc32c(&data);
        blocking(move || {
            let tmp = dir.join(format!("part-{n:05}.tmp"));
            let done = dir.join(format!("part-{n:05}"));
            let mut f = std::fs::File::create(&tmp).map_err(|e| internal("a part", e))?;
            f.write_all(&data)
                .and_then(|_| f.sync_all())
                .and_then(|_| std::fs::rename(&tmp, &done))
                .and_then(|_| fsync_dir(&dir))
                .map_err(|e| internal("a part", e))
        })
        .await?;
        Ok(crc)
    }

    /// The parts `parts` (number and ETag, in the client's order) of upload `id` joined, at
    /// most `max` bytes.
    pub(crate) async fn join(
        &self,
        id: &str,
        bucket: &str,
        key: &str,
        parts: Vec<(i32, String)>,
        max: u64,
    ) -> S3Result<Bytes> {
        if parts.is_empty() {
            return Err(s3_error!(
                MalformedXML,
                "CompleteMultipartUpload names no parts"
            ));
        }
        if parts.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(s3_error!(
                InvalidPartOrder,
                "parts must be listed in ascending order"
            ));
        }
        let dir = self.upload(id, bucket, key)?;
        blocking(move || {
            let mut out = BytesMut::new();
            for (n, etag) in parts {
                let data = std::fs::read(dir.join(format!("part-{n:05}"))).map_err(|_| {
                    S3Error::with_message(
                        S3ErrorCode::InvalidPart,
                        format!("part {n} was not uploaded"),
                    )
                })?;
                let crc = piecestore::checksum::crc32c(&data);
                if etag.trim_matches('"') != format!("{crc:08x}") {
                    return Err(S3Error::with_message(
                        S3ErrorCode::InvalidPart,
                        format!("part {n}'s ETag is not the one uploaded"),
                    ));
                }
                if out.len() as u64 + data.len() as u64 > max {
                    return Err(S3Error::with_message(
                        S3ErrorCode::EntityTooLarge,
                        format!("the parts are over this server's MaxObjectSize of {max} bytes"),
                    ));
                }
                out.extend_from_slice(&data);
            }
            Ok(out.freeze())
        })
        .await
    }

    /// Removes upload `id` and its parts.
    pub(crate) async fn remove(&self, id: &str, bucket: &str, key: &str) -> S3Result<()> {
        let dir = self.upload(id, bucket, key)?;
        blocking(move || {
            std::fs::remove_dir_all(&dir).map_err(|e| internal("removing the upload", e))
        })
        .await
    }
}

/// 128 random bits as 32 hex digits.
fn random_id() -> std::io::Result<String> {
    let mut b = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parts_join_in_order_and_are_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let u = Uploads::open(tmp.path().join("up"), Duration::from_secs(3600)).unwrap();
        let id = u.create("b", "k").await.unwrap();
        let c1 = u
            .put_part(&id, "b", "k", 1, Bytes::from_static(b"hello "))
            .await
            .unwrap();
        let c2 = u
            .put_part(&id, "b", "k", 2, Bytes::from_static(b"world"))
            .await
            .unwrap();
        let parts = vec![(1, format!("{c1:08x}")), (2, format!("\"{c2:08x}\""))];
        let joined = u.join(&id, "b", "k", parts.clone(), 100).await.unwrap();
        assert_eq!(&joined[..], b"hello world");
        // another key, a wrong ETag, a wrong order, too large, a path for an id
        assert!(u.join(&id, "b", "other", parts.clone(), 100).await.is_err());
        let wrong = vec![(1, "00000000".to_string()), (2, format!("{c2:08x}"))];
        assert!(u.join(&id, "b", "k", wrong, 100).await.is_err());
        let reversed = vec![parts[1].clone(), parts[0].clone()];
        assert!(u.join(&id, "b", "k", reversed, 100).await.is_err());
        assert!(u.join(&id, "b", "k", parts.clone(), 5).await.is_err());
        assert!(
            u.join("../../etc", "b", "k", parts.clone(), 100)
                .await
                .is_err()
        );
        u.remove(&id, "b", "k").await.unwrap();
        assert!(u.join(&id, "b", "k", parts, 100).await.is_err());
    }

    #[tokio::test]
    async fn expired_uploads_are_swept() {
        let tmp = tempfile::tempdir().unwrap();
        let u = Uploads::open(tmp.path().to_path_buf(), Duration::from_secs(3600)).unwrap();
        let id = u.create("b", "k").await.unwrap();
        assert_eq!(u.sweep(), 0);
        std::thread::sleep(Duration::from_millis(20));
        let short = Uploads::open(tmp.path().to_path_buf(), Duration::ZERO).unwrap();
        assert!(!tmp.path().join(&id).exists(), "swept at open");
        assert_eq!(short.sweep(), 0);
    }
}
