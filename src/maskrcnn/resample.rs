//! Nearest-neighbour resizing with PyTorch's index rule, as gathers (differentiable): the
//! feature pyramids' top-down up-sampling, and the transform's resizing of training masks.

use candle_core::Tensor;

use crate::Result;

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
pub(super) fn resize_nearest(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
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
