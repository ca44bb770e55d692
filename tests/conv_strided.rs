//! `ops::conv2d` (any kernel, stride and padding): outputs and all three gradients against
//! PyTorch (fixture from `scripts/make_conv_fixtures.py`) and candle on random shapes,
//! central differences, skipped input gradients, and errors.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{fixture, get, max_rel_diff};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use unetpp::ops::conv2d;

/// The cases of the fixture: name, stride, padding.
const CASES: [(&str, usize, usize); 5] = [
    ("stem", 2, 3),
    ("s2k3", 2, 1),
    ("s2k1", 2, 0),
    ("s3k5", 3, 2),
    ("k2x4", 1, 0),
];

/// Output and gradients of `sum(conv2d(x, w, b) * r)`.
fn run(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    r: &Tensor,
    stride: usize,
    pad: usize,
) -> (Tensor, Tensor, Tensor, Tensor) {
    let (x, w, b) = (
        Var::from_tensor(x).unwrap(),
        Var::from_tensor(w).unwrap(),
        Var::from_tensor(b).unwrap(),
    );
    let y = conv2d(
        x.as_tensor(),
        w.as_tensor(),
        Some(b.as_tensor()),
        stride,
        pad,
    )
    .unwrap();
    let g = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    let grad = |v: &Var| g.get(v.as_tensor()).unwrap().clone();
    (y, grad(&x), grad(&w), grad(&b))
}

#[test]
fn matches_pytorch_forward_and_gradients() {
    let f = fixture("conv_strided.safetensors");
    for (name, stride, pad) in CASES {
        let t = |k: &str| get(&f, &format!("{name}_{k}")).clone();
        let (y, dx, dw, db) = run(&t("x"), &t("w"), &t("b"), &t("r"), stride, pad);
        for (what, ours, theirs) in [
            ("y", &y, t("y")),
            ("dx", &dx, t("dx")),
            ("dw", &dw, t("dw")),
            ("db", &db, t("db")),
        ] {
            assert_eq!(ours.dims(), theirs.dims(), "{name} {what}");
            let d = max_rel_diff(ours, &theirs);
            assert!(d < 1e-5, "{name} {what}: {d}");
        }
    }
}

/// candle's convolution on an explicitly padded input, whose backward pass is right when
/// both axes leave no remainder (the padding makes sure they do).
fn reference(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Tensor {
    let (_, _, h, wd) = x.dims4().unwrap();
    let (_, _, kh, kw) = w.dims4().unwrap();
    let (oh, ow) = (
        (h + 2 * pad - kh) / stride + 1,
        (wd + 2 * pad - kw) / stride + 1,
    );
    let eh = (stride - (h + 2 * pad - kh) % stride) % stride;
    let ew = (stride - (wd + 2 * pad - kw) % stride) % stride;
    x.pad_with_zeros(2, pad, pad + eh)
        .unwrap()
        .pad_with_zeros(3, pad, pad + ew)
        .unwrap()
        .conv2d(w, 0, stride, 1, 1)
        .unwrap()
        .narrow(2, 0, oh)
        .unwrap()
        .narrow(3, 0, ow)
        .unwrap()
}

#[test]
fn matches_candle_on_random_shapes() {
    let mut rng = StdRng::seed_from_u64(3);
    let dev = Device::Cpu;
    let mut draw = |shape: &[usize]| -> Tensor {
        let v: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        Tensor::from_vec(v, shape, &dev).unwrap()
    };
    let mut rng2 = StdRng::seed_from_u64(4);
    for case in 0..30 {
        let k = [1usize, 2, 3, 5, 7][case % 5];
        let stride = rng2.random_range(1..=3);
        // Every fourth case is an image narrower than the kernel, which the padding makes fit.
        let narrow = case % 4 == 3;
        let pad = if narrow {
            k
        } else {
            rng2.random_range(0..=k / 2 + 1)
        };
        let (n, c, o) = (
            rng2.random_range(1..=2),
            rng2.random_range(1..=9),
            rng2.random_range(1..=9),
        );
        let (h, w) = if narrow {
            (rng2.random_range(1..=k), rng2.random_range(1..=k))
        } else {
            (
                rng2.random_range(k.max(2)..=k + 25),
                rng2.random_range(k.max(2)..=k + 25),
            )
        };
        let x = draw(&[n, c, h, w]);
        let wt = draw(&[o, c, k, k]);
        let b = draw(&[o]);
        let y_ref = reference(&x, &wt, stride, pad)
            .broadcast_add(&b.reshape((1, o, 1, 1)).unwrap())
            .unwrap();
        let r = draw(y_ref.dims());
        let (y, dx, dw, db) = run(&x, &wt, &b, &r, stride, pad);
        let (xv, wv) = (
            Var::from_tensor(&x).unwrap(),
            Var::from_tensor(&wt).unwrap(),
        );
        let g = (reference(xv.as_tensor(), wv.as_tensor(), stride, pad) * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let label =
            format!("case {case}: {n}x{c}x{h}x{w}, {o}x{k}x{k}, stride {stride}, pad {pad}");
        assert!(max_rel_diff(&y, &y_ref) < 1e-4, "{label}: y");
        assert!(
            max_rel_diff(&dx, g.get(xv.as_tensor()).unwrap()) < 1e-4,
            "{label}: dx"
        );
        assert!(
            max_rel_diff(&dw, g.get(wv.as_tensor()).unwrap()) < 1e-4,
            "{label}: dw"
        );
        let db_ref = r.sum((0, 2, 3)).unwrap();
        assert!(max_rel_diff(&db, &db_ref) < 1e-4, "{label}: db");
    }
}

#[test]
fn gradients_match_central_differences() {
    // The loss is linear in x and in w, so a large step has no truncation error.
    let f = fixture("conv_strided.safetensors");
    let t = |k: &str| get(&f, &format!("s2k3_{k}")).clone();
    let (x, w, b, r) = (t("x"), t("w"), t("b"), t("r"));
    let (_, dx, dw, _) = run(&x, &w, &b, &r, 2, 1);
    let loss = |x: &Tensor, w: &Tensor| -> f64 {
        let y = conv2d(x, w, Some(&b), 2, 1).unwrap();
        (y.to_dtype(DType::F64).unwrap() * r.to_dtype(DType::F64).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let check = |t: &Tensor, grad: &Tensor, which: usize| {
        let base = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let g = grad.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for i in [0, base.len() / 3, base.len() / 2 + 1, base.len() - 1] {
            let at = |d: f32| {
                let mut v = base.clone();
                v[i] += d;
                let p = Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap();
                if which == 0 {
                    loss(&p, &w)
                } else {
                    loss(&x, &p)
                }
            };
            let fd = (at(0.25) - at(-0.25)) / 0.5;
            assert!(
                (fd - g[i] as f64).abs() < 1e-3 * fd.abs().max(1.0),
                "element {i} of {}: fd {fd}, backward {}",
                ["x", "w"][which],
                g[i]
            );
        }
    };
    check(&x, &dx, 0);
    check(&w, &dw, 1);
}

#[test]
fn an_input_that_needs_no_gradient_gets_none() {
    let dev = Device::Cpu;
    let x = Tensor::ones((1, 2, 9, 9), DType::F32, &dev).unwrap();
    let w = Var::from_tensor(&Tensor::ones((3, 2, 3, 3), DType::F32, &dev).unwrap()).unwrap();
    let y = conv2d(&x, w.as_tensor(), None, 2, 1).unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    // candle's kernels (UNETPP_CPU_CONV=stock, or the device-generic path) compute the input
    // gradient regardless.
    if unetpp::ops::cpu_conv_algo() != unetpp::ops::CpuConvAlgo::Stock
        && !unetpp::ops::device_generic()
    {
        assert!(g.get(&x).is_none());
    }
    // Each output sums the 3x3 window that lies inside the image; every kernel tap sees
    // 2 channels x (outputs whose tap lands inside).
    let dw = g.get(w.as_tensor()).unwrap();
    assert_eq!(dw.dims(), &[3, 2, 3, 3]);
    let v = dw.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    // Output 5x5 at stride 2 over 9x9 padded by 1: the centre tap always lands inside (25),
    // a corner tap (−1, −1) misses the first row and column (16).
    assert_eq!(v[4], 25.0);
    assert_eq!(v[0], 16.0);
}

#[test]
fn bad_shapes_are_errors() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 2, 5, 5), DType::F32, &dev).unwrap();
    let w = |c: usize, k: usize| Tensor::zeros((3, c, k, k), DType::F32, &dev).unwrap();
    assert!(conv2d(&x, &w(3, 3), None, 2, 1).is_err());
    assert!(conv2d(&x, &w(2, 3), None, 0, 1).is_err());
    assert!(conv2d(&x, &w(2, 9), None, 1, 1).is_err());
    let b = Tensor::zeros(4, DType::F32, &dev).unwrap();
    assert!(conv2d(&x, &w(2, 3), Some(&b), 1, 1).is_err());
    let flat = Tensor::zeros((2, 5, 5), DType::F32, &dev).unwrap();
    assert!(conv2d(&flat, &w(2, 3), None, 1, 1).is_err());
    let empty = Tensor::zeros((1, 2, 4, 0), DType::F32, &dev).unwrap();
    assert!(conv2d(&empty, &w(2, 1), None, 1, 1).is_err());
    assert!(conv2d(&x, &w(2, 3), None, 1, usize::MAX / 2 + 1).is_err());
    // A kernel wider than the image, made to fit by the padding.
    let one = Tensor::ones((1, 1, 1, 1), DType::F32, &dev).unwrap();
    let k5 = Tensor::ones((1, 1, 5, 5), DType::F32, &dev).unwrap();
    let y = conv2d(&one, &k5, None, 1, 2).unwrap();
    assert_eq!(
        y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        vec![1.0]
    );
    // f64 takes candle's path and agrees with the f32 kernels.
    let x32 = Tensor::arange(0f32, 84., &dev)
        .unwrap()
        .reshape((1, 2, 7, 6))
        .unwrap();
    let w32 = Tensor::arange(0f32, 18., &dev)
        .unwrap()
        .reshape((1, 2, 3, 3))
        .unwrap();
    let to64 = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
    let y64 = conv2d(&to64(&x32), &to64(&w32), None, 2, 1).unwrap();
    let y32 = conv2d(&x32, &w32, None, 2, 1).unwrap();
    assert_eq!(y64.dims(), &[1, 1, 4, 3]);
    assert!(max_rel_diff(&y32, &y64) < 1e-6);
}

#[test]
fn add_relu_matches_pytorch_and_central_differences() {
    let f = fixture("conv_strided.safetensors");
    let t = |k: &str| get(&f, &format!("add_relu_{k}")).clone();
    let (a, b) = (
        Var::from_tensor(&t("a")).unwrap(),
        Var::from_tensor(&t("b")).unwrap(),
    );
    let y = unetpp::ops::add_relu(a.as_tensor(), b.as_tensor()).unwrap();
    let g = (&y * t("r"))
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    // Exact: one addition and one maximum, as PyTorch; no gradient where a + b is exactly 0.
    assert_eq!(max_rel_diff(&y, &t("y")), 0.0);
    assert_eq!(max_rel_diff(g.get(a.as_tensor()).unwrap(), &t("da")), 0.0);
    assert_eq!(max_rel_diff(g.get(b.as_tensor()).unwrap(), &t("db")), 0.0);
    // Central differences away from the kink (piecewise linear: exact there).
    let av = t("a").flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let bv = t("b").flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let rv = t("r").flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let da = g
        .get(a.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for i in (1..av.len()).step_by(7) {
        let s = av[i] + bv[i];
        if s.abs() < 0.1 {
            continue;
        }
        let fd = rv[i] * (((s + 0.05).max(0.0) - (s - 0.05).max(0.0)) / 0.1);
        assert!(
            (fd - da[i]).abs() < 1e-4,
            "element {i}: fd {fd}, backward {}",
            da[i]
        );
    }
    // Mismatched shapes are an error; other dtypes take candle's ops.
    assert!(unetpp::ops::add_relu(a.as_tensor(), &t("b").narrow(3, 0, 2).unwrap()).is_err());
    let y64 = unetpp::ops::add_relu(
        &t("a").to_dtype(DType::F64).unwrap(),
        &t("b").to_dtype(DType::F64).unwrap(),
    )
    .unwrap();
    assert!(max_rel_diff(&y64, &t("y")) < 1e-7);
}

/// `ops::relu` as PyTorch's `torch.relu`: gradient 0 at exactly 0 (candle's `relu` passes
/// it), NaN stays NaN, and untracked inputs give the same values.
#[test]
fn relu_has_pytorchs_gradient_at_zero_and_keeps_nan() {
    let x = Var::new(&[-2f32, -0.0, 0.0, 1e-30, 3.0, f32::NAN], &Device::Cpu).unwrap();
    let y = unetpp::ops::relu(x.as_tensor()).unwrap();
    let v = y.to_vec1::<f32>().unwrap();
    assert_eq!(&v[..5], &[0.0, 0.0, 0.0, 1e-30, 3.0]);
    assert!(v[5].is_nan());
    let g = y.sum_all().unwrap().backward().unwrap();
    let g = g.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(&g[..5], &[0.0, 0.0, 0.0, 1.0, 1.0]);
    let untracked = unetpp::ops::relu(&x.as_tensor().detach()).unwrap();
    assert_eq!(&untracked.to_vec1::<f32>().unwrap()[..5], &v[..5]);
}

/// `ops::leaky_relu` as PyTorch's `F.leaky_relu`: `x` above 0, `slope · x` elsewhere, gradient
/// 1 above 0 and `slope` at 0 and below; NaN stays NaN; the CPU kernel and the composed path
/// (what other devices run, here in f64) agree exactly; a non-finite slope is an error.
#[test]
fn leaky_relu_has_pytorchs_values_and_gradient() {
    let xs = [-2f32, -0.0, 0.0, 1e-30, 3.0, -1e-30, f32::NAN];
    let x = Var::new(&xs, &Device::Cpu).unwrap();
    let y = unetpp::ops::leaky_relu(x.as_tensor(), 0.1).unwrap();
    let v = y.to_vec1::<f32>().unwrap();
    let want: Vec<f32> = xs[..6]
        .iter()
        .map(|&a| if a > 0.0 { a } else { a * 0.1 })
        .collect();
    assert_eq!(&v[..6], &want[..]);
    assert!(v[6].is_nan());
    let g = y.sum_all().unwrap().backward().unwrap();
    let g = g.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(&g[..6], &[0.1, 0.1, 0.1, 1.0, 1.0, 0.1]);

    let x64 = Var::new(
        &xs[..6].iter().map(|&a| f64::from(a)).collect::<Vec<_>>()[..],
        &Device::Cpu,
    )
    .unwrap();
    let y64 = unetpp::ops::leaky_relu(x64.as_tensor(), 0.1).unwrap();
    let g64 = y64.sum_all().unwrap().backward().unwrap();
    let g64 = g64.get(x64.as_tensor()).unwrap().to_vec1::<f64>().unwrap();
    assert_eq!(g64, [0.1, 0.1, 0.1, 1.0, 1.0, 0.1]);
    assert!(unetpp::ops::leaky_relu(x.as_tensor(), f64::NAN).is_err());
}
