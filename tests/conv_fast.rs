//! The fast 3×3 convolution agrees with candle's `conv2d`, forward and backward, on random
//! shapes (channels, sizes, batch, odd sizes).

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::max_rel_diff as rel_diff;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use unetpp::ops::{conv3x3, conv3x3_fused, CpuConvAlgo};

#[test]
fn matches_candle_forward_and_backward_on_random_shapes() {
    // Both fast algorithms; the switch is process-wide, but every algorithm is correct, so
    // the other tests of this binary may run under either. The choice in force before
    // (UNETPP_CPU_CONV's) is restored afterwards.
    let before = unetpp::ops::cpu_conv_algo();
    for algo in [CpuConvAlgo::Gemm, CpuConvAlgo::Winograd] {
        unetpp::ops::set_cpu_conv_algo(algo);
        random_shapes_against_candle(algo);
    }
    unetpp::ops::set_cpu_conv_algo(before);
}

fn random_shapes_against_candle(algo: CpuConvAlgo) {
    let mut rng = StdRng::seed_from_u64(7);
    let dev = Device::Cpu;
    for case in 0..40 {
        let n = rng.random_range(1..=3);
        // Every third case is large enough for Winograd (see `winograd::pays`).
        let wide = case % 3 == 0;
        let c = if wide {
            rng.random_range(48..=64)
        } else {
            rng.random_range(1..=20)
        };
        // Wide cases have enough outputs for the Winograd weight gradient too.
        let o = if wide {
            rng.random_range(16..=20)
        } else {
            rng.random_range(1..=24)
        };
        let (lo, hi) = if wide { (64, 71) } else { (1, 23) };
        let h = rng.random_range(lo..=hi);
        let w = rng.random_range(lo..=hi);
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (n, c, h, w), &dev).unwrap()).unwrap();
        let k = Var::from_tensor(&Tensor::randn(0f32, 1., (o, c, 3, 3), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 1., o, &dev).unwrap()).unwrap();
        let r = Tensor::randn(0f32, 1., (n, o, h, w), &dev).unwrap();

        let relu = case % 2 == 1;
        let fast = conv3x3_fused(x.as_tensor(), k.as_tensor(), Some(b.as_tensor()), relu).unwrap();
        let stock = x
            .as_tensor()
            .conv2d(k.as_tensor(), 1, 1, 1, 1)
            .unwrap()
            .broadcast_add(&b.as_tensor().reshape((1, o, 1, 1)).unwrap())
            .unwrap();
        // Where the pre-activation is within rounding of 0, the two paths may disagree on
        // which side of the ReLU it falls; no upstream gradient flows through those pixels,
        // so the comparison does not hinge on rounding.
        let scale = stock
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let clear = stock
            .abs()
            .unwrap()
            .gt(1e-4 * scale)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let r = if relu { (r * clear).unwrap() } else { r };
        let stock = if relu { stock.relu().unwrap() } else { stock };
        let what = format!("{algo:?} case {case}: n={n} c={c} o={o} h={h} w={w} relu={relu}");
        assert!(rel_diff(&fast, &stock) < 1e-4, "{what}: forward");

        let gf = (&fast * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gs = (&stock * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (name, v) in [("input", &x), ("kernel", &k), ("bias", &b)] {
            let d = rel_diff(
                gf.get(v.as_tensor()).unwrap(),
                gs.get(v.as_tensor()).unwrap(),
            );
            assert!(d < 1e-4, "{what}: gradient of {name} differs by {d}");
        }
    }
}

#[test]
fn non_contiguous_inputs_are_handled() {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (2, 3, 10, 8), &dev).unwrap();
    let xt = x.transpose(2, 3).unwrap(); // (2, 3, 8, 10), strided
    let k = Tensor::randn(0f32, 1., (5, 3, 3, 3), &dev).unwrap();
    let fast = conv3x3(&xt, &k, None).unwrap();
    let stock = xt.contiguous().unwrap().conv2d(&k, 1, 1, 1, 1).unwrap();
    assert!(rel_diff(&fast, &stock) < 1e-4);
    let narrow = x.narrow(1, 1, 2).unwrap();
    let k2 = k.narrow(1, 0, 2).unwrap();
    let fast = conv3x3(&narrow, &k2, None).unwrap();
    let stock = narrow
        .contiguous()
        .unwrap()
        .conv2d(&k2.contiguous().unwrap(), 1, 1, 1, 1)
        .unwrap();
    assert!(rel_diff(&fast, &stock) < 1e-4);
}

#[test]
fn rejects_kernels_that_do_not_fit() {
    let x = Tensor::zeros((1, 3, 4, 4), DType::F32, &Device::Cpu).unwrap();
    let k = Tensor::zeros((2, 4, 3, 3), DType::F32, &Device::Cpu).unwrap();
    assert!(conv3x3(&x, &k, None).is_err());
    let k = Tensor::zeros((2, 3, 5, 5), DType::F32, &Device::Cpu).unwrap();
    assert!(conv3x3(&x, &k, None).is_err());
}

/// Compares `fast(x, w, b)` against `stock(x, w, b)`, forward and all three gradients.
fn compare_op(
    what: &str,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    fast: impl Fn(&Tensor, &Tensor, &Tensor) -> Tensor,
    stock: impl Fn(&Tensor, &Tensor, &Tensor) -> Tensor,
) {
    let (x, w, b) = (
        Var::from_tensor(x).unwrap(),
        Var::from_tensor(w).unwrap(),
        Var::from_tensor(b).unwrap(),
    );
    let yf = fast(x.as_tensor(), w.as_tensor(), b.as_tensor());
    let ys = stock(x.as_tensor(), w.as_tensor(), b.as_tensor());
    assert!(rel_diff(&yf, &ys) < 1e-4, "{what}: forward");
    let r = Tensor::randn(0f32, 1., ys.dims(), &Device::Cpu).unwrap();
    let gf = (&yf * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let gs = (&ys * &r).unwrap().sum_all().unwrap().backward().unwrap();
    for (name, v) in [("input", &x), ("kernel", &w), ("bias", &b)] {
        let d = rel_diff(
            gf.get(v.as_tensor()).unwrap(),
            gs.get(v.as_tensor()).unwrap(),
        );
        assert!(d < 1e-4, "{what}: gradient of {name} differs by {d}");
    }
}

#[test]
fn conv1x1_and_transposed_2x2_match_candle() {
    let mut rng = StdRng::seed_from_u64(11);
    let dev = Device::Cpu;
    for case in 0..20 {
        let (n, c, o) = (
            rng.random_range(1..=3),
            rng.random_range(1..=40),
            rng.random_range(1..=20),
        );
        let (h, w) = (rng.random_range(1..=17), rng.random_range(1..=13));
        let what = format!("case {case}: n={n} c={c} o={o} h={h} w={w}");
        let x = Tensor::randn(0f32, 1., (n, c, h, w), &dev).unwrap();
        let b = Tensor::randn(0f32, 1., o, &dev).unwrap();
        let bias4 = |b: &Tensor| b.reshape((1, o, 1, 1)).unwrap();

        let k = Tensor::randn(0f32, 1., (o, c, 1, 1), &dev).unwrap();
        compare_op(
            &format!("1x1 {what}"),
            &x,
            &k,
            &b,
            |x, k, b| unetpp::ops::conv1x1(x, k, Some(b)).unwrap(),
            |x, k, b| {
                x.conv2d(k, 0, 1, 1, 1)
                    .unwrap()
                    .broadcast_add(&bias4(b))
                    .unwrap()
            },
        );
        let k = Tensor::randn(0f32, 1., (c, o, 2, 2), &dev).unwrap();
        compare_op(
            &format!("transposed 2x2 {what}"),
            &x,
            &k,
            &b,
            |x, k, b| unetpp::ops::conv_transpose2x2(x, k, Some(b)).unwrap(),
            |x, k, b| {
                x.conv_transpose2d(k, 0, 0, 2, 1)
                    .unwrap()
                    .broadcast_add(&bias4(b))
                    .unwrap()
            },
        );
    }
}

#[test]
fn concatenated_inputs_are_read_in_place_at_inference() {
    let dev = Device::Cpu;
    // Small maps take the GEMM path, 64x64 maps with 32+ channels the Winograd one.
    for (hw, chans) in [(9usize, [3usize, 5, 2]), (64, [16, 16, 8])] {
        let parts: Vec<Tensor> = chans
            .iter()
            .map(|&c| Tensor::randn(0f32, 1., (2, c, hw, hw), &dev).unwrap())
            .collect();
        let c: usize = chans.iter().sum();
        let k = Tensor::randn(0f32, 1., (12, c, 3, 3), &dev).unwrap();
        let b = Tensor::randn(0f32, 1., 12, &dev).unwrap();
        for relu in [false, true] {
            let direct = unetpp::ops::conv3x3_concat(&parts, &k, Some(&b), relu).unwrap();
            let cat = Tensor::cat(&parts, 1).unwrap();
            let reference = conv3x3_fused(&cat, &k, Some(&b), relu).unwrap();
            assert!(
                rel_diff(&direct, &reference) < 1e-5,
                "{hw}x{hw} relu={relu}"
            );
        }
    }
    // A variable among the parts takes the differentiable path, and gradients flow.
    let v = Var::from_tensor(&Tensor::randn(0f32, 1., (1, 2, 8, 8), &dev).unwrap()).unwrap();
    let other = Tensor::randn(0f32, 1., (1, 3, 8, 8), &dev).unwrap();
    let k = Tensor::randn(0f32, 1., (4, 5, 3, 3), &dev).unwrap();
    let y = unetpp::ops::conv3x3_concat(&[v.as_tensor().clone(), other.clone()], &k, None, false)
        .unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    assert_eq!(g.get(v.as_tensor()).unwrap().dims(), &[1, 2, 8, 8]);
    // Parts must agree outside the channel dimension.
    let bad = Tensor::zeros((1, 3, 8, 9), DType::F32, &dev).unwrap();
    let k = Tensor::zeros((4, 5, 3, 3), DType::F32, &dev).unwrap();
    let two = [Tensor::zeros((1, 2, 8, 8), DType::F32, &dev).unwrap(), bad];
    assert!(unetpp::ops::conv3x3_concat(&two, &k, None, false).is_err());
}

#[test]
fn empty_inputs_give_empty_outputs() {
    let dev = Device::Cpu;
    for shape in [(0usize, 2usize, 4usize, 4usize), (1, 2, 0, 5), (1, 2, 5, 0)] {
        let x = Tensor::zeros(shape, DType::F32, &dev).unwrap();
        let k = Tensor::zeros((3, 2, 3, 3), DType::F32, &dev).unwrap();
        let y = conv3x3(&x, &k, None).unwrap();
        assert_eq!(y.dims(), &[shape.0, 3, shape.2, shape.3]);
        let kt = Tensor::zeros((2, 3, 2, 2), DType::F32, &dev).unwrap();
        let y = unetpp::ops::conv_transpose2x2(&x, &kt, None).unwrap();
        assert_eq!(y.dims(), &[shape.0, 3, 2 * shape.2, 2 * shape.3]);
    }
}
