//! The shared core of the CPU kernels, and the one module whose unsafe code the others build
//! on: contiguous views of storage ([`contiguous`]), a pointer that may cross threads for
//! disjoint writes ([`SendPtr`], [`map_channels`]), per-thread scratch buffers
//! ([`with_scratch`]), sums of partial results in a fixed order ([`fold_sum`], [`map2`]), the
//! `gemm` crate's matrix product on raw pointers ([`matmul`]), the banded unfold-and-multiply
//! loops of the convolutions ([`bands`], [`banded_forward`], [`banded_weight_grad`]). (The
//! choice of instruction set is `ops::simd`'s.)
//!
//! # The invariants every `unsafe` block relies on
//!
//! Here and in the kernel modules of `ops::conv` (the only other modules allowed `unsafe`),
//! each `// SAFETY:` comment says which of these it uses.
//!
//! 1. **In bounds.** A buffer written through a raw pointer is a `Vec` allocated in full, with
//!    the length its dimensions give (`n·o·h·w`, …), by the function that runs the parallel
//!    loop; every offset and length passed to [`SendPtr::slice`] or [`matmul`] is computed from
//!    the same dimensions, the last band clipped to the image (`y1 = min(y0 + rows, h)`). The
//!    inputs come from [`contiguous`], which refuses non-contiguous layouts, so their length is
//!    what their shape says.
//! 2. **Disjoint writes.** The tasks of one parallel loop share a [`SendPtr`], and each writes
//!    only a region that no task running at the same time reads or writes: a band of rows of
//!    one image (in every output channel), the planes of one channel, or, for the input
//!    gradient of the general convolution, whose bands' input rows overlap their neighbours',
//!    one band among bands of the same parity. A slice made from the pointer does not outlive
//!    its task.
//! 3. **Lifetimes.** The buffer behind a [`SendPtr`] is a local `Vec` that is neither moved,
//!    resized nor read until the parallel loop has returned (rayon joins every task first).
//! 4. **GEMM operands.** [`matmul`] reads an `m × k` and a `k × n` matrix and writes an `m × n`
//!    one, each given by a pointer and strides that keep it inside its buffer (1). The
//!    destination is a scratch buffer or accumulator owned by the task, or the task's region of
//!    the output (2), never one of the operands.
//! 5. **CPU features.** No function here is compiled with `#[target_feature]`; the kernels
//!    run at a higher instruction-set level only through `ops::simd`'s `simd_fn!`, whose module
//!    doc states its own invariant.

use rayon::prelude::*;
use std::cell::RefCell;

use candle_core::{CpuStorage, Layout, WithDType};

/// The elements of a contiguous tensor's CPU storage.
pub(super) fn contiguous<'a, T: WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
) -> candle_core::Result<&'a [T]> {
    let data = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("unetpp's CPU kernels need contiguous tensors"),
    }
}

/// A new `(n, c, plane)` buffer filled channel by channel in parallel: `per_channel(ci)`
/// gives the writer of channel `ci`, called with the offset and the output of each of its `n`
/// planes.
pub(super) fn map_channels<W: Fn(usize, &mut [f32])>(
    (n, c, plane): (usize, usize, usize),
    per_channel: impl Fn(usize) -> W + Sync,
) -> Vec<f32> {
    let mut out = vec![0f32; n * c * plane];
    let dst = SendPtr(out.as_mut_ptr());
    (0..c).into_par_iter().for_each(|ci| {
        let write = per_channel(ci);
        for ni in 0..n {
            let off = (ni * c + ci) * plane;
            // SAFETY: plane (ni, ci) lies inside `out`, and only this channel's task writes it.
            write(off, unsafe { dst.slice(off, plane) });
        }
    });
    out
}

/// `out[i] = f(a[i], b[i])` for two equally long buffers, computed by `f(out, a, b)` on
/// chunks in parallel (`f` is a chunk kernel, so that it may be a `simd_fn!`).
pub(super) fn map2(
    a: &[f32],
    b: &[f32],
    f: impl Fn(&mut [f32], &[f32], &[f32]) + Sync,
) -> Vec<f32> {
    let mut out = vec![0f32; a.len()];
    out.par_chunks_mut(1 << 14)
        .zip(a.par_chunks(1 << 14).zip(b.par_chunks(1 << 14)))
        .for_each(|(o, (a, b))| f(o, a, b));
    out
}

/// `out[i] = f(x[i])`, computed by `f(out, x)` on chunks in parallel (as [`map2`]).
pub(super) fn map1(x: &[f32], f: impl Fn(&mut [f32], &[f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(1 << 14)
        .zip(x.par_chunks(1 << 14))
        .for_each(|(o, x)| f(o, x));
    out
}

/// `even[i] = src[2i]`, `odd[i] = src[2i + 1]` for as many pairs as all three hold: the
/// stride-2 split of the Winograd transforms, which vectorises inside a `simd_fn!` body.
#[inline(always)]
pub(super) fn deinterleave(src: &[f32], even: &mut [f32], odd: &mut [f32]) {
    let n = even.len().min(odd.len()).min(src.len() / 2);
    let (even, odd) = (&mut even[..n], &mut odd[..n]);
    for ((pair, e), o) in src[..2 * n].chunks_exact(2).zip(even).zip(odd) {
        *e = pair[0];
        *o = pair[1];
    }
}

/// A raw pointer that may cross threads: every task writes a disjoint part of the buffer.
#[derive(Clone, Copy)]
pub(super) struct SendPtr(pub(super) *mut f32);
// SAFETY: the pointer is only dereferenced through `slice` and `matmul`, whose callers keep
// invariants 1–3 of the module doc: tasks write disjoint regions of a buffer that outlives
// the parallel loop.
unsafe impl Send for SendPtr {}
// SAFETY: as for `Send`: no two threads touch the same element through it at the same time.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so that closures capture the whole `SendPtr`).
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }

    /// `len` elements from `offset`, as a slice.
    ///
    /// # Safety
    /// The range must lie inside the buffer, and no other live reference may overlap it.
    pub(super) unsafe fn slice<'a>(self, offset: usize, len: usize) -> &'a mut [f32] {
        // SAFETY: the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(offset), len) }
    }
}

thread_local! {
    static SCRATCH: RefCell<[Vec<f32>; 3]> = const { RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

/// Runs `f` with this thread's three scratch buffers. They are kept between calls, so the
/// large temporaries of a convolution are not mapped and zeroed afresh by the OS each time.
/// A nested call on the same thread (rayon can run another task while one waits) gets fresh
/// buffers.
pub(super) fn with_scratch<R>(f: impl FnOnce(&mut [Vec<f32>; 3]) -> R) -> R {
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut bufs) => f(&mut bufs),
        Err(_) => f(&mut [Vec::new(), Vec::new(), Vec::new()]),
    })
}

/// `Σ_task f(task)` into a vector of `len` floats, computed in parallel but summed in an order
/// that depends only on the tasks and the number of threads: each thread folds an equal,
/// fixed share of the tasks, and the shares are added in order. (Rayon's `fold`/`reduce`
/// splits adaptively, so float sums would differ from run to run.)
pub(super) fn fold_sum<T: Sync>(
    tasks: &[T],
    len: usize,
    f: impl Fn(&mut [f32], &T) + Sync,
) -> Vec<f32> {
    let groups = rayon::current_num_threads().clamp(1, tasks.len().max(1));
    let share = tasks.len().div_ceil(groups).max(1);
    let partial: Vec<Vec<f32>> = tasks
        .par_chunks(share)
        .map(|chunk| {
            let mut acc = vec![0f32; len];
            for t in chunk {
                f(&mut acc, t);
            }
            acc
        })
        .collect();
    let mut it = partial.into_iter();
    let mut total = it.next().unwrap_or_else(|| vec![0f32; len]);
    for p in it {
        total.iter_mut().zip(&p).for_each(|(x, y)| *x += y);
    }
    total
}

/// A matrix in memory: its first element and its row and column strides, in elements.
#[derive(Clone, Copy)]
pub(super) struct Mat {
    pub(super) ptr: *const f32,
    pub(super) rs: usize,
    pub(super) cs: usize,
}

/// `dst ← lhs · rhs` for an `m × k` by `k × n` product, or `dst ← dst + lhs · rhs` when
/// `accumulate`, with the `gemm` crate's kernels. `dst` is `m × n` with row stride `dst_rs`
/// and column stride 1.
///
/// # Safety
/// The three matrices must lie in valid memory of the given shapes and strides, `dst` must
/// overlap neither operand, and no other thread may touch `dst` meanwhile.
pub(super) unsafe fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    par: gemm::Parallelism,
) {
    // SAFETY: the caller's promise; gemm takes column strides before row strides.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs.ptr,
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.ptr,
            rhs.cs as isize,
            rhs.rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// How a kernel splits its work over rayon's pool.
pub(super) struct Bands {
    /// Rows per band (the last band may be shorter).
    pub(super) rows: usize,
    /// One task per band: (image, first row).
    pub(super) tasks: Vec<(usize, usize)>,
    /// Threads for each band's GEMMs: the GEMM's own only when there are fewer bands than
    /// threads, so that threads are never oversubscribed.
    pub(super) par: gemm::Parallelism,
}

/// Splits `n` images of `rows` rows into bands of about `target` floats of working data
/// (`floats_per_row` per row, so that a band stays in cache), with at least two bands per
/// thread where the rows allow.
pub(super) fn bands(n: usize, rows: usize, floats_per_row: usize, target: usize) -> Bands {
    bands_at_least(n, rows, floats_per_row, target, 1)
}

/// [`bands`] at least `min_rows` rows tall (where the image has them).
pub(super) fn bands_at_least(
    n: usize,
    rows: usize,
    floats_per_row: usize,
    target: usize,
    min_rows: usize,
) -> Bands {
    let threads = rayon::current_num_threads().max(1);
    let by_cache = (target / floats_per_row.max(1)).max(1);
    let by_threads = rows.div_ceil((2 * threads).div_ceil(n.max(1))).max(1);
    let per_band = by_cache.min(by_threads).max(min_rows).min(rows).max(1);
    let tasks: Vec<(usize, usize)> = (0..n)
        .flat_map(|img| (0..rows).step_by(per_band).map(move |r0| (img, r0)))
        .collect();
    let par = if tasks.len() < threads && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    Bands {
        rows: per_band,
        tasks,
        par,
    }
}

/// The output of an unfolded convolution: `n` images of `o` channels of `rows × cols` pixels.
#[derive(Clone, Copy)]
pub(super) struct OutGeom {
    pub(super) n: usize,
    pub(super) o: usize,
    pub(super) rows: usize,
    pub(super) cols: usize,
    /// Rows of the unfolded input (input channels × kernel taps).
    pub(super) k: usize,
}

/// `out[img, o, band] = bias[o] + wt · unfold(img, band)`, then `max(·, 0)` when `relu`, for
/// every band of `bands` (`band_rows` output rows each, the last one shorter), in parallel.
/// `unfold(img, y0, y1, cols)` fills `cols`, a `k × t` row-major matrix with
/// `t = (y1 − y0)·cols`, with the input under each kernel tap of output rows `y0..y1`.
pub(super) fn banded_forward(
    g: OutGeom,
    (band_rows, tasks, par): (usize, &[(usize, usize)], gemm::Parallelism),
    wt: &[f32],
    bias: &[f32],
    relu: bool,
    unfold: impl Fn(usize, usize, usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let p = g.rows * g.cols;
    let mut out = vec![0f32; g.n * g.o * p];
    if out.is_empty() {
        return out;
    }
    let dst = SendPtr(out.as_mut_ptr());
    tasks.par_iter().for_each(|&(img, y0)| {
        with_scratch(|[cols, _, _]| {
            let y1 = (y0 + band_rows).min(g.rows);
            let t = (y1 - y0) * g.cols;
            cols.resize(g.k * t, 0.0);
            unfold(img, y0, y1, cols);
            let band = |o: usize| {
                // SAFETY: rows y0..y1 of channel o of image img lie inside `out` (n·o·p
                // elements), and only this task touches them while the loop runs.
                unsafe { dst.slice((img * g.o + o) * p + y0 * g.cols, t) }
            };
            for (o, &b) in bias.iter().enumerate() {
                band(o).fill(b);
            }
            // SAFETY: `dst` points into `out`, which has n·o·p elements; this task reads and
            // writes the o × t block at rows y0..y1 of image `img` (row stride p), which no
            // other task touches. `wt` is o × k and `cols` is k × t, both row-major and in
            // bounds.
            unsafe {
                matmul(
                    (g.o, t, g.k),
                    dst.get().add(img * g.o * p + y0 * g.cols),
                    p,
                    true,
                    Mat {
                        ptr: wt.as_ptr(),
                        rs: g.k,
                        cs: 1,
                    },
                    Mat {
                        ptr: cols.as_ptr(),
                        rs: t,
                        cs: 1,
                    },
                    par,
                )
            }
            if relu {
                for o in 0..g.o {
                    band(o).iter_mut().for_each(|v| *v = v.max(0.0));
                }
            }
        })
    });
    out
}

/// `dw[o, k] = Σ_images Σ_bands dy[img, o, band] · unfold(img, band)ᵀ`, summed in a fixed
/// order ([`fold_sum`]); `unfold` as for [`banded_forward`].
pub(super) fn banded_weight_grad(
    g: OutGeom,
    (band_rows, tasks, par): (usize, &[(usize, usize)], gemm::Parallelism),
    dy: &[f32],
    unfold: impl Fn(usize, usize, usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let p = g.rows * g.cols;
    if g.n * p == 0 {
        return vec![0f32; g.o * g.k];
    }
    fold_sum(tasks, g.o * g.k, |dw, &(img, y0)| {
        with_scratch(|[cols, _, _]| {
            let y1 = (y0 + band_rows).min(g.rows);
            let t = (y1 - y0) * g.cols;
            cols.resize(g.k * t, 0.0);
            unfold(img, y0, y1, cols);
            // SAFETY: `dw` is o × k row-major and owned by this share; the lhs is the o × t
            // block of `dy` at rows y0..y1 of image `img` (row stride p), in bounds; the rhs
            // is `cols` (k × t row-major) read as its t × k transpose.
            unsafe {
                matmul(
                    (g.o, g.k, t),
                    dw.as_mut_ptr(),
                    g.k,
                    true,
                    Mat {
                        ptr: dy.as_ptr().add(img * g.o * p + y0 * g.cols),
                        rs: p,
                        cs: 1,
                    },
                    Mat {
                        ptr: cols.as_ptr(),
                        rs: 1,
                        cs: t,
                    },
                    par,
                )
            }
        })
    })
}
