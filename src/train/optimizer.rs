//! AdamW whose state (moments and step count) can be saved and restored.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use candle_nn::{ParamsAdamW, VarMap};

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
        for ((_, var), moments) in self.vars.iter().zip(self.moments.iter_mut()) {
            let theta = var.as_tensor();
            let Some(g) = grads.get(theta) else {
                continue;
            };
            let (m, v) = match moments {
                Some((m, v)) => (m.clone(), v.clone()),
                None => (g.zeros_like()?, g.zeros_like()?),
            };
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
            moments[i] = Some((
                m.to_device(device)?.to_dtype(dtype)?,
                v.to_device(device)?.to_dtype(dtype)?,
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
