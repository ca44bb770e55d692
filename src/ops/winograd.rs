//! Winograd F(2×2, 3×3) for the 3×3, stride-1, padding-1 convolution (Lavin & Gray, 2016).
//!
//! Each 2×2 block of output pixels is computed from a 4×4 patch of input: with the kernel
//! transformed once to `U = G g Gᵀ` and each patch to `V = Bᵀ d B`, the block is
//! `Aᵀ (Σ_c U ⊙ V) A`. Summing over channels is, for each of the 16 positions of the 4×4
//! transform, one matrix product `(O × C) · (C × tiles)`: 16 products of `O·C·tiles` where
//! direct convolution needs 9 of `O·C·4·tiles`, 2.25× fewer multiply-adds. The transforms
//! are additions only, and their factors (0, ±½, ±1) keep the result within rounding of direct
//! convolution.
//!
//! Tiles are processed a band of tile rows at a time so that the transformed input and the
//! products stay in cache; bands run in parallel on rayon's pool.

use rayon::prelude::*;

use super::conv::{Dims, SendPtr};

/// `U = G g Gᵀ` for every `(o, c)`, laid out as 16 matrices `O × C` (one per position ξ).
fn transform_kernels(wt: &[f32], o: usize, c: usize) -> Vec<f32> {
    let mut u = vec![0f32; 16 * o * c];
    for oc in 0..o * c {
        let g = &wt[oc * 9..oc * 9 + 9];
        // t = G g (4×3), G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]].
        let mut t = [0f32; 12];
        for col in 0..3 {
            let (g0, g1, g2) = (g[col], g[3 + col], g[6 + col]);
            t[col] = g0;
            t[3 + col] = 0.5 * (g0 + g1 + g2);
            t[6 + col] = 0.5 * (g0 - g1 + g2);
            t[9 + col] = g2;
        }
        // U = t Gᵀ (4×4).
        for row in 0..4 {
            let (a, b, cc) = (t[row * 3], t[row * 3 + 1], t[row * 3 + 2]);
            let vals = [a, 0.5 * (a + b + cc), 0.5 * (a - b + cc), cc];
            for (col, v) in vals.into_iter().enumerate() {
                u[(row * 4 + col) * o * c + oc] = v;
            }
        }
    }
    u
}

/// Writes `V = Bᵀ d B` of every tile of tile rows `ty0..ty1` of one image into `v`, laid
/// out as 16 matrices `C × T` (T = tiles in the band), where `d` is the 4×4 input patch at
/// `(2·ty − 1, 2·tx − 1)` with zeros outside the image.
///
/// The transform is separable and done on whole rows so that it vectorises: first the four
/// input rows of a tile row are combined (`Bᵀ d`) into the even and odd columns of the
/// zero-padded row, then the columns (`· B`) as element-wise operations over all tiles.
fn transform_inputs(img: &[f32], d: &Dims, ty0: usize, ty1: usize, tw: usize, v: &mut [f32]) {
    let (h, w) = (d.h, d.w);
    let t_count = (ty1 - ty0) * tw;
    let stride = d.c * t_count;
    // Padded column i is input column i − 1; even[r][k] = padded[2k], odd[r][k] = padded[2k + 1].
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
            let (d0, d1, d2, d3) = (row(0), row(1), row(2), row(3));
            // Rows: Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]].
            let (q01, q23) = q.split_at_mut(2 * w);
            let (q0, q1) = q01.split_at_mut(w);
            let (q2, q3) = q23.split_at_mut(w);
            // Equal lengths let the compiler drop bounds checks and vectorise.
            let (d0, d1, d2, d3) = (&d0[..w], &d1[..w], &d2[..w], &d3[..w]);
            let (q0, q1, q2, q3) = (&mut q0[..w], &mut q1[..w], &mut q2[..w], &mut q3[..w]);
            for x in 0..w {
                let (a, b, c, e) = (d0[x], d1[x], d2[x], d3[x]);
                q0[x] = a - c;
                q1[x] = b + c;
                q2[x] = c - b;
                q3[x] = b - e;
            }
            // Split into even and odd padded columns: input column 2j lands in odd[j],
            // input column 2j + 1 in even[j + 1]; even[0] (column −1) stays 0.
            let half = w / 2;
            for r in 0..4 {
                let (qr, ev, od) = (&q[r * w..(r + 1) * w], &mut even[r], &mut odd[r]);
                let pairs = qr
                    .chunks_exact(2)
                    .zip(od[..half].iter_mut().zip(ev[1..=half].iter_mut()));
                for (pair, (o, e)) in pairs {
                    *o = pair[0];
                    *e = pair[1];
                }
                if w % 2 == 1 {
                    od[half] = qr[w - 1];
                }
                od[w.div_ceil(2)..].fill(0.0);
                ev[half + 1..].fill(0.0);
            }
            let base = ci * t_count + (ty - ty0) * tw;
            for r in 0..4 {
                // Columns of tile tx: a = even[tx], b = odd[tx], c = even[tx + 1], e = odd[tx + 1].
                let (e0, e1) = (&even[r][..tw], &even[r][1..]);
                let (o0, o1) = (&odd[r][..tw], &odd[r][1..]);
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

/// Whether Winograd beats banded GEMM for this convolution on the CPU (measured with
/// `examples/bench_conv.rs`: with few input channels the transforms cost more than the
/// multiplications they save, and tiny maps leave the GEMMs too small).
pub(super) fn pays(d: &Dims) -> bool {
    d.c >= 48 && d.h >= 24 && d.w >= 24
}

/// Tile rows per band: about 2 MiB of transformed input, and enough bands for every thread.
fn band_tile_rows(c: usize, th: usize, tw: usize, n: usize) -> usize {
    const TARGET_FLOATS: usize = 1 << 19;
    let threads = rayon::current_num_threads().max(1);
    let by_cache = (TARGET_FLOATS / (16 * c * tw).max(1)).max(1);
    let bands_wanted = (2 * threads).div_ceil(n.max(1));
    let by_threads = th.div_ceil(bands_wanted).max(1);
    by_cache.min(by_threads).min(th)
}

/// `y[n, o] = b[o] + Σ_c w[o, c] ⋆ x[n, c]` (3×3, stride 1, padding 1), then `max(y, 0)`
/// when `relu`; the same result as direct convolution, within rounding.
pub(super) fn forward(x: &[f32], wt: &[f32], bias: &[f32], relu: bool, d: Dims) -> Vec<f32> {
    let (p, th, tw) = (d.h * d.w, d.h.div_ceil(2), d.w.div_ceil(2));
    let u = transform_kernels(wt, d.o, d.c);
    let rows = band_tile_rows(d.c, th, tw, d.n);
    let tasks: Vec<(usize, usize)> = (0..d.n)
        .flat_map(|img| (0..th).step_by(rows).map(move |ty0| (img, ty0)))
        .collect();
    let par = d.gemm_parallelism(tasks.len());
    let mut out = vec![0f32; d.n * d.o * p];
    let dst = SendPtr(out.as_mut_ptr());
    tasks.par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(v, m), &(img, ty0)| {
            let ty1 = (ty0 + rows).min(th);
            let t = (ty1 - ty0) * tw;
            v.resize(16 * d.c * t, 0.0);
            m.resize(16 * d.o * t, 0.0);
            transform_inputs(&x[img * d.c * p..(img + 1) * d.c * p], &d, ty0, ty1, tw, v);
            for xi in 0..16 {
                // SAFETY: `u` holds 16 matrices O × C, `v` 16 matrices C × t and `m` 16
                // matrices O × t, all row-major; matrix ξ of each is in bounds.
                unsafe {
                    gemm::gemm(
                        d.o,
                        t,
                        d.c,
                        m.as_mut_ptr().add(xi * d.o * t),
                        1,
                        t as isize,
                        false,
                        u.as_ptr().add(xi * d.o * d.c),
                        1,
                        d.c as isize,
                        v.as_ptr().add(xi * d.c * t),
                        1,
                        t as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        par,
                    )
                }
            }
            // Y = Aᵀ m A with Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]], a row of tiles at a time so
            // that it vectorises over the tiles; plus bias, then ReLU.
            let (y_start, y_end) = (2 * ty0, (2 * ty1).min(d.h));
            let mut r = vec![0f32; 8 * tw];
            let mut pair = [vec![0f32; tw], vec![0f32; tw]];
            for (o, &b) in bias.iter().enumerate() {
                // SAFETY: rows y_start..y_end of channel o of image img lie inside `out`
                // (n·o·p elements); this task is the only one to touch them.
                let rows_out = unsafe {
                    std::slice::from_raw_parts_mut(
                        dst.get().add((img * d.o + o) * p + y_start * d.w),
                        (y_end - y_start) * d.w,
                    )
                };
                for ty in ty0..ty1 {
                    let at = o * t + (ty - ty0) * tw;
                    let mrow = |xi: usize| &m[xi * d.o * t + at..xi * d.o * t + at + tw];
                    let (top, bottom) = r.split_at_mut(4 * tw);
                    for col in 0..4 {
                        let (m0, m1, m2, m3) =
                            (mrow(col), mrow(4 + col), mrow(8 + col), mrow(12 + col));
                        let top = &mut top[col * tw..(col + 1) * tw];
                        let bottom = &mut bottom[col * tw..(col + 1) * tw];
                        for tx in 0..tw {
                            top[tx] = m0[tx] + m1[tx] + m2[tx];
                            bottom[tx] = m1[tx] - m2[tx] - m3[tx];
                        }
                    }
                    for dy in 0..2 {
                        let y = 2 * ty + dy;
                        if y >= d.h {
                            continue;
                        }
                        let rr = |col: usize| &r[(dy * 4 + col) * tw..(dy * 4 + col + 1) * tw];
                        let (r0, r1, r2, r3) = (rr(0), rr(1), rr(2), rr(3));
                        let [left, right] = &mut pair;
                        for tx in 0..tw {
                            left[tx] = r0[tx] + r1[tx] + r2[tx] + b;
                            right[tx] = r1[tx] - r2[tx] - r3[tx] + b;
                        }
                        if relu {
                            left.iter_mut()
                                .chain(right.iter_mut())
                                .for_each(|v| *v = v.max(0.0));
                        }
                        let out_row = &mut rows_out[(y - y_start) * d.w..(y - y_start + 1) * d.w];
                        for (dst2, (&a, &c)) in
                            out_row.chunks_mut(2).zip(left.iter().zip(right.iter()))
                        {
                            dst2[0] = a;
                            if let Some(second) = dst2.get_mut(1) {
                                *second = c;
                            }
                        }
                    }
                }
            }
        },
    );
    out
}
