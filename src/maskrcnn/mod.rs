//! Mask R-CNN and Mask R-CNN++ ([`MaskRcnn`]) and their parts, each computing what
//! torchvision 0.29's `torchvision.models.detection` computes (see `docs/maskrcnn.md`).
//!
//! - [`model`]: [`MaskRcnn`], [`MaskRcnnConfig`] (`mask_rcnn(n)`, `mask_rcnn_pp(n)`): the
//!   assembled detector, detection in the images' sizes and the five training losses.
//! - [`box_coder`]: [`BoxCoder`], boxes to regression deltas and back (differentiable, any
//!   device).
//! - [`anchors`]: [`AnchorGenerator`], anchor boxes over the feature maps of a pyramid.
//! - [`matcher`]: [`Matcher`], anchors or proposals to ground truths by a quality (IoU) matrix.
//! - [`fpn`]: [`Fpn`], the feature pyramid; [`nested_fpn`]: [`NestedFpn`], Mask R-CNN++'s
//!   pyramid with UNet++'s nested dense skips; [`backbone`]: [`ResNetFpn`], ResNet + either.
//! - [`rpn`]: [`Rpn`], the region proposal network (proposals and losses).
//! - [`evaluate`]: AP at an IoU threshold on boxes or masks, mean best mask IoU.
//! - [`sampler`]: [`BalancedPositiveNegativeSampler`], the positives and negatives each image
//!   trains on.
//! - [`transform`]: [`RcnnTransform`], images normalized, resized and batched for the network
//!   (training targets with them), and detections mapped back, masks pasted into the image.
//! - [`roi_heads`]: [`RoiHeads`], the box and mask branches after the proposals: detections
//!   with masks at inference, the box and mask losses in training; built from
//!   [`box_head`] ([`TwoMlpHead`], [`FastRcnnPredictor`], [`fastrcnn_loss`]) and
//!   [`mask_head`] ([`MaskRcnnHeads`], [`MaskRcnnPredictor`], [`maskrcnn_loss`]), with
//!   torchvision's weight names.
//!
//! Detections come in three stages, one type each: the box branch's
//! [`BoxBranchDetections`] (boxes, scores, labels), the RoI heads' [`RoiHeadsDetections`]
//! (with an `M × M` mask per box), both in the resized image, and the detector's
//! [`ImageDetections`] (boxes and pasted masks in the original image).
//!
//! Every layer draws new weights as torchvision initialises it; build on
//! [`crate::nn::seeded_var_builder`] for a repeatable start.
//!
//! Boxes are `(K, 4)` tensors of corners `x1, y1, x2, y2`. Each type has presets for the
//! region proposal network (`rpn()`) and the box head (`roi_heads()` or, for anchors, `fpn()`)
//! with torchvision's Mask R-CNN defaults.

pub mod anchors;
pub mod backbone;
pub mod box_coder;
pub mod box_head;
mod conv;
mod div;
pub mod evaluate;
pub mod fpn;
mod loss;
pub mod mask_head;
pub mod matcher;
pub mod model;
pub mod nested_fpn;
mod resample;
pub mod roi_heads;
pub mod rpn;
pub mod sampler;
pub mod transform;

pub use anchors::AnchorGenerator;
pub use backbone::{PyramidKind, ResNetFpn};
pub use box_coder::BoxCoder;
pub use box_head::{fastrcnn_loss, FastRcnnPredictor, TwoMlpHead};
pub use fpn::Fpn;
pub use loss::smooth_l1_sum;
pub use mask_head::{
    maskrcnn_inference, maskrcnn_loss, project_masks_on_boxes, MaskRcnnHeads, MaskRcnnPredictor,
};
pub use matcher::Matcher;
pub use model::{
    current_names, trainable_vars, ImageDetections, MaskRcnn, MaskRcnnConfig,
    MaskRcnnConfigBuilder, MaskRcnnLosses,
};
pub use nested_fpn::NestedFpn;
pub use roi_heads::{
    BoxBranchDetections, RoiHeads, RoiHeadsConfig, RoiHeadsConfigBuilder, RoiHeadsDetections,
    RoiHeadsLosses, RoiHeadsTarget, TrainingSamples,
};
pub use rpn::{Rpn, RpnConfig, RpnConfigBuilder, RpnHead, RpnLosses, RpnOutput};
pub use sampler::BalancedPositiveNegativeSampler;
pub use transform::{
    paste_masks_in_image, resize_boxes, ImageList, RcnnTransform, RcnnTransformBuilder, Target,
};
