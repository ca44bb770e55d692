//! Fast CPU convolution for the 3×3, stride-1, padding-1 convolutions that make up almost
//! all of a UNet++'s work.
//!
//! candle's CPU `conv2d` spends most of its time in scalar im2col loops around its GEMM. Here
//! the input is unfolded a band of rows at a time with whole-row copies into a buffer that
//! stays in cache, and each band goes through the `gemm` crate's kernels (the ones candle's
//! own matmul uses); bands run in parallel on rayon's pool, each GEMM single-threaded, so
//! threads are not oversubscribed. The backward pass reuses the same kernel for the input
//! gradient (a 3×3 convolution with the flipped, transposed kernel) and unfolds the same bands
//! for the weight gradient.
//!
//! [`conv3x3`] takes this path for contiguous-or-not `f32` tensors on the CPU and candle's
//! `conv2d` otherwise (other devices, other dtypes); [`set_fast_cpu_conv`] turns the fast path
//! off, for comparisons.

mod general;
mod transposed;
mod winograd;
mod winograd_wgrad;

use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};

use super::kernel::{banded_forward, banded_weight_grad, bands, contiguous, map2, Bands, OutGeom};
use crate::{Error, Result};

pub use general::conv2d;

/// Which kernels compute 3×3 convolutions on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuConvAlgo {
    /// candle's own `conv2d` / `conv_transpose2d` (the reference).
    Stock,
    /// Banded unfolding and GEMM (forward, input and weight gradients).
    Gemm,
    /// Winograd F(4×4, 3×3) for the forward pass and the input gradient (4× fewer
    /// multiply-adds) wherever it is faster than [`CpuConvAlgo::Gemm`] (32 input channels or
    /// more on maps of at least 64×64, as measured by `examples/bench_conv.rs`), and
    /// Winograd F(3×3, 2×2) for the weight gradient (2.25× fewer); GEMM elsewhere. The
    /// default.
    Winograd,
}

/// The algorithm's number, or [`UNSET`] until the first call reads `UNETPP_CPU_CONV`.
static CPU_CONV_ALGO: AtomicU8 = AtomicU8::new(UNSET);
const UNSET: u8 = u8::MAX;

/// Chooses the CPU convolution kernels for the whole process. The default is
/// [`CpuConvAlgo::Winograd`], or what the environment variable `UNETPP_CPU_CONV` names
/// (`stock`, `gemm` or `winograd`; read once, at the first convolution), so that a whole
/// program or test suite can be run on each kernel without changing its code:
///
/// ```sh
/// UNETPP_CPU_CONV=stock cargo test --release
/// ```
pub fn set_cpu_conv_algo(algo: CpuConvAlgo) {
    CPU_CONV_ALGO.store(algo as u8, Ordering::Relaxed);
}

/// The CPU convolution kernels in use (see [`set_cpu_conv_algo`]).
pub fn cpu_conv_algo() -> CpuConvAlgo {
    let mut v = CPU_CONV_ALGO.load(Ordering::Relaxed);
    if v == UNSET {
        v = algo_from_env() as u8;
        // A concurrent `set_cpu_conv_algo` wins over the environment.
        v = match CPU_CONV_ALGO.compare_exchange(UNSET, v, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => v,
            Err(current) => current,
        };
    }
    match v {
        0 => CpuConvAlgo::Stock,
        1 => CpuConvAlgo::Gemm,
        _ => CpuConvAlgo::Winograd,
    }
}

/// `UNETPP_CPU_CONV`'s choice; an unknown value is reported on standard error and ignored.
fn algo_from_env() -> CpuConvAlgo {
    match std::env::var("UNETPP_CPU_CONV") {
        Ok(v) => match v.to_ascii_lowercase().as_str() {
            "stock" => CpuConvAlgo::Stock,
            "gemm" => CpuConvAlgo::Gemm,
            "winograd" | "" => CpuConvAlgo::Winograd,
            other => {
                eprintln!(
                    "unetpp: UNETPP_CPU_CONV={other:?} is not one of stock, gemm, winograd; \
                     using winograd"
                );
                CpuConvAlgo::Winograd
            }
        },
        Err(_) => CpuConvAlgo::Winograd,
    }
}

/// Turns the fast CPU convolution path on (Winograd, the default) or off (candle's kernels).
pub fn set_fast_cpu_conv(on: bool) {
    set_cpu_conv_algo(if on {
        CpuConvAlgo::Winograd
    } else {
        CpuConvAlgo::Stock
    });
}

/// Whether a fast CPU convolution path is on.
pub fn fast_cpu_conv() -> bool {
    cpu_conv_algo() != CpuConvAlgo::Stock
}

/// Whether [`conv3x3`] would take the fast path for these tensors.
pub fn takes_fast_path(x: &Tensor, w: &Tensor) -> bool {
    fast_cpu_conv()
        && x.device().is_cpu()
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && w.device().is_cpu()
}

/// 3×3 convolution, stride 1, padding 1 (output size = input size): `x` is `(N, C, H, W)`,
/// `w` is `(O, C, 3, 3)`, `bias` is `(O)`. Differentiable in `x`, `w` and `bias`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::randn(0f32, 1., (1, 2, 5, 6), &Device::Cpu)?;
/// let w = Tensor::randn(0f32, 1., (4, 2, 3, 3), &Device::Cpu)?;
/// let y = unetpp::ops::conv3x3(&x, &w, None)?;
/// let reference = x.conv2d(&w, 1, 1, 1, 1)?;
/// let diff = (y - reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
/// assert!(diff < 1e-4);
/// # Ok::<(), unetpp::Error>(())
/// ```
pub fn conv3x3(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    conv3x3_fused(x, w, bias, false)
}

/// [`conv3x3`] followed by a ReLU when `relu` is set, fused into one pass on the fast path
/// (bias and activation are applied while the output is still in cache, and the backward
/// pass masks the gradient in one sweep).
pub fn conv3x3_fused(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, relu: bool) -> Result<Tensor> {
    let (_, [o, _, kh, kw]) = conv_dims("conv3x3", x, w)?;
    if (kh, kw) != (3, 3) {
        return Err(Error::Shape(format!(
            "conv3x3 expects an (O, C, 3, 3) kernel, got {:?}",
            w.dims()
        )));
    }
    check_bias("conv3x3", bias, o)?;
    if fast_with_bias(x, w, bias) {
        let b = kernel_bias(bias, o, x.device())?;
        return Ok(x
            .contiguous()?
            .apply_op3(&w.contiguous()?, &b, Conv3x3 { relu })?);
    }
    let y = add_bias(x.conv2d(w, 1, 1, 1, 1)?, bias)?;
    Ok(if relu { y.relu()? } else { y })
}

/// The dimensions of `op`'s `(N, C, H, W)` input and `(O, C, KH, KW)` kernel, or an error
/// naming what does not fit.
pub(super) fn conv_dims(op: &str, x: &Tensor, w: &Tensor) -> Result<([usize; 4], [usize; 4])> {
    let (n, c, h, wd) = x.dims4().map_err(|_| {
        Error::Shape(format!(
            "{op} expects an (N, C, H, W) input, got {:?}",
            x.dims()
        ))
    })?;
    let (o, wc, kh, kw) = w.dims4().map_err(|_| {
        Error::Shape(format!(
            "{op} expects an (O, C, KH, KW) kernel, got {:?}",
            w.dims()
        ))
    })?;
    if wc != c {
        return Err(Error::Shape(format!(
            "{op}: kernel {:?} does not fit an input with {c} channels",
            w.dims()
        )));
    }
    Ok(([n, c, h, wd], [o, wc, kh, kw]))
}

/// Checks that `bias`, if any, has one value per output channel of `op`.
pub(super) fn check_bias(op: &str, bias: Option<&Tensor>, o: usize) -> Result<()> {
    match bias {
        Some(b) if b.dims() != [o] => Err(Error::Shape(format!(
            "{op}: bias {:?} does not fit {o} output channels",
            b.dims()
        ))),
        _ => Ok(()),
    }
}

/// Whether the CPU kernels take these tensors (see [`takes_fast_path`]), bias included.
pub(super) fn fast_with_bias(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> bool {
    takes_fast_path(x, w) && bias.is_none_or(|b| b.dtype() == DType::F32 && b.device().is_cpu())
}

/// The bias as the CPU kernels read it: contiguous, or `o` zeros when there is none.
pub(super) fn kernel_bias(
    bias: Option<&Tensor>,
    o: usize,
    device: &candle_core::Device,
) -> Result<Tensor> {
    Ok(match bias {
        Some(b) => b.contiguous()?,
        None => Tensor::zeros(o, DType::F32, device)?,
    })
}

pub(super) fn add_bias(y: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    match bias {
        Some(b) if fast_cpu_conv() => super::elementwise::bias_add(&y, b),
        Some(b) => Ok(y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)?),
        None => Ok(y),
    }
}

/// [`conv3x3_fused`] of the channel-wise concatenation of `parts` (each `(N, C_k, H, W)`).
///
/// When nothing needs a gradient (inference) and the fast CPU path applies, the kernels read
/// every part where it lies and the concatenation is never built: for the dense skips of a
/// UNet++ node that saves a copy of all its inputs (and the fresh memory it would fill).
/// Otherwise the parts are concatenated and passed to [`conv3x3_fused`], which records the
/// graph as usual.
pub fn conv3x3_concat(
    parts: &[Tensor],
    w: &Tensor,
    bias: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    let first = parts
        .first()
        .ok_or_else(|| Error::Shape("conv3x3_concat: no input".into()))?;
    let tracked = parts
        .iter()
        .chain(std::iter::once(w))
        .chain(bias)
        .any(|t| t.track_op());
    let on_cpu = parts
        .iter()
        .chain(std::iter::once(w))
        .chain(bias)
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32);
    if parts.len() == 1 || tracked || !on_cpu || !fast_cpu_conv() {
        let x = if parts.len() == 1 {
            first.clone()
        } else {
            Tensor::cat(parts, 1)?
        };
        return conv3x3_fused(&x, w, bias, relu);
    }
    let (n, _, h, wd) = first.dims4()?;
    let mut channels = Vec::with_capacity(parts.len());
    for p in parts {
        let (pn, pc, ph, pw) = p.dims4()?;
        if (pn, ph, pw) != (n, h, wd) {
            return Err(Error::Shape(format!(
                "conv3x3_concat: parts {:?} and {:?} differ outside the channel dimension",
                first.dims(),
                p.dims()
            )));
        }
        channels.push(pc);
    }
    let c: usize = channels.iter().sum();
    let (o, wc, kh, kw) = w.dims4()?;
    if (wc, kh, kw) != (c, 3, 3) {
        return Err(Error::Shape(format!(
            "conv3x3_concat: kernel {:?} does not fit inputs with {c} channels in all",
            w.dims()
        )));
    }
    check_bias("conv3x3_concat", bias, o)?;
    let b = kernel_bias(bias, o, first.device())?;
    let parts: Vec<Tensor> = parts
        .iter()
        .map(|p| p.contiguous())
        .collect::<candle_core::Result<_>>()?;
    let w = w.contiguous()?;
    let guards: Vec<_> = parts.iter().map(|p| p.storage_and_layout()).collect();
    let (wg, wl) = w.storage_and_layout();
    let (bg, bl) = b.storage_and_layout();
    let mut planes = Planes {
        parts: Vec::with_capacity(parts.len()),
        hw: h * wd,
    };
    for ((g, l), &ch) in guards.iter().zip(&channels) {
        planes.parts.push((cpu_f32(g, l)?, ch));
    }
    let d = Dims { n, c, h, w: wd, o };
    let out = forward_planes(&planes, cpu_f32(&wg, wl)?, cpu_f32(&bg, bl)?, relu, d);
    Ok(Tensor::from_vec(out, (n, o, h, wd), first.device())?)
}

fn cpu_f32<'a>(g: &'a candle_core::Storage, l: &Layout) -> Result<&'a [f32]> {
    match g {
        candle_core::Storage::Cpu(s) => Ok(contiguous::<f32>(s, l)?),
        _ => Err(Error::Shape("conv3x3_concat: expected CPU tensors".into())),
    }
}

/// 1×1 convolution: `x` is `(N, C, H, W)`, `w` is `(O, C, 1, 1)`, `bias` is `(O)`.
///
/// With the fast path on (the default) it is one batched matrix product, `(O × C) · (C × HW)`,
/// on any device; its backward is two more. Off, it is candle's `conv2d`.
pub fn conv1x1(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let (o, wc, kh, kw) = w.dims4()?;
    if (wc, kh, kw) != (c, 1, 1) {
        return Err(Error::Shape(format!(
            "conv1x1: kernel {:?} does not fit an input with {c} channels",
            w.dims()
        )));
    }
    let y = if fast_cpu_conv() {
        w.reshape((o, c))?
            .broadcast_matmul(&x.reshape((n, c, h * wd))?)?
            .reshape((n, o, h, wd))?
    } else {
        x.conv2d(w, 0, 1, 1, 1)?
    };
    add_bias(y, bias)
}

/// 2×2 transposed convolution with stride 2 (the paper's up-sampling `U`): `x` is
/// `(N, C, H, W)`, `w` is `(C, O, 2, 2)` (PyTorch's layout), `bias` is `(O)`; the output is
/// `(N, O, 2H, 2W)`.
///
/// With the fast path on (the default) it is one matrix product, `(4O × C) · (C × HW)`,
/// followed by interleaving the four kernel taps into the output: on the CPU in one pass over
/// bands of rows, on other devices composed from candle ops. Its backward is matrix products
/// too, where candle's transposed convolution runs a per-pixel loop. Off, it is candle's
/// `conv_transpose2d`.
pub fn conv_transpose2x2(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let (wc, o, kh, kw) = w.dims4()?;
    if (wc, kh, kw) != (c, 2, 2) {
        return Err(Error::Shape(format!(
            "conv_transpose2x2: kernel {:?} does not fit an input with {c} channels",
            w.dims()
        )));
    }
    check_bias("conv_transpose2x2", bias, o)?;
    if fast_with_bias(x, w, bias) {
        let b = kernel_bias(bias, o, x.device())?;
        return Ok(x.contiguous()?.apply_op3(
            &w.contiguous()?,
            &b,
            transposed::ConvTranspose2x2,
        )?);
    }
    let y = if fast_cpu_conv() {
        // Row o·4 + ky·2 + kx of the product holds tap (ky, kx) of output channel o.
        w.reshape((c, o * 4))?
            .t()?
            .broadcast_matmul(&x.reshape((n, c, h * wd))?)?
            .reshape((n, o, 2, 2, h, wd))?
            .permute((0, 1, 4, 2, 5, 3))?
            .reshape((n, o, 2 * h, 2 * wd))?
    } else {
        x.conv_transpose2d(w, 0, 0, 2, 1)?
    };
    add_bias(y, bias)
}

/// The input planes of a convolution: one contiguous `(N, C_k, H, W)` buffer per part, their
/// channels concatenated in order. An ordinary input is a single part; the dense skips of a
/// UNet++ node can be read where they lie instead of being concatenated first.
pub(super) struct Planes<'a> {
    parts: Vec<(&'a [f32], usize)>,
    hw: usize,
}

impl<'a> Planes<'a> {
    /// One `(N, C, H, W)` buffer with `hw = H·W`.
    pub(super) fn single(x: &'a [f32], c: usize, hw: usize) -> Self {
        Self {
            parts: vec![(x, c)],
            hw,
        }
    }

    /// The channel planes of image `img`, in order.
    pub(super) fn image(&self, img: usize) -> impl Iterator<Item = &'a [f32]> + '_ {
        let hw = self.hw;
        self.parts.iter().flat_map(move |&(data, ch)| {
            data[img * ch * hw..(img + 1) * ch * hw].chunks_exact(hw.max(1))
        })
    }
}

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

/// Dimensions of a 3×3 convolution.
#[derive(Debug, Clone, Copy)]
pub(super) struct Dims {
    pub(super) n: usize,
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) o: usize,
}

impl Dims {
    /// Bands of output rows with about 2 MiB of unfolded input each.
    fn bands(&self) -> Bands {
        bands(self.n, self.h, self.c * 9 * self.w, 1 << 19)
    }

    /// The output as the banded kernels see it.
    fn out_geom(&self) -> OutGeom {
        OutGeom {
            n: self.n,
            o: self.o,
            rows: self.h,
            cols: self.w,
            k: self.c * 9,
        }
    }
}

/// `y[n, o] = b[o] + Σ_c w[o, c] ⋆ x[n, c]` for 3×3 kernels, stride 1, padding 1, then
/// `max(y, 0)` when `relu`.
fn forward(x: &Planes, wt: &[f32], bias: &[f32], relu: bool, d: Dims) -> Vec<f32> {
    let Bands { rows, tasks, par } = d.bands();
    banded_forward(
        d.out_geom(),
        (rows, &tasks, par),
        wt,
        bias,
        relu,
        |img, y0, y1, cols| unfold_band(x.image(img), d.c, d.h, d.w, y0, y1, cols),
    )
}

/// The forward pass with the algorithm the process has chosen for this shape.
fn forward_planes(x: &Planes, wt: &[f32], bias: &[f32], relu: bool, d: Dims) -> Vec<f32> {
    if d.n * d.h * d.w == 0 {
        return Vec::new();
    }
    if cpu_conv_algo() == CpuConvAlgo::Winograd && winograd::pays(&d) {
        winograd::forward(x, wt, bias, relu, d)
    } else {
        forward(x, wt, bias, relu, d)
    }
}

/// `dw[o, c·9] = Σ_n Σ_pixels dy[n, o, pixel] · unfold(x)[n, c·9, pixel]`.
fn weight_grad(x: &[f32], dy: &[f32], d: Dims) -> Vec<f32> {
    let p = d.h * d.w;
    let Bands { rows, tasks, par } = d.bands();
    banded_weight_grad(
        d.out_geom(),
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

/// The kernel flipped in space with input and output channels swapped: the kernel whose
/// 3×3 convolution gives the input gradient.
fn flip_transpose(w: &Tensor) -> candle_core::Result<Tensor> {
    let (o, c, _, _) = w.dims4()?;
    let rev = Tensor::from_vec((0..9u32).rev().collect::<Vec<_>>(), 9, w.device())?;
    w.transpose(0, 1)?
        .contiguous()?
        .reshape((c, o, 9))?
        .index_select(&rev, 2)?
        .reshape((c, o, 3, 3))
}

/// The forward op: `(x, w, b) ↦ x ⋆ w + b`, then a ReLU when `relu`.
struct Conv3x3 {
    relu: bool,
}

impl CustomOp3 for Conv3x3 {
    fn name(&self) -> &'static str {
        "unetpp-conv3x3"
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
        let (o, _, _, _) = l2.shape().dims4()?;
        let x = contiguous::<f32>(s1, l1)?;
        let wt = contiguous::<f32>(s2, l2)?;
        let b = contiguous::<f32>(s3, l3)?;
        let d = Dims { n, c, h, w, o };
        let out = forward_planes(&Planes::single(x, c, h * w), wt, b, self.relu, d);
        Ok((CpuStorage::F32(out), Shape::from((n, o, h, w))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let grad = if self.relu {
            grad.apply_op2_no_bwd(&res.contiguous()?, &ReluMask)?
        } else {
            grad
        };
        let (_, c, _, _) = x.dims4()?;
        let no_bias = Tensor::zeros(c, DType::F32, x.device())?;
        // The image at the bottom of a network needs no gradient: skip that convolution.
        let dx = if x.track_op() {
            Some(grad.apply_op3(&flip_transpose(w)?, &no_bias, Conv3x3 { relu: false })?)
        } else {
            None
        };
        let dw = x.contiguous()?.apply_op2(&grad, Conv3x3WeightGrad)?;
        let db = super::elementwise::channel_sums(&grad)?;
        Ok((dx, Some(dw), Some(db)))
    }
}

/// `(g, y) ↦ g · [y > 0]`: the gradient through a ReLU whose output is `y`.
pub(super) struct ReluMask;

impl CustomOp2 for ReluMask {
    fn name(&self) -> &'static str {
        "unetpp-relu-mask"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = contiguous::<f32>(s1, l1)?;
        let y = contiguous::<f32>(s2, l2)?;
        let out = map2(g, y, |g, y| if y <= 0.0 { 0.0 } else { g });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// The weight gradient: `(x, dy) ↦ dw`.
struct Conv3x3WeightGrad;

impl CustomOp2 for Conv3x3WeightGrad {
    fn name(&self) -> &'static str {
        "unetpp-conv3x3-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let (_, o, _, _) = l2.shape().dims4()?;
        let x = contiguous::<f32>(s1, l1)?;
        let dy = contiguous::<f32>(s2, l2)?;
        let d = Dims { n, c, h, w, o };
        let dw = if cpu_conv_algo() == CpuConvAlgo::Winograd && winograd_wgrad::pays(&d) {
            winograd_wgrad::weight_grad(x, dy, d)
        } else {
            weight_grad(x, dy, d)
        };
        Ok((CpuStorage::F32(dw), Shape::from((o, c, 3, 3))))
    }
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
