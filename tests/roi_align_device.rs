//! RoIAlign's composed path — what CUDA and Metal run, and the CPU under
//! `ops::set_device_generic(true)` — against the CPU kernel, whose PyTorch parity is proven in
//! `tests/detection_ops.rs`: forward and input gradient on random rois (inside, partly and
//! wholly outside the map, tiny, huge), aligned or not, sampling ratios 1, 2, 3 and adaptive,
//! several images, in f32, f64 and f16. Tolerances follow from the rounding of sums of
//! products (see [`sum_bound`]). Also: no f64 tensor for an f32 input, the box-list helper in
//! the boxes' dtype, and (ignored) a timing of the composed path.
#![cfg(feature = "detection")]

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use unetpp::ops::{rois_from_boxes, RoiAlign};

const IMAGES: usize = 3;
const CHANNELS: usize = 5;
const MAP: (usize, usize) = (9, 13);
const SCALE: f64 = 0.5;
const OUT: (usize, usize) = (3, 4);

/// One coordinate pair `(lo, hi)` in image units on an axis of `size` image pixels, of the
/// kind `kind`: 0 inside, 1 partly outside, 2 wholly outside (more than a map pixel away),
/// 3 tiny (under a third of an image pixel, zero included), 4 far larger than the image.
fn span(rng: &mut impl Rng, kind: u32, size: f32) -> (f32, f32) {
    match kind {
        0 => {
            let lo = rng.random::<f32>() * size * 0.8;
            (lo, lo + 1.0 + rng.random::<f32>() * (size - lo - 1.0))
        }
        1 => {
            if rng.random::<bool>() {
                let lo = -rng.random::<f32>() * size * 0.5;
                (lo, lo + size * 0.3 + rng.random::<f32>() * size * 0.5)
            } else {
                let lo = size * (0.6 + 0.4 * rng.random::<f32>());
                (lo, lo + size * (0.2 + 0.5 * rng.random::<f32>()))
            }
        }
        2 => {
            if rng.random::<bool>() {
                let lo = size + 4.0 + rng.random::<f32>() * size;
                (lo, lo + rng.random::<f32>() * size)
            } else {
                let hi = -4.0 - rng.random::<f32>() * size;
                (hi - rng.random::<f32>() * size, hi)
            }
        }
        3 => {
            let lo = rng.random::<f32>() * size;
            let len = if rng.random::<bool>() {
                0.0
            } else {
                rng.random::<f32>() / 3.0
            };
            (lo, lo + len)
        }
        _ => {
            let lo = -size * (1.0 + rng.random::<f32>());
            (lo, size * (2.0 + rng.random::<f32>()))
        }
    }
}

/// `(K, 5)` rois over `IMAGES` images of the map's size in image coordinates, every pair of
/// span kinds on the two axes at least once.
fn random_rois(seed: u64) -> Vec<[f32; 5]> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (ih, iw) = (MAP.0 as f32 / SCALE as f32, MAP.1 as f32 / SCALE as f32);
    let mut rois = Vec::new();
    for ky in 0..5 {
        for kx in 0..5 {
            let (y1, y2) = span(&mut rng, ky, ih);
            let (x1, x2) = span(&mut rng, kx, iw);
            let b = rng.random_range(0..IMAGES) as f32;
            rois.push([b, x1, y1, x2, y2]);
        }
    }
    rois
}

/// Sample points per bin along an axis of `len` image units over `bins` bins: the ratio, or
/// at least torchvision's adaptive `ceil(len / bins)` (one more, against f32-versus-f64
/// rounding of the ceiling).
fn grid(len: f32, bins: usize, cfg: &RoiAlign) -> (usize, f64) {
    let len = f64::from(len) * SCALE;
    let len = if cfg.aligned() { len } else { len.max(1.0) };
    let grid = if cfg.sampling_ratio() > 0 {
        cfg.sampling_ratio() as usize
    } else {
        (len / bins as f64).ceil() as usize + 1
    };
    (grid, len)
}

/// An upper bound on the taps (4 per sample point) one bin sums.
fn taps_per_bin(rois: &[[f32; 5]], cfg: &RoiAlign) -> usize {
    rois.iter()
        .map(|r| 4 * grid(r[4] - r[2], OUT.0, cfg).0 * grid(r[3] - r[1], OUT.1, cfg).0)
        .max()
        .unwrap_or(0)
}

/// An upper bound on the taps that land on any one input element, over all rois: a roi's
/// sample points on an axis are a regular grid of `n` points `s = len / n` apart, of which at
/// most `floor(2 / s) + 1` lie within one pixel of a given row (the rows a sample's two taps
/// reach), each giving at most two taps (both on the last row when clamped there); a pixel's
/// count is the product of its row's and its column's.
fn taps_per_element(rois: &[[f32; 5]], cfg: &RoiAlign) -> usize {
    let axis = |lo: f32, hi: f32, bins: usize| {
        let (g, len) = grid(hi - lo, bins, cfg);
        let n = bins * g;
        let near = if len > 0.0 {
            (2.0 * n as f64 / len).floor() as usize + 2
        } else {
            n
        };
        2 * near.min(n)
    };
    rois.iter()
        .map(|r| axis(r[2], r[4], OUT.0) * axis(r[1], r[3], OUT.1))
        .sum()
}

fn host(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// The bound on `|a − b|` for two evaluations of the same sums of `terms` non-negative-weight
/// products, in two orders, with unit roundoff at most `eps`: each is within
/// `γ_terms · Σ|w·v|` of the exact sum (plus one rounding of the final division or cast), so
/// they differ by at most `2 (terms + 1) eps Σ|w·v|`. `magnitude` holds `Σ|w·v|` per element
/// (the same pooling, or its gradient, of `|x|` or `|g|`); `cast_eps` is the unit roundoff of
/// a final rounding to a narrower dtype (0 when none), which may differ by a step between the
/// two: `cast_eps · Σ|w·v|` more.
fn sum_bound(magnitude: f64, terms: usize, eps: f64, cast_eps: f64) -> f64 {
    (2.0 * (terms as f64 + 1.0) * eps + cast_eps) * magnitude
}

/// Panics unless `|ours − want| <= bound(magnitude)` everywhere; returns the largest ratio.
fn check_within(
    ours: &Tensor,
    want: &Tensor,
    magnitude: &Tensor,
    bound: impl Fn(f64) -> f64,
    what: &str,
) -> f64 {
    assert_eq!(ours.dims(), want.dims(), "{what}: shapes");
    let (a, b, m) = (host(ours), host(want), host(magnitude));
    let mut worst = 0.0f64;
    for (i, ((a, b), m)) in a.iter().zip(&b).zip(&m).enumerate() {
        let (d, tol) = ((a - b).abs(), bound(*m));
        assert!(
            d <= tol,
            "{what}: element {i} is {a}, the CPU kernel gives {b} (off by {d:.3e}, bound {tol:.3e})"
        );
        if tol > 0.0 {
            worst = worst.max(d / tol);
        }
    }
    worst
}

/// Output and input gradient of `run` for upstream gradient `g`.
fn forward_backward(
    x: &Tensor,
    g: &Tensor,
    run: impl Fn(&Tensor) -> unetpp::Result<Tensor>,
) -> (Tensor, Tensor) {
    let var = Var::from_tensor(x).unwrap();
    let y = run(var.as_tensor()).unwrap();
    let loss = (y.to_dtype(DType::F32).unwrap() * g.to_dtype(DType::F32).unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    (y, grads.get(var.as_tensor()).unwrap().clone())
}

/// Composed against kernel for one setting and one input dtype; returns the worst ratio of
/// error to bound, forward and gradient.
fn compare(cfg: &RoiAlign, rois: &[[f32; 5]], dtype: DType, rois_dtype: DType, seed: u64) -> f64 {
    let dev = Device::Cpu;
    let flat: Vec<f32> = rois.iter().flatten().copied().collect();
    let roi_t = Tensor::from_vec(flat, (rois.len(), 5), &dev)
        .unwrap()
        .to_dtype(rois_dtype)
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let shape = (IMAGES, CHANNELS, MAP.0, MAP.1);
    let values: Vec<f32> = (0..IMAGES * CHANNELS * MAP.0 * MAP.1)
        .map(|_| rng.random::<f32>() * 4.0 - 2.0)
        .collect();
    let x = Tensor::from_vec(values, shape, &dev)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let out_shape = (rois.len(), CHANNELS, OUT.0, OUT.1);
    let gv: Vec<f32> = (0..out_shape.0 * CHANNELS * OUT.0 * OUT.1)
        .map(|_| rng.random::<f32>() * 2.0 - 1.0)
        .collect();
    let g = Tensor::from_vec(gv, out_shape, &dev)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();

    let (y_kernel, gx_kernel) = forward_backward(&x, &g, |x| cfg.forward(x, &roi_t));
    let (y_comp, gx_comp) = forward_backward(&x, &g, |x| cfg.forward_composed(x, &roi_t));
    assert_eq!(y_comp.dtype(), dtype);
    assert_eq!(gx_comp.dtype(), dtype);

    // Σ|w·v| per output element and Σ|g·w| per input element, from the kernel on |x|, |g|
    // (the weights are non-negative), in the precision both paths compute in.
    let wide = if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let x_abs = x.to_dtype(wide).unwrap().abs().unwrap();
    let g_abs = g.to_dtype(wide).unwrap().abs().unwrap();
    let (y_mag, gx_mag) = forward_backward(&x_abs, &g_abs, |x| cfg.forward(x, &roi_t));
    let (eps, cast_eps) = match dtype {
        DType::F64 => (f64::EPSILON, 0.0),
        DType::F32 => (f64::from(f32::EPSILON), 0.0),
        _ => (f64::from(f32::EPSILON), f64::from(half::f16::EPSILON)),
    };
    let what = format!(
        "ratio {} aligned {} {dtype:?} input, {rois_dtype:?} rois",
        cfg.sampling_ratio(),
        cfg.aligned()
    );
    let taps = taps_per_bin(rois, cfg);
    let fwd = check_within(
        &y_comp,
        &y_kernel,
        &y_mag,
        |m| sum_bound(m, taps, eps, cast_eps),
        &format!("{what}: forward"),
    );
    let terms = taps_per_element(rois, cfg);
    let bwd = check_within(
        &gx_comp,
        &gx_kernel,
        &gx_mag,
        |m| sum_bound(m, terms, eps, cast_eps),
        &format!("{what}: input gradient"),
    );
    println!("{what}: error / bound {fwd:.2e} forward, {bwd:.2e} gradient");
    fwd.max(bwd)
}

/// Every comparison with the kernel, and the switch, in one test: `set_device_generic` is
/// process-wide and the tests of a binary run in parallel threads; the kernel needs it off.
#[test]
fn composed_path_matches_cpu_kernel_forward_and_gradient() {
    let before = unetpp::ops::device_generic();
    unetpp::ops::set_device_generic(false);
    let mut seed = 0;
    for ratio in [1, 2, 3, 0, -1] {
        for aligned in [false, true] {
            let cfg = RoiAlign::new(OUT)
                .with_spatial_scale(SCALE)
                .with_sampling_ratio(ratio)
                .with_aligned(aligned);
            for (dtype, rois_dtype) in [
                (DType::F32, DType::F32),
                (DType::F64, DType::F64),
                (DType::F32, DType::F64),
                (DType::F64, DType::F32),
                (DType::F16, DType::F32),
                (DType::F16, DType::F16),
            ] {
                seed += 1;
                let rois = random_rois(seed);
                let rois: Vec<[f32; 5]> = if rois_dtype == DType::F16 {
                    // Values the f16 rois hold exactly, so that both paths see the same boxes.
                    rois.iter()
                        .map(|r| r.map(|v| half::f16::from_f32(v).to_f32()))
                        .collect()
                } else {
                    rois
                };
                compare(&cfg, &rois, dtype, rois_dtype, seed);
            }
        }
    }

    // Under the switch, `forward` is the composed path, bit for bit.
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (IMAGES, CHANNELS, MAP.0, MAP.1), &dev).unwrap();
    let flat: Vec<f32> = random_rois(99).iter().flatten().copied().collect();
    let rois = Tensor::from_vec(flat, (25, 5), &dev).unwrap();
    for ratio in [2, -1] {
        let cfg = RoiAlign::new(OUT)
            .with_spatial_scale(SCALE)
            .with_sampling_ratio(ratio);
        unetpp::ops::set_device_generic(true);
        let switched = cfg.forward(&x, &rois);
        unetpp::ops::set_device_generic(false);
        let composed = cfg.forward_composed(&x, &rois).unwrap();
        assert_eq!(host(&switched.unwrap()), host(&composed), "ratio {ratio}");
    }
    unetpp::ops::set_device_generic(before);
}

/// Metal has no f64: for an f32 input no tensor on the way from the input to the output
/// (nor any the gradient needs) may be f64.
#[test]
fn composed_path_makes_no_f64_tensor_for_f32_input() {
    let dev = Device::Cpu;
    let x =
        Var::from_tensor(&Tensor::randn(0f32, 1., (IMAGES, CHANNELS, MAP.0, MAP.1), &dev).unwrap())
            .unwrap();
    let flat: Vec<f32> = random_rois(5).iter().flatten().copied().collect();
    let rois = Tensor::from_vec(flat, (25, 5), &dev).unwrap();
    for ratio in [2, -1] {
        for dtype in [DType::F32, DType::F16] {
            let input = x.as_tensor().to_dtype(dtype).unwrap();
            let y = RoiAlign::new(OUT)
                .with_spatial_scale(SCALE)
                .with_sampling_ratio(ratio)
                .forward_composed(&input, &rois)
                .unwrap();
            let nodes = y.sorted_nodes();
            assert!(
                nodes.len() > 3,
                "ratio {ratio}: the graph reaches the input"
            );
            for node in nodes {
                assert_ne!(
                    node.dtype(),
                    DType::F64,
                    "ratio {ratio}, {dtype:?}: an f64 node of shape {:?}",
                    node.dims()
                );
            }
        }
    }
}

#[test]
fn rois_from_boxes_keeps_the_box_dtype() {
    let dev = Device::Cpu;
    for dtype in [DType::F32, DType::F16, DType::BF16, DType::F64] {
        let boxes = [
            Tensor::new(&[[1f32, 2., 3., 4.]], &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap(),
            Tensor::new(&[[5f32, 6., 7., 8.], [1., 1., 2., 2.]], &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap(),
        ];
        let rois = rois_from_boxes(&boxes).unwrap();
        assert_eq!(rois.dtype(), dtype);
        assert_eq!(
            host(&rois),
            [0., 1., 2., 3., 4., 1., 5., 6., 7., 8., 1., 1., 1., 2., 2.]
        );
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `K = 512` rois, `C = 256`, 7×7 bins, sampling ratio 2 on a `(2, 256, 200, 304)` map (a
/// stride-4 FPN level of two 800×1216 images): medians of 5 runs, forward and forward +
/// backward, of the composed path and (unless the switch is on) the CPU kernel.
/// `cargo test --release --test roi_align_device -- --ignored --nocapture`.
#[test]
#[ignore = "timing; run with --ignored --nocapture"]
fn time_composed_path() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    println!(
        "CPU: {cpu}, {} threads",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let dev = Device::Cpu;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let x = Tensor::randn(0f32, 1., (2, 256, 200, 304), &dev).unwrap();
    let rois: Vec<f32> = (0..512)
        .flat_map(|_| {
            let (bw, bh) = (
                rng.random::<f32>() * 300. + 8.,
                rng.random::<f32>() * 300. + 8.,
            );
            let x1 = rng.random::<f32>() * (1216. - bw);
            let y1 = rng.random::<f32>() * (800. - bh);
            let b = (rng.random::<f32>() * 2.).floor();
            [b, x1, y1, x1 + bw, y1 + bh]
        })
        .collect();
    let rois = Tensor::from_vec(rois, (512, 5), &dev).unwrap();
    let cfg = RoiAlign::new((7, 7))
        .with_spatial_scale(0.25)
        .with_sampling_ratio(2);
    let mut paths: Vec<(&str, bool)> = vec![("composed", true)];
    if !unetpp::ops::device_generic() {
        paths.push(("CPU kernel", false));
    }
    for (name, composed) in paths {
        let run = |x: &Tensor| {
            if composed {
                cfg.forward_composed(x, &rois)
            } else {
                cfg.forward(x, &rois)
            }
        };
        let (mut fwd, mut both) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            let t = Instant::now();
            let y = run(&x).unwrap();
            let _ = y.sum_all().unwrap().to_scalar::<f32>().unwrap();
            fwd.push(t.elapsed().as_secs_f64());
            let var = Var::from_tensor(&x).unwrap();
            let t = Instant::now();
            let y = run(var.as_tensor()).unwrap();
            let grads = y.sum_all().unwrap().backward().unwrap();
            let g = grads.get(var.as_tensor()).unwrap();
            let _ = g.sum_all().unwrap().to_scalar::<f32>().unwrap();
            both.push(t.elapsed().as_secs_f64());
        }
        println!(
            "{name}, K=512 C=256 7x7 sr=2 on (2,256,200,304): forward {:.1} ms, \
             forward+backward {:.1} ms (medians of 5)",
            median(fwd) * 1e3,
            median(both) * 1e3
        );
    }
}
