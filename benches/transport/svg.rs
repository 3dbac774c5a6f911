//! The throughput-vs-payload-size plot, as a self-contained SVG (log-log,
//! one line per implementation, min–max bars, raftwire's share of RAW
//! printed at each point), with W1 and W2 of raftwire and the Go peers as
//! markers at their payload sizes (the peers have no curve).

use crate::report::{Agg, find};
use crate::{CURVE_SIZES, Workload, pair, peers, raw_tcp, size_name};
use std::fmt::Write;

const W: f64 = 1000.0;
const H: f64 = 500.0;
const LEFT: f64 = 80.0;
/// Room right of the plot for the legend.
const RIGHT: f64 = 250.0;
/// Where the legend starts.
const KEY: f64 = W - RIGHT + 12.0;
const TOP: f64 = 70.0;
const BOTTOM: f64 = 60.0;

struct Point {
    size: usize,
    value: f64,
    min: f64,
    max: f64,
}

fn series(aggs: &[Agg], imp: &str) -> Vec<Point> {
    CURVE_SIZES
        .into_iter()
        .filter_map(|size| {
            let a = find(aggs, imp, &Workload::Curve(size).name(), "payload_MBps")?;
            (a.value > 0.0).then_some(Point {
                size,
                value: a.value,
                min: a.min.max(a.value * 1e-3),
                max: a.max,
            })
        })
        .collect()
}

#[derive(Clone, Copy)]
enum Shape {
    Ring,
    Diamond,
    Square,
    Triangle,
}

/// The markers: implementation, workload, legend, colour, shape, and how
/// far right of the payload size it is drawn (so that markers at one size
/// do not hide each other).
const MARKERS: [(&str, &str, &str, &str, Shape, f64); 7] = [
    (
        pair::IMPL,
        "w1",
        "raftwire W1 (Envelope), W2",
        "#d62728",
        Shape::Ring,
        0.0,
    ),
    (pair::IMPL, "w2", "", "#d62728", Shape::Ring, 0.0),
    (
        pair::IMPL,
        "w1-raft",
        "raftwire W1 (raft-rs MsgAppend)",
        "#d62728",
        Shape::Diamond,
        -12.0,
    ),
    (
        peers::ETCD,
        "w1",
        "etcd rafthttp W1, W2",
        "#2ca02c",
        Shape::Square,
        12.0,
    ),
    (peers::ETCD, "w2", "", "#2ca02c", Shape::Square, 12.0),
    (
        peers::HASHICORP,
        "w1",
        "hashicorp raft W1, W2",
        "#9467bd",
        Shape::Triangle,
        24.0,
    ),
    (peers::HASHICORP, "w2", "", "#9467bd", Shape::Triangle, 24.0),
];

struct Mark {
    imp: &'static str,
    legend: &'static str,
    color: &'static str,
    shape: Shape,
    dx: f64,
    point: Point,
}

/// The markers that have a figure: W1 at its payload size, W2 at its.
fn marks(aggs: &[Agg]) -> Vec<Mark> {
    MARKERS
        .iter()
        .filter_map(|&(imp, w, legend, color, shape, dx)| {
            let a = find(aggs, imp, w, "payload_MBps").filter(|a| a.value > 0.0)?;
            let size = match w {
                "w2" => crate::Scale::full().w2_payload,
                _ => crate::Scale::full().w1_payload,
            };
            Some(Mark {
                imp,
                legend,
                color,
                shape,
                dx,
                point: Point {
                    size,
                    value: a.value,
                    min: a.min.max(a.value * 1e-3),
                    max: a.max,
                },
            })
        })
        .collect()
}

/// A marker's SVG element centred on (x, y).
fn shape(shape: Shape, x: f64, y: f64, color: &str, title: &str) -> String {
    let t = format!("<title>{}</title>", esc(title));
    match shape {
        Shape::Ring => format!(
            r##"<circle cx="{x:.1}" cy="{y:.1}" r="6" fill="none" stroke="{color}" stroke-width="2">{t}</circle>"##
        ),
        Shape::Diamond => format!(
            r##"<polygon points="{x:.1},{:.1} {:.1},{y:.1} {x:.1},{:.1} {:.1},{y:.1}" fill="white" stroke="{color}" stroke-width="2">{t}</polygon>"##,
            y - 6.0,
            x + 6.0,
            y + 6.0,
            x - 6.0
        ),
        Shape::Square => format!(
            r##"<rect x="{:.1}" y="{:.1}" width="10" height="10" fill="{color}">{t}</rect>"##,
            x - 5.0,
            y - 5.0
        ),
        Shape::Triangle => format!(
            r##"<polygon points="{x:.1},{:.1} {:.1},{:.1} {:.1},{:.1}" fill="{color}">{t}</polygon>"##,
            y - 6.0,
            x + 6.0,
            y + 5.0,
            x - 6.0,
            y + 5.0
        ),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The SVG document, or `None` when there are no curve points and no
/// markers.
pub fn throughput_plot(aggs: &[Agg], subtitle: &str) -> Option<String> {
    let lines = [
        (pair::IMPL, "#d62728", series(aggs, pair::IMPL)),
        (raw_tcp::IMPL, "#1f77b4", series(aggs, raw_tcp::IMPL)),
    ];
    let marks = marks(aggs);
    let all: Vec<&Point> = lines
        .iter()
        .flat_map(|l| l.2.iter())
        .chain(marks.iter().map(|m| &m.point))
        .collect();
    if all.is_empty() {
        return None;
    }
    let lo = all.iter().map(|p| p.min).fold(f64::INFINITY, f64::min);
    let hi = all.iter().map(|p| p.max).fold(0.0, f64::max);
    let (y0, y1) = (
        lo.log10().floor(),
        hi.log10().ceil().max(lo.log10().floor() + 1.0),
    );
    // Half a step of margin either side.
    let (x0, x1) = (
        (CURVE_SIZES[0] as f64).log2() - 1.0,
        (CURVE_SIZES[CURVE_SIZES.len() - 1] as f64).log2() + 1.0,
    );
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let x = |size: usize| LEFT + ((size as f64).log2() - x0) / (x1 - x0) * pw;
    let y = |v: f64| TOP + (1.0 - (v.log10() - y0) / (y1 - y0)) * ph;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"##
    );
    let _ = writeln!(s, r##"<rect width="{W}" height="{H}" fill="white"/>"##);
    let _ = writeln!(
        s,
        r##"<text x="{}" y="28" text-anchor="middle" font-size="16" font-weight="bold">raftwire vs raw TCP and the Go peers: throughput vs payload size</text>"##,
        W / 2.0
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="48" text-anchor="middle" fill="#555">{}</text>"##,
        W / 2.0,
        esc(subtitle)
    );
    // Horizontal grid: decades labelled, 2 and 5 faint.
    let mut decade = y0 as i32;
    while decade as f64 <= y1 {
        let base = 10f64.powi(decade);
        for (k, strong) in [(1.0, true), (2.0, false), (5.0, false)] {
            let v = base * k;
            if v.log10() > y1 + 1e-9 {
                continue;
            }
            let yy = y(v);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="{}"/>"##,
                W - RIGHT,
                if strong { "#ccc" } else { "#eee" }
            );
            {
                let _ = writeln!(
                    s,
                    r##"<text x="{}" y="{:.1}" text-anchor="end" fill="{}">{}</text>"##,
                    LEFT - 6.0,
                    yy + 4.0,
                    if strong { "#000" } else { "#888" },
                    fmt_mbps(v)
                );
            }
        }
        decade += 1;
    }
    // Vertical grid at each payload size.
    for size in CURVE_SIZES {
        let xx = x(size);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{TOP}" y2="{}" stroke="#eee"/>"##,
            H - BOTTOM
        );
        let _ = writeln!(
            s,
            r##"<text x="{xx:.1}" y="{}" text-anchor="middle">{}</text>"##,
            H - BOTTOM + 18.0,
            size_name(size)
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle">payload per message</text>"##,
        LEFT + pw / 2.0,
        H - 15.0
    );
    let _ = writeln!(
        s,
        r##"<text transform="translate(20 {}) rotate(-90)" text-anchor="middle">payload MB/s (log scale)</text>"##,
        TOP + ph / 2.0
    );
    for (name, color, pts) in &lines {
        if pts.is_empty() {
            continue;
        }
        let path: Vec<String> = pts
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.size), y(p.value)))
            .collect();
        let _ = writeln!(
            s,
            r##"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"><title>{name}</title></polyline>"##,
            path.join(" ")
        );
        for p in pts {
            let (xx, yy) = (x(p.size), y(p.value));
            let _ = writeln!(
                s,
                r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{:.1}" y2="{:.1}" stroke="{color}"/>"##,
                y(p.min),
                y(p.max)
            );
            let _ = writeln!(
                s,
                r##"<circle cx="{xx:.1}" cy="{yy:.1}" r="4" fill="{color}"><title>{name} {}: {:.0} MB/s (min {:.0}, max {:.0})</title></circle>"##,
                size_name(p.size),
                p.value,
                p.min,
                p.max
            );
        }
    }
    // raftwire's share of RAW at each size.
    let (rw, raw) = (&lines[0].2, &lines[1].2);
    for p in rw {
        if let Some(b) = raw.iter().find(|b| b.size == p.size) {
            let r = p.value / b.value * 100.0;
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="{}" font-size="11">{}</text>"##,
                x(p.size),
                y(p.value) + 18.0,
                lines[0].1,
                if r < 10.0 {
                    format!("{r:.1} %")
                } else {
                    format!("{r:.0} %")
                }
            );
        }
    }
    // W1 and W2 markers, with min-max bars.
    for m in &marks {
        let (xx, yy) = (x(m.point.size) + m.dx, y(m.point.value));
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{:.1}" y2="{:.1}" stroke="{}"/>"##,
            y(m.point.min),
            y(m.point.max),
            m.color
        );
        let title = format!(
            "{} {}: {:.0} MB/s (min {:.0}, max {:.0})",
            m.imp,
            size_name(m.point.size),
            m.point.value,
            m.point.min,
            m.point.max
        );
        let _ = writeln!(s, "{}", shape(m.shape, xx, yy, m.color, &title));
    }
    // Legend, right of the plot.
    for (i, (name, color, _)) in lines.iter().enumerate() {
        let yy = TOP + 18.0 + i as f64 * 18.0;
        let _ = writeln!(
            s,
            r##"<line x1="{}" x2="{}" y1="{yy}" y2="{yy}" stroke="{color}" stroke-width="2"/><circle cx="{}" cy="{yy}" r="4" fill="{color}"/><text x="{}" y="{}">{name}</text>"##,
            KEY,
            KEY + 24.0,
            KEY + 12.0,
            KEY + 32.0,
            yy + 4.0
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" fill="#555">% = raftwire / raw-tcp</text>"##,
        KEY,
        TOP + 18.0 + 2.0 * 18.0 + 4.0
    );
    for (i, m) in marks.iter().filter(|m| !m.legend.is_empty()).enumerate() {
        let yy = TOP + 18.0 + (3 + i) as f64 * 18.0;
        let _ = writeln!(
            s,
            r##"{}<text x="{}" y="{}">{}</text>"##,
            shape(m.shape, KEY + 12.0, yy, m.color, m.legend),
            KEY + 32.0,
            yy + 4.0,
            esc(m.legend)
        );
    }
    s.push_str("</svg>\n");
    Some(s)
}

fn fmt_mbps(v: f64) -> String {
    if v >= 1000.0 {
        format!("{}k", v / 1000.0)
    } else {
        format!("{v}")
    }
}
