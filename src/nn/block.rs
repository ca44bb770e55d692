use candle_core::{ModuleT, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Dropout, VarBuilder};

use super::{push, Activation, NamedTensor, Norm, NormLayer};

/// The paper's `H`: (3×3 conv → norm → activation → dropout) twice.
///
/// Weight names under the block's prefix: `conv1.weight`, `conv1.bias` (when the convolutions
/// have a bias), `norm1.*`, and the same with `2`.
#[derive(Debug, Clone)]
pub struct ConvBlock {
    conv1: Conv2d,
    norm1: NormLayer,
    conv2: Conv2d,
    norm2: NormLayer,
    activation: Activation,
    dropout: f32,
}

fn conv3x3(c_in: usize, c_out: usize, bias: bool, vb: VarBuilder) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    if bias {
        candle_nn::conv2d(c_in, c_out, 3, cfg, vb)
    } else {
        candle_nn::conv2d_no_bias(c_in, c_out, 3, cfg, vb)
    }
}

fn detach_conv(conv: &Conv2d) -> Conv2d {
    Conv2d::new(
        conv.weight().detach(),
        conv.bias().map(|b| b.detach()),
        *conv.config(),
    )
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
        Ok(Self {
            conv1: conv3x3(c_in, c_out, bias, vb.pp("conv1"))?,
            norm1: NormLayer::new(norm, c_out, vb.pp("norm1"))?,
            conv2: conv3x3(c_out, c_out, bias, vb.pp("conv2"))?,
            norm2: NormLayer::new(norm, c_out, vb.pp("norm2"))?,
            activation,
            dropout,
        })
    }

    pub(crate) fn named_tensors(&self, prefix: &str, out: &mut Vec<NamedTensor>) {
        for (name, conv, norm) in [
            ("1", &self.conv1, &self.norm1),
            ("2", &self.conv2, &self.norm2),
        ] {
            push(
                out,
                prefix,
                &format!("conv{name}.weight"),
                conv.weight(),
                true,
            );
            if let Some(b) = conv.bias() {
                push(out, prefix, &format!("conv{name}.bias"), b, true);
            }
            norm.named_tensors(&format!("{prefix}.norm{name}"), out);
        }
    }

    pub(crate) fn detach(&self) -> Result<Self> {
        Ok(Self {
            conv1: detach_conv(&self.conv1),
            norm1: self.norm1.detach()?,
            conv2: detach_conv(&self.conv2),
            norm2: self.norm2.detach()?,
            activation: self.activation,
            dropout: self.dropout,
        })
    }
}

impl ModuleT for ConvBlock {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let dropout = Dropout::new(self.dropout);
        let mut x = x.clone();
        for (conv, norm) in [(&self.conv1, &self.norm1), (&self.conv2, &self.norm2)] {
            x = if matches!(
                (norm, self.activation),
                (NormLayer::Identity, Activation::Relu)
            ) {
                crate::ops::conv3x3_fused(&x, conv.weight(), conv.bias(), true)
                    .map_err(to_candle)?
            } else {
                let y = crate::ops::conv3x3(&x, conv.weight(), conv.bias()).map_err(to_candle)?;
                self.activation.apply(&norm.forward_t(&y, train)?)?
            };
            if self.dropout > 0.0 {
                x = dropout.forward_t(&x, train)?;
            }
        }
        Ok(x)
    }
}

fn to_candle(e: crate::Error) -> candle_core::Error {
    match e {
        crate::Error::Candle(e) => e,
        other => candle_core::Error::Msg(other.to_string()),
    }
}
