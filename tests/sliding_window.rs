//! Sliding-window inference and test-time augmentation: MONAI's `sliding_window_inference`
//! and the same flip / rotation average in PyTorch on a MONAI `BasicUNetPlusPlus`
//! (`scripts/make_sliding_window_fixtures.py`), then what must hold for any network: one
//! window is the plain forward, windows agree with the whole image away from their edges,
//! any number of spatial axes, bounded batches, clear errors.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use common::{assert_within_torch, fixture, get, torch_err, values, Metric};
use unetpp::inference::{Blend, Padding, Segmenter, SlidingWindow, Transform, Tta};
use unetpp::interop::monai::from_monai;
use unetpp::model::Mode;
use unetpp::prelude::*;

fn monai_net(f: &HashMap<String, Tensor>) -> UNetPlusPlus {
    let state = f
        .iter()
        .filter_map(|(k, t)| Some((k.strip_prefix("net/")?.to_string(), t.clone())))
        .collect();
    from_monai(state, &Device::Cpu).unwrap().0
}

fn logits(net: &UNetPlusPlus, x: &Tensor) -> unetpp::Result<Tensor> {
    Mode::Last.logits(&net.infer(x)?)
}

#[test]
fn monais_sliding_window_is_reproduced() {
    let f = fixture("sliding_window.safetensors");
    let net = monai_net(&f);
    let g = |sigma_scale| Blend::Gaussian { sigma_scale };
    let cases = [
        ("constant", SlidingWindow::builder([32, 32]).overlap(0.25)),
        (
            "gaussian",
            SlidingWindow::builder([32, 48])
                .overlap(0.5)
                .batch_size(3)
                .blend(g(0.125)),
        ),
        (
            "sigma",
            SlidingWindow::builder([32, 32])
                .overlap_per_axis([0.5, 0.25])
                .batch_size(4)
                .blend(g(0.25)),
        ),
        (
            "pad_zero",
            SlidingWindow::builder([32, 32])
                .batch_size(2)
                .blend(g(0.125)),
        ),
        (
            "pad_edge",
            SlidingWindow::builder([32, 32])
                .batch_size(2)
                .blend(g(0.125))
                .padding(Padding::Replicate),
        ),
    ];
    for (case, builder) in cases {
        let sw = builder.build().unwrap();
        let x = get(&f, &format!("{case}/input"));
        let mut largest_batch = 0;
        let ours = sw
            .run(x, |w| {
                largest_batch = largest_batch.max(w.dim(0)?);
                logits(&net, w)
            })
            .unwrap();
        assert!(largest_batch <= sw.batch_size());
        assert_within_torch(
            &ours,
            get(&f, &format!("{case}/output")),
            torch_err(&f, case),
            Metric::Rel,
            case,
        );
    }
}

#[test]
fn flip_and_rotation_averages_match_pytorch() {
    let f = fixture("sliding_window.safetensors");
    let net = monai_net(&f);
    for (case, tta) in [
        ("tta_flips", Tta::flips(2).unwrap()),
        ("tta_rot", Tta::flips_and_rotations(2).unwrap()),
    ] {
        let x = get(&f, &format!("{case}/input"));
        let ours = Segmenter::new(&net)
            .mode(Mode::Last)
            .tta(tta)
            .probabilities(x)
            .unwrap();
        let want = get(&f, &format!("{case}/output"));
        assert_within_torch(&ours, want, torch_err(&f, case), Metric::Rel, case);
    }
    // Windows, each averaged over its flips, then blended.
    let sw = SlidingWindow::builder([32, 32])
        .overlap(0.5)
        .batch_size(2)
        .blend(Blend::Gaussian { sigma_scale: 0.125 })
        .build()
        .unwrap();
    let ours = Segmenter::new(&net)
        .mode(Mode::Last)
        .sliding_window(sw)
        .tta(Tta::flips(2).unwrap())
        .probabilities(get(&f, "sw_tta/input"))
        .unwrap();
    let want = get(&f, "sw_tta/output");
    assert_within_torch(&ours, want, torch_err(&f, "sw_tta"), Metric::Rel, "sw_tta");
}

/// A small UNet++ with batch norm (pointwise in evaluation mode, so a pixel depends only on
/// its receptive field) and non-trivial running statistics.
fn bn_net(depth: usize) -> UNetPlusPlus {
    let cfg = UNetPlusPlusConfig::paper()
        .widths(vec![4, 6, 8, 10, 12][..=depth].to_vec())
        .depth(depth)
        .norm(Norm::Batch)
        .num_classes(2)
        .build()
        .unwrap();
    let (_, net) = common::build(&cfg);
    net
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    common::max_abs_diff(a, b)
}

#[test]
fn one_window_is_the_plain_forward() {
    let net = bn_net(3);
    let x = common::randn(&[2, 1, 48, 64]);
    for blend in [Blend::Constant, Blend::Gaussian { sigma_scale: 0.125 }] {
        let sw = SlidingWindow::builder([48, 64])
            .blend(blend)
            .build()
            .unwrap();
        for mode in [Mode::Accurate, Mode::Fast(2), Mode::Last] {
            let plain = mode.probabilities(&net.infer(&x).unwrap()).unwrap();
            let windowed = sw.probabilities(&net, &x, mode).unwrap();
            let d = max_abs(&windowed, &plain);
            // w·p / w: two roundings of a probability.
            assert!(d <= 2.0 * f32::EPSILON, "{mode:?} {blend:?}: {d}");
        }
    }
}

#[test]
fn windows_agree_with_the_whole_image_away_from_their_edges() {
    // Depth 2: a pixel of X^{0,2} sees a few tens of pixels around it; windows of 96 with half
    // overlap leave a band in each overlap that is at least MARGIN from every window edge
    // that is not an image edge.
    const MARGIN: usize = 24;
    let net = bn_net(2);
    let (h, w) = (192, 240);
    let x = common::randn(&[1, 1, h, w]);
    let whole = net.forward(&x).unwrap();
    let sw = SlidingWindow::builder([96, 96])
        .overlap(0.5)
        .batch_size(3)
        .build()
        .unwrap();
    let windowed = sw.run(&x, |b| logits(&net, b)).unwrap();
    let starts = sw.starts(&[h, w]).unwrap();
    let inside = |p: usize, s: usize, size: usize| {
        (s == 0 || p >= s + MARGIN)
            && (s + 96 == size || p + MARGIN < s + 96)
            && p >= s
            && p < s + 96
    };
    let covers = |p: usize, s: usize| p >= s && p < s + 96;
    let (a, b) = (values(&whole), values(&windowed));
    let (mut checked, mut worst) = (0, 0f64);
    let scale = a.iter().fold(0f64, |m, v| m.max(v.abs()));
    for i in 0..h {
        for j in 0..w {
            let good = starts
                .iter()
                .filter(|s| covers(i, s[0]) && covers(j, s[1]))
                .all(|s| inside(i, s[0], h) && inside(j, s[1], w));
            if good {
                checked += 1;
                for k in 0..2 {
                    let at = (k * h + i) * w + j;
                    worst = worst.max((a[at] - b[at]).abs());
                }
            }
        }
    }
    assert!(checked > h * w / 8, "only {checked} pixels checked");
    println!("{checked} pixels checked: worst {worst:.3e}, scale {scale:.3e}");
    assert!(worst <= 1e-5 * scale, "differs by {worst} (scale {scale})");
    // Near a window's edge the zero padding shows: the test can fail.
    let all = values(&(whole - windowed).unwrap().abs().unwrap());
    assert!(all.iter().fold(0f64, |m, v| m.max(*v)) > 1e-3 * scale);
}

#[test]
fn any_number_of_spatial_axes() {
    // A pointwise predictor blends back to itself, in 1-D, 2-D and 3-D, with padding.
    for (shape, window) in [
        (vec![2, 3, 50], vec![16]),
        (vec![1, 2, 30, 7], vec![8, 16]),
        (vec![1, 2, 9, 20, 13], vec![4, 8, 16]),
    ] {
        let x = common::randn(&shape);
        for padding in [Padding::Constant(0.0), Padding::Replicate] {
            let sw = SlidingWindow::builder(window.clone())
                .overlap(0.4)
                .blend(Blend::Gaussian { sigma_scale: 0.2 })
                .padding(padding)
                .batch_size(5)
                .build()
                .unwrap();
            let y = sw.run(&x, |w| Ok(w.tanh()?)).unwrap();
            let d = max_abs(&y, &x.tanh().unwrap());
            assert!(d < 1e-6, "{shape:?} {padding:?}: {d}");
        }
        // Flips of every axis and their inverses give the input back.
        let tta = Tta::flips(shape.len() - 2).unwrap();
        assert_eq!(tta.transforms().len(), 1 << (shape.len() - 2));
        let y = tta.run(&x, |v| Ok(v.clone())).unwrap();
        assert!(max_abs(&y, &x) < 1e-6);
    }
    let x = common::randn(&[1, 1, 4, 6, 8]);
    let y = Tta::flips_and_rotations(3)
        .unwrap()
        .run(&x, |v| Ok(v.exp()?))
        .unwrap();
    assert!(max_abs(&y, &x.exp().unwrap()) < 1e-5);
}

#[test]
fn transforms_invert_and_rotate() {
    let x = Tensor::arange(0f32, 6., &Device::Cpu)
        .unwrap()
        .reshape((1, 1, 2, 3))
        .unwrap();
    // Transpose then flip the (new) rows: a 90° clockwise rotation.
    let t = Transform {
        transpose: true,
        flips: 0b10,
    };
    let r = t.apply(&x).unwrap();
    assert_eq!(
        r.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        [3., 0., 4., 1., 5., 2.]
    );
    assert_eq!(values(&t.invert(&r).unwrap()), values(&x));
}

#[test]
fn progress_counts_every_window_of_every_image() {
    let sw = SlidingWindow::builder([8, 8])
        .batch_size(3)
        .build()
        .unwrap();
    let x = Tensor::zeros((2, 1, 20, 8), DType::F32, &Device::Cpu).unwrap();
    let per_image = sw.starts(&[20, 8]).unwrap().len();
    let mut seen = Vec::new();
    sw.run_with_progress(&x, |w| Ok(w.clone()), |p| seen.push((p.done, p.total)))
        .unwrap();
    let total = 2 * per_image;
    assert_eq!(seen.last(), Some(&(total, total)));
    assert_eq!(seen.len(), total.div_ceil(3));
}

#[test]
fn bad_inputs_are_errors() {
    let sw = SlidingWindow::builder([8, 8]).build().unwrap();
    let x = Tensor::zeros((1, 1, 16, 16), DType::F32, &Device::Cpu).unwrap();
    let shape = |r: unetpp::Result<Tensor>| matches!(r, Err(Error::Shape(_)));
    // Wrong rank, an empty axis.
    assert!(shape(sw.run(&x.squeeze(0).unwrap(), |w| Ok(w.clone()))));
    let empty = Tensor::zeros((1, 1, 0, 16), DType::F32, &Device::Cpu).unwrap();
    assert!(shape(sw.run(&empty, |w| Ok(w.clone()))));
    // A predictor that changes the window's size, or its channels between calls.
    assert!(shape(sw.run(&x, |w| Ok(w.narrow(2, 0, 4)?))));
    let mut calls = 0;
    assert!(shape(sw.run(&x, |w| {
        calls += 1;
        Ok(Tensor::cat(&vec![w.clone(); calls], 1)?)
    })));
    // A predictor's own error comes back as it is.
    let r = sw.run(&x, |_| Err(Error::Input("refused".into())));
    assert!(matches!(r, Err(Error::Input(m)) if m == "refused"));
    // Test-time augmentation on the wrong rank; bad transform sets.
    let tta = Tta::flips(2).unwrap();
    assert!(shape(tta.run(&x.squeeze(0).unwrap(), |w| Ok(w.clone()))));
    assert!(Tta::flips(0).is_err());
    assert!(Tta::flips_and_rotations(1).is_err());
    assert!(Tta::from_transforms(2, vec![]).is_err());
    let bad = Transform {
        transpose: false,
        flips: 0b100,
    };
    assert!(Tta::from_transforms(2, vec![bad]).is_err());
    // Accurate mode has no logits.
    let net = bn_net(1);
    let out = net.infer(&x).unwrap();
    assert!(matches!(
        Mode::Accurate.logits(&out),
        Err(Error::Config { .. })
    ));
}
