//! The box branch of Mask R-CNN's RoI heads: the two fully connected layers over each pooled
//! box ([`TwoMlpHead`]), the classifier and class-specific box regressor
//! ([`FastRcnnPredictor`]), and their training loss ([`fastrcnn_loss`]), as torchvision 0.29's
//! `TwoMLPHead`, `FastRCNNPredictor` and `roi_heads.fastrcnn_loss` compute them.
//!
//! Fast R-CNN (Girshick 2015, §2.3) trains the classifier with a softmax cross entropy over
//! `C` classes (background included) and the regressor with a smooth L1 loss on the deltas of
//! the true class only; FPN (Lin et al. 2017, §4.2) puts two 1024-wide fully connected layers
//! in front of both.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use unetpp::maskrcnn::{FastRcnnPredictor, TwoMlpHead};
//!
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
//! let head = TwoMlpHead::new(8 * 7 * 7, 32, vb.pp("box_head"))?;
//! let predictor = FastRcnnPredictor::new(32, 3, vb.pp("box_predictor"))?;
//! let pooled = Tensor::randn(0f32, 1., (5, 8, 7, 7), &Device::Cpu)?;
//! let (logits, deltas) = predictor.forward(&head.forward(&pooled)?)?;
//! assert_eq!(logits.dims(), &[5, 3]);
//! assert_eq!(deltas.dims(), &[5, 12]);
//! # Ok::<(), unetpp::Error>(())
//! ```

use candle_core::{DType, Module, Tensor, D};
use candle_nn::{Linear, VarBuilder};

use super::div::div_scalar;
use super::loss::smooth_l1_sum;
use crate::{Error, Result};

/// The smooth L1 loss's transition point in [`fastrcnn_loss`] (torchvision's `beta = 1 / 9`).
pub const FASTRCNN_SMOOTH_L1_BETA: f64 = 1.0 / 9.0;

/// Two fully connected layers with ReLUs over each flattened pooled box: torchvision's
/// `TwoMLPHead`, with its weights `fc6.{weight,bias}` and `fc7.{weight,bias}`.
#[derive(Debug, Clone)]
pub struct TwoMlpHead {
    fc6: Linear,
    fc7: Linear,
    in_features: usize,
    representation_size: usize,
}

impl TwoMlpHead {
    /// The head from `in_features` (channels × pooled height × pooled width; 256 · 7 · 7 in
    /// Mask R-CNN) to `representation_size` (1024), reading `fc6` and `fc7` from `vb`.
    pub fn new(in_features: usize, representation_size: usize, vb: VarBuilder) -> Result<Self> {
        Ok(TwoMlpHead {
            fc6: crate::nn::linear(in_features, representation_size, vb.pp("fc6"))?,
            fc7: crate::nn::linear(representation_size, representation_size, vb.pp("fc7"))?,
            in_features,
            representation_size,
        })
    }

    /// The number of input features of `fc6`.
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// The width of both layers.
    pub fn representation_size(&self) -> usize {
        self.representation_size
    }

    /// `relu(fc7(relu(fc6(flatten(x)))))` for `x` of shape `(K, …)` with `in_features`
    /// values per box: `(K, representation_size)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = flatten_boxes(x, self.in_features, "TwoMlpHead")?;
        if x.dim(0)? == 0 {
            return Ok(Tensor::zeros(
                (0, self.representation_size),
                x.dtype(),
                x.device(),
            )?);
        }
        let x = crate::ops::relu(&self.fc6.forward(&x)?)?;
        crate::ops::relu(&self.fc7.forward(&x)?)
    }
}

impl Module for TwoMlpHead {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Ok(TwoMlpHead::forward(self, x)?)
    }
}

/// The classifier and box regressor of Fast R-CNN: torchvision's `FastRCNNPredictor`, with
/// its weights `cls_score.{weight,bias}` (`C` outputs) and `bbox_pred.{weight,bias}` (`4·C`
/// outputs, four deltas per class, background included).
#[derive(Debug, Clone)]
pub struct FastRcnnPredictor {
    cls_score: Linear,
    bbox_pred: Linear,
    in_features: usize,
    num_classes: usize,
}

impl FastRcnnPredictor {
    /// The predictor from `in_features` (the head's representation size) to `num_classes`
    /// (background included), reading `cls_score` and `bbox_pred` from `vb`.
    pub fn new(in_features: usize, num_classes: usize, vb: VarBuilder) -> Result<Self> {
        Ok(FastRcnnPredictor {
            cls_score: crate::nn::linear(in_features, num_classes, vb.pp("cls_score"))?,
            bbox_pred: crate::nn::linear(in_features, 4 * num_classes, vb.pp("bbox_pred"))?,
            in_features,
            num_classes,
        })
    }

    /// The number of classes, background included.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// The class logits `(K, C)` and box deltas `(K, 4·C)` of `x`, shape `(K, in_features)`
    /// (or `(K, in_features, 1, 1)`, as torchvision accepts).
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let x = flatten_boxes(x, self.in_features, "FastRcnnPredictor")?;
        if x.dim(0)? == 0 {
            let zeros = |n: usize| Tensor::zeros((0, n), x.dtype(), x.device());
            return Ok((zeros(self.num_classes)?, zeros(4 * self.num_classes)?));
        }
        Ok((self.cls_score.forward(&x)?, self.bbox_pred.forward(&x)?))
    }
}

/// `x` as `(K, features)`, after checking that it holds `features` values per box.
fn flatten_boxes(x: &Tensor, features: usize, what: &str) -> Result<Tensor> {
    let dims = x.dims();
    let per_box: usize = dims.iter().skip(1).product();
    if dims.len() < 2 || per_box != features {
        return Err(Error::Shape(format!(
            "{what} expects (K, …) with {features} values per box, got shape {dims:?}"
        )));
    }
    Ok(x.flatten_from(1)?)
}

/// The classification and box-regression losses of the sampled proposals:
/// torchvision's `roi_heads.fastrcnn_loss`.
///
/// - `class_logits` `(N, C)` and `box_regression` `(N, 4·C)` are the predictor's outputs for
///   the `N` sampled proposals of all images, in order;
/// - `labels` holds one 1-D integer tensor per image (0 for background, `1..C` for a class);
///   together they have `N` entries;
/// - `regression_targets` holds one `(K_i, 4)` tensor per image, the deltas from each proposal
///   to its matched ground truth.
///
/// Returns `(classification, box_regression)`: the mean cross entropy over the `N` samples,
/// and the smooth L1 loss (β = 1/9) of the deltas of each positive sample's class, summed
/// and divided by `N` (not by the number of positives). With no positive the box loss is a
/// differentiable zero. Both are scalars that candle can differentiate.
///
/// Fails on mismatched shapes or counts, a label outside `0..C`, or `N = 0` (torchvision
/// returns NaN there).
pub fn fastrcnn_loss(
    class_logits: &Tensor,
    box_regression: &Tensor,
    labels: &[Tensor],
    regression_targets: &[Tensor],
) -> Result<(Tensor, Tensor)> {
    let (n, c) = class_logits.dims2().map_err(|_| {
        Error::Shape(format!(
            "fastrcnn_loss expects class_logits of shape (N, C), got {:?}",
            class_logits.dims()
        ))
    })?;
    if box_regression.dims() != [n, 4 * c] {
        return Err(Error::Shape(format!(
            "fastrcnn_loss expects box_regression of shape [{n}, {}] for class_logits {:?}, \
             got {:?}",
            4 * c,
            class_logits.dims(),
            box_regression.dims()
        )));
    }
    if labels.len() != regression_targets.len() {
        return Err(Error::Shape(format!(
            "fastrcnn_loss: {} label tensors but {} regression-target tensors (one each per \
             image)",
            labels.len(),
            regression_targets.len()
        )));
    }
    let mut all_labels = Vec::with_capacity(n);
    for (i, (l, t)) in labels.iter().zip(regression_targets).enumerate() {
        let l = host_labels(l, &format!("fastrcnn_loss labels of image {i}"))?;
        if t.dims() != [l.len(), 4] {
            return Err(Error::Shape(format!(
                "fastrcnn_loss: image {i} has {} labels, so its regression targets must be \
                 [{}, 4], got {:?}",
                l.len(),
                l.len(),
                t.dims()
            )));
        }
        all_labels.extend(l);
    }
    if all_labels.len() != n {
        return Err(Error::Shape(format!(
            "fastrcnn_loss: {} labels for {n} rows of class_logits",
            all_labels.len()
        )));
    }
    if n == 0 {
        return Err(Error::Input(
            "fastrcnn_loss: no sampled proposal (the mean over zero samples is undefined)".into(),
        ));
    }
    if let Some((i, l)) = all_labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l < 0 || l as usize >= c)
    {
        return Err(Error::Input(format!(
            "fastrcnn_loss: label {l} of sample {i} is outside 0..{c}"
        )));
    }

    let dev = class_logits.device();
    let targets_idx = Tensor::from_vec(
        all_labels.iter().map(|&l| l as u32).collect::<Vec<_>>(),
        (n, 1),
        dev,
    )?;
    let log_p = candle_nn::ops::log_softmax(class_logits, D::Minus1)?;
    let classification = div_scalar(&log_p.gather(&targets_idx, 1)?.sum_all()?, -(n as f64))?;

    let positives: Vec<usize> = (0..n).filter(|&i| all_labels[i] > 0).collect();
    if positives.is_empty() {
        return Ok((classification, (box_regression.sum_all()? * 0.0)?));
    }
    let p = positives.len();
    let rows = Tensor::from_vec(
        positives
            .iter()
            .map(|&i| (i * c) as u32 + all_labels[i] as u32)
            .collect::<Vec<_>>(),
        p,
        dev,
    )?;
    let pos = Tensor::from_vec(
        positives.iter().map(|&i| i as u32).collect::<Vec<_>>(),
        p,
        dev,
    )?;
    let predicted = box_regression.reshape((n * c, 4))?.index_select(&rows, 0)?;
    let targets = Tensor::cat(regression_targets, 0)?
        .to_dtype(box_regression.dtype())?
        .index_select(&pos, 0)?;
    let box_loss = div_scalar(
        &smooth_l1_sum(&predicted, &targets, FASTRCNN_SMOOTH_L1_BETA)?,
        n as f64,
    )?;
    Ok((classification, box_loss))
}

/// The values of a 1-D integer tensor of labels or indices, on the host.
pub(crate) fn host_labels(t: &Tensor, what: &str) -> Result<Vec<i64>> {
    if t.rank() != 1 {
        return Err(Error::Shape(format!(
            "{what}: expected a 1-D tensor, got shape {:?}",
            t.dims()
        )));
    }
    match t.dtype() {
        DType::U8 | DType::U32 | DType::I64 => Ok(t.to_dtype(DType::I64)?.to_vec1::<i64>()?),
        dt => Err(Error::Input(format!(
            "{what}: expected integers (u8, u32 or i64), got {dt:?}"
        ))),
    }
}
