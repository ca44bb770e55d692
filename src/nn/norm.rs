use candle_core::{DType, Module, ModuleT, Result, Tensor};
use candle_nn::{BatchNorm, BatchNormConfig, GroupNorm, VarBuilder};

use super::Norm;

const EPS: f64 = 1e-5;

/// A normalisation layer built from a [`Norm`].
#[derive(Debug, Clone)]
pub enum NormLayer {
    /// No normalisation.
    Identity,
    /// Batch normalisation; running statistics are updated in training mode.
    Batch(BatchNorm),
    /// Group (or instance) normalisation; `weight` and `bias` are kept for saving.
    Group {
        /// The layer.
        layer: GroupNorm,
        /// Its scale.
        weight: Tensor,
        /// Its shift.
        bias: Tensor,
        /// Number of groups (the channel count for instance normalisation).
        groups: usize,
    },
}

impl NormLayer {
    /// Builds the layer for `channels` channels; weights are read under `vb`.
    pub fn new(norm: Norm, channels: usize, vb: VarBuilder) -> crate::Result<Self> {
        Ok(match norm {
            Norm::None => NormLayer::Identity,
            Norm::Batch => {
                let cfg = BatchNormConfig {
                    eps: EPS,
                    remove_mean: true,
                    affine: true,
                    momentum: 0.1,
                };
                NormLayer::Batch(candle_nn::batch_norm(channels, cfg, vb)?)
            }
            Norm::Instance | Norm::Group(_) => {
                let groups = match norm {
                    Norm::Group(g) => g,
                    _ => channels,
                };
                let weight = vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.))?;
                let bias = vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.))?;
                let layer = GroupNorm::new(weight.clone(), bias.clone(), channels, groups, EPS)?;
                NormLayer::Group {
                    layer,
                    weight,
                    bias,
                    groups,
                }
            }
        })
    }
}

impl ModuleT for NormLayer {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            NormLayer::Identity => Ok(x.clone()),
            NormLayer::Batch(bn) => batch_norm_forward(bn, x, train),
            NormLayer::Group {
                layer,
                weight,
                bias,
                groups,
            } => {
                let fused = crate::ops::cpu_kernels(x.device()) && x.dtype() == DType::F32;
                if fused && x.rank() == 4 && *groups == weight.dim(0)? {
                    instance_norm(x, weight, bias)
                } else {
                    layer.forward(x)
                }
            }
        }
    }
}

/// Instance norm of `(N, C, H, W)` in `f32` on the CPU: batch-norm's fused training kernel
/// ([`crate::ops::batch_norm_train`], forward and backward) over `(1, N·C, H, W)` (every image
/// and channel its own statistics), with the scale and shift repeated per image, where
/// candle's group norm takes some ten tensor ops. Elsewhere candle's group norm runs: its
/// contiguous reductions are more accurate than the composed batch-norm's strided ones.
fn instance_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (gamma, beta) = if n == 1 {
        (gamma.clone(), beta.clone())
    } else {
        (gamma.repeat(n)?, beta.repeat(n)?)
    };
    let out = crate::ops::batch_norm_train(&x.reshape((1, n * c, h, w))?, &gamma, &beta, EPS)?;
    out.output.reshape((n, c, h, w))
}

/// `bn` applied to `x`: with batch statistics when `train` (on the fused
/// [`crate::ops::batch_norm_train`] for `(N, C, H, W)` inputs of an affine batch-norm, the
/// running averages updated as PyTorch updates them: momentum, unbiased variance), with the
/// running statistics otherwise.
pub(crate) fn batch_norm_forward(bn: &BatchNorm, x: &Tensor, train: bool) -> Result<Tensor> {
    let (gamma, beta) = match bn.weight_and_bias() {
        Some(wb) if train && x.rank() == 4 => wb,
        _ => return bn.forward_t(x, train),
    };
    let (n, _, h, w) = x.dims4()?;
    let count = n * h * w;
    if count < 2 {
        candle_core::bail!(
            "batch-norm in training mode needs more than one value per channel, got an input of {:?}",
            x.dims()
        );
    }
    let out = crate::ops::batch_norm_train(x, gamma, beta, bn.eps())?;
    let (rm, rv) = (bn.running_mean(), bn.running_var());
    let m = bn.momentum();
    let unbias = count as f64 / (count as f64 - 1.0);
    let mean = ((rm.detach() * (1.0 - m))? + (out.mean.to_dtype(rm.dtype())? * m)?)?;
    let var = ((rv.detach() * (1.0 - m))? + (out.var.to_dtype(rv.dtype())? * (m * unbias))?)?;
    // In place: the running statistics are the layer's variables.
    rm.slice_set(&mean, 0, 0)?;
    rv.slice_set(&var, 0, 0)?;
    Ok(out.output)
}
