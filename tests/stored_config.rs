//! A saved network carries its configuration: `load(path)` rebuilds it (full, pruned, U-Net)
//! with nothing passed back in; files without one (written before) still load with
//! `load_with_config`; every configuration survives its text form.

mod common;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use common::{build, max_abs_diff, randn, small, tmp_path};
use unetpp::nested::ConcatOrder;
use unetpp::nn::{Activation, Norm, Upsample};
use unetpp::prelude::*;

#[test]
fn full_and_pruned_networks_load_from_the_file_alone() {
    let cfg = small().norm(Norm::Batch).depth(3).build().unwrap();
    let (_, net) = build(&cfg);
    net.forward_heads(&randn(&[2, 1, 16, 16]), true).unwrap();
    let x = randn(&[1, 1, 16, 16]);
    for level in [None, Some(Level::L1), Some(Level::L2)] {
        let net = match level {
            Some(l) => net.prune(l).unwrap(),
            None => net.clone(),
        };
        let path = tmp_path("stored.safetensors");
        net.save(&path).unwrap();
        let back = UNetPlusPlus::load(&path, &Device::Cpu).unwrap();
        assert_eq!(back.config(), &cfg);
        assert_eq!(back.level(), net.level(), "{level:?}");
        assert_eq!(back.head_cols(), net.head_cols(), "{level:?}");
        assert_eq!(
            max_abs_diff(&back.forward(&x).unwrap(), &net.forward(&x).unwrap()),
            0.0
        );
    }
}

#[test]
fn a_unet_loads_as_a_unet_only() {
    let cfg = UNet::paper().widths([4, 8, 16]).depth(2).build().unwrap();
    let varmap = VarMap::new();
    let net = UNet::new(
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let path = tmp_path("stored-unet.safetensors");
    net.save(&path).unwrap();
    let back = UNet::load(&path, &Device::Cpu).unwrap();
    let x = randn(&[1, 1, 8, 8]);
    assert_eq!(
        max_abs_diff(&back.forward(&x).unwrap(), &net.forward(&x).unwrap()),
        0.0
    );
    let e = UNetPlusPlus::load(&path, &Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("`unet` network"), "{e}");
}

#[test]
fn files_without_a_configuration_load_with_one_given() {
    let cfg = small().depth(2).build().unwrap();
    let (_, net) = build(&cfg);
    // The format of files written before configurations were stored: tensors only.
    let path = tmp_path("no-config.safetensors");
    unetpp::weights::save_tensors(&net.named_tensors(), &path).unwrap();
    let e = UNetPlusPlus::load(&path, &Device::Cpu).unwrap_err();
    assert!(
        matches!(&e, unetpp::Error::Weights { msg, .. } if msg.contains("load_with_config")),
        "{e}"
    );
    let back = UNetPlusPlus::load_with_config(&cfg, &path, &Device::Cpu).unwrap();
    let x = randn(&[1, 1, 8, 8]);
    assert_eq!(
        max_abs_diff(&back.forward(&x).unwrap(), &net.forward(&x).unwrap()),
        0.0
    );
}

#[test]
fn every_setting_survives_the_text_form() {
    let configs = [
        UNetPlusPlusConfig::paper().build().unwrap(),
        UNetPlusPlusConfig::nested_unet()
            .in_channels(3)
            .num_classes(4)
            .dropout(0.25)
            .pad_to_multiple(true)
            .build()
            .unwrap(),
        small()
            .depth(3)
            .norm(Norm::Group(2))
            .activation(Activation::LeakyRelu(0.1))
            .upsample(Upsample::Nearest)
            .concat_order(ConcatOrder::SkipsFirst)
            .conv_bias(false)
            .heads([1, 3])
            .pad_upsampled(true)
            .build()
            .unwrap(),
        small()
            .norm(Norm::Instance)
            .upsample(Upsample::Bilinear {
                align_corners: false,
            })
            .build()
            .unwrap(),
        small()
            .depth(2)
            .up_widths([3, 5])
            .top_width(7)
            .deep_supervision(false)
            .build()
            .unwrap(),
    ];
    for cfg in configs {
        let text = cfg.to_metadata();
        assert_eq!(
            UNetPlusPlusConfig::from_metadata(&text).unwrap(),
            cfg,
            "{text}"
        );
        assert_eq!(cfg.to_builder().build().unwrap(), cfg);
    }
}

#[test]
fn bad_stored_configurations_are_errors_naming_the_key() {
    let good = small().depth(2).build().unwrap().to_metadata();
    let cases = [
        (good.replace("depth=2", "depth=two"), "depth"),
        (good.replace(";dropout=0", ""), "dropout"),
        (good.replace("norm=none", "norm=layer"), "norm"),
        (format!("{good};colour=red"), "metadata"),
        (good.replace("widths=4,6,8", "widths=4,0,8"), "widths"),
    ];
    for (text, field) in cases {
        match UNetPlusPlusConfig::from_metadata(&text) {
            Err(unetpp::Error::Config { field: f, .. }) => assert_eq!(f, field, "{text}"),
            other => panic!("{text}: {other:?}"),
        }
    }
}
