//! A network trained with the fast convolution path matches one trained with candle's stock
//! path step by step. (Its own test binary: it flips the process-wide path switch.)

mod common;

use candle_core::{DType, Device, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use unetpp::ops::CpuConvAlgo;
use unetpp::prelude::*;

/// Trains the same network from the same weights with the fast path and the stock path.
#[test]
fn training_matches_the_stock_path_step_by_step() {
    // The paper's blocks (fused conv + bias + ReLU, transposed-conv up-sampling) and
    // batch-norm blocks with bilinear up-sampling.
    same_losses(&common::small().depth(3).build().unwrap());
    same_losses(
        &common::small()
            .norm(Norm::Batch)
            .upsample(Upsample::Bilinear {
                align_corners: false,
            })
            .depth(3)
            .build()
            .unwrap(),
    );
}

fn same_losses(cfg: &UNetPlusPlusConfig) {
    let dev = Device::Cpu;
    let batch = unetpp::data::synthetic::circles_and_squares(2, 32, 32, 3, &dev).unwrap();
    let init = {
        let varmap = VarMap::new();
        UNetPlusPlus::new(
            cfg,
            unetpp::nn::seeded_var_builder(&varmap, 2, DType::F32, &dev),
        )
        .unwrap();
        // Seeded, so that the run is the same every time (candle's initialisers are not).
        let data = varmap.data().lock().unwrap();
        data.iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().copy().unwrap()))
            .collect::<Vec<_>>()
    };
    let before = unetpp::ops::cpu_conv_algo();
    let run = |algo: CpuConvAlgo| -> Vec<f32> {
        unetpp::ops::set_cpu_conv_algo(algo);
        let varmap = VarMap::new();
        {
            let mut data = varmap.data().lock().unwrap();
            for (k, t) in &init {
                data.insert(k.clone(), Var::from_tensor(&t.copy().unwrap()).unwrap());
            }
        }
        let net =
            UNetPlusPlus::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
        let params = ParamsAdamW {
            lr: 1e-3,
            ..Default::default()
        };
        let mut opt = AdamW::new(varmap.all_vars(), params).unwrap();
        let mut losses = Vec::new();
        for _ in 0..5 {
            let out = net.forward_heads(&batch.images, true).unwrap();
            let loss = unetpp::loss::deep_supervision_bce_dice(out.logits(), &batch.masks).unwrap();
            opt.backward_step(&loss).unwrap();
            losses.push(loss.to_scalar::<f32>().unwrap());
        }
        unetpp::ops::set_cpu_conv_algo(before);
        losses
    };
    let fast = run(CpuConvAlgo::Winograd);
    let stock = run(CpuConvAlgo::Stock);
    assert!(fast[4] < fast[0], "the loss should fall: {fast:?}");
    for (step, (a, b)) in fast.iter().zip(&stock).enumerate() {
        assert!(
            (a - b).abs() < 1e-4 * b.abs().max(1.0),
            "{cfg:?} step {step}: fast {a} vs stock {b}"
        );
    }
}
