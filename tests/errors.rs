//! Bad input gives a clear `Error`, never a panic.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{build, randn, small, tmp_path};
use unetpp::prelude::*;

fn config_field(r: Result<UNetPlusPlusConfig>) -> &'static str {
    match r {
        Err(Error::Config { field, .. }) => field,
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn rejects_bad_configurations() {
    assert_eq!(config_field(small().depth(0).build()), "depth");
    assert_eq!(
        config_field(small().widths([4, 0, 8, 16, 32]).build()),
        "widths"
    );
    assert_eq!(config_field(small().widths([4, 8]).build()), "widths");
    assert_eq!(config_field(small().dropout(1.0).build()), "dropout");
    assert_eq!(config_field(small().dropout(-0.1).build()), "dropout");
    assert_eq!(config_field(small().dropout(f32::NAN).build()), "dropout");
    assert_eq!(config_field(small().in_channels(0).build()), "in_channels");
    assert_eq!(config_field(small().num_classes(0).build()), "num_classes");
    assert_eq!(
        config_field(small().heads([1, 2, 3, 4, 5]).build()),
        "heads"
    );
    assert_eq!(
        config_field(small().depth(2).heads([1, 2, 3]).build()),
        "heads"
    );
    assert_eq!(config_field(small().heads([0]).build()), "heads");
    assert_eq!(config_field(small().heads([2, 2]).build()), "heads");
    assert_eq!(config_field(small().heads(Vec::new()).build()), "heads");
    assert_eq!(config_field(small().norm(Norm::Group(3)).build()), "norm");
    assert_eq!(config_field(small().norm(Norm::Group(0)).build()), "norm");
    assert_eq!(
        config_field(small().activation(Activation::LeakyRelu(f64::NAN)).build()),
        "activation"
    );
}

#[test]
fn rejects_input_not_divisible_by_16() {
    let (_, net) = build(&small().build().unwrap());
    let err = net
        .forward_heads(&randn(&[1, 1, 24, 32]), false)
        .unwrap_err();
    assert!(matches!(err, Error::Shape(_)), "{err}");
    assert!(err.to_string().contains("divisible by 16"), "{err}");
}

#[test]
fn rejects_wrong_channels_rank_and_empty_batch() {
    let (_, net) = build(&small().in_channels(3).build().unwrap());
    let err = net
        .forward_heads(&randn(&[1, 1, 16, 16]), false)
        .unwrap_err();
    assert!(
        matches!(err, Error::Shape(ref m) if m.contains("3 input channel")),
        "{err}"
    );
    let err = net.forward_heads(&randn(&[3, 16, 16]), false).unwrap_err();
    assert!(matches!(err, Error::Shape(_)), "{err}");
    let empty = Tensor::zeros((0, 3, 16, 16), DType::F32, &Device::Cpu).unwrap();
    let err = net.forward_heads(&empty, false).unwrap_err();
    assert!(
        matches!(err, Error::Shape(ref m) if m.contains("empty batch")),
        "{err}"
    );
}

#[test]
fn asking_for_a_missing_head_is_an_error() {
    let (_, net) = build(&small().depth(2).build().unwrap());
    let out = net.forward_heads(&randn(&[1, 1, 8, 8]), false).unwrap();
    assert!(out.head(3).is_err());
    assert!(out.fast(0).is_err());
}

fn saved_small() -> (UNetPlusPlusConfig, std::path::PathBuf) {
    let cfg = small().depth(2).build().unwrap();
    let (_, net) = build(&cfg);
    let path = tmp_path(&format!("errors-{}.safetensors", rand_suffix()));
    net.save(&path).unwrap();
    (cfg, path)
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

fn weights_error_name(r: Result<UNetPlusPlus>) -> String {
    match r {
        Err(Error::Weights { name, msg }) => format!("{name}: {msg}"),
        other => panic!("expected a weights error, got {other:?}"),
    }
}

#[test]
fn missing_extra_and_misshaped_tensors_are_named() {
    let (cfg, path) = saved_small();
    let dev = Device::Cpu;
    let mut tensors = unetpp::weights::load_tensors(&path, &dev).unwrap();

    let mut missing = tensors.clone();
    missing.remove("x_1_1.conv2.weight");
    candle_core::safetensors::save(&missing, &path).unwrap();
    let e = weights_error_name(UNetPlusPlus::load_with_config(&cfg, &path, &dev));
    assert!(e.starts_with("x_1_1.conv2.weight: missing"), "{e}");

    let mut extra = tensors.clone();
    extra.insert("x_9_9.conv1.weight".into(), randn(&[1]));
    candle_core::safetensors::save(&extra, &path).unwrap();
    let e = weights_error_name(UNetPlusPlus::load_with_config(&cfg, &path, &dev));
    assert!(e.starts_with("x_9_9.conv1.weight: unexpected"), "{e}");

    tensors.insert("up_0_1.weight".into(), randn(&[6, 4, 3, 3]));
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let e = weights_error_name(UNetPlusPlus::load_with_config(&cfg, &path, &dev));
    assert!(
        e.contains("up_0_1.weight") && e.contains("[6, 4, 2, 2]") && e.contains("[6, 4, 3, 3]"),
        "{e}"
    );

    // The file was written for another configuration.
    let other = small().depth(2).in_channels(2).build().unwrap();
    let (cfg_ok, path_ok) = saved_small();
    let e = weights_error_name(UNetPlusPlus::load_with_config(&other, &path_ok, &dev));
    assert!(e.starts_with("x_0_0.conv1.weight"), "{e}");
    assert!(UNetPlusPlus::load_with_config(&cfg_ok, &path_ok, &dev).is_ok());
}

#[test]
fn truncated_and_missing_files_are_errors() {
    let (cfg, path) = saved_small();
    let bytes = std::fs::read(&path).unwrap();
    for cut in [bytes.len() / 2, 8, 3, 0] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = UNetPlusPlus::load_with_config(&cfg, &path, &Device::Cpu).unwrap_err();
        assert!(matches!(err, Error::Weights { .. }), "cut at {cut}: {err}");
    }
    let err =
        UNetPlusPlus::load_with_config(&cfg, tmp_path("does-not-exist.safetensors"), &Device::Cpu)
            .unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
}

#[test]
fn saving_into_a_missing_directory_is_an_error_and_leaves_nothing() {
    let cfg = small().depth(1).build().unwrap();
    let (_, net) = build(&cfg);
    let err = net.save(tmp_path("no/such/dir/w.safetensors")).unwrap_err();
    assert!(
        matches!(err, Error::Weights { .. } | Error::Io { .. }),
        "{err}"
    );
}

#[test]
fn up_and_top_widths_are_checked() {
    use unetpp::prelude::*;
    let bilinear = UNetPlusPlusConfig::nested_unet()
        .up_widths([32, 32, 64, 128])
        .build();
    assert!(
        matches!(bilinear, Err(Error::Config { .. })),
        "interpolation keeps channels"
    );
    let short = UNetPlusPlusConfig::paper().up_widths([32, 32]).build();
    assert!(matches!(short, Err(Error::Config { .. })));
    let zero = UNetPlusPlusConfig::paper().top_width(0).build();
    assert!(matches!(zero, Err(Error::Config { .. })));
}

/// Each variant means one thing: values out of range are `Input`, not `Shape`.
#[test]
fn values_out_of_range_are_input_errors() {
    use unetpp::data::synthetic::{SyntheticConfig, SyntheticDataset};
    use unetpp::data::Dataset;
    let set = SyntheticDataset::new(
        SyntheticConfig::builder()
            .samples(2)
            .height(16)
            .width(16)
            .build()
            .unwrap(),
    )
    .unwrap();
    let err = set.get(2).unwrap_err();
    assert!(matches!(err, Error::Input(_)), "{err}");
    let mut m = SegmentationMetrics::new(2).unwrap();
    let labels = Tensor::new(&[[[0u32, 5]]], &Device::Cpu).unwrap();
    let err = m.update(&labels, &labels).unwrap_err();
    assert!(matches!(err, Error::Input(_)), "{err}");
    let pool = unetpp::ops::max_pool2d(&randn(&[1, 1, 4, 4]), 0, 1, 0).unwrap_err();
    assert!(matches!(pool, Error::Input(_)), "{pool}");
    let small_map = unetpp::ops::max_pool2d(&randn(&[1, 1, 2, 2]), 3, 1, 0).unwrap_err();
    assert!(matches!(small_map, Error::Shape(_)), "{small_map}");
}
