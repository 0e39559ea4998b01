//! The S3 calls, each mapped onto the engine: one bucket is one [`PieceStore`], one object is
//! one piece.
//!
//! - **ETag**: the piece's CRC32C as 8 hex digits (`"1a2b3c4d"`), not an MD5: PieceStore keeps
//!   no MD5, and a value that is not 32 hex digits tells clients (rclone, minio-go) not to
//!   compare it with one. Equal bytes have equal ETags.
//! - **Immutability**: a PUT of the bytes already stored is `200`; of other bytes, `409
//!   PieceExists` unless the bucket allows overwrites; with `If-None-Match: *`, `412
//!   PreconditionFailed` whenever the key exists.
//! - **Checksums**: `Content-MD5` and every `x-amz-checksum-*` header a PUT carries are
//!   verified before anything is stored (`400 BadDigest`); a GET or HEAD with
//!   `x-amz-checksum-mode: ENABLED` returns the piece's `x-amz-checksum-crc32c`.
//! - **What a piece cannot carry** (user metadata, tags, server-side encryption, object lock,
//!   ACLs other than private) is refused with `501 NotImplemented`, never silently dropped.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use futures::TryStreamExt;
use futures::stream::BoxStream;
use piecestore::config::ServeOptions;
use piecestore::{ErrorKind, PieceMeta, PieceStore, PutOptions};
use s3s::crypto::Checksum;
use s3s::dto::*;
use s3s::service::S3ServiceBuilder;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};

use crate::multipart::Uploads;
use crate::{BucketSpec, auth, body};

/// The most keys one listing page holds (S3's own limit).
const MAX_KEYS: usize = 1000;

/// The buckets and the limits every call shares.
pub(crate) struct State {
    buckets: HashMap<String, BucketSpec>,
    max_object_size: u64,
    body_timeout: Duration,
    pub(crate) uploads: Uploads,
}

impl State {
    pub(crate) fn new(buckets: Vec<BucketSpec>, options: &ServeOptions, uploads: Uploads) -> Self {
        State {
            buckets: buckets.into_iter().map(|b| (b.name.clone(), b)).collect(),
            max_object_size: options.max_object_size,
            body_timeout: options.body_timeout,
            uploads,
        }
    }

    pub(crate) fn bucket_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.buckets.keys().cloned().collect();
        names.sort();
        names
    }

    /// Each bucket's name and store, by name.
    pub(crate) fn stores(&self) -> Vec<(String, PieceStore)> {
        let mut out: Vec<(String, PieceStore)> = self
            .buckets
            .values()
            .map(|b| (b.name.clone(), b.store.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Whether every bucket's store answers (`/readyz`).
    pub(crate) async fn check_all(&self) -> Result<(), String> {
        for (name, store) in self.stores() {
            // This node's own store only: readiness does not wait on its peers.
            let probe =
                tokio::time::timeout(Duration::from_secs(5), store.head_here("readyz-probe"));
            match probe.await {
                Ok(Ok(_) | Err(piecestore::Error::NotFound { .. })) => {}
                Ok(Err(e)) => return Err(format!("bucket {name}: {e}")),
                Err(_) => return Err(format!("bucket {name}: no answer in 5 s")),
            }
        }
        Ok(())
    }

    /// Flushes every store's open packs (at shutdown).
    pub(crate) async fn flush_all(&self) {
        let mut seen = HashSet::new();
        for (name, store) in self.stores() {
            // Buckets over the same store flush it once.
            if !seen.insert(store.shard_labels()) {
                continue;
            }
            if let Err(e) = store.flush().await {
                tracing::warn!(bucket = %name, error = %e, "flushing at shutdown failed");
            }
        }
    }

    /// A request's body, read whole within the limits and checked against every digest its
    /// headers give.
    async fn body(
        &self,
        body: Option<StreamingBlob>,
        content_length: Option<i64>,
        digests: Digests<'_>,
    ) -> S3Result<bytes::Bytes> {
        let expected = match content_length {
            Some(n) if n < 0 => return Err(s3_error!(InvalidArgument, "negative Content-Length")),
            Some(n) => Some(n as u64),
            None => None,
        };
        let data = body::read_all(body, expected, self.max_object_size, self.body_timeout).await?;
        digests.verify(&data)?;
        Ok(data)
    }

    /// The bucket named `name`, if served.
    pub(crate) fn bucket_spec(&self, name: &str) -> Option<&BucketSpec> {
        self.buckets.get(name)
    }

    /// The largest object a put may store.
    pub(crate) fn max_object_size(&self) -> u64 {
        self.max_object_size
    }

    /// How long a request body may go without a byte arriving.
    pub(crate) fn body_timeout(&self) -> Duration {
        self.body_timeout
    }

    fn bucket(&self, name: &str) -> S3Result<&BucketSpec> {
        self.buckets
            .get(name)
            .ok_or_else(|| s3_error!(NoSuchBucket, "this server has no bucket {name:?}"))
    }
}

/// The s3s service over `state`: auth by `keys`, anonymous reads of public buckets.
pub(crate) fn build_service(
    state: Arc<State>,
    keys: Vec<(String, piecestore::config::Secret)>,
    domains: Option<crate::host::Domains>,
) -> s3s::service::S3Service {
    let public = state
        .buckets
        .values()
        .filter(|b| b.public_read)
        .map(|b| b.name.clone())
        .collect();
    let mut builder = S3ServiceBuilder::new(Pieces { state });
    builder.set_auth(auth::keys(keys));
    builder.set_access(auth::Access { public });
    if let Some(d) = domains {
        builder.set_host(d);
    }
    builder.build()
}

/// The [`S3`] implementation.
struct Pieces {
    state: Arc<State>,
}

/// The engine's error as the S3 error a client understands.
fn s3_err(e: piecestore::Error) -> S3Error {
    let msg = e.to_string();
    let (code, status) = match e.kind() {
        ErrorKind::NotFound => (S3ErrorCode::NoSuchKey, None),
        ErrorKind::AlreadyExists => (
            S3ErrorCode::Custom("PieceExists".into()),
            Some(http::StatusCode::CONFLICT),
        ),
        ErrorKind::InvalidKey => (S3ErrorCode::InvalidArgument, None),
        ErrorKind::InvalidRange => (S3ErrorCode::InvalidRange, None),
        ErrorKind::Backend | ErrorKind::Closed => (S3ErrorCode::ServiceUnavailable, None),
        _ => (S3ErrorCode::InternalError, None),
    };
    if matches!(
        code,
        S3ErrorCode::ServiceUnavailable | S3ErrorCode::InternalError
    ) {
        // The client gets the message too, but the operator needs it in the server's log.
        tracing::warn!(kind = ?e.kind(), error = %msg, "the engine failed a request");
    }
    let mut err = S3Error::with_message(code, msg);
    if let Some(s) = status {
        err.set_status_code(s);
    }
    err
}

/// Where a PieceStore *client* keeps its own objects in a bucket (probes, its index token,
/// its packs when it packs): object keys under `.piecestore/`, which the engine reserves for
/// itself, are kept as pieces under this prefix instead, so that a PieceStore store can use a
/// served bucket as its backend.
pub(crate) const CLIENT_RESERVED: &str = "~piecestore/";

/// Why a key under [`CLIENT_RESERVED`] is refused (by the S3 and the gRPC API alike).
pub(crate) const CLIENT_RESERVED_REFUSAL: &str =
    "keys under '~piecestore/' are reserved (they hold S3 clients' '.piecestore/' objects)";
const RESERVED: &str = piecestore::key::RESERVED_PREFIX;

/// The piece key of object key `key`, and whether it is a client's own object (which may be
/// replaced: the client, not the engine, decides what it holds).
fn piece_key(key: &str) -> S3Result<(String, bool)> {
    if let Some(rest) = key.strip_prefix(RESERVED) {
        let mapped = format!("{CLIENT_RESERVED}{rest}");
        piecestore::key::validate(&mapped).map_err(s3_err)?;
        return Ok((mapped, true));
    }
    if key.starts_with(CLIENT_RESERVED) {
        return Err(s3_error!(InvalidArgument, "{CLIENT_RESERVED_REFUSAL}"));
    }
    piecestore::key::validate(key).map_err(s3_err)?;
    Ok((key.to_string(), false))
}

/// The object key clients see for piece key `key` (the inverse of [`piece_key`]).
fn object_key(key: String) -> String {
    match key.strip_prefix(CLIENT_RESERVED) {
        Some(rest) => format!("{RESERVED}{rest}"),
        None => key,
    }
}

/// The engine prefixes to list for the object-key prefix `prefix`.
fn piece_prefixes(prefix: &str) -> Vec<String> {
    if let Some(rest) = prefix.strip_prefix(RESERVED) {
        return vec![format!("{CLIENT_RESERVED}{rest}")];
    }
    if !prefix.is_empty() && RESERVED.starts_with(prefix) {
        return vec![prefix.to_string(), CLIENT_RESERVED.to_string()];
    }
    vec![prefix.to_string()]
}

fn etag_of(crc: u32) -> ETag {
    ETag::Strong(format!("{crc:08x}"))
}

fn crc32c_b64(crc: u32) -> String {
    B64.encode(crc.to_be_bytes())
}

/// Whether `cond` (an `If-Match`/`If-None-Match` value) matches `etag`.
fn matches(cond: &ETagCondition, etag: &ETag) -> bool {
    match cond {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == etag.value(),
    }
}

/// The one user metadata a PUT may carry: `x-amz-meta-crc32c`, the piece's CRC32C in
/// decimal, where PieceStore's (and the original Go piecestore's) S3 backend keeps it. It is
/// checked against the body; GET and HEAD return it. Any other metadata is refused.
fn checksum_metadata(meta: Option<&Metadata>) -> S3Result<Option<u32>> {
    let Some(meta) = meta else {
        return Ok(None);
    };
    let mut crc = None;
    for (name, value) in meta {
        if !name.eq_ignore_ascii_case(piecestore::checksum::METADATA_KEY) {
            return Err(not_implemented(
                "user metadata (x-amz-meta-*) other than x-amz-meta-crc32c",
            ));
        }
        crc = Some(piecestore::checksum::parse_metadata(value).ok_or_else(|| {
            s3_error!(
                InvalidArgument,
                "x-amz-meta-crc32c is not a CRC32C in decimal"
            )
        })?);
    }
    Ok(crc)
}

/// The metadata GET and HEAD return: the piece's checksum, where S3 clients of PieceStore
/// read it.
fn metadata_of(crc: Option<u32>) -> Option<Metadata> {
    let crc = crc?;
    let mut m = Metadata::default();
    m.insert(
        piecestore::checksum::METADATA_KEY.to_ascii_lowercase(),
        crc.to_string(),
    );
    Some(m)
}

fn not_implemented(what: &str) -> S3Error {
    S3Error::with_message(
        S3ErrorCode::NotImplemented,
        format!("{what} is not supported: a piece is its bytes and their checksum, nothing more"),
    )
}

/// Verifies one `x-amz-checksum-*` header (base64 of the digest) against `data`.
fn verify_checksum<C: Checksum>(name: &str, given: Option<&String>, data: &[u8]) -> S3Result<()> {
    let Some(given) = given else {
        return Ok(());
    };
    let digest = C::checksum(data);
    if B64.encode(digest.as_ref()) != given.trim() {
        return Err(S3Error::with_message(
            S3ErrorCode::BadDigest,
            format!("the {name} of the body does not match its x-amz-checksum-{name} header"),
        ));
    }
    Ok(())
}

/// What an object write asks for that a piece cannot carry: each is `501 NotImplemented`.
struct Unsupported<'a> {
    tagging: bool,
    encryption: bool,
    lock: bool,
    acl: Option<&'a ObjectCannedACL>,
}

impl Unsupported<'_> {
    fn refuse(&self) -> S3Result<()> {
        if self.tagging {
            return Err(not_implemented("object tagging"));
        }
        if self.encryption {
            return Err(not_implemented("server-side encryption"));
        }
        if self.lock {
            return Err(not_implemented("object lock"));
        }
        if self
            .acl
            .is_some_and(|a| a.as_str() != ObjectCannedACL::PRIVATE)
        {
            return Err(not_implemented(
                "an ACL other than private (see PublicRead)",
            ));
        }
        Ok(())
    }
}

/// The [`Digests`] of an S3 input with a body (PutObject's, UploadPart's: the same fields).
macro_rules! digests_of {
    ($input:expr) => {
        Digests {
            md5: $input.content_md5.as_ref(),
            crc32: $input.checksum_crc32.as_ref(),
            crc32c: $input.checksum_crc32c.as_ref(),
            crc64nvme: $input.checksum_crc64nvme.as_ref(),
            sha1: $input.checksum_sha1.as_ref(),
            sha256: $input.checksum_sha256.as_ref(),
        }
    };
}

/// The digests a request says its body has: each given one is checked.
struct Digests<'a> {
    md5: Option<&'a String>,
    crc32: Option<&'a String>,
    crc32c: Option<&'a String>,
    crc64nvme: Option<&'a String>,
    sha1: Option<&'a String>,
    sha256: Option<&'a String>,
}

impl Digests<'_> {
    /// `400 BadDigest` unless `data` has every digest given.
    fn verify(&self, data: &[u8]) -> S3Result<()> {
        if let Some(md5) = self.md5 {
            let digest = s3s::crypto::Md5::checksum(data);
            let ok = B64
                .decode(md5.trim())
                .is_ok_and(|given| given.as_slice() == digest.as_ref());
            if !ok {
                return Err(S3Error::with_message(
                    S3ErrorCode::BadDigest,
                    "the Content-MD5 you specified did not match what we received",
                ));
            }
        }
        verify_checksum::<s3s::crypto::Crc32>("crc32", self.crc32, data)?;
        verify_checksum::<s3s::crypto::Crc32c>("crc32c", self.crc32c, data)?;
        verify_checksum::<s3s::crypto::Crc64Nvme>("crc64nvme", self.crc64nvme, data)?;
        verify_checksum::<s3s::crypto::Sha1>("sha1", self.sha1, data)?;
        verify_checksum::<s3s::crypto::Sha256>("sha256", self.sha256, data)?;
        Ok(())
    }
}

/// `key` as a listing shows it: percent-encoded when the client asked for `encoding-type=url`.
fn shown(key: &str, url: bool) -> String {
    if !url {
        return key.to_string();
    }
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One page of a listing, in key order.
struct Page {
    objects: Vec<PieceMeta>,
    prefixes: Vec<String>,
    /// Where the next page starts (after this key or common prefix), if there is one.
    next: Option<String>,
}

impl Page {
    fn contents(&self, url: bool) -> Vec<Object> {
        self.objects.iter().map(|m| object_of(m, url)).collect()
    }

    fn common_prefixes(&self, url: bool) -> Vec<CommonPrefix> {
        self.prefixes
            .iter()
            .map(|p| CommonPrefix {
                prefix: Some(shown(p, url)),
            })
            .collect()
    }
}

/// Lists `prefix` on every shard of `store`, sorted by key, and cuts out the page that starts
/// after `after`, grouping keys by `delimiter`.
async fn list_page(
    store: &PieceStore,
    prefix: &str,
    delimiter: Option<&str>,
    after: Option<&str>,
    max: usize,
) -> S3Result<Page> {
    let mut all: Vec<PieceMeta> = Vec::new();
    for p in piece_prefixes(prefix) {
        piecestore::key::validate_prefix(&p).map_err(s3_err)?;
        let metas: Vec<PieceMeta> = store.list(&p).try_collect().await.map_err(s3_err)?;
        all.extend(metas.into_iter().filter_map(|mut m| {
            m.key = object_key(std::mem::take(&mut m.key));
            m.key.starts_with(prefix).then_some(m)
        }));
    }
    all.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    all.dedup_by(|a, b| a.key == b.key);
    let mut page = Page {
        objects: Vec::new(),
        prefixes: Vec::new(),
        next: None,
    };
    if max == 0 {
        return Ok(page);
    }
    let start = match after {
        Some(a) => all.partition_point(|m| m.key.as_str() <= a),
        None => 0,
    };
    let mut count = 0;
    let mut last_prefix: Option<String> = None;
    for meta in all.into_iter().skip(start) {
        let group = delimiter.filter(|d| !d.is_empty()).and_then(|d| {
            meta.key[prefix.len()..]
                .find(d)
                .map(|i| meta.key[..prefix.len() + i + d.len()].to_string())
        });
        match group {
            Some(g) => {
                if last_prefix.as_deref() == Some(g.as_str()) {
                    continue;
                }
                // A common prefix the previous page ended on is not shown again.
                if after.is_some_and(|a| a.starts_with(g.as_str())) {
                    continue;
                }
                if count == max {
                    page.next = last_key(&page);
                    break;
                }
                last_prefix = Some(g.clone());
                page.prefixes.push(g);
            }
            None => {
                if count == max {
                    page.next = last_key(&page);
                    break;
                }
                page.objects.push(meta);
            }
        }
        count += 1;
    }
    Ok(page)
}

/// The greatest key or common prefix on `page`: the next page starts after it. A common
/// prefix is continued from its last possible key, so that none of its keys shows again.
fn last_key(page: &Page) -> Option<String> {
    let object = page.objects.last().map(|m| m.key.clone());
    let prefix = page.prefixes.last().map(|p| format!("{p}\u{10FFFF}"));
    object.into_iter().chain(prefix).max()
}

fn object_of(meta: &PieceMeta, url: bool) -> Object {
    Object {
        key: Some(shown(&meta.key, url)),
        size: Some(meta.size as i64),
        last_modified: Some(Timestamp::from(meta.last_modified)),
        e_tag: meta.crc32c.map(etag_of),
        storage_class: Some(ObjectStorageClass::from_static(
            ObjectStorageClass::STANDARD,
        )),
        ..Default::default()
    }
}

fn parse_max_keys(max: Option<i32>) -> S3Result<usize> {
    match max {
        None => Ok(MAX_KEYS),
        Some(n) if n < 0 => Err(s3_error!(InvalidArgument, "max-keys must not be negative")),
        Some(n) => Ok((n as usize).min(MAX_KEYS)),
    }
}

fn wants_url(encoding: &Option<EncodingType>) -> S3Result<bool> {
    match encoding {
        None => Ok(false),
        Some(e) if e.as_str() == EncodingType::URL => Ok(true),
        Some(e) => Err(S3Error::with_message(
            S3ErrorCode::InvalidArgument,
            format!("encoding-type {:?} is not \"url\"", e.as_str()),
        )),
    }
}

#[async_trait::async_trait]
impl S3 for Pieces {
    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let input = req.input;
        let bucket = self.state.bucket(&input.bucket)?;
        let (key, client_own) = piece_key(&input.key)?;
        let meta_crc = checksum_metadata(input.metadata.as_ref())?;
        Unsupported {
            tagging: input.tagging.is_some(),
            encryption: input.sse_customer_key.is_some()
                || input.server_side_encryption.is_some()
                || input.ssekms_key_id.is_some(),
            lock: input.object_lock_mode.is_some() || input.object_lock_legal_hold_status.is_some(),
            acl: input.acl.as_ref(),
        }
        .refuse()?;
        if input.if_match.is_some() {
            return Err(not_implemented("If-Match on PUT"));
        }
        let digests = digests_of!(input);
        let data = self
            .state
            .body(input.body, input.content_length, digests)
            .await?;
        let store = &bucket.store;
        let crc = piecestore::checksum::crc32c(&data);
        if meta_crc.is_some_and(|c| c != crc) {
            return Err(S3Error::with_message(
                S3ErrorCode::BadDigest,
                "the body's CRC32C does not match its x-amz-meta-crc32c",
            ));
        }
        let len = data.len() as i64;
        // `If-None-Match: *` is a create-only put: 412 when the key exists, whatever its
        // bytes (as S3 answers; clients probe for it). Racing writers are decided by the
        // engine's own create-only put: one wins, others with other bytes get 412 (two with
        // the same bytes both succeed: they stored the same piece). Only this node's store
        // counts: a piece its peers hold is not stored here.
        let create_only = matches!(input.if_none_match, Some(ETagCondition::Any));
        if create_only && store.exists_here(&key).await.map_err(s3_err)? {
            return Err(S3Error::with_message(
                S3ErrorCode::PreconditionFailed,
                format!("{} exists (If-None-Match: *)", input.key),
            ));
        }
        let overwrite = !create_only && (bucket.allow_overwrite || client_own);
        match store.put_opts(&key, data, PutOptions { overwrite }).await {
            Ok(()) => {}
            Err(e) if create_only && e.kind() == ErrorKind::AlreadyExists => {
                return Err(S3Error::with_message(
                    S3ErrorCode::PreconditionFailed,
                    format!("{} exists with other bytes (If-None-Match: *)", input.key),
                ));
            }
            Err(e) => return Err(s3_err(e)),
        }
        let output = PutObjectOutput {
            e_tag: Some(etag_of(crc)),
            checksum_crc32c: Some(crc32c_b64(crc)),
            checksum_crc32: input.checksum_crc32,
            checksum_crc64nvme: input.checksum_crc64nvme,
            checksum_sha1: input.checksum_sha1,
            checksum_sha256: input.checksum_sha256,
            size: Some(len),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        let bucket = self.state.bucket(&input.bucket)?;
        let (key, _) = piece_key(&input.key)?;
        if input.part_number.is_some_and(|n| n != 1) {
            return Err(not_implemented("partNumber other than 1"));
        }
        if input.sse_customer_key.is_some() {
            return Err(not_implemented("server-side encryption"));
        }
        let store = &bucket.store;
        let want_crc = input
            .checksum_mode
            .as_ref()
            .is_some_and(|m| m.as_str() == ChecksumMode::ENABLED);
        let conditional = input.if_match.is_some() || input.if_none_match.is_some();
        // Last-Modified comes from the piece's metadata (clients such as minio-go require
        // it): a whole-piece read asks for both at once.
        let (body, len, last_modified, content_range, crc) = match &input.range {
            None => {
                // Streamed as it is read, and verified: a piece that fails its checksum ends
                // the body short of its Content-Length (the connection is cut), never whole.
                let piece = store.get_stream(&key).await.map_err(s3_err)?;
                let meta = piece.meta;
                let body = StreamingBlob::wrap(SyncChunks(std::sync::Mutex::new(piece.chunks)));
                (body, meta.size, meta.last_modified, None, meta.crc32c)
            }
            Some(range) => {
                let meta = store.head(&key).await.map_err(s3_err)?;
                let r = range.check(meta.size).map_err(|_| {
                    S3Error::with_message(
                        S3ErrorCode::InvalidRange,
                        format!("the range is outside the piece's {} bytes", meta.size),
                    )
                })?;
                let data = store
                    .get_range(&key, r.start, r.end - r.start)
                    .await
                    .map_err(s3_err)?;
                let cr = format!("bytes {}-{}/{}", r.start, r.end - 1, meta.size);
                let len = data.len() as u64;
                let body = StreamingBlob::from(s3s::Body::from(data));
                (body, len, meta.last_modified, Some(cr), meta.crc32c)
            }
        };
        if conditional {
            let Some(crc) = crc else {
                return Err(not_implemented(
                    "If-Match/If-None-Match on a piece stored without a checksum",
                ));
            };
            let etag = etag_of(crc);
            if let Some(c) = &input.if_match
                && !matches(c, &etag)
            {
                return Err(s3_error!(PreconditionFailed, "If-Match does not match"));
            }
            if let Some(c) = &input.if_none_match
                && matches(c, &etag)
            {
                let mut e = s3_error!(NotModified);
                e.set_status_code(http::StatusCode::NOT_MODIFIED);
                return Err(e);
            }
        }
        let whole = content_range.is_none();
        let output = GetObjectOutput {
            body: Some(body),
            content_length: Some(len as i64),
            content_range,
            last_modified: Some(Timestamp::from(last_modified)),
            content_type: Some("application/octet-stream".to_string()),
            accept_ranges: Some("bytes".into()),
            e_tag: crc.map(etag_of),
            metadata: metadata_of(crc),
            checksum_crc32c: crc.filter(|_| want_crc && whole).map(crc32c_b64),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        let bucket = self.state.bucket(&input.bucket)?;
        let (key, _) = piece_key(&input.key)?;
        if input.part_number.is_some_and(|n| n != 1) {
            return Err(not_implemented("partNumber other than 1"));
        }
        let meta = bucket.store.head(&key).await.map_err(s3_err)?;
        let etag = meta.crc32c.map(etag_of);
        if let (Some(c), Some(e)) = (&input.if_match, &etag)
            && !matches(c, e)
        {
            return Err(s3_error!(PreconditionFailed, "If-Match does not match"));
        }
        if let (Some(c), Some(e)) = (&input.if_none_match, &etag)
            && matches(c, e)
        {
            let mut e = s3_error!(NotModified);
            e.set_status_code(http::StatusCode::NOT_MODIFIED);
            return Err(e);
        }
        let want_crc = input
            .checksum_mode
            .as_ref()
            .is_some_and(|m| m.as_str() == ChecksumMode::ENABLED);
        let output = HeadObjectOutput {
            content_length: Some(meta.size as i64),
            content_type: Some("application/octet-stream".to_string()),
            last_modified: Some(Timestamp::from(meta.last_modified)),
            accept_ranges: Some("bytes".into()),
            e_tag: etag,
            metadata: metadata_of(meta.crc32c),
            checksum_crc32c: meta.crc32c.filter(|_| want_crc).map(crc32c_b64),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let input = req.input;
        let bucket = self.state.bucket(&input.bucket)?;
        let (key, _) = piece_key(&input.key)?;
        if input.version_id.is_some() {
            return Err(not_implemented("versions"));
        }
        bucket.store.delete(&key).await.map_err(s3_err)?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        let bucket = self.state.bucket(&input.bucket)?;
        let objects = input.delete.objects;
        if objects.len() > MAX_KEYS {
            return Err(s3_error!(
                MalformedXML,
                "a DeleteObjects request names at most 1000 keys"
            ));
        }
        let quiet = input.delete.quiet.unwrap_or(false);
        let results = futures::future::join_all(objects.iter().map(|o| async {
            if o.version_id.is_some() {
                return Err(not_implemented("versions"));
            }
            let (key, _) = piece_key(&o.key)?;
            bucket.store.delete(&key).await.map_err(s3_err)
        }))
        .await;
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for (o, r) in objects.into_iter().zip(results) {
            match r {
                Ok(()) if quiet => {}
                Ok(()) => deleted.push(DeletedObject {
                    key: Some(o.key),
                    ..Default::default()
                }),
                Err(e) => errors.push(Error {
                    code: Some(e.code().as_str().to_string()),
                    key: Some(o.key),
                    message: e.message().map(str::to_string),
                    ..Default::default()
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: (!errors.is_empty()).then_some(errors),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        let bucket = self.state.bucket(&input.bucket)?;
        let url = wants_url(&input.encoding_type)?;
        let max = parse_max_keys(input.max_keys)?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let after = match &input.continuation_token {
            Some(t) => Some(decode_token(t)?),
            None => input.start_after.clone(),
        };
        let page = list_page(
            &bucket.store,
            &prefix,
            input.delimiter.as_deref(),
            after.as_deref(),
            max,
        )
        .await?;
        let key_count = (page.objects.len() + page.prefixes.len()) as i32;
        let output = ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(shown(&prefix, url)),
            delimiter: input.delimiter.map(|d| shown(&d, url)),
            max_keys: Some(max as i32),
            key_count: Some(key_count),
            is_truncated: Some(page.next.is_some()),
            next_continuation_token: page.next.as_deref().map(encode_token),
            continuation_token: input.continuation_token,
            start_after: input.start_after.map(|s| shown(&s, url)),
            encoding_type: input.encoding_type,
            contents: Some(page.contents(url)),
            common_prefixes: Some(page.common_prefixes(url)),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let input = req.input;
        let bucket = self.state.bucket(&input.bucket)?;
        let url = wants_url(&input.encoding_type)?;
        let max = parse_max_keys(input.max_keys)?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let page = list_page(
            &bucket.store,
            &prefix,
            input.delimiter.as_deref(),
            input.marker.as_deref(),
            max,
        )
        .await?;
        // V1's NextMarker is the last key or common prefix shown (clients pass it back as
        // `marker`); only given with a delimiter, as S3 does.
        let next_marker = page
            .next
            .as_ref()
            .and(input.delimiter.as_ref())
            .and_then(|_| {
                let object = page.objects.last().map(|m| m.key.clone());
                let prefix = page.prefixes.last().cloned();
                object.into_iter().chain(prefix).max()
            });
        let output = ListObjectsOutput {
            name: Some(input.bucket),
            prefix: Some(shown(&prefix, url)),
            delimiter: input.delimiter.map(|d| shown(&d, url)),
            marker: input.marker.map(|m| shown(&m, url)),
            max_keys: Some(max as i32),
            is_truncated: Some(page.next.is_some()),
            next_marker: next_marker.map(|m| shown(&m, url)),
            encoding_type: input.encoding_type,
            contents: Some(page.contents(url)),
            common_prefixes: Some(page.common_prefixes(url)),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }

    async fn list_buckets(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let created = Timestamp::from(crate::started());
        let buckets = self
            .state
            .bucket_names()
            .into_iter()
            .map(|name| Bucket {
                name: Some(name),
                creation_date: Some(created.clone()),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            ..Default::default()
        }))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.state.bucket(&req.input.bucket)?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.state.bucket(&req.input.bucket)?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    /// Buckets are never versioned: the answer of a bucket whose versioning was never set (no
    /// `Status`). Clients such as warp and `mc` ask before they start.
    async fn get_bucket_versioning(
        &self,
        req: S3Request<GetBucketVersioningInput>,
    ) -> S3Result<S3Response<GetBucketVersioningOutput>> {
        self.state.bucket(&req.input.bucket)?;
        Ok(S3Response::new(GetBucketVersioningOutput::default()))
    }

    /// Buckets have no object lock configuration: S3's answer for such a bucket, 404
    /// `ObjectLockConfigurationNotFoundError` (pieces are immutable by the engine, not by a lock).
    async fn get_object_lock_configuration(
        &self,
        req: S3Request<GetObjectLockConfigurationInput>,
    ) -> S3Result<S3Response<GetObjectLockConfigurationOutput>> {
        self.state.bucket(&req.input.bucket)?;
        Err(s3_error!(
            ObjectLockConfigurationNotFoundError,
            "object lock is not configured on this bucket"
        ))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let input = req.input;
        self.state.bucket(&input.bucket)?;
        piece_key(&input.key)?;
        if input.metadata.as_ref().is_some_and(|m| !m.is_empty()) {
            return Err(not_implemented("user metadata on a multipart upload"));
        }
        Unsupported {
            tagging: input.tagging.is_some(),
            encryption: input.sse_customer_key.is_some()
                || input.server_side_encryption.is_some()
                || input.ssekms_key_id.is_some(),
            lock: input.object_lock_mode.is_some() || input.object_lock_legal_hold_status.is_some(),
            acl: input.acl.as_ref(),
        }
        .refuse()?;
        let id = self.state.uploads.create(&input.bucket, &input.key).await?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(id),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let input = req.input;
        self.state.bucket(&input.bucket)?;
        if input.sse_customer_key.is_some() {
            return Err(not_implemented("server-side encryption"));
        }
        let digests = digests_of!(input);
        let data = self
            .state
            .body(input.body, input.content_length, digests)
            .await?;
        let crc = self
            .state
            .uploads
            .put_part(
                &input.upload_id,
                &input.bucket,
                &input.key,
                input.part_number,
                data,
            )
            .await?;
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(etag_of(crc)),
            checksum_crc32: input.checksum_crc32,
            checksum_crc32c: input.checksum_crc32c,
            checksum_crc64nvme: input.checksum_crc64nvme,
            checksum_sha1: input.checksum_sha1,
            checksum_sha256: input.checksum_sha256,
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let input = req.input;
        let bucket = self.state.bucket(&input.bucket)?;
        let (key, client_own) = piece_key(&input.key)?;
        if input.if_match.is_some() || input.if_none_match.is_some() {
            return Err(not_implemented("conditions on CompleteMultipartUpload"));
        }
        let mut parts = Vec::new();
        for p in input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default()
        {
            let (Some(n), Some(etag)) = (p.part_number, p.e_tag) else {
                return Err(s3_error!(
                    MalformedXML,
                    "every part needs its PartNumber and ETag"
                ));
            };
            parts.push((n, etag.value().to_string()));
        }
        let data = self
            .state
            .uploads
            .join(
                &input.upload_id,
                &input.bucket,
                &input.key,
                parts,
                self.state.max_object_size,
            )
            .await?;
        let crc = piecestore::checksum::crc32c(&data);
        bucket
            .store
            .put_opts(
                &key,
                data,
                PutOptions {
                    overwrite: bucket.allow_overwrite || client_own,
                },
            )
            .await
            .map_err(s3_err)?;
        // Stored: the staged parts go (a failure here leaves them to the expiry sweep).
        if let Err(e) = self
            .state
            .uploads
            .remove(&input.upload_id, &input.bucket, &input.key)
            .await
        {
            tracing::warn!(error = %e, "removing a completed upload's parts failed");
        }
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            e_tag: Some(etag_of(crc)),
            checksum_crc32c: Some(crc32c_b64(crc)),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let input = req.input;
        self.state.bucket(&input.bucket)?;
        self.state
            .uploads
            .remove(&input.upload_id, &input.bucket, &input.key)
            .await?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        match self.state.bucket(&req.input.bucket) {
            Ok(_) => Err(s3_error!(
                BucketAlreadyOwnedByYou,
                "the bucket exists (buckets are configured in [PieceStore.Serve])"
            )),
            Err(_) => Err(s3_error!(
                NotImplemented,
                "buckets are configured in [PieceStore.Serve], not created by clients"
            )),
        }
    }
}

/// A continuation token: where the next page starts, as opaque text.
fn encode_token(after: &str) -> String {
    B64.encode(after.as_bytes())
}

fn decode_token(token: &str) -> S3Result<String> {
    B64.decode(token.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| s3_error!(InvalidArgument, "the continuation token is not one of ours"))
}

/// A piece's chunks as the `Sync` stream an S3 body must be (the stream is only ever polled
/// through `&mut`, so the lock is never taken).
struct SyncChunks(std::sync::Mutex<BoxStream<'static, piecestore::Result<Bytes>>>);

impl futures::Stream for SyncChunks {
    type Item = piecestore::Result<Bytes>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let inner = self
            .get_mut()
            .0
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.as_mut().poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store_with(keys: &[&str]) -> PieceStore {
        let store = PieceStore::open_spec("memory://").await.unwrap();
        for k in keys {
            store.put(k, k.as_bytes().to_vec()).await.unwrap();
        }
        store
    }

    #[tokio::test]
    async fn pages_cover_every_key_once_in_order() {
        let keys: Vec<String> = (0..25).map(|i| format!("k{i:02}")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let store = store_with(&refs).await;
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = list_page(&store, "", None, after.as_deref(), 7)
                .await
                .unwrap();
            seen.extend(page.objects.iter().map(|m| m.key.clone()));
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, keys);
    }

    #[tokio::test]
    async fn delimiter_groups_keys_and_pages_past_a_group() {
        let store = store_with(&["a/1", "a/2", "a/3", "b", "c/1", "d"]).await;
        let page = list_page(&store, "", Some("/"), None, 2).await.unwrap();
        assert_eq!(page.prefixes, vec!["a/".to_string()]);
        assert_eq!(page.objects.len(), 1);
        assert_eq!(page.objects[0].key, "b");
        let next = page.next.clone().unwrap();
        let page2 = list_page(&store, "", Some("/"), Some(&next), 2)
            .await
            .unwrap();
        assert_eq!(page2.prefixes, vec!["c/".to_string()]);
        assert_eq!(page2.objects[0].key, "d");
        assert!(page2.next.is_none());
        // a page that ends on a common prefix does not show its keys again
        let page = list_page(&store, "", Some("/"), None, 1).await.unwrap();
        assert_eq!(page.prefixes, vec!["a/".to_string()]);
        let page2 = list_page(&store, "", Some("/"), page.next.as_deref(), 1)
            .await
            .unwrap();
        assert_eq!(page2.objects[0].key, "b");
    }

    #[test]
    fn url_encoding_of_keys() {
        assert_eq!(shown("a b/c+d%", true), "a%20b/c%2Bd%25");
        assert_eq!(shown("a b", false), "a b");
    }

    #[test]
    fn tokens_round_trip_and_foreign_ones_are_refused() {
        assert_eq!(decode_token(&encode_token("k/é")).unwrap(), "k/é");
        assert!(decode_token("%%%").is_err());
    }
}
