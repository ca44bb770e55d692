//! Where RoIAlign samples the feature map: the bins of each roi, the sample points of each bin
//! and their bilinear weights, with torchvision's arithmetic. The composed path and the CPU
//! kernels both read them from here.

use crate::ops::detection::real::Real;

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
