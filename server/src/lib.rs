//! PieceStore's network front ends. Today: `piecestore serve`, the engine as an
//! S3-compatible HTTP service.
//!
//! Each front end is a thin adapter over [`PieceStore`]s, like a binding: the S3 protocol
//! (routing, SigV4 signatures in headers and presigned URLs, XML, `aws-chunked` bodies) is
//! the `s3s` crate's, the pieces and their checksums are the engine's. What this crate adds:
//!
//! - **Buckets over stores** ([`BucketSpec`]): each bucket name is one store; object keys are
//!   piece keys (others get `400 InvalidArgument`).
//! - **The mapping of S3 calls to the engine** (`s3` module): PutObject, GetObject (ranges,
//!   `If-Match`/`If-None-Match`), HeadObject, DeleteObject, DeleteObjects, ListObjectsV2,
//!   ListObjects, ListBuckets, HeadBucket, GetBucketLocation, and multipart uploads (parts
//!   staged durably on local disk, `multipart` module); everything else answers
//!   `501 NotImplemented`.
//! - **Auth** (`auth` module): SigV4 against the configured keys; anonymous reads only on a
//!   bucket configured `PublicRead`.
//! - **Operations endpoints**: `/healthz`, `/readyz`, `/metrics` (the stores' Prometheus text
//!   and the HTTP requests').
//! - **Limits and shutdown** ([`Server::run`]): a request concurrency limit, header and body
//!   timeouts, a largest object, and a graceful shutdown that lets requests in flight finish
//!   and flushes the stores' open packs.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use piecestore::{PieceStore, config::{ServeKey, ServeOptions, Secret}};
//! use piecestore_server::{Server, Setup};
//!
//! let store = PieceStore::open_spec("./data").await?;
//! let mut options = ServeOptions::default();
//! options.keys.push(ServeKey { access_key: "me".into(), secret_key: Secret::new("a-long-secret") });
//! let server = Server::bind(Setup::new(store, options)).await?;
//! println!("listening on {}", server.local_addr());
//! server.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod auth;
mod body;
mod grpc;
mod host;
mod metrics;
mod multipart;
pub mod p2p;
mod routes;
mod s3;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use piecestore::PieceStore;
use piecestore::config::{DEFAULT_SERVE_LISTEN, Secret, ServeOptions};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

pub use metrics::HttpMetrics;

/// The bucket names the operations endpoints take (`/healthz`, `/readyz`, `/metrics`): a
/// bucket may not be named so.
pub const RESERVED_BUCKET_NAMES: &[&str] = &["healthz", "readyz", "metrics"];

/// The environment variables that add one access key to the configured ones.
pub const ENV_ACCESS_KEY: &str = "PIECESTORE_SERVE_ACCESS_KEY";
/// See [`ENV_ACCESS_KEY`].
pub const ENV_SECRET_KEY: &str = "PIECESTORE_SERVE_SECRET_KEY";
pub use grpc::{ENV_TOKEN, ERROR_DOMAIN, pb};

/// What cannot start a server: a config it cannot serve, a store that does not open, an
/// address or a file it cannot use.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The `[PieceStore.Serve]` options (or the environment) cannot be served as they are.
    #[error("[PieceStore.Serve]: {0}")]
    Config(String),
    /// A bucket's store failed to open.
    #[error("bucket {bucket}: {source}")]
    Store {
        /// The bucket whose store failed.
        bucket: String,
        /// The engine's error.
        #[source]
        source: piecestore::Error,
    },
    /// The listener, a TLS file or a connection failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl ServeError {
    /// The engine's error behind this one, if a store failed.
    pub fn store_error(&self) -> Option<&piecestore::Error> {
        match self {
            ServeError::Store { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServeError {
    let what = what.into();
    move |source| ServeError::Io { what, source }
}

/// One bucket of a server: its name, its store, and who may do what.
#[derive(Clone)]
pub struct BucketSpec {
    /// The name clients address.
    pub name: String,
    /// The store behind it.
    pub store: PieceStore,
    /// Anyone may read (GET, HEAD, list) without signing.
    pub public_read: bool,
    /// A PUT of other bytes under an existing key replaces the piece (else `409 PieceExists`).
    pub allow_overwrite: bool,
}

impl std::fmt::Debug for BucketSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BucketSpec")
            .field("name", &self.name)
            .field("store", &self.store.shard_labels())
            .field("public_read", &self.public_read)
            .field("allow_overwrite", &self.allow_overwrite)
            .finish()
    }
}

/// Everything a [`Server`] is made from: the `[PieceStore.Serve]` options, the store the
/// serving config describes, and where to listen.
#[derive(Debug)]
pub struct Setup {
    /// The store the serving config describes: the default bucket's, and every bucket's
    /// without a `Store` of its own.
    pub store: PieceStore,
    /// `[PieceStore.Serve]`.
    pub options: ServeOptions,
    /// Overrides `options.listen` (the CLI's `--listen`).
    pub listen: Option<String>,
    /// Read [`ENV_ACCESS_KEY`], [`ENV_SECRET_KEY`] and [`ENV_TOKEN`] from the process
    /// environment (default true).
    pub env_keys: bool,
    /// The counters of a P2P node run beside the server, for `/metrics`.
    pub peer_stats: Option<Arc<p2p::PeerStats>>,
}

impl Setup {
    /// A setup serving `store` with `options`.
    pub fn new(store: PieceStore, options: ServeOptions) -> Self {
        Setup {
            store,
            options,
            listen: None,
            env_keys: true,
            peer_stats: None,
        }
    }
}

/// A bound, not yet running, S3-compatible server. [`Server::run`] serves until shutdown.
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    tls: Option<(TlsAcceptor, TlsReloader)>,
    state: Arc<s3::State>,
    service: s3s::service::S3Service,
    options: ServeOptions,
    metrics: Arc<HttpMetrics>,
    domains: Option<Arc<host::Domains>>,
    grpc: grpc::GrpcServices,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .field("buckets", &self.state.bucket_names())
            .finish()
    }
}

/// Whether `name` is a bucket name S3 clients can address path-style and virtual-hosted:
/// 3 to 63 characters of lowercase letters, digits, `-` and `.`, starting and ending with a
/// letter or digit.
pub fn valid_bucket_name(name: &str) -> bool {
    let b = name.as_bytes();
    (3..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'.')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

impl Server {
    /// Opens every bucket's store, loads the TLS files and binds the listen address.
    pub async fn bind(setup: Setup) -> Result<Server, ServeError> {
        let Setup {
            store,
            options,
            listen,
            env_keys,
            peer_stats,
        } = setup;
        let buckets = open_buckets(&store, &options).await?;
        let keys = collect_keys(&options, env_keys)?;
        let tokens =
            grpc::Tokens::collect(&options.tokens, env_keys).map_err(ServeError::Config)?;
        let any_public = buckets.iter().any(|b| b.public_read);
        if keys.is_empty() && tokens.is_empty() && !any_public {
            return Err(ServeError::Config(format!(
                "no access keys: set {ENV_ACCESS_KEY} and {ENV_SECRET_KEY}, or add \
                 [[PieceStore.Serve.Keys]] with AccessKey and SecretKey (a server without \
                 keys serves only PublicRead buckets; {ENV_TOKEN} or Tokens let gRPC \
                 clients in)"
            )));
        }
        let tls = match (&options.tls_cert, &options.tls_key) {
            (Some(cert), Some(key)) => Some(load_tls(cert, key)?),
            (None, None) => None,
            _ => {
                return Err(ServeError::Config(
                    "TLSCert and TLSKey go together: give both or neither".into(),
                ));
            }
        };
        let domains = host::Domains::new(&options.domains).map_err(ServeError::Config)?;
        if options.concurrency == 0 {
            return Err(ServeError::Config("Concurrency must be at least 1".into()));
        }
        let listen = listen
            .or_else(|| options.listen.clone())
            .unwrap_or_else(|| DEFAULT_SERVE_LISTEN.to_string());
        let listener = TcpListener::bind(&listen)
            .await
            .map_err(io_error(format!("cannot listen on {listen}")))?;
        let addr = listener
            .local_addr()
            .map_err(io_error("the listener's address"))?;
        let upload_dir = options
            .upload_dir
            .clone()
            .unwrap_or_else(multipart::Uploads::default_dir);
        let uploads = multipart::Uploads::open(upload_dir.clone(), options.upload_expiry)
            .map_err(io_error(format!("UploadDir {}", upload_dir.display())))?;
        let metrics = Arc::new(HttpMetrics::default());
        if let Some(p) = peer_stats {
            metrics.set_peers(p);
        }
        let state = Arc::new(s3::State::new(buckets, &options, uploads));
        let service = s3::build_service(state.clone(), keys, domains.clone());
        let max_message = usize::try_from(options.max_object_size)
            .unwrap_or(usize::MAX)
            .saturating_add(1 << 20);
        let grpc = grpc::GrpcServices::new(state.clone(), tokens, max_message)
            .await
            .map_err(ServeError::Config)?;
        Ok(Server {
            listener,
            addr,
            tls,
            state,
            service,
            options,
            metrics,
            domains: domains.map(Arc::new),
            grpc,
        })
    }

    /// The address the server listens on (the port the system chose for `:0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the server speaks HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The handle that reloads the certificate and key while the server runs (`None` without
    /// TLS).
    pub fn tls_reloader(&self) -> Option<TlsReloader> {
        self.tls.as_ref().map(|(_, r)| r.clone())
    }

    /// The buckets served, by name.
    pub fn bucket_names(&self) -> Vec<String> {
        self.state.bucket_names()
    }

    /// Serves until `shutdown` completes, then stops accepting, lets requests in flight
    /// finish (at most `ShutdownTimeout`), and flushes every store's open packs.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let Server {
            listener,
            tls,
            state,
            service,
            options,
            metrics,
            domains,
            grpc,
            ..
        } = self;
        let limit = Arc::new(tokio::sync::Semaphore::new(options.concurrency));
        let mut builder = ConnBuilder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(options.header_timeout)
            .max_buf_size(64 << 10);
        builder.http2().timer(TokioTimer::new());
        let builder = Arc::new(builder);
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let handshake_timeout = options.header_timeout;
        // Abandoned multipart uploads go after UploadExpiry: swept hourly.
        let sweeper = {
            let state = state.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(3600));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let s = state.clone();
                    let _ = tokio::task::spawn_blocking(move || s.uploads.sweep()).await;
                }
            })
        };
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, do not spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let svc = routes::HttpService::new(
                service.clone(),
                state.clone(),
                metrics.clone(),
                limit.clone(),
                domains.clone(),
                grpc.clone(),
            );
            let hyper_svc = hyper::service::service_fn(move |req| svc.clone().call(req));
            match tls.as_ref().map(|(acceptor, _)| acceptor) {
                None => {
                    let conn = builder
                        .serve_connection(TokioIo::new(stream), hyper_svc)
                        .into_owned();
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                Some(acceptor) => {
                    let acceptor = acceptor.clone();
                    let builder = builder.clone();
                    let watcher = graceful.watcher();
                    tokio::spawn(async move {
                        let stream =
                            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                        let conn = builder
                            .serve_connection(TokioIo::new(stream), hyper_svc)
                            .into_owned();
                        if let Err(e) = watcher.watch(conn).await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
            }
        }
        drop(listener);
        sweeper.abort();
        tracing::info!("shutting down: finishing requests in flight");
        if tokio::time::timeout(options.shutdown_timeout, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                timeout = ?options.shutdown_timeout,
                "requests still in flight at the shutdown timeout: closing their connections"
            );
        }
        state.flush_all().await;
        Ok(())
    }
}

/// The buckets of `options` over their stores; one bucket `pieces` over `store` when none is
/// configured.
async fn open_buckets(
    store: &PieceStore,
    options: &ServeOptions,
) -> Result<Vec<BucketSpec>, ServeError> {
    if options.buckets.is_empty() {
        return Ok(vec![BucketSpec {
            name: "pieces".into(),
            store: store.clone(),
            public_read: false,
            allow_overwrite: false,
        }]);
    }
    let mut seen = BTreeMap::new();
    let mut out = Vec::new();
    for b in &options.buckets {
        if !valid_bucket_name(&b.name) {
            return Err(ServeError::Config(format!(
                "bucket name {:?}: 3 to 63 lowercase letters, digits, '-' and '.', starting \
                 and ending with a letter or digit",
                b.name
            )));
        }
        if RESERVED_BUCKET_NAMES.contains(&b.name.as_str()) {
            return Err(ServeError::Config(format!(
                "bucket name {:?} is taken by the /{} endpoint",
                b.name, b.name
            )));
        }
        if seen.insert(b.name.clone(), ()).is_some() {
            return Err(ServeError::Config(format!(
                "bucket {:?} is listed twice",
                b.name
            )));
        }
        let bucket_store = match &b.store {
            None => store.clone(),
            Some(spec) => {
                PieceStore::open_spec(spec)
                    .await
                    .map_err(|source| ServeError::Store {
                        bucket: b.name.clone(),
                        source,
                    })?
            }
        };
        out.push(BucketSpec {
            name: b.name.clone(),
            store: bucket_store,
            public_read: b.public_read,
            allow_overwrite: b.allow_overwrite,
        });
    }
    Ok(out)
}

fn collect_keys(
    options: &ServeOptions,
    env_keys: bool,
) -> Result<Vec<(String, Secret)>, ServeError> {
    let mut keys: Vec<(String, Secret)> = Vec::new();
    for k in &options.keys {
        if k.access_key.is_empty() || k.secret_key.is_empty() {
            return Err(ServeError::Config(
                "a key needs both AccessKey and SecretKey".into(),
            ));
        }
        keys.push((k.access_key.clone(), k.secret_key.clone()));
    }
    if env_keys {
        let access = std::env::var(ENV_ACCESS_KEY).unwrap_or_default();
        let secret = std::env::var(ENV_SECRET_KEY).unwrap_or_default();
        match (access.is_empty(), secret.is_empty()) {
            (true, true) => {}
            (false, false) => keys.push((access, Secret::new(secret))),
            _ => {
                return Err(ServeError::Config(format!(
                    "{ENV_ACCESS_KEY} and {ENV_SECRET_KEY} go together: one of them is unset"
                )));
            }
        }
    }
    for (access, secret) in &keys {
        if secret.expose().len() < 8 {
            return Err(ServeError::Config(format!(
                "the secret of access key {access:?} is shorter than 8 characters"
            )));
        }
    }
    Ok(keys)
}

/// Reads `TLSCert` and `TLSKey` into a certified key, checking that they belong together.
fn load_certified_key(
    cert: &Path,
    key: &Path,
    provider: &tokio_rustls::rustls::crypto::CryptoProvider,
) -> Result<Arc<CertifiedKey>, ServeError> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            ServeError::Config(format!(
                "TLSCert {}: not a PEM certificate chain: {e}",
                cert.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(ServeError::Config(format!(
            "TLSCert {}: no certificate in it",
            cert.display()
        )));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        ServeError::Config(format!(
            "TLSKey {}: not a PEM private key: {e}",
            key.display()
        ))
    })?;
    let certified = CertifiedKey::from_der(certs, key_der, provider)
        .map_err(|e| ServeError::Config(format!("TLSCert/TLSKey: {e}")))?;
    Ok(Arc::new(certified))
}

/// The certificate every new TLS handshake presents: swapped by [`TlsReloader::reload`].
#[derive(Debug)]
struct CurrentCert(std::sync::RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// Reloads a running server's certificate and key from their files (`piecestore serve` does
/// on SIGHUP), so that a renewed certificate is taken without a restart. Cheap to clone.
#[derive(Clone)]
pub struct TlsReloader {
    current: Arc<CurrentCert>,
    provider: Arc<tokio_rustls::rustls::crypto::CryptoProvider>,
    cert: PathBuf,
    key: PathBuf,
}

impl std::fmt::Debug for TlsReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsReloader")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

impl TlsReloader {
    /// Reads `TLSCert` and `TLSKey` again. New handshakes present the new pair; connections
    /// already open keep theirs. When the files are unreadable, not PEM, or do not belong
    /// together, the error says so and the server keeps the pair it had.
    pub fn reload(&self) -> Result<(), ServeError> {
        let fresh = load_certified_key(&self.cert, &self.key, &self.provider)?;
        *self.current.0.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }
}

fn load_tls(cert: &Path, key: &Path) -> Result<(TlsAcceptor, TlsReloader), ServeError> {
    use tokio_rustls::rustls;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let current = Arc::new(CurrentCert(std::sync::RwLock::new(load_certified_key(
        cert, key, &provider,
    )?)));
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Config(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(current.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let reloader = TlsReloader {
        current,
        provider,
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
    };
    Ok((TlsAcceptor::from(Arc::new(config)), reloader))
}

/// When a bucket was first served by this process: its creation date in ListBuckets.
pub(crate) fn started() -> SystemTime {
    static START: std::sync::OnceLock<SystemTime> = std::sync::OnceLock::new();
    *START.get_or_init(SystemTime::now)
}
