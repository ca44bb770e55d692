//! Argument checks and bias handling shared by the convolution entry points.

use candle_core::{DType, Tensor};

use super::algo::{own_kernels, takes_fast_path};
use crate::ops::elementwise::bias_add;
use crate::{Error, Result};

/// The dimensions of `op`'s `(N, C, H, W)` input and `(O, C, KH, KW)` kernel, or an error
/// naming what does not fit.
pub(super) fn conv_dims(op: &str, x: &Tensor, w: &Tensor) -> Result<([usize; 4], [usize; 4])> {
    let (n, c, h, wd) = x.dims4().map_err(|_| {
        Error::Shape(format!(
            "{op} expects an (N, C, H, W) input, got {:?}",
            x.dims()
        ))
    })?;
    let (o, wc, kh, kw) = w.dims4().map_err(|_| {
        Error::Shape(format!(
            "{op} expects an (O, C, KH, KW) kernel, got {:?}",
            w.dims()
        ))
    })?;
    if wc != c {
        return Err(Error::Shape(format!(
            "{op}: kernel {:?} does not fit an input with {c} channels",
            w.dims()
        )));
    }
    Ok(([n, c, h, wd], [o, wc, kh, kw]))
}

/// Checks that `bias`, if any, has one value per output channel of `op`.
pub(super) fn check_bias(op: &str, bias: Option<&Tensor>, o: usize) -> Result<()> {
    match bias {
        Some(b) if b.dims() != [o] => Err(Error::Shape(format!(
            "{op}: bias {:?} does not fit {o} output channels",
            b.dims()
        ))),
        _ => Ok(()),
    }
}

/// Whether the CPU kernels take these tensors (see [`takes_fast_path`]), bias included.
pub(super) fn fast_with_bias(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> bool {
    takes_fast_path(x, w)
        && bias.is_none_or(|b| b.dtype() == DType::F32 && b.device().same_device(x.device()))
}

/// The bias as the CPU kernels read it: contiguous, or `o` zeros when there is none.
pub(super) fn kernel_bias(
    bias: Option<&Tensor>,
    o: usize,
    device: &candle_core::Device,
) -> Result<Tensor> {
    Ok(match bias {
        Some(b) => b.contiguous()?,
        None => Tensor::zeros(o, DType::F32, device)?,
    })
}

/// `y + bias` per output channel, through [`bias_add`] on the fast path, and in half
/// precision (where it sums a trainable bias's gradient in `f32`).
pub(super) fn add_bias(y: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let half = matches!(y.dtype(), DType::F16 | DType::BF16);
    match bias {
        Some(b) if own_kernels() || half => bias_add(&y, b),
        Some(b) => Ok(y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)?),
        None => Ok(y),
    }
}
