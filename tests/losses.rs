//! Losses: values and gradients against PyTorch (fixture from
//! `scripts/make_loss_fixtures.py`), gradients against finite differences, stability at
//! extreme logits, and the errors.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use common::max_rel_diff;
use unetpp::loss::{
    bce_with_logits, cross_entropy, soft_dice, soft_dice_multiclass, soft_dice_per_image, BceDice,
    CeDice, DeepSupervisionLoss, SegmentationLoss,
};
use unetpp::Error;

fn fixture() -> HashMap<String, Tensor> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/losses.safetensors"
    );
    unetpp::weights::load_tensors(path, &Device::Cpu).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn assert_close(ours: f64, theirs: f64, what: &str) {
    let tol = 1e-10 * theirs.abs().max(1.0);
    assert!(
        (ours - theirs).abs() <= tol,
        "{what}: ours {ours}, PyTorch {theirs}"
    );
}

/// The loss's value and its gradient with respect to the logits.
fn value_and_grad(
    loss: &impl SegmentationLoss,
    logits: &Tensor,
    targets: &Tensor,
) -> (f64, Tensor) {
    let x = Var::from_tensor(logits).unwrap();
    let v = loss.compute(x.as_tensor(), targets).unwrap();
    let g = v.backward().unwrap();
    (scalar(&v), g.get(x.as_tensor()).unwrap().clone())
}

#[test]
fn binary_losses_match_pytorch() {
    let f = fixture();
    let (x, y) = (&f["bin_logits"], &f["bin_masks"]);
    assert_close(
        scalar(&bce_with_logits(x, y).unwrap()),
        scalar(&f["bce"]),
        "BCE",
    );
    assert_close(
        scalar(&soft_dice(x, y, 1.0).unwrap()),
        scalar(&f["dice_batch"]),
        "Dice over the batch",
    );
    let per_image = soft_dice_per_image(x, y, 1.0).unwrap();
    assert!(max_rel_diff(&per_image, &f["dice_per_image"]) < 1e-10);

    for (loss, name) in [
        (BceDice::paper(), "bce_dice_paper"),
        (BceDice::common(), "bce_dice_common"),
    ] {
        let (v, g) = value_and_grad(&loss, x, y);
        assert_close(v, scalar(&f[name]), name);
        let d = max_rel_diff(&g, &f[&format!("{name}_grad")]);
        assert!(d < 1e-9, "{name} gradient differs by {d}");
    }
}

#[test]
fn bce_is_finite_and_exact_at_extreme_logits() {
    let f = fixture();
    let x = Var::from_tensor(&f["ext_logits"]).unwrap();
    let v = bce_with_logits(x.as_tensor(), &f["ext_masks"]).unwrap();
    assert!(scalar(&v).is_finite());
    assert_close(scalar(&v), scalar(&f["ext_bce"]), "BCE at ±100");
    let g = v.backward().unwrap();
    let g = g.get(x.as_tensor()).unwrap();
    assert!(max_rel_diff(g, &f["ext_bce_grad"]) < 1e-12);
    // And in f32, where a naive log(sigmoid) overflows.
    let x32 = f["ext_logits"].to_dtype(DType::F32).unwrap();
    let y32 = f["ext_masks"].to_dtype(DType::F32).unwrap();
    let v32 = bce_with_logits(&x32, &y32)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((v32 as f64 - scalar(&f["ext_bce"])).abs() < 1e-4, "{v32}");
    let l = BceDice::paper()
        .compute(&x32, &y32)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(l.is_finite());
}

#[test]
fn deep_supervision_matches_pytorch() {
    let f = fixture();
    let heads: Vec<Tensor> = (0..4).map(|i| f["ds_heads"].get(i).unwrap()).collect();
    let y = &f["ds_masks"];
    let equal = DeepSupervisionLoss::paper()
        .compute_heads(&heads, y)
        .unwrap();
    assert_close(scalar(&equal), scalar(&f["ds_equal"]), "equal weights");
    let weighted = DeepSupervisionLoss::paper()
        .with_weights([0.1, 0.2, 0.3, 0.4])
        .compute_heads(&heads, y)
        .unwrap();
    assert_close(
        scalar(&weighted),
        scalar(&f["ds_weighted"]),
        "per-head weights",
    );
}

#[test]
fn multiclass_losses_match_pytorch() {
    let f = fixture();
    let x = &f["mc_logits"];
    let (labels, ignored) = (&f["mc_labels"], &f["mc_labels_ignore"]);
    let cw: Vec<f32> = f["mc_class_weights"]
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap();
    // Class weights are given in f32: compare at f32 precision where they enter.
    assert_close(
        scalar(&cross_entropy(x, labels, None, None).unwrap()),
        scalar(&f["ce"]),
        "CE",
    );
    let weighted = scalar(&cross_entropy(x, labels, Some(&cw), None).unwrap());
    assert!((weighted - scalar(&f["ce_weighted"])).abs() < 1e-6);
    let ign = scalar(&cross_entropy(x, ignored, Some(&cw), Some(255)).unwrap());
    assert!((ign - scalar(&f["ce_weighted_ignore"])).abs() < 1e-6);
    assert_close(
        scalar(&soft_dice_multiclass(x, labels, 1.0, None, true).unwrap()),
        scalar(&f["dice_mc"]),
        "multi-class Dice",
    );
    assert_close(
        scalar(&soft_dice_multiclass(x, ignored, 1.0, Some(255), false).unwrap()),
        scalar(&f["dice_mc_ignore_nobg"]),
        "multi-class Dice, ignored pixels, no background",
    );
    // u32 labels give the same as i64 ones.
    let u = ignored.to_dtype(DType::U32).unwrap();
    let loss = CeDice::default().class_weights(cw).ignore_index(255);
    let (v, g) = value_and_grad(&loss, x, &u);
    assert!((v - scalar(&f["ce_dice"])).abs() < 1e-6, "CE + Dice {v}");
    let d = max_rel_diff(&g, &f["ce_dice_grad"]);
    assert!(d < 1e-6, "CE + Dice gradient differs by {d}");
}

/// Central differences of `loss` at `x` against its backward pass, on every element.
fn finite_difference_check(loss: &impl SegmentationLoss, x: &Tensor, targets: &Tensor) {
    let (_, analytic) = value_and_grad(loss, x, targets);
    let analytic = analytic.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let base = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let eps = 1e-6;
    for i in 0..base.len() {
        let at = |delta: f64| {
            let mut v = base.clone();
            v[i] += delta;
            let t = Tensor::from_vec(v, x.dims(), x.device()).unwrap();
            scalar(&loss.compute(&t, targets).unwrap())
        };
        let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
        assert!(
            (numeric - analytic[i]).abs() < 1e-6 * numeric.abs().max(1.0),
            "element {i}: finite difference {numeric}, backward {}",
            analytic[i]
        );
    }
}

#[test]
fn binary_gradients_match_finite_differences() {
    let dev = Device::Cpu;
    let x = (Tensor::randn(0f64, 1., (2, 1, 5, 4), &dev).unwrap() * 2.0).unwrap();
    let y = Tensor::rand(0f64, 1., (2, 1, 5, 4), &dev)
        .unwrap()
        .ge(0.5)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    finite_difference_check(&BceDice::paper(), &x, &y);
    finite_difference_check(&BceDice::common(), &x, &y);
    let soft = Tensor::rand(0f64, 1., (2, 1, 5, 4), &dev).unwrap();
    finite_difference_check(&BceDice::paper(), &x, &soft);
}

#[test]
fn multiclass_gradients_match_finite_differences() {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f64, 1., (2, 4, 3, 5), &dev).unwrap();
    let labels: Vec<u32> = (0..30).map(|i| [0, 1, 2, 3, 9][i * 7 % 5]).collect();
    let labels = Tensor::from_vec(labels, (2, 3, 5), &dev).unwrap();
    let loss = CeDice::default()
        .class_weights([0.5, 1.0, 2.0, 1.5])
        .ignore_index(9);
    finite_difference_check(&loss, &x, &labels);
    let no_bg = CeDice {
        include_background: false,
        ..CeDice::default()
    };
    let clean = labels.minimum(3u32).unwrap();
    finite_difference_check(&no_bg, &x, &clean);
}

#[test]
fn a_perfect_prediction_costs_almost_nothing() {
    let dev = Device::Cpu;
    let y = Tensor::new(&[[[[1f32, 0.], [0., 1.]]], [[[0., 0.], [0., 0.]]]], &dev).unwrap();
    let logits = ((&y * 2.0).unwrap() - 1.0).unwrap() * 30.0;
    let l = BceDice::paper().compute(&logits.unwrap(), &y).unwrap();
    // The empty second image is perfect too: smoothing makes its Dice 1.
    assert!(l.to_scalar::<f32>().unwrap() < 1e-6);
}

#[test]
fn all_ignored_pixels_give_zero_not_nan() {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (1, 3, 2, 2), &dev).unwrap();
    let labels = Tensor::full(255u32, (1, 2, 2), &dev).unwrap();
    let ce = cross_entropy(&x, &labels, None, Some(255)).unwrap();
    assert_eq!(ce.to_scalar::<f32>().unwrap(), 0.0);
}

#[test]
fn bad_inputs_are_errors() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((2, 1, 4, 4), DType::F32, &dev).unwrap();
    let wrong = Tensor::zeros((2, 1, 4, 5), DType::F32, &dev).unwrap();
    assert!(matches!(
        BceDice::paper().compute(&x, &wrong),
        Err(Error::Shape(_))
    ));

    let mc = Tensor::zeros((2, 3, 4, 4), DType::F32, &dev).unwrap();
    let too_big = Tensor::full(3u32, (2, 4, 4), &dev).unwrap();
    let e = CeDice::default().compute(&mc, &too_big).unwrap_err();
    assert!(e.to_string().contains("label 3"), "{e}");
    let neg = Tensor::full(-1i64, (2, 4, 4), &dev).unwrap();
    assert!(CeDice::default().compute(&mc, &neg).is_err());
    let float_labels = Tensor::zeros((2, 4, 4), DType::F32, &dev).unwrap();
    assert!(CeDice::default().compute(&mc, &float_labels).is_err());
    let wrong_labels = Tensor::zeros((2, 4, 5), DType::U32, &dev).unwrap();
    assert!(CeDice::default().compute(&mc, &wrong_labels).is_err());
    let labels = Tensor::zeros((2, 4, 4), DType::U32, &dev).unwrap();
    let e = CeDice::default()
        .class_weights([1.0, 1.0])
        .compute(&mc, &labels)
        .unwrap_err();
    assert!(matches!(e, Error::Config { .. }), "{e}");

    let heads = vec![x.clone(), x.clone()];
    let y = Tensor::zeros((2, 1, 4, 4), DType::F32, &dev).unwrap();
    let e = DeepSupervisionLoss::paper()
        .with_weights([1.0])
        .compute_heads(&heads, &y)
        .unwrap_err();
    assert!(matches!(e, Error::Config { .. }), "{e}");
    assert!(DeepSupervisionLoss::paper().compute_heads(&[], &y).is_err());
}
