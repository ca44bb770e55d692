//! Pictures and reports of the training examples: loss and score curves (SVG, drawn with
//! plotters), prediction overlays (PNG), a small JSON writer.
#![allow(dead_code)] // each example uses a part of it

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

/// Class colours of overlays (class 0, background, is not painted).
const PALETTE: [[u8; 3]; 6] = [
    [0, 0, 0],
    [255, 80, 60],
    [60, 200, 90],
    [70, 130, 255],
    [255, 200, 40],
    [200, 80, 255],
];

/// The curves of one training run: the loss of every step and, per epoch, validation scores.
pub struct Curves<'a> {
    /// The chart's title.
    pub title: &'a str,
    /// The training loss of every step, in order.
    pub step_loss: &'a [f32],
    /// Steps in one epoch: puts the steps on the epoch axis and groups them into epoch means.
    pub steps_per_epoch: usize,
    /// Validation scores in `[0, 1]`, one per epoch from the first, by name (`"IoU"`, ...);
    /// none: the chart has the loss panel only.
    pub scores: &'a [(&'a str, &'a [f64])],
}

/// tab10's first colours: every step's loss, the epoch means, then one per score.
const LINE_COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
];

/// Fonts of the tick labels and legends, and of the axis names (plotters' SVG backend writes
/// `font-size` as the size given / 1.24).
const LABEL_FONT: (&str, u32) = ("sans-serif", 16);
const AXIS_FONT: (&str, u32) = ("sans-serif", 18);

/// Writes `curves` as an SVG chart: the training loss over epochs (every step, and each
/// epoch's mean at the epoch's middle), then, in a second panel, the validation scores at
/// the end of each epoch.
pub fn write_curves_svg(path: &Path, curves: &Curves) -> std::io::Result<()> {
    draw_curves(path, curves).map_err(|e| std::io::Error::other(e.to_string()))
}

/// One curve of a panel.
struct Line {
    label: String,
    points: Vec<(f64, f64)>,
    style: ShapeStyle,
    markers: bool,
}

fn draw_curves(path: &Path, c: &Curves) -> Result<(), Box<dyn std::error::Error>> {
    let panels = if c.scores.is_empty() { 1 } else { 2 };
    let root = SVGBackend::new(path, (800, 40 + 300 * panels)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(c.title, ("sans-serif", 24))?;
    let areas = root.split_evenly((panels as usize, 1));

    let per_epoch = c.steps_per_epoch.max(1);
    let scored_epochs = c.scores.iter().map(|(_, s)| s.len()).max().unwrap_or(0);
    let epochs = (c.step_loss.len().div_ceil(per_epoch))
        .max(scored_epochs)
        .max(1) as f64;
    let steps: Vec<(f64, f64)> = c
        .step_loss
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_finite())
        .map(|(i, &l)| ((i + 1) as f64 / per_epoch as f64, l as f64))
        .collect();
    let means: Vec<(f64, f64)> = c
        .step_loss
        .chunks(per_epoch)
        .enumerate()
        .map(|(e, chunk)| {
            let mean = chunk.iter().map(|&l| l as f64).sum::<f64>() / chunk.len() as f64;
            (e as f64 + chunk.len() as f64 / per_epoch as f64 / 2.0, mean)
        })
        .filter(|(_, mean)| mean.is_finite())
        .collect();
    let max_loss = steps.iter().map(|p| p.1).fold(1e-6, f64::max);
    let [step_colour, mean_colour, score_colours @ ..] = LINE_COLOURS;
    let loss_lines = [
        Line {
            label: "every step".into(),
            points: steps,
            style: step_colour.mix(0.35).into(),
            markers: false,
        },
        Line {
            label: "epoch mean".into(),
            points: means,
            style: mean_colour.stroke_width(2),
            markers: true,
        },
    ];
    draw_panel(
        &areas[0],
        (epochs, max_loss * 1.05),
        "training loss",
        &loss_lines,
    )?;

    if let Some(area) = areas.get(1) {
        let score_lines: Vec<Line> = c
            .scores
            .iter()
            .zip(score_colours.iter().cycle())
            .map(|((name, values), colour)| Line {
                label: format!("validation {name}"),
                points: values
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| v.is_finite())
                    .map(|(e, &v)| ((e + 1) as f64, v))
                    .collect(),
                style: colour.stroke_width(2),
                markers: true,
            })
            .collect();
        draw_panel(area, (epochs, 1.0), "validation score", &score_lines)?;
    }
    root.present()?;
    Ok(())
}

/// One panel: `lines` over `0..x_max` epochs and `0..y_max`, with a legend in the corner
/// that they cross least.
fn draw_panel(
    area: &DrawingArea<SVGBackend, Shift>,
    (x_max, y_max): (f64, f64),
    y_desc: &str,
    lines: &[Line],
) -> Result<(), Box<dyn std::error::Error>> {
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .margin_right(24)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .label_style(LABEL_FONT)
        .axis_desc_style(AXIS_FONT)
        .x_desc("epoch")
        .y_desc(y_desc)
        .draw()?;
    for line in lines {
        let style = line.style;
        let series = LineSeries::new(line.points.iter().copied(), style);
        let series = if line.markers {
            series.point_size(3)
        } else {
            series
        };
        chart
            .draw_series(series)?
            .label(&line.label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .position(free_corner(lines, x_max, y_max))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(LABEL_FONT)
        .draw()?;
    Ok(())
}

/// The corner whose legend box (about 30 % of the panel's width and height) the lines cross
/// least, upper right first among equals; each segment is sampled at 8 points so that a line
/// between two far epochs counts too.
fn free_corner(lines: &[Line], x_max: f64, y_max: f64) -> SeriesLabelPosition {
    let samples: Vec<(f64, f64)> = lines
        .iter()
        .flat_map(|line| {
            let p = &line.points;
            let single = (p.len() == 1).then(|| p[0]);
            p.windows(2)
                .flat_map(|w| {
                    (0..=8).map(move |k| {
                        let t = k as f64 / 8.0;
                        (
                            w[0].0 + t * (w[1].0 - w[0].0),
                            w[0].1 + t * (w[1].1 - w[0].1),
                        )
                    })
                })
                .chain(single)
        })
        .map(|(x, y)| (x / x_max, y / y_max))
        .collect();
    let covered = |right: bool, upper: bool| {
        samples
            .iter()
            .filter(|&&(u, v)| {
                (if right { u > 0.7 } else { u < 0.3 }) && (if upper { v > 0.7 } else { v < 0.3 })
            })
            .count()
    };
    [
        (SeriesLabelPosition::UpperRight, true, true),
        (SeriesLabelPosition::LowerRight, true, false),
        (SeriesLabelPosition::UpperLeft, false, true),
        (SeriesLabelPosition::LowerLeft, false, false),
    ]
    .into_iter()
    .min_by_key(|(_, right, upper)| covered(*right, *upper))
    .map(|(corner, ..)| corner)
    .unwrap_or(SeriesLabelPosition::UpperRight)
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

/// The image (grey or RGB, values clipped to `[0, 1]`) as RGB with every pixel of a class
/// above 0 blended with the class's colour, interleaved bytes: one overlay panel.
pub fn tinted(image: &[f32], channels: usize, h: usize, w: usize, labels: &[u32]) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(h * w * 3);
    for (mut c, &class) in image_rgb(image, channels, h, w).into_iter().zip(labels) {
        if class > 0 {
            let col = PALETTE[class as usize % PALETTE.len()];
            for k in 0..3 {
                c[k] = 0.45 * c[k] + 0.55 * col[k] as f32 / 255.0;
            }
        }
        rgb.extend(c.map(|v| (v * 255.0).round() as u8));
    }
    rgb
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
    let none = vec![0u32; h * w];
    let panels = [none.as_slice(), truth, pred].map(|l| tinted(image, channels, h, w, l));
    let gap = 4;
    let width = 3 * w + 2 * gap;
    let mut rgb = vec![255u8; width * h * 3];
    for y in 0..h {
        for (i, panel) in panels.iter().enumerate() {
            let o = (y * width + i * (w + gap)) * 3;
            rgb[o..o + w * 3].copy_from_slice(&panel[y * w * 3..(y + 1) * w * 3]);
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
