//! The 3×3, stride-1, padding-1 convolution as one differentiable candle op: forward pass,
//! input gradient and weight gradient, each by the kernel that the process-wide switch
//! ([`super::algo`]) and the shape choose: Winograd where it pays, banded GEMM elsewhere.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};

use super::algo::{cpu_conv_algo, CpuConvAlgo};
use super::shape::{Dims, Planes};
use super::{gemm, winograd, winograd_wgrad};
use crate::ops::elementwise::{channel_sums, relu_mask};
use crate::ops::kernel::contiguous;

/// The forward pass with the algorithm the process has chosen for this shape.
pub(super) fn forward_planes(
    x: &Planes,
    wt: &[f32],
    bias: &[f32],
    relu: bool,
    d: Dims,
) -> Vec<f32> {
    if d.n * d.h * d.w == 0 {
        return Vec::new();
    }
    if cpu_conv_algo() == CpuConvAlgo::Winograd && winograd::pays(&d) {
        winograd::forward(x, wt, bias, relu, d)
    } else {
        gemm::forward(x, wt, bias, relu, d)
    }
}

/// The kernel flipped in space with input and output channels swapped: the kernel whose
/// 3×3 convolution gives the input gradient.
fn flip_transpose(w: &Tensor) -> candle_core::Result<Tensor> {
    let (o, c, _, _) = w.dims4()?;
    let rev = Tensor::from_vec((0..9u32).rev().collect::<Vec<_>>(), 9, w.device())?;
    w.transpose(0, 1)?
        .contiguous()?
        .reshape((c, o, 9))?
        .index_select(&rev, 2)?
        .reshape((c, o, 3, 3))
}

/// The forward op: `(x, w, b) ↦ x ⋆ w + b`, then a ReLU when `relu`.
pub(super) struct Conv3x3 {
    pub(super) relu: bool,
}

impl CustomOp3 for Conv3x3 {
    fn name(&self) -> &'static str {
        "unetpp-conv3x3"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let (o, _, _, _) = l2.shape().dims4()?;
        let x = contiguous::<f32>(s1, l1)?;
        let wt = contiguous::<f32>(s2, l2)?;
        let b = contiguous::<f32>(s3, l3)?;
        let d = Dims { n, c, h, w, o };
        let out = forward_planes(&Planes::single(x, c, h * w), wt, b, self.relu, d);
        Ok((CpuStorage::F32(out), Shape::from((n, o, h, w))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let grad = if self.relu {
            grad.apply_op2_no_bwd(&res.contiguous()?, &relu_mask())?
        } else {
            grad
        };
        let (_, c, _, _) = x.dims4()?;
        let no_bias = Tensor::zeros(c, DType::F32, x.device())?;
        // The image at the bottom of a network needs no gradient: skip that convolution.
        let dx = if x.track_op() {
            Some(grad.apply_op3(&flip_transpose(w)?, &no_bias, Conv3x3 { relu: false })?)
        } else {
            None
        };
        let dw = x.contiguous()?.apply_op2(&grad, Conv3x3WeightGrad)?;
        let db = channel_sums(&grad)?;
        Ok((dx, Some(dw), Some(db)))
    }
}

/// The weight gradient: `(x, dy) ↦ dw`.
struct Conv3x3WeightGrad;

impl CustomOp2 for Conv3x3WeightGrad {
    fn name(&self) -> &'static str {
        "unetpp-conv3x3-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let (_, o, _, _) = l2.shape().dims4()?;
        let x = contiguous::<f32>(s1, l1)?;
        let dy = contiguous::<f32>(s2, l2)?;
        let d = Dims { n, c, h, w, o };
        let dw = if cpu_conv_algo() == CpuConvAlgo::Winograd && winograd_wgrad::pays(&d) {
            winograd_wgrad::weight_grad(x, dy, d)
        } else {
            gemm::weight_grad(x, dy, d)
        };
        Ok((CpuStorage::F32(dw), Shape::from((o, c, 3, 3))))
    }
}
