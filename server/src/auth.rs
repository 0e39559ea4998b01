//! Who may do what: SigV4 against the configured keys (the signature check is s3s's), and
//! anonymous reads of `PublicRead` buckets.

use std::collections::HashSet;

use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey, SimpleAuth};
use s3s::path::S3Path;
use s3s::{S3Result, s3_error};

use crate::routes::OpSlot;

/// The operations an anonymous client may call on a `PublicRead` bucket.
const READS: &[&str] = &[
    "GetObject",
    "HeadObject",
    "ListObjects",
    "ListObjectsV2",
    "HeadBucket",
    "GetBucketLocation",
];

/// The configured keys, as s3s's signature check asks for them.
pub(crate) struct Keys(SimpleAuth);

/// The s3s authenticator over the configured keys.
pub(crate) fn keys(keys: Vec<(String, piecestore::config::Secret)>) -> Keys {
    let mut auth = SimpleAuth::new();
    for (access, secret) in keys {
        auth.register(access, secret.expose().to_string().into());
    }
    Keys(auth)
}

#[async_trait::async_trait]
impl S3Auth for Keys {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        // S3's answer to an unknown key (SDKs know it), rather than s3s's NotSignedUp.
        self.0.lookup(access_key).cloned().ok_or_else(|| {
            s3_error!(
                InvalidAccessKeyId,
                "the access key id is not one of this server's keys"
            )
        })
    }
}

/// The access check: signed requests may do anything; anonymous ones only read buckets
/// configured `PublicRead`. It also names the operation for the request's metrics.
pub(crate) struct Access {
    pub(crate) public: HashSet<String>,
}

#[async_trait::async_trait]
impl S3Access for Access {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let op = cx.s3_op().name().to_string();
        if let Some(slot) = cx.extensions_mut().get::<OpSlot>() {
            slot.set(&op);
        }
        if cx.credentials().is_some() {
            return Ok(());
        }
        let bucket = match cx.s3_path() {
            S3Path::Bucket { bucket } | S3Path::Object { bucket, .. } => Some(bucket),
            S3Path::Root => None,
        };
        match bucket {
            Some(b) if self.public.contains(&**b) && READS.contains(&op.as_str()) => Ok(()),
            _ => Err(s3_error!(AccessDenied, "Signature is required")),
        }
    }
}
