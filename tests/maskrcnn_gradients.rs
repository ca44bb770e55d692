//! Gradients of Mask R-CNN's five training losses against PyTorch autograd (fixture from
//! `scripts/make_maskrcnn_grad_fixtures.py`, whose docstring explains the set-up and the
//! bounds), and of Mask R-CNN++'s, which has no PyTorch counterpart, against central
//! differences in f64.
//!
//! The detector is `MaskRcnnConfig::compact(3, 32, 96)` (trainable batch-norm) with every
//! anchor and every proposal sampled, so that torch's and our random draws keep the same sets:
//! the RPN's losses on all anchors, the RoI heads' on fixed proposals plus the ground truth.
//! Weights come from the script's formula on both sides.
//!
//! - f32: per loss and tensor, `max |ours − g64| ≤ 8 · torch_err + 1e-5 · max |g64|` on the
//!   stored rows (`torch_err`: PyTorch's own f32 error), the same rule for projections of the
//!   whole gradient and for the loss values. Run it under every kernel:
//!   `UNETPP_CPU_CONV=stock|gemm|winograd`, `UNETPP_SIMD=scalar`.
//! - f64: the rows within the f32 rounding of the stored reference, the projections within
//!   1e-9 of their scale.
//! - Mask R-CNN++ (f64): directional derivatives of the total loss along each fusion tensor of
//!   the nested pyramid against central differences.

mod common;

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::{detection_weight, get, values};
use rand::SeedableRng;
use unetpp::maskrcnn::{MaskRcnn, MaskRcnnConfig, PyramidKind, RoiHeadsTarget};

const FIXTURE: &str = "maskrcnn_grad.safetensors";
/// The losses in the fixture's names; `total` is the sum of the other five.
const LOSSES: [&str; 6] = [
    "total",
    "classifier",
    "box_reg",
    "mask",
    "objectness",
    "rpn_box_reg",
];
/// The tensors whose gradients the fixture holds (the first rows of the large ones).
const TENSORS: [&str; 23] = [
    "backbone.body.conv1.weight",
    "backbone.body.bn1.weight",
    "backbone.body.layer2.0.conv1.weight",
    "backbone.body.layer4.0.conv1.weight",
    "backbone.body.layer4.0.downsample.1.weight",
    "backbone.body.layer4.1.bn2.bias",
    "backbone.fpn.inner_blocks.1.0.weight",
    "backbone.fpn.inner_blocks.3.0.bias",
    "backbone.fpn.layer_blocks.0.0.weight",
    "backbone.fpn.layer_blocks.1.0.weight",
    "rpn.head.conv.0.0.weight",
    "rpn.head.cls_logits.weight",
    "rpn.head.bbox_pred.weight",
    "rpn.head.bbox_pred.bias",
    "roi_heads.box_head.fc6.weight",
    "roi_heads.box_head.fc7.bias",
    "roi_heads.box_predictor.cls_score.weight",
    "roi_heads.box_predictor.bbox_pred.weight",
    "roi_heads.mask_head.0.0.weight",
    "roi_heads.mask_head.1.0.bias",
    "roi_heads.mask_predictor.conv5_mask.weight",
    "roi_heads.mask_predictor.mask_fcn_logits.weight",
    "roi_heads.mask_predictor.mask_fcn_logits.bias",
];
/// The script's `HEAD_RELU_BIASES`: biases in front of a ReLU, shifted by `HEAD_SHIFT` times
/// `±(1.5 + 2|u|)` so that few ReLU inputs sit near the kink.
const HEAD_RELU_BIASES: [&str; 6] = [
    "rpn.head.conv.0.0.bias",
    "roi_heads.box_head.fc6.bias",
    "roi_heads.box_head.fc7.bias",
    "roi_heads.mask_head.0.0.bias",
    "roi_heads.mask_head.1.0.bias",
    "roi_heads.mask_predictor.conv5_mask.bias",
];
const HEAD_SHIFT: f64 = 6.0;
/// f32: `max |ours − g64| <= TORCH_ERR_MULTIPLE · torch_err + FLOOR · max |g64|` (the rule of
/// tests/gradient_parity.rs).
const TORCH_ERR_MULTIPLE: f64 = 8.0;
const FLOOR: f64 = 1e-5;

fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0, |h, b| (h * 31 + b as u64) % 1_000_003)
}

/// The script's `relu_shift`: the factor of a shifted bias, or `None` for fill's `0.2u`.
fn relu_shift(name: &str) -> Option<f64> {
    if HEAD_RELU_BIASES.contains(&name) {
        return Some(HEAD_SHIFT);
    }
    let module = name.rsplit('.').nth(1).unwrap_or("");
    let body_bn = name.starts_with("backbone.body.")
        && name.ends_with(".bias")
        && (module.starts_with("bn") || name.ends_with("downsample.1.bias"));
    body_bn.then_some(1.0)
}

/// The script's weights: `detection_weight` (fill, then scramble for two or more dims), with
/// the biases of `relu_shift` set to `k · (2u ± 1.5)` for fill's `u`.
fn weight(name: &str, dims: &[usize]) -> Tensor {
    let Some(k) = relu_shift(name) else {
        return detection_weight(name, dims);
    };
    let h = name_hash(name);
    let v: Vec<f32> = (0..dims.iter().product::<usize>() as u64)
        .map(|i| {
            let u = ((i * 7919 + h) % 1000) as f64 / 1000.0 - 0.5;
            (k * (2.0 * u + if u >= 0.0 { 1.5 } else { -1.5 })) as f32
        })
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// The script's detector: compact, 3 classes, 32 channels, every candidate sampled.
fn config(kind: PyramidKind) -> MaskRcnnConfig {
    let compact = MaskRcnnConfig::compact(3, 32, 96).build().unwrap();
    compact
        .to_builder()
        .pyramid(kind)
        .rpn(
            compact
                .rpn()
                .to_builder()
                .batch_size_per_image(8192)
                .positive_fraction(1.0),
        )
        .roi_heads(
            compact
                .roi_heads()
                .to_builder()
                .batch_size_per_image(4096)
                .positive_fraction(1.0),
        )
        .build()
        .unwrap()
}

fn detector(kind: PyramidKind, dtype: DType) -> (VarMap, MaskRcnn) {
    let varmap = VarMap::new();
    let model = MaskRcnn::new(
        &config(kind),
        VarBuilder::from_varmap(&varmap, dtype, &Device::Cpu),
    )
    .unwrap();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let w = weight(name, var.dims()).to_dtype(dtype).unwrap();
        var.set(&w).unwrap();
    }
    (varmap, model)
}

/// The fixture's batch, image sizes, ground truth and fixed proposals, in `dtype`.
struct Inputs {
    images: Tensor,
    sizes: Vec<(usize, usize)>,
    targets: Vec<RoiHeadsTarget>,
    proposals: Vec<Tensor>,
}

fn inputs(f: &HashMap<String, Tensor>, dtype: DType) -> Inputs {
    let sizes = get(f, "image_sizes")
        .to_vec2::<i64>()
        .unwrap()
        .iter()
        .map(|s| (s[0] as usize, s[1] as usize))
        .collect();
    let at = |k: String| get(f, &k).to_dtype(dtype).unwrap();
    Inputs {
        images: at("images".into()),
        sizes,
        targets: (0..2)
            .map(|i| RoiHeadsTarget {
                boxes: at(format!("boxes{i}")),
                labels: get(f, &format!("labels{i}")).clone(),
                masks: at(format!("masks{i}")),
            })
            .collect(),
        proposals: (0..2).map(|i| at(format!("proposals{i}"))).collect(),
    }
}

/// The losses in `LOSSES`' order: the RPN's on every anchor, the RoI heads' on the fixed
/// proposals, and their sum.
fn losses(model: &MaskRcnn, x: &Inputs) -> Vec<Tensor> {
    let (_, _, h, w) = x.images.dims4().unwrap();
    let maps = model.backbone().forward_t(&x.images, true).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let rpn = model.rpn().forward((h, w), &x.sizes, &maps, true).unwrap();
    let gt: Vec<Tensor> = x.targets.iter().map(|t| t.boxes.clone()).collect();
    let rpn = model.rpn().losses(&rpn, &gt, &mut rng).unwrap();
    let levels = model.config().roi_heads().num_feature_maps();
    let heads = model
        .roi_heads()
        .forward_train(
            &maps[..levels],
            &x.proposals,
            &x.sizes,
            &x.targets,
            &mut rng,
        )
        .unwrap();
    let parts = [
        heads.classifier,
        heads.box_reg,
        heads.mask,
        rpn.objectness,
        rpn.box_reg,
    ];
    let total = parts[1..]
        .iter()
        .fold(parts[0].clone(), |s, l| (s + l).unwrap());
    std::iter::once(total).chain(parts).collect()
}

/// The gradient of `name` in `grads`, or `None` if the loss does not reach it.
fn grad_of(varmap: &VarMap, grads: &GradStore, name: &str) -> Option<Tensor> {
    let data = varmap.data().lock().unwrap();
    let var = data
        .get(name)
        .unwrap_or_else(|| panic!("the detector has no tensor {name}"));
    grads.get(var.as_tensor()).cloned()
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// The script's projection pattern `k` for `n` elements.
fn pattern(k: u64, n: usize) -> impl Iterator<Item = f64> {
    (0..n as u64).map(move |i| ((i * 7919 + 101 * k + 13) % 1000) as f64 / 1000.0 - 0.5)
}

/// The largest share of its bound that any error used.
#[derive(Default)]
struct Worst {
    elementwise: f64,
    projection: f64,
    loss: f64,
}

/// One check: printed, and a failure line if `err` exceeds `bound`.
fn check(what: String, err: f64, bound: f64, worst: &mut f64, failures: &mut Vec<String>) {
    *worst = worst.max(err / bound);
    let line = format!(
        "{what}: error {err:.2e}, bound {bound:.2e} ({:.3} of it)",
        err / bound
    );
    eprintln!("{line}");
    if err.is_nan() || err > bound {
        failures.push(line);
    }
}

/// One loss's gradients against the fixture: per stored tensor, the largest elementwise
/// error of its stored rows and the error of each projection of the whole tensor, against
/// their bounds; tensors torch's loss does not reach must have no gradient or a zero one.
fn compare(
    f: &HashMap<String, Tensor>,
    varmap: &VarMap,
    grads: &GradStore,
    loss: &str,
    dtype: DType,
    worst: &mut Worst,
) -> Vec<String> {
    let prefix = format!("grad.{loss}.");
    let mut stored: Vec<&String> = f.keys().filter(|k| k.starts_with(&prefix)).collect();
    stored.sort();
    let stats = get(f, &format!("stats.{loss}")).to_vec2::<f64>().unwrap();
    assert_eq!(stats.len(), stored.len(), "stats.{loss}");
    let mut failures = Vec::new();
    for (key, s) in stored.iter().zip(&stats) {
        let name = &key[prefix.len()..];
        let reference = get(f, key);
        let (torch_err, gmax) = (s[0], s[1]);
        let Some(ours) = grad_of(varmap, grads, name) else {
            failures.push(format!(
                "{loss} / {name}: no gradient, torch's max |g| is {gmax:.3e}"
            ));
            continue;
        };
        common::assert_finite(&ours, &format!("{loss} / {name}"));
        let rows = ours.narrow(0, 0, reference.dim(0).unwrap()).unwrap();
        assert_eq!(rows.dims(), reference.dims(), "{loss} / {name}");
        let (a, b) = (values(&rows), values(reference));
        if dtype == DType::F32 {
            let err = a
                .iter()
                .zip(&b)
                .fold(0f64, |m, (x, y)| m.max((x - y).abs()));
            let what = format!(
                "{loss:11} {name:48} max|g| {gmax:.3e}, torch's f32 error {torch_err:.2e}, ours {:.1}x it",
                err / torch_err
            );
            let bound = TORCH_ERR_MULTIPLE * torch_err + FLOOR * gmax;
            check(what, err, bound, &mut worst.elementwise, &mut failures);
        } else {
            // Against torch's f64 rounded to f32: that rounding (half an f32 ulp) and 1e-9 of
            // the scale for the two f64 computations; the projections below are the sharp test.
            let share = a.iter().zip(&b).fold(0f64, |m, (x, y)| {
                m.max((x - y).abs() / (y.abs() * 0.5f64.powi(24) + 1e-9 * gmax))
            });
            let what = format!("{loss:11} {name:48} rows against f32-rounded f64");
            check(what, share, 1.0, &mut worst.elementwise, &mut failures);
        }
        let whole = values(&ours);
        let proj = get(f, &format!("proj.{loss}.{name}"))
            .to_vec2::<f64>()
            .unwrap();
        for (k, p) in proj.iter().enumerate() {
            let dot: f64 = whole
                .iter()
                .zip(pattern(k as u64, whole.len()))
                .map(|(g, q)| g * q)
                .sum();
            let bound = if dtype == DType::F32 {
                TORCH_ERR_MULTIPLE * p[1] + FLOOR * p[2]
            } else {
                1e-9 * p[2]
            };
            let what = format!("{loss:11} {name:48} projection {k}");
            check(
                what,
                (dot - p[0]).abs(),
                bound,
                &mut worst.projection,
                &mut failures,
            );
        }
    }
    for name in TENSORS
        .iter()
        .filter(|n| !stored.iter().any(|k| &k[prefix.len()..] == **n))
    {
        if let Some(g) = grad_of(varmap, grads, name) {
            let m = max_abs(&values(&g));
            if m != 0.0 {
                failures.push(format!(
                    "{loss} / {name}: torch's gradient is 0 or absent, ours has max |g| {m:.3e}"
                ));
            }
        }
    }
    failures
}

fn matches_torchvision(dtype: DType) {
    let f = common::fixture(FIXTURE);
    let (varmap, model) = detector(PyramidKind::Fpn, dtype);
    let (sum, abs) = {
        let data = varmap.data().lock().unwrap();
        data.iter()
            .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
            .fold((0f64, 0f64), |(s, a), (_, v)| {
                let x = values(v.as_tensor());
                (
                    s + x.iter().sum::<f64>(),
                    a + x.iter().map(|y| y.abs()).sum::<f64>(),
                )
            })
    };
    let checksum = values(get(&f, "checksum"));
    assert!(
        (sum - checksum[0]).abs() <= 1e-9 * checksum[1]
            && (abs - checksum[1]).abs() <= 1e-9 * checksum[1],
        "the weights differ from the script's: sum {sum} / {}, sum |.| {abs} / {}",
        checksum[0],
        checksum[1]
    );
    let x = inputs(&f, dtype);
    let losses = losses(&model, &x);
    let mut failures = Vec::new();
    let mut worst = Worst::default();
    for (name, loss) in LOSSES.iter().zip(&losses) {
        let v = loss
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let r = values(get(&f, &format!("loss.{name}")));
        let (reference, torch_err) = (r[0], r[1]);
        let bound = if dtype == DType::F32 {
            TORCH_ERR_MULTIPLE * torch_err + FLOOR * reference.abs()
        } else {
            1e-9 * reference.abs()
        };
        let what = format!("loss_{name}: ours {v:.9}, torch {reference:.9}");
        check(
            what,
            (v - reference).abs(),
            bound,
            &mut worst.loss,
            &mut failures,
        );
        let grads = loss.backward().unwrap();
        failures.extend(compare(&f, &varmap, &grads, name, dtype, &mut worst));
    }
    eprintln!(
        "{dtype:?}: the largest error uses {:.3} of its bound elementwise, {:.3} in projections, {:.3} in loss values",
        worst.elementwise, worst.projection, worst.loss
    );
    assert!(
        failures.is_empty(),
        "{} gradients differ from torchvision's:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn fpn_loss_gradients_match_torchvision_in_f32() {
    matches_torchvision(DType::F32);
}

#[test]
fn fpn_loss_gradients_match_torchvision_in_f64() {
    matches_torchvision(DType::F64);
}

/// Mask R-CNN++: the gradient of the total loss along a fixed direction `v` of every fusion
/// tensor of the nested pyramid (`nested.x_{i}_{j}`, weight and bias) against the central
/// difference `(L(w + t v) − L(w − t v)) / 2t`, in f64, with the same inputs, sampling and
/// weight formula as the torchvision comparison.
///
/// Bound: `1e-6 · Σ |g_i v_i| + 64 ε |L| / t`. The second term is the rounding of the two
/// loss values (their noise measured at about 2.5 ε |L|) divided by the step. The first is far
/// above what a correct gradient gives (at most 2e-9 of `Σ |g_i v_i|` for the weights with `t
/// = 1e-6`, 6e-8 for the biases with `t = 1e-5`; larger steps cross ReLU kinks, which cost up
/// to 6e-4 at `t = 1e-4`) and far below what a missing or misrouted term gives.
#[test]
fn nested_fpn_gradients_match_central_differences_in_f64() {
    let f = common::fixture(FIXTURE);
    let (varmap, model) = detector(PyramidKind::Nested, DType::F64);
    let x = inputs(&f, DType::F64);
    let total = losses(&model, &x).swap_remove(0);
    let loss = total.to_scalar::<f64>().unwrap();
    let grads = total.backward().unwrap();
    let mut names: Vec<String> = varmap
        .data()
        .lock()
        .unwrap()
        .keys()
        .filter(|n| n.starts_with("backbone.fpn.nested."))
        .cloned()
        .collect();
    names.sort();
    assert_eq!(
        names.len(),
        12,
        "six fusions of the depth-3 grid: {names:?}"
    );
    let mut failures = Vec::new();
    let mut worst = 0f64;
    for name in &names {
        let var = varmap.data().lock().unwrap()[name].clone();
        let g = values(
            grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name} has no gradient")),
        );
        let v: Vec<f64> = pattern(7, g.len()).collect();
        let predicted: f64 = g.iter().zip(&v).map(|(a, b)| a * b).sum();
        let scale: f64 = g.iter().zip(&v).map(|(a, b)| (a * b).abs()).sum();
        let t = if name.ends_with(".bias") { 1e-5 } else { 1e-6 };
        let w0 = var.as_tensor().copy().unwrap();
        let dir = Tensor::from_vec(v, w0.shape(), &Device::Cpu).unwrap();
        let at = |s: f64| {
            var.set(&(&w0 + (&dir * s).unwrap()).unwrap()).unwrap();
            losses(&model, &x)[0].to_scalar::<f64>().unwrap()
        };
        let difference = (at(t) - at(-t)) / (2.0 * t);
        var.set(&w0).unwrap();
        let err = (difference - predicted).abs();
        let bound = 1e-6 * scale + 64.0 * f64::EPSILON * loss.abs() / t;
        worst = worst.max(err / bound);
        let line = format!(
            "{name:36} backprop {predicted:+.9e}, central difference {difference:+.9e}: error {err:.2e} ({:.1e} of sum |g v|), bound {bound:.2e}",
            err / scale
        );
        eprintln!("{line}");
        if err.is_nan() || err > bound {
            failures.push(line);
        }
    }
    eprintln!("nested pyramid: the largest error uses {worst:.3} of its bound");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
