//! Mask R-CNN detection utilities against torchvision 0.29 (fixture from
//! `scripts/make_box_fixtures.py`): box coding (within a multiple of PyTorch's own float32
//! error, `common::assert_within_torch`), anchors and matching; the sampler's properties (its
//! random stream cannot be torch's); and the errors.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use common::{assert_close_rel as assert_close, assert_within_torch, torch_err, values, Metric};
use rand::rngs::StdRng;
use rand::SeedableRng;
use unetpp::maskrcnn::{AnchorGenerator, BalancedPositiveNegativeSampler, BoxCoder, Matcher};
use unetpp::Error;

fn fixture() -> HashMap<String, Tensor> {
    common::fixture("boxes.safetensors")
}

/// `ours` against the fixture's `key`, within the bound set by PyTorch's float32 error on it
/// (`tol.{key}`), per element relative to max(1, |torchvision's|).
fn assert_matches(f: &HashMap<String, Tensor>, ours: &Tensor, key: &str) {
    assert_within_torch(ours, &f[key], torch_err(f, key), Metric::RelEach, key);
}

fn labels(t: &Tensor) -> Vec<i64> {
    t.to_vec1::<i64>().unwrap()
}

fn coders() -> [(BoxCoder, &'static str); 2] {
    [(BoxCoder::rpn(), "rpn"), (BoxCoder::roi_heads(), "roi")]
}

#[test]
fn encode_matches_torchvision() {
    let f = fixture();
    for (coder, name) in coders() {
        let deltas = coder.encode(&f["bc_gt"], &f["bc_proposals"]).unwrap();
        assert_eq!(deltas.dtype(), DType::F32);
        assert_matches(&f, &deltas, &format!("enc_{name}"));
    }
}

#[test]
fn decode_matches_torchvision() {
    let f = fixture();
    for (coder, name) in coders() {
        let boxes = coder.decode(&f["bc_codes"], &f["bc_proposals"]).unwrap();
        assert_matches(&f, &boxes, &format!("dec_{name}"));
        let flat = coder
            .decode_single(&f["bc_codes"], &f["bc_proposals"])
            .unwrap();
        assert_eq!(flat.dims(), &[200, 4]);
        assert_close(&flat.reshape((200, 1, 4)).unwrap(), &boxes, 0.0, name);
    }
}

#[test]
fn decode_of_several_classes_matches_torchvision() {
    let f = fixture();
    let coder = BoxCoder::roi_heads();
    let boxes = coder.decode(&f["mc_codes"], &f["mc_boxes"]).unwrap();
    assert_eq!(boxes.dims(), &[40, 5, 4]);
    assert_matches(&f, &boxes, "mc_dec_roi");
    let flat = coder.decode_single(&f["mc_codes"], &f["mc_boxes"]).unwrap();
    assert_eq!(flat.dims(), &[40, 20]);
}

#[test]
fn decode_clamps_large_scale_deltas_from_above_only() {
    let f = fixture();
    for (coder, name) in coders() {
        let boxes = coder.decode(&f["clamp_codes"], &f["clamp_boxes"]).unwrap();
        assert_matches(&f, &boxes, &format!("clamp_dec_{name}"));
    }
    // With clip ln(1000/16) a box grows at most 62.5 times; rpn codes of 5..45 hit the clip.
    let boxes = BoxCoder::rpn()
        .decode_single(&f["clamp_codes"], &f["clamp_boxes"])
        .unwrap();
    let grown = (boxes.narrow(1, 2, 1).unwrap() - boxes.narrow(1, 0, 1).unwrap()).unwrap();
    let orig = (f["clamp_boxes"].narrow(1, 2, 1).unwrap()
        - f["clamp_boxes"].narrow(1, 0, 1).unwrap())
    .unwrap();
    let ratio = values(&(grown / orig).unwrap());
    for r in &ratio[..8] {
        assert!((r - 62.5).abs() < 1e-3, "clamped growth {r}");
    }
}

#[test]
fn f64_boxes_stay_f64_and_match_torchvision() {
    let f = fixture();
    let coder = BoxCoder::roi_heads();
    let deltas = coder.encode(&f["f64_gt"], &f["f64_proposals"]).unwrap();
    assert_eq!(deltas.dtype(), DType::F64);
    assert_close(&deltas, &f["f64_enc_roi"], 1e-12, "f64 encode");
    let boxes = coder.decode(&f["f64_codes"], &f["f64_proposals"]).unwrap();
    assert_eq!(boxes.dims(), &[50, 2, 4]);
    assert_close(&boxes, &f["f64_dec_roi"], 1e-12, "f64 decode");
}

#[test]
fn decode_inverts_encode() {
    let f = fixture();
    let (gt, proposals) = (&f["bc_gt"], &f["bc_proposals"]);
    for (coder, name) in coders() {
        let deltas = coder.encode(gt, proposals).unwrap();
        let back = coder.decode_single(&deltas, proposals).unwrap();
        assert_close(&back, gt, 1e-5, name);
    }
}

#[test]
fn decode_is_differentiable() {
    let f = fixture();
    let boxes = &f["bc_proposals"];
    let codes = Var::from_tensor(&f["bc_codes"]).unwrap();
    let coder = BoxCoder::roi_heads();
    let decoded = coder.decode_single(codes.as_tensor(), boxes).unwrap();
    // d(x1 + x2)/d(t_x) = 2 · w / w_x.
    let x_sum = (decoded.narrow(1, 0, 1).unwrap() + decoded.narrow(1, 2, 1).unwrap()).unwrap();
    let grads = x_sum.sum_all().unwrap().backward().unwrap();
    let g = grads.get(codes.as_tensor()).unwrap();
    let widths = (boxes.narrow(1, 2, 1).unwrap() - boxes.narrow(1, 0, 1).unwrap()).unwrap();
    let expected = (widths * (2.0 / 10.0)).unwrap();
    assert_close(&g.narrow(1, 0, 1).unwrap(), &expected, 1e-6, "d/dt_x");
    assert_close(
        &g.narrow(1, 1, 1).unwrap(),
        &expected.zeros_like().unwrap(),
        0.0,
        "d/dt_y",
    );
}

#[test]
fn box_coder_rejects_bad_shapes() {
    let dev = Device::Cpu;
    let coder = BoxCoder::rpn();
    let b3 = Tensor::zeros((3, 4), DType::F32, &dev).unwrap();
    let b2 = Tensor::zeros((2, 4), DType::F32, &dev).unwrap();
    let cases = [
        ("mismatched K", coder.encode(&b3, &b2).err()),
        (
            "5 columns",
            coder
                .encode(&Tensor::zeros((3, 5), DType::F32, &dev).unwrap(), &b3)
                .err(),
        ),
        (
            "1-D boxes",
            coder
                .encode(&Tensor::zeros(4, DType::F32, &dev).unwrap(), &b3)
                .err(),
        ),
        ("decode mismatched K", coder.decode(&b3, &b2).err()),
        (
            "6 code columns",
            coder
                .decode(&Tensor::zeros((3, 6), DType::F32, &dev).unwrap(), &b3)
                .err(),
        ),
        (
            "0 code columns",
            coder
                .decode(&Tensor::zeros((3, 0), DType::F32, &dev).unwrap(), &b3)
                .err(),
        ),
        (
            "3-D codes",
            coder
                .decode(&Tensor::zeros((3, 1, 4), DType::F32, &dev).unwrap(), &b3)
                .err(),
        ),
    ];
    for (what, err) in cases {
        assert!(matches!(err, Some(Error::Shape(_))), "{what}: {err:?}");
    }
    let ints = Tensor::zeros((3, 4), DType::I64, &dev).unwrap();
    assert!(matches!(coder.encode(&ints, &b3), Err(Error::Input(_))));
    assert!(matches!(coder.decode(&ints, &b3), Err(Error::Input(_))));
}

#[test]
fn box_coder_handles_no_boxes() {
    let dev = Device::Cpu;
    let none = Tensor::zeros((0, 4), DType::F32, &dev).unwrap();
    let coder = BoxCoder::roi_heads();
    assert_eq!(coder.encode(&none, &none).unwrap().dims(), &[0, 4]);
    let codes = Tensor::zeros((0, 8), DType::F32, &dev).unwrap();
    assert_eq!(coder.decode(&codes, &none).unwrap().dims(), &[0, 2, 4]);
}

fn grid_sizes(t: &Tensor) -> Vec<(usize, usize)> {
    t.to_vec2::<i64>()
        .unwrap()
        .iter()
        .map(|g| (g[0] as usize, g[1] as usize))
        .collect()
}

fn image_size(t: &Tensor) -> (usize, usize) {
    let v = t.to_vec1::<i64>().unwrap();
    (v[0] as usize, v[1] as usize)
}

fn assert_anchors_match(gen: &AnchorGenerator, f: &HashMap<String, Tensor>, case: &str) {
    let grids = grid_sizes(&f[&format!("grid_{case}")]);
    let image = image_size(&f[&format!("image_{case}")]);
    let anchors = gen.anchors(image, &grids, &Device::Cpu).unwrap();
    assert_eq!(anchors.dtype(), DType::F32);
    assert_close(&anchors, &f[&format!("anchors_{case}")], 0.0, case);

    let per_level = gen.anchors_per_level(image, &grids, &Device::Cpu).unwrap();
    for ((level, &(gh, gw)), n) in per_level
        .iter()
        .zip(&grids)
        .zip(gen.num_anchors_per_location())
    {
        assert_eq!(level.dims(), &[gh * gw * n, 4], "{case}");
    }
}

#[test]
fn fpn_anchors_match_torchvision() {
    let f = fixture();
    let gen = AnchorGenerator::fpn();
    assert_eq!(gen.num_anchors_per_location(), vec![3; 5]);
    for case in ["fpn_64x80", "fpn_96x128", "fpn_100x140"] {
        assert_anchors_match(&gen, &f, case);
    }
    for (level, cells) in gen.cell_anchors(&Device::Cpu).unwrap().iter().enumerate() {
        assert_close(cells, &f[&format!("cell_fpn_{level}")], 0.0, "FPN cells");
    }
}

#[test]
fn single_level_anchors_match_torchvision() {
    let f = fixture();
    let gen =
        AnchorGenerator::new(vec![vec![128.0, 256.0, 512.0]], vec![vec![0.5, 1.0, 2.0]]).unwrap();
    assert_eq!(gen.num_anchors_per_location(), vec![9]);
    assert_anchors_match(&gen, &f, "single");
    let cells = gen.cell_anchors(&Device::Cpu).unwrap();
    assert_close(&cells[0], &f["cell_single_0"], 0.0, "cells");
}

#[test]
fn half_sizes_round_to_even_like_torch() {
    let f = fixture();
    let gen = AnchorGenerator::new(
        vec![vec![5.0, 6.0, 7.0, 10.0, 14.0], vec![3.0, 9.0, 11.0]],
        vec![vec![0.25, 1.0, 4.0], vec![1.0, 2.25, 0.5]],
    )
    .unwrap();
    assert_eq!(gen.num_anchors_per_location(), vec![15, 9]);
    let cells = gen.cell_anchors(&Device::Cpu).unwrap();
    for (level, c) in cells.iter().enumerate() {
        assert_close(c, &f[&format!("cell_odd_{level}")], 0.0, "odd cells");
    }
    // Size 5, ratio 1: half-size 2.5 rounds to 2, not 3.
    let square5 = cells[0].get(5).unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(square5, [-2.0, -2.0, 2.0, 2.0]);
    assert_anchors_match(&gen, &f, "odd");
}

#[test]
fn anchor_generator_rejects_bad_settings_and_sizes() {
    let config = |r: unetpp::Result<AnchorGenerator>, field: &str| match r {
        Err(Error::Config { field: f, .. }) => assert_eq!(f, field),
        other => panic!("expected a config error on {field}, got {other:?}"),
    };
    config(AnchorGenerator::new(vec![], vec![]), "sizes");
    config(
        AnchorGenerator::new(vec![vec![32.0]], vec![vec![1.0], vec![1.0]]),
        "aspect_ratios",
    );
    config(AnchorGenerator::new(vec![vec![]], vec![vec![1.0]]), "sizes");
    config(
        AnchorGenerator::new(vec![vec![32.0]], vec![vec![]]),
        "aspect_ratios",
    );
    config(
        AnchorGenerator::new(vec![vec![-32.0]], vec![vec![1.0]]),
        "sizes",
    );
    config(
        AnchorGenerator::new(vec![vec![32.0]], vec![vec![f64::NAN]]),
        "aspect_ratios",
    );

    let gen = AnchorGenerator::fpn();
    let dev = Device::Cpu;
    let five = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)];
    for (what, r) in [
        ("four grids", gen.anchors((64, 64), &five[..4], &dev)),
        ("empty image", gen.anchors((0, 64), &five, &dev)),
        (
            "empty grid",
            gen.anchors((64, 64), &[(16, 16), (8, 8), (4, 0), (2, 2), (1, 1)], &dev),
        ),
    ] {
        assert!(matches!(r, Err(Error::Shape(_))), "{what}: {r:?}");
    }
}

const MATCHER_CASES: [&str; 12] = [
    "random",
    "sparse",
    "ties",
    "duplicates",
    "all_low",
    "low_quality",
    "empty_gt",
    "thresholds",
    "thresholds_f64",
    "thresholds_widened",
    "one_gt",
    "one_pred",
];

#[test]
fn matcher_matches_torchvision() {
    let f = fixture();
    for (matcher, name) in [(Matcher::rpn(), "rpn"), (Matcher::roi_heads(), "roi")] {
        for case in MATCHER_CASES {
            let ours = matcher.matches(&f[&format!("mq_{case}")]).unwrap();
            assert_eq!(ours.dtype(), DType::I64);
            assert_eq!(
                labels(&ours),
                labels(&f[&format!("ml_{case}_{name}")]),
                "{case}, {name}"
            );
        }
    }
}

#[test]
fn thresholds_are_compared_in_the_matrix_dtype() {
    let f = fixture();
    let rpn = Matcher::rpn();
    // 0.7f32 reaches the high threshold in f32, but falls short of 0.7 once widened to f64.
    assert_eq!(labels(&rpn.matches(&f["mq_thresholds"]).unwrap())[0], 0);
    let widened = labels(&rpn.matches(&f["mq_thresholds_widened"]).unwrap());
    assert_eq!(widened[0], Matcher::BETWEEN_THRESHOLDS);
}

#[test]
fn low_quality_match_takes_the_columns_best_ground_truth() {
    let f = fixture();
    // Column 0 is gt 0's best (0.40) but gt 1 overlaps it more (0.45): it matches gt 1.
    let rpn = labels(&Matcher::rpn().matches(&f["mq_low_quality"]).unwrap());
    assert_eq!(rpn[0], 1);
    // A gt overlapping nothing revives every column where it has quality 0.
    let empty = labels(&Matcher::rpn().matches(&f["mq_empty_gt"]).unwrap());
    assert_eq!(empty, [1, 1, 0, 1]);
}

#[test]
fn matcher_rejects_empty_nan_and_bad_settings() {
    let dev = Device::Cpu;
    let m = Matcher::rpn();
    for (what, q) in [
        ("no gt", Tensor::zeros((0, 5), DType::F32, &dev).unwrap()),
        (
            "no predictions",
            Tensor::zeros((3, 0), DType::F32, &dev).unwrap(),
        ),
        (
            "NaN",
            Tensor::new(&[[0.5f32, f32::NAN], [0.1, 0.2]], &dev).unwrap(),
        ),
        ("integers", Tensor::zeros((2, 2), DType::I64, &dev).unwrap()),
    ] {
        let r = m.matches(&q);
        assert!(matches!(r, Err(Error::Input(_))), "{what}: {r:?}");
    }
    let flat = Tensor::zeros(5, DType::F32, &dev).unwrap();
    assert!(matches!(m.matches(&flat), Err(Error::Shape(_))));

    assert!(matches!(
        Matcher::new(0.3, 0.7, false),
        Err(Error::Config {
            field: "low_threshold",
            ..
        })
    ));
    assert!(Matcher::new(f64::NAN, 0.3, true).is_err());
    assert!(Matcher::new(0.5, 0.5, false).is_ok());
}

/// Labels with 30 positives (1 and 2), 200 negatives (0) and ignored -1 / -2 entries.
fn sampler_labels() -> Tensor {
    let v: Vec<i64> = (0..300)
        .map(|i| match i % 10 {
            0 => 1 + (i / 10) % 2,
            1..=6 => 0,
            7 | 8 => -1,
            _ if i < 200 => 0,
            _ => -2,
        })
        .collect();
    Tensor::from_vec(v, 300, &Device::Cpu).unwrap()
}

fn mask(t: &Tensor) -> Vec<u8> {
    assert_eq!(t.dtype(), DType::U8);
    t.to_vec1::<u8>().unwrap()
}

fn count(m: &[u8]) -> usize {
    m.iter().filter(|&&v| v == 1).count()
}

#[test]
fn sampler_takes_balanced_subsets() {
    let labels = sampler_labels();
    let raw = labels.to_vec1::<i64>().unwrap();
    let (n_pos, n_neg) = (
        raw.iter().filter(|&&v| v >= 1).count(),
        raw.iter().filter(|&&v| v == 0).count(),
    );
    assert_eq!((n_pos, n_neg), (30, 200));
    // (batch, fraction) -> expected (positives, negatives).
    for (batch, fraction, expected) in [
        (64, 0.25, (16, 48)),   // enough of both
        (256, 0.5, (30, 200)),  // too few of both: everything
        (100, 0.5, (30, 70)),   // too few positives: negatives fill up
        (7, 0.5, (3, 4)),       // floor(3.5)
        (512, 0.25, (30, 200)), // the box head's default
        (10, 0.0, (0, 10)),
        (10, 1.0, (10, 0)),
    ] {
        let sampler = BalancedPositiveNegativeSampler::new(batch, fraction).unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        let (pos, neg) = sampler
            .sample(std::slice::from_ref(&labels), &mut rng)
            .unwrap();
        let (pos, neg) = (mask(&pos[0]), mask(&neg[0]));
        assert_eq!((pos.len(), neg.len()), (300, 300));
        assert_eq!((count(&pos), count(&neg)), expected, "{batch}, {fraction}");
        for i in 0..300 {
            assert!(pos[i] == 0 || raw[i] >= 1, "positive at label {}", raw[i]);
            assert!(neg[i] == 0 || raw[i] == 0, "negative at label {}", raw[i]);
        }
    }
}

#[test]
fn sampler_is_seeded() {
    let images = [
        sampler_labels(),
        sampler_labels().narrow(0, 50, 200).unwrap(),
    ];
    let sampler = BalancedPositiveNegativeSampler::new(32, 0.25).unwrap();
    let draw = |seed: u64| {
        let (pos, neg) = sampler
            .sample(&images, &mut StdRng::seed_from_u64(seed))
            .unwrap();
        assert_eq!((pos.len(), neg.len()), (2, 2));
        assert_eq!(pos[1].dims(), &[200]);
        pos.iter().chain(&neg).map(mask).collect::<Vec<_>>()
    };
    assert_eq!(draw(1), draw(1));
    assert_ne!(draw(1), draw(2));
}

#[test]
fn sampler_draws_uniformly() {
    // 2 of 10 positives per draw: each is drawn 400 times in 2000 draws, on average.
    let labels = Tensor::from_vec(vec![1f32; 10], 10, &Device::Cpu).unwrap();
    let sampler = BalancedPositiveNegativeSampler::new(4, 0.5).unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let mut hits = [0usize; 10];
    for _ in 0..2000 {
        let (pos, neg) = sampler
            .sample(std::slice::from_ref(&labels), &mut rng)
            .unwrap();
        assert_eq!(count(&mask(&neg[0])), 0);
        for (h, &m) in hits.iter_mut().zip(&mask(&pos[0])) {
            *h += m as usize;
        }
    }
    assert!(hits.iter().all(|&h| (320..480).contains(&h)), "{hits:?}");
}

#[test]
fn sampler_reads_float_labels_and_ignores_the_rest() {
    // The RPN's labels are f32: 1 foreground, 0 background, -1 discarded.
    let labels = Tensor::new(&[1f32, 0., -1., 0., f32::NAN, 1., 0.5], &Device::Cpu).unwrap();
    let sampler = BalancedPositiveNegativeSampler::rpn();
    let (pos, neg) = sampler
        .sample(&[labels], &mut StdRng::seed_from_u64(0))
        .unwrap();
    assert_eq!(mask(&pos[0]), [1, 0, 0, 0, 0, 1, 0]);
    assert_eq!(mask(&neg[0]), [0, 1, 0, 1, 0, 0, 0]);
}

#[test]
fn sampler_rejects_bad_settings_and_labels() {
    for (batch, fraction, field) in [
        (0, 0.5, "batch_size_per_image"),
        (8, 1.5, "positive_fraction"),
        (8, -0.1, "positive_fraction"),
        (8, f64::NAN, "positive_fraction"),
    ] {
        match BalancedPositiveNegativeSampler::new(batch, fraction) {
            Err(Error::Config { field: f, .. }) => assert_eq!(f, field),
            other => panic!("({batch}, {fraction}): {other:?}"),
        }
    }
    let square = Tensor::zeros((3, 3), DType::I64, &Device::Cpu).unwrap();
    let r = BalancedPositiveNegativeSampler::roi_heads()
        .sample(&[square], &mut StdRng::seed_from_u64(0));
    assert!(matches!(r, Err(Error::Shape(_))), "{r:?}");
}
