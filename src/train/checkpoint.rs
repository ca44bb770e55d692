//! Checkpoints: model weights, optimizer state and epoch in one safetensors file, written
//! atomically.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::{ParamsAdamW, VarMap};

use super::optimizer::{AdamW, AdamWState};
use crate::{weights, Error, Result};

const FORMAT: &str = "unetpp.checkpoint.v1";
const MODEL: &str = "model/";
const M: &str = "adamw.m/";
const V: &str = "adamw.v/";
const EXTRA: &str = "extra.";

/// A training checkpoint, as read back by [`Checkpoint::load`].
///
/// The file is a safetensors file: the model's tensors under `model/{name}`, AdamW's moments
/// under `adamw.m/{name}` and `adamw.v/{name}`, the epoch, step and hyper-parameters in its
/// metadata. [`save_checkpoint`] writes it atomically (temporary file and rename), so an
/// interrupted save leaves the previous checkpoint as it was.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Epochs completed when it was written.
    pub epoch: usize,
    /// Model tensors by name (every variable of the `VarMap`, batch-norm statistics included).
    pub model: HashMap<String, Tensor>,
    /// The optimizer's state.
    pub optimizer: AdamWState,
    /// Free-form strings saved with it (for example the model's kind or the data's seed).
    pub extra: HashMap<String, String>,
}

/// Writes every variable of `varmap`, `optimizer`'s state, `epoch` and `extra` strings to
/// `path`, atomically.
///
/// ```no_run
/// # use candle_nn::{ParamsAdamW, VarMap};
/// # use unetpp::train::{save_checkpoint, AdamW, Checkpoint};
/// # let varmap = VarMap::new();
/// # let mut opt = AdamW::new(&varmap, ParamsAdamW::default())?;
/// save_checkpoint("run/last.safetensors", &varmap, &opt, 3, &Default::default())?;
/// // … later, after building the same model on a fresh VarMap:
/// let ckpt = Checkpoint::load("run/last.safetensors", &candle_core::Device::Cpu)?;
/// ckpt.restore(&varmap, &mut opt)?;
/// let next_epoch = ckpt.epoch;
/// # Ok::<(), unetpp::Error>(())
/// ```
pub fn save_checkpoint(
    path: impl AsRef<Path>,
    varmap: &VarMap,
    optimizer: &AdamW,
    epoch: usize,
    extra: &HashMap<String, String>,
) -> Result<()> {
    let mut tensors = Vec::new();
    {
        let data = super::lock_vars(varmap)?;
        for (name, var) in data.iter() {
            tensors.push((format!("{MODEL}{name}"), var.as_tensor().clone()));
        }
    }
    let state = optimizer.state();
    for (name, t) in &state.m {
        tensors.push((format!("{M}{name}"), t.clone()));
    }
    for (name, t) in &state.v {
        tensors.push((format!("{V}{name}"), t.clone()));
    }
    let p = &state.params;
    let mut meta: HashMap<String, String> = [
        ("format", FORMAT.to_string()),
        ("epoch", epoch.to_string()),
        ("step", state.step.to_string()),
        ("lr", p.lr.to_string()),
        ("beta1", p.beta1.to_string()),
        ("beta2", p.beta2.to_string()),
        ("eps", p.eps.to_string()),
        ("weight_decay", p.weight_decay.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in extra {
        meta.insert(format!("{EXTRA}{k}"), v.clone());
    }
    weights::save_with_metadata(&tensors, Some(meta), path)
}

impl Checkpoint {
    /// Reads a checkpoint written by [`save_checkpoint`]. A file that is not one (or is
    /// truncated) is an [`Error::Weights`] naming it.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        let file = path.display().to_string();
        // One read of the file: the metadata is checked before the tensors are decoded.
        let bytes = weights::read_file(path)?;
        let meta = weights::metadata_in(&bytes, path)?;
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(Error::weights(
                file,
                format!("not a {FORMAT} checkpoint (a plain weight file? load it with the model's load)"),
            ));
        }
        let num = |key: &str| -> Result<f64> {
            meta.get(key)
                .and_then(|v| v.parse::<f64>().ok())
                .ok_or_else(|| {
                    Error::weights(
                        file.as_str(),
                        format!("metadata {key:?} missing or not a number"),
                    )
                })
        };
        let count = |key: &str| -> Result<usize> {
            meta.get(key)
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| {
                    Error::weights(
                        file.as_str(),
                        format!("metadata {key:?} missing or not a count"),
                    )
                })
        };
        let params = ParamsAdamW {
            lr: num("lr")?,
            beta1: num("beta1")?,
            beta2: num("beta2")?,
            eps: num("eps")?,
            weight_decay: num("weight_decay")?,
        };
        let (epoch, step) = (count("epoch")?, count("step")?);
        let mut model = HashMap::new();
        let mut m = HashMap::new();
        let mut v = HashMap::new();
        for (name, t) in weights::tensors_in(&bytes, path, device)? {
            if let Some(n) = name.strip_prefix(MODEL) {
                model.insert(n.to_string(), t);
            } else if let Some(n) = name.strip_prefix(M) {
                m.insert(n.to_string(), t);
            } else if let Some(n) = name.strip_prefix(V) {
                v.insert(n.to_string(), t);
            } else {
                return Err(Error::weights(
                    name,
                    format!("unexpected tensor in checkpoint {file}"),
                ));
            }
        }
        let extra = meta
            .iter()
            .filter_map(|(k, val)| k.strip_prefix(EXTRA).map(|k| (k.to_string(), val.clone())))
            .collect();
        Ok(Self {
            epoch,
            model,
            optimizer: AdamWState { step, params, m, v },
            extra,
        })
    }

    /// Copies the saved weights into `varmap` (whose model must be built already, with the
    /// same configuration) and the saved state into `optimizer`. Nothing is changed unless
    /// every tensor fits: a missing, extra or mis-shaped one is an [`Error::Weights`] naming it.
    pub fn restore(&self, varmap: &VarMap, optimizer: &mut AdamW) -> Result<()> {
        let data = super::lock_vars(varmap)?;
        for (name, var) in data.iter() {
            let t = self
                .model
                .get(name)
                .ok_or_else(|| Error::weights(name.as_str(), "missing from the checkpoint"))?;
            if t.dims() != var.dims() {
                return Err(Error::weights(
                    name.as_str(),
                    format!(
                        "checkpoint has shape {:?}, the model {:?}",
                        t.dims(),
                        var.dims()
                    ),
                ));
            }
        }
        if let Some(name) = self.model.keys().find(|n| !data.contains_key(*n)) {
            return Err(Error::weights(
                name.as_str(),
                "in the checkpoint but not in the model (another configuration?)",
            ));
        }
        optimizer.load_state(&self.optimizer)?;
        for (name, var) in data.iter() {
            if let Some(t) = self.model.get(name) {
                var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
            }
        }
        Ok(())
    }
}
