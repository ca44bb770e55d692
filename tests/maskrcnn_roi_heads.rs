//! Mask R-CNN's RoI heads against torchvision 0.29 (fixture from
//! `scripts/make_roi_heads_fixtures.py`): the heads `maskrcnn_resnet50_fpn` builds, with
//! 5 classes, weights and FPN features set by formulas on both sides (the fixture holds the
//! proposals and torchvision's outputs, float64 where they pass through matrix products); the
//! loss functions on fixed inputs, with their gradients, all within a multiple of PyTorch's
//! own float32 error (`common::assert_within_torch`; the script checks that no NMS, threshold,
//! cut or pyramid level is decided within that distance); legacy weight names; the training
//! forward's shapes, finiteness and gradients (its sampling is random, so it cannot match
//! torchvision's draw); and the errors.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use common::{assert_within_torch, detection_weight, torch_err, values, Metric};
use rand::rngs::StdRng;
use rand::SeedableRng;
use unetpp::maskrcnn::{
    fastrcnn_loss, maskrcnn_loss, project_masks_on_boxes, RoiHeads, RoiHeadsConfig, RoiHeadsTarget,
};
use unetpp::Error;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/roi_heads.safetensors"
);
const IMAGE_SIZES: [(usize, usize); 2] = [(480, 544), (416, 512)];
const PADDED: (usize, usize) = (480, 544);

fn fixture() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(FIXTURE, &Device::Cpu).unwrap()
}

/// The script's settings: `maskrcnn_resnet50_fpn`'s heads with 5 classes, at most 20
/// detections, score threshold 0.21.
fn fixture_config() -> RoiHeadsConfig {
    RoiHeadsConfig::mask_rcnn()
        .num_classes(5)
        .detections_per_img(20)
        .score_thresh(0.21)
        .build()
        .unwrap()
}

/// Narrow heads for the tests that do not compare with torchvision.
fn small_config() -> RoiHeadsConfig {
    RoiHeadsConfig::mask_rcnn()
        .num_classes(4)
        .in_channels(8)
        .representation_size(32)
        .mask_layers([8, 8])
        .mask_dim_reduced(8)
        .batch_size_per_image(16)
        .positive_fraction(0.5)
        .build()
        .unwrap()
}

/// The script's `feature`: FPN level `level` of the batch.
fn feature(level: u64, dims: &[usize]) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n as u64)
        .map(|i| {
            let u = ((i * i * 37 + i * 7919 + 101 * level) % 10007) as f64 / 10007.0;
            ((u - 0.5) * 8.0) as f32
        })
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// The weights of heads of `cfg` under torchvision's names, set as the script sets them.
fn formula_weights(cfg: &RoiHeadsConfig) -> HashMap<String, Tensor> {
    let varmap = VarMap::new();
    RoiHeads::new(
        cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let data = varmap.data().lock().unwrap();
    data.iter()
        .map(|(n, v)| (n.clone(), detection_weight(n, v.dims())))
        .collect()
}

fn features() -> Vec<Tensor> {
    [4usize, 8, 16, 32]
        .iter()
        .enumerate()
        .map(|(l, s)| feature(l as u64, &[2, 256, PADDED.0 / s, PADDED.1 / s]))
        .collect()
}

/// `ours` against the fixture's `key`, within the bound set by PyTorch's float32 error on it
/// (`tol.{tol}`).
fn assert_matches(f: &HashMap<String, Tensor>, ours: &Tensor, key: &str, tol: &str) {
    assert_within_torch(ours, &f[key], torch_err(f, tol), Metric::Abs, key);
}

/// Shapes equal and every element within `tol` (absolute).
fn assert_close(ours: &Tensor, theirs: &Tensor, tol: f64, what: &str) {
    assert_eq!(ours.dims(), theirs.dims(), "{what}: shapes");
    let worst = values(ours)
        .iter()
        .zip(values(theirs))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(
        worst <= tol,
        "{what}: differs from torchvision by {worst} (tolerance {tol})"
    );
}

#[test]
fn named_tensors_follow_the_torchvision_state_dict() {
    let cfg = fixture_config();
    let varmap = VarMap::new();
    let heads = RoiHeads::new(
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let meta = unetpp::weights::load_metadata(FIXTURE).unwrap();
    let keys: Vec<&str> = meta["keys"].split(',').collect();
    let ours: Vec<String> = heads.named_tensors().into_iter().map(|t| t.name).collect();
    assert_eq!(ours, keys);
    let prefixed = unetpp::weights::prefixed(heads.named_tensors(), "roi_heads");
    assert_eq!(prefixed[0].name, "roi_heads.box_head.fc6.weight");
    assert!(prefixed.iter().all(|t| t.trainable));
    assert_eq!(prefixed[0].tensor.dims(), &[1024, 256 * 7 * 7]);
}

#[test]
fn detections_match_torchvision() {
    let f = fixture();
    let cfg = fixture_config();
    let heads = RoiHeads::from_torchvision(&cfg, formula_weights(&cfg), &Device::Cpu).unwrap();
    let features = features();
    let proposals = [f["proposals0"].clone(), f["proposals1"].clone()];

    // The intermediates first, so that a mismatch says where it starts.
    let pooled = cfg
        .box_pooler()
        .forward(&features, &proposals, &IMAGE_SIZES)
        .unwrap();
    let pooled4 = pooled.narrow(1, 0, 4).unwrap();
    assert_matches(&f, &pooled4, "box_pooled4", "box_pooled4");
    let (logits, regression) = heads.box_predictions(&pooled).unwrap();
    assert_matches(&f, &logits, "box_logits", "box_logits");
    assert_matches(&f, &regression, "box_regression", "box_regression");

    let detections = heads.forward(&features, &proposals, &IMAGE_SIZES).unwrap();
    assert_eq!(detections.len(), 2);
    for (i, d) in detections.iter().enumerate() {
        let want_labels = f[&format!("det{i}_labels")].to_vec1::<i64>().unwrap();
        assert_eq!(d.labels.dtype(), DType::I64);
        assert_eq!(
            d.labels.to_vec1::<i64>().unwrap(),
            want_labels,
            "image {i}: labels"
        );
        assert_eq!(
            want_labels.len(),
            20,
            "the fixture's detections are truncated"
        );
        assert_matches(&f, &d.boxes, &format!("det{i}_boxes"), "boxes");
        assert_matches(&f, &d.scores, &format!("det{i}_scores"), "scores");
        assert_matches(&f, &d.masks, &format!("det{i}_masks"), "masks");
    }
}

#[test]
fn fastrcnn_loss_matches_torchvision() {
    let f = fixture();
    let logits = Var::from_tensor(&f["frl_logits"]).unwrap();
    let regression = Var::from_tensor(&f["frl_regression"]).unwrap();
    let labels = [f["frl_labels0"].clone(), f["frl_labels1"].clone()];
    let targets = [f["frl_targets0"].clone(), f["frl_targets1"].clone()];
    let (cls, box_loss) = fastrcnn_loss(&logits, &regression, &labels, &targets).unwrap();
    assert_matches(&f, &cls, "frl_cls_loss", "frl_cls_loss");
    assert_matches(&f, &box_loss, "frl_box_loss", "frl_box_loss");
    let grads = (cls + box_loss).unwrap().backward().unwrap();
    let g = grads.get(&logits).unwrap();
    assert_matches(&f, g, "frl_grad_logits", "frl_grad_logits");
    let g = grads.get(&regression).unwrap();
    assert_matches(&f, g, "frl_grad_regression", "frl_grad_regression");
}

#[test]
fn maskrcnn_loss_matches_torchvision() {
    let f = fixture();
    let logits = Var::from_tensor(&f["mrl_logits"]).unwrap();
    let get = |k: &str| [f[&format!("{k}0")].clone(), f[&format!("{k}1")].clone()];
    let (proposals, masks, labels, matched) = (
        get("mrl_proposals"),
        get("mrl_gt_masks"),
        get("mrl_gt_labels"),
        get("mrl_matched"),
    );
    let projected: Vec<Tensor> = (0..2)
        .map(|i| project_masks_on_boxes(&masks[i], &proposals[i], &matched[i], 28).unwrap())
        .collect();
    let projected = Tensor::cat(&projected, 0).unwrap();
    assert_matches(&f, &projected, "mrl_targets", "mrl_targets");
    let loss = maskrcnn_loss(&logits, &proposals, &masks, &labels, &matched).unwrap();
    assert_matches(&f, &loss, "mrl_loss", "mrl_loss");
    let grads = loss.backward().unwrap();
    let g = grads.get(&logits).unwrap();
    assert_matches(&f, g, "mrl_grad_logits", "mrl_grad_logits");
}

#[test]
fn maskrcnn_loss_without_positives_is_a_differentiable_zero() {
    let logits =
        Var::from_tensor(&Tensor::zeros((0, 3, 28, 28), DType::F32, &Device::Cpu).unwrap())
            .unwrap();
    let none = || Tensor::zeros(0, DType::I64, &Device::Cpu).unwrap();
    let loss = maskrcnn_loss(
        &logits,
        &[Tensor::zeros((0, 4), DType::F32, &Device::Cpu).unwrap()],
        &[Tensor::zeros((0, 8, 8), DType::U8, &Device::Cpu).unwrap()],
        &[none()],
        &[none()],
    )
    .unwrap();
    assert_eq!(loss.to_scalar::<f32>().unwrap(), 0.0);
}

#[test]
fn fastrcnn_loss_without_positives_has_a_zero_box_loss() {
    let logits = Tensor::new(&[[2f32, 0., -1.], [0.5, 0.5, 0.]], &Device::Cpu).unwrap();
    let regression = Tensor::ones((2, 12), DType::F32, &Device::Cpu).unwrap();
    let labels = [Tensor::new(&[0i64, 0], &Device::Cpu).unwrap()];
    let targets = [Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap()];
    let (cls, box_loss) = fastrcnn_loss(&logits, &regression, &labels, &targets).unwrap();
    assert_eq!(box_loss.to_scalar::<f32>().unwrap(), 0.0);
    // −mean(log softmax of class 0): rows [2, 0, −1] and [0.5, 0.5, 0].
    let lse = |r: [f64; 3]| r.iter().map(|v| v.exp()).sum::<f64>().ln();
    let want = ((lse([2., 0., -1.]) - 2.0) + (lse([0.5, 0.5, 0.]) - 0.5)) / 2.0;
    assert!((cls.to_scalar::<f32>().unwrap() as f64 - want).abs() < 1e-6);
}

#[test]
fn legacy_mask_head_names_load() {
    let cfg = small_config();
    let current = formula_weights(&cfg);
    let legacy: HashMap<String, Tensor> = current
        .iter()
        .map(|(name, t)| {
            let renamed = match name.strip_prefix("mask_head.") {
                Some(rest) => {
                    let (layer, leaf) = rest.split_once(".0.").unwrap();
                    let layer: usize = layer.parse().unwrap();
                    format!("mask_head.mask_fcn{}.{leaf}", layer + 1)
                }
                None => name.clone(),
            };
            (renamed, t.clone())
        })
        .collect();
    assert!(legacy.contains_key("mask_head.mask_fcn2.bias"));
    assert!(!legacy.contains_key("mask_head.0.0.weight"));
    let a = RoiHeads::from_torchvision(&cfg, current, &Device::Cpu).unwrap();
    let b = RoiHeads::from_torchvision(&cfg, legacy, &Device::Cpu).unwrap();
    let (ta, tb) = (a.named_tensors(), b.named_tensors());
    assert_eq!(ta.len(), tb.len());
    for (x, y) in ta.iter().zip(&tb) {
        assert_eq!(x.name, y.name, "saved under the current names");
        assert_eq!(values(&x.tensor), values(&y.tensor), "{}", x.name);
    }
    let x = Tensor::randn(0f32, 1., (3, 8, 14, 14), &Device::Cpu).unwrap();
    let (ya, yb) = (
        a.mask_head().forward(&x).unwrap(),
        b.mask_head().forward(&x).unwrap(),
    );
    assert_eq!(values(&ya), values(&yb));
}

#[test]
fn weights_that_do_not_fit_are_named() {
    let cfg = small_config();
    let mut w = formula_weights(&cfg);
    w.remove("box_predictor.bbox_pred.bias");
    match RoiHeads::from_torchvision(&cfg, w, &Device::Cpu) {
        Err(Error::Weights { name, .. }) => assert_eq!(name, "box_predictor.bbox_pred.bias"),
        other => panic!("expected a weights error, got {other:?}"),
    }
    let mut w = formula_weights(&cfg);
    w.insert(
        "box_head.fc8.weight".into(),
        Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap(),
    );
    assert!(matches!(
        RoiHeads::from_torchvision(&cfg, w, &Device::Cpu),
        Err(Error::Weights { .. })
    ));
}

/// A small batch of two 64×80 images, random heads, features, proposals and targets.
struct Batch {
    varmap: VarMap,
    heads: RoiHeads,
    features: Vec<Tensor>,
    proposals: Vec<Tensor>,
    sizes: Vec<(usize, usize)>,
    targets: Vec<RoiHeadsTarget>,
}

fn small_batch() -> Batch {
    let dev = Device::Cpu;
    let cfg = small_config();
    let varmap = VarMap::new();
    let heads = RoiHeads::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
    let features = [16usize, 8, 4, 2]
        .iter()
        .map(|&s| Tensor::randn(0f32, 1., (2, 8, s, s * 5 / 4), &dev).unwrap())
        .collect();
    let proposals = vec![
        Tensor::new(
            &[
                [2f32, 3., 30., 40.],
                [5., 5., 33., 41.],
                [40., 10., 70., 50.],
                [0., 0., 64., 64.],
                [10., 20., 12., 23.],
            ],
            &dev,
        )
        .unwrap(),
        Tensor::new(&[[1f32, 1., 20., 20.], [30., 30., 60., 60.]], &dev).unwrap(),
    ];
    let mask = |y0: usize, y1: usize, x0: usize, x1: usize| {
        let mut v = vec![0u8; 64 * 80];
        for y in y0..y1 {
            for x in x0..x1 {
                v[y * 80 + x] = 1;
            }
        }
        Tensor::from_vec(v, (1, 64, 80), &dev).unwrap()
    };
    let targets = vec![
        RoiHeadsTarget {
            boxes: Tensor::new(&[[3f32, 4., 31., 40.], [42., 12., 70., 48.]], &dev).unwrap(),
            labels: Tensor::new(&[1i64, 3], &dev).unwrap(),
            masks: Tensor::cat(&[mask(4, 40, 3, 31), mask(12, 48, 42, 70)], 0).unwrap(),
        },
        // A background image: no ground truth.
        RoiHeadsTarget {
            boxes: Tensor::zeros((0, 4), DType::F32, &dev).unwrap(),
            labels: Tensor::zeros(0, DType::I64, &dev).unwrap(),
            masks: Tensor::zeros((0, 64, 80), DType::U8, &dev).unwrap(),
        },
    ];
    Batch {
        varmap,
        heads,
        features,
        proposals,
        sizes: vec![(64, 80), (64, 80)],
        targets,
    }
}

#[test]
fn training_forward_gives_finite_losses_whose_gradients_reach_every_weight() {
    let b = small_batch();
    let losses = b
        .heads
        .forward_train(
            &b.features,
            &b.proposals,
            &b.sizes,
            &b.targets,
            &mut StdRng::seed_from_u64(3),
        )
        .unwrap();
    for (name, l) in [
        ("classifier", &losses.classifier),
        ("box_reg", &losses.box_reg),
        ("mask", &losses.mask),
    ] {
        assert_eq!(l.rank(), 0, "{name} is a scalar");
        let v = l.to_scalar::<f32>().unwrap();
        assert!(v.is_finite() && v > 0.0, "{name} loss {v}");
    }
    let grads = losses.total().unwrap().backward().unwrap();
    let data = b.varmap.data().lock().unwrap();
    assert_eq!(data.len(), 4 + 4 + 2 * 2 + 4);
    for (name, var) in data.iter() {
        let g = grads
            .get(var)
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            norm.is_finite() && norm > 0.0,
            "{name}: gradient norm {norm}"
        );
    }
    drop(data);

    // The same seed draws the same samples.
    let again = b
        .heads
        .forward_train(
            &b.features,
            &b.proposals,
            &b.sizes,
            &b.targets,
            &mut StdRng::seed_from_u64(3),
        )
        .unwrap();
    assert_eq!(
        values(&losses.total().unwrap()),
        values(&again.total().unwrap())
    );
}

#[test]
fn training_samples_add_the_ground_truth_and_respect_the_sampler() {
    let b = small_batch();
    let s = b
        .heads
        .select_training_samples(&b.proposals, &b.targets, &mut StdRng::seed_from_u64(1))
        .unwrap();
    assert_eq!(s.proposals.len(), 2);
    // Image 0: 5 proposals + 2 ground truths, all sampled (16 allowed, 8 positives at most).
    let labels0 = s.labels[0].to_vec1::<i64>().unwrap();
    assert_eq!(labels0.len(), 7);
    // Proposals 0, 1 overlap box 0 (class 1), proposal 2 box 1 (class 3); 3 and 4 are
    // background; the ground truths match themselves.
    assert_eq!(labels0, [1, 1, 3, 0, 0, 1, 3]);
    assert_eq!(
        s.matched_idxs[0].to_vec1::<i64>().unwrap(),
        [0, 0, 1, 0, 0, 0, 1]
    );
    let coder = b.heads.config().box_coder();
    let gt = b.targets[0]
        .boxes
        .index_select(&Tensor::new(&[0u32, 0, 1], &Device::Cpu).unwrap(), 0)
        .unwrap();
    let want = coder
        .encode(&gt, &s.proposals[0].narrow(0, 0, 3).unwrap())
        .unwrap();
    assert_close(
        &s.regression_targets[0].narrow(0, 0, 3).unwrap(),
        &want,
        1e-6,
        "regression targets",
    );
    // Image 1 has no ground truth: background only.
    assert_eq!(s.labels[1].to_vec1::<i64>().unwrap(), [0, 0]);
    assert_eq!(s.regression_targets[1].dims(), &[2, 4]);

    // With 22 positives and 2 negatives: half of 16 positives and both negatives.
    let mut parts = vec![b.proposals[0].narrow(0, 0, 2).unwrap(); 10];
    parts.push(b.proposals[0].narrow(0, 3, 2).unwrap());
    let many = Tensor::cat(&parts, 0).unwrap();
    let s = b
        .heads
        .select_training_samples(
            &[many, b.proposals[1].clone()],
            &b.targets,
            &mut StdRng::seed_from_u64(1),
        )
        .unwrap();
    let l = s.labels[0].to_vec1::<i64>().unwrap();
    assert_eq!(l.iter().filter(|&&v| v > 0).count(), 8);
    assert_eq!(l.len(), 8 + 2);
}

#[test]
fn no_proposal_gives_no_detection() {
    let b = small_batch();
    let empty = Tensor::zeros((0, 4), DType::F32, &Device::Cpu).unwrap();
    let d = b
        .heads
        .forward(&b.features, &[empty.clone(), empty], &b.sizes)
        .unwrap();
    assert_eq!(d.len(), 2);
    for d in &d {
        assert_eq!(d.boxes.dims(), &[0, 4]);
        assert_eq!(d.scores.dims(), &[0]);
        assert_eq!(d.labels.dims(), &[0]);
        assert_eq!(d.masks.dims(), &[0, 1, 28, 28]);
    }
}

#[test]
fn detections_have_consistent_shapes_and_respect_the_settings() {
    let b = small_batch();
    let cfg = b
        .heads
        .config()
        .to_builder()
        .score_thresh(0.0)
        .detections_per_img(3)
        .build()
        .unwrap();
    let heads = RoiHeads::new(
        &cfg,
        VarBuilder::from_varmap(&b.varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let d = heads.forward(&b.features, &b.proposals, &b.sizes).unwrap();
    for (i, d) in d.iter().enumerate() {
        let n = d.boxes.dim(0).unwrap();
        assert!(n <= 3 && n > 0, "image {i}: {n} detections");
        assert_eq!(d.masks.dims(), &[n, 1, 28, 28]);
        let scores = values(&d.scores);
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "scores descend");
        let labels = d.labels.to_vec1::<i64>().unwrap();
        assert!(labels.iter().all(|&l| (1..4).contains(&l)));
        let masks = values(&d.masks);
        assert!(masks.iter().all(|&p| (0.0..=1.0).contains(&p)));
        for b in d.boxes.to_vec2::<f32>().unwrap() {
            assert!(
                b[0] >= 0.0 && b[1] >= 0.0 && b[2] <= 80.0 && b[3] <= 64.0,
                "{b:?}"
            );
        }
    }
}

#[test]
fn rejects_bad_inputs() {
    let b = small_batch();
    let h = &b.heads;
    let shape_err = |r: unetpp::Result<_>| matches!(r, Err(Error::Shape(_)));

    // Five maps (with FPN's 'pool') instead of four.
    let mut five = b.features.clone();
    five.push(b.features[3].clone());
    assert!(shape_err(
        h.forward(&five, &b.proposals, &b.sizes).map(|_| ())
    ));
    // Wrong channels.
    let mut wide = b.features.clone();
    wide[1] = Tensor::zeros((2, 9, 8, 10), DType::F32, &Device::Cpu).unwrap();
    assert!(shape_err(
        h.forward(&wide, &b.proposals, &b.sizes).map(|_| ())
    ));
    // Proposals not (K, 4).
    let bad = vec![
        Tensor::zeros((3, 5), DType::F32, &Device::Cpu).unwrap(),
        b.proposals[1].clone(),
    ];
    assert!(shape_err(
        h.forward(&b.features, &bad, &b.sizes).map(|_| ())
    ));
    // One proposal tensor for two images.
    assert!(shape_err(
        h.forward(&b.features, &b.proposals[..1], &b.sizes)
            .map(|_| ())
    ));
    // A flipped proposal.
    let flipped = vec![
        Tensor::new(&[[30f32, 3., 2., 40.]], &Device::Cpu).unwrap(),
        b.proposals[1].clone(),
    ];
    assert!(matches!(
        h.forward(&b.features, &flipped, &b.sizes),
        Err(Error::Input(_))
    ));

    let train = |targets: &[RoiHeadsTarget]| {
        h.forward_train(
            &b.features,
            &b.proposals,
            &b.sizes,
            targets,
            &mut StdRng::seed_from_u64(0),
        )
        .map(|_| ())
    };
    // A label ≥ num_classes (4).
    let mut t = b.targets.clone();
    t[0].labels = Tensor::new(&[1i64, 4], &Device::Cpu).unwrap();
    assert!(matches!(train(&t), Err(Error::Input(_))));
    // Masks of the wrong size.
    let mut t = b.targets.clone();
    t[0].masks = Tensor::zeros((2, 64, 64), DType::U8, &Device::Cpu).unwrap();
    assert!(shape_err(train(&t)));
    // One mask for two boxes.
    let mut t = b.targets.clone();
    t[0].masks = t[0].masks.narrow(0, 0, 1).unwrap();
    assert!(shape_err(train(&t)));
    // Float labels.
    let mut t = b.targets.clone();
    t[0].labels = Tensor::new(&[1f32, 2.], &Device::Cpu).unwrap();
    assert!(matches!(train(&t), Err(Error::Input(_))));
    // A missing target.
    assert!(shape_err(train(&b.targets[..1])));
}

#[test]
fn loss_functions_reject_bad_inputs() {
    let dev = Device::Cpu;
    let logits = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
    let regression = Tensor::zeros((2, 12), DType::F32, &dev).unwrap();
    let targets = [Tensor::zeros((2, 4), DType::F32, &dev).unwrap()];
    let labels = |v: &[i64]| [Tensor::new(v, &dev).unwrap()];
    assert!(matches!(
        fastrcnn_loss(&logits, &regression, &labels(&[0, 3]), &targets),
        Err(Error::Input(_))
    ));
    assert!(matches!(
        fastrcnn_loss(&logits, &regression, &labels(&[0, 1, 2]), &targets),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        fastrcnn_loss(
            &logits,
            &regression.narrow(1, 0, 8).unwrap(),
            &labels(&[0, 1]),
            &targets
        ),
        Err(Error::Shape(_))
    ));

    let mask_logits = Tensor::zeros((1, 3, 28, 28), DType::F32, &dev).unwrap();
    let proposals = [Tensor::new(&[[1f32, 1., 10., 10.]], &dev).unwrap()];
    let masks = [Tensor::zeros((1, 16, 16), DType::U8, &dev).unwrap()];
    let idx = |i: i64| [Tensor::new(&[i], &dev).unwrap()];
    assert!(maskrcnn_loss(&mask_logits, &proposals, &masks, &labels(&[2]), &idx(0)).is_ok());
    // Matched index outside the ground truths.
    assert!(matches!(
        maskrcnn_loss(&mask_logits, &proposals, &masks, &labels(&[2]), &idx(1)),
        Err(Error::Input(_))
    ));
    // Label outside the classes.
    assert!(matches!(
        maskrcnn_loss(&mask_logits, &proposals, &masks, &labels(&[3]), &idx(0)),
        Err(Error::Input(_))
    ));
    // Masks not (G, H, W).
    let flat = [Tensor::zeros((16, 16), DType::U8, &dev).unwrap()];
    assert!(matches!(
        maskrcnn_loss(&mask_logits, &proposals, &flat, &labels(&[2]), &idx(0)),
        Err(Error::Shape(_))
    ));
}

#[test]
fn config_validation_names_the_field() {
    let field = |b: unetpp::maskrcnn::RoiHeadsConfigBuilder| match b.build() {
        Err(Error::Config { field, .. }) => field,
        other => panic!("expected a config error, got {other:?}"),
    };
    let base = RoiHeadsConfig::mask_rcnn;
    assert_eq!(field(base().num_classes(1)), "num_classes");
    assert_eq!(field(base().mask_layers(Vec::new())), "mask_layers");
    assert_eq!(field(base().nms_thresh(f64::NAN)), "nms_thresh");
    assert_eq!(field(base().score_thresh(f64::INFINITY)), "score_thresh");
    assert_eq!(field(base().bg_iou_thresh(0.6)), "bg_iou_thresh");
    assert_eq!(field(base().positive_fraction(1.5)), "positive_fraction");
    assert_eq!(
        field(base().batch_size_per_image(0)),
        "batch_size_per_image"
    );
    assert_eq!(field(base().detections_per_img(0)), "detections_per_img");
    assert_eq!(
        field(base().bbox_reg_weights([10., 10., 0., 5.])),
        "bbox_reg_weights"
    );
    let cfg = RoiHeadsConfig::default();
    assert_eq!(cfg.num_classes(), 91);
    assert_eq!(cfg.representation_size(), 1024);
    assert_eq!(cfg.mask_layers(), &[256; 4]);
    assert_eq!(cfg.bbox_reg_weights(), [10., 10., 5., 5.]);
    assert_eq!(cfg.box_pooler().output_size(), (7, 7));
    assert_eq!(cfg.mask_pooler().output_size(), (14, 14));
    assert_eq!((cfg.score_thresh(), cfg.nms_thresh()), (0.05, 0.5));
    assert_eq!(
        (cfg.batch_size_per_image(), cfg.positive_fraction()),
        (512, 0.25)
    );
}
