#![allow(dead_code)]

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use unetpp::prelude::*;

pub fn build(cfg: &UNetPlusPlusConfig) -> (VarMap, UNetPlusPlus) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let net = UNetPlusPlus::new(cfg, vb).unwrap();
    (varmap, net)
}

pub fn small() -> unetpp::nested::UNetPlusPlusConfigBuilder {
    UNetPlusPlusConfig::paper().widths([4, 6, 8, 10, 12])
}

/// Panics unless every element of `t` is finite (candle's `max` skips NaN after the first
/// element, so a partly-NaN tensor would otherwise compare as close).
pub fn assert_finite(t: &Tensor, what: &str) {
    let v = t
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        panic!("{what}: element {i} is {}", v[i]);
    }
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_finite(a, "compared tensor");
    assert_finite(b, "reference tensor");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

pub fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1., shape, &Device::Cpu).unwrap()
}

pub fn tmp_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("unetpp-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// `max |a − b| / max |b|`, computed in f64 (the scale floored at 1e-12).
pub fn max_rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_finite(a, "compared tensor");
    assert_finite(b, "reference tensor");
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    let scale = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
        .max(1e-12);
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
        / scale
}

fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0, |h, b| (h * 31 + b as u64) % 1_000_003)
}

/// The weight formula of `scripts/make_resnet_fixtures.py` (also used by the smp fixtures),
/// element by element: fixtures then hold no weights.
pub fn formula(name: &str, dims: &[usize]) -> Tensor {
    let n: usize = dims.iter().product();
    let h = name_hash(name);
    let leaf = name.rsplit('.').next().unwrap();
    let v: Vec<f32> = (0..n as u64)
        .map(|i| {
            let u = ((i * 7919 + h) % 1000) as f64 / 1000.0 - 0.5;
            let x = if dims.len() == 4 {
                let fan_in = (dims[1] * dims[2] * dims[3]) as f64;
                u * 2.0 * (3.0 / fan_in).sqrt()
            } else if dims.len() == 2 {
                // Linear layers: the same variance rule with fan-in = input features.
                u * 2.0 * (3.0 / dims[1] as f64).sqrt()
            } else {
                match leaf {
                    "weight" => 1.0 + 0.2 * u,
                    "bias" | "running_mean" => 0.2 * u,
                    "running_var" => 1.0 + u,
                    other => panic!("unexpected tensor {other}"),
                }
            };
            x as f32
        })
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// `scramble` of `scripts/make_roi_heads_fixtures.py`: `fill`'s rule with an `i²` term, for
/// weights of 2 or more dims (rows of a layer are then not shifted copies of each other).
pub fn scrambled(name: &str, dims: &[usize]) -> Tensor {
    let hash = name
        .bytes()
        .fold(0u64, |h, b| (h * 31 + b as u64) % 1_000_003);
    let n: usize = dims.iter().product();
    let fan_in: usize = dims[1..].iter().product();
    let scale = 2.0 * (3.0 / fan_in as f64).sqrt();
    let v: Vec<f32> = (0..n as u64)
        .map(|i| {
            let u = ((i * i * 37 + i * 7919 + hash) % 10007) as f64 / 10007.0 - 0.5;
            (u * scale) as f32
        })
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// The tensors of `tests/fixtures/{file}`.
pub fn fixture(file: &str) -> HashMap<String, Tensor> {
    let path = format!("{}/tests/fixtures/{file}", env!("CARGO_MANIFEST_DIR"));
    unetpp::weights::load_tensors(&path, &Device::Cpu).unwrap()
}

/// Tensor `k` of a fixture, or a panic naming it.
pub fn get<'a>(f: &'a HashMap<String, Tensor>, k: &str) -> &'a Tensor {
    f.get(k).unwrap_or_else(|| panic!("fixture lacks {k}"))
}

/// The elements of `t`, as f64.
pub fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Shapes equal and every element within `tol · max(1, |theirs|)`.
pub fn assert_close_rel(ours: &Tensor, theirs: &Tensor, tol: f64, what: &str) {
    assert_eq!(ours.dims(), theirs.dims(), "{what}: shapes");
    for (i, (a, b)) in values(ours).iter().zip(values(theirs)).enumerate() {
        assert!(
            (a - b).abs() <= tol * b.abs().max(1.0),
            "{what}: element {i}: ours {a}, torchvision {b}"
        );
    }
}

/// The weight of the detection fixtures: `scripts/make_resnet_fixtures.py`'s `fill` formula,
/// then `make_roi_heads_fixtures.py`'s `scramble` for tensors of two or more dimensions.
pub fn detection_weight(name: &str, dims: &[usize]) -> Tensor {
    if dims.len() >= 2 {
        scrambled(name, dims)
    } else {
        formula(name, dims)
    }
}

/// `hashed_uniform` of `scripts/make_gradient_fixtures.py`: element `i` is
/// splitmix64(fnv1a(name) + (i + 1)·golden), its top 24 bits mapped to [-0.5, 0.5) (exact in
/// f64 on both sides).
pub fn hashed_uniform(name: &str, n: usize) -> Vec<f64> {
    let seed = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (0..n as u64)
        .map(|i| {
            let mut z = seed.wrapping_add((i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 40) as f64 / 16_777_216.0 - 0.5
        })
        .collect()
}

/// `formula` of `scripts/make_gradient_fixtures.py`, in f32: kernels (2 or more dims)
/// uniform with variance 1 / fan-in, norm scales `1 + 0.4u`, biases and running means `0.2u`
/// (biases `±(1.5 + 2|u|)` when `shifted`), running variances `1 + u`.
pub fn hashed_weight(name: &str, dims: &[usize], shifted: bool) -> Tensor {
    let n: usize = dims.iter().product();
    let leaf = name.rsplit('.').next().unwrap();
    let v: Vec<f32> = hashed_uniform(name, n)
        .into_iter()
        .map(|u| {
            let x = if dims.len() >= 2 {
                let fan_in: usize = dims[1..].iter().product();
                u * 2.0 * (3.0 / fan_in as f64).sqrt()
            } else {
                match leaf {
                    "weight" => 1.0 + 0.4 * u,
                    "bias" if shifted => 2.0 * u + if u >= 0.0 { 1.5 } else { -1.5 },
                    "bias" | "running_mean" => 0.2 * u,
                    "running_var" => 1.0 + u,
                    other => panic!("no formula for {other}"),
                }
            };
            x as f32
        })
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// Parity with PyTorch in float32: our error may be `TORCH_ERR_MULTIPLE` times PyTorch's own
/// float32 error on the same output, or `FLOOR_ULPS` ulps (of our dtype) of the output's
/// scale, whichever is larger. PyTorch's error is measured by the fixture script against its float64
/// result (the same weights and inputs cast with `.double()`), the worst of several float32
/// runs that sum in different orders, and stored as the scalar `tol.{output}`; the two
/// constants and why they are 4 and 8 are in `scripts/make_resnet_fixtures.py`. Bounds tuned
/// on one CPU broke on another; these scale with the arithmetic's own sensitivity.
pub const TORCH_ERR_MULTIPLE: f64 = 4.0;
/// See [`TORCH_ERR_MULTIPLE`].
pub const FLOOR_ULPS: f64 = 8.0;

/// How an error is measured, as the fixture scripts' `max_error` measures PyTorch's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Metric {
    /// `max |ours − ref|`; the floor scales with `max |ref|`.
    Abs,
    /// `max |ours − ref| / max |ref|` (as [`max_rel_diff`]).
    Rel,
    /// `max (|ours − ref| / max(1, |ref|))` elementwise (as [`assert_close_rel`]).
    RelEach,
}

/// `tol.{name}` of a fixture: PyTorch's float32 error on output `name`.
pub fn torch_err(f: &HashMap<String, Tensor>, name: &str) -> f64 {
    values(get(f, &format!("tol.{name}")))[0]
}

/// The error `metric` allows given PyTorch's float32 error `torch_err` on a reference whose
/// largest magnitude is `scale`, for results of precision `eps` (machine epsilon).
pub fn torch_bound(torch_err: f64, metric: Metric, scale: f64, eps: f64) -> f64 {
    let scale = if metric == Metric::Abs { scale } else { 1.0 };
    (TORCH_ERR_MULTIPLE * torch_err).max(FLOOR_ULPS * eps * scale)
}

/// The error of `ours` against `reference` (any float dtypes, same shape), in f64.
pub fn error(ours: &Tensor, reference: &Tensor, metric: Metric) -> f64 {
    assert_eq!(ours.dims(), reference.dims(), "shapes");
    assert_finite(ours, "compared tensor");
    let (a, b) = (values(ours), values(reference));
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let worst = a.iter().zip(&b).fold(0.0f64, |m, (x, y)| {
        let d = (x - y).abs();
        m.max(match metric {
            Metric::RelEach => d / y.abs().max(1.0),
            _ => d,
        })
    });
    match metric {
        Metric::Rel => worst / scale.max(1e-12),
        _ => worst,
    }
}

/// Panics unless `ours` is within [`torch_bound`] of `reference`; returns our error (also
/// printed, with the bound, for `--nocapture`).
pub fn assert_within_torch(
    ours: &Tensor,
    reference: &Tensor,
    torch_err: f64,
    metric: Metric,
    what: &str,
) -> f64 {
    let err = error(ours, reference, metric);
    let scale = values(reference).iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let eps = match ours.dtype() {
        DType::F64 => f64::EPSILON,
        _ => f32::EPSILON as f64,
    };
    let bound = torch_bound(torch_err, metric, scale, eps);
    println!("{what}: {metric:?} error {err:.3e}, bound {bound:.3e} (PyTorch's f32 error {torch_err:.3e})");
    assert!(
        err <= bound,
        "{what}: {metric:?} error {err:.3e} against PyTorch exceeds {bound:.3e} \
         ({TORCH_ERR_MULTIPLE} x PyTorch's own float32 error {torch_err:.3e}, floor {FLOOR_ULPS} ulps)"
    );
    err
}

/// An f64 tensor of `shape` drawn uniformly from `(−scale, scale)` by `rng` (reproducible,
/// where candle's `randn` is not).
pub fn seeded_uniform(shape: &[usize], rng: &mut rand::rngs::StdRng, scale: f64) -> Tensor {
    use rand::Rng;
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| rng.random_range(-1.0..1.0) * scale)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

#[cfg(feature = "detection")]
/// `n` synthetic nuclei images of `size × size` with their boxes, labels and masks.
pub fn nuclei(n: usize, size: usize) -> (Vec<Tensor>, Vec<unetpp::maskrcnn::Target>) {
    let cfg = unetpp::data::instances::NucleiConfig::builder()
        .samples(n)
        .seed(21)
        .size(size, size)
        .objects(2, 5)
        .radius(4.0, 12.0)
        .build()
        .unwrap();
    let set = unetpp::data::instances::SyntheticNuclei::new(cfg).unwrap();
    let dev = Device::Cpu;
    (0..n)
        .map(|i| {
            let s = set.get(i).unwrap();
            let t = unetpp::maskrcnn::Target::new(
                s.boxes_tensor(&dev).unwrap(),
                s.labels_tensor(&dev).unwrap(),
            )
            .with_masks(s.masks_tensor(&dev).unwrap());
            (s.image_tensor(&dev).unwrap(), t)
        })
        .unzip()
}

/// Every `.rs` file under the crate's `src/`, for the tests that read the library's source.
pub fn src_files() -> Vec<std::path::PathBuf> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    files
}
