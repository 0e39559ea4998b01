//! The S3 family: building the client, creating a missing bucket, reading backend errors.

use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{BackoffConfig, ClientOptions, RetryConfig};

use super::{S3Location, redact_url};
use crate::config::{BackendOptions, IamType, StoreConfig};

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

    /// A short message: status and S3 code when the server answered, else the chain's text.
    pub(super) fn message(&self) -> String {
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
        return Err(
            "IAMType is AKSK but no AccessKey/SecretKey is given (config or environment)".into(),
        );
    } else {
        // SA: web identity when configured, else the instance's IAM role (IMDS).
        if let (Ok(role), Ok(file)) = (
            std::env::var("AWS_ROLE_ARN"),
            std::env::var("AWS_WEB_IDENTITY_TOKEN_FILE"),
        ) {
            b = b
                .with_config(AmazonS3ConfigKey::RoleArn, role)
                .with_config(AmazonS3ConfigKey::WebIdentityTokenFile, file);
        }
    }
    b.build().map_err(|e| e.to_string())
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
