//! Pack object I/O, built on the backends' plain object operations: writing, reading, listing
//! and deleting packs, and the token that names a shard's contents.
//!
//! These live in the pack layer (the backends know the names of PieceStore's own objects, from
//! [`crate::reserved`], but nothing of packs), so `backend` does not import `pack`.

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::PutPayload;

use super::index::PackId;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::reserved::{PACKS_PREFIX, RESERVED_PREFIX, TOKEN_FILE, is_pack_path, pack_path};

/// Whether `stored` is exactly the bytes of `payload`.
fn same(stored: &Bytes, payload: &PutPayload) -> bool {
    if stored.len() != payload.content_length() {
        return false;
    }
    let mut at = 0;
    payload.iter().all(|part| {
        let end = at + part.len();
        let equal = stored[at..end] == part[..];
        at = end;
        equal
    })
}

impl Backend {
    /// Writes a sealed pack, create-only where the backend honours it (pack ids are unique,
    /// so a conflict means a bug, never a piece to overwrite). Durable when it returns (files:
    /// data and directory fsync'd).
    ///
    /// Ids are unique to their writer, so a conflict is almost always this write's own earlier
    /// attempt: stored, but its acknowledgement lost on the way, and the retry met it. The pack
    /// there is read back, and if it holds exactly these bytes the write is done.
    pub(crate) async fn put_pack(&self, id: PackId, payload: impl Into<PutPayload>) -> Result<()> {
        let path = pack_path(id);
        let create = self.honours_create().await;
        let payload: PutPayload = payload.into();
        if self.put_reserved(&path, payload.clone(), create).await? {
            return Ok(());
        }
        let (found, retryable) = match self.read_pack(id).await {
            Ok(there) if same(&there, &payload) => {
                tracing::debug!(pack = %path, "a retried pack write found its own first attempt");
                return Ok(());
            }
            Ok(there) => {
                let n = payload.content_length();
                (format!("{} bytes, not the {n} written", there.len()), false)
            }
            // Whether it is this write's own cannot be told now: a retry may tell.
            Err(e) => (format!("reading it back failed: {e}"), e.is_retryable()),
        };
        Err(Error::Backend {
            op: "put",
            key: Some(path),
            backend: self.label().into(),
            message: format!("a pack of this id exists already ({found})"),
            retryable,
        })
    }

    /// Reads `range` of a pack (one ranged GET). `NotFound` names the pack.
    pub(crate) async fn read_pack_range(
        &self,
        id: PackId,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes> {
        self.get_reserved_range(&pack_path(id), range).await
    }

    /// A pack's size in bytes.
    pub(crate) async fn pack_size(&self, id: PackId) -> Result<u64> {
        self.head_reserved(&pack_path(id)).await
    }

    /// Reads a whole pack.
    pub(crate) async fn read_pack(&self, id: PackId) -> Result<Bytes> {
        self.get_reserved(&pack_path(id)).await
    }

    /// Deletes a pack; a missing one is success.
    pub(crate) async fn delete_pack(&self, id: PackId) -> Result<()> {
        self.delete_reserved(&pack_path(id)).await
    }

    /// Every pack object of this shard: `(id, size)`, by id. Other objects under the packs
    /// prefix (a local write's staging file) are left out.
    pub(crate) async fn list_packs(&self) -> Result<Vec<(PackId, u64)>> {
        let mut out: Vec<(PackId, u64)> = self
            .list_reserved(PACKS_PREFIX)
            .try_filter_map(|(path, size)| {
                let id = path
                    .strip_prefix(PACKS_PREFIX)
                    .and_then(crate::reserved::parse_pack_name);
                futures::future::ready(Ok(id.map(|id| (id, size))))
            })
            .try_collect()
            .await?;
        out.sort_unstable();
        Ok(out)
    }

    /// The random token that names this shard's contents (`.piecestore/index-token`, made on
    /// first use): an index made for other contents (a bucket wiped or recreated since) is
    /// recognised by its different token.
    pub(crate) async fn contents_token(&self) -> Result<u64> {
        for _ in 0..3 {
            match self.get_reserved(TOKEN_FILE).await {
                Ok(b) => {
                    let text = String::from_utf8_lossy(&b);
                    return u64::from_str_radix(text.trim(), 16)
                        .map_err(|_| self.corrupt_object(TOKEN_FILE, "not a hex token"));
                }
                Err(Error::NotFound { .. }) => {
                    let token = (super::new_pack_id() as u64) | 1;
                    let body = PutPayload::from(format!("{token:016x}\n").into_bytes());
                    if self.put_reserved(TOKEN_FILE, body, true).await? {
                        return Ok(token);
                    }
                    // Another process made it first: read theirs.
                }
                Err(e) => return Err(e),
            }
        }
        Err(self.corrupt_object(TOKEN_FILE, "keeps changing"))
    }

    /// Whether this shard holds packs, and whether it holds a pack index token (a packed store
    /// opened it), from one listing of `.piecestore/` that stops at the first pack.
    pub(crate) async fn packed_marks(&self) -> Result<(bool, bool)> {
        let mut listing = self.list_reserved(RESERVED_PREFIX);
        let mut token = false;
        while let Some((path, _)) = listing.try_next().await? {
            if is_pack_path(&path) {
                return Ok((true, token));
            }
            token |= path == TOKEN_FILE;
        }
        Ok((false, token))
    }

    /// Deletes the pack index token (see [`Backend::contents_token`]).
    pub(crate) async fn forget_contents_token(&self) -> Result<()> {
        self.delete_reserved(TOKEN_FILE).await
    }

    fn corrupt_object(&self, path: &str, detail: &str) -> Error {
        Error::Corrupt {
            key: path.to_string(),
            backend: self.label().into(),
            detail: detail.into(),
        }
    }
}
