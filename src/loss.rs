//! Losses for segmentation logits, and deep supervision over several heads.
//!
//! - Binary: [`BceDice`], the paper's binary cross-entropy plus soft Dice per head (DLMIA
//!   Eq. 2), from logits `(N, 1, H, W)` and masks in `[0, 1]` of the same shape.
//! - Multi-class: [`CeDice`], softmax cross-entropy plus soft Dice, from logits
//!   `(N, C, H, W)` and class labels `(N, H, W)` (`u32`, `u8` or `i64`), with optional class
//!   weights and an ignored label.
//! - [`DeepSupervisionLoss`] applies one of them to every head of a network's
//!   [`Outputs`] with per-head weights (equal by default, as in the paper).
//!
//! Every loss is a scalar tensor that candle can differentiate. The building blocks
//! ([`bce_with_logits`], [`soft_dice`], [`cross_entropy`], [`soft_dice_multiclass`]) are
//! public too.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use unetpp::loss::{BceDice, SegmentationLoss};
//!
//! let logits = Tensor::new(&[[[[4f32, -4.], [-4., 4.]]]], &Device::Cpu)?;
//! let masks = Tensor::new(&[[[[1f32, 0.], [0., 1.]]]], &Device::Cpu)?;
//! let loss = BceDice::paper().compute(&logits, &masks)?.to_scalar::<f32>()?;
//! assert!(loss < 0.05);
//! # Ok::<(), unetpp::Error>(())
//! ```

use candle_core::{DType, Device, Tensor, D};

use crate::nested::Outputs;
use crate::{Error, Result};

/// Which targets a loss compares the logits with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Foreground masks `(N, 1, H, W)`, `f32` (binary losses).
    Masks,
    /// Class labels `(N, H, W)`, `u32` (multi-class losses).
    Labels,
}

/// A loss of one head's logits against the targets.
pub trait SegmentationLoss {
    /// The loss, a scalar tensor.
    fn compute(&self, logits: &Tensor, targets: &Tensor) -> Result<Tensor>;

    /// The targets this loss takes: foreground masks (binary losses, the default) or class
    /// labels (multi-class losses).
    fn target(&self) -> Target {
        Target::Masks
    }
}

fn same_shape(logits: &Tensor, targets: &Tensor) -> Result<()> {
    if logits.dims() != targets.dims() {
        return Err(Error::Shape(format!(
            "logits {:?} and targets {:?} must have the same shape",
            logits.dims(),
            targets.dims()
        )));
    }
    if logits.elem_count() == 0 {
        return Err(Error::Shape(format!(
            "logits {:?} hold no value",
            logits.dims()
        )));
    }
    Ok(())
}

/// Mean binary cross-entropy of `logits` against `targets` in `[0, 1]` (PyTorch's
/// `binary_cross_entropy_with_logits`), computed as `max(x, 0) − x·y + log(1 + exp(−|x|))`,
/// which stays finite for any logit (candle's `binary_cross_entropy_with_logit` returns NaN
/// for logits of ±100).
pub fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    same_shape(logits, targets)?;
    let targets = targets.to_dtype(logits.dtype())?;
    let softplus_neg_abs = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    // candle's relu and abs both pass a gradient of 1 at 0, so at a zero logit the terms give
    // 1 − y − ½ = σ(0) − y, PyTorch's gradient. (`ops::relu` would need abs's −1 there.)
    let loss = ((logits.relu()? - (logits * &targets)?)? + softplus_neg_abs)?; // candle-relu-ok
    Ok(loss.mean_all()?)
}

/// Soft Dice coefficient `(2·Σ p·y + s) / (Σ p + Σ y + s)` with `p = sigmoid(logits)`, over
/// the whole batch, with smoothing `s` (1 is common; it makes two empty masks agree
/// perfectly).
pub fn soft_dice(logits: &Tensor, targets: &Tensor, smooth: f64) -> Result<Tensor> {
    same_shape(logits, targets)?;
    let p = candle_nn::ops::sigmoid(logits)?;
    let y = targets.to_dtype(p.dtype())?;
    let inter = (&p * &y)?.sum_all()?;
    let denom = (p.sum_all()? + y.sum_all()?)?;
    Ok((((inter * 2.0)? + smooth)? / (denom + smooth)?)?)
}

/// Soft Dice of every image of the batch separately, `(N,)`, as in the per-image sum of the
/// paper's Eq. 2.
pub fn soft_dice_per_image(logits: &Tensor, targets: &Tensor, smooth: f64) -> Result<Tensor> {
    same_shape(logits, targets)?;
    let n = logits.dim(0)?;
    let p = candle_nn::ops::sigmoid(logits)?.reshape((n, ()))?;
    let y = targets.to_dtype(p.dtype())?.reshape((n, ()))?;
    let inter = (&p * &y)?.sum(1)?;
    let denom = (p.sum(1)? + y.sum(1)?)?;
    Ok((((inter * 2.0)? + smooth)? / (denom + smooth)?)?)
}

/// Binary cross-entropy plus soft Dice: `bce_weight · BCE + dice_weight · (1 − Dice)`.
///
/// Two forms, both with smoothing 1:
/// - [`BceDice::paper`] (the default): DLMIA Eq. 2, `−(1/N) Σ_b [½·BCE_b + Dice_b]` up to the
///   constant 1 (which moves no gradient): Dice is taken per image and averaged, so every
///   image counts the same however much foreground it has.
/// - [`BceDice::common`]: `0.5 · BCE + (1 − Dice)` with one Dice over the whole batch, as most
///   implementations (and the official Keras code) compute it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BceDice {
    /// Weight of the mean binary cross-entropy.
    pub bce_weight: f64,
    /// Weight of `1 − Dice`.
    pub dice_weight: f64,
    /// Smoothing `s` of the Dice coefficient.
    pub smooth: f64,
    /// Dice per image, then averaged (`true`), or over the whole batch (`false`).
    pub per_image: bool,
}

impl BceDice {
    /// The paper's form (Eq. 2): `0.5 · BCE + mean over images of (1 − Dice)`.
    pub fn paper() -> Self {
        Self {
            bce_weight: 0.5,
            dice_weight: 1.0,
            smooth: 1.0,
            per_image: true,
        }
    }

    /// The common form: `0.5 · BCE + (1 − Dice)` with Dice over the whole batch.
    pub fn common() -> Self {
        Self {
            per_image: false,
            ..Self::paper()
        }
    }
}

impl Default for BceDice {
    fn default() -> Self {
        Self::paper()
    }
}

impl SegmentationLoss for BceDice {
    fn compute(&self, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let bce = bce_with_logits(logits, targets)?;
        let dice = if self.per_image {
            soft_dice_per_image(logits, targets, self.smooth)?.mean_all()?
        } else {
            soft_dice(logits, targets, self.smooth)?
        };
        Ok(((bce * self.bce_weight)? + ((1.0 - dice)? * self.dice_weight)?)?)
    }
}

/// Logits `(N, C, H, W)` as rows `(N·H·W, C)`, labels as `(N·H·W,)` `u32` with ignored
/// pixels set to class 0, and the `(N·H·W,)` validity mask (1 where not ignored).
struct Pixels {
    logits: Tensor,
    labels: Tensor,
    valid: Tensor,
}

fn pixels(logits: &Tensor, labels: &Tensor, ignore_index: Option<u32>) -> Result<Pixels> {
    let (n, c, h, w) = logits.dims4().map_err(|_| {
        Error::Shape(format!(
            "multi-class logits must be (N, C, H, W), got {:?}",
            logits.dims()
        ))
    })?;
    if labels.dims() != [n, h, w] {
        return Err(Error::Shape(format!(
            "labels must be (N, H, W) = {:?} for logits {:?}, got {:?}",
            [n, h, w],
            logits.dims(),
            labels.dims()
        )));
    }
    if n * h * w == 0 || c == 0 {
        return Err(Error::Shape(format!(
            "logits {:?} hold no value",
            logits.dims()
        )));
    }
    let labels = match labels.dtype() {
        DType::U32 => labels.clone(),
        DType::U8 => labels.to_dtype(DType::U32)?,
        DType::I64 => {
            if labels.flatten_all()?.min(0)?.to_scalar::<i64>()? < 0 {
                return Err(Error::Shape("labels must not be negative".into()));
            }
            labels.to_dtype(DType::U32)?
        }
        other => {
            return Err(Error::Shape(format!(
                "labels must be u32, u8 or i64 class indices, got {other:?}"
            )))
        }
    };
    let labels = labels.flatten_all()?;
    let (labels, valid) = match ignore_index {
        Some(ignore) => {
            let keep = labels.ne(ignore)?;
            let zeros = labels.zeros_like()?;
            (keep.where_cond(&labels, &zeros)?, keep)
        }
        None => (labels.clone(), labels.ones_like()?.to_dtype(DType::U8)?),
    };
    let max = labels.max(0)?.to_scalar::<u32>()?;
    if max as usize >= c {
        return Err(Error::Shape(format!(
            "label {max} found but the logits have {c} classes (labels must be < {c}{})",
            ignore_index.map_or(String::new(), |i| format!(" or the ignored {i}"))
        )));
    }
    let rows = logits.permute((0, 2, 3, 1))?.reshape((n * h * w, c))?;
    let valid = valid.to_dtype(logits.dtype())?;
    Ok(Pixels {
        logits: rows,
        labels,
        valid,
    })
}

fn class_weight_tensor(
    weights: &[f32],
    classes: usize,
    dtype: DType,
    dev: &Device,
) -> Result<Tensor> {
    if weights.len() != classes {
        return Err(Error::config(
            "class_weights",
            format!("{} weights given for {classes} classes", weights.len()),
        ));
    }
    if weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
        return Err(Error::config(
            "class_weights",
            format!("weights must be finite and non-negative, got {weights:?}"),
        ));
    }
    Ok(crate::ops::host_tensor(
        weights.to_vec(),
        weights.len(),
        dtype,
        dev,
    )?)
}

/// Mean softmax cross-entropy of `logits (N, C, H, W)` against class `labels (N, H, W)`, as
/// PyTorch's `cross_entropy` computes it: with `class_weights` the mean is weighted,
/// `Σ w_y·ℓ / Σ w_y`; pixels labelled `ignore_index` count for nothing. Where no pixel
/// counts (all ignored, or all of zero weight) the loss is 0 (PyTorch returns NaN).
pub fn cross_entropy(
    logits: &Tensor,
    labels: &Tensor,
    class_weights: Option<&[f32]>,
    ignore_index: Option<u32>,
) -> Result<Tensor> {
    let px = pixels(logits, labels, ignore_index)?;
    ce_of(&px, class_weights)
}

fn ce_of(px: &Pixels, class_weights: Option<&[f32]>) -> Result<Tensor> {
    let c = px.logits.dim(1)?;
    let log_p = candle_nn::ops::log_softmax(&px.logits, D::Minus1)?;
    let picked = log_p.gather(&px.labels.unsqueeze(1)?, 1)?.squeeze(1)?;
    let weights = match class_weights {
        Some(w) => {
            let w = class_weight_tensor(w, c, px.logits.dtype(), px.logits.device())?;
            (w.index_select(&px.labels, 0)? * &px.valid)?
        }
        None => px.valid.clone(),
    };
    let total = weights.sum_all()?;
    let num = (picked * &weights)?.sum_all()?.neg()?;
    // No weight at all makes the numerator 0 too: dividing by 1 then gives 0, on the device,
    // without reading the total back to the host.
    let empty = total.eq(0.0)?.to_dtype(total.dtype())?;
    Ok((num / (total + empty)?)?)
}

/// Multi-class soft Dice: the mean over classes of `(2·Σ p_c·y_c + s) / (Σ p_c + Σ y_c + s)`,
/// with `p = softmax(logits)` over the classes, `y` the one-hot labels, sums over every
/// pixel of the batch except those labelled `ignore_index`. With `include_background` false,
/// class 0 is left out of the mean.
pub fn soft_dice_multiclass(
    logits: &Tensor,
    labels: &Tensor,
    smooth: f64,
    ignore_index: Option<u32>,
    include_background: bool,
) -> Result<Tensor> {
    let px = pixels(logits, labels, ignore_index)?;
    dice_of(&px, smooth, include_background)
}

fn dice_of(px: &Pixels, smooth: f64, include_background: bool) -> Result<Tensor> {
    let c = px.logits.dim(1)?;
    let first = usize::from(!include_background);
    if first >= c {
        return Err(Error::config(
            "include_background",
            "a Dice without background needs at least two classes",
        ));
    }
    let dev = px.logits.device();
    let dtype = px.logits.dtype();
    let p = candle_nn::ops::softmax(&px.logits, D::Minus1)?;
    let classes = Tensor::arange(0u32, c as u32, dev)?.unsqueeze(0)?;
    let one_hot = px
        .labels
        .unsqueeze(1)?
        .broadcast_eq(&classes)?
        .to_dtype(dtype)?;
    let valid = px.valid.unsqueeze(1)?;
    let p = p.broadcast_mul(&valid)?;
    let y = one_hot.broadcast_mul(&valid)?;
    // Class-major so that the sums run over the last dimension.
    let inter = (&p * &y)?.t()?.sum(1)?;
    let denom = (p.t()?.sum(1)? + y.t()?.sum(1)?)?;
    let dice = (((inter * 2.0)? + smooth)? / (denom + smooth)?)?;
    Ok(dice.narrow(0, first, c - first)?.mean_all()?)
}

/// Softmax cross-entropy plus soft Dice for multi-class labels:
/// `ce_weight · CE + dice_weight · (1 − Dice)`, see [`cross_entropy`] and
/// [`soft_dice_multiclass`].
///
/// ```
/// use candle_core::{Device, Tensor};
/// use unetpp::loss::{CeDice, SegmentationLoss};
///
/// let logits = Tensor::randn(0f32, 1., (2, 3, 8, 8), &Device::Cpu)?;
/// let labels = Tensor::zeros((2, 8, 8), candle_core::DType::U32, &Device::Cpu)?;
/// let loss = CeDice::default().class_weights([0.2, 1.0, 1.0]).ignore_index(255);
/// let value = loss.compute(&logits, &labels)?.to_scalar::<f32>()?;
/// assert!(value.is_finite());
/// # Ok::<(), unetpp::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct CeDice {
    /// Weight of the cross-entropy.
    pub ce_weight: f64,
    /// Weight of `1 − Dice`.
    pub dice_weight: f64,
    /// Smoothing of the Dice coefficient.
    pub smooth: f64,
    /// Weight of each class in the cross-entropy (none: all 1).
    pub class_weights: Option<Vec<f32>>,
    /// A label that marks pixels to leave out of both terms.
    pub ignore_index: Option<u32>,
    /// Whether class 0 counts in the Dice mean.
    pub include_background: bool,
}

impl Default for CeDice {
    /// `CE + (1 − Dice)`, smoothing 1, no class weights, nothing ignored, background counted.
    fn default() -> Self {
        Self {
            ce_weight: 1.0,
            dice_weight: 1.0,
            smooth: 1.0,
            class_weights: None,
            ignore_index: None,
            include_background: true,
        }
    }
}

impl CeDice {
    /// Sets the per-class weights of the cross-entropy.
    pub fn class_weights(mut self, weights: impl Into<Vec<f32>>) -> Self {
        self.class_weights = Some(weights.into());
        self
    }

    /// Leaves pixels labelled `index` out of the loss.
    pub fn ignore_index(mut self, index: u32) -> Self {
        self.ignore_index = Some(index);
        self
    }
}

impl SegmentationLoss for CeDice {
    fn target(&self) -> Target {
        Target::Labels
    }

    fn compute(&self, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let px = pixels(logits, labels, self.ignore_index)?;
        let ce = ce_of(&px, self.class_weights.as_deref())?;
        let dice = dice_of(&px, self.smooth, self.include_background)?;
        Ok(((ce * self.ce_weight)? + ((1.0 - dice)? * self.dice_weight)?)?)
    }
}

/// One loss applied to every head, `Σ_h w_h · loss(head_h)`. With no weights given, each head
/// weighs `1 / heads` (equal weights, the paper's choice), so the value stays on the scale of
/// a single head's loss.
#[derive(Debug, Clone)]
pub struct DeepSupervisionLoss<L> {
    loss: L,
    weights: Option<Vec<f64>>,
}

impl DeepSupervisionLoss<BceDice> {
    /// The paper's training loss: [`BceDice::paper`] on every head, equal weights.
    pub fn paper() -> Self {
        Self::new(BceDice::paper())
    }
}

impl<L: SegmentationLoss> DeepSupervisionLoss<L> {
    /// `loss` on every head with equal weights.
    pub fn new(loss: L) -> Self {
        Self {
            loss,
            weights: None,
        }
    }

    /// Per-head weights, in the order of the heads (`X^{0,1}` first), used as given.
    pub fn with_weights(mut self, weights: impl Into<Vec<f64>>) -> Self {
        self.weights = Some(weights.into());
        self
    }

    /// The loss applied to each head.
    pub fn loss(&self) -> &L {
        &self.loss
    }

    /// The weighted loss over the heads of `outputs`.
    pub fn compute(&self, outputs: &Outputs, targets: &Tensor) -> Result<Tensor> {
        self.compute_heads(outputs.logits(), targets)
    }

    /// The weighted loss over the logits of several heads.
    pub fn compute_heads(&self, heads: &[Tensor], targets: &Tensor) -> Result<Tensor> {
        if heads.is_empty() {
            return Err(Error::Shape("no head logits given".into()));
        }
        let equal = vec![1.0 / heads.len() as f64; heads.len()];
        let weights = self.weights.as_ref().unwrap_or(&equal);
        if weights.len() != heads.len() {
            return Err(Error::config(
                "weights",
                format!(
                    "{} head weights given for {} heads",
                    weights.len(),
                    heads.len()
                ),
            ));
        }
        if weights.iter().any(|w| !w.is_finite()) {
            return Err(Error::config("weights", format!("not finite: {weights:?}")));
        }
        let mut total: Option<Tensor> = None;
        for (h, &w) in heads.iter().zip(weights) {
            let term = (self.loss.compute(h, targets)? * w)?;
            total = Some(match total {
                Some(t) => (t + term)?,
                None => term,
            });
        }
        total.ok_or_else(|| Error::Shape("no head logits given".into()))
    }
}

/// `0.5 · BCE + (1 − Dice)` over the whole batch for one head ([`BceDice::common`]).
pub fn bce_dice(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    BceDice::common().compute(logits, targets)
}

/// [`bce_dice`] on every head, equal weights.
pub fn deep_supervision_bce_dice(heads: &[Tensor], targets: &Tensor) -> Result<Tensor> {
    DeepSupervisionLoss::new(BceDice::common()).compute_heads(heads, targets)
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
