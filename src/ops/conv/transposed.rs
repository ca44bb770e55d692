//! The 2×2, stride-2 transposed convolution (the paper's up-sampling `U`) as one CPU pass.
//!
//! Output pixel `(2y + ky, 2x + kx)` of channel `o` is `b[o] + Σ_c w[c, o, ky, kx] · x[c, y, x]`:
//! for a band of input rows, one GEMM `(4O × C) · (C × pixels)` gives all four taps of every
//! output channel, which are then interleaved into the output with the bias added, while the
//! band is still in cache. Composed from candle ops the same computation makes three full-size
//! tensors (the product, its permuted copy, the biased copy); here there is one.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::kernel::{bands, contiguous, matmul, with_scratch, Bands, Mat, SendPtr};
use crate::ops::simd::simd_fn;

/// `(x, w, b) ↦ conv_transpose2d(x, w, stride 2) + b` for `x` `(N, C, H, W)`, `w`
/// `(C, O, 2, 2)`, `b` `(O)`.
pub(super) struct ConvTranspose2x2;

impl CustomOp3 for ConvTranspose2x2 {
    fn name(&self) -> &'static str {
        "unetpp-conv-transpose2x2"
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
        let (n, c, h, w) = l1.shape().dims4()?;
        let (_, o, _, _) = l2.shape().dims4()?;
        let (x, wt, b) = (
            contiguous::<f32>(s1, l1)?,
            contiguous::<f32>(s2, l2)?,
            contiguous::<f32>(s3, l3)?,
        );
        let (p, q) = (h * w, 4 * h * w);
        if n * p == 0 {
            return Ok((
                CpuStorage::F32(Vec::new()),
                Shape::from((n, o, 2 * h, 2 * w)),
            ));
        }
        // Bands of input rows with about 1 MiB of product each.
        let Bands { rows, tasks, par } = bands(n, h, 4 * o * w, 1 << 18);
        let mut out = vec![0f32; n * o * q];
        let dst = SendPtr(out.as_mut_ptr());
        tasks.par_iter().for_each(|&(img, y0)| {
            with_scratch(|[prod, _, _]| {
                let y1 = (y0 + rows).min(h);
                let t = (y1 - y0) * w;
                prod.resize(4 * o * t, 0.0);
                // SAFETY: `wt` is C × 4O row-major, read as its 4O × C transpose; the rhs is
                // the C × t block of image img at rows y0..y1 (row stride p); `prod` is
                // 4O × t. All in bounds.
                unsafe {
                    matmul(
                        (4 * o, t, c),
                        prod.as_mut_ptr(),
                        t,
                        false,
                        Mat {
                            ptr: wt.as_ptr(),
                            rs: 1,
                            cs: 4 * o,
                        },
                        Mat {
                            ptr: x.as_ptr().add(img * c * p + y0 * w),
                            rs: p,
                            cs: 1,
                        },
                        par,
                    )
                }
                for (oc, &bias) in b.iter().enumerate().take(o) {
                    // SAFETY: output rows 2·y0 .. 2·y1 of channel oc of image img lie inside
                    // `out` (n·o·4p elements); only this task writes them.
                    let rows_out = unsafe {
                        dst.slice((img * o + oc) * q + 2 * y0 * 2 * w, 2 * (y1 - y0) * 2 * w)
                    };
                    for ky in 0..2 {
                        let (t0, t1) = (
                            &prod[(oc * 4 + ky * 2) * t..][..t],
                            &prod[(oc * 4 + ky * 2 + 1) * t..][..t],
                        );
                        for y in 0..y1 - y0 {
                            let row = &mut rows_out[(2 * y + ky) * 2 * w..(2 * y + ky + 1) * 2 * w];
                            let (a, bb) = (&t0[y * w..(y + 1) * w], &t1[y * w..(y + 1) * w]);
                            interleave(row, a, bb, bias);
                        }
                    }
                }
            })
        });
        Ok((CpuStorage::F32(out), Shape::from((n, o, 2 * h, 2 * w))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, h, wd) = x.dims4()?;
        let (_, o, _, _) = w.dims4()?;
        // g4[n, o·4 + ky·2 + kx, y·W + x] = grad[n, o, 2y + ky, 2x + kx], in one pass (as
        // a permuted copy, candle's strided copy over six dimensions took longer than the
        // products below).
        let g4 = grad.contiguous()?.apply_op1_no_bwd(&SplitTaps)?;
        let w2 = w.reshape((c, o * 4))?;
        let dx = if x.track_op() {
            Some(w2.broadcast_matmul(&g4)?.reshape((n, c, h, wd))?)
        } else {
            None
        };
        // dw[c, o·4 + k] = Σ_n Σ_pixels x[n, c, pixel] · g4[n, o·4 + k, pixel].
        let dw = x
            .reshape((n, c, h * wd))?
            .matmul(&g4.transpose(1, 2)?)?
            .sum(0)?
            .reshape((c, o, 2, 2))?;
        let db = crate::ops::elementwise::channel_sums(grad)?;
        Ok((dx, Some(dw), Some(db)))
    }
}

simd_fn! {
    /// `row[2i] = a[i] + bias`, `row[2i + 1] = b[i] + bias`: two output columns per input one.
    fn interleave(row: &mut [f32], a: &[f32], b: &[f32], bias: f32) {
        for (pair, (&v0, &v1)) in row.chunks_exact_mut(2).zip(a.iter().zip(b)) {
            pair[0] = v0 + bias;
            pair[1] = v1 + bias;
        }
    }
}

/// `grad (N, O, 2H, 2W) ↦ g4 (N, 4·O, H·W)` with
/// `g4[n, o·4 + ky·2 + kx, y·W + x] = grad[n, o, 2y + ky, 2x + kx]`: the four taps of each
/// output channel as separate maps. Plane `(n, o)` of the gradient becomes the four maps
/// `4o .. 4o + 4` of image `n`, which lie where the plane lay.
struct SplitTaps;

impl CustomOp1 for SplitTaps {
    fn name(&self) -> &'static str {
        "unetpp-split-taps"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, o, h2, w2) = l.shape().dims4()?;
        let (h, w) = (h2 / 2, w2 / 2);
        if (2 * h, 2 * w) != (h2, w2) {
            candle_core::bail!("split-taps needs even sides, got {h2}×{w2}");
        }
        let g = contiguous::<f32>(s, l)?;
        let plane = h2 * w2;
        let mut out = vec![0f32; n * o * plane];
        if plane > 0 {
            out.par_chunks_mut(plane)
                .zip(g.par_chunks(plane))
                .for_each(|(dst, src)| split_taps(dst, src, h, w));
        }
        Ok((CpuStorage::F32(out), Shape::from((n, 4 * o, h * w))))
    }
}

simd_fn! {
    /// One plane of [`SplitTaps`]: `src` is `2h × 2w`, `dst` four maps of `h × w`.
    fn split_taps(dst: &mut [f32], src: &[f32], h: usize, w: usize) {
        let hw = h * w;
        for ky in 0..2 {
            let (d0, d1) = dst[2 * ky * hw..(2 * ky + 2) * hw].split_at_mut(hw);
            for y in 0..h {
                let row = &src[(2 * y + ky) * 2 * w..(2 * y + ky + 1) * 2 * w];
                let (a, b) = (&mut d0[y * w..(y + 1) * w], &mut d1[y * w..(y + 1) * w]);
                for ((pair, a), b) in row.chunks_exact(2).zip(a).zip(b) {
                    *a = pair[0];
                    *b = pair[1];
                }
            }
        }
    }
}
