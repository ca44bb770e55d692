//! The biased convolutions of the feature pyramids and the RPN head, and the initialisation
//! torchvision gives the pyramids' ones.

use candle_nn::{Init, VarBuilder};

use crate::nn::{Conv, ConvConfig};
use crate::{Error, Result};

/// A 1×1 or 3×3 (padding `k / 2`) convolution with bias, stride 1: `weight (c_out, c_in, k,
/// k)` drawn as `init` says when `vb` creates it, `bias (c_out)` from zero.
pub(super) fn conv(
    c_in: usize,
    c_out: usize,
    k: usize,
    init: Init,
    vb: VarBuilder,
) -> Result<Conv> {
    if k != 1 && k != 3 {
        return Err(Error::config("kernel", format!("1 or 3, got {k}")));
    }
    Conv::new(c_in, c_out, ConvConfig::same(k).weight_init(init), vb)
}

/// Kaiming-uniform initialisation with `a = 1` (bound `sqrt(3 / fan_in)`), torchvision's for
/// FPN convolutions.
pub(super) fn kaiming_uniform_a1(fan_in: usize) -> Init {
    let bound = (3.0 / fan_in.max(1) as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}
