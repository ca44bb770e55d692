//! The assembled detector: Mask R-CNN (torchvision's `maskrcnn_resnet50_fpn`) and Mask
//! R-CNN++ (the same detector on the nested feature pyramid).

mod config;
mod names;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rand::Rng;

use super::backbone::ResNetFpn;
use super::roi_heads::{RoiHeads, RoiHeadsTarget};
use super::rpn::Rpn;
use super::transform::Target;
use crate::nn::NamedTensor;
use crate::{weights, Error, Result};

pub use config::{MaskRcnnConfig, MaskRcnnConfigBuilder};
pub use names::current_names;

/// What [`MaskRcnn::detect`] finds in one image, in the image's own size: the last of three
/// stages. The box branch gives boxes, scores and labels in the resized image
/// ([`BoxBranchDetections`](super::BoxBranchDetections)); the mask branch adds an `M × M`
/// mask per box ([`RoiHeadsDetections`](super::RoiHeadsDetections)); then
/// [`RcnnTransform::postprocess`](super::RcnnTransform::postprocess) scales the boxes back to
/// the original image and pastes each mask into it (torchvision's `GeneralizedRCNN.forward`
/// in eval mode).
#[derive(Debug, Clone)]
pub struct ImageDetections {
    /// `(D, 4)` boxes `x1, y1, x2, y2` in the original image's pixels.
    pub boxes: Tensor,
    /// `(D,)` scores, descending.
    pub scores: Tensor,
    /// `(D,)` i64 classes in `1..num_classes`.
    pub labels: Tensor,
    /// `(D, 1, H, W)` mask probabilities pasted into the original image (threshold at 0.5 for
    /// binary masks, or use [`Self::binary_masks`]). They are on the **CPU** whatever the
    /// model's device: pasting runs on the host, and sending the canvas back would take
    /// `4·D·H·W` bytes of device memory (427 MB for 100 detections at 800×1333).
    pub masks: Tensor,
}

impl ImageDetections {
    /// The masks as `(D, H, W)` `u8` images, 1 where the probability is at least `threshold`
    /// (torchvision's users take 0.5): a quarter of the probabilities' memory.
    pub fn binary_masks(&self, threshold: f64) -> Result<Tensor> {
        if !(0.0..=1.0).contains(&threshold) {
            return Err(Error::config(
                "threshold",
                format!("must lie in [0, 1], got {threshold}"),
            ));
        }
        Ok(self.masks.ge(threshold)?.to_dtype(DType::U8)?.squeeze(1)?)
    }
}

/// The five training losses (torchvision's `loss_classifier`, `loss_box_reg`, `loss_mask`,
/// `loss_objectness`, `loss_rpn_box_reg`).
#[derive(Debug, Clone)]
pub struct MaskRcnnLosses {
    /// Cross-entropy of the sampled proposals' classes.
    pub classifier: Tensor,
    /// Smooth L1 of the positive proposals' class-specific boxes.
    pub box_reg: Tensor,
    /// Binary cross-entropy of the positive proposals' masks.
    pub mask: Tensor,
    /// Binary cross-entropy of the sampled anchors' objectness.
    pub objectness: Tensor,
    /// Smooth L1 of the positive anchors' deltas.
    pub rpn_box_reg: Tensor,
}

impl MaskRcnnLosses {
    /// The sum of the five losses (torchvision trains on this sum).
    pub fn total(&self) -> Result<Tensor> {
        let s = ((&self.classifier + &self.box_reg)? + &self.mask)?;
        Ok(((s + &self.objectness)? + &self.rpn_box_reg)?)
    }

    /// The five values as `(name, value)`, in torchvision's order and names.
    pub fn values(&self) -> Result<Vec<(&'static str, f32)>> {
        let v = |t: &Tensor| -> Result<f32> { Ok(t.to_dtype(DType::F32)?.to_scalar::<f32>()?) };
        Ok(vec![
            ("loss_classifier", v(&self.classifier)?),
            ("loss_box_reg", v(&self.box_reg)?),
            ("loss_mask", v(&self.mask)?),
            ("loss_objectness", v(&self.objectness)?),
            ("loss_rpn_box_reg", v(&self.rpn_box_reg)?),
        ])
    }
}

/// Mask R-CNN or Mask R-CNN++ ([`MaskRcnnConfig::pyramid`]), with torchvision's weight names
/// (`backbone.body.*`, `backbone.fpn.*`, `rpn.head.*`, `roi_heads.*`), so that a
/// `maskrcnn_resnet50_fpn` state dict exported to safetensors loads unchanged.
///
/// ```no_run
/// use candle_core::{Device, Tensor};
/// use unetpp::encoders::ResNetConfig;
/// use unetpp::maskrcnn::{MaskRcnn, MaskRcnnConfig};
///
/// let cfg = MaskRcnnConfig::mask_rcnn(91)
///     .resnet(ResNetConfig::resnet50().frozen_bn(true).bn_eps(0.0)) // torchvision's COCO weights
///     .build()?;
/// let model = MaskRcnn::load_torchvision(&cfg, "maskrcnn_resnet50_fpn.safetensors", &Device::Cpu)?;
/// let image = Tensor::rand(0f32, 1., (3, 480, 640), &Device::Cpu)?;
/// let found = model.detect(&[image])?;
/// println!("{} objects", found[0].boxes.dim(0)?);
/// # Ok::<(), unetpp::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct MaskRcnn {
    cfg: MaskRcnnConfig,
    backbone: ResNetFpn,
    rpn: Rpn,
    roi_heads: RoiHeads,
    tensors: Vec<NamedTensor>,
}

impl MaskRcnn {
    /// The detector of `cfg` with weights from `vb` (a `VarMap` to train from scratch).
    pub fn new(cfg: &MaskRcnnConfig, vb: VarBuilder) -> Result<Self> {
        let ((backbone, rpn, roi_heads), tensors) = weights::record(vb, |vb| {
            let backbone = ResNetFpn::with_pyramid(
                &cfg.resnet(),
                cfg.channels(),
                cfg.pyramid(),
                vb.pp("backbone"),
            )?
            .with_trainable_layers(cfg.trainable_backbone_layers())?;
            let rpn = Rpn::new(
                cfg.rpn(),
                cfg.anchors().clone(),
                cfg.channels(),
                vb.pp("rpn"),
            )?;
            let roi_heads = RoiHeads::new(cfg.roi_heads(), vb.pp("roi_heads"))?;
            Ok((backbone, rpn, roi_heads))
        })?;
        Ok(MaskRcnn {
            cfg: cfg.clone(),
            backbone,
            rpn,
            roi_heads,
            tensors,
        })
    }

    /// The detector of `cfg` from a torchvision state dict (named tensors). Batch-norm
    /// `num_batches_tracked` counters are skipped; any other missing, extra or mis-shaped
    /// tensor is an [`Error::Weights`] naming it. Checkpoints with pre-0.13 names load too.
    pub fn from_torchvision(
        cfg: &MaskRcnnConfig,
        tensors: HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        let kept = current_names(weights::without_bn_counters(tensors));
        weights::build_checked(kept, DType::F32, device, |vb| Self::new(cfg, vb))
    }

    /// [`Self::from_torchvision`] from a safetensors file (`scripts/export_torchvision.py`).
    pub fn load_torchvision(
        cfg: &MaskRcnnConfig,
        path: impl AsRef<Path>,
        device: &Device,
    ) -> Result<Self> {
        Self::from_torchvision(cfg, weights::load_tensors(path, device)?, device)
    }

    /// The configuration.
    pub fn config(&self) -> &MaskRcnnConfig {
        &self.cfg
    }

    /// The backbone (ResNet + pyramid).
    pub fn backbone(&self) -> &ResNetFpn {
        &self.backbone
    }

    /// The region proposal network.
    pub fn rpn(&self) -> &Rpn {
        &self.rpn
    }

    /// The box and mask branches.
    pub fn roi_heads(&self) -> &RoiHeads {
        &self.roi_heads
    }

    /// Every tensor under torchvision's names.
    pub fn named_tensors(&self) -> Vec<NamedTensor> {
        self.tensors.clone()
    }

    /// Detects objects in `images` (each `(3, H, W)` in `[0, 1]`, any sizes): boxes, scores,
    /// labels and pasted masks per image, in the images' own sizes.
    pub fn detect(&self, images: &[Tensor]) -> Result<Vec<ImageDetections>> {
        let originals = image_sizes(images)?;
        let batch = self.cfg.transform().forward(images)?;
        let (_, _, h, w) = batch.tensors.dims4()?;
        let maps = self.backbone.forward(&batch.tensors)?;
        let rpn = self.rpn.forward((h, w), &batch.image_sizes, &maps, false)?;
        let levels = self.cfg.roi_heads().num_feature_maps().min(maps.len());
        let found = self
            .roi_heads
            .forward(&maps[..levels], &rpn.boxes, &batch.image_sizes)?;
        found
            .into_iter()
            .zip(batch.image_sizes.iter().zip(&originals))
            .map(|(d, (&size, &original))| {
                // Pasted on the host and left there (see `ImageDetections::masks`).
                let host_masks = d.masks.to_device(&Device::Cpu)?;
                let (boxes, masks) = self.cfg.transform().postprocess(
                    &d.boxes,
                    Some(&host_masks),
                    size,
                    original,
                )?;
                let masks = masks.ok_or_else(|| Error::Shape("no pasted masks".into()))?;
                Ok(ImageDetections {
                    boxes,
                    scores: d.scores,
                    labels: d.labels,
                    masks,
                })
            })
            .collect()
    }

    /// The five losses of a training step on `images` with their `targets` (boxes, labels
    /// and masks in the images' own sizes; an image may have no objects). `rng` drives the
    /// multi-scale resizing and the samplers. Batch-norm stays frozen where the config says so.
    pub fn losses<R: Rng + ?Sized>(
        &self,
        images: &[Tensor],
        targets: &[Target],
        rng: &mut R,
    ) -> Result<MaskRcnnLosses> {
        if targets.len() != images.len() {
            return Err(Error::Input(format!(
                "{} targets for {} images",
                targets.len(),
                images.len()
            )));
        }
        for (i, t) in targets.iter().enumerate() {
            if t.masks.is_none() {
                return Err(Error::Input(format!(
                    "target {i} has no masks: Mask R-CNN trains on instance masks"
                )));
            }
            let (_, h, w) = images[i].dims3().map_err(|_| {
                Error::Shape(format!(
                    "image {i} must be (C, H, W), got {:?}",
                    images[i].dims()
                ))
            })?;
            t.validate((h, w)).map_err(|e| match e {
                Error::Input(m) => Error::Input(format!("target {i}: {m}")),
                Error::Shape(m) => Error::Shape(format!("target {i}: {m}")),
                other => other,
            })?;
            let classes = self.cfg.num_classes() as i64;
            let labels = t
                .labels
                .to_dtype(DType::I64)?
                .to_device(&Device::Cpu)?
                .to_vec1::<i64>()?;
            if let Some(l) = labels.iter().find(|&&l| l < 1 || l >= classes) {
                return Err(Error::Input(format!(
                    "target {i}: label {l} is outside 1..{classes} (0 is the background)"
                )));
            }
        }
        let (batch, targets) = self.cfg.transform().forward_train(images, targets, rng)?;
        let (_, _, h, w) = batch.tensors.dims4()?;
        let maps = self.backbone.forward_t(&batch.tensors, true)?;
        let rpn = self.rpn.forward((h, w), &batch.image_sizes, &maps, true)?;
        let gt_boxes: Vec<Tensor> = targets.iter().map(|t| t.boxes.clone()).collect();
        let rpn_losses = self.rpn.losses(&rpn, &gt_boxes, rng)?;
        let heads_targets = targets
            .into_iter()
            .map(|t| {
                let masks = t
                    .masks
                    .ok_or_else(|| Error::Input("a target lost its masks".into()))?;
                Ok(RoiHeadsTarget {
                    boxes: t.boxes,
                    labels: t.labels,
                    masks,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let levels = self.cfg.roi_heads().num_feature_maps().min(maps.len());
        let heads = self.roi_heads.forward_train(
            &maps[..levels],
            &rpn.boxes,
            &batch.image_sizes,
            &heads_targets,
            rng,
        )?;
        Ok(MaskRcnnLosses {
            classifier: heads.classifier,
            box_reg: heads.box_reg,
            mask: heads.mask,
            objectness: rpn_losses.objectness,
            rpn_box_reg: rpn_losses.box_reg,
        })
    }
}

/// The variables of a detector built on `varmap` that training updates when only the last
/// `trainable_backbone_layers` of the ResNet body (`layer4`, `layer3`, `layer2`, `layer1`,
/// `conv1` in that order, and with all five `bn1` too) are trained, as torchvision's
/// `trainable_backbone_layers` selects them (3 by default when starting from pretrained
/// weights). Everything outside `backbone.body` is trainable. At most 5.
pub fn trainable_vars(
    varmap: &candle_nn::VarMap,
    trainable_backbone_layers: usize,
) -> Result<Vec<candle_core::Var>> {
    if trainable_backbone_layers > 5 {
        return Err(Error::config(
            "trainable_backbone_layers",
            format!("0 to 5, got {trainable_backbone_layers}"),
        ));
    }
    let mut layers: Vec<&str> =
        ["layer4", "layer3", "layer2", "layer1", "conv1"][..trainable_backbone_layers].to_vec();
    if trainable_backbone_layers == 5 {
        layers.push("bn1");
    }
    let data = crate::weights::lock_vars(varmap)?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    Ok(names
        .into_iter()
        .filter(|n| match n.strip_prefix("backbone.body.") {
            Some(rest) => layers.iter().any(|l| rest.starts_with(l)),
            None => true,
        })
        .map(|n| data[n].clone())
        .collect())
}

fn image_sizes(images: &[Tensor]) -> Result<Vec<(usize, usize)>> {
    if images.is_empty() {
        return Err(Error::Input("no images".into()));
    }
    images
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let (_, h, w) = t.dims3().map_err(|_| {
                Error::Shape(format!("image {i} must be (C, H, W), got {:?}", t.dims()))
            })?;
            Ok((h, w))
        })
        .collect()
}
