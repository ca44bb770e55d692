//! The box branch's post-processing at inference: torchvision's
//! `RoIHeads.postprocess_detections`.

use candle_core::{DType, Tensor, D};

use super::inputs::proposal_counts;
use super::RoiHeads;
use crate::ops::{batched_nms, clip_boxes_to_image, remove_small_boxes};
use crate::{Error, Result};

/// Boxes narrower or lower than this are dropped after decoding (torchvision's fixed
/// `min_size=1e-2` in `postprocess_detections`).
pub const MIN_DETECTION_SIZE: f64 = 1e-2;

/// What the box branch finds in one image, before the mask branch runs: boxes, scores and
/// labels in the resized image the heads ran on, as torchvision's
/// `RoIHeads.postprocess_detections` returns them ([`RoiHeads::postprocess_detections`]).
/// [`RoiHeads::forward`] adds a mask per box to make them
/// [`RoiHeadsDetections`](super::RoiHeadsDetections).
#[derive(Debug, Clone)]
pub struct BoxBranchDetections {
    /// `(D, 4)` boxes in the (resized) image's pixels, clipped to it.
    pub boxes: Tensor,
    /// `(D)` class probabilities, in NMS order (descending).
    pub scores: Tensor,
    /// `(D)` i64 classes in `1..num_classes`.
    pub labels: Tensor,
}

impl RoiHeads {
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
    ) -> Result<Vec<BoxBranchDetections>> {
        let c = self.cfg.num_classes();
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
        let empty = || -> Result<BoxBranchDetections> {
            Ok(BoxBranchDetections {
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
            DType::F32 => self.cfg.score_thresh() as f32 as f64,
            DType::F16 => half::f16::from_f64(self.cfg.score_thresh()).to_f64(),
            DType::BF16 => half::bf16::from_f64(self.cfg.score_thresh()).to_f64(),
            _ => self.cfg.score_thresh(),
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

            let values = crate::ops::host_f64(&scores)?.to_vec1::<f64>()?;
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
            let keep = batched_nms(&boxes, &scores, &labels, self.cfg.nms_thresh())?;
            let kept = keep.dim(0)?.min(self.cfg.detections_per_img());
            let keep = keep.narrow(0, 0, kept)?;
            out.push(BoxBranchDetections {
                boxes: boxes.index_select(&keep, 0)?,
                scores: scores.index_select(&keep, 0)?,
                labels: labels.index_select(&keep, 0)?,
            });
        }
        Ok(out)
    }
}
