//! MONAI `BasicUNetPlusPlus` weights load with the configuration read from their shapes and
//! give MONAI's outputs (fixture made by pip-installed MONAI with
//! `scripts/make_interop_fixtures.py`); export under MONAI's names round-trips. The same for
//! the NestedUNet layout (its fixture comes from the script's rebuild of that layout: the
//! original code is not on PyPI).

mod common;

use std::collections::HashMap;

use candle_core::DType;
use candle_core::{Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::{max_rel_diff, tmp_path};
use unetpp::encoders::ResNetConfig;
use unetpp::interop::monai::{from_monai, load_monai, save_monai, MonaiConfig, MonaiConfigBuilder};
use unetpp::interop::nested_unet::{from_nested_unet, load_nested_unet, save_nested_unet};
use unetpp::interop::smp::{SmpConfig, SmpConfigBuilder, SmpUnetPlusPlus};
use unetpp::prelude::*;

fn fixture(key: &str) -> (HashMap<String, Tensor>, HashMap<String, Tensor>) {
    let file = if key < "c" {
        "monai_unetpp"
    } else {
        "nested_unet"
    };
    let path = format!(
        "{}/tests/fixtures/{file}.safetensors",
        env!("CARGO_MANIFEST_DIR")
    );
    let all = unetpp::weights::load_tensors(path, &Device::Cpu).unwrap();
    let mut state = HashMap::new();
    let mut io = HashMap::new();
    for (name, t) in all {
        let Some(rest) = name.strip_prefix(&format!("{key}/")) else {
            continue;
        };
        if rest == "input" || rest.starts_with("output") {
            io.insert(rest.to_string(), t);
        } else {
            state.insert(rest.to_string(), t);
        }
    }
    (state, io)
}

#[test]
fn monai_outputs_are_reproduced() {
    for (key, heads) in [("a", 4), ("a2", 4), ("a3", 4), ("b", 1)] {
        let (state, io) = fixture(key);
        let detected = MonaiConfig::detect(&state).unwrap();
        let (net, cfg) = from_monai(state, &Device::Cpu).unwrap();
        assert_eq!(cfg.in_channels(), detected.in_channels());
        let out = net.forward_heads(&io["input"], false).unwrap();
        // With deep supervision MONAI returns X^{0,1..4}; without, X^{0,4} alone.
        let ours: Vec<&Tensor> = if heads == 4 {
            out.logits().iter().collect()
        } else {
            vec![out.last()]
        };
        for (k, y) in ours.iter().enumerate() {
            let want = &io[&format!("output{k}")];
            let d = max_rel_diff(y, want);
            assert!(
                d < 1e-4,
                "config {key}, output {k}: differs from MONAI by {d}"
            );
        }
    }
}

#[test]
fn export_under_monai_names_round_trips() {
    let (state, io) = fixture("a");
    let names: Vec<String> = state.keys().cloned().collect();
    let (net, _) = from_monai(state, &Device::Cpu).unwrap();
    let path = tmp_path("monai-export.safetensors");
    save_monai(&net, &path).unwrap();
    let written = unetpp::weights::load_tensors(&path, &Device::Cpu).unwrap();
    let mut expected = names.clone();
    expected.sort();
    let mut got: Vec<String> = written.keys().cloned().collect();
    got.sort();
    assert_eq!(got, expected, "exactly MONAI's names");
    let (again, _) = load_monai(&path, &Device::Cpu).unwrap();
    let a = again.forward(&io["input"]).unwrap();
    let b = net.forward(&io["input"]).unwrap();
    assert_eq!(common::max_abs_diff(&a, &b), 0.0);
    std::fs::remove_file(&path).unwrap();
    assert!(save_monai(&net.prune(Level::L2).unwrap(), &path).is_err());
}

#[test]
fn mismatched_monai_files_are_errors_that_name_the_tensor() {
    let (mut state, _) = fixture("a");
    let t = state.remove("upcat_1_2.convs.conv_1.adn.N.weight").unwrap();
    let e = from_monai(state.clone(), &Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("x_1_2.norm2.weight"), "{e}");
    state.insert(
        "upcat_1_2.convs.conv_1.adn.N.weight".into(),
        t.narrow(0, 0, 2).unwrap(),
    );
    let e = from_monai(state.clone(), &Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("shape"), "{e}");
    let detected = MonaiConfig::detect(&fixture("a").0).unwrap();
    let mut odd = detected.features();
    odd[2] = 1;
    let err = detected.to_builder().features(odd).build().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Config {
                field: "features",
                ..
            }
        ),
        "{err}"
    );
    state.insert("extra.weight".into(), t);
    assert!(from_monai(state, &Device::Cpu).is_err());
}

#[test]
fn nested_unet_outputs_are_reproduced_and_round_trip() {
    for (key, deep) in [("c", false), ("d", true)] {
        let (state, io) = fixture(key);
        let mut names: Vec<String> = state.keys().cloned().collect();
        names.sort();
        let (net, cfg) = from_nested_unet(state, &Device::Cpu).unwrap();
        assert_eq!(cfg.deep_supervision(), deep);
        let out = net.forward_heads(&io["input"], false).unwrap();
        for (k, y) in out.logits().iter().enumerate() {
            let d = max_rel_diff(y, &io[&format!("output{k}")]);
            assert!(d < 1e-4, "config {key}, output {k}: differs by {d}");
        }
        let path = tmp_path(&format!("nested-{key}.safetensors"));
        save_nested_unet(&net, &path).unwrap();
        let written = unetpp::weights::load_tensors(&path, &Device::Cpu).unwrap();
        let mut got: Vec<String> = written.keys().cloned().collect();
        got.sort();
        assert_eq!(
            got, names,
            "exactly NestedUNet's names, num_batches_tracked included"
        );
        let (again, _) = load_nested_unet(&path, &Device::Cpu).unwrap();
        let a = again.forward(&io["input"]).unwrap();
        assert_eq!(common::max_abs_diff(&a, out.last()), 0.0);
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn smp_unetplusplus_matches_segmentation_models_pytorch() {
    // Fixture from scripts/make_smp_fixtures.py (smp 0.6.0): weights set by the shared formula.
    let path = format!(
        "{}/tests/fixtures/smp_unetpp.safetensors",
        env!("CARGO_MANIFEST_DIR")
    );
    let f = unetpp::weights::load_tensors(path, &Device::Cpu).unwrap();
    for (name, preset, classes, dec) in [
        ("resnet18", SmpConfig::resnet18(), 2, [32, 16, 8, 8, 4]),
        ("resnet34", SmpConfig::resnet34(), 1, [16, 16, 8, 8, 8]),
        ("resnet50", SmpConfig::resnet50(), 3, [32, 16, 8, 8, 4]),
    ] {
        let cfg = preset
            .decoder_channels(dec)
            .classes(classes)
            .build()
            .unwrap();
        let varmap = VarMap::new();
        SmpUnetPlusPlus::new(
            &cfg,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )
        .unwrap();
        let tensors: HashMap<String, Tensor> = varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(n, v)| (n.clone(), common::formula(n, v.dims())))
            .collect();
        assert_eq!(
            SmpConfig::detect(&tensors).unwrap(),
            cfg,
            "{name}: detected configuration"
        );
        let net = SmpUnetPlusPlus::from_smp(&cfg, tensors, &Device::Cpu).unwrap();
        let y = net.forward(&f[&format!("{name}/input")]).unwrap();
        let d = max_rel_diff(&y, &f[&format!("{name}/output")]);
        assert!(d < 1e-4, "{name}: differs from smp by {d}");
        // Export under smp's names, every batch-norm with its counter, and back.
        let path = tmp_path(&format!("smp-{name}.safetensors"));
        net.save_smp(&path).unwrap();
        let written = unetpp::weights::load_tensors(&path, &Device::Cpu).unwrap();
        let counters = written
            .keys()
            .filter(|k| k.ends_with("num_batches_tracked"))
            .count();
        let stats = written
            .keys()
            .filter(|k| k.ends_with("running_var"))
            .count();
        assert_eq!(counters, stats);
        assert_eq!(
            written.len() - counters,
            varmap.data().lock().unwrap().len()
        );
        let again = SmpUnetPlusPlus::load_detected(&path, &Device::Cpu).unwrap();
        let y2 = again.forward(&f[&format!("{name}/input")]).unwrap();
        assert_eq!(common::max_abs_diff(&y, &y2), 0.0);
        std::fs::remove_file(&path).unwrap();
    }
    let cfg = SmpConfig::resnet18()
        .decoder_channels([32, 16, 8, 8, 4])
        .classes(2)
        .build()
        .unwrap();
    let varmap = VarMap::new();
    let net = SmpUnetPlusPlus::new(
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let odd = Tensor::zeros((1, 3, 48, 64), DType::F32, &Device::Cpu).unwrap();
    assert!(net.forward(&odd).is_err(), "48 is not a multiple of 32");
}

fn config_field(err: Error) -> &'static str {
    match err {
        Error::Config { field, .. } => field,
        other => panic!("expected a config error, got {other}"),
    }
}

#[test]
fn smp_config_names_its_bad_field() {
    let field = |b: SmpConfigBuilder| config_field(b.build().unwrap_err());
    assert_eq!(field(SmpConfig::resnet34().classes(0)), "classes");
    assert_eq!(
        field(SmpConfig::resnet34().decoder_channels([256, 128, 0, 32, 16])),
        "decoder_channels"
    );
    assert_eq!(field(SmpConfig::resnet34().in_channels(0)), "in_channels");
    let encoder = ResNetConfig::resnet50().in_channels(1).build().unwrap();
    let cfg = SmpConfig::resnet18().encoder(encoder).build().unwrap();
    assert_eq!(
        (
            cfg.encoder(),
            cfg.in_channels(),
            cfg.decoder_channels(),
            cfg.classes()
        ),
        (&encoder, 1, [256, 128, 64, 32, 16], 1)
    );
    assert_eq!(cfg.to_builder().build().unwrap(), cfg);
}

#[test]
fn monai_config_names_its_bad_field() {
    let field = |b: MonaiConfigBuilder| config_field(b.build().unwrap_err());
    assert_eq!(field(MonaiConfig::builder().in_channels(0)), "in_channels");
    assert_eq!(
        field(MonaiConfig::builder().out_channels(0)),
        "out_channels"
    );
    let no_top = [32, 32, 64, 128, 256, 0];
    assert_eq!(field(MonaiConfig::builder().features(no_top)), "features");
    let cfg = MonaiConfig::builder().in_channels(3).build().unwrap();
    assert_eq!(
        (cfg.in_channels(), cfg.out_channels(), cfg.features()),
        (3, 2, [32, 32, 64, 128, 256, 32])
    );
    assert_eq!(cfg.to_builder().build().unwrap(), cfg);
    assert_eq!(cfg.to_unetpp().unwrap().heads(), &[1, 2, 3, 4]);
}
