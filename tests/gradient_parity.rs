//! Whole-network gradients against PyTorch autograd: every trained parameter's gradient,
//! element by element, and the input's, for the paper's UNet++ (every up-sampling mode, norm,
//! concat order, padding), the plain U-Net, segmentation_models_pytorch's `UnetPlusPlus`
//! (resnet18), the NestedUNet layout and MONAI's `BasicUNetPlusPlus` (through the importers),
//! and the torchvision ResNet body (batch-norm trained and frozen).
//!
//! Fixtures: `tests/fixtures/grad_unetpp.safetensors` and `grad_peers.safetensors`, made by
//! `scripts/make_gradient_fixtures.py` (torch 2.15, torchvision 0.29.2, monai 1.6.1, smp 0.6.0),
//! whose documentation gives the layout, the weight formula (no weights are stored: both sides
//! compute them) and the reasons for the bounds. The loss is `Σ_h Σ r_h ⊙ y_h` over every
//! output `y_h` (each head's logits, each ResNet tap). PyTorch ran each case in f64 (the
//! reference) and in f32; per gradient tensor we require, in f32 and under each CPU
//! convolution kernel (stock, GEMM, Winograd),
//!
//! `max |ours − g64| ≤ 8 · torch_err + 1e-5 · max |g64|`, with `torch_err = max |g32 − g64|`
//! (for the gradients that vanish mathematically, convolution biases in front of a batch or
//! instance norm, whose values are rounding noise: `1e-5 · torch_err / 2⁻²⁴` in place of the
//! second term, 1e-5 of the size of the summed terms),
//!
//! and, for the cases kept in f64, the crate run in f64 within `1e-9 · (max |g64| +
//! torch_err / 2⁻²⁴)` (the second term is the size of the summed terms, for gradients that
//! vanish mathematically). smp's and ResNet's gradients of more than 4096 values are checked
//! on 32 of their elements and on 4 projections onto pseudo-random tensors (which see every
//! element). Every failure names the tensor, our error, PyTorch's and the bound;
//! `GRADIENT_PARITY_VERBOSE=1` prints every tensor's numbers.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use common::{fixture, hashed_uniform, hashed_weight, values};
use unetpp::encoders::{ResNet, ResNetConfig};
use unetpp::interop::monai::from_monai;
use unetpp::interop::nested_unet::from_nested_unet;
use unetpp::interop::smp::{SmpConfig, SmpUnetPlusPlus};
use unetpp::nested::UNetPlusPlusConfigBuilder;
use unetpp::ops::{cpu_conv_algo, set_cpu_conv_algo, CpuConvAlgo};
use unetpp::prelude::*;

/// Our f32 error may be this many times PyTorch's own f32 error.
const TORCH_MULTIPLE: f64 = 8.0;
/// Plus this fraction of the tensor's largest gradient.
const FLOOR: f64 = 1e-5;
/// The crate in f64 against PyTorch in f64: relative to the tensor's largest gradient, or to
/// the size of the terms it sums, as PyTorch's f32 error over f32's unit round-off tells it
/// (that is what is left of a gradient that vanishes mathematically).
const F64_TOL: f64 = 1e-9;
const F32_UNIT: f64 = 1.0 / (1u64 << 24) as f64;
/// Gradients below this fraction of a case's largest are mathematically zero (a convolution
/// bias in front of a batch or instance norm): only noise is compared there, so their f32
/// floor is `FLOOR` of the size of the terms they sum, and the summary reports them apart.
const VANISHING: f64 = 1e-9;

const ALGOS: [CpuConvAlgo; 3] = [CpuConvAlgo::Stock, CpuConvAlgo::Gemm, CpuConvAlgo::Winograd];

/// The convolution kernel is a process-wide setting: the tests of this file take turns.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The network a case runs, and how the crate builds it: from a `VarMap` (UNet++, U-Net,
/// smp, ResNet) or through an importer from the peer's names (NestedUNet, MONAI).
#[derive(Clone)]
enum Family {
    UNetPlusPlus(UNetPlusPlusConfig),
    UNet(UNetPlusPlusConfig),
    Smp(SmpConfig),
    NestedUNet,
    Monai,
    ResNet { frozen: bool },
}

/// One case of the fixtures: its key, its file, the network, whether biases use the
/// shifted formula and whether its `r_h` come from the formula too.
#[derive(Clone)]
struct Case {
    key: &'static str,
    file: &'static str,
    net: Family,
    shifted: bool,
    r_formula: bool,
}

fn unetpp_case(key: &'static str, cfg: UNetPlusPlusConfigBuilder) -> Case {
    Case {
        key,
        file: "grad_unetpp.safetensors",
        net: Family::UNetPlusPlus(cfg.build().unwrap()),
        shifted: false,
        r_formula: false,
    }
}

fn unet_case(key: &'static str, cfg: UNetPlusPlusConfigBuilder) -> Case {
    Case {
        net: Family::UNet(cfg.build().unwrap()),
        ..unetpp_case(key, UNetPlusPlusConfig::paper())
    }
}

fn peer_case(key: &'static str, net: Family, shifted: bool) -> Case {
    // The ResNet taps hold 95k values: their weighting comes from the formula.
    let r_formula = matches!(net, Family::ResNet { .. });
    Case {
        key,
        file: "grad_peers.safetensors",
        net,
        shifted,
        r_formula,
    }
}

/// The UNet++ cases of the script's `unetpp_cases`, configuration for configuration.
fn unetpp_cases() -> Vec<Case> {
    let p = UNetPlusPlusConfig::paper;
    vec![
        unetpp_case("paper_d4", p().widths([4, 6, 8, 10, 12]).depth(4)),
        unetpp_case(
            "batch_transposed",
            p().widths([4, 8, 12])
                .depth(2)
                .num_classes(2)
                .norm(Norm::Batch),
        ),
        unetpp_case(
            "instance_nearest",
            p().in_channels(2)
                .widths([4, 4, 6, 6])
                .depth(3)
                .norm(Norm::Instance)
                .upsample(Upsample::Nearest),
        ),
        unetpp_case(
            "group_bilinear_leaky",
            p().widths([4, 8, 12])
                .depth(2)
                .heads([2])
                .norm(Norm::Group(2))
                .activation(Activation::LeakyRelu(0.1))
                .upsample(Upsample::Bilinear {
                    align_corners: false,
                })
                .concat_order(ConcatOrder::SkipsFirst),
        ),
        unetpp_case(
            "batch_bilinear_ac",
            p().in_channels(3)
                .num_classes(2)
                .widths([4, 4, 6, 8])
                .depth(3)
                .norm(Norm::Batch)
                .upsample(Upsample::Bilinear {
                    align_corners: true,
                })
                .concat_order(ConcatOrder::SkipsFirst),
        ),
        unetpp_case(
            "pad_odd",
            p().widths([4, 6, 8]).depth(2).pad_to_multiple(true),
        ),
        unetpp_case(
            "winograd",
            p().widths([32, 2]).depth(1).upsample(Upsample::Nearest),
        ),
    ]
}

fn unet_cases() -> Vec<Case> {
    vec![
        unet_case("unet_d3", UNet::paper().widths([4, 6, 8, 10]).depth(3)),
        unet_case(
            "unet_batch_nearest",
            UNet::paper()
                .widths([4, 6, 8])
                .depth(2)
                .norm(Norm::Batch)
                .upsample(Upsample::Nearest)
                .concat_order(ConcatOrder::SkipsFirst),
        ),
    ]
}

fn smp_case() -> Case {
    let cfg = SmpConfig::resnet18()
        .decoder_channels([32, 16, 8, 8, 4])
        .build()
        .unwrap();
    peer_case("smp_resnet18", Family::Smp(cfg), true)
}

fn resnet_case(frozen: bool) -> Case {
    let key = if frozen {
        "resnet18_frozen"
    } else {
        "resnet18_train"
    };
    peer_case(key, Family::ResNet { frozen }, true)
}

/// The network of a case built on `dtype`, with the formula's weights: its outputs for `x`
/// and its tensors by name (the trained ones as variables).
struct Built {
    outputs: Vec<Tensor>,
    vars: HashMap<String, Var>,
}

/// The network `build` makes, on a `VarMap` that holds the formula's weights before the
/// network is built (a frozen batch-norm copies its running statistics when it is built, so
/// setting the variables afterwards would not reach them), and its variables by name.
fn with_formula<T>(
    dtype: DType,
    shifted: bool,
    build: impl Fn(VarBuilder) -> unetpp::Result<T>,
) -> (T, HashMap<String, Var>) {
    let dev = Device::Cpu;
    let probe = VarMap::new();
    build(VarBuilder::from_varmap(&probe, dtype, &dev)).unwrap();
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().unwrap();
        for (name, var) in probe.data().lock().unwrap().iter() {
            let w = hashed_weight(name, var.dims(), shifted)
                .to_dtype(dtype)
                .unwrap();
            data.insert(name.clone(), Var::from_tensor(&w).unwrap());
        }
    }
    let net = build(VarBuilder::from_varmap(&varmap, dtype, &dev)).unwrap();
    let vars = varmap.data().lock().unwrap().clone();
    (net, vars)
}

/// Builds the network of `case` with the formula's weights and runs it on `x` in training
/// mode (frozen batch-norm: evaluation mode).
fn run_network(case: &Case, fx: &HashMap<String, Tensor>, x: &Tensor, dtype: DType) -> Built {
    let dev = Device::Cpu;
    let shifted = case.shifted;
    match &case.net {
        Family::UNetPlusPlus(cfg) => {
            let (net, vars) = with_formula(dtype, shifted, |vb| UNetPlusPlus::new(cfg, vb));
            let outputs = net.forward_heads(x, true).unwrap().into_logits();
            Built { outputs, vars }
        }
        Family::UNet(cfg) => {
            let (net, vars) = with_formula(dtype, shifted, |vb| UNet::new(cfg, vb));
            let outputs = net.forward_heads(x, true).unwrap().into_logits();
            Built { outputs, vars }
        }
        Family::Smp(cfg) => {
            let (net, vars) = with_formula(dtype, shifted, |vb| SmpUnetPlusPlus::new(cfg, vb));
            let outputs = vec![net.forward_t(x, true).unwrap()];
            Built { outputs, vars }
        }
        Family::ResNet { frozen } => {
            let cfg = ResNetConfig::resnet18().frozen_bn(*frozen).build().unwrap();
            let (net, vars) = with_formula(dtype, shifted, |vb| ResNet::new(&cfg, vb));
            let outputs = net.features(x, !frozen).unwrap();
            Built { outputs, vars }
        }
        Family::NestedUNet | Family::Monai => {
            assert_eq!(dtype, DType::F32, "the importers build f32 networks");
            // The peer's names: its trained parameters are the fixture's gradients, its
            // batch-norm statistics are stored.
            let mut state = HashMap::new();
            let mut vars = HashMap::new();
            for (key, t) in case_tensors(fx, case.key) {
                if let Some(name) = key.strip_prefix("grad.") {
                    if name == "input" {
                        continue;
                    }
                    let w = hashed_weight(name, t.dims(), case.shifted);
                    let var = Var::from_tensor(&w).unwrap();
                    state.insert(name.to_string(), var.as_tensor().clone());
                    vars.insert(name.to_string(), var);
                } else if let Some(name) = key.strip_prefix("buffer.") {
                    state.insert(name.to_string(), t.clone());
                }
            }
            let (net, _) = if matches!(case.net, Family::Monai) {
                from_monai(state, &dev).unwrap()
            } else {
                from_nested_unet(state, &dev).unwrap()
            };
            let outputs = net.forward_heads(x, true).unwrap().into_logits();
            Built { outputs, vars }
        }
    }
}

/// The tensors of one case, without its prefix, in name order.
fn case_tensors<'a>(fx: &'a HashMap<String, Tensor>, key: &str) -> BTreeMap<String, &'a Tensor> {
    let prefix = format!("{key}/");
    fx.iter()
        .filter_map(|(k, t)| k.strip_prefix(&prefix).map(|rest| (rest.to_string(), t)))
        .collect()
}

/// How one gradient tensor compares.
#[derive(Debug)]
struct Measured {
    name: String,
    ours: f64,
    torch: f64,
    gmax: f64,
    bound: f64,
    at: String,
}

impl Measured {
    fn ratio(&self) -> f64 {
        if self.torch > 0.0 {
            self.ours / self.torch
        } else if self.ours == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    }
}

/// A case's result under one kernel and precision.
struct Report {
    label: String,
    dtype: DType,
    measured: Vec<Measured>,
    problems: Vec<String>,
}

impl Report {
    fn failures(&self) -> Vec<String> {
        let mut out: Vec<String> = self.problems.clone();
        for m in &self.measured {
            if m.ours.is_nan() || m.ours > m.bound {
                out.push(format!(
                    "{}: ours {:.3e} vs torch f32 {:.3e} (ratio {:.1}), bound {:.3e}, max|g| {:.3e}, worst at {}",
                    m.name,
                    m.ours,
                    m.torch,
                    m.ratio(),
                    m.bound,
                    m.gmax,
                    m.at
                ));
            }
        }
        out
    }

    /// The largest ratio of our error to PyTorch's over the gradients that do not vanish
    /// mathematically (and where PyTorch's f32 error is not 0), with its tensor; the same over
    /// the vanishing ones; the largest fraction of its bound a tensor's error takes.
    fn summary(&self) -> String {
        let top = self.measured.iter().map(|m| m.gmax).fold(0.0, f64::max);
        let worst = |vanishing: bool| {
            self.measured
                .iter()
                .filter(|m| (m.gmax <= VANISHING * top) == vanishing && m.torch > 0.0)
                .max_by(|a, b| a.ratio().total_cmp(&b.ratio()))
                .map(|m| format!("{:.2} ({})", m.ratio(), m.name))
                .unwrap_or_else(|| "-".into())
        };
        let used = self
            .measured
            .iter()
            .max_by(|a, b| (a.ours / a.bound).total_cmp(&(b.ours / b.bound)))
            .map(|m| format!("{:.3} ({})", m.ours / m.bound, m.name))
            .unwrap_or_else(|| "-".into());
        let relative = self
            .measured
            .iter()
            .filter(|m| m.gmax > VANISHING * top)
            .map(|m| m.ours / m.gmax)
            .fold(0.0, f64::max);
        let head = format!(
            "{:32} {:3} checks, {} failing; ",
            self.label,
            self.measured.len(),
            self.failures().len()
        );
        if self.dtype == DType::F64 {
            // PyTorch's f32 error says nothing about an f64 run: relative errors only.
            format!("{head}largest error / max|g| {relative:.1e}; bound used {used}")
        } else {
            format!(
                "{head}worst ours/torch {}; vanishing {}; bound used {used}; \
                 largest error / max|g| {relative:.1e}",
                worst(false),
                worst(true)
            )
        }
    }

    fn print(&self) {
        println!("{}", self.summary());
        if std::env::var_os("GRADIENT_PARITY_VERBOSE").is_some() {
            for m in &self.measured {
                println!(
                    "    {:48} ours {:.3e} torch {:.3e} ratio {:7.2} max|g| {:.3e} bound {:.3e} ({:.3})",
                    m.name,
                    m.ours,
                    m.torch,
                    m.ratio(),
                    m.gmax,
                    m.bound,
                    m.ours / m.bound
                );
            }
        }
    }
}

/// Runs `case` on `dtype` and compares every gradient with the fixture's.
fn check_case(case: &Case, dtype: DType, label: &str) -> Report {
    let fx = fixture(case.file);
    let tensors = case_tensors(&fx, case.key);
    assert!(
        !tensors.is_empty(),
        "{} has no case {} (rerun scripts/make_gradient_fixtures.py)",
        case.file,
        case.key
    );
    let x = Var::from_tensor(&tensors["input"].to_dtype(dtype).unwrap()).unwrap();
    let built = run_network(case, &fx, x.as_tensor(), dtype);
    let mut report = Report {
        label: label.to_string(),
        dtype,
        measured: Vec::new(),
        problems: Vec::new(),
    };

    let mut loss = Tensor::zeros((), dtype, &Device::Cpu).unwrap();
    for (h, y) in built.outputs.iter().enumerate() {
        let r = if case.r_formula {
            let v = hashed_uniform(&format!("r.{h}"), y.elem_count());
            Tensor::from_vec(v, y.dims(), &Device::Cpu).unwrap()
        } else {
            let r = tensors
                .get(&format!("r.{h}"))
                .unwrap_or_else(|| panic!("{}: no r.{h}: an output too many", case.key));
            assert_eq!(r.dims(), y.dims(), "{}: output {h}'s shape", case.key);
            (*r).clone()
        };
        let term = (y * r.to_dtype(dtype).unwrap()).unwrap().sum_all().unwrap();
        loss = (loss + term).unwrap();
    }
    if !case.r_formula && tensors.contains_key(&format!("r.{}", built.outputs.len())) {
        report.problems.push(format!(
            "PyTorch has more than {} outputs",
            built.outputs.len()
        ));
    }
    let grads = loss.backward().unwrap();

    let names: Vec<&str> = tensors
        .keys()
        .filter_map(|k| k.strip_prefix("grad."))
        .collect();
    let stats = values(tensors["stats"]);
    assert_eq!(stats.len(), 2 * names.len(), "{}: stats rows", case.key);
    let top = stats
        .iter()
        .skip(1)
        .step_by(2)
        .fold(0.0, |a: f64, &b| a.max(b));

    // The weights are the script's (a mismatch would make every gradient differ).
    let (mut sum, mut abs) = (0.0, 0.0);
    for name in names.iter().filter(|n| **n != "input") {
        match built.vars.get(*name) {
            Some(var) => {
                for v in values(var.as_tensor()) {
                    sum += v;
                    abs += v.abs();
                }
            }
            None => report.problems.push(format!(
                "{name}: PyTorch trains it, the crate has no such tensor"
            )),
        }
    }
    let checksum = values(tensors["checksum"]);
    if (sum - checksum[0]).abs() > 1e-9 * checksum[1] || (abs - checksum[1]).abs() > 1e-9 * abs {
        report.problems.push(format!(
            "weights differ from the script's formula: sums {sum} / {abs}, fixture {} / {}",
            checksum[0], checksum[1]
        ));
    }
    // Nothing PyTorch leaves alone (frozen batch-norm, running statistics) gets a gradient.
    for (name, var) in &built.vars {
        if !names.contains(&name.as_str()) && grads.get(var.as_tensor()).is_some() {
            report.problems.push(format!(
                "{name}: has a gradient here, PyTorch does not train it"
            ));
        }
    }

    for (row, name) in names.iter().enumerate() {
        let (torch_err, gmax) = (stats[2 * row], stats[2 * row + 1]);
        let ours = if *name == "input" {
            grads.get(x.as_tensor())
        } else {
            built.vars.get(*name).and_then(|v| grads.get(v.as_tensor()))
        };
        let Some(ours) = ours else {
            report
                .problems
                .push(format!("{name}: no gradient (PyTorch has one)"));
            continue;
        };
        let ours = values(ours);
        if ours.iter().any(|v| !v.is_finite()) {
            report.problems.push(format!("{name}: non-finite gradient"));
            continue;
        }
        let want = values(tensors[&format!("grad.{name}")]);
        // A gradient that vanishes mathematically is rounding noise: its floor is relative
        // to the size of the terms it sums (PyTorch's f32 error over f32's unit round-off),
        // not to its own size, which is noise too.
        let vanishing = gmax <= VANISHING * top;
        let bound = |torch: f64, scale: f64| {
            if dtype == DType::F64 {
                F64_TOL * (scale + torch / F32_UNIT)
            } else if vanishing {
                TORCH_MULTIPLE * torch + FLOOR * torch / F32_UNIT
            } else {
                TORCH_MULTIPLE * torch + FLOOR * scale
            }
        };
        let (err, at) = match tensors.get(&format!("idx.{name}")) {
            None => {
                if ours.len() != want.len() {
                    report.problems.push(format!(
                        "{name}: {} values, PyTorch's has {}",
                        ours.len(),
                        want.len()
                    ));
                    continue;
                }
                worst_element(&ours, &want, |i| i)
            }
            Some(idx) => {
                let idx: Vec<usize> = idx
                    .to_vec1::<u32>()
                    .unwrap()
                    .into_iter()
                    .map(|i| i as usize)
                    .collect();
                if idx.iter().any(|&i| i >= ours.len()) {
                    report.problems.push(format!(
                        "{name}: sampled index past our {} values",
                        ours.len()
                    ));
                    continue;
                }
                let picked: Vec<f64> = idx.iter().map(|&i| ours[i]).collect();
                // Projections onto the formula's pseudo-random tensors see every element.
                let proj = values(tensors[&format!("proj.{name}")]);
                for (k, row) in proj.chunks_exact(3).enumerate() {
                    let p = hashed_uniform(&format!("proj{k}.{name}"), ours.len());
                    let dot: f64 = ours.iter().zip(&p).map(|(a, b)| a * b).sum();
                    let m = Measured {
                        name: format!("{name} (projection {k})"),
                        ours: (dot - row[0]).abs(),
                        torch: row[1],
                        gmax: row[2],
                        bound: bound(row[1], row[2]),
                        at: "-".into(),
                    };
                    report.measured.push(m);
                }
                worst_element(&picked, &want, |i| idx[i])
            }
        };
        report.measured.push(Measured {
            name: name.to_string(),
            ours: err,
            torch: torch_err,
            gmax,
            bound: bound(torch_err, gmax),
            at,
        });
    }
    report
}

/// The largest `|ours − want|` and where (`index` maps a position to the element's index).
fn worst_element(ours: &[f64], want: &[f64], index: impl Fn(usize) -> usize) -> (f64, String) {
    let mut worst = (0.0, 0);
    for (i, (a, b)) in ours.iter().zip(want).enumerate() {
        let d = (a - b).abs();
        if d > worst.0 {
            worst = (d, i);
        }
    }
    let i = worst.1;
    let at = match (ours.get(i), want.get(i)) {
        (Some(a), Some(b)) => format!("element {}: ours {a:.6e}, PyTorch {b:.6e}", index(i)),
        _ => "-".into(),
    };
    (worst.0, at)
}

/// Checks every case in f32 under each convolution kernel; prints a line per case and kernel
/// and panics listing every gradient out of bounds.
fn check_f32(cases: &[Case]) {
    let _guard = serial();
    let before = cpu_conv_algo();
    let mut failures = Vec::new();
    for algo in ALGOS {
        set_cpu_conv_algo(algo);
        for case in cases {
            let report = check_case(case, DType::F32, &format!("{} f32 {algo:?}", case.key));
            report.print();
            for f in report.failures() {
                failures.push(format!("{} f32 {algo:?}: {f}", case.key));
            }
        }
    }
    set_cpu_conv_algo(before);
    assert!(
        failures.is_empty(),
        "{} gradients differ from PyTorch's:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn paper_unetpp_gradients_match_pytorch_autograd() {
    check_f32(&unetpp_cases());
}

#[test]
fn unet_gradients_match_pytorch_autograd() {
    check_f32(&unet_cases());
}

#[test]
fn smp_unetplusplus_gradients_match_segmentation_models_pytorch() {
    check_f32(&[smp_case()]);
}

#[test]
fn nested_unet_and_monai_gradients_match_through_the_importers() {
    let nested = peer_case("nested_ds", Family::NestedUNet, false);
    let monai = peer_case("monai_odd", Family::Monai, false);
    check_f32(&[nested, monai]);
}

#[test]
fn resnet_encoder_gradients_match_torchvision_trained_and_frozen() {
    check_f32(&[resnet_case(false), resnet_case(true)]);
}

/// The mathematical check: the crate in f64 (candle's kernels, with the crate's pooling,
/// up-sampling, batch-norm and bilinear ops) against PyTorch in f64, for the cases whose
/// fixture keeps f64 gradients.
#[test]
fn f64_gradients_match_pytorch_float64() {
    let _guard = serial();
    let f64_cases: Vec<Case> = unetpp_cases()
        .into_iter()
        .chain(unet_cases())
        .chain([resnet_case(false)])
        .filter(|c| {
            let fx = fixture(c.file);
            fx.get(&format!("{}/grad.input", c.key))
                .is_some_and(|t| t.dtype() == DType::F64)
        })
        .collect();
    assert!(f64_cases.len() >= 5, "f64 cases: {}", f64_cases.len());
    let mut failures = Vec::new();
    for case in &f64_cases {
        let report = check_case(case, DType::F64, &format!("{} f64", case.key));
        report.print();
        for f in report.failures() {
            failures.push(format!("{} f64: {f}", case.key));
        }
    }
    assert!(
        failures.is_empty(),
        "{} f64 gradients differ from PyTorch's:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
