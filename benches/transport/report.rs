//! Medians, BENCH.md's JSON lines, and the Markdown table with ratios to
//! RAW and the targets.

use crate::{CURVE_SIZES, Workload, pair, raw_tcp, size_name};
use std::fmt::Write;

/// The suffix of the implementation name of figures measured with the
/// build given by `--against`.
pub const BEFORE: &str = "@before";

/// One figure: the median over runs with min and max.
#[derive(Debug, Clone, PartialEq)]
pub struct Agg {
    pub imp: String,
    pub workload: String,
    pub metric: String,
    pub value: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

impl Agg {
    pub fn of(imp: &str, workload: &str, metric: &str, values: &[f64]) -> Agg {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Agg {
            imp: imp.into(),
            workload: workload.into(),
            metric: metric.into(),
            value: median,
            min: v[0],
            max: v[n - 1],
            runs: n,
        }
    }

    /// The JSON line of BENCH.md.
    pub fn json(&self) -> String {
        format!(
            "{{\"impl\":\"{}\",\"workload\":\"{}\",\"metric\":\"{}\",\"value\":{},\"min\":{},\"max\":{},\"runs\":{}}}",
            self.imp,
            self.workload,
            self.metric,
            num(self.value),
            num(self.min),
            num(self.max),
            self.runs
        )
    }
}

/// A JSON number with sensible precision.
fn num(v: f64) -> String {
    if !v.is_finite() {
        return "null".into();
    }
    let s = if v.abs() >= 1000.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.4}")
    };
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".into()
    } else {
        s.into()
    }
}

/// Reads back the JSON lines this harness wrote (flat objects only).
pub fn read_jsonl(text: &str) -> Vec<Agg> {
    fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
        let start = line.find(&format!("\"{key}\":"))? + key.len() + 3;
        let rest = &line[start..];
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        Some(rest[..end].trim().trim_matches('"'))
    }
    text.lines()
        .filter_map(|line| {
            let n = |k| field(line, k).and_then(|v| v.parse::<f64>().ok());
            Some(Agg {
                imp: field(line, "impl")?.into(),
                workload: field(line, "workload")?.into(),
                metric: field(line, "metric")?.into(),
                value: n("value")?,
                min: n("min")?,
                max: n("max")?,
                runs: n("runs")? as usize,
            })
        })
        .collect()
}

pub fn find<'a>(aggs: &'a [Agg], imp: &str, workload: &str, metric: &str) -> Option<&'a Agg> {
    aggs.iter()
        .find(|a| a.imp == imp && a.workload == workload && a.metric == metric)
}

/// A figure for people: `1.23 M`, `5120`, `0.83`.
fn human(v: f64, metric: &str) -> String {
    match metric {
        "msgs_per_s" if v >= 1e6 => format!("{:.2} M", v / 1e6),
        "msgs_per_s" if v >= 1e3 => format!("{:.1} k", v / 1e3),
        "dropped" | "hb_count" => format!("{v:.0}"),
        _ if v >= 100.0 => format!("{v:.0}"),
        _ if v >= 10.0 => format!("{v:.1}"),
        _ => format!("{v:.3}"),
    }
}

fn cell(a: Option<&Agg>) -> String {
    match a {
        None => "—".into(),
        Some(a) if a.runs > 1 => format!(
            "{} ({}–{})",
            human(a.value, &a.metric),
            human(a.min, &a.metric),
            human(a.max, &a.metric)
        ),
        Some(a) => human(a.value, &a.metric),
    }
}

/// How a target is judged.
enum Target {
    /// raftwire / RAW of the same metric at least this.
    RatioAtLeast(f64),
    /// raftwire / RAW of the same metric at most this.
    RatioAtMost(f64),
    /// raftwire's value at most this.
    AtMost(f64, &'static str),
    None,
}

struct Row {
    workload: &'static str,
    metric: &'static str,
    /// RAW's figure to divide by: (workload, metric).
    raw: Option<(&'static str, &'static str)>,
    target: Target,
}

/// A row compared with RAW's figure `raw` (workload, metric), if any.
const fn row(
    workload: &'static str,
    metric: &'static str,
    raw: Option<(&'static str, &'static str)>,
    target: Target,
) -> Row {
    Row {
        workload,
        metric,
        raw,
        target,
    }
}

/// A row compared with RAW's figure for the same workload and metric.
const fn vs_raw(workload: &'static str, metric: &'static str, target: Target) -> Row {
    row(workload, metric, Some((workload, metric)), target)
}

/// A row of W1 with raft-rs messages, compared with RAW's W1.
const fn raft_w1(metric: &'static str, target: Target) -> Row {
    row("w1-raft", metric, Some(("w1", metric)), target)
}

/// A row with no RAW figure.
const fn own(workload: &'static str, metric: &'static str, target: Target) -> Row {
    row(workload, metric, None, target)
}

const ROWS: &[Row] = &[
    vs_raw("w1", "msgs_per_s", Target::RatioAtLeast(0.30)),
    vs_raw("w1", "payload_MBps", Target::None),
    vs_raw("w1", "cpu_us_per_msg", Target::AtMost(0.25, "µs")),
    vs_raw("w1", "dropped", Target::AtMost(0.0, "")),
    raft_w1("msgs_per_s", Target::RatioAtLeast(0.30)),
    raft_w1("payload_MBps", Target::None),
    raft_w1("cpu_us_per_msg", Target::AtMost(0.25, "µs")),
    own("w1-raft", "dropped", Target::AtMost(0.0, "")),
    vs_raw("w2", "payload_MBps", Target::RatioAtLeast(0.80)),
    vs_raw("w2", "msgs_per_s", Target::None),
    vs_raw("w2", "cpu_us_per_msg", Target::RatioAtMost(1.5)),
    vs_raw("w2", "dropped", Target::AtMost(0.0, "")),
    own("w3-idle", "hb_p50_us", Target::None),
    own("w3-idle", "hb_p99_us", Target::None),
    own("w3-idle", "hb_max_us", Target::None),
    own("w3-idle", "hb_count", Target::None),
    own("w3-load", "hb_p50_us", Target::None),
    own(
        "w3-load",
        "hb_p99_us",
        Target::AtMost(500.0, "µs while W2 runs at full speed"),
    ),
    own("w3-load", "hb_max_us", Target::None),
    own("w3-load", "hb_count", Target::None),
    row(
        "w3-load",
        "load_payload_MBps",
        Some(("w2", "payload_MBps")),
        Target::None,
    ),
    own("w3-load", "dropped", Target::AtMost(0.0, "")),
    row(
        "w4",
        "snapshot_MBps",
        Some(("w2", "payload_MBps")),
        Target::RatioAtLeast(0.80),
    ),
    own("w4", "peak_rss_MiB", Target::AtMost(24.0, "MiB")),
    own("w4", "cpu_s", Target::None),
];

fn is_cost(metric: &str) -> bool {
    metric.starts_with("cpu")
}

/// raftwire / RAW, shown as a percentage for rates and as a factor for costs.
fn ratio_text(r: f64, metric: &str) -> String {
    if is_cost(metric) {
        format!("{r:.1}×")
    } else if r < 0.1 {
        format!("{:.1} %", r * 100.0)
    } else {
        format!("{:.0} %", r * 100.0)
    }
}

/// The results table, the curve table and the targets, as Markdown.
pub fn markdown(aggs: &[Agg]) -> String {
    let rw = pair::IMPL;
    let raw = raw_tcp::IMPL;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| workload | metric | raftwire median (min–max) | raw-tcp median (min–max) | raftwire / raw | target | status |"
    );
    let _ = writeln!(s, "| --- | --- | ---: | ---: | ---: | --- | --- |");
    for r in ROWS {
        let mine = find(aggs, rw, r.workload, r.metric);
        let base = r.raw.and_then(|(w, m)| find(aggs, raw, w, m));
        let borrowed = r.raw.is_some_and(|(w, _)| w != r.workload);
        if mine.is_none() && (base.is_none() || borrowed) {
            continue;
        }
        let ratio = match (mine, base) {
            (Some(a), Some(b)) if b.value != 0.0 && a.metric != "dropped" => {
                Some(a.value / b.value)
            }
            _ => None,
        };
        let base_cell = match r.raw {
            Some((w, _)) if borrowed => format!("{} (RAW {w})", cell(base)),
            _ => cell(base),
        };
        let of_raw = match r.raw {
            Some((w, _)) if borrowed => format!(" {}", w.to_uppercase()),
            _ => String::new(),
        };
        let (target, status) = match r.target {
            Target::RatioAtLeast(x) => (
                format!("≥ {:.0} % of RAW{of_raw}", x * 100.0),
                ratio.map(|q| q >= x),
            ),
            Target::RatioAtMost(x) => (format!("≤ {x}× RAW (per byte)"), ratio.map(|q| q <= x)),
            Target::AtMost(x, _) if x == 0.0 => ("0".to_string(), mine.map(|a| a.value <= x)),
            Target::AtMost(x, unit) => (format!("≤ {x} {unit}"), mine.map(|a| a.value <= x)),
            Target::None => (String::new(), None),
        };
        let status = match status {
            Some(true) => "pass",
            Some(false) => "**miss**",
            None => "",
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.workload,
            r.metric,
            cell(mine),
            base_cell,
            ratio.map_or(String::new(), |q| ratio_text(q, r.metric)),
            target,
            status
        );
    }

    let tls = pair::IMPL_TLS;
    let tls_rows = [
        ("w1", "msgs_per_s"),
        ("w1", "cpu_us_per_msg"),
        ("w2", "payload_MBps"),
        ("w2", "cpu_us_per_msg"),
    ];
    if tls_rows
        .iter()
        .any(|(w, m)| find(aggs, tls, w, m).is_some())
    {
        let _ = writeln!(
            s,
            "\nTLS cost (feature `tls`: mutual TLS 1.3, rustls with ring), as ratios to the \
             plaintext run of the same invocation:\n"
        );
        let _ = writeln!(
            s,
            "| workload | metric | raftwire-tls median (min–max) | raftwire median (min–max) | tls / plaintext | tls / raw |"
        );
        let _ = writeln!(s, "| --- | --- | ---: | ---: | ---: | ---: |");
        for (w, m) in tls_rows {
            let t = find(aggs, tls, w, m);
            let ratio = |b: Option<&Agg>| match (t, b) {
                (Some(a), Some(b)) if b.value != 0.0 => ratio_text(a.value / b.value, m),
                _ => String::new(),
            };
            let plain = find(aggs, rw, w, m);
            let _ = writeln!(
                s,
                "| {w} | {m} | {} | {} | {} | {} |",
                cell(t),
                cell(plain),
                ratio(plain),
                ratio(find(aggs, raw, w, m)),
            );
        }
    }

    let curve: Vec<usize> = CURVE_SIZES
        .into_iter()
        .filter(|&size| {
            let w = Workload::Curve(size).name();
            find(aggs, rw, &w, "payload_MBps").is_some()
                || find(aggs, raw, &w, "payload_MBps").is_some()
        })
        .collect();
    if !curve.is_empty() {
        let _ = writeln!(
            s,
            "\nThroughput vs payload size (payload MB/s, 10^6 B/s; msgs/s; CPU µs per message):\n"
        );
        let _ = writeln!(
            s,
            "| payload | raftwire MB/s | raw-tcp MB/s | raftwire / raw | raftwire msgs/s | raw-tcp msgs/s | raftwire CPU µs/msg | raw-tcp CPU µs/msg |"
        );
        let _ = writeln!(
            s,
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for size in curve {
            let w = Workload::Curve(size).name();
            let a = find(aggs, rw, &w, "payload_MBps");
            let b = find(aggs, raw, &w, "payload_MBps");
            let ratio = match (a, b) {
                (Some(a), Some(b)) if b.value != 0.0 => ratio_text(a.value / b.value, ""),
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                size_name(size),
                cell(a),
                cell(b),
                ratio,
                cell(find(aggs, rw, &w, "msgs_per_s")),
                cell(find(aggs, raw, &w, "msgs_per_s")),
                cell(find(aggs, rw, &w, "cpu_us_per_msg")),
                cell(find(aggs, raw, &w, "cpu_us_per_msg")),
            );
        }
    }
    s
}

/// The current time in UTC, `YYYY-MM-DD HH:MM`, without a date library.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Whether a smaller value of `metric` is the better one.
fn lower_is_better(metric: &str) -> bool {
    metric.contains("_us")
        || metric.starts_with("cpu")
        || metric.contains("rss")
        || metric == "dropped"
}

/// With `--against`: every figure of this build beside the other build's,
/// as a ratio, and whether it moved beyond the two builds' run-to-run
/// spread (`worse`/`better` only when the ranges do not overlap).
pub fn against(aggs: &[Agg]) -> Option<String> {
    let before: Vec<&Agg> = aggs.iter().filter(|a| a.imp.ends_with(BEFORE)).collect();
    if before.is_empty() {
        return None;
    }
    let mut out = String::from(
        "\n### This build against the `--against` build (same invocation)\n\n\
         | job | metric | this build | `--against` build | this / that | verdict |\n\
         |---|---|---:|---:|---:|---|\n",
    );
    for b in before {
        let imp = b.imp.trim_end_matches(BEFORE);
        let Some(now) = find(aggs, imp, &b.workload, &b.metric) else {
            continue;
        };
        if b.metric == "hb_count" {
            continue;
        }
        let ratio = if b.value != 0.0 {
            now.value / b.value
        } else {
            f64::NAN
        };
        let lower = lower_is_better(&b.metric);
        let better = if lower {
            now.max < b.min
        } else {
            now.min > b.max
        };
        let worse = if lower {
            now.min > b.max
        } else {
            now.max < b.min
        };
        let verdict = match (better, worse) {
            (true, _) => "better",
            (_, true) => "worse",
            _ => "within noise",
        };
        let _ = writeln!(
            out,
            "| {imp}:{} | {} | {} | {} | {:.2} | {verdict} |",
            b.workload,
            b.metric,
            cell(Some(now)),
            cell(Some(b)),
            ratio
        );
    }
    Some(out)
}
