//! Convolution followed by batch-norm, the unit of ResNets and of smp's decoder.

use candle_core::{ModuleT, Tensor};
use candle_nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use candle_nn::{BatchNorm, BatchNormConfig, Init, VarBuilder};

use super::{Conv, ConvConfig};
use crate::{Error, Result};

/// A convolution without bias followed by a batch-norm, each under its own prefix (torchvision's
/// ResNet names them `conv{k}` / `bn{k}` or `downsample.0` / `downsample.1`; smp's decoder
/// `conv{k}.0` / `conv{k}.1`).
#[derive(Debug, Clone)]
pub struct ConvBn {
    conv: Conv,
    bn: BatchNorm,
}

impl ConvBn {
    /// A `k × k` convolution (padding `k / 2`, no bias; new weights He-normal over the fan-out,
    /// as torchvision draws them) and a batch-norm of epsilon `bn_eps`, frozen (never trained,
    /// running statistics always) when `frozen_bn`.
    pub fn new(
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        (bn_eps, frozen_bn): (f64, bool),
        vb_conv: VarBuilder,
        vb_bn: VarBuilder,
    ) -> Result<Self> {
        let init = Init::Kaiming {
            dist: NormalOrUniform::Normal,
            fan: FanInOut::FanOut,
            non_linearity: NonLinearity::ReLU,
        };
        let cfg = ConvConfig::same(k)
            .stride(stride)
            .bias(false)
            .weight_init(init);
        let conv = Conv::new(c_in, c_out, cfg, vb_conv)?;
        let bn = candle_nn::batch_norm(
            c_out,
            BatchNormConfig {
                eps: bn_eps,
                remove_mean: true,
                affine: true,
                momentum: 0.1,
            },
            vb_bn,
        )?;
        let bn = if frozen_bn {
            // γ and β detached, so that training never updates them (the optimiser sees no
            // gradient); both share storage with the variables, so weights written into the
            // `VarMap` later (a checkpoint, pretrained weights) reach the layer. The running
            // statistics are passed as the variables themselves: `BatchNorm::new` would copy
            // any other tensor, and they get no gradient anyway (`fold_batch_norm` detaches
            // them).
            let (w, b) = bn.weight_and_bias().ok_or_else(|| {
                Error::config("frozen_bn", "batch-norm without affine parameters")
            })?;
            BatchNorm::new(
                c_out,
                bn.running_mean().clone(),
                bn.running_var().clone(),
                w.detach(),
                b.detach(),
                bn_eps,
            )?
        } else {
            bn
        };
        Ok(Self { conv, bn })
    }

    /// Convolution, batch-norm and, when `relu`, a ReLU. With batch statistics (`train` and a
    /// trainable batch-norm) the three run one after the other. With running statistics the
    /// batch-norm is a per-channel affine map, folded into the convolution
    /// ([`super::Conv::fold_batch_norm`]), which saves four passes over the output, forward and
    /// backward.
    pub fn forward(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        if !train {
            return self.conv.fold_batch_norm(&self.bn)?.forward_fused(x, relu);
        }
        let y = crate::nn::batch_norm_forward(&self.bn, &self.conv.forward(x)?, true)?;
        Ok(if relu { crate::ops::relu(&y)? } else { y })
    }
}

impl ModuleT for ConvBn {
    /// The convolution and batch-norm, without an activation.
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        Ok(ConvBn::forward(self, x, train, false)?)
    }
}
