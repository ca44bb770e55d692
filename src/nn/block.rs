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

impl ConvBlock {
    /// The block applied to the channel-wise concatenation of `parts`. At inference the first
    /// convolution reads the parts where they lie ([`crate::ops::conv3x3_concat`]), so the
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
                NormLayer::Batch(bn) if !train => {
                    Some(super::fold_batch_norm(bn, conv.weight(), conv.bias())?)
                }
                _ => None,
            };
            let (kernel, bias) = match &folded {
                Some((k, b)) => (k, Some(b)),
                None => (conv.weight(), conv.bias()),
            };
            let norm_done = folded.is_some() || matches!(norm, NormLayer::Identity);
            let relu = norm_done && self.activation == Activation::Relu;
            let y = crate::ops::conv3x3_concat(input, kernel, bias, relu)?;
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
        x.ok_or_else(|| candle_core::Error::Msg("a block has two convolutions".into()))
    }
}

impl ModuleT for ConvBlock {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_parts(std::slice::from_ref(x), train)
    }
}
