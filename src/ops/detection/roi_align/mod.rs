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

use std::sync::Arc;

use candle_core::{DType, Tensor};

use super::boxes::{check_corners, host_rows};
use super::real::Real;
use crate::{Error, Result};
use cpu::RoiAlignOp;

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
        host.check_samples(self)?;
        let cpu_kernel = allow_kernel && input.device().is_cpu();
        match (cpu_kernel, host) {
            (true, rois) => {
                let op = RoiAlignOp::new(*self, Arc::new(rois.as_f64()));
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
        let mut outputs = Vec::new();
        let mut start = 0;
        while start < rois.len() {
            let (mut idx, mut wts, mut bins) = (Vec::new(), Vec::new(), Vec::new());
            let mut table = Vec::new();
            let mut end = start;
            while end < rois.len() && (end == start || idx.len() < budget) {
                let g = Geometry::new(&rois[end], self, (oh, ow));
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
    fn check_samples(&self, cfg: &RoiAlign) -> Result<()> {
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

/// Where one roi's bins and sample points lie on the feature map (torchvision's arithmetic).
pub(super) struct Geometry<T> {
    pub(super) batch: usize,
    y0: T,
    x0: T,
    bin_h: T,
    bin_w: T,
    grid_h: usize,
    grid_w: usize,
    pub(super) count: T,
    out: (usize, usize),
}

/// One sample point: the four neighbouring pixels and their bilinear weights.
#[derive(Clone, Copy)]
pub(super) struct Sample<T> {
    pub(super) pos: [usize; 4],
    pub(super) w: [T; 4],
    pub(super) inside: bool,
}

impl<T: Real> Geometry<T> {
    pub(super) fn new(roi: &[T; 5], cfg: &RoiAlign, out: (usize, usize)) -> Self {
        let scale = T::from_f64(cfg.spatial_scale);
        let offset = if cfg.aligned {
            T::from_f64(0.5)
        } else {
            T::zero()
        };
        let x0 = roi[1] * scale - offset;
        let y0 = roi[2] * scale - offset;
        let x1 = roi[3] * scale - offset;
        let y1 = roi[4] * scale - offset;
        let (mut rw, mut rh) = (x1 - x0, y1 - y0);
        if !cfg.aligned {
            // Misaligned boxes are at least one pixel, so that tiny boxes still sample.
            rw = rw.fmax(T::one());
            rh = rh.fmax(T::one());
        }
        let (oh, ow) = (T::from_usize(out.0), T::from_usize(out.1));
        let grid = |size: T, bins: T| -> usize {
            if cfg.sampling_ratio > 0 {
                cfg.sampling_ratio as usize
            } else {
                (size / bins).ceil().as_f64().max(0.0) as usize
            }
        };
        let (grid_h, grid_w) = (grid(rh, oh), grid(rw, ow));
        Geometry {
            batch: roi[0].as_f64() as usize,
            y0,
            x0,
            bin_h: rh / oh,
            bin_w: rw / ow,
            grid_h,
            grid_w,
            count: T::from_usize((grid_h * grid_w).max(1)),
            out,
        }
    }

    pub(super) fn samples_per_bin(&self) -> usize {
        self.grid_h.saturating_mul(self.grid_w)
    }

    /// Every sample of every bin, bins row-major, samples row-major within a bin.
    pub(super) fn fill_table(&self, height: usize, width: usize, table: &mut Vec<Sample<T>>) {
        table.clear();
        let (gh, gw) = (T::from_usize(self.grid_h), T::from_usize(self.grid_w));
        let half = T::from_f64(0.5);
        for ph in 0..self.out.0 {
            for pw in 0..self.out.1 {
                for iy in 0..self.grid_h {
                    let y = self.y0
                        + T::from_usize(ph) * self.bin_h
                        + (T::from_usize(iy) + half) * self.bin_h / gh;
                    for ix in 0..self.grid_w {
                        let x = self.x0
                            + T::from_usize(pw) * self.bin_w
                            + (T::from_usize(ix) + half) * self.bin_w / gw;
                        table.push(bilinear(y, x, height, width));
                    }
                }
            }
        }
    }
}

/// The four neighbours of `(y, x)` and their weights, with torchvision's border rules.
fn bilinear<T: Real>(y: T, x: T, height: usize, width: usize) -> Sample<T> {
    let minus_one = T::zero() - T::one();
    if y < minus_one || y > T::from_usize(height) || x < minus_one || x > T::from_usize(width) {
        return Sample {
            pos: [0; 4],
            w: [T::zero(); 4],
            inside: false,
        };
    }
    let y = y.fmax(T::zero());
    let x = x.fmax(T::zero());
    let axis = |v: T, size: usize| -> (usize, usize, T) {
        let low = v.as_f64() as usize;
        if low >= size - 1 {
            (size - 1, size - 1, T::from_usize(size - 1))
        } else {
            (low, low + 1, v)
        }
    };
    let (y_low, y_high, y) = axis(y, height);
    let (x_low, x_high, x) = axis(x, width);
    let ly = y - T::from_usize(y_low);
    let lx = x - T::from_usize(x_low);
    let (hy, hx) = (T::one() - ly, T::one() - lx);
    Sample {
        pos: [
            y_low * width + x_low,
            y_low * width + x_high,
            y_high * width + x_low,
            y_high * width + x_high,
        ],
        w: [hy * hx, hy * lx, ly * hx, ly * lx],
        inside: true,
    }
}
