//! Building blocks shared by every model: the double-conv block `H`, normalisation,
//! activation and up-sampling.

mod block;
mod norm;
mod upsample;

pub use block::ConvBlock;
pub use norm::NormLayer;
pub(crate) use norm::{batch_norm_forward, fold_batch_norm};
pub use upsample::UpLayer;

use candle_core::Tensor;

/// Normalisation after each 3×3 convolution of a block.
#[derive(Debug, Clone, Copy, PartialEq)]
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
pub enum Activation {
    /// `max(x, 0)`.
    Relu,
    /// `max(x, 0) + slope · min(x, 0)` (MONAI uses slope 0.1).
    LeakyRelu(f64),
}

impl Activation {
    /// Applies the activation.
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match *self {
            Activation::Relu => x.relu(),
            Activation::LeakyRelu(slope) => candle_nn::ops::leaky_relu(x, slope),
        }
    }
}

/// How a node `X^{i,j}` brings `X^{i+1,j-1}` up to its resolution (the paper's `U`).
#[derive(Debug, Clone, Copy, PartialEq)]
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

/// `prefix.name`, or `name` alone when `prefix` is empty.
pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

pub(crate) fn push(
    out: &mut Vec<NamedTensor>,
    prefix: &str,
    name: &str,
    tensor: &Tensor,
    trainable: bool,
) {
    out.push(NamedTensor {
        name: format!("{prefix}.{name}"),
        tensor: tensor.clone(),
        trainable,
    });
}
