//! The server's side of `/metrics`: HTTP requests by S3 operation and status, and their
//! latency; gRPC calls by method and status code, their latency to the end of the response
//! stream, and the bytes they sent.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the request latency histogram's buckets.
const BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Requests served: counts by operation and status, latency by operation.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    inner: Mutex<Inner>,
    /// The P2P node's counters, when `serve` runs one.
    peers: std::sync::OnceLock<std::sync::Arc<crate::p2p::PeerStats>>,
}

#[derive(Debug, Default)]
struct Inner {
    by_status: BTreeMap<(String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    in_flight: i64,
    /// gRPC calls by (method, code).
    rpc_codes: BTreeMap<(String, &'static str), u64>,
    /// gRPC latency by method, to the end of the response.
    rpc_latency: BTreeMap<String, Histogram>,
    /// Bytes of gRPC response bodies by method.
    rpc_sent: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, elapsed: Duration) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; BOUNDS.len()];
        }
        let secs = elapsed.as_secs_f64();
        for (i, bound) in BOUNDS.iter().enumerate() {
            if secs <= *bound {
                self.buckets[i] += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }

    /// Writes the histogram `name` of the series `label="value"`.
    fn write(&self, out: &mut String, name: &str, label: &str, value: &str) {
        for (bound, n) in BOUNDS.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{label}=\"{value}\",le=\"{bound}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{label}=\"{value}\",le=\"+Inf\"}} {}",
            self.count
        );
        let _ = writeln!(out, "{name}_sum{{{label}=\"{value}\"}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{label}=\"{value}\"}} {}", self.count);
    }
}

impl HttpMetrics {
    /// A request began.
    pub(crate) fn started(&self) {
        if let Ok(mut m) = self.inner.lock() {
            m.in_flight += 1;
        }
    }

    /// A request of operation `op` ended with `status` after `elapsed`.
    pub(crate) fn finished(&self, op: &str, status: u16, elapsed: Duration) {
        let Ok(mut m) = self.inner.lock() else {
            return;
        };
        m.in_flight -= 1;
        *m.by_status.entry((op.to_string(), status)).or_default() += 1;
        m.latency
            .entry(op.to_string())
            .or_default()
            .observe(elapsed);
    }

    /// A gRPC call of `method` ended with `code` after `elapsed` (to the end of its response
    /// stream, or until the client went away), having sent `sent` bytes of response body.
    pub(crate) fn rpc_finished(
        &self,
        method: &str,
        code: &'static str,
        elapsed: Duration,
        sent: u64,
    ) {
        let Ok(mut m) = self.inner.lock() else {
            return;
        };
        *m.rpc_codes.entry((method.to_string(), code)).or_default() += 1;
        m.rpc_latency
            .entry(method.to_string())
            .or_default()
            .observe(elapsed);
        *m.rpc_sent.entry(method.to_string()).or_default() += sent;
    }

    /// How many requests of operation `op` ended with `status` so far.
    pub fn count(&self, op: &str, status: u16) -> u64 {
        self.inner
            .lock()
            .ok()
            .and_then(|m| m.by_status.get(&(op.to_string(), status)).copied())
            .unwrap_or(0)
    }

    /// The Prometheus text exposition of these metrics.
    pub fn to_prometheus(&self) -> String {
        let Ok(m) = self.inner.lock() else {
            return String::new();
        };
        let mut out = String::new();
        out.push_str("# HELP piecestore_http_requests_total HTTP requests served, by S3 operation and status.\n");
        out.push_str("# TYPE piecestore_http_requests_total counter\n");
        for ((op, status), n) in &m.by_status {
            let _ = writeln!(
                out,
                "piecestore_http_requests_total{{op=\"{op}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP piecestore_http_requests_in_flight HTTP requests being served.\n");
        out.push_str("# TYPE piecestore_http_requests_in_flight gauge\n");
        // This scrape is one of them.
        let _ = writeln!(out, "piecestore_http_requests_in_flight {}", m.in_flight);
        out.push_str("# HELP piecestore_http_request_duration_seconds HTTP request latency, from its headers to its response's headers.\n");
        out.push_str("# TYPE piecestore_http_request_duration_seconds histogram\n");
        for (op, h) in &m.latency {
            h.write(
                &mut out,
                "piecestore_http_request_duration_seconds",
                "op",
                op,
            );
        }
        if !m.rpc_codes.is_empty() {
            rpc_text(&m, &mut out);
        }
        if let Some(p) = self.peers.get() {
            peer_text(p, &mut out);
        }
        out
    }

    /// Adds the P2P node's counters to `/metrics`.
    pub(crate) fn set_peers(&self, stats: std::sync::Arc<crate::p2p::PeerStats>) {
        let _ = self.peers.set(stats);
    }
}

/// The P2P node's counters as Prometheus text.
fn peer_text(p: &crate::p2p::PeerStats, out: &mut String) {
    out.push_str("# HELP piecestore_peer_requests_served_total P2P requests from peers answered, by outcome.\n");
    out.push_str("# TYPE piecestore_peer_requests_served_total counter\n");
    for (outcome, n) in p.served() {
        let _ = writeln!(
            out,
            "piecestore_peer_requests_served_total{{outcome=\"{outcome}\"}} {n}"
        );
    }
    out.push_str("# HELP piecestore_peer_sent_bytes_total Piece bytes sent to peers.\n");
    out.push_str("# TYPE piecestore_peer_sent_bytes_total counter\n");
    let _ = writeln!(out, "piecestore_peer_sent_bytes_total {}", p.sent_bytes());
    out.push_str("# HELP piecestore_peer_fetches_total Pieces asked of peers, by outcome.\n");
    out.push_str("# TYPE piecestore_peer_fetches_total counter\n");
    for (outcome, n) in p.fetched() {
        let _ = writeln!(
            out,
            "piecestore_peer_fetches_total{{outcome=\"{outcome}\"}} {n}"
        );
    }
    out.push_str(
        "# HELP piecestore_peer_received_bytes_total Verified piece bytes received from peers.\n",
    );
    out.push_str("# TYPE piecestore_peer_received_bytes_total counter\n");
    let _ = writeln!(
        out,
        "piecestore_peer_received_bytes_total {}",
        p.received_bytes()
    );
}

/// The gRPC calls as Prometheus text.
fn rpc_text(m: &Inner, out: &mut String) {
    {
        out.push_str(
            "# HELP piecestore_grpc_requests_total gRPC calls served, by method and status code.\n",
        );
        out.push_str("# TYPE piecestore_grpc_requests_total counter\n");
        for ((method, code), n) in &m.rpc_codes {
            let _ = writeln!(
                out,
                "piecestore_grpc_requests_total{{method=\"{method}\",code=\"{code}\"}} {n}"
            );
        }
        out.push_str("# HELP piecestore_grpc_request_duration_seconds gRPC call latency, from its headers to the end of its response stream.\n");
        out.push_str("# TYPE piecestore_grpc_request_duration_seconds histogram\n");
        for (method, h) in &m.rpc_latency {
            h.write(
                out,
                "piecestore_grpc_request_duration_seconds",
                "method",
                method,
            );
        }
        out.push_str("# HELP piecestore_grpc_response_bytes_total Bytes of gRPC response bodies sent, by method.\n");
        out.push_str("# TYPE piecestore_grpc_response_bytes_total counter\n");
        for (method, n) in &m.rpc_sent {
            let _ = writeln!(
                out,
                "piecestore_grpc_response_bytes_total{{method=\"{method}\"}} {n}"
            );
        }
    }
}

/// Adds `label="value"` to every sample line of Prometheus text (HELP and TYPE lines kept),
/// so that several stores' metrics of the same names stay apart.
pub(crate) fn with_label(text: &str, label: &str, value: &str) -> String {
    let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            out.push_str(line);
        } else if let Some(brace) = line.find('{') {
            out.push_str(&line[..=brace]);
            let _ = write!(out, "{label}=\"{escaped}\",");
            out.push_str(&line[brace + 1..]);
        } else if let Some(space) = line.find(' ') {
            out.push_str(&line[..space]);
            let _ = write!(out, "{{{label}=\"{escaped}\"}}");
            out.push_str(&line[space..]);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// Several Prometheus texts as one: each metric family once (its HELP and TYPE from the first
/// text that has it), with the samples of every text under it, in first-seen order.
pub(crate) fn merge_families(texts: &[String]) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut families: std::collections::HashMap<String, (Vec<String>, Vec<String>)> =
        std::collections::HashMap::new();
    for text in texts {
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line
                .strip_prefix("# HELP ")
                .or_else(|| line.strip_prefix("# TYPE "))
            {
                current = rest.split(' ').next().unwrap_or("").to_string();
                let entry = families.entry(current.clone()).or_insert_with(|| {
                    order.push(current.clone());
                    Default::default()
                });
                if !entry.0.iter().any(|l| l == line) && entry.1.is_empty() {
                    entry.0.push(line.to_string());
                }
            } else if !line.is_empty() && !line.starts_with('#') {
                let entry = families.entry(current.clone()).or_insert_with(|| {
                    order.push(current.clone());
                    Default::default()
                });
                entry.1.push(line.to_string());
            }
        }
    }
    let mut out = String::new();
    for name in order {
        if let Some((head, samples)) = families.get(&name) {
            for l in head.iter().chain(samples) {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn families_merge_across_texts() {
        let a = "# HELP x X\n# TYPE x counter\nx{b=\"1\"} 1\n# HELP y Y\n# TYPE y gauge\ny{b=\"1\"} 2\n".to_string();
        let b = "# HELP x X\n# TYPE x counter\nx{b=\"2\"} 3\n".to_string();
        assert_eq!(
            merge_families(&[a, b]),
            "# HELP x X\n# TYPE x counter\nx{b=\"1\"} 1\nx{b=\"2\"} 3\n# HELP y Y\n# TYPE y gauge\ny{b=\"1\"} 2\n"
        );
    }

    use super::*;

    #[test]
    fn labels_go_into_every_sample() {
        let text = "# HELP a x\n# TYPE a counter\na{op=\"get\"} 3\nb 4\n";
        let out = with_label(text, "bucket", "pieces");
        assert_eq!(
            out,
            "# HELP a x\n# TYPE a counter\na{bucket=\"pieces\",op=\"get\"} 3\nb{bucket=\"pieces\"} 4\n"
        );
    }

    #[test]
    fn requests_are_counted_by_op_and_status() {
        let m = HttpMetrics::default();
        m.started();
        m.finished("GetObject", 200, Duration::from_millis(3));
        m.started();
        m.finished("GetObject", 404, Duration::from_millis(1));
        assert_eq!(m.count("GetObject", 200), 1);
        assert_eq!(m.count("GetObject", 404), 1);
        let text = m.to_prometheus();
        assert!(text.contains("piecestore_http_requests_total{op=\"GetObject\",status=\"404\"} 1"));
        assert!(text.contains(
            "piecestore_http_request_duration_seconds_bucket{op=\"GetObject\",le=\"0.0025\"} 1"
        ));
        assert!(
            text.contains("piecestore_http_request_duration_seconds_count{op=\"GetObject\"} 2")
        );
    }
}
