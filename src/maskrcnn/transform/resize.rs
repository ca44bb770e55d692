//! Resizing an image to the detector's scale, with its target: boxes scaled, masks by
//! nearest neighbour.

use candle_core::Tensor;

use super::{RcnnTransform, Target};
use crate::maskrcnn::resample::nearest_index;
use crate::ops::resize_bilinear;
use crate::{Error, Result};

impl RcnnTransform {
    /// The `(height, width)` an image of size `(h, w)` is resized to with short-side size
    /// `min_size`: the fixed size if set, otherwise `(⌊h·s⌋, ⌊w·s⌋)` with
    /// `s = min(min_size / min(h, w), max_size / max(h, w))`, all in f64 as PyTorch's
    /// `interpolate(scale_factor=s, recompute_scale_factor=True)` computes it.
    ///
    /// The product can round below an integer: a short side of 97 with `min_size` 800 gives
    /// 799, as in torchvision.
    ///
    /// Fails with [`Error::Shape`] if the image or the result is empty.
    pub fn resized_size(&self, size: (usize, usize), min_size: usize) -> Result<(usize, usize)> {
        let (h, w) = size;
        if h == 0 || w == 0 {
            return Err(Error::Shape(format!(
                "RcnnTransform needs non-empty images, got {h}x{w}"
            )));
        }
        let out = match self.fixed_size() {
            Some(fixed) => fixed,
            None => {
                let (short, long) = (h.min(w) as f64, h.max(w) as f64);
                let scale = (min_size as f64 / short).min(self.max_size() as f64 / long);
                ((h as f64 * scale) as usize, (w as f64 * scale) as usize)
            }
        };
        if out.0 == 0 || out.1 == 0 {
            return Err(Error::Shape(format!(
                "RcnnTransform would resize the {h}x{w} image to {}x{}",
                out.0, out.1
            )));
        }
        Ok(out)
    }

    /// Resizes a `(C, H, W)` image with short-side size `min_size` (see
    /// [`Self::resized_size`]) by bilinear interpolation (`align_corners = false`), and its
    /// target with it: boxes by [`resize_boxes`], masks by nearest neighbour with PyTorch's
    /// rule (source index `⌊dst · in / out⌋`, in f32), keeping their dtype.
    ///
    /// The target is not validated here; [`Self::forward_train`] does it.
    pub fn resize(
        &self,
        image: &Tensor,
        min_size: usize,
        target: Option<&Target>,
    ) -> Result<(Tensor, Option<Target>)> {
        let (_, h, w) = image.dims3().map_err(|_| {
            Error::Shape(format!(
                "RcnnTransform expects (C, H, W) images, got shape {:?}",
                image.dims()
            ))
        })?;
        let (oh, ow) = self.resized_size((h, w), min_size)?;
        let resized = resize_bilinear(&image.unsqueeze(0)?, oh, ow, false)?.squeeze(0)?;
        let target = match target {
            None => None,
            Some(t) => Some(Target {
                boxes: resize_boxes(&t.boxes, (h, w), (oh, ow))?,
                labels: t.labels.clone(),
                masks: match &t.masks {
                    Some(m) => Some(resize_nearest(m, oh, ow)?),
                    None => None,
                },
            }),
        };
        Ok((resized, target))
    }
}

/// Scales `(K, 4)` boxes `x1, y1, x2, y2` from an image of size `from = (h, w)` to one of
/// size `to`: x by `to.w / from.w`, y by `to.h / from.h`, the ratios computed in f32 as
/// torchvision's `resize_boxes` computes them, then applied in the boxes' dtype.
///
/// Fails if the boxes are not `(K, 4)` ([`Error::Shape`]) or not floating point, or if a
/// size is empty ([`Error::Input`]).
pub fn resize_boxes(boxes: &Tensor, from: (usize, usize), to: (usize, usize)) -> Result<Tensor> {
    match boxes.dims2() {
        Ok((_, 4)) => {}
        _ => {
            return Err(Error::Shape(format!(
                "resize_boxes expects (K, 4) boxes, got shape {:?}",
                boxes.dims()
            )))
        }
    }
    if !boxes.dtype().is_float() {
        return Err(Error::Input(format!(
            "resize_boxes expects floating-point boxes, got {:?}",
            boxes.dtype()
        )));
    }
    if from.0 == 0 || from.1 == 0 || to.0 == 0 || to.1 == 0 {
        return Err(Error::Input(format!(
            "resize_boxes needs non-empty sizes, got {}x{} -> {}x{}",
            from.0, from.1, to.0, to.1
        )));
    }
    let ratio_h = to.0 as f32 / from.0 as f32;
    let ratio_w = to.1 as f32 / from.1 as f32;
    let ratios = Tensor::new(&[[ratio_w, ratio_h, ratio_w, ratio_h]], boxes.device())?
        .to_dtype(boxes.dtype())?;
    Ok(boxes.broadcast_mul(&ratios)?)
}

/// Resizes `(K, H, W)` masks to `(K, out_h, out_w)` by nearest neighbour, PyTorch's
/// `F.interpolate(mode="nearest")`: source index `min(⌊dst · (in / out)⌋, in − 1)` in f32.
fn resize_nearest(masks: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (k, h, w) = masks.dims3().map_err(|_| {
        Error::Shape(format!(
            "target masks must be (K, H, W), got shape {:?}",
            masks.dims()
        ))
    })?;
    if k == 0 || h == 0 || w == 0 {
        return Ok(Tensor::zeros(
            (k, out_h, out_w),
            masks.dtype(),
            masks.device(),
        )?);
    }
    let index = |input: usize, output: usize| -> Result<Tensor> {
        let idx: Vec<u32> = (0..output)
            .map(|dst| nearest_index(dst, input, output) as u32)
            .collect();
        Ok(Tensor::from_vec(idx, output, masks.device())?)
    };
    Ok(masks
        .index_select(&index(h, out_h)?, 1)?
        .index_select(&index(w, out_w)?, 2)?)
}
