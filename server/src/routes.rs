//! The HTTP service in front of s3s: the operations endpoints (`/healthz`, `/readyz`,
//! `/metrics`), the concurrency limit, and the request metrics and log span of every request.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use s3s::{Body, HttpError, HttpResponse};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::grpc::{GrpcServices, Metered, is_grpc};
use crate::host::Domains;
use crate::metrics::{HttpMetrics, merge_families, with_label};
use crate::s3::State;

/// Where the S3 layer writes the name of the operation a request turned out to be (read back
/// for the request's metrics and log line).
#[derive(Clone, Default)]
pub(crate) struct OpSlot(pub(crate) Arc<Mutex<Option<String>>>);

impl OpSlot {
    pub(crate) fn set(&self, name: &str) {
        if let Ok(mut s) = self.0.lock() {
            *s = Some(name.to_string());
        }
    }
    fn get(&self) -> Option<String> {
        self.0.lock().ok().and_then(|s| s.clone())
    }
}

/// One connection's service: cheap to clone (all shared).
#[derive(Clone)]
pub(crate) struct HttpService {
    s3: s3s::service::S3Service,
    state: Arc<State>,
    metrics: Arc<HttpMetrics>,
    limit: Arc<Semaphore>,
    domains: Option<Arc<Domains>>,
    grpc: GrpcServices,
}

impl HttpService {
    pub(crate) fn new(
        s3: s3s::service::S3Service,
        state: Arc<State>,
        metrics: Arc<HttpMetrics>,
        limit: Arc<Semaphore>,
        domains: Option<Arc<Domains>>,
        grpc: GrpcServices,
    ) -> Self {
        HttpService {
            s3,
            state,
            metrics,
            limit,
            domains,
            grpc,
        }
    }

    pub(crate) async fn call(
        self,
        mut req: http::Request<Incoming>,
    ) -> Result<HttpResponse, HttpError> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        // `bucket.domain/healthz` is an object in a bucket, not the operations endpoint.
        let virtual_hosted = self.domains.as_ref().is_some_and(|d| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri().host())
                .is_some_and(|h| d.bucket_of(h).is_some())
        });
        let plain_get = (method == http::Method::GET || method == http::Method::HEAD)
            && req.uri().query().is_none()
            && !virtual_hosted;
        if plain_get {
            match path.as_str() {
                "/healthz" => return Ok(text(200, "ok\n")),
                "/readyz" => return Ok(self.ready().await),
                "/metrics" => return Ok(self.metrics_text()),
                _ => {}
            }
        }
        let grpc_call = is_grpc(&req);
        let slot = OpSlot::default();
        if grpc_call {
            slot.set(&format!("gRPC {}", path.trim_start_matches('/')));
        }
        req.extensions_mut().insert(slot.clone());
        let span = tracing::info_span!(
            "request",
            method = %method,
            path = %path,
            op = tracing::field::Empty,
            status = tracing::field::Empty,
        );
        async move {
            let _permit = self.limit.acquire().await;
            self.metrics.started();
            let t0 = Instant::now();
            let result = if grpc_call {
                let response = self.grpc.call(req).await;
                let method = path.trim_start_matches('/');
                let response = Metered::wrap(response, Arc::clone(&self.metrics), method, t0);
                Ok(response.map(Body::http_body_unsync))
            } else {
                // A body held back for `100 Continue` and never asked for: hyper would read
                // whatever comes next on the connection as that body (boto3's next request,
                // which then fails its signature). Close the connection after the answer
                // instead, as RFC 9110 §10.1.1 lets a server that answers without the body.
                let held_back = expects_continue(&req).then(|| Arc::new(AtomicBool::new(false)));
                let body = match &held_back {
                    None => req.map(Body::from),
                    Some(asked) => req.map(|inner| {
                        Body::http_body(Watched {
                            inner,
                            asked: Arc::clone(asked),
                        })
                    }),
                };
                let mut result = self.s3.call(body).await;
                if let (Some(asked), Ok(response)) = (&held_back, &mut result)
                    && !asked.load(Ordering::Acquire)
                {
                    response.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                result
            };
            let elapsed = t0.elapsed();
            let status = match &result {
                Ok(r) => r.status().as_u16(),
                Err(_) => 500,
            };
            let op = slot.get().unwrap_or_else(|| format!("HTTP {method}"));
            self.metrics.finished(&op, status, elapsed);
            let span = tracing::Span::current();
            span.record("op", op.as_str());
            span.record("status", status);
            // 501 is a deliberate answer (an operation `serve` does not offer), not a failure.
            if status >= 500 && status != 501 {
                // The request span is at info level, off by default: name the request here.
                tracing::warn!(
                    method = %method,
                    path = %path,
                    op = op.as_str(),
                    status,
                    elapsed_us = elapsed.as_micros() as u64,
                    "served with a server error"
                );
            } else {
                tracing::debug!(elapsed_us = elapsed.as_micros() as u64, "served");
            }
            result
        }
        .instrument(span)
        .await
    }

    async fn ready(&self) -> HttpResponse {
        match self.state.check_all().await {
            Ok(()) => text(200, "ready\n"),
            Err(why) => text(503, &format!("not ready: {why}\n")),
        }
    }

    fn metrics_text(&self) -> HttpResponse {
        let texts: Vec<String> = self
            .state
            .stores()
            .into_iter()
            .map(|(name, store)| with_label(&store.metrics().to_prometheus(), "bucket", &name))
            .collect();
        let mut out = merge_families(&texts);
        out.push_str(&self.metrics.to_prometheus());
        let mut r = text(200, &out);
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        r
    }
}

fn text(status: u16, body: &str) -> HttpResponse {
    let mut r = http::Response::new(Body::from(body.to_string()));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Whether `req` asks for `100 Continue` before it sends its body.
fn expects_continue<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// A request body that notes when it is first asked for (hyper sends `100 Continue` then).
struct Watched {
    inner: Incoming,
    asked: Arc<AtomicBool>,
}

impl hyper::body::Body for Watched {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        self.asked.store(true, Ordering::Release);
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
