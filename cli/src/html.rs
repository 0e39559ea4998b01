//! `piecestore bench --html`: a self-contained HTML page with the report's plots.
//!
//! Everything is inline (CSS, SVG drawn by plotters); no scripts, fonts or external resources.

use std::collections::BTreeSet;
use std::error::Error;
use std::path::Path;

use piecestore::bench::{Latency, OpReport, Report, Second, human_rate, human_us};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::CliError;

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type PlotResult = Result<(), Box<dyn Error>>;

const SIZE: (u32, u32) = (960, 380);
/// The strip at the right of each plot that holds its legend, outside the plotting area, so
/// that the legend never hides a line's end.
const LEGEND_WIDTH: u32 = 150;
/// The throughput column of operations that carry no payload (head, delete, list).
const NO_THROUGHPUT: &str = "\u{2014}";
const CSS: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1000px}\
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.25em .6em}\
td+td,th+th{text-align:right}.l td{text-align:left}\
.sw{display:inline-block;width:.8em;height:.8em;margin-right:.4em}.pass{color:#2ca02c}\
.fail{color:#d62728;font-weight:bold}.na{color:#888;font-style:italic}svg{max-width:100%;height:auto}";

/// Escapes `&`, `<`, `>`, `"` and `'` for HTML text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The fixed color of a series: an operation, or `get ttfb` (each its own, so that no two
/// series of a plot share one; `i` picks a fallback for unknown names).
fn color_of(op: &str, i: usize) -> RGBColor {
    const OTHERS: [RGBColor; 4] = [
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(23, 190, 207),
    ];
    match op {
        "put" => RGBColor(31, 119, 180),
        "get" => RGBColor(44, 160, 44),
        "head" => RGBColor(255, 127, 14),
        "delete" => RGBColor(214, 39, 40),
        "list" => RGBColor(148, 103, 189),
        "get ttfb" => RGBColor(188, 189, 34),
        _ => OTHERS[i % OTHERS.len()],
    }
}

/// `2024-01-31 12:34:56 UTC` from unix seconds (civil-from-days, proleptic Gregorian).
fn utc(secs: u64) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (h, mi, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02} UTC")
}

/// An HTML table: comma-separated `head` cells, then `rows` of cells already escaped.
fn table(class: &str, head: &str, rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut o = format!("<table class=\"{class}\"><tr>");
    head.split(',')
        .filter(|h| !h.is_empty())
        .for_each(|h| o += &format!("<th>{h}</th>"));
    for row in rows {
        o += "</tr><tr>";
        row.iter().for_each(|c| o += &format!("<td>{c}</td>"));
    }
    o + "</tr></table>\n"
}

/// Renders `report` as one HTML page (inline SVG plots and CSS; no external resources).
pub fn render(report: &Report) -> String {
    let (r, t) = (report, &report.total);
    let mut o = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>piecestore bench: {}</title><style>{CSS}</style></head><body>\n\
         <h1>piecestore bench</h1>\n",
        escape(&r.workload)
    );
    let stores: Vec<String> = r.store.iter().map(|s| escape(s)).collect();
    let mut head = vec![
        ("tool", escape(&r.tool)),
        ("workload", escape(&r.workload)),
        ("sizes", escape(&r.sizes)),
        ("concurrency", r.concurrency.to_string()),
        ("prepared objects", r.prepared_objects.to_string()),
        ("measured", format!("{:.1} s", r.duration_s)),
        ("warm-up", format!("{:.1} s", r.warmup_s)),
        ("store", stores.join("<br>")),
        ("started", utc(r.started_at)),
    ];
    if let Some(why) = &r.stopped_early {
        head.push(("stopped early", fail(why)));
    }
    o += &table(
        "l",
        "",
        head.into_iter().map(|(k, v)| vec![k.to_string(), v]),
    );
    let mut rows = Vec::new();
    for (i, op) in r.ops.iter().enumerate() {
        let errors = op.errors.values().sum::<u64>().to_string();
        let rates = [
            op.count.to_string(),
            format!("{:.1}", op.ops_per_s),
            throughput(op),
        ];
        rows.push(latency_row(swatched(&op.op, i), rates, &op.latency, errors));
        if let Some(l) = &op.ttfb {
            let name = swatched(&format!("{} ttfb", op.op), i);
            rows.push(latency_row(name, Default::default(), l, String::new()));
        }
    }
    let mut total = vec!["<b>total</b>".into(), t.count.to_string()];
    total.extend([format!("{:.1}", t.ops_per_s), human_rate(t.bytes_per_s)]);
    total.extend(std::iter::repeat_n(String::new(), 6).chain([t.errors.to_string()]));
    rows.push(total);
    o += "<h2>Summary</h2>\n";
    o += &table(
        "",
        "op,ops,ops/s,throughput,mean,p50,p90,p99,p99.9,max,errors",
        rows,
    );
    if !t.errors_by_kind.is_empty() {
        let rows = t
            .errors_by_kind
            .iter()
            .map(|(k, n)| vec![escape(k), n.to_string()]);
        o += &format!(
            "<h3>Errors by kind</h3>\n{}",
            table("", "error,operations", rows)
        );
    }
    if !r.checks.is_empty() {
        let rows = r.checks.iter().map(|c| {
            let pass = "<span class=\"pass\">pass</span>";
            let result = if c.passed { pass.into() } else { fail("FAIL") };
            let detail = escape(c.detail.as_deref().unwrap_or(""));
            vec![escape(&c.name), result, human_us(c.took_us), detail]
        });
        o += "<h2>Functional checks</h2>\n";
        o += &table("l", "check,result,took,detail", rows);
    }
    o += "<h2>Cleanup</h2>\n<p>";
    o += &match &r.cleanup {
        None => "skipped (the pieces were kept)".to_string(),
        Some(c) => match &c.error {
            None => format!("deleted {} pieces ({} bytes)", c.pieces, c.bytes),
            Some(e) => fail(&format!("failed after {} pieces: {e}", c.pieces)),
        },
    };
    o += "</p>\n<h2>Issued operations</h2>\n";
    let is = &r.issued;
    let phases = [&is.prepare, &is.warmup, &is.measure, &is.cleanup];
    let names: BTreeSet<&String> = phases.iter().flat_map(|m| m.keys()).collect();
    let rows = names.iter().map(|name| {
        let counts = phases.iter().map(|m| m.get(*name).copied().unwrap_or(0));
        let counts = counts.chain([is.total(name)]).map(|n| n.to_string());
        [escape(name)].into_iter().chain(counts).collect()
    });
    let cols = "op,prepare,warm-up,measure,cleanup,total";
    o += &if names.is_empty() {
        no_data()
    } else {
        table("", cols, rows)
    };
    o += "<h2>Throughput over time</h2>\n";
    o += &throughput_plot(r);
    o += "\n<h2>Latency distribution</h2>\n";
    o += &percentile_plot(r);
    o += "\n<h2>Latency histogram</h2>\n";
    o += &histogram_plot(r);
    o + "\n</body></html>\n"
}

/// `#1f77b4`.
fn hex(RGBColor(r, g, b): RGBColor) -> String {
    format!("#{r:02x}{g:02x}{b:02x}")
}

/// A series' name, escaped, after a swatch of its color.
fn swatched(name: &str, i: usize) -> String {
    format!(
        "<span class=\"sw\" style=\"background:{}\"></span>{}",
        hex(color_of(name, i)),
        escape(name)
    )
}

/// An operation's throughput, or a dash for those that move no payload (head, delete, list),
/// whose zero bytes per second would read as a measurement.
fn throughput(op: &OpReport) -> String {
    if matches!(op.op.as_str(), "head" | "delete" | "list") {
        NO_THROUGHPUT.to_string()
    } else {
        human_rate(op.bytes_per_s)
    }
}

/// Writes the page of `report` to `path` (atomically: a temporary file beside it, renamed over
/// it) with the permissions of any file the user creates: `0666` less the umask, so `0644`
/// under the usual umask 022 (a temporary file alone would be `0600`).
pub(crate) fn write(path: &Path, report: &Report) -> Result<(), CliError> {
    crate::write_file(path, render(report).as_bytes())
}

/// `text`, escaped, in the failure style.
fn fail(text: &str) -> String {
    format!("<span class=\"fail\">{}</span>", escape(text))
}

fn latency_row(name: String, rates: [String; 3], l: &Latency, errors: String) -> Vec<String> {
    let lat = [l.mean_us, l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us].map(human_us);
    [vec![name], rates.to_vec(), lat.to_vec(), vec![errors]].concat()
}

/// How a series is drawn.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Line,
    Dashed,
    /// A filled step area.
    Area,
}

/// One series of a plot: label, color, kind and `(x, y)` points.
struct Series(String, RGBColor, Kind, Vec<(f64, f64)>);

/// What a plot shows besides its ranges: x and y descriptions and label formats, the series.
struct Plot(
    &'static str,
    &'static str,
    fn(&f64) -> String,
    fn(&f64) -> String,
    Vec<Series>,
);

/// The SVG of a plot, or a short paragraph when plotting failed.
fn svg(draw: impl FnOnce(Area<'_>) -> PlotResult) -> String {
    let mut out = String::new();
    match draw(SVGBackend::with_string(&mut out, SIZE).into_drawing_area()) {
        Ok(()) => out,
        Err(e) => format!(
            "<p class=\"na\">(plot unavailable: {})</p>",
            escape(&e.to_string())
        ),
    }
}

fn no_data() -> String {
    "<p class=\"na\">(no data)</p>\n".to_string()
}

/// An axis label: `12`, `0.25`.
fn num(v: &f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// `lo..hi` with `lo < hi` and both finite.
fn padded(lo: f64, hi: f64) -> (f64, f64) {
    match (lo.is_finite() && hi.is_finite(), hi > lo) {
        (true, true) => (lo, hi),
        (true, false) => (lo - 0.5, lo + 0.5),
        (false, _) => (0.0, 1.0),
    }
}

fn chart<X, Y>(area: Area<'_>, x: X, y: Y, p: &Plot) -> PlotResult
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    area.fill(&WHITE)?;
    let (plot, legend) = area.split_horizontally(SIZE.0 - LEGEND_WIDTH);
    let mut c = ChartBuilder::on(&plot)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(x, y)?;
    c.configure_mesh()
        .x_desc(p.0)
        .y_desc(p.1)
        .x_label_formatter(&p.2)
        .y_label_formatter(&p.3)
        .light_line_style(RGBColor(238, 238, 238))
        .draw()?;
    for Series(_, color, kind, pts) in &p.4 {
        let (color, pts) = (*color, pts.clone());
        let style = color.stroke_width(2);
        match kind {
            Kind::Area => {
                c.draw_series(AreaSeries::new(pts, 0.0, color.mix(0.15)).border_style(style))?
            }
            Kind::Dashed => c.draw_series(DashedLineSeries::new(pts, 6, 4, style))?,
            // A single point makes no line.
            Kind::Line if pts.len() == 1 => {
                c.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))?
            }
            Kind::Line => c.draw_series(LineSeries::new(pts, style))?,
        };
    }
    draw_legend(&legend, &p.4)?;
    area.present()?;
    Ok(())
}

/// The legend, one row per series, in the strip right of the plotting area.
fn draw_legend(area: &Area<'_>, series: &[Series]) -> PlotResult {
    let text = TextStyle::from(("sans-serif", 14).into_font())
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (k, Series(label, color, kind, _)) in series.iter().enumerate() {
        let y = 24 + 22 * k as i32;
        let (from, to) = ((8, y), (36, y));
        let style = color.stroke_width(2);
        match kind {
            Kind::Line => area.draw(&PathElement::new(vec![from, to], style))?,
            Kind::Dashed => area.draw(&DashedPathElement::new(vec![from, to], 6, 4, style))?,
            Kind::Area => area
                .draw(&Rectangle::new(
                    [(8, y - 6), (36, y + 6)],
                    color.mix(0.15).filled(),
                ))
                .and_then(|()| area.draw(&Rectangle::new([(8, y - 6), (36, y + 6)], style)))?,
        }
        area.draw(&Text::new(label.clone(), (44, y), text.clone()))?;
    }
    Ok(())
}

/// The operations with successful operations, with their index.
fn plotted(r: &Report) -> impl Iterator<Item = (usize, &OpReport)> {
    r.ops.iter().enumerate().filter(|(_, op)| op.count > 0)
}

/// The `y` values of every series.
fn ys(series: &[Series]) -> impl Iterator<Item = f64> + '_ {
    series.iter().flat_map(|s| s.3.iter().map(|p| p.1))
}

fn throughput_plot(r: &Report) -> String {
    let line = |label: String, color, f: &dyn Fn(&Second) -> u64| {
        // Per second of wall time: the last second is usually cut short by the end of the run.
        let points = r
            .timeline
            .iter()
            .map(|s| (f64::from(s.t), f(s) as f64 / s.span_s.clamp(0.05, 1.0)));
        Series(label, color, Kind::Line, points.collect())
    };
    let mut all: Vec<Series> = plotted(r)
        .map(|(i, op)| {
            let count = |s: &Second| s.ops.get(&op.op).copied().unwrap_or(0);
            line(op.op.clone(), color_of(&op.op, i), &count)
        })
        .collect();
    if r.timeline.iter().any(|s| s.errors > 0) {
        all.push(line("errors".into(), BLACK, &|s| s.errors));
    }
    if r.timeline.is_empty() || all.is_empty() {
        return no_data();
    }
    let ts = r.timeline.iter().map(|s| f64::from(s.t));
    let (x0, x1) = padded(
        ts.clone().fold(f64::INFINITY, f64::min),
        ts.fold(0.0, f64::max),
    );
    let ymax = ys(&all).fold(1.0, f64::max) * 1.1;
    // Whole seconds only: fractional ticks get no label.
    let x_fmt = |v: &f64| {
        if v.fract() == 0.0 {
            num(v)
        } else {
            String::new()
        }
    };
    let p = Plot("second", "operations/s", x_fmt, num, all);
    svg(|a| chart(a, x0..x1, 0.0..ymax, &p))
}

fn percentile_plot(r: &Report) -> String {
    let mut all = Vec::new();
    for (i, op) in plotted(r) {
        let lats = [(&op.latency, "")]
            .into_iter()
            .chain(op.ttfb.iter().map(|t| (t, " ttfb")));
        for (l, suffix) in lats {
            let ok = |(p, v): &(f64, f64)| p.is_finite() && v.is_finite();
            let points: Vec<_> = l.percentiles.iter().copied().filter(ok).collect();
            if !points.is_empty() {
                let kind = if suffix.is_empty() {
                    Kind::Line
                } else {
                    Kind::Dashed
                };
                let label = format!("{}{suffix}", op.op);
                let color = color_of(&label, i);
                all.push(Series(label, color, kind, points));
            }
        }
    }
    if all.is_empty() {
        return no_data();
    }
    let ymax = ys(&all).fold(0.0, f64::max);
    let ymin = ys(&all).filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
    let log = ymin.is_finite() && ymax / ymin > 100.0;
    if log {
        all.iter_mut().for_each(|s| s.3.retain(|p| p.1 > 0.0));
    }
    let p = Plot("percentile", "latency", num, |v| human_us(*v), all);
    if log {
        let (y0, y1) = padded(ymin / 1.2, ymax * 1.2);
        svg(|a| chart(a, 0.0..100.0, (y0..y1).log_scale(), &p))
    } else {
        let (y0, y1) = padded(0.0, ymax * 1.1);
        svg(|a| chart(a, 0.0..100.0, y0..y1, &p))
    }
}

fn histogram_plot(r: &Report) -> String {
    // 10 bins per decade: a bin spans from the previous bound to its own.
    let step = 10f64.powf(0.1);
    let mut all = Vec::new();
    for (i, op) in plotted(r) {
        let bins = op
            .latency
            .histogram
            .iter()
            .filter(|(ub, _)| ub.is_finite() && *ub > 0.0);
        let mut points: Vec<(f64, f64)> = Vec::new();
        let mut lo = f64::NAN;
        for &(ub, n) in bins {
            let from = if ub > lo { lo } else { ub / step };
            if points.is_empty() {
                points.push((from, 0.0));
            }
            points.extend([(from, n as f64), (ub, n as f64)]);
            lo = ub;
        }
        if !points.is_empty() {
            points.push((lo, 0.0));
            all.push(Series(
                op.op.clone(),
                color_of(&op.op, i),
                Kind::Area,
                points,
            ));
        }
    }
    if all.is_empty() {
        return no_data();
    }
    let xs = || all.iter().flat_map(|s| s.3.iter().map(|p| p.0));
    let (x0, x1) = padded(
        xs().fold(f64::INFINITY, f64::min) / 1.2,
        xs().fold(0.0, f64::max) * 1.2,
    );
    let ymax = ys(&all).fold(1.0, f64::max) * 1.1;
    let p = Plot("latency", "operations", |v| human_us(*v), num, all);
    svg(|a| chart(a, (x0..x1).log_scale(), 0.0..ymax, &p))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use piecestore::bench::{CheckResult, Cleanup, Issued, Totals};

    use super::*;

    fn latency(scale: f64) -> Latency {
        Latency {
            min_us: 10.0 * scale,
            mean_us: 50.0 * scale,
            p50_us: 40.0 * scale,
            p90_us: 90.0 * scale,
            p99_us: 500.0 * scale,
            p999_us: 2000.0 * scale,
            max_us: 5000.0 * scale,
            percentiles: [0.0, 50.0, 90.0, 99.0, 100.0]
                .into_iter()
                .zip([10.0, 40.0, 90.0, 500.0, 5000.0].map(|v| v * scale))
                .collect(),
            histogram: [12.6, 15.9, 20.0, 25.2]
                .map(|b| b * scale)
                .into_iter()
                .zip([3, 10, 7, 1])
                .collect(),
        }
    }

    fn op(name: &str, count: u64, ttfb: bool) -> OpReport {
        OpReport {
            op: name.into(),
            count,
            errors: BTreeMap::from([("BACKEND".to_string(), 2)]),
            bytes: count * 4096,
            ops_per_s: count as f64 / 3.0,
            bytes_per_s: count as f64 * 4096.0 / 3.0,
            latency: latency(1.0),
            ttfb: ttfb.then(|| latency(0.5)),
        }
    }

    fn report() -> Report {
        let sec = |t, p, g, errors| Second {
            t,
            ops: BTreeMap::from([("put".to_string(), p), ("get".to_string(), g)]),
            errors,
            bytes: (p + g) * 4096,
            mean_latency_us: 50.0,
            span_s: 1.0,
        };
        Report {
            version: piecestore::bench::REPORT_VERSION,
            tool: "piecestore 0.1.0".into(),
            started_at: 1_700_000_000,
            store: vec![
                "s3://bucket/<script>alert(1)</script>".into(),
                "https://minio:9000/b".into(),
            ],
            workload: "mixed:put=50,get=50".into(),
            sizes: "4KiB".into(),
            concurrency: 8,
            prepared_objects: 100,
            warmup_s: 1.0,
            duration_s: 3.0,
            stopped_early: Some("errors & <limits>".into()),
            ops: vec![op("put", 300, false), op("get", 330, true)],
            total: Totals {
                count: 630,
                errors: 4,
                errors_by_kind: BTreeMap::from([("BACKEND".to_string(), 4)]),
                bytes: 630 * 4096,
                ops_per_s: 210.0,
                bytes_per_s: 630.0 * 4096.0 / 3.0,
            },
            timeline: vec![sec(0, 90, 100, 0), sec(1, 110, 120, 3), sec(2, 100, 110, 1)],
            issued: Issued {
                prepare: BTreeMap::from([("put".to_string(), 100)]),
                warmup: BTreeMap::from([("put".to_string(), 20), ("get".to_string(), 30)]),
                measure: BTreeMap::from([("put".to_string(), 302), ("get".to_string(), 332)]),
                cleanup: BTreeMap::from([("list".to_string(), 1), ("delete".to_string(), 422)]),
            },
            checks: vec![CheckResult {
                name: "get returns the bytes put".into(),
                passed: false,
                detail: Some("got <5> bytes".into()),
                took_us: 1234.0,
            }],
            cleanup: Some(Cleanup {
                pieces: 422,
                bytes: 422 * 4096,
                error: None,
            }),
            cache: None,
        }
    }

    #[test]
    fn html_renders_a_full_report() {
        let r = report();
        let page = render(&r);
        assert!(page.contains("<svg"));
        for title in [
            "Throughput over time",
            "Latency distribution",
            "Latency histogram",
        ] {
            assert!(page.contains(title), "missing {title}");
        }
        assert!(!page.contains("plot unavailable"), "{page}");
        let upper = page.to_uppercase();
        assert!(upper.contains("STROKE=\"#1F77B4\""));
        assert!(upper.contains("STROKE=\"#2CA02C\""));
        assert!(
            page.contains(">\nerrors\n</text>"),
            "the errors line's legend"
        );
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!page.contains("<script"));
        assert!(page.contains("errors &amp; &lt;limits&gt;"));
        assert!(page.contains("got &lt;5&gt; bytes"));
        assert!(page.contains("2023-11-14 22:13:20 UTC"));
        let mut rest = page.replace("http://www.w3.org/2000/svg", "");
        for s in &r.store {
            rest = rest.replace(&escape(s), "");
        }
        assert!(!rest.contains("http://") && !rest.contains("https://"));
    }

    #[test]
    fn html_renders_edge_cases() {
        let mut r = report();
        r.ops.clear();
        r.timeline.clear();
        r.checks.clear();
        r.issued = Issued::default();
        r.total = Totals::default();
        r.store.clear();
        r.stopped_early = None;
        r.cleanup = None;
        let page = render(&r);
        assert!(page.contains("Latency histogram") && page.contains("(no data)"));
        // One second, all zeros, empty distributions, a zero-count op.
        let mut r = report();
        r.timeline.truncate(1);
        r.timeline[0].ops.values_mut().for_each(|v| *v = 0);
        r.timeline[0].errors = 0;
        r.ops[0].latency = Latency::default();
        r.ops[1].count = 0;
        let page = render(&r);
        assert!(page.contains("<svg") && !page.contains("plot unavailable"));
        r.ops[0].latency.percentiles = vec![(0.0, 0.0), (100.0, 0.0)];
        r.ops[0].latency.histogram = vec![(0.0, 0), (1.0, 0)];
        assert!(!render(&r).contains("plot unavailable"));
    }

    #[test]
    fn html_every_series_has_its_own_color_and_no_payload_no_throughput() {
        let names = ["put", "get", "get ttfb", "head", "delete", "list"];
        let colors: BTreeSet<String> = names
            .iter()
            .enumerate()
            .map(|(i, n)| hex(color_of(n, i)))
            .chain([hex(BLACK)])
            .collect();
        assert_eq!(colors.len(), names.len() + 1, "{colors:?}");
        let mut r = report();
        for (name, count) in [("head", 90), ("delete", 30)] {
            let mut o = op(name, count, false);
            (o.bytes, o.bytes_per_s) = (0, 0.0);
            r.ops.push(o);
        }
        let page = render(&r);
        let upper = page.to_uppercase();
        assert!(upper.contains("STROKE=\"#BCBD22\""), "get ttfb's own line");
        assert!(!page.contains("<td>0.0 KiB/s</td>"));
        assert_eq!(page.matches("<td>\u{2014}</td>").count(), 2);
    }

    #[test]
    fn html_escape_and_dates() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
    }
}
