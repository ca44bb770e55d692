//! The configuration of the [`Rpn`](super::Rpn): a preset, a builder, validation.

use crate::maskrcnn::sampler::BalancedPositiveNegativeSampler;
use crate::{Error, Result};

/// A validated configuration of the [`Rpn`](super::Rpn): the preset [`RpnConfig::mask_rcnn`]
/// (torchvision's `maskrcnn_resnet50_fpn` settings), chained setters on the returned
/// [`RpnConfigBuilder`], then [`RpnConfigBuilder::build`].
///
/// ```
/// use unetpp::maskrcnn::RpnConfig;
/// let cfg = RpnConfig::mask_rcnn().post_nms_top_n(2000, 300).build()?;
/// assert_eq!((cfg.pre_nms_top_n(), cfg.post_nms_top_n()), ((2000, 1000), (2000, 300)));
/// assert!(RpnConfig::mask_rcnn().bg_iou_thresh(0.8).build().is_err());
/// # Ok::<(), unetpp::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "RpnConfigBuilder"))]
pub struct RpnConfig {
    pre_nms_top_n: (usize, usize),
    post_nms_top_n: (usize, usize),
    nms_thresh: f64,
    fg_iou_thresh: f64,
    bg_iou_thresh: f64,
    batch_size_per_image: usize,
    positive_fraction: f64,
    score_thresh: f64,
    min_size: f64,
}

/// Chained setters for an [`RpnConfig`]; nothing is checked until [`Self::build`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RpnConfigBuilder {
    pre_nms_top_n: (usize, usize),
    post_nms_top_n: (usize, usize),
    nms_thresh: f64,
    fg_iou_thresh: f64,
    bg_iou_thresh: f64,
    batch_size_per_image: usize,
    positive_fraction: f64,
    score_thresh: f64,
    min_size: f64,
}

impl Default for RpnConfig {
    /// [`RpnConfig::mask_rcnn`], built.
    fn default() -> Self {
        Self::mask_rcnn().unchecked()
    }
}

impl RpnConfig {
    /// torchvision's `maskrcnn_resnet50_fpn` settings: 2000 proposals per level before NMS
    /// and 2000 per image after it in training, 1000 and 1000 at test time; NMS threshold
    /// 0.7; anchors positive from IoU 0.7, negative below 0.3; 256 sampled anchors per image,
    /// at most half positive; no score threshold; proposals of at least 1e-3 pixels.
    pub fn mask_rcnn() -> RpnConfigBuilder {
        RpnConfigBuilder {
            pre_nms_top_n: (2000, 1000),
            post_nms_top_n: (2000, 1000),
            nms_thresh: 0.7,
            fg_iou_thresh: 0.7,
            bg_iou_thresh: 0.3,
            batch_size_per_image: 256,
            positive_fraction: 0.5,
            score_thresh: 0.0,
            min_size: 1e-3,
        }
    }

    /// A builder holding this configuration, to change it.
    pub fn to_builder(&self) -> RpnConfigBuilder {
        RpnConfigBuilder {
            pre_nms_top_n: self.pre_nms_top_n,
            post_nms_top_n: self.post_nms_top_n,
            nms_thresh: self.nms_thresh,
            fg_iou_thresh: self.fg_iou_thresh,
            bg_iou_thresh: self.bg_iou_thresh,
            batch_size_per_image: self.batch_size_per_image,
            positive_fraction: self.positive_fraction,
            score_thresh: self.score_thresh,
            min_size: self.min_size,
        }
    }

    /// Proposals kept per level before NMS, `(training, test)`.
    pub fn pre_nms_top_n(&self) -> (usize, usize) {
        self.pre_nms_top_n
    }
    /// Proposals kept per image after NMS, `(training, test)`.
    pub fn post_nms_top_n(&self) -> (usize, usize) {
        self.post_nms_top_n
    }
    /// The IoU above which NMS suppresses a proposal.
    pub fn nms_thresh(&self) -> f64 {
        self.nms_thresh
    }
    /// Anchors with IoU ≥ this with a ground-truth box are positives (training).
    pub fn fg_iou_thresh(&self) -> f64 {
        self.fg_iou_thresh
    }
    /// Anchors with IoU < this with every ground-truth box are negatives (training).
    pub fn bg_iou_thresh(&self) -> f64 {
        self.bg_iou_thresh
    }
    /// Anchors sampled per image for the losses (training).
    pub fn batch_size_per_image(&self) -> usize {
        self.batch_size_per_image
    }
    /// The largest fraction of positives among them (training).
    pub fn positive_fraction(&self) -> f64 {
        self.positive_fraction
    }
    /// Proposals with objectness probability below this are dropped.
    pub fn score_thresh(&self) -> f64 {
        self.score_thresh
    }
    /// Proposals narrower or lower than this, in pixels, are dropped.
    pub fn min_size(&self) -> f64 {
        self.min_size
    }
}

impl RpnConfigBuilder {
    /// Proposals kept per level before NMS, in training and at test time (torchvision's
    /// `rpn_pre_nms_top_n_train` and `rpn_pre_nms_top_n_test`).
    pub fn pre_nms_top_n(mut self, train: usize, test: usize) -> Self {
        self.pre_nms_top_n = (train, test);
        self
    }
    /// Proposals kept per image after NMS, in training and at test time (torchvision's
    /// `rpn_post_nms_top_n_train` and `rpn_post_nms_top_n_test`).
    pub fn post_nms_top_n(mut self, train: usize, test: usize) -> Self {
        self.post_nms_top_n = (train, test);
        self
    }
    /// IoU above which NMS suppresses a proposal; finite.
    pub fn nms_thresh(mut self, t: f64) -> Self {
        self.nms_thresh = t;
        self
    }
    /// IoU from which an anchor is positive (training).
    pub fn fg_iou_thresh(mut self, t: f64) -> Self {
        self.fg_iou_thresh = t;
        self
    }
    /// IoU below which an anchor is negative (training); at most the foreground one.
    pub fn bg_iou_thresh(mut self, t: f64) -> Self {
        self.bg_iou_thresh = t;
        self
    }
    /// Anchors sampled per image (training); at least 1.
    pub fn batch_size_per_image(mut self, n: usize) -> Self {
        self.batch_size_per_image = n;
        self
    }
    /// Largest fraction of positives among them, in `[0, 1]` (training).
    pub fn positive_fraction(mut self, f: f64) -> Self {
        self.positive_fraction = f;
        self
    }
    /// Minimum objectness probability of a proposal.
    pub fn score_thresh(mut self, t: f64) -> Self {
        self.score_thresh = t;
        self
    }
    /// Minimum width and height of a proposal, in pixels; non-negative.
    pub fn min_size(mut self, size: f64) -> Self {
        self.min_size = size;
        self
    }

    /// The configuration, or an [`Error::Config`] naming the first invalid field.
    pub fn build(self) -> Result<RpnConfig> {
        if self.fg_iou_thresh.is_nan() {
            return Err(Error::config("fg_iou_thresh", "is NaN"));
        }
        if self.bg_iou_thresh.is_nan() || self.bg_iou_thresh > self.fg_iou_thresh {
            return Err(Error::config(
                "bg_iou_thresh",
                format!(
                    "must be at most fg_iou_thresh = {}, got {}",
                    self.fg_iou_thresh, self.bg_iou_thresh
                ),
            ));
        }
        // The sampler's own checks (batch size, positive fraction).
        BalancedPositiveNegativeSampler::new(self.batch_size_per_image, self.positive_fraction)?;
        if !self.nms_thresh.is_finite() {
            return Err(Error::config(
                "nms_thresh",
                format!("must be finite, got {}", self.nms_thresh),
            ));
        }
        if self.min_size.is_nan() || self.min_size < 0.0 {
            return Err(Error::config(
                "min_size",
                format!("must be non-negative, got {}", self.min_size),
            ));
        }
        Ok(self.unchecked())
    }

    /// The configuration of these settings, without the checks of [`Self::build`].
    fn unchecked(self) -> RpnConfig {
        RpnConfig {
            pre_nms_top_n: self.pre_nms_top_n,
            post_nms_top_n: self.post_nms_top_n,
            nms_thresh: self.nms_thresh,
            fg_iou_thresh: self.fg_iou_thresh,
            bg_iou_thresh: self.bg_iou_thresh,
            batch_size_per_image: self.batch_size_per_image,
            positive_fraction: self.positive_fraction,
            score_thresh: self.score_thresh,
            min_size: self.min_size,
        }
    }
}

built_by!(RpnConfig, RpnConfigBuilder);
