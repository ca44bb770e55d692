//! Building blocks shared by every model: the convolution layer (the one place that chooses a
//! kernel), the double-conv block `H`, normalisation, activation, up-sampling, linear layers
//! and seeded initialisation.

mod block;
mod conv;
mod conv_bn;
mod init;
mod norm;
mod upsample;

pub use block::ConvBlock;
pub use conv::{Conv, Conv2d, ConvConfig};
pub use conv_bn::ConvBn;
pub use init::seeded_var_builder;
pub(crate) use norm::batch_norm_forward;
pub use norm::NormLayer;
pub use upsample::UpLayer;

use candle_core::Tensor;

/// Normalisation after each 3×3 convolution of a block.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Norm {
    /// No normalisation (the paper's network).
    None,
    /// Batch normalisation (eps 1e-5, momentum 0.1, affine; PyTorch's defaults).
    Batch,
    /// Instance normalisation with affine parameters (MONAI's default), computed as group
    /// normalisation with one group per channel.
    Instance,
    /// Group normalisation with the given number of groups (must divide every width).
    Group(usize),
}

/// Activation after each normalisation.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Activation {
    /// `max(x, 0)`.
    Relu,
    /// `max(x, 0) + slope · min(x, 0)` (MONAI uses slope 0.1).
    LeakyRelu(f64),
}

impl Activation {
    /// Applies the activation.
    pub fn apply(&self, x: &Tensor) -> crate::Result<Tensor> {
        Ok(match *self {
            Activation::Relu => crate::ops::relu(x)?,
            Activation::LeakyRelu(slope) => crate::ops::leaky_relu(x, slope)?,
        })
    }
}

/// How a node `X^{i,j}` brings `X^{i+1,j-1}` up to its resolution (the paper's `U`).
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Upsample {
    /// A 2×2 transposed convolution with stride 2 from `f_{i+1}` to `f_i` channels (the paper).
    Transposed,
    /// Nearest-neighbour ×2; channels unchanged (segmentation_models_pytorch).
    Nearest,
    /// Bilinear ×2; channels unchanged (NestedUNet uses `align_corners = true`).
    Bilinear {
        /// PyTorch's `align_corners`.
        align_corners: bool,
    },
}

impl Upsample {
    /// Whether the up-sampled map keeps the channel count of the coarser level.
    pub fn keeps_channels(&self) -> bool {
        !matches!(self, Upsample::Transposed)
    }
}

/// A named tensor of a model, as written to a weight file.
#[derive(Debug, Clone)]
pub struct NamedTensor {
    /// Stable name (see `docs/weights.md`).
    pub name: String,
    /// The tensor.
    pub tensor: Tensor,
    /// `false` for buffers such as batch-norm running statistics.
    pub trainable: bool,
}

/// A fully connected layer `in_features → out_features` as PyTorch's `nn.Linear` builds it:
/// `weight (out, in)` and `bias (out)`, both drawn uniform in `±1 / sqrt(in_features)` when
/// the `VarBuilder` creates them.
pub fn linear(
    in_features: usize,
    out_features: usize,
    vb: candle_nn::VarBuilder,
) -> crate::Result<candle_nn::Linear> {
    let bound = 1.0 / (in_features.max(1) as f64).sqrt();
    let init = candle_nn::Init::Uniform {
        lo: -bound,
        up: bound,
    };
    let weight = vb.get_with_hints((out_features, in_features), "weight", init)?;
    let bias = vb.get_with_hints(out_features, "bias", init)?;
    Ok(candle_nn::Linear::new(weight, Some(bias)))
}
