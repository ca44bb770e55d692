//! Mask R-CNN's RoI heads: from FPN features and proposals to scored, labelled boxes with
//! masks, or to the box and mask losses, as torchvision 0.29's
//! `torchvision.models.detection.roi_heads.RoIHeads` computes them for `maskrcnn_resnet50_fpn`.
//!
//! Each proposal is pooled from the pyramid level that suits its size (7×7,
//! [`MultiScaleRoiAlign`](crate::ops::MultiScaleRoiAlign)), classified and regressed by the box branch ([`TwoMlpHead`],
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

mod config;
mod inference;
mod inputs;
mod targets;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rand::Rng;

use super::box_head::{fastrcnn_loss, FastRcnnPredictor, TwoMlpHead};
use super::mask_head::{maskrcnn_inference, maskrcnn_loss, MaskRcnnHeads, MaskRcnnPredictor};
use super::{BalancedPositiveNegativeSampler, BoxCoder, Matcher};
use crate::nn::NamedTensor;
use crate::{weights, Result};

pub use config::{RoiHeadsConfig, RoiHeadsConfigBuilder};
pub use inference::{BoxBranchDetections, MIN_DETECTION_SIZE};
pub use targets::{RoiHeadsTarget, TrainingSamples};

/// What [`RoiHeads::forward`] finds in one image (torchvision's `RoIHeads.forward` in eval
/// mode): the box branch's [`BoxBranchDetections`] with each box's mask from the mask branch,
/// all in the resized image the heads ran on.
/// [`RcnnTransform::postprocess`](crate::maskrcnn::RcnnTransform::postprocess) maps them back
/// to the original image, which gives a detector's
/// [`ImageDetections`](crate::maskrcnn::ImageDetections).
#[derive(Debug, Clone)]
pub struct RoiHeadsDetections {
    /// `(D, 4)` boxes in the (resized) image's pixels, clipped to it.
    pub boxes: Tensor,
    /// `(D)` class probabilities, descending.
    pub scores: Tensor,
    /// `(D)` i64 classes in `1..num_classes`.
    pub labels: Tensor,
    /// `(D, 1, M, M)` mask probabilities in the box (28×28 with the default pooler), to be
    /// pasted into the image (torchvision's `paste_masks_in_image`).
    pub masks: Tensor,
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
        let (ph, pw) = cfg.box_pooler().output_size();
        let box_head = TwoMlpHead::new(
            cfg.in_channels() * ph * pw,
            cfg.representation_size(),
            vb.pp("box_head"),
        )?;
        let box_predictor = FastRcnnPredictor::new(
            cfg.representation_size(),
            cfg.num_classes(),
            vb.pp("box_predictor"),
        )?;
        let mask_head =
            MaskRcnnHeads::new(cfg.in_channels(), cfg.mask_layers(), vb.pp("mask_head"))?;
        let mask_predictor = MaskRcnnPredictor::new(
            mask_head.out_channels(),
            cfg.mask_dim_reduced(),
            cfg.num_classes(),
            vb.pp("mask_predictor"),
        )?;
        Ok((box_head, box_predictor, mask_head, mask_predictor))
    }

    /// The heads from a set of tensors named as the `state_dict` of torchvision's `RoIHeads`
    /// (a `maskrcnn_resnet50_fpn` state_dict's `roi_heads.*` with that prefix removed), in
    /// f32 on `device` (names of checkpoints from before torchvision 0.13 are renamed by
    /// [`super::current_names`]). Every tensor must be used and have the right shape: anything missing,
    /// mis-shaped or left over is an [`Error::Weights`](crate::Error::Weights) naming it.
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
    ) -> Result<Vec<RoiHeadsDetections>> {
        self.check_inputs(features, proposals, image_sizes)?;
        let pooled = self
            .cfg
            .box_pooler()
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
            .map(|(d, masks)| RoiHeadsDetections {
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
            .box_pooler()
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
        let pooled = self
            .cfg
            .mask_pooler()
            .forward(features, boxes, image_sizes)?;
        self.mask_predictor
            .forward(&self.mask_head.forward(&pooled)?)
    }
}
