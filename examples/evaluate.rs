//! Scores a trained or imported network on a labelled folder: per-image, per-class IoU and
//! Dice to a CSV file, and a summary per class.
//!
//! ```text
//! cargo run --release --example evaluate -- --weights runs/train/model.safetensors \
//!     --images data/test/images --masks data/test/masks [--csv scores.csv] \
//!     [--window 256 --overlap 0.25] [--tta flips] [--mode accurate|last|fast:J] [--level L]
//! ```
//!
//! Images and masks are paired by name as `train` pairs them (`masks/NAME.*` or
//! `masks/NAME_mask.*`; png, tif, tiff, jpg). Masks hold class indices; for a network with
//! one output channel, or two classes, any mask value above 0 is the foreground (`0/255`
//! masks work), unless `--class-index-masks` says the values are indices.
//!
//! The CSV has a row per image and class (background included): the pixel counts (in both
//! the prediction and the truth, in the prediction, in the truth) and that image's IoU and
//! Dice. The
//! summary gives, per class, the data-set IoU and Dice (pixel counts pooled over all images)
//! and the mean and median over images of the per-image scores (an image where a class is
//! absent from both the truth and the prediction scores 1 for it, as in
//! `unetpp::metrics`).

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use clap::Parser;
use unetpp::data::folder::{ImageFolder, MaskEncoding};
use unetpp::data::Dataset;
use unetpp::metrics::{labels_from_probabilities, SegmentationMetrics};

#[path = "support/cli.rs"]
mod cli;
#[path = "support/infer.rs"]
mod infer;
use infer::{AnyError, InferenceArgs};

/// Scores a network on a labelled folder: per-image IoU / Dice CSV and a per-class summary.
#[derive(Parser, Debug)]
#[command(args_override_self = true)]
struct Args {
    /// Folder of images
    #[arg(long, value_name = "DIR")]
    images: PathBuf,
    /// Folder of label masks (same names, or NAME_mask)
    #[arg(long, value_name = "DIR")]
    masks: PathBuf,
    /// Per-image scores (CSV)
    #[arg(long, value_name = "FILE", default_value = "scores.csv")]
    csv: PathBuf,
    /// Read two-class masks as indices (0, 1) rather than background / anything above 0
    #[arg(long)]
    class_index_masks: bool,
    #[command(flatten)]
    inference: InferenceArgs,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), AnyError> {
    let args = Args::parse();
    unetpp::device::keep_freed_memory(1 << 30);
    let device = Device::Cpu;
    let loaded = infer::load(&args.inference, &device)?;
    let classes = loaded.classes.max(2);
    let encoding = if classes == 2 && !args.class_index_masks {
        MaskEncoding::Binary
    } else {
        MaskEncoding::ClassIndex {
            num_classes: classes,
        }
    };
    let folder = ImageFolder::open(&args.images, &args.masks, encoding)?
        .normalize(args.inference.normalization())?;
    let segmenter = args.inference.segmenter(loaded.net.as_ref())?;
    println!("{}", loaded.description);
    println!("{}", args.inference.describe());
    println!(
        "{} image(s) in {}, masks in {} ({encoding:?})",
        folder.len(),
        args.images.display(),
        args.masks.display()
    );

    let bars = infer::Bars::new(folder.len(), false)?;
    let mut total = SegmentationMetrics::new(classes)?;
    let mut per_image: Vec<(String, SegmentationMetrics)> = Vec::with_capacity(folder.len());
    let started = Instant::now();
    for (i, (image_path, _)) in folder.pairs().iter().enumerate() {
        let sample = folder.get(i)?;
        let (c, h, w) = (sample.channels, sample.height, sample.width);
        let input = Tensor::from_vec(sample.image, (1, c, h, w), &device)?;
        let target = Tensor::from_vec(sample.mask, (1, h, w), &device)?;
        let probs = bars.probabilities(&segmenter, &input, image_path)?;
        let pred = labels_from_probabilities(&probs)?;
        let mut one = SegmentationMetrics::new(classes)?;
        one.update(&pred, &target)?;
        total.update(&pred, &target)?;
        let name = image_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        per_image.push((name.unwrap_or_default(), one));
    }
    bars.finish();
    let seconds = started.elapsed().as_secs_f64();

    write_csv(&args.csv, &per_image, classes)?;
    println!(
        "\n{} image(s) in {seconds:.1} s; per-image scores in {}\n",
        per_image.len(),
        args.csv.display()
    );
    println!(
        "{:>6} {:>9} {:>9} {:>10} {:>10} {:>11} {:>11}",
        "class", "IoU", "Dice", "mean IoU", "mean Dice", "median IoU", "median Dice"
    );
    for class in 0..classes {
        let ious: Vec<f64> = per_image.iter().map(|(_, m)| m.iou(class)).collect();
        let dices: Vec<f64> = per_image.iter().map(|(_, m)| m.dice(class)).collect();
        println!(
            "{class:>6} {:>9.4} {:>9.4} {:>10.4} {:>10.4} {:>11.4} {:>11.4}",
            total.iou(class),
            total.dice(class),
            mean(&ious),
            mean(&dices),
            median(&ious),
            median(&dices)
        );
    }
    println!(
        "foreground: data-set IoU {:.4}, Dice {:.4}; mean per-image IoU {:.4}, Dice {:.4}",
        total.mean_iou(),
        total.mean_dice(),
        total.mean_image_iou(),
        total.mean_image_dice()
    );
    Ok(())
}

fn write_csv(
    path: &std::path::Path,
    rows: &[(String, SegmentationMetrics)],
    classes: usize,
) -> Result<(), AnyError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?,
    );
    writeln!(f, "image,class,intersection,predicted,target,iou,dice")?;
    for (name, m) in rows {
        for class in 0..classes {
            let n = m.counts(class);
            writeln!(
                f,
                "{},{class},{},{},{},{:.6},{:.6}",
                csv_field(name),
                n.intersection,
                n.predicted,
                n.target,
                m.iou(class),
                m.dice(class)
            )?;
        }
    }
    f.flush()?;
    Ok(())
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}
