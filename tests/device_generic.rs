//! The device-generic paths (what CUDA and Metal run, forced on the CPU with
//! `unetpp::ops::set_device_generic`) create no `f64` tensor on the model paths: Metal has no
//! `f64`. Every tensor of a training step's autograd graph is walked, forward and backward.
//!
//! Every test of this file runs in the generic mode (the switch is process-wide, and the
//! tests of one file share a process), so each one sets it first and none resets it.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use unetpp::loss::DeepSupervisionLoss;
use unetpp::prelude::*;

mod common;
use common::max_rel_diff;

fn generic() {
    unetpp::ops::set_device_generic(true);
}

/// Panics if any tensor of `root`'s autograd graph, or any gradient of it, is `f64`.
fn assert_no_f64(what: &str, root: &Tensor) {
    let nodes = root.sorted_nodes();
    assert!(
        nodes.len() > 10,
        "{what}: the graph has {} nodes; nothing was tracked",
        nodes.len()
    );
    for node in &nodes {
        assert_ne!(
            node.dtype(),
            DType::F64,
            "{what}: a node of shape {:?} is f64",
            node.dims()
        );
    }
    let grads = root.backward().unwrap();
    for node in &nodes {
        if let Some(g) = grads.get(node) {
            assert_ne!(
                g.dtype(),
                DType::F64,
                "{what}: a gradient of shape {:?} is f64",
                g.dims()
            );
        }
    }
}

/// Standard normal values, the same at every run (Box–Muller on a seeded generator): the
/// half-precision bounds below hold for typical inputs, and a test must not pass or fail by
/// the draw.
fn input(shape: &[usize]) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| {
            let u1: f32 = rng.random_range(f32::EPSILON..1.0);
            let u2: f32 = rng.random();
            (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

#[test]
fn unetpp_training_step_has_no_f64_in_the_generic_mode() {
    generic();
    let ups = [
        Upsample::Transposed,
        Upsample::Nearest,
        Upsample::Bilinear {
            align_corners: false,
        },
        Upsample::Bilinear {
            align_corners: true,
        },
    ];
    for up in ups {
        for norm in [Norm::Batch, Norm::None] {
            let cfg = UNetPlusPlusConfig::paper()
                .widths([4, 6, 8, 10, 12])
                .upsample(up)
                .norm(norm)
                .build()
                .unwrap();
            let varmap = VarMap::new();
            let net = UNetPlusPlus::new(
                &cfg,
                unetpp::nn::seeded_var_builder(&varmap, 1, DType::F32, &Device::Cpu),
            )
            .unwrap();
            let x = Var::from_tensor(&input(&[2, 1, 32, 32])).unwrap();
            let target = x.as_tensor().gt(0.0).unwrap().to_dtype(DType::F32).unwrap();
            let out = net.forward_heads(x.as_tensor(), true).unwrap();
            let loss = DeepSupervisionLoss::paper().compute(&out, &target).unwrap();
            assert_no_f64(&format!("UNet++ {up:?}, {norm:?}"), &loss);
        }
    }
}

#[test]
fn multi_class_losses_have_no_f64_in_the_generic_mode() {
    generic();
    let logits = Var::from_tensor(&input(&[2, 3, 8, 8])).unwrap();
    let labels = Tensor::from_vec(
        (0..128u32).map(|i| i % 3).collect::<Vec<_>>(),
        (2, 8, 8),
        &Device::Cpu,
    )
    .unwrap();
    let ce = unetpp::loss::cross_entropy(logits.as_tensor(), &labels, Some(&[1.0, 2.0, 0.5]), None)
        .unwrap();
    let dice = unetpp::loss::soft_dice_multiclass(logits.as_tensor(), &labels, 1.0, Some(1), true)
        .unwrap();
    assert_no_f64("cross-entropy + Dice", &(ce + dice).unwrap());
}

#[test]
fn smp_unetplusplus_has_no_f64_in_the_generic_mode() {
    generic();
    let cfg = unetpp::interop::smp::SmpConfig::resnet18()
        .in_channels(3)
        .classes(2)
        .build()
        .unwrap();
    let varmap = VarMap::new();
    let net = unetpp::interop::smp::SmpUnetPlusPlus::new(
        &cfg,
        unetpp::nn::seeded_var_builder(&varmap, 2, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let x = Var::from_tensor(&input(&[1, 3, 64, 64])).unwrap();
    let y = net.forward_t(x.as_tensor(), true).unwrap();
    assert_no_f64("smp UnetPlusPlus", &y.sqr().unwrap().mean_all().unwrap());
    // Half-precision inference, against f32 (units of f16's last place, 2⁻¹¹, as below; the
    // network is 25 convolutions deep).
    let want = net.forward(x.as_tensor()).unwrap();
    let half = net.to_dtype(DType::F16).unwrap();
    let got = half
        .forward(&x.as_tensor().to_dtype(DType::F16).unwrap())
        .unwrap();
    assert_eq!(got.dtype(), DType::F16);
    let e = max_rel_diff(&got, &want);
    eprintln!("smp UnetPlusPlus in f16: relative error {e:.2e}");
    assert!(
        e < 32.0 * 2f64.powi(-11),
        "smp in f16: relative error {e:.2e}"
    );
}

/// Half-precision inference and a mixed-precision training step (f32 master weights, f32
/// loss) on the generic paths, against f32. Errors are in units of f16's last place, 2⁻¹¹:
/// measured about 3 (inference) and 10 (gradients, relative to the largest) on an AMD EPYC,
/// bounded at 16 and 32. Without `bias_add` summing half-precision bias gradients in f32 the
/// gradients were 100 units off. (candle's CPU has no bf16 matrix
/// product; `examples/gpu_check.rs` runs bf16 on GPUs.)
#[test]
fn half_precision_inference_and_mixed_precision_training() {
    generic();
    let cfg = UNetPlusPlusConfig::paper()
        .widths([4, 6, 8, 10, 12])
        .build()
        .unwrap();
    let varmap = VarMap::new();
    let net = UNetPlusPlus::new(
        &cfg,
        unetpp::nn::seeded_var_builder(&varmap, 7, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let x = input(&[2, 1, 32, 32]);
    let target = x.gt(0.0).unwrap().to_dtype(DType::F32).unwrap();
    let want = net.detach().unwrap().forward(&x).unwrap();
    let loss_of = |half: Option<DType>| {
        let run = match half {
            Some(dt) => net.to_dtype(dt).unwrap(),
            None => net.clone(),
        };
        let xin = x.to_dtype(half.unwrap_or(DType::F32)).unwrap();
        let out = run.forward_heads(&xin, true).unwrap();
        let heads: Vec<Tensor> = out
            .logits()
            .iter()
            .map(|h| h.to_dtype(DType::F32).unwrap())
            .collect();
        let loss = DeepSupervisionLoss::paper()
            .compute_heads(&heads, &target)
            .unwrap();
        assert_eq!(loss.dtype(), DType::F32);
        // f16 needs loss scaling: per-pixel gradients of a mean over 2048 pixels fall below
        // f16's smallest normal (6e-5) a few layers down and lose their digits.
        let scale = if half.is_some() { 1024.0 } else { 1.0 };
        let grads = (loss * scale).unwrap().backward().unwrap();
        varmap
            .all_vars()
            .iter()
            .filter_map(|v| grads.get(v.as_tensor()).map(|g| (g / scale).unwrap()))
            .collect::<Vec<Tensor>>()
    };
    let grads32 = loss_of(None);
    let gscale = grads32
        .iter()
        .map(|g| {
            g.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
        })
        .fold(0f64, f64::max);
    for (dt, ulp) in [(DType::F16, 2f64.powi(-11))] {
        let half = net.detach().unwrap().to_dtype(dt).unwrap();
        let y = half.forward(&x.to_dtype(dt).unwrap()).unwrap();
        assert_eq!(y.dtype(), dt);
        let e = max_rel_diff(&y, &want);
        assert!(e < 16.0 * ulp, "{dt:?} inference: relative error {e:.2e}");
        // Mixed precision: the gradients land on the f32 variables.
        let grads = loss_of(Some(dt));
        assert_eq!(
            grads.len(),
            grads32.len(),
            "{dt:?}: a variable got no gradient"
        );
        let mut worst = 0f64;
        for (g, w) in grads.iter().zip(&grads32) {
            assert_eq!(g.dtype(), DType::F32);
            let d = (g - w).unwrap().abs().unwrap().max_all().unwrap();
            let dd = d.to_scalar::<f32>().unwrap() as f64 / gscale;
            worst = worst.max(dd);
        }
        assert!(
            worst < 32.0 * ulp,
            "{dt:?} mixed-precision gradients: error {worst:.2e} of the largest gradient"
        );
        eprintln!(
            "{dt:?}: inference {e:.2e}, gradients {worst:.2e} (unit roundoff {:.1e})",
            ulp / 2.0
        );
    }
}

/// The conversions to `f64` in the library: each must come after a copy to the host
/// (`to_device(&Device::Cpu)`, in the same expression, at most three lines above), so that
/// the `f64` tensor is made there and not on the device. Helper tables (`Vec<f64>` made into
/// tensors) go through `ops::host_tensor`, which converts on the host; the graph walks above
/// catch what this textual check cannot.
#[test]
fn every_conversion_to_f64_in_the_library_happens_on_the_host() {
    let mut offenders = Vec::new();
    for file in common::src_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        // Unit tests (at the end of a file) run on the CPU only.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        let lines: Vec<&str> = code.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let converts = line.contains("to_dtype(DType::F64)")
                || line.contains("to_dtype(candle_core::DType::F64)");
            if !converts || line.trim_start().starts_with("//") {
                continue;
            }
            let above = lines[i.saturating_sub(3)..=i].join("\n");
            if !above.contains("to_device(&Device::Cpu)")
                && !above.contains("to_device(&candle_core::Device::Cpu)")
            {
                offenders.push(format!("{}:{}: {}", file.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "conversions to f64 that may run on a device (copy to the host first, or use \
         ops::host_f64):\n{}",
        offenders.join("\n")
    );
}
