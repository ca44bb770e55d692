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
//! of the input. Elsewhere (and on the CPU under [`crate::ops::set_device_generic`]) it runs
//! [`RoiAlign::forward_composed`]: the same interpolation from candle ops, which every device
//! runs and differentiates. Each bin is a weighted sum of `4 · samples` taps (a pixel and its
//! bilinear weight); the taps are gathered with one `index_select` of the map's pixel rows and
//! summed with a batched product. With a fixed sampling ratio (Mask R-CNN's 2) the tap table is
//! built on the device from the rois tensor; with an adaptive one, whose sample counts vary per
//! roi, it is built on the host and uploaded in the working dtype. Half-precision inputs are
//! pooled in f32, as on the CPU. The boxes get no gradient in either path, as in torchvision.

mod cpu;
mod sampling;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::boxes::{check_corners, host_rows};
use super::real::Real;
use crate::ops::host_tensor;
use crate::{Error, Result};
use cpu::RoiAlignOp;
use sampling::{AxisTaps, Geometry, Sampling};

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

    /// The same pooling composed from candle tensor ops (a gather and a weighted sum), as
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
            (false, _) if self.sampling_ratio > 0 => {
                self.composed_fixed(input, rois, GATHER_BUDGET)
            }
            (false, Rois::F64(r)) => self.composed_adaptive(input, &r, GATHER_BUDGET),
            (false, Rois::F32(r)) => self.composed_adaptive(input, &r, GATHER_BUDGET),
        }
    }

    /// The composed path with a fixed sampling ratio: the sample table is built on the device
    /// from the rois tensor ([`AxisTaps`]), then one gather and one weighted sum per chunk of
    /// at most `budget` gathered elements (or one roi).
    fn composed_fixed(&self, input: &Tensor, rois: &Tensor, budget: usize) -> Result<Tensor> {
        let (_, _, h, w) = input.dims4()?;
        let (oh, ow) = self.output_size;
        let work = working_dtype(input.dtype());
        let dev = input.device();
        // Converted where they are, so that no f64 tensor reaches a device without f64.
        let rois = rois.detach().to_dtype(work)?.to_device(dev)?;
        let k = rois.dim(0)?;
        let col = |i: usize| rois.narrow(1, i, 1)?.squeeze(1);
        let cfg = self.sampling();
        let rows = AxisTaps::new(&col(2)?, &col(4)?, oh, h, &cfg)?;
        let cols = AxisTaps::new(&col(1)?, &col(3)?, ow, w, &cfg)?;
        let t = rows.index.dim(2)?;
        let image = col(0)?.to_dtype(DType::U32)?.affine((h * w) as f64, 0.0)?;
        let row_pixel = rows.index.affine(w as f64, 0.0)?;
        let count = host_tensor(vec![(t * t / 4) as f64], (1, 1), work, dev)?;
        let pixels = pixel_rows(input, work)?;
        let per_chunk = (budget / (oh * ow * t * t * pixels.dim(1)?).max(1)).max(1);
        let mut outputs = Vec::new();
        for start in (0..k).step_by(per_chunk) {
            let len = per_chunk.min(k - start);
            let bins = len * oh * ow;
            // Tap `(y tap, x tap)` of bin `(ph, pw)` reads pixel `image · H·W + y · W + x`
            // with the product of the row and column weights (torchvision's `hy·hx`, ...).
            let index = image
                .narrow(0, start, len)?
                .reshape((len, 1, 1, 1, 1))?
                .broadcast_add(
                    &row_pixel
                        .narrow(0, start, len)?
                        .reshape((len, oh, 1, t, 1))?,
                )?
                .broadcast_add(
                    &cols
                        .index
                        .narrow(0, start, len)?
                        .reshape((len, 1, ow, 1, t))?,
                )?
                .reshape((bins, t * t))?;
            let weight = rows
                .weight
                .narrow(0, start, len)?
                .reshape((len, oh, 1, t, 1))?
                .broadcast_mul(
                    &cols
                        .weight
                        .narrow(0, start, len)?
                        .reshape((len, 1, ow, 1, t))?,
                )?
                .reshape((bins, t * t))?;
            outputs.push(weighted_gather(&pixels, &index, &weight)?.broadcast_div(&count)?);
        }
        self.assemble(&outputs, k, input.dtype())
    }

    /// The composed path with an adaptive sampling ratio, whose sample count varies per roi:
    /// the table is built on the host from the checked rois and uploaded in the working dtype.
    /// Rois are taken in increasing order of samples per bin, and each chunk pads its bins to
    /// its largest tap count (at most twice its smallest) with zero-weight taps, so that a
    /// chunk is again one gather and one weighted sum (of at most `budget` gathered elements,
    /// or one roi).
    fn composed_adaptive<T: Real>(
        &self,
        input: &Tensor,
        rois: &[[T; 5]],
        budget: usize,
    ) -> Result<Tensor> {
        let (_, c, h, w) = input.dims4()?;
        let (oh, ow) = self.output_size;
        let bins = oh * ow;
        let work = working_dtype(input.dtype());
        let dev = input.device();
        let pixels = pixel_rows(input, work)?;
        let cfg = self.sampling();
        let geometry: Vec<Geometry<T>> = rois
            .iter()
            .map(|r| Geometry::new(r, &cfg, (oh, ow)))
            .collect();
        let taps = |i: usize| 4 * geometry[i].samples_per_bin();
        let mut order: Vec<usize> = (0..rois.len()).collect();
        order.sort_by_key(|&i| taps(i));
        let mut outputs = Vec::new();
        let mut table = Vec::new();
        let mut start = 0;
        while start < order.len() {
            let limit = 2 * taps(order[start]).max(4);
            let mut end = start + 1;
            while end < order.len()
                && taps(order[end]) <= limit
                && (end + 1 - start) * bins * taps(order[end]) * c <= budget
            {
                end += 1;
            }
            let width = taps(order[end - 1]);
            let n_rows = (end - start) * bins;
            if width == 0 {
                outputs.push(Tensor::zeros((n_rows, c), work, dev)?);
                start = end;
                continue;
            }
            let mut idx = vec![0u32; n_rows * width];
            let mut wts = vec![T::zero(); n_rows * width];
            let mut count = Vec::with_capacity(n_rows);
            for (j, &r) in order[start..end].iter().enumerate() {
                let g = &geometry[r];
                g.fill_table(h, w, &mut table);
                let per_bin = g.samples_per_bin();
                for bin in 0..bins {
                    let row = (j * bins + bin) * width;
                    count.push(g.count);
                    let samples = &table[bin * per_bin..(bin + 1) * per_bin];
                    for (s, sample) in samples.iter().enumerate().filter(|(_, s)| s.inside) {
                        for corner in 0..4 {
                            idx[row + 4 * s + corner] =
                                (g.batch * h * w + sample.pos[corner]) as u32;
                            wts[row + 4 * s + corner] = sample.w[corner];
                        }
                    }
                }
            }
            let index = Tensor::from_vec(idx, (n_rows, width), dev)?;
            let weight = host_tensor(wts, (n_rows, width), work, dev)?;
            let count = host_tensor(count, (n_rows, 1), work, dev)?;
            outputs.push(weighted_gather(&pixels, &index, &weight)?.broadcast_div(&count)?);
            start = end;
        }
        let out = self.assemble(&outputs, rois.len(), input.dtype())?;
        if order.iter().enumerate().all(|(i, &r)| i == r) {
            return Ok(out);
        }
        // Row `j` holds roi `order[j]`: invert the permutation.
        let mut inverse = vec![0u32; order.len()];
        for (j, &r) in order.iter().enumerate() {
            inverse[r] = j as u32;
        }
        let inverse = Tensor::from_vec(inverse, order.len(), dev)?;
        Ok(out.index_select(&inverse, 0)?)
    }

    /// `(K · bins, C)` chunk outputs to `(K, C, out_h, out_w)` in `dtype`.
    fn assemble(&self, chunks: &[Tensor], k: usize, dtype: DType) -> Result<Tensor> {
        let (oh, ow) = self.output_size;
        let out = Tensor::cat(chunks, 0)?;
        let c = out.dim(1)?;
        Ok(out
            .reshape((k, oh, ow, c))?
            .permute((0, 3, 1, 2))?
            .contiguous()?
            .to_dtype(dtype)?)
    }
}

/// Elements of the gathered `(taps, C)` intermediate of one chunk: 64 MiB of f32.
const GATHER_BUDGET: usize = 1 << 24;

/// The dtype the composed path computes in: the input's, or f32 for half precision (sample
/// coordinates in f16 would be off by pixels on large maps), as the CPU kernel does.
fn working_dtype(dtype: DType) -> DType {
    match dtype {
        DType::F64 => DType::F64,
        _ => DType::F32,
    }
}

/// `input (N, C, H, W)` as `(N·H·W, C)` rows in `dtype`: each gathered tap moves a whole
/// channel vector.
fn pixel_rows(input: &Tensor, dtype: DType) -> Result<Tensor> {
    let (n, c, h, w) = input.dims4()?;
    Ok(input
        .to_dtype(dtype)?
        .permute((0, 2, 3, 1))?
        .reshape((n * h * w, c))?)
}

/// Row `r` of the result is `Σ_t weight[r, t] · pixels[index[r, t]]`: one `index_select` and
/// a batched `(1, T) × (T, C)` product, differentiable in `pixels` (the gradient goes back
/// through the product and the gather).
fn weighted_gather(pixels: &Tensor, index: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (rows, taps) = index.dims2()?;
    let c = pixels.dim(1)?;
    let gathered = pixels
        .index_select(&index.flatten_all()?, 0)?
        .reshape((rows, taps, c))?;
    Ok(weight
        .reshape((rows, 1, taps))?
        .matmul(&gathered)?
        .reshape((rows, c))?)
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
        // In the target dtype directly: no f64 tensor on a device unless the boxes are f64.
        let ids = match dtype {
            DType::F64 => Tensor::full(i as f64, (k, 1), dev)?,
            DType::F32 => Tensor::full(i as f32, (k, 1), dev)?,
            dt => Tensor::full(i as f32, (k, 1), dev)?.to_dtype(dt)?,
        };
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
        if cfg.sampling_ratio > 0 {
            let ratio = usize::try_from(cfg.sampling_ratio).unwrap_or(usize::MAX);
            return too_many(0, ratio.saturating_mul(ratio));
        }
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
///
/// One download of the rois (a synchronisation on a GPU), converted to `T` after it, on the
/// host. The fixed-ratio composed path needs the values only for these checks.
fn checked_rois<T: Real>(rois: &Tensor, n: usize) -> Result<Vec<[T; 5]>> {
    let rows = host_rows::<T, 5>(&rois.to_device(&Device::Cpu)?, "roi_align rois")?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    /// Chunks of one roi give the forward bits of one chunk for all (each bin is its own
    /// product); the input gradient sums the same terms in another order (chunk by chunk), so
    /// it agrees within `2 (M + 1) eps Σ|terms|` for `M` terms per element at most (here, all
    /// the taps). Fixed and adaptive ratios (the latter reorders rois by tap count).
    #[test]
    fn chunking_keeps_the_forward_bits_and_the_gradient() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 3, 6, 7), &dev).unwrap()).unwrap();
        let rois = Tensor::new(
            &[
                [0f32, 0.5, 1.0, 4.0, 5.5],
                [1., -2., -1., 9., 3.],
                [0., 3.0, 3.0, 3.2, 3.1],
                [1., 1., 2., 30., 20.],
                [0., 8., 9., 12., 14.],
            ],
            &dev,
        )
        .unwrap();
        let host = checked_rois::<f32>(&rois, 2).unwrap();
        for ratio in [2, -1] {
            let cfg = RoiAlign::new((3, 2)).with_sampling_ratio(ratio);
            let taps: usize = host
                .iter()
                .map(|r| 4 * Geometry::new(r, &cfg.sampling(), (3, 2)).samples_per_bin() * 6)
                .sum();
            // Output, gradient of Σ y², and Σ|terms| per input element (the gradient for the
            // upstream |2y|: the weights are non-negative).
            let run = |budget: usize| {
                let pool = || {
                    if ratio > 0 {
                        cfg.composed_fixed(x.as_tensor(), &rois, budget)
                    } else {
                        cfg.composed_adaptive(x.as_tensor(), &host, budget)
                    }
                    .unwrap()
                };
                let y = pool();
                let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
                let gx = g.get(x.as_tensor()).unwrap().flatten_all().unwrap();
                let up = y.affine(2.0, 0.0).unwrap().abs().unwrap().detach();
                let g = (pool() * up)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let mag = g.get(x.as_tensor()).unwrap().flatten_all().unwrap();
                let y = y.flatten_all().unwrap();
                (
                    y.to_vec1::<f32>().unwrap(),
                    gx.to_vec1::<f32>().unwrap(),
                    mag.to_vec1::<f32>().unwrap(),
                )
            };
            let (one, whole) = (run(1), run(GATHER_BUDGET));
            assert_eq!(one.0, whole.0, "ratio {ratio}: forward");
            for (i, ((a, b), m)) in one.1.iter().zip(&whole.1).zip(&whole.2).enumerate() {
                let bound = 2.0 * (taps as f32 + 1.0) * f32::EPSILON * m;
                assert!(
                    (a - b).abs() <= bound,
                    "ratio {ratio}: gradient {i}: {a} vs {b}"
                );
            }
        }
    }
}
