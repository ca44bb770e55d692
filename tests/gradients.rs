//! Gradients: a finite-difference check of the bilinear op, gradients reaching every weight
//! for each up-sampling mode, and training on every size the network accepts. These only
//! show that a gradient exists and is finite; its values are checked against central
//! differences in `network_gradients.rs` and against PyTorch in `gradient_parity.rs`.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use common::{randn, small};
use unetpp::ops::{resize_bilinear, resize_bilinear_composed};
use unetpp::prelude::*;

fn finite_difference_check(in_hw: (usize, usize), out_hw: (usize, usize), align_corners: bool) {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f64, 1., (2, 3, in_hw.0, in_hw.1), &dev).unwrap())
        .unwrap();
    let r = Tensor::randn(0f64, 1., (2, 3, out_hw.0, out_hw.1), &dev).unwrap();
    let loss = |t: &Tensor| -> f64 {
        (resize_bilinear(t, out_hw.0, out_hw.1, align_corners).unwrap() * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let y = (resize_bilinear(x.as_tensor(), out_hw.0, out_hw.1, align_corners).unwrap() * &r)
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = y.backward().unwrap();
    let analytic = grads
        .get(x.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let base = x
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let eps = 1e-6;
    for i in 0..base.len() {
        let mut plus = base.clone();
        plus[i] += eps;
        let mut minus = base.clone();
        minus[i] -= eps;
        let shape = x.as_tensor().shape().clone();
        let fp = loss(&Tensor::from_vec(plus, shape.clone(), &dev).unwrap());
        let fm = loss(&Tensor::from_vec(minus, shape, &dev).unwrap());
        let numeric = (fp - fm) / (2.0 * eps);
        assert!(
            (numeric - analytic[i]).abs() < 1e-6 * (1.0 + numeric.abs()),
            "{in_hw:?}->{out_hw:?} ac={align_corners} element {i}: numeric {numeric}, analytic {}",
            analytic[i]
        );
    }
}

#[test]
fn bilinear_gradient_matches_finite_differences() {
    for ac in [false, true] {
        finite_difference_check((3, 4), (6, 8), ac);
        finite_difference_check((3, 4), (7, 5), ac);
        finite_difference_check((6, 5), (4, 3), ac);
        finite_difference_check((1, 2), (3, 1), ac);
    }
}

#[test]
fn bilinear_composed_version_has_the_same_gradient() {
    let x = Var::from_tensor(&randn(&[1, 2, 5, 3])).unwrap();
    let r = randn(&[1, 2, 9, 7]);
    for ac in [false, true] {
        let g1 = (resize_bilinear(x.as_tensor(), 9, 7, ac).unwrap() * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (resize_bilinear_composed(x.as_tensor(), 9, 7, ac).unwrap() * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let d = common::max_abs_diff(
            g1.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap(),
        );
        assert!(d < 1e-5, "{d}");
    }
}

fn seeded(shape: &[usize], seed: u64) -> Tensor {
    use rand::SeedableRng;
    common::seeded_uniform(shape, &mut rand::rngs::StdRng::seed_from_u64(seed), 1.7)
        .to_dtype(DType::F32)
        .unwrap()
}

fn assert_every_weight_gets_a_gradient(cfg: &UNetPlusPlusConfig, h: usize, w: usize) {
    let varmap = VarMap::new();
    let vb = unetpp::nn::seeded_var_builder(&varmap, 3, DType::F32, &Device::Cpu);
    let net = UNetPlusPlus::new(cfg, vb).unwrap();
    // Seeded: with candle's unseeded initialisers a narrow network now and then gets a
    // whole map of dead ReLUs, and a weight behind it no gradient.
    let x = seeded(&[2, cfg.in_channels(), h, w], 1);
    let target = seeded(&[2, cfg.num_classes(), h, w], 2)
        .gt(0.0)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let out = net.forward_heads(&x, true).unwrap();
    let loss = unetpp::loss::deep_supervision_bce_dice(out.logits(), &target).unwrap();
    let grads = loss.backward().unwrap();
    let data = varmap.data().lock().unwrap();
    let mut checked = 0;
    for (name, var) in data.iter() {
        if name.ends_with("running_mean") || name.ends_with("running_var") {
            continue;
        }
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name} ({cfg:?})"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            norm > 0.0 && norm.is_finite(),
            "gradient of {name} is {norm} ({cfg:?})"
        );
        checked += 1;
    }
    let trainable = net.named_tensors().iter().filter(|t| t.trainable).count();
    assert_eq!(checked, trainable);
}

#[test]
fn gradients_reach_every_weight_for_every_upsampling_mode() {
    for up in [
        Upsample::Transposed,
        Upsample::Nearest,
        Upsample::Bilinear {
            align_corners: true,
        },
        Upsample::Bilinear {
            align_corners: false,
        },
    ] {
        let cfg = small().upsample(up).build().unwrap();
        assert_every_weight_gets_a_gradient(&cfg, 16, 32);
    }
    // A conv bias right before batch norm has an exactly zero gradient (the norm removes the
    // mean), so this configuration drops it, as PyTorch users do.
    let cfg = small()
        .norm(Norm::Batch)
        .conv_bias(false)
        .dropout(0.1)
        .concat_order(ConcatOrder::SkipsFirst)
        .build()
        .unwrap();
    assert_every_weight_gets_a_gradient(&cfg, 16, 16);
    let cfg = small()
        .norm(Norm::Group(2))
        .activation(Activation::LeakyRelu(0.1))
        .num_classes(3)
        .build()
        .unwrap();
    assert_every_weight_gets_a_gradient(&cfg, 16, 16);
}

#[test]
fn training_works_on_every_accepted_size() {
    // Multiples of 16 whose coarse maps have odd sizes (1x3, 3x5 at the bottom level).
    for (h, w) in [(16, 48), (48, 80)] {
        assert_every_weight_gets_a_gradient(&small().build().unwrap(), h, w);
    }
    // Odd sizes through padding.
    for (h, w) in [(7, 8), (13, 21), (1, 17)] {
        assert_every_weight_gets_a_gradient(&small().pad_to_multiple(true).build().unwrap(), h, w);
    }
}
