//! Seeded initial weights (candle's own initialisers draw from an unseeded generator).

use candle_core::Tensor;
use candle_nn::VarMap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::Result;

/// Re-draws every variable of `varmap` from `seed`, so that a run can be repeated exactly:
/// convolution kernels (rank ≥ 2, named `…weight`) from He's normal distribution with
/// standard deviation `sqrt(2 / fan_in)`, `fan_in` being the product of every dimension but
/// the first (PyTorch's convention, transposed kernels included); biases and batch-norm
/// shifts and running means 0; batch-norm scales and running variances 1. Variables are
/// visited in name order, so the draw depends only on the names and shapes.
///
/// ```
/// use candle_core::{DType, Device};
/// use candle_nn::{VarBuilder, VarMap};
/// use unetpp::prelude::*;
///
/// let cfg = UNetPlusPlusConfig::paper().widths([4, 8, 16]).depth(2).build()?;
/// let (a, b) = (VarMap::new(), VarMap::new());
/// let _na = UNetPlusPlus::new(&cfg, VarBuilder::from_varmap(&a, DType::F32, &Device::Cpu))?;
/// let _nb = UNetPlusPlus::new(&cfg, VarBuilder::from_varmap(&b, DType::F32, &Device::Cpu))?;
/// unetpp::train::seeded_init(&a, 7)?;
/// unetpp::train::seeded_init(&b, 7)?;
/// let w = |m: &VarMap| m.data().lock().unwrap()["x_0_0.conv1.weight"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
/// assert_eq!(w(&a), w(&b));
/// # Ok::<(), unetpp::Error>(())
/// ```
pub fn seeded_init(varmap: &VarMap, seed: u64) -> Result<()> {
    let data = super::lock_vars(varmap)?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = StdRng::seed_from_u64(seed);
    for name in names {
        let var = &data[name];
        let dims = var.dims();
        let n = var.elem_count();
        let leaf = name.rsplit('.').next().unwrap_or(name);
        let values: Vec<f32> = match leaf {
            "weight" if dims.len() >= 2 => {
                let fan_in: usize = dims[1..].iter().product();
                let std = (2.0 / fan_in.max(1) as f64).sqrt();
                (0..n).map(|_| (normal(&mut rng) * std) as f32).collect()
            }
            "weight" | "running_var" => vec![1.0; n],
            _ => vec![0.0; n],
        };
        let t = Tensor::from_vec(values, dims, var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}

/// A standard normal draw (Box–Muller).
pub(crate) fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}
