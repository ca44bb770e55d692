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
#[derive(Debug, Clone)]
pub struct UNetPlusPlusConfigBuilder {
    cfg: UNetPlusPlusConfig,
    deep_supervision: bool,
    heads: Option<Vec<usize>>,
}

impl UNetPlusPlusConfig {
    /// The paper's network: widths 32, 64, 128, 256, 512, depth 4, (3×3 conv + ReLU) ×2 without
    /// normalisation, 2×2 transposed-conv up-sampling, up-sampled map first, deep supervision
    /// on all four heads; 1 input channel, 1 class. Dropout is off (the official code uses 0.5;
    /// set it with [`UNetPlusPlusConfigBuilder::dropout`]).
    pub fn paper() -> UNetPlusPlusConfigBuilder {
        UNetPlusPlusConfigBuilder {
            cfg: UNetPlusPlusConfig {
                in_channels: 1,
                num_classes: 1,
                widths: vec![32, 64, 128, 256, 512],
                depth: 4,
                heads: Vec::new(),
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
            },
            deep_supervision: true,
            heads: None,
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
        self.cfg.in_channels = c;
        self
    }
    /// Output classes: 1 for binary segmentation (sigmoid), `n ≥ 2` for `n`-way softmax.
    pub fn num_classes(mut self, n: usize) -> Self {
        self.cfg.num_classes = n;
        self
    }
    /// Widths `f_0, f_1, …`; at least `depth + 1` values (extra ones are ignored).
    pub fn widths(mut self, widths: impl Into<Vec<usize>>) -> Self {
        self.cfg.widths = widths.into();
        self
    }
    /// `L`: number of down-sampling steps (the paper's L1–L4).
    pub fn depth(mut self, depth: usize) -> Self {
        self.cfg.depth = depth;
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
        self.cfg.norm = norm;
        self
    }
    /// Activation inside each block.
    pub fn activation(mut self, activation: Activation) -> Self {
        self.cfg.activation = activation;
        self
    }
    /// Dropout probability after each activation, in `[0, 1)`.
    pub fn dropout(mut self, p: f32) -> Self {
        self.cfg.dropout = p;
        self
    }
    /// Up-sampling mode.
    pub fn upsample(mut self, mode: Upsample) -> Self {
        self.cfg.upsample = mode;
        self
    }
    /// Concatenation order at each node.
    pub fn concat_order(mut self, order: ConcatOrder) -> Self {
        self.cfg.concat = order;
        self
    }
    /// Whether the 3×3 convolutions have a bias (default true).
    pub fn conv_bias(mut self, on: bool) -> Self {
        self.cfg.conv_bias = on;
        self
    }
    /// Pad inputs whose height or width is not a multiple of `2^depth` (replicating the
    /// border), run, and crop the outputs back to the input's size.
    pub fn pad_to_multiple(mut self, on: bool) -> Self {
        self.cfg.pad_to_multiple = on;
        self
    }

    /// Channels of the transposed up-sampling into each level `i = 0..depth` (by default `f_i`;
    /// MONAI halves `f_{i+1}` instead). Only with transposed-convolution up-sampling.
    pub fn up_widths(mut self, widths: impl Into<Vec<usize>>) -> Self {
        self.cfg.up_widths = Some(widths.into());
        self
    }

    /// Width of the last node `X^{0,L}` (by default `f_0`; MONAI's sixth feature).
    pub fn top_width(mut self, width: usize) -> Self {
        self.cfg.top_width = Some(width);
        self
    }

    /// Run inputs of any size (at least `2^depth` pixels each way) as MONAI's
    /// `BasicUNetPlusPlus` does: pooling floors odd sizes, and where an up-sampled map is one
    /// pixel short of the maps of its level, its last row or column is repeated. Used for
    /// MONAI weights; [`Self::pad_to_multiple`] takes precedence when both are on.
    pub fn pad_upsampled(mut self, on: bool) -> Self {
        self.cfg.pad_upsampled = on;
        self
    }

    /// Validates the configuration; an [`Error::Config`] names the first bad field.
    pub fn build(self) -> Result<UNetPlusPlusConfig> {
        let mut cfg = self.cfg;
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
