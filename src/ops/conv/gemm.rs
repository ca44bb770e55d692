//! Banded unfolding and GEMM for the 3×3, stride-1, padding-1 convolutions that make up
//! almost all of a UNet++'s work: the forward pass and the weight gradient.
//!
//! candle's CPU `conv2d` spends most of its time in scalar im2col loops around its GEMM. Here
//! the input is unfolded a band of rows at a time with whole-row copies into a buffer that
//! stays in cache, and each band goes through the `gemm` crate's kernels (the ones candle's
//! own matmul uses); bands run in parallel on rayon's pool, each GEMM single-threaded, so
//! threads are not oversubscribed. The input gradient is the same forward kernel with the
//! flipped, transposed kernel (see `op3x3.rs`), and the weight gradient unfolds the
//! same bands.

use super::shape::{Dims, Planes};
use crate::ops::kernel::{banded_forward, banded_weight_grad, bands, Bands, OutGeom};

/// Unfolds rows `y0..y1` of one image (`c` planes of `h × w`) into `cols`, a `(c·9) × t`
/// row-major matrix with `t = (y1 − y0)·w`: row `c·9 + ky·3 + kx` holds, for every output
/// pixel of the band, the input pixel at offset `(ky − 1, kx − 1)`, or 0 outside the image.
fn unfold_band<'a>(
    planes: impl Iterator<Item = &'a [f32]>,
    c: usize,
    h: usize,
    w: usize,
    y0: usize,
    y1: usize,
    cols: &mut [f32],
) {
    let t = (y1 - y0) * w;
    for (ci, plane) in planes.take(c).enumerate() {
        for ky in 0..3 {
            for kx in 0..3 {
                let row = &mut cols[(ci * 9 + ky * 3 + kx) * t..][..t];
                for (dst, y) in row.chunks_exact_mut(w).zip(y0..y1) {
                    let sy = y + ky;
                    if sy == 0 || sy > h {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &plane[(sy - 1) * w..sy * w];
                    match kx {
                        0 => {
                            dst[0] = 0.0;
                            dst[1..].copy_from_slice(&src[..w - 1]);
                        }
                        1 => dst.copy_from_slice(src),
                        _ => {
                            dst[..w - 1].copy_from_slice(&src[1..]);
                            dst[w - 1] = 0.0;
                        }
                    }
                }
            }
        }
    }
}

/// Bands of output rows with about 2 MiB of unfolded input each.
fn bands_of(d: &Dims) -> Bands {
    bands(d.n, d.h, d.c * 9 * d.w, 1 << 19)
}

/// The output as the banded kernels see it.
fn out_geom(d: &Dims) -> OutGeom {
    OutGeom {
        n: d.n,
        o: d.o,
        rows: d.h,
        cols: d.w,
        k: d.c * 9,
    }
}

/// `y[n, o] = b[o] + Σ_c w[o, c] ⋆ x[n, c]` for 3×3 kernels, stride 1, padding 1, then
/// `max(y, 0)` when `relu`.
pub(super) fn forward(x: &Planes, wt: &[f32], bias: &[f32], relu: bool, d: Dims) -> Vec<f32> {
    let Bands { rows, tasks, par } = bands_of(&d);
    banded_forward(
        out_geom(&d),
        (rows, &tasks, par),
        wt,
        bias,
        relu,
        |img, y0, y1, cols| unfold_band(x.image(img), d.c, d.h, d.w, y0, y1, cols),
    )
}

/// `dw[o, c·9] = Σ_n Σ_pixels dy[n, o, pixel] · unfold(x)[n, c·9, pixel]`.
pub(super) fn weight_grad(x: &[f32], dy: &[f32], d: Dims) -> Vec<f32> {
    let p = d.h * d.w;
    let Bands { rows, tasks, par } = bands_of(&d);
    banded_weight_grad(
        out_geom(&d),
        (rows, &tasks, par),
        dy,
        |img, y0, y1, cols| {
            unfold_band(
                x[img * d.c * p..(img + 1) * d.c * p].chunks_exact(p.max(1)),
                d.c,
                d.h,
                d.w,
                y0,
                y1,
                cols,
            )
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfold_shifts_rows_and_pads_with_zeros() {
        // One 2×3 plane: [[1, 2, 3], [4, 5, 6]].
        let img = [1f32, 2., 3., 4., 5., 6.];
        let mut cols = vec![f32::NAN; 9 * 6];
        unfold_band(img.chunks_exact(6), 1, 2, 3, 0, 2, &mut cols);
        // Offset (-1, -1): only pixel (1, 1) and (1, 2) see real input (1 and 2).
        assert_eq!(&cols[0..6], &[0., 0., 0., 0., 1., 2.]);
        // Offset (0, 0): the image itself.
        assert_eq!(&cols[4 * 6..5 * 6], &img);
        // Offset (1, 1): pixel (0, 0) sees 5, (0, 1) sees 6, the rest is outside.
        assert_eq!(&cols[8 * 6..9 * 6], &[5., 6., 0., 0., 0., 0.]);
    }
}
