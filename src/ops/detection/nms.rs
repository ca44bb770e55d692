//! Non-maximum suppression, as `torchvision.ops.nms` and `batched_nms` compute it.
//!
//! The boxes and scores are read on the host (the loop is sequential by nature), so the
//! functions accept tensors on any device; the kept indices come back as a `u32` tensor on the
//! same device, ready for `index_select`.
//!
//! Order and ties follow torchvision's CPU kernel: boxes are visited by score, descending,
//! with a stable sort (equal scores keep their input order), and box `j` is suppressed by a
//! kept box `i` when `IoU(i, j) > iou_threshold`, computed in the boxes' own precision.

use std::cmp::Ordering;

use candle_core::{DType, Tensor};

use super::boxes::host_boxes;
use super::real::Real;
use crate::{Error, Result};

/// Above this many coordinates (1000 boxes), [`batched_nms`] runs one NMS per class instead of
/// offsetting the boxes, as torchvision does on the CPU.
const BATCHED_PER_CLASS_ABOVE: usize = 4000;

/// Non-maximum suppression: the indices of the boxes kept, by score, descending.
///
/// `boxes` is `(K, 4)` (`x1, y1, x2, y2`), `scores` is `(K,)`. Returns a `u32` tensor on the
/// boxes' device; `K = 0` gives an empty one. NaN scores, NaN coordinates and flipped boxes are
/// an `Error::Input`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let boxes = Tensor::new(&[[0f32, 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]],
///     &Device::Cpu).unwrap();
/// let scores = Tensor::new(&[0.9f32, 0.8, 0.7], &Device::Cpu).unwrap();
/// let keep = unetpp::ops::nms(&boxes, &scores, 0.5).unwrap();
/// assert_eq!(keep.to_vec1::<u32>().unwrap(), vec![0, 2]);
/// ```
pub fn nms(boxes: &Tensor, scores: &Tensor, iou_threshold: f64) -> Result<Tensor> {
    let keep = nms_indices(boxes, scores, iou_threshold)?;
    indices_tensor(keep, boxes)
}

/// Per-class NMS: boxes of different `classes` never suppress each other.
///
/// `classes` is a `(K,)` tensor of integer class (or image) ids. Returns the kept indices by
/// score, descending. Like torchvision on the CPU, up to 1000 boxes run one NMS on boxes
/// offset by `class × (max coordinate + 1)`, and more run one NMS per class followed by a sort
/// by score; the sort is stable here (torchvision's is not, so the order of equal scores
/// across classes may differ there).
pub fn batched_nms(
    boxes: &Tensor,
    scores: &Tensor,
    classes: &Tensor,
    iou_threshold: f64,
) -> Result<Tensor> {
    let keep = if boxes.dtype() == DType::F64 {
        batched::<f64>(boxes, scores, classes, iou_threshold)?
    } else {
        batched::<f32>(boxes, scores, classes, iou_threshold)?
    };
    indices_tensor(keep, boxes)
}

/// [`nms`] with the indices as a vector.
pub(crate) fn nms_indices(
    boxes: &Tensor,
    scores: &Tensor,
    iou_threshold: f64,
) -> Result<Vec<usize>> {
    if boxes.dtype() == DType::F64 {
        let (b, s) = host_inputs::<f64>(boxes, scores)?;
        Ok(nms_host(&b, &s, iou_threshold))
    } else {
        let (b, s) = host_inputs::<f32>(boxes, scores)?;
        Ok(nms_host(&b, &s, iou_threshold))
    }
}

fn indices_tensor(keep: Vec<usize>, like: &Tensor) -> Result<Tensor> {
    let keep: Vec<u32> = keep.into_iter().map(|i| i as u32).collect();
    let n = keep.len();
    Ok(Tensor::from_vec(keep, n, like.device())?)
}

type HostInputs<T> = (Vec<[T; 4]>, Vec<T>);

fn host_inputs<T: Real>(boxes: &Tensor, scores: &Tensor) -> Result<HostInputs<T>> {
    let b = host_boxes::<T>(boxes, "nms boxes")?;
    let s = host_scores::<T>(scores, b.len(), "nms scores")?;
    Ok((b, s))
}

/// An `Error::Shape` unless `t` is `(k,)`: one value per box.
fn check_one_per_box(t: &Tensor, k: usize, what: &str) -> Result<()> {
    if t.dims() != [k] {
        return Err(Error::Shape(format!(
            "{what}: expected shape [{k}] (one per box), got {:?}",
            t.dims()
        )));
    }
    Ok(())
}

fn host_scores<T: Real>(t: &Tensor, k: usize, what: &str) -> Result<Vec<T>> {
    check_one_per_box(t, k, what)?;
    let v = t
        .to_dtype(T::DTYPE)?
        .to_device(&candle_core::Device::Cpu)?
        .to_vec1::<T>()?;
    if let Some(i) = v.iter().position(|x| x.as_f64().is_nan()) {
        return Err(Error::Input(format!("{what}: score {i} is NaN")));
    }
    Ok(v)
}

/// The visiting order: scores descending, equal scores in input order.
fn order_by_score<T: Real>(scores: &[T]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].partial_cmp(&scores[a]).unwrap_or(Ordering::Equal));
    order
}

/// torchvision's CPU NMS loop, in precision `T`.
pub(crate) fn nms_host<T: Real>(boxes: &[[T; 4]], scores: &[T], iou_threshold: f64) -> Vec<usize> {
    let order = order_by_score(scores);
    let areas: Vec<T> = boxes
        .iter()
        .map(|b| (b[2] - b[0]) * (b[3] - b[1]))
        .collect();
    let mut suppressed = vec![false; boxes.len()];
    let mut keep = Vec::new();
    for (oi, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        let bi = boxes[i];
        for &j in &order[oi + 1..] {
            if suppressed[j] {
                continue;
            }
            let bj = boxes[j];
            let w = (bi[2].fmin(bj[2]) - bi[0].fmax(bj[0])).fmax(T::zero());
            let h = (bi[3].fmin(bj[3]) - bi[1].fmax(bj[1])).fmax(T::zero());
            let inter = w * h;
            let iou = inter / (areas[i] + areas[j] - inter);
            // NaN (two empty boxes) compares false: not suppressed, as in torchvision.
            if iou.as_f64() > iou_threshold {
                suppressed[j] = true;
            }
        }
    }
    keep
}

fn batched<T: Real>(
    boxes: &Tensor,
    scores: &Tensor,
    classes: &Tensor,
    iou_threshold: f64,
) -> Result<Vec<usize>> {
    let (b, s) = host_inputs::<T>(boxes, scores)?;
    check_one_per_box(classes, b.len(), "batched_nms classes")?;
    if classes.dtype().is_float() {
        return Err(Error::Input(format!(
            "batched_nms classes: expected an integer tensor, got {:?}",
            classes.dtype()
        )));
    }
    let c = classes
        .to_dtype(DType::I64)?
        .to_device(&candle_core::Device::Cpu)?
        .to_vec1::<i64>()?;
    Ok(batched_nms_host(&b, &s, &c, iou_threshold))
}

/// [`batched_nms`] on host slices (boxes already checked).
pub(crate) fn batched_nms_host<T: Real>(
    boxes: &[[T; 4]],
    scores: &[T],
    classes: &[i64],
    iou_threshold: f64,
) -> Vec<usize> {
    if boxes.is_empty() {
        Vec::new()
    } else if 4 * boxes.len() > BATCHED_PER_CLASS_ABOVE {
        per_class(boxes, scores, classes, iou_threshold)
    } else {
        offset_trick(boxes, scores, classes, iou_threshold)
    }
}

/// One NMS over boxes moved apart by `class × (max coordinate + 1)`, in precision `T`.
fn offset_trick<T: Real>(boxes: &[[T; 4]], scores: &[T], classes: &[i64], thr: f64) -> Vec<usize> {
    let max = boxes
        .iter()
        .flat_map(|b| b.iter().copied())
        .fold(T::from_f64(f64::NEG_INFINITY), |m, v| m.fmax(v));
    let step = max + T::one();
    let shifted: Vec<[T; 4]> = boxes
        .iter()
        .zip(classes)
        .map(|(b, &c)| {
            let off = T::from_f64(c as f64) * step;
            [b[0] + off, b[1] + off, b[2] + off, b[3] + off]
        })
        .collect();
    nms_host(&shifted, scores, thr)
}

/// One NMS per class, then all kept boxes by score, descending (stable).
fn per_class<T: Real>(boxes: &[[T; 4]], scores: &[T], classes: &[i64], thr: f64) -> Vec<usize> {
    let mut ids: Vec<i64> = classes.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut kept = vec![false; boxes.len()];
    for id in ids {
        let members: Vec<usize> = (0..boxes.len()).filter(|&i| classes[i] == id).collect();
        let b: Vec<[T; 4]> = members.iter().map(|&i| boxes[i]).collect();
        let s: Vec<T> = members.iter().map(|&i| scores[i]).collect();
        for j in nms_host(&b, &s, thr) {
            kept[members[j]] = true;
        }
    }
    let idx: Vec<usize> = (0..boxes.len()).filter(|&i| kept[i]).collect();
    let sub: Vec<T> = idx.iter().map(|&i| scores[i]).collect();
    order_by_score(&sub).into_iter().map(|j| idx[j]).collect()
}
