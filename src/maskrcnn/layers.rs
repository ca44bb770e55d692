//! Small building blocks shared by the detector's modules: the biased convolutions of the
//! pyramid and the RPN, nearest-neighbour resizing and stride-2 subsampling with
//! PyTorch's index rules (both differentiable), and the smooth L1 loss.

use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};

use crate::nn::{Conv, ConvConfig};
use crate::{Error, Result};

/// A 1×1 or 3×3 (padding `k / 2`) convolution with bias, stride 1: `weight (c_out, c_in, k,
/// k)` drawn as `init` says when `vb` creates it, `bias (c_out)` from zero.
pub(crate) fn conv(
    c_in: usize,
    c_out: usize,
    k: usize,
    init: Init,
    vb: VarBuilder,
) -> Result<Conv> {
    if k != 1 && k != 3 {
        return Err(Error::config("kernel", format!("1 or 3, got {k}")));
    }
    Conv::new(c_in, c_out, ConvConfig::same(k).weight_init(init), vb)
}

/// Kaiming-uniform initialisation with `a = 1` (bound `sqrt(3 / fan_in)`), torchvision's for
/// FPN convolutions.
pub(crate) fn kaiming_uniform_a1(fan_in: usize) -> Init {
    let bound = (3.0 / fan_in.max(1) as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// PyTorch's nearest-neighbour source index for output `dst` (`F.interpolate(mode="nearest")`
/// with a given size): exact halving when the size doubles, otherwise
/// `floor(dst · in / out)` in single precision.
pub(super) fn nearest_index(dst: usize, input: usize, output: usize) -> usize {
    if output == 2 * input {
        return dst / 2;
    }
    let scale = input as f32 / output as f32;
    ((dst as f32 * scale).floor() as usize).min(input - 1)
}

/// Nearest-neighbour resize of `(N, C, H, W)` to `(out_h, out_w)`, as gathers (differentiable).
pub(crate) fn resize_nearest(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if (h, w) == (out_h, out_w) {
        return Ok(x.clone());
    }
    let dev = x.device();
    let ih: Vec<u32> = (0..out_h)
        .map(|d| nearest_index(d, h, out_h) as u32)
        .collect();
    let iw: Vec<u32> = (0..out_w)
        .map(|d| nearest_index(d, w, out_w) as u32)
        .collect();
    let y = x.index_select(&Tensor::from_vec(ih, out_h, dev)?, 2)?;
    Ok(y.index_select(&Tensor::from_vec(iw, out_w, dev)?, 3)?)
}

/// Every second row and column from the first: `max_pool2d(kernel 1, stride 2)`.
pub(crate) fn subsample2(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let dev = x.device();
    let ih: Vec<u32> = (0..h).step_by(2).map(|i| i as u32).collect();
    let iw: Vec<u32> = (0..w).step_by(2).map(|i| i as u32).collect();
    let (nh, nw) = (ih.len(), iw.len());
    let y = x.index_select(&Tensor::from_vec(ih, nh, dev)?, 2)?;
    Ok(y.index_select(&Tensor::from_vec(iw, nw, dev)?, 3)?)
}

/// `t / v` as a true division (candle's `t / v` multiplies by `1 / v`, which can differ from
/// PyTorch's `t / v` in the last bit).
pub(crate) fn div_scalar(t: &Tensor, v: f64) -> Result<Tensor> {
    let v = Tensor::new(v, t.device())?.to_dtype(t.dtype())?;
    Ok(t.broadcast_div(&v)?)
}

/// Smooth L1 loss summed over all elements: `0.5 d² / β` where `|d| < β`, `|d| − 0.5 β`
/// elsewhere (`F.smooth_l1_loss(reduction="sum")`).
pub fn smooth_l1_sum(pred: &Tensor, target: &Tensor, beta: f64) -> Result<Tensor> {
    if pred.dims() != target.dims() {
        return Err(Error::Shape(format!(
            "smooth_l1: prediction {:?} and target {:?} differ",
            pred.dims(),
            target.dims()
        )));
    }
    let d = (pred - target)?.abs()?;
    // torchvision's order: 0.5 · d² / β.
    let quadratic = div_scalar(&((&d * &d)? * 0.5)?, beta)?;
    let linear = (&d - 0.5 * beta)?;
    let small = d.lt(beta)?;
    Ok(small.where_cond(&quadratic, &linear)?.sum_all()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_index_follows_pytorch() {
        // Doubling halves; 13 -> 25 uses floor(dst * 0.52) in f32.
        assert_eq!(nearest_index(5, 4, 8), 2);
        let idx: Vec<usize> = (0..25).map(|d| nearest_index(d, 13, 25)).collect();
        assert_eq!(idx[24], 12);
        assert_eq!(idx[2], 1);
        assert_eq!(idx[1], 0);
    }
}
