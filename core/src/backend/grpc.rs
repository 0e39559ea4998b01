//! The `grpc://` backend: the pieces of one bucket of a remote `piecestore serve`, through its
//! gRPC API (`proto/piecestore/v1/piecestore.proto`), as an [`ObjectStore`], so that everything
//! the core does over a backend (checksums, the cache tiers, sharding, metrics) works over
//! another node.
//!
//! - `grpc://host:port[/bucket]` speaks HTTP/2 without TLS, `grpcs://host:port[/bucket]` with
//!   TLS (the system's roots; `SSL_CERT_FILE` adds a private CA). No bucket: the server's
//!   default bucket (`pieces`).
//! - A bearer token comes from `PIECESTORE_GRPC_TOKEN`, else `PIECESTORE_SERVE_TOKEN` (the
//!   variable the server reads, so a node can front another with the token they share).
//! - The remote checks every piece's CRC32C on the way in and out; this store sends the
//!   checksum with each put and hands the stored one back with each get, where the core checks
//!   the bytes again.
//! - A put is create-only on the server (`create_only`): other bytes under a key are
//!   `AlreadyExists`, and the same bytes again are fine. An overwrite (`PutOptions { overwrite:
//!   true }`) replaces a piece only in a served bucket with `AllowOverwrite`. The server packs
//!   small pieces itself, so a `grpc://` store does not pack (it keeps no objects of its own).

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, Attributes, CopyOptions, GetOptions, GetRange, GetResult,
    GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use piecestore_proto::v1 as pb;
use tokio::sync::OnceCell;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::checksum;
use crate::error::{Error, Result};
use crate::key::RESERVED_PREFIX;

/// The variables a `grpc://` store reads its bearer token from, in order.
pub const TOKEN_VARS: [&str; 2] = ["PIECESTORE_GRPC_TOKEN", "PIECESTORE_SERVE_TOKEN"];

/// The most piece bytes one Put message carries (the server takes messages of up to 4 MiB by
/// default).
const CHUNK: usize = 1 << 20;

/// Where a `grpc://` store's pieces are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcLocation {
    /// `http://host:port` or `https://host:port`.
    pub endpoint: String,
    /// The served bucket ("" for the server's default).
    pub bucket: String,
    /// A key prefix in it ("" for none, else without leading or trailing `/`): the store's
    /// keys are `prefix/key` on the server.
    pub prefix: String,
}

/// A served bucket as an object store (see the module's doc). Clones share the connection.
#[derive(Clone)]
pub(crate) struct GrpcStore(Arc<Inner>);

pub(crate) struct Inner {
    location: GrpcLocation,
    /// `Bearer …`, never shown.
    token: Option<tonic::metadata::AsciiMetadataValue>,
    /// Connected on first use, inside the caller's runtime.
    client: OnceCell<pb::piece_store_client::PieceStoreClient<Channel>>,
}

impl std::ops::Deref for GrpcStore {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl std::fmt::Debug for GrpcStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcStore")
            .field("location", &self.location)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl std::fmt::Display for GrpcStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GrpcStore({})", self.label())
    }
}

/// An object_store error of this store.
fn generic(message: impl Into<String>) -> object_store::Error {
    object_store::Error::Generic {
        store: "grpc",
        source: message.into().into(),
    }
}

impl GrpcStore {
    /// The store of `location`; its bearer token is `secret` (the store's `SecretKey`) when
    /// set, else from the environment ([`TOKEN_VARS`]).
    pub(crate) fn new(location: GrpcLocation, secret: &str) -> Result<Self> {
        let token = Some(secret.to_string())
            .filter(|t| !t.trim().is_empty())
            .or_else(|| {
                TOKEN_VARS
                    .iter()
                    .find_map(|v| std::env::var(v).ok().filter(|t| !t.trim().is_empty()))
            });
        let token = match token {
            Some(t) => Some(format!("Bearer {}", t.trim()).parse().map_err(|_| {
                Error::config("the grpc:// token holds a character a gRPC header cannot carry")
            })?),
            None => None,
        };
        Endpoint::from_shared(location.endpoint.clone()).map_err(|e| {
            Error::config(format!("{}: not a gRPC endpoint: {e}", location.endpoint))
        })?;
        Ok(GrpcStore(Arc::new(Inner {
            location,
            token,
            client: OnceCell::new(),
        })))
    }

    /// `grpc://host:port/bucket` (or `grpcs://`).
    pub(crate) fn label(&self) -> String {
        label(&self.location)
    }

    async fn client(
        &self,
    ) -> object_store::Result<pb::piece_store_client::PieceStoreClient<Channel>> {
        self.client
            .get_or_try_init(|| async {
                let mut ep = Endpoint::from_shared(self.location.endpoint.clone())
                    .map_err(|e| generic(e.to_string()))?
                    .connect_timeout(Duration::from_secs(10))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_while_idle(true)
                    .max_frame_size(1 << 20)
                    .initial_stream_window_size(8 << 20)
                    .initial_connection_window_size(16 << 20);
                if self.location.endpoint.starts_with("https://") {
                    ep = ep
                        .tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots())
                        .map_err(|e| generic(format!("TLS: {e}")))?;
                }
                let client = pb::piece_store_client::PieceStoreClient::new(ep.connect_lazy())
                    .max_decoding_message_size(8 << 20)
                    .max_encoding_message_size(8 << 20);
                Ok(client)
            })
            .await
            .cloned()
    }

    /// `msg` as a request with the token.
    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(t) = &self.token {
            r.metadata_mut().insert("authorization", t.clone());
        }
        r
    }

    /// The piece key of `location`; PieceStore's own objects have no place on a served bucket.
    fn key(&self, location: &Path) -> object_store::Result<String> {
        let key = location.as_ref();
        if key.starts_with(RESERVED_PREFIX) {
            return Err(object_store::Error::NotSupported {
                source: format!(
                    "{}: a grpc:// store keeps no objects of its own under {RESERVED_PREFIX} (the server packs pieces itself: open it with pack=false)",
                    self.label()
                )
                .into(),
            });
        }
        Ok(self.remote(key))
    }

    /// The server's key for the store's key `key`.
    fn remote(&self, key: &str) -> String {
        if self.location.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.location.prefix)
        }
    }

    /// An object_store error for status `s` of a call on `key`.
    fn error(&self, s: Status, key: &str) -> object_store::Error {
        let message = format!("{} ({:?}): {}", self.label(), s.code(), s.message());
        match s.code() {
            Code::NotFound => object_store::Error::NotFound {
                path: key.to_string(),
                source: message.into(),
            },
            Code::AlreadyExists => object_store::Error::AlreadyExists {
                path: key.to_string(),
                source: message.into(),
            },
            Code::FailedPrecondition => object_store::Error::Precondition {
                path: key.to_string(),
                source: message.into(),
            },
            Code::Unauthenticated => object_store::Error::Unauthenticated {
                path: key.to_string(),
                source: message.into(),
            },
            Code::PermissionDenied => object_store::Error::PermissionDenied {
                path: key.to_string(),
                source: message.into(),
            },
            _ => generic(message),
        }
    }

    /// What the server says of one piece.
    async fn info(&self, key: &str) -> object_store::Result<pb::PieceInfo> {
        let mut c = self.client().await?;
        let req = pb::HeadRequest {
            bucket: self.location.bucket.clone(),
            key: key.to_string(),
        };
        c.head(self.request(req))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| self.error(s, key))
    }

    /// Every piece whose key starts with the string `prefix`, in key order.
    pub(crate) fn list_prefix(
        &self,
        prefix: &str,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        if prefix.starts_with(RESERVED_PREFIX) || prefix == RESERVED_PREFIX.trim_end_matches('/') {
            // The server keeps its own objects to itself, and a client keeps none there: a
            // packed server's store answers such a prefix with InvalidArgument.
            return stream::empty().boxed();
        }
        let req = self.request(pb::ListRequest {
            bucket: self.location.bucket.clone(),
            prefix: self.remote(prefix),
        });
        let me = self.clone();
        let strip = match self.location.prefix.as_str() {
            "" => 0,
            p => p.len() + 1,
        };
        stream::once(async move {
            let mut c = me.client().await?;
            let pages = c.list(req).await.map_err(|s| me.error(s, ""))?.into_inner();
            let label = me.label();
            Ok::<_, object_store::Error>(
                pages
                    .map_err(move |s| generic(format!("{label}: listing: {}", s.message())))
                    .map_ok(|page| stream::iter(page.pieces.into_iter().map(Ok)))
                    .try_flatten()
                    .map_ok(move |mut p| {
                        p.key = p.key.get(strip..).unwrap_or_default().to_string();
                        meta_of(p)
                    }),
            )
        })
        .try_flatten()
        .boxed()
    }
}

/// `grpc://host:port/bucket` for `location`.
pub(crate) fn label(location: &GrpcLocation) -> String {
    let (scheme, rest) = match location.endpoint.strip_prefix("https://") {
        Some(rest) => ("grpcs", rest),
        None => (
            "grpc",
            location
                .endpoint
                .strip_prefix("http://")
                .unwrap_or(&location.endpoint),
        ),
    };
    match (location.bucket.as_str(), location.prefix.as_str()) {
        ("", _) => format!("{scheme}://{rest}"),
        (b, "") => format!("{scheme}://{rest}/{b}"),
        (b, p) => format!("{scheme}://{rest}/{b}/{p}"),
    }
}

fn meta_of(p: pb::PieceInfo) -> ObjectMeta {
    ObjectMeta {
        location: Path::from(p.key.as_str()),
        last_modified: (UNIX_EPOCH
            + Duration::from_millis(u64::try_from(p.stored_unix_ms).unwrap_or(0)))
        .into(),
        size: p.size,
        e_tag: p.crc32c.map(|c| format!("{c:08x}")),
        version: None,
    }
}

fn attributes_of(p: &pb::PieceInfo) -> Attributes {
    let mut a = Attributes::new();
    if let Some(crc) = p.crc32c {
        a.insert(
            Attribute::Metadata(checksum::METADATA_KEY.into()),
            AttributeValue::from(crc.to_string()),
        );
    }
    a
}

/// The offset and length to ask for, for `range` of a piece of `size` bytes (`None`: the
/// size is needed first).
fn span(range: &GetRange, size: Option<u64>) -> Option<(u64, Option<u64>)> {
    match range {
        GetRange::Bounded(r) => Some((r.start, Some(r.end.saturating_sub(r.start)))),
        GetRange::Offset(o) => Some((*o, None)),
        GetRange::Suffix(n) => size.map(|s| (s.saturating_sub(*n), None)),
    }
}

#[async_trait]
impl ObjectStore for GrpcStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let key = self.key(location)?;
        if let PutMode::Update(_) = opts.mode {
            return Err(object_store::Error::NotImplemented {
                operation: "a conditional update".into(),
                implementer: "grpc".into(),
            });
        }
        let create_only = matches!(opts.mode, PutMode::Create);
        let crc32c = opts
            .attributes
            .get(&Attribute::Metadata(checksum::METADATA_KEY.into()))
            .and_then(|v| v.as_ref().parse::<u32>().ok());
        // One message per chunk of at most CHUNK bytes; the first names the piece.
        let mut parts: Vec<Bytes> = Vec::new();
        for b in payload.iter() {
            let mut at = 0;
            while at < b.len() {
                let end = (at + CHUNK).min(b.len());
                parts.push(b.slice(at..end));
                at = end;
            }
        }
        if parts.is_empty() {
            parts.push(Bytes::new());
        }
        let bucket = self.location.bucket.clone();
        let first_key = key.clone();
        let messages = parts.into_iter().enumerate().map(move |(i, data)| {
            if i == 0 {
                pb::PutRequest {
                    bucket: bucket.clone(),
                    key: first_key.clone(),
                    data,
                    crc32c,
                    create_only,
                }
            } else {
                pb::PutRequest {
                    data,
                    ..Default::default()
                }
            }
        });
        let mut c = self.client().await?;
        let r = c
            .put(self.request(stream::iter(messages)))
            .await
            .map_err(|s| self.error(s, &key))?
            .into_inner();
        Ok(PutResult {
            e_tag: Some(format!("{:08x}", r.crc32c)),
            version: None,
            extensions: Default::default(),
        })
    }

    async fn put_multipart_opts(
        &self,
        _location: &Path,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Err(object_store::Error::NotImplemented {
            operation: "multipart upload".into(),
            implementer: "grpc".into(),
        })
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let key = self.key(location)?;
        if options.if_match.is_some()
            || options.if_none_match.is_some()
            || options.if_modified_since.is_some()
            || options.if_unmodified_since.is_some()
            || options.version.is_some()
        {
            return Err(object_store::Error::NotImplemented {
                operation: "a conditional get".into(),
                implementer: "grpc".into(),
            });
        }
        if options.head {
            let info = self.info(&key).await?;
            let attributes = attributes_of(&info);
            let size = info.size;
            return Ok(GetResult {
                payload: GetResultPayload::Stream(stream::empty().boxed()),
                meta: meta_of(info),
                range: 0..size,
                attributes,
                extensions: Default::default(),
            });
        }
        let (offset, length) = match &options.range {
            None => (0, None),
            Some(r) => match span(r, None) {
                Some(s) => s,
                None => span(r, Some(self.info(&key).await?.size)).unwrap_or((0, None)),
            },
        };
        let mut c = self.client().await?;
        let req = pb::GetRequest {
            bucket: self.location.bucket.clone(),
            key: key.clone(),
            offset,
            length,
        };
        let mut messages = c
            .get(self.request(req))
            .await
            .map_err(|s| self.error(s, &key))?
            .into_inner();
        // The first message carries the piece's size and checksum.
        let first = messages
            .message()
            .await
            .map_err(|s| self.error(s, &key))?
            .ok_or_else(|| {
                generic(format!(
                    "{}: {key}: the Get stream ended at once",
                    self.label()
                ))
            })?;
        let info = first.info.clone().ok_or_else(|| {
            generic(format!(
                "{}: {key}: the first Get message has no piece info",
                self.label()
            ))
        })?;
        let end = length.map_or(info.size, |l| offset.saturating_add(l).min(info.size));
        let range: Range<u64> = offset.min(end)..end;
        let attributes = attributes_of(&info);
        let label = self.label();
        let rest = messages.map(move |m| match m {
            Ok(m) => Ok(m.data),
            Err(s) => Err(generic(format!(
                "{label}: reading: {:?}: {}",
                s.code(),
                s.message()
            ))),
        });
        let payload = stream::once(async move { Ok(first.data) }).chain(rest);
        Ok(GetResult {
            payload: GetResultPayload::Stream(payload.boxed()),
            meta: meta_of(info),
            range,
            attributes,
            extensions: Default::default(),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let me = self.clone();
        locations
            .and_then(move |path| {
                let me = me.clone();
                async move {
                    let key = me.key(&path)?;
                    let mut c = me.client().await?;
                    let req = pb::DeleteRequest {
                        bucket: me.location.bucket.clone(),
                        key: key.clone(),
                    };
                    c.delete(me.request(req))
                        .await
                        .map_err(|s| me.error(s, &key))?;
                    Ok(path)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        // object_store prefixes are whole segments: `a/b` lists `a/b/…`.
        let prefix = prefix
            .map(|p| format!("{}/", p.as_ref()))
            .unwrap_or_default();
        self.list_prefix(&prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let base = prefix
            .map(|p| format!("{}/", p.as_ref()))
            .unwrap_or_default();
        let all: Vec<ObjectMeta> = self.list_prefix(&base).try_collect().await?;
        Ok(super::delimited(&base, all))
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        let got = self.get_opts(from, GetOptions::default()).await?;
        let attributes = got.attributes.clone();
        let bytes = got.bytes().await?;
        let mode = match options.mode {
            object_store::CopyMode::Overwrite => PutMode::Overwrite,
            object_store::CopyMode::Create => PutMode::Create,
        };
        self.put_opts(
            to,
            PutPayload::from(bytes),
            PutOptions {
                mode,
                attributes,
                ..Default::default()
            },
        )
        .await
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_spans() {
        let l = GrpcLocation {
            endpoint: "https://node-b:9820".into(),
            bucket: "pieces".into(),
            prefix: String::new(),
        };
        assert_eq!(label(&l), "grpcs://node-b:9820/pieces");
        let l = GrpcLocation {
            endpoint: "http://127.0.0.1:9820".into(),
            bucket: String::new(),
            prefix: String::new(),
        };
        assert_eq!(label(&l), "grpc://127.0.0.1:9820");
        assert_eq!(span(&GetRange::Bounded(3..10), None), Some((3, Some(7))));
        assert_eq!(span(&GetRange::Offset(5), None), Some((5, None)));
        assert_eq!(span(&GetRange::Suffix(4), None), None);
        assert_eq!(span(&GetRange::Suffix(4), Some(10)), Some((6, None)));
        assert_eq!(span(&GetRange::Suffix(40), Some(10)), Some((0, None)));
    }

    #[test]
    fn the_token_is_never_shown() {
        let s = GrpcStore(Arc::new(Inner {
            location: GrpcLocation {
                endpoint: "http://127.0.0.1:1".into(),
                bucket: String::new(),
                prefix: String::new(),
            },
            token: Some("Bearer hunter2-hunter2-hunter2".parse().unwrap()),
            client: OnceCell::new(),
        }));
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
    }
}
