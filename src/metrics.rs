//! Segmentation metrics.

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// Intersection over union of binary masks `pred > 0.5` and `target > 0.5` over the whole
/// tensor. Two empty masks agree perfectly: the IoU is then 1.
pub fn iou_binary(pred: &Tensor, target: &Tensor) -> Result<f32> {
    if pred.dims() != target.dims() {
        return Err(Error::Shape(format!(
            "prediction {:?} and target {:?} must have the same shape",
            pred.dims(),
            target.dims()
        )));
    }
    let p = pred.gt(0.5)?.to_dtype(DType::F32)?;
    let t = target.to_dtype(DType::F32)?.gt(0.5)?.to_dtype(DType::F32)?;
    let inter = (&p * &t)?.sum_all()?.to_scalar::<f32>()?;
    let union = (p.sum_all()?.to_scalar::<f32>()? + t.sum_all()?.to_scalar::<f32>()?) - inter;
    Ok(if union == 0.0 { 1.0 } else { inter / union })
}
