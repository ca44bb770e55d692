//! Pruning: a network cut to `L_k` computes exactly head `X^{0,k}` of the full network, saves
//! only what it keeps, and its file loads back into a pruned network.

mod common;

use candle_core::Device;
use common::{build, max_abs_diff, randn, small, tmp_path};
use unetpp::prelude::*;

#[test]
fn pruned_l_k_matches_full_head_k() {
    for cfg in [
        small().build().unwrap(),
        small()
            .norm(Norm::Batch)
            .upsample(Upsample::Nearest)
            .build()
            .unwrap(),
        small()
            .norm(Norm::Instance)
            .upsample(Upsample::Bilinear {
                align_corners: false,
            })
            .concat_order(ConcatOrder::SkipsFirst)
            .num_classes(3)
            .build()
            .unwrap(),
    ] {
        let (_, net) = build(&cfg);
        let x = randn(&[2, 1, 32, 48]);
        let full = net.forward_heads(&x, false).unwrap();
        for k in 1..=4 {
            let pruned = net.prune(k).unwrap();
            assert_eq!(pruned.grid().nodes().len(), (k + 1) * (k + 2) / 2);
            let y = pruned.forward(&x).unwrap();
            let d = max_abs_diff(&y, full.head(k).unwrap());
            assert!(d <= 1e-5, "L{k}: max difference {d}");
        }
    }
}

#[test]
fn pruned_file_holds_only_kept_weights_and_loads_back() {
    let cfg = small().build().unwrap();
    let (_, net) = build(&cfg);
    let l2 = net.prune(Level::L2).unwrap();
    let path = tmp_path("l2.safetensors");
    l2.save(&path).unwrap();

    let stored = unetpp::weights::load_tensors(&path, &Device::Cpu).unwrap();
    let mut names: Vec<_> = stored.keys().cloned().collect();
    names.sort();
    assert!(names
        .iter()
        .all(|n| !n.starts_with("x_3") && !n.starts_with("x_0_3") && !n.starts_with("head_1")));
    assert!(names.contains(&"head_2.weight".to_string()));
    let count: usize = stored.values().map(|t| t.elem_count()).sum();
    assert_eq!(count, l2.num_parameters());

    let loaded = UNetPlusPlus::load_pruned(&cfg, Level::L2, &path, &Device::Cpu).unwrap();
    let x = randn(&[1, 1, 16, 16]);
    assert_eq!(
        max_abs_diff(&loaded.forward(&x).unwrap(), &l2.forward(&x).unwrap()),
        0.0
    );

    // A pruned file is not a full network.
    let err = UNetPlusPlus::load_with_config(&cfg, &path, &Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::Weights { .. }), "{err}");
    // Nor a network pruned to another level.
    let err = UNetPlusPlus::load_pruned(&cfg, Level::L1, &path, &Device::Cpu).unwrap_err();
    assert!(
        matches!(err, Error::Weights { ref name, .. } if name == "head_1.weight"),
        "{err}"
    );
}

#[test]
fn full_network_round_trips_through_a_file() {
    let cfg = small().norm(Norm::Batch).build().unwrap();
    let (_, net) = build(&cfg);
    // Update the batch-norm running statistics so that they differ from their initial values.
    net.forward_heads(&randn(&[2, 1, 16, 16]), true).unwrap();
    let path = tmp_path("full.safetensors");
    net.save(&path).unwrap();
    let loaded = UNetPlusPlus::load_with_config(&cfg, &path, &Device::Cpu).unwrap();
    let x = randn(&[1, 1, 32, 32]);
    let a = net.forward_heads(&x, false).unwrap();
    let b = loaded.forward_heads(&x, false).unwrap();
    for (ya, yb) in a.logits().iter().zip(b.logits()) {
        assert_eq!(max_abs_diff(ya, yb), 0.0);
    }
    // Pruning the loaded network gives the same as pruning the original.
    let d = max_abs_diff(
        &loaded.prune(3).unwrap().forward(&x).unwrap(),
        a.head(3).unwrap(),
    );
    assert!(d <= 1e-5);
}

#[test]
fn cannot_prune_without_the_head() {
    let cfg = small().deep_supervision(false).build().unwrap();
    let (_, net) = build(&cfg);
    let err = net.prune(Level::L2).unwrap_err();
    assert!(matches!(err, Error::Config { field: "level", .. }), "{err}");
    assert!(net.prune(Level::L4).is_ok());
    let cfg = small().build().unwrap();
    let (_, net) = build(&cfg);
    assert!(matches!(net.prune(5).unwrap_err(), Error::Config { .. }));
    assert!(matches!(net.prune(0).unwrap_err(), Error::Config { .. }));
    // A pruned network cannot grow back.
    assert!(net.prune(2).unwrap().prune(3).is_err());
}
