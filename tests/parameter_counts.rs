//! The paper configuration's parameter counts (REFERENCE.md: L1 100,961 / L2 511,105 /
//! L3 2,204,961 / L4 9,041,601, and 9,041,700 with the four deep-supervision heads), and the
//! U-Net baselines (7,759,521; wide 9,282,246).

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use unetpp::prelude::*;

#[test]
fn paper_network_counts_match_the_paper() {
    let cfg = UNetPlusPlusConfig::paper().build().unwrap();
    let (_, net) = common::build(&cfg);
    assert_eq!(net.num_parameters(), 9_041_700);
    let expected = [(1, 100_961), (2, 511_105), (3, 2_204_961), (4, 9_041_601)];
    for (k, count) in expected {
        let pruned = net.prune(k).unwrap();
        assert_eq!(pruned.num_parameters(), count, "L{k}");
        assert_eq!(pruned.head_cols(), vec![k]);
    }
}

#[test]
fn pruned_networks_built_directly_have_the_same_counts() {
    let cfg = UNetPlusPlusConfig::paper().build().unwrap();
    for (k, count) in [(1, 100_961), (2, 511_105), (3, 2_204_961)] {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let net = UNetPlusPlus::new_pruned(&cfg, Level(k), vb).unwrap();
        assert_eq!(net.num_parameters(), count, "L{k}");
        assert_eq!(net.level(), k);
    }
}

#[test]
fn a_network_at_depth_k_without_deep_supervision_matches_pruned_l_k() {
    for (k, count) in [(1, 100_961), (2, 511_105), (3, 2_204_961), (4, 9_041_601)] {
        let cfg = UNetPlusPlusConfig::paper()
            .depth(k)
            .deep_supervision(false)
            .build()
            .unwrap();
        let (_, net) = common::build(&cfg);
        assert_eq!(net.num_parameters(), count, "depth {k}");
    }
}

#[test]
fn u_net_baselines_have_the_papers_counts() {
    let dev = Device::Cpu;
    let count = |cfg: &UNetPlusPlusConfig| {
        let varmap = VarMap::new();
        UNet::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev))
            .unwrap()
            .num_parameters()
    };
    assert_eq!(count(&UNet::paper().build().unwrap()), 7_759_521);
    assert_eq!(count(&UNet::wide().build().unwrap()), 9_282_246);
}

#[test]
fn u_net_runs_saves_and_loads() {
    let dev = Device::Cpu;
    let cfg = UNet::paper()
        .widths([4, 6, 8, 10, 12])
        .num_classes(3)
        .build()
        .unwrap();
    let varmap = VarMap::new();
    let net = UNet::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
    assert_eq!(net.grid().nodes().len(), 9);
    let x = Tensor::randn(0f32, 1., (2, 1, 32, 32), &dev).unwrap();
    let out = net.forward_heads(&x, true).unwrap();
    assert_eq!(out.cols(), &[4]);
    assert_eq!(out.logits()[0].dims(), &[2, 3, 32, 32]);
    let path = std::env::temp_dir().join(format!("unetpp-unet-{}.safetensors", std::process::id()));
    net.save(&path).unwrap();
    let back = UNet::load_with_config(&cfg, &path, &dev).unwrap();
    let d = (back.forward(&x).unwrap() - net.forward(&x).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(d, 0.0);
    // A U-Net file is not a UNet++ file: the nested nodes are missing.
    let e = UNetPlusPlus::load_with_config(&cfg, &path, &dev).unwrap_err();
    assert!(e.to_string().contains("x_"), "{e}");
    std::fs::remove_file(&path).unwrap();
}
