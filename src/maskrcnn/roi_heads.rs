//! Mask R-CNN's RoI heads: from FPN features and proposals to scored, labelled boxes with
//! masks, or to the box and mask losses, as torchvision 0.29's
//! `torchvision.models.detection.roi_heads.RoIHeads` computes them for `maskrcnn_resnet50_fpn`.
//!
//! Each proposal is pooled from the pyramid level that suits its size (7×7,
//! [`MultiScaleRoiAlign`]), classified and regressed by the box branch ([`TwoMlpHead`],
//! [`FastRcnnPredictor`]); the kept detections are pooled again (14×14) for the mask branch
//! ([`MaskRcnnHeads`], [`MaskRcnnPredictor`]), which predicts one 28×28 mask per class
//! (He et al. 2017, §3 and Fig. 4, right). Weights carry torchvision's names, so
//! `RoiHeads::new(&cfg, vb.pp("roi_heads"))` reads a `maskrcnn_resnet50_fpn` state_dict as is.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use unetpp::maskrcnn::{RoiHeads, RoiHeadsConfig};
//!
//! let dev = Device::Cpu;
//! // Narrow layers so that the example runs fast; `RoiHeadsConfig::mask_rcnn().build()` has
//! // torchvision's sizes.
//! let cfg = RoiHeadsConfig::mask_rcnn()
//!     .num_classes(3)
//!     .in_channels(8)
//!     .representation_size(16)
//!     .mask_layers([8, 8])
//!     .mask_dim_reduced(8)
//!     .score_thresh(0.0)
//!     .build()?;
//! let varmap = VarMap::new();
//! let heads = RoiHeads::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
//! // One 64×64 image: FPN maps at strides 4, 8, 16, 32, and two proposals.
//! let features = [16, 8, 4, 2]
//!     .iter()
//!     .map(|&s| Tensor::randn(0f32, 1., (1, 8, s, s), &dev))
//!     .collect::<candle_core::Result<Vec<_>>>()?;
//! let proposals = [Tensor::new(&[[4f32, 4., 40., 30.], [10., 20., 60., 60.]], &dev)?];
//! let detections = heads.forward(&features, &proposals, &[(64, 64)])?;
//! let d = &detections[0];
//! let n = d.boxes.dim(0)?;
//! assert_eq!(d.masks.dims(), &[n, 1, 28, 28]);
//! # Ok::<(), unetpp::Error>(())
//! ```

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use rand::Rng;

use super::box_head::{fastrcnn_loss, host_labels, FastRcnnPredictor, TwoMlpHead};
use super::mask_head::{maskrcnn_inference, maskrcnn_loss, MaskRcnnHeads, MaskRcnnPredictor};
use super::{BalancedPositiveNegativeSampler, BoxCoder, Matcher};
use crate::nn::NamedTensor;
use crate::ops::{
    batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes, MultiScaleRoiAlign,
};
use crate::{weights, Error, Result};

/// Boxes narrower or lower than this are dropped after decoding (torchvision's fixed
/// `min_size=1e-2` in `postprocess_detections`).
pub const MIN_DETECTION_SIZE: f64 = 1e-2;

/// A validated configuration of [`RoiHeads`]. Start from [`RoiHeadsConfig::mask_rcnn`]
/// (torchvision's `maskrcnn_resnet50_fpn` settings), change what differs, then
/// [`RoiHeadsConfigBuilder::build`].
///
/// ```
/// use unetpp::maskrcnn::RoiHeadsConfig;
/// let cfg = RoiHeadsConfig::mask_rcnn().num_classes(2).build()?;
/// assert_eq!(cfg.detections_per_img(), 100);
/// assert!(RoiHeadsConfig::mask_rcnn().num_classes(1).build().is_err());
/// # Ok::<(), unetpp::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RoiHeadsConfig {
    num_classes: usize,
    in_channels: usize,
    num_feature_maps: usize,
    box_pooler: MultiScaleRoiAlign,
    mask_pooler: MultiScaleRoiAlign,
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
#[derive(Debug, Clone)]
pub struct RoiHeadsConfigBuilder {
    cfg: RoiHeadsConfig,
}

impl Default for RoiHeadsConfig {
    /// [`RoiHeadsConfig::mask_rcnn`], built.
    fn default() -> Self {
        Self::mask_rcnn().cfg
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
            cfg: RoiHeadsConfig {
                num_classes: 91,
                in_channels: 256,
                num_feature_maps: 4,
                box_pooler: MultiScaleRoiAlign::mask_rcnn_boxes(),
                mask_pooler: MultiScaleRoiAlign::mask_rcnn_masks(),
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
            },
        }
    }

    /// A builder starting from this configuration.
    pub fn to_builder(&self) -> RoiHeadsConfigBuilder {
        RoiHeadsConfigBuilder { cfg: self.clone() }
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
        self.box_pooler
    }
    /// The pooler of the mask branch.
    pub fn mask_pooler(&self) -> MultiScaleRoiAlign {
        self.mask_pooler
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
        self.cfg.num_classes = n;
        self
    }
    /// Channels of the feature maps (the FPN's 256).
    pub fn in_channels(mut self, c: usize) -> Self {
        self.cfg.in_channels = c;
        self
    }
    /// How many feature maps [`RoiHeads::forward`] takes (4: the FPN's `'0'..'3'`, not its
    /// `'pool'` map).
    pub fn num_feature_maps(mut self, n: usize) -> Self {
        self.cfg.num_feature_maps = n;
        self
    }
    /// The box branch's pooler.
    pub fn box_pooler(mut self, pooler: MultiScaleRoiAlign) -> Self {
        self.cfg.box_pooler = pooler;
        self
    }
    /// The mask branch's pooler.
    pub fn mask_pooler(mut self, pooler: MultiScaleRoiAlign) -> Self {
        self.cfg.mask_pooler = pooler;
        self
    }
    /// Width of the box head's two fully connected layers.
    pub fn representation_size(mut self, n: usize) -> Self {
        self.cfg.representation_size = n;
        self
    }
    /// Output channels of each 3×3 convolution of the mask head.
    pub fn mask_layers(mut self, layers: impl Into<Vec<usize>>) -> Self {
        self.cfg.mask_layers = layers.into();
        self
    }
    /// Channels of the mask predictor's transposed convolution.
    pub fn mask_dim_reduced(mut self, n: usize) -> Self {
        self.cfg.mask_dim_reduced = n;
        self
    }
    /// Minimum score (exclusive) of a detection.
    pub fn score_thresh(mut self, t: f64) -> Self {
        self.cfg.score_thresh = t;
        self
    }
    /// IoU threshold of the per-class NMS, in `[0, 1]`.
    pub fn nms_thresh(mut self, t: f64) -> Self {
        self.cfg.nms_thresh = t;
        self
    }
    /// Most detections kept per image (at least 1).
    pub fn detections_per_img(mut self, n: usize) -> Self {
        self.cfg.detections_per_img = n;
        self
    }
    /// IoU from which a proposal is foreground (training).
    pub fn fg_iou_thresh(mut self, t: f64) -> Self {
        self.cfg.fg_iou_thresh = t;
        self
    }
    /// IoU below which a proposal is background (training); at most the foreground one.
    pub fn bg_iou_thresh(mut self, t: f64) -> Self {
        self.cfg.bg_iou_thresh = t;
        self
    }
    /// Proposals sampled per image (training).
    pub fn batch_size_per_image(mut self, n: usize) -> Self {
        self.cfg.batch_size_per_image = n;
        self
    }
    /// Largest fraction of positives among them, in `[0, 1]` (training).
    pub fn positive_fraction(mut self, f: f64) -> Self {
        self.cfg.positive_fraction = f;
        self
    }
    /// Box-coder weights `(w_x, w_y, w_w, w_h)`, positive.
    pub fn bbox_reg_weights(mut self, w: [f64; 4]) -> Self {
        self.cfg.bbox_reg_weights = w;
        self
    }

    /// Validates the configuration; an [`Error::Config`] names the first bad field.
    pub fn build(self) -> Result<RoiHeadsConfig> {
        let cfg = self.cfg;
        if cfg.num_classes < 2 {
            return Err(Error::config(
                "num_classes",
                format!(
                    "need the background and at least one class, got {}",
                    cfg.num_classes
                ),
            ));
        }
        for (field, v) in [
            ("in_channels", cfg.in_channels),
            ("num_feature_maps", cfg.num_feature_maps),
            ("representation_size", cfg.representation_size),
            ("mask_dim_reduced", cfg.mask_dim_reduced),
            ("detections_per_img", cfg.detections_per_img),
        ] {
            if v == 0 {
                return Err(Error::config(field, "must be at least 1"));
            }
        }
        for (field, pooler) in [
            ("box_pooler", cfg.box_pooler),
            ("mask_pooler", cfg.mask_pooler),
        ] {
            let (h, w) = pooler.output_size();
            if h == 0 || w == 0 {
                return Err(Error::config(
                    field,
                    format!("output size must be positive, got {h}x{w}"),
                ));
            }
        }
        if cfg.mask_layers.is_empty() || cfg.mask_layers.contains(&0) {
            return Err(Error::config(
                "mask_layers",
                format!(
                    "need at least one layer, each of at least 1 channel, got {:?}",
                    cfg.mask_layers
                ),
            ));
        }
        if !cfg.score_thresh.is_finite() {
            return Err(Error::config(
                "score_thresh",
                format!("must be finite, got {}", cfg.score_thresh),
            ));
        }
        if !(0.0..=1.0).contains(&cfg.nms_thresh) {
            return Err(Error::config(
                "nms_thresh",
                format!("must be in [0, 1], got {}", cfg.nms_thresh),
            ));
        }
        if !(0.0..=1.0).contains(&cfg.fg_iou_thresh) {
            return Err(Error::config(
                "fg_iou_thresh",
                format!("must be in [0, 1], got {}", cfg.fg_iou_thresh),
            ));
        }
        if !(0.0..=cfg.fg_iou_thresh).contains(&cfg.bg_iou_thresh) {
            return Err(Error::config(
                "bg_iou_thresh",
                format!(
                    "must be in [0, fg_iou_thresh = {}], got {}",
                    cfg.fg_iou_thresh, cfg.bg_iou_thresh
                ),
            ));
        }
        cfg.sampler()?;
        if let Some(w) = cfg
            .bbox_reg_weights
            .iter()
            .find(|w| !(w.is_finite() && **w > 0.0))
        {
            return Err(Error::config(
                "bbox_reg_weights",
                format!("each weight must be positive and finite, got {w}"),
            ));
        }
        Ok(cfg)
    }
}

/// The ground truth of one image for training: `boxes` `(G, 4)` (float, `x1, y1, x2, y2` in
/// the image's pixels), `labels` `(G)` (integers in `0..num_classes`; u8, u32 or i64) and
/// `masks` `(G, H, W)` (any dtype, 0 or 1) with `(H, W)` the image's size.
#[derive(Debug, Clone)]
pub struct RoiHeadsTarget {
    /// Ground-truth boxes, `(G, 4)`.
    pub boxes: Tensor,
    /// Their classes, `(G)`.
    pub labels: Tensor,
    /// Their masks, `(G, H, W)`.
    pub masks: Tensor,
}

/// The detections of one image from the box branch (before the masks): what torchvision's
/// `postprocess_detections` returns.
#[derive(Debug, Clone)]
pub struct BoxDetections {
    /// `(D, 4)` boxes in the image's pixels, clipped to it.
    pub boxes: Tensor,
    /// `(D)` class probabilities, in NMS order (descending).
    pub scores: Tensor,
    /// `(D)` i64 classes in `1..num_classes`.
    pub labels: Tensor,
}

/// The detections of one image: boxes, scores, labels and mask probabilities.
#[derive(Debug, Clone)]
pub struct Detections {
    /// `(D, 4)` boxes in the image's pixels, clipped to it.
    pub boxes: Tensor,
    /// `(D)` class probabilities, descending.
    pub scores: Tensor,
    /// `(D)` i64 classes in `1..num_classes`.
    pub labels: Tensor,
    /// `(D, 1, M, M)` mask probabilities in the box (28×28 with the default pooler), to be
    /// pasted into the image (torchvision's `paste_masks_in_image`).
    pub masks: Tensor,
}

/// The proposals each image trains on: torchvision's `select_training_samples`.
#[derive(Debug, Clone)]
pub struct TrainingSamples {
    /// Per image, the sampled proposals `(S_i, 4)` (proposals and ground-truth boxes).
    pub proposals: Vec<Tensor>,
    /// Per image, the i64 index of each sample's ground truth `(S_i)` (0 for background
    /// samples, or for images without ground truth).
    pub matched_idxs: Vec<Tensor>,
    /// Per image, the i64 class of each sample `(S_i)`: 0 for background.
    pub labels: Vec<Tensor>,
    /// Per image, the deltas from each sample to its ground truth `(S_i, 4)`.
    pub regression_targets: Vec<Tensor>,
}

/// The three losses of the RoI heads (scalars).
#[derive(Debug, Clone)]
pub struct RoiHeadsLosses {
    /// The classifier's cross entropy (torchvision's `loss_classifier`).
    pub classifier: Tensor,
    /// The box regression's smooth L1 (`loss_box_reg`).
    pub box_reg: Tensor,
    /// The masks' binary cross entropy (`loss_mask`).
    pub mask: Tensor,
}

impl RoiHeadsLosses {
    /// The sum of the three, as torchvision's training loop sums its loss dictionary.
    pub fn total(&self) -> Result<Tensor> {
        Ok(((&self.classifier + &self.box_reg)? + &self.mask)?)
    }
}

/// Mask R-CNN's RoI heads: box branch and mask branch with torchvision's weight names
/// (`box_head.fc6.weight`, `box_predictor.cls_score.weight`, `mask_head.0.0.weight`,
/// `mask_predictor.conv5_mask.weight`, …).
#[derive(Debug, Clone)]
pub struct RoiHeads {
    cfg: RoiHeadsConfig,
    box_head: TwoMlpHead,
    box_predictor: FastRcnnPredictor,
    mask_head: MaskRcnnHeads,
    mask_predictor: MaskRcnnPredictor,
    box_coder: BoxCoder,
    matcher: Matcher,
    sampler: BalancedPositiveNegativeSampler,
    tensors: Vec<NamedTensor>,
}

impl RoiHeads {
    /// The heads of `cfg`, reading (or, from a `VarMap`, creating) their weights from `vb`
    /// under torchvision's names.
    pub fn new(cfg: &RoiHeadsConfig, vb: VarBuilder) -> Result<Self> {
        let ((box_head, box_predictor, mask_head, mask_predictor), tensors) =
            weights::record(vb, |vb| Self::layers(cfg, &vb))?;
        Ok(RoiHeads {
            box_coder: cfg.box_coder(),
            matcher: cfg.matcher()?,
            sampler: cfg.sampler()?,
            cfg: cfg.clone(),
            box_head,
            box_predictor,
            mask_head,
            mask_predictor,
            tensors,
        })
    }

    #[allow(clippy::type_complexity)]
    fn layers(
        cfg: &RoiHeadsConfig,
        vb: &VarBuilder,
    ) -> Result<(
        TwoMlpHead,
        FastRcnnPredictor,
        MaskRcnnHeads,
        MaskRcnnPredictor,
    )> {
        let (ph, pw) = cfg.box_pooler.output_size();
        let box_head = TwoMlpHead::new(
            cfg.in_channels * ph * pw,
            cfg.representation_size,
            vb.pp("box_head"),
        )?;
        let box_predictor = FastRcnnPredictor::new(
            cfg.representation_size,
            cfg.num_classes,
            vb.pp("box_predictor"),
        )?;
        let mask_head = MaskRcnnHeads::new(cfg.in_channels, &cfg.mask_layers, vb.pp("mask_head"))?;
        let mask_predictor = MaskRcnnPredictor::new(
            mask_head.out_channels(),
            cfg.mask_dim_reduced,
            cfg.num_classes,
            vb.pp("mask_predictor"),
        )?;
        Ok((box_head, box_predictor, mask_head, mask_predictor))
    }

    /// The heads from a set of tensors named as the `state_dict` of torchvision's `RoIHeads`
    /// (a `maskrcnn_resnet50_fpn` state_dict's `roi_heads.*` with that prefix removed), in
    /// f32 on `device` (names of checkpoints from before torchvision 0.13 are renamed by
    /// [`super::current_names`]). Every tensor must be used and have the right shape: anything missing,
    /// mis-shaped or left over is an [`Error::Weights`] naming it.
    pub fn from_torchvision(
        cfg: &RoiHeadsConfig,
        tensors: HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        let tensors = super::current_names(tensors);
        weights::build_checked(tensors, DType::F32, device, |vb| Self::new(cfg, vb))
    }

    /// The configuration.
    pub fn config(&self) -> &RoiHeadsConfig {
        &self.cfg
    }

    /// The box head.
    pub fn box_head(&self) -> &TwoMlpHead {
        &self.box_head
    }

    /// The box predictor.
    pub fn box_predictor(&self) -> &FastRcnnPredictor {
        &self.box_predictor
    }

    /// The mask head.
    pub fn mask_head(&self) -> &MaskRcnnHeads {
        &self.mask_head
    }

    /// The mask predictor.
    pub fn mask_predictor(&self) -> &MaskRcnnPredictor {
        &self.mask_predictor
    }

    /// Every weight under torchvision's names (`box_head.fc6.weight`, …), in the order of
    /// its `state_dict`.
    pub fn named_tensors(&self) -> Vec<NamedTensor> {
        self.tensors.clone()
    }

    /// Detection (torchvision's `RoIHeads.forward` in eval mode).
    ///
    /// - `features`: the FPN maps `'0'..'3'` (finest first; not `'pool'`), each
    ///   `(N, in_channels, H_l, W_l)` over the padded batch;
    /// - `proposals`: per image, `(K_i, 4)` float boxes in its pixels;
    /// - `image_sizes`: per image, its `(height, width)` before padding.
    ///
    /// Returns per image the detections: class probabilities (softmax) and class-specific
    /// boxes, clipped to the image, without the background, scores strictly above
    /// `score_thresh`, boxes at least [`MIN_DETECTION_SIZE`] wide and high, per-class NMS,
    /// the best `detections_per_img`; then each detection's mask of its class.
    pub fn forward(
        &self,
        features: &[Tensor],
        proposals: &[Tensor],
        image_sizes: &[(usize, usize)],
    ) -> Result<Vec<Detections>> {
        self.check_inputs(features, proposals, image_sizes)?;
        let pooled = self
            .cfg
            .box_pooler
            .forward(features, proposals, image_sizes)?;
        let (class_logits, box_regression) = self.box_predictions(&pooled)?;
        let found =
            self.postprocess_detections(&class_logits, &box_regression, proposals, image_sizes)?;
        let boxes: Vec<Tensor> = found.iter().map(|d| d.boxes.clone()).collect();
        let labels: Vec<Tensor> = found.iter().map(|d| d.labels.clone()).collect();
        let mask_logits = self.mask_logits(features, &boxes, image_sizes)?;
        let masks = maskrcnn_inference(&mask_logits, &labels)?;
        Ok(found
            .into_iter()
            .zip(masks)
            .map(|(d, masks)| Detections {
                boxes: d.boxes,
                scores: d.scores,
                labels: d.labels,
                masks,
            })
            .collect())
    }

    /// Training (torchvision's `RoIHeads.forward` in training mode): samples proposals
    /// ([`Self::select_training_samples`], drawing from `rng`), runs both branches on them and
    /// returns the losses ([`fastrcnn_loss`]; [`maskrcnn_loss`] on the positive samples).
    /// `features`, `proposals` and `image_sizes` are as in [`Self::forward`]; `targets` has one
    /// [`RoiHeadsTarget`] per image, whose masks must be of the image's size.
    pub fn forward_train<R: Rng + ?Sized>(
        &self,
        features: &[Tensor],
        proposals: &[Tensor],
        image_sizes: &[(usize, usize)],
        targets: &[RoiHeadsTarget],
        rng: &mut R,
    ) -> Result<RoiHeadsLosses> {
        self.check_inputs(features, proposals, image_sizes)?;
        let gt_labels = self.check_targets(targets, image_sizes)?;
        let samples = self.sample(proposals, targets, &gt_labels, rng)?;
        let pooled = self
            .cfg
            .box_pooler
            .forward(features, &samples.proposals, image_sizes)?;
        let (class_logits, box_regression) = self.box_predictions(&pooled)?;
        let (classifier, box_reg) = fastrcnn_loss(
            &class_logits,
            &box_regression,
            &samples.labels,
            &samples.regression_targets,
        )?;

        let mut mask_proposals = Vec::with_capacity(proposals.len());
        let mut pos_matched = Vec::with_capacity(proposals.len());
        for ((p, m), l) in samples
            .proposals
            .iter()
            .zip(&samples.matched_idxs)
            .zip(&samples.labels)
        {
            let pos: Vec<u32> = l
                .to_vec1::<i64>()?
                .iter()
                .enumerate()
                .filter(|(_, &v)| v > 0)
                .map(|(i, _)| i as u32)
                .collect();
            let pos = Tensor::from_vec(pos.clone(), pos.len(), p.device())?;
            mask_proposals.push(p.index_select(&pos, 0)?);
            pos_matched.push(m.index_select(&pos, 0)?);
        }
        let mask_logits = self.mask_logits(features, &mask_proposals, image_sizes)?;
        let gt_masks: Vec<Tensor> = targets.iter().map(|t| t.masks.clone()).collect();
        let gt_labels: Vec<Tensor> = targets.iter().map(|t| t.labels.clone()).collect();
        let mask = maskrcnn_loss(
            &mask_logits,
            &mask_proposals,
            &gt_masks,
            &gt_labels,
            &pos_matched,
        )?;
        Ok(RoiHeadsLosses {
            classifier,
            box_reg,
            mask,
        })
    }

    /// The class logits `(K, C)` and box deltas `(K, 4·C)` of pooled boxes
    /// `(K, in_channels, h, w)`: the box head, then the predictor.
    pub fn box_predictions(&self, pooled: &Tensor) -> Result<(Tensor, Tensor)> {
        self.box_predictor.forward(&self.box_head.forward(pooled)?)
    }

    /// The mask logits `(ΣK_i, C, 2h, 2w)` of `boxes` (one `(K_i, 4)` tensor per image): the
    /// mask pooler, the mask head, the predictor.
    pub fn mask_logits(
        &self,
        features: &[Tensor],
        boxes: &[Tensor],
        image_sizes: &[(usize, usize)],
    ) -> Result<Tensor> {
        let pooled = self.cfg.mask_pooler.forward(features, boxes, image_sizes)?;
        self.mask_predictor
            .forward(&self.mask_head.forward(&pooled)?)
    }

    /// Boxes, scores and labels from the box branch's outputs: torchvision's
    /// `RoIHeads.postprocess_detections` (see [`Self::forward`] for the steps).
    ///
    /// `class_logits` `(K, C)` and `box_regression` `(K, 4·C)` belong to the proposals of all
    /// images in order (`K = ΣK_i`).
    pub fn postprocess_detections(
        &self,
        class_logits: &Tensor,
        box_regression: &Tensor,
        proposals: &[Tensor],
        image_sizes: &[(usize, usize)],
    ) -> Result<Vec<BoxDetections>> {
        let c = self.cfg.num_classes;
        let counts = proposal_counts(proposals)?;
        let k: usize = counts.iter().sum();
        if class_logits.dims() != [k, c] || box_regression.dims() != [k, 4 * c] {
            return Err(Error::Shape(format!(
                "postprocess_detections expects class logits [{k}, {c}] and box regression \
                 [{k}, {}] for {k} proposals, got {:?} and {:?}",
                4 * c,
                class_logits.dims(),
                box_regression.dims()
            )));
        }
        if image_sizes.len() != proposals.len() {
            return Err(Error::Shape(format!(
                "postprocess_detections: {} image sizes for {} images",
                image_sizes.len(),
                proposals.len()
            )));
        }
        let dev = class_logits.device();
        let dtype = class_logits.dtype();
        let empty = || -> Result<BoxDetections> {
            Ok(BoxDetections {
                boxes: Tensor::zeros((0, 4), dtype, dev)?,
                scores: Tensor::zeros(0, dtype, dev)?,
                labels: Tensor::zeros(0, DType::I64, dev)?,
            })
        };
        if k == 0 {
            return proposals.iter().map(|_| empty()).collect();
        }
        let all_proposals = Tensor::cat(proposals, 0)?;
        let pred_boxes = self.box_coder.decode(box_regression, &all_proposals)?;
        let pred_scores = candle_nn::ops::softmax(class_logits, D::Minus1)?;
        // PyTorch compares a tensor with a Python number in the tensor's dtype.
        let thresh = match dtype {
            DType::F32 => self.cfg.score_thresh as f32 as f64,
            DType::F16 => half::f16::from_f64(self.cfg.score_thresh).to_f64(),
            DType::BF16 => half::bf16::from_f64(self.cfg.score_thresh).to_f64(),
            _ => self.cfg.score_thresh,
        };

        let mut out = Vec::with_capacity(proposals.len());
        let mut start = 0;
        for (&ki, &size) in counts.iter().zip(image_sizes) {
            let boxes = pred_boxes.narrow(0, start, ki)?;
            let scores = pred_scores.narrow(0, start, ki)?;
            start += ki;
            if ki == 0 {
                out.push(empty()?);
                continue;
            }
            let boxes = clip_boxes_to_image(&boxes.reshape((ki * c, 4))?, size)?
                .reshape((ki, c, 4))?
                .narrow(1, 1, c - 1)?
                .reshape((ki * (c - 1), 4))?;
            let scores = scores.narrow(1, 1, c - 1)?.flatten_all()?;

            let values = scores.to_dtype(DType::F64)?.to_vec1::<f64>()?;
            let inds: Vec<u32> = (0..values.len())
                .filter(|&i| values[i] > thresh)
                .map(|i| i as u32)
                .collect();
            let labels: Vec<i64> = inds
                .iter()
                .map(|&i| (i as usize % (c - 1)) as i64 + 1)
                .collect();
            let n = inds.len();
            let inds = Tensor::from_vec(inds, n, dev)?;
            let boxes = boxes.index_select(&inds, 0)?;
            let scores = scores.index_select(&inds, 0)?;
            let labels = Tensor::from_vec(labels, n, dev)?;

            let keep = remove_small_boxes(&boxes, MIN_DETECTION_SIZE)?;
            let (boxes, scores, labels) = (
                boxes.index_select(&keep, 0)?,
                scores.index_select(&keep, 0)?,
                labels.index_select(&keep, 0)?,
            );
            let keep = batched_nms(&boxes, &scores, &labels, self.cfg.nms_thresh)?;
            let kept = keep.dim(0)?.min(self.cfg.detections_per_img);
            let keep = keep.narrow(0, 0, kept)?;
            out.push(BoxDetections {
                boxes: boxes.index_select(&keep, 0)?,
                scores: scores.index_select(&keep, 0)?,
                labels: labels.index_select(&keep, 0)?,
            });
        }
        Ok(out)
    }

    /// The proposals each image trains on: torchvision's `select_training_samples`.
    ///
    /// The ground-truth boxes are appended to the proposals; each proposal is matched to the
    /// ground truth of highest IoU (foreground from `fg_iou_thresh`, background below
    /// `bg_iou_thresh`, ignored between); the sampler then draws up to `batch_size_per_image`
    /// of them from `rng`, at most a `positive_fraction` positive; the regression targets are
    /// the deltas to the matched ground truth. An image without ground truth trains on
    /// background only. Samples are in proposal order.
    pub fn select_training_samples<R: Rng + ?Sized>(
        &self,
        proposals: &[Tensor],
        targets: &[RoiHeadsTarget],
        rng: &mut R,
    ) -> Result<TrainingSamples> {
        proposal_counts(proposals)?;
        let gt_labels = self.check_target_labels(targets, proposals.len())?;
        self.sample(proposals, targets, &gt_labels, rng)
    }

    fn sample<R: Rng + ?Sized>(
        &self,
        proposals: &[Tensor],
        targets: &[RoiHeadsTarget],
        gt_labels: &[Vec<i64>],
        rng: &mut R,
    ) -> Result<TrainingSamples> {
        let mut all_proposals = Vec::with_capacity(proposals.len());
        let mut matched = Vec::with_capacity(proposals.len());
        let mut labels = Vec::with_capacity(proposals.len());
        for ((p, t), gl) in proposals.iter().zip(targets).zip(gt_labels) {
            let gt = t.boxes.to_dtype(p.dtype())?.to_device(p.device())?;
            let p = Tensor::cat(&[p, &gt], 0)?;
            let len = p.dim(0)?;
            let (m, l) = if gl.is_empty() {
                (vec![0i64; len], vec![0i64; len])
            } else {
                let found = self.matcher.matches(&box_iou(&gt, &p)?)?.to_vec1::<i64>()?;
                let mut m = Vec::with_capacity(len);
                let mut l = Vec::with_capacity(len);
                for f in found {
                    let g = f.max(0);
                    m.push(g);
                    l.push(match f {
                        Matcher::BELOW_LOW_THRESHOLD => 0,
                        Matcher::BETWEEN_THRESHOLDS => -1,
                        _ => gl[g as usize],
                    });
                }
                (m, l)
            };
            all_proposals.push((p, gt));
            matched.push(m);
            labels.push(Tensor::from_vec(l, len, &Device::Cpu)?);
        }
        let (pos, neg) = self.sampler.sample(&labels, rng)?;

        let mut out = TrainingSamples {
            proposals: Vec::with_capacity(proposals.len()),
            matched_idxs: Vec::with_capacity(proposals.len()),
            labels: Vec::with_capacity(proposals.len()),
            regression_targets: Vec::with_capacity(proposals.len()),
        };
        for (i, ((p, gt), m)) in all_proposals.into_iter().zip(matched).enumerate() {
            let dev = p.device().clone();
            let (pi, ni) = (pos[i].to_vec1::<u8>()?, neg[i].to_vec1::<u8>()?);
            let sampled: Vec<usize> = (0..pi.len()).filter(|&j| pi[j] | ni[j] != 0).collect();
            let s = sampled.len();
            let l = labels[i].to_vec1::<i64>()?;
            let idx = Tensor::from_vec(
                sampled.iter().map(|&j| j as u32).collect::<Vec<_>>(),
                s,
                &dev,
            )?;
            let m: Vec<i64> = sampled.iter().map(|&j| m[j]).collect();
            let l: Vec<i64> = sampled.iter().map(|&j| l[j]).collect();
            let p = p.index_select(&idx, 0)?;
            let gt = if gt.dim(0)? == 0 {
                Tensor::zeros((1, 4), p.dtype(), &dev)?
            } else {
                gt
            };
            let m_idx = Tensor::from_vec(m.iter().map(|&g| g as u32).collect::<Vec<_>>(), s, &dev)?;
            let matched_gt = gt.index_select(&m_idx, 0)?;
            out.regression_targets
                .push(self.box_coder.encode(&matched_gt, &p)?);
            out.proposals.push(p);
            out.matched_idxs.push(Tensor::from_vec(m, s, &dev)?);
            out.labels.push(Tensor::from_vec(l, s, &dev)?);
        }
        Ok(out)
    }

    /// Checks the features, proposals and image sizes of [`Self::forward`].
    fn check_inputs(
        &self,
        features: &[Tensor],
        proposals: &[Tensor],
        image_sizes: &[(usize, usize)],
    ) -> Result<()> {
        let want = self.cfg.num_feature_maps;
        if features.len() != want {
            return Err(Error::Shape(format!(
                "RoiHeads expects {want} feature maps (the FPN's '0'..'{}', finest first, \
                 without 'pool'), got {}",
                want - 1,
                features.len()
            )));
        }
        let mut batch = None;
        for (l, f) in features.iter().enumerate() {
            let (n, c, _, _) = f.dims4().map_err(|_| {
                Error::Shape(format!(
                    "RoiHeads: feature map {l} must be (N, C, H, W), got {:?}",
                    f.dims()
                ))
            })?;
            if c != self.cfg.in_channels {
                return Err(Error::Shape(format!(
                    "RoiHeads: feature map {l} has {c} channels, expected {}",
                    self.cfg.in_channels
                )));
            }
            if *batch.get_or_insert(n) != n {
                return Err(Error::Shape(format!(
                    "RoiHeads: feature maps hold different numbers of images: {:?}",
                    features.iter().map(|f| f.dims()[0]).collect::<Vec<_>>()
                )));
            }
        }
        let n = batch.unwrap_or(0);
        if proposals.len() != n || image_sizes.len() != n {
            return Err(Error::Shape(format!(
                "RoiHeads: the feature maps hold {n} images, but got {} proposal tensors and \
                 {} image sizes",
                proposals.len(),
                image_sizes.len()
            )));
        }
        if let Some((i, s)) = image_sizes
            .iter()
            .enumerate()
            .find(|(_, s)| s.0 == 0 || s.1 == 0)
        {
            return Err(Error::Input(format!(
                "RoiHeads: image {i} has an empty size {}x{}",
                s.0, s.1
            )));
        }
        proposal_counts(proposals)?;
        Ok(())
    }

    /// Checks the targets of [`Self::forward_train`] and returns their labels.
    fn check_targets(
        &self,
        targets: &[RoiHeadsTarget],
        image_sizes: &[(usize, usize)],
    ) -> Result<Vec<Vec<i64>>> {
        let labels = self.check_target_labels(targets, image_sizes.len())?;
        for (i, (t, &(h, w))) in targets.iter().zip(image_sizes).enumerate() {
            let g = labels[i].len();
            if t.masks.dims() != [g, h, w] {
                return Err(Error::Shape(format!(
                    "RoiHeads: the masks of image {i} must be [{g}, {h}, {w}] (one per box, \
                     of the image's size), got {:?}",
                    t.masks.dims()
                )));
            }
        }
        Ok(labels)
    }

    /// Checks the boxes and labels of one target per image; returns the labels.
    fn check_target_labels(
        &self,
        targets: &[RoiHeadsTarget],
        images: usize,
    ) -> Result<Vec<Vec<i64>>> {
        if targets.len() != images {
            return Err(Error::Shape(format!(
                "RoiHeads: {} targets for {images} images",
                targets.len()
            )));
        }
        let c = self.cfg.num_classes;
        targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let g = match t.boxes.dims() {
                    &[g, 4] if t.boxes.dtype().is_float() => g,
                    dims => {
                        return Err(Error::Shape(format!(
                            "RoiHeads: the boxes of target {i} must be a (G, 4) float tensor, \
                             got {dims:?} {:?}",
                            t.boxes.dtype()
                        )))
                    }
                };
                let l = host_labels(&t.labels, &format!("RoiHeads: the labels of target {i}"))?;
                if l.len() != g {
                    return Err(Error::Shape(format!(
                        "RoiHeads: target {i} has {g} boxes but {} labels",
                        l.len()
                    )));
                }
                if let Some(bad) = l.iter().find(|&&v| v < 0 || v as usize >= c) {
                    return Err(Error::Input(format!(
                        "RoiHeads: target {i} has label {bad}, outside 0..{c} (num_classes)"
                    )));
                }
                Ok(l)
            })
            .collect()
    }
}

/// The number of boxes of each `(K_i, 4)` float proposal tensor.
fn proposal_counts(proposals: &[Tensor]) -> Result<Vec<usize>> {
    proposals
        .iter()
        .enumerate()
        .map(|(i, p)| match p.dims() {
            &[k, 4] if p.dtype().is_float() => Ok(k),
            dims => Err(Error::Shape(format!(
                "RoiHeads: the proposals of image {i} must be a (K, 4) float tensor, got \
                 {dims:?} {:?}",
                p.dtype()
            ))),
        })
        .collect()
}
