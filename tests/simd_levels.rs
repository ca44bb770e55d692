//! Every SIMD level of the hand-written kernels computes the same bits.
//!
//! The kernels are one Rust source compiled once per level (`ops::simd`); Rust neither
//! reassociates nor contracts floating-point arithmetic, so the AVX2 and AVX-512 copies must
//! give exactly the scalar copy's results, forward and backward. (That each copy is *right*
//! is the rest of the suite's job, run once per level by `.ci/run` through `UNETPP_SIMD`.)
//! This file switches the process-wide level, so it is its own test binary and its tests
//! take a lock.

use std::sync::Mutex;

use candle_core::{DType, Device, Tensor, Var};
use unetpp::nested::UNetPlusPlusConfig;
use unetpp::ops::{self, set_simd_level, simd_level, supported_simd_levels, SimdLevel};

mod common;

static LEVEL: Mutex<()> = Mutex::new(());

fn var(shape: &[usize], seed: u64) -> Var {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|i| {
            let h = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03);
            ((h >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Var::from_tensor(&Tensor::from_vec(values, shape, &Device::Cpu).unwrap()).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

/// Runs `f` at every level this CPU supports and checks that each gives the scalar level's
/// tensors bit for bit. Returns the levels run.
fn same_at_every_level(what: &str, f: impl Fn() -> Vec<Tensor>) -> Vec<SimdLevel> {
    let _guard = LEVEL.lock().unwrap_or_else(|e| e.into_inner());
    let before = simd_level();
    let levels = supported_simd_levels();
    set_simd_level(SimdLevel::Scalar).unwrap();
    let reference: Vec<Vec<u32>> = f().iter().map(bits).collect();
    for &level in &levels[1..] {
        set_simd_level(level).unwrap();
        let got: Vec<Vec<u32>> = f().iter().map(bits).collect();
        assert_eq!(got.len(), reference.len());
        for (i, (g, r)) in got.iter().zip(&reference).enumerate() {
            let differ = g.iter().zip(r).filter(|(a, b)| a != b).count();
            assert_eq!(
                differ, 0,
                "{what}: output {i} differs from the scalar level's at {level} in {differ} of {} values",
                r.len()
            );
        }
    }
    set_simd_level(before).unwrap();
    levels
}

/// Output, then the gradients of `Σ out · probe` with respect to `vars`.
fn with_grads(out: &Tensor, vars: &[&Var]) -> Vec<Tensor> {
    let probe = var(out.dims(), 99);
    let grads = (out * probe.as_tensor())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let mut all = vec![out.clone()];
    all.extend(
        vars.iter()
            .map(|v| grads.get(v.as_tensor()).unwrap().clone()),
    );
    all
}

#[test]
fn convolutions_agree_at_every_level() {
    // 32 → 16 channels at 64×64: the Winograd forward and weight-gradient paths; 8 → 8 at
    // 20×20: the banded GEMM path.
    for (c, o, side) in [(32, 16, 64), (8, 8, 20)] {
        let x = var(&[2, c, side, side], 1);
        let w = var(&[o, c, 3, 3], 2);
        let b = var(&[o], 3);
        same_at_every_level("conv3x3_fused", || {
            let y = ops::conv3x3_fused(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), true)
                .unwrap();
            with_grads(&y, &[&x, &w, &b])
        });
    }
    let x = var(&[1, 3, 33, 29], 4);
    let w = var(&[8, 3, 7, 7], 5);
    same_at_every_level("conv2d 7×7 stride 2", || {
        let y = ops::conv2d(x.as_tensor(), w.as_tensor(), None, 2, 3).unwrap();
        with_grads(&y, &[&x, &w])
    });
    let x = var(&[2, 16, 12, 10], 6);
    let w = var(&[16, 8, 2, 2], 7);
    let b = var(&[8], 8);
    same_at_every_level("conv_transpose2x2", || {
        let y = ops::conv_transpose2x2(x.as_tensor(), w.as_tensor(), Some(b.as_tensor())).unwrap();
        with_grads(&y, &[&x, &w, &b])
    });
}

#[test]
fn normalisation_and_elementwise_ops_agree_at_every_level() {
    let x = var(&[2, 6, 17, 19], 9);
    let gamma = var(&[6], 10);
    let beta = var(&[6], 11);
    same_at_every_level("batch_norm_train", || {
        let out = ops::batch_norm_train(x.as_tensor(), gamma.as_tensor(), beta.as_tensor(), 1e-5)
            .unwrap();
        let mut all = with_grads(&out.output, &[&x, &gamma, &beta]);
        all.extend([out.mean, out.var]);
        all
    });
    let a = var(&[3, 5, 31, 7], 12);
    let b = var(&[3, 5, 31, 7], 13);
    let bias = var(&[5], 14);
    same_at_every_level("relu, add_relu, bias_add, leaky_relu", || {
        let r = ops::relu(a.as_tensor()).unwrap();
        let ar = ops::add_relu(a.as_tensor(), b.as_tensor()).unwrap();
        let ba = ops::bias_add(a.as_tensor(), bias.as_tensor()).unwrap();
        let lr = ops::leaky_relu(b.as_tensor(), 0.1).unwrap();
        let total = (((r + ar).unwrap() + ba).unwrap() + lr).unwrap();
        with_grads(&total, &[&a, &b, &bias])
    });
}

#[test]
fn a_training_step_of_unetpp_agrees_at_every_level() {
    // The paper's layout (transposed up-sampling, no norm) and pytorch-nested-unet's (batch
    // norm, bilinear); 32 channels at 64×64 take the Winograd paths.
    let widths = [32, 40, 48, 56, 64];
    for cfg in [
        UNetPlusPlusConfig::paper().widths(widths).build().unwrap(),
        UNetPlusPlusConfig::nested_unet()
            .widths(widths)
            .build()
            .unwrap(),
    ] {
        let (varmap, net) = common::build(&cfg);
        let x = var(&[2, 1, 64, 64], 20);
        let vars = varmap.all_vars();
        same_at_every_level("UNet++ forward and backward", || {
            let out = net.forward_heads(x.as_tensor(), true).unwrap();
            let loss = out
                .logits()
                .iter()
                .map(|h| h.sqr().unwrap().mean_all().unwrap())
                .reduce(|a, b| (a + b).unwrap())
                .unwrap();
            let grads = loss.backward().unwrap();
            let mut all = vec![loss];
            all.extend(
                vars.iter()
                    .filter_map(|v| grads.get(v.as_tensor()).cloned()),
            );
            assert!(all.len() > 10);
            all
        });
    }
}

#[test]
fn an_unsupported_level_is_refused() {
    let _guard = LEVEL.lock().unwrap_or_else(|e| e.into_inner());
    let supported = supported_simd_levels();
    assert_eq!(supported[0], SimdLevel::Scalar);
    for level in SimdLevel::ALL {
        let result = set_simd_level(level);
        assert_eq!(result.is_ok(), supported.contains(&level), "{level}");
        if let Err(e) = result {
            assert!(e.to_string().contains("does not support"), "{e}");
        }
    }
    set_simd_level(*supported.last().unwrap()).unwrap();
}
