//! The paper configuration's parameter counts (REFERENCE.md: L1 100,961 / L2 511,105 /
//! L3 2,204,961 / L4 9,041,601, and 9,041,700 with the four deep-supervision heads).

mod common;

use candle_core::{DType, Device};
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
