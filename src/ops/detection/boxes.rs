//! Boxes as `(K, 4)` tensors of `x1, y1, x2, y2` corners, with torchvision's conventions.
//!
//! Widths are `x2 - x1` (no `+ 1` pixel, unlike the helpers of some older detectors), so
//! [`box_iou()`] and [`box_area`] give what `torchvision.ops.box_iou` / `box_area` give. The
//! element-wise functions ([`box_area`], [`clip_boxes_to_image`], [`box_convert`]) are built
//! from candle tensor ops: they run on any device and carry gradients. Those that read the
//! boxes on the host anyway ([`remove_small_boxes`], and the NMS and RoIAlign ops) first
//! check them with [`check_boxes`], and so does [`box_iou()`] (the detector's own callers,
//! whose boxes are checked once per image, skip that round trip).

use candle_core::{DType, Device, Tensor, D};

use super::real::Real;
use crate::{Error, Result};

/// The three box layouts `torchvision.ops.box_convert` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoxFormat {
    /// Corners: `x1, y1, x2, y2`.
    Xyxy,
    /// Top-left corner and size: `x, y, w, h`.
    Xywh,
    /// Centre and size: `cx, cy, w, h`.
    Cxcywh,
}

/// Checks that `boxes` is a `(K, 4)` tensor of finite `x1, y1, x2, y2` with `x2 >= x1` and
/// `y2 >= y1` (empty boxes, with `x2 == x1` or `y2 == y1`, are valid).
///
/// ```
/// use candle_core::{Device, Tensor};
/// let ok = Tensor::new(&[[0f32, 0., 4., 2.]], &Device::Cpu).unwrap();
/// assert!(unetpp::ops::check_boxes(&ok, "boxes").is_ok());
/// let flipped = Tensor::new(&[[4f32, 0., 0., 2.]], &Device::Cpu).unwrap();
/// assert!(unetpp::ops::check_boxes(&flipped, "boxes").is_err());
/// ```
pub fn check_boxes(boxes: &Tensor, what: &str) -> Result<()> {
    if boxes.dtype() == DType::F64 {
        host_boxes::<f64>(boxes, what).map(|_| ())
    } else {
        host_boxes::<f32>(boxes, what).map(|_| ())
    }
}

/// The rows of a `(K, 4)` box tensor on the host in precision `T`, checked as
/// [`check_boxes`] describes.
pub(crate) fn host_boxes<T: Real>(boxes: &Tensor, what: &str) -> Result<Vec<[T; 4]>> {
    let rows = host_rows::<T, 4>(boxes, what)?;
    for (k, b) in rows.iter().enumerate() {
        check_corners(b, &format!("{what}: box {k}"))?;
    }
    Ok(rows)
}

/// An `Error::Input` naming `which` unless `b` holds finite `x1, y1, x2, y2` with `x1 <= x2`
/// and `y1 <= y2`.
pub(crate) fn check_corners<T: Real>(b: &[T; 4], which: &str) -> Result<()> {
    if !b.iter().all(|v| v.is_finite()) {
        return Err(Error::Input(format!(
            "{which} has a non-finite coordinate: [{}, {}, {}, {}]",
            b[0], b[1], b[2], b[3]
        )));
    }
    if b[2] < b[0] || b[3] < b[1] {
        return Err(Error::Input(format!(
            "{which} is not x1 <= x2, y1 <= y2: [{}, {}, {}, {}]",
            b[0], b[1], b[2], b[3]
        )));
    }
    Ok(())
}

/// The rows of a `(K, C)` tensor on the host in precision `T` (no value checks).
pub(crate) fn host_rows<T: Real, const C: usize>(t: &Tensor, what: &str) -> Result<Vec<[T; C]>> {
    let dims = t.dims();
    if dims.len() != 2 || dims[1] != C {
        return Err(Error::Shape(format!(
            "{what}: expected a (K, {C}) tensor, got shape {dims:?}"
        )));
    }
    let flat = t
        .to_dtype(T::DTYPE)?
        .flatten_all()?
        .to_device(&Device::Cpu)?
        .to_vec1::<T>()?;
    Ok(flat
        .chunks_exact(C)
        .map(|c| {
            let mut row = [T::zero(); C];
            row.copy_from_slice(c);
            row
        })
        .collect())
}

/// Checks that `t` is `(K, 4)`, for the tensor-op functions that do not read values.
fn check_rank(t: &Tensor, what: &str) -> Result<usize> {
    match t.dims() {
        &[k, 4] => Ok(k),
        dims => Err(Error::Shape(format!(
            "{what}: expected a (K, 4) tensor of boxes, got shape {dims:?}"
        ))),
    }
}

/// The area `(x2 - x1) * (y2 - y1)` of each box, shape `(K,)`.
///
/// Built from tensor ops (any device, differentiable); boxes with `x2 < x1` get a negative
/// area, as in torchvision — use [`check_boxes`] on untrusted input.
pub fn box_area(boxes: &Tensor) -> Result<Tensor> {
    check_rank(boxes, "box_area")?;
    let w = (boxes.narrow(1, 2, 1)? - boxes.narrow(1, 0, 1)?)?;
    let h = (boxes.narrow(1, 3, 1)? - boxes.narrow(1, 1, 1)?)?;
    Ok((w * h)?.squeeze(1)?)
}

/// The `(M, N)` matrix of intersection over union between `boxes1 (M, 4)` and `boxes2 (N, 4)`,
/// computed as `torchvision.ops.box_iou` computes it (same operations in the same order).
///
/// Both sets are checked first ([`check_boxes`]): a NaN coordinate or a flipped box is an
/// `Error::Input`. A pair of empty boxes (union 0) gives NaN, as in torchvision.
pub fn box_iou(boxes1: &Tensor, boxes2: &Tensor) -> Result<Tensor> {
    check_boxes(boxes1, "box_iou, first set")?;
    check_boxes(boxes2, "box_iou, second set")?;
    box_iou::unchecked(boxes1, boxes2)
}

/// [`box_iou()`] without the value checks. The module shares the function's name so that
/// the re-exports of `box_iou` carry it to `crate::ops::box_iou` (as `nms` carries its host
/// helpers).
pub(crate) mod box_iou {
    use candle_core::Tensor;

    use super::{box_area, check_rank};
    use crate::Result;

    /// [`box_iou()`](fn@super::box_iou) without reading the boxes, only their shapes checked:
    /// for boxes that are valid by construction or were checked once already (the
    /// detector's ground truth, once per image; its anchors), so that a large set such as
    /// an image's 200 000 anchors is not copied to the host on every call.
    pub(crate) fn unchecked(boxes1: &Tensor, boxes2: &Tensor) -> Result<Tensor> {
        check_rank(boxes1, "box_iou, first set")?;
        check_rank(boxes2, "box_iou, second set")?;
        let area1 = box_area(boxes1)?;
        let area2 = box_area(boxes2)?;
        let (m, n) = (boxes1.dim(0)?, boxes2.dim(0)?);
        let b1 = boxes1.unsqueeze(1)?.broadcast_as((m, n, 4))?;
        let b2 = boxes2.unsqueeze(0)?.broadcast_as((m, n, 4))?;
        let lt = b1.narrow(2, 0, 2)?.maximum(&b2.narrow(2, 0, 2)?)?;
        let rb = b1.narrow(2, 2, 2)?.minimum(&b2.narrow(2, 2, 2)?)?;
        let wh = (rb - lt)?.relu()?; // candle-relu-ok: torchvision clamps at 0, gradient 1 there
        let inter = (wh.narrow(2, 0, 1)?.squeeze(2)? * wh.narrow(2, 1, 1)?.squeeze(2)?)?;
        let union = area1
            .unsqueeze(1)?
            .broadcast_add(&area2.unsqueeze(0)?)?
            .sub(&inter)?;
        Ok((inter / union)?)
    }
}

/// Clamps x coordinates to `[0, width]` and y coordinates to `[0, height]`
/// (`torchvision.ops.clip_boxes_to_image`). `image_size` is `(height, width)`.
pub fn clip_boxes_to_image(boxes: &Tensor, image_size: (usize, usize)) -> Result<Tensor> {
    check_rank(boxes, "clip_boxes_to_image")?;
    let (h, w) = (image_size.0 as f64, image_size.1 as f64);
    let cols = [w, h, w, h]
        .iter()
        .enumerate()
        .map(|(i, &hi)| boxes.narrow(1, i, 1)?.clamp(0f64, hi))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&cols, 1)?)
}

/// The indices (`u32`, ascending, on the boxes' device) of the boxes whose width and height
/// are both at least `min_size` (`torchvision.ops.remove_small_boxes`).
pub fn remove_small_boxes(boxes: &Tensor, min_size: f64) -> Result<Tensor> {
    let keep: Vec<u32> = if boxes.dtype() == DType::F64 {
        small_kept::<f64>(boxes, min_size)?
    } else {
        small_kept::<f32>(boxes, min_size)?
    };
    let n = keep.len();
    Ok(Tensor::from_vec(keep, n, boxes.device())?)
}

fn small_kept<T: Real>(boxes: &Tensor, min_size: f64) -> Result<Vec<u32>> {
    let rows = host_boxes::<T>(boxes, "remove_small_boxes")?;
    let min = T::from_f64(min_size);
    Ok(rows
        .iter()
        .enumerate()
        .filter(|(_, b)| b[2] - b[0] >= min && b[3] - b[1] >= min)
        .map(|(i, _)| i as u32)
        .collect())
}

/// Converts boxes between [`BoxFormat`]s (`torchvision.ops.box_convert`), with tensor ops.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use unetpp::ops::{box_convert, BoxFormat};
/// let b = Tensor::new(&[[1f32, 2., 5., 10.]], &Device::Cpu).unwrap();
/// let c = box_convert(&b, BoxFormat::Xyxy, BoxFormat::Cxcywh).unwrap();
/// assert_eq!(c.to_vec2::<f32>().unwrap(), vec![vec![3., 6., 4., 8.]]);
/// ```
pub fn box_convert(boxes: &Tensor, from: BoxFormat, to: BoxFormat) -> Result<Tensor> {
    check_rank(boxes, "box_convert")?;
    if from == to {
        return Ok(boxes.clone());
    }
    let col = |i: usize| boxes.narrow(1, i, 1);
    let (a, b, c, d) = (col(0)?, col(1)?, col(2)?, col(3)?);
    // To corners first, then to the target layout (torchvision goes through xyxy the same way).
    let (x1, y1, x2, y2) = match from {
        BoxFormat::Xyxy => (a, b, c, d),
        BoxFormat::Xywh => {
            let x2 = (&a + &c)?;
            let y2 = (&b + &d)?;
            (a, b, x2, y2)
        }
        BoxFormat::Cxcywh => {
            let (hw, hh) = ((c * 0.5)?, (d * 0.5)?);
            ((&a - &hw)?, (&b - &hh)?, (&a + &hw)?, (&b + &hh)?)
        }
    };
    let out = match to {
        BoxFormat::Xyxy => [x1, y1, x2, y2],
        BoxFormat::Xywh => {
            let w = (&x2 - &x1)?;
            let h = (&y2 - &y1)?;
            [x1, y1, w, h]
        }
        BoxFormat::Cxcywh => {
            let cx = ((&x1 + &x2)? / 2.0)?;
            let cy = ((&y1 + &y2)? / 2.0)?;
            let w = (&x2 - &x1)?;
            let h = (&y2 - &y1)?;
            [cx, cy, w, h]
        }
    };
    Ok(Tensor::cat(&out, D::Minus1)?)
}
