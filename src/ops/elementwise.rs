//! Per-channel and element-wise ops that the convolutions and residual blocks share, each in
//! one pass on the CPU for `f32`: bias addition ([`bias_add`]) and its gradient
//! (`channel_sums`), a residual addition with its ReLU ([`add_relu`]), the gradient through
//! a ReLU (`relu_mask`), and the leaky ReLU ([`leaky_relu`]) with its gradient.
//!
//! candle's `broadcast_add` of a `(1, C, 1, 1)` bias is fine forward, but its backward sums
//! the gradient over dimensions 0, 2 and 3, which candle's CPU backend does element by
//! element with an index division each; here it is a contiguous sum per channel plane.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::kernel::{contiguous, map1, map2};
use super::simd::simd_fn;
use crate::{Error, Result};

/// `max(x, 0)`, whose gradient is 0 where `x ≤ 0` and 1 where `x > 0`: PyTorch's. candle's
/// `Tensor::relu` passes the gradient at exactly 0 as well, so a zero pre-activation (a
/// padded border, a dead unit, a tie in `a + b`) would train differently; the crate calls
/// this instead (a test greps `src/` for candle's).
///
/// Untracked tensors (inference) take candle's `relu`. Tracked ones take one kernel forward
/// and one backward on the CPU for `f32`; elsewhere they select `x` or 0 by the `u8` mask
/// `x ≤ 0` (kept for the backward pass: a quarter of an `f32` map). NaN stays NaN, as in
/// PyTorch.
///
/// ```
/// use candle_core::{Device, Var};
///
/// let x = Var::new(&[-1f32, 0., 2.], &Device::Cpu)?;
/// let y = unetpp::ops::relu(x.as_tensor())?;
/// let g = y.sum_all()?.backward()?;
/// assert_eq!(g.get(x.as_tensor()).unwrap().to_vec1::<f32>()?, [0., 0., 1.]);
/// # Ok::<(), unetpp::Error>(())
/// ```
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        return Ok(x.relu()?); // candle-relu-ok: no gradient is taken
    }
    if super::path::cpu_kernels(x.device()) && x.dtype() == DType::F32 {
        return Ok(x.contiguous()?.apply_op1(Relu)?);
    }
    let zero = Tensor::zeros((), x.dtype(), x.device())?.broadcast_as(x.shape())?;
    Ok(x.le(0.0)?.where_cond(&zero, x)?)
}

/// `x` where `x > 0`, `slope · x` elsewhere, with PyTorch's gradient (1 where `x > 0`,
/// `slope` elsewhere, exactly 0 included): one kernel forward and one backward on the CPU for
/// `f32`, where candle's `leaky_relu` takes five element-wise ops each way. Elsewhere it is
/// composed from candle ops with the same rule. NaN stays NaN.
///
/// ```
/// use candle_core::{Device, Var};
///
/// let x = Var::new(&[-2f32, 0., 3.], &Device::Cpu)?;
/// let y = unetpp::ops::leaky_relu(x.as_tensor(), 0.1)?;
/// assert_eq!(y.to_vec1::<f32>()?, [-0.2, 0., 3.]);
/// let g = y.sum_all()?.backward()?;
/// assert_eq!(g.get(x.as_tensor()).unwrap().to_vec1::<f32>()?, [0.1, 0.1, 1.]);
/// # Ok::<(), unetpp::Error>(())
/// ```
pub fn leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor> {
    if !slope.is_finite() {
        return Err(Error::config(
            "slope",
            format!("must be finite, got {slope}"),
        ));
    }
    if super::path::cpu_kernels(x.device()) && x.dtype() == DType::F32 {
        return Ok(x.contiguous()?.apply_op1(LeakyRelu {
            slope: slope as f32,
        })?);
    }
    let positive = x.gt(0.0)?;
    Ok(positive.where_cond(x, &(x * slope)?)?)
}

/// `y[n, c, h, w] + b[c]` for `y` of shape `(N, C, H, W)` and `b` of shape `(C)`.
/// Differentiable in both.
pub fn bias_add(y: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (_, c, _, _) = y.dims4()?;
    if b.dims() != [c] {
        return Err(Error::Shape(format!(
            "bias {:?} does not fit a map with {c} channels",
            b.dims()
        )));
    }
    if super::path::cpu_kernels(y.device()) && y.dtype() == DType::F32 && b.dtype() == y.dtype() {
        Ok(y.contiguous()?.apply_op2(&b.contiguous()?, BiasAdd)?)
    } else if b.track_op() && matches!(y.dtype(), DType::F16 | DType::BF16) {
        // The bias's gradient sums the whole map: in half precision candle would sum in half
        // precision (5% off over 2048 pixels in f16); add in f32 so that it sums in f32.
        let b32 = b.to_dtype(DType::F32)?.reshape((1, c, 1, 1))?;
        Ok(y.to_dtype(DType::F32)?
            .broadcast_add(&b32)?
            .to_dtype(y.dtype())?)
    } else {
        Ok(y.broadcast_add(&b.reshape((1, c, 1, 1))?)?)
    }
}

/// `Σ_{n,h,w} g[n, c, h, w]` for every channel `c`: the gradient of a per-channel bias.
pub(crate) fn channel_sums(g: &Tensor) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = g.dims4()?;
    if super::path::cpu_kernels(g.device()) && g.dtype() == DType::F32 {
        g.contiguous()?.apply_op1_no_bwd(&ChannelSum)
    } else {
        g.reshape((n, c, h * w))?.sum(2)?.sum(0)
    }
}

struct BiasAdd;

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "unetpp-bias-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, c, h, w) = l1.shape().dims4()?;
        let (y, b) = (contiguous::<f32>(s1, l1)?, contiguous::<f32>(s2, l2)?);
        let plane = (h * w).max(1);
        let mut out = y.to_vec();
        out.par_chunks_mut(plane)
            .enumerate()
            .for_each(|(i, p)| add_scalar(p, b[i % c]));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _y: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.clone()), Some(channel_sums(grad)?)))
    }
}

struct ChannelSum;

impl CustomOp1 for ChannelSum {
    fn name(&self) -> &'static str {
        "unetpp-channel-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let g = contiguous::<f32>(s, l)?;
        let plane = h * w;
        let sums: Vec<f32> = (0..c)
            .into_par_iter()
            .map(|ci| {
                (0..n)
                    .map(|ni| {
                        let start = (ni * c + ci) * plane;
                        lane_sum(&g[start..start + plane])
                    })
                    .sum()
            })
            .collect();
        Ok((CpuStorage::F32(sums), Shape::from(c)))
    }
}

/// `max(a + b, 0)` for two tensors of the same shape (a residual connection and its ReLU),
/// differentiable in both: one pass forward and one backward on the CPU for `f32`, where
/// candle's `(a + b).relu()` takes two forward and about six backward.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dims() != b.dims() {
        return Err(Error::Shape(format!(
            "add_relu: shapes {:?} and {:?} differ",
            a.dims(),
            b.dims()
        )));
    }
    let fast =
        super::path::cpu_kernels(a.device()) && a.dtype() == DType::F32 && b.dtype() == a.dtype();
    if fast {
        Ok(a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)?)
    } else {
        relu(&(a + b)?)
    }
}

struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "unetpp-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous::<f32>(s, l)?;
        // `x ≤ 0` is false for NaN, which stays.
        let out = map1(x, relu_chunk);
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // The gradient where the output is positive (or NaN): none at exactly 0.
        Ok(Some(
            grad.contiguous()?
                .apply_op2_no_bwd(&res.contiguous()?, &relu_mask())?,
        ))
    }
}

struct LeakyRelu {
    slope: f32,
}

impl CustomOp1 for LeakyRelu {
    fn name(&self) -> &'static str {
        "unetpp-leaky-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous::<f32>(s, l)?;
        let slope = self.slope;
        let out = map1(x, |o, x| leaky_relu_chunk(o, x, slope));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op2_no_bwd(
            &x.contiguous()?,
            &leaky_mask(self.slope),
        )?))
    }
}

struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "unetpp-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (a, b) = (contiguous::<f32>(s1, l1)?, contiguous::<f32>(s2, l2)?);
        let out = map2(a, b, add_relu_chunk);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // The gradient where the output is positive (PyTorch's rule: none at exactly 0).
        let g = grad
            .contiguous()?
            .apply_op2_no_bwd(&res.contiguous()?, &relu_mask())?;
        Ok((a.track_op().then(|| g.clone()), b.track_op().then_some(g)))
    }
}

/// `o = f(a, b)` element by element over two `f32` tensors of one shape, on the CPU, with no
/// backward pass of its own: the gradients through the ReLUs.
pub(super) struct Elementwise2<F> {
    name: &'static str,
    f: F,
}

/// A chunk kernel of [`Elementwise2`]: `f(out, a, b)` on matching chunks.
pub(super) trait Chunk2: Fn(&mut [f32], &[f32], &[f32]) + Send + Sync {}

impl<F: Fn(&mut [f32], &[f32], &[f32]) + Send + Sync> Chunk2 for F {}

/// `(g, y) ↦ g · [y > 0]`: the gradient through a ReLU whose output is `y`.
pub(super) fn relu_mask() -> Elementwise2<impl Chunk2> {
    Elementwise2 {
        name: "unetpp-relu-mask",
        f: relu_mask_chunk,
    }
}

/// `(g, x) ↦ g` where `x > 0`, `slope · g` elsewhere: the gradient through a leaky ReLU.
fn leaky_mask(slope: f32) -> Elementwise2<impl Chunk2> {
    Elementwise2 {
        name: "unetpp-leaky-relu-mask",
        f: move |o: &mut [f32], g: &[f32], x: &[f32]| leaky_mask_chunk(o, g, x, slope),
    }
}

impl<F: Chunk2> CustomOp2 for Elementwise2<F> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (a, b) = (contiguous::<f32>(s1, l1)?, contiguous::<f32>(s2, l2)?);
        let out = map2(a, b, &self.f);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

simd_fn! {
    /// `o = max(x, 0)`, NaN kept (`x ≤ 0` is false for NaN).
    fn relu_chunk(o: &mut [f32], x: &[f32]) {
        for (o, &v) in o.iter_mut().zip(x) {
            *o = if v <= 0.0 { 0.0 } else { v };
        }
    }
}

simd_fn! {
    /// `o = x` where `x > 0`, `slope · x` elsewhere (NaN stays NaN).
    fn leaky_relu_chunk(o: &mut [f32], x: &[f32], slope: f32) {
        for (o, &v) in o.iter_mut().zip(x) {
            *o = if v > 0.0 { v } else { v * slope };
        }
    }
}

simd_fn! {
    /// `o = g` where `x > 0`, `slope · g` elsewhere.
    fn leaky_mask_chunk(o: &mut [f32], g: &[f32], x: &[f32], slope: f32) {
        for ((o, &g), &x) in o.iter_mut().zip(g).zip(x) {
            *o = if x > 0.0 { g } else { g * slope };
        }
    }
}

simd_fn! {
    /// `o = max(a + b, 0)`.
    fn add_relu_chunk(o: &mut [f32], a: &[f32], b: &[f32]) {
        for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
            *o = (a + b).max(0.0);
        }
    }
}

simd_fn! {
    /// `o = g · [y > 0]` (NaN in `y` lets the gradient through).
    fn relu_mask_chunk(o: &mut [f32], g: &[f32], y: &[f32]) {
        for ((o, &g), &y) in o.iter_mut().zip(g).zip(y) {
            *o = if y <= 0.0 { 0.0 } else { g };
        }
    }
}

simd_fn! {
    /// `p += v`.
    fn add_scalar(p: &mut [f32], v: f32) {
        p.iter_mut().for_each(|x| *x += v);
    }
}

simd_fn! {
    /// `Σ p`, as 8 partial sums added at the end (the same order at every level).
    fn lane_sum(p: &[f32]) -> f32 {
        let mut acc = [0f32; 8];
        let mut it = p.chunks_exact(8);
        for v in &mut it {
            for k in 0..8 {
                acc[k] += v[k];
            }
        }
        acc.iter().sum::<f32>() + it.remainder().iter().sum::<f32>()
    }
}
