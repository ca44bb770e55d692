//! Pictures and reports of the training examples: loss curves (SVG), prediction overlays
//! (PNG), a small JSON writer.
#![allow(dead_code)] // each example uses a part of it

use std::fmt::Write as _;
use std::path::Path;

/// Class colours of overlays (class 0, background, is not painted).
const PALETTE: [[u8; 3]; 6] = [
    [0, 0, 0],
    [255, 80, 60],
    [60, 200, 90],
    [70, 130, 255],
    [255, 200, 40],
    [200, 80, 255],
];

/// A loss curve: the training loss of every step (left axis) and, if given, a validation
/// score per epoch (right axis, 0–1), as an SVG file.
pub fn write_curve_svg(
    path: &Path,
    title: &str,
    step_loss: &[f32],
    epoch_score: &[(usize, f64)],
    score_name: &str,
) -> std::io::Result<()> {
    let (w, h, pad) = (640.0, 360.0, 48.0);
    let max_loss = step_loss.iter().copied().fold(f32::MIN, f32::max).max(1e-6) as f64;
    let n = step_loss.len().max(2) as f64;
    let x = |i: f64| pad + (w - 2.0 * pad) * i / (n - 1.0);
    let y = |v: f64, max: f64| h - pad - (h - 2.0 * pad) * (v / max).clamp(0.0, 1.0);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{pad}" y="24" font-size="14">{title}</text>"#
    );
    let _ = writeln!(
        svg,
        r#"<line x1="{pad}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{b}" stroke="black"/>"#,
        b = h - pad,
        r = w - pad
    );
    let _ = writeln!(
        svg,
        r#"<text x="4" y="{}" fill="steelblue">{max_loss:.2}</text><text x="4" y="{}" fill="steelblue">0</text>"#,
        pad + 4.0,
        h - pad
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}">step ({} in all)</text>"#,
        w / 2.0 - 40.0,
        h - 12.0,
        step_loss.len()
    );
    let points: Vec<String> = step_loss
        .iter()
        .enumerate()
        .map(|(i, &l)| format!("{:.1},{:.1}", x(i as f64), y(l as f64, max_loss)))
        .collect();
    let _ = writeln!(
        svg,
        r#"<polyline fill="none" stroke="steelblue" stroke-width="1.5" points="{}"/>"#,
        points.join(" ")
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" fill="steelblue">training loss</text>"#,
        w - pad - 200.0,
        pad - 8.0
    );
    if !epoch_score.is_empty() {
        let pts: Vec<String> = epoch_score
            .iter()
            .map(|&(step, s)| format!("{:.1},{:.1}", x(step as f64), y(s, 1.0)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="darkorange" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        );
        for p in &pts {
            let (cx, cy) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(
                svg,
                r#"<circle cx="{cx}" cy="{cy}" r="3" fill="darkorange"/>"#
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" fill="darkorange">validation {score_name} (right axis, 0–1)</text><text x="{}" y="{}" fill="darkorange">1</text>"#,
            w - pad - 200.0,
            pad + 8.0,
            w - pad + 4.0,
            pad + 4.0
        );
    }
    svg.push_str("</svg>\n");
    std::fs::write(path, svg)
}

/// Grey (or RGB) image panel from a `(C, H, W)` image in `[0, 1]`.
fn image_rgb(image: &[f32], channels: usize, h: usize, w: usize) -> Vec<[f32; 3]> {
    (0..h * w)
        .map(|p| {
            let c = |k: usize| image[(k.min(channels - 1)) * h * w + p].clamp(0.0, 1.0);
            [c(0), c(1), c(2)]
        })
        .collect()
}

/// One PNG with three panels side by side: the image, the ground truth over it, the
/// prediction over it (classes in colour).
pub fn write_overlay(
    path: &Path,
    image: &[f32],
    channels: usize,
    h: usize,
    w: usize,
    truth: &[u32],
    pred: &[u32],
) -> unetpp::Result<()> {
    let base = image_rgb(image, channels, h, w);
    let gap = 4;
    let width = 3 * w + 2 * gap;
    let mut rgb = vec![255u8; width * h * 3];
    for y in 0..h {
        for x in 0..w {
            let p = y * w + x;
            for (panel, labels) in [(0, None), (1, Some(truth)), (2, Some(pred))] {
                let mut c = base[p];
                if let Some(l) = labels {
                    let class = l[p] as usize;
                    if class > 0 {
                        let col = PALETTE[class % PALETTE.len()];
                        for k in 0..3 {
                            c[k] = 0.45 * c[k] + 0.55 * col[k] as f32 / 255.0;
                        }
                    }
                }
                let o = (y * width + panel * (w + gap) + x) * 3;
                for k in 0..3 {
                    rgb[o + k] = (c[k] * 255.0).round() as u8;
                }
            }
        }
    }
    unetpp::data::image_io::write_rgb(path, &rgb, width, h)
}

/// A JSON value of a report.
pub enum Json {
    Num(f64),
    Str(String),
    Nums(Vec<f64>),
}

/// Writes a flat JSON object.
pub fn write_json(path: &Path, fields: &[(&str, Json)]) -> std::io::Result<()> {
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let num = |v: f64| {
        if v.is_finite() {
            format!("{v}")
        } else {
            "null".to_string()
        }
    };
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Json::Num(x) => num(*x),
                Json::Str(s) => format!("\"{}\"", esc(s)),
                Json::Nums(xs) => format!(
                    "[{}]",
                    xs.iter().map(|&x| num(x)).collect::<Vec<_>>().join(", ")
                ),
            };
            format!("  \"{}\": {v}", esc(k))
        })
        .collect();
    std::fs::write(path, format!("{{\n{}\n}}\n", body.join(",\n")))
}
