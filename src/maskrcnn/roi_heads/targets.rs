//! Training targets of the RoI heads: the ground truth's validation, and the proposals each
//! image trains on (matching to the ground truth, balanced sampling, regression targets):
//! torchvision's `RoIHeads.select_training_samples`.

use candle_core::Tensor;
use rand::Rng;

use super::inputs::proposal_counts;
use super::RoiHeads;
use crate::maskrcnn::box_head::host_labels;
use crate::maskrcnn::Matcher;
use crate::ops::{box_iou, check_boxes};
use crate::{Error, Result};

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

impl RoiHeads {
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

    /// [`Self::select_training_samples`] for targets whose boxes and labels were checked
    /// ([`Self::check_target_labels`]); `gt_labels` are their labels.
    pub(super) fn sample<R: Rng + ?Sized>(
        &self,
        proposals: &[Tensor],
        targets: &[RoiHeadsTarget],
        gt_labels: &[Vec<i64>],
        rng: &mut R,
    ) -> Result<TrainingSamples> {
        let mut out = TrainingSamples {
            proposals: Vec::with_capacity(proposals.len()),
            matched_idxs: Vec::with_capacity(proposals.len()),
            labels: Vec::with_capacity(proposals.len()),
            regression_targets: Vec::with_capacity(proposals.len()),
        };
        for (i, ((p, t), gl)) in proposals.iter().zip(targets).zip(gt_labels).enumerate() {
            check_boxes(p, &format!("RoiHeads: the proposals of image {i}"))?;
            let dev = p.device().clone();
            let gt = t.boxes.to_dtype(p.dtype())?.to_device(&dev)?;
            let p = Tensor::cat(&[p, &gt], 0)?;
            let len = p.dim(0)?;
            let (m, l) = if gl.is_empty() {
                (vec![0i64; len], vec![0i64; len])
            } else {
                // Both sets are checked: the IoU does not read them again.
                let found = self
                    .matcher
                    .matches(&box_iou::unchecked(&gt, &p)?)?
                    .to_vec1::<i64>()?;
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
            // Classes `>= 1` are positives, the background negatives, `-1` ignored.
            let positives: Vec<usize> = (0..len).filter(|&j| l[j] >= 1).collect();
            let negatives: Vec<usize> = (0..len).filter(|&j| l[j] == 0).collect();
            let (pos, neg) = self.sampler.draw(&positives, &negatives, rng);
            let mut sampled = [pos, neg].concat();
            sampled.sort_unstable();
            let s = sampled.len();
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

    /// Checks the targets of [`Self::forward_train`] and returns their labels.
    pub(super) fn check_targets(
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

    /// Checks the boxes and labels of one target per image, once per call (the matching
    /// reads the boxes unchecked); returns the labels.
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
        let c = self.cfg.num_classes();
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
                check_boxes(&t.boxes, &format!("RoiHeads: the boxes of target {i}"))?;
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
