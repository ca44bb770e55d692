//! AdamW whose state (moments and step count) can be saved and restored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Storage, Tensor, Var};
use candle_nn::{ParamsAdamW, VarMap};
use rayon::prelude::*;

use crate::{Error, Result};

/// AdamW (Loshchilov & Hutter), computed exactly as candle-nn's `AdamW`, but with named
/// parameters and a state that [`save_checkpoint`](super::save_checkpoint) writes, so that
/// a resumed run takes the same steps as an uninterrupted one. With `weight_decay` 0 it is
/// Adam, the paper's optimizer (learning rate 3e-4).
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{ParamsAdamW, VarBuilder, VarMap};
/// use unetpp::train::AdamW;
///
/// let varmap = VarMap::new();
/// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
/// let w = vb.get_with_hints(3, "w", candle_nn::Init::Const(1.0))?;
/// let mut opt = AdamW::new(&varmap, ParamsAdamW { lr: 0.1, ..Default::default() })?;
/// opt.backward_step(&w.sqr()?.sum_all()?)?;
/// assert!(w.to_vec1::<f32>()?[0] < 1.0);
/// # Ok::<(), unetpp::Error>(())
/// ```
#[derive(Debug)]
pub struct AdamW {
    params: ParamsAdamW,
    vars: Vec<(String, Var)>,
    /// First and second moments of each variable, created at its first gradient.
    moments: Vec<Option<(Tensor, Tensor)>>,
    step: usize,
    /// Whether [`state`](Self::state) has handed out the moments since the last step.
    exported: AtomicBool,
}

/// The saved state of an [`AdamW`]: step count and the moments `m`, `v` by variable name.
#[derive(Debug, Clone)]
pub struct AdamWState {
    /// Steps taken.
    pub step: usize,
    /// Hyper-parameters.
    pub params: ParamsAdamW,
    /// First moments by variable name.
    pub m: HashMap<String, Tensor>,
    /// Second moments by variable name.
    pub v: HashMap<String, Tensor>,
}

impl AdamW {
    /// Optimises every variable of `varmap` (those that never receive a gradient, such as
    /// batch-norm statistics, are left alone).
    pub fn new(varmap: &VarMap, params: ParamsAdamW) -> Result<Self> {
        let data = super::lock_vars(varmap)?;
        let vars = data.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        Self::from_named(vars, params)
    }

    /// Optimises the given named variables. Names must be unique.
    pub fn from_named(mut vars: Vec<(String, Var)>, params: ParamsAdamW) -> Result<Self> {
        check_params(&params)?;
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(w) = vars.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(Error::config("vars", format!("{} is given twice", w[0].0)));
        }
        let moments = vec![None; vars.len()];
        Ok(Self {
            params,
            vars,
            moments,
            step: 0,
            exported: AtomicBool::new(false),
        })
    }

    /// Hyper-parameters.
    pub fn params(&self) -> &ParamsAdamW {
        &self.params
    }

    /// The learning rate.
    pub fn learning_rate(&self) -> f64 {
        self.params.lr
    }

    /// Changes the learning rate (for a schedule).
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> usize {
        self.step
    }

    /// One update from `grads`. A gradient with a NaN or infinite element is an
    /// [`Error::Diverged`] that names the variable, and then nothing is updated: neither the
    /// weights, nor the moments, nor the step count.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        if let Some(name) = self.first_non_finite(grads)? {
            return Err(Error::Diverged(format!(
                "the gradient of `{name}` is not finite; the step was not taken"
            )));
        }
        self.step += 1;
        let p = &self.params;
        let t = self.step as i32;
        let scale_m = 1.0 / (1.0 - p.beta1.powi(t));
        let scale_v = 1.0 / (1.0 - p.beta2.powi(t));
        let coefficients = Coefficients::new(p, scale_m, scale_v);
        let exported = self.exported.swap(false, Ordering::Relaxed);
        for ((_, var), moments) in self.vars.iter().zip(self.moments.iter_mut()) {
            let theta = var.as_tensor();
            let Some(g) = grads.get(theta) else {
                continue;
            };
            let (mut m, mut v) = match moments {
                Some((m, v)) => (m.clone(), v.clone()),
                None => (g.zeros_like()?, g.zeros_like()?),
            };
            if in_place(theta, g, &m, &v) {
                if exported {
                    (m, v) = (m.copy()?, v.copy()?);
                }
                // The CPU's `f32` kernels: the same arithmetic in three passes that allocate
                // nothing (the composed path below allocates a tensor per operation).
                m.inplace_op2(g, &MomentUpdate::first(&coefficients))?;
                v.inplace_op2(g, &MomentUpdate::second(&coefficients))?;
                theta.inplace_op3(&m, &v, &coefficients)?;
                *moments = Some((m, v));
                continue;
            }
            let next_m = ((m * p.beta1)? + (g * (1.0 - p.beta1))?)?;
            let next_v = ((v * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let m_hat = (&next_m * scale_m)?;
            let v_hat = (&next_v * scale_v)?;
            let decayed = (theta * (1.0 - p.lr * p.weight_decay))?;
            let adjusted = (m_hat / (v_hat.sqrt()? + p.eps)?)?;
            var.set(&(decayed - (adjusted * p.lr)?)?)?;
            // Gradients carry the step's graph; detached moments keep it from living on
            // (and from chaining one step's graph to the next).
            *moments = Some((next_m.detach(), next_v.detach()));
        }
        Ok(())
    }

    /// The name of the first variable whose gradient has a NaN or infinite element. One
    /// scalar is read back from the device for all gradients; the variables are searched one
    /// by one only when it says that one is not finite.
    fn first_non_finite(&self, grads: &GradStore) -> Result<Option<&str>> {
        // NaN · 0 and ∞ · 0 are NaN: a sum of g · 0 is 0 exactly when every element is finite.
        let probe = |g: &Tensor| -> Result<Tensor> {
            Ok((g * 0.0)?.sum_all()?.to_dtype(candle_core::DType::F32)?)
        };
        let present: Vec<(&str, &Tensor)> = self
            .vars
            .iter()
            .filter_map(|(name, var)| grads.get(var.as_tensor()).map(|g| (name.as_str(), g)))
            .collect();
        let mut total: Option<Tensor> = None;
        for (_, g) in &present {
            let p = probe(g)?;
            total = Some(match total {
                Some(t) => (t + p)?,
                None => p,
            });
        }
        let Some(total) = total else {
            return Ok(None);
        };
        if total.to_scalar::<f32>()? == 0.0 {
            return Ok(None);
        }
        for (name, g) in present {
            if probe(g)?.to_scalar::<f32>()? != 0.0 {
                return Ok(Some(name));
            }
        }
        Ok(None)
    }

    /// Back-propagates `loss` and takes one step. A NaN or infinite loss (or gradient) is an
    /// [`Error::Diverged`], and then nothing is updated.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        let value = loss
            .to_device(&candle_core::Device::Cpu)?
            .to_dtype(candle_core::DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()?;
        if !value.is_finite() {
            return Err(Error::Diverged(format!(
                "the loss is {value}; the step was not taken (lower the learning rate?)"
            )));
        }
        let grads = loss.backward()?;
        self.step(&grads)
    }

    /// A copy of the state, for a checkpoint.
    pub fn state(&self) -> AdamWState {
        // The tensors handed out share storage with the moments; the next step must not
        // update them in place.
        self.exported.store(true, Ordering::Relaxed);
        let mut m = HashMap::new();
        let mut v = HashMap::new();
        for ((name, _), moments) in self.vars.iter().zip(&self.moments) {
            if let Some((mt, vt)) = moments {
                m.insert(name.clone(), mt.clone());
                v.insert(name.clone(), vt.clone());
            }
        }
        AdamWState {
            step: self.step,
            params: self.params.clone(),
            m,
            v,
        }
    }

    /// Restores a state saved from an optimizer over the same variables. A moment for an
    /// unknown variable, or of the wrong shape, is an [`Error::Weights`] naming it.
    pub fn load_state(&mut self, state: &AdamWState) -> Result<()> {
        check_params(&state.params)?;
        let known: HashMap<&str, usize> = self
            .vars
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.as_str(), i))
            .collect();
        let mut moments = vec![None; self.vars.len()];
        for (name, m) in &state.m {
            let &i = known.get(name.as_str()).ok_or_else(|| {
                Error::weights(
                    name.as_str(),
                    "optimizer state for a variable this optimizer does not have",
                )
            })?;
            let v = state
                .v
                .get(name)
                .ok_or_else(|| Error::weights(name.as_str(), "first moment without a second"))?;
            let var = self.vars[i].1.as_tensor();
            for (what, t) in [("first", m), ("second", v)] {
                if t.dims() != var.dims() {
                    return Err(Error::weights(
                        name.as_str(),
                        format!(
                            "{what} moment has shape {:?} but the variable {:?}",
                            t.dims(),
                            var.dims()
                        ),
                    ));
                }
            }
            let device = var.device();
            let dtype = var.dtype();
            // Copies, which the CPU path may update in place without touching `state`.
            moments[i] = Some((
                m.to_device(device)?.to_dtype(dtype)?.copy()?,
                v.to_device(device)?.to_dtype(dtype)?.copy()?,
            ));
        }
        if let Some(name) = state.v.keys().find(|n| !state.m.contains_key(*n)) {
            return Err(Error::weights(
                name.as_str(),
                "second moment without a first",
            ));
        }
        self.moments = moments;
        self.step = state.step;
        self.params = state.params.clone();
        Ok(())
    }
}

/// Whether the step may update `theta`, `m` and `v` in place with the CPU kernels: all on the
/// CPU, `f32`, contiguous from their first element, and four distinct storages.
fn in_place(theta: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor) -> bool {
    let all = [theta, g, m, v];
    let simple = |t: &Tensor| {
        t.device().is_cpu()
            && t.dtype() == DType::F32
            && t.is_contiguous()
            && t.layout().start_offset() == 0
            && t.dims() == theta.dims()
    };
    if !all.iter().all(|t| simple(t)) {
        return false;
    }
    let ptrs: Vec<Option<*const f32>> = all.iter().map(|t| cpu_data(t)).collect();
    ptrs.iter().all(Option::is_some)
        && ptrs
            .iter()
            .enumerate()
            .all(|(i, a)| ptrs[i + 1..].iter().all(|b| a != b))
}

/// The address of a CPU `f32` tensor's storage.
fn cpu_data(t: &Tensor) -> Option<*const f32> {
    let (storage, _) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => Some(v.as_ptr()),
        _ => None,
    }
}

/// The step's constants in `f32`, rounded as candle's affine ops round them, so that the CPU
/// kernels give the composed path's bits.
struct Coefficients {
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    scale_m: f32,
    scale_v: f32,
    eps: f32,
    decay: f32,
    lr: f32,
}

impl Coefficients {
    fn new(p: &ParamsAdamW, scale_m: f64, scale_v: f64) -> Self {
        Self {
            beta1: p.beta1 as f32,
            one_minus_beta1: (1.0 - p.beta1) as f32,
            beta2: p.beta2 as f32,
            one_minus_beta2: (1.0 - p.beta2) as f32,
            scale_m: scale_m as f32,
            scale_v: scale_v as f32,
            eps: p.eps as f32,
            decay: (1.0 - p.lr * p.weight_decay) as f32,
            lr: p.lr as f32,
        }
    }
}

/// A mutable `f32` slice of a CPU storage (the caller checked dtype and layout).
fn slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> candle_core::Result<&'a mut [f32]> {
    let n = l.shape().elem_count();
    match s {
        CpuStorage::F32(v) if v.len() >= n => Ok(&mut v[..n]),
        _ => candle_core::bail!("AdamW's CPU update needs f32 storage"),
    }
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let n = l.shape().elem_count();
    match s {
        CpuStorage::F32(v) if v.len() >= n => Ok(&v[..n]),
        _ => candle_core::bail!("AdamW's CPU update needs f32 storage"),
    }
}

/// Elements per parallel chunk of the updates.
const CHUNK: usize = 1 << 15;

/// `m ← β₁·m + (1 − β₁)·g`, or `v ← β₂·v + (1 − β₂)·g²`, in place.
struct MomentUpdate {
    decay: f32,
    weight: f32,
    squared: bool,
}

impl MomentUpdate {
    fn first(c: &Coefficients) -> Self {
        Self {
            decay: c.beta1,
            weight: c.one_minus_beta1,
            squared: false,
        }
    }

    fn second(c: &Coefficients) -> Self {
        Self {
            decay: c.beta2,
            weight: c.one_minus_beta2,
            squared: true,
        }
    }
}

impl InplaceOp2 for MomentUpdate {
    fn name(&self) -> &'static str {
        "unetpp-adamw-moment"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let (m, g) = (slice_mut(s1, l1)?, slice(s2, l2)?);
        let (decay, weight, squared) = (self.decay, self.weight, self.squared);
        m.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .for_each(|(m, g)| {
                for (m, &g) in m.iter_mut().zip(g) {
                    let g = if squared { g * g } else { g };
                    *m = *m * decay + g * weight;
                }
            });
        Ok(())
    }
}

impl InplaceOp3 for Coefficients {
    fn name(&self) -> &'static str {
        "unetpp-adamw-update"
    }

    /// `θ ← θ·(1 − lr·λ) − lr · (m·s_m) / (√(v·s_v) + ε)`.
    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let (theta, m, v) = (slice_mut(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        theta
            .par_chunks_mut(CHUNK)
            .zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK)))
            .for_each(|(theta, (m, v))| {
                for ((t, &m), &v) in theta.iter_mut().zip(m).zip(v) {
                    let adjusted = (m * self.scale_m) / ((v * self.scale_v).sqrt() + self.eps);
                    *t = *t * self.decay - adjusted * self.lr;
                }
            });
        Ok(())
    }
}

fn check_params(p: &ParamsAdamW) -> Result<()> {
    let bad =
        |field: &'static str, v: f64| Err(Error::config(field, format!("{v} is out of range")));
    if !(p.lr.is_finite() && p.lr >= 0.0) {
        return bad("lr", p.lr);
    }
    if !(0.0..1.0).contains(&p.beta1) {
        return bad("beta1", p.beta1);
    }
    if !(0.0..1.0).contains(&p.beta2) {
        return bad("beta2", p.beta2);
    }
    if !(p.eps.is_finite() && p.eps > 0.0) {
        return bad("eps", p.eps);
    }
    if !(p.weight_decay.is_finite() && p.weight_decay >= 0.0) {
        return bad("weight_decay", p.weight_decay);
    }
    Ok(())
}

impl candle_nn::Optimizer for AdamW {
    type Config = ParamsAdamW;

    /// Names the variables `param.{index}` (their order then matters for a saved state).
    fn new(vars: Vec<Var>, config: ParamsAdamW) -> candle_core::Result<Self> {
        let named = vars
            .into_iter()
            .enumerate()
            .map(|(i, v)| (format!("param.{i:06}"), v))
            .collect();
        Self::from_named(named, config).map_err(candle_core::Error::wrap)
    }

    fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        AdamW::step(self, grads).map_err(candle_core::Error::wrap)
    }

    fn learning_rate(&self) -> f64 {
        self.params.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }
}
