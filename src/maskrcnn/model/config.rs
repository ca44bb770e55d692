//! The configuration of a [`MaskRcnn`](super::MaskRcnn): presets, a builder, validation.

use crate::encoders::{ResNetConfig, ResNetConfigBuilder};
use crate::maskrcnn::{
    AnchorGenerator, PyramidKind, RcnnTransform, RcnnTransformBuilder, RoiHeadsConfig,
    RoiHeadsConfigBuilder, RpnConfig, RpnConfigBuilder,
};
use crate::{Error, Result};

/// A validated configuration of a [`MaskRcnn`](super::MaskRcnn): a preset
/// ([`Self::mask_rcnn`], [`Self::mask_rcnn_pp`], [`Self::compact`]), chained setters on the
/// returned [`MaskRcnnConfigBuilder`], then [`MaskRcnnConfigBuilder::build`], which checks
/// every part and that the parts fit together.
///
/// ```
/// use unetpp::encoders::ResNetConfig;
/// use unetpp::maskrcnn::{MaskRcnnConfig, PyramidKind};
///
/// // torchvision's COCO weights: frozen batch-norm of epsilon 0.
/// let cfg = MaskRcnnConfig::mask_rcnn(91)
///     .resnet(ResNetConfig::resnet50().frozen_bn(true).bn_eps(0.0))
///     .trainable_backbone_layers(3)
///     .build()?;
/// assert_eq!((cfg.num_classes(), cfg.channels()), (91, 256));
/// let pp = cfg.to_builder().pyramid(PyramidKind::Nested).build()?;
/// assert_eq!(pp.pyramid(), PyramidKind::Nested);
/// // The RoI heads must read the pyramid's channels.
/// assert!(MaskRcnnConfig::mask_rcnn(91).channels(128).build().is_err());
/// # Ok::<(), unetpp::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "MaskRcnnConfigBuilder"))]
pub struct MaskRcnnConfig {
    resnet: ResNetConfig,
    pyramid: PyramidKind,
    channels: usize,
    transform: RcnnTransform,
    anchors: AnchorGenerator,
    rpn: RpnConfig,
    roi_heads: RoiHeadsConfig,
    trainable_backbone_layers: usize,
}

/// Chained setters for a [`MaskRcnnConfig`]; nothing is checked until [`Self::build`]. The
/// parts are set as builders ([`ResNetConfig::resnet50`], [`RpnConfig::mask_rcnn`], …, or
/// `to_builder()` of a built part) and built with the whole.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MaskRcnnConfigBuilder {
    resnet: ResNetConfigBuilder,
    pyramid: PyramidKind,
    channels: usize,
    transform: RcnnTransformBuilder,
    anchors: AnchorGenerator,
    rpn: RpnConfigBuilder,
    roi_heads: RoiHeadsConfigBuilder,
    trainable_backbone_layers: usize,
}

impl MaskRcnnConfig {
    /// torchvision's `maskrcnn_resnet50_fpn` for `num_classes` classes (background included;
    /// 91 for COCO): ResNet-50 with frozen batch-norm of epsilon 1e-5 (set a ResNet of
    /// `bn_eps(0.0)` for torchvision's COCO weights), a 256-channel FPN, images resized to
    /// 800 / 1333, FPN anchors, torchvision's RPN and RoI heads, every ResNet stage trained.
    pub fn mask_rcnn(num_classes: usize) -> MaskRcnnConfigBuilder {
        MaskRcnnConfigBuilder {
            resnet: ResNetConfig::resnet50().frozen_bn(true),
            pyramid: PyramidKind::Fpn,
            channels: 256,
            transform: RcnnTransform::mask_rcnn(),
            anchors: AnchorGenerator::fpn(),
            rpn: RpnConfig::mask_rcnn(),
            roi_heads: RoiHeadsConfig::mask_rcnn().num_classes(num_classes),
            trainable_backbone_layers: 5,
        }
    }

    /// Mask R-CNN++: [`Self::mask_rcnn`] with the nested feature pyramid.
    pub fn mask_rcnn_pp(num_classes: usize) -> MaskRcnnConfigBuilder {
        Self::mask_rcnn(num_classes).pyramid(PyramidKind::Nested)
    }

    /// A small detector for CPU experiments on small images (the `instances` example and the
    /// training tests): ResNet-18 with trainable batch-norm (as torchvision builds a detector
    /// whose backbone is not pretrained), `channels`-wide pyramid, anchors of 8–128 pixels,
    /// images resized so that their longer side is `size` (their shorter one at most `size`),
    /// 300 proposals per pyramid level before NMS and 100 per image after, a 128-wide box
    /// head, two 3×3 mask convolutions, 128 sampled proposals per image.
    pub fn compact(num_classes: usize, channels: usize, size: usize) -> MaskRcnnConfigBuilder {
        let anchors = AnchorGenerator::validated(
            vec![vec![8.0], vec![16.0], vec![32.0], vec![64.0], vec![128.0]],
            vec![vec![0.5, 1.0, 2.0]; 5],
        );
        MaskRcnnConfigBuilder {
            resnet: ResNetConfig::resnet18(),
            pyramid: PyramidKind::Fpn,
            channels,
            transform: RcnnTransform::mask_rcnn().min_size(size).max_size(size),
            anchors,
            rpn: RpnConfig::mask_rcnn()
                .pre_nms_top_n(300, 300)
                .post_nms_top_n(100, 100),
            roi_heads: RoiHeadsConfig::mask_rcnn()
                .num_classes(num_classes)
                .in_channels(channels)
                .representation_size(128)
                .mask_layers(vec![channels; 2])
                .mask_dim_reduced(channels)
                .batch_size_per_image(128),
            trainable_backbone_layers: 5,
        }
    }

    /// A builder holding this configuration, to change it.
    pub fn to_builder(&self) -> MaskRcnnConfigBuilder {
        MaskRcnnConfigBuilder {
            resnet: self.resnet.to_builder(),
            pyramid: self.pyramid,
            channels: self.channels,
            transform: self.transform.to_builder(),
            anchors: self.anchors.clone(),
            rpn: self.rpn.to_builder(),
            roi_heads: self.roi_heads.to_builder(),
            trainable_backbone_layers: self.trainable_backbone_layers,
        }
    }

    /// The ResNet body.
    pub fn resnet(&self) -> ResNetConfig {
        self.resnet
    }
    /// Plain FPN (Mask R-CNN) or the nested pyramid (Mask R-CNN++).
    pub fn pyramid(&self) -> PyramidKind {
        self.pyramid
    }
    /// Channels of the pyramid.
    pub fn channels(&self) -> usize {
        self.channels
    }
    /// Image normalisation, resizing and batching.
    pub fn transform(&self) -> &RcnnTransform {
        &self.transform
    }
    /// Anchors per pyramid level.
    pub fn anchors(&self) -> &AnchorGenerator {
        &self.anchors
    }
    /// The region proposal network.
    pub fn rpn(&self) -> &RpnConfig {
        &self.rpn
    }
    /// The box and mask branches.
    pub fn roi_heads(&self) -> &RoiHeadsConfig {
        &self.roi_heads
    }
    /// How many ResNet stages train, from `layer4` down (see
    /// [`MaskRcnnConfigBuilder::trainable_backbone_layers`]).
    pub fn trainable_backbone_layers(&self) -> usize {
        self.trainable_backbone_layers
    }
    /// The number of classes, background included.
    pub fn num_classes(&self) -> usize {
        self.roi_heads.num_classes()
    }
}

impl MaskRcnnConfigBuilder {
    /// The ResNet body (torchvision: ResNet-50, frozen batch-norm).
    pub fn resnet(mut self, resnet: ResNetConfigBuilder) -> Self {
        self.resnet = resnet;
        self
    }
    /// Plain FPN (Mask R-CNN) or the nested pyramid (Mask R-CNN++).
    pub fn pyramid(mut self, pyramid: PyramidKind) -> Self {
        self.pyramid = pyramid;
        self
    }
    /// Channels of the pyramid (256), which the RoI heads' `in_channels` must equal.
    pub fn channels(mut self, channels: usize) -> Self {
        self.channels = channels;
        self
    }
    /// Image normalisation, resizing and batching.
    pub fn transform(mut self, transform: RcnnTransformBuilder) -> Self {
        self.transform = transform;
        self
    }
    /// Anchors per pyramid level, the same number at every location of every level.
    pub fn anchors(mut self, anchors: AnchorGenerator) -> Self {
        self.anchors = anchors;
        self
    }
    /// The region proposal network.
    pub fn rpn(mut self, rpn: RpnConfigBuilder) -> Self {
        self.rpn = rpn;
        self
    }
    /// The box and mask branches (their `num_classes` is the detector's, background
    /// included).
    pub fn roi_heads(mut self, roi_heads: RoiHeadsConfigBuilder) -> Self {
        self.roi_heads = roi_heads;
        self
    }
    /// How many ResNet stages train, from `layer4` down (torchvision's
    /// `trainable_backbone_layers`, 0 to 5). 5 in every preset, as torchvision for a backbone
    /// trained from scratch; set 3 to fine-tune pretrained weights as torchvision does. The
    /// backward pass stops at the last frozen stage (see
    /// [`crate::encoders::ResNet::features_trainable`]), so the frozen stages get no gradient;
    /// [`trainable_vars`](crate::maskrcnn::trainable_vars) with the same number lists what an
    /// optimiser should update.
    pub fn trainable_backbone_layers(mut self, n: usize) -> Self {
        self.trainable_backbone_layers = n;
        self
    }

    /// The configuration, or an [`Error::Config`] naming the first invalid field: the parts'
    /// own checks (in the order of the fields), then a pyramid of at least one channel, RoI
    /// heads reading as many channels as it has (`roi_heads.in_channels`), the same number of
    /// anchors at every level (`anchors`), and at most 5 trainable ResNet stages.
    pub fn build(self) -> Result<MaskRcnnConfig> {
        let resnet = self.resnet.build()?;
        let transform = self.transform.build()?;
        let rpn = self.rpn.build()?;
        let roi_heads = self.roi_heads.build()?;
        if self.channels == 0 {
            return Err(Error::config("channels", "must be at least 1"));
        }
        if roi_heads.in_channels() != self.channels {
            return Err(Error::config(
                "roi_heads.in_channels",
                format!(
                    "{} differs from the pyramid's {} channels",
                    roi_heads.in_channels(),
                    self.channels
                ),
            ));
        }
        let per_location = self.anchors.num_anchors_per_location();
        if per_location.windows(2).any(|w| w[0] != w[1]) {
            return Err(Error::config(
                "anchors",
                format!(
                    "the RPN head needs the same number of anchors on every level, got \
                     {per_location:?}"
                ),
            ));
        }
        if self.trainable_backbone_layers > 5 {
            return Err(Error::config(
                "trainable_backbone_layers",
                format!(
                    "0 to 5 ResNet stages, got {}",
                    self.trainable_backbone_layers
                ),
            ));
        }
        Ok(MaskRcnnConfig {
            resnet,
            pyramid: self.pyramid,
            channels: self.channels,
            transform,
            anchors: self.anchors,
            rpn,
            roi_heads,
            trainable_backbone_layers: self.trainable_backbone_layers,
        })
    }
}

built_by!(MaskRcnnConfig, MaskRcnnConfigBuilder);
