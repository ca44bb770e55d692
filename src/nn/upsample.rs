use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::{Conv, ConvConfig, Upsample};
use crate::ops::resize_bilinear;
use crate::Result;

/// The up-sampling `U` in front of a node, built from an [`Upsample`].
#[derive(Debug, Clone)]
pub enum UpLayer {
    /// 2×2 transposed convolution, stride 2 (`weight` is `(c_in, c_out, 2, 2)`, plus `bias`).
    Transposed(Conv),
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
                UpLayer::Transposed(Conv::new(c_in, c_out, ConvConfig::transposed(2, 2), vb)?)
            }
            Upsample::Nearest => UpLayer::Nearest,
            Upsample::Bilinear { align_corners } => UpLayer::Bilinear { align_corners },
        })
    }

    /// Doubles the spatial size of `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        match self {
            UpLayer::Transposed(conv) => conv.forward(x),
            UpLayer::Nearest => crate::ops::upsample_nearest2d(x, 2),
            UpLayer::Bilinear { align_corners } => resize_bilinear(x, 2 * h, 2 * w, *align_corners),
        }
    }
}

impl Module for UpLayer {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Ok(UpLayer::forward(self, x)?)
    }
}
