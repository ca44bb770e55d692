//! Mask R-CNN's detection utilities, computing what torchvision 0.29's
//! `torchvision.models.detection` computes.
//!
//! - [`box_coder`]: [`BoxCoder`], boxes to regression deltas and back (differentiable, any
//!   device).
//! - [`anchors`]: [`AnchorGenerator`], anchor boxes over the feature maps of a pyramid.
//! - [`matcher`]: [`Matcher`], anchors or proposals to ground truths by a quality (IoU) matrix.
//! - [`sampler`]: [`BalancedPositiveNegativeSampler`], the positives and negatives each image
//!   trains on.
//! - [`roi_heads`]: [`RoiHeads`], the box and mask branches after the proposals: detections
//!   with masks at inference, the box and mask losses in training; built from
//!   [`box_head`] ([`TwoMlpHead`], [`FastRcnnPredictor`], [`fastrcnn_loss`]) and
//!   [`mask_head`] ([`MaskRcnnHeads`], [`MaskRcnnPredictor`], [`maskrcnn_loss`]), with
//!   torchvision's weight names.
//!
//! Boxes are `(K, 4)` tensors of corners `x1, y1, x2, y2`. Each type has presets for the
//! region proposal network (`rpn()`) and the box head (`roi_heads()` or, for anchors, `fpn()`)
//! with torchvision's Mask R-CNN defaults.

pub mod anchors;
pub mod box_coder;
pub mod box_head;
pub mod mask_head;
pub mod matcher;
pub mod roi_heads;
pub mod sampler;

pub use anchors::AnchorGenerator;
pub use box_coder::BoxCoder;
pub use box_head::{fastrcnn_loss, FastRcnnPredictor, TwoMlpHead};
pub use mask_head::{
    maskrcnn_inference, maskrcnn_loss, project_masks_on_boxes, MaskRcnnHeads, MaskRcnnPredictor,
};
pub use matcher::Matcher;
pub use roi_heads::{
    BoxDetections, Detections, RoiHeads, RoiHeadsConfig, RoiHeadsConfigBuilder, RoiHeadsLosses,
    RoiHeadsTarget, TrainingSamples,
};
pub use sampler::BalancedPositiveNegativeSampler;
