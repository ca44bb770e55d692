//! The weight names of torchvision checkpoints written before 0.13, and today's.

use std::collections::HashMap;

use candle_core::Tensor;

/// The names of a torchvision state dict with those of checkpoints written before
/// torchvision 0.13 replaced by the current ones, as its `_load_from_state_dict` renames them:
/// `….inner_blocks.{i}.{weight,bias}` and `….layer_blocks.{i}.*` become `….{i}.0.*` (FPN),
/// `…head.conv.*` becomes `…head.conv.0.0.*` (RPN), `…mask_head.mask_fcn{k}.*` becomes
/// `…mask_head.{k-1}.0.*`. Other names are kept. Works on whole-model names and on those of a
/// part (`roi_heads.` removed, for example).
///
/// ```
/// use std::collections::HashMap;
/// use candle_core::{Device, Tensor};
/// let t = Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu)?;
/// let old: HashMap<String, Tensor> = ["backbone.fpn.inner_blocks.2.bias", "rpn.head.conv.weight", "mask_head.mask_fcn1.bias"]
///     .iter().map(|n| (n.to_string(), t.clone())).collect();
/// let mut new: Vec<String> = unetpp::maskrcnn::current_names(old).into_keys().collect();
/// new.sort();
/// assert_eq!(new, ["backbone.fpn.inner_blocks.2.0.bias", "mask_head.0.0.bias", "rpn.head.conv.0.0.weight"]);
/// # Ok::<(), unetpp::Error>(())
/// ```
pub fn current_names(tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    tensors
        .into_iter()
        .map(|(name, t)| (current_name(&name).unwrap_or(name), t))
        .collect()
}

fn current_name(name: &str) -> Option<String> {
    let parts: Vec<&str> = name.split('.').collect();
    let n = parts.len();
    let leaf = *parts.last()?;
    if n < 2 || !matches!(leaf, "weight" | "bias") {
        return None;
    }
    let stem = parts[..n - 1].join(".");
    let before = |k: usize| parts[..n - k].join(".");
    if n >= 3
        && matches!(parts[n - 3], "inner_blocks" | "layer_blocks")
        && parts[n - 2].parse::<usize>().is_ok()
    {
        return Some(format!("{stem}.0.{leaf}"));
    }
    if n >= 3 && parts[n - 3] == "head" && parts[n - 2] == "conv" {
        return Some(format!("{stem}.0.0.{leaf}"));
    }
    let k: usize = parts[n - 2].strip_prefix("mask_fcn")?.parse().ok()?;
    if k == 0 || n < 3 || parts[n - 3] != "mask_head" {
        return None;
    }
    Some(format!("{}.{}.0.{leaf}", before(2), k - 1))
}
