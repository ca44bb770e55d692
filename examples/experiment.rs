//! The paper's comparison on our synthetic data: U-Net, wide U-Net, UNet++ without and with
//! deep supervision, then UNet++ with deep supervision in accurate mode and pruned to L1–L4
//! in fast mode.
//!
//! ```text
//! cargo run --release --example experiment -- [--size 64] [--train 256] [--test 128]
//!     [--epochs 6] [--batch 8] [--lr 1e-3] [--seed 0] [--seeds 3] [--runs 20]
//!     [--widths 32,64,128,256,512] [--doc docs/EXPERIMENTS.md] [--pictures docs/experiments]
//! ```
//!
//! In each run (`--seeds`, default 3) every network starts from weights drawn with the run's
//! seed ([`unetpp::nn::seeded_var_builder`]) and sees the same batches in the same order; scores
//! are reported as mean ± standard deviation over the runs. Scores are on a held-out test set drawn with
//! another seed: IoU and Dice of the foreground over the whole set, and IoU per image
//! averaged. The CPU time is the median forward pass of one image. The table replaces the
//! part of `--doc` between `<!-- experiment:begin -->` and `<!-- experiment:end -->` (the
//! file is created if missing); loss curves and overlays go to `--pictures`. The defaults take
//! about 40 minutes on two CPU cores (`--seeds 1`: 13).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{ParamsAdamW, VarMap};
use clap::Parser;
use unetpp::data::loader::DataLoader;
use unetpp::data::synthetic::{SyntheticConfig, SyntheticDataset};
use unetpp::data::{Batch, Dataset};
use unetpp::loss::DeepSupervisionLoss;
use unetpp::prelude::{MultiHeadSegmenter, UNet, UNetPlusPlus, UNetPlusPlusConfig};
use unetpp::train::{evaluate, predict, train_step, AdamW, Mode};

#[path = "support/cli.rs"]
mod cli;
#[path = "support/report.rs"]
mod report;
use report::{write_curves_svg, write_overlay, Curves};

type AnyError = Box<dyn std::error::Error>;

/// The paper's comparison on synthetic data: U-Net, wide U-Net, UNet++ without and with deep
/// supervision, UNet++ pruned to L1–L4.
#[derive(Parser)]
#[command(args_override_self = true, allow_negative_numbers = true)]
struct Args {
    /// Side of the synthetic images
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Training images
    #[arg(long, default_value_t = 256)]
    train: usize,
    /// Held-out test images
    #[arg(long, default_value_t = 128)]
    test: usize,
    /// Epochs per network
    #[arg(long, default_value_t = 6)]
    epochs: usize,
    /// Images per batch
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Learning rate (AdamW, weight decay 0)
    #[arg(long, default_value = "1e-3")]
    lr: f64,
    /// Seed of the training set and of the first run
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Runs, with seeds --seed, --seed + 1, ...
    #[arg(long, default_value_t = 3, value_parser = cli::at_least(1))]
    seeds: usize,
    /// Interleaved rounds of the forward-time measurement
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Channel widths per level, comma-separated (default: the paper's)
    #[arg(long, value_name = "W,W,...", value_parser = cli::widths)]
    widths: Option<::std::vec::Vec<usize>>,
    /// Markdown file whose experiment section gets the table
    #[arg(long, value_name = "FILE", default_value = "docs/EXPERIMENTS.md")]
    doc: PathBuf,
    /// Folder of the loss curves and overlays
    #[arg(long, value_name = "DIR", default_value = "docs/experiments")]
    pictures: PathBuf,
}

/// One row of the table: scores of every seed.
#[derive(Default)]
struct Row {
    name: String,
    params: usize,
    iou: Vec<f64>,
    dice: Vec<f64>,
    image_iou: Vec<f64>,
    train_seconds: Vec<f64>,
    seconds: f64,
}

impl Row {
    fn new(name: String, params: usize) -> Self {
        Self {
            name,
            params,
            ..Default::default()
        }
    }

    fn record(&mut self, m: &unetpp::metrics::SegmentationMetrics) {
        self.iou.push(m.mean_iou());
        self.dice.push(m.mean_dice());
        self.image_iou.push(m.mean_image_iou());
    }
}

/// Mean and sample standard deviation.
fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n.max(1.0);
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

fn cell(v: &[f64], digits: usize) -> String {
    match v.len() {
        0 => "—".into(),
        1 => format!("{:.*}", digits, v[0]),
        _ => {
            let (m, s) = mean_std(v);
            format!("{m:.digits$} ± {s:.digits$}")
        }
    }
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn synthetic(samples: usize, size: usize, seed: u64) -> unetpp::Result<SyntheticDataset> {
    SyntheticDataset::new(
        SyntheticConfig::builder()
            .samples(samples)
            .height(size)
            .width(size)
            .seed(seed)
            .build()?,
    )
}

fn with_widths(
    cfg: unetpp::nested::UNetPlusPlusConfigBuilder,
    widths: Option<&[usize]>,
) -> unetpp::nested::UNetPlusPlusConfigBuilder {
    match widths {
        Some(w) => cfg.depth(w.len() - 1).widths(w.to_vec()),
        None => cfg,
    }
}

fn run(args: &Args) -> Result<(), AnyError> {
    let device = Device::Cpu;
    let train_set = synthetic(args.train, args.size, args.seed)?;
    let test_set = synthetic(args.test, args.size, args.seed + 1_000_003)?;
    let test = DataLoader::new(&test_set, args.batch)?;
    std::fs::create_dir_all(&args.pictures)?;
    let one = Batch::from_samples(&[test_set.get(0)?], &device)?;
    let widths = args.widths.as_deref();
    let wide_widths: Option<Vec<usize>> = widths.map(|w| w.iter().map(|&c| c * 35 / 32).collect());

    let plans: [(&str, &str); 4] = [
        ("U-Net", "unet"),
        ("wide U-Net", "wide-unet"),
        ("UNet++ without DS", "unetpp"),
        ("UNet++ with DS", "unetpp-ds"),
    ];
    let ds_cfg = with_widths(UNetPlusPlusConfig::paper().deep_supervision(true), widths).build()?;
    let mut rows: Vec<Row> = Vec::new();
    let mut pruned_rows: Vec<Row> = Vec::new();
    // The networks of the last seed, timed at the end.
    let mut timed: Vec<Box<dyn MultiHeadSegmenter>> = Vec::new();
    let started = Instant::now();
    for run in 0..args.seeds {
        let seed = args.seed + run as u64;
        let train = DataLoader::new(&train_set, args.batch)?.shuffle(seed);
        timed.clear();
        for (p, (name, slug)) in plans.into_iter().enumerate() {
            let varmap = VarMap::new();
            let vb = unetpp::nn::seeded_var_builder(&varmap, seed, DType::F32, &device);
            let model: Box<dyn MultiHeadSegmenter> = match slug {
                "unet" => Box::new(UNet::new(&with_widths(UNet::paper(), widths).build()?, vb)?),
                "wide-unet" => Box::new(UNet::new(
                    &with_widths(UNet::wide(), wide_widths.as_deref()).build()?,
                    vb,
                )?),
                "unetpp" => Box::new(UNetPlusPlus::new(
                    &with_widths(UNetPlusPlusConfig::paper().deep_supervision(false), widths)
                        .build()?,
                    vb,
                )?),
                _ => Box::new(UNetPlusPlus::new(&ds_cfg, vb)?),
            };
            let mut opt = AdamW::new(
                &varmap,
                ParamsAdamW {
                    lr: args.lr,
                    weight_decay: 0.0,
                    ..Default::default()
                },
            )?;
            let loss = DeepSupervisionLoss::paper();
            let t0 = Instant::now();
            let mut losses = Vec::new();
            for epoch in 0..args.epochs {
                for batch in train.batches(epoch, &device) {
                    losses.push(train_step(&*model, &loss, &mut opt, &batch?)?);
                }
                let recent = &losses[losses.len().saturating_sub(train.num_batches())..];
                println!(
                    "seed {seed}, {name}: epoch {}/{}, mean loss {:.4} ({:.0} s)",
                    epoch + 1,
                    args.epochs,
                    recent.iter().sum::<f32>() / recent.len().max(1) as f32,
                    t0.elapsed().as_secs_f64()
                );
            }
            let train_seconds = t0.elapsed().as_secs_f64();
            let mode = if slug == "unetpp-ds" {
                Mode::Accurate
            } else {
                Mode::Last
            };
            let metrics = evaluate(&*model, &test, &device, mode)?;
            println!("seed {seed}, {name}: test IoU {:.4}", metrics.mean_iou());
            if run == 0 {
                write_curves_svg(
                    &args.pictures.join(format!("loss_{slug}.svg")),
                    &Curves {
                        title: &format!("{name}: training loss (seed {seed})"),
                        step_loss: &losses,
                        steps_per_epoch: train.num_batches(),
                        scores: &[],
                    },
                )?;
                overlay(args, slug, &one, &predict(&*model, &one.images, mode)?)?;
                let label = if slug == "unetpp-ds" {
                    format!("{name} (accurate mode)")
                } else {
                    name.to_string()
                };
                rows.push(Row::new(label, model.num_parameters()));
            }
            rows[p].record(&metrics);
            rows[p].train_seconds.push(train_seconds);

            if slug == "unetpp-ds" {
                // Rebuilt from its trained tensors as a UNet++ to prune it.
                let tensors = model
                    .named_tensors()
                    .into_iter()
                    .map(|t| (t.name, t.tensor))
                    .collect();
                let full = UNetPlusPlus::from_tensors(&ds_cfg, tensors, &device)?;
                for k in 1..=ds_cfg.depth() {
                    let pruned = full.prune(k)?;
                    if run == 0 {
                        pruned_rows.push(Row::new(
                            format!("UNet++ L{k} (pruned, fast mode)"),
                            pruned.num_parameters(),
                        ));
                    }
                    pruned_rows[k - 1].record(&evaluate(&pruned, &test, &device, Mode::Fast(k))?);
                    timed.push(Box::new(pruned));
                }
            }
            timed.insert(p, model);
        }
    }

    // CPU time of one image: interleaved rounds, so that a slow spell of a shared machine
    // hits every network alike; the median per network.
    let mut times = vec![Vec::with_capacity(args.runs); timed.len()];
    for m in &timed {
        m.forward(&one.images)?;
    }
    for _ in 0..args.runs.max(1) {
        for (m, t) in timed.iter().zip(times.iter_mut()) {
            let t0 = Instant::now();
            m.forward(&one.images)?;
            t.push(t0.elapsed().as_secs_f64());
        }
    }
    for (row, t) in rows
        .iter_mut()
        .chain(pruned_rows.iter_mut())
        .zip(times.iter_mut())
    {
        t.sort_by(f64::total_cmp);
        row.seconds = t[t.len() / 2];
    }
    let total = started.elapsed().as_secs_f64();
    write_doc(args, &rows, &pruned_rows, total)?;
    println!(
        "wrote {} and pictures in {}",
        args.doc.display(),
        args.pictures.display()
    );
    Ok(())
}

fn overlay(args: &Args, slug: &str, one: &Batch, pred: &Tensor) -> Result<(), AnyError> {
    let (_, c, h, w) = one.images.dims4()?;
    write_overlay(
        &args.pictures.join(format!("test0_{slug}.png")),
        &one.images.flatten_all()?.to_vec1::<f32>()?,
        c,
        h,
        w,
        &one.labels.flatten_all()?.to_vec1::<u32>()?,
        &pred.flatten_all()?.to_vec1::<u32>()?,
    )?;
    Ok(())
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn write_doc(args: &Args, rows: &[Row], pruned: &[Row], total: f64) -> Result<(), AnyError> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut t = String::new();
    let cmd: Vec<String> = std::env::args().skip(1).collect();
    writeln!(t, "<!-- experiment:begin -->")?;
    writeln!(
        t,
        "Made by `cargo run --release --example experiment{}{}` on {} ({cores} threads), {:.0} min in all.\n",
        if cmd.is_empty() { "" } else { " -- " },
        cmd.join(" "),
        cpu_name(),
        total / 60.0
    )?;
    writeln!(
        t,
        "Synthetic binary task: {} training and {} test images of {}×{} (data sets of different seeds), {} epochs of batch {}, \
         Adam (AdamW, weight decay 0) at learning rate {}, the paper's BCE + Dice loss (per head for deep supervision). \
         {} run(s) with seeds {}..={} for the initial weights and the batch order; scores are mean ± standard deviation over the runs. \
         IoU and Dice: foreground over the whole test set; image IoU: mean over images. \
         Forward: median CPU time of one image over {} interleaved rounds (networks of the last run).\n",
        args.train, args.test, args.size, args.size, args.epochs, args.batch, args.lr,
        args.seeds, args.seed, args.seed + args.seeds as u64 - 1, args.runs
    )?;
    writeln!(
        t,
        "| network | parameters | IoU | Dice | image IoU | forward (ms) | training (s) |"
    )?;
    writeln!(t, "|---|---:|---:|---:|---:|---:|---:|")?;
    let line = |t: &mut String, r: &Row| {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {:.1} | {} |",
            r.name,
            r.params,
            cell(&r.iou, 4),
            cell(&r.dice, 4),
            cell(&r.image_iou, 4),
            r.seconds * 1e3,
            cell(&r.train_seconds, 0)
        );
    };
    for r in rows.iter().chain(pruned) {
        line(&mut t, r);
    }
    writeln!(t, "\nPictures of the first run: `{}/` (loss curves `loss_*.svg`; test image 0 with truth and prediction, `test0_*.png`).", args.pictures.display())?;
    writeln!(t, "<!-- experiment:end -->")?;

    let doc = std::fs::read_to_string(&args.doc).unwrap_or_default();
    let out = match (
        doc.find("<!-- experiment:begin -->"),
        doc.find("<!-- experiment:end -->"),
    ) {
        (Some(b), Some(e)) if b < e => {
            let end = e + "<!-- experiment:end -->".len();
            let rest = doc[end..].strip_prefix('\n').unwrap_or(&doc[end..]);
            format!("{}{t}{rest}", &doc[..b])
        }
        _ => format!("# Experiments\n\n{t}"),
    };
    if let Some(dir) = args.doc.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.doc, out)?;
    Ok(())
}
