//! Parity with PyTorch, from fixtures written by `scripts/make_fixtures.py` (torch 2.15).

use std::collections::HashMap;

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::max_rel_diff;
use unetpp::ops::resize_bilinear;
use unetpp::prelude::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture(name: &str) -> HashMap<String, Tensor> {
    unetpp::weights::load_tensors(format!("{FIXTURES}/{name}"), &Device::Cpu).unwrap()
}

#[test]
fn bilinear_matches_torch_interpolate_forward_and_backward() {
    let t = fixture("bilinear.safetensors");
    let mut cases = 0;
    for n in 0.. {
        let Some(x) = t.get(&format!("case{n}.input")) else {
            break;
        };
        let r = &t[&format!("case{n}.grad_output")];
        let (_, _, oh, ow) = r.dims4().unwrap();
        for ac in [false, true] {
            let key = |what: &str| format!("case{n}.ac{}.{what}", ac as u8);
            let xv = Var::from_tensor(x).unwrap();
            let y = resize_bilinear(xv.as_tensor(), oh, ow, ac).unwrap();
            assert!(
                max_rel_diff(&y, &t[&key("output")]) < 1e-12,
                "case {n} ac={ac} forward"
            );
            let grads = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
            let g = grads.get(xv.as_tensor()).unwrap();
            assert!(
                max_rel_diff(g, &t[&key("grad_input")]) < 1e-12,
                "case {n} ac={ac} backward"
            );
            // f32 goes through the same kernel.
            let y32 = resize_bilinear(&x.to_dtype(DType::F32).unwrap(), oh, ow, ac).unwrap();
            assert!(
                max_rel_diff(&y32, &t[&key("output")]) < 1e-6,
                "case {n} ac={ac} f32"
            );
            cases += 1;
        }
    }
    assert_eq!(cases, 10);
}

#[test]
fn paper_network_matches_pytorch() {
    let t = fixture("paper_unetpp_small.safetensors");
    let weights: HashMap<String, Tensor> = t
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("weights.")
                .map(|k| (k.to_string(), v.clone()))
        })
        .collect();
    let cfg = UNetPlusPlusConfig::paper()
        .widths([4, 8, 16, 32, 64])
        .build()
        .unwrap();
    let net = UNetPlusPlus::from_tensors(&cfg, weights, &Device::Cpu).unwrap();
    let out = net.forward_heads(&t["input"], false).unwrap();
    for j in 1..=4 {
        let d = max_rel_diff(out.head(j).unwrap(), &t[&format!("output.head_{j}")]);
        assert!(d < 1e-4, "head {j}: relative difference {d}");
        let pruned = net.prune(j).unwrap().forward(&t["input"]).unwrap();
        let d = max_rel_diff(&pruned, &t[&format!("output.head_{j}")]);
        assert!(d < 1e-4, "pruned L{j}: relative difference {d}");
    }
}
