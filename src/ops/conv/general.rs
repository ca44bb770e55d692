//! General 2-D convolution (any kernel size, stride and padding) with CPU kernels for the
//! forward pass and both gradients: the strided convolutions of a ResNet (the 7×7 stem, the
//! stride-2 3×3 and 1×1 convolutions that start layers 2–4) and anything else that is not a
//! stride-1 3×3 or 1×1.
//!
//! candle's CPU `conv2d` is im2col plus GEMM, but its backward pass computes the input
//! gradient with `conv_transpose2d`, a scalar loop that takes 3–5× PyTorch's time, and always
//! computes it, even for an input that needs none. Here each band of output rows is unfolded
//! into a buffer that stays in cache and multiplied with the `gemm` crate's kernels, forward
//! and for the weight gradient; the input gradient is the transposed product, folded back onto
//! the input rows, and is skipped when the input is not tracked (an image, or the output of a
//! frozen stage).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::kernel::{
    banded_forward, banded_weight_grad, bands_at_least, contiguous, matmul, with_scratch, Mat,
    OutGeom, SendPtr,
};
use crate::ops::simd::simd_fn;

/// The shape of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    oh: usize,
    ow: usize,
}

impl Geom {
    /// Rows of the unfolded input: one per input channel and kernel tap.
    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// The output as the banded kernels see it.
    fn out(&self) -> OutGeom {
        OutGeom {
            n: self.n,
            o: self.o,
            rows: self.oh,
            cols: self.ow,
            k: self.k(),
        }
    }

    /// Bands of output rows with about 2 MiB of unfolded input each, at least
    /// `⌈kh / stride⌉` rows tall, so that the input rows of a band overlap only those of its
    /// neighbours (the input gradient relies on it).
    fn bands(&self) -> (usize, Vec<(usize, usize)>, gemm::Parallelism) {
        let min_rows = self.kh.div_ceil(self.stride);
        let b = bands_at_least(self.n, self.oh, self.k() * self.ow, 1 << 19, min_rows);
        (b.rows, b.tasks, b.par)
    }

    /// For kernel column `kx`, the output columns whose input column lies inside the image:
    /// `lo..hi`, and the input column of output column `ox` is `ox·stride + kx − pad`.
    fn cols_inside(&self, kx: usize) -> (usize, usize) {
        let (s, p) = (self.stride, self.pad);
        let lo = if kx >= p { 0 } else { (p - kx).div_ceil(s) };
        // ox·s + kx − p ≤ w − 1  ⇔  ox ≤ (w − 1 + p − kx) / s
        let hi = if self.w + p > kx {
            ((self.w + p - 1 - kx) / s + 1).min(self.ow)
        } else {
            0
        };
        (lo.min(hi), hi)
    }

    /// The input row of output row `oy` and kernel row `ky`, if inside the image.
    fn row_inside(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.stride + ky)
            .checked_sub(self.pad)
            .filter(|&iy| iy < self.h)
    }
}

simd_fn! {
    /// Unfolds output rows `y0..y1` of image `x` (`c` planes of `h × w`) into `cols`, a `k × t`
    /// row-major matrix (`t = (y1 − y0)·ow`): row `(c·kh + ky)·kw + kx` holds, for every output
    /// pixel of the band, the input pixel under kernel tap `(ky, kx)`, or 0 outside the image.
    fn unfold(x: &[f32], g: &Geom, y0: usize, y1: usize, cols: &mut [f32]) {
        let (hw, t) = (g.h * g.w, (y1 - y0) * g.ow);
        for ci in 0..g.c {
            let plane = &x[ci * hw..(ci + 1) * hw];
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let row = &mut cols[((ci * g.kh + ky) * g.kw + kx) * t..][..t];
                    let (lo, hi) = g.cols_inside(kx);
                    for (dst, oy) in row.chunks_exact_mut(g.ow).zip(y0..y1) {
                        let Some(iy) = g.row_inside(oy, ky) else {
                            dst.fill(0.0);
                            continue;
                        };
                        let src = &plane[iy * g.w..(iy + 1) * g.w];
                        dst[..lo].fill(0.0);
                        dst[hi..].fill(0.0);
                        if lo == hi {
                            continue;
                        }
                        if g.stride == 1 {
                            let x0 = lo + kx - g.pad;
                            dst[lo..hi].copy_from_slice(&src[x0..x0 + (hi - lo)]);
                        } else {
                            for (ox, d) in (lo..hi).zip(&mut dst[lo..hi]) {
                                *d = src[ox * g.stride + kx - g.pad];
                            }
                        }
                    }
                }
            }
        }
    }
}

simd_fn! {
    /// The inverse of [`unfold`] for gradients: adds every entry of `cols` onto the input pixel it
    /// was read from (entries read from outside the image are dropped).
    ///
    /// # Safety
    /// `dx` must point to an `(n, c, h, w)` buffer of `g`'s dimensions, and while this runs no
    /// other thread may touch the input rows that output rows `y0..y1` of image `img` read.
    unsafe fn fold_into(cols: &[f32], g: &Geom, y0: usize, y1: usize, dx: SendPtr, img: usize) {
        let (hw, t) = (g.h * g.w, (y1 - y0) * g.ow);
        for ci in 0..g.c {
            let plane = (img * g.c + ci) * hw;
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let row = &cols[((ci * g.kh + ky) * g.kw + kx) * t..][..t];
                    let (lo, hi) = g.cols_inside(kx);
                    for (src, oy) in row.chunks_exact(g.ow).zip(y0..y1) {
                        let Some(iy) = g.row_inside(oy, ky) else {
                            continue;
                        };
                        // SAFETY: row iy of plane (img, ci) lies inside the (n, c, h, w)
                        // buffer, and it is one of the rows the caller promised to no other
                        // thread, so no other live slice covers it.
                        let dst = unsafe { dx.slice(plane + iy * g.w, g.w) };
                        for (ox, &v) in (lo..hi).zip(&src[lo..hi]) {
                            dst[ox * g.stride + kx - g.pad] += v;
                        }
                    }
                }
            }
        }
    }
}

fn forward(x: &[f32], wt: &[f32], bias: &[f32], g: Geom) -> Vec<f32> {
    let (rows, tasks, par) = g.bands();
    banded_forward(
        g.out(),
        (rows, &tasks, par),
        wt,
        bias,
        false,
        |img, y0, y1, cols| unfold(&x[img * g.c * g.h * g.w..], &g, y0, y1, cols),
    )
}

/// `dw[o, k] = Σ_n Σ_pixels dy[n, o, pixel] · unfold(x)[n, k, pixel]`.
fn weight_grad(x: &[f32], dy: &[f32], g: Geom) -> Vec<f32> {
    let (rows, tasks, par) = g.bands();
    banded_weight_grad(g.out(), (rows, &tasks, par), dy, |img, y0, y1, cols| {
        unfold(&x[img * g.c * g.h * g.w..], &g, y0, y1, cols)
    })
}

/// `dx = fold(wᵀ · dy)`, band by band: bands of even index (within each image) first, then
/// odd ones, so that no two bands that run at once add onto the same input row.
fn input_grad(wt: &[f32], dy: &[f32], g: Geom) -> Vec<f32> {
    let (p, k) = (g.oh * g.ow, g.k());
    let mut dx = vec![0f32; g.n * g.c * g.h * g.w];
    if dx.is_empty() || p == 0 {
        return dx;
    }
    let (rows, tasks, par) = g.bands();
    let ptr = SendPtr(dx.as_mut_ptr());
    for parity in 0..2 {
        tasks
            .par_iter()
            .filter(|&&(_, y0)| (y0 / rows) % 2 == parity)
            .for_each(|&(img, y0)| {
                with_scratch(|[cols, _, _]| {
                    let y1 = (y0 + rows).min(g.oh);
                    let t = (y1 - y0) * g.ow;
                    cols.resize(k * t, 0.0);
                    // SAFETY: `cols` is k × t row-major and ours; the lhs is `wt` (o × k
                    // row-major) read as its k × o transpose; the rhs is the o × t block of
                    // `dy` at rows y0..y1 of image img (row stride p).
                    unsafe {
                        matmul(
                            (k, t, g.o),
                            cols.as_mut_ptr(),
                            t,
                            false,
                            Mat {
                                ptr: wt.as_ptr(),
                                rs: 1,
                                cs: k,
                            },
                            Mat {
                                ptr: dy.as_ptr().add(img * g.o * p + y0 * g.ow),
                                rs: p,
                                cs: 1,
                            },
                            par,
                        )
                    }
                    // SAFETY: `dx` has n·c·h·w elements and outlives the loop; bands are at
                    // least ⌈kh / stride⌉ rows tall, so the input rows of a band overlap only
                    // those of its neighbours, and the bands running now all have the same
                    // parity.
                    unsafe { fold_into(cols, &g, y0, y1, ptr, img) };
                })
            });
    }
    dx
}

/// The forward op: `(x, w, b) ↦ conv(x, w) + b`.
pub(super) struct Conv {
    pub(super) stride: usize,
    pub(super) pad: usize,
}

impl Conv {
    fn geom(&self, x: &Shape, w: &Shape) -> candle_core::Result<Geom> {
        let (n, c, h, wd) = x.dims4()?;
        let (o, _, kh, kw) = w.dims4()?;
        let (s, p) = (self.stride, self.pad);
        Ok(Geom {
            n,
            c,
            h,
            w: wd,
            o,
            kh,
            kw,
            stride: s,
            pad: p,
            oh: (h + 2 * p - kh) / s + 1,
            ow: (wd + 2 * p - kw) / s + 1,
        })
    }
}

impl CustomOp3 for Conv {
    fn name(&self) -> &'static str {
        "unetpp-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.geom(l1.shape(), l2.shape())?;
        let out = forward(
            contiguous::<f32>(s1, l1)?,
            contiguous::<f32>(s2, l2)?,
            contiguous::<f32>(s3, l3)?,
            g,
        );
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.o, g.oh, g.ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let g = self.geom(x.shape(), w.shape())?;
        // Inputs that need no gradient (images, frozen stages' outputs) skip theirs.
        let dx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(&w.contiguous()?, &Grad::Input(g))?)
        } else {
            None
        };
        let dw = if w.track_op() {
            Some(x.contiguous()?.apply_op2_no_bwd(&grad, &Grad::Weight(g))?)
        } else {
            None
        };
        let db = if b.track_op() {
            Some(crate::ops::elementwise::channel_sums(&grad)?)
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}

/// A gradient of [`Conv`]: `(dy, w) ↦ dx` or `(x, dy) ↦ dw`.
enum Grad {
    Input(Geom),
    Weight(Geom),
}

impl CustomOp2 for Grad {
    fn name(&self) -> &'static str {
        match self {
            Grad::Input(_) => "unetpp-conv2d-input-grad",
            Grad::Weight(_) => "unetpp-conv2d-weight-grad",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (a, b) = (contiguous::<f32>(s1, l1)?, contiguous::<f32>(s2, l2)?);
        Ok(match *self {
            Grad::Input(g) => (
                CpuStorage::F32(input_grad(b, a, g)),
                Shape::from((g.n, g.c, g.h, g.w)),
            ),
            Grad::Weight(g) => (
                CpuStorage::F32(weight_grad(a, b, g)),
                Shape::from((g.o, g.c, g.kh, g.kw)),
            ),
        })
    }
}
