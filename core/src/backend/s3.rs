//! The S3 family: building the client, creating a missing bucket, reading backend errors.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{BackoffConfig, ClientOptions, RetryConfig};

use super::{S3Location, aws_profile, redact_url};
use crate::config::{BackendOptions, IamType, StorageKind, StoreConfig};

/// What a backend error says, read from its text (object_store keeps its HTTP error private).
pub(super) struct Diagnosis {
    /// The HTTP status, if the server answered.
    pub(super) status: Option<u16>,
    /// The S3 error code (`NoSuchBucket`, `AccessDenied`, ...), if the body had one.
    pub(super) code: Option<String>,
    /// The whole error chain as text.
    text: String,
}

impl Diagnosis {
    pub(super) fn of(e: &object_store::Error) -> Self {
        let mut text = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            let t = s.to_string();
            if !text.contains(&t) {
                text = format!("{text}: {t}");
            }
            src = s.source();
        }
        let status = ["status code: ", "status: "].iter().find_map(|m| {
            let i = text.find(m)? + m.len();
            text[i..].get(..3)?.parse::<u16>().ok()
        });
        let code = text.find("<Code>").and_then(|i| {
            let rest = &text[i + 6..];
            Some(rest[..rest.find("</Code>")?].to_string())
        });
        Diagnosis { status, code, text }
    }

    /// When no server answered, why, in plain words (the client's own wording names its
    /// internals), with the retries made: `None` for any other failure.
    fn unreachable(&self) -> Option<String> {
        if self.status.is_some() {
            return None;
        }
        let t = self.text.to_ascii_lowercase();
        let has = |words: &[&str]| words.iter().any(|w| t.contains(w));
        let why = if has(&["connection refused"]) {
            "connection refused (nothing listens at that address and port)"
        } else if has(&[
            "dns error",
            "failed to lookup address",
            "name or service not known",
        ]) {
            "its host name does not resolve"
        } else if has(&["certificate"]) {
            "its TLS certificate was not accepted"
        } else if has(&["timed out", "deadline has elapsed", "timeout"]) {
            "no answer in time"
        } else if has(&["connection reset", "broken pipe", "connection closed"]) {
            "the connection was cut"
        } else {
            return None;
        };
        let retries = t
            .find("after ")
            .and_then(|i| {
                let rest = &t[i + 6..];
                let n: String = rest.chars().take_while(char::is_ascii_digit).collect();
                rest[n.len()..]
                    .starts_with(" retries")
                    .then(|| format!(", after {n} retries"))
            })
            .unwrap_or_default();
        Some(format!("cannot reach the endpoint: {why}{retries}"))
    }

    /// A short message: status and S3 code when the server answered, else the chain's text.
    pub(super) fn message(&self) -> String {
        if let Some(m) = self.unreachable() {
            return m;
        }
        match (self.status, &self.code) {
            (Some(s), Some(c)) => format!("HTTP {s}: {c}"),
            (Some(s), None) => format!("HTTP {s}"),
            // Strip request URLs: they may carry presigned query strings.
            _ => self
                .text
                .split_whitespace()
                .map(|w| {
                    if w.contains("://") {
                        redact_url(w)
                    } else {
                        w.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

pub(super) fn build_s3(
    s3: &S3Location,
    store: &StoreConfig,
    opts: &BackendOptions,
) -> std::result::Result<AmazonS3, String> {
    // At least 1 ms: object_store draws each delay from [first, 2 × previous), which is empty
    // (a panic) for 0, the value the original's config template holds (its SP reads it as
    // 1 ns: practically no delay, as here).
    let min_delay = store
        .min_retry_delay
        .unwrap_or(Duration::from_millis(100))
        .max(Duration::from_millis(1));
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: min_delay,
            max_backoff: opts.max_retry_delay.max(min_delay),
            base: 2.0,
        },
        max_retries: store.max_retries as usize,
        retry_timeout: opts.retry_timeout,
    };
    let client = ClientOptions::new()
        .with_allow_http(s3.endpoint.starts_with("http://"))
        .with_allow_invalid_certificates(store.tls_insecure_skip_verify)
        .with_timeout(opts.request_timeout)
        .with_connect_timeout(opts.connect_timeout);
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(&s3.bucket)
        .with_region(&s3.region)
        .with_endpoint(&s3.endpoint)
        .with_virtual_hosted_style_request(s3.virtual_hosted)
        .with_retry(retry)
        .with_unsigned_payload(opts.unsigned_payload)
        .with_client_options(client);
    if store.no_sign_request {
        b = b.with_skip_signature(true);
    } else if !store.access_key.is_empty() {
        if store.secret_key.is_empty() {
            return Err("AccessKey is set but SecretKey is empty".into());
        }
        b = b
            .with_access_key_id(store.access_key.expose())
            .with_secret_access_key(store.secret_key.expose());
        if !store.session_token.is_empty() {
            b = b.with_token(store.session_token.expose());
        }
    } else if store.iam_type == IamType::Aksk {
        return Err(format!(
            "IAMType is AKSK but no AccessKey/SecretKey is given: set them in [PieceStore.Store] \
             (options access_key/secret_key) or in the environment ({})",
            credential_env_names(store.storage_kind())
        ));
    } else {
        b = default_chain(b, s3, store)?;
    }
    b.build().map_err(|e| e.to_string())
}

/// The environment variables a key pair is read from for `kind`, as a message lists them.
fn credential_env_names(kind: StorageKind) -> String {
    let mut pairs: Vec<String> = crate::config::credential_env(kind)
        .iter()
        .map(|v| format!("{}/{}", v[0], v[1]))
        .collect();
    if pairs.is_empty() {
        pairs.push("none for this storage".into());
    }
    pairs.join(", ")
}

/// Whether `endpoint` is AWS's own (where instance metadata may hold an IAM role).
fn is_aws_endpoint(endpoint: &str) -> bool {
    let host = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, h)| h)
        .split(['/', ':'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    host.ends_with(".amazonaws.com") || host.ends_with(".amazonaws.com.cn")
}

/// The credentials when the config and the environment give no key pair (`IAMType = SA`),
/// tried in this order: web identity (`AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE`), the AWS
/// profile (`AWS_PROFILE`, else `default`, in `~/.aws/config` and `~/.aws/credentials`), the
/// container's role (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` or `…_FULL_URI`), and the
/// instance's IAM role from instance metadata, which is asked only for AWS endpoints. Anywhere
/// else, no credentials is an error that lists where they were looked for.
fn default_chain(
    mut b: AmazonS3Builder,
    s3: &S3Location,
    store: &StoreConfig,
) -> std::result::Result<AmazonS3Builder, String> {
    let env = &crate::config::process_env;
    if let (Some(role), Some(file)) = (env("AWS_ROLE_ARN"), env("AWS_WEB_IDENTITY_TOKEN_FILE")) {
        return Ok(b
            .with_config(AmazonS3ConfigKey::RoleArn, role)
            .with_config(AmazonS3ConfigKey::WebIdentityTokenFile, file));
    }
    let profile = aws_profile::load(env)?;
    if profile.named && !profile.exists {
        return Err(format!(
            "AWS_PROFILE is {:?}, but {} define no such profile",
            profile.name,
            aws_profile::files_read(env)
        ));
    }
    if profile.has_credentials {
        return Ok(
            b.with_credentials(Arc::new(aws_profile::ProfileCredentials::new(
                &profile.name,
                &s3.region,
            ))),
        );
    }
    if let Some(uri) = env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
        return Ok(b.with_config(AmazonS3ConfigKey::ContainerCredentialsRelativeUri, uri));
    }
    if let Some(uri) = env("AWS_CONTAINER_CREDENTIALS_FULL_URI") {
        b = b.with_config(AmazonS3ConfigKey::ContainerCredentialsFullUri, uri);
        if let Some(file) = env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") {
            b = b.with_config(AmazonS3ConfigKey::ContainerAuthorizationTokenFile, file);
        }
        return Ok(b);
    }
    if is_aws_endpoint(&s3.endpoint) {
        return Ok(b); // object_store asks instance metadata for the instance's role
    }
    Err(format!(
        "no credentials found for {}. Looked for: AccessKey/SecretKey in [PieceStore.Store] \
         (options access_key/secret_key); the environment variables {}; AWS_ROLE_ARN with \
         AWS_WEB_IDENTITY_TOKEN_FILE; AWS profile {:?} in {}{}; \
         AWS_CONTAINER_CREDENTIALS_RELATIVE_URI. Instance metadata is asked only for AWS \
         endpoints. For a public bucket, set NoSignRequest = true (option no_sign_request)",
        redact_url(&s3.endpoint),
        credential_env_names(store.storage_kind()),
        profile.name,
        aws_profile::files_read(env),
        if profile.exists {
            " (it has no credentials)"
        } else if profile.named {
            ""
        } else {
            " (AWS_PROFILE chooses another)"
        },
    ))
}

/// Creates the bucket of `loc` with a presigned `PUT /bucket` (object_store has no bucket
/// API; presigning reuses its SigV4 signer and credentials). Outside `us-east-1` the request
/// carries the region's `LocationConstraint`, as AWS requires.
pub(super) async fn create_bucket(
    s3: &AmazonS3,
    loc: &S3Location,
    opts: &BackendOptions,
) -> Result<(), String> {
    let url = s3
        .signed_url(
            http::Method::PUT,
            &Path::default(),
            Duration::from_secs(300),
        )
        .await
        .map_err(|e| e.to_string())?;
    // The signed URL addresses the bucket root ("…/bucket/" or "bucket.host/").
    let body = if loc.region == "us-east-1" || loc.region.is_empty() {
        String::new()
    } else {
        format!(
            "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
            loc.region
        )
    };
    let client = reqwest::Client::builder()
        .timeout(opts.request_timeout)
        .connect_timeout(opts.connect_timeout)
        .build()
        .map_err(|e| e.to_string())?;
    let resp = client
        .put(url.as_str())
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .send()
        .await
        .map_err(|e| redact_url(&e.to_string()))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let text = resp.text().await.unwrap_or_default();
    let code = text.find("<Code>").and_then(|i| {
        let rest = &text[i + 6..];
        Some(rest[..rest.find("</Code>")?].to_string())
    });
    match code.as_deref() {
        // Someone (another node, another shard's open) created it first: fine.
        Some("BucketAlreadyOwnedByYou") => Ok(()),
        Some(c) => Err(format!("HTTP {status}: {c}")),
        None => Err(format!("HTTP {status}")),
    }
}
