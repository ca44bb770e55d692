//! Losses for segmentation logits.
//!
//! The paper trains each deep-supervision head with binary cross-entropy plus soft Dice;
//! [`bce_dice`] is the common `0.5·BCE + (1 − Dice)` form of it.

use candle_core::{DType, Tensor};

use crate::{Error, Result};

fn same_shape(logits: &Tensor, targets: &Tensor) -> Result<()> {
    if logits.dims() != targets.dims() {
        return Err(Error::Shape(format!(
            "logits {:?} and targets {:?} must have the same shape",
            logits.dims(),
            targets.dims()
        )));
    }
    Ok(())
}

/// Mean binary cross-entropy of `logits` against `targets` in `[0, 1]`, computed as
/// `max(x, 0) − x·y + log(1 + exp(−|x|))`, which stays finite for any logit (candle's
/// `binary_cross_entropy_with_logit` returns NaN for logits of ±100).
pub fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    same_shape(logits, targets)?;
    let targets = targets.to_dtype(logits.dtype())?;
    let softplus_neg_abs = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    let loss = ((logits.relu()? - (logits * &targets)?)? + softplus_neg_abs)?;
    Ok(loss.mean_all()?)
}

/// Soft Dice coefficient `(2·Σ p·y + ε) / (Σ p + Σ y + ε)` over the whole batch, with
/// `p = sigmoid(logits)` and `ε = 1`.
pub fn soft_dice(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    same_shape(logits, targets)?;
    let p = candle_nn::ops::sigmoid(logits)?;
    let y = targets.to_dtype(p.dtype())?;
    let inter = (&p * &y)?.sum_all()?;
    let denom = (p.sum_all()? + y.sum_all()?)?;
    Ok((((inter * 2.0)? + 1.0)? / (denom + 1.0)?)?)
}

/// `0.5 · BCE + (1 − soft Dice)` for one head of binary logits.
pub fn bce_dice(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let bce = bce_with_logits(logits, targets)?;
    let dice = soft_dice(logits, targets)?;
    Ok(((bce * 0.5)? + (1.0 - dice)?)?)
}

/// Deep supervision with equal weights: the mean over heads of [`bce_dice`].
pub fn deep_supervision_bce_dice(heads: &[Tensor], targets: &Tensor) -> Result<Tensor> {
    if heads.is_empty() {
        return Err(Error::Shape("no head logits given".into()));
    }
    let mut total = Tensor::zeros((), DType::F32, targets.device())?.to_dtype(heads[0].dtype())?;
    for h in heads {
        total = (total + bce_dice(h, targets)?)?;
    }
    Ok((total / heads.len() as f64)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn bce_is_finite_for_extreme_logits() {
        let x = Tensor::new(&[100f32, -100., 0.], &Device::Cpu).unwrap();
        let y = Tensor::new(&[0f32, 1., 1.], &Device::Cpu).unwrap();
        let l = bce_with_logits(&x, &y).unwrap().to_scalar::<f32>().unwrap();
        // (100 + 100 + ln 2) / 3
        assert!((l - (200.0 + 2f32.ln()) / 3.0).abs() < 1e-4, "{l}");
    }
}
