//! Whole-network gradient checks against the mathematics: the backprop gradient of every
//! weight of small UNet++ and U-Net networks, in f64, against central differences of the
//! loss, for every up-sampling mode, every norm, both concatenation orders and padded inputs.
//!
//! The loss is a fixed random weighting of every head's logits, `Σ_h Σ r_h ⊙ logits_h`, so
//! that every head and every output pixel contributes. Weights, biases and norm parameters
//! are all drawn from a seeded generator (none at the initialisers' zeros and ones), so that
//! no gradient vanishes by construction.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use common::{seeded_uniform, values};
use rand::rngs::StdRng;
use rand::SeedableRng;
use unetpp::prelude::*;

/// Largest allowed `max_i |numeric_i − backprop_i| / max_i |numeric_i|` per tensor (plus the
/// rounding floor below).
const TOLERANCE: f64 = 1e-5;

/// Central differences of an f64 loss carry a rounding error of about `1e-16 · S / ε`
/// (ε = 1e-6), `S` the sum of the loss's terms' magnitudes, `Σ |r_h ⊙ logits_h|`: 1e-10 · S,
/// and some more from the rounding inside the network (norm statistics). Gradients that are
/// exactly zero (a convolution bias in front of a batch or instance norm) are compared
/// against `1e-8 · S` (measured: up to 2e-10 · S).
const ROUNDING_FLOOR: f64 = 1e-8;

/// Checks every trainable variable of `varmap` (the weights of `net`) on input `(n, c, h, w)`.
fn check<M: MultiHeadSegmenter>(
    what: &str,
    varmap: &VarMap,
    net: &M,
    input: (usize, usize, usize, usize),
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let vars: Vec<(String, Var)> = {
        let data = varmap.data().lock().unwrap();
        let mut v: Vec<(String, Var)> = data
            .iter()
            .filter(|(k, _)| !k.ends_with("running_mean") && !k.ends_with("running_var"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    for (name, var) in &vars {
        let dims = var.dims().to_vec();
        let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
        let t = if name.ends_with("weight") && dims.len() == 1 {
            // Norm scales around 1.
            (seeded_uniform(&dims, &mut rng, 0.3) + 1.0).unwrap()
        } else if dims.len() == 1 {
            seeded_uniform(&dims, &mut rng, 0.2)
        } else {
            seeded_uniform(&dims, &mut rng, (3.0 / fan_in as f64).sqrt())
        };
        var.set(&t).unwrap();
    }
    let (n, c, h, w) = input;
    let x = seeded_uniform(&[n, c, h, w], &mut rng, 1.0);
    let out = net.forward_heads(&x, true).unwrap();
    let weights: Vec<Tensor> = out
        .logits()
        .iter()
        .map(|l| seeded_uniform(l.dims(), &mut rng, 1.0))
        .collect();
    let loss = |net: &M| -> Tensor {
        let out = net.forward_heads(&x, true).unwrap();
        let mut total = Tensor::zeros((), DType::F64, &Device::Cpu).unwrap();
        for (l, r) in out.logits().iter().zip(&weights) {
            total = (total + (l * r).unwrap().sum_all().unwrap()).unwrap();
        }
        total
    };
    let magnitude: f64 = {
        let out = net.forward_heads(&x, true).unwrap();
        out.logits()
            .iter()
            .zip(&weights)
            .map(|(l, r)| {
                (l * r)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            })
            .sum()
    };
    let floor = ROUNDING_FLOOR * magnitude.max(1.0);
    let grads = loss(net).backward().unwrap();
    let eps = 1e-6;
    let mut worst = (0.0f64, String::new());
    for (name, var) in &vars {
        let analytic = values(
            grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{what}: no gradient for {name}")),
        );
        let base = var.as_tensor().copy().unwrap();
        let flat = values(&base);
        let mut numeric = Vec::with_capacity(flat.len());
        for i in 0..flat.len() {
            let at = |d: f64| -> f64 {
                let mut v = flat.clone();
                v[i] += d;
                var.set(&Tensor::from_vec(v, base.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                loss(net).to_scalar::<f64>().unwrap()
            };
            let (plus, minus) = (at(eps), at(-eps));
            numeric.push((plus - minus) / (2.0 * eps));
        }
        var.set(&base).unwrap();
        let scale = numeric.iter().fold(0f64, |m, v| m.max(v.abs()));
        let abs_err = numeric
            .iter()
            .zip(&analytic)
            .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
        let err = abs_err / scale.max(1e-300);
        assert!(
            abs_err <= TOLERANCE * scale + floor,
            "{what}: gradient of {name} off by {err:.2e} (relative to its largest element \
             {scale:.3e})\n  backprop {:?}\n  numeric  {:?}",
            &analytic[..analytic.len().min(6)],
            &numeric[..numeric.len().min(6)]
        );
        if scale > 100.0 * floor && err > worst.0 {
            worst = (err, name.clone());
        }
    }
    eprintln!(
        "{what}: {} tensors, worst relative error {:.1e} ({}); rounding floor {floor:.1e}",
        vars.len(),
        worst.0,
        worst.1
    );
}

fn unetpp(cfg: &UNetPlusPlusConfig) -> (VarMap, UNetPlusPlus) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
    let net = UNetPlusPlus::new(cfg, vb).unwrap();
    (varmap, net)
}

fn tiny() -> unetpp::nested::UNetPlusPlusConfigBuilder {
    UNetPlusPlusConfig::paper().widths([2, 3, 4]).depth(2)
}

#[test]
fn unetpp_gradients_match_central_differences_for_every_upsampling_mode() {
    for (label, up) in [
        ("transposed", Upsample::Transposed),
        ("nearest", Upsample::Nearest),
        (
            "bilinear",
            Upsample::Bilinear {
                align_corners: false,
            },
        ),
        (
            "bilinear align_corners",
            Upsample::Bilinear {
                align_corners: true,
            },
        ),
    ] {
        let (vm, net) = unetpp(&tiny().upsample(up).build().unwrap());
        check(&format!("UNet++ {label}"), &vm, &net, (2, 1, 8, 8), 1);
    }
}

#[test]
fn unetpp_gradients_match_central_differences_for_every_norm() {
    for (label, norm) in [
        ("batch", Norm::Batch),
        ("instance", Norm::Instance),
        ("group", Norm::Group(2)),
    ] {
        let cfg = UNetPlusPlusConfig::paper()
            .widths([2, 4, 6])
            .depth(2)
            .norm(norm)
            .build()
            .unwrap();
        let (vm, net) = unetpp(&cfg);
        check(&format!("UNet++ {label} norm"), &vm, &net, (2, 1, 8, 8), 2);
    }
}

#[test]
fn unetpp_gradients_match_central_differences_in_other_layouts() {
    // Skips first (MONAI / NestedUNet), leaky ReLU, two classes, three levels.
    let cfg = UNetPlusPlusConfig::paper()
        .widths([2, 2, 3, 3])
        .depth(3)
        .concat_order(ConcatOrder::SkipsFirst)
        .activation(Activation::LeakyRelu(0.1))
        .num_classes(2)
        .in_channels(2)
        .build()
        .unwrap();
    let (vm, net) = unetpp(&cfg);
    check("UNet++ depth 3 skips first", &vm, &net, (1, 2, 8, 16), 3);
    // An odd-sized input through pad_to_multiple.
    let (vm, net) = unetpp(&tiny().pad_to_multiple(true).build().unwrap());
    check("UNet++ pad_to_multiple 7x6", &vm, &net, (2, 1, 7, 6), 4);
    // MONAI's layout: up-sampled maps replicate-padded to odd skip sizes.
    let cfg = tiny()
        .concat_order(ConcatOrder::SkipsFirst)
        .norm(Norm::Instance)
        .pad_upsampled(true)
        .build()
        .unwrap();
    let (vm, net) = unetpp(&cfg);
    check("UNet++ pad_upsampled 6x10", &vm, &net, (1, 1, 6, 10), 5);
}

#[test]
fn unet_gradients_match_central_differences() {
    let cfg = UNet::paper()
        .widths([2, 3, 4])
        .depth(2)
        .upsample(Upsample::Nearest)
        .build()
        .unwrap();
    let varmap = VarMap::new();
    let net = UNet::new(
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu),
    )
    .unwrap();
    check("U-Net", &varmap, &net, (2, 1, 8, 8), 6);
}

/// A small encoder of three strided 3×3 convolutions with ReLUs: taps at strides 2, 4 and 8,
/// so that the decoder reads taps in place of its encoder nodes and the heads are resized
/// back to the input (bilinear).
#[derive(Debug)]
struct StridedEncoder {
    convs: Vec<unetpp::nn::Conv2d>,
    tensors: Vec<unetpp::nn::NamedTensor>,
}

impl StridedEncoder {
    fn new(channels: &[usize], vb: VarBuilder) -> Self {
        let (convs, tensors) = unetpp::weights::record(vb, |vb| {
            channels
                .windows(2)
                .enumerate()
                .map(|(i, c)| {
                    let cfg = unetpp::nn::ConvConfig::same(3).stride(2);
                    unetpp::nn::Conv2d::new(c[0], c[1], cfg, vb.pp(format!("conv{i}")))
                })
                .collect::<unetpp::Result<Vec<_>>>()
        })
        .unwrap();
        Self { convs, tensors }
    }
}

impl unetpp::encoders::Encoder for StridedEncoder {
    fn channels(&self) -> Vec<usize> {
        self.convs.iter().map(|c| c.out_channels()).collect()
    }

    fn stride(&self) -> usize {
        2
    }

    fn features(&self, x: &Tensor, _train: bool) -> unetpp::Result<Vec<Tensor>> {
        let mut taps: Vec<Tensor> = Vec::new();
        for conv in &self.convs {
            let input = taps.last().unwrap_or(x);
            taps.push(conv.forward_fused(input, true)?);
        }
        Ok(taps)
    }

    fn detached(&self) -> unetpp::Result<std::sync::Arc<dyn unetpp::encoders::Encoder>> {
        Ok(std::sync::Arc::new(Self {
            convs: self.convs.iter().map(|c| c.detach()).collect(),
            tensors: self.tensors.clone(),
        }))
    }

    fn named_tensors(&self) -> Vec<unetpp::nn::NamedTensor> {
        self.tensors.clone()
    }
}

#[test]
fn unetpp_on_an_encoder_gradients_match_central_differences() {
    for up in [Upsample::Transposed, Upsample::Nearest] {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
        let encoder = StridedEncoder::new(&[2, 3, 4, 5], vb.pp("encoder"));
        let cfg = tiny().upsample(up).num_classes(2).build().unwrap();
        let net = UNetPlusPlus::with_encoder(&cfg, std::sync::Arc::new(encoder), vb).unwrap();
        check(
            &format!("UNet++ on an encoder, {up:?}"),
            &varmap,
            &net,
            (2, 2, 8, 8),
            9,
        );
    }
}
