//! Training-mode batch normalisation (`ops::batch_norm_train` and the batch-norm layers built
//! on it): output, gradients and running statistics against PyTorch (fixture from
//! `scripts/make_batch_norm_fixtures.py`), against candle-nn's own layer on random shapes,
//! central differences, and errors.

mod common;

use candle_core::{DType, Device, ModuleT, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use common::{fixture, get, max_rel_diff};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use unetpp::nn::Norm;
use unetpp::nn::NormLayer;
use unetpp::ops::batch_norm_train;

/// Output and gradients of `sum(batch_norm_train(x, γ, β) * r)`.
fn run(x: &Tensor, g: &Tensor, b: &Tensor, r: &Tensor) -> [Tensor; 4] {
    let (xv, gv, bv) = (
        Var::from_tensor(x).unwrap(),
        Var::from_tensor(g).unwrap(),
        Var::from_tensor(b).unwrap(),
    );
    let y = batch_norm_train(xv.as_tensor(), gv.as_tensor(), bv.as_tensor(), 1e-5)
        .unwrap()
        .output;
    let grads = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    let grad = |v: &Var| grads.get(v.as_tensor()).unwrap().clone();
    [y.clone(), grad(&xv), grad(&gv), grad(&bv)]
}

#[test]
fn matches_pytorch_output_gradients_and_running_statistics() {
    let f = fixture("batch_norm.safetensors");
    let t = |k: &str| get(&f, k).clone();
    for dtype in [DType::F32, DType::F64] {
        let c = |k: &str| t(k).to_dtype(dtype).unwrap();
        let got = run(&c("x"), &c("gamma"), &c("beta"), &c("r"));
        for (what, ours) in ["y", "dx", "dgamma", "dbeta"].iter().zip(&got) {
            let d = max_rel_diff(ours, &c(what));
            assert!(d < 1e-4, "{dtype:?} {what}: {d}");
        }
        // The layer: running averages with momentum 0.1 and the unbiased variance.
        let varmap = VarMap::new();
        let layer = NormLayer::new(
            Norm::Batch,
            5,
            VarBuilder::from_varmap(&varmap, dtype, &Device::Cpu),
        )
        .unwrap();
        for (name, key) in [
            ("weight", "gamma"),
            ("bias", "beta"),
            ("running_mean", "rm0"),
            ("running_var", "rv0"),
        ] {
            varmap.data().lock().unwrap()[name].set(&c(key)).unwrap();
        }
        let y = layer.forward_t(&c("x"), true).unwrap();
        assert!(max_rel_diff(&y, &c("y")) < 1e-4, "{dtype:?} layer output");
        let data = varmap.data().lock().unwrap();
        for (name, key) in [("running_mean", "rm1"), ("running_var", "rv1")] {
            let d = max_rel_diff(data[name].as_tensor(), &c(key));
            assert!(d < 1e-5, "{dtype:?} {name}: {d}");
        }
    }
}

#[test]
fn matches_candle_nn_batch_norm_on_random_shapes() {
    let mut rng = StdRng::seed_from_u64(1);
    let dev = Device::Cpu;
    for case in 0..12 {
        let (n, c, h, w) = (
            rng.random_range(1..=3),
            rng.random_range(1..=6),
            rng.random_range(1..=9),
            rng.random_range(2..=9),
        );
        let mut draw = |len: usize, lo: f32, hi: f32| -> Vec<f32> {
            (0..len).map(|_| rng.random_range(lo..hi)).collect()
        };
        let x = Tensor::from_vec(draw(n * c * h * w, -3.0, 5.0), (n, c, h, w), &dev).unwrap();
        let g = Tensor::from_vec(draw(c, 0.5, 2.0), c, &dev).unwrap();
        let b = Tensor::from_vec(draw(c, -1.0, 1.0), c, &dev).unwrap();
        let r = Tensor::from_vec(draw(n * c * h * w, -1.0, 1.0), (n, c, h, w), &dev).unwrap();
        let ours = run(&x, &g, &b, &r);
        // candle-nn's layer with the same scale and shift, through candle's autograd.
        let (xv, gv, bv) = (
            Var::from_tensor(&x).unwrap(),
            Var::from_tensor(&g).unwrap(),
            Var::from_tensor(&b).unwrap(),
        );
        let bn = candle_nn::BatchNorm::new(
            c,
            Tensor::zeros(c, DType::F32, &dev).unwrap(),
            Tensor::ones(c, DType::F32, &dev).unwrap(),
            gv.as_tensor().clone(),
            bv.as_tensor().clone(),
            1e-5,
        )
        .unwrap();
        let y = bn.forward_t(xv.as_tensor(), true).unwrap();
        let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let theirs = [
            y.clone(),
            grads.get(xv.as_tensor()).unwrap().clone(),
            grads.get(gv.as_tensor()).unwrap().clone(),
            grads.get(bv.as_tensor()).unwrap().clone(),
        ];
        for (what, (a, b)) in ["y", "dx", "dgamma", "dbeta"]
            .iter()
            .zip(ours.iter().zip(&theirs))
        {
            // Differences of nearly equal sums: compare against the largest value.
            let scale = common::values(b).iter().fold(1f64, |m, v| m.max(v.abs()));
            let d = f64::from(common::max_abs_diff(a, b)) / scale;
            assert!(d < 1e-4, "case {case} ({n}x{c}x{h}x{w}) {what}: {d}");
        }
    }
}

#[test]
fn gradients_match_central_differences() {
    let f = fixture("batch_norm.safetensors");
    let t = |k: &str| get(&f, k).clone();
    let (x, g, b, r) = (t("x"), t("gamma"), t("beta"), t("r"));
    let [_, dx, dg, _] = run(&x, &g, &b, &r);
    let loss = |x: &Tensor, g: &Tensor| -> f64 {
        let y = batch_norm_train(x, g, &b, 1e-5).unwrap().output;
        (y.to_dtype(DType::F64).unwrap() * r.to_dtype(DType::F64).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    for (which, t, grad) in [(0, &x, &dx), (1, &g, &dg)] {
        let base = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let gr = grad.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for i in [0, base.len() / 2, base.len() - 1] {
            let at = |d: f32| {
                let mut v = base.clone();
                v[i] += d;
                let p = Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap();
                if which == 0 {
                    loss(&p, &g)
                } else {
                    loss(&x, &p)
                }
            };
            let fd = (at(1e-2) - at(-1e-2)) / 2e-2;
            assert!(
                (fd - gr[i] as f64).abs() < 2e-2 * fd.abs().max(0.1),
                "{} element {i}: fd {fd}, backward {}",
                ["x", "gamma"][which],
                gr[i]
            );
        }
    }
}

#[test]
fn untracked_inputs_get_no_gradient_and_bad_input_is_an_error() {
    let dev = Device::Cpu;
    let x = Tensor::arange(0f32, 24., &dev)
        .unwrap()
        .reshape((2, 3, 2, 2))
        .unwrap();
    let g = Var::from_tensor(&Tensor::ones(3, DType::F32, &dev).unwrap()).unwrap();
    let b = Tensor::zeros(3, DType::F32, &dev).unwrap();
    let y = batch_norm_train(&x, g.as_tensor(), &b, 1e-5)
        .unwrap()
        .output;
    let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&x).is_none());
    assert!(grads.get(&b).is_none());
    assert_eq!(grads.get(g.as_tensor()).unwrap().dims(), &[3]);

    assert!(batch_norm_train(&x.flatten_all().unwrap(), g.as_tensor(), &b, 1e-5).is_err());
    let two = Tensor::ones(2, DType::F32, &dev).unwrap();
    assert!(batch_norm_train(&x, &two, &b, 1e-5).is_err());
    assert!(batch_norm_train(&x, g.as_tensor(), &b, f64::NAN).is_err());
    let empty = Tensor::zeros((0, 3, 2, 2), DType::F32, &dev).unwrap();
    assert!(batch_norm_train(&empty, g.as_tensor(), &b, 1e-5).is_err());
    // One value per channel cannot be normalised in training mode (PyTorch refuses too).
    let varmap = VarMap::new();
    let layer = NormLayer::new(
        Norm::Batch,
        3,
        VarBuilder::from_varmap(&varmap, DType::F32, &dev),
    )
    .unwrap();
    let one = Tensor::ones((1, 3, 1, 1), DType::F32, &dev).unwrap();
    let e = layer.forward_t(&one, true).unwrap_err();
    assert!(e.to_string().contains("more than one value"), "{e}");
    assert!(layer.forward_t(&one, false).is_ok());
}

#[test]
fn half_precision_computes_in_f32() {
    let dev = Device::Cpu;
    // Many equal values: a half-precision sum would saturate.
    let x = (Tensor::ones((4, 2, 64, 64), DType::F32, &dev).unwrap() * 3.0).unwrap();
    let x = x
        .broadcast_add(&Tensor::new(&[[[[0f32]], [[1.]]]], &dev).unwrap())
        .unwrap();
    let g = Tensor::ones(2, DType::F32, &dev).unwrap();
    let b = Tensor::new(&[0.5f32, -0.5], &dev).unwrap();
    for dtype in [DType::F16, DType::BF16] {
        let c = |t: &Tensor| t.to_dtype(dtype).unwrap();
        let out = batch_norm_train(&c(&x), &c(&g), &c(&b), 1e-5).unwrap();
        assert_eq!(out.output.dtype(), dtype);
        assert_eq!(
            out.mean.to_vec1::<f32>().unwrap(),
            vec![3.0, 4.0],
            "{dtype:?}"
        );
        let y = common::values(&out.output);
        assert!(
            y[0] == 0.5 && y[y.len() - 1] == -0.5,
            "{dtype:?}: {} {}",
            y[0],
            y[y.len() - 1]
        );
    }
}

#[test]
fn instance_norm_on_the_fused_kernel_matches_group_norm() {
    // The instance-norm layer runs batch-norm's kernel over (1, N·C, H, W); candle-nn's group
    // norm with one group per channel, in f64, is the reference (output and every gradient).
    let mut rng = StdRng::seed_from_u64(2);
    let dev = Device::Cpu;
    for case in 0..8 {
        let (n, c, h, w) = (
            rng.random_range(1..=3),
            rng.random_range(1..=5),
            rng.random_range(1..=7),
            rng.random_range(2..=7),
        );
        let mut draw = |len: usize, lo: f64, hi: f64| -> Vec<f64> {
            (0..len).map(|_| rng.random_range(lo..hi)).collect()
        };
        let x64 = Tensor::from_vec(draw(n * c * h * w, -3.0, 5.0), (n, c, h, w), &dev).unwrap();
        let g64 = Tensor::from_vec(draw(c, 0.5, 2.0), c, &dev).unwrap();
        let b64 = Tensor::from_vec(draw(c, -1.0, 1.0), c, &dev).unwrap();
        let r64 = Tensor::from_vec(draw(n * c * h * w, -1.0, 1.0), (n, c, h, w), &dev).unwrap();
        let f32_ = |t: &Tensor| t.to_dtype(DType::F32).unwrap();

        let varmap = VarMap::new();
        let layer = NormLayer::new(
            Norm::Instance,
            c,
            VarBuilder::from_varmap(&varmap, DType::F32, &dev),
        )
        .unwrap();
        varmap.data().lock().unwrap()["weight"]
            .set(&f32_(&g64))
            .unwrap();
        varmap.data().lock().unwrap()["bias"]
            .set(&f32_(&b64))
            .unwrap();
        let xv = Var::from_tensor(&f32_(&x64)).unwrap();
        let y = layer.forward_t(xv.as_tensor(), false).unwrap();
        let grads = (&y * f32_(&r64))
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let vars = varmap.data().lock().unwrap().clone();
        let ours = [
            y.clone(),
            grads.get(xv.as_tensor()).unwrap().clone(),
            grads.get(vars["weight"].as_tensor()).unwrap().clone(),
            grads.get(vars["bias"].as_tensor()).unwrap().clone(),
        ];

        let (xr, gr, br) = (
            Var::from_tensor(&x64).unwrap(),
            Var::from_tensor(&g64).unwrap(),
            Var::from_tensor(&b64).unwrap(),
        );
        let gn =
            candle_nn::GroupNorm::new(gr.as_tensor().clone(), br.as_tensor().clone(), c, c, 1e-5)
                .unwrap();
        let yr = candle_core::Module::forward(&gn, xr.as_tensor()).unwrap();
        let gr_ = (&yr * &r64).unwrap().sum_all().unwrap().backward().unwrap();
        let theirs = [
            yr.clone(),
            gr_.get(xr.as_tensor()).unwrap().clone(),
            gr_.get(gr.as_tensor()).unwrap().clone(),
            gr_.get(br.as_tensor()).unwrap().clone(),
        ];
        for (what, (a, b)) in ["y", "dx", "dgamma", "dbeta"]
            .iter()
            .zip(ours.iter().zip(&theirs))
        {
            let scale = common::values(b).iter().fold(1f64, |m, v| m.max(v.abs()));
            let worst = common::values(a)
                .iter()
                .zip(common::values(b))
                .fold(0f64, |m, (p, q)| m.max((p - q).abs()));
            assert!(
                worst / scale < 1e-5,
                "case {case} ({n}x{c}x{h}x{w}) {what}: {}",
                worst / scale
            );
        }
    }
}
