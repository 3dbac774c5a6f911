//! The throughput-vs-payload-size plot, as a self-contained SVG (log-log,
//! one line per implementation, min–max bars, raftwire's share of RAW
//! printed at each point).

use crate::report::{Agg, find};
use crate::{CURVE_SIZES, Workload, pair, raw_tcp, size_name};
use std::fmt::Write;

const W: f64 = 800.0;
const H: f64 = 500.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
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

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The SVG document, or `None` when there are no curve points.
pub fn throughput_plot(aggs: &[Agg], subtitle: &str) -> Option<String> {
    let lines = [
        (pair::IMPL, "#d62728", series(aggs, pair::IMPL)),
        (raw_tcp::IMPL, "#1f77b4", series(aggs, raw_tcp::IMPL)),
    ];
    let all: Vec<&Point> = lines.iter().flat_map(|l| l.2.iter()).collect();
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
        r##"<text x="{}" y="28" text-anchor="middle" font-size="16" font-weight="bold">raftwire vs raw TCP: throughput vs payload size</text>"##,
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
    // Legend.
    for (i, (name, color, _)) in lines.iter().enumerate() {
        let yy = TOP + 18.0 + i as f64 * 18.0;
        let _ = writeln!(
            s,
            r##"<line x1="{}" x2="{}" y1="{yy}" y2="{yy}" stroke="{color}" stroke-width="2"/><circle cx="{}" cy="{yy}" r="4" fill="{color}"/><text x="{}" y="{}">{name}</text>"##,
            LEFT + 12.0,
            LEFT + 36.0,
            LEFT + 24.0,
            LEFT + 44.0,
            yy + 4.0
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" fill="#555">% = raftwire / raw-tcp</text>"##,
        LEFT + 12.0,
        TOP + 18.0 + 2.0 * 18.0 + 4.0
    );
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
