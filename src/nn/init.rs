//! Seeded initial weights: candle draws new variables from an unseeded generator, so a run
//! could not be repeated. [`seeded_var_builder`] draws each one from its layer's own
//! initialisation hint with a generator seeded by a number and the variable's name.

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::init::NormalOrUniform;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A `VarBuilder` that creates a model's variables in `varmap` as a `VarMap` does, but draws
/// each new one from `seed` and its name, following the initialisation its layer asks for
/// (the `Init` hint: constants, normal, uniform, Kaiming with its fan and gain). A variable
/// already in `varmap` is reused, as `VarBuilder::from_varmap` does.
///
/// Each variable draws from its own stream, so the values depend only on the seed, the name
/// and the shape: two models that share a name (Mask R-CNN and Mask R-CNN++ share all but
/// the nested fusions) start with the same values there, whatever else they hold.
///
/// ```
/// use candle_core::{DType, Device};
/// use candle_nn::VarMap;
/// use unetpp::nn::seeded_var_builder;
/// use unetpp::prelude::*;
///
/// let cfg = UNetPlusPlusConfig::paper().widths([4, 8, 16]).depth(2).build()?;
/// let (a, b) = (VarMap::new(), VarMap::new());
/// let na = UNetPlusPlus::new(&cfg, seeded_var_builder(&a, 7, DType::F32, &Device::Cpu))?;
/// let nb = UNetPlusPlus::new(&cfg, seeded_var_builder(&b, 7, DType::F32, &Device::Cpu))?;
/// let w = |n: &UNetPlusPlus| n.named_tensors()[0].tensor.flatten_all()?.to_vec1::<f32>();
/// assert_eq!(w(&na)?, w(&nb)?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn seeded_var_builder(
    varmap: &VarMap,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> VarBuilder<'static> {
    VarBuilder::from_backend(
        Box::new(Seeded {
            varmap: varmap.clone(),
            seed,
        }),
        dtype,
        device.clone(),
    )
}

struct Seeded {
    varmap: VarMap,
    seed: u64,
}

impl SimpleBackend for Seeded {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let data = self.varmap.data();
        let mut vars = data
            .lock()
            .map_err(|_| candle_core::Error::Msg("the VarMap's lock is poisoned".into()))?;
        if let Some(var) = vars.get(name) {
            if var.shape() != &shape {
                candle_core::bail!(
                    "variable {name}: expected shape {:?}, found {:?}",
                    shape.dims(),
                    var.dims()
                );
            }
            return var.as_tensor().to_dtype(dtype);
        }
        let values = draw(init, &shape, stream(self.seed, name));
        let var = Var::from_tensor(&crate::ops::host_tensor(values, shape, dtype, dev)?)?;
        let t = var.as_tensor().clone();
        vars.insert(name.to_string(), var);
        Ok(t)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let data = self.varmap.data();
        let vars = data
            .lock()
            .map_err(|_| candle_core::Error::Msg("the VarMap's lock is poisoned".into()))?;
        match vars.get(name) {
            Some(v) => v.as_tensor().to_dtype(dtype),
            None => candle_core::bail!("variable {name} does not exist and has no shape to draw"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .map(|v| v.contains_key(name))
            .unwrap_or(false)
    }
}

/// The generator of the variable `name`: `seed` mixed with the name's FNV-1a hash.
fn stream(seed: u64, name: &str) -> StdRng {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    StdRng::seed_from_u64(seed ^ hash)
}

/// `shape.elem_count()` values drawn as `init` says (candle's and PyTorch's formulas).
fn draw(init: Init, shape: &Shape, mut rng: StdRng) -> Vec<f64> {
    let n = shape.elem_count();
    let normal = |rng: &mut StdRng, mean: f64, std: f64| -> Vec<f64> {
        (0..n).map(|_| mean + std * standard_normal(rng)).collect()
    };
    let uniform = |rng: &mut StdRng, lo: f64, up: f64| -> Vec<f64> {
        if up > lo {
            (0..n).map(|_| rng.random_range(lo..up)).collect()
        } else {
            vec![lo; n]
        }
    };
    match init {
        Init::Const(c) => vec![c; n],
        Init::Randn { mean, stdev } => normal(&mut rng, mean, stdev),
        Init::Uniform { lo, up } => uniform(&mut rng, lo, up),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(shape).max(1) as f64).sqrt();
            match dist {
                NormalOrUniform::Normal => normal(&mut rng, 0.0, std),
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    uniform(&mut rng, -bound, bound)
                }
            }
        }
    }
}

/// A standard normal draw (Box–Muller).
fn standard_normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}
