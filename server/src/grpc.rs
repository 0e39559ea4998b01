//! The gRPC API (`proto/piecestore/v1/piecestore.proto`), served on the same port, TLS and
//! connections as the S3 API: a request whose `content-type` is `application/grpc…` goes here.
//!
//! Besides `piecestore.v1.PieceStore`, the port answers the standard health service
//! (`grpc.health.v1.Health`) and server reflection (`grpc.reflection.v1` and `v1alpha`), so
//! that `grpcurl` and other tools work without the proto file.
//!
//! Auth: `authorization: Bearer TOKEN` with a token of `[PieceStore.Serve] Tokens` or
//! `PIECESTORE_SERVE_TOKEN`, compared in constant time; reads of a `PublicRead` bucket need
//! none. Errors carry a `google.rpc.ErrorInfo` with the engine's stable code as the reason.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use piecestore::config::Secret;
use piecestore::{ErrorKind, PieceStore, PutOptions};
use tonic::codegen::Service;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_types::{ErrorDetails, StatusExt};

use crate::BucketSpec;
use crate::s3::State;

/// The generated messages and service.
pub use piecestore_proto::v1 as pb;

use pb::DESCRIPTOR;

/// The `ErrorInfo` domain of every error.
pub const ERROR_DOMAIN: &str = "piecestore.dev";

/// The environment variable that adds one bearer token.
pub const ENV_TOKEN: &str = "PIECESTORE_SERVE_TOKEN";

/// The bucket a request that names none addresses.
const DEFAULT_BUCKET: &str = "pieces";

/// The largest data chunk a Get message carries.
const CHUNK: usize = 1 << 20;

/// Pieces a List message carries at most.
const LIST_BATCH: usize = 1000;

/// The shortest token accepted.
const MIN_TOKEN_LEN: usize = 16;

/// The bearer tokens, checked in constant time.
#[derive(Clone, Default)]
pub(crate) struct Tokens(Arc<Vec<Secret>>);

impl Tokens {
    /// The configured tokens, and the environment's if `env` (each at least 16 characters).
    pub(crate) fn collect(configured: &[Secret], env: bool) -> Result<Self, String> {
        let mut all: Vec<Secret> = configured.to_vec();
        if env
            && let Ok(t) = std::env::var(ENV_TOKEN)
            && !t.is_empty()
        {
            all.push(Secret::new(t));
        }
        if all.iter().any(|t| t.expose().len() < MIN_TOKEN_LEN) {
            return Err(format!(
                "a gRPC token (Tokens or {ENV_TOKEN}) is shorter than {MIN_TOKEN_LEN} characters"
            ));
        }
        Ok(Tokens(Arc::new(all)))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `presented` is one of the tokens. Every token is compared, each in constant
    /// time, so the time taken does not say which one (or how much of it) matched.
    fn accepts(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        let mut ok = subtle::Choice::from(0);
        for t in self.0.iter() {
            ok |= t.expose().as_bytes().ct_eq(presented);
        }
        ok.into()
    }
}

/// What a call does to a bucket.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

/// The `PieceStore` service.
#[derive(Clone)]
pub(crate) struct Rpc {
    state: Arc<State>,
    tokens: Tokens,
}

/// The engine's error as a status: its code from the error's kind, the engine's stable code
/// and the key in a `google.rpc.ErrorInfo`.
fn status_of(e: piecestore::Error) -> Status {
    let kind = e.kind();
    let code = match kind {
        ErrorKind::NotFound | ErrorKind::BucketNotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::InvalidKey => Code::InvalidArgument,
        ErrorKind::InvalidRange => Code::OutOfRange,
        ErrorKind::Corrupt => Code::DataLoss,
        ErrorKind::Unauthorized => Code::PermissionDenied,
        ErrorKind::InvalidConfig => Code::FailedPrecondition,
        ErrorKind::Backend if e.is_retryable() => Code::Unavailable,
        ErrorKind::Closed => Code::Unavailable,
        _ => Code::Internal,
    };
    if matches!(code, Code::Internal | Code::Unavailable | Code::DataLoss) {
        tracing::warn!(kind = ?kind, error = %e, "the engine failed a gRPC call");
    }
    let mut meta = HashMap::new();
    if let Some(k) = e.key() {
        meta.insert("key".to_string(), k.to_string());
    }
    Status::with_error_details(
        code,
        e.to_string(),
        ErrorDetails::with_error_info(kind.as_str(), ERROR_DOMAIN, meta),
    )
}

/// A refusal by the service itself (not the engine), with `reason` in its ErrorInfo.
fn refuse(code: Code, reason: &str, message: impl Into<String>) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new()),
    )
}

impl Rpc {
    pub(crate) fn new(state: Arc<State>, tokens: Tokens) -> Self {
        Rpc { state, tokens }
    }

    /// The bucket a call names, if the caller may `access` it.
    fn bucket<T>(
        &self,
        req: &Request<T>,
        name: &str,
        access: Access,
    ) -> Result<&BucketSpec, Status> {
        let name = if name.is_empty() {
            DEFAULT_BUCKET
        } else {
            name
        };
        let bucket = self.state.bucket_spec(name).ok_or_else(|| {
            refuse(
                Code::NotFound,
                ErrorKind::BucketNotFound.as_str(),
                format!("this server has no bucket {name:?}"),
            )
        })?;
        if access == Access::Read && bucket.public_read {
            return Ok(bucket);
        }
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            });
        match presented {
            None => Err(refuse(
                Code::Unauthenticated,
                "UNAUTHENTICATED",
                "no bearer token: send `authorization: Bearer TOKEN`",
            )),
            Some(t) if self.tokens.accepts(t.trim().as_bytes()) => Ok(bucket),
            Some(_) => Err(refuse(
                Code::Unauthenticated,
                "UNAUTHENTICATED",
                "the bearer token is not one of this server's",
            )),
        }
    }
}

/// A piece key a gRPC caller may use: the engine's rules, and not the prefix that holds S3
/// clients' own objects.
fn check_key(key: &str) -> Result<(), Status> {
    if key.starts_with(crate::s3::CLIENT_RESERVED) {
        return Err(refuse(
            Code::InvalidArgument,
            ErrorKind::InvalidKey.as_str(),
            crate::s3::CLIENT_RESERVED_REFUSAL,
        ));
    }
    piecestore::key::validate(key).map_err(status_of)
}

fn info_of(meta: piecestore::PieceMeta) -> pb::PieceInfo {
    let ms = meta
        .last_modified
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    pb::PieceInfo {
        key: meta.key,
        size: meta.size,
        crc32c: meta.crc32c,
        stored_unix_ms: ms,
    }
}

#[tonic::async_trait]
impl pb::piece_store_server::PieceStore for Rpc {
    async fn put(
        &self,
        req: Request<Streaming<pb::PutRequest>>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let (meta, ext, mut messages) = req.into_parts();
        // A stream that stops sending holds a share of the server: BodyTimeout applies to
        // each message as it does to an S3 body.
        let idle = self.state.body_timeout();
        let stalled = || {
            refuse(
                Code::DeadlineExceeded,
                "BODY_TIMEOUT",
                format!(
                    "no message arrived for {} s (BodyTimeout); nothing was stored",
                    idle.as_secs_f64()
                ),
            )
        };
        let mut next = async || {
            tokio::time::timeout(idle, messages.message())
                .await
                .map_err(|_| stalled())?
        };
        let first = next().await?.ok_or_else(|| {
            refuse(
                Code::InvalidArgument,
                "EMPTY_PUT",
                "the stream ended before its first message (which names the key)",
            )
        })?;
        let probe = Request::from_parts(meta, ext, ());
        let bucket = self.bucket(&probe, &first.bucket, Access::Write)?;
        check_key(&first.key)?;
        let limit = self.state.max_object_size();
        let too_large = |n: usize| {
            refuse(
                Code::ResourceExhausted,
                "TOO_LARGE",
                format!(
                    "the piece is larger than MaxObjectSize ({limit} bytes); nothing was stored (at {n} bytes)"
                ),
            )
        };
        // A piece sent in one message is stored as it arrived; more are joined once.
        let mut data = BytesMut::new();
        let mut single = Some(first.data.clone());
        while let Some(m) = next().await? {
            if let Some(d) = single.take() {
                data.extend_from_slice(&d);
            }
            if !m.key.is_empty() && m.key != first.key {
                return Err(refuse(
                    Code::InvalidArgument,
                    "KEY_CHANGED",
                    "a Put stream names one key (in its first message)",
                ));
            }
            if (data.len() + m.data.len()) as u64 > limit {
                return Err(too_large(data.len() + m.data.len()));
            }
            data.extend_from_slice(&m.data);
        }
        let data: Bytes = single.unwrap_or_else(|| data.freeze());
        if data.len() as u64 > limit {
            return Err(too_large(data.len()));
        }
        let crc = piecestore::checksum::crc32c(&data);
        if let Some(want) = first.crc32c
            && want != crc
        {
            return Err(refuse(
                Code::InvalidArgument,
                "BAD_DIGEST",
                format!(
                    "the data's CRC32C is {crc:08x}, the request said {want:08x}; nothing was stored"
                ),
            ));
        }
        let size = data.len() as u64;
        let opts = PutOptions {
            overwrite: bucket.allow_overwrite && !first.create_only,
        };
        bucket
            .store
            .put_opts(&first.key, data, opts)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::PutResponse { size, crc32c: crc }))
    }

    type GetStream = BoxStream<'static, Result<pb::GetResponse, Status>>;

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<Self::GetStream>, Status> {
        let bucket = self.bucket(&req, &req.get_ref().bucket, Access::Read)?;
        let input = req.get_ref();
        check_key(&input.key)?;
        let store: &PieceStore = &bucket.store;
        if input.offset == 0 && input.length.is_none() {
            // The whole piece, streamed as it is read (and verified: a piece that fails its
            // checksum ends the stream with DATA_LOSS in place of its last message).
            let piece = store.get_stream(&input.key).await.map_err(status_of)?;
            let empty = piece.meta.size == 0;
            let mut info = Some(info_of(piece.meta));
            if empty {
                let only = pb::GetResponse {
                    data: Bytes::new(),
                    info: info.take(),
                };
                return Ok(Response::new(stream::iter([Ok(only)]).boxed()));
            }
            let out = piece.chunks.map(move |chunk| {
                Ok(pb::GetResponse {
                    data: chunk.map_err(status_of)?,
                    info: info.take(),
                })
            });
            return Ok(Response::new(out.boxed()));
        }
        let (data, info) = {
            let meta = store.head(&input.key).await.map_err(status_of)?;
            let len = input
                .length
                .unwrap_or_else(|| meta.size.saturating_sub(input.offset));
            let data = store
                .get_range(&input.key, input.offset, len)
                .await
                .map_err(status_of)?;
            (data, meta)
        };
        let mut info = Some(info_of(info));
        let chunks: Vec<Bytes> = if data.is_empty() {
            vec![Bytes::new()]
        } else {
            (0..data.len())
                .step_by(CHUNK)
                .map(|at| data.slice(at..(at + CHUNK).min(data.len())))
                .collect()
        };
        let out = chunks.into_iter().map(move |chunk| {
            Ok(pb::GetResponse {
                data: chunk,
                info: info.take(),
            })
        });
        Ok(Response::new(stream::iter(out).boxed()))
    }

    async fn head(&self, req: Request<pb::HeadRequest>) -> Result<Response<pb::PieceInfo>, Status> {
        let bucket = self.bucket(&req, &req.get_ref().bucket, Access::Read)?;
        let key = &req.get_ref().key;
        check_key(key)?;
        let meta = bucket.store.head(key).await.map_err(status_of)?;
        Ok(Response::new(info_of(meta)))
    }

    async fn exists(
        &self,
        req: Request<pb::ExistsRequest>,
    ) -> Result<Response<pb::ExistsResponse>, Status> {
        let bucket = self.bucket(&req, &req.get_ref().bucket, Access::Read)?;
        let key = &req.get_ref().key;
        check_key(key)?;
        let exists = bucket.store.exists(key).await.map_err(status_of)?;
        Ok(Response::new(pb::ExistsResponse { exists }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let bucket = self.bucket(&req, &req.get_ref().bucket, Access::Write)?;
        let key = &req.get_ref().key;
        check_key(key)?;
        bucket.store.delete(key).await.map_err(status_of)?;
        Ok(Response::new(pb::DeleteResponse {}))
    }

    async fn delete_prefix(
        &self,
        req: Request<pb::DeletePrefixRequest>,
    ) -> Result<Response<pb::DeletePrefixResponse>, Status> {
        let bucket = self.bucket(&req, &req.get_ref().bucket, Access::Write)?;
        let prefix = &req.get_ref().prefix;
        if prefix.is_empty() {
            return Err(refuse(
                Code::InvalidArgument,
                "EMPTY_PREFIX",
                "DeletePrefix with an empty prefix would delete every piece; name a prefix",
            ));
        }
        let done = bucket
            .store
            .delete_prefix(prefix)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::DeletePrefixResponse {
            pieces: done.pieces,
            bytes: done.bytes,
        }))
    }

    type ListStream = BoxStream<'static, Result<pb::ListResponse, Status>>;

    async fn list(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let bucket = self.bucket(&req, &req.get_ref().bucket, Access::Read)?;
        let prefix = &req.get_ref().prefix;
        let mut metas: Vec<piecestore::PieceMeta> = bucket
            .store
            .list(prefix)
            .try_collect()
            .await
            .map_err(status_of)?;
        // Shards list in no common order, and S3 clients' own objects are not pieces.
        metas.retain(|m| !m.key.starts_with(crate::s3::CLIENT_RESERVED));
        metas.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        let mut batches = Vec::with_capacity(metas.len() / LIST_BATCH + 1);
        let mut it = metas.into_iter().peekable();
        while it.peek().is_some() {
            batches.push(Ok(pb::ListResponse {
                pieces: it.by_ref().take(LIST_BATCH).map(info_of).collect(),
            }));
        }
        Ok(Response::new(stream::iter(batches).boxed()))
    }

    async fn flush(
        &self,
        req: Request<pb::FlushRequest>,
    ) -> Result<Response<pb::FlushResponse>, Status> {
        let bucket = self.bucket(&req, &req.get_ref().bucket, Access::Write)?;
        bucket.store.flush().await.map_err(status_of)?;
        Ok(Response::new(pb::FlushResponse {}))
    }
}

/// One gRPC service, type-erased.
type Call = Arc<
    dyn Fn(
            http::Request<hyper::body::Incoming>,
        ) -> futures::future::BoxFuture<'static, http::Response<tonic::body::Body>>
        + Send
        + Sync,
>;

fn boxed<S>(svc: S) -> Call
where
    S: Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    Arc::new(move |req| {
        let mut svc = svc.clone();
        Box::pin(async move {
            match svc.call(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            }
        })
    })
}

/// Every gRPC service on the port, dispatched by path.
#[derive(Clone)]
pub(crate) struct GrpcServices {
    pieces: Call,
    health: Call,
    reflection_v1: Call,
    reflection_v1alpha: Call,
}

/// The `grpc-timeout` header (gRPC over HTTP/2: at most 8 digits and a unit of H, M, S, m,
/// u or n), if present and well formed.
fn grpc_timeout(headers: &http::HeaderMap) -> Option<std::time::Duration> {
    use std::time::Duration;
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Whether `req` is a gRPC call.
pub(crate) fn is_grpc<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The name of a gRPC status code as gRPC's own libraries print it (the `code` label of
/// `piecestore_grpc_requests_total`, as go-grpc-prometheus labels it).
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// The `grpc-status` of response headers or trailers.
fn status_in(headers: &http::HeaderMap) -> Option<Code> {
    let v = headers.get("grpc-status")?.to_str().ok()?;
    Some(Code::from_i32(v.trim().parse().ok()?))
}

/// A gRPC response body that records its call in the server's metrics once the call is over:
/// its status code (from the trailers, or from the headers of a trailers-only answer;
/// `Canceled` when the client went away before the end), its latency to the end of the
/// stream, and the bytes it sent.
pub(crate) struct Metered<B> {
    inner: B,
    metrics: Arc<crate::metrics::HttpMetrics>,
    method: String,
    started: std::time::Instant,
    sent: u64,
    code: Option<Code>,
    ended: bool,
    recorded: bool,
}

impl<B> Metered<B> {
    /// Meters `response` of the call of `method` that began at `started`.
    pub(crate) fn wrap(
        response: http::Response<B>,
        metrics: Arc<crate::metrics::HttpMetrics>,
        method: &str,
        started: std::time::Instant,
    ) -> http::Response<Metered<B>> {
        let code = status_in(response.headers());
        response.map(|inner| Metered {
            inner,
            metrics,
            method: method.to_string(),
            started,
            sent: 0,
            code,
            ended: false,
            recorded: false,
        })
    }

    fn record(&mut self) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let code = match (self.code, self.ended) {
            (Some(c), _) => c,
            (None, true) => Code::Unknown,
            (None, false) => Code::Cancelled,
        };
        self.metrics.rpc_finished(
            &self.method,
            code_name(code),
            self.started.elapsed(),
            self.sent,
        );
    }
}

impl<B> hyper::body::Body for Metered<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
                if let Some(code) = frame.trailers_ref().and_then(status_in) {
                    this.code = Some(code);
                }
            }
            std::task::Poll::Ready(Some(Err(_))) => {
                this.code.get_or_insert(Code::Internal);
                this.ended = true;
                this.record();
            }
            std::task::Poll::Ready(None) => {
                this.ended = true;
                this.record();
            }
            std::task::Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Metered<B> {
    fn drop(&mut self) {
        // A trailers-only answer (an error before any message) has no body to read: its code
        // came with the headers. Otherwise a body dropped before its end was abandoned.
        self.record();
    }
}

impl GrpcServices {
    /// The services over `state`, with `tokens` for auth and `max_message` bytes the largest
    /// message either way.
    pub(crate) async fn new(
        state: Arc<State>,
        tokens: Tokens,
        max_message: usize,
    ) -> Result<Self, String> {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_serving::<pb::piece_store_server::PieceStoreServer<Rpc>>()
            .await;
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(DESCRIPTOR)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| format!("gRPC reflection: {e}"))?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(DESCRIPTOR)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| format!("gRPC reflection: {e}"))?;
        let pieces = pb::piece_store_server::PieceStoreServer::new(Rpc::new(state, tokens))
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
        Ok(GrpcServices {
            pieces: boxed(pieces),
            health: boxed(health),
            reflection_v1: boxed(reflection_v1),
            reflection_v1alpha: boxed(reflection_v1alpha),
        })
    }

    /// Serves one gRPC call.
    pub(crate) async fn call(
        &self,
        req: http::Request<hyper::body::Incoming>,
    ) -> http::Response<tonic::body::Body> {
        let path = req.uri().path();
        let service = if path.starts_with("/piecestore.v1.PieceStore/") {
            &self.pieces
        } else if path.starts_with("/grpc.health.v1.Health/") {
            &self.health
        } else if path.starts_with("/grpc.reflection.v1.ServerReflection/") {
            &self.reflection_v1
        } else if path.starts_with("/grpc.reflection.v1alpha.ServerReflection/") {
            &self.reflection_v1alpha
        } else {
            return Status::unimplemented(format!("no gRPC service answers {path}")).into_http();
        };
        // The caller's deadline, honoured here too: a client whose cancel never arrives
        // still gets DEADLINE_EXCEEDED, and the call's work is dropped with its future.
        match grpc_timeout(req.headers()) {
            Some(limit) => match tokio::time::timeout(limit, service(req)).await {
                Ok(response) => response,
                Err(_) => Status::deadline_exceeded(format!(
                    "the call's deadline ({} ms) passed on the server",
                    limit.as_millis()
                ))
                .into_http(),
            },
            None => service(req).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_accept_only_their_own_and_refuse_short_ones() {
        let t = Tokens::collect(
            &[
                Secret::new("first-token-0123456789"),
                Secret::new("second-token-0123456789"),
            ],
            false,
        )
        .unwrap();
        assert!(t.accepts(b"first-token-0123456789"));
        assert!(t.accepts(b"second-token-0123456789"));
        for wrong in [
            &b""[..],
            b"first-token-012345678",
            b"first-token-01234567890",
            b"FIRST-token-0123456789",
        ] {
            assert!(!t.accepts(wrong));
        }
        assert!(!Tokens::default().accepts(b""), "no tokens: nothing passes");
        let e = Tokens::collect(&[Secret::new("short")], false)
            .err()
            .unwrap();
        assert!(e.contains("shorter than 16"), "{e}");
        assert!(
            !e.contains("short\""),
            "the token itself is not in the error: {e}"
        );
    }

    #[test]
    fn grpc_timeouts_parse_as_the_protocol_defines_them() {
        use std::time::Duration;
        let parse = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&h)
        };
        assert_eq!(parse("50m"), Some(Duration::from_millis(50)));
        assert_eq!(parse("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "5", "5x", "123456789m", "-5m", "5.5S"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }

    #[test]
    fn engine_errors_map_to_codes_with_their_reason_and_key() {
        let e = piecestore::Error::InvalidKey {
            key: "a//b".into(),
            reason: "empty segment",
        };
        let s = status_of(e);
        assert_eq!(s.code(), Code::InvalidArgument);
        let info = s.get_details_error_info().unwrap();
        assert_eq!(info.reason, "INVALID_KEY");
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(info.metadata.get("key").map(String::as_str), Some("a//b"));
    }
}
