//! Checkpoints: our AdamW equals candle's, a resumed run takes exactly the steps of an
//! uninterrupted one, an interrupted save leaves the old checkpoint intact, and bad files or
//! mismatched models are errors.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, ParamsAdamW, VarBuilder, VarMap};
use common::{small, tmp_path};
use unetpp::data::synthetic::circles_and_squares;
use unetpp::loss::DeepSupervisionLoss;
use unetpp::prelude::*;
use unetpp::train::{save_checkpoint, AdamW, Checkpoint};

fn params() -> ParamsAdamW {
    ParamsAdamW {
        lr: 1e-3,
        weight_decay: 1e-2,
        ..Default::default()
    }
}

/// A small network whose initial weights come from `seed` (candle's own initialisers cannot
/// be seeded).
fn seeded_net(cfg: &UNetPlusPlusConfig, seed: u64) -> (VarMap, UNetPlusPlus) {
    let (varmap, net) = common::build(cfg);
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<_> = data.keys().cloned().collect();
    names.sort();
    for name in names {
        let var = &data[&name];
        let n = var.elem_count();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-0.2f32..0.2)).collect();
        var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap())
            .unwrap();
    }
    drop(data);
    (varmap, net)
}

fn train_steps(net: &UNetPlusPlus, opt: &mut AdamW, steps: std::ops::Range<u64>) {
    let loss = DeepSupervisionLoss::paper();
    for step in steps {
        let b = circles_and_squares(2, 32, 32, step, &Device::Cpu).unwrap();
        let out = net.forward_heads(&b.images, true).unwrap();
        opt.backward_step(&loss.compute(&out, &b.masks).unwrap())
            .unwrap();
    }
}

fn snapshot(varmap: &VarMap) -> HashMap<String, Vec<f32>> {
    let data = varmap.data().lock().unwrap();
    data.iter()
        .map(|(n, v)| {
            (
                n.clone(),
                v.as_tensor().flatten_all().unwrap().to_vec1().unwrap(),
            )
        })
        .collect()
}

#[test]
fn adamw_takes_the_same_steps_as_candles() {
    let cfg = small().depth(2).widths([4, 6, 8]).build().unwrap();
    let (vm_a, net_a) = seeded_net(&cfg, 1);
    let (vm_b, net_b) = seeded_net(&cfg, 1);
    let mut ours = AdamW::new(&vm_a, params()).unwrap();
    let mut theirs = candle_nn::AdamW::new(vm_b.all_vars(), params()).unwrap();
    let loss = DeepSupervisionLoss::paper();
    for step in 0..3 {
        let b = circles_and_squares(2, 16, 16, step, &Device::Cpu).unwrap();
        let la = loss
            .compute(&net_a.forward_heads(&b.images, true).unwrap(), &b.masks)
            .unwrap();
        ours.backward_step(&la).unwrap();
        let lb = loss
            .compute(&net_b.forward_heads(&b.images, true).unwrap(), &b.masks)
            .unwrap();
        theirs.backward_step(&lb).unwrap();
    }
    assert_eq!(snapshot(&vm_a), snapshot(&vm_b));
    assert_eq!(ours.step_count(), 3);
}

/// The CPU path updates the moments in place: a state taken earlier, and the state a run was
/// loaded from, must not change with later steps.
#[test]
fn a_saved_state_does_not_change_with_later_steps() {
    let cfg = small().depth(2).widths([4, 6, 8]).build().unwrap();
    let (varmap, net) = seeded_net(&cfg, 3);
    let mut opt = AdamW::new(&varmap, params()).unwrap();
    train_steps(&net, &mut opt, 0..2);
    let values = |state: &unetpp::train::AdamWState| -> Vec<(String, Vec<f32>)> {
        let mut all: Vec<(String, Vec<f32>)> = state
            .m
            .iter()
            .chain(&state.v)
            .map(|(n, t)| (n.clone(), t.flatten_all().unwrap().to_vec1().unwrap()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.partial_cmp(&b.1).unwrap()));
        all
    };
    let state = opt.state();
    let before = values(&state);
    assert!(!before.is_empty());
    train_steps(&net, &mut opt, 2..4);
    assert_eq!(values(&state), before, "a state taken earlier changed");

    let (varmap2, net2) = seeded_net(&cfg, 3);
    let mut opt2 = AdamW::new(&varmap2, params()).unwrap();
    opt2.load_state(&state).unwrap();
    train_steps(&net2, &mut opt2, 2..4);
    assert_eq!(values(&state), before, "the state loaded from changed");
    assert_ne!(values(&opt2.state()), before, "the moments did not move");
}

#[test]
fn resuming_from_a_checkpoint_takes_the_same_steps() {
    let cfg = small().norm(Norm::Batch).build().unwrap();
    let path = tmp_path("resume.safetensors");

    let (vm_straight, net_straight) = seeded_net(&cfg, 7);
    let mut opt_straight = AdamW::new(&vm_straight, params()).unwrap();
    train_steps(&net_straight, &mut opt_straight, 0..4);

    let (vm_first, net_first) = seeded_net(&cfg, 7);
    let mut opt_first = AdamW::new(&vm_first, params()).unwrap();
    train_steps(&net_first, &mut opt_first, 0..2);
    let extra = HashMap::from([("model".to_string(), "unetpp".to_string())]);
    save_checkpoint(&path, &vm_first, &opt_first, 2, &extra).unwrap();

    // A fresh process: other initial weights, a new optimizer, then the checkpoint.
    let (vm_resumed, net_resumed) = seeded_net(&cfg, 99);
    let mut opt_resumed = AdamW::new(&vm_resumed, params()).unwrap();
    let ckpt = Checkpoint::load(&path, &Device::Cpu).unwrap();
    assert_eq!(ckpt.epoch, 2);
    assert_eq!(ckpt.optimizer.step, 2);
    assert_eq!(ckpt.extra, extra);
    ckpt.restore(&vm_resumed, &mut opt_resumed).unwrap();
    assert_eq!(snapshot(&vm_resumed), snapshot(&vm_first));
    train_steps(&net_resumed, &mut opt_resumed, 2..4);

    let (straight, resumed) = (snapshot(&vm_straight), snapshot(&vm_resumed));
    assert_eq!(straight.len(), resumed.len());
    for (name, s) in &straight {
        assert_eq!(s, &resumed[name], "{name} differs after resuming");
    }
    std::fs::remove_file(&path).unwrap();
}

fn tensors_equal(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> bool {
    a.len() == b.len()
        && a.iter().all(|(n, t)| {
            b.get(n).is_some_and(|u| {
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                    == u.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            })
        })
}

#[test]
fn an_interrupted_save_leaves_the_old_checkpoint_intact() {
    let cfg = small().depth(2).widths([4, 6, 8]).build().unwrap();
    let dir = tmp_path("interrupted");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("last.safetensors");
    let (varmap, net) = seeded_net(&cfg, 3);
    let mut opt = AdamW::new(&varmap, params()).unwrap();
    train_steps(&net, &mut opt, 0..1);
    save_checkpoint(&path, &varmap, &opt, 1, &HashMap::new()).unwrap();
    let before = Checkpoint::load(&path, &Device::Cpu).unwrap();
    let bytes_before = std::fs::read(&path).unwrap();

    train_steps(&net, &mut opt, 1..2);
    // An error injected half-way through writing.
    let e = unetpp::weights::atomic_write(&path, |f| {
        use std::io::Write;
        f.write_all(&bytes_before[..bytes_before.len() / 2])
            .unwrap();
        Err(unetpp::Error::Shape("injected failure".into()))
    })
    .unwrap_err();
    assert!(e.to_string().contains("injected"));
    // A save that cannot create its temporary file: beside a 252-byte name, the temporary
    // name (the same with a dot, the process id, a counter and `.tmp`) exceeds the file
    // system's 255-byte limit. The old file stays as it was.
    let long = dir.join(format!("{}.safetensors", "c".repeat(240)));
    std::fs::write(&long, &bytes_before).unwrap();
    assert!(save_checkpoint(&long, &varmap, &opt, 2, &HashMap::new()).is_err());
    assert_eq!(std::fs::read(&long).unwrap(), bytes_before);
    std::fs::remove_file(&long).unwrap();

    assert_eq!(std::fs::read(&path).unwrap(), bytes_before);
    let after = Checkpoint::load(&path, &Device::Cpu).unwrap();
    assert_eq!(after.epoch, 1);
    assert!(tensors_equal(&before.model, &after.model));
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("last.safetensors")],
        "no temporary file left"
    );

    // And a save that succeeds replaces it.
    save_checkpoint(&path, &varmap, &opt, 2, &HashMap::new()).unwrap();
    assert_eq!(Checkpoint::load(&path, &Device::Cpu).unwrap().epoch, 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_checkpoints_and_mismatched_models_are_errors() {
    let cfg = small().depth(2).widths([4, 6, 8]).build().unwrap();
    let (varmap, net) = seeded_net(&cfg, 3);
    let mut opt = AdamW::new(&varmap, params()).unwrap();
    train_steps(&net, &mut opt, 0..1);
    let path = tmp_path("bad-ckpt.safetensors");
    save_checkpoint(&path, &varmap, &opt, 1, &HashMap::new()).unwrap();

    // Truncated.
    let bytes = std::fs::read(&path).unwrap();
    let cut = tmp_path("cut-ckpt.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let e = Checkpoint::load(&cut, &Device::Cpu).unwrap_err();
    assert!(matches!(e, unetpp::Error::Weights { .. }), "{e}");
    // A plain weight file is not a checkpoint.
    let plain = tmp_path("plain.safetensors");
    net.save(&plain).unwrap();
    let e = Checkpoint::load(&plain, &Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("checkpoint"), "{e}");
    // Another configuration.
    let other = small().depth(2).widths([4, 6, 10]).build().unwrap();
    let varmap2 = VarMap::new();
    let _net2 = UNetPlusPlus::new(
        &other,
        VarBuilder::from_varmap(&varmap2, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let mut opt2 = AdamW::new(&varmap2, params()).unwrap();
    let ckpt = Checkpoint::load(&path, &Device::Cpu).unwrap();
    let e = ckpt.restore(&varmap2, &mut opt2).unwrap_err();
    assert!(e.to_string().contains("shape"), "{e}");
    assert_eq!(opt2.step_count(), 0, "a failed restore changes nothing");
    for p in [path, cut, plain] {
        std::fs::remove_file(p).unwrap();
    }
}

#[test]
fn optimizer_rejects_nonsense() {
    let varmap = VarMap::new();
    let bad = ParamsAdamW {
        beta1: 1.5,
        ..Default::default()
    };
    assert!(AdamW::new(&varmap, bad).is_err());
    let neg = ParamsAdamW {
        lr: -1.0,
        ..Default::default()
    };
    assert!(AdamW::new(&varmap, neg).is_err());
}

#[test]
fn optimizer_state_keeps_no_graph_alive() {
    // Moments computed from gradients must not hold on to the step's graph: if they did,
    // each step's graph would chain to the next and memory would grow without bound.
    let cfg = small().depth(2).widths([4, 6, 8]).build().unwrap();
    let (varmap, net) = seeded_net(&cfg, 3);
    let mut opt = AdamW::new(&varmap, params()).unwrap();
    train_steps(&net, &mut opt, 0..2);
    let state = opt.state();
    assert!(!state.m.is_empty());
    for (name, t) in state.m.iter().chain(state.v.iter()) {
        assert!(!t.track_op(), "the moment of {name} records a graph");
    }
}
