//! Trains UNet++ (with or without deep supervision), U-Net or the wide U-Net on the synthetic
//! data set or on a folder of image / mask pairs (PNG, TIFF or JPEG images; PNG or TIFF masks).
//!
//! ```text
//! cargo run --release --example train -- [--model unetpp-ds|unetpp|unet|wide-unet]
//!     [--images DIR --masks DIR [--percentiles 1,99.8]] [--classes 2] [--size 64]
//!     [--train 192] [--val 48] [--epochs 3] [--batch 8] [--lr 3e-4] [--weight-decay 0]
//!     [--widths 32,64,128,256,512] [--augment] [--seed 0] [--out runs/train] [--resume]
//!     [--report FILE.json]
//! ```
//!
//! With a progress bar showing loss and throughput, it writes to `--out`: `last.safetensors`
//! (a checkpoint after every epoch, atomically; `--resume` continues from it),
//! `model.safetensors` (the final weights), `metrics.csv` (per-epoch training loss and
//! validation IoU / Dice), `steps.csv` (every step's loss), `loss.svg` (a chart of two panels:
//! the training loss of every step and its epoch means; validation IoU and Dice per epoch),
//! and `overlays/val_*.png` (image, ground truth and prediction side by side). `--report`
//! writes the final metrics as JSON. UNet++ with deep supervision is scored in accurate mode (mean
//! of the heads); the other networks on their only head.
//!
//! Without `--images`, it trains on the seeded synthetic set (`--classes 2`: binary; more:
//! one class per shape). A folder's masks are binary (any value > 0) with `--classes 2`,
//! class indices otherwise; a fifth of it (at most `--val`) is held out for validation.
//! The defaults take about a minute on two CPU cores.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};
use candle_nn::{ParamsAdamW, VarBuilder, VarMap};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use unetpp::data::folder::{ImageFolder, MaskEncoding};
use unetpp::data::loader::{Augment, DataLoader};
use unetpp::data::normalize::Normalize;
use unetpp::data::synthetic::{SyntheticConfig, SyntheticDataset};
use unetpp::data::{Dataset, Subset};
use unetpp::loss::{BceDice, CeDice, DeepSupervisionLoss, SegmentationLoss};
use unetpp::prelude::{MultiHeadSegmenter, UNet, UNetPlusPlus, UNetPlusPlusConfig};
use unetpp::train::{evaluate, predict, save_checkpoint, train_step, AdamW, Checkpoint, Mode};

#[path = "support/cli.rs"]
mod cli;
#[path = "support/report.rs"]
mod report;
use report::{write_curves_svg, write_json, write_overlay, Curves, Json};

type AnyError = Box<dyn std::error::Error>;

#[derive(Clone, Copy, PartialEq, Debug, ValueEnum)]
enum Kind {
    #[value(name = "unetpp-ds")]
    UNetPPDs,
    #[value(name = "unetpp")]
    UNetPP,
    #[value(name = "unet")]
    UNet,
    #[value(name = "wide-unet")]
    WideUNet,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::UNetPPDs => "unetpp-ds",
            Kind::UNetPP => "unetpp",
            Kind::UNet => "unet",
            Kind::WideUNet => "wide-unet",
        }
    }
}

/// Trains UNet++, U-Net or the wide U-Net on the synthetic data set or on a folder of
/// image / mask pairs.
#[derive(Parser)]
#[command(args_override_self = true, allow_negative_numbers = true)]
struct Args {
    /// Network to train (unetpp-ds: UNet++ with deep supervision)
    #[arg(long, value_enum, default_value_t = Kind::UNetPPDs)]
    model: Kind,
    /// Folder of images, PNG, TIFF or JPEG (with --masks; default: the synthetic set)
    #[arg(long, value_name = "DIR", requires = "masks")]
    images: Option<PathBuf>,
    /// Folder of PNG or TIFF masks, paired with the images by file stem
    #[arg(long, value_name = "DIR", requires = "images")]
    masks: Option<PathBuf>,
    /// Normalise each folder image between these percentiles of each channel (1,99.8 suits
    /// 16-bit microscopy; default: divide by the type's maximum)
    #[arg(long, value_name = "LOW,HIGH", requires = "images", value_parser = cli::percentiles)]
    percentiles: Option<Normalize>,
    /// Classes, background included (2: binary)
    #[arg(long, default_value_t = 2, value_parser = cli::at_least(2))]
    classes: usize,
    /// Side of the synthetic images
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Synthetic training images
    #[arg(long, default_value_t = 192)]
    train: usize,
    /// Validation images (of a folder: at most a fifth of it)
    #[arg(long, default_value_t = 48, value_parser = cli::at_least(1))]
    val: usize,
    /// Epochs
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Images per batch
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Learning rate (AdamW)
    #[arg(long, default_value = "3e-4")]
    lr: f64,
    /// Weight decay (AdamW)
    #[arg(long, default_value = "0")]
    weight_decay: f64,
    /// Channel widths per level, comma-separated (default: the network's preset)
    #[arg(long, value_name = "W,W,...", value_parser = cli::widths)]
    widths: Option<::std::vec::Vec<usize>>,
    /// Random flips and rotations of the training images
    #[arg(long)]
    augment: bool,
    /// Seed of the data, the initial weights and the batch order
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Folder of the checkpoints, CSV files, curves and overlays
    #[arg(long, value_name = "DIR", default_value = "runs/train")]
    out: PathBuf,
    /// Continue from <out>/last.safetensors
    #[arg(long)]
    resume: bool,
    /// Write the final metrics as JSON to this file
    #[arg(long, value_name = "FILE.json")]
    report: Option<PathBuf>,
}

/// The network of `kind` for `in_channels` and `classes` (background included).
fn build_model(
    kind: Kind,
    in_channels: usize,
    classes: usize,
    widths: Option<&[usize]>,
    vb: VarBuilder,
) -> unetpp::Result<Box<dyn MultiHeadSegmenter>> {
    let outputs = if classes == 2 { 1 } else { classes };
    let cfg = match kind {
        Kind::UNetPPDs => UNetPlusPlusConfig::paper().deep_supervision(true),
        Kind::UNetPP => UNetPlusPlusConfig::paper().deep_supervision(false),
        Kind::UNet => UNet::paper(),
        Kind::WideUNet => UNet::wide(),
    };
    let cfg = cfg.in_channels(in_channels).num_classes(outputs);
    let cfg = match widths {
        Some(w) => cfg.depth(w.len() - 1).widths(w.to_vec()),
        None => cfg,
    }
    .build()?;
    Ok(match kind {
        Kind::UNetPPDs | Kind::UNetPP => Box::new(UNetPlusPlus::new(&cfg, vb)?),
        Kind::UNet | Kind::WideUNet => Box::new(UNet::new(&cfg, vb)?),
    })
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), AnyError> {
    let device = unetpp::device::best_device(0)?;
    // Training allocates and frees large buffers at every step: let glibc keep them instead of
    // page-faulting them back each time (docs/PERFORMANCE.md; a no-op with other allocators).
    unetpp::device::keep_freed_memory(usize::MAX);
    let data: Arc<dyn Dataset> = match (&args.images, &args.masks) {
        (Some(images), Some(masks)) => {
            let encoding = if args.classes == 2 {
                MaskEncoding::Binary
            } else {
                MaskEncoding::ClassIndex {
                    num_classes: args.classes,
                }
            };
            let folder = ImageFolder::open(images, masks, encoding)?;
            Arc::new(folder.normalize(args.percentiles.unwrap_or_default())?)
        }
        _ => Arc::new(SyntheticDataset::new(
            SyntheticConfig::builder()
                .samples(args.train + args.val)
                .height(args.size)
                .width(args.size)
                .num_classes(args.classes)
                .seed(args.seed)
                .build()?,
        )?),
    };
    let n = data.len();
    let n_val = if args.images.is_some() {
        (n / 5).clamp(1, args.val)
    } else {
        args.val
    };
    if n_val >= n {
        return Err(format!("{n} samples are too few to hold {n_val} out for validation").into());
    }
    let train_set = Subset::new(data.clone(), (0..n - n_val).collect())?;
    let val_set = Subset::new(data.clone(), (n - n_val..n).collect())?;
    let augment = if args.augment {
        Augment::flips_and_rotations()
    } else {
        Augment::none()
    };
    let train = DataLoader::new(train_set, args.batch)?
        .shuffle(args.seed)
        .augment(augment);
    let val = DataLoader::new(val_set, args.batch)?;

    let varmap = VarMap::new();
    let vb = unetpp::nn::seeded_var_builder(&varmap, args.seed, DType::F32, &device);
    let model = build_model(
        args.model,
        data.channels(),
        data.num_classes(),
        args.widths.as_deref(),
        vb,
    )?;
    // Seeded, so that a run can be repeated exactly.
    let mode = if args.model == Kind::UNetPPDs {
        Mode::Accurate
    } else {
        Mode::Last
    };
    let mut opt = AdamW::new(
        &varmap,
        ParamsAdamW {
            lr: args.lr,
            weight_decay: args.weight_decay,
            ..Default::default()
        },
    )?;
    println!(
        "{}: {} parameters; {} training and {} validation images of {} channel(s), {} classes; {device:?}",
        args.model.name(),
        model.num_parameters(),
        n - n_val,
        n_val,
        data.channels(),
        data.num_classes()
    );

    if data.num_classes() == 2 {
        fit(
            args,
            &*model,
            &DeepSupervisionLoss::new(BceDice::paper()),
            &mut opt,
            &varmap,
            &train,
            &val,
            mode,
            &device,
        )
    } else {
        fit(
            args,
            &*model,
            &DeepSupervisionLoss::new(CeDice::default()),
            &mut opt,
            &varmap,
            &train,
            &val,
            mode,
            &device,
        )
    }
}

#[allow(clippy::too_many_arguments)]
fn fit<L: SegmentationLoss, D: Dataset>(
    args: &Args,
    model: &dyn MultiHeadSegmenter,
    loss: &DeepSupervisionLoss<L>,
    opt: &mut AdamW,
    varmap: &VarMap,
    train: &DataLoader<D>,
    val: &DataLoader<D>,
    mode: Mode,
    device: &Device,
) -> Result<(), AnyError> {
    std::fs::create_dir_all(args.out.join("overlays"))?;
    let ckpt_path = args.out.join("last.safetensors");
    let mut first_epoch = 0;
    let mut step_loss: Vec<f32> = Vec::new();
    let mut epoch_iou: Vec<f64> = Vec::new();
    let mut epoch_dice: Vec<f64> = Vec::new();
    if args.resume && ckpt_path.exists() {
        let ckpt = Checkpoint::load(&ckpt_path, device)?;
        if ckpt.extra.get("model").map(String::as_str) != Some(args.model.name()) {
            return Err(format!(
                "{} holds a {:?} checkpoint, not {}",
                ckpt_path.display(),
                ckpt.extra.get("model"),
                args.model.name()
            )
            .into());
        }
        ckpt.restore(varmap, opt)?;
        first_epoch = ckpt.epoch;
        step_loss = read_column(&args.out.join("steps.csv"), 1)?
            .into_iter()
            .map(|v| v as f32)
            .collect();
        epoch_iou = read_column(&args.out.join("metrics.csv"), 2)?;
        epoch_dice = read_column(&args.out.join("metrics.csv"), 3)?;
        println!(
            "resumed from {} after epoch {first_epoch}",
            ckpt_path.display()
        );
    } else {
        std::fs::write(
            args.out.join("metrics.csv"),
            "epoch,train_loss,val_iou,val_dice,val_image_iou,seconds\n",
        )?;
        std::fs::write(args.out.join("steps.csv"), "step,loss\n")?;
    }

    let style = ProgressStyle::with_template(
        "epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed} < {eta})",
    )?
    .progress_chars("=> ");
    let extra = HashMap::from([("model".to_string(), args.model.name().to_string())]);
    let started = Instant::now();
    let mut images_seen = 0usize;
    let mut last = None;
    for epoch in first_epoch..args.epochs {
        let bar = ProgressBar::new(train.num_batches() as u64);
        bar.set_style(style.clone());
        bar.set_prefix(format!("{}/{}", epoch + 1, args.epochs));
        let t0 = Instant::now();
        let mut sum = 0.0;
        let mut count = 0usize;
        let mut steps = String::new();
        for batch in train.batches(epoch, device) {
            let batch = batch?;
            let l = train_step(model, loss, opt, &batch)?;
            images_seen += batch.images.dim(0)?;
            step_loss.push(l);
            steps.push_str(&format!("{},{l}\n", step_loss.len()));
            sum += l as f64;
            count += 1;
            let rate = images_seen as f64 / started.elapsed().as_secs_f64();
            bar.set_message(format!("loss {l:.4}, {rate:.1} img/s"));
            bar.inc(1);
        }
        bar.finish();
        let metrics = evaluate(model, val, device, mode)?;
        let secs = t0.elapsed().as_secs_f64();
        let train_loss = sum / count.max(1) as f64;
        println!(
            "epoch {}: training loss {train_loss:.4}, validation IoU {:.4}, Dice {:.4} (per image IoU {:.4}), {secs:.1} s",
            epoch + 1,
            metrics.mean_iou(),
            metrics.mean_dice(),
            metrics.mean_image_iou()
        );
        append(&args.out.join("steps.csv"), &steps)?;
        append(
            &args.out.join("metrics.csv"),
            &format!(
                "{},{train_loss},{},{},{},{secs}\n",
                epoch + 1,
                metrics.mean_iou(),
                metrics.mean_dice(),
                metrics.mean_image_iou()
            ),
        )?;
        epoch_iou.push(metrics.mean_iou());
        epoch_dice.push(metrics.mean_dice());
        save_checkpoint(&ckpt_path, varmap, opt, epoch + 1, &extra)?;
        write_curves_svg(
            &args.out.join("loss.svg"),
            &Curves {
                title: &format!(
                    "{} on {}",
                    args.model.name(),
                    if args.images.is_some() {
                        "an image folder"
                    } else {
                        "synthetic data"
                    }
                ),
                step_loss: &step_loss,
                steps_per_epoch: train.num_batches(),
                scores: &[("IoU", &epoch_iou), ("Dice", &epoch_dice)],
            },
        )?;
        last = Some((train_loss, metrics));
    }
    // With the configuration in the file: `predict` and `evaluate` load it by itself.
    model.save(&args.out.join("model.safetensors"))?;

    // Overlays of the first validation images.
    let shown = val.dataset().len().min(4);
    for i in 0..shown {
        let s = val.dataset().get(i)?;
        let batch = unetpp::data::Batch::from_samples(std::slice::from_ref(&s), device)?;
        let pred = predict(model, &batch.images, mode)?
            .flatten_all()?
            .to_vec1::<u32>()?;
        write_overlay(
            &args.out.join("overlays").join(format!("val_{i}.png")),
            &s.image,
            s.channels,
            s.height,
            s.width,
            &s.mask,
            &pred,
        )?;
    }
    println!(
        "wrote {}/{{model.safetensors, last.safetensors, metrics.csv, loss.svg, overlays/}}",
        args.out.display()
    );

    let Some((train_loss, metrics)) = last else {
        println!(
            "nothing to train: the checkpoint is at epoch {first_epoch} of {}",
            args.epochs
        );
        return Ok(());
    };
    if let Some(path) = &args.report {
        let seconds = started.elapsed().as_secs_f64();
        write_json(
            path,
            &[
                ("model", Json::Str(args.model.name().into())),
                ("parameters", Json::Num(model.num_parameters() as f64)),
                ("epochs", Json::Num(args.epochs as f64)),
                ("train_loss", Json::Num(train_loss)),
                ("val_iou", Json::Num(metrics.mean_iou())),
                ("val_dice", Json::Num(metrics.mean_dice())),
                ("val_image_iou", Json::Num(metrics.mean_image_iou())),
                ("val_per_class_iou", Json::Nums(metrics.per_class_iou())),
                ("train_seconds", Json::Num(seconds)),
                ("images_per_second", Json::Num(images_seen as f64 / seconds)),
            ],
        )?;
        println!("report: {}", path.display());
    }
    Ok(())
}

fn append(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)?
        .write_all(text.as_bytes())
}

/// Column `col` of a CSV file with a header line (empty when the file does not exist).
fn read_column(path: &std::path::Path, col: usize) -> Result<Vec<f64>, AnyError> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.split(',')
                .nth(col)
                .and_then(|v| v.parse::<f64>().ok())
                .ok_or_else(|| {
                    format!("{}: cannot read column {col} of {l:?}", path.display()).into()
                })
        })
        .collect()
}
