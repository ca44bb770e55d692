//! The smooth L1 loss of the RPN's and the box head's regressions.

use candle_core::Tensor;

use super::div::div_scalar;
use crate::{Error, Result};

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
