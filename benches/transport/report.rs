//! Medians, BENCH.md's JSON lines, and the Markdown tables: raftwire
//! against the Go peers and RAW, the ratios to RAW and the targets, TLS,
//! the curve, W5.

use crate::{CURVE_SIZES, W5_SIZES, Workload, pair, peers, raw_tcp, size_name};
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

/// The value of `key` in a flat JSON object on one line (strings without
/// commas or escapes, as this harness and peerbench write them).
pub fn json_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &line[start..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim().trim_matches('"'))
}

/// Reads back the JSON lines this harness wrote (flat objects only).
pub fn read_jsonl(text: &str) -> Vec<Agg> {
    let field = json_field;
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
        "msgs_per_s" | "proposals_per_s" if v >= 1e6 => format!("{:.2} M", v / 1e6),
        "msgs_per_s" | "proposals_per_s" if v >= 1e3 => format!("{:.1} k", v / 1e3),
        "dropped" | "proposals_dropped" | "hb_count" => format!("{v:.0}"),
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

/// One row of the lead table: raftwire's `workload`/`metric` beside the
/// same metric of each peer (implementation, workload) and of RAW.
struct Lead {
    label: &'static str,
    workload: &'static str,
    metric: &'static str,
    etcd: Option<(&'static str, &'static str)>,
    hashicorp: Option<&'static str>,
    /// RAW's implementation, workload and metric.
    raw: Option<(&'static str, &'static str, &'static str)>,
    /// Shown only when raftwire has the figure (rows whose peer and RAW
    /// figures another row shows already).
    optional: bool,
}

/// A lead row whose peers ran the same workload, and RAW `raw_imp` too.
const fn lead(
    label: &'static str,
    workload: &'static str,
    metric: &'static str,
    raw_imp: Option<&'static str>,
) -> Lead {
    Lead {
        label,
        workload,
        metric,
        etcd: Some((peers::ETCD, workload)),
        hashicorp: Some(workload),
        raw: match raw_imp {
            Some(imp) => Some((imp, workload, metric)),
            None => None,
        },
        optional: false,
    }
}

/// W1 with raft-rs messages: the peers' and RAW's W1 (their W1 is a raft
/// append of one entry already).
const fn lead_raft_w1(metric: &'static str) -> Lead {
    Lead {
        label: "W1 raft-rs MsgAppend",
        workload: "w1-raft",
        etcd: Some((peers::ETCD, "w1")),
        hashicorp: Some("w1"),
        raw: Some((raw_tcp::IMPL, "w1", metric)),
        optional: true,
        ..lead("", "", metric, None)
    }
}

const LEAD: &[Lead] = &[
    lead("W1 Envelope", "w1", "msgs_per_s", Some(raw_tcp::IMPL)),
    lead("W1 Envelope", "w1", "cpu_us_per_msg", Some(raw_tcp::IMPL)),
    lead("W1 Envelope", "w1", "dropped", Some(raw_tcp::IMPL)),
    lead_raft_w1("msgs_per_s"),
    lead_raft_w1("cpu_us_per_msg"),
    lead_raft_w1("dropped"),
    lead("W2", "w2", "payload_MBps", Some(raw_tcp::IMPL)),
    lead("W2", "w2", "cpu_us_per_msg", Some(raw_tcp::IMPL)),
    lead("W2", "w2", "dropped", Some(raw_tcp::IMPL)),
    lead("W3-idle", "w3-idle", "hb_p50_us", Some(peers::RAWGO)),
    lead("W3-idle", "w3-idle", "hb_p99_us", Some(peers::RAWGO)),
    lead("W3-idle", "w3-idle", "hb_max_us", Some(peers::RAWGO)),
    lead("W3-load", "w3-load", "hb_p50_us", Some(peers::RAWGO)),
    lead("W3-load", "w3-load", "hb_p99_us", Some(peers::RAWGO)),
    lead(
        "W3-load",
        "w3-load",
        "load_payload_MBps",
        Some(peers::RAWGO),
    ),
    lead("W3-load", "w3-load", "dropped", Some(peers::RAWGO)),
    Lead {
        raw: Some((raw_tcp::IMPL, "w2", "payload_MBps")),
        ..lead("W4", "w4", "snapshot_MBps", None)
    },
    Lead {
        etcd: Some((peers::ETCD_DISCARD, "w4")),
        hashicorp: None,
        ..lead(
            "W4, etcd's receiver discarding",
            "w4",
            "snapshot_MBps",
            None,
        )
    },
    lead("W4", "w4", "peak_rss_MiB", None),
    lead("W4", "w4", "cpu_s", None),
];

/// raftwire / other, as a factor.
fn factor(mine: Option<&Agg>, other: Option<&Agg>) -> String {
    match (mine, other) {
        (Some(a), Some(b)) if b.value != 0.0 && !matches!(a.metric.as_str(), "dropped") => {
            let r = a.value / b.value;
            match r {
                r if r >= 100.0 => format!("{r:.0}×"),
                r if r >= 10.0 => format!("{r:.1}×"),
                r => format!("{r:.2}×"),
            }
        }
        _ => String::new(),
    }
}

/// The lead table: raftwire against etcd rafthttp, hashicorp/raft and RAW
/// on every workload, each figure also as a ratio.
fn lead_table(aggs: &[Agg]) -> String {
    let mut s = String::from(
        "raftwire against etcd rafthttp, hashicorp/raft and RAW, same invocation; median \
         (min–max). Ratios are raftwire's figure divided by the other's: above 1 is better \
         for rates, below 1 for latencies, CPU and memory. RAW is raw Rust TCP for W1 and W2 \
         (W4: its W2 MB/s), raw Go TCP (`rawgo`, heartbeats on a connection of their own) for \
         W3. The peers' W1 is a raft append with one 128-byte entry.\n\n\
         | workload | metric | raftwire | etcd rafthttp | raftwire / etcd | hashicorp raft | \
         raftwire / hashicorp | RAW | raftwire / RAW |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let mut peer_figures = false;
    for r in LEAD {
        let mine = find(aggs, pair::IMPL, r.workload, r.metric);
        let etcd = r.etcd.and_then(|(imp, w)| find(aggs, imp, w, r.metric));
        let hashi = r
            .hashicorp
            .and_then(|w| find(aggs, peers::HASHICORP, w, r.metric));
        let raw = r.raw.and_then(|(imp, w, m)| find(aggs, imp, w, m));
        peer_figures |= etcd.is_some() || hashi.is_some();
        if mine.is_none() && (r.optional || (etcd.is_none() && hashi.is_none() && raw.is_none())) {
            continue;
        }
        let raw_cell = match (r.raw, raw) {
            (Some((peers::RAWGO, _, _)), Some(_)) => format!("{} (raw Go)", cell(raw)),
            (Some((_, w, m)), Some(_)) if m != r.metric => {
                format!("{} (RAW {})", cell(raw), w.to_uppercase())
            }
            _ => cell(raw),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.label,
            r.metric,
            cell(mine),
            cell(etcd),
            factor(mine, etcd),
            cell(hashi),
            factor(mine, hashi),
            raw_cell,
            factor(mine, raw),
        );
    }
    if !peer_figures {
        s.push_str("\nNo figures of the Go peers in these results.\n");
    }
    s
}

/// W5's table: three raft-rs nodes over raftwire.
fn w5_table(aggs: &[Agg]) -> String {
    let rw = pair::IMPL;
    let mut s = String::new();
    let mut rows = Vec::new();
    for size in W5_SIZES {
        for bulk in [false, true] {
            let w = Workload::W5 { size, bulk }.name();
            if find(aggs, rw, &w, "proposals_per_s").is_some() {
                rows.push((size, bulk, w));
            }
        }
    }
    if rows.is_empty() {
        return s;
    }
    let _ = writeln!(
        s,
        "\nW5: three raft-rs 0.7 `RawNode`s over raftwire, proposals at the leader (median \
         (min–max)); commit = the leader's `Ready` hands the entry over as committed:\n"
    );
    let _ = writeln!(
        s,
        "| entries | 1 MiB stream | proposals/s | commit p50 µs | commit p99 µs | commit max µs | \
         1 MiB stream MB/s | CPU µs/proposal | dropped | proposals dropped |"
    );
    let _ = writeln!(
        s,
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for (size, bulk, w) in rows {
        let c = |m: &str| cell(find(aggs, rw, &w, m));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            size_name(size),
            if bulk { "yes" } else { "no" },
            c("proposals_per_s"),
            c("commit_p50_us"),
            c("commit_p99_us"),
            c("commit_max_us"),
            c("bulk_MBps"),
            c("cpu_us_per_proposal"),
            c("dropped"),
            c("proposals_dropped"),
        );
    }
    s
}

/// Every table, as Markdown: raftwire against the peers and RAW first, then
/// raftwire against RAW with BENCH.md's targets, TLS, the curve and W5.
pub fn markdown(aggs: &[Agg]) -> String {
    let rw = pair::IMPL;
    let raw = raw_tcp::IMPL;
    let mut s = lead_table(aggs);
    let _ = writeln!(
        s,
        "\nraftwire against RAW from the same invocation, and BENCH.md's targets:\n"
    );
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
    s.push_str(&w5_table(aggs));
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
