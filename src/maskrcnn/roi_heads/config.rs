//! The configuration of the [`RoiHeads`](super::RoiHeads): a preset, a builder, validation.

use crate::maskrcnn::{BalancedPositiveNegativeSampler, BoxCoder, Matcher};
use crate::ops::MultiScaleRoiAlign;
use crate::{Error, Result};

/// A validated configuration of [`RoiHeads`](super::RoiHeads): the preset
/// [`RoiHeadsConfig::mask_rcnn`] (torchvision's `maskrcnn_resnet50_fpn` settings), chained
/// setters on the returned [`RoiHeadsConfigBuilder`], then [`RoiHeadsConfigBuilder::build`].
///
/// ```
/// use unetpp::maskrcnn::RoiHeadsConfig;
/// let cfg = RoiHeadsConfig::mask_rcnn().num_classes(2).build()?;
/// assert_eq!(cfg.detections_per_img(), 100);
/// assert!(RoiHeadsConfig::mask_rcnn().num_classes(1).build().is_err());
/// let more = cfg.to_builder().detections_per_img(200).build()?;
/// assert_eq!((more.num_classes(), more.detections_per_img()), (2, 200));
/// # Ok::<(), unetpp::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "RoiHeadsConfigBuilder"))]
pub struct RoiHeadsConfig {
    num_classes: usize,
    in_channels: usize,
    num_feature_maps: usize,
    box_pooler: Pooler,
    mask_pooler: Pooler,
    representation_size: usize,
    mask_layers: Vec<usize>,
    mask_dim_reduced: usize,
    score_thresh: f64,
    nms_thresh: f64,
    detections_per_img: usize,
    fg_iou_thresh: f64,
    bg_iou_thresh: f64,
    batch_size_per_image: usize,
    positive_fraction: f64,
    bbox_reg_weights: [f64; 4],
}

/// Chained setters for a [`RoiHeadsConfig`]; nothing is checked until [`Self::build`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RoiHeadsConfigBuilder {
    num_classes: usize,
    in_channels: usize,
    num_feature_maps: usize,
    box_pooler: Pooler,
    mask_pooler: Pooler,
    representation_size: usize,
    mask_layers: Vec<usize>,
    mask_dim_reduced: usize,
    score_thresh: f64,
    nms_thresh: f64,
    detections_per_img: usize,
    fg_iou_thresh: f64,
    bg_iou_thresh: f64,
    batch_size_per_image: usize,
    positive_fraction: f64,
    bbox_reg_weights: [f64; 4],
}

/// The settings of a [`MultiScaleRoiAlign`] that a configuration stores (and serialises):
/// its output size and sampling ratio, the canonical level (224 pixels at level 4) being
/// torchvision's.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
struct Pooler {
    output_size: (usize, usize),
    sampling_ratio: i64,
}

impl Pooler {
    fn pooler(self) -> MultiScaleRoiAlign {
        MultiScaleRoiAlign::new(self.output_size, self.sampling_ratio)
    }
}

impl Default for RoiHeadsConfig {
    /// [`RoiHeadsConfig::mask_rcnn`], built.
    fn default() -> Self {
        Self::mask_rcnn().unchecked()
    }
}

impl RoiHeadsConfig {
    /// torchvision's Mask R-CNN (`maskrcnn_resnet50_fpn`): 91 classes (COCO, background
    /// included) over four FPN maps of 256 channels; box pooling 7×7 and mask pooling 14×14,
    /// both with sampling ratio 2; a 1024-wide box head; four 256-channel mask convolutions
    /// and 256 channels in the mask predictor; score threshold 0.05, NMS threshold 0.5, 100
    /// detections per image; for training, foreground and background IoU thresholds 0.5, 512
    /// sampled proposals per image of which at most a quarter positive, box-coder weights
    /// (10, 10, 5, 5).
    pub fn mask_rcnn() -> RoiHeadsConfigBuilder {
        RoiHeadsConfigBuilder {
            num_classes: 91,
            in_channels: 256,
            num_feature_maps: 4,
            box_pooler: Pooler {
                output_size: (7, 7),
                sampling_ratio: 2,
            },
            mask_pooler: Pooler {
                output_size: (14, 14),
                sampling_ratio: 2,
            },
            representation_size: 1024,
            mask_layers: vec![256; 4],
            mask_dim_reduced: 256,
            score_thresh: 0.05,
            nms_thresh: 0.5,
            detections_per_img: 100,
            fg_iou_thresh: 0.5,
            bg_iou_thresh: 0.5,
            batch_size_per_image: 512,
            positive_fraction: 0.25,
            bbox_reg_weights: [10.0, 10.0, 5.0, 5.0],
        }
    }

    /// A builder holding this configuration, to change it.
    pub fn to_builder(&self) -> RoiHeadsConfigBuilder {
        RoiHeadsConfigBuilder {
            num_classes: self.num_classes,
            in_channels: self.in_channels,
            num_feature_maps: self.num_feature_maps,
            box_pooler: self.box_pooler,
            mask_pooler: self.mask_pooler,
            representation_size: self.representation_size,
            mask_layers: self.mask_layers.clone(),
            mask_dim_reduced: self.mask_dim_reduced,
            score_thresh: self.score_thresh,
            nms_thresh: self.nms_thresh,
            detections_per_img: self.detections_per_img,
            fg_iou_thresh: self.fg_iou_thresh,
            bg_iou_thresh: self.bg_iou_thresh,
            batch_size_per_image: self.batch_size_per_image,
            positive_fraction: self.positive_fraction,
            bbox_reg_weights: self.bbox_reg_weights,
        }
    }

    /// The number of classes, background (class 0) included.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }
    /// The channels of every feature map.
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }
    /// The number of feature maps the poolers read (the FPN's `'0'..'3'`).
    pub fn num_feature_maps(&self) -> usize {
        self.num_feature_maps
    }
    /// The pooler of the box branch.
    pub fn box_pooler(&self) -> MultiScaleRoiAlign {
        self.box_pooler.pooler()
    }
    /// The pooler of the mask branch.
    pub fn mask_pooler(&self) -> MultiScaleRoiAlign {
        self.mask_pooler.pooler()
    }
    /// The width of the box head's two layers.
    pub fn representation_size(&self) -> usize {
        self.representation_size
    }
    /// The output channels of each 3×3 convolution of the mask head.
    pub fn mask_layers(&self) -> &[usize] {
        &self.mask_layers
    }
    /// The channels of the mask predictor's transposed convolution.
    pub fn mask_dim_reduced(&self) -> usize {
        self.mask_dim_reduced
    }
    /// Detections must score strictly above this.
    pub fn score_thresh(&self) -> f64 {
        self.score_thresh
    }
    /// The IoU above which NMS suppresses a box of the same class.
    pub fn nms_thresh(&self) -> f64 {
        self.nms_thresh
    }
    /// The most detections kept per image.
    pub fn detections_per_img(&self) -> usize {
        self.detections_per_img
    }
    /// The IoU from which a proposal is matched to a ground truth (training).
    pub fn fg_iou_thresh(&self) -> f64 {
        self.fg_iou_thresh
    }
    /// The IoU below which a proposal is background (training).
    pub fn bg_iou_thresh(&self) -> f64 {
        self.bg_iou_thresh
    }
    /// The proposals sampled per image for the losses (training).
    pub fn batch_size_per_image(&self) -> usize {
        self.batch_size_per_image
    }
    /// The largest fraction of positives among them (training).
    pub fn positive_fraction(&self) -> f64 {
        self.positive_fraction
    }
    /// The box coder's weights `(w_x, w_y, w_w, w_h)`.
    pub fn bbox_reg_weights(&self) -> [f64; 4] {
        self.bbox_reg_weights
    }

    /// The box coder of these settings.
    pub fn box_coder(&self) -> BoxCoder {
        BoxCoder::new(self.bbox_reg_weights)
    }

    /// The proposal matcher of these settings (no low-quality matches).
    pub fn matcher(&self) -> Result<Matcher> {
        Matcher::new(self.fg_iou_thresh, self.bg_iou_thresh, false)
    }

    /// The sampler of these settings.
    pub fn sampler(&self) -> Result<BalancedPositiveNegativeSampler> {
        BalancedPositiveNegativeSampler::new(self.batch_size_per_image, self.positive_fraction)
    }
}

impl RoiHeadsConfigBuilder {
    /// Classes, background included (at least 2).
    pub fn num_classes(mut self, n: usize) -> Self {
        self.num_classes = n;
        self
    }
    /// Channels of the feature maps (the FPN's 256).
    pub fn in_channels(mut self, c: usize) -> Self {
        self.in_channels = c;
        self
    }
    /// How many feature maps [`RoiHeads::forward`](super::RoiHeads::forward) takes (4: the FPN's `'0'..'3'`, not its
    /// `'pool'` map).
    pub fn num_feature_maps(mut self, n: usize) -> Self {
        self.num_feature_maps = n;
        self
    }
    /// The box branch's pooler: [`MultiScaleRoiAlign::new`] with `output_size` and
    /// `sampling_ratio` (≤ 0: adaptive).
    pub fn box_pooler(mut self, output_size: (usize, usize), sampling_ratio: i64) -> Self {
        self.box_pooler = Pooler {
            output_size,
            sampling_ratio,
        };
        self
    }
    /// The mask branch's pooler: [`MultiScaleRoiAlign::new`] with `output_size` and
    /// `sampling_ratio` (≤ 0: adaptive).
    pub fn mask_pooler(mut self, output_size: (usize, usize), sampling_ratio: i64) -> Self {
        self.mask_pooler = Pooler {
            output_size,
            sampling_ratio,
        };
        self
    }
    /// Width of the box head's two fully connected layers.
    pub fn representation_size(mut self, n: usize) -> Self {
        self.representation_size = n;
        self
    }
    /// Output channels of each 3×3 convolution of the mask head.
    pub fn mask_layers(mut self, layers: impl Into<Vec<usize>>) -> Self {
        self.mask_layers = layers.into();
        self
    }
    /// Channels of the mask predictor's transposed convolution.
    pub fn mask_dim_reduced(mut self, n: usize) -> Self {
        self.mask_dim_reduced = n;
        self
    }
    /// Minimum score (exclusive) of a detection.
    pub fn score_thresh(mut self, t: f64) -> Self {
        self.score_thresh = t;
        self
    }
    /// IoU threshold of the per-class NMS, in `[0, 1]`.
    pub fn nms_thresh(mut self, t: f64) -> Self {
        self.nms_thresh = t;
        self
    }
    /// Most detections kept per image (at least 1).
    pub fn detections_per_img(mut self, n: usize) -> Self {
        self.detections_per_img = n;
        self
    }
    /// IoU from which a proposal is foreground (training).
    pub fn fg_iou_thresh(mut self, t: f64) -> Self {
        self.fg_iou_thresh = t;
        self
    }
    /// IoU below which a proposal is background (training); at most the foreground one.
    pub fn bg_iou_thresh(mut self, t: f64) -> Self {
        self.bg_iou_thresh = t;
        self
    }
    /// Proposals sampled per image (training).
    pub fn batch_size_per_image(mut self, n: usize) -> Self {
        self.batch_size_per_image = n;
        self
    }
    /// Largest fraction of positives among them, in `[0, 1]` (training).
    pub fn positive_fraction(mut self, f: f64) -> Self {
        self.positive_fraction = f;
        self
    }
    /// Box-coder weights `(w_x, w_y, w_w, w_h)`, positive.
    pub fn bbox_reg_weights(mut self, w: [f64; 4]) -> Self {
        self.bbox_reg_weights = w;
        self
    }

    /// The configuration, or an [`Error::Config`] naming the first invalid field.
    pub fn build(self) -> Result<RoiHeadsConfig> {
        if self.num_classes < 2 {
            return Err(Error::config(
                "num_classes",
                format!(
                    "need the background and at least one class, got {}",
                    self.num_classes
                ),
            ));
        }
        for (field, v) in [
            ("in_channels", self.in_channels),
            ("num_feature_maps", self.num_feature_maps),
            ("representation_size", self.representation_size),
            ("mask_dim_reduced", self.mask_dim_reduced),
            ("detections_per_img", self.detections_per_img),
        ] {
            if v == 0 {
                return Err(Error::config(field, "must be at least 1"));
            }
        }
        for (field, pooler) in [
            ("box_pooler", self.box_pooler),
            ("mask_pooler", self.mask_pooler),
        ] {
            let (h, w) = pooler.output_size;
            if h == 0 || w == 0 {
                return Err(Error::config(
                    field,
                    format!("output size must be positive, got {h}x{w}"),
                ));
            }
        }
        if self.mask_layers.is_empty() || self.mask_layers.contains(&0) {
            return Err(Error::config(
                "mask_layers",
                format!(
                    "need at least one layer, each of at least 1 channel, got {:?}",
                    self.mask_layers
                ),
            ));
        }
        if !self.score_thresh.is_finite() {
            return Err(Error::config(
                "score_thresh",
                format!("must be finite, got {}", self.score_thresh),
            ));
        }
        if !(0.0..=1.0).contains(&self.nms_thresh) {
            return Err(Error::config(
                "nms_thresh",
                format!("must be in [0, 1], got {}", self.nms_thresh),
            ));
        }
        if !(0.0..=1.0).contains(&self.fg_iou_thresh) {
            return Err(Error::config(
                "fg_iou_thresh",
                format!("must be in [0, 1], got {}", self.fg_iou_thresh),
            ));
        }
        if !(0.0..=self.fg_iou_thresh).contains(&self.bg_iou_thresh) {
            return Err(Error::config(
                "bg_iou_thresh",
                format!(
                    "must be in [0, fg_iou_thresh = {}], got {}",
                    self.fg_iou_thresh, self.bg_iou_thresh
                ),
            ));
        }
        BalancedPositiveNegativeSampler::new(self.batch_size_per_image, self.positive_fraction)?;
        if let Some(w) = self
            .bbox_reg_weights
            .iter()
            .find(|w| !(w.is_finite() && **w > 0.0))
        {
            return Err(Error::config(
                "bbox_reg_weights",
                format!("each weight must be positive and finite, got {w}"),
            ));
        }
        Ok(self.unchecked())
    }

    /// The configuration of these settings, without the checks of [`Self::build`].
    fn unchecked(self) -> RoiHeadsConfig {
        RoiHeadsConfig {
            num_classes: self.num_classes,
            in_channels: self.in_channels,
            num_feature_maps: self.num_feature_maps,
            box_pooler: self.box_pooler,
            mask_pooler: self.mask_pooler,
            representation_size: self.representation_size,
            mask_layers: self.mask_layers,
            mask_dim_reduced: self.mask_dim_reduced,
            score_thresh: self.score_thresh,
            nms_thresh: self.nms_thresh,
            detections_per_img: self.detections_per_img,
            fg_iou_thresh: self.fg_iou_thresh,
            bg_iou_thresh: self.bg_iou_thresh,
            batch_size_per_image: self.batch_size_per_image,
            positive_fraction: self.positive_fraction,
            bbox_reg_weights: self.bbox_reg_weights,
        }
    }
}

built_by!(RoiHeadsConfig, RoiHeadsConfigBuilder);
