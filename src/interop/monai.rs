//! MONAI's `BasicUNetPlusPlus` (`spatial_dims=2`): import and export of its `state_dict`.
//!
//! MONAI builds the same grid with instance norm (affine), LeakyReLU 0.1, 2×2 transposed
//! convolutions, the skips concatenated before the up-sampled map, and four 1×1 heads (always
//! built; `deep_supervision=False` only makes its forward return the last one). Its names map
//! to ours node by node:
//!
//! | MONAI | unetpp |
//! |---|---|
//! | `conv_0_0.conv_{k}.conv.*`, `conv_{i}_0.convs.conv_{k}.conv.*` | `x_{i}_0.conv{k+1}.*` |
//! | `… .adn.N.weight`, `… .adn.N.bias` | `x_{i}_{j}.norm{k+1}.weight`, `.bias` |
//! | `upcat_{i}_{j}.convs.conv_{k}.…` | `x_{i}_{j}.conv{k+1}.…` / `.norm{k+1}.…` |
//! | `upcat_{i}_{j}.upsample.deconv.*` | `up_{i}_{j}.*` |
//! | `final_conv_0_{j}.*` | `head_{j}.*` |
//!
//! MONAI's up-sampling halves the channels of the level below (keeping them at level 0) and
//! its sixth feature is the width of `X^{0,4}`: the configuration says so with
//! [`up_widths`](crate::nested::UNetPlusPlusConfigBuilder::up_widths) and
//! [`top_width`](crate::nested::UNetPlusPlusConfigBuilder::top_width).
//! Inputs of any size run as in MONAI (pooling floors odd sizes; an up-sampled map one pixel
//! short is replicate-padded at its end: [`UNetPlusPlusConfigBuilder::pad_upsampled`](crate::nested::UNetPlusPlusConfigBuilder::pad_upsampled)).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::nested::{ConcatOrder, UNetPlusPlus, UNetPlusPlusConfig};
use crate::nn::{Activation, Norm};
use crate::{weights, Error, Result};

/// What a MONAI `BasicUNetPlusPlus` was built with: [`MonaiConfig::builder`] (MONAI's
/// defaults), chained setters on the returned [`MonaiConfigBuilder`], then
/// [`MonaiConfigBuilder::build`]; or [`Self::detect`] from a `state_dict`.
///
/// ```
/// use unetpp::interop::monai::MonaiConfig;
/// let cfg = MonaiConfig::builder().in_channels(3).out_channels(4).build()?;
/// assert_eq!(cfg.to_unetpp()?.widths(), &[32, 32, 64, 128, 256]);
/// let err = cfg.to_builder().features([32, 32, 1, 128, 256, 32]).build().unwrap_err();
/// assert!(matches!(err, unetpp::Error::Config { field: "features", .. }));
/// # Ok::<(), unetpp::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "MonaiConfigBuilder"))]
pub struct MonaiConfig {
    in_channels: usize,
    out_channels: usize,
    features: [usize; 6],
}

/// Chained setters for a [`MonaiConfig`]; nothing is checked until [`Self::build`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MonaiConfigBuilder {
    in_channels: usize,
    out_channels: usize,
    features: [usize; 6],
}

impl MonaiConfig {
    /// MONAI's defaults (see [`MonaiConfigBuilder::default`]).
    pub fn builder() -> MonaiConfigBuilder {
        MonaiConfigBuilder::default()
    }

    /// A builder holding this configuration, to change it.
    pub fn to_builder(&self) -> MonaiConfigBuilder {
        MonaiConfigBuilder {
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            features: self.features,
        }
    }

    /// `in_channels`.
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }

    /// `out_channels`.
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// `features`: widths of levels 0–4, then of `X^{0,4}`.
    pub fn features(&self) -> [usize; 6] {
        self.features
    }

    /// The equivalent UNet++ configuration (all four heads, as MONAI always builds them).
    pub fn to_unetpp(&self) -> Result<UNetPlusPlusConfig> {
        let f = self.features;
        UNetPlusPlusConfig::paper()
            // MONAI's UpCat keeps f1 into level 0 and halves f_{i+1} into level i >= 1.
            .up_widths([f[1], f[2] / 2, f[3] / 2, f[4] / 2])
            .top_width(f[5])
            .in_channels(self.in_channels)
            .num_classes(self.out_channels)
            .widths(f[..5].to_vec())
            .depth(4)
            .norm(Norm::Instance)
            .activation(Activation::LeakyRelu(0.1))
            .concat_order(ConcatOrder::SkipsFirst)
            .heads([1, 2, 3, 4])
            .pad_upsampled(true)
            .build()
    }

    /// Reads the configuration from a `state_dict`'s shapes.
    pub fn detect(tensors: &HashMap<String, Tensor>) -> Result<Self> {
        let dim =
            |name: &str, d: usize| super::dim_of(tensors, "a MONAI BasicUNetPlusPlus", name, d);
        let mut features = [0usize; 6];
        features[0] = dim("conv_0_0.conv_0.conv.weight", 0)?;
        for (i, f) in features.iter_mut().enumerate().take(5).skip(1) {
            *f = dim(&format!("conv_{i}_0.convs.conv_0.conv.weight"), 0)?;
        }
        features[5] = dim("upcat_0_4.convs.conv_0.conv.weight", 0)?;
        MonaiConfigBuilder {
            in_channels: dim("conv_0_0.conv_0.conv.weight", 1)?,
            out_channels: dim("final_conv_0_4.weight", 0)?,
            features,
        }
        .build()
    }
}

impl Default for MonaiConfigBuilder {
    /// `BasicUNetPlusPlus`'s defaults: `in_channels=1`, `out_channels=2`,
    /// `features=(32, 32, 64, 128, 256, 32)`.
    fn default() -> Self {
        Self {
            in_channels: 1,
            out_channels: 2,
            features: [32, 32, 64, 128, 256, 32],
        }
    }
}

impl MonaiConfigBuilder {
    /// `in_channels`, at least 1.
    pub fn in_channels(mut self, in_channels: usize) -> Self {
        self.in_channels = in_channels;
        self
    }

    /// `out_channels`, at least 1.
    pub fn out_channels(mut self, out_channels: usize) -> Self {
        self.out_channels = out_channels;
        self
    }

    /// `features`: widths of levels 0–4, then of `X^{0,4}`; each at least 1, and `f2..f4` at
    /// least 2 (MONAI halves them).
    pub fn features(mut self, features: [usize; 6]) -> Self {
        self.features = features;
        self
    }

    /// The configuration, or an [`Error::Config`] naming the first invalid field.
    pub fn build(self) -> Result<MonaiConfig> {
        if self.in_channels == 0 {
            return Err(Error::config("in_channels", "must be at least 1"));
        }
        if self.out_channels == 0 {
            return Err(Error::config("out_channels", "must be at least 1"));
        }
        let f = self.features;
        if f.contains(&0) || f[2..5].iter().any(|&w| w < 2) {
            return Err(Error::config(
                "features",
                format!(
                    "MONAI features {f:?}: each must be at least 1, and f2..f4 at least 2 (they are halved)"
                ),
            ));
        }
        Ok(MonaiConfig {
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            features: self.features,
        })
    }
}

built_by!(MonaiConfig, MonaiConfigBuilder);

/// Our name for a MONAI tensor name; `None` for a name that has no counterpart.
pub fn from_monai_name(name: &str) -> Option<String> {
    if let Some(rest) = name.strip_prefix("final_conv_0_") {
        let (j, leaf) = rest.split_once('.')?;
        return Some(format!("head_{j}.{leaf}"));
    }
    let (node, rest) = name.split_once('.')?;
    let (i, j) = if let Some(ij) = node.strip_prefix("conv_") {
        ij.split_once('_')?
    } else {
        node.strip_prefix("upcat_")?.split_once('_')?
    };
    if let Some(leaf) = rest.strip_prefix("upsample.deconv.") {
        return Some(format!("up_{i}_{j}.{leaf}"));
    }
    let rest = rest.strip_prefix("convs.").unwrap_or(rest);
    let (conv, rest) = rest.split_once('.')?;
    let k: usize = conv.strip_prefix("conv_")?.parse().ok()?;
    if let Some(leaf) = rest.strip_prefix("conv.") {
        Some(format!("x_{i}_{j}.conv{}.{leaf}", k + 1))
    } else {
        let leaf = rest.strip_prefix("adn.N.")?;
        Some(format!("x_{i}_{j}.norm{}.{leaf}", k + 1))
    }
}

/// MONAI's name for one of ours (the inverse of [`from_monai_name`]).
pub fn to_monai_name(name: &str) -> Option<String> {
    let (module, leaf) = name.split_once('.')?;
    if let Some(j) = module.strip_prefix("head_") {
        return Some(format!("final_conv_0_{j}.{leaf}"));
    }
    if let Some(ij) = module.strip_prefix("up_") {
        return Some(format!("upcat_{ij}.upsample.deconv.{leaf}"));
    }
    let (i, j) = module.strip_prefix("x_")?.split_once('_')?;
    let (layer, leaf) = leaf.split_once('.')?;
    let (kind, k) = if let Some(k) = layer.strip_prefix("conv") {
        ("conv", k)
    } else {
        ("adn.N", layer.strip_prefix("norm")?)
    };
    let k: usize = k.parse().ok()?;
    let node = match (i, j) {
        ("0", "0") => "conv_0_0.".to_string(),
        (i, "0") => format!("conv_{i}_0.convs."),
        (i, j) => format!("upcat_{i}_{j}.convs."),
    };
    Some(format!("{node}conv_{}.{kind}.{leaf}", k.checked_sub(1)?))
}

/// A UNet++ from a MONAI `BasicUNetPlusPlus` `state_dict` (named tensors), with the
/// configuration read from the shapes. Returns the network and that configuration.
pub fn from_monai(
    tensors: HashMap<String, Tensor>,
    device: &Device,
) -> Result<(UNetPlusPlus, UNetPlusPlusConfig)> {
    let cfg = MonaiConfig::detect(&tensors)?.to_unetpp()?;
    let mut ours = HashMap::with_capacity(tensors.len());
    for (name, t) in tensors {
        let mapped = from_monai_name(&name).ok_or_else(|| {
            Error::weights(name.as_str(), "not a tensor of MONAI's BasicUNetPlusPlus")
        })?;
        ours.insert(mapped, t);
    }
    let net = weights::build_checked(ours, DType::F32, device, |vb| UNetPlusPlus::new(&cfg, vb))?;
    Ok((net, cfg))
}

/// [`from_monai`] from a safetensors file (see `scripts/export_monai.py`).
pub fn load_monai(
    path: impl AsRef<Path>,
    device: &Device,
) -> Result<(UNetPlusPlus, UNetPlusPlusConfig)> {
    from_monai(weights::load_tensors(path, device)?, device)
}

/// Writes `net` under MONAI's names, so that `BasicUNetPlusPlus.load_state_dict` takes it
/// (the network must have MONAI's layout and all four heads).
pub fn save_monai(net: &UNetPlusPlus, path: impl AsRef<Path>) -> Result<()> {
    if net.head_cols() != [1, 2, 3, 4] {
        return Err(Error::config(
            "heads",
            "MONAI's BasicUNetPlusPlus has all four heads; save the full network",
        ));
    }
    let tensors = net
        .named_tensors()
        .into_iter()
        .map(|t| {
            let name = to_monai_name(&t.name)
                .ok_or_else(|| Error::weights(t.name.as_str(), "has no MONAI counterpart"))?;
            Ok((name, t.tensor))
        })
        .collect::<Result<Vec<_>>>()?;
    weights::save_with_metadata(&tensors, None, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        for (monai, ours) in [
            ("conv_0_0.conv_1.conv.weight", "x_0_0.conv2.weight"),
            ("conv_0_0.conv_0.adn.N.bias", "x_0_0.norm1.bias"),
            ("conv_3_0.convs.conv_0.conv.bias", "x_3_0.conv1.bias"),
            ("upcat_1_2.convs.conv_1.adn.N.weight", "x_1_2.norm2.weight"),
            ("upcat_0_4.upsample.deconv.weight", "up_0_4.weight"),
            ("final_conv_0_3.bias", "head_3.bias"),
        ] {
            assert_eq!(from_monai_name(monai).as_deref(), Some(ours), "{monai}");
            assert_eq!(to_monai_name(ours).as_deref(), Some(monai), "{ours}");
        }
        assert_eq!(from_monai_name("something.else"), None);
    }
}
