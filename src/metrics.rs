//! Segmentation metrics: IoU and Dice, binary and per class, per image and over a data set.
//!
//! Predictions and targets are label maps `(N, H, W)` of class indices (0 = background; a
//! binary task has classes 0 and 1). [`labels_from_logits`] turns a network's logits into
//! one. [`SegmentationMetrics`] accumulates pixel counts batch by batch and reports:
//! - **data-set scores** ([`SegmentationMetrics::iou`], [`SegmentationMetrics::mean_iou`]):
//!   intersection and union summed over every image first, then divided;
//! - **per-image scores** ([`SegmentationMetrics::image_ious`],
//!   [`SegmentationMetrics::mean_image_iou`]): one score per image, then averaged, so small
//!   objects weigh as much as large ones.
//!
//! **Empty masks**: where a class is absent from both the prediction and the target, they
//! agree perfectly and its IoU and Dice are 1. Where it is absent from one only, both are 0.
//! Mean scores average the foreground classes `1..C` (for a binary task: the IoU of class 1).
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use unetpp::metrics::SegmentationMetrics;
//!
//! let target = Tensor::new(&[[[1u32, 1], [0, 0]]], &Device::Cpu)?;
//! let pred = Tensor::new(&[[[1u32, 0], [0, 0]]], &Device::Cpu)?;
//! let mut m = SegmentationMetrics::binary();
//! m.update(&pred, &target)?;
//! assert_eq!(m.iou(1), 0.5);
//! assert!((m.dice(1) - 2.0 / 3.0).abs() < 1e-12);
//! # Ok::<(), unetpp::Error>(())
//! ```

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// Pixel counts of one class in a comparison of prediction and target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassCounts {
    /// Pixels of the class in both.
    pub intersection: u64,
    /// Pixels of the class in the prediction.
    pub predicted: u64,
    /// Pixels of the class in the target.
    pub target: u64,
}

impl ClassCounts {
    /// Pixels of the class in either.
    pub fn union(&self) -> u64 {
        self.predicted + self.target - self.intersection
    }

    /// `|P ∩ T| / |P ∪ T|`; 1 when the class is in neither.
    pub fn iou(&self) -> f64 {
        match self.union() {
            0 => 1.0,
            u => self.intersection as f64 / u as f64,
        }
    }

    /// `2·|P ∩ T| / (|P| + |T|)`; 1 when the class is in neither.
    pub fn dice(&self) -> f64 {
        match self.predicted + self.target {
            0 => 1.0,
            s => 2.0 * self.intersection as f64 / s as f64,
        }
    }

    fn add(&mut self, other: &ClassCounts) {
        self.intersection += other.intersection;
        self.predicted += other.predicted;
        self.target += other.target;
    }
}

/// Class labels `(N, H, W)` (`u32`) from logits `(N, C, H, W)`: the arg-max over classes, or
/// for one channel (binary logits) 1 where the logit is positive (probability above 0.5).
pub fn labels_from_logits(logits: &Tensor) -> Result<Tensor> {
    labels_above(logits, "logits", 0.0)
}

/// Class labels `(N, H, W)` (`u32`) from probabilities `(N, C, H, W)` (for example
/// [`Outputs::accurate`](crate::Outputs::accurate)): the arg-max, or for one channel 1 where
/// the probability exceeds 0.5.
pub fn labels_from_probabilities(probs: &Tensor) -> Result<Tensor> {
    labels_above(probs, "probabilities", 0.5)
}

/// The arg-max over classes, or for one channel the values above `threshold`; any number of
/// spatial axes after `(N, C)`.
fn labels_above(t: &Tensor, what: &str, threshold: f64) -> Result<Tensor> {
    if t.rank() < 3 {
        return Err(Error::Shape(format!(
            "{what} must be (N, C, H, W) (or (N, C, spatial…)), got {:?}",
            t.dims()
        )));
    }
    Ok(if t.dim(1)? == 1 {
        t.squeeze(1)?.gt(threshold)?.to_dtype(DType::U32)?
    } else {
        t.argmax(1)?.to_dtype(DType::U32)?
    })
}

fn label_vec(t: &Tensor, what: &str) -> Result<Vec<u32>> {
    Ok(match t.dtype() {
        DType::U32 => t.flatten_all()?.to_vec1()?,
        DType::U8 | DType::I64 => {
            let v = t.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?;
            v.into_iter()
                .map(|x| {
                    u32::try_from(x)
                        .map_err(|_| Error::Shape(format!("{what} holds the invalid label {x}")))
                })
                .collect::<Result<_>>()?
        }
        other => {
            return Err(Error::Input(format!(
                "{what} must hold integer class labels (u32, u8 or i64), got {other:?}; \
                 use labels_from_logits for logits"
            )))
        }
    })
}

/// Accumulates per-class pixel counts over a data set, image by image.
#[derive(Debug, Clone)]
pub struct SegmentationMetrics {
    num_classes: usize,
    ignore_index: Option<u32>,
    totals: Vec<ClassCounts>,
    per_image: Vec<Vec<ClassCounts>>,
}

impl SegmentationMetrics {
    /// Metrics for `num_classes` classes (background included); at least 2.
    pub fn new(num_classes: usize) -> Result<Self> {
        if num_classes < 2 {
            return Err(Error::config(
                "num_classes",
                format!("need at least 2 classes (background and one), got {num_classes}"),
            ));
        }
        Ok(Self {
            num_classes,
            ignore_index: None,
            totals: vec![ClassCounts::default(); num_classes],
            per_image: Vec::new(),
        })
    }

    /// Metrics of a binary task: classes 0 (background) and 1.
    pub fn binary() -> Self {
        Self {
            num_classes: 2,
            ignore_index: None,
            totals: vec![ClassCounts::default(); 2],
            per_image: Vec::new(),
        }
    }

    /// Target pixels labelled `index` are left out.
    pub fn ignore_index(mut self, index: u32) -> Self {
        self.ignore_index = Some(index);
        self
    }

    /// Number of classes, background included.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Adds a batch of predicted and target label maps, `(N, H, W)` or `(N, 1, H, W)`.
    pub fn update(&mut self, pred: &Tensor, target: &Tensor) -> Result<()> {
        let squeeze = |t: &Tensor| -> Result<Tensor> {
            Ok(match t.rank() {
                4 if t.dim(1)? == 1 => t.squeeze(1)?,
                3 => t.clone(),
                _ => {
                    return Err(Error::Shape(format!(
                        "label maps must be (N, H, W) or (N, 1, H, W), got {:?}",
                        t.dims()
                    )))
                }
            })
        };
        let (pred, target) = (squeeze(pred)?, squeeze(target)?);
        if pred.dims() != target.dims() {
            return Err(Error::Shape(format!(
                "prediction {:?} and target {:?} must have the same shape",
                pred.dims(),
                target.dims()
            )));
        }
        let n = pred.dim(0)?;
        let (p, t) = (
            label_vec(&pred, "prediction")?,
            label_vec(&target, "target")?,
        );
        let pixels = p.len().checked_div(n).unwrap_or(0);
        // Counted first and added at the end, so that a bad label leaves the totals as they were.
        let mut batch = Vec::with_capacity(n);
        for img in 0..n {
            let mut counts = vec![ClassCounts::default(); self.num_classes];
            let range = img * pixels..(img + 1) * pixels;
            for (&pl, &tl) in p[range.clone()].iter().zip(&t[range]) {
                if Some(tl) == self.ignore_index {
                    continue;
                }
                let c = self.num_classes as u32;
                if pl >= c || tl >= c {
                    return Err(Error::Input(format!(
                        "label {} found with {} classes",
                        pl.max(tl),
                        self.num_classes
                    )));
                }
                counts[pl as usize].predicted += 1;
                counts[tl as usize].target += 1;
                if pl == tl {
                    counts[pl as usize].intersection += 1;
                }
            }
            batch.push(counts);
        }
        for counts in batch {
            for (total, c) in self.totals.iter_mut().zip(&counts) {
                total.add(c);
            }
            self.per_image.push(counts);
        }
        Ok(())
    }

    /// Adds a batch of logits `(N, C, H, W)` against target labels (see [`labels_from_logits`]).
    pub fn update_logits(&mut self, logits: &Tensor, target: &Tensor) -> Result<()> {
        self.update(&labels_from_logits(logits)?, target)
    }

    /// Images seen so far.
    pub fn images(&self) -> usize {
        self.per_image.len()
    }

    /// Pixel counts of `class` over the data set.
    pub fn counts(&self, class: usize) -> ClassCounts {
        self.totals.get(class).copied().unwrap_or_default()
    }

    /// Data-set IoU of `class`.
    pub fn iou(&self, class: usize) -> f64 {
        self.counts(class).iou()
    }

    /// Data-set Dice of `class`.
    pub fn dice(&self, class: usize) -> f64 {
        self.counts(class).dice()
    }

    /// Data-set IoU of every class, background first.
    pub fn per_class_iou(&self) -> Vec<f64> {
        self.totals.iter().map(ClassCounts::iou).collect()
    }

    /// Data-set Dice of every class, background first.
    pub fn per_class_dice(&self) -> Vec<f64> {
        self.totals.iter().map(ClassCounts::dice).collect()
    }

    /// Mean data-set IoU over the foreground classes.
    pub fn mean_iou(&self) -> f64 {
        mean(self.totals[1..].iter().map(ClassCounts::iou))
    }

    /// Mean data-set Dice over the foreground classes.
    pub fn mean_dice(&self) -> f64 {
        mean(self.totals[1..].iter().map(ClassCounts::dice))
    }

    /// IoU of every image so far (mean over its foreground classes).
    pub fn image_ious(&self) -> Vec<f64> {
        self.per_image
            .iter()
            .map(|c| mean(c[1..].iter().map(ClassCounts::iou)))
            .collect()
    }

    /// Dice of every image so far (mean over its foreground classes).
    pub fn image_dices(&self) -> Vec<f64> {
        self.per_image
            .iter()
            .map(|c| mean(c[1..].iter().map(ClassCounts::dice)))
            .collect()
    }

    /// Mean over images of the per-image IoU; 0 before any image.
    pub fn mean_image_iou(&self) -> f64 {
        mean(self.image_ious().into_iter())
    }

    /// Mean over images of the per-image Dice; 0 before any image.
    pub fn mean_image_dice(&self) -> f64 {
        mean(self.image_dices().into_iter())
    }
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

fn binary_counts(pred: &Tensor, target: &Tensor) -> Result<ClassCounts> {
    if pred.dims() != target.dims() {
        return Err(Error::Shape(format!(
            "prediction {:?} and target {:?} must have the same shape",
            pred.dims(),
            target.dims()
        )));
    }
    // Counted in u32 so that large masks stay exact (an f32 sum would not past 2^24).
    let p = pred.to_dtype(DType::F32)?.gt(0.5)?.to_dtype(DType::U32)?;
    let t = target.to_dtype(DType::F32)?.gt(0.5)?.to_dtype(DType::U32)?;
    let count = |x: &Tensor| -> Result<u64> { Ok(u64::from(x.sum_all()?.to_scalar::<u32>()?)) };
    Ok(ClassCounts {
        intersection: count(&(&p * &t)?)?,
        predicted: count(&p)?,
        target: count(&t)?,
    })
}

/// IoU of the binary masks `pred > 0.5` and `target > 0.5` over the whole tensor (pass
/// probabilities, not logits). Two empty masks agree perfectly: the IoU is then 1.
pub fn iou_binary(pred: &Tensor, target: &Tensor) -> Result<f32> {
    Ok(binary_counts(pred, target)?.iou() as f32)
}

/// Dice of the binary masks `pred > 0.5` and `target > 0.5` over the whole tensor; 1 for two
/// empty masks.
pub fn dice_binary(pred: &Tensor, target: &Tensor) -> Result<f32> {
    Ok(binary_counts(pred, target)?.dice() as f32)
}
