//! Training repeats bit for bit: the CPU kernels add their per-thread partial sums of weight
//! gradients in a fixed order. (Rayon's adaptive `fold`/`reduce` did not: the paper
//! network's gradients differed in the last bits from one backward pass to the next, and
//! training runs with the same seeds drifted apart.)

mod common;

use candle_core::{Device, Tensor};
use unetpp::data::synthetic::circles_and_squares;
use unetpp::loss::DeepSupervisionLoss;
use unetpp::prelude::*;

#[test]
fn the_same_batch_gives_the_same_gradients_every_time() {
    let cfg = UNetPlusPlusConfig::paper().build().unwrap();
    let varmap = candle_nn::VarMap::new();
    let vb = unetpp::nn::seeded_var_builder(&varmap, 0, candle_core::DType::F32, &Device::Cpu);
    let net = UNetPlusPlus::new(&cfg, vb).unwrap();
    let batch = circles_and_squares(8, 64, 64, 3, &Device::Cpu).unwrap();
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<String> = data.keys().cloned().collect();
    names.sort();
    let grads = || {
        let out = net.forward_heads(&batch.images, true).unwrap();
        let loss = DeepSupervisionLoss::paper()
            .compute(&out, &batch.masks)
            .unwrap();
        let g = loss.backward().unwrap();
        names
            .iter()
            .map(|n| {
                let t = g.get(data[n].as_tensor()).unwrap();
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            })
            .collect::<Vec<_>>()
    };
    let first = grads();
    for _ in 0..3 {
        // Other work in between leaves the thread pool and scratch buffers in another state.
        let x = Tensor::randn(0f32, 1., (3, 40, 37, 29), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1., (24, 40, 3, 3), &Device::Cpu).unwrap();
        unetpp::ops::conv3x3(&x, &w, None).unwrap();
        let again = grads();
        for ((name, a), b) in names.iter().zip(&first).zip(&again) {
            assert!(
                a == b,
                "the gradient of {name} changed between two backward passes"
            );
        }
    }
}
