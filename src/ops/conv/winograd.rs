//! Winograd F(4×4, 3×3) for the 3×3, stride-1, padding-1 convolution (Lavin & Gray, 2016).
//!
//! Each 4×4 block of output pixels is computed from a 6×6 patch of input: with the kernel
//! transformed once to `U = G g Gᵀ` and each patch to `V = Bᵀ d B`, the block is
//! `Aᵀ (Σ_c U ⊙ V) A`. Summing over channels is, for each of the 36 positions of the 6×6
//! transform, one matrix product `(O × C) · (C × tiles)`: 36 products per 16 output pixels
//! where direct convolution needs 9 per pixel, 4× fewer multiply-adds. The transforms are
//! additions and small constant multiplications; in `f32` the result agrees with direct
//! convolution to about 1e-6 relative (the tests hold it to 1e-4).
//!
//! Every transform is separable and is done on whole rows of tiles, so that it vectorises:
//! a vertical pass over the rows of the image, then a horizontal one over the columns, with
//! the four phases of the stride-4 tiling split into separate arrays. Tiles are processed a
//! band of tile rows at a time so that the transformed input and the products stay in cache;
//! bands run in parallel on rayon's pool.

use rayon::prelude::*;

use super::shape::{Dims, Planes};
use crate::ops::kernel::{bands, deinterleave, matmul, with_scratch, Bands, Mat, SendPtr};
use crate::ops::simd::simd_fn;

/// Output tile side.
const M: usize = 4;
/// Input patch side (M + 3 − 1).
const A: usize = 6;
/// Positions of the transform.
const XI: usize = A * A;

/// Whether Winograd beats banded GEMM for this convolution on the CPU (measured with
/// `examples/bench_conv.rs`): with fewer than 32 input channels the transforms cost more than
/// the multiplications they save, and with fewer than 8 outputs or below 256 tiles (a 64×64
/// map) the 36 products are too thin for the GEMM to run well.
pub(super) fn pays(d: &Dims) -> bool {
    d.c >= 32 && d.o >= 8 && d.h.div_ceil(M) * d.w.div_ceil(M) >= 256
}

/// `Bᵀ x` for the six values of one patch column (or row).
#[inline(always)]
fn bt(d: [f32; A]) -> [f32; A] {
    [
        4.0 * d[0] - 5.0 * d[2] + d[4],
        -4.0 * (d[1] + d[2]) + d[3] + d[4],
        4.0 * (d[1] - d[2]) - d[3] + d[4],
        2.0 * (d[3] - d[1]) - d[2] + d[4],
        2.0 * (d[1] - d[3]) - d[2] + d[4],
        4.0 * d[1] - 5.0 * d[3] + d[5],
    ]
}

/// `Aᵀ m` for the six values of one column (or row) of a product.
#[inline(always)]
fn at(m: [f32; A]) -> [f32; M] {
    let (s12, d12, s34, d34) = (m[1] + m[2], m[1] - m[2], m[3] + m[4], m[3] - m[4]);
    [
        m[0] + s12 + s34,
        d12 + 2.0 * d34,
        s12 + 4.0 * s34,
        d12 + 8.0 * d34 + m[5],
    ]
}

/// `G g` for the three values of one kernel column (or row).
#[inline(always)]
fn g(k: [f32; 3]) -> [f32; A] {
    const SIXTH: f32 = 1.0 / 6.0;
    const TWELFTH: f32 = 1.0 / 12.0;
    const TWENTY_FOURTH: f32 = 1.0 / 24.0;
    let (s, d) = (k[0] + k[2], k[1]);
    [
        0.25 * k[0],
        -(s + d) * SIXTH,
        -(s - d) * SIXTH,
        TWENTY_FOURTH * k[0] + TWELFTH * k[1] + SIXTH * k[2],
        TWENTY_FOURTH * k[0] - TWELFTH * k[1] + SIXTH * k[2],
        k[2],
    ]
}

/// `U = G g Gᵀ` for every `(o, c)`, stored pair by pair: `u[(o·C + c)·36 + ξ]`, which the
/// GEMM reads as 36 matrices `O × C` with column stride 36.
fn transform_kernels(wt: &[f32], o: usize, c: usize) -> Vec<f32> {
    let mut u = vec![0f32; XI * o * c];
    for (k, dst) in wt.chunks_exact(9).zip(u.chunks_exact_mut(XI)).take(o * c) {
        // Columns first: cols[col] = G (column col of k).
        let cols: [[f32; A]; 3] = [0, 1, 2].map(|col| g([k[col], k[3 + col], k[6 + col]]));
        for (row, out) in dst.chunks_exact_mut(A).enumerate() {
            out.copy_from_slice(&g([cols[0][row], cols[1][row], cols[2][row]]));
        }
    }
    u
}

/// Splits `buf` into `N` consecutive slices of `len` elements.
fn split_rows<const N: usize>(buf: &mut [f32], len: usize) -> [&mut [f32]; N] {
    let mut rest = buf;
    std::array::from_fn(|_| {
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(len);
        rest = tail;
        head
    })
}

/// One pass of the input transform over whole rows: `out[k][i] = (Bᵀ [in_0[i], …, in_5[i]])[k]`.
/// All slices are cut to one length first, so that bounds checks vanish and the loop
/// vectorises.
#[inline(always)]
fn bt_rows(inp: [&[f32]; A], out: [&mut [f32]; A]) {
    let len = out[0].len();
    let [i0, i1, i2, i3, i4, i5] = inp.map(|r| &r[..len]);
    let [o0, o1, o2, o3, o4, o5] = out.map(|o| &mut o[..len]);
    for x in 0..len {
        let v = bt([i0[x], i1[x], i2[x], i3[x], i4[x], i5[x]]);
        o0[x] = v[0];
        o1[x] = v[1];
        o2[x] = v[2];
        o3[x] = v[3];
        o4[x] = v[4];
        o5[x] = v[5];
    }
}

/// `N` slices of `len` elements of `buf`, starting at `first` and `step` apart
/// (`step ≥ len`).
fn strided_rows<const N: usize>(
    buf: &mut [f32],
    first: usize,
    step: usize,
    len: usize,
) -> [&mut [f32]; N] {
    let mut rest = &mut buf[first..];
    std::array::from_fn(|_| {
        let row = std::mem::take(&mut rest);
        let (head, tail) = if row.len() > step {
            row.split_at_mut(step)
        } else {
            (row, &mut [][..])
        };
        rest = tail;
        &mut head[..len]
    })
}

simd_fn! {
    /// Writes `V = Bᵀ d B` of every tile of tile rows `ty0..ty1` of one image into `v`, laid
    /// out as 36 matrices `C × T` (T = tiles in the band), where `d` is the 6×6 input patch at
    /// `(4·ty − 1, 4·tx − 1)` with zeros outside the image.
    fn transform_inputs(
        x: &Planes,
        img: usize,
        d: &Dims,
        ty0: usize,
        ty1: usize,
        tw: usize,
        v: &mut [f32],
    ) {
        let (h, w) = (d.h, d.w);
        let t_count = (ty1 - ty0) * tw;
        let stride = d.c * t_count;
        let zero_row = vec![0f32; w];
        // q: the vertical pass, A padded rows: q[r][i] is padded column i (input column
        // i − 1); column 0 and the columns past the image stay zero.
        let pw = M * tw + 2 * M;
        let mut q = vec![0f32; A * pw];
        let mut halves = vec![0f32; 4 * (tw + 1)];
        let mut phases = vec![0f32; M * (tw + 1)];
        for (ci, plane) in x.image(img).take(d.c).enumerate() {
            for ty in ty0..ty1 {
                let rows: [&[f32]; A] = std::array::from_fn(|r| {
                    let y = M * ty + r;
                    if y == 0 || y > h {
                        &zero_row[..w]
                    } else {
                        &plane[(y - 1) * w..y * w]
                    }
                });
                let padded: [&mut [f32]; A] = split_rows(&mut q, pw);
                bt_rows(rows, padded.map(|row| &mut row[1..=w]));
                // Horizontal pass: tile tx reads padded columns 4tx .. 4tx + 5, i.e. phases
                // 0, 1, 2, 3 at j = tx and phases 0, 1 at j = tx + 1 (phase k holds padded
                // columns 4j + k), split in two stride-2 steps (a stride-2 split vectorises
                // where a stride-4 one does not); written straight into the six matrices of
                // the row.
                let base = ci * t_count + (ty - ty0) * tw;
                let n = tw + 1;
                for r in 0..A {
                    let row = &q[r * pw..r * pw + M * n];
                    let [e, o]: [&mut [f32]; 2] = split_rows(&mut halves, 2 * n);
                    deinterleave(row, e, o);
                    let [p0, p1, p2, p3]: [&mut [f32]; M] = split_rows(&mut phases, n);
                    deinterleave(e, p0, p2);
                    deinterleave(o, p1, p3);
                    let out = strided_rows(v, (r * A) * stride + base, stride, tw);
                    bt_rows(
                        [
                            &p0[..tw],
                            &p1[..tw],
                            &p2[..tw],
                            &p3[..tw],
                            &p0[1..=tw],
                            &p1[1..=tw],
                        ],
                        out,
                    );
                }
            }
        }
    }
}

/// `y[n, o] = b[o] + Σ_c w[o, c] ⋆ x[n, c]` (3×3, stride 1, padding 1), then `max(y, 0)`
/// when `relu`; the same result as direct convolution, within rounding.
pub(super) fn forward(x: &Planes, wt: &[f32], bias: &[f32], relu: bool, d: Dims) -> Vec<f32> {
    let (p, th, tw) = (d.h * d.w, d.h.div_ceil(M), d.w.div_ceil(M));
    let u = transform_kernels(wt, d.o, d.c);
    // Bands of tile rows with about 2 MiB of transformed input each.
    let Bands { rows, tasks, par } = bands(d.n, th, XI * d.c * tw, 1 << 19);
    let mut out = vec![0f32; d.n * d.o * p];
    let dst = SendPtr(out.as_mut_ptr());
    tasks.par_iter().for_each(|&(img, ty0)| {
        with_scratch(|[v, m, r]| {
            let ty1 = (ty0 + rows).min(th);
            let t = (ty1 - ty0) * tw;
            v.resize(XI * d.c * t, 0.0);
            m.resize(XI * d.o * t, 0.0);
            transform_inputs(x, img, &d, ty0, ty1, tw, v);
            for xi in 0..XI {
                // SAFETY: `u` holds 36 matrices O × C (interleaved, column stride 36), `v` 36
                // matrices C × t and `m` 36 matrices O × t, all row-major; matrix ξ of each is
                // in bounds, and `m` is this task's scratch.
                unsafe {
                    matmul(
                        (d.o, t, d.c),
                        m.as_mut_ptr().add(xi * d.o * t),
                        t,
                        false,
                        Mat {
                            ptr: u.as_ptr().add(xi),
                            rs: XI * d.c,
                            cs: XI,
                        },
                        Mat {
                            ptr: v.as_ptr().add(xi * d.c * t),
                            rs: t,
                            cs: 1,
                        },
                        par,
                    )
                }
            }
            // Y = Aᵀ m A, a row of tiles at a time; plus bias, then ReLU.
            let band = Band {
                img,
                ty0,
                ty1,
                tw,
                t,
            };
            // SAFETY: this task is the only one to write rows 4·ty0 .. 4·ty1 of image img of
            // `out`, which has n·o·p elements and outlives the loop.
            unsafe { transform_outputs(m, r, bias, relu, &d, &band, dst) };
        })
    });
    out
}

/// One band of tile rows of one image.
struct Band {
    img: usize,
    ty0: usize,
    ty1: usize,
    tw: usize,
    t: usize,
}

simd_fn! {
    /// `Y = Aᵀ m A` for every tile of a band, plus bias, then ReLU, written into `dst`.
    ///
    /// # Safety
    /// `dst` must point to the output buffer (`n·o·h·w` elements), and no other thread may touch
    /// rows `4·ty0 .. 4·ty1` of image `img` while this runs.
    unsafe fn transform_outputs(
        m: &[f32],
        r: &mut Vec<f32>,
        bias: &[f32],
        relu: bool,
        d: &Dims,
        band: &Band,
        dst: SendPtr,
    ) {
        let Band {
            img,
            ty0,
            ty1,
            tw,
            t,
        } = *band;
        let p = d.h * d.w;
        let (y_start, y_end) = (M * ty0, (M * ty1).min(d.h));
        r.resize(M * A * tw, 0.0);
        for (o, &b) in bias.iter().enumerate() {
            // SAFETY: rows y_start..y_end of channel o of image img lie inside `out`
            // (n·o·p elements); this task is the only one to touch them.
            let rows_out =
                unsafe { dst.slice((img * d.o + o) * p + y_start * d.w, (y_end - y_start) * d.w) };
            for ty in ty0..ty1 {
                let at0 = o * t + (ty - ty0) * tw;
                // Vertical pass: r[col][dy][tx] = (Aᵀ m)[dy][col] of tile tx.
                for col in 0..A {
                    let mrow = |row: usize| {
                        let start = (row * A + col) * d.o * t + at0;
                        &m[start..start + tw]
                    };
                    let (m0, m1, m2, m3, m4, m5) =
                        (mrow(0), mrow(1), mrow(2), mrow(3), mrow(4), mrow(5));
                    let ys: [&mut [f32]; M] =
                        split_rows(&mut r[col * M * tw..(col + 1) * M * tw], tw);
                    let [y0, y1, y2, y3] = ys.map(|y| &mut y[..tw]);
                    for tx in 0..tw {
                        let vals = at([m0[tx], m1[tx], m2[tx], m3[tx], m4[tx], m5[tx]]);
                        y0[tx] = vals[0];
                        y1[tx] = vals[1];
                        y2[tx] = vals[2];
                        y3[tx] = vals[3];
                    }
                }
                // Horizontal pass, then write the 4×4 block row by row.
                for dy in 0..M {
                    let y = M * ty + dy;
                    if y >= d.h {
                        break;
                    }
                    let rr = |col: usize| &r[(col * M + dy) * tw..(col * M + dy + 1) * tw];
                    let (c0, c1, c2, c3, c4, c5) = (rr(0), rr(1), rr(2), rr(3), rr(4), rr(5));
                    let out_row = &mut rows_out[(y - y_start) * d.w..(y - y_start + 1) * d.w];
                    let mut blocks = out_row.chunks_exact_mut(M);
                    for (tx, block) in (&mut blocks).enumerate() {
                        let vals = at([c0[tx], c1[tx], c2[tx], c3[tx], c4[tx], c5[tx]]);
                        for (slot, val) in block.iter_mut().zip(vals) {
                            let val = val + b;
                            *slot = if relu { val.max(0.0) } else { val };
                        }
                    }
                    let rem = blocks.into_remainder();
                    if !rem.is_empty() {
                        let tx = tw - 1;
                        let vals = at([c0[tx], c1[tx], c2[tx], c3[tx], c4[tx], c5[tx]]);
                        for (slot, val) in rem.iter_mut().zip(vals) {
                            let val = val + b;
                            *slot = if relu { val.max(0.0) } else { val };
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transforms reproduce a 1-D correlation: Aᵀ[(G g) ⊙ (Bᵀ d)] = (d ⋆ g) at 4 outputs.
    #[test]
    fn one_dimensional_identity() {
        let d = [0.3f32, -1.2, 2.0, 0.7, -0.4, 1.5];
        let k = [0.5f32, -0.25, 2.0];
        let prod: [f32; A] = std::array::from_fn(|i| g(k)[i] * bt(d)[i]);
        let y = at(prod);
        for (i, yi) in y.iter().enumerate() {
            let direct = d[i] * k[0] + d[i + 1] * k[1] + d[i + 2] * k[2];
            assert!((yi - direct).abs() < 1e-5, "{i}: {yi} vs {direct}");
        }
    }
}
