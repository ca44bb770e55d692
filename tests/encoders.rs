//! ResNet-18/34/50 against torchvision (fixture from `scripts/make_resnet_fixtures.py`: the
//! weights are set from a formula of each tensor's name and index on both sides, so the
//! fixture holds only the input and torchvision's float64 feature taps, which our float32 ones
//! match within a multiple of PyTorch's own float32 error, `common::assert_within_torch`).

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::{assert_within_torch, formula, max_abs_diff, max_rel_diff, torch_err, Metric};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use unetpp::encoders::{ResNet, ResNetConfig};

/// The named tensors of a ResNet of `cfg`, filled by the formula.
fn formula_weights(cfg: &ResNetConfig) -> HashMap<String, Tensor> {
    let varmap = VarMap::new();
    ResNet::new(
        cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let data = varmap.data().lock().unwrap();
    data.iter()
        .map(|(n, v)| (n.clone(), formula(n, v.dims())))
        .collect()
}

fn fixture() -> HashMap<String, Tensor> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/resnet_torchvision.safetensors"
    );
    unetpp::weights::load_tensors(path, &Device::Cpu).unwrap()
}

#[test]
fn resnets_match_torchvision() {
    let f = fixture();
    let x = &f["input"];
    for (arch, cfg) in [
        ("resnet18", ResNetConfig::resnet18().build().unwrap()),
        ("resnet34", ResNetConfig::resnet34().build().unwrap()),
        ("resnet50", ResNetConfig::resnet50().build().unwrap()),
    ] {
        let mut tensors = formula_weights(&cfg);
        // What a torchvision state_dict holds beside the body: skipped on import.
        tensors.insert(
            "fc.weight".into(),
            Tensor::zeros((1000, cfg.out_channels()[4]), DType::F32, &Device::Cpu).unwrap(),
        );
        tensors.insert(
            "bn1.num_batches_tracked".into(),
            Tensor::new(0i64, &Device::Cpu).unwrap(),
        );
        let net = ResNet::from_torchvision(&cfg, tensors, &Device::Cpu).unwrap();
        let taps = net.features(x, false).unwrap();
        assert_eq!(taps.len(), 5);
        for (k, t) in taps.iter().enumerate() {
            let want = &f[&format!("{arch}.tap{k}")];
            assert_eq!(t.dims(), want.dims(), "{arch} tap {k}");
            assert_eq!(t.dim(1).unwrap(), cfg.out_channels()[k]);
            let tol = torch_err(&f, &format!("{arch}.tap{k}"));
            assert_within_torch(t, want, tol, Metric::Rel, &format!("{arch} tap {k}"));
        }
    }
}

/// A ResNet-18 with frozen batch-norm, and the `VarMap` holding its weights.
fn frozen_resnet18() -> (VarMap, ResNet) {
    let cfg = ResNetConfig::resnet18().frozen_bn(true).build().unwrap();
    let varmap = VarMap::new();
    let net = ResNet::new(
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    (varmap, net)
}

#[test]
fn frozen_batch_norm_ignores_training_mode_and_gets_no_gradient() {
    let (varmap, net) = frozen_resnet18();
    let x = Tensor::randn(0f32, 1., (2, 3, 32, 32), &Device::Cpu).unwrap();
    let train = net.features(&x, true).unwrap();
    let eval = net.features(&x, false).unwrap();
    assert_eq!(common::max_abs_diff(&train[4], &eval[4]), 0.0);
    let grads = train[4].sum_all().unwrap().backward().unwrap();
    let data = varmap.data().lock().unwrap();
    assert!(grads.get(data["conv1.weight"].as_tensor()).is_some());
    assert!(
        grads.get(data["bn1.weight"].as_tensor()).is_none(),
        "frozen scale was trained"
    );
}

#[test]
fn weight_and_input_errors_name_the_problem() {
    let cfg = ResNetConfig::resnet18().build().unwrap();
    let mut tensors = formula_weights(&cfg);
    tensors.remove("layer3.0.downsample.1.running_var");
    let e = ResNet::from_torchvision(&cfg, tensors, &Device::Cpu).unwrap_err();
    assert!(
        e.to_string().contains("layer3.0.downsample.1.running_var"),
        "{e}"
    );
    // ResNet-50 weights for a ResNet-18.
    let e = ResNet::from_torchvision(
        &cfg,
        formula_weights(&ResNetConfig::resnet50().build().unwrap()),
        &Device::Cpu,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("shape") || e.to_string().contains("unexpected"),
        "{e}"
    );

    let net = ResNet::from_torchvision(&cfg, formula_weights(&cfg), &Device::Cpu).unwrap();
    let grey = Tensor::zeros((1, 1, 32, 32), DType::F32, &Device::Cpu).unwrap();
    assert!(net.features(&grey, false).is_err());
    let flat = Tensor::zeros((3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    assert!(net.features(&flat, false).is_err());
}

#[test]
fn resnet_gradients_on_sizes_with_different_remainders_per_axis() {
    // 100x140: layer 3 maps 13x18 to 7x9, where (13 + 2 - 3) mod 2 = 0 but (18 + 2 - 3) mod 2
    // = 1; candle's strided-convolution backward alone returns a 13x17 gradient there.
    let varmap = candle_nn::VarMap::new();
    let vb = unetpp::nn::seeded_var_builder(&varmap, 11, DType::F64, &Device::Cpu);
    let net = ResNet::new(&ResNetConfig::resnet18().build().unwrap(), vb).unwrap();
    // Seeded weights and input: candle's CPU initialisers and `randn` cannot be seeded, and a
    // random draw now and then puts a ReLU or max-pool kink within the finite-difference step.
    let (hh, ww) = (100, 140);
    let mut rng = StdRng::seed_from_u64(5);
    let pixels: Vec<f64> = (0..3 * hh * ww)
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    let x = Tensor::from_vec(pixels, (1, 3, hh, ww), &Device::Cpu).unwrap();
    let xv = candle_core::Var::from_tensor(&x).unwrap();
    let loss = |x: &Tensor| -> Tensor {
        let taps = net.features(x, false).unwrap();
        taps[4].sqr().unwrap().sum_all().unwrap()
    };
    let grads = loss(xv.as_tensor()).backward().unwrap();
    let gx = grads.get(xv.as_tensor()).unwrap();
    assert_eq!(gx.dims(), x.dims());
    // Every convolution kernel (batch-norm running statistics are buffers).
    for v in varmap.all_vars().iter().filter(|v| v.rank() == 4) {
        let g = grads
            .get(v.as_tensor())
            .expect("every kernel gets a gradient");
        assert_eq!(g.dims(), v.dims());
    }
    // Central differences on a few pixels, including the last column.
    let flat = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let gflat = gx.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    for &i in &[0usize, ww - 1, ww * 50 + 77, 3 * hh * ww - 1] {
        let at = |d: f64| {
            let mut v = flat.clone();
            v[i] += d;
            let t = Tensor::from_vec(v, x.dims(), &Device::Cpu).unwrap();
            loss(&t).to_scalar::<f64>().unwrap()
        };
        // ReLU kinks near the step keep central differences through 20 layers to about 1e-3
        // of the gradient (the same at 96x128, where no padding happens); a kink crossed by
        // one step size is not crossed by a step 100 times smaller, so the closer of the two
        // counts. A misplaced or truncated gradient is far off at both.
        let err = [1e-5, 1e-7]
            .iter()
            .map(|&eps| ((at(eps) - at(-eps)) / (2.0 * eps) - gflat[i]).abs())
            .fold(f64::INFINITY, f64::min);
        assert!(
            err <= 1e-2 * gflat[i].abs().max(1.0),
            "pixel {i}: backward {}, closest central difference off by {err}",
            gflat[i]
        );
    }
    // Running statistics are buffers: no gradient reaches them.
    for v in varmap.data().lock().unwrap().iter() {
        if v.0.contains("running_") {
            assert!(grads.get(v.1.as_tensor()).is_none(), "{}", v.0);
        }
    }
    // Batch-norm scale and shift with running statistics (folded into the convolution): the
    // gradient of one channel of each against central differences.
    for name in ["layer2.0.bn2.weight", "layer3.1.bn1.bias", "bn1.weight"] {
        let var = varmap.data().lock().unwrap()[name].clone();
        let g = grads
            .get(var.as_tensor())
            .expect(name)
            .to_vec1::<f64>()
            .unwrap()[3];
        let base = var.as_tensor().to_vec1::<f64>().unwrap();
        let at = |d: f64| {
            let mut v = base.clone();
            v[3] += d;
            var.set(&Tensor::new(v, &Device::Cpu).unwrap()).unwrap();
            loss(&x).to_scalar::<f64>().unwrap()
        };
        let err = [1e-5, 1e-7]
            .iter()
            .map(|&eps| ((at(eps) - at(-eps)) / (2.0 * eps) - g).abs())
            .fold(f64::INFINITY, f64::min);
        var.set(&Tensor::new(base, &Device::Cpu).unwrap()).unwrap();
        assert!(
            err <= 1e-2 * g.abs().max(1.0),
            "{name}: backward {g}, closest central difference off by {err}"
        );
    }
}

#[test]
fn frozen_stages_stop_the_backward_pass_and_keep_the_values() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let net = ResNet::new(&ResNetConfig::resnet18().build().unwrap(), vb).unwrap();
    let x = Tensor::ones((1, 3, 64, 64), DType::F32, &Device::Cpu).unwrap();
    let x = candle_core::Var::from_tensor(&x).unwrap();
    let all = net.features(x.as_tensor(), false).unwrap();
    for n in 0..=5 {
        let taps = net.features_trainable(x.as_tensor(), false, n).unwrap();
        for (a, b) in all.iter().zip(&taps) {
            assert_eq!(max_rel_diff(a, b), 0.0);
        }
        let grads = taps[4].sum_all().unwrap().backward().unwrap();
        let has = |name: &str| {
            let v = varmap.data().lock().unwrap()[name].clone();
            grads.get(v.as_tensor()).is_some()
        };
        assert_eq!(has("conv1.weight"), n == 5, "{n}");
        assert_eq!(has("layer1.0.conv1.weight"), n >= 4, "{n}");
        assert_eq!(has("layer4.1.conv2.weight"), n >= 1, "{n}");
        assert_eq!(grads.get(x.as_tensor()).is_some(), n == 5, "{n}");
    }
    let e = net.features_trainable(x.as_tensor(), false, 6).unwrap_err();
    assert!(e.to_string().contains("trainable_layers"), "{e}");
}

/// Frozen batch-norm reads its statistics from the `VarMap`, also when they are written
/// after the network is built (as restoring a checkpoint does).
#[test]
fn frozen_batch_norm_sees_statistics_written_later() {
    let (varmap, net) = frozen_resnet18();
    let x = Tensor::ones((1, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    let stem_sum = || {
        net.features(&x, false).unwrap()[0]
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let before = stem_sum();
    let var = varmap.data().lock().unwrap()["bn1.running_mean"].clone();
    var.set(&(var.as_tensor().ones_like().unwrap() * 100.0).unwrap())
        .unwrap();
    assert_ne!(
        before,
        stem_sum(),
        "the frozen batch-norm kept its old running mean"
    );
}

/// UNet++ on a ResNet-18: the taps stand in for the encoder nodes, every head is resized to
/// the input, pruning keeps the encoder and equals the full network's head, and the saved
/// tensors (the encoder's under `encoder.`) build the same network again.
#[test]
fn unetpp_on_a_resnet_encoder_prunes_saves_and_reloads() {
    use std::sync::Arc;
    use unetpp::prelude::*;
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = unetpp::nn::seeded_var_builder(&varmap, 4, DType::F32, &dev);
    let rcfg = ResNetConfig::resnet18().build().unwrap();
    let encoder = ResNet::new(&rcfg, vb.pp("encoder")).unwrap();
    let cfg = UNetPlusPlusConfig::paper()
        .widths([8, 12, 16, 20, 24])
        .norm(unetpp::nn::Norm::Batch)
        .num_classes(2)
        .build()
        .unwrap();
    let net = UNetPlusPlus::with_encoder(&cfg, Arc::new(encoder), vb).unwrap();
    let x = Tensor::randn(0f32, 1., (2, 3, 64, 96), &dev).unwrap();
    let out = net.forward_heads(&x, false).unwrap();
    for l in out.logits() {
        assert_eq!(l.dims(), &[2, 2, 64, 96]);
    }
    let names: Vec<String> = net.named_tensors().into_iter().map(|t| t.name).collect();
    assert!(names
        .iter()
        .any(|n| n == "encoder.layer4.1.bn2.running_var"));
    assert!(names.iter().any(|n| n == "x_0_4.conv1.weight"));
    assert!(
        !names.iter().any(|n| n.starts_with("x_1_0.")),
        "taps have no block"
    );
    // Input channels are the encoder's: a one-channel image is its error.
    assert!(net
        .forward(&Tensor::zeros((1, 1, 64, 64), DType::F32, &dev).unwrap())
        .is_err());
    // 64x96 is a multiple of 2 * 2^4; 48 is not.
    assert!(net
        .forward(&Tensor::zeros((1, 3, 48, 64), DType::F32, &dev).unwrap())
        .is_err());

    let l2 = net.prune(Level::L2).unwrap();
    assert!(l2.encoder().is_some());
    assert_eq!(
        max_abs_diff(&l2.forward(&x).unwrap(), &out.logits()[1]),
        0.0,
        "L2 equals head X^{{0,2}}"
    );

    let path = std::env::temp_dir().join(format!("unetpp-enc-{}.safetensors", std::process::id()));
    net.save(&path).unwrap();
    let e = UNetPlusPlus::load(&path, &dev).unwrap_err();
    assert!(e.to_string().contains("with_encoder"), "{e}");
    let tensors = unetpp::weights::load_tensors(&path, &dev).unwrap();
    assert_eq!(tensors.len(), names.len());
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
    let encoder = ResNet::new(&rcfg, vb.pp("encoder")).unwrap();
    let back = UNetPlusPlus::with_encoder(&cfg, Arc::new(encoder), vb).unwrap();
    assert_eq!(
        max_abs_diff(&back.forward(&x).unwrap(), &net.forward(&x).unwrap()),
        0.0
    );
    std::fs::remove_file(&path).unwrap();
}
