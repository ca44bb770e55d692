use candle_core::{ModuleT, Tensor};
use candle_nn::{Dropout, VarBuilder};

use super::{Activation, Conv, ConvConfig, Norm, NormLayer};
use crate::Result;

/// The paper's `H`: (3×3 conv → norm → activation → dropout) twice.
///
/// Weight names under the block's prefix: `conv1.weight`, `conv1.bias` (when the convolutions
/// have a bias), `norm1.*`, and the same with `2`.
#[derive(Debug, Clone)]
pub struct ConvBlock {
    conv1: Conv,
    norm1: NormLayer,
    conv2: Conv,
    norm2: NormLayer,
    activation: Activation,
    dropout: f32,
}

impl ConvBlock {
    /// Builds a block from `c_in` to `c_out` channels.
    pub fn new(
        c_in: usize,
        c_out: usize,
        norm: Norm,
        activation: Activation,
        dropout: f32,
        bias: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let cfg = ConvConfig::same(3).bias(bias);
        Ok(Self {
            conv1: Conv::new(c_in, c_out, cfg, vb.pp("conv1"))?,
            norm1: NormLayer::new(norm, c_out, vb.pp("norm1"))?,
            conv2: Conv::new(c_out, c_out, cfg, vb.pp("conv2"))?,
            norm2: NormLayer::new(norm, c_out, vb.pp("norm2"))?,
            activation,
            dropout,
        })
    }

    /// The block applied to the channel-wise concatenation of `parts`. At inference the first
    /// convolution reads the parts where they lie ([`Conv::forward_concat`]), so the
    /// concatenation of a node's dense skips is never built.
    pub fn forward_parts(&self, parts: &[Tensor], train: bool) -> Result<Tensor> {
        let dropout = Dropout::new(self.dropout);
        let mut x = None;
        for (conv, norm) in [(&self.conv1, &self.norm1), (&self.conv2, &self.norm2)] {
            let input: &[Tensor] = match &x {
                Some(prev) => std::slice::from_ref(prev),
                None => parts,
            };
            // With running statistics the batch-norm is folded into the convolution; then, or
            // without a norm, the convolution kernel applies a ReLU itself.
            let folded = match norm {
                NormLayer::Batch(bn) if !train => Some(conv.fold_batch_norm(bn)?),
                _ => None,
            };
            let norm_done = folded.is_some() || matches!(norm, NormLayer::Identity);
            let relu = norm_done && self.activation == Activation::Relu;
            let y = folded
                .as_ref()
                .unwrap_or(conv)
                .forward_concat(input, relu)?;
            let mut y = match (relu, norm_done) {
                (true, _) => y,
                (false, true) => self.activation.apply(&y)?,
                (false, false) => self.activation.apply(&norm.forward_t(&y, train)?)?,
            };
            if self.dropout > 0.0 {
                y = dropout.forward_t(&y, train)?;
            }
            x = Some(y);
        }
        x.ok_or_else(|| crate::Error::config("block", "a block has two convolutions"))
    }
}

impl ModuleT for ConvBlock {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        Ok(self.forward_parts(std::slice::from_ref(x), train)?)
    }
}
