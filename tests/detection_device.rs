//! Mask R-CNN's training targets as they run on a GPU, checked on the CPU: the matcher (tensor
//! ops, the matrix never copied to the host) against the host algorithm it replaced, on ties,
//! exact thresholds, NaN and every float dtype; the sampler's draws, unchanged; the anchor
//! cache; the RPN losses against the dense computation they replaced, bit for bit; and, in
//! one test (the switch is process-wide), a training step on the device path
//! (`ops::set_device_generic(true)`) whose autograd graph holds no f64 tensor. Ignored by
//! default, the timings: `cargo test --release --test detection_device -- --ignored
//! --nocapture`.
#![cfg(feature = "detection")]

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use unetpp::loss::bce_with_logits;
use unetpp::maskrcnn::{
    smooth_l1_sum, AnchorGenerator, BalancedPositiveNegativeSampler, BoxCoder, MaskRcnn,
    MaskRcnnConfig, Matcher, Rpn, RpnOutput,
};
use unetpp::ops::box_iou;

mod common;
use common::nuclei;

/// The small detector of the training tests (`MaskRcnnConfig::compact`), seeded weights.
fn compact_model(size: usize) -> MaskRcnn {
    let cfg = MaskRcnnConfig::compact(2, 32, size).build().unwrap();
    let varmap = VarMap::new();
    MaskRcnn::new(
        &cfg,
        unetpp::nn::seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu),
    )
    .unwrap()
}

/// An IoU-like `(m, n)` f32 matrix: mostly 0, the rest in `(0, 1]` on a grid of 1/64 so
/// that columns and rows have ties.
fn sparse_quality(m: usize, n: usize, seed: u64) -> Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    let v: Vec<f32> = (0..m * n)
        .map(|_| {
            if rng.random::<f32>() < 0.9 {
                0.0
            } else {
                rng.random_range(1..=64) as f32 / 64.0
            }
        })
        .collect();
    Tensor::from_vec(v, (m, n), &Device::Cpu).unwrap()
}

fn median_ms(mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[2]
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The matcher as it ran before it moved to tensor ops (the matrix read to the host as f64):
/// the oracle of the device path. `Err` holds the NaN message.
fn host_matches(matcher: &Matcher, quality: &Tensor) -> Result<Vec<i64>, String> {
    let in_dtype = |v: f64| match quality.dtype() {
        DType::F64 => v,
        DType::F32 => v as f32 as f64,
        DType::F16 => half::f16::from_f64(v).to_f64(),
        DType::BF16 => half::bf16::from_f64(v).to_f64(),
        dt => panic!("not a float matrix: {dt:?}"),
    };
    let (high, low) = (
        in_dtype(matcher.high_threshold()),
        in_dtype(matcher.low_threshold()),
    );
    let q = quality
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    if let Some((gt, pred)) = q
        .iter()
        .enumerate()
        .find_map(|(i, row)| row.iter().position(|v| v.is_nan()).map(|j| (i, j)))
    {
        return Err(format!(
            "Matcher: the quality matrix has a NaN at (ground truth {gt}, prediction {pred})"
        ));
    }
    let n = q[0].len();
    let mut best_gt = vec![0usize; n];
    let mut best_val = q[0].clone();
    for (gt, row) in q.iter().enumerate().skip(1) {
        for (pred, &v) in row.iter().enumerate() {
            if v > best_val[pred] {
                best_val[pred] = v;
                best_gt[pred] = gt;
            }
        }
    }
    let mut labels: Vec<i64> = best_gt
        .iter()
        .zip(&best_val)
        .map(|(&gt, &v)| {
            if v < low {
                Matcher::BELOW_LOW_THRESHOLD
            } else if v < high {
                Matcher::BETWEEN_THRESHOLDS
            } else {
                gt as i64
            }
        })
        .collect();
    if matcher.allow_low_quality_matches() {
        for row in &q {
            let highest = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            for (pred, &v) in row.iter().enumerate() {
                if v == highest {
                    labels[pred] = best_gt[pred] as i64;
                }
            }
        }
    }
    Ok(labels)
}

/// A `(m, n)` matrix in `dtype` that is hard on the matcher: zeros (a ground truth may
/// overlap nothing), `-0.0`, values on a grid of 1/16 (ties within rows and columns), the
/// thresholds themselves and their neighbours, all converted from f64 as PyTorch would.
fn tricky_quality(m: usize, n: usize, dtype: DType, rng: &mut StdRng) -> Tensor {
    let special = [
        0.3,
        0.5,
        0.7,
        0.4,
        0.6,
        0.3 - 1e-7,
        0.7 + 1e-7,
        0.5 - 1e-4,
        -0.0,
        1.0,
    ];
    let empty_row = rng.random_range(0..m + 2);
    let v: Vec<f64> = (0..m * n)
        .map(|i| {
            if i / n == empty_row {
                return 0.0;
            }
            match rng.random_range(0..10) {
                0..=3 => 0.0,
                4..=6 => rng.random_range(0..=16) as f64 / 16.0,
                7 | 8 => special[rng.random_range(0..special.len())],
                _ => rng.random::<f64>(),
            }
        })
        .collect();
    Tensor::from_vec(v, (m, n), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn matchers() -> [Matcher; 4] {
    [
        Matcher::rpn(),
        Matcher::roi_heads(),
        Matcher::new(0.6, 0.4, false).unwrap(),
        Matcher::new(0.5, 0.5, true).unwrap(),
    ]
}

#[test]
fn matcher_agrees_with_the_host_algorithm_on_ties_and_thresholds() {
    let mut rng = StdRng::seed_from_u64(11);
    let mut column_ties = 0;
    for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16] {
        // 300 ground truths: row indices beyond u8.
        for (m, n) in [
            (1, 1),
            (1, 9),
            (2, 7),
            (5, 40),
            (20, 300),
            (3, 1),
            (300, 30),
        ] {
            for trial in 0..4 {
                let q = tricky_quality(m, n, dtype, &mut rng);
                column_ties += ties_at_column_maxima(&q);
                for matcher in matchers() {
                    let ours = matcher.matches(&q).unwrap();
                    assert_eq!(ours.dtype(), DType::I64);
                    assert_eq!(
                        ours.to_vec1::<i64>().unwrap(),
                        host_matches(&matcher, &q).unwrap(),
                        "{dtype:?} {m}x{n} trial {trial}, {matcher:?}"
                    );
                }
            }
        }
    }
    assert!(
        column_ties > 100,
        "only {column_ties} columns with tied maxima"
    );
}

/// The number of columns of `q` whose maximum is reached by two rows or more.
fn ties_at_column_maxima(q: &Tensor) -> usize {
    let rows = q
        .t()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    rows.iter()
        .filter(|col| {
            let max = col.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            col.iter().filter(|&&v| v == max).count() > 1
        })
        .count()
}

#[test]
fn matcher_agrees_with_the_host_algorithm_on_an_image_of_anchors() {
    let q = sparse_quality(20, 200_000, 1);
    for matcher in [Matcher::rpn(), Matcher::roi_heads()] {
        let ours = matcher.matches(&q).unwrap().to_vec1::<i64>().unwrap();
        assert_eq!(ours, host_matches(&matcher, &q).unwrap(), "{matcher:?}");
    }
}

#[test]
fn matcher_takes_infinities_of_both_signs_in_a_row() {
    // Their row sums are NaN as a NaN's would be: the matrix is checked, not rejected.
    let q = Tensor::new(
        &[[f32::INFINITY, 0.2, f32::NEG_INFINITY], [0.5, 0.8, 0.1]],
        &Device::Cpu,
    )
    .unwrap();
    for matcher in matchers() {
        let ours = matcher.matches(&q).unwrap().to_vec1::<i64>().unwrap();
        assert_eq!(ours, host_matches(&matcher, &q).unwrap(), "{matcher:?}");
    }
}

#[test]
fn matcher_names_the_first_nan() {
    for dtype in [DType::F32, DType::F64, DType::F16] {
        let mut v = vec![0.25f64; 4 * 6];
        v[6 + 3] = f64::NAN;
        v[2 * 6] = f64::NAN;
        let q = Tensor::from_vec(v, (4, 6), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let want = host_matches(&Matcher::rpn(), &q).unwrap_err();
        assert!(want.contains("(ground truth 1, prediction 3)"), "{want}");
        match Matcher::rpn().matches(&q) {
            Err(unetpp::Error::Input(msg)) => assert_eq!(msg, want, "{dtype:?}"),
            other => panic!("{dtype:?}: expected Error::Input, got {other:?}"),
        }
    }
}

/// The sampler as it ran before it read the labels without widening them on their device:
/// per image, the labels as f64, then positives and negatives drawn as masks.
fn host_sample(
    sampler: &BalancedPositiveNegativeSampler,
    labels: &[Tensor],
    rng: &mut StdRng,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let choose = |candidates: &[usize], amount: usize, len: usize, rng: &mut StdRng| {
        let mut mask = vec![0u8; len];
        for i in rand::seq::index::sample(rng, candidates.len(), amount) {
            mask[candidates[i]] = 1;
        }
        mask
    };
    labels
        .iter()
        .map(|l| {
            let values = l.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
            let len = values.len();
            let pos: Vec<usize> = (0..len).filter(|&i| values[i] >= 1.0).collect();
            let neg: Vec<usize> = (0..len).filter(|&i| values[i] == 0.0).collect();
            let batch = sampler.batch_size_per_image();
            let max_pos = (batch as f64 * sampler.positive_fraction()) as usize;
            let num_pos = pos.len().min(max_pos);
            let num_neg = neg.len().min(batch - num_pos);
            let p = choose(&pos, num_pos, len, rng);
            let n = choose(&neg, num_neg, len, rng);
            (p, n)
        })
        .collect()
}

#[test]
fn sampler_draws_what_it_drew_before() {
    let mut gen = StdRng::seed_from_u64(4);
    for dtype in [DType::I64, DType::F32, DType::F16, DType::U8, DType::U32] {
        // Three images of labels in {-2, -1, 0, 1, 2, 3} (u8 and u32 without the negatives).
        let images: Vec<Tensor> = [500, 37, 2000]
            .iter()
            .map(|&len| {
                let lo = if dtype.is_int() && dtype != DType::I64 {
                    0
                } else {
                    -2
                };
                let v: Vec<i64> = (0..len).map(|_| gen.random_range(lo..=3)).collect();
                Tensor::from_vec(v, len, &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
            })
            .collect();
        for (batch, fraction) in [(256, 0.5), (64, 0.25), (10, 1.0), (4000, 0.25)] {
            let sampler = BalancedPositiveNegativeSampler::new(batch, fraction).unwrap();
            for seed in 0..3 {
                let (pos, neg) = sampler
                    .sample(&images, &mut StdRng::seed_from_u64(seed))
                    .unwrap();
                let ours: Vec<(Vec<u8>, Vec<u8>)> = pos
                    .iter()
                    .zip(&neg)
                    .map(|(p, n)| (p.to_vec1::<u8>().unwrap(), n.to_vec1::<u8>().unwrap()))
                    .collect();
                let want = host_sample(&sampler, &images, &mut StdRng::seed_from_u64(seed));
                assert_eq!(ours, want, "{dtype:?}, batch {batch}, seed {seed}");
            }
        }
    }
}

#[test]
fn anchors_are_built_once_per_size_and_the_cache_stays_small() {
    let gen = AnchorGenerator::fpn();
    let dev = Device::Cpu;
    let grids = |h: usize, w: usize| -> Vec<(usize, usize)> {
        (2..7)
            .map(|l| (h.div_ceil(1 << l), w.div_ceil(1 << l)))
            .collect()
    };
    let first = gen.anchors((64, 96), &grids(64, 96), &dev).unwrap();
    let again = gen.anchors((64, 96), &grids(64, 96), &dev).unwrap();
    assert_eq!(first.id(), again.id(), "the second call builds nothing");
    let levels = gen
        .anchors_per_level((64, 96), &grids(64, 96), &dev)
        .unwrap();
    let built = Tensor::cat(&levels, 0).unwrap();
    assert_eq!(
        first.to_vec2::<f32>().unwrap(),
        built.to_vec2::<f32>().unwrap()
    );
    assert_eq!(
        gen.clone()
            .anchors((64, 96), &grids(64, 96), &dev)
            .unwrap()
            .id(),
        first.id(),
        "clones share the anchors"
    );
    // The same image with other grids is another set.
    let other = grids(64, 96)
        .iter()
        .map(|&(h, w)| (h + 1, w))
        .collect::<Vec<_>>();
    assert_ne!(
        gen.anchors((64, 96), &other, &dev).unwrap().id(),
        first.id()
    );

    // Many sizes: only the last few are kept, and what is rebuilt is equal.
    for s in 1..=64 {
        let (h, w) = (32 * s, 32 * (s + 1));
        gen.anchors((h, w), &grids(h, w), &dev).unwrap();
    }
    let last = gen.anchors((32 * 64, 32 * 65), &grids(32 * 64, 32 * 65), &dev);
    let rebuilt = gen.anchors((64, 96), &grids(64, 96), &dev).unwrap();
    assert_ne!(rebuilt.id(), first.id(), "an old size was evicted");
    assert_eq!(
        rebuilt.to_vec2::<f32>().unwrap(),
        first.to_vec2::<f32>().unwrap()
    );
    let recent = gen.anchors((32 * 64, 32 * 65), &grids(32 * 64, 32 * 65), &dev);
    assert_eq!(
        recent.unwrap().id(),
        last.unwrap().id(),
        "a recent size is kept"
    );
}

/// The RPN losses as they were computed before (labels and regression targets of every
/// anchor, dense, then sampled through masks): the oracle of the sparse computation.
fn dense_rpn_losses(
    rpn: &Rpn,
    out: &RpnOutput,
    gt_boxes: &[Tensor],
    rng: &mut StdRng,
) -> (f32, f32) {
    let (n, total) = out.objectness.dims2().unwrap();
    let dev = out.objectness.device();
    let coder = BoxCoder::rpn();
    let (mut labels, mut targets) = (Vec::new(), Vec::new());
    for gt in gt_boxes {
        if gt.dim(0).unwrap() == 0 {
            labels.push(Tensor::zeros(total, DType::F32, dev).unwrap());
            targets.push(Tensor::zeros((total, 4), DType::F32, dev).unwrap());
            continue;
        }
        let matches = Matcher::rpn()
            .matches(&box_iou(gt, &out.anchors).unwrap())
            .unwrap();
        let idx = matches.clamp(0i64, i64::MAX).unwrap();
        let matched = gt.index_select(&idx, 0).unwrap();
        let m = matches.to_dtype(DType::F32).unwrap();
        let positive = m.ge(0f64).unwrap().to_dtype(DType::F32).unwrap();
        let between = m.eq(-2f64).unwrap().to_dtype(DType::F32).unwrap();
        labels.push((positive - between).unwrap());
        targets.push(coder.encode(&matched, &out.anchors).unwrap());
    }
    let sampler = BalancedPositiveNegativeSampler::new(
        rpn.config().batch_size_per_image(),
        rpn.config().positive_fraction(),
    )
    .unwrap();
    let (pos, neg) = sampler.sample(&labels, rng).unwrap();
    let indices = |masks: &[Tensor]| -> Vec<u32> {
        masks
            .iter()
            .enumerate()
            .flat_map(|(i, m)| {
                let v = m.to_vec1::<u8>().unwrap();
                (0..total)
                    .filter(move |&j| v[j] != 0)
                    .map(move |j| (i * total + j) as u32)
            })
            .collect()
    };
    let (pos, neg) = (indices(&pos), indices(&neg));
    let sampled = pos.len() + neg.len();
    let labels = Tensor::cat(&labels, 0).unwrap();
    let targets = Tensor::cat(&targets, 0).unwrap();
    let all: Vec<u32> = pos.iter().chain(&neg).copied().collect();
    let all = Tensor::from_vec(all, sampled, dev).unwrap();
    let objectness = bce_with_logits(
        &out.objectness
            .flatten_all()
            .unwrap()
            .index_select(&all, 0)
            .unwrap(),
        &labels.index_select(&all, 0).unwrap(),
    )
    .unwrap();
    let deltas = out.deltas.reshape((n * total, 4)).unwrap();
    let p = Tensor::from_vec(pos.clone(), pos.len(), dev).unwrap();
    let box_reg = smooth_l1_sum(
        &deltas.index_select(&p, 0).unwrap(),
        &targets.index_select(&p, 0).unwrap(),
        1.0 / 9.0,
    )
    .unwrap()
    .broadcast_div(&Tensor::new(sampled as f32, dev).unwrap())
    .unwrap();
    (
        objectness.to_scalar::<f32>().unwrap(),
        box_reg.to_scalar::<f32>().unwrap(),
    )
}

#[test]
fn rpn_losses_equal_the_dense_computation() {
    let (images, targets) = nuclei(2, 64);
    let model = compact_model(64);
    let (batch, targets) = model
        .config()
        .transform()
        .forward_with_targets(&images, &targets)
        .unwrap();
    let (_, _, h, w) = batch.tensors.dims4().unwrap();
    let maps = model.backbone().forward_t(&batch.tensors, true).unwrap();
    let rpn = model.rpn();
    let out = rpn
        .forward((h, w), &batch.image_sizes, &maps, true)
        .unwrap();
    let gt: Vec<Tensor> = targets.iter().map(|t| t.boxes.clone()).collect();
    let empty = Tensor::zeros((0, 4), DType::F32, &Device::Cpu).unwrap();
    for (case, gt) in [
        ("both images", gt.clone()),
        ("second empty", vec![gt[0].clone(), empty.clone()]),
        ("both empty", vec![empty.clone(), empty]),
    ] {
        for seed in 0..3 {
            let l = rpn
                .losses(&out, &gt, &mut StdRng::seed_from_u64(seed))
                .unwrap();
            let ours = (
                l.objectness.to_scalar::<f32>().unwrap(),
                l.box_reg.to_scalar::<f32>().unwrap(),
            );
            let want = dense_rpn_losses(rpn, &out, &gt, &mut StdRng::seed_from_u64(seed));
            assert_eq!(ours, want, "{case}, seed {seed}");
        }
    }
}

/// The one test of this file that switches the ops to their device path (the switch is
/// process-wide): a training step of the compact detector, whose graph holds no f64 tensor.
#[test]
fn training_losses_on_the_device_path_hold_no_f64() {
    let before = unetpp::ops::device_generic();
    unetpp::ops::set_device_generic(true);
    let (images, targets) = nuclei(2, 64);
    let model = compact_model(64);
    let mut rng = StdRng::seed_from_u64(0);
    let losses = model.losses(&images, &targets, &mut rng).unwrap();
    let total = losses.total().unwrap();
    assert!(total.to_scalar::<f32>().unwrap().is_finite());
    let nodes = total.sorted_nodes();
    assert!(nodes.len() > 100, "{} nodes", nodes.len());
    let f64_nodes: Vec<String> = nodes
        .iter()
        .filter(|t| t.dtype() == DType::F64)
        .map(|t| format!("{:?}", t.shape()))
        .collect();
    assert!(f64_nodes.is_empty(), "f64 nodes: {f64_nodes:?}");
    unetpp::ops::set_device_generic(before);
}

#[test]
#[ignore = "timings: run with --ignored --nocapture"]
fn timings_of_matcher_and_training_losses() {
    println!(
        "CPU: {} ({} threads)",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let q = sparse_quality(20, 200_000, 5);
    let rpn = Matcher::rpn();
    let ms = median_ms(|| {
        rpn.matches(&q).unwrap();
    });
    println!("matcher, 20 x 200000 f32: median of 5 {ms:.1} ms");

    for size in [64, 256] {
        let (images, targets) = nuclei(2, size);
        let model = compact_model(size);
        let ms = median_ms(|| {
            let mut rng = StdRng::seed_from_u64(0);
            model.losses(&images, &targets, &mut rng).unwrap();
        });
        println!("MaskRcnn::losses, compact, 2 images {size}x{size}: median of 5 {ms:.1} ms");
    }

    // The RPN's targets and losses alone on a large image, against the dense computation
    // they replaced (which here uses the new matcher too).
    let (images, targets) = nuclei(1, 800);
    let model = compact_model(800);
    let (batch, targets) = model
        .config()
        .transform()
        .forward_with_targets(&images, &targets)
        .unwrap();
    let (_, _, h, w) = batch.tensors.dims4().unwrap();
    let maps = model.backbone().forward_t(&batch.tensors, true).unwrap();
    let out = model
        .rpn()
        .forward((h, w), &batch.image_sizes, &maps, true)
        .unwrap();
    let gt: Vec<Tensor> = targets.iter().map(|t| t.boxes.clone()).collect();
    let sparse = median_ms(|| {
        model
            .rpn()
            .losses(&out, &gt, &mut StdRng::seed_from_u64(0))
            .unwrap();
    });
    let dense = median_ms(|| {
        dense_rpn_losses(model.rpn(), &out, &gt, &mut StdRng::seed_from_u64(0));
    });
    println!(
        "Rpn::losses, 1 image {h}x{w}, {} anchors, {} ground truths: {sparse:.1} ms \
         (dense, as before: {dense:.1} ms)",
        out.anchors.dim(0).unwrap(),
        gt[0].dim(0).unwrap()
    );
}
