//! Max pooling and nearest up-sampling (`ops::max_pool2d`, `ops::upsample_nearest2d`): the
//! gradients against the mathematics (central differences in f64, exact values), against
//! PyTorch (`scripts/make_pool_fixtures.py`), both code paths (CPU kernel and the composed
//! path other devices take), and a guard against candle's own two ops, whose backward passes
//! are wrong in candle 0.11.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::values;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use unetpp::ops::{max_pool2d, max_pool2d_generic, upsample_nearest2d, upsample_nearest2d_generic};

type Op = fn(&Tensor) -> unetpp::Result<Tensor>;
type DynOp<'a> = &'a dyn Fn(&Tensor) -> unetpp::Result<Tensor>;

/// Distinct values (no ties, so that central differences are exact for max-pooling).
fn distinct(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut v: Vec<f64> = (0..n)
        .map(|i| (i as f64 - n as f64 / 2.0) / n as f64)
        .collect();
    for i in (1..n).rev() {
        v.swap(i, rng.random_range(0..=i));
    }
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn seeded(shape: &[usize], seed: u64) -> Tensor {
    common::seeded_uniform(shape, &mut StdRng::seed_from_u64(seed), 1.0)
}

/// The gradient of `Σ r ⊙ op(x)` by backprop.
fn backprop(op: DynOp, x: &Tensor, r: &Tensor) -> Vec<f64> {
    let v = Var::from_tensor(x).unwrap();
    let y = (op(v.as_tensor()).unwrap() * r).unwrap().sum_all().unwrap();
    values(y.backward().unwrap().get(v.as_tensor()).unwrap())
}

fn central_differences(op: DynOp, x: &Tensor, r: &Tensor) -> Vec<f64> {
    let base = values(x);
    let f = |v: Vec<f64>| -> f64 {
        let t = Tensor::from_vec(v, x.shape(), &Device::Cpu).unwrap();
        (op(&t).unwrap() * r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let eps = 1e-6;
    (0..base.len())
        .map(|i| {
            let (mut p, mut m) = (base.clone(), base.clone());
            p[i] += eps;
            m[i] -= eps;
            (f(p) - f(m)) / (2.0 * eps)
        })
        .collect()
}

fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}: element {i}: {x} vs {y}"
        );
    }
}

const POOLS: [(usize, usize, usize, usize, usize); 6] = [
    // (h, w, kernel, stride, padding)
    (4, 6, 2, 2, 0),
    (5, 7, 2, 2, 0),
    (7, 8, 3, 2, 1),
    (6, 5, 3, 1, 1),
    (9, 9, 3, 3, 0),
    (6, 6, 1, 2, 0),
];

fn pool_op(
    k: usize,
    s: usize,
    p: usize,
    generic: bool,
) -> impl Fn(&Tensor) -> unetpp::Result<Tensor> {
    move |x| {
        if generic {
            max_pool2d_generic(x, k, s, p)
        } else {
            max_pool2d(x, k, s, p)
        }
    }
}

#[test]
fn max_pool_gradient_matches_central_differences() {
    for (n, &(h, w, k, s, p)) in POOLS.iter().enumerate() {
        let x = distinct(&[2, 3, h, w], n as u64);
        for generic in [false, true] {
            let op = pool_op(k, s, p, generic);
            let r = seeded(op(&x).unwrap().dims(), 100 + n as u64);
            assert_close(
                &backprop(&op, &x, &r),
                &central_differences(&op, &x, &r),
                1e-8,
                &format!("{h}x{w} k{k} s{s} p{p} generic={generic}"),
            );
        }
    }
}

#[test]
fn max_pool_routes_the_whole_gradient_to_the_first_maximum() {
    let dev = Device::Cpu;
    for generic in [false, true] {
        let op = pool_op(2, 2, 0, generic);
        // The input gradient of sum(op(t)) for a 1x1x2x2 map `t`.
        let grad = |t: [f32; 4]| -> Vec<f64> {
            let v = Var::from_tensor(&Tensor::from_vec(t.to_vec(), (1, 1, 2, 2), &dev).unwrap())
                .unwrap();
            let g = op(v.as_tensor())
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            values(g.get(v.as_tensor()).unwrap())
        };
        assert_eq!(grad([1., 2., 3., 4.]), [0., 0., 0., 1.]);
        // Ties: the first maximum in row-major order takes it all (PyTorch's rule).
        assert_eq!(
            grad([5., 1., 5., 5.]),
            [1., 0., 0., 0.],
            "generic={generic}"
        );
        assert_eq!(
            grad([0., 7., 7., 7.]),
            [0., 1., 0., 0.],
            "generic={generic}"
        );
    }
    // Overlapping windows add their gradients: a 3x3 stride-1 pool of a map whose maximum
    // is in the centre sends every one of the nine outputs' gradient there.
    let t = Var::new(&[[[[0f32, 0., 0.], [0., 9., 0.], [0., 0., 0.]]]], &dev).unwrap();
    for generic in [false, true] {
        let y = pool_op(3, 1, 1, generic)(t.as_tensor()).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        assert_eq!(
            values(g.get(t.as_tensor()).unwrap()),
            [0., 0., 0., 0., 9., 0., 0., 0., 0.]
        );
    }
}

#[test]
fn cpu_kernel_and_composed_path_agree_with_ties_and_every_float_type() {
    // Small integers: many ties inside windows.
    let mut rng = StdRng::seed_from_u64(3);
    let v: Vec<f32> = (0..2 * 3 * 9 * 10)
        .map(|_| rng.random_range(0..4) as f32)
        .collect();
    let x = Tensor::from_vec(v, (2, 3, 9, 10), &Device::Cpu).unwrap();
    for &(_, _, k, s, p) in &POOLS {
        for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16] {
            let x = x.to_dtype(dtype).unwrap();
            let a = Var::from_tensor(&x).unwrap();
            let b = Var::from_tensor(&x).unwrap();
            let ya = max_pool2d(a.as_tensor(), k, s, p).unwrap();
            let yb = max_pool2d_generic(b.as_tensor(), k, s, p).unwrap();
            assert_eq!(ya.dtype(), dtype);
            assert_eq!(values(&ya), values(&yb), "k{k} s{s} p{p} {dtype:?}");
            let r = seeded(ya.dims(), 5).to_dtype(dtype).unwrap();
            let ga = (ya * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (yb * &r).unwrap().sum_all().unwrap().backward().unwrap();
            assert_close(
                &values(ga.get(a.as_tensor()).unwrap()),
                &values(gb.get(b.as_tensor()).unwrap()),
                if dtype == DType::F64 { 1e-12 } else { 2e-2 },
                &format!("gradient k{k} s{s} p{p} {dtype:?}"),
            );
        }
    }
}

#[test]
fn nearest_upsampling_gradient_sums_each_block_and_accumulates() {
    for scale in [1, 2, 3] {
        let x = seeded(&[2, 3, 4, 5], scale as u64);
        let r = seeded(&[2, 3, 4 * scale, 5 * scale], 10 + scale as u64);
        let cpu: Op = match scale {
            1 => |t| upsample_nearest2d(t, 1),
            2 => |t| upsample_nearest2d(t, 2),
            _ => |t| upsample_nearest2d(t, 3),
        };
        let generic: Op = match scale {
            1 => |t| upsample_nearest2d_generic(t, 1),
            2 => |t| upsample_nearest2d_generic(t, 2),
            _ => |t| upsample_nearest2d_generic(t, 3),
        };
        let numeric = central_differences(&cpu, &x, &r);
        assert_close(
            &backprop(&cpu, &x, &r),
            &numeric,
            1e-8,
            &format!("cpu x{scale}"),
        );
        assert_close(
            &backprop(&generic, &x, &r),
            &numeric,
            1e-8,
            &format!("generic x{scale}"),
        );
        assert_eq!(values(&cpu(&x).unwrap()), values(&generic(&x).unwrap()));
    }
    // The case: y = up(x).sum() + 3·x.sum() gives every pixel 4 + 3.
    for op in [(|t| upsample_nearest2d(t, 2)) as Op, |t| {
        upsample_nearest2d_generic(t, 2)
    }] {
        let x = Var::from_tensor(&seeded(&[1, 2, 3, 3], 1)).unwrap();
        let y = (op(x.as_tensor()).unwrap().sum_all().unwrap()
            + (x.as_tensor().sum_all().unwrap() * 3.).unwrap())
        .unwrap();
        let g = values(y.backward().unwrap().get(x.as_tensor()).unwrap());
        assert!(g.iter().all(|&v| v == 7.0), "{g:?}");
    }
}

/// candle 0.11.1's two bugs, kept so that an upgrade that fixes them is noticed (then the
/// crate's ops can defer to candle's again). If this test fails after a candle upgrade,
/// check the new behaviour against PyTorch and update the ops' documentation.
#[test]
fn candle_max_pool_and_nearest_backward_are_still_wrong() {
    let dev = Device::Cpu;
    let x = Var::new(&[[[[1f32, 2.], [3., 4.]]]], &dev).unwrap();
    let g = x
        .as_tensor()
        .max_pool2d(2)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(
        values(g.get(x.as_tensor()).unwrap()),
        [0., 0., 0., 0.25],
        "candle's max_pool2d backward changed"
    );
    let x = Var::new(&[[[[1f32, 2.], [3., 4.]]]], &dev).unwrap();
    let y = (x
        .as_tensor()
        .upsample_nearest2d(4, 4)
        .unwrap()
        .sum_all()
        .unwrap()
        + (x.as_tensor().sum_all().unwrap() * 3.).unwrap())
    .unwrap();
    let g = values(y.backward().unwrap().get(x.as_tensor()).unwrap());
    assert_eq!(
        g, [4.0; 4],
        "candle's upsample_nearest2d backward changed (true gradient: 7)"
    );
}

/// The crate's code never calls candle's pooling or nearest up-sampling (see above), nor its
/// `relu` (whose gradient at 0 is 1, PyTorch's 0) unless a line says why (`candle-relu-ok`).
#[test]
fn src_does_not_use_candles_pooling_or_nearest_upsampling() {
    let banned = [
        ".relu()",
        ".max_pool2d(",
        ".max_pool2d_with_stride(",
        ".avg_pool2d(",
        ".avg_pool2d_with_stride(",
        ".upsample_nearest2d(",
        ".upsample_nearest1d(",
    ];
    let mut offenders = Vec::new();
    for path in common::src_files() {
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if banned.iter().any(|b| code.contains(b)) && !line.contains("candle-relu-ok") {
                offenders.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "use unetpp::ops::max_pool2d / upsample_nearest2d / relu (candle's backward passes are \
         wrong or differ from PyTorch's):\n{}",
        offenders.join("\n")
    );
}

#[test]
fn bad_arguments_are_errors() {
    let x = Tensor::zeros((1, 1, 4, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        max_pool2d(&x, 0, 2, 0),
        Err(unetpp::Error::Input(_))
    ));
    assert!(matches!(
        max_pool2d(&x, 2, 0, 0),
        Err(unetpp::Error::Input(_))
    ));
    assert!(matches!(
        max_pool2d(&x, 3, 2, 2),
        Err(unetpp::Error::Input(_))
    ));
    assert!(matches!(
        max_pool2d(&x, 5, 1, 0),
        Err(unetpp::Error::Shape(_))
    ));
    let flat = Tensor::zeros((4, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        max_pool2d(&flat, 2, 2, 0),
        Err(unetpp::Error::Shape(_))
    ));
    assert!(matches!(
        upsample_nearest2d(&flat, 2),
        Err(unetpp::Error::Shape(_))
    ));
    assert!(matches!(
        upsample_nearest2d(&x, 0),
        Err(unetpp::Error::Input(_))
    ));
    let ints = Tensor::zeros((1, 1, 4, 4), DType::U8, &Device::Cpu).unwrap();
    assert!(matches!(
        max_pool2d(&ints, 2, 2, 0),
        Err(unetpp::Error::Input(_))
    ));
    assert!(matches!(
        upsample_nearest2d(&ints, 2),
        Err(unetpp::Error::Input(_))
    ));
    // A NaN wins its window, as in PyTorch.
    let nan = Tensor::new(&[[[[1f32, f32::NAN], [3., 4.]]]], &Device::Cpu).unwrap();
    assert!(max_pool2d(&nan, 2, 2, 0)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()[0]
        .is_nan());
}

/// Forward values and input gradients against PyTorch's `F.max_pool2d` and
/// `F.interpolate(mode="nearest")` (fixture: scripts/make_pool_fixtures.py), in f64 exactly
/// and in f32 to rounding.
#[test]
fn pooling_and_upsampling_match_pytorch() {
    let t = common::fixture("pool.safetensors");
    let cases = common::get(&t, "pool.cases");
    let cases: Vec<Vec<u32>> = cases.to_dtype(DType::U32).unwrap().to_vec2().unwrap();
    for (i, c) in cases.iter().enumerate() {
        let (k, s, p) = (c[0] as usize, c[1] as usize, c[2] as usize);
        let x = common::get(&t, &format!("pool.{i}.input"));
        let r = common::get(&t, &format!("pool.{i}.grad_output"));
        for generic in [false, true] {
            for dtype in [DType::F64, DType::F32] {
                let xv = Var::from_tensor(&x.to_dtype(dtype).unwrap()).unwrap();
                let y = pool_op(k, s, p, generic)(xv.as_tensor()).unwrap();
                let g = (&y * r.to_dtype(dtype).unwrap())
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let tol = if dtype == DType::F64 { 1e-12 } else { 1e-6 };
                let what = format!("pool case {i} (k{k} s{s} p{p}) generic={generic} {dtype:?}");
                assert_close(
                    &values(&y),
                    &values(common::get(&t, &format!("pool.{i}.output"))),
                    tol,
                    &what,
                );
                assert_close(
                    &values(g.get(xv.as_tensor()).unwrap()),
                    &values(common::get(&t, &format!("pool.{i}.grad_input"))),
                    tol,
                    &what,
                );
            }
        }
    }
    for scale in [2usize, 3] {
        let x = common::get(&t, &format!("nearest.x{scale}.input"));
        let r = common::get(&t, &format!("nearest.x{scale}.grad_output"));
        for generic in [false, true] {
            let xv = Var::from_tensor(x).unwrap();
            // The map is also used directly (3·x), as a skip next to its up-sampled copy is.
            let up = if generic {
                upsample_nearest2d_generic(xv.as_tensor(), scale)
            } else {
                upsample_nearest2d(xv.as_tensor(), scale)
            }
            .unwrap();
            let loss = ((&up * r).unwrap().sum_all().unwrap()
                + (xv.as_tensor() * 3.).unwrap().sum_all().unwrap())
            .unwrap();
            let g = loss.backward().unwrap();
            let what = format!("nearest x{scale} generic={generic}");
            assert_close(
                &values(&up),
                &values(common::get(&t, &format!("nearest.x{scale}.output"))),
                1e-12,
                &what,
            );
            assert_close(
                &values(g.get(xv.as_tensor()).unwrap()),
                &values(common::get(&t, &format!("nearest.x{scale}.grad_input"))),
                1e-12,
                &what,
            );
        }
    }
}
