//! Bucket URLs: where a store's pieces live, in every form users write them.
//!
//! | form | meaning |
//! |---|---|
//! | `memory://` | in process |
//! | `file:///abs/path`, `./rel/path`, `/abs/path` | a local directory |
//! | `s3://bucket[/prefix]` | AWS S3 (region from config/env, default `us-east-1`), or the `Endpoint` |
//! | `https://s3.<region>.amazonaws.com[.cn]/bucket[/prefix]` | AWS path style |
//! | `https://<bucket>.s3.<region>.amazonaws.com[.cn][/prefix]` | AWS virtual-hosted style |
//! | `https://<bucket>.oss-<region>.aliyuncs.com[/prefix]`, `oss://bucket` | Aliyun OSS (virtual-hosted) |
//! | `https://s3.<region>.backblazeb2.com/<bucket>`, `b2://bucket` | Backblaze B2 |
//! | `http(s)://host[:port]/bucket[/prefix]` | MinIO, Ceph RGW, any S3-compatible server (path style) |
//! | `grpc://host:port[/bucket]`, `grpcs://…` | a bucket of a remote `piecestore serve`, over gRPC |

use std::path::PathBuf;

use crate::config::StorageKind;
use crate::error::{Error, Result, redact_url};

/// Where one store lives, resolved from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// In process memory.
    Memory,
    /// A local directory.
    File {
        /// The root directory.
        root: PathBuf,
    },
    /// An S3-compatible bucket.
    S3(S3Location),
    /// A bucket of a remote `piecestore serve`, over its gRPC API.
    Grpc(super::grpc::GrpcLocation),
}

/// An S3-compatible bucket, fully resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// The endpoint to send requests to; for virtual-hosted style it includes the bucket.
    pub endpoint: String,
    /// The bucket name.
    pub bucket: String,
    /// The signing region.
    pub region: String,
    /// Virtual-hosted style (`bucket.host`) rather than path style (`host/bucket`).
    pub virtual_hosted: bool,
    /// Key prefix inside the bucket ("" for none, else without leading/trailing `/`).
    pub prefix: String,
}

impl Location {
    /// A label for messages: the URL without credentials or query.
    pub fn label(&self) -> String {
        match self {
            Location::Memory => "memory://".into(),
            Location::File { root } => format!("file://{}", root.display()),
            Location::Grpc(g) => super::grpc::label(g),
            Location::S3(s) => {
                let base = if s.virtual_hosted {
                    s.endpoint.clone()
                } else {
                    format!("{}/{}", s.endpoint.trim_end_matches('/'), s.bucket)
                };
                if s.prefix.is_empty() {
                    base
                } else {
                    format!("{base}/{}", s.prefix)
                }
            }
        }
    }
}

fn bad(url: &str, why: impl std::fmt::Display) -> Error {
    Error::config(format!("BucketURL {:?}: {why}", redact_url(url)))
}

fn split_bucket_prefix(url: &str, path: &str) -> Result<(String, String)> {
    let path = path.trim_matches('/');
    let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
    if bucket.is_empty() {
        return Err(bad(url, "no bucket name in the path"));
    }
    Ok((bucket.to_string(), prefix.trim_matches('/').to_string()))
}

fn check_bucket_name(url: &str, bucket: &str) -> Result<()> {
    let ok = (3..=63).contains(&bucket.len())
        && bucket.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.' || b == b'_'
        })
        && !bucket.starts_with(['-', '.'])
        && !bucket.ends_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(bad(url, format!("{bucket:?} is not a valid bucket name")))
    }
}

/// Region from an AWS host's labels after `s3` (`s3.us-west-2`, `s3-us-west-2`,
/// `s3.dualstack.us-west-2`, bare `s3` = us-east-1).
fn aws_region(after_s3: &str) -> String {
    let r = after_s3.trim_start_matches(['.', '-']);
    let r = r.strip_prefix("dualstack.").unwrap_or(r);
    match r.split('.').next() {
        None | Some("") | Some("external-1") => "us-east-1".into(),
        Some(region) => region.into(),
    }
}

/// Resolves a bucket URL. `kind` is the configured (or inferred) storage kind; `region` and
/// `endpoint` are the configured overrides.
pub fn parse(
    url: &str,
    kind: StorageKind,
    region: Option<&str>,
    endpoint: Option<&str>,
) -> Result<Location> {
    let lower = url.to_ascii_lowercase();
    if kind == StorageKind::Memory || lower.starts_with("memory:") {
        if kind != StorageKind::Memory && kind != StorageKind::File {
            return Err(bad(
                url,
                format!("a memory:// URL with Storage = {:?}", kind.as_str()),
            ));
        }
        return Ok(Location::Memory);
    }
    let scheme = lower.split_once("://").map(|(s, _)| s);
    if kind == StorageKind::File {
        let path = match scheme {
            None => url,
            Some("file") => &url["file://".len()..],
            Some(other @ ("s3" | "s3a" | "oss" | "b2" | "http" | "https" | "grpc" | "grpcs")) => {
                return Err(bad(
                    url,
                    format!("Storage is \"file\" but the URL scheme is {other:?}"),
                ));
            }
            Some(other) => {
                return Err(bad(
                    url,
                    format!(
                        "unknown URL scheme {other:?} (expected memory://, file://, s3://, \
                         oss://, b2://, http:// or https://, or a directory path)"
                    ),
                ));
            }
        };
        if path.is_empty() {
            return Err(bad(url, "empty path"));
        }
        return Ok(Location::File {
            root: PathBuf::from(path),
        });
    }
    let Some(scheme) = scheme else {
        // MinIO URLs without a scheme are http, as the original reads them.
        if kind == StorageKind::Minio {
            return parse_http(&format!("http://{url}"), "http", region);
        }
        return Err(bad(
            url,
            format!("Storage is {:?} but the URL has no scheme", kind.as_str()),
        ));
    };
    match scheme {
        "s3" | "s3a" | "oss" | "b2" => {
            let rest = &url[scheme.len() + 3..];
            let (bucket, prefix) = split_bucket_prefix(url, rest)?;
            check_bucket_name(url, &bucket)?;
            let region = region.map(str::to_string);
            let loc = match (scheme, endpoint) {
                (_, Some(ep)) => S3Location {
                    endpoint: ep.trim_end_matches('/').to_string(),
                    region: region.unwrap_or_else(|| "us-east-1".into()),
                    bucket,
                    virtual_hosted: false,
                    prefix,
                },
                ("oss", None) => {
                    let region = region.ok_or_else(|| {
                        bad(
                            url,
                            "oss:// needs a region (ALIBABA_CLOUD_OSS_REGION or ?region=)",
                        )
                    })?;
                    let r = region.strip_prefix("oss-").unwrap_or(&region);
                    S3Location {
                        endpoint: format!("https://{bucket}.oss-{r}.aliyuncs.com"),
                        region: format!("oss-{r}"),
                        bucket,
                        virtual_hosted: true,
                        prefix,
                    }
                }
                ("b2", None) => {
                    let region = region.ok_or_else(|| {
                        bad(url, "b2:// needs a region (e.g. ?region=us-west-004)")
                    })?;
                    S3Location {
                        endpoint: format!("https://s3.{region}.backblazeb2.com"),
                        region,
                        bucket,
                        virtual_hosted: false,
                        prefix,
                    }
                }
                _ => {
                    let region = region.unwrap_or_else(|| "us-east-1".into());
                    let cn = if region.starts_with("cn-") { ".cn" } else { "" };
                    S3Location {
                        endpoint: format!("https://s3.{region}.amazonaws.com{cn}"),
                        region,
                        bucket,
                        virtual_hosted: false,
                        prefix,
                    }
                }
            };
            Ok(Location::S3(loc))
        }
        "http" | "https" => parse_http(url, scheme, region),
        "grpc" | "grpcs" => parse_grpc(url, scheme),
        other => Err(bad(
            url,
            format!(
                "unknown URL scheme {other:?} (expected memory, file, s3, oss, b2, http, https, grpc or grpcs)"
            ),
        )),
    }
}

/// `grpc://host:port[/bucket[/prefix]]` (`grpcs://` for TLS).
fn parse_grpc(url: &str, scheme: &str) -> Result<Location> {
    let rest = &url[scheme.len() + 3..];
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() {
        return Err(bad(url, "no host (write grpc://host:port[/bucket])"));
    }
    if host.contains('@') {
        return Err(bad(
            url,
            "credentials do not go in a grpc:// URL (SecretKey, or PIECESTORE_GRPC_TOKEN)",
        ));
    }
    let (bucket, prefix) = if path.trim_matches('/').is_empty() {
        (String::new(), String::new())
    } else {
        let (b, p) = split_bucket_prefix(url, path)?;
        check_bucket_name(url, &b)?;
        (b, p)
    };
    let http = if scheme == "grpcs" { "https" } else { "http" };
    Ok(Location::Grpc(super::grpc::GrpcLocation {
        endpoint: format!("{http}://{host}"),
        bucket,
        prefix,
    }))
}

/// A MinIO bucket URL read as the original reads it: `http://` when it has no scheme, the
/// bucket the first path segment after an optional `minio/`, and any further segments
/// ignored (not a key prefix). Returns the URL of that bucket.
pub fn original_minio_url(url: &str) -> Result<String> {
    let full = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let parsed = url::Url::parse(&full).map_err(|e| bad(url, e))?;
    let path = parsed.path().strip_prefix('/').unwrap_or(parsed.path());
    let path = match path.strip_prefix("minio/") {
        Some(rest) if !rest.is_empty() => rest,
        _ => path,
    };
    let bucket = path.split('/').next().unwrap_or("");
    if bucket.is_empty() {
        return Err(bad(url, "no bucket name in the path"));
    }
    let host = parsed.host_str().ok_or_else(|| bad(url, "no host"))?;
    let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
    Ok(format!("{}://{host}{port}/{bucket}", parsed.scheme()))
}

fn parse_http(url: &str, scheme: &str, region_override: Option<&str>) -> Result<Location> {
    let parsed = url::Url::parse(url).map_err(|e| bad(url, e))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad(
            url,
            "credentials in the URL are not accepted: use AccessKey/SecretKey or the environment",
        ));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| bad(url, "no host"))?
        .to_ascii_lowercase();
    let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
    let path = parsed.path();
    let with_region = |r: String| region_override.map(str::to_string).unwrap_or(r);

    // AWS: *.amazonaws.com and the China partition *.amazonaws.com.cn
    let aws_base = host
        .strip_suffix(".amazonaws.com")
        .map(|h| (h, ".amazonaws.com"))
        .or_else(|| {
            host.strip_suffix(".amazonaws.com.cn")
                .map(|h| (h, ".amazonaws.com.cn"))
        });
    if let Some((labels, _suffix)) = aws_base {
        if labels == "s3" || labels.starts_with("s3.") || labels.starts_with("s3-") {
            let (bucket, prefix) = split_bucket_prefix(url, path)?;
            check_bucket_name(url, &bucket)?;
            return Ok(Location::S3(S3Location {
                endpoint: format!("{scheme}://{host}{port}"),
                region: with_region(aws_region(&labels[2..])),
                bucket,
                virtual_hosted: false,
                prefix,
            }));
        }
        let cut = [".s3.", ".s3-"]
            .iter()
            .filter_map(|p| labels.rfind(p))
            .max();
        let (bucket, after) = match cut {
            Some(i) => (&labels[..i], &labels[i + 3..]),
            None if labels.ends_with(".s3") => (&labels[..labels.len() - 3], ""),
            None => return Err(bad(url, "not an S3 endpoint of amazonaws.com")),
        };
        check_bucket_name(url, bucket)?;
        let prefix = path.trim_matches('/').to_string();
        return Ok(Location::S3(S3Location {
            endpoint: format!("{scheme}://{host}{port}"),
            region: with_region(aws_region(after)),
            bucket: bucket.to_string(),
            virtual_hosted: true,
            prefix,
        }));
    }

    // Aliyun OSS: virtual-hosted only (path style is converted).
    if let Some(labels) = host.strip_suffix(".aliyuncs.com") {
        let (bucket, region_label, prefix) = if labels.starts_with("oss-") {
            let (bucket, prefix) = split_bucket_prefix(url, path)?;
            (bucket, labels.to_string(), prefix)
        } else {
            let (bucket, rest) = labels
                .split_once('.')
                .ok_or_else(|| bad(url, "expected <bucket>.oss-<region>.aliyuncs.com"))?;
            (
                bucket.to_string(),
                rest.to_string(),
                path.trim_matches('/').to_string(),
            )
        };
        if !region_label.starts_with("oss-") {
            return Err(bad(url, "expected <bucket>.oss-<region>.aliyuncs.com"));
        }
        check_bucket_name(url, &bucket)?;
        let region = region_label.trim_end_matches("-internal").to_string();
        return Ok(Location::S3(S3Location {
            endpoint: format!("{scheme}://{bucket}.{region_label}.aliyuncs.com{port}"),
            region: with_region(region),
            bucket,
            virtual_hosted: true,
            prefix,
        }));
    }

    // Backblaze B2: s3.<region>.backblazeb2.com/<bucket>, or <bucket>.s3.<region>.backblazeb2.com
    if let Some(labels) = host.strip_suffix(".backblazeb2.com") {
        let (bucket, region_part, prefix) = match labels.strip_prefix("s3.") {
            Some(r) => {
                let (b, p) = split_bucket_prefix(url, path)?;
                (b, r.to_string(), p)
            }
            None => {
                let (b, r) = labels
                    .split_once(".s3.")
                    .ok_or_else(|| bad(url, "expected s3.<region>.backblazeb2.com/<bucket>"))?;
                (
                    b.to_string(),
                    r.to_string(),
                    path.trim_matches('/').to_string(),
                )
            }
        };
        check_bucket_name(url, &bucket)?;
        return Ok(Location::S3(S3Location {
            endpoint: format!("{scheme}://s3.{region_part}.backblazeb2.com{port}"),
            region: with_region(region_part),
            bucket,
            virtual_hosted: false,
            prefix,
        }));
    }

    // Anything else: an S3-compatible server in path style (MinIO, Ceph RGW, ...).
    let (bucket, prefix) = split_bucket_prefix(url, path)?;
    check_bucket_name(url, &bucket)?;
    Ok(Location::S3(S3Location {
        endpoint: format!("{scheme}://{}{port}", parsed.host_str().unwrap_or(&host)),
        region: with_region("us-east-1".into()),
        bucket,
        virtual_hosted: false,
        prefix,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::infer_storage;

    #[test]
    fn the_originals_minio_forms() {
        for (given, want) in [
            ("127.0.0.1:9000/bkt", "http://127.0.0.1:9000/bkt"),
            ("http://h:1/minio/bkt", "http://h:1/bkt"),
            ("http://h:1/minio", "http://h:1/minio"),
            ("https://h/bkt/extra/path", "https://h/bkt"),
        ] {
            assert_eq!(original_minio_url(given).unwrap(), want, "{given}");
        }
        assert!(original_minio_url("http://h/").is_err());
    }

    fn s3(url: &str) -> S3Location {
        match parse(url, infer_storage(url), None, None).unwrap() {
            Location::S3(s) => s,
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn aws_forms() {
        let p = s3("https://s3.us-west-2.amazonaws.com/my-bucket/some/prefix");
        assert_eq!(
            (p.endpoint.as_str(), p.bucket.as_str(), p.region.as_str()),
            (
                "https://s3.us-west-2.amazonaws.com",
                "my-bucket",
                "us-west-2"
            )
        );
        assert_eq!(p.prefix, "some/prefix");
        assert!(!p.virtual_hosted);

        let v = s3("https://my.dotted.bucket.s3.eu-central-1.amazonaws.com/");
        assert_eq!(
            (v.bucket.as_str(), v.region.as_str(), v.virtual_hosted),
            ("my.dotted.bucket", "eu-central-1", true)
        );
        assert_eq!(
            v.endpoint,
            "https://my.dotted.bucket.s3.eu-central-1.amazonaws.com"
        );

        let cn = s3("https://s3.cn-north-1.amazonaws.com.cn/bkt");
        assert_eq!(
            (cn.endpoint.as_str(), cn.region.as_str()),
            ("https://s3.cn-north-1.amazonaws.com.cn", "cn-north-1")
        );
        let cnv = s3("https://bkt.s3.cn-northwest-1.amazonaws.com.cn");
        assert_eq!(
            (cnv.bucket.as_str(), cnv.region.as_str(), cnv.virtual_hosted),
            ("bkt", "cn-northwest-1", true)
        );

        assert_eq!(s3("https://bkt.s3.amazonaws.com").region, "us-east-1");
        assert_eq!(
            s3("https://s3-ap-south-1.amazonaws.com/bkt").region,
            "ap-south-1"
        );
        assert_eq!(
            s3("https://s3.dualstack.us-east-2.amazonaws.com/bkt").region,
            "us-east-2"
        );
        assert_eq!(s3("s3://bkt/p?x").bucket, "bkt");
        let cns = parse("s3://bkt", StorageKind::S3, Some("cn-north-1"), None).unwrap();
        assert!(cns.label().contains("amazonaws.com.cn"), "{}", cns.label());
    }

    #[test]
    fn oss_b2_and_path_style() {
        let o = s3("https://my-bkt.oss-cn-hangzhou.aliyuncs.com");
        assert_eq!(
            (o.bucket.as_str(), o.region.as_str(), o.virtual_hosted),
            ("my-bkt", "oss-cn-hangzhou", true)
        );
        let o2 = s3("https://oss-cn-hangzhou.aliyuncs.com/my-bkt/pre");
        assert_eq!(o2.endpoint, "https://my-bkt.oss-cn-hangzhou.aliyuncs.com");
        assert_eq!(o2.prefix, "pre");
        let b = s3("https://s3.us-west-004.backblazeb2.com/b2-bkt");
        assert_eq!(
            (b.endpoint.as_str(), b.region.as_str(), b.virtual_hosted),
            (
                "https://s3.us-west-004.backblazeb2.com",
                "us-west-004",
                false
            )
        );
        let m = s3("http://127.0.0.1:9000/pieces/sub");
        assert_eq!(
            (m.endpoint.as_str(), m.bucket.as_str(), m.prefix.as_str()),
            ("http://127.0.0.1:9000", "pieces", "sub")
        );
        let e = parse(
            "s3://bkt",
            StorageKind::S3,
            Some("zone"),
            Some("http://ceph:7480/"),
        )
        .unwrap();
        assert_eq!(
            e,
            Location::S3(S3Location {
                endpoint: "http://ceph:7480".into(),
                bucket: "bkt".into(),
                region: "zone".into(),
                virtual_hosted: false,
                prefix: String::new()
            })
        );
    }

    #[test]
    fn local_forms_and_errors() {
        assert_eq!(
            parse("memory://", StorageKind::Memory, None, None).unwrap(),
            Location::Memory
        );
        assert_eq!(
            parse("file:///var/p", StorageKind::File, None, None).unwrap(),
            Location::File {
                root: "/var/p".into()
            }
        );
        assert_eq!(
            parse("./data", StorageKind::File, None, None).unwrap(),
            Location::File {
                root: "./data".into()
            }
        );
        for (u, k) in [
            ("ftp://host/b", StorageKind::S3),
            ("http://host/", StorageKind::Minio),
            ("http://host/UPPER", StorageKind::Minio),
            ("oss://bkt", StorageKind::Oss),
            ("s3://bkt", StorageKind::File),
            ("http://user:hunter2@host/bkt", StorageKind::Minio),
        ] {
            let e = parse(u, k, None, None).expect_err(u);
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        assert_eq!(
            redact_url("http://ak:sk@h:1/b?X-Amz-Signature=s"),
            "http://h:1/b"
        );
    }

    #[test]
    fn grpc_forms_and_errors() {
        use super::super::grpc::GrpcLocation;
        let kind = crate::config::infer_storage("grpc://h:9820/pieces/p/q");
        assert_eq!(kind, StorageKind::Grpc);
        assert_eq!(
            parse("grpc://h:9820/pieces/p/q", kind, None, None).unwrap(),
            Location::Grpc(GrpcLocation {
                endpoint: "http://h:9820".into(),
                bucket: "pieces".into(),
                prefix: "p/q".into(),
            })
        );
        let tls = parse("grpcs://node-b:443", StorageKind::Grpc, None, None).unwrap();
        assert_eq!(
            tls,
            Location::Grpc(GrpcLocation {
                endpoint: "https://node-b:443".into(),
                bucket: String::new(),
                prefix: String::new(),
            })
        );
        assert_eq!(tls.label(), "grpcs://node-b:443");
        for u in [
            "grpc://",
            "grpc:///pieces",
            "grpc://t:hunter2@h:1/b",
            "grpc://h:1/Bad_Bucket",
        ] {
            let e = parse(u, StorageKind::Grpc, None, None).expect_err(u);
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
    }
}
