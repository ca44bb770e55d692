//! The settings of an [`RcnnTransform`]: a preset, a builder, validation.

use crate::{Error, Result};

/// Normalizes, resizes and batches images for a detector, and maps its detections back:
/// torchvision's `torchvision.models.detection.transform.GeneralizedRCNNTransform`.
///
/// Build one with [`RcnnTransform::mask_rcnn`], chain setters on the returned
/// [`RcnnTransformBuilder`], then call [`RcnnTransformBuilder::build`].
#[derive(Debug, Clone, PartialEq)]
pub struct RcnnTransform {
    min_sizes: Vec<usize>,
    max_size: usize,
    image_mean: Vec<f64>,
    image_std: Vec<f64>,
    size_divisible: usize,
    fixed_size: Option<(usize, usize)>,
}

/// Chained setters for an [`RcnnTransform`]; nothing is checked until [`Self::build`].
#[derive(Debug, Clone)]
pub struct RcnnTransformBuilder {
    cfg: RcnnTransform,
}

impl RcnnTransform {
    /// torchvision's Mask R-CNN settings: short side 800, long side at most 1333, ImageNet
    /// mean (0.485, 0.456, 0.406) and standard deviation (0.229, 0.224, 0.225), batches
    /// padded to multiples of 32, no fixed size.
    pub fn mask_rcnn() -> RcnnTransformBuilder {
        RcnnTransformBuilder {
            cfg: RcnnTransform {
                min_sizes: vec![800],
                max_size: 1333,
                image_mean: vec![0.485, 0.456, 0.406],
                image_std: vec![0.229, 0.224, 0.225],
                size_divisible: 32,
                fixed_size: None,
            },
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
        self.cfg.min_sizes = vec![size];
        self
    }
    /// Several short-side sizes: training draws one per image (multi-scale training),
    /// inference uses the last.
    pub fn min_sizes(mut self, sizes: impl Into<Vec<usize>>) -> Self {
        self.cfg.min_sizes = sizes.into();
        self
    }
    /// The largest long side after resizing.
    pub fn max_size(mut self, size: usize) -> Self {
        self.cfg.max_size = size;
        self
    }
    /// The per-channel mean; its length is the number of channels images must have.
    pub fn image_mean(mut self, mean: impl Into<Vec<f64>>) -> Self {
        self.cfg.image_mean = mean.into();
        self
    }
    /// The per-channel standard deviation.
    pub fn image_std(mut self, std: impl Into<Vec<f64>>) -> Self {
        self.cfg.image_std = std.into();
        self
    }
    /// The multiple the batch's height and width are padded to (the backbone's stride).
    pub fn size_divisible(mut self, multiple: usize) -> Self {
        self.cfg.size_divisible = multiple;
        self
    }
    /// Resize every image to `(height, width)` instead, ignoring `min_size` and `max_size`;
    /// `None` turns it off. torchvision's `fixed_size` tuple is `(width, height)`: pass its
    /// values swapped.
    pub fn fixed_size(mut self, size: Option<(usize, usize)>) -> Self {
        self.cfg.fixed_size = size;
        self
    }

    /// Validates the settings; an [`Error::Config`] names the first bad field.
    pub fn build(self) -> Result<RcnnTransform> {
        let cfg = self.cfg;
        if cfg.min_sizes.is_empty() {
            return Err(Error::config("min_size", "needs at least one size"));
        }
        if cfg.min_sizes.contains(&0) {
            return Err(Error::config(
                "min_size",
                format!("sizes must be positive, got {:?}", cfg.min_sizes),
            ));
        }
        if cfg.max_size == 0 {
            return Err(Error::config("max_size", "must be positive"));
        }
        if cfg.image_mean.is_empty() {
            return Err(Error::config("image_mean", "needs one value per channel"));
        }
        if let Some(v) = cfg.image_mean.iter().find(|v| !v.is_finite()) {
            return Err(Error::config("image_mean", format!("{v} is not finite")));
        }
        if cfg.image_std.len() != cfg.image_mean.len() {
            return Err(Error::config(
                "image_std",
                format!(
                    "needs one value per channel as image_mean: {} means, {} stds",
                    cfg.image_mean.len(),
                    cfg.image_std.len()
                ),
            ));
        }
        if let Some(v) = cfg.image_std.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
            return Err(Error::config(
                "image_std",
                format!("{v} is not a positive finite number"),
            ));
        }
        if cfg.size_divisible == 0 {
            return Err(Error::config("size_divisible", "must be positive"));
        }
        if let Some((h, w)) = cfg.fixed_size {
            if h == 0 || w == 0 {
                return Err(Error::config(
                    "fixed_size",
                    format!("must be non-empty, got {h}x{w}"),
                ));
            }
        }
        Ok(cfg)
    }
}
