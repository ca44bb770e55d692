//! RoIAlign (He et al., Mask R-CNN, 2017), as `torchvision.ops.roi_align` computes it.
//!
//! Each region of interest is divided into `output_size` bins; each bin averages the bilinear
//! interpolation of the feature map at a regular grid of sample points (`sampling_ratio`² of
//! them, or `ceil(roi size / output size)` per axis when the ratio is ≤ 0). With
//! `aligned = false` (torchvision's default, and what its Mask R-CNN uses) boxes are not
//! shifted by half a pixel and are at least one pixel wide; with `aligned = true` both corners
//! move by −0.5 pixel. Sample points more than one pixel outside the map contribute zero; points
//! within a pixel of the border are clamped to it.
//!
//! On the CPU, [`RoiAlign::forward`] runs a custom op that repeats torchvision's arithmetic in
//! the input's precision (so results agree to the last bits) and a second op for the gradient
//! of the input. Elsewhere it runs [`RoiAlign::forward_composed`]: the same interpolation built
//! from `index_select` and `index_add`, which every candle device runs and differentiates. The
//! boxes get no gradient in either, as in torchvision.

mod cpu;
mod sampling;

use std::sync::Arc;

use candle_core::{DType, Tensor};

use super::boxes::{check_corners, host_rows};
use super::real::Real;
use crate::{Error, Result};
use cpu::RoiAlignOp;
use sampling::{Geometry, Sampling};

/// Settings of a RoIAlign: output size, the scale from image to feature-map coordinates, the
/// sampling ratio and the half-pixel alignment.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use unetpp::ops::RoiAlign;
/// let features = Tensor::ones((1, 8, 16, 16), candle_core::DType::F32, &Device::Cpu).unwrap();
/// // One box (batch index, x1, y1, x2, y2) in image coordinates, on a stride-4 map.
/// let rois = Tensor::new(&[[0f32, 4., 4., 40., 28.]], &Device::Cpu).unwrap();
/// let pooled = RoiAlign::new((7, 7)).with_spatial_scale(0.25).with_sampling_ratio(2)
///     .forward(&features, &rois).unwrap();
/// assert_eq!(pooled.dims(), &[1, 8, 7, 7]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoiAlign {
    output_size: (usize, usize),
    spatial_scale: f64,
    sampling_ratio: i64,
    aligned: bool,
}

impl RoiAlign {
    /// A RoIAlign to `output_size = (height, width)` bins with torchvision's defaults:
    /// spatial scale 1, adaptive sampling (`-1`), `aligned = false`.
    pub fn new(output_size: (usize, usize)) -> Self {
        RoiAlign {
            output_size,
            spatial_scale: 1.0,
            sampling_ratio: -1,
            aligned: false,
        }
    }

    /// Multiplies box coordinates by `scale` to reach feature-map coordinates (`1 / stride`).
    pub fn with_spatial_scale(mut self, scale: f64) -> Self {
        self.spatial_scale = scale;
        self
    }

    /// Sample points per bin along each axis; `≤ 0` picks `ceil(roi size / output size)`.
    pub fn with_sampling_ratio(mut self, ratio: i64) -> Self {
        self.sampling_ratio = ratio;
        self
    }

    /// Shifts boxes by −0.5 pixel (`true`) so that pixel centres line up, as Detectron2 does.
    pub fn with_aligned(mut self, aligned: bool) -> Self {
        self.aligned = aligned;
        self
    }

    /// The output size `(height, width)`.
    pub fn output_size(&self) -> (usize, usize) {
        self.output_size
    }

    /// The spatial scale.
    pub fn spatial_scale(&self) -> f64 {
        self.spatial_scale
    }

    /// The sampling ratio.
    pub fn sampling_ratio(&self) -> i64 {
        self.sampling_ratio
    }

    /// Whether boxes are shifted by half a pixel.
    pub fn aligned(&self) -> bool {
        self.aligned
    }

    /// Pools `rois (K, 5)` — rows of `batch index, x1, y1, x2, y2` — from `input (N, C, H, W)`
    /// into `(K, C, out_h, out_w)`.
    ///
    /// Errors: a non-4-D input or an empty map, rois not `(K, 5)`, a batch index that is not
    /// an integer in `0..N`, a non-finite coordinate, a box with `x2 < x1` or `y2 < y1`, a zero
    /// output size, a spatial scale that is not finite and positive. `K = 0` gives an empty
    /// `(0, C, out_h, out_w)` tensor.
    pub fn forward(&self, input: &Tensor, rois: &Tensor) -> Result<Tensor> {
        self.run(input, rois, true)
    }

    /// [`RoiAlign::forward`] with one `(K_i, 4)` box tensor per image instead of `(K, 5)` rois.
    pub fn forward_boxes(&self, input: &Tensor, boxes: &[Tensor]) -> Result<Tensor> {
        self.forward(input, &rois_from_boxes(boxes)?)
    }

    /// The same pooling composed from candle tensor ops (`index_select`, `index_add`), as
    /// [`RoiAlign::forward`] runs it on non-CPU devices; exposed so that the two can be
    /// compared and timed.
    pub fn forward_composed(&self, input: &Tensor, rois: &Tensor) -> Result<Tensor> {
        self.run(input, rois, false)
    }

    /// The settings the sample points depend on, as the kernels take them.
    fn sampling(&self) -> Sampling {
        Sampling {
            output_size: self.output_size,
            spatial_scale: self.spatial_scale,
            sampling_ratio: self.sampling_ratio,
            aligned: self.aligned,
        }
    }

    fn run(&self, input: &Tensor, rois: &Tensor, allow_kernel: bool) -> Result<Tensor> {
        let (n, c, h, w) = input.dims4().map_err(|_| {
            Error::Shape(format!(
                "roi_align expects a (N, C, H, W) input, got shape {:?}",
                input.dims()
            ))
        })?;
        if h == 0 || w == 0 {
            return Err(Error::Shape(format!(
                "roi_align needs a non-empty feature map, got {h}x{w}"
            )));
        }
        let (oh, ow) = self.output_size;
        if oh == 0 || ow == 0 {
            return Err(Error::config(
                "output_size",
                format!("must be at least 1x1, got {oh}x{ow}"),
            ));
        }
        if !(self.spatial_scale.is_finite() && self.spatial_scale > 0.0) {
            return Err(Error::config(
                "spatial_scale",
                format!("must be finite and positive, got {}", self.spatial_scale),
            ));
        }
        let dtype = input.dtype();
        if !dtype.is_float() {
            return Err(Error::Input(format!(
                "roi_align needs a floating-point input, got {dtype:?}"
            )));
        }
        let host = if dtype == DType::F64 {
            Rois::F64(checked_rois::<f64>(rois, n)?)
        } else {
            Rois::F32(checked_rois::<f32>(rois, n)?)
        };
        let k = host.len();
        if k == 0 || c == 0 {
            return Ok(Tensor::zeros((k, c, oh, ow), dtype, input.device())?);
        }
        host.check_samples(&self.sampling())?;
        let cpu_kernel = allow_kernel && crate::ops::path::cpu_kernels(input.device());
        match (cpu_kernel, host) {
            (true, rois) => {
                let op = RoiAlignOp::new(self.sampling(), Arc::new(rois.as_f64()));
                match dtype {
                    DType::F32 | DType::F64 => Ok(input.contiguous()?.apply_op1(op)?),
                    dt => Ok(input
                        .to_dtype(DType::F32)?
                        .contiguous()?
                        .apply_op1(op)?
                        .to_dtype(dt)?),
                }
            }
            (false, Rois::F64(r)) => self.composed(input, &r),
            (false, Rois::F32(r)) => self.composed(input, &r),
        }
    }

    fn composed<T: Real>(&self, input: &Tensor, rois: &[[T; 5]]) -> Result<Tensor> {
        let (n, c, h, w) = input.dims4()?;
        let (oh, ow) = self.output_size;
        let dev = input.device();
        // Rows are pixels, columns channels, so each gather moves a whole channel vector.
        let pixels = input.permute((0, 2, 3, 1))?.reshape((n * h * w, c))?;
        // Bounds the gathered (samples × 4, C) intermediate to about 64 MiB of f32.
        let budget = (1usize << 24) / c.max(1);
        let sampling = self.sampling();
        let mut outputs = Vec::new();
        let mut start = 0;
        while start < rois.len() {
            let (mut idx, mut wts, mut bins) = (Vec::new(), Vec::new(), Vec::new());
            let mut table = Vec::new();
            let mut end = start;
            while end < rois.len() && (end == start || idx.len() < budget) {
                let g = Geometry::new(&rois[end], &sampling, (oh, ow));
                g.fill_table(h, w, &mut table);
                let per_bin = g.samples_per_bin();
                for (s, sample) in table.iter().enumerate() {
                    if !sample.inside {
                        continue;
                    }
                    let bin = ((end - start) * oh * ow + s / per_bin.max(1)) as u32;
                    for corner in 0..4 {
                        idx.push((g.batch * h * w + sample.pos[corner]) as u32);
                        wts.push((sample.w[corner] / g.count).as_f64());
                        bins.push(bin);
                    }
                }
                end += 1;
            }
            let rows = (end - start) * oh * ow;
            let out = if idx.is_empty() {
                Tensor::zeros((rows, c), input.dtype(), dev)?
            } else {
                let len = idx.len();
                let idx = Tensor::from_vec(idx, len, dev)?;
                let bins = Tensor::from_vec(bins, len, dev)?;
                let wts = Tensor::from_vec(wts, (len, 1), dev)?.to_dtype(input.dtype())?;
                let gathered = pixels.index_select(&idx, 0)?.broadcast_mul(&wts)?;
                Tensor::zeros((rows, c), input.dtype(), dev)?.index_add(&bins, &gathered, 0)?
            };
            outputs.push(out);
            start = end;
        }
        let out = Tensor::cat(&outputs, 0)?;
        Ok(out
            .reshape((rois.len(), oh, ow, c))?
            .permute((0, 3, 1, 2))?
            .contiguous()?)
    }
}

/// Stacks per-image `(K_i, 4)` boxes into `(ΣK_i, 5)` rois whose first column is the image
/// index, as torchvision's `convert_boxes_to_roi_format` does.
pub fn rois_from_boxes(boxes: &[Tensor]) -> Result<Tensor> {
    let first = boxes
        .first()
        .ok_or_else(|| Error::Input("rois_from_boxes: an empty list of box tensors".into()))?;
    let (dtype, dev) = (first.dtype(), first.device());
    let mut parts = Vec::with_capacity(boxes.len());
    for (i, b) in boxes.iter().enumerate() {
        let k = match b.dims() {
            &[k, 4] => k,
            dims => {
                return Err(Error::Shape(format!(
                    "rois_from_boxes: boxes of image {i} must be (K, 4), got {dims:?}"
                )))
            }
        };
        let ids = Tensor::full(i as f64, (k, 1), dev)?.to_dtype(dtype)?;
        parts.push(Tensor::cat(
            &[&ids, &b.to_dtype(dtype)?.to_device(dev)?],
            1,
        )?);
    }
    Ok(Tensor::cat(&parts, 0)?)
}

enum Rois {
    F32(Vec<[f32; 5]>),
    F64(Vec<[f64; 5]>),
}

impl Rois {
    fn len(&self) -> usize {
        match self {
            Rois::F32(r) => r.len(),
            Rois::F64(r) => r.len(),
        }
    }

    /// An `Error::Input` when a roi needs more sample points than any plausible use (a huge
    /// box with adaptive sampling), instead of running out of memory.
    fn check_samples(&self, cfg: &Sampling) -> Result<()> {
        const LIMIT: usize = 1 << 26;
        let out = cfg.output_size;
        let too_many = |k: usize, per_bin: usize| -> Result<()> {
            match per_bin.checked_mul(out.0 * out.1) {
                Some(n) if n <= LIMIT => Ok(()),
                _ => Err(Error::Input(format!(
                    "roi_align: roi {k} needs {per_bin} sample points per bin; give a fixed \
                     sampling ratio or smaller boxes"
                ))),
            }
        };
        match self {
            Rois::F32(r) => r.iter().enumerate().try_for_each(|(k, roi)| {
                too_many(k, Geometry::new(roi, cfg, out).samples_per_bin())
            }),
            Rois::F64(r) => r.iter().enumerate().try_for_each(|(k, roi)| {
                too_many(k, Geometry::new(roi, cfg, out).samples_per_bin())
            }),
        }
    }

    fn as_f64(&self) -> Vec<[f64; 5]> {
        match self {
            Rois::F32(r) => r.iter().map(|b| b.map(f64::from)).collect(),
            Rois::F64(r) => r.clone(),
        }
    }
}

/// The rois on the host in precision `T`, checked: batch index an integer in `0..n`, finite
/// coordinates, `x1 <= x2`, `y1 <= y2`.
fn checked_rois<T: Real>(rois: &Tensor, n: usize) -> Result<Vec<[T; 5]>> {
    let rows = host_rows::<T, 5>(rois, "roi_align rois")?;
    for (k, r) in rows.iter().enumerate() {
        let b = r[0].as_f64();
        if !(b >= 0.0 && b < n as f64 && b.fract() == 0.0) {
            return Err(Error::Input(format!(
                "roi_align rois: roi {k} has batch index {b}, expected an integer in 0..{n}"
            )));
        }
        check_corners(
            &[r[1], r[2], r[3], r[4]],
            &format!("roi_align rois: roi {k}"),
        )?;
    }
    Ok(rows)
}
