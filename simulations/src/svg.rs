//! Minimal SVG charts for the report (a line chart and a bar chart).
//!
//! Hand-written on purpose: plotters lays out text through font-kit and the system's
//! fontconfig libraries, which a fresh machine does not have; an SVG viewer lays out our
//! `<text>` itself.

use std::fmt::Write as _;

const W: f64 = 860.0;
const H: f64 = 360.0;
const L: f64 = 70.0;
const R: f64 = 150.0;
const T: f64 = 40.0;
const B: f64 = 50.0;

pub struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    pub points: Vec<(f64, f64)>,
}

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0] {
        if m * mag >= v {
            return m * mag;
        }
    }
    10.0 * mag
}

fn frame(out: &mut String, title: &str, x_label: &str, y_label: &str, x_max: f64, y_max: f64) {
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{}" y="22" font-size="15" text-anchor="middle">{title}</text>"#,
        W / 2.0
    );
    let (pw, ph) = (W - L - R, H - T - B);
    for i in 0..=5 {
        let f = i as f64 / 5.0;
        let y = T + ph - f * ph;
        let x = L + f * pw;
        let _ = write!(
            out,
            r##"<line x1="{L}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            L + pw,
            L - 6.0,
            y + 4.0,
            fmt_num(f * y_max),
        );
        if x_max > 0.0 {
            let _ = write!(
                out,
                r#"<text x="{x}" y="{}" text-anchor="middle">{}</text>"#,
                T + ph + 18.0,
                fmt_num(f * x_max)
            );
        }
    }
    let _ = write!(
        out,
        r#"<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="black"/><text x="{}" y="{}" text-anchor="middle">{x_label}</text><text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{y_label}</text>"#,
        L + pw / 2.0,
        H - 10.0,
        T + ph / 2.0,
        T + ph / 2.0
    );
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A line chart; `markers` are vertical lines (x, label), e.g. a kill.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series<'_>],
    markers: &[(f64, String)],
) -> String {
    let x_max = nice_max(
        series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .fold(0.0, f64::max),
    );
    let y_max = nice_max(
        series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(0.0, f64::max),
    );
    let mut out = String::new();
    frame(&mut out, title, x_label, y_label, x_max, y_max);
    let (pw, ph) = (W - L - R, H - T - B);
    let px = |x: f64| L + x / x_max * pw;
    let py = |y: f64| T + ph - y / y_max * ph;
    for (x, label) in markers {
        let _ = write!(
            out,
            r##"<line x1="{0}" y1="{T}" x2="{0}" y2="{1}" stroke="#c00" stroke-dasharray="5,4"/><text x="{2}" y="{3}" fill="#c00">{label}</text>"##,
            px(*x),
            T + ph,
            px(*x) + 4.0,
            T + 14.0
        );
    }
    for (i, s) in series.iter().enumerate() {
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = write!(
            out,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/><rect x="{}" y="{}" width="14" height="4" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            s.color,
            pts.join(" "),
            W - R + 12.0,
            T + 10.0 + i as f64 * 20.0,
            s.color,
            W - R + 30.0,
            T + 15.0 + i as f64 * 20.0,
            s.name
        );
    }
    out.push_str("</svg>\n");
    out
}

/// A bar chart of (label, value).
pub fn bar_chart(title: &str, x_label: &str, y_label: &str, bars: &[(String, f64)]) -> String {
    let y_max = nice_max(bars.iter().map(|b| b.1).fold(0.0, f64::max));
    let mut out = String::new();
    frame(&mut out, title, x_label, y_label, 0.0, y_max);
    let (pw, ph) = (W - L - R, H - T - B);
    let n = bars.len().max(1) as f64;
    let bw = pw / n;
    for (i, (label, v)) in bars.iter().enumerate() {
        let h = v / y_max * ph;
        let x = L + i as f64 * bw;
        let _ = write!(
            out,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="#3b7dd8"/><text x="{:.1}" y="{}" text-anchor="middle" font-size="10">{label}</text>"##,
            x + 1.0,
            T + ph - h,
            (bw - 2.0).max(1.0),
            x + bw / 2.0,
            T + ph + 16.0
        );
    }
    out.push_str("</svg>\n");
    out
}
