//! The UNet++ network: it walks the [`Grid`] and applies one block per node.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::VarBuilder;

use super::config::UNetPlusPlusConfig;
use super::grid::{Grid, Input, Node, Skips};
use super::outputs::Outputs;
use crate::encoders::Encoder;
use crate::nn::{Conv, ConvBlock, ConvConfig, NamedTensor, UpLayer};
use crate::{weights, Error, Result};

/// A pruning level `L_k`: the network keeps the nodes `X^{i,j}` with `i + j ≤ k` and the head
/// on `X^{0,k}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Level(pub usize);

impl Level {
    /// UNet++ L1.
    pub const L1: Level = Level(1);
    /// UNet++ L2.
    pub const L2: Level = Level(2);
    /// UNet++ L3.
    pub const L3: Level = Level(3);
    /// UNet++ L4.
    pub const L4: Level = Level(4);
}

impl From<usize> for Level {
    fn from(k: usize) -> Self {
        Level(k)
    }
}

/// UNet++ (Zhou et al., IEEE TMI 2020): nested, dense skip pathways and deep supervision.
///
/// A network is either *full* (every node of its depth, the heads of its configuration) or
/// *pruned* to a level `L_k` (only the nodes with `i + j ≤ k`, one head on `X^{0,k}`).
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use unetpp::prelude::*;
///
/// let cfg = UNetPlusPlusConfig::paper().widths([4, 8, 16]).depth(2).build()?;
/// let varmap = VarMap::new();
/// let net = UNetPlusPlus::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
/// let x = Tensor::zeros((1, 1, 16, 16), DType::F32, &Device::Cpu)?;
/// let out = net.forward_heads(&x, false)?;
/// assert_eq!(out.cols(), &[1, 2]);
/// let fast = net.prune(Level::L1)?;
/// assert_eq!(fast.forward(&x)?.dims(), &[1, 1, 16, 16]);
/// # Ok::<(), unetpp::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct UNetPlusPlus {
    cfg: UNetPlusPlusConfig,
    grid: Grid,
    encoder: Option<Arc<dyn Encoder>>,
    blocks: Vec<Option<ConvBlock>>,
    ups: Vec<Option<UpLayer>>,
    heads: Vec<(usize, Conv)>,
    tensors: Vec<NamedTensor>,
}

impl UNetPlusPlus {
    /// The full network of `cfg`, with weights from `vb` (a `VarMap` to train, a file to
    /// infer).
    pub fn new(cfg: &UNetPlusPlusConfig, vb: VarBuilder) -> Result<Self> {
        Self::build(cfg, Grid::new(cfg.depth), &cfg.heads, None, vb)
    }

    /// The full network of `cfg` on `encoder`: its taps `0..=depth` are the encoder nodes
    /// `X^{0,0}, …, X^{L,0}` (their channels are the encoder's), and the nested decoder nodes
    /// `X^{i,j}`, `j ≥ 1`, have the widths of `cfg` (`f_L` is not used). When the finest tap
    /// is strided (ResNet's has stride 2), each head's logits are resized to the input's size
    /// (bilinear). The encoder reads the image, so `cfg`'s input channels are not used; the
    /// input's height and width must be multiples of `stride · 2^depth` unless `cfg` pads.
    ///
    /// The decoder's weights are read from `vb`; build the encoder from `vb.pp("encoder")` so
    /// that [`Self::named_tensors`] and [`Self::save`] name its tensors `encoder.*`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use candle_core::{DType, Device, Tensor};
    /// use candle_nn::{VarBuilder, VarMap};
    /// use unetpp::encoders::{ResNet, ResNetConfig};
    /// use unetpp::prelude::*;
    ///
    /// let varmap = VarMap::new();
    /// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    /// let encoder = ResNet::new(&ResNetConfig::resnet18().build()?, vb.pp("encoder"))?;
    /// let cfg = UNetPlusPlusConfig::paper().widths([16, 32, 64, 128, 256]).num_classes(2).build()?;
    /// let net = UNetPlusPlus::with_encoder(&cfg, Arc::new(encoder), vb)?;
    /// let x = Tensor::zeros((1, 3, 64, 64), DType::F32, &Device::Cpu)?;
    /// assert_eq!(net.forward(&x)?.dims(), &[1, 2, 64, 64]);
    /// assert!(net.named_tensors().iter().any(|t| t.name == "encoder.layer4.1.conv2.weight"));
    /// # Ok::<(), unetpp::Error>(())
    /// ```
    pub fn with_encoder(
        cfg: &UNetPlusPlusConfig,
        encoder: Arc<dyn Encoder>,
        vb: VarBuilder,
    ) -> Result<Self> {
        let taps = encoder.channels();
        if taps.len() < cfg.depth + 1 {
            return Err(Error::config(
                "depth",
                format!(
                    "depth {} needs {} encoder taps, the encoder has {}",
                    cfg.depth,
                    cfg.depth + 1,
                    taps.len()
                ),
            ));
        }
        if encoder.stride() == 0 || taps.contains(&0) {
            return Err(Error::config(
                "encoder",
                "taps need a non-zero stride and channels",
            ));
        }
        Self::build(cfg, Grid::new(cfg.depth), &cfg.heads, Some(encoder), vb)
    }

    /// The encoder this network is built on, if any ([`Self::with_encoder`]).
    pub fn encoder(&self) -> Option<&Arc<dyn Encoder>> {
        self.encoder.as_ref()
    }

    /// The network of `cfg` pruned to `level`: the nodes with `i + j ≤ k` and the head on
    /// `X^{0,k}`, which `cfg` must have.
    pub fn new_pruned(
        cfg: &UNetPlusPlusConfig,
        level: impl Into<Level>,
        vb: VarBuilder,
    ) -> Result<Self> {
        let k = check_level(cfg, level.into())?;
        Self::build(cfg, Grid::new(cfg.depth).at_level(k), &[k], None, vb)
    }

    /// The plain U-Net of `cfg`'s depth and blocks, with one head on `X^{0,L}` (see
    /// [`crate::unet::UNet`]).
    pub(crate) fn new_plain(cfg: &UNetPlusPlusConfig, vb: VarBuilder) -> Result<Self> {
        Self::build(cfg, Grid::plain(cfg.depth), &[cfg.depth], None, vb)
    }

    fn build(
        cfg: &UNetPlusPlusConfig,
        grid: Grid,
        heads: &[usize],
        encoder: Option<Arc<dyn Encoder>>,
        vb: VarBuilder,
    ) -> Result<Self> {
        let taps = encoder.as_ref().map(|e| e.channels());
        let ((blocks, ups, heads), tensors) = weights::record(vb, |vb| {
            Self::layers(cfg, &grid, heads, taps.as_deref(), &vb)
        })?;
        Ok(Self {
            cfg: cfg.clone(),
            grid,
            encoder,
            blocks,
            ups,
            heads,
            tensors,
        })
    }

    /// The layers of the nodes of `grid` (the encoder nodes only without an encoder, whose
    /// taps have the channels `taps`) and of the heads on `X^{0,j}` for `j` in `heads`.
    #[allow(clippy::type_complexity)]
    fn layers(
        cfg: &UNetPlusPlusConfig,
        grid: &Grid,
        heads: &[usize],
        taps: Option<&[usize]>,
        vb: &VarBuilder,
    ) -> Result<(
        Vec<Option<ConvBlock>>,
        Vec<Option<UpLayer>>,
        Vec<(usize, Conv)>,
    )> {
        let f = &cfg.widths;
        let keeps = cfg.upsample.keeps_channels();
        let width_of = |n: Node| match (taps, n.col) {
            (Some(t), 0) => t.get(n.level).copied(),
            _ => cfg.node_width(n.level, n.col),
        };
        let mut blocks = Vec::with_capacity(grid.nodes().len());
        let mut ups = Vec::with_capacity(grid.nodes().len());
        for &node in grid.nodes() {
            let Node { level: i, col: j } = node;
            let no_width = || Error::config("widths", format!("no width for {node}"));
            if j == 0 && taps.is_some() {
                blocks.push(None);
                ups.push(None);
                continue;
            }
            let c_in = if j == 0 {
                grid.in_channels(node, f, cfg.in_channels, keeps)
            } else {
                // The dense skips and the up-sampled map, whose channels are those of its
                // source (interpolation) or the configuration's (transposed convolution).
                let mut c = Some(0);
                for input in grid.inputs(node, cfg.concat) {
                    let add = match input {
                        Input::Skip(n) => width_of(n),
                        Input::Upsampled(n) if keeps => width_of(n),
                        Input::Upsampled(_) => cfg.up_channels(i),
                        Input::Image | Input::Pooled(_) => None,
                    };
                    c = c.zip(add).map(|(a, b)| a + b);
                }
                c
            }
            .ok_or_else(no_width)?;
            blocks.push(Some(ConvBlock::new(
                c_in,
                cfg.node_width(i, j).ok_or_else(no_width)?,
                cfg.norm,
                cfg.activation,
                cfg.dropout,
                cfg.conv_bias,
                vb.pp(node.name()),
            )?));
            ups.push(if j == 0 {
                None
            } else {
                Some(UpLayer::new(
                    cfg.upsample,
                    width_of(Node::new(i + 1, j - 1)).ok_or_else(no_width)?,
                    cfg.up_channels(i).ok_or_else(no_width)?,
                    vb.pp(format!("up_{i}_{j}")),
                )?)
            });
        }
        let heads = heads
            .iter()
            .map(|&col| {
                let width = cfg.node_width(0, col).ok_or_else(|| {
                    Error::config("widths", format!("no width for X^{{0,{col}}}"))
                })?;
                let conv = Conv::new(
                    width,
                    cfg.num_classes,
                    ConvConfig::new(1),
                    vb.pp(format!("head_{col}")),
                )?;
                Ok((col, conv))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((blocks, ups, heads))
    }

    /// The configuration this network was built from (for a pruned network, the full one's).
    pub fn config(&self) -> &UNetPlusPlusConfig {
        &self.cfg
    }

    /// The nodes this network computes.
    pub fn grid(&self) -> &Grid {
        &self.grid
    }

    /// The level it computes up to: the depth for a full network, `k` for one pruned to `L_k`.
    pub fn level(&self) -> usize {
        self.grid.depth()
    }

    /// Whether this network was pruned below its configuration's depth or to a single head.
    pub fn is_pruned(&self) -> bool {
        self.level() < self.cfg.depth || self.head_cols() != self.cfg.heads
    }

    /// Columns `j` of the heads `X^{0,j}` this network has.
    pub fn head_cols(&self) -> Vec<usize> {
        self.heads.iter().map(|(c, _)| *c).collect()
    }

    /// Inference: the logits of the deepest head, `(N, classes, H, W)`, in evaluation mode.
    ///
    /// No graph is recorded even when the weights are training variables (they are detached
    /// for the call, which copies no weight data), so no intermediate is kept alive.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let out = self.detach()?.forward_heads(&x.detach(), false)?;
        out.into_logits()
            .pop()
            .ok_or_else(|| Error::config("heads", "no head"))
    }

    /// Runs the network on `x` of shape `(N, C, H, W)`; `train` switches batch-norm statistics
    /// and dropout to training behaviour. Returns the logits of every head (deep
    /// supervision); [`ModuleT::forward_t`] returns the deepest one alone.
    ///
    /// `H` and `W` must be multiples of `2^depth` unless the configuration pads.
    pub fn forward_heads(&self, x: &Tensor, train: bool) -> Result<Outputs> {
        let (h, w) = self.check_input(x)?;
        let stride = self.encoder.as_ref().map_or(1, |e| e.stride());
        let m = stride << self.cfg.depth;
        let (x, pad) = if h % m == 0 && w % m == 0 {
            (x.clone(), None)
        } else if self.cfg.pad_upsampled && !self.cfg.pad_to_multiple {
            if h >> self.cfg.depth == 0 || w >> self.cfg.depth == 0 {
                return Err(Error::Shape(format!(
                    "input is {h}x{w} but a UNet++ of depth {} needs at least {m} pixels each way",
                    self.cfg.depth
                )));
            }
            (x.clone(), None)
        } else if self.cfg.pad_to_multiple {
            let (ph, pw) = (h.next_multiple_of(m) - h, w.next_multiple_of(m) - w);
            let x =
                x.pad_with_same(2, ph / 2, ph - ph / 2)?
                    .pad_with_same(3, pw / 2, pw - pw / 2)?;
            (x, Some((ph / 2, pw / 2)))
        } else {
            return Err(Error::Shape(format!(
                "input is {h}x{w} but a UNet++ of depth {} needs height and width divisible by {m}; \
                 resize the input or build the configuration with pad_to_multiple(true)",
                self.cfg.depth
            )));
        };

        let mut taps = match &self.encoder {
            Some(e) => e.features(&x, train)?.into_iter().map(Some).collect(),
            None => Vec::new(),
        };
        let mut outs: Vec<Tensor> = Vec::with_capacity(self.blocks.len());
        for (idx, &node) in self.grid.nodes().iter().enumerate() {
            let block = match &self.blocks[idx] {
                Some(block) => block,
                None => {
                    let tap = taps.get_mut(node.level).and_then(Option::take);
                    outs.push(tap.ok_or_else(|| {
                        Error::Shape(format!("the encoder gave no tap for {node}"))
                    })?);
                    continue;
                }
            };
            let mut parts = Vec::new();
            for input in self.grid.inputs(node, self.cfg.concat) {
                parts.push(match input {
                    Input::Image => x.clone(),
                    Input::Pooled(src) => {
                        crate::ops::max_pool2d(self.output_of(&outs, src)?, 2, 2, 0)?
                    }
                    Input::Skip(src) => self.output_of(&outs, src)?.clone(),
                    Input::Upsampled(src) => match &self.ups[idx] {
                        Some(up) => {
                            let y = up.forward(self.output_of(&outs, src)?)?;
                            if self.cfg.pad_upsampled {
                                let level = self.output_of(&outs, Node::new(node.level, 0))?;
                                pad_end_to(&y, level.dim(2)?, level.dim(3)?)?
                            } else {
                                y
                            }
                        }
                        None => {
                            return Err(Error::config(
                                "upsample",
                                format!("{node} has no up-sampling layer"),
                            ))
                        }
                    },
                });
            }
            outs.push(block.forward_parts(&parts, train)?);
        }

        let (xh, xw) = (x.dim(2)?, x.dim(3)?);
        let mut logits = Vec::with_capacity(self.heads.len());
        for (col, conv) in &self.heads {
            let mut y = conv.forward(self.output_of(&outs, Node::new(0, *col))?)?;
            if (y.dim(2)?, y.dim(3)?) != (xh, xw) {
                y = crate::ops::resize_bilinear(&y, xh, xw, false)?;
            }
            logits.push(match pad {
                Some((top, left)) => y.narrow(2, top, h)?.narrow(3, left, w)?,
                None => y,
            });
        }
        Ok(Outputs::new(self.head_cols(), logits, self.cfg.num_classes))
    }

    fn output_of<'a>(&self, outs: &'a [Tensor], node: Node) -> Result<&'a Tensor> {
        self.grid
            .index(node)
            .and_then(|i| outs.get(i))
            .ok_or_else(|| Error::config("grid", format!("{node} is read before it is computed")))
    }

    fn check_input(&self, x: &Tensor) -> Result<(usize, usize)> {
        let (n, c, h, w) = x.dims4().map_err(|_| {
            Error::Shape(format!(
                "expected an (N, C, H, W) image batch, got shape {:?}",
                x.dims()
            ))
        })?;
        if n == 0 {
            return Err(Error::Shape("empty batch: N is 0".into()));
        }
        if self.encoder.is_none() && c != self.cfg.in_channels {
            return Err(Error::Shape(format!(
                "expected {} input channel(s), got {c} (shape {:?})",
                self.cfg.in_channels,
                x.dims()
            )));
        }
        if h == 0 || w == 0 {
            return Err(Error::Shape(format!("empty image: {h}x{w}")));
        }
        Ok((h, w))
    }

    /// The network pruned to `level` (UNet++ `L_k`): only the nodes with `i + j ≤ k` and the
    /// head on `X^{0,k}`. Its forward equals that head of this network. It shares this
    /// network's tensors (no copy); [`Self::save`] writes only the weights it keeps.
    pub fn prune(&self, level: impl Into<Level>) -> Result<Self> {
        if self.grid.skips() == Skips::Plain {
            return Err(Error::config(
                "level",
                "a plain U-Net has a single head and cannot be pruned",
            ));
        }
        let k = check_level(&self.cfg, level.into())?;
        if k > self.level() {
            return Err(Error::config(
                "level",
                format!(
                    "cannot prune a network of level {} to the deeper level {k}",
                    self.level()
                ),
            ));
        }
        if !self.heads.iter().any(|(c, _)| *c == k) {
            return Err(Error::config(
                "level",
                format!("this network has no head on X^{{0,{k}}}"),
            ));
        }
        Self::build(
            &self.cfg,
            self.grid.at_level(k),
            &[k],
            self.encoder.clone(),
            weights::var_builder_over(&self.tensors),
        )
    }

    /// Every tensor of the network under its stable name (see `docs/weights.md`), including
    /// buffers such as batch-norm running statistics.
    pub fn named_tensors(&self) -> Vec<NamedTensor> {
        let mut out = self.tensors.clone();
        if let Some(e) = &self.encoder {
            out.extend(weights::prefixed(e.named_tensors(), "encoder"));
        }
        out
    }

    /// Number of trainable parameters (buffers excluded).
    pub fn num_parameters(&self) -> usize {
        self.named_tensors()
            .iter()
            .filter(|t| t.trainable)
            .map(|t| t.tensor.elem_count())
            .sum()
    }

    /// A copy whose tensors are detached from any `Var`, so that inference records no graph
    /// (and keeps no intermediates alive). Use it after training.
    pub fn detach(&self) -> Result<Self> {
        let encoder = self.encoder.as_ref().map(|e| e.detached()).transpose()?;
        Self::build(
            &self.cfg,
            self.grid.clone(),
            &self.head_cols(),
            encoder,
            weights::var_builder_over(&weights::detached(&self.tensors)),
        )
    }

    /// The network in `dtype` (`F16` or `BF16` for half-precision inference on devices that
    /// have it); `self` is untouched.
    ///
    /// The conversion is part of the autograd graph: converting a trainable network at each
    /// step, running the converted one, and computing the loss in `f32` (convert the logits
    /// back) trains in mixed precision, the gradients landing on the `f32` variables (master
    /// weights). For `F16` scale the loss up (and the gradients down) if small gradients
    /// underflow; `BF16` has `f32`'s range. Batch normalisation computes its batch statistics
    /// in `f32` whatever the dtype.
    ///
    /// A network on an [`Encoder`] converts if its encoder does ([`Encoder::to_dtype`]).
    ///
    /// ```
    /// use candle_core::{DType, Device, Tensor};
    /// use candle_nn::{VarBuilder, VarMap};
    /// use unetpp::prelude::*;
    ///
    /// let cfg = UNetPlusPlusConfig::paper().widths([4, 8, 16]).depth(2).build()?;
    /// let varmap = VarMap::new();
    /// let net = UNetPlusPlus::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
    /// let half = net.detach()?.to_dtype(DType::F16)?; // candle's CPU lacks bf16 matmuls
    /// let x = Tensor::randn(0f32, 1., (1, 1, 16, 16), &Device::Cpu)?.to_dtype(DType::F16)?;
    /// assert_eq!(half.forward(&x)?.dtype(), DType::F16);
    /// # Ok::<(), unetpp::Error>(())
    /// ```
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        if !dtype.is_float() {
            return Err(Error::Input(format!(
                "UNetPlusPlus::to_dtype needs a floating-point dtype, got {dtype:?}"
            )));
        }
        let encoder = self
            .encoder
            .as_ref()
            .map(|e| e.to_dtype(dtype))
            .transpose()?;
        Self::build(
            &self.cfg,
            self.grid.clone(),
            &self.head_cols(),
            encoder,
            weights::var_builder_over_in(&self.tensors, dtype),
        )
    }

    /// Writes the network's tensors to a safetensors file, atomically, with its configuration
    /// (and, for a pruned network, its level) in the file's metadata, so that [`Self::load`]
    /// rebuilds it from the file alone.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let tensors: Vec<(String, Tensor)> = self
            .named_tensors()
            .into_iter()
            .map(|t| (t.name, t.tensor))
            .collect();
        let network = match (self.grid.skips(), &self.encoder) {
            (_, Some(_)) => NETWORK_UNETPP_ENCODER,
            (Skips::Plain, None) => NETWORK_UNET,
            (Skips::Nested, None) => NETWORK_UNETPP,
        };
        let heads: Vec<String> = self.head_cols().iter().map(|c| c.to_string()).collect();
        let metadata = HashMap::from([
            (META_FORMAT.to_string(), "1".to_string()),
            (META_NETWORK.to_string(), network.to_string()),
            (META_CONFIG.to_string(), self.cfg.to_metadata()),
            (META_LEVEL.to_string(), self.level().to_string()),
            (META_HEADS.to_string(), heads.join(",")),
        ]);
        weights::save_with_metadata(&tensors, Some(metadata), path)
    }

    /// Builds the full network of `cfg` from named tensors (as [`Self::named_tensors`] names
    /// them), in `f32` on `device`. Missing, extra or mis-shaped tensors are an
    /// [`Error::Weights`] that names the tensor.
    pub fn from_tensors(
        cfg: &UNetPlusPlusConfig,
        tensors: HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        weights::build_checked(tensors, DType::F32, device, |vb| Self::new(cfg, vb))
    }

    /// Loads a network written by [`Self::save`] (in `f32`), full or pruned, with the
    /// configuration stored in the file. Files written before the configuration was stored
    /// load with [`Self::load_with_config`].
    ///
    /// ```
    /// use candle_core::{DType, Device};
    /// use candle_nn::{VarBuilder, VarMap};
    /// use unetpp::prelude::*;
    ///
    /// let cfg = UNetPlusPlusConfig::paper().widths([4, 8, 16]).depth(2).build()?;
    /// let varmap = VarMap::new();
    /// let net = UNetPlusPlus::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
    /// let path = std::env::temp_dir().join("unetpp-doc-load.safetensors");
    /// net.prune(Level::L1)?.save(&path)?;
    /// let back = UNetPlusPlus::load(&path, &Device::Cpu)?;
    /// assert_eq!((back.config(), back.level()), (&cfg, 1));
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), unetpp::Error>(())
    /// ```
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Self::load_as(path, device, DType::F32)
    }

    /// [`Self::load`] in `dtype`: the weights are converted as they are read (`F16` or `BF16`
    /// for half-precision inference; see [`Self::to_dtype`]).
    pub fn load_as(path: impl AsRef<Path>, device: &Device, dtype: DType) -> Result<Self> {
        if !dtype.is_float() {
            return Err(Error::Input(format!(
                "UNetPlusPlus::load_as needs a floating-point dtype, got {dtype:?}"
            )));
        }
        let (stored, tensors) = read_stored(path.as_ref(), NETWORK_UNETPP, device)?;
        weights::build_checked(tensors, dtype, device, |vb| {
            if stored.level == stored.cfg.depth && stored.heads == stored.cfg.heads {
                Self::new(&stored.cfg, vb)
            } else {
                Self::new_pruned(&stored.cfg, stored.level, vb)
            }
        })
    }

    /// Loads a full network of `cfg` from a file written by [`Self::save`], ignoring any
    /// configuration stored in it (files written before configurations were stored).
    ///
    /// A missing, extra or mis-shaped tensor is an [`Error::Weights`] that names it.
    pub fn load_with_config(
        cfg: &UNetPlusPlusConfig,
        path: impl AsRef<Path>,
        device: &Device,
    ) -> Result<Self> {
        Self::from_tensors(cfg, weights::load_tensors(path, device)?, device)
    }

    /// Loads a network of `cfg` pruned to `level` from a file written by a pruned network's
    /// [`Self::save`], ignoring any configuration stored in it.
    pub fn load_pruned(
        cfg: &UNetPlusPlusConfig,
        level: impl Into<Level>,
        path: impl AsRef<Path>,
        device: &Device,
    ) -> Result<Self> {
        let level = level.into();
        let tensors = weights::load_tensors(path, device)?;
        weights::build_checked(tensors, DType::F32, device, |vb| {
            Self::new_pruned(cfg, level, vb)
        })
    }
}

/// Metadata keys of a saved network.
const META_FORMAT: &str = "unetpp.format";
const META_NETWORK: &str = "unetpp.network";
const META_CONFIG: &str = "unetpp.config";
const META_LEVEL: &str = "unetpp.level";
const META_HEADS: &str = "unetpp.heads";
pub(crate) const NETWORK_UNETPP: &str = "unetpp";
pub(crate) const NETWORK_UNET: &str = "unet";
/// A UNet++ on an [`Encoder`]: [`UNetPlusPlus::load`] cannot rebuild an arbitrary encoder.
const NETWORK_UNETPP_ENCODER: &str = "unetpp-on-encoder";

/// What [`UNetPlusPlus::save`] stores besides the tensors.
pub(crate) struct Stored {
    pub(crate) cfg: UNetPlusPlusConfig,
    pub(crate) level: usize,
    pub(crate) heads: Vec<usize>,
}

/// The stored configuration and the tensors of a file that must hold a `network`.
pub(crate) fn read_stored(
    path: &Path,
    network: &str,
    device: &Device,
) -> Result<(Stored, HashMap<String, Tensor>)> {
    // One read of the file: the metadata is checked before the tensors are decoded.
    let bytes = weights::read_file(path)?;
    let meta = weights::metadata_in(&bytes, path)?;
    let file = path.display().to_string();
    let cfg = meta.get(META_CONFIG).ok_or_else(|| {
        Error::weights(
            file.as_str(),
            "no configuration stored in the file (written before configurations were stored, \
             or by another program); load it with load_with_config(cfg, path, device)",
        )
    })?;
    let found = meta.get(META_NETWORK).map_or("?", String::as_str);
    if found == NETWORK_UNETPP_ENCODER {
        return Err(Error::weights(
            file.as_str(),
            "holds a UNet++ built on an encoder: build the encoder and the network with \
             UNetPlusPlus::with_encoder over the file's tensors (weights::load_tensors)",
        ));
    }
    if found != network {
        return Err(Error::weights(
            file.as_str(),
            format!("holds a `{found}` network, not a `{network}`"),
        ));
    }
    let cfg = UNetPlusPlusConfig::from_metadata(cfg)?;
    let level = match meta.get(META_LEVEL) {
        Some(v) => v
            .parse()
            .map_err(|_| Error::weights(file.as_str(), format!("unreadable level `{v}`")))?,
        None => cfg.depth,
    };
    let heads = match meta.get(META_HEADS) {
        Some(v) => v
            .split(',')
            .map(|c| c.parse())
            .collect::<std::result::Result<Vec<usize>, _>>()
            .map_err(|_| Error::weights(file.as_str(), format!("unreadable heads `{v}`")))?,
        None => cfg.heads.clone(),
    };
    let tensors = weights::tensors_in(&bytes, path, device)?;
    Ok((Stored { cfg, level, heads }, tensors))
}

/// `ModuleT` only: candle implements `ModuleT` for every `Module`, ignoring the training flag,
/// which batch-norm and dropout need; [`UNetPlusPlus::forward`] is the inference call.
impl ModuleT for UNetPlusPlus {
    /// The logits of the deepest head, recording the graph ([`UNetPlusPlus::forward_heads`]
    /// gives them all).
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let heads = self.forward_heads(x, train)?;
        heads
            .into_logits()
            .pop()
            .ok_or_else(|| candle_core::Error::Msg("a network without a head".into()))
    }
}

/// `y` replicate-padded at its end to `h × w` (MONAI pads an up-sampled map one pixel short
/// of its level this way).
fn pad_end_to(y: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (yh, yw) = (y.dim(2)?, y.dim(3)?);
    let mut y = y.clone();
    if yh < h {
        y = y.pad_with_same(2, 0, h - yh)?;
    }
    if yw < w {
        y = y.pad_with_same(3, 0, w - yw)?;
    }
    Ok(y)
}

fn check_level(cfg: &UNetPlusPlusConfig, level: Level) -> Result<usize> {
    let k = level.0;
    if k == 0 || k > cfg.depth {
        return Err(Error::config(
            "level",
            format!("L{k} does not exist: levels run 1..={}", cfg.depth),
        ));
    }
    if !cfg.heads.contains(&k) {
        return Err(Error::config(
            "level",
            format!(
                "pruning to L{k} needs a head on X^{{0,{k}}}, but the configuration has heads on {:?}; \
                 train with deep supervision to prune",
                cfg.heads
            ),
        ));
    }
    Ok(k)
}
