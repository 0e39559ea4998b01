//! Virtual-hosted-style addressing: which bucket a request's `Host` header names.
//!
//! With `Domains = ["s3.example.com"]`, a request to `pieces.s3.example.com[:port]` addresses
//! bucket `pieces`; a request to any other host (the domain itself, an IP address,
//! `localhost`) is path-style. s3s's own `SingleDomain` treats every other host name as a
//! bucket (a CNAME), which would turn `localhost:9820/pieces/KEY` into bucket
//! `localhost:9820`; this parser keeps path-style working next to virtual-hosted style, as
//! S3 and MinIO do.

use s3s::S3Result;
use s3s::host::{S3Host, VirtualHost};

/// The domains of `[PieceStore.Serve] Domains`, checked and lowercased.
#[derive(Debug, Clone)]
pub(crate) struct Domains(Vec<String>);

impl Domains {
    /// Checks `names`: each a DNS name without a port or a trailing dot, none inside another
    /// (`s3.example.com` and `example.com` would make `s3.example.com` ambiguous). `None`
    /// when there are none (path-style only).
    pub(crate) fn new(names: &[String]) -> Result<Option<Self>, String> {
        let mut out: Vec<String> = Vec::with_capacity(names.len());
        for name in names {
            let lower = name.to_ascii_lowercase();
            let labels_ok = !lower.is_empty()
                && lower.len() <= 253
                && lower.split('.').all(|l| {
                    (1..=63).contains(&l.len())
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                });
            if !labels_ok || lower.parse::<std::net::IpAddr>().is_ok() {
                return Err(format!(
                    "Domains: {name:?} is not a domain name (letters, digits, '-' and '.'; \
                     no port, no scheme)"
                ));
            }
            if let Some(other) = out
                .iter()
                .find(|o| **o == lower || inside(&lower, o) || inside(o, &lower))
            {
                return Err(format!(
                    "Domains: {name:?} and {other:?} overlap: a host under both would be ambiguous"
                ));
            }
            out.push(lower);
        }
        Ok((!out.is_empty()).then_some(Domains(out)))
    }

    /// The bucket `host` (a `Host` header: a name with an optional port) addresses, if it
    /// is `BUCKET.DOMAIN` for one of the domains.
    pub(crate) fn bucket_of(&self, host: &str) -> Option<String> {
        let name = strip_port(host).to_ascii_lowercase();
        self.0.iter().find_map(|d| {
            name.strip_suffix(d.as_str())
                .and_then(|rest| rest.strip_suffix('.'))
                .filter(|bucket| !bucket.is_empty())
                .map(str::to_owned)
        })
    }
}

/// Whether `name` is a subdomain of `domain`.
fn inside(name: &str, domain: &str) -> bool {
    name.strip_suffix(domain)
        .is_some_and(|rest| rest.ends_with('.'))
}

/// `host` without its `:port` (an IPv6 literal keeps its brackets).
fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, port)) if !h.ends_with(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

impl S3Host for Domains {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<VirtualHost<'a>> {
        Ok(match self.bucket_of(host) {
            Some(bucket) => VirtualHost::new(host).with_bucket(bucket),
            None => VirtualHost::new(host),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domains(names: &[&str]) -> Result<Option<Domains>, String> {
        Domains::new(&names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn buckets_come_from_subdomains_and_everything_else_is_path_style() {
        let d = domains(&["s3.example.com", "pieces.internal"])
            .unwrap()
            .unwrap();
        assert_eq!(d.bucket_of("pieces.s3.example.com"), Some("pieces".into()));
        assert_eq!(
            d.bucket_of("Pieces.S3.Example.com:9820"),
            Some("pieces".into())
        );
        assert_eq!(d.bucket_of("a.b.pieces.internal"), Some("a.b".into()));
        for path_style in [
            "s3.example.com",
            "s3.example.com:9820",
            "xs3.example.com",
            "127.0.0.1:9820",
            "[::1]:9820",
            "localhost:9820",
            "other.example.org",
        ] {
            assert_eq!(d.bucket_of(path_style), None, "{path_style}");
        }
    }

    #[test]
    fn bad_or_overlapping_domains_are_refused() {
        assert!(domains(&[]).unwrap().is_none());
        for bad in [
            "",
            "s3.example.com:9820",
            "http://s3.example.com",
            "s3..example.com",
            "-s3.example.com",
            "127.0.0.1",
            "s3.example.com.",
        ] {
            let e = domains(&[bad]).unwrap_err();
            assert!(e.contains("not a domain name"), "{bad}: {e}");
        }
        let e = domains(&["example.com", "s3.example.com"]).unwrap_err();
        assert!(e.contains("overlap"), "{e}");
        assert!(domains(&["s3.example.com", "S3.example.com"]).is_err());
        assert!(domains(&["example.com", "xexample.com"]).unwrap().is_some());
    }
}
