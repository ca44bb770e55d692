//! Detection ops against torchvision 0.29 (fixture from `scripts/make_detection_fixtures.py`):
//! RoIAlign forward and input gradient (CPU kernel and composed path), MultiScaleRoIAlign,
//! NMS and batched NMS (indices identical), the box utilities (values within a multiple of
//! PyTorch's own float32 error, see `common::torch_bound`); a finite-difference gradient test
//! of RoIAlign; and the errors for bad boxes.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use common::{get, torch_bound, torch_err, values, Metric};
use unetpp::ops::{
    batched_nms, box_area, box_convert, box_iou, clip_boxes_to_image, nms, remove_small_boxes,
    BoxFormat, MultiScaleRoiAlign, RoiAlign,
};
use unetpp::Error;

fn fixture() -> HashMap<String, Tensor> {
    common::fixture("detection_ops.safetensors")
}

/// Max |a − b| in f64, NaN only where both are NaN.
fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let (a, b) = (a.to_vec1::<f64>().unwrap(), b.to_vec1::<f64>().unwrap());
    a.iter().zip(&b).fold(0.0, |m: f64, (x, y)| {
        if x.is_nan() || y.is_nan() {
            assert!(x.is_nan() && y.is_nan(), "NaN mismatch: {x} vs {y}");
            m
        } else {
            m.max((x - y).abs())
        }
    })
}

/// `ours` against the fixture's `key` (NaN where both are NaN), within the bound set by
/// PyTorch's float32 error on it (`tol.{tol}`) or 8 ulps of our dtype.
fn assert_matches(f: &HashMap<String, Tensor>, ours: &Tensor, key: &str, tol: &str, what: &str) {
    let want = get(f, key);
    let d = max_diff(ours, want);
    let scale = values(want)
        .iter()
        .filter(|v| !v.is_nan())
        .fold(0.0f64, |m, v| m.max(v.abs()));
    let eps = match ours.dtype() {
        DType::F64 => f64::EPSILON,
        _ => f32::EPSILON as f64,
    };
    let torch = torch_err(f, tol);
    let bound = torch_bound(torch, Metric::Abs, scale, eps);
    println!("{what}: error {d:.3e}, bound {bound:.3e} (PyTorch's f32 error {torch:.3e})");
    assert!(
        d <= bound,
        "{what}: off by {d:.3e}, more than {bound:.3e} (PyTorch's own float32 error {torch:.3e})"
    );
}

fn indices(t: &Tensor) -> Vec<i64> {
    t.to_dtype(DType::I64).unwrap().to_vec1::<i64>().unwrap()
}

fn config(f: &HashMap<String, Tensor>, p: &str) -> RoiAlign {
    let c = get(f, &format!("{p}config")).to_vec1::<f64>().unwrap();
    RoiAlign::new((c[0] as usize, c[1] as usize))
        .with_spatial_scale(c[2])
        .with_sampling_ratio(c[3] as i64)
        .with_aligned(c[4] != 0.0)
}

/// Output and input gradient for upstream gradient `g`.
fn forward_backward(
    x: &Tensor,
    g: &Tensor,
    run: impl Fn(&Tensor) -> unetpp::Result<Tensor>,
) -> (Tensor, Tensor) {
    let var = Var::from_tensor(x).unwrap();
    let y = run(var.as_tensor()).unwrap();
    let grads = (&y * g).unwrap().sum_all().unwrap().backward().unwrap();
    (y, grads.get(var.as_tensor()).unwrap().clone())
}

#[test]
fn roi_align_matches_torchvision_forward_and_backward() {
    let f = fixture();
    for case in 0..8 {
        let p = format!("roi_align.{case}.");
        let cfg = config(&f, &p);
        let x = get(&f, &format!("{p}input"));
        let rois = get(&f, &format!("{p}rois"));
        let g = get(&f, &format!("{p}grad_output"));
        for (path, composed) in [("kernel", false), ("composed", true)] {
            let (y, gx) = forward_backward(x, g, |x| {
                if composed {
                    cfg.forward_composed(x, rois)
                } else {
                    cfg.forward(x, rois)
                }
            });
            assert_eq!(y.dtype(), x.dtype());
            let what = format!("case {case} {path} {cfg:?}");
            let (ky, kg) = (format!("{p}output"), format!("{p}grad_input"));
            assert_matches(&f, &y, &ky, &ky, &format!("{what}: output"));
            assert_matches(&f, &gx, &kg, &kg, &format!("{what}: grad"));
        }
    }
}

#[test]
fn roi_align_kernel_repeats_torchvision_arithmetic_bit_for_bit() {
    // The CPU kernel does torchvision's float operations in torchvision's order, in the
    // input's precision, forward and backward. (The device-generic path, forced by
    // UNETPP_DEVICE_GENERIC=1, is checked against the fixtures within rounding above.)
    if unetpp::ops::device_generic() {
        eprintln!("skipped: the device-generic path is forced, the CPU kernel is not in use");
        return;
    }
    let f = fixture();
    for case in 0..8 {
        let p = format!("roi_align.{case}.");
        let cfg = config(&f, &p);
        let (y, gx) = forward_backward(
            get(&f, &format!("{p}input")),
            get(&f, &format!("{p}grad_output")),
            |x| cfg.forward(x, get(&f, &format!("{p}rois"))),
        );
        let dy = max_diff(&y, get(&f, &format!("{p}output")));
        let dg = max_diff(&gx, get(&f, &format!("{p}grad_input")));
        assert_eq!((dy, dg), (0.0, 0.0), "case {case}");
    }
}

#[test]
fn roi_align_takes_per_image_box_lists() {
    let f = fixture();
    let p = "roi_align.2.";
    let cfg = config(&f, p);
    let (x, rois) = (get(&f, &format!("{p}input")), get(&f, &format!("{p}rois")));
    let ids = rois.narrow(1, 0, 1).unwrap().squeeze(1).unwrap();
    let ids = ids.to_vec1::<f32>().unwrap();
    // Regroup the rois by image, then compare row by row.
    let mut lists = [Vec::new(), Vec::new()];
    let mut order = [Vec::new(), Vec::new()];
    for (k, &b) in ids.iter().enumerate() {
        lists[b as usize].push(rois.get(k).unwrap().narrow(0, 1, 4).unwrap());
        order[b as usize].push(k);
    }
    let boxes: Vec<Tensor> = lists.iter().map(|l| Tensor::stack(l, 0).unwrap()).collect();
    let y = cfg.forward_boxes(x, &boxes).unwrap();
    let want = cfg.forward(x, rois).unwrap();
    for (row, &k) in order.concat().iter().enumerate() {
        let d = max_diff(&y.get(row).unwrap(), &want.get(k).unwrap());
        assert_eq!(d, 0.0, "roi {k}");
    }
}

#[test]
fn roi_align_gradient_matches_finite_differences() {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f64, 1., (2, 2, 6, 7), &dev).unwrap();
    let rois = Tensor::new(
        &[
            [0f64, 0.3, 0.7, 4.1, 5.2],
            [1., -1.5, 2.2, 3.3, 6.4],
            [1., 2.6, 1.1, 6.9, 4.0],
            [0., 5.0, 4.0, 5.2, 4.1],
        ],
        &dev,
    )
    .unwrap();
    let g = Tensor::randn(0f64, 1., (4, 2, 3, 2), &dev).unwrap();
    for aligned in [false, true] {
        for ratio in [-1, 2] {
            let cfg = RoiAlign::new((3, 2))
                .with_sampling_ratio(ratio)
                .with_aligned(aligned);
            let loss = |x: &Tensor| -> f64 {
                let y = cfg.forward(x, &rois).unwrap();
                (y * &g)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            };
            let (_, analytic) = forward_backward(&x, &g, |x| cfg.forward(x, &rois));
            let analytic = analytic.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let base = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let eps = 1e-6;
            for (i, &a) in analytic.iter().enumerate() {
                let mut plus = base.clone();
                plus[i] += eps;
                let mut minus = base.clone();
                minus[i] -= eps;
                let t = |v: Vec<f64>| Tensor::from_vec(v, x.dims(), &dev).unwrap();
                let fd = (loss(&t(plus)) - loss(&t(minus))) / (2.0 * eps);
                assert!(
                    (fd - a).abs() <= 1e-7 * fd.abs().max(1.0),
                    "aligned {aligned} ratio {ratio} element {i}: fd {fd} analytic {a}"
                );
            }
        }
    }
}

#[test]
fn roi_align_runs_in_half_precision() {
    let f = fixture();
    let p = "roi_align.0.";
    let cfg = config(&f, p);
    let x = get(&f, &format!("{p}input"));
    let rois = get(&f, &format!("{p}rois"));
    let want = get(&f, &format!("{p}output"));
    for dt in [DType::BF16, DType::F16] {
        for composed in [false, true] {
            let xh = x.to_dtype(dt).unwrap();
            let y = if composed {
                cfg.forward_composed(&xh, rois)
            } else {
                cfg.forward(&xh, rois)
            }
            .unwrap();
            assert_eq!(y.dtype(), dt);
            let d = max_diff(&y, want);
            assert!(d < 0.05, "{dt:?} composed {composed}: {d}");
        }
    }
}

#[test]
fn roi_align_rejects_bad_rois() {
    let x = Tensor::zeros((2, 1, 5, 5), DType::F32, &Device::Cpu).unwrap();
    let cfg = RoiAlign::new((2, 2));
    let bad = [
        ([2f32, 0., 0., 1., 1.], "batch index"),
        ([-1., 0., 0., 1., 1.], "batch index"),
        ([0.5, 0., 0., 1., 1.], "batch index"),
        ([0., f32::NAN, 0., 1., 1.], "non-finite"),
        ([0., 0., 0., f32::INFINITY, 1.], "non-finite"),
        ([0., 3., 0., 1., 1.], "x1 <= x2"),
        ([0., 0., 3., 1., 1.], "x1 <= x2"),
    ];
    for (roi, what) in bad {
        let rois = Tensor::new(&[roi], &Device::Cpu).unwrap();
        for composed in [false, true] {
            let r = if composed {
                cfg.forward_composed(&x, &rois)
            } else {
                cfg.forward(&x, &rois)
            };
            match r {
                Err(Error::Input(msg)) => assert!(msg.contains(what), "{msg}"),
                other => panic!("{roi:?}: expected Error::Input, got {other:?}"),
            }
        }
    }
    let four = Tensor::zeros((3, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(cfg.forward(&x, &four), Err(Error::Shape(_))));
    let rois = Tensor::new(&[[0f32, 0., 0., 1., 1.]], &Device::Cpu).unwrap();
    assert!(matches!(
        RoiAlign::new((0, 2)).forward(&x, &rois),
        Err(Error::Config { .. })
    ));
    assert!(matches!(
        cfg.with_spatial_scale(0.0).forward(&x, &rois),
        Err(Error::Config { .. })
    ));
    let flat = Tensor::zeros((2, 5, 5), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(cfg.forward(&flat, &rois), Err(Error::Shape(_))));
    assert!(matches!(
        unetpp::ops::rois_from_boxes(&[]),
        Err(Error::Input(_))
    ));
}

#[test]
fn roi_align_of_no_rois_is_empty() {
    let x = Tensor::zeros((1, 3, 5, 5), DType::F32, &Device::Cpu).unwrap();
    let rois = Tensor::zeros((0, 5), DType::F32, &Device::Cpu).unwrap();
    let y = RoiAlign::new((2, 3)).forward(&x, &rois).unwrap();
    assert_eq!(y.dims(), &[0, 3, 2, 3]);
    let boxes = [Tensor::zeros((0, 4), DType::F32, &Device::Cpu).unwrap()];
    let y = RoiAlign::new((2, 3)).forward_boxes(&x, &boxes).unwrap();
    assert_eq!(y.dims(), &[0, 3, 2, 3]);
}

fn multiscale_inputs(
    f: &HashMap<String, Tensor>,
) -> (Vec<Tensor>, Vec<Tensor>, Vec<(usize, usize)>) {
    let feats = (0..4)
        .map(|l| get(f, &format!("multiscale.feature{l}")).clone())
        .collect();
    let boxes = (0..2)
        .map(|i| get(f, &format!("multiscale.boxes{i}")).clone())
        .collect();
    let sizes = get(f, "multiscale.image_sizes").to_vec2::<i64>().unwrap();
    let sizes = sizes
        .iter()
        .map(|s| (s[0] as usize, s[1] as usize))
        .collect();
    (feats, boxes, sizes)
}

#[test]
fn multiscale_roi_align_matches_torchvision() {
    let f = fixture();
    let (feats, boxes, sizes) = multiscale_inputs(&f);
    for (name, pooler) in [
        ("boxes", MultiScaleRoiAlign::mask_rcnn_boxes()),
        ("masks", MultiScaleRoiAlign::mask_rcnn_masks()),
    ] {
        let p = format!("multiscale.{name}.");
        let levels = pooler.levels(&boxes, 2, 5).unwrap();
        let want_levels = indices(get(&f, &format!("{p}levels")));
        let levels: Vec<i64> = levels.iter().map(|&l| l as i64).collect();
        assert_eq!(levels, want_levels, "{name}: levels");
        // Every level is used, so the test covers the reassembly of the output.
        for l in 0..4 {
            assert!(levels.contains(&l), "level {l} unused");
        }
        let y = pooler.forward(&feats, &boxes, &sizes).unwrap();
        let key = format!("{p}output");
        assert_matches(&f, &y, &key, &key, name);
    }
    let g = get(&f, "multiscale.boxes.grad_output");
    let vars: Vec<Var> = feats.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = MultiScaleRoiAlign::mask_rcnn_boxes()
        .forward(&ts, &boxes, &sizes)
        .unwrap();
    let grads = (y * g).unwrap().sum_all().unwrap().backward().unwrap();
    for (l, v) in vars.iter().enumerate() {
        let key = format!("multiscale.boxes.grad_feature{l}");
        let g = grads.get(v.as_tensor()).unwrap();
        assert_matches(&f, g, &key, "multiscale.boxes.grad_feature", &key);
    }
}

#[test]
fn multiscale_scales_are_inferred_from_the_largest_image() {
    let f = fixture();
    let (feats, _, sizes) = multiscale_inputs(&f);
    let scales = MultiScaleRoiAlign::infer_scales(&feats, &sizes).unwrap();
    assert_eq!(scales, vec![0.25, 0.125, 0.0625, 0.03125]);
    assert!(matches!(
        MultiScaleRoiAlign::infer_scales(&feats, &[]),
        Err(Error::Input(_))
    ));
}

const NMS_CASES: [&str; 8] = [
    "random",
    "ties",
    "identical",
    "empty_boxes",
    "threshold_zero",
    "thousands",
    "batched_offset",
    "batched_per_class",
];

#[test]
fn nms_keeps_what_torchvision_keeps() {
    let f = fixture();
    for case in NMS_CASES {
        let p = format!("nms.{case}.");
        let boxes = get(&f, &format!("{p}boxes"));
        let scores = get(&f, &format!("{p}scores"));
        let thr = get(&f, &format!("{p}threshold")).to_vec1::<f64>().unwrap()[0];
        let keep = match f.get(&format!("{p}classes")) {
            Some(classes) => batched_nms(boxes, scores, classes, thr).unwrap(),
            None => nms(boxes, scores, thr).unwrap(),
        };
        assert_eq!(keep.dtype(), DType::U32);
        let want = indices(get(&f, &format!("{p}keep")));
        assert_eq!(indices(&keep), want, "{case}");
    }
}

#[test]
fn nms_of_no_boxes_is_empty_and_bad_input_is_an_error() {
    let dev = Device::Cpu;
    let none = Tensor::zeros((0, 4), DType::F32, &dev).unwrap();
    let no_scores = Tensor::zeros(0, DType::F32, &dev).unwrap();
    assert_eq!(nms(&none, &no_scores, 0.5).unwrap().dims(), &[0]);
    let no_classes = Tensor::zeros(0, DType::U32, &dev).unwrap();
    assert_eq!(
        batched_nms(&none, &no_scores, &no_classes, 0.5)
            .unwrap()
            .dims(),
        &[0]
    );
    let boxes = Tensor::new(&[[0f32, 0., 2., 2.], [1., 1., 3., 3.]], &dev).unwrap();
    let scores = Tensor::new(&[0.5f32, f32::NAN], &dev).unwrap();
    assert!(matches!(nms(&boxes, &scores, 0.5), Err(Error::Input(_))));
    let scores = Tensor::new(&[0.5f32, 0.4], &dev).unwrap();
    let flipped = Tensor::new(&[[0f32, 0., 2., 2.], [3., 1., 1., 3.]], &dev).unwrap();
    assert!(matches!(nms(&flipped, &scores, 0.5), Err(Error::Input(_))));
    let nan = Tensor::new(&[[0f32, 0., 2., 2.], [f32::NAN, 1., 1., 3.]], &dev).unwrap();
    assert!(matches!(nms(&nan, &scores, 0.5), Err(Error::Input(_))));
    let three = Tensor::new(&[0.5f32, 0.4, 0.3], &dev).unwrap();
    assert!(matches!(nms(&boxes, &three, 0.5), Err(Error::Shape(_))));
    let float_classes = Tensor::new(&[0f32, 1.], &dev).unwrap();
    assert!(matches!(
        batched_nms(&boxes, &scores, &float_classes, 0.5),
        Err(Error::Input(_))
    ));
}

#[test]
fn box_utilities_match_torchvision() {
    let f = fixture();
    let (a, b) = (get(&f, "boxes.a"), get(&f, "boxes.b"));
    let iou = box_iou(a, b).unwrap();
    assert_matches(&f, &iou, "boxes.iou", "boxes.iou", "box_iou");
    let area = box_area(a).unwrap();
    assert_matches(&f, &area, "boxes.area", "boxes.area", "box_area");
    let clipped = clip_boxes_to_image(a, (30, 45)).unwrap();
    assert_eq!(max_diff(&clipped, get(&f, "boxes.clipped")), 0.0);
    let kept = remove_small_boxes(a, 2.5).unwrap();
    assert_eq!(indices(&kept), indices(get(&f, "boxes.small_kept")));
    let fmt = |s: &str| match s {
        "xyxy" => BoxFormat::Xyxy,
        "xywh" => BoxFormat::Xywh,
        _ => BoxFormat::Cxcywh,
    };
    for from in ["xyxy", "xywh", "cxcywh"] {
        for to in ["xyxy", "xywh", "cxcywh"] {
            if from == to {
                continue;
            }
            // The fixture reads the same numbers as each format in turn.
            let key = format!("boxes.convert.{from}.{to}");
            let ours = box_convert(a, fmt(from), fmt(to)).unwrap();
            assert_matches(&f, &ours, &key, "boxes.convert", &key);
        }
    }
}

#[test]
fn box_iou_rejects_flipped_and_nan_boxes() {
    let dev = Device::Cpu;
    let ok = Tensor::new(&[[0f32, 0., 1., 1.]], &dev).unwrap();
    let flipped = Tensor::new(&[[2f32, 0., 1., 1.]], &dev).unwrap();
    let nan = Tensor::new(&[[0f32, 0., f32::NAN, 1.]], &dev).unwrap();
    assert!(matches!(box_iou(&ok, &flipped), Err(Error::Input(_))));
    assert!(matches!(box_iou(&nan, &ok), Err(Error::Input(_))));
    let wrong = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
    assert!(matches!(box_iou(&wrong, &ok), Err(Error::Shape(_))));
    assert!(matches!(box_area(&wrong), Err(Error::Shape(_))));
}

#[test]
fn multiscale_handles_empty_box_lists_and_rejects_bad_ones() {
    let f = fixture();
    let (feats, boxes, sizes) = multiscale_inputs(&f);
    let pooler = MultiScaleRoiAlign::mask_rcnn_boxes();
    let none = vec![Tensor::zeros((0, 4), DType::F32, &Device::Cpu).unwrap(); 2];
    let y = pooler.forward(&feats, &none, &sizes).unwrap();
    assert_eq!(y.dims(), &[0, 2, 7, 7]);
    // One image's boxes empty, the other's not.
    let mixed = vec![none[0].clone(), boxes[1].clone()];
    let y = pooler.forward(&feats, &mixed, &sizes).unwrap();
    assert_eq!(y.dim(0).unwrap(), boxes[1].dim(0).unwrap());
    assert!(matches!(
        pooler.forward(&feats, &[], &sizes),
        Err(Error::Input(_))
    ));
    // A third image in a batch of two: its batch index is out of range.
    let three = vec![boxes[0].clone(), boxes[1].clone(), boxes[1].clone()];
    match pooler.forward(&feats, &three, &sizes) {
        Err(Error::Input(msg)) => assert!(msg.contains("batch index"), "{msg}"),
        other => panic!("expected Error::Input, got {other:?}"),
    }
    let flipped = vec![
        Tensor::new(&[[10f32, 10., 5., 20.]], &Device::Cpu).unwrap(),
        boxes[1].clone(),
    ];
    assert!(matches!(
        pooler.forward(&feats, &flipped, &sizes),
        Err(Error::Input(_))
    ));
    assert!(matches!(
        pooler.forward(&[], &boxes, &sizes),
        Err(Error::Input(_))
    ));
}

#[test]
fn roi_align_edge_inputs() {
    let dev = Device::Cpu;
    let rois = Tensor::new(&[[0f32, 0., 0., 4., 4.]], &dev).unwrap();
    let cfg = RoiAlign::new((2, 2));
    // No channels: an empty result, not a panic.
    let x = Tensor::zeros((1, 0, 5, 5), DType::F32, &dev).unwrap();
    assert_eq!(cfg.forward(&x, &rois).unwrap().dims(), &[1, 0, 2, 2]);
    // Integer maps are refused (the interpolation weights would be truncated).
    let x = Tensor::zeros((1, 2, 5, 5), DType::U8, &dev).unwrap();
    assert!(matches!(cfg.forward(&x, &rois), Err(Error::Input(_))));
    // A huge box with adaptive sampling would need ~10^14 samples: an error, not an abort.
    let x = Tensor::zeros((1, 2, 5, 5), DType::F32, &dev).unwrap();
    let huge = Tensor::new(&[[0f32, 0., 0., 1e7, 1e7]], &dev).unwrap();
    assert!(matches!(cfg.forward(&x, &huge), Err(Error::Input(_))));
    // With a fixed ratio the same box is fine.
    assert!(cfg.with_sampling_ratio(2).forward(&x, &huge).is_ok());
}

#[test]
fn multiscale_rejects_bad_settings() {
    let f = fixture();
    let (feats, boxes, sizes) = multiscale_inputs(&f);
    let bad = MultiScaleRoiAlign::mask_rcnn_boxes().with_canonical(0.0, 4);
    assert!(matches!(
        bad.forward(&feats, &boxes, &sizes),
        Err(Error::Config { .. })
    ));
    assert!(MultiScaleRoiAlign::mask_rcnn_boxes()
        .levels(&boxes, 5, 2)
        .is_err());
}
