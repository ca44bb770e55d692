//! The device check: runs every custom op (forward and backward), a UNet++ training step (SGD) for
//! each up-sampling mode, smp's UNet++, Mask R-CNN and Mask R-CNN++ (detection and losses),
//! half-precision inference and a save/load round trip on a device, compares each result with the CPU's, and times
//! the paper's network there.
//!
//! ```text
//! cargo run --release --example gpu_check -- [--device cpu|cuda|metal] [--no-bench]
//!     [--quick] [--runs 5]
//! ```
//!
//! `--device cuda` needs the `cuda` feature (`scripts/cuda_build.sh` builds this program with
//! it on a machine without CUDA, and `scripts/gpu_run.sh` runs it on the GPU machine);
//! `--device metal` the `metal` feature. `--device cpu`, the default without either, runs the
//! device-generic paths on the CPU ([`unetpp::ops::set_device_generic`]) against the CPU
//! kernels: the same code the GPUs run, checked where no GPU is at hand.
//!
//! Each check prints the largest error relative to the largest value of the reference (per
//! tensor) and its bound; the program exits with status 1 if any check fails. The timings
//! (skipped by `--no-bench`) are medians over `--runs` runs after one warm-up, the device
//! synchronised around each; `scripts/bench_pytorch.py --device cuda` gives PyTorch's on the
//! same GPU.

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use clap::Parser;
use rand::SeedableRng;
use unetpp::data::instances::{NucleiConfig, SyntheticNuclei};
use unetpp::loss::DeepSupervisionLoss;
use unetpp::maskrcnn::{MaskRcnn, MaskRcnnConfig, PyramidKind, Target};
use unetpp::prelude::*;

/// Runs the custom ops, UNet++, smp's UNet++ and Mask R-CNN on a device against the CPU, and
/// times the paper's network there.
#[derive(Parser)]
#[command(args_override_self = true)]
struct Args {
    /// Device under test: cuda, metal, or cpu (the device-generic paths on the CPU)
    #[arg(long, default_value = default_device())]
    device: String,
    /// Skip the timings
    #[arg(long)]
    no_bench: bool,
    /// Smaller timings (1×1×64² and 2×3×128²), for a CPU
    #[arg(long)]
    quick: bool,
    /// Timed runs after one warm-up
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

fn default_device() -> &'static str {
    if cfg!(feature = "cuda") {
        "cuda"
    } else if cfg!(feature = "metal") {
        "metal"
    } else {
        "cpu"
    }
}

/// The device under test, and how to run on it and on the reference CPU.
struct Dut {
    device: Device,
    /// The CPU, running its device-generic paths.
    generic_cpu: bool,
}

impl Dut {
    fn new(name: &str) -> Result<Self> {
        let device = match name {
            "cpu" => Device::Cpu,
            "cuda" => Device::new_cuda(0)?,
            "metal" => Device::new_metal(0)?,
            other => {
                return Err(Error::Input(format!(
                    "--device {other:?}: expected cpu, cuda or metal"
                )))
            }
        };
        Ok(Dut {
            generic_cpu: device.is_cpu(),
            device,
        })
    }

    /// `f` on the device under test.
    fn run<T>(&self, f: impl FnOnce(&Device) -> Result<T>) -> Result<T> {
        unetpp::ops::set_device_generic(self.generic_cpu);
        let out = f(&self.device);
        unetpp::ops::set_device_generic(false);
        out
    }

    /// `f` on the CPU kernels, the reference.
    fn reference<T>(&self, f: impl FnOnce(&Device) -> Result<T>) -> Result<T> {
        unetpp::ops::set_device_generic(false);
        f(&Device::Cpu)
    }

    fn sync(&self) -> Result<()> {
        Ok(self.device.synchronize()?)
    }
}

/// The tally of the comparisons.
#[derive(Default)]
struct Report {
    checks: usize,
    failures: Vec<String>,
}

impl Report {
    /// Compares `got` (any device) with `want` (CPU): `max |got − want| / max |want|` in f64
    /// on the host, against `bound`.
    fn compare(&mut self, what: &str, got: &Tensor, want: &Tensor, bound: f64) -> Result<()> {
        self.checks += 1;
        if got.dims() != want.dims() {
            let msg = format!("{what}: shape {:?}, expected {:?}", got.dims(), want.dims());
            println!("FAIL {msg}");
            self.failures.push(msg);
            return Ok(());
        }
        let rel = abs_error(got, want)? / max_abs(want)?.max(1e-12);
        let ok = rel <= bound;
        println!(
            "{} {what}: relative error {rel:.2e} (bound {bound:.0e})",
            if ok { "ok  " } else { "FAIL" }
        );
        if !ok {
            self.failures
                .push(format!("{what}: {rel:.2e} > {bound:.0e}"));
        }
        Ok(())
    }

    fn fail(&mut self, what: &str, why: &str) {
        self.checks += 1;
        println!("FAIL {what}: {why}");
        self.failures.push(format!("{what}: {why}"));
    }
}

/// A fixed pseudo-random tensor made on the host (the same on every device).
fn host_randn(shape: &[usize], seed: u64) -> Result<Tensor> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            // A sum of four uniforms, centred and scaled to unit variance.
            let mut acc = 0f32;
            for _ in 0..4 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                acc += (s >> 40) as f32 / (1u64 << 24) as f32;
            }
            (acc - 2.0) * 3f32.sqrt()
        })
        .collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

/// The output of `f` on `inputs` and the gradient of `Σ output · cotangent` with respect to
/// each input, all copied to the CPU.
fn value_and_grads(
    inputs: &[Tensor],
    dev: &Device,
    f: &dyn Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<Vec<Tensor>> {
    let vars = inputs
        .iter()
        .map(|t| Ok(Var::from_tensor(&t.to_device(dev)?)?))
        .collect::<Result<Vec<_>>>()?;
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts)?;
    let cot = host_randn(y.dims(), 99)?
        .to_device(dev)?
        .to_dtype(y.dtype())?;
    let grads = (&y * &cot)?.sum_all()?.backward()?;
    let mut out = vec![y.to_device(&Device::Cpu)?];
    for t in &ts {
        match grads.get(t) {
            Some(g) => out.push(g.to_device(&Device::Cpu)?),
            None => out.push(t.zeros_like()?.to_device(&Device::Cpu)?),
        }
    }
    Ok(out)
}

type OpFn = Box<dyn Fn(&[Tensor]) -> Result<Tensor>>;

/// Every custom op, forward and backward, on the device against the CPU kernels.
fn check_ops(dut: &Dut, report: &mut Report) -> Result<()> {
    println!("\n== custom ops, forward and backward");
    let r = |shape: &[usize], seed| host_randn(shape, seed);
    let mut cases: Vec<(&str, Vec<Tensor>, OpFn)> = vec![
        (
            "conv3x3",
            vec![
                r(&[2, 16, 24, 24], 1)?,
                r(&[24, 16, 3, 3], 2)?,
                r(&[24], 3)?,
            ],
            Box::new(|t| unetpp::ops::conv3x3(&t[0], &t[1], Some(&t[2]))),
        ),
        (
            "conv3x3_fused (ReLU)",
            vec![
                r(&[2, 16, 24, 24], 4)?,
                r(&[24, 16, 3, 3], 5)?,
                r(&[24], 6)?,
            ],
            Box::new(|t| unetpp::ops::conv3x3_fused(&t[0], &t[1], Some(&t[2]), true)),
        ),
        (
            "conv3x3_concat",
            vec![
                r(&[1, 8, 16, 16], 7)?,
                r(&[1, 4, 16, 16], 8)?,
                r(&[6, 12, 3, 3], 9)?,
            ],
            Box::new(|t| {
                unetpp::ops::conv3x3_concat(&[t[0].clone(), t[1].clone()], &t[2], None, true)
            }),
        ),
        (
            "conv1x1",
            vec![
                r(&[2, 16, 12, 12], 10)?,
                r(&[5, 16, 1, 1], 11)?,
                r(&[5], 12)?,
            ],
            Box::new(|t| unetpp::ops::conv1x1(&t[0], &t[1], Some(&t[2]))),
        ),
        (
            "conv2d 7×7 stride 2",
            vec![r(&[1, 3, 32, 32], 13)?, r(&[8, 3, 7, 7], 14)?],
            Box::new(|t| unetpp::ops::conv2d(&t[0], &t[1], None, 2, 3)),
        ),
        (
            "conv_transpose2x2",
            vec![r(&[2, 12, 8, 8], 15)?, r(&[12, 6, 2, 2], 16)?, r(&[6], 17)?],
            Box::new(|t| unetpp::ops::conv_transpose2x2(&t[0], &t[1], Some(&t[2]))),
        ),
        (
            "resize_bilinear",
            vec![r(&[2, 3, 9, 13], 18)?],
            Box::new(|t| unetpp::ops::resize_bilinear(&t[0], 20, 17, false)),
        ),
        (
            "resize_bilinear align_corners",
            vec![r(&[2, 3, 9, 13], 19)?],
            Box::new(|t| unetpp::ops::resize_bilinear(&t[0], 18, 25, true)),
        ),
        (
            "max_pool2d 2/2",
            vec![r(&[2, 4, 16, 16], 20)?],
            Box::new(|t| unetpp::ops::max_pool2d(&t[0], 2, 2, 0)),
        ),
        (
            "max_pool2d 3/2 pad 1",
            vec![r(&[2, 4, 15, 15], 21)?],
            Box::new(|t| unetpp::ops::max_pool2d(&t[0], 3, 2, 1)),
        ),
        (
            "upsample_nearest2d",
            vec![r(&[2, 4, 7, 5], 22)?],
            Box::new(|t| unetpp::ops::upsample_nearest2d(&t[0], 2)),
        ),
        (
            "batch_norm_train",
            vec![r(&[4, 6, 10, 10], 23)?, r(&[6], 24)?, r(&[6], 25)?],
            Box::new(|t| Ok(unetpp::ops::batch_norm_train(&t[0], &t[1], &t[2], 1e-5)?.output)),
        ),
        (
            "bias_add",
            vec![r(&[2, 6, 5, 5], 26)?, r(&[6], 27)?],
            Box::new(|t| unetpp::ops::bias_add(&t[0], &t[1])),
        ),
        (
            "relu",
            vec![r(&[2, 6, 5, 5], 31)?],
            Box::new(|t| unetpp::ops::relu(&t[0])),
        ),
        (
            "add_relu",
            vec![r(&[2, 6, 5, 5], 28)?, r(&[2, 6, 5, 5], 29)?],
            Box::new(|t| unetpp::ops::add_relu(&t[0], &t[1])),
        ),
    ];
    {
        let rois = Tensor::new(
            &[
                [0f32, 1.5, 2.0, 20.0, 14.5],
                [1., -4., -3., 9., 40.],
                [0., 10., 10., 10.5, 10.2],
                [1., 0., 0., 31., 31.],
            ],
            &Device::Cpu,
        )?;
        for (label, aligned, ratio) in [
            ("roi_align aligned, ratio 2", true, 2),
            ("roi_align, ratio 2", false, 2),
            ("roi_align aligned, adaptive ratio", true, 0),
        ] {
            let rois = rois.clone();
            cases.push((
                label,
                vec![r(&[2, 8, 32, 32], 30)?],
                Box::new(move |t| {
                    unetpp::ops::RoiAlign::new((7, 7))
                        .with_spatial_scale(1.0)
                        .with_sampling_ratio(ratio)
                        .with_aligned(aligned)
                        .forward(&t[0], &rois.to_device(t[0].device())?)
                }),
            ));
        }
    }
    for (name, inputs, f) in &cases {
        let want = dut.reference(|dev| value_and_grads(inputs, dev, f.as_ref()))?;
        let got = match dut.run(|dev| value_and_grads(inputs, dev, f.as_ref())) {
            Ok(got) => got,
            Err(e) => {
                report.fail(name, &e.to_string());
                continue;
            }
        };
        report.compare(&format!("{name} forward"), &got[0], &want[0], 1e-5)?;
        for (i, (g, w)) in got[1..].iter().zip(&want[1..]).enumerate() {
            report.compare(&format!("{name} gradient of input {i}"), g, w, 1e-5)?;
        }
    }
    check_box_ops(dut, report)?;
    Ok(())
}

/// NMS and IoU, which have no gradient.
fn check_box_ops(dut: &Dut, report: &mut Report) -> Result<()> {
    let n = 200;
    let raw = host_randn(&[n, 4], 40)?;
    let xy = (raw.narrow(1, 0, 2)?.abs()? * 20.0)?;
    let wh = ((raw.narrow(1, 2, 2)?.abs()? * 8.0)? + 1.0)?;
    let boxes = Tensor::cat(&[&xy, &(&xy + &wh)?], 1)?;
    let scores = host_randn(&[n], 41)?;
    let run = |dev: &Device| -> Result<(Tensor, Tensor)> {
        let b = boxes.to_device(dev)?;
        let keep = unetpp::ops::nms(&b, &scores.to_device(dev)?, 0.5)?;
        let iou = unetpp::ops::box_iou(&b, &b.narrow(0, 0, 17)?)?;
        Ok((keep.to_device(&Device::Cpu)?, iou.to_device(&Device::Cpu)?))
    };
    let want = dut.reference(run)?;
    match dut.run(run) {
        Ok(got) => {
            report.compare("nms kept indices", &got.0, &want.0, 0.0)?;
            report.compare("box_iou", &got.1, &want.1, 1e-6)?;
        }
        Err(e) => report.fail("nms / box_iou", &e.to_string()),
    }
    Ok(())
}

/// Loss, heads, every gradient and the weights after one AdamW step of a small UNet++ in
/// training mode (batch norm), for each up-sampling mode.
fn check_unetpp_training(dut: &Dut, report: &mut Report) -> Result<()> {
    println!("\n== UNet++ training step (batch norm, deep supervision, SGD)");
    let x = host_randn(&[2, 1, 32, 32], 50)?;
    let target = x.gt(0.3)?.to_dtype(DType::F32)?;
    for (label, up) in [
        ("transposed", Upsample::Transposed),
        ("nearest", Upsample::Nearest),
        (
            "bilinear",
            Upsample::Bilinear {
                align_corners: false,
            },
        ),
        (
            "bilinear align_corners",
            Upsample::Bilinear {
                align_corners: true,
            },
        ),
    ] {
        let cfg = UNetPlusPlusConfig::paper()
            .widths([8, 12, 16, 20, 24])
            .upsample(up)
            .norm(Norm::Batch)
            .build()?;
        let step = |dev: &Device| -> Result<BTreeMap<String, Tensor>> {
            let varmap = VarMap::new();
            let net = UNetPlusPlus::new(
                &cfg,
                unetpp::nn::seeded_var_builder(&varmap, 3, DType::F32, dev),
            )?;
            let (x, t) = (x.to_device(dev)?, target.to_device(dev)?);
            let out = net.forward_heads(&x, true)?;
            let loss = DeepSupervisionLoss::paper().compute(&out, &t)?;
            // SGD: its step is linear in the gradient. Adam's first step is ±lr whatever the
            // gradient's size, so rounding noise that flips the sign of a near-zero gradient
            // would move that weight by 2·lr on one device and not the other.
            let mut opt = candle_nn::SGD::new(varmap.all_vars(), 0.1)?;
            let grads = loss.backward()?;
            let mut found = BTreeMap::new();
            found.insert("loss".to_string(), loss.to_device(&Device::Cpu)?);
            for (i, h) in out.logits().iter().enumerate() {
                found.insert(format!("head {i}"), h.to_device(&Device::Cpu)?);
            }
            let vars = varmap
                .data()
                .lock()
                .map_err(|_| Error::Input("poisoned".into()))?
                .clone();
            for (name, var) in &vars {
                if let Some(g) = grads.get(var.as_tensor()) {
                    found.insert(format!("∂loss/∂{name}"), g.to_device(&Device::Cpu)?);
                }
            }
            opt.step(&grads)?;
            for (name, var) in &vars {
                found.insert(
                    format!("{name} after the step"),
                    var.to_device(&Device::Cpu)?,
                );
            }
            Ok(found)
        };
        let want = dut.reference(step)?;
        let got = match dut.run(step) {
            Ok(got) => got,
            Err(e) => {
                report.fail(&format!("UNet++ {label}"), &e.to_string());
                continue;
            }
        };
        // One line per kind of tensor: the worst of its kind. Each tensor's error is taken
        // relative to its own largest value, floored at 1e-3 of the largest of its kind: the
        // biases ahead of batch norm have a zero gradient in exact arithmetic, so theirs are
        // rounding noise on both sides.
        let mut kind_scale: BTreeMap<&str, f64> = BTreeMap::new();
        let kind_of = |name: &str| {
            if name.starts_with('∂') {
                "gradients"
            } else if name.ends_with("after the step") {
                "weights after the step"
            } else if name == "loss" {
                "loss"
            } else {
                "heads"
            }
        };
        for (name, w) in &want {
            let e = kind_scale.entry(kind_of(name)).or_insert(0.0);
            *e = e.max(max_abs(w)?);
        }
        let mut worst: BTreeMap<&str, (f64, String)> = BTreeMap::new();
        for (name, w) in &want {
            let Some(g) = got.get(name) else {
                report.fail(&format!("UNet++ {label}"), &format!("{name} is missing"));
                continue;
            };
            let kind = kind_of(name);
            let floor = 1e-3 * kind_scale.get(kind).copied().unwrap_or(0.0);
            let rel = abs_error(g, w)? / max_abs(w)?.max(floor).max(1e-30);
            let e = worst.entry(kind).or_insert((0.0, String::new()));
            if rel > e.0 || e.1.is_empty() {
                *e = (rel, name.clone());
            }
        }
        for (kind, (rel, name)) in worst {
            // Batch statistics over 2×32² values and sums over the whole map: f32 rounding
            // on a different summation order.
            let bound = if kind == "gradients" { 1e-3 } else { 1e-4 };
            report.checks += 1;
            let ok = rel <= bound;
            println!(
                "{} UNet++ {label}, {kind}: worst relative error {rel:.2e} ({name}; bound {bound:.0e})",
                if ok { "ok  " } else { "FAIL" }
            );
            if !ok {
                report
                    .failures
                    .push(format!("UNet++ {label} {kind} ({name}): {rel:.2e}"));
            }
        }
    }
    Ok(())
}

/// `max |got − want|`, in f64 on the host (infinite for a non-finite value of `got`).
fn abs_error(got: &Tensor, want: &Tensor) -> Result<f64> {
    let (g, w) = (host_values(got)?, host_values(want)?);
    if g.len() != w.len() {
        return Ok(f64::INFINITY);
    }
    Ok(g.iter().zip(&w).fold(0f64, |m, (a, b)| {
        m.max(if a.is_finite() {
            (a - b).abs()
        } else {
            f64::INFINITY
        })
    }))
}

/// `max |t|`, in f64 on the host.
fn max_abs(t: &Tensor) -> Result<f64> {
    Ok(host_values(t)?.iter().fold(0f64, |m, v| m.max(v.abs())))
}

/// The values of `t` (any device) as f64 on the host.
fn host_values(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?)
}

/// smp's UnetPlusPlus (ResNet-18 encoder) in inference.
fn check_smp(dut: &Dut, report: &mut Report) -> Result<()> {
    println!("\n== smp UnetPlusPlus (ResNet-18) inference");
    let cfg = unetpp::interop::smp::SmpConfig::resnet18()
        .in_channels(3)
        .classes(2)
        .build()?;
    let x = host_randn(&[1, 3, 64, 64], 60)?;
    let run = |dev: &Device| -> Result<Tensor> {
        let varmap = VarMap::new();
        let net = unetpp::interop::smp::SmpUnetPlusPlus::new(
            &cfg,
            unetpp::nn::seeded_var_builder(&varmap, 4, DType::F32, dev),
        )?;
        Ok(net.forward(&x.to_device(dev)?)?.to_device(&Device::Cpu)?)
    };
    let want = dut.reference(run)?;
    match dut.run(run) {
        Ok(got) => report.compare("smp UnetPlusPlus output", &got, &want, 1e-4)?,
        Err(e) => report.fail("smp UnetPlusPlus", &e.to_string()),
    }
    Ok(())
}

/// The named loss values, and the boxes, scores, labels and masks of one image.
type LossesAndDetections = (Vec<(String, f32)>, Vec<Tensor>);

/// Mask R-CNN and Mask R-CNN++ on a compact configuration: the five training losses (same
/// sampling seed) and the detections of an untrained-but-seeded model.
fn check_maskrcnn(dut: &Dut, report: &mut Report) -> Result<()> {
    let set = SyntheticNuclei::new(
        NucleiConfig::builder()
            .samples(2)
            .seed(21)
            .size(64, 64)
            .objects(2, 5)
            .radius(4.0, 12.0)
            .build()?,
    )?;
    for kind in [PyramidKind::Fpn, PyramidKind::Nested] {
        println!("\n== Mask R-CNN, {kind:?} pyramid: losses and detection");
        let cfg = MaskRcnnConfig::compact(2, 32, 64).pyramid(kind).build()?;
        let run = |dev: &Device| -> Result<LossesAndDetections> {
            let varmap = VarMap::new();
            let model = MaskRcnn::new(
                &cfg,
                unetpp::nn::seeded_var_builder(&varmap, 0, DType::F32, dev),
            )?;
            let mut images = Vec::new();
            let mut targets = Vec::new();
            for i in 0..2 {
                let s = set.get(i)?;
                images.push(s.image_tensor(dev)?);
                targets.push(
                    Target::new(s.boxes_tensor(dev)?, s.labels_tensor(dev)?)
                        .with_masks(s.masks_tensor(dev)?),
                );
            }
            let mut rng = rand::rngs::StdRng::seed_from_u64(5);
            let losses = model.losses(&images, &targets, &mut rng)?;
            let values = losses
                .values()?
                .into_iter()
                .map(|(n, v)| (n.to_string(), v))
                .collect();
            let found = model.detect(&images[..1])?;
            let d = &found[0];
            let detections = vec![
                d.boxes.to_device(&Device::Cpu)?,
                d.scores.to_device(&Device::Cpu)?,
                d.labels.to_device(&Device::Cpu)?,
                d.masks.to_device(&Device::Cpu)?,
            ];
            Ok((values, detections))
        };
        let want = dut.reference(run)?;
        let got = match dut.run(run) {
            Ok(got) => got,
            Err(e) => {
                report.fail(&format!("Mask R-CNN {kind:?}"), &e.to_string());
                continue;
            }
        };
        for ((name, g), (_, w)) in got.0.iter().zip(&want.0) {
            let g = Tensor::new(*g, &Device::Cpu)?;
            let w = Tensor::new(*w, &Device::Cpu)?;
            report.compare(&format!("{kind:?} loss {name}"), &g, &w, 1e-3)?;
        }
        for (i, what) in ["boxes", "scores", "labels", "masks"].iter().enumerate() {
            report.compare(
                &format!("{kind:?} detection {what}"),
                &got.1[i],
                &want.1[i],
                if *what == "labels" { 0.0 } else { 1e-3 },
            )?;
        }
    }
    Ok(())
}

/// The half-precision types the device runs: candle's CPU has no bf16 matrix product.
fn half_dtypes(dev: &Device) -> Vec<DType> {
    if dev.is_cpu() {
        vec![DType::F16]
    } else {
        vec![DType::F16, DType::BF16]
    }
}

/// Half-precision inference of the paper's widths (L4) on the device against its own f32.
fn check_half(dut: &Dut, report: &mut Report) -> Result<()> {
    println!("\n== half-precision inference (UNet++ L4, against f32 on the same device)");
    let cfg = UNetPlusPlusConfig::paper()
        .widths([8, 16, 32, 64, 128])
        .build()?;
    let x = host_randn(&[2, 1, 64, 64], 90)?;
    for dt in half_dtypes(&dut.device) {
        // Units in the last place: 2⁻¹¹ for f16, 2⁻⁸ for bf16; 16 of them, as the CPU test.
        let ulp = if dt == DType::F16 {
            2f64.powi(-11)
        } else {
            2f64.powi(-8)
        };
        let out = dut.run(|dev| {
            let varmap = VarMap::new();
            let net = UNetPlusPlus::new(
                &cfg,
                unetpp::nn::seeded_var_builder(&varmap, 8, DType::F32, dev),
            )?
            .detach()?;
            let x = x.to_device(dev)?;
            let full = net.forward(&x)?;
            let half = net.to_dtype(dt)?.forward(&x.to_dtype(dt)?)?;
            Ok((half.to_device(&Device::Cpu)?, full.to_device(&Device::Cpu)?))
        });
        match out {
            Ok((half, full)) => {
                report.compare(&format!("UNet++ L4 in {dt:?}"), &half, &full, 16.0 * ulp)?
            }
            Err(e) => report.fail(&format!("UNet++ L4 in {dt:?}"), &e.to_string()),
        }
    }
    Ok(())
}

/// A UNet++ saved from the device and loaded back onto it computes the same.
fn check_save_load(dut: &Dut, report: &mut Report) -> Result<()> {
    println!("\n== save / load round trip");
    let cfg = UNetPlusPlusConfig::paper()
        .widths([4, 6, 8, 10, 12])
        .build()?;
    let path = std::env::temp_dir().join(format!(
        "unetpp-gpu-check-{}.safetensors",
        std::process::id()
    ));
    let x = host_randn(&[1, 1, 32, 32], 70)?;
    let out = dut.run(|dev| {
        let varmap = VarMap::new();
        let net = UNetPlusPlus::new(
            &cfg,
            unetpp::nn::seeded_var_builder(&varmap, 6, DType::F32, dev),
        )?;
        let x = x.to_device(dev)?;
        let before = net.forward(&x)?;
        net.save(&path)?;
        let loaded = UNetPlusPlus::load(&path, dev)?;
        let after = loaded.forward(&x)?;
        Ok((
            before.to_device(&Device::Cpu)?,
            after.to_device(&Device::Cpu)?,
        ))
    });
    let _ = std::fs::remove_file(&path);
    match out {
        Ok((before, after)) => {
            report.compare("saved and loaded UNet++ output", &after, &before, 0.0)?
        }
        Err(e) => report.fail("save / load", &e.to_string()),
    }
    Ok(())
}

/// Median seconds of `f` over `runs` runs after one warm-up, the device synchronised.
fn median(dut: &Dut, runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    dut.sync()?;
    let mut times = Vec::new();
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        f()?;
        dut.sync()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Inference of the paper's network pruned to L1–L4 and a training step of the full one.
fn bench(dut: &Dut, args: &Args) -> Result<()> {
    let sizes: [(usize, usize, usize); 2] = if args.quick {
        [(1, 1, 64), (2, 3, 128)]
    } else {
        [(1, 1, 256), (8, 3, 512)]
    };
    unetpp::ops::set_device_generic(dut.generic_cpu);
    let dev = &dut.device;
    for (b, c, s) in sizes {
        println!(
            "\n== timings: paper UNet++, input {b}x{c}x{s}x{s}, f32, median of {} runs",
            args.runs
        );
        let cfg = UNetPlusPlusConfig::paper().in_channels(c).build()?;
        let varmap = VarMap::new();
        let net = UNetPlusPlus::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, dev))?;
        let x = host_randn(&[b, c, s, s], 80)?.to_device(dev)?;
        let inference = net.detach()?;
        println!("level  median s");
        for k in 1..=cfg.depth() {
            let pruned = inference.prune(k)?;
            let t = median(dut, args.runs, || pruned.forward(&x).map(|_| ()))?;
            println!("L{k}     {t:8.4}");
        }
        for dt in half_dtypes(dev) {
            let half = inference.to_dtype(dt)?;
            let xh = x.to_dtype(dt)?;
            let t = median(dut, args.runs, || half.forward(&xh).map(|_| ()))?;
            println!("L4 in {dt:?}: {t:8.4}");
        }
        let target = x.narrow(1, 0, 1)?.gt(0.0)?.to_dtype(DType::F32)?;
        let mut opt = AdamW::new(varmap.all_vars(), ParamsAdamW::default())?;
        let loss = DeepSupervisionLoss::paper();
        let t = median(dut, args.runs, || {
            let out = net.forward_heads(&x, true)?;
            opt.backward_step(&loss.compute(&out, &target)?)?;
            Ok(())
        })?;
        println!("training step (L4, 4 heads, AdamW, batch {b}): {t:.4} s");
    }
    unetpp::ops::set_device_generic(false);
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dut = Dut::new(&args.device)?;
    println!(
        "device under test: {:?}{}",
        dut.device,
        if dut.generic_cpu {
            " (device-generic paths, against the CPU kernels)"
        } else {
            ""
        }
    );
    let mut report = Report::default();
    check_ops(&dut, &mut report)?;
    check_unetpp_training(&dut, &mut report)?;
    check_smp(&dut, &mut report)?;
    check_maskrcnn(&dut, &mut report)?;
    check_half(&dut, &mut report)?;
    check_save_load(&dut, &mut report)?;
    println!(
        "\n{} checks, {} failed",
        report.checks,
        report.failures.len()
    );
    for f in &report.failures {
        println!("  {f}");
    }
    if !args.no_bench {
        bench(&dut, &args)?;
    }
    if !report.failures.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
