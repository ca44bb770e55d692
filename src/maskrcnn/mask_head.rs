//! The mask branch of Mask R-CNN's RoI heads: four 3×3 convolutions over each pooled box
//! ([`MaskRcnnHeads`]), a 2×2 transposed convolution and a 1×1 convolution to one mask per
//! class ([`MaskRcnnPredictor`]), the training loss ([`maskrcnn_loss`]) and the choice of each
//! detection's mask ([`maskrcnn_inference`]), as torchvision 0.29's `MaskRCNNHeads`,
//! `MaskRCNNPredictor` and `roi_heads.maskrcnn_loss` / `maskrcnn_inference` compute them.
//!
//! Mask R-CNN (He et al. 2017, §3) predicts a `28 × 28` mask per class for every box and
//! trains only the mask of the box's ground-truth class, with a per-pixel sigmoid and binary
//! cross entropy, against the ground-truth mask cropped and resized to the box (RoIAlign).
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use unetpp::maskrcnn::{MaskRcnnHeads, MaskRcnnPredictor};
//!
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
//! let head = MaskRcnnHeads::new(8, &[16, 16], vb.pp("mask_head"))?;
//! let predictor = MaskRcnnPredictor::new(16, 16, 3, vb.pp("mask_predictor"))?;
//! let pooled = Tensor::randn(0f32, 1., (4, 8, 14, 14), &Device::Cpu)?;
//! let logits = predictor.forward(&head.forward(&pooled)?)?;
//! assert_eq!(logits.dims(), &[4, 3, 28, 28]);
//! # Ok::<(), unetpp::Error>(())
//! ```

use candle_core::{Module, Tensor};
use candle_nn::{Init, VarBuilder};

use super::box_head::host_labels;
use crate::nn::{Conv, ConvConfig};
use crate::ops::RoiAlign;
use crate::{Error, Result};

/// A stack of 3×3 convolutions (padding 1, dilation 1), each followed by a ReLU:
/// torchvision's `MaskRCNNHeads` without normalisation.
///
/// Layer `i` (from 0) has the weights `{i}.0.weight` and `{i}.0.bias`; checkpoints from
/// before torchvision 0.13 (`mask_fcn{i+1}.*`) load through [`super::current_names`].
#[derive(Debug, Clone)]
pub struct MaskRcnnHeads {
    layers: Vec<Conv>,
    in_channels: usize,
}

impl MaskRcnnHeads {
    /// The convolutions from `in_channels` through `layers` (the output channels of each;
    /// `[256; 4]` in Mask R-CNN), read from `vb`. New weights are drawn as torchvision
    /// initialises them (Kaiming normal with fan-out, zero biases).
    pub fn new(in_channels: usize, layers: &[usize], vb: VarBuilder) -> Result<Self> {
        if layers.is_empty() {
            return Err(Error::config("mask_layers", "need at least one layer"));
        }
        let mut convs = Vec::with_capacity(layers.len());
        let mut c = in_channels;
        for (i, &o) in layers.iter().enumerate() {
            let stdev = (2.0 / (o * 9) as f64).sqrt();
            let cfg = ConvConfig::same(3).weight_init(Init::Randn { mean: 0.0, stdev });
            convs.push(Conv::new(c, o, cfg, vb.pp(i).pp(0))?);
            c = o;
        }
        Ok(MaskRcnnHeads {
            layers: convs,
            in_channels,
        })
    }

    /// The input channels.
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }

    /// The output channels (those of the last layer).
    pub fn out_channels(&self) -> usize {
        self.layers
            .last()
            .map_or(self.in_channels, Conv::out_channels)
    }

    /// The features of the pooled boxes `x` `(K, in_channels, H, W)`: `(K, out_channels, H,
    /// W)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (k, h, w) = check_input(x, self.in_channels, "MaskRcnnHeads", "pooled boxes")?;
        if k == 0 {
            return Ok(Tensor::zeros(
                (0, self.out_channels(), h, w),
                x.dtype(),
                x.device(),
            )?);
        }
        let mut y = x.clone();
        for conv in &self.layers {
            y = conv.forward_fused(&y, true)?;
        }
        Ok(y)
    }
}

impl Module for MaskRcnnHeads {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Ok(MaskRcnnHeads::forward(self, x)?)
    }
}

/// Up-sampling by a 2×2 transposed convolution of stride 2 with a ReLU (`conv5_mask`), then a
/// 1×1 convolution to one mask logit per class (`mask_fcn_logits`): torchvision's
/// `MaskRCNNPredictor`.
#[derive(Debug, Clone)]
pub struct MaskRcnnPredictor {
    conv5_mask: Conv,
    mask_fcn_logits: Conv,
    in_channels: usize,
    num_classes: usize,
}

impl MaskRcnnPredictor {
    /// The predictor from `in_channels` through `dim_reduced` channels (256 and 256 in Mask
    /// R-CNN) to `num_classes` (background included), read from `vb`: `conv5_mask.weight`
    /// `(in_channels, dim_reduced, 2, 2)` (PyTorch's transposed layout), `conv5_mask.bias`,
    /// `mask_fcn_logits.weight` `(num_classes, dim_reduced, 1, 1)`, `mask_fcn_logits.bias`.
    pub fn new(
        in_channels: usize,
        dim_reduced: usize,
        num_classes: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let kaiming = |fan_out: usize| Init::Randn {
            mean: 0.0,
            stdev: (2.0 / fan_out as f64).sqrt(),
        };
        // PyTorch's fan-out of a transposed convolution is the size of dim 0 times the kernel.
        let conv5_mask = Conv::new(
            in_channels,
            dim_reduced,
            ConvConfig::transposed(2, 2).weight_init(kaiming(in_channels * 4)),
            vb.pp("conv5_mask"),
        )?;
        let mask_fcn_logits = Conv::new(
            dim_reduced,
            num_classes,
            ConvConfig::new(1).weight_init(kaiming(num_classes)),
            vb.pp("mask_fcn_logits"),
        )?;
        Ok(MaskRcnnPredictor {
            conv5_mask,
            mask_fcn_logits,
            in_channels,
            num_classes,
        })
    }

    /// The number of classes, background included.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// The mask logits `(K, num_classes, 2H, 2W)` of `x` `(K, in_channels, H, W)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (k, h, w) = check_input(x, self.in_channels, "MaskRcnnPredictor", "features")?;
        if k == 0 {
            return Ok(Tensor::zeros(
                (0, self.num_classes, 2 * h, 2 * w),
                x.dtype(),
                x.device(),
            )?);
        }
        let y = self.conv5_mask.forward_fused(x, true)?;
        self.mask_fcn_logits.forward(&y)
    }
}

impl Module for MaskRcnnPredictor {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Ok(MaskRcnnPredictor::forward(self, x)?)
    }
}

/// The rows `i · C + label_i` of a `(K·C, …)` view: each box's own class.
fn class_rows(labels: &[i64], c: usize, what: &str) -> Result<Vec<u32>> {
    labels
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            if l < 0 || l as usize >= c {
                Err(Error::Input(format!(
                    "{what}: label {l} of box {i} is outside 0..{c}"
                )))
            } else {
                Ok((i * c) as u32 + l as u32)
            }
        })
        .collect()
}

/// Each detection's mask probabilities: the sigmoid of the channel of its label, split by
/// image: torchvision's `roi_heads.maskrcnn_inference`.
///
/// `mask_logits` is `(K, C, M, M)` for the detections of all images in order, `labels` one
/// 1-D integer tensor per image (`K` labels together). Returns one `(K_i, 1, M, M)` tensor per
/// image.
pub fn maskrcnn_inference(mask_logits: &Tensor, labels: &[Tensor]) -> Result<Vec<Tensor>> {
    let (k, c, mh, mw) = mask_logits.dims4().map_err(|_| {
        Error::Shape(format!(
            "maskrcnn_inference expects (K, C, M, M) mask logits, got {:?}",
            mask_logits.dims()
        ))
    })?;
    let per_image = labels
        .iter()
        .enumerate()
        .map(|(i, l)| host_labels(l, &format!("maskrcnn_inference labels of image {i}")))
        .collect::<Result<Vec<_>>>()?;
    let all: Vec<i64> = per_image.iter().flatten().copied().collect();
    if all.len() != k {
        return Err(Error::Shape(format!(
            "maskrcnn_inference: {} labels for {k} mask logits",
            all.len()
        )));
    }
    let rows = class_rows(&all, c, "maskrcnn_inference")?;
    let probs = if k == 0 {
        Tensor::zeros((0, 1, mh, mw), mask_logits.dtype(), mask_logits.device())?
    } else {
        let rows = Tensor::from_vec(rows, k, mask_logits.device())?;
        candle_nn::ops::sigmoid(
            &mask_logits
                .reshape((k * c, mh, mw))?
                .index_select(&rows, 0)?,
        )?
        .unsqueeze(1)?
    };
    let mut out = Vec::with_capacity(per_image.len());
    let mut start = 0;
    for l in &per_image {
        out.push(probs.narrow(0, start, l.len())?);
        start += l.len();
    }
    Ok(out)
}

/// The ground-truth masks cropped to `boxes` and resized to `m × m`: torchvision's
/// `roi_heads.project_masks_on_boxes`, a RoIAlign (scale 1, adaptive sampling,
/// `aligned = false`) of `gt_masks` `(G, H, W)` (any dtype; converted to the boxes') over
/// `boxes` `(P, 4)`, box `p` reading mask `matched_idxs[p]`. Returns `(P, m, m)` values in
/// `[0, 1]` for binary masks.
///
/// Fails if the shapes do not fit, an index is outside `0..G`, or a box is invalid.
pub fn project_masks_on_boxes(
    gt_masks: &Tensor,
    boxes: &Tensor,
    matched_idxs: &Tensor,
    m: usize,
) -> Result<Tensor> {
    let (g, _, _) = gt_masks.dims3().map_err(|_| {
        Error::Shape(format!(
            "project_masks_on_boxes expects (G, H, W) masks, got {:?}",
            gt_masks.dims()
        ))
    })?;
    let p = match boxes.dims() {
        &[p, 4] => p,
        dims => {
            return Err(Error::Shape(format!(
                "project_masks_on_boxes expects (P, 4) boxes, got {dims:?}"
            )))
        }
    };
    let idxs = host_labels(matched_idxs, "project_masks_on_boxes matched indices")?;
    if idxs.len() != p {
        return Err(Error::Shape(format!(
            "project_masks_on_boxes: {} matched indices for {p} boxes",
            idxs.len()
        )));
    }
    if let Some(&i) = idxs.iter().find(|&&i| i < 0 || i as usize >= g) {
        return Err(Error::Input(format!(
            "project_masks_on_boxes: matched index {i} is outside 0..{g} (the masks)"
        )));
    }
    let dtype = boxes.dtype();
    if p == 0 {
        return Ok(Tensor::zeros((0, m, m), dtype, boxes.device())?);
    }
    let ids: Vec<f64> = idxs.iter().map(|&i| i as f64).collect();
    let ids = crate::ops::host_tensor(ids, (p, 1), dtype, boxes.device())?;
    let rois = Tensor::cat(&[&ids, boxes], 1)?;
    let masks = gt_masks.to_dtype(dtype)?.unsqueeze(1)?;
    Ok(RoiAlign::new((m, m)).forward(&masks, &rois)?.squeeze(1)?)
}

/// The mask loss of the positive proposals: torchvision's `roi_heads.maskrcnn_loss`.
///
/// - `mask_logits` `(K, C, M, M)`: the predictor's output for the positive proposals of all
///   images, in order;
/// - per image: `proposals` `(K_i, 4)`, `gt_masks` `(G_i, H_i, W_i)`, `gt_labels` `(G_i)`
///   integers and `mask_matched_idxs` `(K_i)` integers (the ground truth of each proposal).
///
/// The target of proposal `p` is its ground truth's mask projected on it
/// ([`project_masks_on_boxes`]); the loss is the mean binary cross entropy with logits of the
/// channel of its ground truth's label against that target. With no proposal it is the sum of
/// `mask_logits` times 0 (a differentiable zero), as in torchvision.
///
/// Fails on mismatched counts or shapes, indices outside `0..G_i` or labels outside `0..C`.
pub fn maskrcnn_loss(
    mask_logits: &Tensor,
    proposals: &[Tensor],
    gt_masks: &[Tensor],
    gt_labels: &[Tensor],
    mask_matched_idxs: &[Tensor],
) -> Result<Tensor> {
    let (k, c, mh, mw) = mask_logits.dims4().map_err(|_| {
        Error::Shape(format!(
            "maskrcnn_loss expects (K, C, M, M) mask logits, got {:?}",
            mask_logits.dims()
        ))
    })?;
    if mh != mw {
        return Err(Error::Shape(format!(
            "maskrcnn_loss expects square mask logits, got {mh}x{mw}"
        )));
    }
    let n = proposals.len();
    if gt_masks.len() != n || gt_labels.len() != n || mask_matched_idxs.len() != n {
        return Err(Error::Shape(format!(
            "maskrcnn_loss needs one entry per image in each list: {n} proposals, {} masks, \
             {} labels, {} matched indices",
            gt_masks.len(),
            gt_labels.len(),
            mask_matched_idxs.len()
        )));
    }
    let mut labels = Vec::new();
    let mut targets = Vec::with_capacity(n);
    for i in 0..n {
        let gl = host_labels(&gt_labels[i], &format!("maskrcnn_loss labels of image {i}"))?;
        let g = gt_masks[i].dims().first().copied().unwrap_or(0);
        if gt_masks[i].rank() != 3 || g != gl.len() {
            return Err(Error::Shape(format!(
                "maskrcnn_loss: image {i} has {} labels, so its masks must be ({}, H, W), got \
                 {:?}",
                gl.len(),
                gl.len(),
                gt_masks[i].dims()
            )));
        }
        let idxs = host_labels(
            &mask_matched_idxs[i],
            &format!("maskrcnn_loss matched indices of image {i}"),
        )?;
        for &j in &idxs {
            let l = usize::try_from(j)
                .ok()
                .and_then(|j| gl.get(j))
                .ok_or_else(|| {
                    Error::Input(format!(
                        "maskrcnn_loss: matched index {j} of image {i} is outside 0..{}",
                        gl.len()
                    ))
                })?;
            labels.push(*l);
        }
        targets.push(project_masks_on_boxes(
            &gt_masks[i],
            &proposals[i],
            &mask_matched_idxs[i],
            mh,
        )?);
    }
    if labels.len() != k {
        return Err(Error::Shape(format!(
            "maskrcnn_loss: {} positive proposals for {k} mask logits",
            labels.len()
        )));
    }
    if k == 0 {
        return Ok((mask_logits.sum_all()? * 0.0)?);
    }
    let rows = Tensor::from_vec(
        class_rows(&labels, c, "maskrcnn_loss")?,
        k,
        mask_logits.device(),
    )?;
    let picked = mask_logits
        .reshape((k * c, mh, mw))?
        .index_select(&rows, 0)?;
    let targets = Tensor::cat(&targets, 0)?.to_dtype(mask_logits.dtype())?;
    crate::loss::bce_with_logits(&picked, &targets.detach())
}

/// `(K, H, W)` of `x`, after checking that it is `(K, channels, H, W)`.
fn check_input(
    x: &Tensor,
    channels: usize,
    who: &str,
    what: &str,
) -> Result<(usize, usize, usize)> {
    let (k, c, h, w) = x.dims4().map_err(|_| {
        Error::Shape(format!(
            "{who} expects (K, C, H, W) {what}, got {:?}",
            x.dims()
        ))
    })?;
    if c != channels {
        return Err(Error::Shape(format!(
            "{who} expects {channels} channels, got {c}"
        )));
    }
    Ok((k, h, w))
}
