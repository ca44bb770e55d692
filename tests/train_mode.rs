//! `forward_heads(x, train)`: batch-norm statistics and dropout follow the train flag, and
//! inference records no graph.

mod common;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use common::{build, max_abs_diff, randn, small};
use unetpp::prelude::*;

fn running_mean(net: &UNetPlusPlus) -> candle_core::Tensor {
    net.named_tensors()
        .into_iter()
        .find(|t| t.name == "x_0_0.norm1.running_mean")
        .unwrap()
        .tensor
        .copy()
        .unwrap()
}

#[test]
fn batch_norm_statistics_update_only_in_training() {
    let (_, net) = build(&small().norm(Norm::Batch).build().unwrap());
    let x = (randn(&[4, 1, 16, 16]) + 3.0).unwrap();
    let before = running_mean(&net);
    net.forward_heads(&x, false).unwrap();
    assert_eq!(max_abs_diff(&before, &running_mean(&net)), 0.0);
    net.forward_heads(&x, true).unwrap();
    assert!(max_abs_diff(&before, &running_mean(&net)) > 1e-3);
    // Eval mode uses the running statistics: two eval passes agree, and differ from training.
    let a = net.forward_heads(&x, false).unwrap();
    let b = net.forward_heads(&x, false).unwrap();
    assert_eq!(max_abs_diff(a.last(), b.last()), 0.0);
}

#[test]
fn dropout_is_active_only_in_training() {
    let (_, net) = build(&small().dropout(0.5).build().unwrap());
    let x = randn(&[1, 1, 16, 16]);
    let a = net.forward_heads(&x, true).unwrap();
    let b = net.forward_heads(&x, true).unwrap();
    assert!(max_abs_diff(a.last(), b.last()) > 0.0);
    let a = net.forward_heads(&x, false).unwrap();
    let b = net.forward_heads(&x, false).unwrap();
    assert_eq!(max_abs_diff(a.last(), b.last()), 0.0);
}

#[test]
fn inference_records_no_graph() {
    let varmap = VarMap::new();
    let cfg = small().norm(Norm::Batch).build().unwrap();
    let net = UNetPlusPlus::new(
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let x = randn(&[1, 1, 16, 16]);
    // Training weights are variables: forward_heads records the graph, for backward.
    assert!(net.forward_heads(&x, false).unwrap().last().track_op());
    // forward() is inference, and so is anything run on detach().
    assert!(!net.forward(&x).unwrap().track_op());
    assert!(!net
        .detach()
        .unwrap()
        .forward_heads(&x, false)
        .unwrap()
        .last()
        .track_op());
    let d = max_abs_diff(
        &net.forward(&x).unwrap(),
        net.forward_heads(&x, false).unwrap().last(),
    );
    assert_eq!(d, 0.0);
}
