//! Configuration of a UNet++: presets, a builder, validation.

use super::grid::ConcatOrder;
use crate::nn::{Activation, Norm, Upsample};
use crate::{Error, Result};

/// A validated UNet++ configuration. Build one with [`UNetPlusPlusConfig::paper`] (or another
/// preset), chain setters on the returned [`UNetPlusPlusConfigBuilder`], then call
/// [`UNetPlusPlusConfigBuilder::build`].
///
/// ```
/// use unetpp::prelude::*;
/// let cfg = UNetPlusPlusConfig::paper().in_channels(3).num_classes(2).depth(3).build()?;
/// assert_eq!(cfg.heads(), &[1, 2, 3]);
/// # Ok::<(), unetpp::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(
    feature = "serde",
    serde(
        try_from = "UNetPlusPlusConfigBuilder",
        into = "UNetPlusPlusConfigBuilder"
    )
)]
pub struct UNetPlusPlusConfig {
    pub(crate) in_channels: usize,
    pub(crate) num_classes: usize,
    pub(crate) widths: Vec<usize>,
    pub(crate) depth: usize,
    pub(crate) heads: Vec<usize>,
    pub(crate) norm: Norm,
    pub(crate) activation: Activation,
    pub(crate) dropout: f32,
    pub(crate) upsample: Upsample,
    pub(crate) concat: ConcatOrder,
    pub(crate) conv_bias: bool,
    pub(crate) pad_to_multiple: bool,
    pub(crate) pad_upsampled: bool,
    pub(crate) up_widths: Option<Vec<usize>>,
    pub(crate) top_width: Option<usize>,
}

/// Chained setters for a [`UNetPlusPlusConfig`]; nothing is checked until [`Self::build`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct UNetPlusPlusConfigBuilder {
    in_channels: usize,
    num_classes: usize,
    widths: Vec<usize>,
    depth: usize,
    deep_supervision: bool,
    heads: Option<Vec<usize>>,
    norm: Norm,
    activation: Activation,
    dropout: f32,
    upsample: Upsample,
    concat: ConcatOrder,
    conv_bias: bool,
    pad_to_multiple: bool,
    pad_upsampled: bool,
    up_widths: Option<Vec<usize>>,
    top_width: Option<usize>,
}

impl UNetPlusPlusConfig {
    /// The paper's network: widths 32, 64, 128, 256, 512, depth 4, (3×3 conv + ReLU) ×2 without
    /// normalisation, 2×2 transposed-conv up-sampling, up-sampled map first, deep supervision
    /// on all four heads; 1 input channel, 1 class. Dropout is off (the official code uses 0.5;
    /// set it with [`UNetPlusPlusConfigBuilder::dropout`]).
    pub fn paper() -> UNetPlusPlusConfigBuilder {
        UNetPlusPlusConfigBuilder {
            in_channels: 1,
            num_classes: 1,
            widths: vec![32, 64, 128, 256, 512],
            depth: 4,
            deep_supervision: true,
            heads: None,
            norm: Norm::None,
            activation: Activation::Relu,
            dropout: 0.0,
            upsample: Upsample::Transposed,
            concat: ConcatOrder::UpsampledFirst,
            conv_bias: true,
            pad_to_multiple: false,
            pad_upsampled: false,
            up_widths: None,
            top_width: None,
        }
    }

    /// The layout of pytorch-nested-unet's `NestedUNet`: batch norm, ReLU, bilinear
    /// up-sampling with `align_corners = true`, skips first; deep supervision on.
    pub fn nested_unet() -> UNetPlusPlusConfigBuilder {
        Self::paper()
            .norm(Norm::Batch)
            .upsample(Upsample::Bilinear {
                align_corners: true,
            })
            .concat_order(ConcatOrder::SkipsFirst)
    }

    /// A builder holding this configuration, to change it.
    pub fn to_builder(&self) -> UNetPlusPlusConfigBuilder {
        UNetPlusPlusConfigBuilder {
            in_channels: self.in_channels,
            num_classes: self.num_classes,
            widths: self.widths.clone(),
            depth: self.depth,
            deep_supervision: self.heads.len() > 1,
            heads: Some(self.heads.clone()),
            norm: self.norm,
            activation: self.activation,
            dropout: self.dropout,
            upsample: self.upsample,
            concat: self.concat,
            conv_bias: self.conv_bias,
            pad_to_multiple: self.pad_to_multiple,
            pad_upsampled: self.pad_upsampled,
            up_widths: self.up_widths.clone(),
            top_width: self.top_width,
        }
    }

    /// Input channels.
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }
    /// Output classes (channels of each head).
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }
    /// The widths `f_0..f_L` in use (exactly `depth + 1` of them).
    pub fn widths(&self) -> &[usize] {
        &self.widths
    }
    /// `L`, the number of down-sampling steps.
    pub fn depth(&self) -> usize {
        self.depth
    }
    /// Columns `j` whose node `X^{0,j}` carries a head, ascending.
    pub fn heads(&self) -> &[usize] {
        &self.heads
    }
    /// Whether more than one head is trained.
    pub fn deep_supervision(&self) -> bool {
        self.heads.len() > 1
    }
    /// Normalisation in each block.
    pub fn norm(&self) -> Norm {
        self.norm
    }
    /// Activation in each block.
    pub fn activation(&self) -> Activation {
        self.activation
    }
    /// Dropout probability after each activation.
    pub fn dropout(&self) -> f32 {
        self.dropout
    }
    /// Up-sampling mode.
    pub fn upsample(&self) -> Upsample {
        self.upsample
    }
    /// Concatenation order at each node.
    pub fn concat_order(&self) -> ConcatOrder {
        self.concat
    }
    /// Whether the 3×3 convolutions have a bias.
    pub fn conv_bias(&self) -> bool {
        self.conv_bias
    }
    /// Whether inputs whose size is not a multiple of `2^depth` are padded (and the outputs
    /// cropped back) instead of rejected.
    pub fn pad_to_multiple(&self) -> bool {
        self.pad_to_multiple
    }

    /// Channels the transposed up-sampling produces into each level `i` (default `f_i`).
    pub fn up_widths(&self) -> Option<&[usize]> {
        self.up_widths.as_deref()
    }

    /// Width of the last node `X^{0,L}` (default `f_0`).
    pub fn top_width(&self) -> Option<usize> {
        self.top_width
    }

    /// Channels node `X^{i,j}` computes (`None` past the configured widths).
    pub(crate) fn node_width(&self, i: usize, j: usize) -> Option<usize> {
        match self.top_width {
            Some(w) if i == 0 && j == self.depth => Some(w),
            _ => self.widths.get(i).copied(),
        }
    }

    /// Channels the up-sampled map entering level `i` has (`None` past the configured widths).
    pub(crate) fn up_channels(&self, i: usize) -> Option<usize> {
        match (&self.up_widths, self.upsample.keeps_channels()) {
            (Some(u), false) => u.get(i).copied(),
            (_, true) => self.widths.get(i + 1).copied(),
            (None, false) => self.widths.get(i).copied(),
        }
    }

    /// Whether inputs of any size run, an up-sampled map one pixel short of its level being
    /// replicate-padded at its end (MONAI's way).
    pub fn pad_upsampled(&self) -> bool {
        self.pad_upsampled
    }
}

impl UNetPlusPlusConfigBuilder {
    /// Input channels (1 for grey images, 3 for RGB).
    pub fn in_channels(mut self, c: usize) -> Self {
        self.in_channels = c;
        self
    }
    /// Output classes: 1 for binary segmentation (sigmoid), `n ≥ 2` for `n`-way softmax.
    pub fn num_classes(mut self, n: usize) -> Self {
        self.num_classes = n;
        self
    }
    /// Widths `f_0, f_1, …`; at least `depth + 1` values (extra ones are ignored).
    pub fn widths(mut self, widths: impl Into<Vec<usize>>) -> Self {
        self.widths = widths.into();
        self
    }
    /// `L`: number of down-sampling steps (the paper's L1–L4).
    pub fn depth(mut self, depth: usize) -> Self {
        self.depth = depth;
        self
    }
    /// Deep supervision: heads on every `X^{0,1..L}` (on), or only on `X^{0,L}` (off).
    pub fn deep_supervision(mut self, on: bool) -> Self {
        self.deep_supervision = on;
        self.heads = None;
        self
    }
    /// An explicit set of head columns `j` (each in `1..=depth`), instead of
    /// [`Self::deep_supervision`].
    pub fn heads(mut self, cols: impl Into<Vec<usize>>) -> Self {
        self.heads = Some(cols.into());
        self
    }
    /// Normalisation inside each block.
    pub fn norm(mut self, norm: Norm) -> Self {
        self.norm = norm;
        self
    }
    /// Activation inside each block.
    pub fn activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }
    /// Dropout probability after each activation, in `[0, 1)`.
    pub fn dropout(mut self, p: f32) -> Self {
        self.dropout = p;
        self
    }
    /// Up-sampling mode.
    pub fn upsample(mut self, mode: Upsample) -> Self {
        self.upsample = mode;
        self
    }
    /// Concatenation order at each node.
    pub fn concat_order(mut self, order: ConcatOrder) -> Self {
        self.concat = order;
        self
    }
    /// Whether the 3×3 convolutions have a bias (default true).
    pub fn conv_bias(mut self, on: bool) -> Self {
        self.conv_bias = on;
        self
    }
    /// Pad inputs whose height or width is not a multiple of `2^depth` (replicating the
    /// border), run, and crop the outputs back to the input's size.
    pub fn pad_to_multiple(mut self, on: bool) -> Self {
        self.pad_to_multiple = on;
        self
    }

    /// Channels of the transposed up-sampling into each level `i = 0..depth` (by default `f_i`;
    /// MONAI halves `f_{i+1}` instead). Only with transposed-convolution up-sampling.
    pub fn up_widths(mut self, widths: impl Into<Vec<usize>>) -> Self {
        self.up_widths = Some(widths.into());
        self
    }

    /// Width of the last node `X^{0,L}` (by default `f_0`; MONAI's sixth feature).
    pub fn top_width(mut self, width: usize) -> Self {
        self.top_width = Some(width);
        self
    }

    /// Run inputs of any size (at least `2^depth` pixels each way) as MONAI's
    /// `BasicUNetPlusPlus` does: pooling floors odd sizes, and where an up-sampled map is one
    /// pixel short of the maps of its level, its last row or column is repeated. Used for
    /// MONAI weights; [`Self::pad_to_multiple`] takes precedence when both are on.
    pub fn pad_upsampled(mut self, on: bool) -> Self {
        self.pad_upsampled = on;
        self
    }

    /// Validates the configuration; an [`Error::Config`] names the first bad field.
    pub fn build(self) -> Result<UNetPlusPlusConfig> {
        let mut cfg = UNetPlusPlusConfig {
            in_channels: self.in_channels,
            num_classes: self.num_classes,
            widths: self.widths,
            depth: self.depth,
            heads: Vec::new(),
            norm: self.norm,
            activation: self.activation,
            dropout: self.dropout,
            upsample: self.upsample,
            concat: self.concat,
            conv_bias: self.conv_bias,
            pad_to_multiple: self.pad_to_multiple,
            pad_upsampled: self.pad_upsampled,
            up_widths: self.up_widths,
            top_width: self.top_width,
        };
        if cfg.in_channels == 0 {
            return Err(Error::config("in_channels", "must be at least 1"));
        }
        if cfg.num_classes == 0 {
            return Err(Error::config("num_classes", "must be at least 1"));
        }
        if cfg.depth == 0 {
            return Err(Error::config(
                "depth",
                "must be at least 1 (the paper uses 1 to 4)",
            ));
        }
        if cfg.depth > 16 {
            return Err(Error::config(
                "depth",
                format!("{} is too deep: at most 16", cfg.depth),
            ));
        }
        if cfg.widths.len() < cfg.depth + 1 {
            return Err(Error::config(
                "widths",
                format!(
                    "depth {} needs {} widths (f_0..f_{}), got {}",
                    cfg.depth,
                    cfg.depth + 1,
                    cfg.depth,
                    cfg.widths.len()
                ),
            ));
        }
        cfg.widths.truncate(cfg.depth + 1);
        if let Some(pos) = cfg.widths.iter().position(|&w| w == 0) {
            return Err(Error::config(
                "widths",
                format!("f_{pos} is 0; every width must be at least 1"),
            ));
        }
        if let Some(u) = &cfg.up_widths {
            if cfg.upsample.keeps_channels() {
                return Err(Error::config(
                    "up_widths",
                    "only transposed-convolution up-sampling has its own channels",
                ));
            }
            if u.len() < cfg.depth || u[..cfg.depth].contains(&0) {
                return Err(Error::config(
                    "up_widths",
                    format!(
                        "depth {} needs {} non-zero widths, got {u:?}",
                        cfg.depth, cfg.depth
                    ),
                ));
            }
        }
        if cfg.up_widths.as_ref().is_some_and(|u| u.len() > cfg.depth) {
            if let Some(u) = cfg.up_widths.as_mut() {
                u.truncate(cfg.depth);
            }
        }
        if cfg.top_width == Some(0) {
            return Err(Error::config("top_width", "must be at least 1"));
        }
        if !(0.0..1.0).contains(&cfg.dropout) {
            return Err(Error::config(
                "dropout",
                format!("{} is outside [0, 1)", cfg.dropout),
            ));
        }
        if let Activation::LeakyRelu(slope) = cfg.activation {
            if !slope.is_finite() {
                return Err(Error::config(
                    "activation",
                    format!("leaky ReLU slope {slope} is not finite"),
                ));
            }
        }
        if let Norm::Group(g) = cfg.norm {
            if g == 0 {
                return Err(Error::config("norm", "group norm needs at least one group"));
            }
            if let Some(w) = cfg.widths.iter().find(|&&w| w % g != 0) {
                return Err(Error::config(
                    "norm",
                    format!("{g} groups do not divide width {w}"),
                ));
            }
        }
        let mut heads = match self.heads {
            Some(h) => h,
            None if self.deep_supervision => (1..=cfg.depth).collect(),
            None => vec![cfg.depth],
        };
        if heads.is_empty() {
            return Err(Error::config("heads", "at least one head is needed"));
        }
        if heads.len() > cfg.depth {
            return Err(Error::config(
                "heads",
                format!(
                    "{} heads but depth {} has only {} levels to put them on",
                    heads.len(),
                    cfg.depth,
                    cfg.depth
                ),
            ));
        }
        if let Some(&bad) = heads.iter().find(|&&j| j == 0 || j > cfg.depth) {
            return Err(Error::config(
                "heads",
                format!(
                    "head X^{{0,{bad}}} does not exist: columns run 1..={}",
                    cfg.depth
                ),
            ));
        }
        heads.sort_unstable();
        if heads.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::config("heads", "a head column is listed twice"));
        }
        cfg.heads = heads;
        Ok(cfg)
    }
}

impl UNetPlusPlusConfig {
    /// The configuration as one line of `key=value` pairs separated by `;`: the form
    /// [`crate::UNetPlusPlus::save`] stores in a weight file's metadata, so that
    /// [`crate::UNetPlusPlus::load`] needs no configuration passed back in.
    ///
    /// ```
    /// use unetpp::prelude::*;
    /// let cfg = UNetPlusPlusConfig::nested_unet().widths([4, 8, 16]).depth(2).build()?;
    /// assert_eq!(UNetPlusPlusConfig::from_metadata(&cfg.to_metadata())?, cfg);
    /// # Ok::<(), unetpp::Error>(())
    /// ```
    pub fn to_metadata(&self) -> String {
        let list = |v: &[usize]| v.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
        let norm = match self.norm {
            Norm::None => "none".to_string(),
            Norm::Batch => "batch".to_string(),
            Norm::Instance => "instance".to_string(),
            Norm::Group(g) => format!("group:{g}"),
        };
        let activation = match self.activation {
            Activation::Relu => "relu".to_string(),
            Activation::LeakyRelu(slope) => format!("leaky_relu:{slope}"),
        };
        let upsample = match self.upsample {
            Upsample::Transposed => "transposed",
            Upsample::Nearest => "nearest",
            Upsample::Bilinear {
                align_corners: false,
            } => "bilinear",
            Upsample::Bilinear {
                align_corners: true,
            } => "bilinear_align_corners",
        };
        let concat = match self.concat {
            ConcatOrder::UpsampledFirst => "upsampled_first",
            ConcatOrder::SkipsFirst => "skips_first",
        };
        [
            format!("in_channels={}", self.in_channels),
            format!("num_classes={}", self.num_classes),
            format!("widths={}", list(&self.widths)),
            format!("depth={}", self.depth),
            format!("heads={}", list(&self.heads)),
            format!("norm={norm}"),
            format!("activation={activation}"),
            format!("dropout={}", self.dropout),
            format!("upsample={upsample}"),
            format!("concat={concat}"),
            format!("conv_bias={}", self.conv_bias),
            format!("pad_to_multiple={}", self.pad_to_multiple),
            format!("pad_upsampled={}", self.pad_upsampled),
            format!(
                "up_widths={}",
                self.up_widths.as_deref().map(list).unwrap_or_default()
            ),
            format!(
                "top_width={}",
                self.top_width.map(|w| w.to_string()).unwrap_or_default()
            ),
        ]
        .join(";")
    }

    /// Parses the form of [`Self::to_metadata`] and validates it as
    /// [`UNetPlusPlusConfigBuilder::build`] does. A missing, unknown or unreadable key is an
    /// [`Error::Config`] naming it.
    pub fn from_metadata(text: &str) -> Result<Self> {
        let mut values = std::collections::HashMap::new();
        for pair in text.split(';').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| Error::config("metadata", format!("`{pair}` is not key=value")))?;
            values.insert(k, v);
        }
        let mut take = |key: &'static str| {
            values
                .remove(key)
                .ok_or_else(|| Error::config(key, "missing from the stored configuration"))
        };
        fn bad(key: &'static str, v: &str) -> Error {
            Error::config(
                key,
                format!("cannot read `{v}` from the stored configuration"),
            )
        }
        fn num<T: std::str::FromStr>(key: &'static str, v: &str) -> Result<T> {
            v.parse().map_err(|_| bad(key, v))
        }
        fn list(key: &'static str, v: &str) -> Result<Vec<usize>> {
            v.split(',')
                .filter(|x| !x.is_empty())
                .map(|x| num(key, x))
                .collect()
        }
        let norm = match take("norm")? {
            "none" => Norm::None,
            "batch" => Norm::Batch,
            "instance" => Norm::Instance,
            v => match v.strip_prefix("group:") {
                Some(g) => Norm::Group(num("norm", g)?),
                None => return Err(bad("norm", v)),
            },
        };
        let activation = match take("activation")? {
            "relu" => Activation::Relu,
            v => match v.strip_prefix("leaky_relu:") {
                Some(slope) => Activation::LeakyRelu(num("activation", slope)?),
                None => return Err(bad("activation", v)),
            },
        };
        let upsample = match take("upsample")? {
            "transposed" => Upsample::Transposed,
            "nearest" => Upsample::Nearest,
            "bilinear" => Upsample::Bilinear {
                align_corners: false,
            },
            "bilinear_align_corners" => Upsample::Bilinear {
                align_corners: true,
            },
            v => return Err(bad("upsample", v)),
        };
        let concat = match take("concat")? {
            "upsampled_first" => ConcatOrder::UpsampledFirst,
            "skips_first" => ConcatOrder::SkipsFirst,
            v => return Err(bad("concat", v)),
        };
        let up_widths = list("up_widths", take("up_widths")?)?;
        let top_width = take("top_width")?;
        let builder = UNetPlusPlusConfigBuilder {
            in_channels: num("in_channels", take("in_channels")?)?,
            num_classes: num("num_classes", take("num_classes")?)?,
            widths: list("widths", take("widths")?)?,
            depth: num("depth", take("depth")?)?,
            deep_supervision: false,
            heads: Some(list("heads", take("heads")?)?),
            norm,
            activation,
            dropout: num("dropout", take("dropout")?)?,
            upsample,
            concat,
            conv_bias: num("conv_bias", take("conv_bias")?)?,
            pad_to_multiple: num("pad_to_multiple", take("pad_to_multiple")?)?,
            pad_upsampled: num("pad_upsampled", take("pad_upsampled")?)?,
            up_widths: (!up_widths.is_empty()).then_some(up_widths),
            top_width: if top_width.is_empty() {
                None
            } else {
                Some(num("top_width", top_width)?)
            },
        };
        if let Some(key) = values.keys().next() {
            return Err(Error::config(
                "metadata",
                format!("unknown key `{key}` in the stored configuration"),
            ));
        }
        builder.build()
    }
}

built_by!(UNetPlusPlusConfig, UNetPlusPlusConfigBuilder);

impl From<UNetPlusPlusConfig> for UNetPlusPlusConfigBuilder {
    fn from(cfg: UNetPlusPlusConfig) -> Self {
        cfg.to_builder()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_defaults() {
        let cfg = UNetPlusPlusConfig::paper().build().unwrap();
        assert_eq!(cfg.widths(), &[32, 64, 128, 256, 512]);
        assert_eq!(cfg.heads(), &[1, 2, 3, 4]);
        assert!(cfg.deep_supervision());
        let cfg = UNetPlusPlusConfig::paper()
            .deep_supervision(false)
            .depth(2)
            .build()
            .unwrap();
        assert_eq!(cfg.heads(), &[2]);
        assert_eq!(cfg.widths(), &[32, 64, 128]);
    }
}
