//! Reading and writing weight files (safetensors), with checks that name the offending tensor.
//!
//! Writes are atomic: the file is written next to its destination under a temporary name and
//! renamed over it, so an interrupted save never leaves a half-written file behind.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::nn::NamedTensor;
use crate::{Error, Result};

/// Whether a tensor of this name is a buffer (batch-norm running statistics and counters)
/// rather than a trainable parameter: the one rule behind [`NamedTensor::trainable`].
pub fn is_buffer(name: &str) -> bool {
    let leaf = name.rsplit('.').next().unwrap_or(name);
    matches!(leaf, "running_mean" | "running_var" | "num_batches_tracked")
}

/// A `VarBuilder` backend that hands every request to another `VarBuilder` and records what
/// it returned, under the name relative to its root, once per name.
struct Recorder<'a> {
    inner: VarBuilder<'a>,
    seen: Arc<Mutex<(Vec<NamedTensor>, HashSet<String>)>>,
}

impl Recorder<'_> {
    fn note(&self, name: &str, t: &Tensor) {
        if let Ok(mut seen) = self.seen.lock() {
            let (list, names) = &mut *seen;
            if names.insert(name.to_string()) {
                list.push(NamedTensor {
                    name: name.to_string(),
                    tensor: t.clone(),
                    trainable: !is_buffer(name),
                });
            }
        }
    }
}

impl SimpleBackend for Recorder<'_> {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.inner.get_with_hints_dtype(s, name, h, dtype)?;
        self.note(name, &t);
        Ok(t)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.inner.get_unchecked_dtype(name, dtype)?;
        self.note(name, &t);
        Ok(t)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}

/// Builds a model with `build` from `vb` and returns it with every tensor it read, in the
/// order it read them, named relative to `vb`'s prefix: the one record of a model's names,
/// which saving, loading, pruning and interop use (a model never lists its tensors by hand).
///
/// ```
/// use candle_core::{DType, Device};
/// use candle_nn::{VarBuilder, VarMap};
/// use unetpp::nn::{Conv2d, ConvConfig};
///
/// let varmap = VarMap::new();
/// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
/// let (_conv, names) = unetpp::weights::record(vb.pp("net"), |vb| {
///     Conv2d::new(2, 4, ConvConfig::same(3), vb.pp("conv"))
/// })?;
/// let names: Vec<&str> = names.iter().map(|t| t.name.as_str()).collect();
/// assert_eq!(names, ["conv.weight", "conv.bias"]);
/// # Ok::<(), unetpp::Error>(())
/// ```
pub fn record<'a, T>(
    vb: VarBuilder<'a>,
    build: impl FnOnce(VarBuilder<'a>) -> Result<T>,
) -> Result<(T, Vec<NamedTensor>)> {
    let seen = Arc::new(Mutex::new((Vec::new(), HashSet::new())));
    let (dtype, device) = (vb.dtype(), vb.device().clone());
    let recorder = Recorder {
        inner: vb,
        seen: seen.clone(),
    };
    let model = build(VarBuilder::from_backend(Box::new(recorder), dtype, device))?;
    let tensors = seen.lock().map(|s| s.0.clone()).unwrap_or_default();
    Ok((model, tensors))
}

/// A `VarBuilder` over a model's own tensors, to build it again: pruned (a subset of them),
/// or detached from its variables. The tensors are shared, not copied.
pub(crate) fn var_builder_over(tensors: &[NamedTensor]) -> VarBuilder<'static> {
    let dtype = tensors.first().map_or(DType::F32, |t| t.tensor.dtype());
    var_builder_over_in(tensors, dtype)
}

/// [`var_builder_over`] in `dtype`: each floating-point tensor is converted as a layer asks
/// for it, and the conversion is recorded by autograd (gradients of the converted tensors
/// reach the originals).
pub(crate) fn var_builder_over_in(tensors: &[NamedTensor], dtype: DType) -> VarBuilder<'static> {
    let device = tensors
        .first()
        .map_or(Device::Cpu, |t| t.tensor.device().clone());
    let map = tensors
        .iter()
        .map(|t| (t.name.clone(), t.tensor.clone()))
        .collect();
    VarBuilder::from_tensors(map, dtype, &device)
}

/// The same tensors detached from any variable (the data is shared, not copied).
pub(crate) fn detached(tensors: &[NamedTensor]) -> Vec<NamedTensor> {
    tensors
        .iter()
        .map(|t| NamedTensor {
            tensor: t.tensor.detach(),
            ..t.clone()
        })
        .collect()
}

/// Writes `tensors` to `path` as safetensors, atomically (temporary file, then rename).
pub fn save_tensors(tensors: &[NamedTensor], path: impl AsRef<Path>) -> Result<()> {
    let list: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|t| (t.name.clone(), t.tensor.clone()))
        .collect();
    save_with_metadata(&list, None, path)
}

/// Writes named tensors and optional string metadata to `path` as safetensors, atomically.
pub fn save_with_metadata(
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
    path: impl AsRef<Path>,
) -> Result<()> {
    let path = path.as_ref();
    let mut seen = HashSet::new();
    for (name, _) in tensors {
        if !seen.insert(name.as_str()) {
            return Err(Error::weights(name.as_str(), "given twice"));
        }
    }
    // Safetensors wants contiguous data on the CPU.
    let cpu = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::tensor::serialize(cpu.iter().map(|(n, t)| (n.as_str(), t)), metadata)
        .map_err(|e| {
            Error::weights(path.display().to_string(), format!("could not encode: {e}"))
        })?;
    atomic_write(path, |file| {
        use std::io::Write;
        file.write_all(&bytes).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
    })
}

/// Writes a file atomically: `write` fills a temporary file beside `path`, which is flushed to
/// disk and then renamed over `path`. If `write` fails (or the process dies first), `path`
/// keeps its old content and the temporary file is removed.
///
/// ```
/// use std::io::Write;
/// let path = std::env::temp_dir().join("unetpp-doc-atomic.txt");
/// unetpp::weights::atomic_write(&path, |f| Ok(f.write_all(b"new").map_err(|e| unetpp::Error::Io {
///     path: path.clone(),
///     source: e,
/// })?))?;
/// assert_eq!(std::fs::read(&path).unwrap(), b"new");
/// # std::fs::remove_file(&path).unwrap();
/// # Ok::<(), unetpp::Error>(())
/// ```
pub fn atomic_write(
    path: impl AsRef<Path>,
    write: impl FnOnce(&mut std::fs::File) -> Result<()>,
) -> Result<()> {
    crate::fsio::atomic_write(path.as_ref(), write)
}

/// Reads the string metadata of a safetensors file (empty when it has none).
pub fn load_metadata(path: impl AsRef<Path>) -> Result<HashMap<String, String>> {
    let path = path.as_ref();
    metadata_in(&read_file(path)?, path)
}

/// Reads every tensor of a safetensors file onto `device`.
///
/// A missing file gives [`Error::Io`]; a truncated or corrupt one gives [`Error::Weights`]
/// naming the file.
pub fn load_tensors(path: impl AsRef<Path>, device: &Device) -> Result<HashMap<String, Tensor>> {
    let path = path.as_ref();
    tensors_in(&read_file(path)?, path, device)
}

/// Reads every tensor of a safetensors file onto `device` and its string metadata, from one
/// read of the file (as [`load_tensors`] and [`load_metadata`] would from two).
pub fn load_with_metadata(
    path: impl AsRef<Path>,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let path = path.as_ref();
    let bytes = read_file(path)?;
    Ok((
        tensors_in(&bytes, path, device)?,
        metadata_in(&bytes, path)?,
    ))
}

/// The bytes of the file at `path` ([`Error::Io`] naming it when it cannot be read).
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The string metadata of the safetensors file `bytes`, read from `path`.
pub(crate) fn metadata_in(bytes: &[u8], path: &Path) -> Result<HashMap<String, String>> {
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| unreadable(path, e))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// The tensors of the safetensors file `bytes`, read from `path`, onto `device`.
pub(crate) fn tensors_in(
    bytes: &[u8],
    path: &Path,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load_buffer(bytes, device).map_err(|e| unreadable(path, e))
}

fn unreadable(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::weights(
        path.display().to_string(),
        format!("not a readable safetensors file (truncated or corrupt?): {e}"),
    )
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

/// `tensors` without PyTorch's batch-norm `num_batches_tracked` counters, which no network of
/// this crate reads.
pub(crate) fn without_bn_counters(tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    tensors
        .into_iter()
        .filter(|(n, _)| !n.ends_with("num_batches_tracked"))
        .collect()
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

/// The variables of `varmap` by name, locked.
pub(crate) fn lock_vars(
    varmap: &candle_nn::VarMap,
) -> Result<std::sync::MutexGuard<'_, HashMap<String, candle_core::Var>>> {
    varmap
        .data()
        .lock()
        .map_err(|_| Error::config("varmap", "the VarMap's lock is poisoned"))
}

/// `tensors` with `prefix.` put before every name (a part's tensors as its model names them).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use unetpp::nn::NamedTensor;
/// let t = NamedTensor { name: "weight".into(), tensor: Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu)?, trainable: true };
/// assert_eq!(unetpp::weights::prefixed(vec![t], "head").pop().unwrap().name, "head.weight");
/// # Ok::<(), unetpp::Error>(())
/// ```
pub fn prefixed(tensors: Vec<NamedTensor>, prefix: &str) -> Vec<NamedTensor> {
    tensors
        .into_iter()
        .map(|t| NamedTensor {
            name: format!("{prefix}.{}", t.name),
            ..t
        })
        .collect()
}
