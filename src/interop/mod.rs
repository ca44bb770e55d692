//! Weights trained with other UNet++ implementations: name maps and configurations.
//!
//! - [`monai`]: MONAI's `BasicUNetPlusPlus` (2-D).
//! - [`nested_unet`]: the `NestedUNet` of pytorch-nested-unet.
//! - [`smp`]: segmentation_models_pytorch's `UnetPlusPlus` with ResNet encoders.
//!
//! Each source loads through the same checks as the crate's own files: a missing, extra or
//! mis-shaped tensor is an [`Error::Weights`] that names it.

pub mod monai;
pub mod nested_unet;
pub mod smp;

use std::collections::HashMap;

use candle_core::Tensor;

use crate::{Error, Result};

/// Dimension `d` of tensor `name` of a `state_dict`, for reading a configuration from its
/// shapes; a missing tensor is an error that says which `source` the file was expected from.
pub(crate) fn dim_of(
    tensors: &HashMap<String, Tensor>,
    source: &str,
    name: &str,
    d: usize,
) -> Result<usize> {
    let t = tensors
        .get(name)
        .ok_or_else(|| Error::weights(name, format!("missing: not {source} state_dict?")))?;
    t.dims()
        .get(d)
        .copied()
        .ok_or_else(|| Error::weights(name, format!("unexpected shape {:?}", t.dims())))
}
