//! The region proposal network (Ren et al., 2015) as torchvision's Mask R-CNN runs it: a
//! shared 3×3 convolution head with objectness and box deltas per anchor on every pyramid
//! level, decoding against the anchors, per-level top-n before NMS, clipping, small-box
//! removal, NMS per level, and top-n after; and for training, anchor matching, balanced
//! sampling and the objectness and box losses.

mod config;
mod head;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rand::Rng;

use super::div::div_scalar;
use super::loss::smooth_l1_sum;
use super::{AnchorGenerator, BalancedPositiveNegativeSampler, BoxCoder, Matcher};
use crate::loss::bce_with_logits;
use crate::nn::NamedTensor;
use crate::ops::{box_iou, check_boxes};
use crate::{weights, Error, Result};

pub use config::{RpnConfig, RpnConfigBuilder};
pub use head::RpnHead;

/// What the RPN computes for a batch: the proposals, and what its losses need.
#[derive(Debug, Clone)]
pub struct RpnOutput {
    /// Proposals per image, `(K_i, 4)`, by objectness, descending (after NMS).
    pub boxes: Vec<Tensor>,
    /// Their objectness probabilities, `(K_i,)`.
    pub scores: Vec<Tensor>,
    /// Objectness logits of every anchor, `(N, A_total)`, with the graph (for the loss).
    pub objectness: Tensor,
    /// Box deltas of every anchor, `(N, A_total, 4)`, with the graph (for the loss).
    pub deltas: Tensor,
    /// The anchors of one image, `(A_total, 4)` (the same for every image of the batch).
    pub anchors: Tensor,
}

/// The two RPN losses.
#[derive(Debug, Clone)]
pub struct RpnLosses {
    /// Binary cross-entropy of the sampled anchors' objectness (`loss_objectness`).
    pub objectness: Tensor,
    /// Smooth L1 (β = 1/9) of the positive anchors' deltas, summed and divided by the
    /// number of sampled anchors (`loss_rpn_box_reg`).
    pub box_reg: Tensor,
}

/// The region proposal network; its weights are read under `rpn.head.*` in torchvision's
/// names.
#[derive(Debug, Clone)]
pub struct Rpn {
    cfg: RpnConfig,
    anchors: AnchorGenerator,
    head: RpnHead,
    coder: BoxCoder,
    matcher: Matcher,
    sampler: BalancedPositiveNegativeSampler,
    tensors: Vec<NamedTensor>,
}

impl Rpn {
    /// An RPN over pyramid maps of `channels` channels with the anchors of `anchors` (one
    /// level per map); `vb` is the RPN's builder (`rpn` in a detector), the head reads
    /// `vb.pp("head")`.
    pub fn new(
        cfg: &RpnConfig,
        anchors: AnchorGenerator,
        channels: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let per_location = anchors.num_anchors_per_location();
        let a = per_location.first().copied().unwrap_or(0);
        if a == 0 || per_location.iter().any(|&n| n != a) {
            return Err(Error::config(
                "anchors",
                format!("the RPN head needs the same number of anchors on every level, got {per_location:?}"),
            ));
        }
        let matcher = Matcher::new(cfg.fg_iou_thresh(), cfg.bg_iou_thresh(), true)?;
        let sampler = BalancedPositiveNegativeSampler::new(
            cfg.batch_size_per_image(),
            cfg.positive_fraction(),
        )?;
        let (head, tensors) = weights::record(vb, |vb| RpnHead::new(channels, a, vb.pp("head")))?;
        Ok(Rpn {
            cfg: cfg.clone(),
            anchors,
            head,
            coder: BoxCoder::rpn(),
            matcher,
            sampler,
            tensors,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RpnConfig {
        &self.cfg
    }

    /// Proposals for a batch padded to `batch_size = (H, W)` holding images of `image_sizes`,
    /// from the pyramid `features` (one map per anchor level, finest first). `train` picks
    /// the training top-n values.
    pub fn forward(
        &self,
        batch_size: (usize, usize),
        image_sizes: &[(usize, usize)],
        features: &[Tensor],
        train: bool,
    ) -> Result<RpnOutput> {
        if features.len() != self.anchors.num_levels() {
            return Err(Error::Shape(format!(
                "the RPN has anchors for {} levels, got {} feature maps",
                self.anchors.num_levels(),
                features.len()
            )));
        }
        let n = features[0].dim(0)?;
        if image_sizes.len() != n {
            return Err(Error::Shape(format!(
                "{} image sizes for a batch of {n}",
                image_sizes.len()
            )));
        }
        let (logits, deltas) = self.head.forward(features)?;
        let mut grids = Vec::with_capacity(features.len());
        let mut per_level = Vec::with_capacity(features.len());
        let (mut obj_flat, mut delta_flat) = (Vec::new(), Vec::new());
        for (l, d) in logits.iter().zip(&deltas) {
            let (_, a, h, w) = l.dims4()?;
            grids.push((h, w));
            per_level.push(h * w * a);
            // (N, A, H, W) -> (N, H, W, A): anchors vary fastest, as the anchor generator lists them.
            obj_flat.push(l.permute((0, 2, 3, 1))?.reshape((n, h * w * a))?);
            delta_flat.push(
                d.reshape((n, a, 4, h, w))?
                    .permute((0, 3, 4, 1, 2))?
                    .reshape((n, h * w * a, 4))?,
            );
        }
        let objectness = Tensor::cat(&obj_flat, 1)?;
        let deltas = Tensor::cat(&delta_flat, 1)?;
        let anchors =
            self.anchors
                .anchors_as(batch_size, &grids, objectness.dtype(), objectness.device())?;
        let total = anchors.dim(0)?;
        let repeated = anchors.repeat((n, 1))?;
        let proposals = self
            .coder
            .decode_single(&deltas.detach().reshape((n * total, 4))?, &repeated)?;
        let (boxes, scores) = self.filter(
            &proposals,
            &objectness.detach(),
            image_sizes,
            &per_level,
            train,
        )?;
        Ok(RpnOutput {
            boxes,
            scores,
            objectness,
            deltas,
            anchors,
        })
    }

    /// torchvision's `filter_proposals`, on the host.
    fn filter(
        &self,
        proposals: &Tensor,
        objectness: &Tensor,
        image_sizes: &[(usize, usize)],
        per_level: &[usize],
        train: bool,
    ) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        let dev = objectness.device().clone();
        let n = image_sizes.len();
        let total: usize = per_level.iter().sum();
        let obj: Vec<f32> = objectness
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_device(&Device::Cpu)?
            .to_vec1()?;
        let props: Vec<f32> = proposals
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_device(&Device::Cpu)?
            .to_vec1()?;
        let (pre_n, post_n) = if train {
            (self.cfg.pre_nms_top_n().0, self.cfg.post_nms_top_n().0)
        } else {
            (self.cfg.pre_nms_top_n().1, self.cfg.post_nms_top_n().1)
        };
        let min_size = self.cfg.min_size() as f32;
        let (mut all_boxes, mut all_scores) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for (img, &(h, w)) in image_sizes.iter().enumerate() {
            let base = img * total;
            let (mut boxes, mut scores, mut levels) = (Vec::new(), Vec::new(), Vec::new());
            let mut offset = 0;
            for (lvl, &count) in per_level.iter().enumerate() {
                let logit = &obj[base + offset..base + offset + count];
                let mut order: Vec<usize> = (0..count).collect();
                order.sort_by(|&a, &b| logit[b].total_cmp(&logit[a]));
                for &i in order.iter().take(pre_n.min(count)) {
                    let at = 4 * (base + offset + i);
                    let (wf, hf) = (w as f32, h as f32);
                    let b = [
                        props[at].clamp(0.0, wf),
                        props[at + 1].clamp(0.0, hf),
                        props[at + 2].clamp(0.0, wf),
                        props[at + 3].clamp(0.0, hf),
                    ];
                    let s = 1.0 / (1.0 + (-logit[i]).exp());
                    let big = b[2] - b[0] >= min_size && b[3] - b[1] >= min_size;
                    // Compared in f32, as torchvision compares the f32 scores.
                    if big && s >= self.cfg.score_thresh() as f32 && b.iter().all(|v| v.is_finite())
                    {
                        boxes.push(b);
                        scores.push(s);
                        levels.push(lvl as i64);
                    }
                }
                offset += count;
            }
            let keep =
                crate::ops::nms::batched_nms_host(&boxes, &scores, &levels, self.cfg.nms_thresh());
            let keep = &keep[..keep.len().min(post_n)];
            let flat: Vec<f32> = keep.iter().flat_map(|&i| boxes[i]).collect();
            let sc: Vec<f32> = keep.iter().map(|&i| scores[i]).collect();
            // Proposals in the features' dtype (the filtering itself runs in f32).
            let dtype = objectness.dtype();
            all_boxes.push(Tensor::from_vec(flat, (keep.len(), 4), &dev)?.to_dtype(dtype)?);
            all_scores.push(Tensor::from_vec(sc, keep.len(), &dev)?.to_dtype(dtype)?);
        }
        Ok((all_boxes, all_scores))
    }

    /// The RPN losses for `out` against ground-truth boxes `gt_boxes` (one `(G_i, 4)` tensor
    /// per image, possibly empty: every anchor of such an image is a negative), sampling
    /// anchors with `rng`. An `Error::Input` if no anchor could be sampled (torchvision's
    /// losses are NaN then).
    pub fn losses<R: Rng + ?Sized>(
        &self,
        out: &RpnOutput,
        gt_boxes: &[Tensor],
        rng: &mut R,
    ) -> Result<RpnLosses> {
        let (n, total) = out.objectness.dims2()?;
        if gt_boxes.len() != n {
            return Err(Error::Shape(format!(
                "{} ground-truth box sets for a batch of {n}",
                gt_boxes.len()
            )));
        }
        let dev = out.objectness.device();
        let dtype = out.deltas.dtype();
        // Positions in the batch's `n · total` anchors, ascending; the regression targets of
        // the positives, in the same order.
        let (mut pos, mut neg) = (Vec::new(), Vec::new());
        let mut pos_targets = Vec::with_capacity(n);
        for (i, gt) in gt_boxes.iter().enumerate() {
            check_boxes(gt, &format!("ground-truth boxes of image {i}"))?;
            let gt = gt.to_dtype(dtype)?.to_device(dev)?;
            let (image_pos, image_neg) = if gt.dim(0)? == 0 {
                let every: Vec<usize> = (0..total).collect();
                self.sampler.draw(&[], &every, rng)
            } else {
                // The ground truth is checked above and the anchors are the generator's: the
                // IoU skips checks that would copy every anchor to the host.
                let iou = box_iou::unchecked(&gt, &out.anchors)?;
                let matches = self
                    .matcher
                    .matches(&iou)?
                    .to_device(&Device::Cpu)?
                    .to_vec1::<i64>()?;
                // A match is a positive, below the low threshold a negative, between the
                // thresholds ignored.
                let candidates = |keep: fn(i64) -> bool| -> Vec<usize> {
                    (0..total).filter(|&j| keep(matches[j])).collect()
                };
                let (p, q) = self.sampler.draw(
                    &candidates(|m| m >= 0),
                    &candidates(|m| m == Matcher::BELOW_LOW_THRESHOLD),
                    rng,
                );
                if !p.is_empty() {
                    let gt_index: Vec<u32> = p.iter().map(|&j| matches[j] as u32).collect();
                    let anchor_index: Vec<u32> = p.iter().map(|&j| j as u32).collect();
                    let matched = gt.index_select(&Tensor::from_vec(gt_index, p.len(), dev)?, 0)?;
                    let anchors = out
                        .anchors
                        .index_select(&Tensor::from_vec(anchor_index, p.len(), dev)?, 0)?;
                    pos_targets.push(self.coder.encode(&matched, &anchors)?.to_dtype(dtype)?);
                }
                (p, q)
            };
            pos.extend(image_pos.iter().map(|&j| (i * total + j) as u32));
            neg.extend(image_neg.iter().map(|&j| (i * total + j) as u32));
        }
        let sampled = pos.len() + neg.len();
        if sampled == 0 {
            return Err(Error::Input("the RPN sampled no anchors".into()));
        }
        let objectness = out.objectness.flatten_all()?;
        let deltas = out.deltas.reshape((n * total, 4))?;
        // The sampled anchors' labels: 1 for the positives, 0 for the negatives.
        let labels: Vec<f32> = (0..sampled)
            .map(|k| if k < pos.len() { 1.0 } else { 0.0 })
            .collect();
        let labels = Tensor::from_vec(labels, sampled, dev)?;
        let all: Vec<u32> = pos.iter().chain(&neg).copied().collect();
        let all = Tensor::from_vec(all, sampled, dev)?;
        let objectness_loss = bce_with_logits(&objectness.index_select(&all, 0)?, &labels)?;
        let box_reg = if pos.is_empty() {
            (deltas.sum_all()? * 0.0)?
        } else {
            let p = Tensor::from_vec(pos.clone(), pos.len(), dev)?;
            smooth_l1_sum(
                &deltas.index_select(&p, 0)?,
                &Tensor::cat(&pos_targets, 0)?,
                1.0 / 9.0,
            )?
        };
        Ok(RpnLosses {
            objectness: objectness_loss,
            box_reg: div_scalar(&box_reg, sampled as f64)?,
        })
    }

    /// Every tensor under torchvision's names (`head.conv.0.0.weight`, …).
    pub fn named_tensors(&self) -> Vec<NamedTensor> {
        self.tensors.clone()
    }
}
