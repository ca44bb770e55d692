//! The RPN head: objectness and box deltas for every anchor of every pyramid level.

use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};

use crate::maskrcnn::conv::conv;
use crate::nn::Conv;
use crate::Result;

/// The RPN head: a 3×3 convolution + ReLU shared by all levels (`conv.0.0`; `conv` in
/// checkpoints written before torchvision 0.13, which load through
/// [`current_names`](crate::maskrcnn::current_names)), then 1×1 convolutions to one objectness
/// logit (`cls_logits`) and four box deltas (`bbox_pred`) per anchor.
#[derive(Debug, Clone)]
pub struct RpnHead {
    conv: Conv,
    cls_logits: Conv,
    bbox_pred: Conv,
}

impl RpnHead {
    /// A head for maps of `channels` channels and `num_anchors` anchors per location.
    pub fn new(channels: usize, num_anchors: usize, vb: VarBuilder) -> Result<Self> {
        let init = Init::Randn {
            mean: 0.0,
            stdev: 0.01,
        };
        let conv_vb = vb.pp("conv").pp("0").pp("0");
        Ok(RpnHead {
            conv: conv(channels, channels, 3, init, conv_vb)?,
            cls_logits: conv(channels, num_anchors, 1, init, vb.pp("cls_logits"))?,
            bbox_pred: conv(channels, 4 * num_anchors, 1, init, vb.pp("bbox_pred"))?,
        })
    }

    /// Objectness `(N, A, H, W)` and deltas `(N, 4A, H, W)` for every level.
    pub fn forward(&self, features: &[Tensor]) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        let mut logits = Vec::with_capacity(features.len());
        let mut deltas = Vec::with_capacity(features.len());
        for f in features {
            let t = self.conv.forward_fused(f, true)?;
            logits.push(self.cls_logits.forward(&t)?);
            deltas.push(self.bbox_pred.forward(&t)?);
        }
        Ok((logits, deltas))
    }
}
