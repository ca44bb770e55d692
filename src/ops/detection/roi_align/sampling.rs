//! Where RoIAlign samples the feature map: the bins of each roi, the sample points of each bin
//! and their bilinear weights, with torchvision's arithmetic. The CPU kernels and the composed
//! path with an adaptive sampling ratio read them from here, on the host ([`Geometry`]); the
//! composed path with a fixed ratio builds the same table on the rois' device ([`AxisTaps`]).

use candle_core::{DType, Tensor};

use crate::ops::detection::real::Real;
use crate::ops::host_tensor;

/// The settings the sample points depend on (those of a `RoiAlign`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Sampling {
    pub(super) output_size: (usize, usize),
    pub(super) spatial_scale: f64,
    pub(super) sampling_ratio: i64,
    pub(super) aligned: bool,
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
    pub(super) fn new(roi: &[T; 5], cfg: &Sampling, out: (usize, usize)) -> Self {
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

/// The taps of every roi along one axis (rows or columns), with a fixed sampling ratio, built
/// on the device of the rois with tensor ops in their dtype: for roi `k`, bin `p` and sample
/// point `i`, the low and high neighbouring pixel (`index`, u32) and their bilinear weights
/// (`weight`, zero for a sample point more than one pixel outside the map), both
/// `(K, bins, 2 · ratio)`, taps ordered `(i, low/high)`.
///
/// torchvision's four corner weights of a sample are products of a row weight and a column
/// weight (`hy·hx`, `hy·lx`, `ly·hx`, `ly·lx`) and its zero rule is the "or" of a row rule and a
/// column rule, so a bin's `4 · ratio²` taps are the outer product of two such 1-D tables.
pub(super) struct AxisTaps {
    pub(super) index: Tensor,
    pub(super) weight: Tensor,
}

impl AxisTaps {
    /// `start`, `end`: `(K,)` box corners on this axis in image coordinates; `bins` bins over
    /// `size` pixels. Every operation repeats torchvision's, in its order and precision, so
    /// that on the CPU the table holds the kernel's values bit for bit.
    pub(super) fn new(
        start: &Tensor,
        end: &Tensor,
        bins: usize,
        size: usize,
        cfg: &Sampling,
    ) -> candle_core::Result<Self> {
        let (dtype, dev) = (start.dtype(), start.device());
        let k = start.dim(0)?;
        let ratio = usize::try_from(cfg.sampling_ratio.max(1)).unwrap_or(1);
        let scalar = |v: f64| host_tensor(vec![v], (), dtype, dev);
        let offset = if cfg.aligned { 0.5 } else { 0.0 };
        // `roi * spatial_scale - offset`: candle's affine is `v * mul + add` in the dtype.
        let lo = start.affine(cfg.spatial_scale, -offset)?;
        let mut len = (end.affine(cfg.spatial_scale, -offset)? - &lo)?;
        if !cfg.aligned {
            len = len.maximum(1.0)?;
        }
        // A true division, as torchvision's `roi_height / pooled_height`; `/ f64` would
        // multiply by the reciprocal.
        let bin = len
            .broadcast_div(&scalar(bins as f64)?)?
            .reshape((k, 1, 1))?;
        let p: Vec<f64> = (0..bins).map(|p| p as f64).collect();
        let p = host_tensor(p, (1, bins, 1), dtype, dev)?;
        let i: Vec<f64> = (0..ratio).map(|i| i as f64 + 0.5).collect();
        let i = host_tensor(i, (1, 1, ratio), dtype, dev)?;
        // `start + p · bin + (i + 0.5) · bin / ratio`, left to right.
        let v = lo
            .reshape((k, 1, 1))?
            .broadcast_add(&p.broadcast_mul(&bin)?)?
            .broadcast_add(
                &i.broadcast_mul(&bin)?
                    .broadcast_div(&scalar(ratio as f64)?)?,
            )?;
        let inside = v
            .ge(-1.0)?
            .to_dtype(dtype)?
            .mul(&v.le(size as f64)?.to_dtype(dtype)?)?;
        let last = (size - 1) as f64;
        let v = v.maximum(0.0)?;
        // `low = (int) v`, `high = low + 1`, both `size - 1` (and `v` too) when `low >= size - 1`.
        let low = v.floor()?.minimum(last)?;
        let high = (&low + 1.0)?.minimum(last)?;
        let l = (v.minimum(last)? - &low)?;
        let h = l.affine(-1.0, 1.0)?;
        // Non-negative integers below 2^24 (any map dimension), exact in f32 and cast exactly.
        let index = Tensor::stack(&[&low, &high], 3)?.to_dtype(DType::U32)?;
        let weight = Tensor::stack(&[&(h * &inside)?, &(l * &inside)?], 3)?;
        Ok(AxisTaps {
            index: index.reshape((k, bins, 2 * ratio))?,
            weight: weight.reshape((k, bins, 2 * ratio))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};

    /// The device table, composed from its row and column taps, holds the host table's pixels
    /// and weights bit for bit (zero weights where the host skips a sample), in the rois'
    /// dtype and with u32 indices.
    #[test]
    fn axis_taps_repeat_the_host_table_bit_for_bit() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (h, w, out) = (7usize, 10usize, (3usize, 2usize));
        let rois: Vec<[f32; 5]> = (0..40)
            .map(|_| {
                let x1 = rng.random::<f32>() * 30.0 - 8.0;
                let y1 = rng.random::<f32>() * 24.0 - 6.0;
                let (bw, bh) = (rng.random::<f32>() * 20.0, rng.random::<f32>() * 16.0);
                [0.0, x1, y1, x1 + bw * bw / 20.0, y1 + bh * bh / 16.0]
            })
            .collect();
        let col = |i: usize| {
            let v: Vec<f32> = rois.iter().map(|r| r[i]).collect();
            Tensor::from_vec(v, rois.len(), &Device::Cpu).unwrap()
        };
        for (ratio, aligned) in [(1, false), (2, false), (2, true), (3, true)] {
            let cfg = Sampling {
                output_size: out,
                spatial_scale: 0.625,
                sampling_ratio: ratio,
                aligned,
            };
            let ys = AxisTaps::new(&col(2), &col(4), out.0, h, &cfg).unwrap();
            let xs = AxisTaps::new(&col(1), &col(3), out.1, w, &cfg).unwrap();
            assert_eq!(
                (ys.index.dtype(), ys.weight.dtype()),
                (DType::U32, DType::F32)
            );
            let (yi, yw) = (
                ys.index.to_vec3::<u32>().unwrap(),
                ys.weight.to_vec3::<f32>().unwrap(),
            );
            let (xi, xw) = (
                xs.index.to_vec3::<u32>().unwrap(),
                xs.weight.to_vec3::<f32>().unwrap(),
            );
            let r = ratio as usize;
            let mut table = Vec::new();
            for (k, roi) in rois.iter().enumerate() {
                Geometry::new(roi, &cfg, out).fill_table(h, w, &mut table);
                for (s, sample) in table.iter().enumerate() {
                    let (bin, s) = (s / (r * r), s % (r * r));
                    let (ph, pw, iy, ix) = (bin / out.1, bin % out.1, s / r, s % r);
                    for corner in 0..4 {
                        let (cy, cx) = (2 * iy + corner / 2, 2 * ix + corner % 2);
                        let weight = yw[k][ph][cy] * xw[k][pw][cx];
                        let pos = yi[k][ph][cy] as usize * w + xi[k][pw][cx] as usize;
                        let what = format!("ratio {ratio} aligned {aligned} roi {k} bin {bin}");
                        if sample.inside {
                            assert_eq!(weight.to_bits(), sample.w[corner].to_bits(), "{what}");
                            assert_eq!(pos, sample.pos[corner], "{what}");
                        } else {
                            assert_eq!(weight, 0.0, "{what}");
                        }
                    }
                }
            }
        }
    }
}
