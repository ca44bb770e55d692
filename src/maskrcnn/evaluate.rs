//! Evaluation of instance predictions: average precision at an IoU threshold (COCO's
//! 101-point interpolation, greedy matching by score) on boxes or masks, and the mean best
//! mask IoU of the ground-truth instances.

use crate::{Error, Result};

/// One image's predictions on the host (what a detector returns, masks binarised).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prediction {
    /// `x1, y1, x2, y2` per detection.
    pub boxes: Vec<[f32; 4]>,
    /// Score per detection.
    pub scores: Vec<f32>,
    /// Class per detection.
    pub labels: Vec<u32>,
    /// Binary `(H, W)` mask per detection, if evaluated on masks.
    pub masks: Vec<Vec<u8>>,
}

/// One image's ground truth.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroundTruth {
    /// `x1, y1, x2, y2` per object.
    pub boxes: Vec<[f32; 4]>,
    /// Class per object.
    pub labels: Vec<u32>,
    /// Binary `(H, W)` mask per object, if evaluated on masks.
    pub masks: Vec<Vec<u8>>,
}

/// What overlap decides a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// Box IoU.
    Box,
    /// Mask IoU.
    Mask,
}

/// Average precision per class and its mean over the classes that have ground truth.
#[derive(Debug, Clone, PartialEq)]
pub struct ApReport {
    /// `(class, AP)` for every class with at least one ground-truth object, ascending.
    pub per_class: Vec<(u32, f64)>,
    /// Mean of `per_class` (0 when there is no ground truth at all).
    pub mean: f64,
}

/// IoU of two boxes (`x2 - x1` widths, as torchvision).
pub fn box_iou_pair(a: &[f32; 4], b: &[f32; 4]) -> f64 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0) as f64;
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0) as f64;
    let inter = iw * ih;
    let area = |r: &[f32; 4]| ((r[2] - r[0]) * (r[3] - r[1])) as f64;
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// IoU of two binary masks of the same size (0 when both are empty).
pub fn mask_iou_pair(a: &[u8], b: &[u8]) -> f64 {
    let (mut inter, mut union) = (0usize, 0usize);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x != 0, y != 0);
        inter += usize::from(x && y);
        union += usize::from(x || y);
    }
    if union > 0 {
        inter as f64 / union as f64
    } else {
        0.0
    }
}

fn check(preds: &[Prediction], gts: &[GroundTruth], overlap: Overlap) -> Result<()> {
    if preds.len() != gts.len() {
        return Err(Error::Input(format!(
            "{} predictions for {} images",
            preds.len(),
            gts.len()
        )));
    }
    for (i, (p, g)) in preds.iter().zip(gts).enumerate() {
        let k = p.boxes.len();
        if p.scores.len() != k || p.labels.len() != k {
            return Err(Error::Input(format!(
                "image {i}: {k} boxes, {} scores, {} labels",
                p.scores.len(),
                p.labels.len()
            )));
        }
        if g.labels.len() != g.boxes.len() {
            return Err(Error::Input(format!(
                "image {i}: {} ground-truth boxes, {} labels",
                g.boxes.len(),
                g.labels.len()
            )));
        }
        if overlap == Overlap::Mask {
            if p.masks.len() != k || g.masks.len() != g.boxes.len() {
                return Err(Error::Input(format!(
                    "image {i}: mask evaluation needs one mask per detection and object"
                )));
            }
            let size = g.masks.first().or(p.masks.first()).map(Vec::len);
            if p.masks
                .iter()
                .chain(&g.masks)
                .any(|m| Some(m.len()) != size)
            {
                return Err(Error::Input(format!("image {i}: masks of different sizes")));
            }
        }
    }
    Ok(())
}

/// Average precision at IoU `threshold` on boxes or masks, per class, COCO style: the
/// detections of a class, over all images by score (descending, ties in input order), each
/// matched to the unmatched ground truth of its image with the highest IoU ≥ `threshold`;
/// precision made non-increasing and read at the 101 recall points 0, 0.01, …, 1.
///
/// ```
/// use unetpp::maskrcnn::evaluate::{average_precision, GroundTruth, Overlap, Prediction};
/// let gt = GroundTruth { boxes: vec![[0., 0., 10., 10.]], labels: vec![1], masks: vec![] };
/// let hit = Prediction { boxes: vec![[1., 1., 10., 10.]], scores: vec![0.9], labels: vec![1], masks: vec![] };
/// let ap = average_precision(&[hit], &[gt], 0.5, Overlap::Box)?;
/// assert_eq!(ap.mean, 1.0);
/// # Ok::<(), unetpp::Error>(())
/// ```
pub fn average_precision(
    preds: &[Prediction],
    gts: &[GroundTruth],
    threshold: f64,
    overlap: Overlap,
) -> Result<ApReport> {
    check(preds, gts, overlap)?;
    let mut classes: Vec<u32> = gts.iter().flat_map(|g| g.labels.iter().copied()).collect();
    classes.sort_unstable();
    classes.dedup();
    let mut per_class = Vec::with_capacity(classes.len());
    for &c in &classes {
        // (score, image, detection), by score, descending, stable.
        let mut dets: Vec<(f32, usize, usize)> = Vec::new();
        for (i, p) in preds.iter().enumerate() {
            for k in 0..p.boxes.len() {
                if p.labels[k] == c {
                    dets.push((p.scores[k], i, k));
                }
            }
        }
        dets.sort_by(|a, b| b.0.total_cmp(&a.0));
        let npos: usize = gts
            .iter()
            .map(|g| g.labels.iter().filter(|&&l| l == c).count())
            .sum();
        let mut matched: Vec<Vec<bool>> = gts.iter().map(|g| vec![false; g.boxes.len()]).collect();
        let (mut tp, mut fp) = (0usize, 0usize);
        let mut curve = Vec::with_capacity(dets.len());
        for &(_, i, k) in &dets {
            let g = &gts[i];
            let mut best: Option<(usize, f64)> = None;
            for (j, (gb, &gl)) in g.boxes.iter().zip(&g.labels).enumerate() {
                if gl != c || matched[i][j] {
                    continue;
                }
                let iou = match overlap {
                    Overlap::Box => box_iou_pair(&preds[i].boxes[k], gb),
                    Overlap::Mask => mask_iou_pair(&preds[i].masks[k], &g.masks[j]),
                };
                if iou >= threshold && best.is_none_or(|(_, b)| iou > b) {
                    best = Some((j, iou));
                }
            }
            match best {
                Some((j, _)) => {
                    matched[i][j] = true;
                    tp += 1;
                }
                None => fp += 1,
            }
            curve.push((tp as f64 / npos as f64, tp as f64 / (tp + fp) as f64));
        }
        // Non-increasing precision from the right, then read at 101 recall points.
        for n in (0..curve.len().saturating_sub(1)).rev() {
            curve[n].1 = curve[n].1.max(curve[n + 1].1);
        }
        let ap = (0..=100)
            .map(|r| {
                let r = r as f64 / 100.0;
                curve
                    .iter()
                    .find(|(rec, _)| *rec >= r - 1e-12)
                    .map_or(0.0, |(_, p)| *p)
            })
            .sum::<f64>()
            / 101.0;
        per_class.push((c, ap));
    }
    let mean = if per_class.is_empty() {
        0.0
    } else {
        per_class.iter().map(|(_, a)| a).sum::<f64>() / per_class.len() as f64
    };
    Ok(ApReport { per_class, mean })
}

/// For each ground-truth object, the highest mask IoU with any prediction of its class; the
/// mean over all objects (0 without objects).
pub fn mean_best_mask_iou(preds: &[Prediction], gts: &[GroundTruth]) -> Result<f64> {
    check(preds, gts, Overlap::Mask)?;
    let (mut sum, mut n) = (0.0, 0usize);
    for (p, g) in preds.iter().zip(gts) {
        for (j, gm) in g.masks.iter().enumerate() {
            let best = p
                .masks
                .iter()
                .zip(&p.labels)
                .filter(|(_, &l)| l == g.labels[j])
                .map(|(pm, _)| mask_iou_pair(pm, gm))
                .fold(0.0, f64::max);
            sum += best;
            n += 1;
        }
    }
    Ok(if n == 0 { 0.0 } else { sum / n as f64 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gt(boxes: Vec<[f32; 4]>) -> GroundTruth {
        let n = boxes.len();
        GroundTruth {
            boxes,
            labels: vec![1; n],
            masks: vec![],
        }
    }

    fn pred(boxes: Vec<[f32; 4]>, scores: Vec<f32>) -> Prediction {
        let n = boxes.len();
        Prediction {
            boxes,
            scores,
            labels: vec![1; n],
            masks: vec![],
        }
    }

    #[test]
    fn ap_of_a_ranked_list_with_one_false_positive_in_the_middle() {
        // Two objects; detections by score: hit, miss, hit -> precision 1, 1/2, 2/3 at
        // recalls 0.5, 0.5, 1. Interpolated: 1 up to recall 0.5, 2/3 beyond.
        let g = gt(vec![[0., 0., 10., 10.], [20., 20., 30., 30.]]);
        let p = pred(
            vec![
                [0., 0., 10., 10.],
                [50., 50., 60., 60.],
                [20., 20., 30., 30.],
            ],
            vec![0.9, 0.8, 0.7],
        );
        let ap = average_precision(&[p], &[g], 0.5, Overlap::Box).unwrap();
        let want = (51.0 * 1.0 + 50.0 * 2.0 / 3.0) / 101.0;
        assert!((ap.mean - want).abs() < 1e-12, "{} vs {want}", ap.mean);
    }

    #[test]
    fn a_duplicate_detection_is_a_false_positive() {
        let g = gt(vec![[0., 0., 10., 10.]]);
        let p = pred(vec![[0., 0., 10., 10.], [0., 0., 10., 9.]], vec![0.9, 0.8]);
        let ap = average_precision(&[p], &[g], 0.5, Overlap::Box).unwrap();
        assert_eq!(ap.mean, 1.0);
        let g = gt(vec![[0., 0., 10., 10.]]);
        let p = pred(vec![[0., 0., 10., 9.], [0., 0., 10., 10.]], vec![0.8, 0.9]);
        assert_eq!(
            average_precision(&[p], &[g], 0.95, Overlap::Box)
                .unwrap()
                .mean,
            1.0
        );
    }

    #[test]
    fn masks_and_errors() {
        let a = vec![1, 1, 0, 0];
        let b = vec![1, 0, 0, 0];
        assert_eq!(mask_iou_pair(&a, &b), 0.5);
        let g = GroundTruth {
            boxes: vec![[0., 0., 2., 1.]],
            labels: vec![1],
            masks: vec![a],
        };
        let p = Prediction {
            boxes: vec![[0., 0., 1., 1.]],
            scores: vec![0.5],
            labels: vec![1],
            masks: vec![b],
        };
        let (ps, gs) = (std::slice::from_ref(&p), std::slice::from_ref(&g));
        assert_eq!(mean_best_mask_iou(ps, gs).unwrap(), 0.5);
        assert_eq!(
            average_precision(ps, gs, 0.5, Overlap::Mask).unwrap().mean,
            1.0
        );
        assert_eq!(
            average_precision(ps, gs, 0.6, Overlap::Mask).unwrap().mean,
            0.0
        );
        assert!(average_precision(ps, &[], 0.5, Overlap::Box).is_err());
        let mut bad = p;
        bad.masks.clear();
        assert!(average_precision(&[bad], &[g], 0.5, Overlap::Mask).is_err());
    }
}
