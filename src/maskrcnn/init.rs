//! Seeded initial weights for a detector built on a `VarMap`, with torchvision's
//! initialisation of each part (candle's own initialisers cannot be seeded on the CPU).

use candle_core::Tensor;
use candle_nn::VarMap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::Result;

/// How one tensor starts.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Draw {
    Const(f32),
    Normal(f64),
    Uniform(f64),
}

/// torchvision's initialisation for the tensor `name` of shape `dims` in a Mask R-CNN:
/// ResNet and mask-branch kernels He-normal over fan-out, FPN (and nested FPN) kernels
/// uniform with bound `sqrt(3 / fan_in)` (Kaiming, a = 1), RPN kernels normal with standard
/// deviation 0.01, linear layers PyTorch's default (uniform with bound `1 / sqrt(fan_in)`,
/// biases too); other biases 0, batch-norm scales and running variances 1, shifts and means 0.
fn draw(name: &str, dims: &[usize]) -> Draw {
    let leaf = name.rsplit('.').next().unwrap_or(name);
    let fan_in = dims
        .get(1..)
        .map_or(1, |d| d.iter().product::<usize>())
        .max(1) as f64;
    let fan_out = (dims.first().copied().unwrap_or(1)
        * dims.get(2..).map_or(1, |d| d.iter().product::<usize>()))
    .max(1) as f64;
    let linear = name.contains("box_head") || name.contains("box_predictor");
    match (leaf, dims.len()) {
        ("weight", 2) if linear => Draw::Uniform(1.0 / fan_in.sqrt()),
        ("weight", n) if n >= 2 && name.contains(".fpn.") => Draw::Uniform((3.0 / fan_in).sqrt()),
        ("weight", n) if n >= 2 && name.starts_with("rpn.") => Draw::Normal(0.01),
        ("weight", n) if n >= 2 => Draw::Normal((2.0 / fan_out).sqrt()),
        ("weight", _) | ("running_var", _) => Draw::Const(1.0),
        _ => Draw::Const(0.0),
    }
}

/// Re-draws every variable of `varmap` (a detector built on it with [`super::MaskRcnn::new`])
/// from `seed` with torchvision's initialisation of each part (see the list in the source).
/// Each tensor draws from its own stream, seeded by `seed` and its name, so two detectors
/// that share a tensor name (Mask R-CNN and Mask R-CNN++ share all but the nested fusions)
/// start with the same values there.
///
/// ```
/// use candle_core::{DType, Device};
/// use candle_nn::{VarBuilder, VarMap};
/// use unetpp::maskrcnn::{MaskRcnn, MaskRcnnConfig};
///
/// let cfg = MaskRcnnConfig::compact(2, 16, 64)?;
/// let (a, b) = (VarMap::new(), VarMap::new());
/// let _ma = MaskRcnn::new(&cfg, VarBuilder::from_varmap(&a, DType::F32, &Device::Cpu))?;
/// let _mb = MaskRcnn::new(&cfg, VarBuilder::from_varmap(&b, DType::F32, &Device::Cpu))?;
/// unetpp::maskrcnn::init::seeded_init(&a, 3)?;
/// unetpp::maskrcnn::init::seeded_init(&b, 3)?;
/// let w = |m: &VarMap| m.data().lock().unwrap()["rpn.head.cls_logits.weight"]
///     .flatten_all().unwrap().to_vec1::<f32>().unwrap();
/// assert_eq!(w(&a), w(&b));
/// # Ok::<(), unetpp::Error>(())
/// ```
pub fn seeded_init(varmap: &VarMap, seed: u64) -> Result<()> {
    let data = crate::train::lock_vars(varmap)?;
    for (name, var) in data.iter() {
        let dims = var.dims().to_vec();
        let n = var.elem_count();
        let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let mut rng = StdRng::seed_from_u64(seed ^ hash);
        let mut d = draw(name, &dims);
        if let (Draw::Const(_), Some(w)) = (d, linear_weight_fan_in(&data, name)) {
            d = Draw::Uniform(1.0 / (w as f64).sqrt());
        }
        let values: Vec<f32> = match d {
            Draw::Const(c) => vec![c; n],
            Draw::Normal(std) => (0..n)
                .map(|_| (crate::train::init::normal(&mut rng) * std) as f32)
                .collect(),
            Draw::Uniform(b) => (0..n).map(|_| rng.random_range(-b..b) as f32).collect(),
        };
        let t = Tensor::from_vec(values, dims, var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}

/// For the bias of a linear layer, the fan-in of its weight.
fn linear_weight_fan_in(
    data: &std::collections::HashMap<String, candle_core::Var>,
    name: &str,
) -> Option<usize> {
    let stem = name.strip_suffix(".bias")?;
    if !(stem.contains("box_head") || stem.contains("box_predictor")) {
        return None;
    }
    let w = data.get(&format!("{stem}.weight"))?;
    (w.rank() == 2).then(|| w.dims()[1])
}
