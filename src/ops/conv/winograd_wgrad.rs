//! The weight gradient of the 3×3, stride-1, padding-1 convolution by Winograd F(3×3, 2×2).
//!
//! `dw[o, c, ky, kx] = Σ_{n,y,x} dy[n, o, y, x] · x[n, c, y + ky − 1, x + kx − 1]` is a
//! correlation of the input with the output gradient whose *result* is 3×3. Tiling the
//! output gradient into 2×2 blocks, each block meets a 4×4 patch of input, and F(3×3, 2×2)
//! computes the block's 3×3 contribution as `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`. Summing the
//! element-wise products over all blocks is, for each of the 16 positions, one matrix product
//! `(O × tiles) · (tiles × C)`: 16 products of `O·C·tiles` where direct unfolding needs 9 of
//! `O·C·4·tiles`, 2.25× fewer multiply-adds. The input patches are those of the forward
//! F(2×2, 3×3) (`Bᵀ` is the same); `G` and `Aᵀ` are the forward's `Aᵀ` and `G` transposed.

use super::shape::Dims;
use crate::ops::kernel::{bands, deinterleave, fold_sum, matmul, with_scratch, Bands, Mat};
use crate::ops::simd::simd_fn;

/// Whether this beats banded unfolding + GEMM for the weight gradient (measured with a
/// `examples/bench_conv.rs --backward` on the shapes of the paper's network): enough channels
/// on both sides, and at least 1024 tiles (a 64×64 map).
pub(super) fn pays(d: &Dims) -> bool {
    d.c >= 32 && d.o >= 16 && d.h.div_ceil(2) * d.w.div_ceil(2) * d.n >= 1024
}

simd_fn! {
    /// `V = Bᵀ d B` for the 4×4 input patch at `(2·ty − 1, 2·tx − 1)` of every tile of tile
    /// rows `ty0..ty1` (zeros outside the image), as 16 matrices `C × T`; row passes over whole
    /// tile rows so that they vectorise.
    /// `Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]]`.
    fn transform_inputs(img: &[f32], d: &Dims, ty0: usize, ty1: usize, tw: usize, v: &mut [f32]) {
        let (h, w) = (d.h, d.w);
        let t_count = (ty1 - ty0) * tw;
        let stride = d.c * t_count;
        // Padded column i is input column i − 1; even[r][k] = padded[2k],
        // odd[r][k] = padded[2k + 1].
        let mut even = vec![vec![0f32; tw + 1]; 4];
        let mut odd = vec![vec![0f32; tw + 1]; 4];
        let mut q = vec![0f32; 4 * w];
        let zero_row = vec![0f32; w];
        for (ci, plane) in img.chunks_exact(h * w).take(d.c).enumerate() {
            for ty in ty0..ty1 {
                let row = |r: usize| -> &[f32] {
                    let y = 2 * ty + r;
                    if y == 0 || y > h {
                        &zero_row
                    } else {
                        &plane[(y - 1) * w..y * w]
                    }
                };
                let (d0, d1, d2, d3) = (&row(0)[..w], &row(1)[..w], &row(2)[..w], &row(3)[..w]);
                let (q01, q23) = q.split_at_mut(2 * w);
                let (q0, q1) = q01.split_at_mut(w);
                let (q2, q3) = q23.split_at_mut(w);
                let (q0, q1, q2, q3) = (&mut q0[..w], &mut q1[..w], &mut q2[..w], &mut q3[..w]);
                for x in 0..w {
                    let (a, b, c, e) = (d0[x], d1[x], d2[x], d3[x]);
                    q0[x] = a - c;
                    q1[x] = b + c;
                    q2[x] = c - b;
                    q3[x] = b - e;
                }
                let half = w / 2;
                for r in 0..4 {
                    let (qr, ev, od) = (&q[r * w..(r + 1) * w], &mut even[r], &mut odd[r]);
                    deinterleave(qr, &mut od[..half], &mut ev[1..=half]);
                    if w % 2 == 1 {
                        od[half] = qr[w - 1];
                    }
                    od[w.div_ceil(2)..].fill(0.0);
                    ev[half + 1..].fill(0.0);
                }
                let base = ci * t_count + (ty - ty0) * tw;
                for r in 0..4 {
                    let (e0, e1) = (&even[r][..tw], &even[r][1..=tw]);
                    let (o0, o1) = (&odd[r][..tw], &odd[r][1..=tw]);
                    let at = |col: usize| (r * 4 + col) * stride + base;
                    let out = &mut v[at(0)..at(0) + tw];
                    out.iter_mut()
                        .zip(e0.iter().zip(e1))
                        .for_each(|(v, (a, c))| *v = a - c);
                    let out = &mut v[at(1)..at(1) + tw];
                    out.iter_mut()
                        .zip(o0.iter().zip(e1))
                        .for_each(|(v, (b, c))| *v = b + c);
                    let out = &mut v[at(2)..at(2) + tw];
                    out.iter_mut()
                        .zip(o0.iter().zip(e1))
                        .for_each(|(v, (b, c))| *v = c - b);
                    let out = &mut v[at(3)..at(3) + tw];
                    out.iter_mut()
                        .zip(o0.iter().zip(o1))
                        .for_each(|(v, (b, e))| *v = b - e);
                }
            }
        }
    }
}

simd_fn! {
    /// `U = G g Gᵀ` for the 2×2 block of output gradient at `(2·ty, 2·tx)` of every tile of tile
    /// rows `ty0..ty1` (zeros beyond the map), as 16 matrices `O × T`.
    /// `G = [[1, 0], [1, 1], [1, −1], [0, −1]]`.
    fn transform_grads(img: &[f32], d: &Dims, ty0: usize, ty1: usize, tw: usize, u: &mut [f32]) {
        let (h, w) = (d.h, d.w);
        let t_count = (ty1 - ty0) * tw;
        let stride = d.o * t_count;
        let mut even = vec![vec![0f32; tw]; 4];
        let mut odd = vec![vec![0f32; tw]; 4];
        let mut q = vec![0f32; 4 * w];
        let zero_row = vec![0f32; w];
        for (oi, plane) in img.chunks_exact(h * w).take(d.o).enumerate() {
            for ty in ty0..ty1 {
                let row = |r: usize| -> &[f32] {
                    let y = 2 * ty + r;
                    if y >= h {
                        &zero_row
                    } else {
                        &plane[y * w..(y + 1) * w]
                    }
                };
                let (g0, g1) = (&row(0)[..w], &row(1)[..w]);
                let (q01, q23) = q.split_at_mut(2 * w);
                let (q0, q1) = q01.split_at_mut(w);
                let (q2, q3) = q23.split_at_mut(w);
                let (q0, q1, q2, q3) = (&mut q0[..w], &mut q1[..w], &mut q2[..w], &mut q3[..w]);
                for x in 0..w {
                    let (a, b) = (g0[x], g1[x]);
                    q0[x] = a;
                    q1[x] = a + b;
                    q2[x] = a - b;
                    q3[x] = -b;
                }
                // Columns 2j and 2j + 1 of tile j.
                let half = w / 2;
                for r in 0..4 {
                    let (qr, ev, od) = (&q[r * w..(r + 1) * w], &mut even[r], &mut odd[r]);
                    deinterleave(qr, &mut ev[..half], &mut od[..half]);
                    if w % 2 == 1 {
                        ev[half] = qr[w - 1];
                        od[half] = 0.0;
                    }
                }
                let base = oi * t_count + (ty - ty0) * tw;
                for r in 0..4 {
                    let (e, o) = (&even[r][..tw], &odd[r][..tw]);
                    let at = |col: usize| (r * 4 + col) * stride + base;
                    u[at(0)..at(0) + tw].copy_from_slice(e);
                    let out = &mut u[at(1)..at(1) + tw];
                    out.iter_mut()
                        .zip(e.iter().zip(o))
                        .for_each(|(v, (a, b))| *v = a + b);
                    let out = &mut u[at(2)..at(2) + tw];
                    out.iter_mut()
                        .zip(e.iter().zip(o))
                        .for_each(|(v, (a, b))| *v = a - b);
                    let out = &mut u[at(3)..at(3) + tw];
                    out.iter_mut().zip(o).for_each(|(v, b)| *v = -b);
                }
            }
        }
    }
}

/// `dw[o, c·9] = Σ_n Σ_pixels dy[n, o, pixel] · unfold(x)[n, c·9, pixel]`, as
/// the banded version (`gemm.rs`) computes it, within rounding.
pub(super) fn weight_grad(x: &[f32], dy: &[f32], d: Dims) -> Vec<f32> {
    let (p, th, tw) = (d.h * d.w, d.h.div_ceil(2), d.w.div_ceil(2));
    // Bands of tile rows with about 2 MiB of transformed input and gradient each.
    let Bands { rows, tasks, par } = bands(d.n, th, 16 * (d.c + d.o) * tw, 1 << 19);
    let m_len = 16 * d.o * d.c;
    let m = fold_sum(&tasks, m_len, |acc, &(img, ty0)| {
        with_scratch(|[v, u, _]| {
            let ty1 = (ty0 + rows).min(th);
            let t = (ty1 - ty0) * tw;
            v.resize(16 * d.c * t, 0.0);
            u.resize(16 * d.o * t, 0.0);
            transform_inputs(&x[img * d.c * p..(img + 1) * d.c * p], &d, ty0, ty1, tw, v);
            transform_grads(&dy[img * d.o * p..(img + 1) * d.o * p], &d, ty0, ty1, tw, u);
            for xi in 0..16 {
                // SAFETY: `acc` holds 16 matrices O × C; `u` 16 matrices O × t and `v`
                // 16 matrices C × t (read as t × C), all row-major and in bounds.
                unsafe {
                    matmul(
                        (d.o, d.c, t),
                        acc.as_mut_ptr().add(xi * d.o * d.c),
                        d.c,
                        true,
                        Mat {
                            ptr: u.as_ptr().add(xi * d.o * t),
                            rs: t,
                            cs: 1,
                        },
                        Mat {
                            ptr: v.as_ptr().add(xi * d.c * t),
                            rs: 1,
                            cs: t,
                        },
                        par,
                    )
                }
            }
        });
    });
    // dw = Aᵀ M A with Aᵀ = [[1, ½, ½, 0], [0, ½, −½, 0], [0, ½, ½, 1]].
    let at = |q: [f32; 4]| {
        [
            q[0] + 0.5 * (q[1] + q[2]),
            0.5 * (q[1] - q[2]),
            0.5 * (q[1] + q[2]) + q[3],
        ]
    };
    let mut dw = vec![0f32; d.o * d.c * 9];
    for (oc, out) in dw.chunks_exact_mut(9).enumerate() {
        let mv = |xi: usize| m[xi * d.o * d.c + oc];
        let cols: [[f32; 3]; 4] =
            std::array::from_fn(|col| at([mv(col), mv(4 + col), mv(8 + col), mv(12 + col)]));
        for ky in 0..3 {
            let vals = at([cols[0][ky], cols[1][ky], cols[2][ky], cols[3][ky]]);
            out[ky * 3..ky * 3 + 3].copy_from_slice(&vals);
        }
    }
    dw
}
