//! Division by a scalar that rounds as PyTorch's does, for the box coder and the losses.

use candle_core::Tensor;

use crate::Result;

/// `t / v` as a true division (candle's `t / v` multiplies by `1 / v`, which can differ from
/// PyTorch's `t / v` in the last bit).
pub(super) fn div_scalar(t: &Tensor, v: f64) -> Result<Tensor> {
    let v = crate::ops::host_tensor(vec![v], (), t.dtype(), t.device())?;
    Ok(t.broadcast_div(&v)?)
}
