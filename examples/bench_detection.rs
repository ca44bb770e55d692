//! Times RoIAlign and NMS: the CPU kernel against the composed (any-device) RoIAlign, forward
//! and backward, and NMS / batched NMS, on the inputs of `scripts/bench_detection.py` (the
//! same pseudo-random boxes, generated bit for bit alike), so the two print comparable lines.
//!
//! ```text
//! cargo run --release --example bench_detection -- [--runs 5] [--boxes 1000] [--nms-boxes 5000]
//!     [--maskrcnn] [--maskrcnn-train]
//! ```
//!
//! Prints the median seconds of each operation after one warm-up run. `--maskrcnn` instead
//! times a whole `maskrcnn_resnet50_fpn` detection (random weights, 91 classes) on one
//! 3×800×1024 image (the Python script's `--maskrcnn` times torchvision on the same input).
//! `--maskrcnn-train` times one training step of the same detector (the five losses and their
//! backward pass, no optimiser update) on that image with four ground-truth objects, training
//! the last three ResNet stages as torchvision does by default for a pretrained backbone.

mod support;

use candle_core::{DType, Device, Tensor, Var};
use clap::Parser;
use unetpp::ops::{batched_nms, nms, RoiAlign};

/// The generator shared with the Python script: 64-bit LCG, top 53 bits as a float in [0, 1).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `n` boxes in an `h × w` image, sides from `min` to `max` pixels, as f32 rows.
fn boxes(rng: &mut Lcg, n: usize, (h, w): (f64, f64), (min, max): (f64, f64)) -> Vec<f32> {
    let mut v = Vec::with_capacity(4 * n);
    for _ in 0..n {
        let (bw, bh) = (
            min + rng.next() * (max - min),
            min + rng.next() * (max - min),
        );
        let x1 = rng.next() * (w - bw);
        let y1 = rng.next() * (h - bh);
        v.extend_from_slice(&[x1 as f32, y1 as f32, (x1 + bw) as f32, (y1 + bh) as f32]);
    }
    v
}

/// Median time of `MaskRcnn::detect` on one 3×800×1024 image, random weights.
fn bench_maskrcnn(runs: usize) -> unetpp::Result<()> {
    use candle_nn::VarMap;
    use unetpp::maskrcnn::{MaskRcnn, MaskRcnnConfig};
    let dev = Device::Cpu;
    let cfg = MaskRcnnConfig::mask_rcnn(91).build()?;
    let varmap = VarMap::new();
    let model = MaskRcnn::new(
        &cfg,
        unetpp::nn::seeded_var_builder(&varmap, 0, DType::F32, &dev),
    )?;
    let image = maskrcnn_image(&dev)?;
    let (_, h, w) = image.dims3()?;
    let mut found = 0;
    let t = support::median_seconds(
        || -> unetpp::Result<()> {
            found = model.detect(std::slice::from_ref(&image))?[0]
                .boxes
                .dim(0)?;
            Ok(())
        },
        runs,
    )?;
    println!("maskrcnn_resnet50_fpn detect 3x{h}x{w}: {t:.3} s ({found} detections)");
    Ok(())
}

/// The image both Mask R-CNN benchmarks use: 3×800×1024, values from a formula.
fn maskrcnn_image(dev: &Device) -> unetpp::Result<Tensor> {
    let (h, w) = (800, 1024);
    let v: Vec<f32> = (0..3 * h * w)
        .map(|i| ((i as u64 * 7919) % 1000) as f32 / 1000.0)
        .collect();
    Ok(Tensor::from_vec(v, (3, h, w), dev)?)
}

/// Median time of one Mask R-CNN training step (losses and backward) on the benchmark image
/// with four objects (boxes and filled-rectangle masks), three trainable ResNet stages.
fn bench_maskrcnn_train(runs: usize) -> unetpp::Result<()> {
    use candle_nn::VarMap;
    use rand::SeedableRng;
    use unetpp::maskrcnn::{MaskRcnn, MaskRcnnConfig, Target};
    let dev = Device::Cpu;
    let cfg = MaskRcnnConfig::mask_rcnn(91)
        .trainable_backbone_layers(3)
        .build()?;
    let varmap = VarMap::new();
    let model = MaskRcnn::new(
        &cfg,
        unetpp::nn::seeded_var_builder(&varmap, 0, DType::F32, &dev),
    )?;
    let vars = unetpp::maskrcnn::trainable_vars(&varmap, 3)?;
    let image = maskrcnn_image(&dev)?;
    let (_, h, w) = image.dims3()?;
    let objects: [[usize; 4]; 4] = [
        [100, 120, 300, 380],
        [400, 80, 560, 200],
        [600, 450, 900, 760],
        [200, 500, 260, 580],
    ];
    let mut masks = vec![0f32; objects.len() * h * w];
    let mut boxes = Vec::new();
    for (k, &[x1, y1, x2, y2]) in objects.iter().enumerate() {
        for y in y1..y2 {
            masks[k * h * w + y * w + x1..k * h * w + y * w + x2].fill(1.0);
        }
        boxes.extend([x1 as f32, y1 as f32, x2 as f32, y2 as f32]);
    }
    let n = objects.len();
    let target = Target::new(
        Tensor::from_vec(boxes, (n, 4), &dev)?,
        Tensor::from_vec(vec![1i64, 2, 3, 4], n, &dev)?,
    )
    .with_masks(Tensor::from_vec(masks, (n, h, w), &dev)?.to_dtype(DType::U8)?);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut total = 0.0;
    let t = support::median_seconds(
        || -> unetpp::Result<()> {
            let losses = model.losses(
                std::slice::from_ref(&image),
                std::slice::from_ref(&target),
                &mut rng,
            )?;
            let loss = losses.total()?;
            total = loss.to_scalar::<f32>()?;
            let grads = loss.backward()?;
            if vars.iter().all(|v| grads.get(v.as_tensor()).is_none()) {
                return Err(unetpp::Error::Input(
                    "no gradient reached the weights".into(),
                ));
            }
            Ok(())
        },
        runs,
    )?;
    println!("maskrcnn_resnet50_fpn train step 3x{h}x{w}, {n} objects: {t:.3} s (loss {total:.3})");
    Ok(())
}

/// Times RoIAlign (CPU kernel and composed path, forward and backward) and NMS on the inputs
/// of scripts/bench_detection.py, or a whole Mask R-CNN.
#[derive(Parser)]
#[command(args_override_self = true)]
struct Args {
    /// Timed runs after one warm-up
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Boxes of each RoIAlign
    #[arg(long, default_value_t = 1000)]
    boxes: usize,
    /// Boxes of each NMS
    #[arg(long, default_value_t = 5000)]
    nms_boxes: usize,
    /// Time a maskrcnn_resnet50_fpn detection on one 3×800×1024 image instead
    #[arg(long)]
    maskrcnn: bool,
    /// Time a maskrcnn_resnet50_fpn training step (losses and backward) instead
    #[arg(long)]
    maskrcnn_train: bool,
    /// Call `unetpp::device::keep_freed_memory` first (glibc keeps freed memory for reuse)
    #[arg(long)]
    keep_freed_memory: bool,
}

fn main() -> unetpp::Result<()> {
    let args = Args::parse();
    if args.keep_freed_memory {
        let kept = unetpp::device::keep_freed_memory(usize::MAX);
        println!("freed memory kept: {kept}");
    }
    let (runs, k, n_nms) = (args.runs, args.boxes, args.nms_boxes);
    let dev = Device::Cpu;
    println!("threads: {}", rayon::current_num_threads());
    if args.maskrcnn_train {
        return bench_maskrcnn_train(runs);
    }
    if args.maskrcnn {
        return bench_maskrcnn(runs);
    }

    // RoIAlign as in Mask R-CNN's box head: a stride-4 map of an 800×1216 image, 7×7 bins,
    // sampling ratio 2, aligned = false.
    let mut rng = Lcg(7);
    let (c, h, w) = (256, 200, 304);
    // The map's values do not change the work; the same formula as the Python side.
    let x: Vec<f32> = (0..c * h * w)
        .map(|i| (((i as u64 * 7919) % 1000) as f64 / 1000.0 - 0.5) as f32)
        .collect();
    let x = Tensor::from_vec(x, (1, c, h, w), &dev)?;
    let b = boxes(&mut rng, k, (800.0, 1216.0), (16.0, 400.0));
    let b = Tensor::from_vec(b, (k, 4), &dev)?;
    let rois = Tensor::cat(&[&Tensor::zeros((k, 1), DType::F32, &dev)?, &b], 1)?;
    for (size, ratio) in [((7, 7), 2), ((14, 14), 2)] {
        let op = RoiAlign::new(size)
            .with_spatial_scale(0.25)
            .with_sampling_ratio(ratio);
        let label = format!("{k} boxes {}x{} on 1x{c}x{h}x{w}", size.0, size.1);
        let fwd = support::median_seconds(|| op.forward(&x, &rois).map(|_| ()), runs)?;
        println!("roi_align forward  kernel   {label}: {fwd:.4} s");
        let fwd = support::median_seconds(|| op.forward_composed(&x, &rois).map(|_| ()), runs)?;
        println!("roi_align forward  composed {label}: {fwd:.4} s");
        let var = Var::from_tensor(&x)?;
        for composed in [false, true] {
            let g = Tensor::ones((k, c, size.0, size.1), DType::F32, &dev)?;
            let t = support::median_seconds(
                || -> unetpp::Result<()> {
                    let y = if composed {
                        op.forward_composed(var.as_tensor(), &rois)?
                    } else {
                        op.forward(var.as_tensor(), &rois)?
                    };
                    let grads = (y * &g)?.sum_all()?.backward()?;
                    grads.get(var.as_tensor()).map(|_| ()).ok_or_else(|| {
                        unetpp::Error::Input("no gradient for the feature map".into())
                    })
                },
                runs,
            )?;
            let path = if composed { "composed" } else { "kernel  " };
            println!("roi_align fwd+bwd  {path} {label}: {t:.4} s");
        }
    }

    // NMS over proposals of one image, as the RPN sees them (IoU 0.7), and per class (0.5).
    let mut rng = Lcg(11);
    let b = boxes(&mut rng, n_nms, (800.0, 1216.0), (8.0, 300.0));
    let scores: Vec<f32> = (0..n_nms).map(|_| rng.next() as f32).collect();
    let classes: Vec<u32> = (0..n_nms).map(|_| (rng.next() * 80.0) as u32).collect();
    let b = Tensor::from_vec(b, (n_nms, 4), &dev)?;
    let scores = Tensor::from_vec(scores, n_nms, &dev)?;
    let classes = Tensor::from_vec(classes, n_nms, &dev)?;
    let mut kept = 0;
    let t = support::median_seconds(
        || -> unetpp::Result<()> {
            kept = nms(&b, &scores, 0.7)?.dim(0)?;
            Ok(())
        },
        runs,
    )?;
    println!("nms {n_nms} boxes iou 0.7: {t:.5} s ({kept} kept)");
    let t = support::median_seconds(
        || -> unetpp::Result<()> {
            kept = batched_nms(&b, &scores, &classes, 0.5)?.dim(0)?;
            Ok(())
        },
        runs,
    )?;
    println!("batched_nms {n_nms} boxes 80 classes iou 0.5: {t:.5} s ({kept} kept)");
    Ok(())
}
