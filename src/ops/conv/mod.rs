//! Convolutions with CPU kernels of their own, forward and backward: the functions the layers
//! call. Each checks its arguments, then runs unetpp's kernels for `f32` tensors on the CPU
//! (unless [`set_cpu_conv_algo`] chose candle's) and candle's ops otherwise. The files are
//! listed in the doc of [`crate::ops`].

mod algo;
mod args;
mod gemm;
mod op3x3;
mod shape;

// The kernels that write through raw pointers or call `kernel::matmul`: their `unsafe`
// blocks keep the invariants stated in `ops::kernel`.
#[allow(unsafe_code)]
mod general;
#[allow(unsafe_code)]
mod transposed;
#[allow(unsafe_code)]
mod winograd;
#[allow(unsafe_code)]
mod winograd_wgrad;

use candle_core::{DType, Layout, Tensor};

use crate::ops::kernel::contiguous;
use crate::{Error, Result};
use args::{add_bias, check_bias, conv_dims, fast_with_bias, kernel_bias};
use op3x3::{forward_planes, Conv3x3};
use shape::{Dims, Planes};

use algo::own_kernels;
pub use algo::{cpu_conv_algo, set_cpu_conv_algo, takes_fast_path, CpuConvAlgo};

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
    Ok(if relu { crate::ops::relu(&y)? } else { y })
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
        .all(|t| crate::ops::path::cpu_kernels(t.device()) && t.dtype() == DType::F32);
    if parts.len() == 1 || tracked || !on_cpu || !own_kernels() {
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
    let slices = guards
        .iter()
        .zip(&channels)
        .map(|((g, l), &ch)| Ok((cpu_f32(g, l)?, ch)))
        .collect::<Result<Vec<_>>>()?;
    let planes = Planes::new(slices, h * wd);
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
    let y = if own_kernels() {
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
    let y = if own_kernels() {
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

/// 2-D convolution with `stride` and zero `padding` on both axes (dilation 1, one group):
/// `x` is `(N, C, H, W)`, `w` is `(O, C, KH, KW)`, `bias` is `(O)`; the output is
/// `(N, O, (H + 2·padding − KH) / stride + 1, (W + 2·padding − KW) / stride + 1)`, as
/// PyTorch's `conv2d`. Differentiable in all three.
///
/// On the CPU with `f32` tensors (unless [`set_cpu_conv_algo`] chose [`CpuConvAlgo::Stock`]) it
/// runs unetpp's kernels, whose backward pass skips the input gradient when `x` needs none;
/// elsewhere candle's `conv2d`. Unlike candle's backward pass, the input gradient has the
/// input's shape whatever the remainders of `(size + 2·padding − k) / stride` on each axis:
/// candle's takes one `output_padding`, from the height, for both axes, so on its path an
/// input that needs a gradient is zero-padded at the bottom and right until both remainders
/// are zero, and the extra outputs (which only those zeros reach) are cut off.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::randn(0f32, 1., (1, 3, 15, 12), &Device::Cpu)?;
/// let w = Tensor::randn(0f32, 1., (4, 3, 7, 7), &Device::Cpu)?;
/// let y = unetpp::ops::conv2d(&x, &w, None, 2, 3)?;
/// let reference = x.conv2d(&w, 3, 2, 1, 1)?;
/// assert_eq!(y.dims(), &[1, 4, 8, 6]);
/// let diff = (y - reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
/// assert!(diff < 1e-4);
/// # Ok::<(), unetpp::Error>(())
/// ```
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let ([_, _, h, wd], [o, _, kh, kw]) = conv_dims("conv2d", x, w)?;
    if stride == 0 {
        return Err(Error::config("stride", "must be at least 1"));
    }
    if h == 0 || wd == 0 {
        return Err(Error::Shape(format!(
            "conv2d needs a non-empty image, got {:?}",
            x.dims()
        )));
    }
    let padded = |size: usize| padding.checked_mul(2).and_then(|p| p.checked_add(size));
    let fits = match (padded(h), padded(wd)) {
        (Some(ph), Some(pw)) => kh > 0 && kw > 0 && ph >= kh && pw >= kw,
        _ => false,
    };
    if !fits {
        return Err(Error::Shape(format!(
            "conv2d: a {kh}x{kw} kernel does not fit a {h}x{wd} input padded by {padding}"
        )));
    }
    check_bias("conv2d", bias, o)?;
    if fast_with_bias(x, w, bias) {
        let b = kernel_bias(bias, o, x.device())?;
        return Ok(x.contiguous()?.apply_op3(
            &w.contiguous()?,
            &b,
            general::Conv {
                stride,
                pad: padding,
            },
        )?);
    }
    let (rh, rw) = (
        (h + 2 * padding - kh) % stride,
        (wd + 2 * padding - kw) % stride,
    );
    let y = if rh == rw || !(x.track_op() || w.track_op()) {
        x.conv2d(w, padding, stride, 1, 1)?
    } else {
        let (oh, ow) = (
            (h + 2 * padding - kh) / stride + 1,
            (wd + 2 * padding - kw) / stride + 1,
        );
        x.pad_with_zeros(2, 0, (stride - rh) % stride)?
            .pad_with_zeros(3, 0, (stride - rw) % stride)?
            .conv2d(w, padding, stride, 1, 1)?
            .narrow(2, 0, oh)?
            .narrow(3, 0, ow)?
    };
    add_bias(y, bias)
}
