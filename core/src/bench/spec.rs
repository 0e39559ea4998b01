//! What a benchmark runs: the workload (operations and their ratios) and the object sizes,
//! parsed from the command line's text.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// An operation a benchmark issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchOp {
    /// Store a new piece.
    Put,
    /// Read a whole piece (verified).
    Get,
    /// Read a piece's metadata.
    Head,
    /// Delete a piece.
    Delete,
    /// List the run's pieces (one operation = one whole listing).
    List,
}

impl BenchOp {
    /// Every operation, in report order.
    pub const ALL: [BenchOp; 5] = [
        BenchOp::Put,
        BenchOp::Get,
        BenchOp::Head,
        BenchOp::Delete,
        BenchOp::List,
    ];

    /// `put`, `get`, `head`, `delete` or `list`.
    pub fn as_str(self) -> &'static str {
        match self {
            BenchOp::Put => "put",
            BenchOp::Get => "get",
            BenchOp::Head => "head",
            BenchOp::Delete => "delete",
            BenchOp::List => "list",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for BenchOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BenchOp {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "put" => Ok(BenchOp::Put),
            "get" => Ok(BenchOp::Get),
            "head" | "stat" => Ok(BenchOp::Head),
            "delete" | "rm" => Ok(BenchOp::Delete),
            "list" | "ls" => Ok(BenchOp::List),
            other => Err(Error::config(format!(
                "unknown operation {other:?} (expected put, get, head, delete, list or mixed)"
            ))),
        }
    }
}

/// The operations of a run: one, or a weighted mix.
///
/// Parsed from `put`, `get`, `head`, `delete`, `list`, `mixed` (warp's default mix:
/// get 45, head 30, put 15, delete 10) or `mixed:get=60,put=30,delete=10`.
///
/// ```
/// use piecestore::bench::{BenchOp, Workload};
/// let w: Workload = "mixed:get=3,put=1".parse().unwrap();
/// assert_eq!(w.weights(), &[(BenchOp::Put, 1), (BenchOp::Get, 3)]);
/// assert_eq!(w.to_string(), "mixed:put=1,get=3");
/// assert!("mixed:get=0".parse::<Workload>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    weights: Vec<(BenchOp, u32)>,
    mixed: bool,
}

impl Workload {
    /// A workload of one operation.
    pub fn single(op: BenchOp) -> Self {
        Workload {
            weights: vec![(op, 1)],
            mixed: false,
        }
    }

    /// The operations and their weights (only non-zero ones), in [`BenchOp::ALL`] order.
    pub fn weights(&self) -> &[(BenchOp, u32)] {
        &self.weights
    }

    /// Whether `op` is part of the workload.
    pub fn has(&self, op: BenchOp) -> bool {
        self.weights.iter().any(|(o, _)| *o == op)
    }

    /// Whether this is a mix (pieces a worker puts are later read and deleted).
    pub fn is_mixed(&self) -> bool {
        self.mixed
    }

    /// Picks an operation for the random number `r`.
    pub(crate) fn pick(&self, r: u64) -> BenchOp {
        let total: u64 = self.weights.iter().map(|(_, w)| u64::from(*w)).sum();
        let mut x = r % total.max(1);
        for (op, w) in &self.weights {
            if x < u64::from(*w) {
                return *op;
            }
            x -= u64::from(*w);
        }
        self.weights[0].0
    }
}

impl FromStr for Workload {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let s = s.trim();
        let (head, ratios) = match s.split_once(':') {
            Some((h, r)) => (h, Some(r)),
            None => (s, None),
        };
        if !head.eq_ignore_ascii_case("mixed") {
            if ratios.is_some() {
                return Err(Error::config(format!(
                    "workload {s:?}: only `mixed` takes ratios (mixed:get=60,put=40)"
                )));
            }
            return Ok(Workload::single(head.parse()?));
        }
        let mut weights = [0u32; 5];
        match ratios {
            None => {
                weights[BenchOp::Get.index()] = 45;
                weights[BenchOp::Head.index()] = 30;
                weights[BenchOp::Put.index()] = 15;
                weights[BenchOp::Delete.index()] = 10;
            }
            Some(r) => {
                for part in r.split(',').filter(|p| !p.trim().is_empty()) {
                    let (op, w) = part.split_once('=').ok_or_else(|| {
                        Error::config(format!(
                            "workload ratio {part:?}: expected OP=WEIGHT, like get=60"
                        ))
                    })?;
                    let op: BenchOp = op.parse()?;
                    let w: u32 = w.trim().parse().map_err(|_| {
                        Error::config(format!(
                            "workload ratio {part:?}: the weight is not a whole number"
                        ))
                    })?;
                    weights[op.index()] = w;
                }
            }
        }
        let weights: Vec<(BenchOp, u32)> = BenchOp::ALL
            .into_iter()
            .zip(weights)
            .filter(|(_, w)| *w > 0)
            .collect();
        if weights.is_empty() {
            return Err(Error::config(format!(
                "workload {s:?}: every weight is zero"
            )));
        }
        if weights.iter().all(|(op, _)| *op == BenchOp::Delete) {
            return Err(Error::config(
                "a mix of deletes only would run out of pieces; use the `delete` workload",
            ));
        }
        Ok(Workload {
            weights,
            mixed: true,
        })
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.mixed {
            return f.write_str(self.weights[0].0.as_str());
        }
        f.write_str("mixed:")?;
        for (i, (op, w)) in self.weights.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{op}={w}")?;
        }
        Ok(())
    }
}

/// Object sizes: one size, a list to pick from at random, or a log-uniform range.
///
/// Parsed from `4KiB`, `4KiB,1MiB` or `1KiB..1MiB` (units: B, KiB/K/k, MiB/M, GiB/G are powers
/// of 1024; KB, MB, GB of 1000).
///
/// ```
/// use piecestore::bench::SizeSpec;
/// let s: SizeSpec = "4KiB,1MiB".parse().unwrap();
/// assert_eq!(s, SizeSpec::List(vec![4096, 1 << 20]));
/// assert_eq!("1KB..2MB".parse::<SizeSpec>().unwrap(), SizeSpec::Range(1000, 2_000_000));
/// assert_eq!(s.max(), 1 << 20);
/// assert!("-1".parse::<SizeSpec>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizeSpec {
    /// Every object has this size.
    Fixed(u64),
    /// Each object's size is picked from the list, uniformly.
    List(Vec<u64>),
    /// Sizes spread log-uniformly between the two bounds (inclusive), as warp's random sizes.
    Range(u64, u64),
}

/// The largest object a benchmark writes (it keeps one buffer of this size in memory).
pub const MAX_OBJECT_SIZE: u64 = 1 << 30;

impl SizeSpec {
    /// The largest size.
    pub fn max(&self) -> u64 {
        match self {
            SizeSpec::Fixed(n) => *n,
            SizeSpec::List(l) => l.iter().copied().max().unwrap_or(0),
            SizeSpec::Range(_, hi) => *hi,
        }
    }

    /// A size for the random number `r`.
    pub(crate) fn pick(&self, r: u64) -> u64 {
        match self {
            SizeSpec::Fixed(n) => *n,
            SizeSpec::List(l) => l[(r % l.len() as u64) as usize],
            SizeSpec::Range(lo, hi) => {
                let (lo_f, hi_f) = ((*lo).max(1) as f64, (*hi).max(1) as f64);
                let u = (r >> 11) as f64 / (1u64 << 53) as f64;
                let v = (lo_f.ln() + u * (hi_f.ln() - lo_f.ln())).exp().round() as u64;
                v.clamp(*lo, *hi)
            }
        }
    }
}

/// Parses `4KiB`, `1.5MiB`, `100`, `2MB`.
pub fn parse_size(text: &str) -> Result<u64, Error> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        Error::config(format!(
            "size {text:?}: expected a number and a unit, like 4KiB, 1MiB or 100"
        ))
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim() {
        "" | "B" | "b" => 1,
        "KiB" | "K" | "k" | "Ki" | "kib" => 1 << 10,
        "MiB" | "M" | "m" | "Mi" | "mib" => 1 << 20,
        "GiB" | "G" | "g" | "Gi" | "gib" => 1 << 30,
        "KB" | "kB" | "kb" => 1000,
        "MB" | "mb" => 1_000_000,
        "GB" | "gb" => 1_000_000_000,
        _ => return Err(bad()),
    };
    let v = n * mult as f64;
    if !v.is_finite() || v < 0.0 || v.fract() != 0.0 {
        return Err(bad());
    }
    let v = v as u64;
    if v > MAX_OBJECT_SIZE {
        return Err(Error::config(format!(
            "size {text:?} is over the benchmark's limit of 1 GiB per object"
        )));
    }
    Ok(v)
}

impl FromStr for SizeSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        if let Some((lo, hi)) = s.split_once("..") {
            let (lo, hi) = (parse_size(lo)?, parse_size(hi)?);
            if lo > hi {
                return Err(Error::config(format!(
                    "size range {s:?}: the lower bound is above the upper"
                )));
            }
            return Ok(SizeSpec::Range(lo, hi));
        }
        let sizes = s
            .split(',')
            .map(parse_size)
            .collect::<Result<Vec<_>, _>>()?;
        match sizes.as_slice() {
            [one] => Ok(SizeSpec::Fixed(*one)),
            _ => Ok(SizeSpec::List(sizes)),
        }
    }
}

impl fmt::Display for SizeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeSpec::Fixed(n) => f.write_str(&human_size(*n)),
            SizeSpec::List(l) => {
                let parts: Vec<String> = l.iter().map(|n| human_size(*n)).collect();
                f.write_str(&parts.join(","))
            }
            SizeSpec::Range(lo, hi) => write!(f, "{}..{}", human_size(*lo), human_size(*hi)),
        }
    }
}

/// `4KiB`, `1MiB`, `1.5MiB`, `100B`: the shortest exact-enough form.
pub fn human_size(n: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, m) in UNITS {
        if n >= m {
            return if n.is_multiple_of(m) {
                format!("{}{unit}", n / m)
            } else {
                format!("{:.1}{unit}", n as f64 / m as f64)
            };
        }
    }
    format!("{n}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(parse_size("4KiB").unwrap(), 4096);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("1.5MiB").unwrap(), 1_572_864);
        assert_eq!(parse_size("0").unwrap(), 0);
        for bad in ["", "KiB", "1.3B", "4XB", "2GiB", "nan", "1e3"] {
            assert!(parse_size(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(human_size(4096), "4KiB");
        assert_eq!(human_size(1_572_864), "1.5MiB");
        assert_eq!(human_size(100), "100B");
        assert!("2MiB..1MiB".parse::<SizeSpec>().is_err());
    }

    #[test]
    fn range_sizes_stay_in_bounds_and_spread() {
        let s = SizeSpec::Range(1024, 1 << 20);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let (mut small, mut large) = (0, 0);
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = s.pick(x);
            assert!((1024..=1 << 20).contains(&v));
            if v < 32 << 10 {
                small += 1;
            } else {
                large += 1;
            }
        }
        // log-uniform: 1KiB..32KiB is half the log range.
        assert!(
            (4000..6000).contains(&small),
            "{small} small, {large} large"
        );
    }

    #[test]
    fn workloads() {
        assert_eq!(
            "get".parse::<Workload>().unwrap(),
            Workload::single(BenchOp::Get)
        );
        let m: Workload = "mixed".parse().unwrap();
        assert_eq!(m.to_string(), "mixed:put=15,get=45,head=30,delete=10");
        let mut counts = [0u32; 5];
        for r in 0..100u64 {
            counts[m.pick(r).index()] += 1;
        }
        assert_eq!(counts, [15, 45, 30, 10, 0]);
        assert!("put:get=1".parse::<Workload>().is_err());
        assert!("mixed:delete=3".parse::<Workload>().is_err());
        assert!("mixed:get=x".parse::<Workload>().is_err());
        assert!("copy".parse::<Workload>().is_err());
    }
}
