//! Bilinear resizing of `(N, C, H, W)` maps, with a backward pass.
//!
//! candle's `upsample_bilinear2d` records no gradient, so a network that upsamples bilinearly
//! could not train. [`resize_bilinear`] computes what PyTorch's
//! `F.interpolate(x, size, mode="bilinear", align_corners=..)` computes, forward and backward.
//!
//! On the CPU it runs a custom op (a direct kernel, and a second kernel for the gradient). On
//! other devices it composes the same interpolation from two matrix products with
//! interpolation matrices, which every candle device can differentiate; the results agree to
//! rounding.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor, WithDType};

use super::kernel::contiguous;
use crate::{Error, Result};

/// Resizes `x` of shape `(N, C, H, W)` to `(N, C, out_h, out_w)` by bilinear interpolation.
///
/// `align_corners` has PyTorch's meaning: with `true` the corner pixels of input and output are
/// aligned (the `NestedUNet` convention), with `false` pixel centres are (the default of
/// `torch.nn.Upsample`).
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::arange(0f32, 4., &Device::Cpu).unwrap().reshape((1, 1, 2, 2)).unwrap();
/// let y = unetpp::ops::resize_bilinear(&x, 4, 4, true).unwrap();
/// assert_eq!(y.dims(), &[1, 1, 4, 4]);
/// ```
pub fn resize_bilinear(
    x: &Tensor,
    out_h: usize,
    out_w: usize,
    align_corners: bool,
) -> Result<Tensor> {
    let (_, _, in_h, in_w) = x.dims4().map_err(|_| {
        Error::Shape(format!(
            "resize_bilinear expects a (N, C, H, W) tensor, got shape {:?}",
            x.dims()
        ))
    })?;
    if in_h == 0 || in_w == 0 || out_h == 0 || out_w == 0 {
        return Err(Error::Shape(format!(
            "resize_bilinear needs non-empty sizes, got {in_h}x{in_w} -> {out_h}x{out_w}"
        )));
    }
    if super::path::cpu_kernels(x.device()) {
        let op = BilinearResize {
            out_h,
            out_w,
            align_corners,
        };
        match x.dtype() {
            DType::F32 | DType::F64 => Ok(x.contiguous()?.apply_op1(op)?),
            dt => Ok(x
                .to_dtype(DType::F32)?
                .contiguous()?
                .apply_op1(op)?
                .to_dtype(dt)?),
        }
    } else {
        resize_bilinear_composed(x, out_h, out_w, align_corners)
    }
}

/// The same interpolation as [`resize_bilinear`] built from matrix products, for any device.
///
/// Exposed so that its agreement with the CPU kernel can be tested; [`resize_bilinear`] picks
/// it by itself on GPUs.
pub fn resize_bilinear_composed(
    x: &Tensor,
    out_h: usize,
    out_w: usize,
    align_corners: bool,
) -> Result<Tensor> {
    let (n, c, in_h, in_w) = x.dims4()?;
    let dev = x.device();
    let a_h = Axis::new(in_h, out_h, align_corners).matrix(dev, x.dtype())?; // (out_h, in_h)
    let a_w = Axis::new(in_w, out_w, align_corners).matrix(dev, x.dtype())?; // (out_w, in_w)
                                                                             // Resize along W: (N*C*H, W) x (W, out_w).
    let y = x
        .reshape((n * c * in_h, in_w))?
        .matmul(&a_w.t()?)?
        .reshape((n * c, in_h, out_w))?;
    // Resize along H: (out_h, H) x (H, out_w) for each plane.
    let y = a_h
        .unsqueeze(0)?
        .broadcast_as((n * c, out_h, in_h))?
        .contiguous()?
        .matmul(&y)?;
    Ok(y.reshape((n, c, out_h, out_w))?)
}

/// Source indices and weights along one axis, as PyTorch computes them.
#[derive(Debug, Clone)]
struct Axis {
    input: usize,
    i0: Vec<usize>,
    i1: Vec<usize>,
    w0: Vec<f64>,
    w1: Vec<f64>,
}

impl Axis {
    fn new(input: usize, output: usize, align_corners: bool) -> Self {
        let scale = if align_corners {
            if output > 1 {
                (input as f64 - 1.0) / (output as f64 - 1.0)
            } else {
                0.0
            }
        } else {
            input as f64 / output as f64
        };
        let mut axis = Axis {
            input,
            i0: Vec::with_capacity(output),
            i1: Vec::with_capacity(output),
            w0: Vec::with_capacity(output),
            w1: Vec::with_capacity(output),
        };
        for dst in 0..output {
            let src = if align_corners {
                scale * dst as f64
            } else {
                (scale * (dst as f64 + 0.5) - 0.5).max(0.0)
            };
            let i0 = (src.floor() as usize).min(input - 1);
            let i1 = if i0 + 1 < input { i0 + 1 } else { i0 };
            let l1 = (src - i0 as f64).clamp(0.0, 1.0);
            axis.i0.push(i0);
            axis.i1.push(i1);
            axis.w0.push(1.0 - l1);
            axis.w1.push(l1);
        }
        axis
    }

    /// The weights `(w0, w1)` of each output position in the kernel's element type.
    fn weights<T: WithDType>(&self) -> Vec<(T, T)> {
        self.w0
            .iter()
            .zip(&self.w1)
            .map(|(&a, &b)| (T::from_f64(a), T::from_f64(b)))
            .collect()
    }

    /// The dense `(output, input)` interpolation matrix.
    fn matrix(&self, dev: &candle_core::Device, dtype: DType) -> Result<Tensor> {
        let output = self.i0.len();
        let input = self.input;
        let mut m = vec![0f64; output * input];
        for o in 0..output {
            m[o * input + self.i0[o]] += self.w0[o];
            m[o * input + self.i1[o]] += self.w1[o];
        }
        Ok(super::path::host_tensor(m, (output, input), dtype, dev)?)
    }
}

/// Forward kernel: `out[p, y, x] = Σ w_h · w_w · in[p, i_h, i_w]` over the four neighbours.
fn forward_kernel<T: WithDType>(
    src: &[T],
    planes: usize,
    in_h: usize,
    in_w: usize,
    ah: &Axis,
    aw: &Axis,
) -> Vec<T> {
    let (out_h, out_w) = (ah.i0.len(), aw.i0.len());
    let (wh, ww) = (ah.weights::<T>(), aw.weights::<T>());
    let mut out = vec![T::zero(); planes * out_h * out_w];
    for (plane, dst) in src
        .chunks_exact(in_h * in_w)
        .zip(out.chunks_exact_mut(out_h * out_w))
    {
        for y in 0..out_h {
            let r0 = &plane[ah.i0[y] * in_w..(ah.i0[y] + 1) * in_w];
            let r1 = &plane[ah.i1[y] * in_w..(ah.i1[y] + 1) * in_w];
            let (h0, h1) = wh[y];
            let row = &mut dst[y * out_w..(y + 1) * out_w];
            for (x, v) in row.iter_mut().enumerate() {
                let (a, b) = (aw.i0[x], aw.i1[x]);
                let (w0, w1) = ww[x];
                *v = h0 * (w0 * r0[a] + w1 * r0[b]) + h1 * (w0 * r1[a] + w1 * r1[b]);
            }
        }
    }
    out
}

/// Backward kernel: scatters each output gradient back to the four input pixels it came from.
fn backward_kernel<T: WithDType>(
    grad: &[T],
    planes: usize,
    in_h: usize,
    in_w: usize,
    ah: &Axis,
    aw: &Axis,
) -> Vec<T> {
    let (out_h, out_w) = (ah.i0.len(), aw.i0.len());
    let (wh, ww) = (ah.weights::<T>(), aw.weights::<T>());
    let mut out = vec![T::zero(); planes * in_h * in_w];
    for (g, dst) in grad
        .chunks_exact(out_h * out_w)
        .zip(out.chunks_exact_mut(in_h * in_w))
    {
        for y in 0..out_h {
            let (h0, h1) = wh[y];
            let (r0, r1) = (ah.i0[y] * in_w, ah.i1[y] * in_w);
            for x in 0..out_w {
                let gv = g[y * out_w + x];
                let (a, b) = (aw.i0[x], aw.i1[x]);
                let (w0, w1) = ww[x];
                dst[r0 + a] += h0 * w0 * gv;
                dst[r0 + b] += h0 * w1 * gv;
                dst[r1 + a] += h1 * w0 * gv;
                dst[r1 + b] += h1 * w1 * gv;
            }
        }
    }
    out
}

struct BilinearResize {
    out_h: usize,
    out_w: usize,
    align_corners: bool,
}

impl CustomOp1 for BilinearResize {
    fn name(&self) -> &'static str {
        "unetpp-bilinear-resize"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, in_h, in_w) = layout.shape().dims4()?;
        let ah = Axis::new(in_h, self.out_h, self.align_corners);
        let aw = Axis::new(in_w, self.out_w, self.align_corners);
        let shape = Shape::from((n, c, self.out_h, self.out_w));
        let out = match storage {
            CpuStorage::F32(_) => CpuStorage::F32(forward_kernel(
                contiguous::<f32>(storage, layout)?,
                n * c,
                in_h,
                in_w,
                &ah,
                &aw,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(forward_kernel(
                contiguous::<f64>(storage, layout)?,
                n * c,
                in_h,
                in_w,
                &ah,
                &aw,
            )),
            s => candle_core::bail!("bilinear resize: unsupported dtype {:?}", s.dtype()),
        };
        Ok((out, shape))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (_, _, in_h, in_w) = arg.dims4()?;
        let op = BilinearResizeBackward {
            in_h,
            in_w,
            align_corners: self.align_corners,
        };
        Ok(Some(grad_res.contiguous()?.apply_op1(op)?))
    }
}

/// The gradient of [`BilinearResize`] with respect to its input, as an op of its own.
struct BilinearResizeBackward {
    in_h: usize,
    in_w: usize,
    align_corners: bool,
}

impl CustomOp1 for BilinearResizeBackward {
    fn name(&self) -> &'static str {
        "unetpp-bilinear-resize-backward"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, out_h, out_w) = layout.shape().dims4()?;
        let ah = Axis::new(self.in_h, out_h, self.align_corners);
        let aw = Axis::new(self.in_w, out_w, self.align_corners);
        let shape = Shape::from((n, c, self.in_h, self.in_w));
        let out = match storage {
            CpuStorage::F32(_) => CpuStorage::F32(backward_kernel(
                contiguous::<f32>(storage, layout)?,
                n * c,
                self.in_h,
                self.in_w,
                &ah,
                &aw,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(backward_kernel(
                contiguous::<f64>(storage, layout)?,
                n * c,
                self.in_h,
                self.in_w,
                &ah,
                &aw,
            )),
            s => candle_core::bail!(
                "bilinear resize backward: unsupported dtype {:?}",
                s.dtype()
            ),
        };
        Ok((out, shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn axis_matches_pytorch_half_pixel_rule() {
        // 2 -> 4 without align_corners: src = (dst + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25.
        let a = Axis::new(2, 4, false);
        assert_eq!(a.i0, vec![0, 0, 0, 1]);
        assert_eq!(a.i1, vec![1, 1, 1, 1]);
        assert_eq!(a.w1, vec![0.0, 0.25, 0.75, 0.25]);
    }

    #[test]
    fn composed_equals_kernel() {
        let x = Tensor::randn(0f32, 1., (2, 3, 5, 7), &Device::Cpu).unwrap();
        for ac in [false, true] {
            let a = resize_bilinear(&x, 10, 13, ac).unwrap();
            let b = resize_bilinear_composed(&x, 10, 13, ac).unwrap();
            let d = (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-5, "align_corners={ac}: {d}");
        }
    }
}
