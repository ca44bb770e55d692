//! The `NestedUNet` of pytorch-nested-unet (4uiiurz1): import and export of its `state_dict`.
//!
//! Its layout is [`UNetPlusPlusConfig::nested_unet`]: batch-norm, ReLU, bilinear up-sampling
//! with `align_corners=True`, the skips concatenated before the up-sampled map, conv bias on,
//! one head `final` on `X^{0,4}` or four `final1..final4` with deep supervision. Names map node
//! by node: `conv{i}_{j}.conv{k}.*` ↔ `x_{i}_{j}.conv{k}.*`, `conv{i}_{j}.bn{k}.*` ↔
//! `x_{i}_{j}.norm{k}.*` (`num_batches_tracked` is skipped), `final.*` ↔ `head_4.*`,
//! `final{j}.*` ↔ `head_{j}.*`. Its widths are fixed at 32–512 in the original code; any
//! widths are read from the shapes here.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::nested::{UNetPlusPlus, UNetPlusPlusConfig};
use crate::{weights, Error, Result};

/// Our name for a `NestedUNet` tensor name; `None` for names without a counterpart.
pub fn from_nested_unet_name(name: &str) -> Option<String> {
    let (module, leaf) = name.split_once('.')?;
    if module == "final" {
        return Some(format!("head_4.{leaf}"));
    }
    if let Some(j) = module.strip_prefix("final") {
        let j: usize = j.parse().ok()?;
        return Some(format!("head_{j}.{leaf}"));
    }
    let (i, j) = module.strip_prefix("conv")?.split_once('_')?;
    let (layer, leaf) = leaf.split_once('.')?;
    let layer = match layer {
        "conv1" | "conv2" => layer.to_string(),
        "bn1" => "norm1".into(),
        "bn2" => "norm2".into(),
        _ => return None,
    };
    Some(format!("x_{i}_{j}.{layer}.{leaf}"))
}

/// `NestedUNet`'s name for one of ours; `deep_supervision` chooses `final{j}` over `final`.
pub fn to_nested_unet_name(name: &str, deep_supervision: bool) -> Option<String> {
    let (module, leaf) = name.split_once('.')?;
    if let Some(j) = module.strip_prefix("head_") {
        return Some(if deep_supervision {
            format!("final{j}.{leaf}")
        } else {
            format!("final.{leaf}")
        });
    }
    let (i, j) = module.strip_prefix("x_")?.split_once('_')?;
    let (layer, leaf) = leaf.split_once('.')?;
    let layer = match layer {
        "conv1" | "conv2" => layer,
        "norm1" => "bn1",
        "norm2" => "bn2",
        _ => return None,
    };
    Some(format!("conv{i}_{j}.{layer}.{leaf}"))
}

/// The configuration of a `NestedUNet` `state_dict`, read from its shapes.
pub fn detect(tensors: &HashMap<String, Tensor>) -> Result<UNetPlusPlusConfig> {
    let dim = |name: &str, d: usize| super::dim_of(tensors, "a NestedUNet", name, d);
    let widths = (0..5)
        .map(|i| dim(&format!("conv{i}_0.conv1.weight"), 0))
        .collect::<Result<Vec<_>>>()?;
    let deep = tensors.contains_key("final1.weight");
    let head = if deep {
        "final1.weight"
    } else {
        "final.weight"
    };
    UNetPlusPlusConfig::nested_unet()
        .in_channels(dim("conv0_0.conv1.weight", 1)?)
        .num_classes(dim(head, 0)?)
        .widths(widths)
        .depth(4)
        .deep_supervision(deep)
        .build()
}

/// A UNet++ from a `NestedUNet` `state_dict` (named tensors), with the configuration read
/// from the shapes. Returns the network and that configuration.
pub fn from_nested_unet(
    tensors: HashMap<String, Tensor>,
    device: &Device,
) -> Result<(UNetPlusPlus, UNetPlusPlusConfig)> {
    let cfg = detect(&tensors)?;
    let mut ours = HashMap::with_capacity(tensors.len());
    for (name, t) in tensors {
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        let mapped = from_nested_unet_name(&name)
            .ok_or_else(|| Error::weights(name.as_str(), "not a tensor of NestedUNet"))?;
        ours.insert(mapped, t);
    }
    let net = weights::build_checked(ours, DType::F32, device, |vb| UNetPlusPlus::new(&cfg, vb))?;
    Ok((net, cfg))
}

/// [`from_nested_unet`] from a safetensors file.
pub fn load_nested_unet(
    path: impl AsRef<Path>,
    device: &Device,
) -> Result<(UNetPlusPlus, UNetPlusPlusConfig)> {
    from_nested_unet(weights::load_tensors(path, device)?, device)
}

/// Writes `net` under `NestedUNet`'s names (its heads decide `final` or `final1..4`). PyTorch's
/// `load_state_dict` also wants each batch-norm's `num_batches_tracked`; it is written as 0.
pub fn save_nested_unet(net: &UNetPlusPlus, path: impl AsRef<Path>) -> Result<()> {
    let deep = match net.head_cols().as_slice() {
        [1, 2, 3, 4] => true,
        [4] => false,
        other => {
            return Err(Error::config(
                "heads",
                format!("NestedUNet has heads on X^{{0,4}} or on X^{{0,1..4}}, not {other:?}"),
            ))
        }
    };
    let mut tensors = Vec::new();
    for t in net.named_tensors() {
        let name = to_nested_unet_name(&t.name, deep)
            .ok_or_else(|| Error::weights(t.name.as_str(), "has no NestedUNet counterpart"))?;
        if name.ends_with(".running_var") {
            let counter = name.replace(".running_var", ".num_batches_tracked");
            tensors.push((counter, Tensor::new(0i64, t.tensor.device())?));
        }
        tensors.push((name, t.tensor));
    }
    weights::save_with_metadata(&tensors, None, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        for (theirs, ours, deep) in [
            ("conv0_0.conv1.weight", "x_0_0.conv1.weight", false),
            (
                "conv2_1.bn2.running_mean",
                "x_2_1.norm2.running_mean",
                false,
            ),
            ("final.bias", "head_4.bias", false),
            ("final3.weight", "head_3.weight", true),
        ] {
            assert_eq!(
                from_nested_unet_name(theirs).as_deref(),
                Some(ours),
                "{theirs}"
            );
            assert_eq!(
                to_nested_unet_name(ours, deep).as_deref(),
                Some(theirs),
                "{ours}"
            );
        }
        assert_eq!(from_nested_unet_name("conv0_0.relu.x"), None);
    }
}
