use candle_core::{Result, Tensor};
use candle_nn::{ConvTranspose2d, ConvTranspose2dConfig, VarBuilder};

use super::{push, NamedTensor, Upsample};
use crate::ops::resize_bilinear;

/// The up-sampling `U` in front of a node, built from an [`Upsample`].
#[derive(Debug, Clone)]
pub enum UpLayer {
    /// 2×2 transposed convolution, stride 2 (`weight` is `(c_in, c_out, 2, 2)`, plus `bias`).
    Transposed(ConvTranspose2d),
    /// Nearest-neighbour ×2.
    Nearest,
    /// Bilinear ×2 through [`crate::ops::resize_bilinear`].
    Bilinear {
        /// PyTorch's `align_corners`.
        align_corners: bool,
    },
}

impl UpLayer {
    /// Builds the layer; only the transposed convolution has weights (from `c_in` to `c_out`).
    pub fn new(mode: Upsample, c_in: usize, c_out: usize, vb: VarBuilder) -> Result<Self> {
        Ok(match mode {
            Upsample::Transposed => {
                let cfg = ConvTranspose2dConfig {
                    stride: 2,
                    ..Default::default()
                };
                UpLayer::Transposed(candle_nn::conv_transpose2d(c_in, c_out, 2, cfg, vb)?)
            }
            Upsample::Nearest => UpLayer::Nearest,
            Upsample::Bilinear { align_corners } => UpLayer::Bilinear { align_corners },
        })
    }

    /// Doubles the spatial size of `x`.
    pub fn forward(&self, x: &Tensor) -> crate::Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        Ok(match self {
            UpLayer::Transposed(conv) => {
                crate::ops::conv_transpose2x2(x, conv.weight(), conv.bias())?
            }
            UpLayer::Nearest => crate::ops::upsample_nearest2d(x, 2)?,
            UpLayer::Bilinear { align_corners } => {
                resize_bilinear(x, 2 * h, 2 * w, *align_corners)?
            }
        })
    }

    pub(crate) fn named_tensors(&self, prefix: &str, out: &mut Vec<NamedTensor>) {
        if let UpLayer::Transposed(conv) = self {
            push(out, prefix, "weight", conv.weight(), true);
            if let Some(b) = conv.bias() {
                push(out, prefix, "bias", b, true);
            }
        }
    }

    pub(crate) fn detach(&self) -> Self {
        match self {
            UpLayer::Transposed(conv) => UpLayer::Transposed(ConvTranspose2d::new(
                conv.weight().detach(),
                conv.bias().map(|b| b.detach()),
                *conv.config(),
            )),
            other => other.clone(),
        }
    }
}
