//! Pasting the `M × M` mask predictions into the original image: torchvision's
//! `paste_masks_in_image`.

use std::ops::{Add, Mul, Sub};

use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

/// Pastes `(K, 1, M_h, M_w)` mask probabilities into `(K, 1, H, W)` images of size
/// `image_size = (H, W)`, each into its `(K, 4)` box: torchvision's `paste_masks_in_image`.
///
/// As torchvision does it, each mask gets a border of `padding` zeros, and its box grows
/// about its centre by the same factor `(M_w + 2·padding) / M_w` (computed in the boxes'
/// dtype, f32 unless f64) and is truncated toward zero to integers `x1, y1, x2, y2`. The
/// padded mask is resized bilinearly (`align_corners = false`, in f32) to
/// `max(y2 − y1 + 1, 1) × max(x2 − x1 + 1, 1)` and its part inside the image, rows
/// `max(y1, 0)..min(y2 + 1, H)` and columns likewise, is copied into a zero image; only
/// that part is computed. The result has the masks' dtype and device; no gradient flows.
///
/// A box wholly outside the image pastes nothing. torchvision raises a shape error for some
/// of those (a box ending left of or above the image by more than a pixel, or starting more
/// than a pixel right of or below it), as its negative slice bounds wrap around.
///
/// Fails if the masks are not `(K, 1, M_h, M_w)` with non-empty masks or the boxes not
/// `(K, 4)` ([`Error::Shape`]), or if a box has a non-finite coordinate ([`Error::Input`]).
pub fn paste_masks_in_image(
    masks: &Tensor,
    boxes: &Tensor,
    image_size: (usize, usize),
    padding: usize,
) -> Result<Tensor> {
    let (k, c, mh, mw) = masks.dims4().map_err(|_| {
        Error::Shape(format!(
            "paste_masks_in_image expects (K, 1, M, M) masks, got shape {:?}",
            masks.dims()
        ))
    })?;
    if c != 1 || mh == 0 || mw == 0 {
        return Err(Error::Shape(format!(
            "paste_masks_in_image expects (K, 1, M, M) masks, got shape {:?}",
            masks.dims()
        )));
    }
    match boxes.dims2() {
        Ok((kb, 4)) if kb == k => {}
        _ => {
            return Err(Error::Shape(format!(
                "paste_masks_in_image expects ({k}, 4) boxes for {k} masks, got shape {:?}",
                boxes.dims()
            )))
        }
    }
    let (im_h, im_w) = image_size;
    let mut canvas = vec![0f32; k * im_h * im_w];
    if k > 0 {
        let boxes = expand_boxes(boxes, (mw + 2 * padding) as f64 / mw as f64)?;
        let values = masks
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let (ph, pw) = (mh + 2 * padding, mw + 2 * padding);
        let mut padded = vec![0f32; ph * pw];
        for (i, (mask, b)) in values.chunks_exact(mh * mw).zip(&boxes).enumerate() {
            for (y, row) in mask.chunks_exact(mw).enumerate() {
                let start = (y + padding) * pw + padding;
                padded[start..start + mw].copy_from_slice(row);
            }
            let out = &mut canvas[i * im_h * im_w..(i + 1) * im_h * im_w];
            paste_one(&padded, (ph, pw), *b, (im_h, im_w), out);
        }
    }
    Ok(Tensor::from_vec(canvas, (k, 1, im_h, im_w), masks.device())?.to_dtype(masks.dtype())?)
}

/// torchvision's `expand_boxes` followed by `.to(torch.int64)`: each box's half-sizes scaled
/// about its centre, in the boxes' dtype, then truncated toward zero.
fn expand_boxes(boxes: &Tensor, scale: f64) -> Result<Vec<[i64; 4]>> {
    fn expand<T: BoxFloat>(b: &[T], scale: T) -> [i64; 4] {
        let half = T::from_f64(0.5);
        let w_half = (b[2] - b[0]) * half * scale;
        let h_half = (b[3] - b[1]) * half * scale;
        let x_c = (b[2] + b[0]) * half;
        let y_c = (b[3] + b[1]) * half;
        [x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half].map(T::trunc_i64)
    }
    let check = |i: usize, finite: bool| -> Result<()> {
        if finite {
            Ok(())
        } else {
            Err(Error::Input(format!(
                "paste_masks_in_image: box {i} has a non-finite coordinate"
            )))
        }
    };
    if boxes.dtype() == DType::F64 {
        let rows = boxes.to_vec2::<f64>()?;
        rows.iter()
            .enumerate()
            .map(|(i, b)| {
                check(i, b.iter().all(|v| v.is_finite()))?;
                Ok(expand(b, scale))
            })
            .collect()
    } else {
        let rows = boxes.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        rows.iter()
            .enumerate()
            .map(|(i, b)| {
                check(i, b.iter().all(|v| v.is_finite()))?;
                Ok(expand(b, scale as f32))
            })
            .collect()
    }
}

/// The two floating-point types [`expand_boxes`] computes in.
trait BoxFloat: Copy + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> {
    fn from_f64(v: f64) -> Self;
    /// Truncation toward zero, as PyTorch's float-to-int64 conversion does (saturating
    /// where PyTorch's is undefined).
    fn trunc_i64(self) -> i64;
}

impl BoxFloat for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn trunc_i64(self) -> i64 {
        // Bounded so that the pasting arithmetic cannot overflow; far outside any image.
        self.clamp(-1e12, 1e12) as i64
    }
}

impl BoxFloat for f64 {
    fn from_f64(v: f64) -> Self {
        v
    }
    fn trunc_i64(self) -> i64 {
        self.clamp(-1e12, 1e12) as i64
    }
}

/// torchvision's `paste_mask_in_image` for one padded `(ph, pw)` mask and integer box,
/// writing into `out`, an `im_h × im_w` zero image.
fn paste_one(
    mask: &[f32],
    (ph, pw): (usize, usize),
    b: [i64; 4],
    (im_h, im_w): (usize, usize),
    out: &mut [f32],
) {
    let w = (b[2] - b[0] + 1).max(1);
    let h = (b[3] - b[1] + 1).max(1);
    let x0 = b[0].max(0);
    let x1 = (b[2] + 1).min(im_w as i64);
    let y0 = b[1].max(0);
    let y1 = (b[3] + 1).min(im_h as i64);
    if x1 <= x0 || y1 <= y0 {
        return;
    }
    // The window's rows and columns in the mask resized to h × w.
    let cols = LinearTaps::new(pw, w, x0 - b[0], x1 - b[0]);
    let rows = LinearTaps::new(ph, h, y0 - b[1], y1 - b[1]);
    for (y, r) in (y0 as usize..y1 as usize).zip(&rows.taps) {
        let (top, bottom) = (&mask[r.i0 * pw..][..pw], &mask[r.i1 * pw..][..pw]);
        let line = &mut out[y * im_w..(y + 1) * im_w];
        for (x, c) in (x0 as usize..x1 as usize).zip(&cols.taps) {
            let t = top[c.i0] * c.w0 + top[c.i1] * c.w1;
            let u = bottom[c.i0] * c.w0 + bottom[c.i1] * c.w1;
            line[x] = t * r.w0 + u * r.w1;
        }
    }
}

/// Source indices and weights of output positions `start..end` of a bilinear resize along
/// one axis from `input` to `output` (`align_corners = false`), computed in f32 as PyTorch's
/// CPU kernel does for f32 tensors.
struct LinearTaps {
    taps: Vec<Tap>,
}

struct Tap {
    i0: usize,
    i1: usize,
    w0: f32,
    w1: f32,
}

impl LinearTaps {
    fn new(input: usize, output: i64, start: i64, end: i64) -> Self {
        let scale = input as f32 / output as f32;
        let taps = (start..end)
            .map(|dst| {
                let src = (scale * (dst as f32 + 0.5) - 0.5).max(0.0);
                let i0 = (src.floor() as usize).min(input - 1);
                let i1 = if i0 + 1 < input { i0 + 1 } else { i0 };
                let l1 = (src - i0 as f32).clamp(0.0, 1.0);
                Tap {
                    i0,
                    i1,
                    w0: 1.0 - l1,
                    w1: l1,
                }
            })
            .collect();
        LinearTaps { taps }
    }
}
