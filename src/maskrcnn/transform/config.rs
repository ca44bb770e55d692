//! The settings of an [`RcnnTransform`]: a preset, a builder, validation.

use crate::{Error, Result};

/// Normalizes, resizes and batches images for a detector, and maps its detections back:
/// torchvision's `torchvision.models.detection.transform.GeneralizedRCNNTransform`.
///
/// Its settings are its configuration: the preset [`RcnnTransform::mask_rcnn`], chained
/// setters on the returned [`RcnnTransformBuilder`], then [`RcnnTransformBuilder::build`].
///
/// ```
/// use unetpp::maskrcnn::RcnnTransform;
/// let t = RcnnTransform::mask_rcnn().min_sizes([640, 800]).build()?;
/// assert_eq!(t.eval_min_size(), 800);
/// let fixed = t.to_builder().fixed_size(Some((512, 512))).build()?;
/// assert_eq!((fixed.min_sizes(), fixed.fixed_size()), (&[640, 800][..], Some((512, 512))));
/// # Ok::<(), unetpp::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "RcnnTransformBuilder"))]
pub struct RcnnTransform {
    min_sizes: Vec<usize>,
    max_size: usize,
    image_mean: Vec<f64>,
    image_std: Vec<f64>,
    size_divisible: usize,
    fixed_size: Option<(usize, usize)>,
}

/// Chained setters for an [`RcnnTransform`]; nothing is checked until [`Self::build`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RcnnTransformBuilder {
    min_sizes: Vec<usize>,
    max_size: usize,
    image_mean: Vec<f64>,
    image_std: Vec<f64>,
    size_divisible: usize,
    fixed_size: Option<(usize, usize)>,
}

impl RcnnTransform {
    /// torchvision's Mask R-CNN settings: short side 800, long side at most 1333, ImageNet
    /// mean (0.485, 0.456, 0.406) and standard deviation (0.229, 0.224, 0.225), batches
    /// padded to multiples of 32, no fixed size.
    pub fn mask_rcnn() -> RcnnTransformBuilder {
        RcnnTransformBuilder {
            min_sizes: vec![800],
            max_size: 1333,
            image_mean: vec![0.485, 0.456, 0.406],
            image_std: vec![0.229, 0.224, 0.225],
            size_divisible: 32,
            fixed_size: None,
        }
    }

    /// A builder holding these settings, to change them.
    pub fn to_builder(&self) -> RcnnTransformBuilder {
        RcnnTransformBuilder {
            min_sizes: self.min_sizes.clone(),
            max_size: self.max_size,
            image_mean: self.image_mean.clone(),
            image_std: self.image_std.clone(),
            size_divisible: self.size_divisible,
            fixed_size: self.fixed_size,
        }
    }

    /// The short-side sizes: training draws one per image, inference uses the last.
    pub fn min_sizes(&self) -> &[usize] {
        &self.min_sizes
    }

    /// The largest long side after resizing.
    pub fn max_size(&self) -> usize {
        self.max_size
    }

    /// The per-channel mean subtracted from the images.
    pub fn image_mean(&self) -> &[f64] {
        &self.image_mean
    }

    /// The per-channel standard deviation the images are divided by.
    pub fn image_std(&self) -> &[f64] {
        &self.image_std
    }

    /// The multiple the batch's height and width are padded to.
    pub fn size_divisible(&self) -> usize {
        self.size_divisible
    }

    /// The `(height, width)` every image is resized to, if set.
    pub fn fixed_size(&self) -> Option<(usize, usize)> {
        self.fixed_size
    }

    /// The short-side size inference uses: the last of [`Self::min_sizes`].
    pub fn eval_min_size(&self) -> usize {
        // `build` guarantees at least one size.
        self.min_sizes.last().copied().unwrap_or(0)
    }
}

impl RcnnTransformBuilder {
    /// A single short-side size (the paper's 800).
    pub fn min_size(mut self, size: usize) -> Self {
        self.min_sizes = vec![size];
        self
    }
    /// Several short-side sizes: training draws one per image (multi-scale training),
    /// inference uses the last.
    pub fn min_sizes(mut self, sizes: impl Into<Vec<usize>>) -> Self {
        self.min_sizes = sizes.into();
        self
    }
    /// The largest long side after resizing.
    pub fn max_size(mut self, size: usize) -> Self {
        self.max_size = size;
        self
    }
    /// The per-channel mean; its length is the number of channels images must have.
    pub fn image_mean(mut self, mean: impl Into<Vec<f64>>) -> Self {
        self.image_mean = mean.into();
        self
    }
    /// The per-channel standard deviation.
    pub fn image_std(mut self, std: impl Into<Vec<f64>>) -> Self {
        self.image_std = std.into();
        self
    }
    /// The multiple the batch's height and width are padded to (the backbone's stride).
    pub fn size_divisible(mut self, multiple: usize) -> Self {
        self.size_divisible = multiple;
        self
    }
    /// Resize every image to `(height, width)` instead, ignoring `min_size` and `max_size`;
    /// `None` turns it off. torchvision's `fixed_size` tuple is `(width, height)`: pass its
    /// values swapped.
    pub fn fixed_size(mut self, size: Option<(usize, usize)>) -> Self {
        self.fixed_size = size;
        self
    }

    /// The transform, or an [`Error::Config`] naming the first invalid field.
    pub fn build(self) -> Result<RcnnTransform> {
        if self.min_sizes.is_empty() {
            return Err(Error::config("min_size", "needs at least one size"));
        }
        if self.min_sizes.contains(&0) {
            return Err(Error::config(
                "min_size",
                format!("sizes must be positive, got {:?}", self.min_sizes),
            ));
        }
        if self.max_size == 0 {
            return Err(Error::config("max_size", "must be positive"));
        }
        if self.image_mean.is_empty() {
            return Err(Error::config("image_mean", "needs one value per channel"));
        }
        if let Some(v) = self.image_mean.iter().find(|v| !v.is_finite()) {
            return Err(Error::config("image_mean", format!("{v} is not finite")));
        }
        if self.image_std.len() != self.image_mean.len() {
            return Err(Error::config(
                "image_std",
                format!(
                    "needs one value per channel as image_mean: {} means, {} stds",
                    self.image_mean.len(),
                    self.image_std.len()
                ),
            ));
        }
        if let Some(v) = self
            .image_std
            .iter()
            .find(|v| !(v.is_finite() && **v > 0.0))
        {
            return Err(Error::config(
                "image_std",
                format!("{v} is not a positive finite number"),
            ));
        }
        if self.size_divisible == 0 {
            return Err(Error::config("size_divisible", "must be positive"));
        }
        if let Some((h, w)) = self.fixed_size {
            if h == 0 || w == 0 {
                return Err(Error::config(
                    "fixed_size",
                    format!("must be non-empty, got {h}x{w}"),
                ));
            }
        }
        Ok(RcnnTransform {
            min_sizes: self.min_sizes,
            max_size: self.max_size,
            image_mean: self.image_mean,
            image_std: self.image_std,
            size_divisible: self.size_divisible,
            fixed_size: self.fixed_size,
        })
    }
}

built_by!(RcnnTransform, RcnnTransformBuilder);
