//! Mask R-CNN's image transform and mask pasting against torchvision 0.29's
//! `GeneralizedRCNNTransform` and `paste_masks_in_image` (fixture from
//! `scripts/make_transform_fixtures.py`; values within a multiple of PyTorch's own float32
//! error, `common::assert_within_torch`), and the errors.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use common::{assert_close_rel as assert_close, assert_within_torch, torch_err, values, Metric};
use rand::rngs::StdRng;
use rand::SeedableRng;
use unetpp::maskrcnn::{paste_masks_in_image, resize_boxes, RcnnTransform, Target};
use unetpp::Error;

fn fixture() -> HashMap<String, Tensor> {
    common::fixture("transform.safetensors")
}

/// `ours` against the fixture's `key`, within the bound set by PyTorch's float32 error on
/// outputs of `kind` (`tol.{kind}`), per element relative to max(1, |torchvision's|).
fn assert_matches(f: &HashMap<String, Tensor>, ours: &Tensor, key: &str, kind: &str, what: &str) {
    let tol = torch_err(f, kind);
    assert_within_torch(
        ours,
        &f[key],
        tol,
        Metric::RelEach,
        &format!("{what} {key}"),
    );
}

fn sizes(t: &Tensor) -> Vec<(usize, usize)> {
    t.to_vec2::<i64>()
        .unwrap()
        .iter()
        .map(|s| (s[0] as usize, s[1] as usize))
        .collect()
}

/// A fixture case: its transform (the settings the script gives torchvision), the case its
/// images are stored under, and how many images it has.
struct Case {
    name: &'static str,
    transform: RcnnTransform,
    images_of: &'static str,
    n: usize,
}

fn cases() -> Vec<Case> {
    let small = || RcnnTransform::mask_rcnn().min_size(26).max_size(40);
    let case = |name, transform, images_of, n| Case {
        name,
        transform,
        images_of,
        n,
    };
    vec![
        case("a", small().build().unwrap(), "a", 4),
        case("b", small().size_divisible(16).build().unwrap(), "b", 2),
        case(
            "c",
            small().min_sizes([16, 26, 20]).build().unwrap(),
            "c",
            2,
        ),
        // torchvision's fixed_size=(32, 22) is (width, height).
        case(
            "d",
            small().fixed_size(Some((22, 32))).build().unwrap(),
            "a",
            1,
        ),
        case(
            "e",
            RcnnTransform::mask_rcnn()
                .min_size(24)
                .max_size(40)
                .image_mean([0.5])
                .image_std([0.25])
                .build()
                .unwrap(),
            "e",
            1,
        ),
    ]
}

impl Case {
    fn images(&self, f: &HashMap<String, Tensor>) -> Vec<Tensor> {
        (0..self.n)
            .map(|i| f[&format!("{}_img{i}", self.images_of)].clone())
            .collect()
    }

    fn key(&self, what: &str, i: usize) -> String {
        format!("{}_{what}{i}", self.name)
    }

    fn targets(&self, f: &HashMap<String, Tensor>) -> Vec<Target> {
        (0..self.n)
            .map(|i| {
                Target::new(
                    f[&self.key("boxes", i)].clone(),
                    f[&self.key("labels", i)].clone(),
                )
                .with_masks(f[&self.key("masks", i)].clone())
            })
            .collect()
    }
}

#[test]
fn inference_batch_matches_torchvision() {
    let f = fixture();
    for case in cases() {
        let batch = case.transform.forward(&case.images(&f)).unwrap();
        let name = case.name;
        assert_eq!(
            batch.image_sizes,
            sizes(&f[&format!("{name}_sizes")]),
            "{name}"
        );
        let shape: Vec<usize> = f[&format!("{name}_batch_shape")]
            .to_vec1::<i64>()
            .unwrap()
            .iter()
            .map(|&d| d as usize)
            .collect();
        assert_eq!(batch.tensors.dims(), shape, "{name}: batch shape");
        for (i, &(h, w)) in batch.image_sizes.iter().enumerate() {
            let img = batch.tensors.get(i).unwrap();
            let inside = img.narrow(1, 0, h).unwrap().narrow(2, 0, w).unwrap();
            assert_matches(&f, &inside, &case.key("resized", i), "resized", name);
            let total: f64 = values(&img.abs().unwrap()).iter().sum();
            let inner: f64 = values(&inside.abs().unwrap()).iter().sum();
            assert_eq!(total, inner, "{name}: image {i} is padded with zeros");
        }
    }
}

#[test]
fn training_targets_match_torchvision() {
    let f = fixture();
    for case in cases() {
        let images = case.images(&f);
        let targets = case.targets(&f);
        // Case c has several min sizes: the script takes torchvision's eval mode for it.
        let (batch, out) = if case.transform.min_sizes().len() == 1 {
            let mut rng = StdRng::seed_from_u64(0);
            case.transform
                .forward_train(&images, &targets, &mut rng)
                .unwrap()
        } else {
            case.transform
                .forward_with_targets(&images, &targets)
                .unwrap()
        };
        let eval = case.transform.forward(&images).unwrap();
        assert_eq!(batch.image_sizes, eval.image_sizes);
        assert_close(&batch.tensors, &eval.tensors, 0.0, case.name);
        assert_eq!(out.len(), case.n);
        for (i, t) in out.iter().enumerate() {
            let what = format!("{} image {i}", case.name);
            assert_matches(&f, &t.boxes, &case.key("out_boxes", i), "out_boxes", &what);
            let masks = t.masks.as_ref().unwrap();
            assert_eq!(masks.dtype(), DType::U8, "{what}");
            assert_close(masks, &f[&case.key("out_masks", i)], 0.0, &what);
            assert_close(&t.labels, &f[&case.key("labels", i)], 0.0, &what);
        }
    }
}

#[test]
fn postprocess_matches_torchvision() {
    let f = fixture();
    for case in cases() {
        let resized = sizes(&f[&format!("{}_sizes", case.name)]);
        let original = sizes(&f[&format!("{}_orig_sizes", case.name)]);
        for i in 0..case.n {
            let what = format!("{} image {i}", case.name);
            let (boxes, masks) = case
                .transform
                .postprocess(
                    &f[&case.key("pp_boxes", i)],
                    Some(&f[&case.key("pp_masks", i)]),
                    resized[i],
                    original[i],
                )
                .unwrap();
            let key = case.key("pp_out_boxes", i);
            assert_matches(&f, &boxes, &key, "pp_out_boxes", &what);
            let key = case.key("pp_out_masks", i);
            assert_matches(&f, &masks.unwrap(), &key, "pp_out_masks", &what);
        }
    }
}

#[test]
fn pasted_masks_match_torchvision() {
    let f = fixture();
    for (name, inputs) in [
        ("edges", "edges"),
        ("random", "random"),
        ("pad0", "random"),
        ("pad2", "random"),
        ("empty", "empty"),
    ] {
        let size = f[&format!("paste_{name}_size")].to_vec1::<i64>().unwrap();
        let padding = f[&format!("paste_{name}_padding")]
            .to_vec1::<i64>()
            .unwrap()[0];
        let pasted = paste_masks_in_image(
            &f[&format!("paste_{inputs}_masks")],
            &f[&format!("paste_{inputs}_boxes")],
            (size[0] as usize, size[1] as usize),
            padding as usize,
        )
        .unwrap();
        assert_matches(&f, &pasted, &format!("paste_{name}_out"), "paste_out", name);
    }
}

#[test]
fn short_side_can_round_below_min_size() {
    let t = RcnnTransform::mask_rcnn().build().unwrap();
    // 97 · (800 / 97) = 799.999… in f64: torchvision's image is 799 pixels high.
    assert_eq!(t.resized_size((97, 120), 800).unwrap(), (799, 989));
    assert_eq!(t.resized_size((100, 120), 800).unwrap(), (800, 960));
    // max_size binds: 1333 / 1000 < 800 / 500.
    assert_eq!(t.resized_size((500, 1000), 800).unwrap(), (666, 1333));
}

#[test]
fn mask_rcnn_preset_has_torchvisions_defaults() {
    let t = RcnnTransform::mask_rcnn().build().unwrap();
    assert_eq!(t.min_sizes(), &[800]);
    assert_eq!(t.eval_min_size(), 800);
    assert_eq!(t.max_size(), 1333);
    assert_eq!(t.image_mean(), &[0.485, 0.456, 0.406]);
    assert_eq!(t.image_std(), &[0.229, 0.224, 0.225]);
    assert_eq!(t.size_divisible(), 32);
    assert_eq!(t.fixed_size(), None);
}

#[test]
fn multi_scale_training_draws_each_min_size() {
    let t = RcnnTransform::mask_rcnn()
        .min_sizes([16, 20, 24])
        .max_size(100)
        .build()
        .unwrap();
    assert_eq!(t.eval_min_size(), 24);
    let image = Tensor::rand(0f32, 1., (3, 8, 10), &Device::Cpu).unwrap();
    let target = Target::new(
        Tensor::new(&[[1f32, 1., 5., 6.]], &Device::Cpu).unwrap(),
        Tensor::new(&[3i64], &Device::Cpu).unwrap(),
    );
    let mut rng = StdRng::seed_from_u64(7);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let (batch, out) = t
            .forward_train(
                std::slice::from_ref(&image),
                std::slice::from_ref(&target),
                &mut rng,
            )
            .unwrap();
        let (h, w) = batch.image_sizes[0];
        seen.insert(h);
        assert_eq!(w * 8, h * 10);
        let scale = h as f32 / 8.0;
        assert_close(
            &out[0].boxes,
            &(&target.boxes * scale as f64).unwrap(),
            1e-6,
            "boxes",
        );
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [16, 20, 24]);
}

#[test]
fn resize_boxes_scales_each_axis() {
    let boxes = Tensor::new(&[[2f64, 4., 6., 8.]], &Device::Cpu).unwrap();
    let out = resize_boxes(&boxes, (10, 20), (30, 10)).unwrap();
    assert_eq!(out.dtype(), DType::F64);
    assert_eq!(out.to_vec2::<f64>().unwrap(), [[1., 12., 3., 24.]]);
}

#[test]
fn boxes_wholly_outside_paste_nothing() {
    // torchvision raises a shape error for both.
    let masks = Tensor::ones((2, 1, 28, 28), DType::F32, &Device::Cpu).unwrap();
    let boxes = Tensor::new(
        &[[-30f32, -30., -10., -10.], [52., 5., 70., 20.]],
        &Device::Cpu,
    )
    .unwrap();
    let pasted = paste_masks_in_image(&masks, &boxes, (40, 50), 1).unwrap();
    assert_eq!(pasted.dims(), &[2, 1, 40, 50]);
    assert_eq!(values(&pasted).iter().sum::<f64>(), 0.0);
}

#[test]
fn pasting_keeps_the_masks_dtype() {
    let masks = Tensor::ones((1, 1, 4, 4), DType::F64, &Device::Cpu).unwrap();
    let boxes = Tensor::new(&[[1f64, 1., 6., 6.]], &Device::Cpu).unwrap();
    let pasted = paste_masks_in_image(&masks, &boxes, (8, 8), 0).unwrap();
    assert_eq!(pasted.dtype(), DType::F64);
    // Padding 0: the 4×4 ones become the 6×6 ones of pixels 1..=6.
    let v = values(&pasted);
    assert_eq!(v.iter().sum::<f64>(), 36.0);
    assert_eq!(v[8 + 1], 1.0);
    assert_eq!(v[7 * 8 + 7], 0.0);
}

// Errors -----------------------------------------------------------------------------------

fn config_field(r: Result<RcnnTransform, Error>) -> &'static str {
    match r {
        Err(Error::Config { field, .. }) => field,
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn rejects_invalid_settings() {
    let p = RcnnTransform::mask_rcnn;
    assert_eq!(config_field(p().min_sizes(Vec::new()).build()), "min_size");
    assert_eq!(config_field(p().min_sizes([800, 0]).build()), "min_size");
    assert_eq!(config_field(p().max_size(0).build()), "max_size");
    assert_eq!(
        config_field(p().image_mean(Vec::new()).build()),
        "image_mean"
    );
    assert_eq!(
        config_field(p().image_mean([f64::NAN, 0., 0.]).build()),
        "image_mean"
    );
    assert_eq!(config_field(p().image_std([1.0, 1.0]).build()), "image_std");
    assert_eq!(
        config_field(p().image_std([1.0, 0.0, 1.0]).build()),
        "image_std"
    );
    assert_eq!(
        config_field(p().size_divisible(0).build()),
        "size_divisible"
    );
    assert_eq!(
        config_field(p().fixed_size(Some((0, 10))).build()),
        "fixed_size"
    );
}

fn is_shape<T: std::fmt::Debug>(r: Result<T, Error>) -> bool {
    matches!(r, Err(Error::Shape(_)))
}

fn is_input<T: std::fmt::Debug>(r: Result<T, Error>) -> bool {
    matches!(r, Err(Error::Input(_)))
}

#[test]
fn rejects_bad_images() {
    let t = RcnnTransform::mask_rcnn().build().unwrap();
    let dev = &Device::Cpu;
    let grey = Tensor::zeros((1, 8, 8), DType::F32, dev).unwrap();
    assert!(is_shape(t.normalize(&grey)));
    let flat = Tensor::zeros((8, 8), DType::F32, dev).unwrap();
    assert!(is_shape(t.forward(&[flat])));
    let bytes = Tensor::zeros((3, 8, 8), DType::U8, dev).unwrap();
    assert!(is_input(t.forward(&[bytes])));
    let empty = Tensor::zeros((3, 0, 8), DType::F32, dev).unwrap();
    assert!(is_shape(t.forward(&[empty])));
    assert!(is_input(t.forward(&[])));
    // A 1×4000 image shrinks below one pixel high.
    let line = Tensor::zeros((3, 1, 4000), DType::F32, dev).unwrap();
    assert!(is_shape(t.forward(&[line])));
}

#[test]
fn rejects_targets_that_do_not_fit_their_image() {
    let t = RcnnTransform::mask_rcnn()
        .min_size(16)
        .max_size(32)
        .build()
        .unwrap();
    let dev = &Device::Cpu;
    let image = Tensor::zeros((3, 10, 12), DType::F32, dev).unwrap();
    let boxes = |b: &[[f32; 4]]| {
        Tensor::new(b.concat().as_slice(), dev)
            .unwrap()
            .reshape((b.len(), 4))
            .unwrap()
    };
    let labels = |n: usize| Tensor::ones(n, DType::I64, dev).unwrap();
    let masks = |k: usize, h: usize, w: usize| Tensor::zeros((k, h, w), DType::U8, dev).unwrap();
    let run = |target: Target| {
        t.forward_train(
            std::slice::from_ref(&image),
            &[target],
            &mut StdRng::seed_from_u64(0),
        )
    };

    let good = Target::new(boxes(&[[1., 1., 5., 5.]]), labels(1)).with_masks(masks(1, 10, 12));
    assert!(run(good.clone()).is_ok());
    assert!(is_input(t.forward_train(
        &[image.clone(), image.clone()],
        std::slice::from_ref(&good),
        &mut StdRng::seed_from_u64(0)
    )));
    // Outside the image, inverted, empty, NaN.
    for b in [
        [-1., 1., 5., 5.],
        [1., 1., 13., 5.],
        [1., 1., 5., 10.5],
        [5., 1., 1., 5.],
        [1., 3., 5., 3.],
        [1., f32::NAN, 5., 5.],
    ] {
        assert!(is_input(run(Target::new(boxes(&[b]), labels(1)))), "{b:?}");
    }
    // K mismatches and masks of another size.
    assert!(is_input(run(Target::new(
        boxes(&[[1., 1., 5., 5.]]),
        labels(2)
    ))));
    let two_masks = good.clone().with_masks(masks(2, 10, 12));
    assert!(is_input(run(two_masks)));
    let small_masks = good.clone().with_masks(masks(1, 10, 11));
    assert!(is_input(run(small_masks)));
    // Wrong ranks and dtypes.
    let three_wide = Tensor::zeros((1, 3), DType::F32, dev).unwrap();
    assert!(is_shape(run(Target::new(three_wide, labels(1)))));
    let flat_masks = good
        .clone()
        .with_masks(Tensor::zeros((10, 12), DType::U8, dev).unwrap());
    assert!(is_shape(run(flat_masks)));
    let float_labels = Tensor::ones(1, DType::F32, dev).unwrap();
    assert!(is_input(run(Target::new(
        boxes(&[[1., 1., 5., 5.]]),
        float_labels
    ))));
    let int_boxes = Tensor::new(&[[1u32, 1, 5, 5]], dev).unwrap();
    assert!(is_input(run(Target::new(int_boxes, labels(1)))));
}

#[test]
fn paste_rejects_bad_masks_and_boxes() {
    let dev = &Device::Cpu;
    let masks = Tensor::zeros((2, 1, 28, 28), DType::F32, dev).unwrap();
    let boxes = Tensor::new(&[[1f32, 1., 5., 5.], [2., 2., 8., 8.]], dev).unwrap();
    assert!(paste_masks_in_image(&masks, &boxes, (10, 10), 1).is_ok());
    let two_channels = Tensor::zeros((2, 2, 28, 28), DType::F32, dev).unwrap();
    assert!(is_shape(paste_masks_in_image(
        &two_channels,
        &boxes,
        (10, 10),
        1
    )));
    let three_d = Tensor::zeros((2, 28, 28), DType::F32, dev).unwrap();
    assert!(is_shape(paste_masks_in_image(
        &three_d,
        &boxes,
        (10, 10),
        1
    )));
    let one_box = boxes.narrow(0, 0, 1).unwrap();
    assert!(is_shape(paste_masks_in_image(
        &masks,
        &one_box,
        (10, 10),
        1
    )));
    let nan = Tensor::new(&[[1f32, 1., 5., 5.], [2., 2., f32::INFINITY, 8.]], dev).unwrap();
    assert!(is_input(paste_masks_in_image(&masks, &nan, (10, 10), 1)));
    assert!(is_shape(resize_boxes(&masks, (10, 10), (5, 5))));
    assert!(is_input(resize_boxes(&boxes, (0, 10), (5, 5))));
}
