//! Output shapes for depth 1–4 and the configuration options, padding, and the two modes.

mod common;

use common::{build, max_abs_diff, randn, small};
use unetpp::prelude::*;

#[test]
fn every_depth_gives_one_head_per_column() {
    for depth in 1..=4 {
        let cfg = small().depth(depth).build().unwrap();
        let (_, net) = build(&cfg);
        let out = net.forward_heads(&randn(&[2, 1, 32, 16]), false).unwrap();
        assert_eq!(out.cols(), (1..=depth).collect::<Vec<_>>().as_slice());
        for l in out.logits() {
            assert_eq!(l.dims(), &[2, 1, 32, 16]);
        }
        assert_eq!(net.grid().nodes().len(), (depth + 1) * (depth + 2) / 2);
    }
}

#[test]
fn deeper_than_four_when_widths_allow() {
    let cfg = UNetPlusPlusConfig::paper()
        .widths([2, 2, 2, 2, 2, 2])
        .depth(5)
        .build()
        .unwrap();
    let (_, net) = build(&cfg);
    let out = net.forward_heads(&randn(&[1, 1, 32, 32]), false).unwrap();
    assert_eq!(out.logits().len(), 5);
}

#[test]
fn configurations_run_and_keep_shapes() {
    let configs = [
        small().norm(Norm::Batch).build().unwrap(),
        small()
            .norm(Norm::Instance)
            .activation(Activation::LeakyRelu(0.1))
            .build()
            .unwrap(),
        small().norm(Norm::Group(2)).dropout(0.2).build().unwrap(),
        small()
            .upsample(Upsample::Nearest)
            .concat_order(ConcatOrder::SkipsFirst)
            .build()
            .unwrap(),
        small()
            .upsample(Upsample::Bilinear {
                align_corners: true,
            })
            .build()
            .unwrap(),
        small()
            .upsample(Upsample::Bilinear {
                align_corners: false,
            })
            .conv_bias(false)
            .build()
            .unwrap(),
        small()
            .in_channels(3)
            .num_classes(4)
            .depth(3)
            .build()
            .unwrap(),
        UNetPlusPlusConfig::nested_unet()
            .widths([4, 6, 8, 10, 12])
            .build()
            .unwrap(),
    ];
    for cfg in configs {
        let (_, net) = build(&cfg);
        let x = randn(&[2, cfg.in_channels(), 16, 32]);
        for train in [false, true] {
            let out = net.forward_heads(&x, train).unwrap();
            assert_eq!(out.logits().len(), cfg.heads().len());
            assert_eq!(
                out.last().dims(),
                &[2, cfg.num_classes(), 16, 32],
                "{cfg:?}"
            );
        }
    }
}

#[test]
fn padding_returns_the_input_size() {
    let cfg = small().pad_to_multiple(true).build().unwrap();
    let (_, net) = build(&cfg);
    for (h, w) in [(17, 23), (1, 1), (33, 16), (7, 8)] {
        let out = net.forward_heads(&randn(&[1, 1, h, w]), false).unwrap();
        for l in out.logits() {
            assert_eq!(l.dims(), &[1, 1, h, w]);
        }
    }
    // Sizes that need no padding give the same result as a network that never pads.
    let plain = small().build().unwrap();
    let (varmap, net) = build(&cfg);
    let x = randn(&[1, 1, 32, 16]);
    let path = common::tmp_path("pad.safetensors");
    net.save(&path).unwrap();
    let net2 = UNetPlusPlus::load_with_config(&plain, &path, &candle_core::Device::Cpu).unwrap();
    assert_eq!(
        max_abs_diff(&net.forward(&x).unwrap(), &net2.forward(&x).unwrap()),
        0.0
    );
    drop(varmap);
}

#[test]
fn accurate_mode_is_the_mean_of_head_probabilities() {
    let (_, net) = build(&small().build().unwrap());
    let out = net.forward_heads(&randn(&[1, 1, 16, 16]), false).unwrap();
    let acc = out.accurate().unwrap();
    let mut mean = out.fast(1).unwrap();
    for j in 2..=4 {
        mean = (mean + out.fast(j).unwrap()).unwrap();
    }
    let mean = (mean / 4.0).unwrap();
    assert!(max_abs_diff(&acc, &mean) < 1e-6);
    let p = out
        .fast(4)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(p.iter().all(|v| (0.0..=1.0).contains(v)));
}

#[test]
fn multi_class_probabilities_sum_to_one() {
    let (_, net) = build(&small().num_classes(3).depth(2).build().unwrap());
    let out = net.forward_heads(&randn(&[2, 1, 8, 8]), false).unwrap();
    let s = out.accurate().unwrap().sum(1).unwrap();
    let ones = s.ones_like().unwrap();
    assert!(max_abs_diff(&s, &ones) < 1e-5);
}

#[test]
fn pad_upsampled_runs_any_size_as_monai_does() {
    let cfg = common::small().pad_upsampled(true).build().unwrap();
    let (_, net) = common::build(&cfg);
    let x = common::randn(&[1, 1, 37, 45]);
    let out = net.forward_heads(&x, false).unwrap();
    for y in out.logits() {
        assert_eq!(y.dims(), &[1, 1, 37, 45]);
    }
    let e = net.forward(&common::randn(&[1, 1, 8, 37])).unwrap_err();
    assert!(e.to_string().contains("at least 16"), "{e}");
}
