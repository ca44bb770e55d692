//! Trains Mask R-CNN and Mask R-CNN++ (the nested feature pyramid) on synthetic nuclei —
//! touching blobs of widely varying size — and compares them on held-out images.
//!
//! ```text
//! cargo run --release --example instances -- [--steps 150] [--train 64] [--test 24]
//!     [--size 96] [--channels 64] [--batch 2] [--lr 1e-3] [--classes 1] [--seed 0]
//!     [--models maskrcnn,maskrcnn-pp] [--out runs/instances]
//! ```
//!
//! Both detectors are `MaskRcnnConfig::compact` (ResNet-18 with trainable batch-norm, a
//! `--channels`-wide pyramid), initialised by `nn::seeded_var_builder` from the same
//! seed (identical weights wherever they share a tensor) and trained with AdamW on the sum of
//! the five losses, with a progress bar; a run is repeatable. For each it prints, on the test images, box AP@0.5, mask
//! AP@0.5 and the mean best mask IoU of the objects, as a Markdown table row, the training
//! time and the inference time per image, and writes `<out>/<model>.png`: for the first four
//! test images, the ground truth (left) and the detections of score ≥ 0.5 (right), each
//! instance in its own colour with its box. `--classes 2` makes round and elongated nuclei
//! two classes. The defaults take a few minutes on two CPU cores.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device};
use candle_nn::{Optimizer, ParamsAdamW, VarMap};
use clap::{ArgAction, Parser};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use unetpp::data::instances::{InstanceSample, NucleiConfig, SyntheticNuclei};
use unetpp::maskrcnn::evaluate::{
    average_precision, mean_best_mask_iou, GroundTruth, Overlap, Prediction,
};
use unetpp::maskrcnn::{ImageDetections, MaskRcnn, MaskRcnnConfig, PyramidKind, Target};

#[path = "support/cli.rs"]
mod cli;

type AnyError = Box<dyn std::error::Error>;

/// Trains Mask R-CNN and Mask R-CNN++ (the nested feature pyramid) on synthetic nuclei and
/// compares them on held-out images.
#[derive(Parser)]
#[command(args_override_self = true, allow_negative_numbers = true)]
struct Args {
    /// Training steps (AdamW)
    #[arg(long, default_value_t = 150)]
    steps: usize,
    /// Training images (at least --batch)
    #[arg(long, default_value_t = 64)]
    train: usize,
    /// Held-out test images
    #[arg(long, default_value_t = 24, value_parser = cli::at_least(1))]
    test: usize,
    /// Side of the square images
    #[arg(long, default_value_t = 96)]
    size: usize,
    /// Channels of the feature pyramid
    #[arg(long, default_value_t = 64)]
    channels: usize,
    /// Images per training step
    #[arg(long, default_value_t = 2, value_parser = cli::at_least(1))]
    batch: usize,
    /// Learning rate
    #[arg(long, default_value = "1e-3")]
    lr: f64,
    /// Object classes (2: round and elongated nuclei)
    #[arg(long, default_value_t = 1)]
    classes: u32,
    /// Seed of the data, the initial weights and the batch order
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Detectors to train, comma-separated
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = ["maskrcnn", "maskrcnn-pp"],
        default_value = "maskrcnn,maskrcnn-pp",
        action = ArgAction::Set
    )]
    models: Vec<String>,
    /// Folder of the pictures of the detections
    #[arg(long, value_name = "DIR", default_value = "runs/instances")]
    out: PathBuf,
}

fn target(s: &InstanceSample, dev: &Device) -> unetpp::Result<Target> {
    Ok(Target::new(s.boxes_tensor(dev)?, s.labels_tensor(dev)?).with_masks(s.masks_tensor(dev)?))
}

fn ground_truth(s: &InstanceSample) -> GroundTruth {
    GroundTruth {
        boxes: s.instances.iter().map(|i| i.bbox).collect(),
        labels: s.instances.iter().map(|i| i.label).collect(),
        masks: s.instances.iter().map(|i| i.mask.clone()).collect(),
    }
}

fn prediction(d: &ImageDetections) -> unetpp::Result<Prediction> {
    let k = d.boxes.dim(0)?;
    let boxes = d.boxes.to_vec2::<f32>()?;
    let masks = d.binary_masks(0.5)?.flatten_from(1)?;
    Ok(Prediction {
        boxes: boxes
            .into_iter()
            .map(|b| [b[0], b[1], b[2], b[3]])
            .collect(),
        scores: d.scores.to_vec1::<f32>()?,
        labels: d
            .labels
            .to_vec1::<i64>()?
            .iter()
            .map(|&l| l as u32)
            .collect(),
        masks: if k == 0 {
            Vec::new()
        } else {
            masks.to_vec2::<u8>()?
        },
    })
}

const COLOURS: [[u8; 3]; 8] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
];

/// The image with each instance tinted in its colour and its box outlined, into `canvas` at
/// column offset `x0` (canvas width `cw`).
fn draw(
    canvas: &mut [u8],
    cw: usize,
    (x0, y0): (usize, usize),
    s: &InstanceSample,
    instances: &[([f32; 4], &[u8])],
) {
    let (h, w) = (s.height, s.width);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                canvas[((y0 + y) * cw + x0 + x) * 3 + c] =
                    (s.image[c * h * w + y * w + x] * 255.0) as u8;
            }
        }
    }
    for (k, (b, mask)) in instances.iter().enumerate() {
        let col = COLOURS[k % COLOURS.len()];
        for (p, _) in mask.iter().enumerate().filter(|(_, &m)| m != 0) {
            let at = ((y0 + p / w) * cw + x0 + p % w) * 3;
            for c in 0..3 {
                canvas[at + c] = ((canvas[at + c] as u16 + 2 * col[c] as u16) / 3) as u8;
            }
        }
        let clamp = |v: f32, hi: usize| (v.max(0.0) as usize).min(hi - 1);
        let (bx1, by1) = (clamp(b[0], w), clamp(b[1], h));
        let (bx2, by2) = (clamp(b[2] - 1.0, w), clamp(b[3] - 1.0, h));
        let mut dot = |x: usize, y: usize| {
            let at = ((y0 + y) * cw + x0 + x) * 3;
            canvas[at..at + 3].copy_from_slice(&col);
        };
        for x in bx1..=bx2 {
            dot(x, by1);
            dot(x, by2);
        }
        for y in by1..=by2 {
            dot(bx1, y);
            dot(bx2, y);
        }
    }
}

fn main() -> Result<(), AnyError> {
    let args = Args::parse();
    if args.train < args.batch {
        return Err("need --train >= --batch".into());
    }
    let dev = Device::Cpu;
    std::fs::create_dir_all(&args.out)?;
    let data = |len: usize, seed: u64| -> unetpp::Result<Vec<InstanceSample>> {
        let cfg = NucleiConfig::builder()
            .samples(len)
            .seed(seed)
            .size(args.size, args.size)
            .classes(args.classes)
            .build()?;
        let set = SyntheticNuclei::new(cfg)?;
        (0..len).map(|i| set.get(i)).collect()
    };
    let train = data(args.train, args.seed * 2 + 1)?;
    let test = data(args.test, args.seed * 2 + 2)?;
    let objects: usize = test.iter().map(|s| s.instances.len()).sum();
    println!(
        "{} training and {} test images of {}x{} ({} test objects), {} steps of {} images",
        args.train, args.test, args.size, args.size, objects, args.steps, args.batch
    );
    let mut rows = Vec::new();
    for name in &args.models {
        let pyramid = match name.as_str() {
            "maskrcnn" => PyramidKind::Fpn,
            "maskrcnn-pp" => PyramidKind::Nested,
            other => return Err(format!("unknown model {other}").into()),
        };
        let cfg = MaskRcnnConfig::compact(args.classes as usize + 1, args.channels, args.size)
            .pyramid(pyramid)
            .build()?;
        let varmap = VarMap::new();
        let model = MaskRcnn::new(
            &cfg,
            unetpp::nn::seeded_var_builder(&varmap, args.seed, DType::F32, &dev),
        )?;
        // The same initial weights for both detectors wherever they share a tensor.
        let params: usize = model
            .named_tensors()
            .iter()
            .filter(|t| t.trainable)
            .map(|t| t.tensor.elem_count())
            .sum();
        let mut opt = candle_nn::AdamW::new(
            varmap.all_vars(),
            ParamsAdamW {
                lr: args.lr,
                weight_decay: 1e-4,
                ..Default::default()
            },
        )?;
        let bar = ProgressBar::new(args.steps as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>12} [{bar:30}] {pos}/{len} {msg} ({elapsed} < {eta})",
            )?
            .progress_chars("=> "),
        );
        bar.set_prefix(name.clone());
        let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
        let started = Instant::now();
        let mut order: Vec<usize> = (0..train.len()).collect();
        let mut smooth = None;
        for step in 0..args.steps {
            let at = (step * args.batch) % train.len();
            if at < args.batch {
                use rand::seq::SliceRandom;
                order.shuffle(&mut rng);
            }
            let idx: Vec<usize> = (0..args.batch)
                .map(|k| order[(at + k) % order.len()])
                .collect();
            let images = idx
                .iter()
                .map(|&i| train[i].image_tensor(&dev))
                .collect::<unetpp::Result<Vec<_>>>()?;
            let targets = idx
                .iter()
                .map(|&i| target(&train[i], &dev))
                .collect::<unetpp::Result<Vec<_>>>()?;
            let losses = model.losses(&images, &targets, &mut rng)?;
            let total = losses.total()?;
            let value = total.to_scalar::<f32>()?;
            opt.backward_step(&total)?;
            let s = smooth.map_or(value, |m: f32| 0.9 * m + 0.1 * value);
            smooth = Some(s);
            let rate = ((step + 1) * args.batch) as f64 / started.elapsed().as_secs_f64();
            bar.set_message(format!("loss {s:.3}, {rate:.1} img/s"));
            bar.inc(1);
        }
        bar.finish();
        let train_secs = started.elapsed().as_secs_f64();

        let t0 = Instant::now();
        let mut preds = Vec::with_capacity(test.len());
        for s in &test {
            let d = model.detect(&[s.image_tensor(&dev)?])?;
            let d = d.into_iter().next().ok_or("no detections returned")?;
            preds.push(prediction(&d)?);
        }
        let infer_ms = t0.elapsed().as_secs_f64() * 1e3 / test.len() as f64;
        let gts: Vec<GroundTruth> = test.iter().map(ground_truth).collect();
        let box_ap = average_precision(&preds, &gts, 0.5, Overlap::Box)?.mean;
        let mask_ap = average_precision(&preds, &gts, 0.5, Overlap::Mask)?.mean;
        let miou = mean_best_mask_iou(&preds, &gts)?;
        println!(
            "{name}: {params} parameters, trained in {train_secs:.0} s, {infer_ms:.0} ms per test image"
        );
        rows.push(format!(
            "| {name} | {params} | {box_ap:.3} | {mask_ap:.3} | {miou:.3} | {train_secs:.0} s | {infer_ms:.0} ms |"
        ));

        // Ground truth left, confident detections right, for the first four test images.
        let shown = test.len().min(4);
        let (h, w) = (args.size, args.size);
        let cw = 2 * w + 4;
        let mut canvas = vec![255u8; cw * (h + 4) * shown * 3];
        for (r, (s, p)) in test.iter().zip(&preds).take(shown).enumerate() {
            let gt: Vec<([f32; 4], &[u8])> = s
                .instances
                .iter()
                .map(|i| (i.bbox, i.mask.as_slice()))
                .collect();
            draw(&mut canvas, cw, (0, r * (h + 4)), s, &gt);
            let det: Vec<([f32; 4], &[u8])> = (0..p.boxes.len())
                .filter(|&k| p.scores[k] >= 0.5)
                .map(|k| (p.boxes[k], p.masks[k].as_slice()))
                .collect();
            draw(&mut canvas, cw, (w + 4, r * (h + 4)), s, &det);
        }
        let png = args.out.join(format!("{name}.png"));
        unetpp::data::image_io::write_rgb(&png, &canvas, cw, (h + 4) * shown)?;
        println!("wrote {}", png.display());
    }
    println!();
    println!("| model | parameters | box AP@0.5 | mask AP@0.5 | mean best mask IoU | training | inference |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}
