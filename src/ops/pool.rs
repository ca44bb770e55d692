//! Max pooling and nearest-neighbour up-sampling with correct backward passes.
//!
//! candle 0.11.1 has both ops, but their gradients are wrong: `max_pool2d`'s backward
//! multiplies the gradient by the *fraction* of maxima in each window (¼ for a 2×2 window
//! with one maximum) where it should route it whole to the maximum, and
//! `upsample_nearest2d`'s backward overwrites the gradient its input already has instead of
//! adding to it. The crate pools and up-samples through these two functions only (a test
//! greps `src/` for candle's methods).
//!
//! On the CPU both are one kernel forward and one backward, for every float type. Elsewhere
//! they are compositions of candle ops whose backward passes are right (strided views,
//! `where_cond`, broadcasting), so they run on any device.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use crate::{Error, Result};

/// 2-D max pooling of `(N, C, H, W)` with a square `kernel`, `stride` and zero-width
/// `padding` (padded positions never win), PyTorch's `F.max_pool2d(x, kernel, stride,
/// padding)` with `ceil_mode=False`: the output is `⌊(H + 2·padding − kernel) / stride⌋ + 1`
/// high, and likewise wide.
///
/// The gradient of each output goes whole to the first maximum of its window in row-major
/// order (PyTorch's rule for ties); windows that overlap add their gradients. A NaN in a
/// window is its maximum, as in PyTorch.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
///
/// let x = Var::new(&[[[[1f32, 2.], [3., 4.]]]], &Device::Cpu)?;
/// let y = unetpp::ops::max_pool2d(x.as_tensor(), 2, 2, 0)?;
/// let g = y.sum_all()?.backward()?;
/// let dx = g.get(x.as_tensor()).unwrap().flatten_all()?.to_vec1::<f32>()?;
/// assert_eq!(dx, [0., 0., 0., 1.]); // candle's own max_pool2d gives 0.25 here
/// # Ok::<(), unetpp::Error>(())
/// ```
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    max_pool2d_on(
        x,
        (kernel, stride, padding),
        super::path::cpu_kernels(x.device()),
    )
}

/// [`max_pool2d`] on the CPU kernel when `cpu_kernel`, on the composed path otherwise.
fn max_pool2d_on(x: &Tensor, (k, s, p): (usize, usize, usize), cpu_kernel: bool) -> Result<Tensor> {
    let geom = PoolGeom::new(x, k, s, p)?;
    if cpu_kernel {
        Ok(x.contiguous()?.apply_op1(MaxPool(geom))?)
    } else {
        max_pool2d_composed(x, geom)
    }
}

/// Nearest-neighbour up-sampling of `(N, C, H, W)` by an integer `scale` in both directions,
/// PyTorch's `F.interpolate(x, scale_factor=scale, mode="nearest")`. Each input pixel's
/// gradient is the sum over its `scale × scale` outputs, added to any gradient it gets
/// elsewhere.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
///
/// let x = Var::new(&[[[[1f32, 2.]]]], &Device::Cpu)?;
/// let y = unetpp::ops::upsample_nearest2d(x.as_tensor(), 2)?;
/// assert_eq!(y.dims(), &[1, 1, 2, 4]);
/// let loss = (y.sum_all()? + (x.as_tensor().sum_all()? * 3.)?)?;
/// let dx = loss.backward()?.get(x.as_tensor()).unwrap().flatten_all()?.to_vec1::<f32>()?;
/// assert_eq!(dx, [7., 7.]); // candle's upsample_nearest2d loses the 3
/// # Ok::<(), unetpp::Error>(())
/// ```
pub fn upsample_nearest2d(x: &Tensor, scale: usize) -> Result<Tensor> {
    upsample_nearest2d_on(x, scale, super::path::cpu_kernels(x.device()))
}

/// [`upsample_nearest2d`] on the CPU kernel when `cpu_kernel`, on the composed path otherwise.
fn upsample_nearest2d_on(x: &Tensor, scale: usize, cpu_kernel: bool) -> Result<Tensor> {
    let dims = dims4(x, "upsample_nearest2d")?;
    if scale == 0 {
        return Err(Error::Input(
            "upsample_nearest2d: the scale must be ≥ 1".into(),
        ));
    }
    check_float(x, "upsample_nearest2d")?;
    if scale == 1 {
        Ok(x.clone())
    } else if cpu_kernel {
        Ok(x.contiguous()?.apply_op1(Upsample { scale })?)
    } else {
        upsample_composed(x, dims, scale)
    }
}

/// The composed path: each pixel broadcast over a `scale × scale` block (broadcasting's
/// backward sums the block).
fn upsample_composed(
    x: &Tensor,
    (n, c, h, w): (usize, usize, usize, usize),
    scale: usize,
) -> Result<Tensor> {
    Ok(x.reshape((n, c, h, 1, w, 1))?
        .broadcast_as((n, c, h, scale, w, scale))?
        .reshape((n, c, h * scale, w * scale))?)
}

fn dims4(x: &Tensor, what: &str) -> Result<(usize, usize, usize, usize)> {
    x.dims4().map_err(|_| {
        Error::Shape(format!(
            "{what} needs (N, C, H, W), got shape {:?}",
            x.dims()
        ))
    })
}

fn check_float(x: &Tensor, what: &str) -> Result<()> {
    if x.dtype().is_float() {
        Ok(())
    } else {
        Err(Error::Input(format!(
            "{what} needs a floating-point tensor, got {:?}",
            x.dtype()
        )))
    }
}

/// The shape arithmetic of one pooling.
#[derive(Debug, Clone, Copy)]
struct PoolGeom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    p: usize,
    ho: usize,
    wo: usize,
}

impl PoolGeom {
    fn new(x: &Tensor, k: usize, s: usize, p: usize) -> Result<Self> {
        let (n, c, h, w) = dims4(x, "max_pool2d")?;
        check_float(x, "max_pool2d")?;
        if k == 0 || s == 0 {
            return Err(Error::Input(format!(
                "max_pool2d: kernel {k} and stride {s} must be ≥ 1"
            )));
        }
        if 2 * p > k {
            return Err(Error::Input(format!(
                "max_pool2d: padding {p} must be at most half the kernel {k}"
            )));
        }
        let out = |len: usize| (len + 2 * p).checked_sub(k).map(|r| r / s + 1);
        match (out(h), out(w)) {
            (Some(ho), Some(wo)) => Ok(Self {
                n,
                c,
                h,
                w,
                k,
                s,
                p,
                ho,
                wo,
            }),
            _ => Err(Error::Shape(format!(
                "max_pool2d: a {h}x{w} map with padding {p} is smaller than the {k}x{k} kernel"
            ))),
        }
    }

    /// The rows (or columns) of the input that output row `o` pools: `start..end`.
    fn window(&self, o: usize, len: usize) -> (usize, usize) {
        let start = (o * self.s) as isize - self.p as isize;
        let end = (start + self.k as isize).min(len as isize);
        (start.max(0) as usize, end.max(0) as usize)
    }

    /// The flat index (within its plane) of the first maximum of output `(oy, ox)`'s window.
    fn argmax<T: WithDType>(&self, plane: &[T], oy: usize, ox: usize) -> usize {
        let (y0, y1) = self.window(oy, self.h);
        let (x0, x1) = self.window(ox, self.w);
        let mut best = y0 * self.w + x0;
        let mut max = plane[best];
        for y in y0..y1 {
            for (i, &v) in plane[y * self.w + x0..y * self.w + x1].iter().enumerate() {
                // `v != v` is NaN, which wins (PyTorch's rule).
                #[allow(clippy::eq_op)]
                if v > max || v != v {
                    max = v;
                    best = y * self.w + x0 + i;
                }
            }
        }
        best
    }

    fn forward<T: WithDType>(&self, x: &[T]) -> Vec<T> {
        let (plane_in, plane_out) = (self.h * self.w, self.ho * self.wo);
        let mut out = vec![T::from_f64(0.0); self.n * self.c * plane_out];
        out.par_chunks_mut(plane_out.max(1))
            .zip(x.par_chunks(plane_in.max(1)))
            .for_each(|(o, plane)| {
                for oy in 0..self.ho {
                    for ox in 0..self.wo {
                        o[oy * self.wo + ox] = plane[self.argmax(plane, oy, ox)];
                    }
                }
            });
        out
    }

    fn backward<T: WithDType>(&self, x: &[T], g: &[T]) -> Vec<T> {
        let (plane_in, plane_out) = (self.h * self.w, self.ho * self.wo);
        let mut dx = vec![T::from_f64(0.0); self.n * self.c * plane_in];
        dx.par_chunks_mut(plane_in.max(1))
            .zip(x.par_chunks(plane_in.max(1)))
            .zip(g.par_chunks(plane_out.max(1)))
            .for_each(|((d, plane), gp)| {
                for oy in 0..self.ho {
                    for ox in 0..self.wo {
                        d[self.argmax(plane, oy, ox)] += gp[oy * self.wo + ox];
                    }
                }
            });
        dx
    }
}

/// Runs `$body` with `$x` bound to the storage's slice of its float type (`$T` the type).
macro_rules! with_float_slice {
    ($s:expr, $l:expr, |$x:ident : $T:ident| $body:expr) => {
        match $s {
            CpuStorage::F32(_) => {
                type $T = f32;
                let $x = super::kernel::contiguous::<f32>($s, $l)?;
                CpuStorage::F32($body)
            }
            CpuStorage::F64(_) => {
                type $T = f64;
                let $x = super::kernel::contiguous::<f64>($s, $l)?;
                CpuStorage::F64($body)
            }
            CpuStorage::F16(_) => {
                type $T = half::f16;
                let $x = super::kernel::contiguous::<half::f16>($s, $l)?;
                CpuStorage::F16($body)
            }
            CpuStorage::BF16(_) => {
                type $T = half::bf16;
                let $x = super::kernel::contiguous::<half::bf16>($s, $l)?;
                CpuStorage::BF16($body)
            }
            other => candle_core::bail!(
                "unetpp's pooling kernels need a float tensor, got {:?}",
                candle_core::backend::BackendStorage::dtype(other)
            ),
        }
    };
}

struct MaxPool(PoolGeom);

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "unetpp-max-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.0;
        let out = with_float_slice!(s, l, |x: T| g.forward::<T>(x));
        Ok((out, Shape::from((g.n, g.c, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let grad = grad.to_dtype(arg.dtype())?.contiguous()?;
        Ok(Some(
            arg.contiguous()?
                .apply_op2_no_bwd(&grad, &MaxPoolBackward(self.0))?,
        ))
    }
}

struct MaxPoolBackward(PoolGeom);

impl CustomOp2 for MaxPoolBackward {
    fn name(&self) -> &'static str {
        "unetpp-max-pool2d-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let geom = self.0;
        let dx = with_float_slice!(s1, l1, |x: T| {
            let g = super::kernel::contiguous::<T>(s2, l2)?;
            geom.backward::<T>(x, g)
        });
        Ok((dx, l1.shape().clone()))
    }
}

/// The composed path: the window's candidates as strided views of the padded input, each
/// output taken from the first candidate equal to the maximum (through `where_cond`, whose
/// backward routes the gradient to the chosen candidate only).
fn max_pool2d_composed(x: &Tensor, g: PoolGeom) -> Result<Tensor> {
    let PoolGeom {
        n,
        c,
        h,
        w,
        k,
        s,
        p,
        ho,
        wo,
    } = g;
    // Every candidate view starts at offset (dy, dx) < k and spans s·ho rows: pad to that
    // with −∞, which never wins.
    let below = (k - 1 + s * ho).saturating_sub(h + p);
    let right = (k - 1 + s * wo).saturating_sub(w + p);
    let padded = pad_neg_inf(&pad_neg_inf(x, 2, p, below)?, 3, p, right)?;
    let mut views = Vec::with_capacity(k * k);
    for dy in 0..k {
        for dx in 0..k {
            let v = padded
                .narrow(2, dy, s * ho)?
                .narrow(3, dx, s * wo)?
                .reshape((n, c, ho, s, s * wo))?
                .narrow(3, 0, 1)?
                .reshape((n, c, ho, wo, s))?
                .narrow(4, 0, 1)?
                .squeeze(4)?;
            views.push(v);
        }
    }
    // Candidates compare by a key in which NaN is +∞, so that a NaN wins its window (and
    // gets its gradient) as in PyTorch; candle's `maximum` would skip it.
    let inf = super::path::host_tensor(vec![f32::INFINITY], (), x.dtype(), x.device())?
        .broadcast_as(views[0].shape())?;
    let keys = views
        .iter()
        .map(|v| {
            let v = v.detach();
            Ok(v.ne(&v)?.where_cond(&inf, &v)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut max = keys[0].clone();
    for key in &keys[1..] {
        max = max.maximum(key)?;
    }
    // Walk the candidates from last to first, so that the first maximum is chosen last.
    let mut out = views[0].clone();
    for (v, key) in views.iter().zip(&keys).rev() {
        out = key.eq(&max)?.where_cond(v, &out)?;
    }
    Ok(out)
}

struct Upsample {
    scale: usize,
}

impl Upsample {
    fn forward<T: WithDType>(&self, x: &[T], w: usize) -> Vec<T> {
        let s = self.scale;
        let mut out = vec![T::from_f64(0.0); x.len() * s * s];
        out.par_chunks_mut((w * s * s).max(1))
            .zip(x.par_chunks(w.max(1)))
            .for_each(|(o, row)| {
                let (first, rest) = o.split_at_mut(w * s);
                for (i, &v) in row.iter().enumerate() {
                    first[i * s..(i + 1) * s].fill(v);
                }
                for r in rest.chunks_mut(w * s) {
                    r.copy_from_slice(first);
                }
            });
        out
    }

    fn backward<T: WithDType>(&self, g: &[T], w: usize) -> Vec<T> {
        let s = self.scale;
        let mut dx = vec![T::from_f64(0.0); g.len() / (s * s)];
        dx.par_chunks_mut(w.max(1))
            .zip(g.par_chunks((w * s * s).max(1)))
            .for_each(|(d, rows)| {
                for r in rows.chunks(w * s) {
                    for (i, dv) in d.iter_mut().enumerate() {
                        for &v in &r[i * s..(i + 1) * s] {
                            *dv += v;
                        }
                    }
                }
            });
        dx
    }
}

impl CustomOp1 for Upsample {
    fn name(&self) -> &'static str {
        "unetpp-upsample-nearest2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let out = with_float_slice!(s, l, |x: T| self.forward::<T>(x, w));
        Ok((out, Shape::from((n, c, h * self.scale, w * self.scale))))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let grad = grad.to_dtype(arg.dtype())?.contiguous()?;
        Ok(Some(grad.apply_op1_no_bwd(&UpsampleBackward {
            scale: self.scale,
            shape: arg.shape().clone(),
        })?))
    }
}

struct UpsampleBackward {
    scale: usize,
    shape: Shape,
}

impl CustomOp1 for UpsampleBackward {
    fn name(&self) -> &'static str {
        "unetpp-upsample-nearest2d-backward"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, _, _, w) = self.shape.dims4()?;
        let up = Upsample { scale: self.scale };
        let dx = with_float_slice!(s, l, |g: T| up.backward::<T>(g, w));
        Ok((dx, self.shape.clone()))
    }
}

/// The composed max-pool, for tests: the path every non-CPU device takes.
#[doc(hidden)]
pub fn max_pool2d_generic(
    x: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    max_pool2d_on(x, (kernel, stride, padding), false)
}

/// The composed nearest up-sampling, for tests: the path every non-CPU device takes.
#[doc(hidden)]
pub fn upsample_nearest2d_generic(x: &Tensor, scale: usize) -> Result<Tensor> {
    upsample_nearest2d_on(x, scale, false)
}

/// `x` with `before` and `after` slices of −∞ along `dim`.
fn pad_neg_inf(x: &Tensor, dim: usize, before: usize, after: usize) -> Result<Tensor> {
    if before == 0 && after == 0 {
        return Ok(x.clone());
    }
    let neg = |len: usize| -> Result<Tensor> {
        let mut shape = x.dims().to_vec();
        shape[dim] = len;
        Ok(
            super::path::host_tensor(vec![f32::NEG_INFINITY], (), x.dtype(), x.device())?
                .broadcast_as(shape)?
                .contiguous()?,
        )
    };
    let mut parts = Vec::with_capacity(3);
    if before > 0 {
        parts.push(neg(before)?);
    }
    parts.push(x.clone());
    if after > 0 {
        parts.push(neg(after)?);
    }
    Ok(Tensor::cat(&parts, dim)?)
}
