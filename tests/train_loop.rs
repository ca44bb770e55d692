//! The training pieces together: `train_step` lowers the loss of UNet++ and U-Net on the
//! synthetic data set, binary and multi-class, and `evaluate` scores every held-out image in
//! accurate and fast mode.

use candle_core::{DType, Device};
use candle_nn::{ParamsAdamW, VarMap};
use unetpp::data::loader::{Augment, DataLoader};
use unetpp::data::synthetic::{SyntheticConfig, SyntheticDataset};
use unetpp::loss::{BceDice, CeDice, DeepSupervisionLoss, SegmentationLoss};
use unetpp::prelude::*;
use unetpp::train::{evaluate, predict, train_step, AdamW, Mode};

fn data(samples: usize, classes: usize, seed: u64) -> SyntheticDataset {
    SyntheticDataset::new(
        SyntheticConfig::builder()
            .samples(samples)
            .height(32)
            .width(32)
            .num_classes(classes)
            .objects(1..=3)
            .min_radius(3.0)
            .seed(seed)
            .build()
            .unwrap(),
    )
    .unwrap()
}

/// Trains for `epochs` and returns the mean loss of the first and of the last epoch.
fn fit<L: SegmentationLoss>(
    model: &dyn MultiHeadSegmenter,
    varmap: &VarMap,
    loss: &DeepSupervisionLoss<L>,
    train: &DataLoader<&SyntheticDataset>,
    epochs: usize,
) -> (f32, f32) {
    let mut opt = AdamW::new(
        varmap,
        ParamsAdamW {
            lr: 3e-3,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let mut means = Vec::new();
    for epoch in 0..epochs {
        let mut sum = 0.0;
        for batch in train.batches(epoch, &Device::Cpu) {
            sum += train_step(model, loss, &mut opt, &batch.unwrap()).unwrap();
        }
        means.push(sum / train.num_batches() as f32);
    }
    (means[0], means[epochs - 1])
}

#[test]
fn unetpp_with_deep_supervision_learns_and_is_scored_in_every_mode() {
    let dev = Device::Cpu;
    let (train_set, test_set) = (data(32, 2, 1), data(12, 2, 2));
    let train = DataLoader::new(&train_set, 8)
        .unwrap()
        .shuffle(3)
        .augment(Augment::flips_and_rotations());
    let test = DataLoader::new(&test_set, 5).unwrap();
    let cfg = UNetPlusPlusConfig::paper()
        .widths([8, 16, 32])
        .depth(2)
        .build()
        .unwrap();
    let varmap = VarMap::new();
    let net = UNetPlusPlus::new(
        &cfg,
        unetpp::nn::seeded_var_builder(&varmap, 11, DType::F32, &dev),
    )
    .unwrap();
    let (first, last) = fit(
        &net,
        &varmap,
        &DeepSupervisionLoss::new(BceDice::paper()),
        &train,
        15,
    );
    assert!(last < 0.8 * first, "loss {first} -> {last}");

    let accurate = evaluate(&net, &test, &dev, Mode::Accurate).unwrap();
    assert_eq!(
        accurate.images(),
        12,
        "every test image is scored, the last batch too"
    );
    assert!(accurate.mean_iou() > 0.5, "IoU {}", accurate.mean_iou());
    let fast = evaluate(&net, &test, &dev, Mode::Fast(2)).unwrap();
    let last_head = evaluate(&net, &test, &dev, Mode::Last).unwrap();
    assert_eq!(fast.per_class_iou(), last_head.per_class_iou());
    // Fast mode on head 1 is what the network pruned to L1 predicts.
    let l1 = net.prune(Level::L1).unwrap();
    let b = test.batches(0, &dev).next().unwrap().unwrap();
    let from_full = predict(&net, &b.images, Mode::Fast(1)).unwrap();
    let from_pruned = predict(&l1, &b.images, Mode::Last).unwrap();
    assert_eq!(
        from_full.flatten_all().unwrap().to_vec1::<u32>().unwrap(),
        from_pruned.flatten_all().unwrap().to_vec1::<u32>().unwrap()
    );
    assert!(
        evaluate(&net, &test, &dev, Mode::Fast(3)).is_err(),
        "no head X^{{0,3}}"
    );
}

#[test]
fn u_net_learns_multiclass_shapes_with_ce_dice() {
    let dev = Device::Cpu;
    let (train_set, test_set) = (data(32, 3, 5), data(8, 3, 6));
    let train = DataLoader::new(&train_set, 8).unwrap().shuffle(1);
    let test = DataLoader::new(&test_set, 8).unwrap();
    let cfg = UNet::paper()
        .widths([8, 16, 32])
        .depth(2)
        .num_classes(3)
        .build()
        .unwrap();
    let varmap = VarMap::new();
    let net = UNet::new(
        &cfg,
        unetpp::nn::seeded_var_builder(&varmap, 11, DType::F32, &dev),
    )
    .unwrap();
    let (first, last) = fit(
        &net,
        &varmap,
        &DeepSupervisionLoss::new(CeDice::default()),
        &train,
        // At 15 epochs this tiny network finds a shape class from some initial draws and not
        // from others; at 35 it does from every one of seeds 1-6 and 11 (smallest best-class
        // IoU 0.18), so the test does not hang on a lucky seed.
        35,
    );
    assert!(last < 0.5 * first, "loss {first} -> {last}");
    let m = evaluate(&net, &test, &dev, Mode::Last).unwrap();
    assert_eq!(m.num_classes(), 3);
    let iou = m.per_class_iou();
    eprintln!("U-Net loss {first} -> {last}, IoU {iou:?}");
    assert!(iou[0] > 0.85, "background IoU {iou:?}");
    assert!(
        iou[1..].iter().any(|&x| x > 0.1),
        "no shape class found: {iou:?}"
    );
}

/// A NaN in the input makes the loss NaN: the step is an `Error::Diverged`, and neither the
/// weights nor the optimizer's state change (a checkpoint saved next keeps the good weights).
#[test]
fn a_non_finite_loss_leaves_weights_and_optimizer_untouched() {
    let dev = Device::Cpu;
    let set = data(4, 2, 3);
    let loader = DataLoader::new(&set, 4).unwrap();
    let cfg = UNetPlusPlusConfig::paper()
        .widths([4, 8, 16])
        .depth(2)
        .build()
        .unwrap();
    let varmap = VarMap::new();
    let net = UNetPlusPlus::new(
        &cfg,
        unetpp::nn::seeded_var_builder(&varmap, 5, DType::F32, &dev),
    )
    .unwrap();
    let loss = DeepSupervisionLoss::new(BceDice::default());
    let mut opt = AdamW::new(&varmap, ParamsAdamW::default()).unwrap();
    let batch = loader.batches(0, &dev).next().unwrap().unwrap();
    train_step(&net, &loss, &mut opt, &batch).unwrap();
    let snapshot = |vm: &VarMap| -> Vec<(String, Vec<f32>)> {
        let data = vm.data().lock().unwrap();
        let mut v: Vec<_> = data
            .iter()
            .map(|(k, t)| {
                (
                    k.clone(),
                    t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let (weights, state) = (snapshot(&varmap), opt.state());
    let mut bad = batch.clone();
    let mut pixels = bad.images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    pixels[17] = f32::NAN;
    bad.images = candle_core::Tensor::from_vec(pixels, bad.images.shape(), &dev).unwrap();
    let err = train_step(&net, &loss, &mut opt, &bad).unwrap_err();
    assert!(matches!(err, Error::Diverged(_)), "{err}");
    assert_eq!(snapshot(&varmap), weights, "the weights changed");
    assert_eq!(opt.step_count(), state.step);
    for (name, m) in &state.m {
        let after = &opt.state().m[name];
        let d = (after - m)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0, "the first moment of {name} changed");
    }
    // A finite loss whose gradient is not: √0 = 0, but its derivative is infinite.
    let w = varmap.data().lock().unwrap()["head_2.bias"].clone();
    let zero = (w.as_tensor() - w.as_tensor().detach()).unwrap();
    let finite = zero.sqrt().unwrap().sum_all().unwrap();
    assert_eq!(finite.to_scalar::<f32>().unwrap(), 0.0);
    let err = opt.backward_step(&finite).unwrap_err();
    assert!(
        matches!(&err, Error::Diverged(m) if m.contains("head_2.bias")),
        "{err}"
    );
    assert_eq!(snapshot(&varmap), weights, "the weights changed");
    // The good batch still trains.
    train_step(&net, &loss, &mut opt, &batch).unwrap();
}
