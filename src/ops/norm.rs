//! Batch normalisation with batch statistics (training mode) as one CPU op, forward and
//! backward.
//!
//! candle-nn's `BatchNorm::forward_train` is about nine passes over the activation (a
//! transposed copy, mean, centring, square, mean, division, scale, shift, and the copy back
//! that the next layer makes), each into fresh memory, and its backward pass two or three
//! times that. Here the forward pass reads each channel twice (mean, then the centred sum of
//! squares) and writes the output once; the backward pass reads the input and the gradient
//! once for the two per-channel sums it needs and once more to write the input gradient.
//! Sums are accumulated in `f64`, channel by channel in a fixed order (the same result
//! whatever the number of threads).

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::kernel::{contiguous, map_channels};
use super::simd::simd_fn;
use crate::{Error, Result};

/// Per-channel statistics of one batch: mean and `1 / √(var + ε)` (biased variance).
#[derive(Debug, Clone, Default)]
struct Stats {
    mean: Vec<f64>,
    inv_std: Vec<f64>,
    var: Vec<f64>,
}

/// Visits the `n` planes of channel `ci` of an `(n, c, plane)` buffer.
fn planes(
    data: &[f32],
    n: usize,
    c: usize,
    plane: usize,
    ci: usize,
) -> impl Iterator<Item = &[f32]> {
    (0..n).map(move |ni| &data[(ni * c + ci) * plane..(ni * c + ci + 1) * plane])
}

/// Lanes of the `f64` sums below: independent partial sums, so that the loops vectorise (a
/// single running sum is a chain of dependent additions), added in a fixed order at the end.
const LANES: usize = 8;

/// Adds the lanes in a fixed order.
#[inline(always)]
fn total(acc: [f64; LANES]) -> f64 {
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

simd_fn! {
    /// `Σ v` in `f64`.
    fn sum(p: &[f32]) -> f64 {
        let mut acc = [0f64; LANES];
        let mut chunks = p.chunks_exact(LANES);
        for v in &mut chunks {
            for k in 0..LANES {
                acc[k] += f64::from(v[k]);
            }
        }
        total(acc) + chunks.remainder().iter().map(|&v| f64::from(v)).sum::<f64>()
    }
}

simd_fn! {
    /// `Σ (v − mean)²` in `f64`.
    fn sum_sq_dev(p: &[f32], mean: f64) -> f64 {
        let mut acc = [0f64; LANES];
        let mut chunks = p.chunks_exact(LANES);
        for v in &mut chunks {
            for k in 0..LANES {
                let d = f64::from(v[k]) - mean;
                acc[k] += d * d;
            }
        }
        let rest: f64 = chunks
            .remainder()
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum();
        total(acc) + rest
    }
}

simd_fn! {
    /// `(Σ g, Σ g·(x − mean)·inv)` in `f64`.
    fn sums_g_gx(x: &[f32], g: &[f32], mean: f64, inv: f64) -> (f64, f64) {
        let len = x.len().min(g.len());
        let (x, g) = (&x[..len], &g[..len]);
        let (mut sg, mut sgx) = ([0f64; LANES], [0f64; LANES]);
        let (mut xc, mut gc) = (x.chunks_exact(LANES), g.chunks_exact(LANES));
        for (xv, gv) in (&mut xc).zip(&mut gc) {
            for k in 0..LANES {
                let gk = f64::from(gv[k]);
                sg[k] += gk;
                sgx[k] += gk * (f64::from(xv[k]) - mean);
            }
        }
        let (mut a, mut b) = (total(sg), total(sgx));
        for (&xv, &gv) in xc.remainder().iter().zip(gc.remainder()) {
            a += f64::from(gv);
            b += f64::from(gv) * (f64::from(xv) - mean);
        }
        (a, b * inv)
    }
}

simd_fn! {
    /// `o = v·scale + shift`.
    fn affine(o: &mut [f32], x: &[f32], scale: f32, shift: f32) {
        for (o, &v) in o.iter_mut().zip(x) {
            *o = v * scale + shift;
        }
    }
}

simd_fn! {
    /// `o = a·g + b·x + d`.
    fn affine2(o: &mut [f32], x: &[f32], g: &[f32], abd: (f32, f32, f32)) {
        let (a, b, d) = abd;
        for ((o, &xv), &gv) in o.iter_mut().zip(x).zip(g) {
            *o = a * gv + b * xv + d;
        }
    }
}

fn statistics(x: &[f32], n: usize, c: usize, plane: usize, eps: f64) -> Stats {
    let count = (n * plane) as f64;
    let per_channel: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ci| {
            let s: f64 = planes(x, n, c, plane, ci).map(sum).sum();
            let mean = s / count;
            let sq: f64 = planes(x, n, c, plane, ci)
                .map(|p| sum_sq_dev(p, mean))
                .sum();
            (mean, sq / count)
        })
        .collect();
    Stats {
        mean: per_channel.iter().map(|s| s.0).collect(),
        var: per_channel.iter().map(|s| s.1).collect(),
        inv_std: per_channel
            .iter()
            .map(|s| 1.0 / (s.1 + eps).sqrt())
            .collect(),
    }
}

/// The forward op: `(x, γ, β) ↦ γ·(x − μ)/√(σ² + ε) + β` with the batch's `μ`, `σ²`; the
/// statistics are kept for the backward pass and for the running averages.
struct BatchNormTrain {
    eps: f64,
    stats: Arc<Mutex<Stats>>,
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "unetpp-batch-norm-train"
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
        let plane = h * w;
        let x = contiguous::<f32>(s1, l1)?;
        let gamma = contiguous::<f32>(s2, l2)?;
        let beta = contiguous::<f32>(s3, l3)?;
        let st = statistics(x, n, c, plane, self.eps);
        let out = map_channels((n, c, plane), |ci| {
            let scale = f64::from(gamma[ci]) * st.inv_std[ci];
            let shift = f64::from(beta[ci]) - st.mean[ci] * scale;
            let (scale, shift) = (scale as f32, shift as f32);
            move |off: usize, o: &mut [f32]| affine(o, &x[off..off + plane], scale, shift)
        });
        match self.stats.lock() {
            Ok(mut s) => *s = st,
            Err(_) => candle_core::bail!("batch-norm statistics lock poisoned"),
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let stats = match self.stats.lock() {
            Ok(s) => s.clone(),
            Err(_) => candle_core::bail!("batch-norm statistics lock poisoned"),
        };
        let grad = grad.contiguous()?;
        let x = x.contiguous()?;
        // Σ g and Σ g·x̂ per channel: the bias and scale gradients, and what dx needs.
        let sums = x.apply_op2_no_bwd(
            &grad,
            &Sums {
                stats: stats.clone(),
            },
        )?;
        let dbeta = sums.get(0)?;
        let dgamma = sums.get(1)?;
        let dx = if x.track_op() {
            let s = sums.to_vec2::<f32>()?;
            Some(x.apply_op2_no_bwd(
                &grad,
                &InputGrad {
                    stats,
                    gamma: gamma.to_vec1::<f32>()?,
                    sum_g: s[0].clone(),
                    sum_gx: s[1].clone(),
                },
            )?)
        } else {
            None
        };
        Ok((
            dx,
            gamma.track_op().then_some(dgamma),
            beta.track_op().then_some(dbeta),
        ))
    }
}

/// `(x, g) ↦ [Σ g, Σ g·x̂]` per channel, as a `(2, C)` tensor.
struct Sums {
    stats: Stats,
}

impl CustomOp2 for Sums {
    fn name(&self) -> &'static str {
        "unetpp-batch-norm-sums"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let plane = h * w;
        let (x, g) = (contiguous::<f32>(s1, l1)?, contiguous::<f32>(s2, l2)?);
        let st = &self.stats;
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ci| {
                let (mean, inv) = (st.mean[ci], st.inv_std[ci]);
                planes(x, n, c, plane, ci)
                    .zip(planes(g, n, c, plane, ci))
                    .fold((0.0, 0.0), |(sg, sgx), (xp, gp)| {
                        let (a, b) = sums_g_gx(xp, gp, mean, inv);
                        (sg + a, sgx + b)
                    })
            })
            .collect();
        let mut out: Vec<f32> = sums.iter().map(|s| s.0 as f32).collect();
        out.extend(sums.iter().map(|s| s.1 as f32));
        Ok((CpuStorage::F32(out), Shape::from((2, c))))
    }
}

/// `(x, g) ↦ dx = γ·(1/√(σ²+ε))·(g − Σg/M − x̂·Σ(g·x̂)/M)`, `M` values per channel.
struct InputGrad {
    stats: Stats,
    gamma: Vec<f32>,
    sum_g: Vec<f32>,
    sum_gx: Vec<f32>,
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "unetpp-batch-norm-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let plane = h * w;
        let m = (n * plane) as f64;
        let (x, g) = (contiguous::<f32>(s1, l1)?, contiguous::<f32>(s2, l2)?);
        let st = &self.stats;
        let out = map_channels((n, c, plane), |ci| {
            let inv = st.inv_std[ci];
            let k = f64::from(self.gamma[ci]) * inv;
            let mean_g = f64::from(self.sum_g[ci]) / m;
            let mean_gx = f64::from(self.sum_gx[ci]) / m;
            // dx = k·g − k·mean_g − k·mean_gx·inv·(x − μ) = a·g + b·x + d
            let a = k as f32;
            let b = (-k * mean_gx * inv) as f32;
            let d = (-k * mean_g + k * mean_gx * inv * st.mean[ci]) as f32;
            move |off: usize, o: &mut [f32]| {
                affine2(o, &x[off..off + plane], &g[off..off + plane], (a, b, d))
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// The output of [`batch_norm_train`].
#[derive(Debug, Clone)]
pub struct BatchNormOutput {
    /// The normalised, scaled and shifted input.
    pub output: Tensor,
    /// The batch mean per channel, `(C)` (no gradient; `f32` for half-precision inputs).
    pub mean: Tensor,
    /// The batch variance per channel, `(C)`, biased (divided by the `N·H·W` values; PyTorch's
    /// running average uses the unbiased one, this times `M / (M − 1)`).
    pub var: Tensor,
}

/// Batch normalisation of `x (N, C, H, W)` with its own per-channel statistics (training
/// mode): `γ·(x − μ)/√(σ² + ε) + β`, `σ²` the biased variance, as PyTorch's
/// `batch_norm(training=True)`. Differentiable in `x`, `γ` and `β` (with the statistics'
/// dependence on `x`). Also returns the statistics, for running averages.
///
/// `f32` tensors on the CPU take one fused op (see the module source); others are composed from
/// candle ops.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// let dev = Device::Cpu;
/// let x = Tensor::new(&[[[[1f32, 3.]], [[2., 6.]]]], &dev)?; // (1, 2, 1, 2)
/// let (g, b) = (Tensor::ones(2, DType::F32, &dev)?, Tensor::zeros(2, DType::F32, &dev)?);
/// let out = unetpp::ops::batch_norm_train(&x, &g, &b, 0.0)?;
/// assert_eq!(out.output.flatten_all()?.to_vec1::<f32>()?, vec![-1., 1., -1., 1.]);
/// assert_eq!(out.mean.to_vec1::<f32>()?, vec![2., 4.]);
/// assert_eq!(out.var.to_vec1::<f32>()?, vec![1., 4.]);
/// # Ok::<(), unetpp::Error>(())
/// ```
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<BatchNormOutput> {
    let (n, c, h, w) = x.dims4().map_err(|_| {
        Error::Shape(format!(
            "batch_norm_train expects an (N, C, H, W) input, got {:?}",
            x.dims()
        ))
    })?;
    if gamma.dims() != [c] || beta.dims() != [c] {
        return Err(Error::Shape(format!(
            "batch_norm_train: scale {:?} and shift {:?} must have the input's {c} channels",
            gamma.dims(),
            beta.dims()
        )));
    }
    if n * h * w == 0 {
        return Err(Error::Shape(format!(
            "batch_norm_train needs at least one value per channel, got {:?}",
            x.dims()
        )));
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::config(
            "eps",
            format!("must be finite and ≥ 0, got {eps}"),
        ));
    }
    let fast = super::path::cpu_kernels(x.device())
        && [x, gamma, beta].iter().all(|t| t.dtype() == DType::F32);
    if !fast {
        // Half precision computes in f32, as candle-nn's layer does (sums of many halves
        // lose everything).
        if matches!(x.dtype(), DType::F16 | DType::BF16) {
            let f = |t: &Tensor| t.to_dtype(DType::F32);
            let out = batch_norm_train(&f(x)?, &f(gamma)?, &f(beta)?, eps)?;
            return Ok(BatchNormOutput {
                output: out.output.to_dtype(x.dtype())?,
                ..out
            });
        }
        let dims = (1, c, 1, 1);
        let mean = x.mean_keepdim((0, 2, 3))?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim((0, 2, 3))?;
        let output = centred
            .broadcast_div(&(&var + eps)?.sqrt()?)?
            .broadcast_mul(&gamma.reshape(dims)?)?
            .broadcast_add(&beta.reshape(dims)?)?;
        return Ok(BatchNormOutput {
            output,
            mean: mean.flatten_all()?.detach(),
            var: var.flatten_all()?.detach(),
        });
    }
    let stats = Arc::new(Mutex::new(Stats::default()));
    let output = x.contiguous()?.apply_op3(
        &gamma.contiguous()?,
        &beta.contiguous()?,
        BatchNormTrain {
            eps,
            stats: stats.clone(),
        },
    )?;
    let st = stats
        .lock()
        .map_err(|_| Error::Input("batch-norm statistics lock poisoned".into()))?
        .clone();
    let to_tensor = |v: &[f64]| -> Result<Tensor> {
        let v: Vec<f32> = v.iter().map(|&a| a as f32).collect();
        Ok(Tensor::from_vec(v, c, x.device())?)
    };
    Ok(BatchNormOutput {
        output,
        mean: to_tensor(&st.mean)?,
        var: to_tensor(&st.var)?,
    })
}
