//! AWS profiles: `AWS_PROFILE`, `AWS_CONFIG_FILE`, `AWS_SHARED_CREDENTIALS_FILE`,
//! `~/.aws/config` and `~/.aws/credentials`, read by the AWS SDK's own provider
//! (`aws-config`), so that a profile means here what it means to the `aws` CLI: static keys,
//! `credential_process`, role assumption (`role_arn` with `source_profile` or
//! `credential_source`), web identity and SSO. `object_store` dropped its profile support;
//! [`ProfileCredentials`] puts the SDK's provider behind `object_store`'s credential-provider
//! trait, caching what it returns until shortly before it expires.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::profile::ProfileFileCredentialsProvider;
use aws_config::provider_config::ProviderConfig;
use aws_credential_types::provider::ProvideCredentials;
use aws_runtime::env_config::file::EnvConfigFiles;
use aws_types::os_shim_internal::{Env, Fs};
use object_store::CredentialProvider;
use object_store::aws::AwsCredential;

use crate::config::EnvLookup;

/// The environment variables that choose the profile and its files.
const PROFILE_ENV: &[&str] = &[
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "HOME",
    "USERPROFILE",
    "HOMEDRIVE",
    "HOMEPATH",
];

/// Profile keys that make a profile a source of credentials.
const CREDENTIAL_KEYS: &[&str] = &[
    "aws_access_key_id",
    "credential_process",
    "role_arn",
    "credential_source",
    "web_identity_token_file",
    "sso_session",
    "sso_start_url",
    "login_session",
];

/// What the selected profile holds, as far as a store needs it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Profile {
    /// The profile's name (`AWS_PROFILE`, else `default`).
    pub(crate) name: String,
    /// Whether `AWS_PROFILE` named it.
    pub(crate) named: bool,
    /// Whether the files define it.
    pub(crate) exists: bool,
    /// `region`.
    pub(crate) region: Option<String>,
    /// `endpoint_url`.
    pub(crate) endpoint_url: Option<String>,
    /// Whether it holds a credential source ([`CREDENTIAL_KEYS`]).
    pub(crate) has_credentials: bool,
}

/// The files a profile is read from, as a user would look for them.
pub(crate) fn files_read(env: EnvLookup<'_>) -> String {
    let config = env("AWS_CONFIG_FILE").unwrap_or_else(|| "~/.aws/config".into());
    let credentials =
        env("AWS_SHARED_CREDENTIALS_FILE").unwrap_or_else(|| "~/.aws/credentials".into());
    format!("{config} and {credentials}")
}

fn sdk_env(env: EnvLookup<'_>) -> Env {
    let vars: HashMap<String, String> = PROFILE_ENV
        .iter()
        .filter_map(|n| Some((n.to_string(), env(n)?)))
        .collect();
    Env::from(vars)
}

/// Reads the selected profile from the profile files. A missing file is no profile; a file
/// that does not parse is an error naming it.
pub(crate) fn load(env: EnvLookup<'_>) -> Result<Profile, String> {
    let name = env("AWS_PROFILE");
    let named = name.is_some();
    let name = name.unwrap_or_else(|| "default".into());
    // The SDK's loader is async, but reads its files with blocking calls: no runtime needed.
    let set = futures::executor::block_on(aws_config::profile::load(
        &Fs::real(),
        &sdk_env(env),
        &EnvConfigFiles::default(),
        None,
    ))
    .map_err(|e| format!("AWS profile files ({}): {e}", files_read(env)))?;
    let Some(profile) = set.get_profile(&name) else {
        return Ok(Profile {
            name,
            named,
            ..Profile::default()
        });
    };
    let get = |k: &str| profile.get(k).map(str::to_string).filter(|v| !v.is_empty());
    Ok(Profile {
        region: get("region"),
        endpoint_url: get("endpoint_url"),
        has_credentials: CREDENTIAL_KEYS.iter().any(|k| get(k).is_some()),
        exists: true,
        named,
        name,
    })
}

/// The AWS SDK's profile credentials provider behind `object_store`'s trait.
pub(crate) struct ProfileCredentials {
    provider: ProfileFileCredentialsProvider,
    profile: String,
    cached: tokio::sync::Mutex<Option<(Arc<AwsCredential>, Option<SystemTime>)>>,
}

impl std::fmt::Debug for ProfileCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProfileCredentials")
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

impl ProfileCredentials {
    /// A provider for `profile`; `region` is where a role is assumed (its STS endpoint).
    pub(crate) fn new(profile: &str, region: &str) -> Self {
        let mut config = ProviderConfig::default();
        if !region.is_empty() {
            config = config.with_region(Some(aws_config::Region::new(region.to_string())));
        }
        ProfileCredentials {
            provider: ProfileFileCredentialsProvider::builder()
                .configure(&config)
                .profile_name(profile)
                .build(),
            profile: profile.to_string(),
            cached: tokio::sync::Mutex::new(None),
        }
    }
}

/// How long before their expiry credentials are renewed.
const RENEW_BEFORE: Duration = Duration::from_secs(300);

#[async_trait::async_trait]
impl CredentialProvider for ProfileCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let mut cached = self.cached.lock().await;
        if let Some((c, expiry)) = &*cached
            && expiry.is_none_or(|e| SystemTime::now() + RENEW_BEFORE < e)
        {
            return Ok(Arc::clone(c));
        }
        let c = self.provider.provide_credentials().await.map_err(|e| {
            let mut why = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                why = format!("{why}: {s}");
                src = s.source();
            }
            object_store::Error::Generic {
                store: "S3",
                source: format!("AWS profile {:?}: {why}", self.profile).into(),
            }
        })?;
        let credential = Arc::new(AwsCredential {
            key_id: c.access_key_id().to_string(),
            secret_key: c.secret_access_key().to_string(),
            token: c.session_token().map(str::to_string),
        });
        *cached = Some((Arc::clone(&credential), c.expiry()));
        Ok(credential)
    }
}
