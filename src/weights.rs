//! Reading and writing weight files (safetensors), with checks that name the offending tensor.
//!
//! Writes are atomic: the file is written next to its destination under a temporary name and
//! renamed over it, so an interrupted save never leaves a half-written file behind.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::nn::NamedTensor;
use crate::{Error, Result};

/// Writes `tensors` to `path` as safetensors, atomically (temporary file, then rename).
pub fn save_tensors(tensors: &[NamedTensor], path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|t| (t.name.clone(), t.tensor.clone()))
        .collect();
    let tmp = temporary_path(path);
    if let Err(e) = candle_core::safetensors::save(&map, &tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::weights(
            path.display().to_string(),
            format!("could not write: {e}"),
        ));
    }
    std::fs::rename(&tmp, path).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}

fn temporary_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "weights".to_string());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Reads every tensor of a safetensors file onto `device`.
///
/// A missing file gives [`Error::Io`]; a truncated or corrupt one gives [`Error::Weights`]
/// naming the file.
pub fn load_tensors(path: impl AsRef<Path>, device: &Device) -> Result<HashMap<String, Tensor>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| {
        Error::weights(
            path.display().to_string(),
            format!("not a readable safetensors file (truncated or corrupt?): {e}"),
        )
    })
}

/// A `VarBuilder` backend over a set of tensors that records the first missing or mis-shaped
/// tensor and which tensors were used, so that a model built from it can report exactly
/// what did not fit.
struct Checked {
    tensors: HashMap<String, Tensor>,
    used: Mutex<HashSet<String>>,
    problem: Mutex<Option<Error>>,
}

impl Checked {
    fn record(&self, e: Error) -> candle_core::Error {
        let msg = e.to_string();
        if let Ok(mut p) = self.problem.lock() {
            if p.is_none() {
                *p = Some(e);
            }
        }
        candle_core::Error::Msg(msg)
    }
}

struct SharedChecked(Arc<Checked>);

impl SimpleBackend for SharedChecked {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let c = &self.0;
        let t = match c.tensors.get(name) {
            None => {
                return Err(c.record(Error::weights(
                    name,
                    format!("missing (expected shape {:?})", s.dims()),
                )))
            }
            Some(t) => t,
        };
        if t.shape() != &s {
            return Err(c.record(Error::weights(
                name,
                format!("expected shape {:?}, found {:?}", s.dims(), t.dims()),
            )));
        }
        if let Ok(mut used) = c.used.lock() {
            used.insert(name.to_string());
        }
        t.to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let c = &self.0;
        match c.tensors.get(name) {
            None => Err(c.record(Error::weights(name, "missing"))),
            Some(t) => {
                if let Ok(mut used) = c.used.lock() {
                    used.insert(name.to_string());
                }
                t.to_dtype(dtype)?.to_device(dev)
            }
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.tensors.contains_key(name)
    }
}

/// Builds a model with `build` from `tensors`, checking that every tensor it asks for exists
/// with the right shape and that no tensor is left over.
pub(crate) fn build_checked<T>(
    tensors: HashMap<String, Tensor>,
    dtype: DType,
    device: &Device,
    build: impl FnOnce(VarBuilder) -> Result<T>,
) -> Result<T> {
    let checked = Arc::new(Checked {
        tensors,
        used: Mutex::new(HashSet::new()),
        problem: Mutex::new(None),
    });
    let vb = VarBuilder::from_backend(
        Box::new(SharedChecked(checked.clone())),
        dtype,
        device.clone(),
    );
    let built = build(vb);
    if let Some(problem) = checked.problem.lock().ok().and_then(|mut p| p.take()) {
        return Err(problem);
    }
    let model = built?;
    let used = checked.used.lock().map(|u| u.clone()).unwrap_or_default();
    let mut extra: Vec<&String> = checked
        .tensors
        .keys()
        .filter(|k| !used.contains(*k))
        .collect();
    extra.sort();
    if let Some(name) = extra.first() {
        return Err(Error::weights(
            name.as_str(),
            format!(
                "unexpected: not part of this network ({} unused tensor(s); a full network's file loaded as a pruned one, or another configuration?)",
                extra.len()
            ),
        ));
    }
    Ok(model)
}
